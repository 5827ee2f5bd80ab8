//! The cryptography of MS-NLMP, as small pure functions.
//!
//! - [`nt_hash`]: NTOWFv1 = MD4(UTF-16LE(password)) (3.3.1) — what the hash store keeps.
//! - [`ntowfv2`]: HMAC_MD5(NT hash, UTF-16LE(UPPER(user) ‖ domain)) (3.3.2).
//! - [`ntlmv2_proof`]: NTProofStr = HMAC_MD5(NTOWFv2, ServerChallenge ‖ blob) (3.3.2).
//! - [`session_base_key_v2`]: HMAC_MD5(NTOWFv2, NTProofStr) (3.3.2).
//! - [`ntlmv1_response`], [`session_base_key_v1`], [`key_exchange_key_v1`]: the legacy NTLMv1
//!   family (3.3.1, 3.4.5.1), reached only when a policy opts in to NTLMv1.
//! - [`Rc4`]: RC4K for the key exchange (3.4.5.1 / 3.1.5.1.2) and sealing of signatures.
//! - [`mic`]: HMAC_MD5(ExportedSessionKey, NEGOTIATE ‖ CHALLENGE ‖ AUTHENTICATE with a zero MIC).
//! - [`NtlmSigner`]: the NTLM MAC with extended session security (3.4.4.2), used for the SPNEGO
//!   mechListMIC.
//!
//! Invariants:
//! - Every secret (NT hash, NTOWFv2, keys, RC4 state) is wiped when dropped ([`Secret16`],
//!   [`Rc4`], `Zeroizing` buffers).
//! - Secrets are compared only with [`ct_eq`] (constant time).
//! - Nothing here can panic: all lengths are fixed by the types.
//!
//! HMAC-MD5 is implemented here over the `md-5` crate rather than through the `hmac` crate:
//! every key in NTLM is exactly 16 bytes, so the RFC 2104 construction is a dozen lines with no
//! fallible key setup.

use des::cipher::{BlockEncrypt, KeyInit};
use md4::Md4;
use md5::{Digest, Md5};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// A 16-byte secret (NT hash, NTOWFv2, session keys) that is wiped on drop and never printed.
#[derive(Clone)]
pub struct Secret16([u8; 16]);

impl Drop for Secret16 {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret16 {
    pub fn new(bytes: [u8; 16]) -> Self {
        Secret16(bytes)
    }

    /// The key bytes. Callers must not copy them out into unmanaged memory.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }

    /// Constant-time equality.
    pub fn ct_eq(&self, other: &Secret16) -> bool {
        ct_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for Secret16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret16(<redacted>)")
    }
}

/// Constant-time comparison of two byte strings (the lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// HMAC-MD5 (RFC 2104) with a 16-byte key, fed incrementally.
pub struct HmacMd5 {
    inner: Md5,
    outer: Md5,
}

impl HmacMd5 {
    const BLOCK: usize = 64;

    pub fn new(key: &[u8; 16]) -> Self {
        let mut ipad = Zeroizing::new([0x36u8; Self::BLOCK]);
        let mut opad = Zeroizing::new([0x5cu8; Self::BLOCK]);
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = Md5::new();
        inner.update(&ipad[..]);
        let mut outer = Md5::new();
        outer.update(&opad[..]);
        HmacMd5 { inner, outer }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
    }

    pub fn finalize(self) -> [u8; 16] {
        let HmacMd5 { inner, mut outer } = self;
        outer.update(inner.finalize());
        outer.finalize().into()
    }
}

/// HMAC_MD5(key, part₀ ‖ part₁ ‖ …).
pub fn hmac_md5(key: &[u8; 16], parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = HmacMd5::new(key);
    for p in parts {
        mac.update(p);
    }
    mac.finalize()
}

/// MD5(part₀ ‖ part₁ ‖ …).
fn md5(parts: &[&[u8]]) -> [u8; 16] {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// UTF-16LE bytes of `s` (MS-NLMP's UNICODE()).
pub fn utf16le(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() * 2);
    for unit in s.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// Uppercase the way Windows does for NTOWFv2: one character to one character, simple case
/// mapping only. Characters whose full uppercase is several characters (`ß` → `SS`) or lies
/// outside the Basic Multilingual Plane keep their form, as `RtlUpcaseUnicodeString` does.
pub fn windows_upper(s: &str) -> String {
    s.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) if (u as u32) <= 0xFFFF && (c as u32) <= 0xFFFF => u,
                _ => c,
            }
        })
        .collect()
}

/// NTOWFv1: MD4 of the UTF-16LE password. This is "the NT hash" that AD and smbpasswd store.
pub fn nt_hash(password: &str) -> Secret16 {
    let pw = Zeroizing::new(utf16le(password));
    Secret16(Md4::digest(&pw[..]).into())
}

/// NTOWFv2 = HMAC_MD5(NT hash, UTF-16LE(UPPER(user) ‖ domain)). The domain is *not* uppercased
/// and both strings are exactly what the client put in the AUTHENTICATE message.
pub fn ntowfv2(nt_hash: &Secret16, user: &str, domain: &str) -> Secret16 {
    let mut mac = HmacMd5::new(nt_hash.expose());
    mac.update(&utf16le(&windows_upper(user)));
    mac.update(&utf16le(domain));
    Secret16(mac.finalize())
}

/// NTProofStr = HMAC_MD5(NTOWFv2, ServerChallenge ‖ blob), where `blob` is the
/// NTLMv2_CLIENT_CHALLENGE (the NT response after its first 16 bytes).
pub fn ntlmv2_proof(ntowfv2: &Secret16, server_challenge: &[u8; 8], blob: &[u8]) -> [u8; 16] {
    hmac_md5(ntowfv2.expose(), &[server_challenge, blob])
}

/// SessionBaseKey for NTLMv2 = HMAC_MD5(NTOWFv2, NTProofStr). For NTLMv2 this is also the
/// KeyExchangeKey (KXKEY, 3.4.5.1).
pub fn session_base_key_v2(ntowfv2: &Secret16, nt_proof: &[u8; 16]) -> Secret16 {
    Secret16(hmac_md5(ntowfv2.expose(), &[nt_proof]))
}

/// RC4 (RC4K of MS-NLMP). The state is wiped on drop.
pub struct Rc4 {
    s: [u8; 256],
    i: u8,
    j: u8,
}

impl Drop for Rc4 {
    fn drop(&mut self) {
        self.s.zeroize();
        self.i.zeroize();
        self.j.zeroize();
    }
}

impl Rc4 {
    /// Key schedule; `key` must not be empty (an empty key is treated as one zero byte).
    pub fn new(key: &[u8]) -> Self {
        let key: &[u8] = if key.is_empty() { &[0] } else { key };
        let mut s = [0u8; 256];
        for (i, b) in s.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut j: u8 = 0;
        for i in 0..256 {
            j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
            s.swap(i, j as usize);
        }
        Rc4 { s, i: 0, j: 0 }
    }

    /// XORs the key stream into `data` in place (encryption and decryption are the same).
    pub fn apply(&mut self, data: &mut [u8]) {
        for b in data {
            self.i = self.i.wrapping_add(1);
            self.j = self.j.wrapping_add(self.s[self.i as usize]);
            self.s.swap(self.i as usize, self.j as usize);
            let k = self.s[self.s[self.i as usize].wrapping_add(self.s[self.j as usize]) as usize];
            *b ^= k;
        }
    }
}

/// RC4K(key, 16 bytes): the key exchange of 3.1.5.1.2 (client encrypts a random
/// ExportedSessionKey under the KeyExchangeKey; the server decrypts it with the same call).
pub fn rc4k(key: &Secret16, data: &[u8; 16]) -> Secret16 {
    let mut out = *data;
    Rc4::new(key.expose()).apply(&mut out);
    let secret = Secret16(out);
    out.zeroize();
    secret
}

/// The MIC: HMAC_MD5(ExportedSessionKey, NEGOTIATE ‖ CHALLENGE ‖ AUTHENTICATE), with the 16
/// MIC bytes of the AUTHENTICATE message at `mic_offset` taken as zero. Streams the three
/// messages; nothing is copied. `mic_offset + 16` must lie inside `authenticate` (the parser
/// guarantees it); if not, the whole message is hashed, which can only make the MIC fail.
pub fn mic(
    exported_session_key: &Secret16,
    negotiate: &[u8],
    challenge: &[u8],
    authenticate: &[u8],
    mic_offset: usize,
) -> [u8; 16] {
    let mut mac = HmacMd5::new(exported_session_key.expose());
    mac.update(negotiate);
    mac.update(challenge);
    match (
        authenticate.get(..mic_offset),
        authenticate.get(mic_offset.saturating_add(16)..),
    ) {
        (Some(head), Some(tail)) => {
            mac.update(head);
            mac.update(&[0u8; 16]);
            mac.update(tail);
        }
        _ => mac.update(authenticate),
    }
    mac.finalize()
}

// ---- NTLMv1 (opt-in only) ----

/// Spreads 56 key bits over 8 bytes (7 bits each, in the high bits), as DES keys are laid out.
/// The low (parity) bit is ignored by DES and left zero.
fn des_key(k7: &[u8; 7]) -> [u8; 8] {
    let mut bits: u64 = 0;
    for b in k7 {
        bits = (bits << 8) | u64::from(*b);
    }
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (((bits >> (49 - 7 * i)) & 0x7f) as u8) << 1;
    }
    out
}

fn des_encrypt(k7: &[u8; 7], data: &[u8; 8]) -> [u8; 8] {
    let mut key = des_key(k7);
    let cipher = des::Des::new(&key.into());
    key.zeroize();
    let mut block = (*data).into();
    cipher.encrypt_block(&mut block);
    block.into()
}

/// DESL(K, D) of 6: DES(K[0..7], D) ‖ DES(K[7..14], D) ‖ DES(K[14..16] ‖ Z(5), D).
fn desl(key: &Secret16, data: &[u8; 8]) -> [u8; 24] {
    let k = key.expose();
    let mut k1 = [0u8; 7];
    let mut k2 = [0u8; 7];
    let mut k3 = [0u8; 7];
    k1.copy_from_slice(&k[0..7]);
    k2.copy_from_slice(&k[7..14]);
    k3[..2].copy_from_slice(&k[14..16]);
    let mut out = [0u8; 24];
    out[0..8].copy_from_slice(&des_encrypt(&k1, data));
    out[8..16].copy_from_slice(&des_encrypt(&k2, data));
    out[16..24].copy_from_slice(&des_encrypt(&k3, data));
    k1.zeroize();
    k2.zeroize();
    k3.zeroize();
    out
}

/// The 24-byte NTLMv1 NT response (3.3.1). With extended session security the DES input is
/// MD5(ServerChallenge ‖ ClientChallenge)[0..8], the client challenge being the first 8 bytes
/// of the LM response.
pub fn ntlmv1_response(
    nt_hash: &Secret16,
    server_challenge: &[u8; 8],
    ess_client_challenge: Option<&[u8; 8]>,
) -> [u8; 24] {
    let input = match ess_client_challenge {
        Some(cc) => {
            let h = md5(&[server_challenge, cc]);
            let mut d = [0u8; 8];
            d.copy_from_slice(&h[..8]);
            d
        }
        None => *server_challenge,
    };
    desl(nt_hash, &input)
}

/// SessionBaseKey for NTLMv1 = MD4(NT hash).
pub fn session_base_key_v1(nt_hash: &Secret16) -> Secret16 {
    Secret16(Md4::digest(nt_hash.expose()).into())
}

/// KXKEY for NTLMv1 (3.4.5.1). With extended session security:
/// HMAC_MD5(SessionBaseKey, ServerChallenge ‖ LmChallengeResponse[0..8]); otherwise the
/// SessionBaseKey itself (we never negotiate LM_KEY or REQUEST_NON_NT_SESSION_KEY, the other
/// two branches of KXKEY).
pub fn key_exchange_key_v1(
    session_base_key: &Secret16,
    server_challenge: &[u8; 8],
    lm_response: &[u8],
    ess: bool,
) -> Secret16 {
    match (ess, lm_response.get(..8)) {
        (true, Some(cc)) => Secret16(hmac_md5(session_base_key.expose(), &[server_challenge, cc])),
        _ => session_base_key.clone(),
    }
}

// ---- Signing (for the SPNEGO mechListMIC) ----

const CLIENT_SIGN_MAGIC: &[u8] = b"session key to client-to-server signing key magic constant\0";
const SERVER_SIGN_MAGIC: &[u8] = b"session key to server-to-client signing key magic constant\0";
const CLIENT_SEAL_MAGIC: &[u8] = b"session key to client-to-server sealing key magic constant\0";
const SERVER_SEAL_MAGIC: &[u8] = b"session key to server-to-client sealing key magic constant\0";

/// Which way a signature travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ClientToServer,
    ServerToClient,
}

/// The NTLM MAC with extended session security (3.4.4.2) for one direction: an
/// NTLMSSP_MESSAGE_SIGNATURE of 16 bytes = Version 1 ‖ Checksum(8) ‖ SeqNum(4), where
/// Checksum = HMAC_MD5(SignKey, SeqNum ‖ message)[0..8], RC4-sealed with the direction's
/// SealKey when the key exchange was negotiated. The RC4 handle is stateful: signatures must be
/// made in sequence order, which is all SPNEGO needs (one mechListMIC each way, sequence 0).
pub struct NtlmSigner {
    sign_key: Secret16,
    /// `Some` when NTLMSSP_NEGOTIATE_KEY_EXCH was negotiated.
    seal: Option<Rc4>,
    seq: u32,
}

impl NtlmSigner {
    /// Keys for `dir` from the ExportedSessionKey (SIGNKEY/SEALKEY of 3.4.5.2–3.4.5.3).
    /// `key_len` is 16 with NTLMSSP_NEGOTIATE_128, 7 with _56, else 5 (SEALKEY truncation).
    pub fn new(exported: &Secret16, dir: Direction, key_exch: bool, seal_key_len: usize) -> Self {
        let (sign_magic, seal_magic) = match dir {
            Direction::ClientToServer => (CLIENT_SIGN_MAGIC, CLIENT_SEAL_MAGIC),
            Direction::ServerToClient => (SERVER_SIGN_MAGIC, SERVER_SEAL_MAGIC),
        };
        let sign_key = Secret16(md5(&[exported.expose(), sign_magic]));
        let seal = key_exch.then(|| {
            let n = seal_key_len.min(16);
            let mut seal_key = md5(&[&exported.expose()[..n], seal_magic]);
            let rc4 = Rc4::new(&seal_key);
            seal_key.zeroize();
            rc4
        });
        NtlmSigner {
            sign_key,
            seal,
            seq: 0,
        }
    }

    /// The signature of `message` at the current sequence number; advances the sequence.
    pub fn sign(&mut self, message: &[u8]) -> [u8; 16] {
        let seq = self.seq.to_le_bytes();
        let mac = hmac_md5(self.sign_key.expose(), &[&seq, message]);
        let mut checksum = [0u8; 8];
        checksum.copy_from_slice(&mac[..8]);
        if let Some(rc4) = &mut self.seal {
            rc4.apply(&mut checksum);
        }
        self.seq = self.seq.wrapping_add(1);
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&1u32.to_le_bytes());
        out[4..12].copy_from_slice(&checksum);
        out[12..16].copy_from_slice(&seq);
        out
    }

    /// Checks a peer's signature of `message` (constant time); advances the sequence either way.
    pub fn verify(&mut self, message: &[u8], signature: &[u8]) -> bool {
        let expected = self.sign(message);
        ct_eq(&expected, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    #[test]
    fn hmac_md5_rfc2202_case_1() {
        let key = [0x0bu8; 16];
        assert_eq!(
            hmac_md5(&key, &[b"Hi ", b"There"]).to_vec(),
            h("9294727a3638bb1c13f48ef8158bfc9d")
        );
    }

    #[test]
    fn hmac_md5_rfc2202_case_3() {
        let key = [0xaau8; 16];
        assert_eq!(
            hmac_md5(&key, &[&[0xdd; 50]]).to_vec(),
            h("56be34521d144c88dbb8c733f0e8b3f6")
        );
    }

    #[test]
    fn rc4_known_answer() {
        // The classic "Key"/"Plaintext" vector.
        let mut data = *b"Plaintext";
        Rc4::new(b"Key").apply(&mut data);
        assert_eq!(data.to_vec(), h("bbf316e8d940af0ad3"));
    }

    // MS-NLMP 4.2.1 common values: user "User", domain "Domain", password "Password",
    // server challenge 0123456789abcdef, client challenge aaaaaaaaaaaaaaaa.
    const SERVER_CHALLENGE: [u8; 8] = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    const CLIENT_CHALLENGE: [u8; 8] = [0xaa; 8];

    #[test]
    fn ntowfv1_ms_nlmp_4_2_2_1_2() {
        assert_eq!(
            nt_hash("Password").expose().to_vec(),
            h("a4f49c406510bdcab6824ee7c30fd852")
        );
    }

    #[test]
    fn ntowfv2_ms_nlmp_4_2_4_1_1() {
        let k = ntowfv2(&nt_hash("Password"), "User", "Domain");
        assert_eq!(k.expose().to_vec(), h("0c868a403bfd7a93a3001ef22ef02e3f"));
        // UPPER applies to the user only: "user" gives the same key, "domain" does not.
        assert!(k.ct_eq(&ntowfv2(&nt_hash("Password"), "user", "Domain")));
        assert!(!k.ct_eq(&ntowfv2(&nt_hash("Password"), "User", "DOMAIN")));
    }

    /// The NTLMv2_CLIENT_CHALLENGE ("temp") of MS-NLMP 4.2.4.1.3: timestamp 0, client challenge
    /// aa…, AV pairs NbDomainName "Domain", NbComputerName "Server", EOL, then Z(4).
    fn spec_blob() -> Vec<u8> {
        h(
            "0101 0000 00000000 0000000000000000 aaaaaaaaaaaaaaaa 00000000
           0200 0c00 44006f006d00610069006e00
           0100 0c00 53006500720076006500720000000000
           00000000",
        )
    }

    #[test]
    fn ntlmv2_proof_and_session_base_key_ms_nlmp_4_2_4() {
        let k = ntowfv2(&nt_hash("Password"), "User", "Domain");
        let proof = ntlmv2_proof(&k, &SERVER_CHALLENGE, &spec_blob());
        // 4.2.4.2.2 NTLMv2 Response (NTProofStr)
        assert_eq!(proof.to_vec(), h("68cd0ab851e51c96aabc927bebef6a1c"));
        // 4.2.4.1.2 Session Base Key
        assert_eq!(
            session_base_key_v2(&k, &proof).expose().to_vec(),
            h("8de40ccadbc14a82f15cb0ad0de95ca3")
        );
    }

    #[test]
    fn key_exchange_ms_nlmp_4_2_4_2_3() {
        // KeyExchangeKey = SessionBaseKey (NTLMv2); RandomSessionKey = 55…55 (4.2.1);
        // EncryptedSessionKey = c5dad2544fc9799094ce1ce90bc9d03e.
        let kxkey = Secret16(h("8de40ccadbc14a82f15cb0ad0de95ca3").try_into().unwrap());
        let enc: [u8; 16] = h("c5dad2544fc9799094ce1ce90bc9d03e").try_into().unwrap();
        assert_eq!(*rc4k(&kxkey, &enc).expose(), [0x55; 16]);
        assert_eq!(rc4k(&kxkey, &[0x55; 16]).expose(), &enc);
    }

    #[test]
    fn ntlmv1_responses_ms_nlmp_4_2_2_and_4_2_3() {
        let nt = nt_hash("Password");
        // 4.2.2.2.1 NTLMv1 Response
        assert_eq!(
            ntlmv1_response(&nt, &SERVER_CHALLENGE, None).to_vec(),
            h("67c43011f30298a2ad35ece64f16331c44bdbed927841f94")
        );
        // 4.2.3.2.2 NTLMv1 with extended session security
        assert_eq!(
            ntlmv1_response(&nt, &SERVER_CHALLENGE, Some(&CLIENT_CHALLENGE)).to_vec(),
            h("7537f803ae367128ca458204bde7caf81e97ed2683267232")
        );
        // 4.2.2.1.3 Session Base Key
        assert_eq!(
            session_base_key_v1(&nt).expose().to_vec(),
            h("d87262b0cde4b1cb7499becccdf10784")
        );
    }

    #[test]
    fn windows_upper_is_one_to_one() {
        assert_eq!(windows_upper("alice"), "ALICE");
        assert_eq!(windows_upper("straße"), "STRAßE");
        assert_eq!(windows_upper("élodie"), "ÉLODIE");
        assert_eq!(windows_upper("user@example.test"), "USER@EXAMPLE.TEST");
    }

    #[test]
    fn signer_round_trip_and_sequence() {
        let key = Secret16([7; 16]);
        for key_exch in [false, true] {
            let mut a = NtlmSigner::new(&key, Direction::ClientToServer, key_exch, 16);
            let mut b = NtlmSigner::new(&key, Direction::ClientToServer, key_exch, 16);
            let s0 = a.sign(b"first");
            let s1 = a.sign(b"second");
            assert_eq!(&s0[12..], &0u32.to_le_bytes());
            assert_eq!(&s1[12..], &1u32.to_le_bytes());
            assert!(b.verify(b"first", &s0));
            assert!(!b.verify(b"second", &s0), "sequence numbers bind the order");
            // The other direction uses other keys.
            let mut c = NtlmSigner::new(&key, Direction::ServerToClient, key_exch, 16);
            assert!(!c.verify(b"first", &s0));
        }
    }
}
