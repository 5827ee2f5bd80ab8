//! NTLM inside `Authorization: Negotiate …`: raw NTLMSSP, or SPNEGO (RFC 4178) wrapping it.
//!
//! Clients put NTLM into a Negotiate header two ways:
//!
//! - **raw**: the token *is* an NTLMSSP message (`NTLMSSP\0…`); WinHTTP does this when it knows
//!   Kerberos is impossible. The answer is the raw CHALLENGE, in `WWW-Authenticate: Negotiate`.
//! - **SPNEGO**: a NegTokenInit (inside the GSS-API `[APPLICATION 0]` framing) whose mechTypes
//!   start with the NTLM OID 1.3.6.1.4.1.311.2.2.10 and whose mechToken is the NEGOTIATE; then a
//!   NegTokenResp whose responseToken is the AUTHENTICATE. The answers are NegTokenResps:
//!   accept-incomplete + supportedMech NTLM + CHALLENGE, then accept-completed (+ mechListMIC).
//!
//! [`route_ntlm`] tells the Negotiate path which case it has. [`ntlm_mech_list_mic`] checks the
//! client's mechListMIC and makes ours: RFC 4178 §5 requires the MIC exchange when the mech has
//! integrity, and Windows clients send one whenever NTLM produced a MIC.
//!
//! The token itself is read by the SPNEGO codec ([`crate::gss::spnego`]); this module only
//! decides what it means for NTLM. Invariant: the optimistic token of a NegTokenInit counts as
//! NTLM only when NTLM is the *first* mechanism (RFC 4178 §3.2), and a codec error is an
//! [`NtlmError::Malformed`] with the codec's text, so the log says which rule broke.

use super::crypto::Direction;
use super::message::SIGNATURE;
use super::verify::NtlmVerified;
use super::NtlmError;
use crate::gss::oid;
use crate::gss::spnego::{self, NegotiateToken, SpnegoError};

impl From<SpnegoError> for NtlmError {
    fn from(e: SpnegoError) -> Self {
        match e {
            SpnegoError::Malformed(why) => NtlmError::Malformed(why),
        }
    }
}

/// How an NTLM message arrived, so the answer goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapping {
    /// Answer with the bare NTLM message.
    Raw,
    /// Answer with a NegTokenResp ([`spnego::build_neg_token_resp`]).
    Spnego,
}

/// What a `Negotiate` token means for NTLM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtlmRoute<'a> {
    /// An NTLMSSP message for the NTLM state machine.
    Message { ntlm: &'a [u8], wrapping: Wrapping },
    /// A NegTokenInit that offers NTLM without carrying an NTLM token (another mech's optimistic
    /// token, or none). If the route allows NTLM and the caller does not take the other mech,
    /// answer accept-incomplete + supportedMech NTLM with no token; the client then sends its
    /// NEGOTIATE in a NegTokenResp. (RFC 4178 then requires the mechListMIC exchange.)
    NtlmOffered,
    /// Nothing for NTLM (Kerberos only, or a NegTokenResp without an NTLM token).
    NotNtlm,
}

/// Classifies a `Negotiate` token for the NTLM path.
pub fn route_ntlm(token: &[u8]) -> Result<NtlmRoute<'_>, NtlmError> {
    let is_ntlm = |t: &[u8]| t.starts_with(SIGNATURE);
    Ok(match spnego::parse_negotiate_token(token)? {
        NegotiateToken::RawNtlm(ntlm) => NtlmRoute::Message {
            ntlm,
            wrapping: Wrapping::Raw,
        },
        NegotiateToken::Init(init) => match init.mech_token {
            // The optimistic token belongs to the first mech (RFC 4178 §3.2).
            Some(t) if is_ntlm(t) && init.preferred() == Some(oid::NTLM) => NtlmRoute::Message {
                ntlm: t,
                wrapping: Wrapping::Spnego,
            },
            _ if init.offers(oid::NTLM) => NtlmRoute::NtlmOffered,
            _ => NtlmRoute::NotNtlm,
        },
        NegotiateToken::Resp(resp) => match resp.response_token {
            Some(t) if is_ntlm(t) => NtlmRoute::Message {
                ntlm: t,
                wrapping: Wrapping::Spnego,
            },
            _ => NtlmRoute::NotNtlm,
        },
    })
}

/// The SPNEGO mechListMIC for an NTLM login: checks the client's (when sent) over
/// `mech_types_der` with the client-to-server signing key, and returns ours (server-to-client),
/// both at sequence number 0 — the first signature each way.
pub fn ntlm_mech_list_mic(
    verified: &NtlmVerified,
    mech_types_der: &[u8],
    client_mic: Option<&[u8]>,
) -> Result<[u8; 16], NtlmError> {
    let no_ess = NtlmError::Malformed("mechListMIC needs NTLM extended session security");
    if let Some(mic) = client_mic {
        let mut theirs = verified.signer(Direction::ClientToServer).ok_or(no_ess)?;
        if !theirs.verify(mech_types_der, mic) {
            return Err(NtlmError::MicMismatch);
        }
    }
    let mut ours = verified.signer(Direction::ServerToClient).ok_or(no_ess)?;
    Ok(ours.sign(mech_types_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gss::spnego::{
        build_neg_token_init, build_neg_token_resp, mech_type_list, NegState,
    };

    const NEGOTIATE: &[u8] = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2";

    #[test]
    fn raw_ntlm_is_routed_raw() {
        assert_eq!(
            route_ntlm(NEGOTIATE).unwrap(),
            NtlmRoute::Message {
                ntlm: NEGOTIATE,
                wrapping: Wrapping::Raw
            }
        );
    }

    #[test]
    fn init_with_ntlm_first_is_routed() {
        let tok = build_neg_token_init(&[oid::NTLM], Some(NEGOTIATE));
        assert_eq!(
            route_ntlm(&tok).unwrap(),
            NtlmRoute::Message {
                ntlm: NEGOTIATE,
                wrapping: Wrapping::Spnego
            }
        );
        let NegotiateToken::Init(init) = spnego::parse_negotiate_token(&tok).unwrap() else {
            panic!("not an init")
        };
        assert_eq!(init.mech_types_der(), mech_type_list(&[oid::NTLM]));
        assert_eq!(init.mech_types().collect::<Vec<_>>(), [oid::NTLM]);
    }

    #[test]
    fn windows_style_init_is_parsed() {
        // 60 48 06 06 2b0601050502 a0 3e 30 3c a0 0e 30 0c 06 0a <NTLM> a2 2a 04 28 <40-byte
        // NEGOTIATE>: the shape Windows SMB/HTTP clients send when only NTLM is possible.
        let mut neg = b"NTLMSSP\0\x01\x00\x00\x00\x97\x82\x08\xe2".to_vec();
        neg.extend_from_slice(&[0; 16]);
        neg.extend_from_slice(&[0x0a, 0x00, 0x61, 0x4a, 0, 0, 0, 0x0f]);
        let mut tok =
            hex::decode("604806062b0601050502a03e303ca00e300c060a2b06010401823702020aa22a0428")
                .unwrap();
        tok.extend_from_slice(&neg);
        assert_eq!(tok, build_neg_token_init(&[oid::NTLM], Some(&neg)));
        assert!(matches!(
            route_ntlm(&tok).unwrap(),
            NtlmRoute::Message { .. }
        ));
    }

    #[test]
    fn kerberos_first_is_not_ntlm_but_ntlm_is_offered() {
        let tok =
            build_neg_token_init(&[oid::MS_KRB5, oid::KRB5, oid::NTLM], Some(b"\x60\x01\x00"));
        assert_eq!(route_ntlm(&tok).unwrap(), NtlmRoute::NtlmOffered);
        let tok = build_neg_token_init(&[oid::KRB5], Some(b"\x60\x01\x00"));
        assert_eq!(route_ntlm(&tok).unwrap(), NtlmRoute::NotNtlm);
        // NTLM token under a Kerberos-first list: the token is the first mech's by definition.
        let tok = build_neg_token_init(&[oid::KRB5, oid::NTLM], Some(NEGOTIATE));
        assert_eq!(route_ntlm(&tok).unwrap(), NtlmRoute::NtlmOffered);
        let tok = build_neg_token_init(&[oid::NTLM], None);
        assert_eq!(route_ntlm(&tok).unwrap(), NtlmRoute::NtlmOffered);
    }

    #[test]
    fn authenticate_leg_in_a_resp_is_routed() {
        let auth = [SIGNATURE.as_slice(), &[3, 0, 0, 0]].concat();
        let leg = build_neg_token_resp(NegState::AcceptIncomplete, None, Some(&auth), None);
        assert_eq!(
            route_ntlm(&leg).unwrap(),
            NtlmRoute::Message {
                ntlm: &auth,
                wrapping: Wrapping::Spnego
            }
        );
        // A NegTokenResp without an NTLM token (a Kerberos answer) is not NTLM.
        let krb = build_neg_token_resp(NegState::AcceptCompleted, Some(oid::KRB5), None, None);
        assert_eq!(route_ntlm(&krb).unwrap(), NtlmRoute::NotNtlm);
    }

    #[test]
    fn codec_errors_are_ntlm_malformed_with_the_codec_text() {
        let mut trailing =
            build_neg_token_resp(NegState::AcceptIncomplete, None, Some(NEGOTIATE), None);
        trailing.push(0);
        assert_eq!(
            route_ntlm(&trailing).unwrap_err(),
            NtlmError::Malformed("trailing bytes in SPNEGO token")
        );
        assert_eq!(
            route_ntlm(b"").unwrap_err().to_string(),
            "ntlm_malformed: neither SPNEGO nor NTLMSSP"
        );
    }
}
