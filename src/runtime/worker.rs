//! One worker: a pinned thread with its own tokio-uring runtime.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::StartError;
use crate::accesslog::{AccessLog, Sink};
use crate::net::proxy_protocol::{self, ReadHeaderError};
use crate::net::TcpIo;
use crate::proxy::ctx::{ConnInfo, Shared, WorkerCtx};
use crate::proxy::serve_connection;
use crate::tls::Stream;
use crate::tls::TlsStream;

const LOG_FLUSH_EVERY: Duration = Duration::from_millis(200);
const POOL_SWEEP_EVERY: Duration = Duration::from_secs(1);

pub fn run(
    id: usize,
    cpu: Option<usize>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    shared: Arc<Shared>,
    sink: Sink,
    mut stop: watch::Receiver<bool>,
    started: mpsc::Sender<usize>,
) -> Result<(), String> {
    if let Some(cpu) = cpu {
        pin_to(cpu).map_err(|e| format!("pinning to CPU {cpu}: {e}"))?;
    }
    let drain_timeout = shared.cfg.timeouts.drain;
    let log = AccessLog::new(sink, shared.cfg.access_log_format);
    // Not `tokio_uring::start`, which panics when the ring cannot be made: `prepare` has
    // checked that it can, but a worker that still fails says why and exits cleanly.
    let rt = tokio_uring::Runtime::new(&tokio_uring::builder())
        .map_err(|e| StartError::uring_unavailable(&e).to_string())?;
    rt.block_on(async move {
        let auth = super::assemble::auth_ctx(&shared);
        let ctx = Rc::new(WorkerCtx::new(id, shared, log, auth));
        let mut fds = Vec::new();
        for (l, tls) in listeners {
            fds.push(l.as_raw_fd());
            let l = tokio_uring::net::TcpListener::from_std(l);
            tokio_uring::spawn(accept_loop(l, tls, ctx.clone()));
        }
        tokio_uring::spawn(housekeeping(ctx.clone()));
        // Accepting from here on: `runtime::run` counts these before telling systemd READY=1.
        // Dropped at once, so that the count ends when every worker has either said so or
        // failed (a worker that fails before this point drops it without a word).
        let _ = started.send(id);
        drop(started);

        let _ = stop.wait_for(|s| *s).await;
        // Stop listening first, while the accept loops still own their listeners (so the fds
        // are certainly still theirs): an accept left in flight would keep the socket open,
        // and the kernel would keep completing handshakes for connections nobody serves.
        for fd in fds {
            shutdown_listener(fd);
        }
        ctx.start_drain();
        if tokio::time::timeout(drain_timeout, ctx.wait_all_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = id,
                left = ctx.conns.borrow().len(),
                "drain timeout: closing remaining connections"
            );
        }
        ctx.pool.borrow_mut().clear();
        ctx.log.flush();
    });
    Ok(())
}

async fn accept_loop(listener: tokio_uring::net::TcpListener, tls: bool, ctx: Rc<WorkerCtx>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = ctx.drain_signal() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if ctx.is_draining() {
                    return;
                }
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let now = Instant::now();
        let Some(slot) = ctx.conn_opened(ConnInfo {
            peer,
            since: std::time::Instant::now(),
        }) else {
            tracing::warn!(%peer, "--max-connections reached: closing new connection");
            drop(tcp);
            continue;
        };
        let io = TcpIo::new(tcp);
        let _ = io.set_nodelay();
        let ctx2 = ctx.clone();
        let proxied = ctx
            .shared
            .cfg
            .proxy_protocol_from
            .iter()
            .any(|net| net.contains(peer.ip()));
        tokio_uring::spawn(async move {
            let peer = if proxied {
                match proxy_header(&io, peer, &ctx2, slot, now).await {
                    Some(client) => client,
                    None => {
                        ctx2.conn_closed(slot);
                        return;
                    }
                }
            } else {
                peer
            };
            let stream = if tls {
                let cfg = ctx2.shared.tls_server.clone();
                match cfg {
                    Some(cfg) => {
                        match TlsStream::accept(io, cfg, ctx2.shared.cfg.timeouts.header).await {
                            Ok(s) => Some(Stream::Tls(Box::new(s))),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                None
                            }
                        }
                    }
                    None => None,
                }
            } else {
                Some(Stream::Plain(io))
            };
            if let Some(stream) = stream {
                serve_connection(stream, peer, ctx2.clone(), now).await;
            }
            ctx2.conn_closed(slot);
        });
    }
}

/// Reads the PROXY protocol header a trusted balancer at `peer` opens its connection with,
/// before anything else (TLS included) reads the socket. Returns the client the connection is
/// served as, already recorded in the slab: the header's source address, or `peer` itself for
/// a balancer's own connection (v2 LOCAL, v1 UNKNOWN). `None`: no valid header, close.
async fn proxy_header(
    io: &TcpIo,
    peer: SocketAddr,
    ctx: &WorkerCtx,
    slot: usize,
    accepted: Instant,
) -> Option<SocketAddr> {
    // The header counts against the same deadline as the request head it precedes: a
    // balancer writes it at once, so this is no new way to hold a connection open.
    let deadline = accepted + ctx.shared.cfg.timeouts.header;
    match proxy_protocol::read_header(io, deadline).await {
        Ok(h) => {
            let client = h.source().unwrap_or(peer);
            if let Some(info) = ctx.conns.borrow_mut().get_mut(slot) {
                info.peer = client;
            }
            tracing::debug!(%peer, %client, version = h.version, "PROXY protocol header");
            Some(client)
        }
        Err(e @ ReadHeaderError::Malformed(_)) => {
            // A trusted balancer sending garbage is a configuration problem worth seeing.
            tracing::info!(%peer, error = %e, "PROXY protocol: connection closed");
            None
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "PROXY protocol: connection closed");
            None
        }
    }
}

async fn housekeeping(ctx: Rc<WorkerCtx>) {
    let mut since_sweep = Duration::ZERO;
    loop {
        tokio::time::sleep(LOG_FLUSH_EVERY).await;
        ctx.log.flush();
        since_sweep += LOG_FLUSH_EVERY;
        if since_sweep >= POOL_SWEEP_EVERY {
            since_sweep = Duration::ZERO;
            ctx.pool.borrow_mut().evict_expired();
        }
    }
}

fn shutdown_listener(fd: RawFd) {
    // SAFETY: `fd` is a listening socket owned by a TcpListener of this worker that is still
    // alive (the accept loop holds it); shutdown does not close or invalidate the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, CPU_SET writes inside it (cpu is bounds-checked by the
    // macro's implementation against CPU_SETSIZE), and pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
