//! The delegation engine against the real lab (Samba AD and MIT + LDAP): tokens as alice reach
//! the real Apache backend over HTTP and TLS (with channel bindings) and its AP-REP verifies;
//! the Evidence path (a Kerberos client's own ticket) does too; bob and the non-delegable SPN
//! are refused with the right kinds and remembered; the cache makes 200 tokens and 50
//! concurrent first requests cost one S4U2Self + one S4U2Proxy, counted in the MIT KDC's log
//! (Samba's DC logs no TGS requests at the lab's log level, so there the engine's own counters
//! are the evidence).
//!
//! Every lab test holds [`serial`]: the KDC log counts must not see another test's requests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::lab::{Lab, Realm};
use kcdproxy::auth::kerberos::{
    AcceptorConfig, InitiatorMech, KerberosAcceptor, KerberosInitiator,
};
use kcdproxy::error::ErrorKind;
use kcdproxy::gss::BlockingPool;
use kcdproxy::kcd::{CacheOutcome, DelegationConfig, DelegationError, Delegator, Refusal, Subject};
use sha2::Digest;

fn setup() -> &'static Lab {
    common::kdc::krb5_lab()
}

/// One lab test at a time (KDC log counts).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn pool() -> Arc<BlockingPool> {
    Arc::new(BlockingPool::new(4, 16).unwrap())
}

fn delegator(realm: &Realm) -> Delegator {
    let mut cfg = DelegationConfig::new(realm.proxy_keytab.clone(), realm.proxy_principal.clone());
    cfg.kdc_timeout = Duration::from_secs(10);
    Delegator::new(cfg, pool()).unwrap_or_else(|e| panic!("delegator for {}: {e}", realm.name))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio_uring::start(f)
}

use common::kdc::{mit_log_count, mit_s4u as mit_counts};

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn request(path: &str, host: &str, authorization: &[u8]) -> Vec<u8> {
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nAuthorization: ")
            .into_bytes();
    req.extend_from_slice(authorization);
    req.extend_from_slice(b"\r\n\r\n");
    req
}

fn parse_response(raw: &[u8]) -> Response {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Response {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn http_get(addr: SocketAddr, host: &str, path: &str, authorization: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&request(path, host, authorization)).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

/// GET over TLS; `make_auth` gets the RFC 5929 `tls-server-end-point` binding of the backend's
/// certificate (SHA-256: the lab's certificates are signed with SHA-256 or ECDSA-SHA256).
fn https_get(lab: &Lab, path: &str, make_auth: impl FnOnce(&[u8]) -> Vec<u8>) -> Response {
    let cfg = kcdproxy::tls::client_config(Some(&lab.pki.ca)).unwrap();
    let name = rustls_pki_types::ServerName::try_from(lab.backend_host.clone()).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut sock = TcpStream::connect(lab.backend.https).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    let cert = conn.peer_certificates().unwrap()[0].to_vec();
    let mut cb = b"tls-server-end-point:".to_vec();
    cb.extend_from_slice(&sha2::Sha256::digest(&cert));
    let auth = make_auth(&cb);
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(&request(path, &lab.backend_host, &auth))
        .unwrap();
    let mut raw = Vec::new();
    // Apache may close without close_notify; what arrived is enough.
    let _ = tls.read_to_end(&mut raw);
    parse_response(&raw)
}

#[test]
fn transition_tokens_reach_the_backend_as_alice_and_verify_mutually() {
    let lab = setup();
    let _serial = serial();
    for realm in lab.realms() {
        let d = delegator(realm);
        let alice = lab.alice.principal(realm);
        let subject = Subject::Transition { principal: &alice };
        // First: a miss (S4U2Self + S4U2Proxy).
        let tok = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        assert_eq!(tok.cache(), CacheOutcome::Miss);
        eprintln!(
            "{}: first token (S4U2Self + S4U2Proxy) in {:?}",
            realm.name,
            tok.kdc_time()
        );
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/whoami",
            tok.header_value(),
        );
        assert_eq!(r.status, 200, "{}: {}", realm.name, r.head);
        assert_eq!(
            r.header("X-Remote-User"),
            Some(alice.as_str()),
            "{}",
            realm.name
        );
        let www = r.header("WWW-Authenticate").map(|v| v.as_bytes().to_vec());
        assert!(www.is_some(), "{}: the backend sent no AP-REP", realm.name);
        tok.verify_mutual(www.as_deref()).unwrap();

        // Second: a hit, built on this thread; /echo names alice in its body.
        let tok = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        assert_eq!(tok.cache(), CacheOutcome::Hit);
        assert_eq!(tok.kdc_time(), None);
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/echo/kcd",
            tok.header_value(),
        );
        assert_eq!(r.status, 200, "{}", r.head);
        assert!(
            r.body.contains(&format!("authenticated as {alice}")),
            "{}: {}",
            realm.name,
            r.body
        );
        let www = r.header("WWW-Authenticate").map(|v| v.as_bytes().to_vec());
        tok.verify_mutual(www.as_deref()).unwrap();

        // Over TLS, with the tls-server-end-point channel binding in the authenticator.
        let mut pending = None;
        let r = https_get(lab, "/whoami", |cb| {
            let tok = block_on(d.token(subject, &lab.backend_spn, Some(cb))).unwrap();
            let v = tok.header_value().to_vec();
            pending = Some(tok);
            v
        });
        assert_eq!(r.status, 200, "{}: TLS: {}", realm.name, r.head);
        assert_eq!(r.header("X-Remote-User"), Some(alice.as_str()));
        let www = r.header("WWW-Authenticate").map(|v| v.as_bytes().to_vec());
        pending.unwrap().verify_mutual(www.as_deref()).unwrap();

        // Mutual authentication: garbage, another token's AP-REP and non-Negotiate answers fail;
        // no answer (IIS without AP-REP) is accepted.
        let tok = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/whoami",
            tok.header_value(),
        );
        let theirs = r.header("WWW-Authenticate").unwrap().as_bytes().to_vec();
        let other = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        let e = other.verify_mutual(Some(&theirs)).unwrap_err();
        assert!(matches!(e, DelegationError::MutualAuthFailed(_)), "{e}");
        assert_eq!(e.error_kind(), ErrorKind::BackendProtocol);
        for bad in [
            &b"Negotiate !!!"[..],
            b"Negotiate YWJj",
            b"NTLM TlRMTVNTUAAC",
            b"Negotiate oQcwBaADCgEC", // SPNEGO reject
            b"Negotiatexyz",
        ] {
            let t = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
            assert!(
                matches!(
                    t.verify_mutual(Some(bad)),
                    Err(DelegationError::MutualAuthFailed(_))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let t = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        t.verify_mutual(None).unwrap();
        tok.verify_mutual(Some(&theirs)).unwrap();
        let s = d.stats();
        assert_eq!((s.s4u2self, s.s4u2proxy, s.misses), (1, 1, 1), "{s:?}");
    }
}

#[test]
fn the_evidence_path_reaches_the_backend_as_alice_without_s4u2self() {
    let lab = setup();
    let _serial = serial();
    for realm in lab.realms() {
        let alice = lab.alice.principal(realm);
        let client = KerberosInitiator::with_password(&alice, &lab.alice.password).unwrap();
        let acceptor = KerberosAcceptor::new(&AcceptorConfig {
            keytab: realm.proxy_keytab.clone(),
            login: Some(realm.proxy_principal.clone()),
            ..AcceptorConfig::default()
        })
        .unwrap();
        let (token, _) = client
            .token(
                &format!("{}@{}", lab.proxy_spn, realm.name),
                InitiatorMech::Spnego,
                false,
            )
            .unwrap();
        let mut accepted = acceptor.accept(&token).unwrap();
        assert_eq!(accepted.principal(), alice);
        let evidence = accepted.take_delegated().expect("evidence credential");
        let d = delegator(realm);
        // The evidence must be the named principal's.
        let bob = lab.bob.principal(realm);
        let e = block_on(d.token(
            Subject::Evidence {
                principal: &bob,
                cred: &evidence,
            },
            &lab.backend_spn,
            None,
        ))
        .unwrap_err();
        assert!(matches!(e, DelegationError::BadName(_)), "{e}");
        let subject = Subject::Evidence {
            principal: &alice,
            cred: &evidence,
        };
        let before = mit_counts(lab, &alice);
        let tok = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        assert_eq!(tok.cache(), CacheOutcome::Miss);
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/whoami",
            tok.header_value(),
        );
        assert_eq!(r.status, 200, "{}: {}", realm.name, r.head);
        assert_eq!(r.header("X-Remote-User"), Some(alice.as_str()));
        let www = r.header("WWW-Authenticate").map(|v| v.as_bytes().to_vec());
        tok.verify_mutual(www.as_deref()).unwrap();
        let tok = block_on(d.token(subject, &lab.backend_spn, None)).unwrap();
        assert_eq!(tok.cache(), CacheOutcome::Hit);
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/whoami",
            tok.header_value(),
        );
        assert_eq!(r.header("X-Remote-User"), Some(alice.as_str()));
        let s = d.stats();
        assert_eq!((s.s4u2self, s.s4u2proxy), (0, 1), "{s:?}");
        if realm.name == lab.mit.name {
            let after = mit_counts(lab, &alice);
            assert_eq!(
                after.s4u2self, before.s4u2self,
                "no S4U2Self for a Kerberos client"
            );
            assert_eq!(after.s4u2proxy, before.s4u2proxy + 1);
        }
    }
}

#[test]
fn refusals_are_classified_and_remembered_without_the_kdc() {
    let lab = setup();
    let _serial = serial();
    for realm in lab.realms() {
        let mut cfg =
            DelegationConfig::new(realm.proxy_keytab.clone(), realm.proxy_principal.clone());
        cfg.negative_ttl = Duration::from_secs(30);
        let d = Delegator::new(cfg, pool()).unwrap();
        let bob = lab.bob.principal(realm);
        let alice = lab.alice.principal(realm);
        let other_needle = format!("for {}@{}", lab.nondelegable_spn, realm.name);
        let bob_before = mit_log_count(lab, &format!("s4u-client={bob}"));
        let other_before = mit_log_count(lab, &other_needle);

        // The KDC refuses bob and the other SPN with the same code; the engine tells them
        // apart by whether the SPN has worked for someone else (see `Refusal`).
        let alice_subject = Subject::Transition { principal: &alice };
        block_on(d.token(alice_subject, &lab.backend_spn, None)).unwrap();
        let bob_subject = Subject::Transition { principal: &bob };
        let e = block_on(d.token(bob_subject, &lab.backend_spn, None)).unwrap_err();
        assert!(
            matches!(
                e,
                DelegationError::Refused {
                    reason: Refusal::UserNotDelegable,
                    ..
                }
            ),
            "{}: {e}",
            realm.name
        );
        assert_eq!(e.error_kind(), ErrorKind::DelegationRefused);
        assert_eq!(e.as_str(), "user_not_delegable");

        let e2 = block_on(d.token(alice_subject, &lab.nondelegable_spn, None)).unwrap_err();
        assert!(
            matches!(
                e2,
                DelegationError::Refused {
                    reason: Refusal::SpnNotAllowed,
                    ..
                }
            ),
            "{}: {e2}",
            realm.name
        );
        assert_eq!(e2.error_kind(), ErrorKind::BackendProtocol);
        let s1 = d.stats();
        assert_eq!(s1.refusals, 2, "{s1:?}");
        let bob_mid = mit_log_count(lab, &format!("s4u-client={bob}"));
        let other_mid = mit_log_count(lab, &other_needle);

        // Again, inside the negative TTL: the same errors, no KDC request.
        for _ in 0..5 {
            assert_eq!(
                block_on(d.token(bob_subject, &lab.backend_spn, None)).unwrap_err(),
                e
            );
            assert_eq!(
                block_on(d.token(alice_subject, &lab.nondelegable_spn, None)).unwrap_err(),
                e2
            );
        }
        let s2 = d.stats();
        assert_eq!(s2.negative_hits, 10, "{s2:?}");
        assert_eq!(
            (s2.s4u2self, s2.s4u2proxy, s2.refusals),
            (s1.s4u2self, s1.s4u2proxy, s1.refusals),
            "{s2:?}"
        );
        // alice: S4U2Self + S4U2Proxy; bob: S4U2Self + a refused S4U2Proxy (then his
        // S4U2Self ticket, not forwardable, says the refusal is his); the other SPN: one
        // refused S4U2Proxy (alice's impersonation is not cached per user, only per key).
        assert_eq!((s1.s4u2self, s1.s4u2proxy), (3, 3), "{s1:?}");
        if realm.name == lab.mit.name {
            // bob: one S4U2Self line; the refused S4U2Proxy logs `s4u-client=<unknown>`.
            assert_eq!(bob_mid, bob_before + 1, "bob: one S4U2Self at the KDC");
            assert_eq!(
                other_mid,
                other_before + 1,
                "other SPN: one S4U2Proxy at the KDC"
            );
            assert_eq!(mit_log_count(lab, &format!("s4u-client={bob}")), bob_mid);
            assert_eq!(mit_log_count(lab, &other_needle), other_mid);
        }
    }
}

#[test]
fn two_hundred_tokens_cost_one_s4u2self_and_one_s4u2proxy() {
    let lab = setup();
    let _serial = serial();
    for realm in lab.realms() {
        let d = delegator(realm);
        let alice = lab.alice.principal(realm);
        let subject = Subject::Transition { principal: &alice };
        let before = mit_counts(lab, &alice);
        let mut hit_times = Vec::with_capacity(200);
        let first_kdc = block_on(async {
            let mut first = None;
            for i in 0..200 {
                let started = Instant::now();
                let tok = d.token(subject, &lab.backend_spn, None).await.unwrap();
                let took = started.elapsed();
                if i == 0 {
                    assert_eq!(tok.cache(), CacheOutcome::Miss);
                    first = Some(took);
                } else {
                    assert_eq!(tok.cache(), CacheOutcome::Hit);
                    hit_times.push(took);
                }
            }
            first
        });
        let s = d.stats();
        assert_eq!((s.s4u2self, s.s4u2proxy), (1, 1), "{s:?}");
        assert_eq!((s.misses, s.hits), (1, 199), "{s:?}");
        hit_times.sort();
        let mean = hit_times.iter().sum::<Duration>() / hit_times.len() as u32;
        eprintln!(
            "{}: miss {:?} (kdc latency on the pool {} µs); hit AP-REQ build: mean {:?}, p50 {:?}, p99 {:?}, max {:?}",
            realm.name,
            first_kdc.unwrap(),
            s.kdc_latency_us_sum / s.kdc_latency_count.max(1),
            mean,
            hit_times[hit_times.len() / 2],
            hit_times[hit_times.len() * 99 / 100],
            hit_times[hit_times.len() - 1],
        );
        if realm.name == lab.mit.name {
            let after = mit_counts(lab, &alice);
            assert_eq!(after.s4u2self, before.s4u2self + 1, "S4U2Self at the KDC");
            assert_eq!(
                after.s4u2proxy,
                before.s4u2proxy + 1,
                "S4U2Proxy at the KDC"
            );
        }
    }
}

#[test]
fn fifty_concurrent_first_requests_make_one_exchange() {
    let lab = setup();
    let _serial = serial();
    for realm in lab.realms() {
        let d = delegator(realm);
        let alice = lab.alice.principal(realm);
        let subject = Subject::Transition { principal: &alice };
        let before = mit_counts(lab, &alice);
        let outcomes = block_on(async {
            let all = (0..50).map(|_| d.token(subject, &lab.backend_spn, None));
            futures_util::future::join_all(all).await
        });
        let mut miss = 0;
        let mut joined = 0;
        for o in &outcomes {
            match o.as_ref().unwrap().cache() {
                CacheOutcome::Miss => miss += 1,
                CacheOutcome::Joined => joined += 1,
                CacheOutcome::Hit => {}
            }
        }
        assert_eq!((miss, joined), (1, 49), "{}", realm.name);
        let s = d.stats();
        assert_eq!(
            (s.s4u2self, s.s4u2proxy, s.misses, s.joined),
            (1, 1, 1, 49),
            "{s:?}"
        );
        // Every one of them is a distinct, valid AP-REQ for alice.
        let tok = outcomes.into_iter().nth(17).unwrap().unwrap();
        let r = http_get(
            lab.backend.http,
            &lab.backend_host,
            "/whoami",
            tok.header_value(),
        );
        assert_eq!(r.header("X-Remote-User"), Some(alice.as_str()));
        if realm.name == lab.mit.name {
            let after = mit_counts(lab, &alice);
            assert_eq!(after.s4u2self, before.s4u2self + 1);
            assert_eq!(after.s4u2proxy, before.s4u2proxy + 1);
        }
    }
}
