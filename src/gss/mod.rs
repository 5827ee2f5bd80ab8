//! The GSS floor: what both client authentication (`auth`) and constrained delegation (`kcd`)
//! stand on, and which knows neither of them.
//!
//! - **Where blocking calls run** ([`pool`]): MIT's GSS-API and krb5 libraries are synchronous.
//!   Accepting an AP-REQ reads the keytab and writes the replay cache file; S4U2Self/S4U2Proxy
//!   and TGT refreshes talk to the KDC, and against a KDC that drops packets one call blocked
//!   18–36 s (MIT 1.20 ignores `kdc_timeout`); a winbind check waits on the domain controller.
//!   A tokio-uring core thread that made such a call would stall every connection it owns, so
//!   all of them go through [`BlockingPool`]: a few named threads, a bounded queue, a deadline
//!   per call that the core enforces, and `QueueFull` instead of waiting when it is saturated.
//!   One pool serves all cores (`Arc<BlockingPool>`); `pool_metrics` renders its gauges.
//! - **Credentials and contexts** ([`cred`], [`context`], [`tickets`]): credentials from an
//!   explicit store or a password, the client credential an acceptor keeps
//!   ([`DelegatedCred`]), the first step of a krb5 client context, and the tickets' flags and
//!   end times that GSS-API does not show.
//! - **Status codes** ([`status`]): GSS major/minor codes that print right, and the one table
//!   of krb5 error numbers.
//! - **The wire** ([`reader`], [`der`], [`spnego`], [`oid`]): a panic-free byte cursor (also
//!   NTLM's), one DER reader/writer and one `Negotiate`/SPNEGO codec with its own error.
//!
//! ## Shared state, named
//!
//! - The **replay cache** is MIT's file cache (`$KRB5RCACHEDIR/krb5_<euid>.rcache2`, or the
//!   acceptor's `rcache` store entry), locked per access by the library: one cache for all
//!   cores, threads and processes of the proxy's user.
//! - GSS **credentials** (`libgssapi::credential::Cred`) are reference-counted handles that MIT
//!   locks internally; one acceptor credential is shared by all pool threads.
//! - libkrb5 **contexts** for reading tickets are per pool thread, never shared ([`tickets`]).
//!
//! ## Invariants
//!
//! - Imports nothing from `auth`, `kcd`, `proxy`, `backend` or `runtime`: those stand on it.
//! - The only `unsafe` of the Kerberos code is here ([`cred`], [`status`], [`tickets`]), and
//!   every block says why it is sound.
//! - No input from the network can panic the codecs: all parsing goes through [`reader`].

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod context;
pub mod cred;
pub mod der;
pub mod oid;
pub mod pool;
mod pool_metrics;
pub mod reader;
pub mod spnego;
pub mod status;
pub mod tickets;

pub use cred::{CredStore, DelegatedCred};
pub use pool::{BlockingPool, PoolError, PoolStats};
pub use status::GssStatus;
