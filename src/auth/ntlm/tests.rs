//! End-to-end tests of the acceptor: known answers from MS-NLMP 4.2.4 and from another
//! implementation, full handshakes with our client and (when installed) pyspnego, every
//! forgery we could think of, and mutation fuzzing of every parser.

use std::time::Duration;

use super::client::{MicMode, NtlmClient, ResponseMode};
use super::crypto::{self, Direction};
use super::hashfile::{LocalBackend, NtHashStore};
use super::message::{self, NegotiateFlags};
use super::negotiate::{self, NtlmRoute, Wrapping};
use super::verify::{ChallengeState, NtlmAcceptor, VerifyPolicy};
use super::{FileTime, NtlmConfig, NtlmError};
use crate::gss::oid;
use crate::gss::spnego::{self, NegState, NegotiateToken};

const PASSWORD: &str = "Passw0rd!";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

fn config() -> NtlmConfig {
    NtlmConfig {
        nb_domain: "EXAMPLE".into(),
        nb_computer: "KCDPROXY".into(),
        dns_domain: "example.test".into(),
        dns_computer: "kcdproxy.example.test".into(),
    }
}

fn backend() -> LocalBackend {
    let hash = hex::encode(crypto::nt_hash(PASSWORD).expose());
    let text = format!(
        "EXAMPLE\\alice:{hash}\n\
         bob@EXAMPLE.TEST:{hash}\n\
         Jürgen:{hash}\n\
         carol:1001:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:{hash}:[DU         ]:LCT-5F0A1B2C:\n\
         Domain\\User:{}\n",
        hex::encode(crypto::nt_hash("Password").expose())
    );
    LocalBackend::new(NtHashStore::parse(&text).unwrap(), &config())
}

fn acceptor(policy: VerifyPolicy) -> NtlmAcceptor {
    NtlmAcceptor::new(&config(), policy).unwrap()
}

/// One handshake: the client's NEGOTIATE, our CHALLENGE, its AUTHENTICATE, our verdict.
fn handshake(
    acc: &NtlmAcceptor,
    client: &NtlmClient,
    now: FileTime,
) -> Result<super::NtlmVerified, NtlmError> {
    let neg = client.negotiate();
    let state = acc.challenge(&neg, now)?;
    let auth = client.authenticate(&neg, state.message()).unwrap();
    acc.verify(state, &auth.message, &backend(), now)
}

// ---- Known answers ----

/// MS-NLMP 4.2.4.3: the spec's AUTHENTICATE (NTLMv2, key exchange, no MIC) for server challenge
/// 0123456789abcdef, user "User", domain "Domain", password "Password". The ExportedSessionKey is
/// the spec's RandomSessionKey 55…55.
#[test]
fn ms_nlmp_4_2_4_authenticate_verifies() {
    let acc = acceptor(VerifyPolicy::default());
    let neg = NtlmClient::new("x", "y", "z").negotiate(); // offers KEY_EXCH and ESS
    let auth = message::tests::spec_authenticate();
    let server_challenge = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef];
    // The spec's blob timestamp is 0: pin "now" there.
    let now = FileTime(0);

    let state = acc.challenge_with(&neg, server_challenge, now).unwrap();
    let v = acc.verify(state, &auth, &backend(), now).unwrap();
    assert_eq!(
        (v.user(), v.domain(), v.workstation()),
        ("User", "Domain", "COMPUTER")
    );
    assert_eq!(v.session_key(), &[0x55; 16]);

    // Same message, another server challenge: the proof no longer matches.
    let state = acc.challenge_with(&neg, [0; 8], now).unwrap();
    assert_eq!(
        acc.verify(state, &auth, &backend(), now).unwrap_err(),
        NtlmError::WrongPassword
    );
}

/// Chromium's NTLMv2 AUTHENTICATE for the spec's CHALLENGE (net/ntlm/ntlm_test_data.h,
/// derived from MS-NLMP 4.2): MsvAvFlags 0x2, channel bindings, an SPN and a MIC keyed by the
/// SessionBaseKey 623dbd…70 (no key exchange). A MIC made by another implementation verifies
/// under ours, and breaks when any covered byte changes.
#[test]
fn mic_from_another_implementation_verifies() {
    let negotiate = h("4e544c4d53535000 01000000 07820800 0000000020000000 0000000020000000");
    let challenge = message::tests::spec_challenge();
    let auth = h(
        "4e544c4d53535000 03000000 18001800 58000000 8a008a00 70000000 0c000c00 fa000000
                  08000800 06010000 10001000 0e010000 00000000 58000000 03820800
                  0000000000000000 f7361633f0ad9bdf4a7c421bc6b824a3
                  000000000000000000000000000000000000000000000000
                  8c0260dbef690662af9c42d50782d2ed
                  0101000000000000 800bc8fd00d4d201 aaaaaaaaaaaaaaaa 00000000
                  02000c00 44006f006d00610069006e00 01000c00 530065007200760065007200
                  06000400 02000000 0a001000 6586e99d81c2fc984e47172fd4dd0310
                  09001600 48005400540050002f00530065007200760065007200 00000000 00000000
                  44006f006d00610069006e00 5500730065007200 43004f004d0050005500540045005200",
    );
    let now = FileTime(131_400_439_870_000_000); // the blob's timestamp
    let state = || {
        ChallengeState::for_test(
            [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
            negotiate.clone(),
            challenge.clone(),
            NegotiateFlags(0xe28a_8233),
            now,
        )
    };
    let acc = acceptor(VerifyPolicy::default());
    let v = acc.verify(state(), &auth, &backend(), now).unwrap();
    assert_eq!(
        v.session_key().to_vec(),
        h("623dbd071be7a530b6a95c2eb4982470")
    );

    let mut tampered = auth.clone();
    *tampered.last_mut().unwrap() ^= 0x20; // workstation "COMPUTEr": not in the proof, in the MIC
    assert_eq!(
        acc.verify(state(), &tampered, &backend(), now).unwrap_err(),
        NtlmError::MicMismatch
    );
    let mut other_negotiate = negotiate.clone();
    other_negotiate[12] |= 0x10; // SIGN: a downgrade of the NEGOTIATE is caught by the MIC
    let st = ChallengeState::for_test(
        [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef],
        other_negotiate,
        challenge.clone(),
        NegotiateFlags(0xe28a_8233),
        now,
    );
    assert_eq!(
        acc.verify(st, &auth, &backend(), now).unwrap_err(),
        NtlmError::MicMismatch
    );
}

// ---- Handshakes with our client ----

#[test]
fn windows_like_handshake_succeeds() {
    let acc = acceptor(VerifyPolicy::default());
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let now = FileTime::now();
    let state = acc.challenge(&neg, now).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap();
    assert!(auth.flags.contains(NegotiateFlags::KEY_EXCH));
    let v = acc.verify(state, &auth.message, &backend(), now).unwrap();
    assert_eq!(
        (v.user(), v.domain(), v.workstation()),
        ("alice", "EXAMPLE", "WORKSTATION")
    );
    assert_eq!(v.session_key(), auth.exported_session_key.expose());
    assert!(
        !format!("{v:?}").contains(&hex::encode(v.session_key())),
        "Debug hides the key"
    );
}

#[test]
fn handshake_variants_succeed() {
    type Tweak = fn(&mut NtlmClient);
    let cases: [(&str, Tweak, &str, &str); 10] = [
        (
            "no key exchange",
            |c| c.key_exch = false,
            "alice",
            "EXAMPLE",
        ),
        (
            "no MIC (curl)",
            |c| c.mic = MicMode::None,
            "alice",
            "EXAMPLE",
        ),
        (
            "legacy layout, no Version/MIC",
            |c| {
                c.mic = MicMode::None;
                c.legacy_layout = true
            },
            "alice",
            "EXAMPLE",
        ),
        (
            "curl flags: OEM only",
            |c| {
                c.negotiate_flags = NegotiateFlags(0x0008_8206);
                c.mic = MicMode::None
            },
            "alice",
            "EXAMPLE",
        ),
        (
            "no Version flag",
            |c| c.negotiate_flags = NegotiateFlags(0xe008_8297),
            "alice",
            "EXAMPLE",
        ),
        (
            "user in upper case",
            |c| c.user = "ALICE".into(),
            "alice",
            "EXAMPLE",
        ),
        (
            "UPN, empty domain",
            |c| {
                c.user = "alice@example.test".into();
                c.domain = String::new()
            },
            "alice",
            "EXAMPLE",
        ),
        (
            "DNS domain",
            |c| c.domain = "example.test".into(),
            "alice",
            "EXAMPLE",
        ),
        (
            "realm entry via NetBIOS domain",
            |c| c.user = "bob".into(),
            "bob",
            "EXAMPLE.TEST",
        ),
        (
            "non-ASCII user, any domain",
            |c| {
                c.user = "JÜRGEN".into();
                c.domain = "ELSEWHERE".into()
            },
            "Jürgen",
            "EXAMPLE",
        ),
    ];
    let acc = acceptor(VerifyPolicy::default());
    for (name, tweak, user, domain) in cases {
        let mut c = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
        tweak(&mut c);
        let v = handshake(&acc, &c, FileTime::now()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((v.user(), v.domain()), (user, domain), "{name}");
    }
}

#[test]
fn ntlmv1_only_when_allowed() {
    for ess in [false, true] {
        let mut c = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
        c.response = ResponseMode::NtlmV1 { ess };
        c.mic = MicMode::None;
        let now = FileTime::now();
        assert_eq!(
            handshake(&acceptor(VerifyPolicy::default()), &c, now).unwrap_err(),
            NtlmError::NtlmV1Refused
        );
        let allow = VerifyPolicy {
            allow_ntlmv1: true,
            ..VerifyPolicy::default()
        };
        let neg = c.negotiate();
        let acc = acceptor(allow);
        let state = acc.challenge(&neg, now).unwrap();
        let auth = c.authenticate(&neg, state.message()).unwrap();
        let v = acc.verify(state, &auth.message, &backend(), now).unwrap();
        assert_eq!(
            v.session_key(),
            auth.exported_session_key.expose(),
            "ess={ess}"
        );
    }
}

#[test]
fn refusals() {
    let now = FileTime::now();
    let acc = acceptor(VerifyPolicy::default());
    type Case = (&'static str, &'static str, &'static str, NtlmError);
    let cases: [Case; 5] = [
        ("wrong password", "alice", "wrong", NtlmError::WrongPassword),
        ("unknown user", "mallory", PASSWORD, NtlmError::UnknownUser),
        (
            "disabled account",
            "carol",
            PASSWORD,
            NtlmError::AccountDisabled,
        ),
        ("wrong domain", "alice", PASSWORD, NtlmError::UnknownUser),
        ("empty user", "", PASSWORD, NtlmError::Anonymous),
    ];
    for (name, user, password, want) in cases {
        let mut c = NtlmClient::new(user, "EXAMPLE", password);
        if name == "wrong domain" {
            c.domain = "OTHER".into();
        }
        assert_eq!(handshake(&acc, &c, now).unwrap_err(), want, "{name}");
    }

    // MIC required by policy, client sends none.
    let strict = acceptor(VerifyPolicy {
        require_mic: true,
        ..VerifyPolicy::default()
    });
    let mut c = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    c.mic = MicMode::None;
    assert_eq!(
        handshake(&strict, &c, now).unwrap_err(),
        NtlmError::MicMissing
    );
}

#[test]
fn anonymous_authenticate_is_refused() {
    // 3.2.5.1.2 anonymous: empty user, domain, workstation and NT response, LM = Z(1).
    let acc = acceptor(VerifyPolicy::default());
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let now = FileTime::now();
    let state = acc.challenge(&neg, now).unwrap();
    let mut anon = h(
        "4e544c4d53535000 03000000 01000100 48000000 00000000 48000000
                      00000000 48000000 00000000 48000000 00000000 48000000
                      00000000 48000000 010a8800 0000000000000000",
    );
    anon.push(0);
    assert_eq!(
        acc.verify(state, &anon, &backend(), now).unwrap_err(),
        NtlmError::Anonymous
    );
}

#[test]
fn timestamps_and_lifetimes() {
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let issued = FileTime::now();
    let later = issued.saturating_add(Duration::from_secs(600));

    // Challenge older than its lifetime.
    let acc = acceptor(VerifyPolicy::default());
    let state = acc.challenge(&neg, issued).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap();
    assert_eq!(
        acc.verify(state, &auth.message, &backend(), later)
            .unwrap_err(),
        NtlmError::ChallengeExpired
    );

    // Long-lived challenge, but the blob timestamp (copied from the CHALLENGE) is 10 min old.
    let lenient = acceptor(VerifyPolicy {
        challenge_lifetime: Duration::from_secs(3600),
        ..VerifyPolicy::default()
    });
    let state = lenient.challenge(&neg, issued).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap();
    assert_eq!(
        lenient
            .verify(state, &auth.message, &backend(), later)
            .unwrap_err(),
        NtlmError::Expired
    );
}

#[test]
fn a_challenge_answers_one_authenticate() {
    // `accept` consumes the ChallengeState (see also the compile_fail doctest on it), so a
    // replay can only be checked against a *new* challenge — where its proof is wrong.
    let acc = acceptor(VerifyPolicy::default());
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let now = FileTime::now();
    let state = acc.challenge(&neg, now).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap();
    acc.verify(state, &auth.message, &backend(), now).unwrap();

    let fresh = acc.challenge(&neg, now).unwrap();
    assert_eq!(
        acc.verify(fresh, &auth.message, &backend(), now)
            .unwrap_err(),
        NtlmError::WrongPassword
    );
}

#[test]
fn server_challenges_are_random() {
    let acc = acceptor(VerifyPolicy::default());
    let neg = NtlmClient::new("a", "b", "c").negotiate();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let st = acc.challenge(&neg, FileTime::now()).unwrap();
        let c = message::ChallengeMessage::parse(st.message()).unwrap();
        assert!(seen.insert(c.server_challenge), "repeated server challenge");
    }
}

// ---- Forgeries ----

/// Mutations a forger might apply to an AUTHENTICATE message after building it.
fn post_hoc_mutations(msg: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let flags_at = 60;
    let set_flags = |f: fn(u32) -> u32| {
        let mut m = msg.to_vec();
        let old = u32::from_le_bytes(m[flags_at..flags_at + 4].try_into().unwrap());
        m[flags_at..flags_at + 4].copy_from_slice(&f(old).to_le_bytes());
        m
    };
    let mut zero_mic = msg.to_vec();
    zero_mic[72..88].fill(0);
    let mut no_key = msg.to_vec();
    no_key[52..54].fill(0); // EncryptedRandomSessionKey length 0
    let mut nt_as_v1 = msg.to_vec();
    nt_as_v1[20..22].copy_from_slice(&24u16.to_le_bytes()); // NT response cut to 24 bytes
    let mut no_mic_flag = msg.to_vec();
    // Clear MsvAvFlags' MIC bit in the blob (the value 02000000 after 06000400).
    if let Some(i) = no_mic_flag
        .windows(8)
        .position(|w| w == [6, 0, 4, 0, 2, 0, 0, 0])
    {
        no_mic_flag[i + 4] = 0;
    }
    vec![
        (
            "KEY_EXCH toggled",
            set_flags(|f| f ^ NegotiateFlags::KEY_EXCH.bits()),
        ),
        (
            "ESS toggled",
            set_flags(|f| f ^ NegotiateFlags::EXTENDED_SESSIONSECURITY.bits()),
        ),
        (
            "ANONYMOUS set",
            set_flags(|f| f | NegotiateFlags::ANONYMOUS.bits()),
        ),
        (
            "UNICODE toggled",
            set_flags(|f| f ^ NegotiateFlags::UNICODE.bits()),
        ),
        ("MIC zeroed", zero_mic),
        ("session key removed", no_key),
        ("NT response cut to NTLMv1 size", nt_as_v1),
        ("MIC bit cleared and MIC zeroed", {
            let mut m = no_mic_flag.clone();
            m[72..88].fill(0);
            m
        }),
        ("MIC bit cleared", no_mic_flag),
    ]
}

/// A wrong password never authenticates, whatever the client (or a forger) does with flags,
/// the MIC, the key exchange or the response format, under every policy.
#[test]
fn wrong_password_never_authenticates() {
    let policies = [
        VerifyPolicy::default(),
        VerifyPolicy {
            allow_ntlmv1: true,
            ..VerifyPolicy::default()
        },
        VerifyPolicy {
            require_mic: true,
            ..VerifyPolicy::default()
        },
    ];
    let mics = [
        MicMode::Auto,
        MicMode::None,
        MicMode::FlagWithZeroMic,
        MicMode::MicWithoutFlag,
    ];
    let responses = [
        ResponseMode::NtlmV2,
        ResponseMode::NtlmV1 { ess: false },
        ResponseMode::NtlmV1 { ess: true },
    ];
    let now = FileTime::now();
    let mut tried = 0;
    for policy in policies {
        let acc = acceptor(policy);
        for mic in mics {
            for response in responses {
                for key_exch in [true, false] {
                    for legacy_layout in [false, true] {
                        for password in ["wrong", "", "passw0rd!", "Passw0rd"] {
                            let mut c = NtlmClient::new("alice", "EXAMPLE", password);
                            c.mic = mic;
                            c.response = response;
                            c.key_exch = key_exch;
                            c.legacy_layout = legacy_layout;
                            let neg = c.negotiate();
                            let state = acc.challenge(&neg, now).unwrap();
                            let chal = state.message().to_vec();
                            let auth = c.authenticate(&neg, &chal).unwrap().message;
                            let r = acc.verify(state, &auth, &backend(), now);
                            assert!(r.is_err(), "{mic:?} {response:?} kx={key_exch} {policy:?}");
                            tried += 1;
                            // Forge each mutation on a fresh exchange with the same knobs.
                            for i in 0..post_hoc_mutations(&auth).len() {
                                let state = acc.challenge(&neg, now).unwrap();
                                let auth = c.authenticate(&neg, state.message()).unwrap().message;
                                let (name, forged) = post_hoc_mutations(&auth).swap_remove(i);
                                let r = acc.verify(state, &forged, &backend(), now);
                                assert!(r.is_err(), "{name}: {mic:?} {response:?} {policy:?}");
                                tried += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(tried > 1000);
}

/// With the right password, tampering with a MIC-protected message is still caught, and each
/// forgery gets the error that names it.
#[test]
fn tampering_with_the_right_password_is_caught() {
    let acc = acceptor(VerifyPolicy::default());
    let now = FileTime::now();
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let fresh = || acc.challenge(&neg, now).unwrap();

    let expected = [
        ("KEY_EXCH toggled", NtlmError::MicMismatch),
        ("ESS toggled", NtlmError::MicMismatch),
        ("ANONYMOUS set", NtlmError::Anonymous),
        (
            "UNICODE toggled",
            NtlmError::Malformed("control character in name"),
        ),
        ("MIC zeroed", NtlmError::MicMismatch),
        ("session key removed", NtlmError::MicMismatch),
        ("NT response cut to NTLMv1 size", NtlmError::NtlmV1Refused),
        // The blob is under NTProofStr: clearing the bit breaks the proof, and a MIC field
        // left behind is caught even before the proof is checked.
        ("MIC bit cleared and MIC zeroed", NtlmError::WrongPassword),
        ("MIC bit cleared", NtlmError::MicUnexpected),
    ];
    for (name, want) in expected {
        let state = fresh();
        let auth = client.authenticate(&neg, state.message()).unwrap().message;
        let (_, forged) = post_hoc_mutations(&auth)
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        assert_eq!(
            acc.verify(state, &forged, &backend(), now).unwrap_err(),
            want,
            "{name}"
        );
    }

    for (mode, want) in [
        (MicMode::FlagWithZeroMic, NtlmError::MicMismatch),
        (MicMode::MicWithoutFlag, NtlmError::MicUnexpected),
    ] {
        let mut c = client.clone();
        c.mic = mode;
        assert_eq!(handshake(&acc, &c, now).unwrap_err(), want, "{mode:?}");
    }
    // MIC announced, but the layout has no room for it.
    let mut c = client.clone();
    c.mic = MicMode::FlagWithZeroMic;
    c.legacy_layout = true;
    assert_eq!(handshake(&acc, &c, now).unwrap_err(), NtlmError::MicMissing);
    // Flags the server never offered.
    let mut c = client.clone();
    c.negotiate_flags = NegotiateFlags(0x0008_8207); // no KEY_EXCH offered
    let neg2 = c.negotiate();
    let state = acc.challenge(&neg2, now).unwrap();
    let mut auth = c.authenticate(&neg2, state.message()).unwrap().message;
    auth[63] |= 0x40; // KEY_EXCH
    assert_eq!(
        acc.verify(state, &auth, &backend(), now).unwrap_err(),
        NtlmError::Malformed("KEY_EXCH was not offered")
    );
}

// ---- Fuzzing ----

/// xorshift64*: a tiny deterministic PRNG, so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut m = input.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(m.len());
            match self.below(7) {
                0 => {
                    if let Some(b) = m.get_mut(at) {
                        *b ^= 1 << self.below(8);
                    }
                }
                1 => {
                    if let Some(b) = m.get_mut(at) {
                        *b = self.next() as u8;
                    }
                }
                2 => m.truncate(at),
                3 => m.insert(at.min(m.len()), self.next() as u8),
                4 => {
                    // A length or offset field pushed to an extreme.
                    let v = [0u8, 0x7f, 0x80, 0xff][self.below(4)];
                    for b in m.iter_mut().skip(at).take(2) {
                        *b = v;
                    }
                }
                5 => {
                    if at < m.len() {
                        m.remove(at);
                    }
                }
                _ => m.extend((0..self.below(8)).map(|_| self.next() as u8)),
            }
        }
        m
    }
}

/// Truncations at every length and thousands of random mutations of valid messages: no panic,
/// and no changed AUTHENTICATE ever verifies (the MIC covers every byte).
#[test]
fn mutated_messages_never_panic_or_verify() {
    let acc = acceptor(VerifyPolicy {
        allow_ntlmv1: true,
        ..VerifyPolicy::default()
    });
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let neg = client.negotiate();
    let now = FileTime::now();
    let template_state = acc.challenge(&neg, now).unwrap();
    let challenge = template_state.message().to_vec();
    let server_challenge = message::ChallengeMessage::parse(&challenge)
        .unwrap()
        .server_challenge;
    let flags = template_state.flags();
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let state =
        || ChallengeState::for_test(server_challenge, neg.clone(), challenge.clone(), flags, now);
    acc.verify(state(), &auth, &backend(), now)
        .expect("the original verifies");

    let check_auth = |m: &[u8]| {
        let _ = message::AuthenticateMessage::parse(m);
        let r = acc.verify(state(), m, &backend(), now);
        assert!(
            r.is_err() || m == auth.as_slice(),
            "a mutated AUTHENTICATE verified: {m:02x?}"
        );
    };
    let check_neg = |m: &[u8]| {
        let _ = message::NegotiateMessage::parse(m);
        let _ = acc.challenge(m, now);
    };
    let check_other = |m: &[u8]| {
        let _ = message::ChallengeMessage::parse(m);
        let _ = message::NtlmV2Response::parse(m);
        let _ = message::AvPairs::parse(m);
        let _ = spnego::parse_negotiate_token(m);
        let _ = negotiate::route_ntlm(m);
    };

    for len in 0..auth.len() {
        check_auth(&auth[..len]);
    }
    for len in 0..neg.len() {
        check_neg(&neg[..len]);
    }
    let spnego_init = spnego::build_neg_token_init(&[oid::NTLM], Some(&neg));
    let spnego_resp = spnego::build_neg_token_resp(
        NegState::AcceptIncomplete,
        Some(oid::NTLM),
        Some(&challenge),
        Some(&[7; 16]),
    );
    let nt = message::AuthenticateMessage::parse(&auth)
        .unwrap()
        .nt_response(&auth)
        .to_vec();
    let others = [challenge.clone(), spnego_init, spnego_resp, nt];
    for o in &others {
        for len in 0..o.len() {
            check_other(&o[..len]);
        }
    }

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        check_auth(&rng.mutate(&auth));
        check_neg(&rng.mutate(&neg));
        for o in &others {
            check_other(&rng.mutate(o));
        }
    }
    // Random garbage with a valid signature in front.
    for _ in 0..2000 {
        let mut m = b"NTLMSSP\0".to_vec();
        m.push([1u8, 2, 3][rng.below(3)]);
        m.extend([0, 0, 0]);
        m.extend((0..rng.below(200)).map(|_| rng.next() as u8));
        check_auth(&m);
        check_neg(&m);
        check_other(&m);
    }
}

#[test]
fn hash_file_parser_survives_garbage() {
    let mut rng = XorShift(42);
    let seed = "EXAMPLE\\alice:8846f7eaee8fb117ad06bdd830b7586c\ncarol:1:X:8846f7eaee8fb117ad06bdd830b7586c:[U]:LCT-0:\n";
    for _ in 0..2000 {
        let m = rng.mutate(seed.as_bytes());
        let _ = NtHashStore::parse(&String::from_utf8_lossy(&m));
    }
}

// ---- SPNEGO ----

/// Negotiate-wrapped NTLM from end to end: NegTokenInit(NTLM, NEGOTIATE) → NegTokenResp
/// (accept-incomplete, NTLM, CHALLENGE) → NegTokenResp(AUTHENTICATE, mechListMIC) →
/// NegTokenResp(accept-completed, mechListMIC), with both MICs checked.
#[test]
fn spnego_wrapped_handshake() {
    let acc = acceptor(VerifyPolicy::default());
    let client = NtlmClient::new("alice", "EXAMPLE", PASSWORD);
    let now = FileTime::now();

    let neg = client.negotiate();
    let init = spnego::build_neg_token_init(&[oid::NTLM], Some(&neg));
    let NtlmRoute::Message {
        ntlm,
        wrapping: Wrapping::Spnego,
    } = negotiate::route_ntlm(&init).unwrap()
    else {
        panic!("not routed to NTLM")
    };
    let NegotiateToken::Init(parsed_init) = spnego::parse_negotiate_token(&init).unwrap() else {
        panic!("not an init")
    };
    let mech_types = parsed_init.mech_types_der().to_vec();
    let state = acc.challenge(ntlm, now).unwrap();
    let resp1 = spnego::build_neg_token_resp(
        NegState::AcceptIncomplete,
        Some(oid::NTLM),
        Some(state.message()),
        None,
    );

    // Client side: unwrap the CHALLENGE, answer with AUTHENTICATE + mechListMIC.
    let NegotiateToken::Resp(r1) = spnego::parse_negotiate_token(&resp1).unwrap() else {
        panic!("not a resp")
    };
    assert_eq!(r1.supported_mech, Some(oid::NTLM));
    let auth = client
        .authenticate(&neg, r1.response_token.unwrap())
        .unwrap();
    let client_mic = crypto::NtlmSigner::new(
        &auth.exported_session_key,
        Direction::ClientToServer,
        true,
        16,
    )
    .sign(&mech_types);
    let leg2 = spnego::build_neg_token_resp(
        NegState::AcceptIncomplete,
        None,
        Some(&auth.message),
        Some(&client_mic),
    );

    // Server side.
    let NegotiateToken::Resp(r2) = spnego::parse_negotiate_token(&leg2).unwrap() else {
        panic!("not a resp")
    };
    let NtlmRoute::Message { ntlm, .. } = negotiate::route_ntlm(&leg2).unwrap() else {
        panic!("not routed")
    };
    let verified = acc.verify(state, ntlm, &backend(), now).unwrap();
    let server_mic =
        negotiate::ntlm_mech_list_mic(&verified, &mech_types, r2.mech_list_mic).unwrap();
    assert_eq!(
        negotiate::ntlm_mech_list_mic(&verified, &mech_types, Some(&[0; 16])).unwrap_err(),
        NtlmError::MicMismatch
    );
    let done =
        spnego::build_neg_token_resp(NegState::AcceptCompleted, None, None, Some(&server_mic));

    // Client checks the server's mechListMIC.
    let NegotiateToken::Resp(r3) = spnego::parse_negotiate_token(&done).unwrap() else {
        panic!("not a resp")
    };
    assert_eq!(r3.neg_state, Some(NegState::AcceptCompleted));
    let mut theirs = crypto::NtlmSigner::new(
        &auth.exported_session_key,
        Direction::ServerToClient,
        true,
        16,
    );
    assert!(theirs.verify(&mech_types, r3.mech_list_mic.unwrap()));
}

// ---- pyspnego ----

/// The interpreter for the pyspnego test: $KCDPROXY_PYTHON, else `python3`; `None` (test
/// skipped, with a note) when it lacks the `spnego` module (`pip install pyspnego`).
fn pyspnego() -> Option<String> {
    let py = std::env::var("KCDPROXY_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import spnego"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "note: pyspnego not available to `{py}`: skipping the real-client test \
             (pip install pyspnego, or set KCDPROXY_PYTHON)"
        );
    }
    ok.then_some(py)
}

/// A pyspnego client in a subprocess, speaking hex lines: it prints each token it produces (`-`
/// for none) and reads each server token on stdin until it is complete; then it prints
/// `DONE <session key hex>`, or `ERR …` if a server token was refused.
const PY_CLIENT: &str = r#"
import sys, spnego
user, password, protocol = sys.argv[1], sys.argv[2], sys.argv[3]
c = spnego.client(user, password, hostname="kcdproxy.example.test", service="HTTP", protocol=protocol)
out = c.step()
while True:
    print(out.hex() if out else "-", flush=True)
    if c.complete:
        break
    line = sys.stdin.readline().strip()
    try:
        out = c.step(bytes.fromhex(line))
    except Exception as e:
        print("ERR " + type(e).__name__ + ": " + str(e), flush=True)
        sys.exit(0)
print("DONE " + c.session_key.hex(), flush=True)
"#;

struct PyClient {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl PyClient {
    fn start(py: &str, user: &str, password: &str, protocol: &str) -> Self {
        let mut child = std::process::Command::new(py)
            .args(["-c", PY_CLIENT, user, password, protocol])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        PyClient { child, out }
    }

    fn read(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Reads until the client reports its end (`DONE …` or `ERR …`).
    fn finish(&mut self) -> String {
        loop {
            let line = self.read();
            if line.is_empty() || line.starts_with("DONE") || line.starts_with("ERR") {
                return line;
            }
        }
    }

    fn send(&mut self, token: &[u8]) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", hex::encode(token)).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for PyClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn real_pyspnego_ntlm_client() {
    let Some(py) = pyspnego() else { return };
    let acc = acceptor(VerifyPolicy {
        require_mic: true,
        ..VerifyPolicy::default()
    });
    for (password, ok) in [(PASSWORD, true), ("not the password", false)] {
        let mut c = PyClient::start(&py, "EXAMPLE\\alice", password, "ntlm");
        let neg = h(&c.read());
        let now = FileTime::now();
        let state = acc.challenge(&neg, now).unwrap();
        c.send(state.message());
        let auth = h(&c.read());
        let r = acc.verify(state, &auth, &backend(), now);
        match (ok, r) {
            (true, Ok(v)) => {
                assert_eq!(v.user(), "alice");
                // The client finishes and reports its session key: it must be ours.
                let done = c.finish();
                assert_eq!(done, format!("DONE {}", hex::encode(v.session_key())));
            }
            (false, Err(e)) => assert_eq!(e, NtlmError::WrongPassword),
            (_, r) => panic!("password {password:?}: unexpected {r:?}"),
        }
    }
}

#[test]
fn real_pyspnego_negotiate_client() {
    let Some(py) = pyspnego() else { return };
    let acc = acceptor(VerifyPolicy {
        require_mic: true,
        ..VerifyPolicy::default()
    });
    let mut c = PyClient::start(&py, "alice@EXAMPLE.TEST", PASSWORD, "negotiate");
    let now = FileTime::now();

    let init = h(&c.read());
    let NegotiateToken::Init(parsed) = spnego::parse_negotiate_token(&init).unwrap() else {
        panic!("pyspnego did not start with a NegTokenInit")
    };
    let mech_types = parsed.mech_types_der().to_vec();
    let NtlmRoute::Message {
        ntlm,
        wrapping: Wrapping::Spnego,
    } = negotiate::route_ntlm(&init).unwrap()
    else {
        panic!("pyspnego's first token does not carry NTLM")
    };
    let state = acc.challenge(ntlm, now).unwrap();
    c.send(&spnego::build_neg_token_resp(
        NegState::AcceptIncomplete,
        Some(oid::NTLM),
        Some(state.message()),
        None,
    ));

    let leg2 = h(&c.read());
    let NegotiateToken::Resp(r2) = spnego::parse_negotiate_token(&leg2).unwrap() else {
        panic!("not a NegTokenResp")
    };
    let NtlmRoute::Message { ntlm, .. } = negotiate::route_ntlm(&leg2).unwrap() else {
        panic!("no AUTHENTICATE")
    };
    let v = acc.verify(state, ntlm, &backend(), now).unwrap();
    assert_eq!((v.user(), v.domain()), ("alice", "EXAMPLE"));
    assert!(r2.mech_list_mic.is_some(), "pyspnego signs the mech list");
    let server_mic = negotiate::ntlm_mech_list_mic(&v, &mech_types, r2.mech_list_mic).unwrap();
    c.send(&spnego::build_neg_token_resp(
        NegState::AcceptCompleted,
        None,
        None,
        Some(&server_mic),
    ));
    let done = c.finish();
    assert_eq!(
        done,
        format!("DONE {}", hex::encode(v.session_key())),
        "pyspnego accepted our mechListMIC"
    );
}
