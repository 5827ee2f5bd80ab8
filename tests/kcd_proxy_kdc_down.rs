//! The KDC stops answering while kcdproxy delegates (MIT realm; the KDC is frozen with SIGSTOP
//! and a drop guard always sends SIGCONT, even on panic). Users with cached tickets keep
//! working, new connections included; a new user gets 503 with `Retry-After` within
//! `--kdc-timeout`; the other connections' latency is unaffected (no blocked core); once the
//! KDC answers again, the new user gets through.
//!
//! Its own test binary: nothing else runs while the lab's MIT KDC is frozen.

mod common;

use std::time::{Duration, Instant};

use common::authn::{basic, client, start_proxy};
use common::curl::curl;
use common::kdc::{mit_kdc_pid, Frozen};
use common::lab::lab;

#[test]
fn a_frozen_kdc_stops_only_new_users_and_only_for_the_kdc_timeout() {
    let lab = lab();
    let realm = &lab.mit;
    let pid = mit_kdc_pid(lab);
    let metrics = common::free_port();
    let b = &lab.backend.http_url;
    let args: Vec<String> = vec![
        "--route".into(),
        format!("/={b};auth=basic,ntlm;spn={}", lab.backend_spn),
        "--keytab".into(),
        realm.proxy_keytab.display().to_string(),
        "--kerberos-login".into(),
        realm.proxy_principal.clone(),
        "--realm".into(),
        realm.name.clone(),
        "--ntlm-hash-file".into(),
        lab.nt_hash_file.display().to_string(),
        "--basic-over-http".into(),
        "--kdc-timeout".into(),
        "1s".into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics}"),
    ];
    let p = start_proxy(lab, &args);
    let (alice, carol) = (basic(&lab.alice), basic(&lab.carol));
    let alice_name = format!("authenticated as {}", lab.alice.principal(realm));

    // alice's ticket is cached before the KDC goes quiet.
    let r = client(lab, p.addr()).request("GET", "/echo/warm", &[("Authorization", &alice)], b"");
    assert_eq!(r.status(), 200, "{}: {}", r.text(), p.stderr_tail());

    let frozen = Frozen::new(pid);
    // carol is new: her S4U2Self waits on the frozen KDC until the deadline.
    let carol_req = std::thread::spawn({
        let (addr, carol) = (p.addr(), carol.clone());
        move || {
            let t = Instant::now();
            let r =
                client(lab, addr).request("GET", "/echo/carol", &[("Authorization", &carol)], b"");
            (r, t.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(150));
    // Meanwhile alice keeps working, on four new client connections at once (each may need a
    // new backend connection, hence a new AP-REQ: built from the cached ticket, no KDC).
    let t = Instant::now();
    let alices: Vec<_> = (0..4)
        .map(|i| {
            let (addr, alice) = (p.addr(), alice.clone());
            std::thread::spawn(move || {
                let path = format!("/echo/alice-{i}");
                client(lab, addr).request("GET", &path, &[("Authorization", &alice)], b"")
            })
        })
        .collect();
    for a in alices {
        let r = a.join().unwrap();
        assert_eq!(r.status(), 200, "{}", r.text());
        assert!(r.text().contains(&alice_name), "{}", r.text());
    }
    let alice_took = t.elapsed();
    assert!(
        alice_took < Duration::from_millis(500),
        "cached user slowed by the frozen KDC: {alice_took:?}"
    );
    let (r, carol_took) = carol_req.join().unwrap();
    assert_eq!(r.status(), 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        carol_took >= Duration::from_millis(900) && carol_took < Duration::from_millis(2500),
        "503 after {carol_took:?} with --kdc-timeout 1s"
    );
    drop(frozen);

    // The KDC answers again: carol gets through (an unavailable KDC is not cached as a refusal).
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = client(lab, p.addr()).request(
            "GET",
            "/echo/carol-back",
            &[("Authorization", &carol)],
            b"",
        );
        if r.status() != 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(
        r.text()
            .contains(&format!("authenticated as {}", lab.carol.principal(realm))),
        "{}",
        r.text()
    );
    let text = curl(&[&format!("http://127.0.0.1:{metrics}/metrics")]).stdout;
    assert!(text.contains("kcdproxy_kdc_unavailable_total 1"), "{text}");
    eprintln!("frozen KDC: 4 cached requests in {alice_took:?}; new user 503 after {carol_took:?}");
}
