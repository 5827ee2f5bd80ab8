//! The acceptor: CHALLENGE issuing and AUTHENTICATE verification (MS-NLMP 3.2.5.1), with the
//! checks every back end shares.
//!
//! The handshake is a chain of consuming states (like rustls' `Expect*` handshake states):
//!
//! ```text
//! NtlmAcceptor::challenge(NEGOTIATE) → ChallengeState
//! NtlmAcceptor::accept(ChallengeState, AUTHENTICATE) → PendingAuth      (state consumed)
//! PendingAuth::request() → VerifyRequest → NtlmBackend::verify → BackendVerified
//! PendingAuth::finish(BackendVerified) → NtlmVerified                   (pending consumed)
//! ```
//!
//! `accept` does every check that needs no key: structure, anonymous, NTLMv1 policy, blob
//! timestamp, challenge lifetime, MIC-field consistency. These run on the connection's core and
//! spare the back end (a domain controller answers ~440 checks/s through winbind) from garbage.
//! The back end checks the proof and returns the SessionBaseKey. `finish` derives the
//! ExportedSessionKey and checks the MIC. `PendingAuth` owns its bytes and is `Send`, so a
//! blocking back end can run on a pool thread; [`NtlmAcceptor::verify`] does all three steps
//! inline for back ends that do not block (the local hash store).
//!
//! Order of checks in a successful NTLMv2 verification (each failure is final):
//! 1. challenge lifetime, 2. message structure, 3. anonymous, 4. response version vs policy,
//! 5. blob structure and timestamp skew, 6. MIC field vs MsvAvFlags, 7. key-exchange fields,
//! 8. **proof** (back end), 9. session keys, 10. MIC.

use std::time::Duration;

use super::crypto::{self, Secret16};
use super::message::{
    self, av, AuthenticateMessage, NegotiateFlags, NegotiateMessage, NtlmV2Response,
    TargetInfoTemplate,
};
use super::{FileTime, NtlmConfig, NtlmError};

/// Knobs of verification. The defaults are the safe ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyPolicy {
    /// Accept 24-byte NTLMv1 responses (DES of the NT hash; crackable offline). Default off.
    pub allow_ntlmv1: bool,
    /// Refuse AUTHENTICATE messages without a MIC. Default off: curl and other non-Windows
    /// clients send none, and without a MIC the NTLMv2 proof still binds our challenge.
    pub require_mic: bool,
    /// How far the NTLMv2 blob's timestamp may be from our clock. Clients copy the timestamp of
    /// our CHALLENGE when it has one (ours always does), so this mostly bounds clients (curl)
    /// that use their own clock. Default 5 minutes, as Kerberos.
    pub max_clock_skew: Duration,
    /// How long a server challenge stays usable. Default 5 minutes.
    pub challenge_lifetime: Duration,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        VerifyPolicy {
            allow_ntlmv1: false,
            require_mic: false,
            max_clock_skew: Duration::from_secs(300),
            challenge_lifetime: Duration::from_secs(300),
        }
    }
}

/// What a back end is asked: does `nt_response` prove the key of `user`@`domain` for
/// `server_challenge`? All fields are exactly what the client sent (the user and domain strings
/// are inputs to NTOWFv2 as typed). The raw messages are there for back ends that forward
/// whole messages; the shared code checks the MIC itself.
#[derive(Clone, Copy, Debug)]
pub struct VerifyRequest<'a> {
    pub user: &'a str,
    pub domain: &'a str,
    pub workstation: &'a str,
    pub server_challenge: &'a [u8; 8],
    /// NtChallengeResponse: 24 bytes (NTLMv1, only when the policy allows it) or an NTLMv2
    /// response (NTProofStr ‖ blob).
    pub nt_response: &'a [u8],
    /// LmChallengeResponse; for NTLMv1 with extended session security its first 8 bytes are the
    /// client challenge.
    pub lm_response: &'a [u8],
    /// The AUTHENTICATE message's flags (EXTENDED_SESSIONSECURITY decides the NTLMv1 variant).
    pub flags: NegotiateFlags,
    pub negotiate: &'a [u8],
    pub challenge: &'a [u8],
    pub authenticate: &'a [u8],
}

impl VerifyRequest<'_> {
    /// Whether the response is NTLMv1 (24 bytes) rather than NTLMv2.
    pub fn is_ntlmv1(&self) -> bool {
        self.nt_response.len() == NTLMV1_RESPONSE_LEN
    }
}

/// A back end's "yes": the canonical account name and the SessionBaseKey (what winbind calls
/// the user session key). A back end must return this only after verifying the proof.
#[derive(Debug)]
pub struct BackendVerified {
    user: String,
    domain: String,
    session_base_key: Secret16,
}

impl BackendVerified {
    /// For back ends: `user`/`domain` as the directory spells them, and the SessionBaseKey
    /// (NTLMv2: HMAC_MD5(NTOWFv2, NTProofStr); NTLMv1: MD4(NT hash)).
    pub fn new(user: String, domain: String, session_base_key: [u8; 16]) -> Self {
        BackendVerified {
            user,
            domain,
            session_base_key: Secret16::new(session_base_key),
        }
    }
}

/// Something that can check an NTLM response against a user's key: the local hash store
/// ([`super::LocalBackend`]), or a domain controller through winbind. Implementations may block
/// (run them off the core, see [`PendingAuth`]).
pub trait NtlmBackend {
    fn verify(&self, req: &VerifyRequest<'_>) -> Result<BackendVerified, NtlmError>;
}

impl<T: NtlmBackend + ?Sized> NtlmBackend for &T {
    fn verify(&self, req: &VerifyRequest<'_>) -> Result<BackendVerified, NtlmError> {
        (**self).verify(req)
    }
}

/// A verified NTLM login. Only [`PendingAuth::finish`] makes one, so holding one proves that a
/// back end checked the password proof and that the shared checks (MIC, replay, skew) passed.
pub struct NtlmVerified {
    user: String,
    domain: String,
    workstation: String,
    session_key: Secret16,
    flags: NegotiateFlags,
}

impl NtlmVerified {
    /// The account name, as the back end spells it.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The account's domain, as the back end spells it (NetBIOS name or realm).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The workstation name the client claimed (not verified by anything: for logs only).
    pub fn workstation(&self) -> &str {
        &self.workstation
    }

    /// The ExportedSessionKey, shared with the client (signing, the SPNEGO mechListMIC).
    pub fn session_key(&self) -> &[u8; 16] {
        self.session_key.expose()
    }

    /// The flags of the AUTHENTICATE message (as negotiated).
    pub fn flags(&self) -> NegotiateFlags {
        self.flags
    }

    /// The NTLM signer for `dir` (3.4.4.2), when extended session security was negotiated (the
    /// only signing we implement; every NTLMv2 client negotiates it).
    pub fn signer(&self, dir: crypto::Direction) -> Option<crypto::NtlmSigner> {
        if !self
            .flags
            .contains(NegotiateFlags::EXTENDED_SESSIONSECURITY)
        {
            return None;
        }
        let seal_len = if self.flags.contains(NegotiateFlags::NEGOTIATE_128) {
            16
        } else if self.flags.contains(NegotiateFlags::NEGOTIATE_56) {
            7
        } else {
            5
        };
        Some(crypto::NtlmSigner::new(
            &self.session_key,
            dir,
            self.flags.contains(NegotiateFlags::KEY_EXCH),
            seal_len,
        ))
    }
}

impl std::fmt::Debug for NtlmVerified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtlmVerified")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .field("workstation", &self.workstation)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

/// A CHALLENGE we sent and have not seen answered: the connection's auth state holds it until
/// the AUTHENTICATE arrives. Deliberately neither `Clone` nor `Copy`: [`NtlmAcceptor::accept`]
/// takes it by value, so each server challenge is checked at most once. A second use does not
/// compile:
///
/// ```compile_fail,E0382
/// # use kcdproxy::auth::ntlm::{ChallengeState, FileTime, LocalBackend, NtlmAcceptor};
/// # fn replay(acc: &NtlmAcceptor, state: ChallengeState, auth: &[u8], b: &LocalBackend) {
/// let first = acc.verify(state, auth, b, FileTime::now());
/// let replayed = acc.verify(state, auth, b, FileTime::now()); // `state` was moved
/// # }
/// ```
pub struct ChallengeState {
    server_challenge: [u8; 8],
    /// The client's NEGOTIATE and our CHALLENGE, verbatim: the MIC covers them.
    negotiate: Vec<u8>,
    challenge: Vec<u8>,
    /// The flags we sent in the CHALLENGE (the negotiated set).
    flags: NegotiateFlags,
    issued: FileTime,
}

impl ChallengeState {
    /// The CHALLENGE message to send (base64 it into `WWW-Authenticate: NTLM …`).
    pub fn message(&self) -> &[u8] {
        &self.challenge
    }

    pub fn issued_at(&self) -> FileTime {
        self.issued
    }

    /// The flags we offered.
    pub fn flags(&self) -> NegotiateFlags {
        self.flags
    }

    /// A state for recorded messages (known-answer tests of other implementations' output).
    #[cfg(test)]
    pub(crate) fn for_test(
        server_challenge: [u8; 8],
        negotiate: Vec<u8>,
        challenge: Vec<u8>,
        flags: NegotiateFlags,
        issued: FileTime,
    ) -> Self {
        ChallengeState {
            server_challenge,
            negotiate,
            challenge,
            flags,
            issued,
        }
    }
}

impl std::fmt::Debug for ChallengeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChallengeState")
            .field("flags", &self.flags)
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

/// Which response the client sent, decided (and policy-checked) by `accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseKind {
    /// NTLMv2; `mic` when MsvAvFlags announces a MIC.
    V2 { mic: bool },
    /// NTLMv1 (opt-in); `ess` when extended session security was used.
    V1 { ess: bool },
}

/// An AUTHENTICATE that passed every check that needs no key, waiting for the back end's
/// verdict. Owns its bytes (`Send`), so it can travel to a blocking pool and back.
pub struct PendingAuth {
    state: ChallengeState,
    authenticate: Vec<u8>,
    msg: AuthenticateMessage,
    kind: ResponseKind,
    /// Whether the ExportedSessionKey is RC4-decrypted from EncryptedRandomSessionKey.
    key_exch: bool,
}

impl PendingAuth {
    /// The question for the back end.
    pub fn request(&self) -> VerifyRequest<'_> {
        VerifyRequest {
            user: &self.msg.user,
            domain: &self.msg.domain,
            workstation: &self.msg.workstation,
            server_challenge: &self.state.server_challenge,
            nt_response: self.msg.nt_response(&self.authenticate),
            lm_response: self.msg.lm_response(&self.authenticate),
            flags: self.msg.flags,
            negotiate: &self.state.negotiate,
            challenge: &self.state.challenge,
            authenticate: &self.authenticate,
        }
    }

    /// The user name as the client typed it (for logs of failures).
    pub fn user(&self) -> &str {
        &self.msg.user
    }

    /// The domain as the client typed it.
    pub fn domain(&self) -> &str {
        &self.msg.domain
    }

    /// Completes verification with the back end's verdict: derives the session keys and checks
    /// the MIC with them. Consumes the pending state either way.
    pub fn finish(
        self,
        verdict: Result<BackendVerified, NtlmError>,
    ) -> Result<NtlmVerified, NtlmError> {
        let backend = verdict?;
        let PendingAuth {
            state,
            authenticate,
            msg,
            kind,
            key_exch,
        } = self;

        // KXKEY (3.4.5.1): NTLMv2 uses the SessionBaseKey itself.
        let kxkey = match kind {
            ResponseKind::V2 { .. } => backend.session_base_key,
            ResponseKind::V1 { ess } => crypto::key_exchange_key_v1(
                &backend.session_base_key,
                &state.server_challenge,
                msg.lm_response(&authenticate),
                ess,
            ),
        };
        let exported = if key_exch {
            let enc: [u8; 16] = msg
                .encrypted_random_session_key(&authenticate)
                .try_into()
                .map_err(|_| NtlmError::Malformed("bad EncryptedRandomSessionKey length"))?;
            crypto::rc4k(&kxkey, &enc)
        } else {
            kxkey
        };

        if let ResponseKind::V2 { mic: true } = kind {
            // `accept` checked the field exists; re-checked here so this function stands alone.
            let Some(sent) = msg.mic else {
                return Err(NtlmError::MicMissing);
            };
            let expected = crypto::mic(
                &exported,
                &state.negotiate,
                &state.challenge,
                &authenticate,
                message::MIC_OFFSET,
            );
            if !crypto::ct_eq(&expected, &sent) {
                return Err(NtlmError::MicMismatch);
            }
        }

        Ok(NtlmVerified {
            user: backend.user,
            domain: backend.domain,
            workstation: msg.workstation,
            session_key: exported,
            flags: msg.flags,
        })
    }
}

impl std::fmt::Debug for PendingAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAuth")
            .field("user", &self.msg.user)
            .field("domain", &self.msg.domain)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// NTLMv1 and LM responses are 24 bytes.
const NTLMV1_RESPONSE_LEN: usize = 24;

/// The server side of NTLM for one configuration. Immutable and cheap to share (`Arc`) or
/// clone per core.
#[derive(Clone, Debug)]
pub struct NtlmAcceptor {
    template: TargetInfoTemplate,
    policy: VerifyPolicy,
}

impl NtlmAcceptor {
    /// Flags we may echo when the client asks for them. Never LM_KEY (3.2.5.1.1: extended
    /// session security wins over it, and LM is never offered), never DATAGRAM, ANONYMOUS,
    /// IDENTIFY or REQUEST_NON_NT_SESSION_KEY.
    const ECHOED: NegotiateFlags = NegotiateFlags(
        NegotiateFlags::SIGN.bits()
            | NegotiateFlags::SEAL.bits()
            | NegotiateFlags::ALWAYS_SIGN.bits()
            | NegotiateFlags::EXTENDED_SESSIONSECURITY.bits()
            | NegotiateFlags::VERSION.bits()
            | NegotiateFlags::NEGOTIATE_128.bits()
            | NegotiateFlags::KEY_EXCH.bits()
            | NegotiateFlags::NEGOTIATE_56.bits(),
    );
    /// Flags we always set: NTLM, and target information for NTLMv2.
    const ALWAYS: NegotiateFlags = NegotiateFlags(
        NegotiateFlags::NTLM.bits()
            | NegotiateFlags::TARGET_INFO.bits()
            | NegotiateFlags::REQUEST_TARGET.bits()
            | NegotiateFlags::TARGET_TYPE_DOMAIN.bits(),
    );

    /// Validates the names (non-empty ASCII, no spaces) and pre-encodes them.
    pub fn new(config: &NtlmConfig, policy: VerifyPolicy) -> Result<Self, &'static str> {
        let template = TargetInfoTemplate::new(
            &config.nb_domain,
            &config.nb_computer,
            &config.dns_domain,
            &config.dns_computer,
        )?;
        Ok(NtlmAcceptor { template, policy })
    }

    pub fn policy(&self) -> &VerifyPolicy {
        &self.policy
    }

    /// The CHALLENGE flags for a client's NEGOTIATE flags (3.2.5.1.1).
    pub fn negotiate_flags(client: NegotiateFlags) -> Result<NegotiateFlags, NtlmError> {
        let charset = if client.contains(NegotiateFlags::UNICODE) {
            NegotiateFlags::UNICODE
        } else if client.contains(NegotiateFlags::OEM) {
            NegotiateFlags::OEM
        } else {
            return Err(NtlmError::Malformed(
                "client offers neither Unicode nor OEM",
            ));
        };
        Ok(Self::ALWAYS | charset | client.intersection(Self::ECHOED))
    }

    /// Answers a NEGOTIATE with a fresh CHALLENGE. The returned state holds both messages and
    /// must be kept by the connection until its AUTHENTICATE arrives.
    pub fn challenge(&self, negotiate: &[u8], now: FileTime) -> Result<ChallengeState, NtlmError> {
        let mut server_challenge = [0u8; 8];
        getrandom::getrandom(&mut server_challenge).map_err(|_| NtlmError::RandomUnavailable)?;
        self.challenge_with(negotiate, server_challenge, now)
    }

    /// [`NtlmAcceptor::challenge`] with a chosen server challenge: for known-answer tests only.
    /// A predictable challenge makes responses replayable and precomputable, hence not `pub`.
    pub(crate) fn challenge_with(
        &self,
        negotiate: &[u8],
        server_challenge: [u8; 8],
        now: FileTime,
    ) -> Result<ChallengeState, NtlmError> {
        let neg = NegotiateMessage::parse(negotiate).map_err(NtlmError::Malformed)?;
        let flags = Self::negotiate_flags(neg.flags)?;
        let challenge = message::build_challenge(&self.template, flags, &server_challenge, now.0);
        Ok(ChallengeState {
            server_challenge,
            negotiate: negotiate.to_vec(),
            challenge,
            flags,
            issued: now,
        })
    }

    /// Checks an AUTHENTICATE against the challenge it answers, up to the point where a key is
    /// needed. Consumes the challenge state: whatever the outcome, it cannot be used again.
    pub fn accept(
        &self,
        state: ChallengeState,
        authenticate: &[u8],
        now: FileTime,
    ) -> Result<PendingAuth, NtlmError> {
        let policy = &self.policy;
        if now.0 > state.issued.0 && now.distance(state.issued) > policy.challenge_lifetime {
            return Err(NtlmError::ChallengeExpired);
        }
        let msg = AuthenticateMessage::parse(authenticate).map_err(NtlmError::Malformed)?;
        let nt = msg.nt_response(authenticate);
        let lm = msg.lm_response(authenticate);

        // Anonymous (3.2.5.1.2: empty user and NT response, LM Z(1) or empty): nobody to
        // authenticate. An empty user or NT response alone is refused the same way.
        if msg.flags.contains(NegotiateFlags::ANONYMOUS) || msg.user.is_empty() || nt.is_empty() {
            return Err(NtlmError::Anonymous);
        }
        if !lm.is_empty() && lm.len() != NTLMV1_RESPONSE_LEN {
            return Err(NtlmError::Malformed("bad LM response length"));
        }

        // Flags the client claims must be ones we offered where they change the key schedule.
        let offered = state.flags;
        for (flag, why) in [
            (NegotiateFlags::KEY_EXCH, "KEY_EXCH was not offered"),
            (
                NegotiateFlags::EXTENDED_SESSIONSECURITY,
                "extended session security was not offered",
            ),
        ] {
            if msg.flags.contains(flag) && !offered.contains(flag) {
                return Err(NtlmError::Malformed(why));
            }
        }

        let kind = if nt.len() == NTLMV1_RESPONSE_LEN {
            if !policy.allow_ntlmv1 {
                return Err(NtlmError::NtlmV1Refused);
            }
            let ess = msg.flags.contains(NegotiateFlags::EXTENDED_SESSIONSECURITY);
            // LM_KEY would change NTLMv1's key exchange key; we never offer it. (With ESS, or
            // with NTLMv2, the flag has no effect and is ignored, as 2.2.2.5 says.)
            if !ess && msg.flags.contains(NegotiateFlags::LM_KEY) {
                return Err(NtlmError::Malformed("LM_KEY was not offered"));
            }
            if ess && lm.len() != NTLMV1_RESPONSE_LEN {
                return Err(NtlmError::Malformed(
                    "NTLMv1 with ESS needs the client challenge",
                ));
            }
            ResponseKind::V1 { ess }
        } else {
            let v2 = NtlmV2Response::parse(nt).map_err(NtlmError::Malformed)?;
            // The blob's timestamp is checked before the back end is asked: it is cheap, and a
            // stale replay should not cost a domain-controller round trip. (It is covered by
            // NTProofStr, so a forger cannot freshen it without the key.)
            if now.distance(FileTime(v2.timestamp)) > policy.max_clock_skew {
                return Err(NtlmError::Expired);
            }
            ResponseKind::V2 {
                mic: v2.av_pairs.flags() & av::FLAG_MIC_PRESENT != 0,
            }
        };

        // The MIC field must agree with the blob (2.2.1.3, 3.2.5.1.2).
        match (kind, msg.mic) {
            (ResponseKind::V2 { mic: true }, None) => return Err(NtlmError::MicMissing),
            (ResponseKind::V2 { mic: true }, Some(_)) => {}
            (_, Some(field)) if field != [0u8; 16] => return Err(NtlmError::MicUnexpected),
            _ if policy.require_mic => return Err(NtlmError::MicMissing),
            _ => {}
        }

        // Key exchange: the client encrypts a random ExportedSessionKey when KEY_EXCH is set
        // (3.1.5.1.2). A KEY_EXCH message without the key is treated as "no exchange", which is
        // what 3.2.5.1.2 prescribes when neither SIGN nor SEAL is set; the MIC, if any, then
        // decides. A key field without KEY_EXCH is ignored (2.2.1.3: meaningful only with it).
        let enc_key = msg.encrypted_random_session_key(authenticate);
        let key_exch = msg.flags.contains(NegotiateFlags::KEY_EXCH) && !enc_key.is_empty();
        if key_exch && enc_key.len() != 16 {
            return Err(NtlmError::Malformed("bad EncryptedRandomSessionKey length"));
        }

        Ok(PendingAuth {
            state,
            authenticate: authenticate.to_vec(),
            msg,
            kind,
            key_exch,
        })
    }

    /// The whole verification inline: `accept`, the back end, `finish`. For back ends that do
    /// not block.
    pub fn verify<B: NtlmBackend + ?Sized>(
        &self,
        state: ChallengeState,
        authenticate: &[u8],
        backend: &B,
        now: FileTime,
    ) -> Result<NtlmVerified, NtlmError> {
        let pending = self.accept(state, authenticate, now)?;
        let verdict = backend.verify(&pending.request());
        pending.finish(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_negotiation() {
        type Case = (&'static str, u32, Result<u32, NtlmError>);
        let base = NtlmAcceptor::ALWAYS.bits();
        let cases: [Case; 5] = [
            // Windows 10 WinHTTP: UNICODE|OEM|REQUEST_TARGET|SIGN|LM_KEY|NTLM|ALWAYS_SIGN|ESS|
            // VERSION|128|KEY_EXCH|56. LM_KEY is dropped; OEM loses to UNICODE.
            ("windows", 0xe208_8297, Ok(base | 0xe208_8011)),
            // curl: OEM|REQUEST_TARGET|NTLM|ALWAYS_SIGN|ESS.
            ("curl", 0x0008_8206, Ok(base | 0x0008_8002)),
            ("unicode only", 0x0000_0001, Ok(base | 0x1)),
            (
                "no charset",
                0x0000_0200,
                Err(NtlmError::Malformed(
                    "client offers neither Unicode nor OEM",
                )),
            ),
            // ANONYMOUS, DATAGRAM, IDENTIFY, NON_NT_SESSION_KEY are never echoed.
            ("junk", 0x0050_0841, Ok(base | 0x1)),
        ];
        for (name, client, want) in cases {
            let got = NtlmAcceptor::negotiate_flags(NegotiateFlags(client)).map(|f| f.bits());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn challenge_state_is_not_clone() {
        // Inherent associated items win over trait ones, but only when their bounds hold: the
        // probe reads `true` exactly for `Clone` types (the trick of the `impls` crate).
        struct Probe<T>(std::marker::PhantomData<T>);
        trait Fallback {
            const CLONE: bool = false;
        }
        impl<T> Fallback for Probe<T> {}
        impl<T: Clone> Probe<T> {
            const CLONE: bool = true;
        }
        // Checked at compile time: the test cannot even build if a state becomes `Clone`.
        const { assert!(Probe::<String>::CLONE, "the probe itself works") };
        const { assert!(!Probe::<ChallengeState>::CLONE) };
        const { assert!(!Probe::<PendingAuth>::CLONE) };
        const { assert!(!Probe::<NtlmVerified>::CLONE) };
    }

    #[test]
    fn pending_auth_is_send() {
        fn is_send<T: Send>() {}
        is_send::<PendingAuth>();
        is_send::<ChallengeState>();
        is_send::<NtlmAcceptor>();
    }
}
