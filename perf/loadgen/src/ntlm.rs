//! A minimal NTLMv2 client for `--ntlm-users`: what curl sends (MS-NLMP), enough to make a proxy
//! pay an NTLM handshake per connection.
//!
//! NEGOTIATE (no domain or workstation), then AUTHENTICATE with an NTLMv2 response to the
//! server's CHALLENGE: no MIC, no key exchange, an all-zero LMv2 field. Independent of kcdproxy's
//! own NTLM code on purpose: the load generator must not share the bugs of what it measures.
//!
//! NTOWFv2 = HMAC_MD5(MD4(UTF-16LE(password)), UTF-16LE(UPPER(user) ‖ domain));
//! NTProofStr = HMAC_MD5(NTOWFv2, ServerChallenge ‖ blob); NtChallengeResponse = NTProofStr ‖ blob.

use md4::Md4;
use md5::{Digest, Md5};

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
const UNICODE: u32 = 0x0000_0001;
const OEM: u32 = 0x0000_0002;
const REQUEST_TARGET: u32 = 0x0000_0004;
const NTLM: u32 = 0x0000_0200;
const ALWAYS_SIGN: u32 = 0x0000_8000;
const EXTENDED_SESSION_SECURITY: u32 = 0x0008_0000;
const TARGET_INFO: u32 = 0x0080_0000;
const FLAGS: u32 = UNICODE | OEM | REQUEST_TARGET | NTLM | ALWAYS_SIGN | EXTENDED_SESSION_SECURITY;
/// MsvAvTimestamp in the CHALLENGE's target info.
const AV_TIMESTAMP: u16 = 7;

/// One user's credentials, with the password already reduced to NTOWFv2.
pub struct NtlmUser {
    user_utf16: Vec<u8>,
    domain_utf16: Vec<u8>,
    ntowfv2: [u8; 16],
}

/// The NEGOTIATE message: the same for every user.
pub fn negotiate() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(SIGNATURE);
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&FLAGS.to_le_bytes());
    m.extend_from_slice(&[0; 16]); // empty domain and workstation fields
    m
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

fn hmac_md5(key: &[u8; 16], parts: &[&[u8]]) -> [u8; 16] {
    // RFC 2104 with a 16-byte key (shorter than MD5's 64-byte block: zero-padded).
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Md5::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let mut outer = Md5::new();
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

impl NtlmUser {
    pub fn new(user: &str, domain: &str, password: &str) -> Self {
        let nt_hash: [u8; 16] = Md4::digest(utf16le(password)).into();
        let user_utf16 = utf16le(user);
        let domain_utf16 = utf16le(domain);
        let upper = utf16le(&user.to_uppercase());
        let ntowfv2 = hmac_md5(&nt_hash, &[&upper, &domain_utf16]);
        NtlmUser {
            user_utf16,
            domain_utf16,
            ntowfv2,
        }
    }

    /// The AUTHENTICATE message answering `challenge` (a decoded CHALLENGE message), with
    /// `client_challenge` (8 fresh bytes) and `now` (FILETIME, used when the server sent no
    /// timestamp). None when the CHALLENGE is malformed.
    pub fn authenticate(
        &self,
        challenge: &[u8],
        client_challenge: [u8; 8],
        now: u64,
    ) -> Option<Vec<u8>> {
        if challenge.get(..8)? != SIGNATURE || u32_at(challenge, 8)? != 2 {
            return None;
        }
        let server_challenge = challenge.get(24..32)?;
        let flags = u32_at(challenge, 20)?;
        let target_info: &[u8] = if flags & TARGET_INFO != 0 {
            let len = usize::from(u16_at(challenge, 40)?);
            let off = u32_at(challenge, 44)? as usize;
            challenge.get(off..off.checked_add(len)?)?
        } else {
            &[]
        };
        let timestamp = av_timestamp(target_info).unwrap_or(now);
        let mut blob = Vec::with_capacity(32 + target_info.len() + 4);
        blob.extend_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
        blob.extend_from_slice(&timestamp.to_le_bytes());
        blob.extend_from_slice(&client_challenge);
        blob.extend_from_slice(&[0; 4]);
        blob.extend_from_slice(target_info);
        blob.extend_from_slice(&[0; 4]);
        let proof = hmac_md5(&self.ntowfv2, &[server_challenge, &blob]);
        let mut nt = proof.to_vec();
        nt.extend_from_slice(&blob);

        // Header (64 bytes: no Version, no MIC), then LM, NT, domain, user, workstation.
        let lm = [0u8; 24];
        let fields: [&[u8]; 5] = [&lm, &nt, &self.domain_utf16, &self.user_utf16, &[]];
        let mut m = Vec::with_capacity(64 + fields.iter().map(|f| f.len()).sum::<usize>());
        m.extend_from_slice(SIGNATURE);
        m.extend_from_slice(&3u32.to_le_bytes());
        let mut off = 64u32;
        for f in fields {
            let len = u16::try_from(f.len()).ok()?;
            m.extend_from_slice(&len.to_le_bytes());
            m.extend_from_slice(&len.to_le_bytes());
            m.extend_from_slice(&off.to_le_bytes());
            off += u32::from(len);
        }
        m.extend_from_slice(&[0, 0, 0, 0, 0x40, 0, 0, 0]); // empty session key field at 64… end
        m.extend_from_slice(&((flags & FLAGS) | UNICODE).to_le_bytes());
        for f in fields {
            m.extend_from_slice(f);
        }
        // The session key field's offset must point at the payload's end, like the others.
        let end = m.len() as u32;
        m[56..60].copy_from_slice(&end.to_le_bytes());
        Some(m)
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// MsvAvTimestamp from AV pairs, if present.
fn av_timestamp(mut av: &[u8]) -> Option<u64> {
    while av.len() >= 4 {
        let id = u16_at(av, 0)?;
        let len = usize::from(u16_at(av, 2)?);
        let value = av.get(4..4 + len)?;
        if id == 0 {
            return None;
        }
        if id == AV_TIMESTAMP && len == 8 {
            return Some(u64::from_le_bytes(value.try_into().ok()?));
        }
        av = &av[4 + len..];
    }
    None
}

/// Windows FILETIME (100 ns since 1601) of the current time.
pub fn filetime_now() -> u64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (unix.as_nanos() / 100) as u64 + 116_444_736_000_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    // MS-NLMP 4.2.4: NTLMv2 test vectors (user "User", domain "Domain", password "Password").
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn ntowfv2_matches_ms_nlmp() {
        let u = NtlmUser::new("User", "Domain", "Password");
        assert_eq!(hex(&u.ntowfv2), "0c868a403bfd7a93a3001ef22ef02e3f");
    }

    #[test]
    fn authenticate_carries_the_ms_nlmp_proof() {
        // A CHALLENGE with the spec's target info (domain "Domain", server "Server").
        let mut av = Vec::new();
        for (id, s) in [(2u16, "Domain"), (1u16, "Server")] {
            let v = utf16le(s);
            av.extend_from_slice(&id.to_le_bytes());
            av.extend_from_slice(&(v.len() as u16).to_le_bytes());
            av.extend_from_slice(&v);
        }
        av.extend_from_slice(&[0; 4]);
        let mut ch = Vec::new();
        ch.extend_from_slice(SIGNATURE);
        ch.extend_from_slice(&2u32.to_le_bytes());
        ch.extend_from_slice(&[0; 8]); // target name field
        ch.extend_from_slice(&(FLAGS | TARGET_INFO).to_le_bytes());
        ch.extend_from_slice(&SERVER_CHALLENGE);
        ch.extend_from_slice(&[0; 8]);
        ch.extend_from_slice(&(av.len() as u16).to_le_bytes());
        ch.extend_from_slice(&(av.len() as u16).to_le_bytes());
        ch.extend_from_slice(&48u32.to_le_bytes());
        ch.extend_from_slice(&av);
        let u = NtlmUser::new("User", "Domain", "Password");
        let m = u.authenticate(&ch, CLIENT_CHALLENGE, 0).unwrap();
        // The spec's NTProofStr for time 0 and this blob.
        let nt_off = u32_at(&m, 24).unwrap() as usize;
        assert_eq!(
            hex(&m[nt_off..nt_off + 16]),
            "68cd0ab851e51c96aabc927bebef6a1c"
        );
        let user_off = u32_at(&m, 40).unwrap() as usize;
        assert_eq!(&m[user_off..user_off + 8], utf16le("User").as_slice());
        assert_eq!(u32_at(&m, 56).unwrap() as usize, m.len());
        assert!(u.authenticate(&ch[..20], CLIENT_CHALLENGE, 0).is_none());
    }
}
