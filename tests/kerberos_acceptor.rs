//! The Kerberos acceptor against the real lab KDCs (Samba AD and MIT): real tickets for
//! `HTTP/proxy.example.test` obtained as alice with a password (MIT's GSS-API in-process,
//! through `KerberosInitiator`), accepted with the proxy's keytab; replays refused across
//! threads and acceptor instances; wrong SPNs and garbage refused; four accepts at once through
//! the blocking pool from a tokio-uring runtime; and the evidence ticket carried on to
//! S4U2Proxy against the backend's keytab.
//!
//! The lab comes up through the fixture (`KCD_LAB_KEEP=1` keeps it for the next binary). This
//! process points MIT at the lab's `krb5.conf` and replay-cache directory before its first
//! Kerberos call ([`setup`]).

mod common;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::lab::{Lab, Realm};
use kcdproxy::auth::kerberos::{
    parse_token, AcceptorConfig, InitiatorMech, KerberosAcceptor, KerberosError, KerberosInitiator,
    KrbWrapping,
};
use kcdproxy::gss::BlockingPool;

/// The lab, with `KRB5_CONFIG` and `KRB5RCACHEDIR` set for this process. Set once, before any
/// test makes a Kerberos call (every test calls this first, and the `OnceLock` makes the
/// others wait), so no thread reads the environment while it changes.
fn setup() -> &'static Lab {
    common::kdc::krb5_lab()
}

/// alice logged in to `realm` once per test binary (one AS exchange).
fn alice(lab: &Lab, realm: &Realm) -> &'static KerberosInitiator {
    static AD: OnceLock<KerberosInitiator> = OnceLock::new();
    static MIT: OnceLock<KerberosInitiator> = OnceLock::new();
    let cell = if realm.name == lab.ad.name { &AD } else { &MIT };
    cell.get_or_init(|| {
        KerberosInitiator::with_password(&lab.alice.principal(realm), &lab.alice.password)
            .unwrap_or_else(|e| panic!("kinit alice@{}: {e}", realm.name))
    })
}

fn proxy_service(lab: &Lab, realm: &Realm) -> String {
    format!("{}@{}", lab.proxy_spn, realm.name)
}

fn acceptor(realm: &Realm) -> KerberosAcceptor {
    KerberosAcceptor::new(&AcceptorConfig {
        keytab: realm.proxy_keytab.clone(),
        ..AcceptorConfig::default()
    })
    .unwrap_or_else(|e| panic!("acceptor for {}: {e}", realm.name))
}

/// An acceptor whose credential keeps evidence tickets for S4U2Proxy (usage Both).
fn evidence_acceptor(realm: &Realm) -> KerberosAcceptor {
    KerberosAcceptor::new(&AcceptorConfig {
        keytab: realm.proxy_keytab.clone(),
        login: Some(realm.proxy_principal.clone()),
        ..AcceptorConfig::default()
    })
    .unwrap_or_else(|e| panic!("evidence acceptor for {}: {e}", realm.name))
}

#[test]
fn spnego_and_raw_tokens_are_accepted_with_mutual_auth_in_both_realms() {
    let lab = setup();
    for realm in lab.realms() {
        let acc = acceptor(realm);
        let service = proxy_service(lab, realm);
        for mech in [InitiatorMech::Spnego, InitiatorMech::Krb5] {
            let (token, mut client) = alice(lab, realm).token(&service, mech, false).unwrap();
            let parsed = parse_token(&token).unwrap();
            match mech {
                InitiatorMech::Spnego => assert!(
                    matches!(parsed.wrapping, KrbWrapping::Spnego { .. }),
                    "{mech:?}"
                ),
                InitiatorMech::Krb5 => assert_eq!(parsed.wrapping, KrbWrapping::Raw),
            }
            let accepted = acc
                .accept(&token)
                .unwrap_or_else(|e| panic!("{} {mech:?}: {e}", realm.name));
            assert_eq!(accepted.principal(), lab.alice.principal(realm));
            let lifetime = accepted.lifetime().unwrap();
            assert!(lifetime > Duration::from_secs(60), "{lifetime:?}");
            let response = accepted
                .response_token()
                .expect("mutual auth was requested: an AP-REP must come back");
            // MIT's own initiator verifies our answer: AP-REP, and for SPNEGO our NegTokenResp.
            client.finish(response).unwrap_or_else(|e| {
                panic!("{} {mech:?}: client refused our answer: {e}", realm.name)
            });
            assert!(client.is_complete());
            // An accept-only credential keeps nothing for delegation unless the client
            // delegated.
            assert!(accepted.delegated().is_none());
        }
    }
}

#[test]
fn a_replayed_token_is_refused_on_another_thread_and_by_another_acceptor() {
    let lab = setup();
    for realm in lab.realms() {
        let first = Arc::new(acceptor(realm));
        let (token, _) = alice(lab, realm)
            .token(&proxy_service(lab, realm), InitiatorMech::Spnego, false)
            .unwrap();
        let token = Arc::new(token);
        assert_eq!(
            first.accept(&token).unwrap().principal(),
            lab.alice.principal(realm)
        );
        // The same acceptor, from another thread (as another core's pool job would).
        let (acc, tok) = (Arc::clone(&first), Arc::clone(&token));
        let other_thread =
            std::thread::spawn(move || acc.accept(&tok).map(|a| a.principal().to_owned()))
                .join()
                .unwrap();
        assert_eq!(other_thread, Err(KerberosError::Replay), "{}", realm.name);
        // A second acceptor instance (as a restarted or second proxy process would build):
        // the replay cache is MIT's file cache, not per instance.
        let second = acceptor(realm);
        assert_eq!(
            second.accept(&token).map(|a| a.principal().to_owned()),
            Err(KerberosError::Replay),
            "{}",
            realm.name
        );
        // The raw krb5 form of the same AP-REQ (unwrapped from SPNEGO) is the same authenticator.
        let inner = parse_token(&token).unwrap().ap_req.to_vec();
        assert_eq!(
            second.accept(&inner).map(|a| a.principal().to_owned()),
            Err(KerberosError::Replay)
        );
        // A fresh token from the same client and service ticket is fine.
        let (fresh, _) = alice(lab, realm)
            .token(&proxy_service(lab, realm), InitiatorMech::Spnego, false)
            .unwrap();
        assert!(second.accept(&fresh).is_ok());
    }
}

#[test]
fn the_same_token_raced_on_four_threads_is_accepted_exactly_once() {
    // MIT's file replay cache locks per open file description, so threads of one process
    // exclude each other like processes do. Race the same AP-REQ on four threads, 25 times.
    let lab = setup();
    let acc = Arc::new(acceptor(&lab.ad));
    let service = proxy_service(lab, &lab.ad);
    for round in 0..25 {
        let (token, _) = alice(lab, &lab.ad)
            .token(&service, InitiatorMech::Krb5, false)
            .unwrap();
        let token = Arc::new(token);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (acc, token, barrier) =
                    (Arc::clone(&acc), Arc::clone(&token), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    acc.accept(&token).map(|a| a.principal().to_owned())
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let accepted = results.iter().filter(|r| r.is_ok()).count();
        let replays = results
            .iter()
            .filter(|r| **r == Err(KerberosError::Replay))
            .count();
        assert_eq!((accepted, replays), (1, 3), "round {round}: {results:?}");
    }
}

#[test]
fn a_token_for_another_service_is_refused() {
    let lab = setup();
    for realm in lab.realms() {
        let acc = acceptor(realm);
        for spn in [&lab.backend_spn, &lab.nondelegable_spn] {
            let service = format!("{spn}@{}", realm.name);
            let (token, _) = alice(lab, realm)
                .token(&service, InitiatorMech::Spnego, false)
                .unwrap();
            let err = acc
                .accept(&token)
                .map(|a| a.principal().to_owned())
                .unwrap_err();
            assert!(
                matches!(err, KerberosError::WrongPrincipal | KerberosError::NoKey),
                "{service}: {err}"
            );
            assert_eq!(
                err.error_kind(),
                kcdproxy::error::ErrorKind::Unauthenticated
            );
        }
    }
}

#[test]
fn garbage_is_malformed_and_never_panics() {
    let lab = setup();
    let acc = acceptor(&lab.ad);
    let malformed: &[&[u8]] = &[
        b"",
        b"\x00",
        b"\x60",
        b"\x60\x00",
        b"not a token at all",
        // krb5 framing, but no AP-REQ inside (TOK_ID, tag or length wrong)
        b"\x60\x0d\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x02\x00",
        b"\x60\x0f\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00\x30\x00",
        b"\x60\x0f\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x02\x01\x00\x6e\x05",
        // an unknown mechanism
        b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x03",
    ];
    for tok in malformed {
        let r = acc.accept(tok).map(|a| a.principal().to_owned());
        assert!(
            matches!(r, Err(KerberosError::Malformed(_))),
            "{tok:02x?}: {r:?}"
        );
    }
    // Real tokens, cut short or with a byte flipped: refused, whatever the reason, no panic.
    let (token, _) = alice(lab, &lab.ad)
        .token(&proxy_service(lab, &lab.ad), InitiatorMech::Spnego, false)
        .unwrap();
    for n in [1, 2, 10, 40, token.len() / 2, token.len() - 1] {
        let r = acc.accept(&token[..n]).map(|a| a.principal().to_owned());
        assert!(
            matches!(r, Err(KerberosError::Malformed(_))),
            "cut at {n}: {r:?}"
        );
    }
    let mut refused = 0;
    for i in (0..token.len()).step_by(7) {
        let mut t = token.clone();
        t[i] ^= 0x5a;
        if acc.accept(&t).is_err() {
            refused += 1;
        }
    }
    // A flip in an unauthenticated field (e.g. the SPNEGO mech list) may still pass once;
    // nearly all must fail.
    assert!(refused >= token.len() / 7 - 3, "only {refused} refused");
}

#[test]
fn four_accepts_at_once_through_the_pool_from_a_tokio_uring_runtime() {
    let lab = setup();
    let acc = Arc::new(acceptor(&lab.ad));
    let pool = Arc::new(BlockingPool::new(4, 4).unwrap());
    let service = proxy_service(lab, &lab.ad);
    let tokens: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            alice(lab, &lab.ad)
                .token(&service, InitiatorMech::Spnego, false)
                .unwrap()
                .0
        })
        .collect();
    let started = Instant::now();
    let results = tokio_uring::start(async {
        let mut tasks = Vec::new();
        for token in tokens.clone() {
            let (acc, pool) = (Arc::clone(&acc), Arc::clone(&pool));
            tasks.push(tokio_uring::spawn(async move {
                acc.accept_in(&pool, Duration::from_secs(10), token).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed();
    for r in &results {
        let accepted = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(accepted.principal(), lab.alice.principal(&lab.ad));
        assert!(accepted.response_token().is_some());
    }
    eprintln!("4 concurrent accepts through the pool: {elapsed:?}");
    // And the same four again, concurrently: all replays.
    let replays = tokio_uring::start(async {
        let mut tasks = Vec::new();
        for token in tokens {
            let (acc, pool) = (Arc::clone(&acc), Arc::clone(&pool));
            tasks.push(tokio_uring::spawn(async move {
                acc.accept_in(&pool, Duration::from_secs(10), token)
                    .await
                    .map(|a| a.principal().to_owned())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    assert!(
        replays.iter().all(|r| *r == Err(KerberosError::Replay)),
        "{replays:?}"
    );
    assert_eq!(pool.stats().admitted, 0);
}

#[test]
fn the_evidence_ticket_carries_on_to_s4u2proxy() {
    let lab = setup();
    for realm in lab.realms() {
        let acc = evidence_acceptor(realm);
        let backend = KerberosAcceptor::new(&AcceptorConfig {
            keytab: realm.backend_keytab.clone(),
            ..AcceptorConfig::default()
        })
        .unwrap();
        let backend_service = format!("{}@{}", lab.backend_spn, realm.name);
        for delegate in [false, true] {
            let (token, _) = alice(lab, realm)
                .token(&proxy_service(lab, realm), InitiatorMech::Spnego, delegate)
                .unwrap();
            let mut accepted = acc.accept(&token).unwrap();
            assert_eq!(accepted.principal(), lab.alice.principal(realm));
            let evidence = accepted
                .take_delegated()
                .unwrap_or_else(|| panic!("{}: no credential kept for S4U2Proxy", realm.name));
            assert_eq!(evidence.is_forwarded_tgt(), delegate, "{}", realm.name);
            // The proxy, as alice, to the backend: S4U2Proxy (or a TGS with alice's own TGT).
            let as_alice = KerberosInitiator::from_cred(evidence.gss_cred().clone());
            let started = Instant::now();
            let (to_backend, _) = as_alice
                .token(&backend_service, InitiatorMech::Krb5, false)
                .unwrap_or_else(|e| panic!("{} delegate={delegate}: {e}", realm.name));
            eprintln!(
                "{} delegate={delegate}: backend token in {:?}",
                realm.name,
                started.elapsed()
            );
            assert_eq!(
                backend.accept(&to_backend).unwrap().principal(),
                lab.alice.principal(realm)
            );
        }
    }
    // bob cannot be delegated: the evidence is kept, but the KDC refuses the S4U2Proxy.
    let bob =
        KerberosInitiator::with_password(&lab.bob.principal(&lab.ad), &lab.bob.password).unwrap();
    let acc = evidence_acceptor(&lab.ad);
    let (token, _) = bob
        .token(&proxy_service(lab, &lab.ad), InitiatorMech::Spnego, false)
        .unwrap();
    let mut accepted = acc.accept(&token).unwrap();
    assert_eq!(accepted.principal(), lab.bob.principal(&lab.ad));
    if let Some(evidence) = accepted.take_delegated() {
        let r = KerberosInitiator::from_cred(evidence.gss_cred().clone()).token(
            &format!("{}@{}", lab.backend_spn, lab.ad.name),
            InitiatorMech::Krb5,
            false,
        );
        let err = r.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("KDC can't fulfill requested option"), "{err}");
    }
}

#[test]
fn acceptor_construction_failures_are_reported() {
    let lab = setup();
    let missing = KerberosAcceptor::new(&AcceptorConfig {
        keytab: lab.dir.join("no-such.keytab"),
        ..AcceptorConfig::default()
    });
    assert!(
        matches!(missing, Err(KerberosError::Credential(_))),
        "{missing:?}"
    );
    let both = KerberosAcceptor::new(&AcceptorConfig {
        keytab: lab.ad.proxy_keytab.clone(),
        principal: Some(proxy_service(lab, &lab.ad)),
        login: Some(lab.ad.proxy_principal.clone()),
        ..AcceptorConfig::default()
    });
    assert!(matches!(both, Err(KerberosError::Credential(_))));
    // An acceptor principal whose key is not in the keytab.
    let wrong = KerberosAcceptor::new(&AcceptorConfig {
        keytab: lab.ad.proxy_keytab.clone(),
        principal: Some(format!("{}@{}", lab.backend_spn, lab.ad.name)),
        ..AcceptorConfig::default()
    });
    assert!(
        matches!(wrong, Err(KerberosError::Credential(_))),
        "{wrong:?}"
    );
}

#[test]
fn accept_latency() {
    let lab = setup();
    for realm in lab.realms() {
        let acc = acceptor(realm);
        let service = proxy_service(lab, realm);
        let tokens: Vec<Vec<u8>> = (0..200)
            .map(|_| {
                alice(lab, realm)
                    .token(&service, InitiatorMech::Spnego, false)
                    .unwrap()
                    .0
            })
            .collect();
        let mut times: Vec<Duration> = tokens
            .iter()
            .map(|t| {
                let started = Instant::now();
                acc.accept(t).unwrap();
                started.elapsed()
            })
            .collect();
        times.sort();
        let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
        eprintln!(
            "{}: accept p50 {p50:?}, p99 {p99:?} (200 tokens)",
            realm.name
        );
        assert!(p50 < Duration::from_millis(50), "{p50:?}");
    }
}
