//! The client side of Kerberos, for tests, benches and load tools (never used to serve): a
//! user's credential from a password, `Negotiate` tokens for a service, and the check of the
//! service's answer (mutual authentication). BLOCKING throughout: AS and TGS exchanges with
//! the KDC.
//!
//! Invariant: nothing on the serving path makes one; the proxy's own client contexts (backend
//! tokens, Basic via the KDC) go through [`crate::gss::context::initiate`] directly.

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::Cred;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_MECH_SPNEGO};

use super::{classify, KerberosError};
use crate::gss::context::{initiate, InitiateError};
use crate::gss::cred;
use crate::gss::GssStatus;

/// The client side, for tests, benches and load tools (not used to serve): a user's
/// credential from a password, and `Negotiate` tokens for a service. BLOCKING (AS and TGS
/// exchanges with the KDC on first use of each service).
pub struct KerberosInitiator {
    cred: Cred,
}

/// Which framing a test client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiatorMech {
    /// GSS-API's own SPNEGO (MIT), as curl and browsers send.
    Spnego,
    /// A bare krb5 token.
    Krb5,
}

impl KerberosInitiator {
    /// Logs `principal` in with `password` (an AS exchange; the tickets stay in memory).
    pub fn with_password(principal: &str, password: &str) -> Result<Self, KerberosError> {
        let fail = |s: GssStatus| KerberosError::Credential(format!("{principal}: {s}"));
        let name = cred::krb5_name(principal).map_err(fail)?;
        // MIT's SPNEGO initiator negotiates only among the credential's mechanisms, so it
        // must be listed too, or it "cannot find mechanisms to negotiate".
        let mechs = cred::mech_set(&[GSS_MECH_KRB5, GSS_MECH_SPNEGO]).map_err(fail)?;
        let cred = cred::password_login(&name, password, &mechs).map_err(fail)?;
        Ok(KerberosInitiator { cred })
    }

    /// Wraps an existing initiator credential (e.g. a [`crate::gss::DelegatedCred`]'s, for
    /// S4U2Proxy).
    pub fn from_cred(cred: Cred) -> Self {
        KerberosInitiator { cred }
    }

    /// Starts a context to `service` (`HTTP/proxy.example.test@EXAMPLE.TEST`) asking for
    /// mutual authentication (and delegation of the TGT when `delegate`). Returns the token
    /// for `Authorization: Negotiate` and the context that checks the server's answer.
    pub fn token(
        &self,
        service: &str,
        mech: InitiatorMech,
        delegate: bool,
    ) -> Result<(Vec<u8>, InitiatorCtx), KerberosError> {
        let mut flags = CtxFlags::GSS_C_MUTUAL_FLAG
            | CtxFlags::GSS_C_REPLAY_FLAG
            | CtxFlags::GSS_C_SEQUENCE_FLAG
            | CtxFlags::GSS_C_INTEG_FLAG;
        if delegate {
            flags |= CtxFlags::GSS_C_DELEG_FLAG;
        }
        let oid = match mech {
            InitiatorMech::Spnego => GSS_MECH_SPNEGO,
            InitiatorMech::Krb5 => GSS_MECH_KRB5,
        };
        let (ctx, token) =
            initiate(&self.cred, service, flags, oid, None).map_err(|e| match e {
                InitiateError::Name(s) | InitiateError::Step(s) => {
                    KerberosError::Gss(s.to_string())
                }
                InitiateError::NoToken => {
                    KerberosError::Malformed("the initiator produced no token")
                }
            })?;
        Ok((token, InitiatorCtx { ctx }))
    }
}

/// A client context waiting for the server's final token.
pub struct InitiatorCtx {
    ctx: ClientCtx,
}

impl InitiatorCtx {
    /// Checks the server's `WWW-Authenticate: Negotiate` token (mutual authentication).
    pub fn finish(&mut self, server_token: &[u8]) -> Result<(), KerberosError> {
        match self.ctx.step(Some(server_token), None) {
            Ok(None) if self.ctx.is_complete() => Ok(()),
            Ok(_) => Err(KerberosError::ContinueNeeded),
            Err(e) => Err(classify(e.into())),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.ctx.is_complete()
    }
}
