//! The state one worker (core) shares between its connections. Single-threaded: `Cell`,
//! `RefCell` and `Rc`, no locks.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use slab::Slab;
use tokio::sync::Notify;

use crate::accesslog::AccessLog;
use crate::auth::ntlm::NtHashStore;
use crate::auth::{AuthCtx, AuthServices};
use crate::backend::{BackendSets, Health, Pool};
use crate::config::Config;
use crate::gss::BlockingPool;
use crate::http1::Limits;
use crate::kcd::Delegator;
use crate::metrics::WorkerMetrics;

/// Immutable configuration shared by all workers, built once at start-up.
pub struct Shared {
    pub cfg: Config,
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
    /// The local NT-hash store, loaded once; each worker keeps its own copy.
    pub nt_hashes: Option<NtHashStore>,
    /// Kerberos acceptor, winbind, Basic cache: shared by all workers.
    pub auth_services: Arc<AuthServices>,
    /// Constrained delegation, when a route has `spn=`.
    pub delegator: Option<Arc<Delegator>>,
    /// Where every call that may block runs (KDC, GSS-API, winbind); `None` when nothing
    /// configured needs one.
    pub blocking_pool: Option<Arc<BlockingPool>>,
    /// One per worker, by worker id; read by the metrics endpoint.
    pub worker_metrics: Vec<Arc<WorkerMetrics>>,
    /// Every backend's health, shared by all cores (see `backend::Health` for why shared),
    /// read by the metrics endpoint and `/readyz`.
    pub health: Arc<Health>,
}

/// A live client connection, as the worker's slab records it.
pub struct ConnInfo {
    /// The client: the socket's peer, or the source a trusted balancer's PROXY protocol header
    /// gave (set once the header is read).
    pub peer: std::net::SocketAddr,
    pub since: std::time::Instant,
}

pub struct WorkerCtx {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    /// Per route: its backends and the choice among them.
    pub backends: BackendSets,
    /// Per route: the Host header to send when the route rewrites it.
    pub host_override: Vec<Option<String>>,
    /// Per route: its `spn=` as a shared string (part of delegated backend pool keys).
    spns: Vec<Rc<str>>,
    pub pool: RefCell<Pool>,
    pub log: AccessLog,
    pub metrics: Arc<WorkerMetrics>,
    pub auth: AuthCtx,
    /// The connection slab. INVARIANT: holds exactly the connections this worker is serving.
    pub conns: RefCell<Slab<ConnInfo>>,
    pub max_conns: usize,
    draining: Cell<bool>,
    /// Woken when draining starts (idle connections and accept loops stop).
    drain_started: Notify,
    /// Woken when the last connection ends.
    all_closed: Notify,
}

impl WorkerCtx {
    pub fn new(id: usize, shared: Arc<Shared>, log: AccessLog, auth: AuthCtx) -> Self {
        let cfg = &shared.cfg;
        let host_override = cfg
            .routes
            .routes()
            .iter()
            .map(|r| {
                r.options
                    .rewrite_host
                    .then(|| format!("{}:{}", r.backends[0].host, r.backends[0].port))
            })
            .collect();
        let spns = cfg
            .routes
            .routes()
            .iter()
            .map(|r| Rc::from(r.options.spn.as_deref().unwrap_or("")))
            .collect();
        let max_conns = cfg.max_connections.div_ceil(cfg.workers.max(1));
        WorkerCtx {
            id,
            limits: Limits {
                max_head_bytes: cfg.max_header_bytes,
                max_headers: cfg.max_headers,
                max_request_line: MAX_REQUEST_LINE.min(cfg.max_header_bytes),
            },
            backends: BackendSets::new(&cfg.routes, id, Arc::clone(&shared.health)),
            host_override,
            spns,
            pool: RefCell::new(Pool::new(cfg.backend_pool_size, cfg.timeouts.backend_idle)),
            log,
            metrics: shared.worker_metrics.get(id).cloned().unwrap_or_default(),
            auth,
            conns: RefCell::new(Slab::new()),
            max_conns,
            draining: Cell::new(false),
            drain_started: Notify::new(),
            all_closed: Notify::new(),
            shared,
        }
    }

    /// Route `route`'s SPN (empty when it does not delegate).
    pub fn route_spn(&self, route: usize) -> Rc<str> {
        Rc::clone(&self.spns[route])
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn start_drain(&self) {
        self.draining.set(true);
        self.drain_started.notify_waiters();
        if self.conns.borrow().is_empty() {
            self.all_closed.notify_waiters();
        }
    }

    /// Resolves once draining has started (immediately if it already has).
    pub async fn drain_signal(&self) {
        let notified = self.drain_started.notified();
        if self.draining.get() {
            return;
        }
        notified.await
    }

    /// Resolves once no connection is left.
    pub async fn wait_all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.conns.borrow().is_empty() {
                return;
            }
            notified.await;
        }
    }

    pub fn conn_opened(&self, info: ConnInfo) -> Option<usize> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.max_conns {
            return None;
        }
        self.metrics.conn_opened();
        Some(conns.insert(info))
    }

    pub fn conn_closed(&self, key: usize) {
        let mut conns = self.conns.borrow_mut();
        if conns.try_remove(key).is_some() {
            self.metrics.conn_closed();
        }
        if conns.is_empty() && self.draining.get() {
            self.all_closed.notify_waiters();
        }
    }
}

/// Longest request line accepted (→ 414 beyond). IIS's own default limits (maxUrl 4096 +
/// maxQueryString 2048) fit with room; SharePoint's long query strings too.
pub const MAX_REQUEST_LINE: usize = 16 * 1024;
