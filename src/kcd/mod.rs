//! Kerberos on the KDC side of the proxy: the bounded blocking pool every GSS-API call runs
//! in, and the credential plumbing shared by the inbound acceptor (`auth::kerberos`) and
//! constrained delegation (S4U2Self/S4U2Proxy, the per-user ticket cache).
//!
//! ## Why a pool
//!
//! MIT's GSS-API and krb5 libraries are synchronous. Accepting an AP-REQ reads the keytab and
//! writes the replay cache file; S4U2Self/S4U2Proxy and TGT refreshes talk to the KDC, and
//! against a KDC that drops packets one call blocked 18–36 s (MIT 1.20 ignores
//! `kdc_timeout`). A tokio-uring core thread that made such a call would stall every
//! connection it owns. So all of them go through [`pool::BlockingPool`]: a few named threads,
//! a bounded queue, a deadline per call that the core enforces, and `QueueFull` instead of
//! waiting when the KDC side is saturated. One pool serves all cores (`Arc<BlockingPool>`).
//!
//! ## Shared state, named
//!
//! - The **delegated-ticket cache** ([`cache`], owned by [`Delegator`]): one `RwLock`ed map
//!   for all cores; a hit takes the read lock for a lookup, never across an await or a GSS call.
//! - The **replay cache** is MIT's file cache (`$KRB5RCACHEDIR/krb5_<euid>.rcache2`, or the
//!   acceptor's `rcache` store entry), locked per access by the library: one cache for all
//!   cores, threads and processes of the proxy's user.
//! - GSS **credentials** (`libgssapi::credential::Cred`) are reference-counted handles that MIT
//!   locks internally; one acceptor credential is shared by all pool threads.
//!
//! ## Modules
//!
//! - [`pool`]: the bounded blocking pool.
//! - [`delegate`]: the delegation engine ([`Delegator`]): S4U2Self/S4U2Proxy on the pool, a
//!   backend `Negotiate` token per request, mutual authentication of the backend.
//! - [`cache`] (private): the delegated-ticket cache shared by all cores: single-flight per
//!   (user, SPN), refresh ahead of expiry, negative cache of refusals, size bound.
//! - [`cred`]: credentials from an explicit store (`gss_acquire_cred_from`: keytab, client
//!   keytab, ccache, rcache) and readable GSS status codes.
//! - [`tickets`]: a credential's tickets (flags, end times) read with libkrb5 — the other FFI.

#![deny(clippy::undocumented_unsafe_blocks)]

mod cache;
pub mod cred;
pub mod delegate;
mod metrics;
pub mod pool;
mod pool_metrics;
pub mod tickets;

pub use cred::{CredStore, GssStatus};
pub use delegate::{
    BackendToken, CacheOutcome, DelegationConfig, DelegationError, DelegationStats, Delegator,
    Refusal, Subject, Unknown,
};
pub use pool::{BlockingPool, PoolError, PoolStats};
