//! Authentication of clients: the per-connection state machine ([`machine`]), the mechanisms it
//! drives ([`ntlm`]), and the [`identity::Identity`] that only this module can mint.
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
