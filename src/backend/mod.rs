//! Backends: connecting (TCP, then TLS for `https://`), the per-core pool of idle connections,
//! the choice of a route's backend, and the backends' health (passive: connect failures;
//! active: a route's `check=` path).
//!
//! INVARIANT (the pool's, enforced by [`Pool`] itself): a connection authenticated for one user
//! never carries another user's request. A pooled connection is only ever handed out for the
//! exact [`PoolKey`] it was stored under; the key carries everything that makes two connections
//! non-interchangeable: the backend address, scheme and TLS name, and the user and SPN a
//! delegated ticket authenticated it for. A connection that carried a client's own
//! connection-oriented `Authorization` (NTLM, Negotiate passed through) is bound to that client
//! connection ([`Private`]) and never enters the shared pool, because the backend ties that
//! authentication to the TCP connection (RFC 4559 §6; MS-NTHT).

mod check;
mod connect;
mod health;
mod pool;
mod select;

pub use check::spawn_checks;
pub use connect::connect;
pub use health::{Health, HealthPolicy, State};
pub use pool::{BackendConn, Checkin, Pool, PoolKey, Private};
pub use select::BackendSets;
