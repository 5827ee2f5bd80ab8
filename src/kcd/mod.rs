//! Kerberos constrained delegation: a backend `Authorization: Negotiate` token *as the user*
//! (MS-SFU 3.1.5.1 S4U2Self, 3.1.5.2 S4U2Proxy), the per-user ticket cache behind it, and the
//! check of the backend's answer.
//!
//! Stands on [`crate::gss`] — the blocking pool every KDC call runs in, credentials, the
//! SPNEGO codec — and knows nothing of client authentication: the caller hands it a principal
//! (and, for a Kerberos client, the [`crate::gss::DelegatedCred`] the acceptor kept).
//!
//! ## Shared state, named
//!
//! - The **delegated-ticket cache** (`cache`, owned by [`Delegator`]): one `RwLock`ed map
//!   for all cores; a hit takes the read lock for a lookup, never across an await or a GSS call.
//! - The **proxy's own credential** (its TGT from the keytab): behind a mutex taken only on
//!   pool threads, around a login at most.
//!
//! ## Modules
//!
//! - `delegate`: the delegation engine ([`Delegator`]): S4U2Self/S4U2Proxy on the pool, a
//!   backend token per request, what runs where and why.
//! - `cache` (private): the delegated-ticket cache shared by all cores: single-flight per
//!   (user, SPN), refresh ahead of expiry, negative cache of refusals, size bound.
//! - `token`: the backend token ([`BackendToken`]) and mutual authentication of the backend.
//! - `error`: [`DelegationError`] and the mapping of KDC failures onto it.
//! - `stats`: the engine's counters ([`DelegationStats`]); `metrics`: their Prometheus text.

#![forbid(unsafe_code)]

mod cache;
mod delegate;
mod error;
mod metrics;
mod stats;
mod token;

pub use delegate::{DelegationConfig, Delegator, Subject};
pub use error::{DelegationError, Refusal, Unknown};
pub use stats::DelegationStats;
pub use token::{BackendToken, CacheOutcome};
