//! Tests of the test fixtures themselves, without the proxy: the echo origin (through the raw
//! client and through curl, plain and TLS), the byte pattern, the access-log parser and the
//! proxy launcher's failure reporting. When a proxy test fails, these say whether the fixture
//! can be trusted.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::certs;
use common::client::{Client, Framing};
use common::curl::curl;
use common::echo::Echo;
use common::proxy::{LogLine, Proxy};
use common::{pattern, sha256_hex};

#[test]
fn echo_keeps_alive_and_reports_the_request() {
    let echo = Echo::start();
    let mut c = Client::connect(echo.port());
    let r1 = c.request(
        "GET",
        "/a?x=1",
        &[("X-One", "1"), ("X-Two", "two words")],
        b"",
    );
    let r2 = c.request("POST", "/b", &[("Content-Type", "text/plain")], b"hello");
    let r3 = c.request(
        "RPC_IN_DATA",
        "/rpc/rpcproxy.dll?srv:6001",
        &[],
        b"12345678",
    );
    for r in [&r1, &r2, &r3] {
        assert_eq!(r.status(), 200, "{}", r.summary());
    }
    let j1 = r1.json();
    assert_eq!(j1["method"], "GET");
    assert_eq!(j1["target"], "/a?x=1");
    assert_eq!(j1["framing"], "none");
    assert_eq!(
        j1["headers"],
        serde_json::json!([["Host", "kcd.test"], ["X-One", "1"], ["X-Two", "two words"]])
    );
    let j2 = r2.json();
    assert_eq!(j2["body_len"], 5);
    assert_eq!(j2["pattern_mismatch"], 0, "hello is not the pattern");
    assert_eq!(j2["body_sha256"], sha256_hex(b"hello"));
    assert_eq!(
        r2.header("X-Echo-Body-Sha256"),
        Some(sha256_hex(b"hello").as_str())
    );
    let j3 = r3.json();
    assert_eq!(j3["method"], "RPC_IN_DATA");
    assert_eq!(j3["conn_request"], 3);
    assert_eq!(j3["connection"], 1);
    assert_eq!(echo.connections(), 1);
    assert_eq!(echo.requests(), 3);
}

#[test]
fn echo_decodes_chunked_requests_itself() {
    let echo = Echo::start();
    let mut c = Client::connect(echo.port());
    let body = pattern::bytes(5000);
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: kcd.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(b"1;ext=1\r\n");
    req.extend_from_slice(&body[..1]);
    req.extend_from_slice(b"\r\nFA0\r\n");
    req.extend_from_slice(&body[1..4001]);
    req.extend_from_slice(format!("\r\n{:x}\r\n", 999).as_bytes());
    req.extend_from_slice(&body[4001..]);
    req.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    c.send(&req);
    let r = c.read_final().unwrap();
    let j = r.json();
    assert_eq!(j["framing"], "chunked");
    assert_eq!(j["pattern_mismatch"], serde_json::Value::Null);
    assert_eq!(j["body_len"], 5000);
    assert_eq!(j["body_sha256"], sha256_hex(&body));
    assert_eq!(j["trailers"], serde_json::json!([["X-Trailer", "t"]]));
    // Still usable afterwards.
    assert_eq!(c.get("/again").status(), 200);
}

#[test]
fn echo_rejects_framing_a_proxy_must_never_forward() {
    let echo = Echo::start();
    for (what, req) in [
        (
            "CL+TE",
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        ),
        (
            "bad chunk size",
            &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
        ),
        (
            "differing CL",
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
        ),
        ("obs-fold", &b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"[..]),
    ] {
        let mut c = Client::connect(echo.port());
        c.send(req);
        let r = c.read_final().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.status(), 400, "{what}: {}", r.summary());
        assert!(r.header("X-Echo-Error").is_some(), "{what}: {}", r.summary());
        c.wait_closed(Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_eq!(echo.requests(), 0);
}

#[test]
fn echo_downloads_stream_the_pattern() {
    let echo = Echo::start();
    let mut c = Client::connect(echo.port());
    for (target, framing) in [
        ("/download?bytes=300001", Framing::Length(300_001)),
        (
            "/download?bytes=300001&chunked=1&chunk=1000",
            Framing::Chunked,
        ),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
        let head = c.read_head().unwrap();
        assert_eq!(head.framing, framing, "{target}");
        let mut off = 0u64;
        let mut bad = None;
        c.read_body_with(&head, &mut |b| {
            if bad.is_none() {
                bad = pattern::check(off, b).err();
            }
            off += b.len() as u64;
        })
        .unwrap();
        assert_eq!(off, 300_001, "{target}");
        assert_eq!(bad, None, "{target}: first wrong byte");
        assert_eq!(
            head.header("X-Body-Sha256"),
            Some(sha256_hex(&pattern::bytes(300_001)).as_str())
        );
    }
    assert_eq!(echo.connections(), 1);
}

#[test]
fn echo_close_delimited_and_chunked_echo() {
    let echo = Echo::start();
    let mut c = Client::connect(echo.port());
    let r = c.get("/chunked-echo?x=1");
    assert_eq!(r.head.framing, Framing::Chunked);
    assert_eq!(r.json()["target"], "/chunked-echo?x=1");
    let r = c.get("/close?bytes=70000");
    assert_eq!(r.head.framing, Framing::Close);
    assert_eq!(r.body, pattern::bytes(70000));
    c.wait_closed(Duration::from_secs(2)).unwrap();
    let mut c = Client::connect(echo.port());
    let r = c.get("/close");
    assert_eq!(r.json()["target"], "/close");
}

#[test]
fn echo_status_slow_drip_and_garbage() {
    let echo = Echo::start();
    let mut c = Client::connect(echo.port());
    let r = c.get("/status/503");
    assert_eq!(r.status(), 503);
    assert_eq!(r.json()["target"], "/status/503");
    let r = c.get("/status/204");
    assert_eq!((r.status(), r.body.len()), (204, 0));
    let t = Instant::now();
    assert_eq!(c.get("/slow?ms=300").status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));

    // Drip: the first chunk arrives long before the last.
    c.send(b"GET /drip?chunks=3&ms=400&size=10 HTTP/1.1\r\nHost: a\r\n\r\n");
    let t = Instant::now();
    let head = c.read_head().unwrap();
    let mut arrivals = Vec::new();
    c.read_body_with(&head, &mut |b| arrivals.push((t.elapsed(), b.len())))
        .unwrap();
    assert!(arrivals[0].0 < Duration::from_millis(300), "{arrivals:?}");
    assert!(t.elapsed() >= Duration::from_millis(800), "{arrivals:?}");

    let mut c = Client::connect(echo.port());
    c.send(b"GET /garbage HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(c.read_final().is_err());
}

#[test]
fn echo_hop_by_hop_endpoint_sends_the_headers_to_strip() {
    let echo = Echo::start();
    let r = Client::connect(echo.port()).get("/hop");
    for h in [
        "Keep-Alive",
        "X-Resp-Hop",
        "Proxy-Connection",
        "Upgrade",
        "X-Resp-Keep",
    ] {
        assert!(r.header(h).is_some(), "{h}: {}", r.summary());
    }
}

#[test]
fn echo_speaks_http_that_curl_understands() {
    let echo = Echo::start();
    let dir = common::TempDir::new("curl");
    let file = dir.join("body.bin");
    let body = pattern::bytes(2 << 20);
    std::fs::write(&file, &body).unwrap();
    let url = format!("http://127.0.0.1:{}/upload", echo.port());
    let data = format!("@{}", file.display());
    let cr = curl(&[
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "5",
        "--data-binary",
        &data,
        &url,
        &url,
    ]);
    assert!(cr.ok, "{}", cr.stderr);
    assert!(cr.stderr.contains("HTTP/1.1 100 Continue"), "{}", cr.stderr);
    // Two JSON documents, one per line (the second request reused the connection).
    let docs = cr.json_docs();
    assert_eq!(docs.len(), 2, "{}", cr.stdout);
    for d in &docs {
        assert_eq!(d["body_len"], 2 << 20);
        assert_eq!(d["body_sha256"], sha256_hex(&body));
    }
    assert_eq!(echo.connections(), 1, "{}", cr.stderr);

    let cr = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(cr.ok, "{}", cr.stderr);
    let d = &cr.json_docs()[0];
    assert_eq!(d["framing"], "chunked");
    assert_eq!(d["body_sha256"], sha256_hex(&body));
}

#[test]
fn echo_tls_mode_is_trusted_via_the_test_ca() {
    let c = certs();
    let echo = Echo::start_tls(&c.localhost);
    assert!(echo.url().starts_with("https://127.0.0.1:"));
    let ca = c.ca.display().to_string();
    let url = format!("{}/tls?x=1", echo.url());
    let cr = curl(&["--cacert", &ca, &url, &url]);
    assert!(cr.ok, "{}", cr.stderr);
    let docs = cr.json_docs();
    assert_eq!(docs.len(), 2, "{}", cr.stdout);
    let d = &docs[0];
    assert_eq!(d["target"], "/tls?x=1");
    assert_eq!(echo.connections(), 1);

    // The alt.test certificate verifies for its name only.
    let alt = Echo::start_tls(&c.alt);
    let resolve = format!("alt.test:{}:127.0.0.1", alt.port());
    let url = format!("https://alt.test:{}/", alt.port());
    let cr = curl(&["--cacert", &ca, "--resolve", &resolve, &url]);
    assert!(cr.ok, "{}", cr.stderr);

    // The rogue certificate does not verify against the test CA.
    let rogue = Echo::start_tls(&c.rogue);
    let url = format!("{}/", rogue.url());
    let cr = curl(&["--cacert", &ca, &url]);
    assert!(!cr.ok, "curl trusted the rogue certificate: {}", cr.stderr);
}

#[test]
fn pattern_is_position_dependent() {
    let all = pattern::bytes(20_000);
    let mut part = vec![0u8; 7001];
    pattern::fill(4099, &mut part);
    assert_eq!(&all[4099..11100], &part[..]);
    assert_eq!(pattern::check(4099, &part), Ok(()));
    // Blocks never repeat: 4 KiB apart differs.
    assert_ne!(&all[0..4096], &all[4096..8192]);
    let mut bad = part.clone();
    bad[5000] ^= 1;
    assert_eq!(pattern::check(4099, &bad), Err(9099));
    let mut pieces = Vec::new();
    pattern::for_each_piece(20_000, 3000, |p| pieces.extend_from_slice(p));
    assert_eq!(pieces, all);
}

#[test]
fn access_log_parser() {
    let l = LogLine::parse(
        r#"ts=2024-01-01T00:00:00Z method=GET path="/a b" status=200 bytes_in=0 ua="x \"q\" y" reason=-"#,
    )
    .unwrap();
    assert_eq!(l.get("method"), Some("GET"));
    assert_eq!(l.path(), Some("/a b"));
    assert_eq!(l.status(), Some(200));
    assert_eq!(l.num("bytes_in"), Some(0));
    assert_eq!(l.get("ua"), Some(r#"x "q" y"#));
    l.assert_status_reason(200, "-");
    assert!(LogLine::parse("novalue").is_err());
    assert!(LogLine::parse("k=\"open").is_err());
}

#[test]
fn proxy_launcher_reports_a_failed_start_with_stderr() {
    let err = match Proxy::try_start(&["--route", "no-equals-sign"], &[]) {
        Ok(_) => panic!("kcdproxy started with an invalid route"),
        Err(e) => e,
    };
    assert!(err.contains("exited"), "{err}");
    // The launcher's message carries the proxy's stderr, which names the bad route.
    assert!(err.contains("--- stderr ---"), "{err}");
    assert!(
        err.matches("no-equals-sign").count() >= 2,
        "stderr should name the bad route: {err}"
    );
}

#[test]
fn proxy_check_config_accepts_the_test_flags() {
    let echo = Echo::start();
    let c = certs();
    let out = Command::new(env!("CARGO_BIN_EXE_kcdproxy"))
        .args([
            "--check-config",
            "--listen",
            "127.0.0.1:1",
            "--listen-tls",
            "127.0.0.1:2",
        ])
        .args(["--tls-cert", c.localhost.cert.to_str().unwrap()])
        .args(["--tls-key", c.localhost.key.to_str().unwrap()])
        .args(["--tls-cert", c.alt.cert.to_str().unwrap()])
        .args(["--tls-key", c.alt.key.to_str().unwrap()])
        .args(["--route", &echo.route()])
        .args(["--route", "/tls=https://127.0.0.1:9"])
        .args(["--backend-ca", c.ca.to_str().unwrap()])
        .args([
            "--workers",
            "2",
            "--header-timeout",
            "2s",
            "--backend-timeout",
            "2s",
        ])
        .args(["--access-log-format", "text"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ports_are_never_handed_out_twice_and_listeners_are_attributed() {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let [a, b] = common::free_ports::<2>();
        assert!(seen.insert(a) && seen.insert(b), "port handed out twice");
    }
    // The SO_REUSEPORT guard of the launcher: our own listener is found and is ours.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let listening = common::listening_inodes(port);
    assert_eq!(listening.len(), 1, "{listening:?}");
    let ours = common::socket_inodes_of(std::process::id() as i32);
    assert!(
        ours.contains(&listening[0]),
        "{listening:?} not in {ours:?}"
    );
    drop(l);
    assert!(common::listening_inodes(port).is_empty());
}
