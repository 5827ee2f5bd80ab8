//! Backends: connecting (TCP, then TLS for `https://`), and the per-core pool of idle
//! connections.
//!
//! INVARIANT: a pooled connection is only ever handed out for the exact [`PoolKey`] it was
//! stored under. The key carries everything that makes two connections non-interchangeable:
//! the backend address, scheme and TLS name, and the identity the connection was authenticated
//! for. Connections that carried a connection-oriented `Authorization` (NTLM, Negotiate) on
//! behalf of a client are never pooled at all: they stay private to that client connection
//! (see `proxy`), because the backend ties that authentication to the TCP connection.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

use crate::config::{Backend, Scheme};
use crate::error::{Error, ErrorKind};
use crate::net::{Io, TcpIo};
use crate::tls::{Stream, TlsStream};

/// Idle time after which a pooled connection is checked for a close by the backend before reuse.
const PEEK_AFTER: Duration = Duration::from_millis(500);

/// What makes two backend connections interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub backend: Rc<Backend>,
    /// The user the connection is authenticated as (delegation); `None` = anonymous.
    pub identity: Option<Rc<str>>,
    /// The backend's SPN the user's ticket was for (delegation); `None` = anonymous.
    pub spn: Option<Rc<str>>,
}

/// A connection to a backend.
pub struct BackendConn {
    pub stream: Stream,
    pub key: PoolKey,
    /// Requests already sent on this connection.
    pub requests: u32,
    /// The connection carried connection-bound authentication (NTLM/Negotiate) for one client.
    /// INVARIANT: once set it stays set, and the connection never enters the shared pool.
    pub private: bool,
    /// The backend accepted the user's delegated ticket on this connection (its key names
    /// the user and SPN): later requests need no new AP-REQ while the backend keeps the
    /// authentication bound to the connection, as IIS and mod_auth_gssapi do.
    pub kerberos: bool,
}

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// Idle backend connections of one core. No lock: only this core touches it.
pub struct Pool {
    idle: HashMap<PoolKey, Vec<Idle>>,
    max_per_key: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_per_key: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: HashMap::new(),
            max_per_key,
            idle_timeout,
        }
    }

    /// The most recently used live connection for `key`, if any. Connections idle too long or
    /// closed by the backend are dropped on the way. `retryable`: the caller can resend the
    /// request on a fresh connection if this one turns out closed, so a connection idle only
    /// moments is handed out without the liveness syscall.
    pub fn take(&mut self, key: &PoolKey, retryable: bool) -> Option<BackendConn> {
        let list = self.idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            let idle_for = now.duration_since(idle.since);
            // The liveness peek costs a syscall; a connection that finished a response moments
            // ago is rarely closed already, and a retryable request is resent if it was. A
            // request whose body streams from the client cannot be resent: always check.
            if idle_for < self.idle_timeout
                && ((retryable && idle_for < PEEK_AFTER) || !idle.conn.stream.tcp().peer_closed())
            {
                return Some(idle.conn);
            }
            idle.conn.stream.shutdown();
        }
        None
    }

    /// Stores a connection that finished a request cleanly.
    pub fn put(&mut self, conn: BackendConn) {
        if conn.private {
            // Defence in depth: the proxy never offers a private connection here.
            conn.stream.shutdown();
            return;
        }
        if self.max_per_key == 0 {
            conn.stream.shutdown();
            return;
        }
        let list = self.idle.entry(conn.key.clone()).or_default();
        if list.len() >= self.max_per_key {
            // Drop the oldest: the newest are the likeliest to still be open at the backend.
            let old = list.remove(0);
            old.conn.stream.shutdown();
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle past the timeout. Called from the worker's housekeeping tick.
    pub fn evict_expired(&mut self) {
        let now = Instant::now();
        let timeout = self.idle_timeout;
        self.idle.retain(|_, list| {
            list.retain(|i| {
                let keep = now.duration_since(i.since) < timeout;
                if !keep {
                    i.conn.stream.shutdown();
                }
                keep
            });
            !list.is_empty()
        });
    }

    /// Closes everything (shutdown).
    pub fn clear(&mut self) {
        for (_, list) in self.idle.drain() {
            for i in list {
                i.conn.stream.shutdown();
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// Opens a connection to `backend`: TCP within `timeout`, then TLS (SNI and certificate name =
/// the host in the backend URL) within the same budget.
pub async fn connect(
    backend: &Backend,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Stream, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = match tokio::time::timeout_at(deadline, TcpIo::connect(backend.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Error::with_cause(
                ErrorKind::BackendConnect,
                format!("connect {}", backend.addr),
                e,
            ))
        }
        // The connect op is dropped in flight; its socket is closed when the kernel completes
        // it (tokio-uring keeps the fd alive until then).
        Err(_) => {
            return Err(Error::new(
                ErrorKind::BackendConnectTimeout,
                format!("connect {} timed out", backend.addr),
            ))
        }
    };
    match backend.scheme {
        Scheme::Http => Ok(Stream::Plain(tcp)),
        Scheme::Https => {
            let cfg = tls.ok_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    "https backend without a TLS client config",
                )
            })?;
            let name = ServerName::try_from(backend.host.clone()).map_err(|e| {
                Error::with_cause(
                    ErrorKind::BackendTls,
                    format!("bad TLS name {}", backend.host),
                    e,
                )
            })?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match TlsStream::connect(tcp, cfg.clone(), name, left).await {
                Ok(s) => Ok(Stream::Tls(Box::new(s))),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Err(Error::new(
                    ErrorKind::BackendConnectTimeout,
                    format!("TLS handshake with {} timed out", backend.display()),
                )),
                Err(e) => Err(Error::with_cause(
                    ErrorKind::BackendTls,
                    format!("TLS handshake with {}", backend.display()),
                    e,
                )),
            }
        }
    }
}
