//! Client pre-authentication through the real kcdproxy binary, in front of the lab's backend:
//! NTLM (curl, a Windows-like raw client), NTLM inside Negotiate (pyspnego's SPNEGO), Basic over
//! TLS; what each route offers (NTLM only, per User-Agent); the WinINET empty POST and the .NET
//! `Expect: 100-continue` sequences; forged, replayed and misplaced messages; and what reaches
//! the backend (identity header, never the client's Authorization).
//!
//! One proxy serves the whole binary. Requests go to the backend's unauthenticated
//! `/public/echo/…` (its `/echo` needs the delegation that is not built yet), which reports
//! `x_kcd_user=` (the identity header), `body_length=` and `body_sha256=`. Backend hits are
//! counted in Apache's access log, by unique paths.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::authn::{auth_header, backend_hits, nonce, start_proxy};
use common::client::{Client, Response};
use common::curl::curl;
use common::lab::{lab, Lab};
use common::proxy::Proxy;
use common::recorder::{head_values, Recorder};
use common::{pyspnego, sha256_hex};
use kcdproxy::auth::ntlm::client::{MicMode, NtlmClient};

struct Env {
    lab: &'static Lab,
    proxy: Proxy,
    recorder: Recorder,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let lab = lab();
        let recorder = Recorder::start();
        let b = &lab.backend.http_url;
        let r = recorder.url();
        let routes = [
            format!("/={b};auth=negotiate,ntlm"),
            format!("/public/echo/ntlmonly={b};auth=ntlm"),
            format!("/public/echo/ua={b};auth=negotiate,ntlm;auth-ua=Communicator:ntlm"),
            format!("/public/echo/basic={b};auth=basic"),
            format!("/hdr={r};auth=negotiate,ntlm"),
            format!("/hdr-basic={r};auth=basic"),
            format!("/hdr-anon={r}"),
        ];
        let mut args: Vec<String> = Vec::new();
        for route in routes {
            args.extend(["--route".to_string(), route]);
        }
        args.extend([
            "--ntlm-hash-file".into(),
            lab.nt_hash_file.display().to_string(),
            "--realm".into(),
            "EXAMPLE.TEST".into(),
            "--domain-realm".into(),
            "EXAMPLE=EXAMPLE.TEST".into(),
            "--identity-header".into(),
            "X-Kcd-User".into(),
        ]);
        let proxy = start_proxy(lab, &args);
        Env {
            lab,
            proxy,
            recorder,
        }
    })
}

const ALICE: &str = "alice@EXAMPLE.TEST";

fn alice(e: &Env) -> NtlmClient {
    NtlmClient::new("alice", "EXAMPLE", &e.lab.alice.password)
}

/// A new client connection to the proxy's plain listener.
fn connect(e: &Env) -> Client {
    common::authn::client(e.lab, e.proxy.addr())
}

/// The challenges of a first-round 401 on a `negotiate,ntlm` route.
const BOTH: [&str; 2] = ["Negotiate", "NTLM"];

/// NEGOTIATE → 401 CHALLENGE → AUTHENTICATE on `conn` under `scheme` (`NTLM` or `Negotiate`,
/// raw NTLMSSP). The NEGOTIATE leg of a POST carries `Content-Length: 0`, as WinINET and curl
/// send it. Returns the final response and the AUTHENTICATE message.
fn handshake(
    conn: &mut Client,
    scheme: &str,
    method: &str,
    path: &str,
    client: &NtlmClient,
    extra: &[(&str, &str)],
    body: &[u8],
) -> (Response, Vec<u8>) {
    let neg = client.negotiate();
    let h = auth_header(scheme, &neg);
    let mut headers = vec![("Authorization", h.as_str())];
    headers.extend_from_slice(extra);
    let r1 = conn.request(method, path, &headers, b"");
    assert_eq!(r1.status(), 401, "NEGOTIATE leg: {r1:?}");
    assert!(
        !r1.connection_close(),
        "the CHALLENGE must keep the connection: {r1:?}"
    );
    let challenge = r1
        .token(scheme)
        .unwrap_or_else(|| panic!("no {scheme} challenge token: {r1:?}"));
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let h = auth_header(scheme, &auth);
    let mut headers = vec![("Authorization", h.as_str())];
    headers.extend_from_slice(extra);
    (conn.request(method, path, &headers, body), auth)
}

/// The access-log line of `path` with `status=200`, checked for the identity fields.
fn assert_logged(e: &Env, path: &str, auth: &str, user: &str) {
    let lines = e
        .proxy
        .access_lines_until(path, |ls| ls.iter().any(|l| l.contains(" status=200 ")));
    let ok: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" status=200 "))
        .collect();
    assert_eq!(
        ok.len(),
        1,
        "one 200 for {path} in the access log: {lines:#?}"
    );
    let want = format!(" auth={auth} user={user} principal={ALICE}");
    assert!(ok[0].contains(&want), "want `{want}` in {}", ok[0]);
}

// ---------------------------------------------------------------- each scheme authenticates

#[test]
fn ntlm_with_curl_authenticates_alice() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("curl-ntlm"));
    let url = format!("http://{}{path}", e.proxy.addr());
    let user = format!("EXAMPLE\\alice:{}", e.lab.alice.password);
    let out = curl(&["--ntlm", "-u", &user, "--data-binary", "hello curl", &url]);
    assert!(out.ok, "curl failed: {}", out.stderr);
    assert!(
        out.stdout.contains(&format!("x_kcd_user={ALICE}\n")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("body_length=10\n"), "{}", out.stdout);
    assert_logged(e, &path, "ntlm", r#""EXAMPLE\\alice""#);
    // curl sends its NEGOTIATE as an empty POST: the backend sees one POST, the full one.
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 1, Duration::from_millis(300)),
        1
    );
}

#[test]
fn ntlm_with_a_windows_like_client_authenticates_alice() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("raw-ntlm"));
    let mut conn = connect(e);
    // NtlmClient's defaults are Windows': Version fields, MIC, key exchange.
    let (resp, _) = handshake(&mut conn, "NTLM", "GET", &path, &alice(e), &[], b"");
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.body_line("x_kcd_user").as_deref(), Some(ALICE));
    assert_eq!(resp.header("persistent-auth"), Some("true"));
    assert_logged(e, &path, "ntlm", r#""EXAMPLE\\alice""#);
}

#[test]
fn ntlm_inside_negotiate_with_pyspnego_authenticates_alice() {
    let e = env();
    let Some(python) = pyspnego::pyspnego() else {
        return;
    };
    let path = format!("/public/echo/{}", nonce("pyspnego"));
    let body = "hello from pyspnego";
    let out = pyspnego::post(
        &python,
        e.proxy.addr(),
        &path,
        "EXAMPLE\\alice",
        &e.lab.alice.password,
        body,
    );
    assert!(
        out.ok,
        "pyspnego client failed:\n{}\n{}",
        out.stdout, out.stderr
    );
    for want in [
        "status=200\n".to_string(),
        // complete: pyspnego verified our final token's mechListMIC.
        "complete=True\n".into(),
        "rounds=2\n".into(),
        format!("x_kcd_user={ALICE}\n"),
        format!("body_length={}\n", body.len()),
        format!("body_sha256={}\n", sha256_hex(body.as_bytes())),
    ] {
        assert!(
            out.stdout.contains(&want),
            "want {want:?} in:\n{}",
            out.stdout
        );
    }
    assert_logged(e, &path, "negotiate-ntlm", r#""EXAMPLE\\alice""#);
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 1, Duration::from_millis(300)),
        1
    );
}

#[test]
fn raw_ntlm_inside_negotiate_authenticates_alice() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("negotiate-raw"));
    let mut conn = connect(e);
    let (resp, _) = handshake(&mut conn, "Negotiate", "GET", &path, &alice(e), &[], b"");
    assert_eq!(resp.status(), 200, "{resp:?}");
    assert_eq!(resp.body_line("x_kcd_user").as_deref(), Some(ALICE));
    assert_logged(e, &path, "negotiate-ntlm", r#""EXAMPLE\\alice""#);
}

fn tls_url(e: &Env, path: &str) -> (String, String) {
    let port = e.proxy.tls_port();
    (
        format!("https://proxy.example.test:{port}{path}"),
        format!("proxy.example.test:{port}:127.0.0.1"),
    )
}

#[test]
fn basic_over_tls_authenticates_alice_and_refuses_a_wrong_password() {
    let e = env();
    let ca = e.lab.pki.ca.display().to_string();
    for login in ["alice", "EXAMPLE\\alice"] {
        let path = format!("/public/echo/basic/{}", nonce("basic"));
        let (url, resolve) = tls_url(e, &path);
        let user = format!("{login}:{}", e.lab.alice.password);
        let out = curl(&[
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            "--basic",
            "-u",
            &user,
            "--data-binary",
            "basic body",
            &url,
        ]);
        assert!(out.ok, "curl: {}", out.stderr);
        assert!(
            out.stdout.contains(&format!("x_kcd_user={ALICE}\n")),
            "{}",
            out.stdout
        );
        let logged_user = if login.contains('\\') {
            r#""EXAMPLE\\alice""#
        } else {
            "alice"
        };
        assert_logged(e, &path, "basic", logged_user);
        let line = &e.proxy.access_lines(&path, 1)[0];
        assert!(line.contains(" tls=1 "), "{line}");
    }
    let path = format!("/public/echo/basic/{}", nonce("basic-wrong"));
    let (url, resolve) = tls_url(e, &path);
    let out = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--basic",
        "-u",
        "alice:wrong",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &url,
    ]);
    assert!(out.stdout.starts_with("HTTP/1.1 401"), "{}", out.stdout);
    assert!(
        out.stdout.contains("WWW-Authenticate: Basic realm="),
        "{}",
        out.stdout
    );
    assert_eq!(
        backend_hits(e.lab, "GET", &path, 0, Duration::from_millis(200)),
        0
    );
}

#[test]
fn basic_is_neither_offered_nor_accepted_on_the_plain_listener() {
    let e = env();
    let basic = auth_header(
        "Basic",
        format!("alice:{}", e.lab.alice.password).as_bytes(),
    );
    let mut conn = connect(e);
    for (path, auth) in [
        ("/public/echo/basic/plain", None),
        ("/public/echo/basic/plain", Some(basic.as_str())),
        (
            "/public/echo/plain-basic-on-ntlm-route",
            Some(basic.as_str()),
        ),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = conn.request("GET", path, &headers, b"");
        // A Basic-only route has nothing to offer over plain HTTP: 403, not a 401 without
        // WWW-Authenticate; the NTLM route still challenges.
        let want = if path.contains("/basic/") { 403 } else { 401 };
        assert_eq!(r.status(), want, "{path}: {r:?}");
        assert!(
            r.challenges().iter().all(|c| !c.starts_with("Basic")),
            "{path}: Basic offered in clear text: {:?}",
            r.challenges()
        );
    }
}

// ---------------------------------------------------------------- what each route offers

#[test]
fn an_ntlm_only_route_never_shows_negotiate() {
    let e = env();
    let base = format!("/public/echo/ntlmonly/{}", nonce("ntlmonly"));
    let client = alice(e);
    let neg_raw = auth_header("Negotiate", &client.negotiate());
    let garbage = auth_header("NTLM", b"this is not NTLMSSP");
    let basic = auth_header("Basic", b"alice:x");
    let mut conn = connect(e);
    let mut seen = Vec::new();
    for auth in [
        None,
        Some(neg_raw.as_str()),
        Some(garbage.as_str()),
        Some(basic.as_str()),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = conn.request("GET", &base, &headers, b"");
        assert_eq!(r.status(), 401, "{auth:?}: {r:?}");
        assert_eq!(r.challenges(), ["NTLM"], "{auth:?}");
        seen.push(r);
    }
    // A failed handshake (wrong password) ends in a 401 that offers NTLM alone too.
    let wrong = NtlmClient::new("alice", "EXAMPLE", "wrong");
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &base, &wrong, &[], b"");
    assert_eq!((r.status(), r.challenges()), (401, vec!["NTLM"]));
    // The CHALLENGE itself is an NTLM one; and the right password gets through.
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &base, &client, &[], b"");
    assert_eq!(r.status(), 200, "{r:?}");
    assert!(r.challenges().is_empty(), "{r:?}");
    seen.push(r);
    for r in &seen {
        for v in r.challenges() {
            assert!(!v.to_ascii_lowercase().contains("negotiate"), "{r:?}");
        }
    }
}

#[test]
fn the_user_agent_override_offers_ntlm_alone_to_communicator() {
    let e = env();
    let path = format!("/public/echo/ua/{}", nonce("ua"));
    let communicator = "Microsoft Office Communicator 2007 R2 (3.5.6907.0)";
    let mut conn = connect(e);
    let r = conn.request("GET", &path, &[("User-Agent", communicator)], b"");
    assert_eq!((r.status(), r.challenges()), (401, vec!["NTLM"]));
    // Other clients on the same route: both, Negotiate first, no token data.
    for ua in [Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64)"), None] {
        let headers: Vec<(&str, &str)> = ua.map(|u| ("User-Agent", u)).into_iter().collect();
        let r = conn.request("GET", &path, &headers, b"");
        assert_eq!((r.status(), r.challenges()), (401, BOTH.to_vec()), "{ua:?}");
    }
    // Communicator completes NTLM there.
    let (r, _) = handshake(
        &mut conn,
        "NTLM",
        "GET",
        &path,
        &alice(e),
        &[("User-Agent", communicator)],
        b"",
    );
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body_line("x_kcd_user").as_deref(), Some(ALICE));
}

#[test]
fn first_challenges_carry_no_token_data() {
    let e = env();
    let mut conn = connect(e);
    let r = conn.request("POST", "/public/echo/first", &[], b"x");
    assert_eq!(r.status(), 401);
    assert_eq!(r.challenges(), BOTH);
    assert!(!r.connection_close(), "{r:?}");
    assert!(r.header("persistent-auth").is_none());
}

// ---------------------------------------------------------------- WinINET and .NET sequences

#[test]
fn wininet_empty_post_on_an_authenticated_connection_is_challenged_then_sent_once() {
    let e = env();
    let client = alice(e);
    let mut conn = connect(e);
    let first = format!("/public/echo/{}", nonce("wininet-first"));
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &first, &client, &[], b"");
    assert_eq!(r.status(), 200, "{r:?}");

    // The connection is authenticated; WinINET expects a 401 for this protection space and
    // sends an empty POST with a fresh NEGOTIATE.
    let path = format!("/public/echo/{}", nonce("wininet-post"));
    let body: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let neg = client.negotiate();
    let r1 = conn.request(
        "POST",
        &path,
        &[("Authorization", &auth_header("NTLM", &neg))],
        b"",
    );
    assert_eq!(
        r1.status(),
        401,
        "the empty POST must be challenged, not forwarded: {r1:?}"
    );
    assert!(!r1.connection_close());
    let challenge = r1.token("NTLM").expect("NTLM challenge");
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let r2 = conn.request(
        "POST",
        &path,
        &[("Authorization", &auth_header("NTLM", &auth))],
        &body,
    );
    assert_eq!(r2.status(), 200, "{r2:?}");
    assert_eq!(r2.body_line("x_kcd_user").as_deref(), Some(ALICE));
    assert_eq!(r2.body_line("body_length"), Some(body.len().to_string()));
    assert_eq!(r2.body_line("body_sha256"), Some(sha256_hex(&body)));

    // Exactly one POST reached the backend, the full one; the proxy logged the 401 and the 200.
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 1, Duration::from_millis(300)),
        1
    );
    let lines = e.proxy.access_lines(&path, 2);
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let forwarded: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(" backend=- "))
        .collect();
    assert_eq!(forwarded.len(), 1, "{lines:#?}");
    assert!(forwarded[0].contains(" status=200 "), "{lines:#?}");
}

#[test]
fn dotnet_expect_100_continue_sequence() {
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("expect"));
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 13) as u8).collect();
    let expect = ("Expect", "100-continue");
    let mut conn = connect(e);

    // NEGOTIATE with Expect: a final 401, not 100 (the body is not sent).
    let neg = client.negotiate();
    let h = auth_header("NTLM", &neg);
    conn.send_head(
        "POST",
        &path,
        &[("Authorization", &h), expect],
        Some(body.len()),
    );
    let r1 = conn.read_response().unwrap();
    assert_eq!(r1.status(), 401, "{r1:?}");
    assert!(!r1.connection_close(), "{r1:?}");
    let challenge = r1.token("NTLM").expect("NTLM challenge");

    // AUTHENTICATE with Expect: 100 Continue, then the body, then the backend's answer.
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let h = auth_header("NTLM", &auth);
    conn.send_head(
        "POST",
        &path,
        &[("Authorization", &h), expect],
        Some(body.len()),
    );
    let r2 = conn.read_response().unwrap();
    assert_eq!(r2.status(), 100, "{r2:?}");
    conn.send(&body);
    let r3 = conn.read_response().unwrap();
    assert_eq!(r3.status(), 200, "{r3:?}");
    assert_eq!(r3.body_line("x_kcd_user").as_deref(), Some(ALICE));
    assert_eq!(r3.body_line("body_length"), Some(body.len().to_string()));
    assert_eq!(r3.body_line("body_sha256"), Some(sha256_hex(&body)));
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 1, Duration::from_millis(300)),
        1
    );
}

#[test]
fn an_unauthenticated_expect_request_gets_a_final_401() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("expect-anon"));
    let mut conn = connect(e);
    conn.send_head("POST", &path, &[("Expect", "100-continue")], Some(5000));
    let r = conn.read_response().unwrap();
    assert_eq!(r.status(), 401, "a final 401, never 100 Continue: {r:?}");
    assert_eq!(r.challenges(), BOTH);
    assert!(!r.connection_close(), "{r:?}");
    // A client that sends the body anyway: the proxy drops it and reads the next request.
    conn.send(&[b'z'; 5000]);
    let r = conn.request("GET", &path, &[], b"");
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 0, Duration::from_millis(200)),
        0
    );
}

// ---------------------------------------------------------------- refusals

#[test]
fn authenticate_on_another_connection_is_refused() {
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("other-conn"));
    let mut a = connect(e);
    let neg = client.negotiate();
    let r = a.request(
        "GET",
        &path,
        &[("Authorization", &auth_header("NTLM", &neg))],
        b"",
    );
    let challenge = r.token("NTLM").expect("challenge");
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let h = auth_header("NTLM", &auth);

    let mut b = connect(e);
    let r = b.request("GET", &path, &[("Authorization", &h)], b"");
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.challenges(), BOTH, "a fresh 401: {r:?}");
    assert_eq!(
        backend_hits(e.lab, "GET", &path, 0, Duration::from_millis(200)),
        0
    );
    // The attempt elsewhere did not use up connection A's challenge.
    let r = a.request("GET", &path, &[("Authorization", &h)], b"");
    assert_eq!(r.status(), 200, "{r:?}");
}

#[test]
fn a_wrong_password_is_refused() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("wrong-pw"));
    let mut conn = connect(e);
    let wrong = NtlmClient::new("alice", "EXAMPLE", "Not-Alice-Pw");
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &path, &wrong, &[], b"");
    assert_eq!(r.status(), 401, "{r:?}");
    assert_eq!(r.challenges(), BOTH);
    assert!(!r.connection_close());
    let lines = e.proxy.access_lines_until(&path, |ls| {
        ls.iter().any(|l| l.contains("ntlm_wrong_password"))
    });
    assert!(
        lines.iter().any(|l| l.contains("ntlm_wrong_password")),
        "the log says why: {lines:#?}"
    );
    // Whatever the message claims: no MIC, no key exchange, the legacy layout.
    let mut forged = wrong.clone();
    forged.mic = MicMode::None;
    forged.key_exch = false;
    forged.legacy_layout = true;
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &path, &forged, &[], b"");
    assert_eq!(r.status(), 401, "{r:?}");
    // curl too.
    let url = format!("http://{}{path}", e.proxy.addr());
    let out = curl(&[
        "--ntlm",
        "-u",
        "EXAMPLE\\alice:wrong",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]);
    assert_eq!(out.stdout, "401");
    assert_eq!(
        backend_hits(e.lab, "GET", &path, 0, Duration::from_millis(200)),
        0
    );
}

#[test]
fn a_replayed_authenticate_is_refused() {
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("replay"));
    let mut a = connect(e);
    let (r, auth) = handshake(&mut a, "NTLM", "GET", &path, &client, &[], b"");
    assert_eq!(r.status(), 200);
    let replay = auth_header("NTLM", &auth);
    let replay_path = format!("{path}-again");

    // (1) The same bytes again on the same connection.
    let r = a.request("GET", &replay_path, &[("Authorization", &replay)], b"");
    assert_eq!(r.status(), 401, "same connection: {r:?}");
    // (2) After a fresh NEGOTIATE on the same connection.
    let neg = auth_header("NTLM", &client.negotiate());
    let r = a.request("GET", &replay_path, &[("Authorization", &neg)], b"");
    assert_eq!(r.status(), 401);
    let r = a.request("GET", &replay_path, &[("Authorization", &replay)], b"");
    assert_eq!(r.status(), 401, "same connection, new challenge: {r:?}");
    // (3) On another connection after a fresh NEGOTIATE.
    let mut b = connect(e);
    let r = b.request("GET", &replay_path, &[("Authorization", &neg)], b"");
    assert_eq!(r.status(), 401);
    let r = b.request("GET", &replay_path, &[("Authorization", &replay)], b"");
    assert_eq!(r.status(), 401, "other connection: {r:?}");
    assert_eq!(
        backend_hits(e.lab, "GET", &replay_path, 0, Duration::from_millis(200)),
        0
    );
}

#[test]
fn the_connection_keeps_its_identity_until_a_new_authorization_restarts() {
    let e = env();
    let path = format!("/public/echo/{}", nonce("keep"));
    let mut conn = connect(e);
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &path, &alice(e), &[], b"");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.header("persistent-auth"),
        Some("true"),
        "on the final response"
    );
    for i in 0..3 {
        let r = conn.request("POST", &path, &[], format!("request {i}").as_bytes());
        assert_eq!(r.status(), 200, "{r:?}");
        assert_eq!(r.body_line("x_kcd_user").as_deref(), Some(ALICE));
        assert!(
            r.header("persistent-auth").is_none(),
            "only on the final response"
        );
    }
    // A new Authorization restarts: bob logs in on the same connection.
    let bob = NtlmClient::new("bob", "EXAMPLE", &e.lab.bob.password);
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &path, &bob, &[], b"");
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(
        r.body_line("x_kcd_user").as_deref(),
        Some("bob@EXAMPLE.TEST")
    );
    let r = conn.request("GET", &path, &[], b"");
    assert_eq!(
        r.body_line("x_kcd_user").as_deref(),
        Some("bob@EXAMPLE.TEST")
    );
    // A failed restart leaves the connection anonymous.
    let wrong = NtlmClient::new("alice", "EXAMPLE", "wrong");
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &path, &wrong, &[], b"");
    assert_eq!(r.status(), 401);
    let r = conn.request("GET", &path, &[], b"");
    assert_eq!(r.status(), 401, "{r:?}");
}

#[test]
fn a_32_kb_authorization_header_is_read_and_refused() {
    let e = env();
    let mut conn = connect(e);
    let junk: Vec<u8> = (0..24_000u32).map(|i| (i * 7 % 256) as u8).collect();
    for scheme in ["Negotiate", "NTLM"] {
        let h = auth_header(scheme, &junk);
        assert!(h.len() >= 32_000, "{}", h.len());
        let r = conn.request(
            "GET",
            "/public/echo/big-header",
            &[("Authorization", &h)],
            b"",
        );
        assert_eq!(r.status(), 401, "{scheme}: read, not 431: {r:?}");
        assert_eq!(r.challenges(), BOTH);
        assert!(!r.connection_close());
    }
}

// ---------------------------------------------------------------- what reaches the backend

#[test]
fn the_backend_gets_the_identity_header_and_never_the_clients_authorization() {
    let e = env();
    let n = nonce("hdr");
    let forged = ("X-Kcd-User", "mallory@EVIL.TEST");
    let mut conn = connect(e);

    let p1 = format!("/hdr/{n}-handshake");
    let (r, _) = handshake(&mut conn, "NTLM", "GET", &p1, &alice(e), &[forged], b"");
    assert_eq!(r.status(), 200, "{r:?}");
    let heads = e.recorder.heads_for(&p1);
    assert_eq!(
        heads.len(),
        1,
        "only the authenticated request arrives: {heads:#?}"
    );
    assert!(
        head_values(&heads[0], "authorization").is_empty(),
        "{}",
        heads[0]
    );
    assert_eq!(
        head_values(&heads[0], "x-kcd-user"),
        [ALICE],
        "{}",
        heads[0]
    );

    // Later requests on the connection: still alice, forged copies (two of them) dropped.
    let p2 = format!("/hdr/{n}-later");
    let r = conn.request("GET", &p2, &[forged, ("x-kcd-user", "second")], b"");
    assert_eq!(r.status(), 200);
    let heads = e.recorder.heads_for(&p2);
    assert_eq!(
        head_values(&heads[0], "x-kcd-user"),
        [ALICE],
        "{}",
        heads[0]
    );

    // An anonymous route: a forged identity never passes either.
    let p3 = format!("/hdr-anon/{n}");
    let r = conn.request("GET", &p3, &[forged], b"");
    assert_eq!(r.status(), 200);
    let heads = e.recorder.heads_for(&p3);
    assert!(
        head_values(&heads[0], "x-kcd-user").is_empty(),
        "{}",
        heads[0]
    );

    // Basic over TLS: the password stays at the proxy.
    let p4 = format!("/hdr-basic/{n}");
    let (url, resolve) = tls_url(e, &p4);
    let ca = e.lab.pki.ca.display().to_string();
    let user = format!("alice:{}", e.lab.alice.password);
    let out = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--basic",
        "-u",
        &user,
        "-H",
        "X-Kcd-User: mallory@EVIL.TEST",
        &url,
    ]);
    assert!(
        out.ok && out.stdout == "recorded\n",
        "{} {}",
        out.stdout,
        out.stderr
    );
    let heads = e.recorder.heads_for(&p4);
    assert!(
        head_values(&heads[0], "authorization").is_empty(),
        "{}",
        heads[0]
    );
    assert_eq!(
        head_values(&heads[0], "x-kcd-user"),
        [ALICE],
        "{}",
        heads[0]
    );
}

// ---------------------------------------------------------------- handshakes with bodies and HEAD

#[test]
fn a_head_request_gets_a_bodiless_401_and_authenticates() {
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("head"));
    let mut conn = connect(e);
    conn.send_head("HEAD", &path, &[], None);
    let r = conn.read_response().unwrap();
    assert_eq!((r.status(), r.challenges()), (401, BOTH.to_vec()));
    let neg = client.negotiate();
    conn.send_head(
        "HEAD",
        &path,
        &[("Authorization", &auth_header("NTLM", &neg))],
        None,
    );
    let r = conn.read_response().unwrap();
    assert_eq!(r.status(), 401, "{r:?}");
    let challenge = r.token("NTLM").expect("challenge");
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    conn.send_head(
        "HEAD",
        &path,
        &[("Authorization", &auth_header("NTLM", &auth))],
        None,
    );
    let r = conn.read_response().unwrap();
    assert_eq!(
        r.status(),
        200,
        "a 401 to HEAD must carry no body, or this reads it: {r:?}"
    );
    // And the connection is still in step.
    let r = conn.request("GET", &path, &[], b"");
    assert_eq!(r.body_line("x_kcd_user").as_deref(), Some(ALICE), "{r:?}");
}

#[test]
fn a_large_body_sent_with_the_negotiate_does_not_cost_the_connection() {
    // Clients that resend the whole request on every leg (requests-ntlm, SOAP stacks without
    // Expect) send the body with their NEGOTIATE too: the CHALLENGE must still keep the
    // connection, or the AUTHENTICATE can never arrive where it has to.
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("big-negotiate"));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let mut conn = connect(e);
    let neg = client.negotiate();
    let r = conn.request(
        "POST",
        &path,
        &[("Authorization", &auth_header("NTLM", &neg))],
        &body,
    );
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(
        !r.connection_close(),
        "the CHALLENGE closed the connection: {r:?}"
    );
    let challenge = r.token("NTLM").expect("challenge");
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let r = conn.request(
        "POST",
        &path,
        &[("Authorization", &auth_header("NTLM", &auth))],
        &body,
    );
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body_line("body_sha256"), Some(sha256_hex(&body)));
    assert_eq!(
        backend_hits(e.lab, "POST", &path, 1, Duration::from_millis(300)),
        1
    );
}

#[test]
fn a_chunked_body_sent_with_the_negotiate_does_not_cost_the_connection() {
    let e = env();
    let client = alice(e);
    let path = format!("/public/echo/{}", nonce("chunked-negotiate"));
    let chunked = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let mut conn = connect(e);
    let neg = client.negotiate();
    let h = auth_header("NTLM", &neg);
    conn.send_head(
        "POST",
        &path,
        &[("Authorization", &h), ("Transfer-Encoding", "chunked")],
        None,
    );
    conn.send(chunked);
    let r = conn.read_response().unwrap();
    assert_eq!(r.status(), 401, "{r:?}");
    assert!(
        !r.connection_close(),
        "the CHALLENGE closed the connection: {r:?}"
    );
    let challenge = r.token("NTLM").expect("challenge");
    let auth = client.authenticate(&neg, &challenge).unwrap().message;
    let h = auth_header("NTLM", &auth);
    conn.send_head(
        "POST",
        &path,
        &[("Authorization", &h), ("Transfer-Encoding", "chunked")],
        None,
    );
    conn.send(chunked);
    let r = conn.read_response().unwrap();
    assert_eq!(r.status(), 200, "{r:?}");
    assert_eq!(r.body_line("body_length").as_deref(), Some("11"));
}
