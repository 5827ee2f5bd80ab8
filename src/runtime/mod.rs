//! Threads: one pinned OS thread per worker, each running its own tokio-uring runtime with its
//! own listeners (SO_REUSEPORT), connection slab, buffer pool, backend pool and access-log
//! buffer. The only cross-thread traffic is the shutdown signal.
//!
//! Shutdown: the first SIGTERM/SIGINT starts a drain: every worker stops accepting (its
//! listening sockets are shut down, so new connections are refused), idle connections close,
//! and in-flight requests may finish until `--drain-timeout`. A second signal exits at once.

mod start_error;
mod worker;

use std::sync::Arc;

use tokio::sync::watch;

pub use start_error::{StartError, StartErrors};

use crate::accesslog::Sink;
use crate::auth::ntlm::{NtHashStore, NtlmAcceptor, VerifyPolicy};
use crate::auth::AuthServices;
use crate::config::{Config, Scheme};
use crate::kcd::{BlockingPool, DelegationConfig, Delegator};
use crate::metrics::{self, Registry, Source, WorkerMetrics, Workers};
use crate::net::listener::bind_reuseport;
use crate::proxy::ctx::Shared;
use crate::tls;

/// Builds everything that can fail at start-up (TLS configs, log file, listening sockets)
/// before any worker starts, then runs the workers until they have drained.
pub fn run(cfg: Config) -> Result<(), StartErrors> {
    let shared = Arc::new(prepare(cfg)?);
    let cfg = &shared.cfg;
    let sink = Sink::open(&cfg.access_log)
        .map_err(|e| StartError::new(format!("access log {:?}", cfg.access_log), e))?;

    // Every worker binds its own socket per listener, so a port conflict is reported now.
    let mut sockets = Vec::with_capacity(cfg.workers);
    for _ in 0..cfg.workers {
        let mut mine = Vec::new();
        for l in &cfg.listeners {
            let s = bind_reuseport(l.addr, 4096)
                .map_err(|e| StartError::new(format!("listen {}", l.addr), e))?;
            mine.push((s, l.tls));
        }
        sockets.push(mine);
    }

    if let Some(addr) = cfg.metrics_listen {
        let listener = metrics::bind(addr)
            .map_err(|e| StartError::new(format!("--metrics-listen {addr}"), e))?;
        let registry = registry(&shared);
        metrics::serve(listener, Arc::new(registry))
            .map_err(|e| StartError::new("metrics thread", e))?;
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    spawn_signal_thread(stop_tx)?;

    let mut threads = Vec::with_capacity(cfg.workers);
    for (id, listeners) in sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let cpu = shared.cfg.cpus.get(id).copied();
        let stop = stop_rx.clone();
        let sink = sink.clone();
        let t = std::thread::Builder::new()
            .name(format!("kcd-worker-{id}"))
            .spawn(move || worker::run(id, cpu, listeners, shared, sink, stop))
            .map_err(|e| StartError::new(format!("spawning worker {id}"), e))?;
        threads.push(t);
    }
    tracing::info!(
        workers = cfg.workers,
        listeners = ?cfg.listeners.iter().map(|l| (l.addr, l.tls)).collect::<Vec<_>>(),
        "kcdproxy started"
    );
    let mut failed = StartErrors::default();
    for (id, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(StartError::new(format!("worker {id}"), e)),
            Err(_) => failed.push(StartError::bare(format!("worker {id} panicked"))),
        }
    }
    failed.or_ok(())?;
    tracing::info!("kcdproxy stopped");
    Ok(())
}

/// Loads certificates and keys and builds the TLS configurations, reporting every problem.
pub fn prepare(cfg: Config) -> Result<Shared, StartErrors> {
    let mut errs = StartErrors::default();
    let tls_server = if cfg.listeners.iter().any(|l| l.tls) || !cfg.tls_certs.is_empty() {
        match tls::server_config(&cfg.tls_certs) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.extend(StartErrors::from(e));
                None
            }
        }
    } else {
        None
    };
    let https = cfg
        .routes
        .routes()
        .iter()
        .flat_map(|r| &r.backends)
        .any(|b| b.scheme == Scheme::Https);
    let tls_client = if https {
        match tls::client_config(cfg.backend_ca.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                errs.push(StartError::from_message(e));
                None
            }
        }
    } else {
        None
    };
    let nt_hashes = match &cfg.auth.ntlm_hash_file {
        Some(p) => match NtHashStore::load(p) {
            Ok(s) => Some(s),
            Err(e) => {
                errs.push(StartError::new(
                    format!("--ntlm-hash-file `{}`", p.display()),
                    e,
                ));
                None
            }
        },
        None => None,
    };
    errs.or_ok(())?;
    let workers = cfg.workers;
    let a = &cfg.auth;
    let blocking_pool = if a.kerberos.is_some() || a.winbind.is_some() {
        match BlockingPool::new(a.kdc.threads, a.kdc.queue) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => return Err(StartError::new("KDC pool threads", e).into()),
        }
    } else {
        None
    };
    let mut shared = Shared {
        cfg,
        tls_server,
        tls_client,
        nt_hashes,
        auth_services: Arc::new(AuthServices::none()),
        delegator: None,
        blocking_pool,
        worker_metrics: (0..workers)
            .map(|_| Arc::new(WorkerMetrics::default()))
            .collect(),
    };
    let ntlm_config = shared.ntlm_config();
    if let Err(e) = NtlmAcceptor::new(&ntlm_config, VerifyPolicy::default()) {
        return Err(
            StartError::new("NTLM names (--ntlm-domain/--ntlm-computer/--dns-domain)", e).into(),
        );
    }
    // Blocking (keytab, the proxy's TGT, winbind helpers): fine here, before any core runs.
    shared.auth_services = Arc::new(AuthServices::new(
        &shared.cfg,
        &ntlm_config,
        shared.blocking_pool.clone(),
    )?);
    // Constrained delegation: the proxy logs in from its keytab now (BLOCKING, start-up
    // only), so a wrong keytab or login is a start-up error, not a 5xx per request.
    let delegating = shared
        .cfg
        .routes
        .routes()
        .iter()
        .any(|r| r.options.spn.is_some());
    if let (true, Some(k), Some(pool)) = (
        delegating,
        shared.cfg.auth.kerberos.as_ref(),
        shared.blocking_pool.as_ref(),
    ) {
        let Some(login) = &k.login else {
            return Err(StartError::bare("spn= routes need --kerberos-login").into());
        };
        let kdc = &shared.cfg.auth.kdc;
        let dc = DelegationConfig {
            keytab: k.keytab.clone(),
            login: login.clone(),
            kdc_timeout: kdc.timeout,
            refresh_ahead: kdc.refresh_ahead,
            negative_ttl: kdc.negative_ttl,
            max_entries: kdc.ticket_cache_size,
        };
        match Delegator::new(dc, Arc::clone(pool)) {
            Ok(d) => shared.delegator = Some(Arc::new(d)),
            Err(e) => {
                return Err(StartError::new(
                    "delegation",
                    format!("logging in as {login} from {}: {e}", k.keytab.display()),
                )
                .into())
            }
        }
    }
    Ok(shared)
}

fn spawn_signal_thread(stop: watch::Sender<bool>) -> Result<(), StartError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| StartError::new("signal handler", e))?;
    std::thread::Builder::new()
        .name("kcd-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for sig in signals.forever() {
                seen += 1;
                if seen == 1 {
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

/// What the metrics endpoint renders, in exposition order: the workers' counters, then the
/// KDC pool's, the authentication services' and the delegation engine's, those that exist.
fn registry(shared: &Shared) -> Registry {
    let mut sources: Vec<Arc<dyn Source + Send + Sync>> =
        vec![Arc::new(Workers(shared.worker_metrics.clone()))];
    if let Some(pool) = &shared.blocking_pool {
        sources.push(pool.clone());
    }
    sources.push(shared.auth_services.clone());
    if let Some(d) = &shared.delegator {
        sources.push(d.clone());
    }
    Registry { sources }
}
