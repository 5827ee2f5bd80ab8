//! Authentication of clients: the per-connection state machine ([`machine`]), the mechanisms it
//! drives ([`ntlm`], [`kerberos`], Basic), the process-wide services that run blocking checks
//! ([`services`]), and the [`identity::Identity`] that only this module can mint. `metrics`
//! renders the services' counters.
//!
//! Stands on [`crate::gss`] (the blocking pool, credentials, the SPNEGO codec) and knows
//! nothing of delegation (`kcd`): what it hands on is an [`Identity`], with the client's
//! [`crate::gss::DelegatedCred`] when Kerberos kept one.
#![forbid(unsafe_code)]

pub mod identity;
pub mod kerberos;
pub mod machine;
mod metrics;
pub mod ntlm;
pub mod services;

pub use identity::{AuthScheme, Identity, IdentityMap};
pub use machine::{AuthCtx, ConnAuth, Verdict};
pub use services::AuthServices;
