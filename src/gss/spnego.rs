//! The `Negotiate` token codec: SPNEGO (RFC 4178) NegTokenInit/NegTokenResp, the GSS
//! InitialContextToken framing (RFC 2743 §3.1) and the two raw forms HTTP clients send instead
//! (RFC 4559 §4: Negotiate carries SPNEGO; Windows and Java also send bare NTLMSSP or bare krb5).
//!
//! It tells what a token *is*; deciding what to do with it is the caller's: NTLM inside
//! Negotiate (mechanism choice, the NTLM mechListMIC) lives with NTLM in the auth module, the
//! Kerberos acceptor takes the krb5 token out of a NegTokenInit, and delegation reads the
//! backend's NegTokenResp.
//!
//! Invariants:
//!
//! - **No token can panic it**: DER is read with [`super::der`] over the panic-free reader, and
//!   a token over [`MAX_TOKEN_LEN`] is refused before parsing.
//! - **DER is exact**: nothing may follow a complete token or sit unread inside a SEQUENCE,
//!   and context tags must appear in increasing order.
//! - Errors are [`SpnegoError`]: what broke, never a verdict about a user.

use std::fmt;

use super::der::{self, tag, DerError};
use super::oid;
use super::reader::Reader;

/// The first eight bytes of every NTLM message (MS-NLMP 2.2.1): a `Negotiate` token that
/// starts with them is raw NTLM, not SPNEGO.
pub const NTLMSSP_SIGNATURE: &[u8; 8] = b"NTLMSSP\0";

/// The largest token accepted (HTTP allows 32 KB+ headers for Kerberos PACs; NTLM in SPNEGO is
/// far smaller, but this reader is generic enough for the Negotiate path's first look).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Why a token is not a well-formed `Negotiate` token. The text is static (which rule broke).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpnegoError {
    /// The token breaks DER or SPNEGO's structure (the text says which rule).
    Malformed(&'static str),
}

impl SpnegoError {
    /// A short stable token for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SpnegoError::Malformed(_) => "spnego_malformed",
        }
    }
}

impl fmt::Display for SpnegoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpnegoError::Malformed(why) => write!(f, "{}: {why}", self.as_str()),
        }
    }
}

impl std::error::Error for SpnegoError {}

impl From<DerError> for SpnegoError {
    fn from(e: DerError) -> Self {
        SpnegoError::Malformed(match e {
            DerError::Malformed => "malformed SPNEGO DER",
            DerError::Trailing => "trailing bytes in SPNEGO token",
            DerError::UnexpectedField => "unexpected field in SPNEGO token",
        })
    }
}

/// Splits a GSS InitialContextToken (`[APPLICATION 0] { thisMech OID, innerContextToken }`,
/// RFC 2743 §3.1) whose outer length covers exactly the token: the mechanism OID (contents)
/// and the inner token. Both SPNEGO's NegTokenInit and a bare krb5 AP-REQ are framed so.
pub fn initial_context_token(token: &[u8]) -> Result<(&[u8], &[u8]), SpnegoError> {
    let body = der::only(token, tag::APPLICATION_0)?;
    let mut r = Reader::new(body);
    let mech = der::expect(&mut r, tag::OID)?;
    Ok((mech, r.rest()))
}

/// negState of a NegTokenResp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NegState {
    AcceptCompleted = 0,
    AcceptIncomplete = 1,
    Reject = 2,
    RequestMic = 3,
}

/// A client's first SPNEGO token.
#[derive(Clone, Copy, Debug)]
pub struct NegTokenInit<'a> {
    /// The DER of MechTypeList (the SEQUENCE, tag included): what mechListMIC signs.
    mech_types_der: &'a [u8],
    /// The optimistic token for the first mech.
    pub mech_token: Option<&'a [u8]>,
    pub mech_list_mic: Option<&'a [u8]>,
}

impl<'a> NegTokenInit<'a> {
    /// The offered mechanisms (OID contents), most preferred first.
    pub fn mech_types(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        // Validated at parse time: a SEQUENCE of OIDs.
        let body = der::only(self.mech_types_der, tag::SEQUENCE).unwrap_or_default();
        let mut r = Reader::new(body);
        std::iter::from_fn(move || der::expect(&mut r, tag::OID).ok())
    }

    /// The DER of MechTypeList, for the mechListMIC.
    pub fn mech_types_der(&self) -> &'a [u8] {
        self.mech_types_der
    }

    pub fn offers(&self, mech: &[u8]) -> bool {
        self.mech_types().any(|m| m == mech)
    }

    pub fn preferred(&self) -> Option<&'a [u8]> {
        self.mech_types().next()
    }
}

/// A NegTokenResp (either direction).
#[derive(Clone, Copy, Debug, Default)]
pub struct NegTokenResp<'a> {
    pub neg_state: Option<NegState>,
    /// OID contents.
    pub supported_mech: Option<&'a [u8]>,
    pub response_token: Option<&'a [u8]>,
    pub mech_list_mic: Option<&'a [u8]>,
}

/// A parsed `Negotiate` token.
#[derive(Clone, Copy, Debug)]
pub enum NegotiateToken<'a> {
    /// A bare NTLMSSP message.
    RawNtlm(&'a [u8]),
    Init(NegTokenInit<'a>),
    Resp(NegTokenResp<'a>),
}

/// Parses the (base64-decoded) token of an `Authorization: Negotiate` header.
pub fn parse_negotiate_token(token: &[u8]) -> Result<NegotiateToken<'_>, SpnegoError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(SpnegoError::Malformed("Negotiate token too large"));
    }
    if token.starts_with(NTLMSSP_SIGNATURE) {
        return Ok(NegotiateToken::RawNtlm(token));
    }
    match token.first() {
        Some(&tag::APPLICATION_0) => parse_init(token).map(NegotiateToken::Init),
        Some(&t) if t == tag::context(1) => parse_resp(token).map(NegotiateToken::Resp),
        _ => Err(SpnegoError::Malformed("neither SPNEGO nor NTLMSSP")),
    }
}

fn parse_init(token: &[u8]) -> Result<NegTokenInit<'_>, SpnegoError> {
    let (mech, inner) = initial_context_token(token)?;
    if mech != oid::SPNEGO {
        // Another GSS mechanism framed directly (a bare Kerberos AP-REQ): not ours to parse.
        return Err(SpnegoError::Malformed("GSS token is not SPNEGO"));
    }
    let inner = der::only(inner, tag::context(0))?;
    let seq = der::only(inner, tag::SEQUENCE)?;
    let mut out = NegTokenInit {
        mech_types_der: &[],
        mech_token: None,
        mech_list_mic: None,
    };
    for (n, v) in der::context_fields(seq, 3)? {
        match n {
            0 => {
                // Keep the whole SEQUENCE TLV for the MIC; check it holds only OIDs.
                let list = der::only(v, tag::SEQUENCE)?;
                let mut lr = Reader::new(list);
                while !lr.is_empty() {
                    der::expect(&mut lr, tag::OID)?;
                }
                out.mech_types_der = v;
            }
            1 => {} // reqFlags: advisory, unused
            2 => out.mech_token = Some(der::only(v, tag::OCTET_STRING)?),
            _ => out.mech_list_mic = Some(der::only(v, tag::OCTET_STRING)?),
        }
    }
    if out.mech_types_der.is_empty() {
        return Err(SpnegoError::Malformed("NegTokenInit without mechTypes"));
    }
    Ok(out)
}

fn parse_resp(token: &[u8]) -> Result<NegTokenResp<'_>, SpnegoError> {
    let inner = der::only(token, tag::context(1))?;
    let seq = der::only(inner, tag::SEQUENCE)?;
    let mut out = NegTokenResp::default();
    for (n, v) in der::context_fields(seq, 3)? {
        match n {
            0 => {
                out.neg_state = Some(match der::only(v, tag::ENUMERATED)? {
                    [0] => NegState::AcceptCompleted,
                    [1] => NegState::AcceptIncomplete,
                    [2] => NegState::Reject,
                    [3] => NegState::RequestMic,
                    _ => return Err(SpnegoError::Malformed("bad SPNEGO negState")),
                })
            }
            1 => out.supported_mech = Some(der::only(v, tag::OID)?),
            2 => out.response_token = Some(der::only(v, tag::OCTET_STRING)?),
            _ => out.mech_list_mic = Some(der::only(v, tag::OCTET_STRING)?),
        }
    }
    Ok(out)
}

/// Builds a NegTokenResp. `supported_mech` is OID contents (e.g. [`oid::NTLM`]); the server
/// names it in its first answer only.
pub fn build_neg_token_resp(
    neg_state: NegState,
    supported_mech: Option<&[u8]>,
    response_token: Option<&[u8]>,
    mech_list_mic: Option<&[u8]>,
) -> Vec<u8> {
    let mut seq = Vec::with_capacity(32 + response_token.map_or(0, <[u8]>::len));
    der::push_tlv(
        &mut seq,
        tag::context(0),
        &der::wrap(tag::ENUMERATED, &[neg_state as u8]),
    );
    if let Some(m) = supported_mech {
        der::push_tlv(&mut seq, tag::context(1), &der::wrap(tag::OID, m));
    }
    if let Some(t) = response_token {
        der::push_tlv(&mut seq, tag::context(2), &der::wrap(tag::OCTET_STRING, t));
    }
    if let Some(m) = mech_list_mic {
        der::push_tlv(&mut seq, tag::context(3), &der::wrap(tag::OCTET_STRING, m));
    }
    der::wrap(tag::context(1), &der::wrap(tag::SEQUENCE, &seq))
}

/// The DER of a MechTypeList.
pub fn mech_type_list(mechs: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for m in mechs {
        der::push_tlv(&mut list, tag::OID, m);
    }
    der::wrap(tag::SEQUENCE, &list)
}

/// Builds a client's NegTokenInit (GSS-framed): for tests and load tools.
pub fn build_neg_token_init(mechs: &[&[u8]], mech_token: Option<&[u8]>) -> Vec<u8> {
    let mut seq = Vec::new();
    der::push_tlv(&mut seq, tag::context(0), &mech_type_list(mechs));
    if let Some(t) = mech_token {
        der::push_tlv(&mut seq, tag::context(2), &der::wrap(tag::OCTET_STRING, t));
    }
    let mut body = Vec::new();
    der::push_tlv(&mut body, tag::OID, oid::SPNEGO);
    der::push_tlv(&mut body, tag::context(0), &der::wrap(tag::SEQUENCE, &seq));
    der::wrap(tag::APPLICATION_0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEGOTIATE: &[u8] = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2";

    #[test]
    fn init_round_trip() {
        let tok =
            build_neg_token_init(&[oid::MS_KRB5, oid::KRB5, oid::NTLM], Some(b"\x60\x01\x00"));
        let NegotiateToken::Init(init) = parse_negotiate_token(&tok).unwrap() else {
            panic!("not an init")
        };
        assert_eq!(
            init.mech_types().collect::<Vec<_>>(),
            [oid::MS_KRB5, oid::KRB5, oid::NTLM]
        );
        assert_eq!(
            init.mech_types_der(),
            mech_type_list(&[oid::MS_KRB5, oid::KRB5, oid::NTLM])
        );
        assert_eq!(init.preferred(), Some(oid::MS_KRB5));
        assert!(init.offers(oid::NTLM));
        assert!(!init.offers(oid::NEGOEX));
        assert_eq!(init.mech_token, Some(&b"\x60\x01\x00"[..]));
        assert_eq!(init.mech_list_mic, None);
        let (mech, _) = initial_context_token(&tok).unwrap();
        assert_eq!(mech, oid::SPNEGO);
    }

    #[test]
    fn raw_ntlm_is_recognised() {
        assert!(matches!(
            parse_negotiate_token(NEGOTIATE),
            Ok(NegotiateToken::RawNtlm(t)) if t == NEGOTIATE
        ));
    }

    #[test]
    fn resp_round_trip() {
        let challenge = vec![0x42u8; 300]; // long enough for two-byte DER lengths
        let tok = build_neg_token_resp(
            NegState::AcceptIncomplete,
            Some(oid::NTLM),
            Some(&challenge),
            None,
        );
        let NegotiateToken::Resp(r) = parse_negotiate_token(&tok).unwrap() else {
            panic!("not a resp")
        };
        assert_eq!(r.neg_state, Some(NegState::AcceptIncomplete));
        assert_eq!(r.supported_mech, Some(oid::NTLM));
        assert_eq!(r.response_token, Some(&challenge[..]));
        assert_eq!(r.mech_list_mic, None);
        let done = build_neg_token_resp(NegState::AcceptCompleted, None, None, Some(&[1; 16]));
        let NegotiateToken::Resp(r) = parse_negotiate_token(&done).unwrap() else {
            panic!("not a resp")
        };
        assert_eq!(r.neg_state, Some(NegState::AcceptCompleted));
        assert_eq!(r.mech_list_mic, Some(&[1u8; 16][..]));
    }

    #[test]
    fn malformed_der_is_refused() {
        let good = build_neg_token_resp(
            NegState::AcceptIncomplete,
            Some(oid::NTLM),
            Some(NEGOTIATE),
            None,
        );
        let mut trailing = good.clone();
        trailing.push(0);
        let mut indefinite = good.clone();
        indefinite[1] = 0x80;
        let mut bad_state = good.clone();
        bad_state[8] = 9; // a1 L 30 L a0 03 0a 01 [state]
        let out_of_order = hex::decode("a10d300ba2040402aabba0030a0101").unwrap();
        let cases: [(&str, Vec<u8>, &str); 8] = [
            ("empty", vec![], "neither SPNEGO nor NTLMSSP"),
            (
                "unknown first byte",
                vec![0x05, 0x00],
                "neither SPNEGO nor NTLMSSP",
            ),
            ("trailing byte", trailing, "trailing bytes in SPNEGO token"),
            ("indefinite length", indefinite, "malformed SPNEGO DER"),
            ("bad negState", bad_state, "bad SPNEGO negState"),
            (
                "fields out of order",
                out_of_order,
                "unexpected field in SPNEGO token",
            ),
            (
                "length past end",
                vec![0xa1, 0x84, 0xff, 0xff, 0xff, 0xff],
                "malformed SPNEGO DER",
            ),
            (
                "not SPNEGO OID",
                hex::decode("600b06092a864886f712010202").unwrap(),
                "GSS token is not SPNEGO",
            ),
        ];
        for (name, tok, why) in cases {
            assert_eq!(
                parse_negotiate_token(&tok).unwrap_err(),
                SpnegoError::Malformed(why),
                "{name}"
            );
        }
        let huge = vec![0xa1; MAX_TOKEN_LEN + 1];
        assert_eq!(
            parse_negotiate_token(&huge).unwrap_err().to_string(),
            "spnego_malformed: Negotiate token too large"
        );
    }

    #[test]
    fn no_input_panics_the_parser() {
        let init = build_neg_token_init(&[oid::NTLM, oid::KRB5], Some(&[0x30; 200]));
        let resp = build_neg_token_resp(
            NegState::AcceptCompleted,
            Some(oid::KRB5),
            Some(&[7; 150]),
            Some(&[1; 16]),
        );
        for tok in [init, resp] {
            for t in der::mutations(&tok) {
                if let Ok(NegotiateToken::Init(init)) = parse_negotiate_token(&t) {
                    let _ = init.mech_types().count();
                }
            }
        }
    }
}
