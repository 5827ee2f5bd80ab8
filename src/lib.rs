//! # kcdproxy
//!
//! An authenticating reverse proxy for Exchange and SharePoint: it terminates TLS,
//! pre-authenticates users (NTLM, Negotiate, Basic) and reaches the backend *as the user* with
//! Kerberos constrained delegation (MS-SFU S4U2self + S4U2proxy).
//!
//! ## Architecture
//!
//! Thread per core. `runtime` starts one pinned OS thread per worker; each runs its own
//! tokio-uring runtime with its own SO_REUSEPORT listeners, connection slab, buffer pool and
//! backend connection pool. Nothing on the per-request path takes a lock or crosses a thread,
//! except the delegated-ticket cache (a short read-locked lookup), on a miss, the blocking
//! pool where every KDC, GSS-API and winbind call runs, and the backends' health (relaxed
//! atomic loads; written only when a connect fails or a backend changes state).
//!
//! ## The phases of one request (`proxy`)
//!
//! ```text
//! accept ─► [TLS handshake] ─► read_head ─► route ─► authenticate ─┬─► 401 challenge ─► log
//!                                                                  └─► choose backend
//!   ─► forward: connect (pool keyed by identity) ─► ticket (delegation) ─► head [100]
//!               ─► request body ║ response head + body ─► [retry once?]
//!   ─► log ─► keep-alive: back to read_head
//! ```
//!
//! Every failure is an [`error::Error`]; `proxy::respond` is the one place that turns it into
//! an HTTP answer, and `proxy::log` writes every request's access-log line.
//!
//! ## Floors
//!
//! A module uses only modules on floors below its own, never one beside it or above it
//! (`tests/layering.rs` reads this list and checks every `crate::` path under `src/`):
//!
//! - floor 6: [`runtime`]: assembles the process (config → shared state → workers → metrics
//!   registry), pinned worker threads, signals and graceful drain, systemd's readiness
//!   notification.
//! - floor 5: [`proxy`]: the phase sequence above, body streaming, error answers, the log line.
//! - floor 4: [`auth`]: client pre-authentication: the per-connection state machine, NTLM,
//!   Negotiate, Basic, and the identity only it can mint. [`kcd`]: constrained delegation:
//!   S4U on the blocking pool, the per-user ticket cache, backend tokens. [`backend`]: backend
//!   connections, the per-core pool that keeps the identity rule, the choice of a backend, the
//!   backends' passive health.
//! - floor 3: [`gss`]: everything GSS-API and Kerberos below both `auth` and `kcd`: the bounded
//!   blocking pool, credentials, ticket reading, the DER reader and the SPNEGO codec.
//! - floor 2: [`tls`]: rustls server (clients) and client (backends) over the I/O trait; the
//!   plain-or-TLS stream.
//! - floor 1: [`net`]: listeners, the owned-buffer I/O trait over tokio-uring, reads and writes
//!   under a deadline, the buffer pool, the PROXY protocol header. [`http1`]: zero-copy head
//!   parsing, body framing, head encoding, `Authorization` values. [`accesslog`]: one line per
//!   request, buffered per core. [`metrics`]: per-worker counters, the Prometheus endpoint,
//!   `/healthz` and `/readyz`.
//! - floor 0: [`error`]: the one error type (closed kind, side, context). [`config`]: flags →
//!   validated [`config::Config`], the route table.

pub mod accesslog;
pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod gss;
pub mod http1;
pub mod kcd;
pub mod metrics;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod tls;
