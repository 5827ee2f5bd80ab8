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
//! The DER reader is minimal (what SPNEGO uses: single-byte tags, definite lengths of up to four
//! bytes) and follows the NTLM codec's discipline: a panic-free [`Reader`], every length checked
//! against its container, and — DER being exact — nothing may follow a complete token or sit
//! unread inside a SEQUENCE. Context tags must appear in increasing order.

use super::crypto::Direction;
use super::message::SIGNATURE;
use super::reader::Reader;
use super::verify::NtlmVerified;
use super::NtlmError;

/// OID contents (without tag and length).
pub mod oid {
    /// 1.3.6.1.5.5.2 — SPNEGO.
    pub const SPNEGO: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];
    /// 1.3.6.1.4.1.311.2.2.10 — NTLMSSP.
    pub const NTLM: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a];
    /// 1.2.840.113554.1.2.2 — Kerberos 5.
    pub const KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x12, 0x01, 0x02, 0x02];
    /// 1.2.840.48018.1.2.2 — Kerberos 5 as misencoded by old Windows; still sent first by it.
    pub const MS_KRB5: &[u8] = &[0x2a, 0x86, 0x48, 0x82, 0xf7, 0x12, 0x01, 0x02, 0x02];
    /// 1.3.6.1.4.1.311.2.2.30 — NEGOEX.
    pub const NEGOEX: &[u8] = &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x1e];
}

mod tag {
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const ENUMERATED: u8 = 0x0a;
    pub const SEQUENCE: u8 = 0x30;
    pub const APPLICATION_0: u8 = 0x60;
    pub const fn context(n: u8) -> u8 {
        0xa0 | n
    }
}

/// The largest token accepted (HTTP allows 32 KB+ headers for Kerberos PACs; NTLM in SPNEGO is
/// far smaller, but this reader is generic enough for the Negotiate path's first look).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

const DER: &str = "malformed SPNEGO DER";

/// Reads one TLV; the value is bounded by the enclosing reader.
fn tlv<'a>(r: &mut Reader<'a>) -> Option<(u8, &'a [u8])> {
    let t = r.u8()?;
    if t & 0x1f == 0x1f {
        return None; // high tag numbers are not used by SPNEGO
    }
    let first = r.u8()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite length (BER only) or absurd
        }
        let mut len = 0usize;
        for b in r.take(n)? {
            len = (len << 8) | usize::from(*b);
        }
        len
    };
    Some((t, r.take(len)?))
}

/// Reads a TLV that must have tag `want`.
fn expect<'a>(r: &mut Reader<'a>, want: u8) -> Result<&'a [u8], NtlmError> {
    match tlv(r) {
        Some((t, v)) if t == want => Ok(v),
        _ => Err(NtlmError::Malformed(DER)),
    }
}

/// Reads exactly one TLV with tag `want` filling all of `buf`.
fn only(buf: &[u8], want: u8) -> Result<&[u8], NtlmError> {
    let mut r = Reader::new(buf);
    let v = expect(&mut r, want)?;
    if !r.is_empty() {
        return Err(NtlmError::Malformed("trailing bytes in SPNEGO token"));
    }
    Ok(v)
}

/// Iterates the `[n] value` fields of a SEQUENCE body, requiring increasing tag numbers.
fn context_fields(body: &[u8], max_tag: u8) -> Result<Vec<(u8, &[u8])>, NtlmError> {
    let mut r = Reader::new(body);
    let mut out = Vec::with_capacity(4);
    let mut next_min = 0u8;
    while !r.is_empty() {
        let (t, v) = tlv(&mut r).ok_or(NtlmError::Malformed(DER))?;
        let n = t ^ 0xa0;
        if t & 0xe0 != 0xa0 || n > max_tag || n < next_min {
            return Err(NtlmError::Malformed("unexpected field in SPNEGO token"));
        }
        next_min = n + 1;
        out.push((n, v));
    }
    Ok(out)
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
        let body = only(self.mech_types_der, tag::SEQUENCE).unwrap_or_default();
        let mut r = Reader::new(body);
        std::iter::from_fn(move || expect(&mut r, tag::OID).ok())
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
pub fn parse_negotiate_token(token: &[u8]) -> Result<NegotiateToken<'_>, NtlmError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(NtlmError::Malformed("Negotiate token too large"));
    }
    if token.starts_with(SIGNATURE) {
        return Ok(NegotiateToken::RawNtlm(token));
    }
    match token.first() {
        Some(&tag::APPLICATION_0) => parse_init(token).map(NegotiateToken::Init),
        Some(&t) if t == tag::context(1) => parse_resp(token).map(NegotiateToken::Resp),
        _ => Err(NtlmError::Malformed("neither SPNEGO nor NTLMSSP")),
    }
}

fn parse_init(token: &[u8]) -> Result<NegTokenInit<'_>, NtlmError> {
    let body = only(token, tag::APPLICATION_0)?;
    let mut r = Reader::new(body);
    if expect(&mut r, tag::OID)? != oid::SPNEGO {
        // Another GSS mechanism framed directly (a bare Kerberos AP-REQ): not ours to parse.
        return Err(NtlmError::Malformed("GSS token is not SPNEGO"));
    }
    let inner = only(r.rest(), tag::context(0))?;
    let seq = only(inner, tag::SEQUENCE)?;
    let mut out = NegTokenInit {
        mech_types_der: &[],
        mech_token: None,
        mech_list_mic: None,
    };
    for (n, v) in context_fields(seq, 3)? {
        match n {
            0 => {
                // Keep the whole SEQUENCE TLV for the MIC; check it holds only OIDs.
                let list = only(v, tag::SEQUENCE)?;
                let mut lr = Reader::new(list);
                while !lr.is_empty() {
                    expect(&mut lr, tag::OID)?;
                }
                out.mech_types_der = v;
            }
            1 => {} // reqFlags: advisory, unused
            2 => out.mech_token = Some(only(v, tag::OCTET_STRING)?),
            _ => out.mech_list_mic = Some(only(v, tag::OCTET_STRING)?),
        }
    }
    if out.mech_types_der.is_empty() {
        return Err(NtlmError::Malformed("NegTokenInit without mechTypes"));
    }
    Ok(out)
}

fn parse_resp(token: &[u8]) -> Result<NegTokenResp<'_>, NtlmError> {
    let inner = only(token, tag::context(1))?;
    let seq = only(inner, tag::SEQUENCE)?;
    let mut out = NegTokenResp::default();
    for (n, v) in context_fields(seq, 3)? {
        match n {
            0 => {
                out.neg_state = Some(match only(v, tag::ENUMERATED)? {
                    [0] => NegState::AcceptCompleted,
                    [1] => NegState::AcceptIncomplete,
                    [2] => NegState::Reject,
                    [3] => NegState::RequestMic,
                    _ => return Err(NtlmError::Malformed("bad SPNEGO negState")),
                })
            }
            1 => out.supported_mech = Some(only(v, tag::OID)?),
            2 => out.response_token = Some(only(v, tag::OCTET_STRING)?),
            _ => out.mech_list_mic = Some(only(v, tag::OCTET_STRING)?),
        }
    }
    Ok(out)
}

/// How an NTLM message arrived, so the answer goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wrapping {
    /// Answer with the bare NTLM message.
    Raw,
    /// Answer with a NegTokenResp ([`build_neg_token_resp`]).
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
    Ok(match parse_negotiate_token(token)? {
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

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn push_tlv(out: &mut Vec<u8>, t: u8, value: &[u8]) {
    out.push(t);
    push_len(out, value.len());
    out.extend_from_slice(value);
}

fn wrap(t: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    push_tlv(&mut out, t, value);
    out
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
    push_tlv(
        &mut seq,
        tag::context(0),
        &wrap(tag::ENUMERATED, &[neg_state as u8]),
    );
    if let Some(m) = supported_mech {
        push_tlv(&mut seq, tag::context(1), &wrap(tag::OID, m));
    }
    if let Some(t) = response_token {
        push_tlv(&mut seq, tag::context(2), &wrap(tag::OCTET_STRING, t));
    }
    if let Some(m) = mech_list_mic {
        push_tlv(&mut seq, tag::context(3), &wrap(tag::OCTET_STRING, m));
    }
    wrap(tag::context(1), &wrap(tag::SEQUENCE, &seq))
}

/// The DER of a MechTypeList.
pub fn mech_type_list(mechs: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for m in mechs {
        push_tlv(&mut list, tag::OID, m);
    }
    wrap(tag::SEQUENCE, &list)
}

/// Builds a client's NegTokenInit (GSS-framed): for tests and load tools.
pub fn build_neg_token_init(mechs: &[&[u8]], mech_token: Option<&[u8]>) -> Vec<u8> {
    let mut seq = Vec::new();
    push_tlv(&mut seq, tag::context(0), &mech_type_list(mechs));
    if let Some(t) = mech_token {
        push_tlv(&mut seq, tag::context(2), &wrap(tag::OCTET_STRING, t));
    }
    let mut body = Vec::new();
    push_tlv(&mut body, tag::OID, oid::SPNEGO);
    push_tlv(&mut body, tag::context(0), &wrap(tag::SEQUENCE, &seq));
    wrap(tag::APPLICATION_0, &body)
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
        let NegotiateToken::Init(init) = parse_negotiate_token(&tok).unwrap() else {
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
        // A client's AUTHENTICATE leg routes to NTLM.
        let auth = [SIGNATURE.as_slice(), &[3, 0, 0, 0]].concat();
        let leg = build_neg_token_resp(NegState::AcceptIncomplete, None, Some(&auth), None);
        assert!(matches!(
            route_ntlm(&leg).unwrap(),
            NtlmRoute::Message {
                wrapping: Wrapping::Spnego,
                ..
            }
        ));
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
        let cases: [(&str, Vec<u8>); 8] = [
            ("empty", vec![]),
            ("unknown first byte", vec![0x05, 0x00]),
            ("trailing byte", trailing),
            ("indefinite length", indefinite),
            ("bad negState", bad_state),
            ("fields out of order", out_of_order),
            ("length past end", vec![0xa1, 0x84, 0xff, 0xff, 0xff, 0xff]),
            (
                "not SPNEGO OID",
                hex::decode("600b06092a864886f712010202").unwrap(),
            ),
        ];
        for (name, tok) in cases {
            assert!(parse_negotiate_token(&tok).is_err(), "{name}");
        }
    }

    #[test]
    fn der_lengths_encode_minimally() {
        for (len, want) in [
            (0usize, vec![0u8]),
            (127, vec![127]),
            (128, vec![0x81, 128]),
            (300, vec![0x82, 1, 44]),
            (70000, vec![0x83, 1, 0x11, 0x70]),
        ] {
            let mut out = Vec::new();
            push_len(&mut out, len);
            assert_eq!(out, want, "{len}");
        }
    }
}
