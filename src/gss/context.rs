//! The first step of a krb5 client context: the AP-REQ for a service (RFC 4121 §4.1), and the
//! context that will check the service's AP-REP.
//!
//! One function for every initiator in the proxy: delegation's backend tokens (S4U2Proxy, or
//! a cached ticket), the Basic-via-KDC check (a ticket for our own service) and the test
//! client. BLOCKING unless the credential already holds a service ticket for the target:
//! otherwise `gss_init_sec_context` makes a TGS exchange with the KDC.
//!
//! Invariant: a success always carries a token; a mechanism that "succeeds" without one is an
//! error ([`InitiateError::NoToken`]), so callers never send an empty `Negotiate`.

use libgssapi::context::{ClientCtx, CtxFlags};
use libgssapi::credential::Cred;
use libgssapi::oid::Oid;

use super::cred::krb5_name;
use super::status::GssStatus;

/// Why no first token came out; each caller maps it onto its own closed error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiateError {
    /// The target principal does not import as a krb5 name.
    Name(GssStatus),
    /// `gss_init_sec_context` failed (for a TGS exchange, the KDC's answer is in the minor code).
    Step(GssStatus),
    /// The mechanism completed without producing a token.
    NoToken,
}

/// `gss_init_sec_context` once for `target` (`HTTP/host@REALM`) with `cred`, `flags`, `mech` and
/// the channel bindings' application data `cb`: the token to send and the context that checks
/// the answer.
pub fn initiate(
    cred: &Cred,
    target: &str,
    flags: CtxFlags,
    mech: Oid<'static>,
    cb: Option<&[u8]>,
) -> Result<(ClientCtx, Vec<u8>), InitiateError> {
    let name = krb5_name(target).map_err(InitiateError::Name)?;
    let mut ctx = ClientCtx::new(Some(cred.clone()), name, flags, Some(mech));
    match ctx.step(None, cb) {
        Ok(Some(t)) => {
            let token = t.to_vec();
            Ok((ctx, token))
        }
        Ok(None) => Err(InitiateError::NoToken),
        Err(e) => Err(InitiateError::Step(e.into())),
    }
}
