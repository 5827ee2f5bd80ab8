//! Client pre-authentication that leaves the core: Kerberos (Negotiate) accepted with the
//! proxy's keytab, NTLM checked by the domain controller through winbind, Basic checked by
//! winbind or by the KDC — through the real kcdproxy binary, against both lab realms, with
//! real clients (curl `--negotiate`, MIT GSS-API in-process, curl `--ntlm`/`--basic`).
//!
//! And what happens when the KDC does not answer: 503 with `Retry-After` within
//! `--kdc-timeout`, never a 401 (the user's password was not judged), while the same core
//! keeps serving everyone else.
//!
//! Requests go to the backend's unauthenticated `/public/echo/…`, which echoes the identity
//! header (`x_kcd_user=`).

mod common;

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::authn::{auth_header, client, nonce, start_proxy, start_proxy_with_env};
use common::curl::{curl, curl_env};
use common::kdc::kinit;
use common::lab::{Lab, Realm};
use common::proxy::Proxy;
use common::TempDir;
use kcdproxy::auth::kerberos::{InitiatorMech, KerberosInitiator};

/// The lab with `KRB5_CONFIG`/`KRB5RCACHEDIR` set for this process (the in-process Kerberos
/// client reads them), once, before any thread uses GSS-API.
fn setup() -> &'static Lab {
    common::kdc::krb5_lab()
}

fn is_ad(lab: &Lab, realm: &Realm) -> bool {
    realm.name == lab.ad.name
}

/// One proxy per realm. AD: Kerberos, NTLM and Basic through winbind (no hash file at all).
/// MIT: Kerberos, Basic through the KDC.
fn proxy(lab: &'static Lab, realm: &Realm) -> &'static Proxy {
    static AD: OnceLock<Proxy> = OnceLock::new();
    static MIT: OnceLock<Proxy> = OnceLock::new();
    let ad = is_ad(lab, realm);
    let cell = if ad { &AD } else { &MIT };
    cell.get_or_init(|| {
        let b = &lab.backend.http_url;
        let mut args: Vec<String> = vec![
            "--route".into(),
            format!("/public/echo/k={b};auth=negotiate"),
            "--route".into(),
            format!("/public/echo/anon={b}"),
            "--keytab".into(),
            realm.proxy_keytab.display().to_string(),
            "--kerberos-login".into(),
            realm.proxy_principal.clone(),
            "--kerberos-spn".into(),
            format!("{}@{}", lab.proxy_spn, realm.name),
            "--realm".into(),
            realm.name.clone(),
            "--identity-header".into(),
            "X-Kcd-User".into(),
        ];
        if ad {
            args.extend([
                "--route".into(),
                format!("/public/echo/kn={b};auth=negotiate,ntlm"),
                "--route".into(),
                format!("/public/echo/basic={b};auth=basic"),
                "--domain-realm".into(),
                "EXAMPLE=EXAMPLE.TEST".into(),
                "--winbind-command".into(),
                lab.var("KCD_LAB_NTLM_AUTH").to_string(),
            ]);
        } else {
            args.extend([
                "--route".into(),
                format!("/public/echo/basic={b};auth=basic"),
            ]);
        }
        start_proxy(lab, &args)
    })
}

/// alice's in-process Kerberos login to `realm` (one AS exchange per test binary).
fn alice_krb(lab: &Lab, realm: &Realm) -> &'static KerberosInitiator {
    static AD: OnceLock<KerberosInitiator> = OnceLock::new();
    static MIT: OnceLock<KerberosInitiator> = OnceLock::new();
    let cell = if is_ad(lab, realm) { &AD } else { &MIT };
    cell.get_or_init(|| {
        KerberosInitiator::with_password(&lab.alice.principal(realm), &lab.alice.password)
            .unwrap_or_else(|e| panic!("kinit alice@{}: {e}", realm.name))
    })
}

fn proxy_service(lab: &Lab, realm: &Realm) -> String {
    format!("{}@{}", lab.proxy_spn, realm.name)
}

fn access_detail(p: &Proxy, path: &str) -> String {
    p.access_lines(path, 1).join("\n")
}

#[test]
fn curl_negotiate_authenticates_alice_in_both_realms() {
    let lab = setup();
    for realm in lab.realms() {
        let p = proxy(lab, realm);
        let dir = TempDir::new("krb-curl");
        let ccache = format!("FILE:{}", dir.join("alice.cc").display());
        kinit(realm, &lab.alice, &ccache);
        let path = format!("/public/echo/k/curl-{}", nonce("n"));
        let url = format!("http://proxy.example.test:{}{path}", p.port());
        let resolve = format!("proxy.example.test:{}:127.0.0.1", p.port());
        let out = curl_env(
            &[
                "--negotiate",
                "-u",
                ":",
                "-D",
                "-",
                "--resolve",
                &resolve,
                &url,
            ],
            &[
                ("KRB5_CONFIG", realm.krb5_config.as_os_str()),
                ("KRB5CCNAME", ccache.as_ref()),
            ],
        );
        let text = out.stdout;
        let want = format!("x_kcd_user={}", lab.alice.principal(realm));
        assert!(
            text.contains("200 OK") && text.contains(&want),
            "{}: {text}",
            realm.name
        );
        // The final response carries the AP-REP (mutual authentication).
        assert!(
            text.lines().any(|l| l
                .to_ascii_lowercase()
                .starts_with("www-authenticate: negotiate ")),
            "{text}"
        );
        let log = access_detail(p, &path);
        assert!(log.contains("auth=negotiate-kerberos"), "{log}");
    }
}

#[test]
fn gss_client_gets_mutual_auth_and_the_connection_stays_authenticated() {
    let lab = setup();
    for realm in lab.realms() {
        let p = proxy(lab, realm);
        for mech in [InitiatorMech::Spnego, InitiatorMech::Krb5] {
            let (token, mut ictx) = alice_krb(lab, realm)
                .token(&proxy_service(lab, realm), mech, false)
                .unwrap();
            let mut c = client(lab, p.addr());
            let path = format!("/public/echo/k/gss-{}", nonce("n"));
            let r = c.request(
                "GET",
                &path,
                &[("Authorization", &auth_header("Negotiate", &token))],
                b"",
            );
            assert_eq!(r.status(), 200, "{}/{mech:?}: {}", realm.name, r.text());
            assert_eq!(r.body_line("x_kcd_user"), Some(lab.alice.principal(realm)));
            let reply = r.token("Negotiate").expect("final Negotiate token");
            ictx.finish(&reply)
                .unwrap_or_else(|e| panic!("{}/{mech:?}: mutual auth: {e}", realm.name));
            assert_eq!(r.header("persistent-auth"), Some("true"));
            // Kerberos authenticated the connection: no Authorization needed any more.
            let r2 = c.request("GET", &format!("{path}/again"), &[], b"");
            assert_eq!(r2.status(), 200, "{}", r2.text());
            assert_eq!(r2.body_line("x_kcd_user"), Some(lab.alice.principal(realm)));
            // A new connection is anonymous again.
            let mut other = client(lab, p.addr());
            let r3 = other.request("GET", &format!("{path}/other"), &[], b"");
            assert_eq!(r3.status(), 401);
            assert_eq!(r3.challenges(), vec!["Negotiate"]);
        }
    }
}

#[test]
fn a_replayed_kerberos_token_is_refused() {
    let lab = setup();
    for realm in lab.realms() {
        let p = proxy(lab, realm);
        let (token, _ctx) = alice_krb(lab, realm)
            .token(&proxy_service(lab, realm), InitiatorMech::Spnego, false)
            .unwrap();
        let authz = auth_header("Negotiate", &token);
        let first = format!("/public/echo/k/first-{}", nonce("n"));
        let r = client(lab, p.addr()).request("GET", &first, &[("Authorization", &authz)], b"");
        assert_eq!(r.status(), 200, "{}", r.text());
        // The same AP-REQ again, on another connection (another worker, perhaps).
        let replay = format!("/public/echo/k/replay-{}", nonce("n"));
        let r = client(lab, p.addr()).request("GET", &replay, &[("Authorization", &authz)], b"");
        assert_eq!(r.status(), 401, "{}: a replay must fail", realm.name);
        assert_eq!(r.challenges(), vec!["Negotiate"]);
        let log = access_detail(p, &replay);
        assert!(log.contains("krb_replay"), "{log}");
    }
}

#[test]
fn a_token_for_another_service_or_garbage_is_401() {
    let lab = setup();
    let realm = &lab.mit;
    let p = proxy(lab, realm);
    // A ticket for the backend, not for us: the proxy's keytab cannot decrypt it.
    let (token, _ctx) = alice_krb(lab, realm)
        .token(
            &format!("{}@{}", lab.backend_spn, realm.name),
            InitiatorMech::Spnego,
            false,
        )
        .unwrap();
    let path = format!("/public/echo/k/wrong-{}", nonce("n"));
    let r = client(lab, p.addr()).request(
        "GET",
        &path,
        &[("Authorization", &auth_header("Negotiate", &token))],
        b"",
    );
    assert_eq!(r.status(), 401);
    let garbage = format!("/public/echo/k/garbage-{}", nonce("n"));
    let mut bad = token.clone();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    bad.truncate(n - 7);
    let r = client(lab, p.addr()).request(
        "GET",
        &garbage,
        &[("Authorization", &auth_header("Negotiate", &bad))],
        b"",
    );
    assert_eq!(r.status(), 401);
    assert!(access_detail(p, &garbage).contains("status=401"));
}

#[test]
fn kerberos_first_in_spnego_wins_over_ntlm_on_a_negotiate_ntlm_route() {
    let lab = setup();
    let realm = &lab.ad;
    let p = proxy(lab, realm);
    let (token, _ctx) = alice_krb(lab, realm)
        .token(&proxy_service(lab, realm), InitiatorMech::Spnego, false)
        .unwrap();
    let path = format!("/public/echo/kn/{}", nonce("n"));
    let r = client(lab, p.addr()).request(
        "GET",
        &path,
        &[("Authorization", &auth_header("Negotiate", &token))],
        b"",
    );
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(access_detail(p, &path).contains("auth=negotiate-kerberos"));
}

#[test]
fn ntlm_through_winbind_with_curl() {
    let lab = setup();
    let p = proxy(lab, &lab.ad);
    let path = format!("/public/echo/kn/ntlm-{}", nonce("n"));
    let url = format!("http://127.0.0.1:{}{path}", p.port());
    let good = format!("EXAMPLE\\alice:{}", lab.alice.password);
    let out = curl(&["--ntlm", "-u", &good, &url]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("x_kcd_user=alice@EXAMPLE.TEST"),
        "{}",
        out.stdout
    );
    let log = p
        .access_lines_until(&path, |l| l.iter().any(|x| x.contains("status=200")))
        .join("\n");
    assert!(
        log.contains("auth=ntlm") && log.contains("user=\"EXAMPLE\\\\alice\""),
        "{log}"
    );
    let bad_path = format!("/public/echo/kn/ntlm-bad-{}", nonce("n"));
    let bad_url = format!("http://127.0.0.1:{}{bad_path}", p.port());
    let out = curl(&[
        "--ntlm",
        "-u",
        "EXAMPLE\\alice:not-her-password",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &bad_url,
    ]);
    assert_eq!(out.stdout, "401");
    let log = p
        .access_lines_until(&bad_path, |l| {
            l.iter().any(|x| x.contains("wrong_password"))
        })
        .join("\n");
    assert!(log.contains("ntlm_wrong_password"), "{log}");
}

/// Basic over TLS: through winbind on AD, through the KDC on MIT; a wrong password is 401,
/// and the second request within --basic-cache-ttl does not reach the DC or KDC again.
#[test]
fn basic_is_checked_by_winbind_or_the_kdc() {
    let lab = setup();
    for realm in lab.realms() {
        let p = proxy(lab, realm);
        let url = |path: &str| format!("https://127.0.0.1:{}{path}", p.tls_port());
        let ca = lab.pki.ca.display().to_string();
        let good = format!("alice:{}", lab.alice.password);
        let path = format!("/public/echo/basic/{}", nonce("n"));
        let out = curl(&["--cacert", &ca, "-u", &good, &url(&path)]);
        assert!(out.ok, "{}", out.stderr);
        let want = format!("x_kcd_user={}", lab.alice.principal(realm));
        assert!(out.stdout.contains(&want), "{}: {}", realm.name, out.stdout);
        let bad = format!("/public/echo/basic/bad-{}", nonce("n"));
        let out = curl(&[
            "--cacert",
            &ca,
            "-u",
            "alice:wrong-password",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url(&bad),
        ]);
        assert_eq!(out.stdout, "401", "{}", realm.name);
        let log = access_detail(p, &bad);
        assert!(log.contains("wrong_password"), "{log}");
        // Cached: 20 more requests are quick (the first check cost a DC or KDC exchange).
        let t = Instant::now();
        for i in 0..20 {
            let path = format!("/public/echo/basic/again-{i}-{}", nonce("n"));
            let out = curl(&["--cacert", &ca, "-u", &good, &url(&path)]);
            assert!(out.stdout.contains(&want), "{}", out.stdout);
        }
        eprintln!(
            "{}: 20 cached Basic requests in {:?}",
            realm.name,
            t.elapsed()
        );
    }
}

/// A KDC that swallows requests: a UDP socket that never answers and a TCP listener that
/// never accepts (connections complete in the backlog and then hear nothing).
struct DeadKdc {
    _udp: UdpSocket,
    _tcp: TcpListener,
    port: u16,
}

impl DeadKdc {
    fn start() -> DeadKdc {
        for _ in 0..20 {
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = tcp.local_addr().unwrap().port();
            if let Ok(udp) = UdpSocket::bind(("127.0.0.1", port)) {
                return DeadKdc {
                    _udp: udp,
                    _tcp: tcp,
                    port,
                };
            }
        }
        panic!("no port free for both UDP and TCP");
    }
}

fn write_krb5_conf(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("krb5-down.conf");
    let text = format!(
        "[libdefaults]\n default_realm = DOWN.TEST\n dns_lookup_kdc = false\n \
         dns_lookup_realm = false\n rdns = false\n dns_canonicalize_hostname = false\n\
         [realms]\n DOWN.TEST = {{\n  kdc = 127.0.0.1:{port}\n }}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_silent_kdc_gives_503_with_retry_after_and_the_core_keeps_serving() {
    let lab = setup();
    let kdc = DeadKdc::start();
    let dir = TempDir::new("krb-down");
    let conf = write_krb5_conf(dir.path(), kdc.port);
    let metrics_port = common::free_port();
    let b = &lab.backend.http_url;
    let args: Vec<String> = vec![
        "--route".into(),
        format!("/public/echo/basic={b};auth=basic"),
        "--route".into(),
        format!("/public/echo/anon={b}"),
        "--keytab".into(),
        lab.mit.proxy_keytab.display().to_string(),
        "--kerberos-spn".into(),
        format!("{}@MIT.TEST", lab.proxy_spn),
        "--basic-verify".into(),
        "kdc".into(),
        "--realm".into(),
        "DOWN.TEST".into(),
        "--kdc-threads".into(),
        "1".into(),
        "--kdc-queue".into(),
        "0".into(),
        "--kdc-timeout".into(),
        "1s".into(),
        "--basic-over-http".into(),
        // One worker: the anonymous request below is served by the same core.
        "--workers".into(),
        "1".into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics_port}"),
    ];
    let p = start_proxy_with_env(lab, &args, &[("KRB5_CONFIG", &conf)]);
    let basic = auth_header("Basic", format!("alice:{}", lab.alice.password).as_bytes());

    // The first login blocks a pool thread on the silent KDC; the client gets 503 at the
    // deadline, not a 401.
    let slow = std::thread::spawn({
        let addr = p.addr();
        let basic = basic.clone();
        move || {
            let t = Instant::now();
            let r = client(lab, addr).request(
                "GET",
                "/public/echo/basic/first",
                &[("Authorization", &basic)],
                b"",
            );
            (r, t.elapsed())
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    // Meanwhile, the same core answers an anonymous request at once …
    let t = Instant::now();
    let r = client(lab, p.addr()).request("GET", "/public/echo/anon/meanwhile", &[], b"");
    let anon = t.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        anon < Duration::from_millis(500),
        "anonymous request took {anon:?}"
    );
    // … and a second login finds the one pool thread busy: 503 at once (queue 0).
    let t = Instant::now();
    let r = client(lab, p.addr()).request(
        "GET",
        "/public/echo/basic/second",
        &[("Authorization", &basic)],
        b"",
    );
    assert_eq!(r.status(), 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    let (r, took) = slow.join().unwrap();
    assert_eq!(r.status(), 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "503 after {took:?}, --kdc-timeout is 1 s"
    );
    // The connection stays usable after a 503 (nothing about the client was decided).
    assert!(!r.connection_close());
    let first = p.access_lines("/public/echo/basic/first", 1).join("\n");
    assert!(
        first.contains("status=503") && first.contains("pool_timeout"),
        "{first}"
    );
    let second = p.access_lines("/public/echo/basic/second", 1).join("\n");
    assert!(second.contains("pool_queue_full"), "{second}");
    // Operators see it in the metrics too.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let metrics = curl(&[&url]).stdout;
    assert!(
        metrics.contains("kcdproxy_kdc_unavailable_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kcdproxy_responses_total{class=\"5xx\"} 2"),
        "{metrics}"
    );
}
