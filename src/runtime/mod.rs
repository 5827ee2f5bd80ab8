//! Threads: one pinned OS thread per worker, each running its own tokio-uring runtime with its
//! own listeners (SO_REUSEPORT), connection slab, buffer pool, backend pool and access-log
//! buffer. The only cross-thread traffic is the shutdown signal.
//!
//! Start-up: [`assemble`] builds the process from its configuration; [`run`] then binds,
//! spawns and joins. Everything that can fail is tried before the first worker starts, and
//! every problem is a [`StartError`].
//!
//! SIGHUP reopens the access log (log rotation) and changes nothing else; reload is not built.
//!
//! Shutdown: the first SIGTERM/SIGINT starts a drain: every worker stops accepting (its
//! listening sockets are shut down, so new connections are refused), idle connections close,
//! and in-flight requests may finish until `--drain-timeout`. A second signal exits at once.
//! `/readyz` on the metrics listener answers 503 from the start of the drain ([`Lifecycle`]),
//! so a balancer's probe sees it before the listeners close.
//!
//! systemd: both changes of the [`Lifecycle`] are also told to the service manager when it
//! asked for them ([`notify`]: `READY=1` once serving, `STOPPING=1` when the drain starts).

pub mod assemble;
pub mod notify;
mod start_error;
mod worker;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

pub use start_error::{StartError, StartErrors};

use crate::accesslog::Sink;
use crate::backend;
use crate::config::{AccessLogDest, Config, Listener};
use crate::metrics::{self, Readiness};
use crate::net::{self, listener::bind_reuseport};
use crate::proxy::ctx::Shared;

/// Builds everything that can fail at start-up (TLS configs, log file, listening sockets)
/// before any worker starts, then runs the workers until they have drained.
pub fn run(cfg: Config) -> Result<(), StartErrors> {
    let shared = Arc::new(prepare(cfg)?);
    let cfg = &shared.cfg;
    let sink = assemble::access_log(cfg)?;
    let sockets = bind(cfg)?;
    let lifecycle = Arc::new(Lifecycle::new(notify::Notifier::from_env()));
    if let Some(addr) = cfg.metrics_listen {
        let listener = metrics::bind(addr)
            .map_err(|e| StartError::new(format!("--metrics-listen {addr}"), e))?;
        let registry = assemble::registry(&shared, lifecycle.clone());
        metrics::serve(listener, Arc::new(registry))
            .map_err(|e| StartError::new("metrics thread", e))?;
    }
    backend::spawn_checks(
        &cfg.routes,
        shared.health.clone(),
        shared.tls_client.clone(),
        cfg.timeouts.backend_connect,
    )
    .map_err(|e| StartError::new("health check thread", e))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let reopen = (sink.clone(), cfg.access_log.clone());
    spawn_signal_thread(stop_tx, lifecycle.clone(), reopen)?;

    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(cfg.workers);
    for (id, listeners) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let cpu = shared.cfg.cpus.get(id).copied();
        let stop = stop_rx.clone();
        let sink = sink.clone();
        let started = started_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("kcd-worker-{id}"))
            .spawn(move || worker::run(id, cpu, listeners, shared, sink, stop, started))
            .map_err(|e| StartError::new(format!("spawning worker {id}"), e))?;
        threads.push(t);
    }
    // Every listening socket was bound (and listens) before the workers started, and each
    // worker says when its accept loops run. Serving (and systemd's READY=1) only once all of
    // them do: a worker that could not start (no io_uring ring, no CPU to pin to) says
    // nothing, the count ends short when its sender is dropped, and `join` reports it.
    drop(started_tx);
    if started_rx.iter().take(cfg.workers).count() == cfg.workers {
        lifecycle.serving(&format!(
            "serving on {} with {} workers",
            cfg.listeners
                .iter()
                .map(|l| l.addr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cfg.workers
        ));
    }
    tracing::info!(
        workers = cfg.workers,
        listeners = ?cfg.listeners.iter().map(|l| (l.addr, l.tls)).collect::<Vec<_>>(),
        "kcdproxy started"
    );
    join(threads)?;
    tracing::info!("kcdproxy stopped");
    Ok(())
}

/// The shared state, fully built (see [`assemble::shared`]), once io_uring is known to be
/// available; [`check`] (`--check-config`) stops after this and the listeners. An io_uring
/// problem is reported with the configuration's, so one pass shows everything to fix.
pub fn prepare(cfg: Config) -> Result<Shared, StartErrors> {
    let mut errs = StartErrors::default();
    errs.keep(net::uring_available().map_err(|e| StartError::uring_unavailable(&e)));
    let shared = errs.keep(assemble::shared(cfg));
    match shared {
        Some(shared) if errs.is_empty() => Ok(shared),
        _ => Err(errs),
    }
}

/// `--check-config`: everything [`run`] tries before the first worker starts, without starting
/// one: io_uring, the files and services of [`prepare`], and every listen address
/// ([`check_listeners`]), all in one pass.
pub fn check(cfg: Config) -> Result<(), StartErrors> {
    let listen = check_listeners(&cfg.listeners);
    let mut errs = StartErrors::default();
    errs.keep(prepare(cfg));
    errs.keep(listen);
    errs.or_ok(())
}

/// Binds each listen address once and releases it at once, reporting every one that cannot be
/// bound (in use, not an address of this host, a privileged port).
///
/// The sockets are bound as the workers bind them, with SO_REUSEPORT, so checking beside a
/// running kcdproxy of the same user does not report its own ports as taken. The
/// `--metrics-listen` address is not checked: it is a plain socket, which the running process
/// holds, so checking before a restart would always fail.
pub fn check_listeners(listeners: &[Listener]) -> Result<(), StartErrors> {
    let mut errs = StartErrors::default();
    for l in listeners {
        errs.keep(bind_one(l).map(drop));
    }
    errs.or_ok(())
}

fn bind_one(l: &Listener) -> Result<TcpListener, StartError> {
    bind_reuseport(l.addr, 4096).map_err(|e| StartError::new(format!("listen {}", l.addr), e))
}

/// Every worker binds its own socket per listener, so a port conflict is reported now, with
/// every address that cannot be bound (the first worker's attempt finds them all).
fn bind(cfg: &Config) -> Result<Vec<Vec<(TcpListener, bool)>>, StartErrors> {
    let mut sockets = Vec::with_capacity(cfg.workers);
    for _ in 0..cfg.workers {
        let mut errs = StartErrors::default();
        let mine: Vec<_> = cfg
            .listeners
            .iter()
            .filter_map(|l| Some((errs.keep(bind_one(l))?, l.tls)))
            .collect();
        errs.or_ok(())?;
        sockets.push(mine);
    }
    Ok(sockets)
}

/// Waits for every worker to finish its drain; reports each one that failed.
fn join(threads: Vec<JoinHandle<Result<(), String>>>) -> Result<(), StartErrors> {
    let mut failed = StartErrors::default();
    for (id, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(StartError::new(format!("worker {id}"), e)),
            Err(_) => failed.push(StartError::bare(format!("worker {id} panicked"))),
        }
    }
    failed.or_ok(())
}

/// The process's own part of `/readyz`: serving once every worker accepts on its listening
/// sockets, not ready again once a drain begins. Each change is also sent to systemd
/// when it started the process as `Type=notify` ([`notify`]).
pub struct Lifecycle {
    serving: AtomicBool,
    draining: AtomicBool,
    /// Held while a change is recorded and sent, so systemd hears them in the order they
    /// happened: a drain that starts while the workers are starting is never followed by
    /// `READY=1`.
    notify: Mutex<Option<notify::Notifier>>,
}

impl Lifecycle {
    pub fn new(notify: Option<notify::Notifier>) -> Lifecycle {
        Lifecycle {
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            notify: Mutex::new(notify),
        }
    }

    /// Every worker accepts on its listening sockets: ready, and `READY=1` with `status`
    /// unless a drain has already begun.
    fn serving(&self, status: &str) {
        let notify = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        self.serving.store(true, Ordering::Relaxed);
        if let Some(n) = notify.as_ref() {
            if !self.draining.load(Ordering::Relaxed) {
                n.ready(status);
            }
        }
    }

    /// The drain has started: not ready, and `STOPPING=1`.
    fn draining(&self) {
        let notify = self.notify.lock().unwrap_or_else(|e| e.into_inner());
        self.draining.store(true, Ordering::Relaxed);
        if let Some(n) = notify.as_ref() {
            n.stopping("draining: finishing in-flight requests");
        }
    }
}

impl Readiness for Lifecycle {
    fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining: shutting down".into())
        } else if !self.serving.load(Ordering::Relaxed) {
            Err("starting: listeners not up yet".into())
        } else {
            Ok(())
        }
    }
}

/// SIGTERM/SIGINT: the first starts the drain, a second exits at once. SIGHUP reopens the
/// access log (log rotation) and changes nothing else: a configuration reload is not built yet,
/// and a HUP must not kill the proxy the way the default action would.
fn spawn_signal_thread(
    stop: watch::Sender<bool>,
    lifecycle: Arc<Lifecycle>,
    (sink, dest): (Sink, AccessLogDest),
) -> Result<(), StartError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| StartError::new("signal handler", e))?;
    std::thread::Builder::new()
        .name("kcd-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    match sink.reopen(&dest) {
                        Ok(()) => tracing::info!("SIGHUP: access log reopened"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: reopening the access log"),
                    }
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    lifecycle.draining();
                    tracing::info!(
                        signal = sig,
                        "draining: no new connections, finishing in-flight requests"
                    );
                    let _ = stop.send(true);
                } else {
                    tracing::warn!(signal = sig, "second signal: exiting now");
                    std::process::exit(1);
                }
            }
        })
        .map_err(|e| StartError::new("signal thread", e))?;
    Ok(())
}
