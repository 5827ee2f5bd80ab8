//! The NTLMSSP wire format (MS-NLMP 2.2): parse NEGOTIATE and AUTHENTICATE, build CHALLENGE,
//! and the pieces inside them (negotiate flags, AV pairs, the NTLMv2 client "blob").
//!
//! Every message is parsed through a [`Reader`]; nothing indexes the input directly, so no input
//! can make the codec panic. Rules applied to every message:
//!
//! - The 8-byte signature `NTLMSSP\0` and the message type must match.
//! - A message longer than [`MAX_MESSAGE_LEN`] is refused before anything else is read.
//! - A security buffer (`Len`, `MaxLen`, `Offset`) with `Len > 0` must lie wholly inside the
//!   message and must not start inside the fixed header. `MaxLen` is ignored, as 2.2.1 says.
//!   A buffer with `Len == 0` is empty whatever its offset says (clients put anything there).
//! - Names (user, domain, workstation) are UTF-16LE when the message carries
//!   NTLMSSP_NEGOTIATE_UNICODE, else OEM; OEM is accepted only as ASCII, since the client's
//!   code page is unknown and a guessed one would hash a different name. Names longer than
//!   [`MAX_NAME_BYTES`], ill-formed UTF-16 and control characters are refused: these strings
//!   become identities and log fields.
//! - Unreferenced bytes in the payload are tolerated: 2.2 allows padding before and after each
//!   payload field, so "trailing garbage" is not unambiguous there (and the MIC covers them).
//!   Where the format *is* exact — the AV-pair list must end with MsvAvEOL inside its buffer,
//!   fixed-size values (flags, timestamp) must have their size — anything else is refused.

use std::ops::Range;

use crate::gss::reader::Reader;

/// `NTLMSSP\0` (2.2.1). One definition: the Negotiate codec recognises raw NTLM by it too.
pub const SIGNATURE: &[u8; 8] = crate::gss::spnego::NTLMSSP_SIGNATURE;
/// The largest NTLM message accepted. Real AUTHENTICATE messages are 300–1,500 bytes (the
/// NTLMv2 blob echoes our target info plus an SPN and channel bindings); 16 KiB leaves room for
/// long names while bounding the work an unauthenticated peer can cause.
pub const MAX_MESSAGE_LEN: usize = 16 * 1024;
/// The longest user, domain or workstation name accepted, in bytes (256 UTF-16 units; a UPN is
/// rarely over 100 characters).
pub const MAX_NAME_BYTES: usize = 512;

/// Message types (2.2.1).
pub const NEGOTIATE: u32 = 1;
pub const CHALLENGE: u32 = 2;
pub const AUTHENTICATE: u32 = 3;

/// Fixed-part sizes of the messages.
pub const NEGOTIATE_HEADER_LEN: usize = 32;
pub const CHALLENGE_HEADER_LEN: usize = 56;
/// AUTHENTICATE up to and including NegotiateFlags.
pub const AUTHENTICATE_HEADER_LEN: usize = 64;
/// Where the MIC sits in an AUTHENTICATE message (after the 8-byte Version).
pub const MIC_OFFSET: usize = 72;
/// Header length of an AUTHENTICATE message that carries Version and MIC.
pub const AUTHENTICATE_HEADER_WITH_MIC_LEN: usize = 88;

/// The VERSION we send (2.2.2.10): Windows 10 / Server 2016+ numbering, NTLMSSP_REVISION_W2K3.
/// Informational only; clients must ignore it.
pub const OUR_VERSION: [u8; 8] = [10, 0, 0x7c, 0x4f, 0, 0, 0, 0x0f];

/// NegotiateFlags (2.2.2.5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NegotiateFlags(pub u32);

impl NegotiateFlags {
    pub const UNICODE: Self = Self(0x0000_0001);
    pub const OEM: Self = Self(0x0000_0002);
    pub const REQUEST_TARGET: Self = Self(0x0000_0004);
    pub const SIGN: Self = Self(0x0000_0010);
    pub const SEAL: Self = Self(0x0000_0020);
    pub const DATAGRAM: Self = Self(0x0000_0040);
    pub const LM_KEY: Self = Self(0x0000_0080);
    pub const NTLM: Self = Self(0x0000_0200);
    pub const ANONYMOUS: Self = Self(0x0000_0800);
    pub const OEM_DOMAIN_SUPPLIED: Self = Self(0x0000_1000);
    pub const OEM_WORKSTATION_SUPPLIED: Self = Self(0x0000_2000);
    pub const ALWAYS_SIGN: Self = Self(0x0000_8000);
    pub const TARGET_TYPE_DOMAIN: Self = Self(0x0001_0000);
    pub const TARGET_TYPE_SERVER: Self = Self(0x0002_0000);
    pub const EXTENDED_SESSIONSECURITY: Self = Self(0x0008_0000);
    pub const IDENTIFY: Self = Self(0x0010_0000);
    pub const REQUEST_NON_NT_SESSION_KEY: Self = Self(0x0040_0000);
    pub const TARGET_INFO: Self = Self(0x0080_0000);
    pub const VERSION: Self = Self(0x0200_0000);
    pub const NEGOTIATE_128: Self = Self(0x2000_0000);
    pub const KEY_EXCH: Self = Self(0x4000_0000);
    pub const NEGOTIATE_56: Self = Self(0x8000_0000);

    const NAMES: [(Self, &'static str); 22] = [
        (Self::UNICODE, "UNICODE"),
        (Self::OEM, "OEM"),
        (Self::REQUEST_TARGET, "REQUEST_TARGET"),
        (Self::SIGN, "SIGN"),
        (Self::SEAL, "SEAL"),
        (Self::DATAGRAM, "DATAGRAM"),
        (Self::LM_KEY, "LM_KEY"),
        (Self::NTLM, "NTLM"),
        (Self::ANONYMOUS, "ANONYMOUS"),
        (Self::OEM_DOMAIN_SUPPLIED, "OEM_DOMAIN_SUPPLIED"),
        (Self::OEM_WORKSTATION_SUPPLIED, "OEM_WORKSTATION_SUPPLIED"),
        (Self::ALWAYS_SIGN, "ALWAYS_SIGN"),
        (Self::TARGET_TYPE_DOMAIN, "TARGET_TYPE_DOMAIN"),
        (Self::TARGET_TYPE_SERVER, "TARGET_TYPE_SERVER"),
        (Self::EXTENDED_SESSIONSECURITY, "EXTENDED_SESSIONSECURITY"),
        (Self::IDENTIFY, "IDENTIFY"),
        (
            Self::REQUEST_NON_NT_SESSION_KEY,
            "REQUEST_NON_NT_SESSION_KEY",
        ),
        (Self::TARGET_INFO, "TARGET_INFO"),
        (Self::VERSION, "VERSION"),
        (Self::NEGOTIATE_128, "128"),
        (Self::KEY_EXCH, "KEY_EXCH"),
        (Self::NEGOTIATE_56, "56"),
    ];

    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
}

impl std::ops::BitOr for NegotiateFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        self.union(rhs)
    }
}

impl std::fmt::Debug for NegotiateFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        let mut sep = " (";
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                write!(f, "{sep}{name}")?;
                sep = "|";
            }
        }
        if sep != " (" {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// AV_PAIR identifiers (2.2.2.1).
pub mod av {
    pub const EOL: u16 = 0x0000;
    pub const NB_COMPUTER_NAME: u16 = 0x0001;
    pub const NB_DOMAIN_NAME: u16 = 0x0002;
    pub const DNS_COMPUTER_NAME: u16 = 0x0003;
    pub const DNS_DOMAIN_NAME: u16 = 0x0004;
    pub const DNS_TREE_NAME: u16 = 0x0005;
    pub const FLAGS: u16 = 0x0006;
    pub const TIMESTAMP: u16 = 0x0007;
    pub const SINGLE_HOST: u16 = 0x0008;
    pub const TARGET_NAME: u16 = 0x0009;
    pub const CHANNEL_BINDINGS: u16 = 0x000a;

    /// MsvAvFlags bit: the AUTHENTICATE message carries a MIC.
    pub const FLAG_MIC_PRESENT: u32 = 0x0000_0002;
}

/// Why a message was refused. Static strings: they go into logs and into
/// `NtlmError::Malformed`, never runtime data from the peer.
pub type CodecError = &'static str;

fn expect_header(r: &mut Reader<'_>, msg: &[u8], msg_type: u32) -> Result<(), CodecError> {
    if msg.len() > MAX_MESSAGE_LEN {
        return Err("message too large");
    }
    if r.take(8).ok_or("truncated signature")? != SIGNATURE {
        return Err("not an NTLMSSP message");
    }
    let t = r.u32_le().ok_or("truncated message type")?;
    if t != msg_type {
        return Err("unexpected NTLM message type");
    }
    Ok(())
}

/// A security buffer descriptor: (Len, Offset). MaxLen is read and ignored.
#[derive(Clone, Copy, Debug)]
struct SecBuf {
    len: u16,
    offset: u32,
}

impl SecBuf {
    fn read(r: &mut Reader<'_>) -> Option<SecBuf> {
        let len = r.u16_le()?;
        let _max_len = r.u16_le()?;
        let offset = r.u32_le()?;
        Some(SecBuf { len, offset })
    }

    /// The referenced bytes. Non-empty buffers must start at or after `header_end` and end
    /// inside `msg`.
    fn resolve<'a>(&self, msg: &'a [u8], header_end: usize) -> Result<&'a [u8], CodecError> {
        if self.len == 0 {
            return Ok(&[]);
        }
        let start = self.offset as usize;
        if start < header_end {
            return Err("security buffer overlaps the message header");
        }
        let end = start
            .checked_add(usize::from(self.len))
            .ok_or("security buffer out of range")?;
        msg.get(start..end).ok_or("security buffer out of range")
    }

    /// Like [`SecBuf::resolve`], as a range (empty buffers become `0..0`).
    fn range(&self, msg: &[u8], header_end: usize) -> Result<Range<usize>, CodecError> {
        let bytes = self.resolve(msg, header_end)?;
        if bytes.is_empty() {
            return Ok(0..0);
        }
        let start = self.offset as usize;
        Ok(start..start + bytes.len())
    }

    fn start(&self) -> Option<usize> {
        (self.len > 0).then_some(self.offset as usize)
    }
}

/// Decodes a name field: UTF-16LE when `unicode`, else ASCII-only OEM.
pub fn decode_name(bytes: &[u8], unicode: bool) -> Result<String, CodecError> {
    if bytes.len() > MAX_NAME_BYTES {
        return Err("name too long");
    }
    let s = if unicode {
        if bytes.len() % 2 != 0 {
            return Err("odd-length UTF-16 name");
        }
        let units = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        char::decode_utf16(units)
            .collect::<Result<String, _>>()
            .map_err(|_| "ill-formed UTF-16 name")?
    } else {
        if !bytes.is_ascii() {
            return Err("non-ASCII OEM name");
        }
        bytes.iter().map(|&b| char::from(b)).collect()
    };
    if s.chars().any(char::is_control) {
        return Err("control character in name");
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// NEGOTIATE_MESSAGE (2.2.1.1)

/// A parsed NEGOTIATE message. Only the flags matter to the server; the OEM domain and
/// workstation hints are kept for logs.
#[derive(Clone, Debug)]
pub struct NegotiateMessage<'a> {
    pub flags: NegotiateFlags,
    /// The OEM domain, when NTLMSSP_NEGOTIATE_OEM_DOMAIN_SUPPLIED is set.
    pub domain: Option<&'a [u8]>,
    /// The OEM workstation, when NTLMSSP_NEGOTIATE_OEM_WORKSTATION_SUPPLIED is set.
    pub workstation: Option<&'a [u8]>,
    pub version: Option<[u8; 8]>,
}

impl<'a> NegotiateMessage<'a> {
    /// Parses a NEGOTIATE message. Old clients send only the first 16 bytes (signature, type,
    /// flags); the domain and workstation fields are read when present.
    pub fn parse(msg: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, msg, NEGOTIATE)?;
        let flags = NegotiateFlags(r.u32_le().ok_or("truncated negotiate flags")?);
        let mut out = NegotiateMessage {
            flags,
            domain: None,
            workstation: None,
            version: None,
        };
        if r.is_empty() {
            return Ok(out);
        }
        let domain = SecBuf::read(&mut r).ok_or("truncated negotiate message")?;
        let workstation = SecBuf::read(&mut r).ok_or("truncated negotiate message")?;
        let mut header_end = NEGOTIATE_HEADER_LEN;
        if flags.contains(NegotiateFlags::VERSION) && r.remaining() >= 8 {
            out.version = r.array();
            header_end += 8;
        }
        let domain = domain.resolve(msg, header_end)?;
        let workstation = workstation.resolve(msg, header_end)?;
        if flags.contains(NegotiateFlags::OEM_DOMAIN_SUPPLIED) {
            out.domain = Some(domain);
        }
        if flags.contains(NegotiateFlags::OEM_WORKSTATION_SUPPLIED) {
            out.workstation = Some(workstation);
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// CHALLENGE_MESSAGE (2.2.1.2)

/// What the server says about itself in a CHALLENGE: the names of 2.2.2.1, pre-encoded once.
/// The NetBIOS names must be ASCII (they are also sent as OEM TargetName).
#[derive(Clone, Debug)]
pub struct TargetInfoTemplate {
    /// TargetName (the NetBIOS domain) as UTF-16LE.
    target_name_unicode: Vec<u8>,
    /// TargetName as OEM (ASCII).
    target_name_oem: Vec<u8>,
    /// AV pairs NbDomainName, NbComputerName, DnsDomainName, DnsComputerName; the timestamp
    /// and EOL are appended per challenge.
    av_prefix: Vec<u8>,
}

impl TargetInfoTemplate {
    /// Encodes the names. Each must be non-empty, ASCII, and short enough for an AV pair.
    pub fn new(
        nb_domain: &str,
        nb_computer: &str,
        dns_domain: &str,
        dns_computer: &str,
    ) -> Result<Self, CodecError> {
        let mut av_prefix = Vec::new();
        for (id, name) in [
            (av::NB_DOMAIN_NAME, nb_domain),
            (av::NB_COMPUTER_NAME, nb_computer),
            (av::DNS_DOMAIN_NAME, dns_domain),
            (av::DNS_COMPUTER_NAME, dns_computer),
        ] {
            if name.is_empty() || !name.is_ascii() || name.len() > 255 {
                return Err("target names must be 1-255 ASCII characters");
            }
            if name.chars().any(|c| c.is_ascii_control() || c == ' ') {
                return Err("target names must not contain spaces or control characters");
            }
            let value = super::crypto::utf16le(name);
            push_av(&mut av_prefix, id, &value);
        }
        Ok(TargetInfoTemplate {
            target_name_unicode: super::crypto::utf16le(nb_domain),
            target_name_oem: nb_domain.as_bytes().to_vec(),
            av_prefix,
        })
    }
}

fn push_av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    // Lengths are bounded by the callers (names ≤ 255 ASCII characters, fixed-size values).
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

fn push_sec_buf(out: &mut Vec<u8>, len: usize, offset: usize) {
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&(offset as u32).to_le_bytes());
}

/// Builds a CHALLENGE message: `flags` as negotiated, our random `server_challenge`, TargetName
/// (the NetBIOS domain, in the negotiated character set), TargetInfo (the four names, then
/// MsvAvTimestamp = `timestamp`, then MsvAvEOL) and, when negotiated, our Version.
pub fn build_challenge(
    template: &TargetInfoTemplate,
    flags: NegotiateFlags,
    server_challenge: &[u8; 8],
    timestamp: u64,
) -> Vec<u8> {
    let target_name = if flags.contains(NegotiateFlags::UNICODE) {
        &template.target_name_unicode
    } else {
        &template.target_name_oem
    };
    // The prefix, MsvAvTimestamp (4 + 8) and MsvAvEOL (4).
    let target_info_len = template.av_prefix.len() + 12 + 4;
    let total = CHALLENGE_HEADER_LEN + target_name.len() + target_info_len;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&CHALLENGE.to_le_bytes());
    push_sec_buf(&mut out, target_name.len(), CHALLENGE_HEADER_LEN);
    out.extend_from_slice(&flags.bits().to_le_bytes());
    out.extend_from_slice(server_challenge);
    out.extend_from_slice(&[0u8; 8]); // Reserved
    push_sec_buf(
        &mut out,
        target_info_len,
        CHALLENGE_HEADER_LEN + target_name.len(),
    );
    if flags.contains(NegotiateFlags::VERSION) {
        out.extend_from_slice(&OUR_VERSION);
    } else {
        // 2.2.1.2: Version MUST be all zero unless NTLMSSP_NEGOTIATE_VERSION is set.
        out.extend_from_slice(&[0u8; 8]);
    }
    out.extend_from_slice(target_name);
    out.extend_from_slice(&template.av_prefix);
    push_av(&mut out, av::TIMESTAMP, &timestamp.to_le_bytes());
    push_av(&mut out, av::EOL, &[]);
    out
}

/// A parsed CHALLENGE message (the client side of the handshake: tests, benches, load tools).
#[derive(Clone, Debug)]
pub struct ChallengeMessage<'a> {
    pub flags: NegotiateFlags,
    pub server_challenge: [u8; 8],
    pub target_name: &'a [u8],
    pub target_info: &'a [u8],
}

impl<'a> ChallengeMessage<'a> {
    pub fn parse(msg: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, msg, CHALLENGE)?;
        let trunc = "truncated challenge message";
        let target_name = SecBuf::read(&mut r).ok_or(trunc)?;
        let flags = NegotiateFlags(r.u32_le().ok_or(trunc)?);
        let server_challenge = r.array().ok_or(trunc)?;
        r.skip(8).ok_or(trunc)?;
        let target_info = SecBuf::read(&mut r).ok_or(trunc)?;
        // TargetInfo may legally start at 48 when no Version is present.
        let header_end = CHALLENGE_HEADER_LEN - 8;
        let target_info = target_info.resolve(msg, header_end)?;
        if !target_info.is_empty() {
            AvPairs::parse(target_info)?;
        }
        Ok(ChallengeMessage {
            flags,
            server_challenge,
            target_name: target_name.resolve(msg, header_end)?,
            target_info,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// AUTHENTICATE_MESSAGE (2.2.1.3)

/// A parsed AUTHENTICATE message. It owns no bytes: the byte fields are ranges into the
/// message it was parsed from (validated against it), read back with the accessors, so the
/// message and its parse can travel together (see `verify::PendingAuth`) without borrowing.
/// The accessors take that same message; given another one they return what lies there, or
/// empty slices — never a panic.
#[derive(Clone, Debug)]
pub struct AuthenticateMessage {
    pub flags: NegotiateFlags,
    lm_response: Range<usize>,
    nt_response: Range<usize>,
    encrypted_random_session_key: Range<usize>,
    pub domain: String,
    pub user: String,
    pub workstation: String,
    pub version: Option<[u8; 8]>,
    /// The 16 bytes at [`MIC_OFFSET`], when the payload leaves room for a MIC field (every
    /// non-empty buffer starts at or after byte 88). Whether they *are* a MIC is said by the
    /// MsvAvFlags pair in the NTLMv2 blob, not by the message layout.
    pub mic: Option<[u8; 16]>,
}

impl AuthenticateMessage {
    pub fn parse(msg: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(msg);
        expect_header(&mut r, msg, AUTHENTICATE)?;
        let trunc = "truncated authenticate message";
        let lm = SecBuf::read(&mut r).ok_or(trunc)?;
        let nt = SecBuf::read(&mut r).ok_or(trunc)?;
        let domain = SecBuf::read(&mut r).ok_or(trunc)?;
        let user = SecBuf::read(&mut r).ok_or(trunc)?;
        let workstation = SecBuf::read(&mut r).ok_or(trunc)?;
        let key = SecBuf::read(&mut r).ok_or(trunc)?;
        let flags = NegotiateFlags(r.u32_le().ok_or(trunc)?);

        // The payload starts at the first non-empty buffer; the optional Version and MIC fields
        // exist only if the payload leaves room for them.
        let bufs = [lm, nt, domain, user, workstation, key];
        let payload_start = bufs
            .iter()
            .filter_map(SecBuf::start)
            .min()
            .unwrap_or(msg.len());
        let version = if flags.contains(NegotiateFlags::VERSION) && payload_start >= MIC_OFFSET {
            r.array::<8>()
        } else {
            None
        };
        let mic = if payload_start >= AUTHENTICATE_HEADER_WITH_MIC_LEN {
            msg.get(MIC_OFFSET..AUTHENTICATE_HEADER_WITH_MIC_LEN)
                .and_then(|m| m.try_into().ok())
        } else {
            None
        };

        let h = AUTHENTICATE_HEADER_LEN;
        let unicode = flags.contains(NegotiateFlags::UNICODE);
        Ok(AuthenticateMessage {
            flags,
            lm_response: lm.range(msg, h)?,
            nt_response: nt.range(msg, h)?,
            encrypted_random_session_key: key.range(msg, h)?,
            domain: decode_name(domain.resolve(msg, h)?, unicode)?,
            user: decode_name(user.resolve(msg, h)?, unicode)?,
            workstation: decode_name(workstation.resolve(msg, h)?, unicode)?,
            version,
            mic,
        })
    }

    /// LmChallengeResponse.
    pub fn lm_response<'m>(&self, msg: &'m [u8]) -> &'m [u8] {
        msg.get(self.lm_response.clone()).unwrap_or_default()
    }

    /// NtChallengeResponse.
    pub fn nt_response<'m>(&self, msg: &'m [u8]) -> &'m [u8] {
        msg.get(self.nt_response.clone()).unwrap_or_default()
    }

    /// EncryptedRandomSessionKey.
    pub fn encrypted_random_session_key<'m>(&self, msg: &'m [u8]) -> &'m [u8] {
        msg.get(self.encrypted_random_session_key.clone())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// AV pairs (2.2.2.1) and the NTLMv2 client challenge (2.2.2.7)

/// A validated AV-pair list: every pair lies inside the buffer and the list ends with
/// MsvAvEOL. `raw` covers the pairs up to and including the EOL pair.
#[derive(Clone, Copy, Debug)]
pub struct AvPairs<'a> {
    raw: &'a [u8],
}

impl<'a> AvPairs<'a> {
    /// Validates the list at the start of `buf`; returns it and whatever follows the EOL pair.
    pub fn parse(buf: &'a [u8]) -> Result<(AvPairs<'a>, &'a [u8]), CodecError> {
        let mut r = Reader::new(buf);
        let mut seen_flags = false;
        let mut seen_timestamp = false;
        loop {
            let id = r.u16_le().ok_or("AV pair list without MsvAvEOL")?;
            let len = r.u16_le().ok_or("truncated AV pair")?;
            let value = r.take(usize::from(len)).ok_or("AV pair out of range")?;
            match id {
                av::EOL => {
                    if !value.is_empty() {
                        return Err("MsvAvEOL with a value");
                    }
                    let end = r.position();
                    let raw = buf.get(..end).ok_or("AV pair out of range")?;
                    return Ok((AvPairs { raw }, r.rest()));
                }
                av::FLAGS => {
                    if len != 4 || seen_flags {
                        return Err("bad MsvAvFlags");
                    }
                    seen_flags = true;
                }
                av::TIMESTAMP => {
                    if len != 8 || seen_timestamp {
                        return Err("bad MsvAvTimestamp");
                    }
                    seen_timestamp = true;
                }
                _ => {}
            }
        }
    }

    /// The pairs as (AvId, value), EOL excluded.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let mut r = Reader::new(self.raw);
        std::iter::from_fn(move || {
            let id = r.u16_le()?;
            let len = r.u16_le()?;
            let value = r.take(usize::from(len))?;
            (id != av::EOL).then_some((id, value))
        })
    }

    /// The value of the first pair with `id`.
    pub fn get(&self, id: u16) -> Option<&'a [u8]> {
        self.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// MsvAvFlags, 0 when absent.
    pub fn flags(&self) -> u32 {
        self.get(av::FLAGS)
            .and_then(|v| v.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }

    /// MsvAvTimestamp (FILETIME), when present.
    pub fn timestamp(&self) -> Option<u64> {
        self.get(av::TIMESTAMP)
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
    }

    /// The encoded list, EOL included.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

/// The NTLMv2 NT response split into NTProofStr and the NTLMv2_CLIENT_CHALLENGE ("blob").
#[derive(Clone, Copy, Debug)]
pub struct NtlmV2Response<'a> {
    pub nt_proof: [u8; 16],
    /// The whole NTLMv2_CLIENT_CHALLENGE: what NTProofStr is computed over.
    pub blob: &'a [u8],
    pub timestamp: u64,
    pub client_challenge: [u8; 8],
    pub av_pairs: AvPairs<'a>,
}

impl<'a> NtlmV2Response<'a> {
    /// Splits and validates an NTLMv2 NT response (2.2.2.8). Bytes after MsvAvEOL (clients
    /// append Z(4), 3.3.2) are covered by NTProofStr and otherwise ignored.
    pub fn parse(nt_response: &'a [u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(nt_response);
        let trunc = "NTLMv2 response too short";
        let nt_proof = r.array::<16>().ok_or(trunc)?;
        let blob = r.rest();
        let mut b = Reader::new(blob);
        let resp_type = b.u8().ok_or(trunc)?;
        let hi_resp_type = b.u8().ok_or(trunc)?;
        if resp_type != 1 || hi_resp_type != 1 {
            return Err("unknown NTLMv2 response version");
        }
        b.skip(6).ok_or(trunc)?;
        let timestamp = b.u64_le().ok_or(trunc)?;
        let client_challenge = b.array::<8>().ok_or(trunc)?;
        b.skip(4).ok_or(trunc)?;
        let (av_pairs, _padding) = AvPairs::parse(b.rest())?;
        Ok(NtlmV2Response {
            nt_proof,
            blob,
            timestamp,
            client_challenge,
            av_pairs,
        })
    }
}

/// Appends payload fields after a fixed header and hands back (Len, Offset) descriptors; used by
/// the client side ([`super::client`]).
pub(super) struct PayloadWriter {
    base: usize,
    pub(super) data: Vec<u8>,
}

impl PayloadWriter {
    pub(super) fn new(header_len: usize) -> Self {
        PayloadWriter {
            base: header_len,
            data: Vec::new(),
        }
    }

    /// Appends `bytes`; returns the 8-byte security buffer that points at them.
    pub(super) fn push(&mut self, bytes: &[u8]) -> [u8; 8] {
        let offset = self.base + self.data.len();
        self.data.extend_from_slice(bytes);
        let mut d = Vec::with_capacity(8);
        push_sec_buf(&mut d, bytes.len(), offset);
        let mut out = [0u8; 8];
        out.copy_from_slice(&d);
        out
    }
}

/// Shared with the end-to-end tests: the spec's messages.
#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    /// The CHALLENGE_MESSAGE of MS-NLMP 4.2.4.3.
    pub(crate) fn spec_challenge() -> Vec<u8> {
        h(
            "4e544c4d53535000 02000000 0c000c00 38000000 33828ae2 0123456789abcdef
           0000000000000000 24002400 44000000 060070170000000f
           530065007200760065007200
           02000c00 44006f006d00610069006e00 01000c00 530065007200760065007200 00000000",
        )
    }

    /// The AUTHENTICATE_MESSAGE of MS-NLMP 4.2.4.3 (NTLMv2, KEY_EXCH, no MIC).
    pub(crate) fn spec_authenticate() -> Vec<u8> {
        h(
            "4e544c4d53535000 03000000 18001800 6c000000 54005400 84000000 0c000c00 48000000
           08000800 54000000 10001000 5c000000 10001000 d8000000 358288e2 050128 0a0000000f
           44006f006d00610069006e00 5500730065007200 43004f004d0050005500540045005200
           86c35097ac9cec102554764a57cccc19aaaaaaaaaaaaaaaa
           68cd0ab851e51c96aabc927bebef6a1c 0101000000000000 0000000000000000
           aaaaaaaaaaaaaaaa 00000000 02000c00 44006f006d00610069006e00
           01000c00 530065007200760065007200 00000000 00000000
           c5dad2544fc9799094ce1ce90bc9d03e",
        )
    }

    #[test]
    fn parses_the_spec_challenge() {
        let raw = spec_challenge();
        let c = ChallengeMessage::parse(&raw).unwrap();
        assert_eq!(c.flags.bits(), 0xe28a_8233);
        assert_eq!(
            c.server_challenge,
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        );
        assert_eq!(decode_name(c.target_name, true).unwrap(), "Server");
        let (pairs, rest) = AvPairs::parse(c.target_info).unwrap();
        assert!(rest.is_empty());
        let names: Vec<_> = pairs
            .iter()
            .map(|(id, v)| (id, decode_name(v, true).unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                (av::NB_DOMAIN_NAME, "Domain".to_string()),
                (av::NB_COMPUTER_NAME, "Server".to_string())
            ]
        );
    }

    #[test]
    fn parses_the_spec_authenticate() {
        let raw = spec_authenticate();
        let a = AuthenticateMessage::parse(&raw).unwrap();
        assert_eq!(a.flags.bits(), 0xe288_8235);
        assert_eq!(a.user, "User");
        assert_eq!(a.domain, "Domain");
        assert_eq!(a.workstation, "COMPUTER");
        assert_eq!(a.lm_response(&raw).len(), 24);
        assert_eq!(a.nt_response(&raw).len(), 84);
        assert_eq!(a.encrypted_random_session_key(&raw).len(), 16);
        assert_eq!(a.version, Some([5, 1, 0x28, 0x0a, 0, 0, 0, 0x0f]));
        assert_eq!(a.mic, None, "payload starts at 72: no room for a MIC");
        let v2 = NtlmV2Response::parse(a.nt_response(&raw)).unwrap();
        assert_eq!(v2.timestamp, 0);
        assert_eq!(v2.client_challenge, [0xaa; 8]);
        assert_eq!(v2.av_pairs.flags(), 0);
        assert_eq!(v2.blob, &a.nt_response(&raw)[16..]);
    }

    #[test]
    fn parses_negotiate_variants() {
        // 16-byte form (old clients), 32-byte form, 40-byte form with Version.
        let short = h("4e544c4d53535000 01000000 07820800");
        let n = NegotiateMessage::parse(&short).unwrap();
        assert_eq!(n.flags.bits(), 0x0008_8207);
        let full = h("4e544c4d53535000 01000000 07820800 0000000020000000 0000000020000000");
        assert!(NegotiateMessage::parse(&full).unwrap().domain.is_none());
        let win = h(
            "4e544c4d53535000 01000000 b78208e2 0000000000000000 0000000000000000
                     0a0061580000000f",
        );
        let n = NegotiateMessage::parse(&win).unwrap();
        assert_eq!(n.version, Some([0x0a, 0, 0x61, 0x58, 0, 0, 0, 0x0f]));
        // OEM domain and workstation supplied.
        let oem = h(
            "4e544c4d53535000 01000000 07320000 0600060020000000 0400040026000000
                     444f4d41494e 57533031",
        );
        let n = NegotiateMessage::parse(&oem).unwrap();
        assert_eq!(n.domain, Some(&b"DOMAIN"[..]));
        assert_eq!(n.workstation, Some(&b"WS01"[..]));
    }

    #[test]
    fn rejects_bad_headers_and_buffers() {
        type Case = (&'static str, Vec<u8>, &'static str);
        let cases: Vec<Case> = vec![
            ("empty", vec![], "truncated signature"),
            (
                "bad signature",
                h("4e544c4d53535001 01000000 07820800"),
                "not an NTLMSSP message",
            ),
            (
                "wrong type",
                h("4e544c4d53535000 03000000 07820800"),
                "unexpected NTLM message type",
            ),
            (
                "flags cut",
                h("4e544c4d53535000 01000000 0782"),
                "truncated negotiate flags",
            ),
            (
                "fields cut",
                h("4e544c4d53535000 01000000 07320000 06000600"),
                "truncated negotiate message",
            ),
            (
                "domain past the end",
                h("4e544c4d53535000 01000000 07320000 0600060020000000 0000000020000000 4142"),
                "security buffer out of range",
            ),
            (
                "domain inside the header",
                h("4e544c4d53535000 01000000 07320000 0600060010000000 0000000020000000"),
                "security buffer overlaps the message header",
            ),
            (
                "offset near u32::MAX",
                h("4e544c4d53535000 01000000 07320000 ffffffffffffffff 0000000020000000"),
                "security buffer out of range",
            ),
        ];
        for (name, msg, want) in cases {
            assert_eq!(NegotiateMessage::parse(&msg).unwrap_err(), want, "{name}");
        }
        let huge = [SIGNATURE.as_slice(), &vec![0u8; MAX_MESSAGE_LEN]].concat();
        assert_eq!(
            NegotiateMessage::parse(&huge).unwrap_err(),
            "message too large"
        );
    }

    #[test]
    fn av_pairs_must_be_well_formed() {
        type Case = (&'static str, Vec<u8>, Result<usize, &'static str>);
        let cases: Vec<Case> = vec![
            ("only EOL", h("00000000"), Ok(0)),
            ("EOL then padding", h("00000000 00000000"), Ok(4)),
            (
                "no EOL",
                h("01000200 4100"),
                Err("AV pair list without MsvAvEOL"),
            ),
            (
                "value overruns",
                h("01000800 4100 00000000"),
                Err("AV pair out of range"),
            ),
            (
                "EOL with value",
                h("00000200 0000"),
                Err("MsvAvEOL with a value"),
            ),
            (
                "short flags",
                h("06000200 0200 00000000"),
                Err("bad MsvAvFlags"),
            ),
            (
                "two flags",
                h("060004000200000006000400000000000000 0000"),
                Err("bad MsvAvFlags"),
            ),
            (
                "long timestamp",
                h("07000900 000000000000000000 00000000"),
                Err("bad MsvAvTimestamp"),
            ),
            ("truncated header", h("0100"), Err("truncated AV pair")),
        ];
        for (name, buf, want) in cases {
            let got = AvPairs::parse(&buf).map(|(_, rest)| rest.len());
            assert_eq!(got, want, "{name}");
        }
        let buf = h("06000400 02000000 07000800 0102030405060708 00000000");
        let (p, _) = AvPairs::parse(&buf).unwrap();
        assert_eq!(p.flags(), av::FLAG_MIC_PRESENT);
        assert_eq!(p.timestamp(), Some(0x0807_0605_0403_0201));
    }

    #[test]
    fn names_are_decoded_strictly() {
        assert_eq!(decode_name(&h("41004200"), true).unwrap(), "AB");
        assert_eq!(decode_name(b"AB", false).unwrap(), "AB");
        assert_eq!(
            decode_name(&h("410042"), true).unwrap_err(),
            "odd-length UTF-16 name"
        );
        assert_eq!(
            decode_name(&h("00d8 4100"), true).unwrap_err(),
            "ill-formed UTF-16 name"
        );
        assert_eq!(
            decode_name(&[0xe9], false).unwrap_err(),
            "non-ASCII OEM name"
        );
        assert_eq!(
            decode_name(&h("41000a00"), true).unwrap_err(),
            "control character in name"
        );
        assert_eq!(
            decode_name(&[b'a'; MAX_NAME_BYTES + 1], false).unwrap_err(),
            "name too long"
        );
        // A non-BMP character is fine.
        assert_eq!(decode_name(&h("3dd800de"), true).unwrap(), "😀");
    }

    #[test]
    fn built_challenge_parses_back() {
        let t = TargetInfoTemplate::new(
            "EXAMPLE",
            "KCDPROXY",
            "example.test",
            "kcdproxy.example.test",
        )
        .unwrap();
        let flags = NegotiateFlags::UNICODE
            | NegotiateFlags::NTLM
            | NegotiateFlags::TARGET_INFO
            | NegotiateFlags::VERSION;
        let raw = build_challenge(&t, flags, &[9; 8], 0x01d9_0000_0000_0000);
        let c = ChallengeMessage::parse(&raw).unwrap();
        assert_eq!(c.flags, flags);
        assert_eq!(c.server_challenge, [9; 8]);
        assert_eq!(decode_name(c.target_name, true).unwrap(), "EXAMPLE");
        let (pairs, rest) = AvPairs::parse(c.target_info).unwrap();
        assert!(rest.is_empty());
        let ids: Vec<u16> = pairs.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, [2, 1, 4, 3, 7]);
        assert_eq!(
            decode_name(pairs.get(av::DNS_COMPUTER_NAME).unwrap(), true).unwrap(),
            "kcdproxy.example.test"
        );
        assert_eq!(pairs.timestamp(), Some(0x01d9_0000_0000_0000));
        assert_eq!(&raw[48..56], &OUR_VERSION);
        // OEM: TargetName in ASCII, no Version.
        let raw = build_challenge(&t, NegotiateFlags::OEM | NegotiateFlags::NTLM, &[9; 8], 0);
        let c = ChallengeMessage::parse(&raw).unwrap();
        assert_eq!(c.target_name, b"EXAMPLE");
        assert_eq!(&raw[48..56], &[0; 8]);
    }

    #[test]
    fn target_names_are_validated() {
        assert!(TargetInfoTemplate::new("", "K", "d", "c").is_err());
        assert!(TargetInfoTemplate::new("EXAMPLE", "KCD PROXY", "d", "c").is_err());
        assert!(TargetInfoTemplate::new("EXAMPLE", "KCDPROXY", "exämple.test", "c").is_err());
        assert!(TargetInfoTemplate::new("EXAMPLE", "KCDPROXY", &"a".repeat(256), "c").is_err());
    }

    #[test]
    fn flags_debug_names_bits() {
        let f = NegotiateFlags::UNICODE | NegotiateFlags::KEY_EXCH;
        assert_eq!(format!("{f:?}"), "0x40000001 (UNICODE|KEY_EXCH)");
        assert_eq!(format!("{:?}", NegotiateFlags(0)), "0x00000000");
    }
}
