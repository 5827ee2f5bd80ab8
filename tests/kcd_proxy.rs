//! Constrained delegation through the real kcdproxy binary: the lab's Kerberos-only backend
//! (Apache + mod_auth_gssapi, standing in for IIS) answers as the user — for NTLM, Basic and
//! Kerberos clients, over plain and TLS backends, in the Samba AD realm and the MIT/LDAP
//! realm. Refusals get clear statuses; the KDC sees one S4U2Self and one S4U2Proxy per user
//! however many requests and connections; two users interleaved never see each other.
//!
//! Counting tests read the MIT KDC's log and the proxy's metrics, so the tests of this binary
//! run one at a time (each starts its own proxy, whose ticket cache starts empty).

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use common::authn::{auth_header, basic, client, nonce, start_proxy as start_lab_proxy};
use common::client::Response;
use common::curl::{curl, curl_env};
use common::kdc::{kinit, krb5_lab, mit_s4u, S4uCounts};
use common::lab::{Lab, Realm};
use common::proxy::Proxy;
use common::TempDir;

/// (scheme, curl arguments, environment)
type Case<'a> = (&'a str, Vec<&'a str>, &'a [(&'a str, &'a Path)]);

fn setup() -> &'static Lab {
    krb5_lab()
}

fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_ad(lab: &Lab, realm: &Realm) -> bool {
    realm.name == lab.ad.name
}

/// A delegating proxy for `realm`, with its metrics port.
///
/// Routes (the backend's `/echo/…` answers any path below it): `/` → the plain backend;
/// `/echo/tls` → the TLS backend, `/echo/cb` → the same with channel bindings;
/// `/echo/on401` sends the ticket only after a backend 401; `/echo/nondelegable` asks for the
/// SPN the proxy may not delegate to. Kerberos clients need the host `proxy.example.test`
/// (their ticket is for the proxy's SPN).
/// AD: NTLM and Basic through winbind. MIT: NTLM and Basic against the lab's hash file,
/// mapped into MIT.TEST.
fn start_proxy(lab: &Lab, realm: &Realm, extra: &[&str]) -> (Proxy, u16) {
    let b = &lab.backend.http_url;
    let bs = &lab.backend.https_url;
    let spn = &lab.backend_spn;
    let auth = "auth=negotiate,ntlm,basic";
    let metrics = common::free_port();
    let mut args: Vec<String> = vec![
        "--route".into(),
        format!("/={b};{auth};spn={spn}"),
        "--route".into(),
        format!("/echo/nondelegable={b};{auth};spn={}", lab.nondelegable_spn),
        "--route".into(),
        format!("/echo/tls={bs};{auth};spn={spn}"),
        "--route".into(),
        format!("/echo/cb={bs};{auth};spn={spn};channel-binding=tls-server-end-point"),
        "--route".into(),
        format!("/echo/on401={b};{auth};spn={spn};send-auth=401"),
        "--backend-ca".into(),
        lab.pki.ca.display().to_string(),
        "--keytab".into(),
        realm.proxy_keytab.display().to_string(),
        "--kerberos-login".into(),
        realm.proxy_principal.clone(),
        "--realm".into(),
        realm.name.clone(),
        "--basic-over-http".into(),
        "--metrics-listen".into(),
        format!("127.0.0.1:{metrics}"),
    ];
    if is_ad(lab, realm) {
        args.extend([
            "--domain-realm".into(),
            "EXAMPLE=EXAMPLE.TEST".into(),
            "--winbind-command".into(),
            lab.var("KCD_LAB_NTLM_AUTH").to_string(),
        ]);
    } else {
        args.extend([
            "--ntlm-hash-file".into(),
            lab.nt_hash_file.display().to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    (start_lab_proxy(lab, &args), metrics)
}

fn metric(port: u16, name: &str) -> u64 {
    let text = curl(&[&format!("http://127.0.0.1:{port}/metrics")]).stdout;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
}

/// The backend's answer names the user: `authenticated as USER@REALM` (echo) or the
/// `X-Remote-User` header (whoami).
fn named(r: &Response) -> String {
    if let Some(u) = r.header("x-remote-user") {
        return u.to_string();
    }
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("authenticated as "))
        .unwrap_or("-")
        .to_string()
}

/// Asserts the proxy's own S4U counters (and, on MIT, the KDC's log since `before`).
fn assert_s4u(
    lab: &Lab,
    realm: &Realm,
    metrics: u16,
    principal: &str,
    before: S4uCounts,
    want: S4uCounts,
) {
    let got = (
        metric(metrics, "kcdproxy_kdc_s4u2self_total") as usize,
        metric(metrics, "kcdproxy_kdc_s4u2proxy_total") as usize,
    );
    assert_eq!(
        got,
        (want.s4u2self, want.s4u2proxy),
        "{}: proxy's (S4U2Self, S4U2Proxy)",
        realm.name
    );
    if !is_ad(lab, realm) {
        let after = mit_s4u(lab, principal);
        assert_eq!(
            (
                after.s4u2self - before.s4u2self,
                after.s4u2proxy - before.s4u2proxy
            ),
            (want.s4u2self, want.s4u2proxy),
            "{}: (S4U2Self, S4U2Proxy) in the MIT KDC's log",
            realm.name
        );
    }
}

/// curl through the proxy with a Host of `host` (the proxy's routes pick the backend by it):
/// the response head (`-D -`) and body.
fn curl_via(p: &Proxy, host: &str, path: &str, args: &[&str], env: &[(&str, &Path)]) -> String {
    let resolve = format!("{host}:{}:127.0.0.1", p.port());
    let url = format!("http://{host}:{}{path}", p.port());
    let args: Vec<&str> = ["-D", "-"]
        .into_iter()
        .chain(args.iter().copied())
        .chain(["--resolve", &resolve, &url])
        .collect();
    curl_env(&args, env).stdout
}

#[test]
fn alice_reaches_the_backend_as_herself_with_each_scheme_over_plain_and_tls_backends() {
    let _s = serial();
    let lab = setup();
    for realm in lab.realms() {
        let (p, metrics) = start_proxy(lab, realm, &[]);
        // Delegating, logged in from the keytab, listeners and backends up: ready.
        let ready = curl(&[
            "-w",
            " %{http_code}",
            &format!("http://127.0.0.1:{metrics}/readyz"),
        ]);
        assert_eq!(ready.stdout, "ready\n 200", "{}", realm.name);
        let want = format!("authenticated as {}", lab.alice.principal(realm));
        let dir = TempDir::new("proxy-krb");
        let ccache = format!("FILE:{}", dir.join("alice.cc").display());
        kinit(realm, &lab.alice, &ccache);
        let ntlm_user = if is_ad(lab, realm) {
            format!("EXAMPLE\\alice:{}", lab.alice.password)
        } else {
            format!("alice:{}", lab.alice.password)
        };
        let basic_user = format!("alice:{}", lab.alice.password);
        let krb_env: [(&str, &Path); 2] = [
            ("KRB5_CONFIG", realm.krb5_config.as_path()),
            ("KRB5CCNAME", Path::new(&ccache)),
        ];
        for leg in ["plain", "tls", "cb"] {
            let cases: [Case; 3] = [
                ("ntlm", vec!["--ntlm", "-u", &ntlm_user], &[]),
                ("basic", vec!["-u", &basic_user], &[]),
                ("negotiate", vec!["--negotiate", "-u", ":"], &krb_env),
            ];
            for (scheme, args, env) in cases {
                let path = match leg {
                    "plain" => format!("/echo/{scheme}-{}", nonce("n")),
                    _ => format!("/echo/{leg}/{scheme}-{}", nonce("n")),
                };
                let text = curl_via(&p, "proxy.example.test", &path, &args, env);
                assert!(
                    text.contains(&want),
                    "{} {leg} {scheme}: {text}\n{}",
                    realm.name,
                    p.stderr_tail()
                );
                // The backend's own Negotiate answer never reaches the client.
                assert!(
                    !text.lines().any(|l| l
                        .to_ascii_lowercase()
                        .starts_with("www-authenticate: negotiate oy")
                        && scheme != "negotiate"),
                    "{text}"
                );
                let log = p
                    .access_lines_until(&path, |l| l.iter().any(|x| x.contains("status=200")))
                    .join("\n");
                assert!(log.contains(&format!("spn={}", lab.backend_spn)), "{log}");
            }
        }
    }
}

#[test]
fn refusals_are_403_for_the_user_and_502_for_the_spn() {
    let _s = serial();
    let lab = setup();
    for realm in lab.realms() {
        let (p, _) = start_proxy(lab, realm, &[]);
        // bob first, on a fresh proxy: the refusal is his own (his S4U2Self ticket is not
        // forwardable), whatever the proxy has seen before.
        let path = format!("/echo/bob-{}", nonce("n"));
        let r = client(lab, p.addr()).request(
            "GET",
            &path,
            &[("Authorization", &basic(&lab.bob))],
            b"",
        );
        assert_eq!(r.status(), 403, "{}: bob: {}", realm.name, r.text());
        let log = p.access_lines(&path, 1).join("\n");
        assert!(
            log.contains("reason=delegation_refused") && log.contains("user_not_delegable"),
            "{log}"
        );
        let path = format!("/echo/nondelegable/{}", nonce("n"));
        let r = client(lab, p.addr()).request(
            "GET",
            &path,
            &[("Authorization", &basic(&lab.alice))],
            b"",
        );
        assert_eq!(r.status(), 502, "{}: other SPN: {}", realm.name, r.text());
        let log = p.access_lines(&path, 1).join("\n");
        assert!(log.contains("spn_not_allowed"), "{log}");
        // The connection survives a refusal (nothing about the request was wrong).
        let mut c = client(lab, p.addr());
        let r = c.request(
            "GET",
            "/whoami",
            &[("Authorization", &basic(&lab.bob))],
            b"",
        );
        assert_eq!(r.status(), 403);
        let r = c.request(
            "GET",
            "/whoami",
            &[("Authorization", &basic(&lab.alice))],
            b"",
        );
        assert_eq!(r.status(), 200);
        assert_eq!(named(&r), lab.alice.principal(realm));
    }
}

#[test]
fn two_hundred_requests_on_four_connections_cost_one_s4u2self_and_one_s4u2proxy() {
    let _s = serial();
    let lab = setup();
    let realm = &lab.mit;
    let (p, metrics) = start_proxy(lab, realm, &[]);
    let principal = lab.carol.principal(realm);
    let before = mit_s4u(lab, &principal);
    let auth = basic(&lab.carol);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (addr, auth, principal) = (p.addr(), auth.clone(), principal.clone());
            std::thread::spawn(move || {
                let mut c = client(lab, addr);
                for _ in 0..50 {
                    let r = c.request("GET", "/whoami", &[("Authorization", &auth)], b"");
                    assert_eq!(r.status(), 200, "{}", r.text());
                    assert_eq!(named(&r), principal);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let one = S4uCounts {
        s4u2self: 1,
        s4u2proxy: 1,
    };
    assert_s4u(lab, realm, metrics, &principal, before, one);
    // Connections to the backend are per user and reused: most requests need no new ticket.
    let none = metric(
        metrics,
        "kcdproxy_delegated_requests_total{ticket=\"none\"}",
    );
    assert!(
        none >= 150,
        "{none} of 200 requests reused an authenticated connection"
    );
}

#[test]
fn fifty_concurrent_first_requests_by_one_user_cost_one_exchange() {
    let _s = serial();
    let lab = setup();
    for realm in lab.realms() {
        let (p, metrics) = start_proxy(lab, realm, &[]);
        let principal = lab.carol.principal(realm);
        let before = mit_s4u(lab, &principal);
        let auth = basic(&lab.carol);
        let gate = Arc::new(Barrier::new(50));
        let threads: Vec<_> = (0..50)
            .map(|_| {
                let (addr, auth, gate) = (p.addr(), auth.clone(), gate.clone());
                std::thread::spawn(move || {
                    let mut c = client(lab, addr);
                    gate.wait();
                    c.request("GET", "/whoami", &[("Authorization", &auth)], b"")
                })
            })
            .collect();
        for t in threads {
            let r = t.join().unwrap();
            assert_eq!(r.status(), 200, "{}", r.text());
            assert_eq!(named(&r), principal);
        }
        let one = S4uCounts {
            s4u2self: 1,
            s4u2proxy: 1,
        };
        assert_s4u(lab, realm, metrics, &principal, before, one);
    }
}

/// alice and carol alternate on the same keep-alive client connections (Basic names the user
/// per request): every one of 2,000 answers names the user who asked.
#[test]
fn two_users_interleaved_on_keep_alive_connections_never_cross() {
    let _s = serial();
    let lab = setup();
    let realm = &lab.ad;
    let (p, metrics) = start_proxy(lab, realm, &[]);
    let users = [
        (basic(&lab.alice), lab.alice.principal(realm)),
        (basic(&lab.carol), lab.carol.principal(realm)),
    ];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (addr, users) = (p.addr(), users.clone());
            std::thread::spawn(move || {
                let mut c = client(lab, addr);
                let mut crossed = 0;
                for i in 0..500 {
                    let (auth, who) = &users[(i + t) % 2];
                    let path = if i % 3 == 0 { "/echo/x" } else { "/whoami" };
                    let r = c.request("GET", path, &[("Authorization", auth)], b"");
                    assert_eq!(r.status(), 200, "{}", r.text());
                    if named(&r) != *who {
                        crossed += 1;
                    }
                }
                crossed
            })
        })
        .collect();
    let crossed: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(crossed, 0, "answers naming the other user");
    assert_eq!(metric(metrics, "kcdproxy_kdc_s4u2self_total"), 2);
}

/// With `send-auth=401` the first request goes without a ticket; the backend's 401 is
/// answered on the backend leg and the client sees only the 200.
#[test]
fn send_auth_401_answers_the_backend_challenge_itself() {
    let _s = serial();
    let lab = setup();
    let realm = &lab.ad;
    let (p, metrics) = start_proxy(lab, realm, &[]);
    let text = curl_via(
        &p,
        "proxy.example.test",
        "/echo/on401/x",
        &["-u", &format!("alice:{}", lab.alice.password)],
        &[],
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("authenticated as {}", lab.alice.principal(realm))),
        "{text}"
    );
    // The first try went without a ticket; the backend's 401 was answered by the retry.
    let log = p.access_lines("/echo/on401/x", 1).join("\n");
    assert!(log.contains("ticket=miss"), "{log}");
    assert_eq!(
        metric(metrics, "kcdproxy_responses_total{class=\"4xx\"}"),
        0
    );
}

/// A Kerberos client is delegated with its own ticket as evidence: S4U2Proxy only, never
/// S4U2Self (the client's service ticket is the evidence ticket of MS-SFU 3.1.5.2), in both
/// realms.
#[test]
fn a_kerberos_client_is_delegated_with_its_own_ticket_and_no_s4u2self() {
    use kcdproxy::auth::kerberos::{InitiatorMech, KerberosInitiator};
    let _s = serial();
    let lab = setup();
    for realm in lab.realms() {
        let (p, metrics) = start_proxy(lab, realm, &[]);
        let principal = lab.carol.principal(realm);
        let before = mit_s4u(lab, &principal);
        let carol = KerberosInitiator::with_password(&principal, &lab.carol.password)
            .unwrap_or_else(|e| panic!("kinit {principal}: {e}"));
        let service = format!("{}@{}", lab.proxy_spn, realm.name);
        let (token, _ctx) = carol.token(&service, InitiatorMech::Spnego, false).unwrap();
        let path = format!("/echo/evidence-{}", nonce("n"));
        let mut c = client(lab, p.addr());
        let r = c.request(
            "GET",
            &path,
            &[("Authorization", &auth_header("Negotiate", &token))],
            b"",
        );
        assert_eq!(r.status(), 200, "{}: {}", realm.name, r.text());
        assert_eq!(named(&r), principal);
        // The connection stays authenticated; the backend connection too.
        let r = c.request("GET", "/whoami", &[], b"");
        assert_eq!(named(&r), principal);
        let log = p.access_lines(&path, 1).join("\n");
        assert!(
            log.contains("auth=negotiate-kerberos") && log.contains("ticket=miss"),
            "{log}"
        );
        // S4U2Proxy only: no S4U2Self at the proxy or the KDC.
        let evidence_only = S4uCounts {
            s4u2self: 0,
            s4u2proxy: 1,
        };
        assert_s4u(lab, realm, metrics, &principal, before, evidence_only);
    }
}
