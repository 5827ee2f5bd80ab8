//! NTLM verification against the lab's Active Directory through winbind
//! ([`WinbindBackend`] driving `ntlm_auth --helper-protocol=ntlm-server-1`), end to end through
//! the acceptor: NEGOTIATE → our CHALLENGE → the client's AUTHENTICATE → `accept` → the DC's
//! verdict → `finish` (which checks the MIC with the key the DC returned).

mod common;

use std::time::{Duration, Instant};

use common::lab::{lab, Lab};
use kcdproxy::auth::ntlm::client::{MicMode, NtlmClient};
use kcdproxy::auth::ntlm::winbind::{WinbindBackend, WinbindConfig};
use kcdproxy::auth::ntlm::{
    FileTime, LocalBackend, NtHashStore, NtlmAcceptor, NtlmBackend, NtlmConfig, NtlmError,
    NtlmVerified, VerifyPolicy,
};
use kcdproxy::auth::IdentityMap;

/// The proxy's NTLM names. Through the DC's own winbindd the computer name is not checked
/// (through a joined member's it would have to be the member's NetBIOS name).
fn ntlm_config() -> NtlmConfig {
    NtlmConfig {
        nb_domain: "EXAMPLE".into(),
        nb_computer: "KCDPROXY".into(),
        dns_domain: "example.test".into(),
        dns_computer: "kcdproxy.example.test".into(),
    }
}

fn acceptor() -> NtlmAcceptor {
    NtlmAcceptor::new(&ntlm_config(), VerifyPolicy::default()).unwrap()
}

/// The lab's `ntlm_auth` (already wired to the DC's winbindd through `with-winbind`).
fn winbind(lab: &Lab) -> WinbindBackend {
    WinbindBackend::new(
        WinbindConfig::new([lab.winbind.ntlm_auth.as_os_str()]),
        &ntlm_config(),
    )
}

fn local(lab: &Lab) -> LocalBackend {
    LocalBackend::new(
        NtHashStore::load(&lab.nt_hash_file).unwrap(),
        &ntlm_config(),
    )
}

fn identity_map() -> IdentityMap {
    IdentityMap {
        domains: vec![("EXAMPLE".into(), "EXAMPLE.TEST".into())],
        default_realm: Some("EXAMPLE.TEST".into()),
    }
}

/// One full handshake; also returns the client's ExportedSessionKey.
fn login(
    backend: &(dyn NtlmBackend + Sync),
    client: &NtlmClient,
) -> (Result<NtlmVerified, NtlmError>, [u8; 16]) {
    let acc = acceptor();
    let now = FileTime::now();
    let neg = client.negotiate();
    let state = acc.challenge(&neg, now).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap();
    let key = *auth.exported_session_key.expose();
    let pending = match acc.accept(state, &auth.message, now) {
        Ok(p) => p,
        Err(e) => return (Err(e), key),
    };
    // As the proxy will: the pending check goes to a pool thread and comes back.
    let verdict = std::thread::scope(|s| {
        s.spawn(|| backend.verify(&pending.request()))
            .join()
            .unwrap()
    });
    (pending.finish(verdict), key)
}

#[test]
fn alice_authenticates_and_the_dc_key_verifies_the_mic() {
    let lab = lab();
    let wb = winbind(lab);
    for key_exch in [true, false] {
        let mut client = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
        client.key_exch = key_exch;
        assert_eq!(
            client.mic,
            MicMode::Auto,
            "a Windows-like client: MIC present"
        );
        let (verdict, client_key) = login(&wb, &client);
        let v = verdict.unwrap_or_else(|e| panic!("alice (key_exch={key_exch}): {e}"));
        assert_eq!((v.user(), v.domain()), ("alice", "EXAMPLE"));
        // The MIC verified under the key derived from the DC's user session key; both sides
        // hold the same ExportedSessionKey.
        assert_eq!(v.session_key(), &client_key, "key_exch={key_exch}");
    }
    assert_eq!(
        wb.helpers_started(),
        1,
        "one helper serves consecutive checks"
    );
}

#[test]
fn a_mic_that_does_not_match_is_refused_although_the_dc_says_yes() {
    let lab = lab();
    let wb = winbind(lab);
    let acc = acceptor();
    let now = FileTime::now();
    let client = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
    let neg = client.negotiate();
    let state = acc.challenge(&neg, now).unwrap();
    let mut auth = client.authenticate(&neg, state.message()).unwrap().message;
    // The MIC field is not covered by NTProofStr: the DC accepts the proof, the MIC check with
    // its key must not.
    auth[kcdproxy::auth::ntlm::message::MIC_OFFSET] ^= 0x01;
    let pending = acc.accept(state, &auth, now).unwrap();
    let verdict = wb.verify(&pending.request());
    assert!(verdict.is_ok(), "the DC checks only the proof");
    assert_eq!(pending.finish(verdict).unwrap_err(), NtlmError::MicMismatch);
}

#[test]
fn wrong_password_and_unknown_user_are_refused() {
    let lab = lab();
    let wb = winbind(lab);
    let wrong = NtlmClient::new("alice", "EXAMPLE", "not-her-password");
    assert_eq!(login(&wb, &wrong).0.unwrap_err(), NtlmError::WrongPassword);
    let nobody = NtlmClient::new("nobody-here", "EXAMPLE", "whatever");
    assert_eq!(login(&wb, &nobody).0.unwrap_err(), NtlmError::UnknownUser);
    let foreign = NtlmClient::new("alice", "NOSUCHDOMAIN", &lab.alice.password);
    assert_eq!(login(&wb, &foreign).0.unwrap_err(), NtlmError::UnknownUser);
    // Refusals end with an extra `.` in Samba 4.17: the helper stays in step afterwards.
    let alice = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
    assert!(login(&wb, &alice).0.is_ok());
    assert_eq!(wb.helpers_started(), 1);
}

#[test]
fn bob_authenticates_sensitivity_only_matters_for_delegation() {
    let lab = lab();
    let client = NtlmClient::new("bob", "EXAMPLE", &lab.bob.password);
    let v = login(&winbind(lab), &client).0.unwrap();
    assert_eq!((v.user(), v.domain()), ("bob", "EXAMPLE"));
}

#[test]
fn winbind_and_the_local_hash_file_give_the_same_identities() {
    let lab = lab();
    let (wb, lb, map) = (winbind(lab), local(lab), identity_map());
    // (user, domain as typed) → the principal both back ends must map to.
    let logins = [
        ("alice", "EXAMPLE", &lab.alice, "alice@EXAMPLE.TEST"),
        ("alice", "example", &lab.alice, "alice@EXAMPLE.TEST"),
        ("ALICE", "EXAMPLE", &lab.alice, "alice@EXAMPLE.TEST"),
        ("alice", "", &lab.alice, "alice@EXAMPLE.TEST"),
        ("alice", "example.test", &lab.alice, "alice@EXAMPLE.TEST"),
        ("alice@example.test", "", &lab.alice, "alice@EXAMPLE.TEST"),
        ("bob", "EXAMPLE", &lab.bob, "bob@EXAMPLE.TEST"),
    ];
    for (user, domain, who, principal) in logins {
        let client = NtlmClient::new(user, domain, &who.password);
        let w = login(&wb, &client)
            .0
            .unwrap_or_else(|e| panic!("winbind {user}/{domain}: {e}"));
        let l = login(&lb, &client)
            .0
            .unwrap_or_else(|e| panic!("local {user}/{domain}: {e}"));
        let wp = map.principal(w.user(), w.domain());
        let lp = map.principal(l.user(), l.domain());
        assert_eq!(
            wp.as_deref(),
            Some(principal),
            "winbind {user}/{domain}: {w:?}"
        );
        assert_eq!(
            lp.as_deref(),
            Some(principal),
            "local {user}/{domain}: {l:?}"
        );
        // Account-name logins also read the same (`EXAMPLE\alice`); a UPN login stays a UPN
        // with winbind (its name part need not be the account name).
        if !user.contains('@') {
            assert_eq!(
                (w.user(), w.domain()),
                (l.user(), l.domain()),
                "{user}/{domain}"
            );
        }
    }
}

#[test]
fn the_dc_does_not_stop_replays_so_the_challenge_state_must() {
    // Why `ChallengeState` is consumed by `accept`: the same question gets the same yes twice.
    let lab = lab();
    let wb = winbind(lab);
    let acc = acceptor();
    let now = FileTime::now();
    let client = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
    let neg = client.negotiate();
    let state = acc.challenge(&neg, now).unwrap();
    let auth = client.authenticate(&neg, state.message()).unwrap().message;
    let pending = acc.accept(state, &auth, now).unwrap();
    assert!(wb.verify(&pending.request()).is_ok());
    assert!(
        wb.verify(&pending.request()).is_ok(),
        "the DC answered a replay"
    );
    // Against a fresh challenge the old AUTHENTICATE proves nothing.
    let state = acc.challenge(&neg, now).unwrap();
    let replay = acc.accept(state, &auth, now).unwrap();
    let verdict = wb.verify(&replay.request());
    assert_eq!(verdict.unwrap_err(), NtlmError::WrongPassword);
}

#[test]
fn client_names_cannot_inject_protocol_lines() {
    let lab = lab();
    let wb = winbind(lab);
    for (user, domain) in [
        ("alice\nNT-Domain: EXAMPLE", "EXAMPLE"),
        ("alice", "EXAMPLE\n.\nUsername: bob"),
        ("alice\0evil", "EXAMPLE"),
    ] {
        let client = NtlmClient::new(user, domain, &lab.alice.password);
        let err = login(&wb, &client).0.unwrap_err();
        assert!(
            matches!(err, NtlmError::Malformed(_)),
            "{user:?}/{domain:?}: {err}"
        );
    }
    assert_eq!(
        wb.helpers_started(),
        0,
        "refused before the helper was needed"
    );
}

#[test]
fn explicit_wrapper_command_and_group_restriction() {
    let lab = lab();
    let helper = |extra: &[&str]| {
        let mut argv: Vec<std::ffi::OsString> = vec![
            lab.winbind.with_winbind.clone().into(),
            "ntlm_auth".into(),
            format!("--configfile={}", lab.winbind.smb_conf.display()).into(),
        ];
        argv.extend(extra.iter().map(Into::into));
        WinbindBackend::new(WinbindConfig::new(argv), &ntlm_config())
    };
    let alice = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
    let plain = helper(&[]);
    assert_eq!(plain.probe(), Ok(()));
    assert!(login(&plain, &alice).0.is_ok());
    // --require-membership-of: the guard against guest logons (see the module docs).
    let users = helper(&[r"--require-membership-of=EXAMPLE\Domain Users"]);
    assert!(login(&users, &alice).0.is_ok());
    let admins = helper(&[r"--require-membership-of=EXAMPLE\Domain Admins"]);
    assert_eq!(
        login(&admins, &alice).0.unwrap_err(),
        NtlmError::WrongPassword
    );
}

#[test]
fn unreachable_winbind_is_backend_unavailable() {
    let lab = lab();
    if std::path::Path::new("/run/samba/winbindd/pipe").exists() {
        eprintln!("note: this host runs a winbindd of its own; skipping");
        return;
    }
    // ntlm_auth outside the lab's mount namespace finds no winbindd.
    let cfg = WinbindConfig::new([
        std::ffi::OsString::from("ntlm_auth"),
        format!("--configfile={}", lab.winbind.smb_conf.display()).into(),
    ]);
    let wb = WinbindBackend::new(cfg, &ntlm_config());
    let alice = NtlmClient::new("alice", "EXAMPLE", &lab.alice.password);
    let err = login(&wb, &alice).0.unwrap_err();
    assert!(matches!(err, NtlmError::BackendUnavailable(_)), "{err}");
}

#[test]
fn a_pool_of_instances_checks_in_parallel() {
    let lab = lab();
    const THREADS: usize = 2;
    const CHECKS: usize = 25;
    let pool: Vec<WinbindBackend> = (0..THREADS).map(|_| winbind(lab)).collect();
    // Warm up (helper start) outside the timing.
    for b in &pool {
        b.probe().unwrap();
    }
    let t = Instant::now();
    std::thread::scope(|s| {
        for b in &pool {
            s.spawn(move || {
                for i in 0..CHECKS {
                    let (user, pw) = if i % 5 == 4 {
                        ("alice", "wrong")
                    } else {
                        ("alice", lab.alice.password.as_str())
                    };
                    let client = NtlmClient::new(user, "EXAMPLE", pw);
                    let (verdict, _) = login(b, &client);
                    assert_eq!(verdict.is_ok(), pw != "wrong", "check {i}");
                }
            });
        }
    });
    let elapsed = t.elapsed();
    let per_check = elapsed / (THREADS * CHECKS) as u32;
    eprintln!(
        "{} winbind checks on {THREADS} helpers in {elapsed:?} ({per_check:?} per check)",
        THREADS * CHECKS
    );
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    for b in &pool {
        assert_eq!(b.helpers_started(), 1);
    }
}
