//! The backend's `Authorization: Negotiate` token, and the check of the backend's answer
//! (mutual authentication, RFC 4120 §3.2.4's AP-REP, raw or inside a SPNEGO NegTokenResp).
//!
//! Invariant: a [`BackendToken`] is made only by the delegation engine, with the context that
//! produced its AP-REQ, so [`BackendToken::verify_mutual`] checks the answer against exactly
//! that request. Local crypto only: fine on a core.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use libgssapi::context::{ClientCtx, SecurityContext};

use super::DelegationError;
use crate::gss::spnego::{self, NegState, NegotiateToken};
use crate::gss::GssStatus;
use crate::http1::authz;

/// Where a token's ticket came from (for the access log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// A cached ticket; no KDC.
    Hit,
    /// This request waited for its own KDC exchange.
    Miss,
    /// This request waited for another request's exchange for the same (user, SPN).
    Joined,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Joined => "joined",
        }
    }
}

/// A token for the backend request, and the context that checks the backend's answer.
pub struct BackendToken {
    pub(super) header: Vec<u8>,
    pub(super) ctx: ClientCtx,
    pub(super) cache: CacheOutcome,
    pub(super) kdc_time: Option<Duration>,
}

impl fmt::Debug for BackendToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendToken")
            .field("header_len", &self.header.len())
            .field("cache", &self.cache)
            .field("kdc_time", &self.kdc_time)
            .finish_non_exhaustive()
    }
}

impl BackendToken {
    /// The value of the backend request's `Authorization` header: `Negotiate <base64>`.
    pub fn header_value(&self) -> &[u8] {
        &self.header
    }

    pub fn cache(&self) -> CacheOutcome {
        self.cache
    }

    /// Time this request spent waiting for the KDC side (pool queue included): `None` on a hit.
    pub fn kdc_time(&self) -> Option<Duration> {
        self.kdc_time
    }

    /// Checks the backend's final `WWW-Authenticate: Negotiate <token>` value (the AP-REP,
    /// raw or in a SPNEGO NegTokenResp). Local crypto only: fine on a core.
    ///
    /// `None`, or a bare `Negotiate` without a token, is accepted: many IIS configurations do
    /// not send the AP-REP on success, and HTTP gives no way to insist. The backend is then
    /// not authenticated by Kerberos (only by TLS, where used).
    pub fn verify_mutual(mut self, www_authenticate: Option<&[u8]>) -> Result<(), DelegationError> {
        let Some(value) = www_authenticate else {
            return Ok(());
        };
        let fail = |why: &str| DelegationError::MutualAuthFailed(why.to_owned());
        let answer = authz::split(value);
        if answer.scheme != authz::Scheme::Negotiate {
            return Err(fail("not a Negotiate answer"));
        }
        let b64 = answer.token;
        if b64.is_empty() {
            return Ok(());
        }
        if b64.len() > spnego::MAX_TOKEN_LEN * 2 {
            return Err(fail("token too large"));
        }
        let token = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| fail("token is not base64"))?;
        let ap_rep: &[u8] = if token.first() == Some(&0xa1) {
            match spnego::parse_negotiate_token(&token) {
                Ok(NegotiateToken::Resp(resp)) => {
                    if matches!(resp.neg_state, Some(NegState::Reject)) {
                        return Err(fail("backend rejected the token (SPNEGO reject)"));
                    }
                    resp.response_token
                        .ok_or_else(|| fail("SPNEGO answer without an AP-REP"))?
                }
                _ => return Err(fail("malformed SPNEGO answer")),
            }
        } else {
            &token
        };
        match self.ctx.step(Some(ap_rep), None) {
            Ok(None) if self.ctx.is_complete() => Ok(()),
            Ok(_) => Err(fail("context not complete after the AP-REP")),
            Err(e) => Err(DelegationError::MutualAuthFailed(
                GssStatus::from(e).to_string(),
            )),
        }
    }
}

/// `Negotiate <base64 token>`: the value of the backend request's `Authorization` header.
pub(super) fn header_value(token: &[u8]) -> Vec<u8> {
    authz::join("Negotiate", token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_negotiate_base64() {
        assert_eq!(
            header_value(&[0x60, 0x01, 0x02]),
            b"Negotiate YAEC".to_vec()
        );
    }
}
