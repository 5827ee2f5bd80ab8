//! What in a `Negotiate` token is Kerberos: a bare GSS krb5 token, or a SPNEGO NegTokenInit
//! whose first mechanism is Kerberos and that carries its optimistic krb5 token. Pure and
//! cheap (no GSS-API call): the auth state machine calls it inline to choose between Kerberos
//! and NTLM.
//!
//! Invariant: only a token of the right shape (RFC 2743 §3.1 framing, RFC 4121 §4.1 TOK_ID and
//! an `[APPLICATION 14]` AP-REQ filling the rest) is ever handed to GSS-API; everything else is
//! told apart here as [`KerberosError::NotKerberos`] (another mechanism's) or
//! [`KerberosError::Malformed`] (broken).

use super::KerberosError;
use crate::gss::der::{self, tag};
use crate::gss::oid::{self, is_krb5};
use crate::gss::reader::Reader;
use crate::gss::spnego::{self, NegotiateToken, SpnegoError};

/// How the Kerberos token arrived, so the answer goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KrbWrapping<'a> {
    /// A bare GSS krb5 token (`Negotiate` without SPNEGO, as some Java and old clients send).
    Raw,
    /// Inside a SPNEGO NegTokenInit.
    Spnego {
        /// The client's first mechanism OID (contents): krb5 or MS-krb5; echoed back.
        mech: &'a [u8],
        /// The DER of the client's MechTypeList, which a mechListMIC signs.
        mech_types_der: &'a [u8],
        /// The client's mechListMIC, if it sent one.
        mech_list_mic: Option<&'a [u8]>,
    },
}

/// A Kerberos token found in a `Negotiate` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KrbToken<'a> {
    /// The GSS-framed krb5 InitialContextToken (the AP-REQ), as GSS-API takes it.
    pub ap_req: &'a [u8],
    pub wrapping: KrbWrapping<'a>,
}

/// Finds the Kerberos token in a (base64-decoded) `Negotiate` token, without blocking:
/// a raw GSS krb5 token, or a SPNEGO NegTokenInit whose first mechanism is Kerberos and that
/// carries the optimistic krb5 token. NTLM (raw or in SPNEGO) is [`KerberosError::NotKerberos`].
pub fn parse_token(token: &[u8]) -> Result<KrbToken<'_>, KerberosError> {
    if token.len() > spnego::MAX_TOKEN_LEN {
        return Err(KerberosError::Malformed("Negotiate token too large"));
    }
    if token.first() == Some(&tag::APPLICATION_0) {
        // A GSS InitialContextToken: bare krb5, or SPNEGO's NegTokenInit.
        let Ok((mech, inner)) = spnego::initial_context_token(token) else {
            return Err(KerberosError::Malformed(
                "GSS token framing (length or OID)",
            ));
        };
        if is_krb5(mech) {
            check_ap_req(inner)?;
            return Ok(KrbToken {
                ap_req: token,
                wrapping: KrbWrapping::Raw,
            });
        }
        if mech != oid::SPNEGO {
            return Err(KerberosError::Malformed(
                "GSS token of an unknown mechanism",
            ));
        }
    }
    let init = match spnego::parse_negotiate_token(token) {
        Ok(NegotiateToken::Init(init)) => init,
        Ok(NegotiateToken::RawNtlm(_) | NegotiateToken::Resp(_)) => {
            return Err(KerberosError::NotKerberos)
        }
        Err(SpnegoError::Malformed(why)) => return Err(KerberosError::Malformed(why)),
    };
    let Some(first) = init.preferred().filter(|m| is_krb5(m)) else {
        return Err(KerberosError::NotKerberos);
    };
    let Some(ap_req) = init.mech_token else {
        return Err(KerberosError::NotKerberos);
    };
    match spnego::initial_context_token(ap_req) {
        Ok((m, inner)) if is_krb5(m) => check_ap_req(inner)?,
        _ => {
            return Err(KerberosError::Malformed(
                "SPNEGO mechToken is not a krb5 token",
            ))
        }
    }
    Ok(KrbToken {
        ap_req,
        wrapping: KrbWrapping::Spnego {
            mech: first,
            mech_types_der: init.mech_types_der(),
            mech_list_mic: init.mech_list_mic,
        },
    })
}

/// The shape of a krb5 InitialContextToken's inner token (RFC 4121 §4.1): TOK_ID `01 00`
/// (AP-REQ), then one `[APPLICATION 14]` AP-REQ filling the rest. MIT reports an AP-REQ that
/// does not decode as a bare GSS_S_FAILURE without a reason, so obvious garbage is told
/// apart here, before it reaches GSS-API.
fn check_ap_req(inner: &[u8]) -> Result<(), KerberosError> {
    let mut r = Reader::new(inner);
    let tok_id = r.take(2);
    if tok_id == Some(&[0x01, 0x00][..]) && der::only(r.rest(), tag::APPLICATION_14).is_ok() {
        Ok(())
    } else {
        Err(KerberosError::Malformed("krb5 token is not an AP-REQ"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gss::spnego::NegState;

    /// A raw krb5 token of the right shape: `60 L 06 09 <krb5> 01 00 6e L <ap_req body>`.
    fn raw_krb5(ap_req_body: &[u8]) -> Vec<u8> {
        let mut inner = der::wrap(tag::OID, oid::KRB5);
        inner.extend_from_slice(&[0x01, 0x00]);
        inner.extend_from_slice(&der::wrap(tag::APPLICATION_14, ap_req_body));
        der::wrap(tag::APPLICATION_0, &inner)
    }

    #[test]
    fn raw_krb5_is_raw() {
        let tok = raw_krb5(&[]);
        let p = parse_token(&tok).unwrap();
        assert_eq!(p.wrapping, KrbWrapping::Raw);
        assert_eq!(p.ap_req, &tok[..]);
        let long = raw_krb5(&[0u8; 300]);
        assert_eq!(parse_token(&long).unwrap().ap_req.len(), long.len());
    }

    #[test]
    fn spnego_with_krb5_first_is_unwrapped() {
        let ap_req = raw_krb5(&[0x30, 0x00]);
        for first in [oid::MS_KRB5, oid::KRB5] {
            let tok = spnego::build_neg_token_init(&[first, oid::KRB5, oid::NTLM], Some(&ap_req));
            let p = parse_token(&tok).unwrap();
            assert_eq!(p.ap_req, &ap_req[..]);
            let KrbWrapping::Spnego {
                mech,
                mech_types_der,
                mech_list_mic,
            } = p.wrapping
            else {
                panic!("not SPNEGO")
            };
            assert_eq!(mech, first);
            assert_eq!(
                mech_types_der,
                spnego::mech_type_list(&[first, oid::KRB5, oid::NTLM])
            );
            assert_eq!(mech_list_mic, None);
        }
    }

    #[test]
    fn not_kerberos_and_malformed_are_told_apart() {
        let ap_req = raw_krb5(&[]);
        let ntlm = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2";
        let cases: Vec<(&str, Vec<u8>, KerberosError)> = vec![
            ("raw NTLM", ntlm.to_vec(), KerberosError::NotKerberos),
            (
                "SPNEGO NTLM first",
                spnego::build_neg_token_init(&[oid::NTLM, oid::KRB5], Some(ntlm)),
                KerberosError::NotKerberos,
            ),
            (
                "krb5 first without a token",
                spnego::build_neg_token_init(&[oid::KRB5, oid::NTLM], None),
                KerberosError::NotKerberos,
            ),
            (
                "NegTokenResp",
                spnego::build_neg_token_resp(NegState::AcceptIncomplete, None, Some(&ap_req), None),
                KerberosError::NotKerberos,
            ),
            (
                "krb5 first with an NTLM token",
                spnego::build_neg_token_init(&[oid::KRB5], Some(ntlm)),
                KerberosError::Malformed("SPNEGO mechToken is not a krb5 token"),
            ),
        ];
        for (name, tok, want) in cases {
            assert_eq!(parse_token(&tok), Err(want), "{name}");
        }
        for garbage in [
            &b""[..],
            b"\x60",
            b"\x60\x05\x06\x09",
            b"\x60\x84\xff\xff\xff\xff\x06",
            b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x03", // krb5-like, wrong OID
            b"hello world",
            b"\xa1\x00",
        ] {
            assert!(
                matches!(parse_token(garbage), Err(KerberosError::Malformed(_))),
                "{garbage:?}"
            );
        }
        // Trailing byte after a raw token: the outer length no longer covers it exactly.
        let mut trailing = raw_krb5(&[]);
        trailing.push(0);
        assert!(parse_token(&trailing).is_err());
    }

    #[test]
    fn no_input_panics_the_parser() {
        // Every prefix and single-byte corruption of real-shaped tokens.
        let ap_req = raw_krb5(&[0x30; 200]);
        let spnego_tok =
            spnego::build_neg_token_init(&[oid::MS_KRB5, oid::KRB5, oid::NTLM], Some(&ap_req));
        for tok in [ap_req, spnego_tok] {
            for t in der::mutations(&tok) {
                let _ = parse_token(&t);
            }
        }
    }
}
