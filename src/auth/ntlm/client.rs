//! An NTLMv2 *initiator* (MS-NLMP 3.1.5.1), built the way Windows and pyspnego build their
//! messages: NEGOTIATE with Version, AUTHENTICATE with Version, MIC (MsvAvFlags 0x2 when the
//! CHALLENGE carries MsvAvTimestamp), key exchange when offered, Z(24) LM response.
//!
//! The proxy never authenticates *to* anyone with NTLM (the backend leg is Kerberos); this
//! exists to drive the acceptor from tests, benches and load tools. Every choice a real client
//! makes is a public field of [`NtlmClient`], so tests can also build the messages a forger
//! would (MIC stripped, KEY_EXCH toggled, NTLMv1-sized responses, …).

use super::crypto::{self, Secret16};
use super::message::{
    av, AvPairs, ChallengeMessage, NegotiateFlags, PayloadWriter, AUTHENTICATE,
    AUTHENTICATE_HEADER_WITH_MIC_LEN, MIC_OFFSET, NEGOTIATE, SIGNATURE,
};
use super::FileTime;

/// Flags a Windows 10 client sends in its NEGOTIATE (WinHTTP): UNICODE, OEM, REQUEST_TARGET,
/// SIGN, LM_KEY, NTLM, ALWAYS_SIGN, EXTENDED_SESSIONSECURITY, VERSION, 128, KEY_EXCH, 56.
pub const WINDOWS_NEGOTIATE_FLAGS: NegotiateFlags = NegotiateFlags(0xe208_8297);

/// How the MIC is produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MicMode {
    /// Like Windows: MsvAvFlags 0x2 and a real MIC when the CHALLENGE has a timestamp.
    Auto,
    /// No MsvAvFlags, MIC field zero (curl, old clients).
    None,
    /// MsvAvFlags 0x2 but the MIC field all zero (a forger's attempt).
    FlagWithZeroMic,
    /// No MsvAvFlags but a real MIC in the field.
    MicWithoutFlag,
}

/// Which NT response to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseMode {
    NtlmV2,
    /// 24-byte NTLMv1; `ess` for the extended-session-security variant.
    NtlmV1 {
        ess: bool,
    },
}

/// An NTLM client with every knob exposed. [`NtlmClient::new`] gives Windows-like defaults.
#[derive(Clone, Debug)]
pub struct NtlmClient {
    pub user: String,
    pub domain: String,
    pub workstation: String,
    pub nt_hash: Secret16,
    pub negotiate_flags: NegotiateFlags,
    pub mic: MicMode,
    pub response: ResponseMode,
    /// Use the key exchange when the CHALLENGE offers it.
    pub key_exch: bool,
    /// Fixed client challenge (random when `None`).
    pub client_challenge: Option<[u8; 8]>,
    /// Fixed ExportedSessionKey for the key exchange (random when `None`).
    pub random_session_key: Option<[u8; 16]>,
    /// The blob timestamp when the CHALLENGE carries none (now when `None`).
    pub timestamp: Option<u64>,
    /// Add MsvAvTargetName (the SPN) to the blob, as Windows does.
    pub spn: Option<String>,
    /// Omit Version and MIC fields from the AUTHENTICATE layout (payload at byte 64).
    pub legacy_layout: bool,
}

/// What [`NtlmClient::authenticate`] produces.
pub struct ClientAuthenticate {
    pub message: Vec<u8>,
    /// The client's ExportedSessionKey (to check the server's signatures).
    pub exported_session_key: Secret16,
    pub flags: NegotiateFlags,
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // Test tooling: a failing OS RNG leaves zeros, which only makes the client predictable.
    let _ = getrandom::getrandom(&mut out);
    out
}

impl NtlmClient {
    pub fn new(user: &str, domain: &str, password: &str) -> Self {
        Self::with_hash(user, domain, crypto::nt_hash(password))
    }

    pub fn with_hash(user: &str, domain: &str, nt_hash: Secret16) -> Self {
        NtlmClient {
            user: user.to_string(),
            domain: domain.to_string(),
            workstation: "WORKSTATION".to_string(),
            nt_hash,
            negotiate_flags: WINDOWS_NEGOTIATE_FLAGS,
            mic: MicMode::Auto,
            response: ResponseMode::NtlmV2,
            key_exch: true,
            client_challenge: None,
            random_session_key: None,
            timestamp: None,
            spn: Some("HTTP/kcdproxy.example.test".to_string()),
            legacy_layout: false,
        }
    }

    /// The NEGOTIATE message: flags, empty domain and workstation, Version when flagged.
    pub fn negotiate(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&NEGOTIATE.to_le_bytes());
        out.extend_from_slice(&self.negotiate_flags.bits().to_le_bytes());
        let header = if self.negotiate_flags.contains(NegotiateFlags::VERSION) {
            40u32
        } else {
            32
        };
        for _ in 0..2 {
            out.extend_from_slice(&[0, 0, 0, 0]);
            out.extend_from_slice(&header.to_le_bytes());
        }
        if self.negotiate_flags.contains(NegotiateFlags::VERSION) {
            out.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 0x0f]);
        }
        out
    }

    fn name(&self, s: &str, unicode: bool) -> Vec<u8> {
        if unicode {
            crypto::utf16le(s)
        } else {
            s.as_bytes().to_vec()
        }
    }

    /// Builds the AUTHENTICATE answering `challenge`, given the `negotiate` we sent (for the
    /// MIC).
    pub fn authenticate(
        &self,
        negotiate: &[u8],
        challenge: &[u8],
    ) -> Result<ClientAuthenticate, &'static str> {
        let chal = ChallengeMessage::parse(challenge)?;
        let mut flags = chal.flags.intersection(self.negotiate_flags.union(
            NegotiateFlags::TARGET_INFO
                | NegotiateFlags::NTLM
                | NegotiateFlags::REQUEST_TARGET
                | NegotiateFlags::UNICODE
                | NegotiateFlags::OEM,
        ));
        if !self.key_exch {
            flags = flags.without(NegotiateFlags::KEY_EXCH);
        }
        let unicode = flags.contains(NegotiateFlags::UNICODE);
        let (pairs, _) = if chal.target_info.is_empty() {
            AvPairs::parse(&[0, 0, 0, 0])?
        } else {
            AvPairs::parse(chal.target_info)?
        };
        let server_time = pairs.timestamp();
        let want_mic = match self.mic {
            MicMode::Auto => server_time.is_some(),
            MicMode::None | MicMode::MicWithoutFlag => false,
            MicMode::FlagWithZeroMic => true,
        };

        let ntowf = crypto::ntowfv2(&self.nt_hash, &self.user, &self.domain);
        let cc = self.client_challenge.unwrap_or_else(random);
        let (lm, nt, session_base_key) = match self.response {
            ResponseMode::NtlmV2 => {
                // The client's TargetInfo: the server's pairs, then MsvAvFlags, the SPN, EOL.
                let mut target_info = Vec::new();
                for (id, value) in pairs.iter().filter(|(id, _)| *id != av::FLAGS) {
                    push_av(&mut target_info, id, value);
                }
                if want_mic {
                    push_av(
                        &mut target_info,
                        av::FLAGS,
                        &av::FLAG_MIC_PRESENT.to_le_bytes(),
                    );
                }
                if let Some(spn) = &self.spn {
                    push_av(&mut target_info, av::TARGET_NAME, &crypto::utf16le(spn));
                }
                push_av(&mut target_info, av::EOL, &[]);

                let time = server_time
                    .or(self.timestamp)
                    .unwrap_or_else(|| FileTime::now().0);
                let mut blob = vec![1, 1, 0, 0, 0, 0, 0, 0];
                blob.extend_from_slice(&time.to_le_bytes());
                blob.extend_from_slice(&cc);
                blob.extend_from_slice(&[0; 4]);
                blob.extend_from_slice(&target_info);
                blob.extend_from_slice(&[0; 4]);
                let proof = crypto::ntlmv2_proof(&ntowf, &chal.server_challenge, &blob);
                let sbk = crypto::session_base_key_v2(&ntowf, &proof);
                let lm = if server_time.is_some() {
                    vec![0; 24]
                } else {
                    let mut lm =
                        crypto::hmac_md5(ntowf.expose(), &[&chal.server_challenge, &cc]).to_vec();
                    lm.extend_from_slice(&cc);
                    lm
                };
                (lm, [proof.as_slice(), &blob].concat(), sbk)
            }
            ResponseMode::NtlmV1 { ess } => {
                let (lm, ess_cc) = if ess {
                    let mut lm = cc.to_vec();
                    lm.extend_from_slice(&[0; 16]);
                    (lm, Some(&cc))
                } else {
                    (vec![0; 24], None)
                };
                let nt = crypto::ntlmv1_response(&self.nt_hash, &chal.server_challenge, ess_cc);
                (lm, nt.to_vec(), crypto::session_base_key_v1(&self.nt_hash))
            }
        };
        if let ResponseMode::NtlmV1 { ess } = self.response {
            flags = if ess {
                flags.union(NegotiateFlags::EXTENDED_SESSIONSECURITY)
            } else {
                flags.without(NegotiateFlags::EXTENDED_SESSIONSECURITY)
            };
        }

        let kxkey = match self.response {
            ResponseMode::NtlmV2 => session_base_key,
            ResponseMode::NtlmV1 { ess } => {
                crypto::key_exchange_key_v1(&session_base_key, &chal.server_challenge, &lm, ess)
            }
        };
        let (exported, enc_key) = if flags.contains(NegotiateFlags::KEY_EXCH) {
            let exported = Secret16::new(self.random_session_key.unwrap_or_else(random));
            let enc = crypto::rc4k(&kxkey, exported.expose());
            (exported, enc.expose().to_vec())
        } else {
            (kxkey, Vec::new())
        };

        let header_len = if self.legacy_layout {
            64
        } else {
            AUTHENTICATE_HEADER_WITH_MIC_LEN
        };
        let mut payload = PayloadWriter::new(header_len);
        let domain_buf = payload.push(&self.name(&self.domain, unicode));
        let user_buf = payload.push(&self.name(&self.user, unicode));
        let ws_buf = payload.push(&self.name(&self.workstation, unicode));
        let lm_buf = payload.push(&lm);
        let nt_buf = payload.push(&nt);
        let key_buf = payload.push(&enc_key);

        let mut msg = Vec::with_capacity(header_len + payload.data.len());
        msg.extend_from_slice(SIGNATURE);
        msg.extend_from_slice(&AUTHENTICATE.to_le_bytes());
        for b in [lm_buf, nt_buf, domain_buf, user_buf, ws_buf, key_buf] {
            msg.extend_from_slice(&b);
        }
        msg.extend_from_slice(&flags.bits().to_le_bytes());
        if !self.legacy_layout {
            msg.extend_from_slice(&[10, 0, 0x61, 0x4a, 0, 0, 0, 0x0f]);
            msg.extend_from_slice(&[0; 16]); // MIC, filled below
        }
        msg.extend_from_slice(&payload.data);

        let sign = match self.mic {
            MicMode::Auto => want_mic,
            MicMode::MicWithoutFlag => true,
            MicMode::None | MicMode::FlagWithZeroMic => false,
        };
        if sign && !self.legacy_layout {
            let mic = crypto::mic(&exported, negotiate, challenge, &msg, MIC_OFFSET);
            if let Some(field) = msg.get_mut(MIC_OFFSET..MIC_OFFSET + 16) {
                field.copy_from_slice(&mic);
            }
        }
        Ok(ClientAuthenticate {
            message: msg,
            exported_session_key: exported,
            flags,
        })
    }
}

fn push_av(out: &mut Vec<u8>, id: u16, value: &[u8]) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}
