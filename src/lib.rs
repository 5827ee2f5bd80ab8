//! # kcdproxy
//!
//! An authenticating reverse proxy for Exchange and SharePoint: it terminates TLS,
//! pre-authenticates users (NTLM, Negotiate, Basic) and reaches the backend *as the user* with
//! Kerberos constrained delegation.
//!
//! ## Architecture
//!
//! Thread per core. `runtime` starts one pinned OS thread per worker; each runs its own
//! tokio-uring runtime with its own SO_REUSEPORT listeners, connection slab, buffer pool and
//! backend connection pool. Nothing on the per-request path takes a lock or crosses a thread.
//!
//! ## The phases of one request (`proxy`)
//!
//! ```text
//! accept ─► [TLS handshake] ─► read head (header timeout) ─► parse + validate framing
//!        ─► route ─► [authenticate] ─► backend connection (pool keyed by identity)
//!        ─► write head ─► stream request body ║ read response head, stream response body
//!        ─► access log ─► keep-alive: back to "read head"
//! ```
//!
//! Every failure is an [`error::Error`]; `proxy::respond` is the one place that turns it into
//! an HTTP answer and an access-log reason.
//!
//! ## Modules
//!
//! - [`config`]: flags → validated [`config::Config`], the route table.
//! - [`runtime`]: start-up (the process assembled from its config, typed start-up errors),
//!   worker threads, CPU pinning, signals and graceful drain.
//! - [`net`]: listeners, the owned-buffer I/O trait over tokio-uring, the buffer pool.
//! - [`tls`]: rustls server (clients) and client (backends) over the I/O trait.
//! - [`http1`]: zero-copy head parsing, body framing, head encoding.
//! - [`kcd`]: the bounded pool for blocking GSS-API/KDC calls, Kerberos credentials.
//! - [`backend`]: backend connections and the per-core pool.
//! - [`proxy`]: the phase sequence above, body streaming, error responses.
//! - [`auth`]: client pre-authentication: the per-connection state machine, NTLM, Negotiate,
//!   Basic, and the identity only it can mint.
//! - [`accesslog`]: one line per request.
//! - [`metrics`]: per-worker counters, the Prometheus text writer every counter owner renders
//!   through, and the `/metrics` endpoint.

pub mod accesslog;
pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod http1;
pub mod kcd;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod tls;
