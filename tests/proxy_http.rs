//! HTTP/1.1 proxying through the real binary to the echo origin: keep-alive on both legs,
//! backend connection reuse, body framings (Content-Length, chunked, close-delimited) both ways,
//! custom methods (RPC over HTTP), `Expect: 100-continue`, and header rewriting (hop-by-hop
//! removal, X-Forwarded-*, Via).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{Client, Framing};
use common::echo::Echo;
use common::proxy::{LogLine, Proxy};
use common::{pattern, sha256_hex};

/// An echo origin and a proxy routing everything to it.
fn setup(extra: &[&str]) -> (Echo, Proxy) {
    let echo = Echo::start();
    let route = echo.route();
    let mut args = vec!["--route", route.as_str(), "--backend-timeout", "5s"];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    (echo, proxy)
}

/// The values of header `name` the backend received, in order.
fn backend_header_values(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"]
        .as_array()
        .expect("echo JSON has headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .map(|h| h[1].as_str().unwrap_or_default().to_string())
        .collect()
}

fn assert_fine(line: &LogLine, status: u16) {
    line.assert_status_reason(status, "-");
}

#[test]
fn keep_alive_get_post_head_on_one_connection_reuse_one_backend_connection() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let body = pattern::bytes(10_000);

    let r = c.get("/ka/1?q=1");
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["method"], "GET");
    assert_eq!(j["target"], "/ka/1?q=1");

    let r = c.request(
        "POST",
        "/ka/2",
        &[("Content-Type", "application/octet-stream")],
        &body,
    );
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(
        (j["method"].as_str(), j["body_len"].as_u64()),
        (Some("POST"), Some(10_000))
    );
    assert_eq!(j["body_sha256"], sha256_hex(&body));

    // Body-less POST (what WinINET sends before authenticating).
    let r = c.request("POST", "/ka/3", &[], b"");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["body_len"], 0);

    // HEAD: the response announces a length but has no body; the proxy must not wait for one.
    let r = c.request("HEAD", "/ka/4", &[], b"");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert!(r.body.is_empty());

    let r = c.get("/ka/5");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert!(!r.head.connection_close(), "{}", r.summary());

    assert_eq!(echo.requests(), 5);
    assert_eq!(
        echo.connections(),
        1,
        "5 sequential requests on one client connection should reuse one backend connection"
    );
    assert_eq!(r.header("X-Echo-Conn-Request"), Some("5"));

    for (path, method) in [
        ("/ka/1", "GET"),
        ("/ka/2", "POST"),
        ("/ka/3", "POST"),
        ("/ka/4", "HEAD"),
        ("/ka/5", "GET"),
    ] {
        let l = proxy.wait_log_path(path);
        assert_fine(&l, 200);
        assert_eq!(l.get("method"), Some(method), "{}", l.raw);
        assert!(
            l.get("backend")
                .is_some_and(|b| b.contains(&echo.port().to_string())),
            "backend= should name the echo server: {}",
            l.raw
        );
        assert!(
            l.get("duration_ms")
                .is_some_and(|d| d.parse::<f64>().is_ok()),
            "{}",
            l.raw
        );
    }
    let l = proxy.wait_log_path("/ka/2");
    assert!(l.num("bytes_in").is_some_and(|n| n >= 10_000), "{}", l.raw);
    let l = proxy.wait_log_path("/ka/1");
    assert!(l.num("bytes_out").is_some_and(|n| n > 0), "{}", l.raw);
}

#[test]
fn sequential_client_connections_share_pooled_backend_connections() {
    let (echo, proxy) = setup(&[]);
    for i in 0..8 {
        let mut c = proxy.client();
        let r = c.request(
            "GET",
            &format!("/pool/{i}"),
            &[("Connection", "close")],
            b"",
        );
        assert_eq!(r.status(), 200, "{}", r.summary());
        // The proxy closes the client connection; the backend connection goes back to the pool.
        c.wait_closed(Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("after Connection: close: {e}"));
    }
    assert_eq!(echo.requests(), 8);
    assert!(
        echo.connections() <= 2,
        "8 sequential requests over 2 workers opened {} backend connections (expected ≤ 2: one \
         pooled connection per worker)",
        echo.connections()
    );
}

#[test]
fn chunked_request_reaches_the_backend_intact() {
    let (echo, proxy) = setup(&[]);
    let body = pattern::bytes(300_000);
    let mut c = proxy.client();
    let mut req =
        b"POST /chunked-up HTTP/1.1\r\nHost: kcd.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut off = 0;
    for (i, size) in [1usize, 15, 4096, 100_000, 7, 65_536]
        .iter()
        .cycle()
        .enumerate()
    {
        if off == body.len() {
            break;
        }
        let n = (*size).min(body.len() - off);
        // Mix upper/lower-case hex and a chunk extension.
        let size_line = if i % 2 == 0 {
            format!("{n:X}\r\n")
        } else {
            format!("{n:x};name=value\r\n")
        };
        req.extend_from_slice(size_line.as_bytes());
        req.extend_from_slice(&body[off..off + n]);
        req.extend_from_slice(b"\r\n");
        off += n;
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // Send in odd slices so chunk boundaries straddle reads.
    for piece in req.chunks(9_999) {
        c.send(piece);
    }
    let r = c.read_final().unwrap();
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["body_len"], 300_000, "{}", r.summary());
    assert_eq!(j["body_sha256"], sha256_hex(&body));
    // Still in sync: another request on the same connection.
    let r = c.get("/after-chunked");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(echo.requests(), 2);
    assert_fine(&proxy.wait_log_path("/chunked-up"), 200);
}

#[test]
fn chunked_responses_pass_through() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.send(b"GET /download?bytes=1000003&chunked=1&chunk=5000 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    let head = c.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.framing, Framing::Chunked, "{:?}", head.headers);
    let mut off = 0u64;
    let mut bad = None;
    c.read_body_with(&head, &mut |b| {
        if bad.is_none() {
            bad = pattern::check(off, b).err();
        }
        off += b.len() as u64;
    })
    .unwrap();
    assert_eq!((off, bad), (1_000_003, None), "(length, first wrong byte)");

    let r = c.get("/chunked-echo");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/chunked-echo");
    assert_fine(&proxy.wait_log_path("/download"), 200);
}

#[test]
fn chunked_response_is_streamed_not_buffered() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let t = Instant::now();
    c.send(b"GET /drip?chunks=4&ms=600&size=64 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    let head = c.read_head().unwrap();
    let mut arrivals = Vec::new();
    c.read_body_with(&head, &mut |b| arrivals.push((t.elapsed(), b.len())))
        .unwrap();
    let total: usize = arrivals.iter().map(|a| a.1).sum();
    assert_eq!(total, 256);
    assert!(
        arrivals[0].0 < Duration::from_millis(1000),
        "the first chunk (sent by the backend at once) reached the client only after {:?}: the \
         response is buffered; arrivals {arrivals:?}",
        arrivals[0].0
    );
    assert!(t.elapsed() >= Duration::from_millis(1800), "{arrivals:?}");
}

#[test]
fn close_delimited_backend_response_reaches_an_http11_client() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let r = c.get("/close?bytes=250000");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.body.len(), 250_000);
    assert_eq!(pattern::check(0, &r.body), Ok(()));
    assert_eq!(
        r.head.framing,
        Framing::Chunked,
        "a close-delimited backend body should be re-framed as chunked for an HTTP/1.1 client"
    );
    // Re-framed, the client connection survives, and the closed backend connection is not
    // reused.
    let r = c.get("/close");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/close");
    let r = c.get("/after-close");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(echo.connections(), 3);
    assert_fine(&proxy.wait_log_path("/close"), 200);
}

#[test]
fn rpc_over_http_methods_are_proxied() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let body = pattern::bytes(128 * 1024);
    let r = c.request(
        "RPC_IN_DATA",
        "/rpc/rpcproxy.dll?exch01.example.com:6001",
        &[("Accept", "application/rpc")],
        &body,
    );
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["method"], "RPC_IN_DATA");
    assert_eq!(j["target"], "/rpc/rpcproxy.dll?exch01.example.com:6001");
    assert_eq!(j["body_sha256"], sha256_hex(&body));

    // An RPC echo request: a tiny body that must not wait for more bytes.
    let r = c.request(
        "RPC_OUT_DATA",
        "/rpc/rpcproxy.dll?exch01.example.com:6001",
        &[],
        b"ECHO",
    );
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["method"], "RPC_OUT_DATA");
    assert_eq!(r.json()["body_len"], 4);

    let l = proxy.wait_log_path("/rpc/rpcproxy.dll");
    assert_eq!(l.get("method"), Some("RPC_IN_DATA"), "{}", l.raw);
    assert_fine(&l, 200);
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy_and_stripped() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.send(
        b"PUT /expect/1 HTTP/1.1\r\nHost: kcd.test\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    );
    // The client waits (up to 3 s) for 100 Continue before sending the body.
    c.set_read_timeout(Duration::from_secs(3));
    let interim = c
        .read_response()
        .unwrap_or_else(|e| panic!("no 100 Continue before the body was sent: {e}"));
    assert_eq!(interim.status(), 100, "{}", interim.summary());
    c.set_read_timeout(common::IO_TIMEOUT);
    c.send(b"hello world");
    let r = c.read_final().unwrap();
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["body_len"], 11);
    assert_eq!(
        backend_header_values(&j, "expect"),
        Vec::<String>::new(),
        "Expect must not reach the backend"
    );

    // A client that sends the body without waiting also works (100 may or may not come).
    c.send(
        b"POST /expect/2 HTTP/1.1\r\nHost: kcd.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nabcde",
    );
    let r = c.read_final().unwrap();
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["body_sha256"], sha256_hex(b"abcde"));
    assert!(r.interim.iter().all(|s| *s == 100), "{:?}", r.interim);
    assert_eq!(echo.requests(), 2);
    assert_fine(&proxy.wait_log_path("/expect/1"), 200);
}

#[test]
fn expect_100_continue_with_curl() {
    let (_echo, proxy) = setup(&[]);
    let dir = common::TempDir::new("curl-expect");
    let file = dir.join("body.bin");
    let body = pattern::bytes(3 << 20);
    std::fs::write(&file, &body).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", "--expect100-timeout", "10"])
        .args(["-H", "Expect: 100-continue"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{}/curl-expect", proxy.port()))
        .output()
        .expect("run curl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {stderr}");
    assert!(
        stderr.contains("< HTTP/1.1 100 Continue"),
        "curl saw no 100 Continue from the proxy:\n{stderr}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(j["body_len"], 3 << 20);
    assert_eq!(j["body_sha256"], sha256_hex(&body));
    assert!(backend_header_values(&j, "expect").is_empty(), "{j}");
    assert_fine(&proxy.wait_log_path("/curl-expect"), 200);
}

#[test]
fn hop_by_hop_request_headers_are_removed_and_forwarding_headers_set() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.send(
        b"GET /headers HTTP/1.1\r\n\
          Host: front.example.com\r\n\
          Connection: keep-alive, X-Drop-Me\r\n\
          X-Drop-Me: secret\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Trailer: X-Whatever\r\n\
          Upgrade: h2c\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\n\
          X-Forwarded-For: 192.0.2.7\r\n\
          X-Forwarded-For: 198.51.100.9, 203.0.113.4\r\n\
          X-Forwarded-Proto: https\r\n\
          X-Forwarded-Host: spoofed.example\r\n\
          X-Keep: end-to-end\r\n\
          Cookie: a=1\r\n\
          \r\n",
    );
    let r = c.read_final().unwrap();
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    let h = |n: &str| backend_header_values(&j, n);

    for gone in [
        "X-Drop-Me",
        "Keep-Alive",
        "TE",
        "Trailer",
        "Upgrade",
        "Proxy-Authorization",
        "Proxy-Connection",
    ] {
        assert!(
            h(gone).is_empty(),
            "{gone} reached the backend: {}",
            j["headers"]
        );
    }
    for v in h("Connection") {
        assert!(
            v.eq_ignore_ascii_case("keep-alive"),
            "the client's Connection header reached the backend: {v:?}"
        );
    }
    assert_eq!(h("Host"), ["front.example.com"], "client Host kept");
    assert_eq!(h("X-Keep"), ["end-to-end"]);
    assert_eq!(h("Cookie"), ["a=1"]);
    assert_eq!(
        h("X-Forwarded-For").join(", "),
        "192.0.2.7, 198.51.100.9, 203.0.113.4, 127.0.0.1",
        "X-Forwarded-For: the client's address appended"
    );
    assert_eq!(
        h("X-Forwarded-Proto"),
        ["http"],
        "set, not appended to the client's"
    );
    assert_eq!(
        h("X-Forwarded-Host"),
        ["front.example.com"],
        "set from Host"
    );
    assert_eq!(h("Via"), ["1.1 kcdproxy"]);
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let (_echo, proxy) = setup(&[]);
    let r = proxy.client().get("/hop");
    assert_eq!(r.status(), 200, "{}", r.summary());
    for gone in [
        "X-Resp-Hop",
        "Keep-Alive",
        "Proxy-Connection",
        "Upgrade",
        "Trailer",
    ] {
        assert!(
            r.header(gone).is_none(),
            "{gone} reached the client: {}",
            r.summary()
        );
    }
    for v in r.header_all("Connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-resp-hop"),
            "the backend's Connection header reached the client: {v:?}"
        );
    }
    assert_eq!(r.header("X-Resp-Keep"), Some("end-to-end"));
}

#[test]
fn backend_statuses_pass_through() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    for code in [201u16, 204, 304, 401, 404, 500, 503] {
        let path = format!("/status/{code}");
        let r = c.get(&path);
        assert_eq!(r.status(), code, "{}", r.summary());
        if code == 204 || code == 304 {
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.json()["target"], path.as_str());
        }
        assert_fine(&proxy.wait_log_path(&path), code);
    }
}

#[test]
fn a_32k_authorization_header_is_accepted() {
    let (_echo, proxy) = setup(&[]);
    let token = "Y".repeat(32 * 1024);
    let auth = format!("Negotiate {token}");
    let r = proxy
        .client()
        .request("GET", "/big-header", &[("Authorization", &auth)], b"");
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(backend_header_values(&j, "authorization"), [auth]);
}

#[test]
fn content_length_beyond_4_gib_is_forwarded() {
    // Lengths are u64: a 5 GiB declaration (an RPC channel may declare up to 2 GB; uploads can be
    // larger) reaches the backend as declared, and the body starts streaming at once.
    let (echo, proxy) = setup(&[]);
    let declared: u64 = 5 << 30;
    let mut c = proxy.client();
    c.send(
        format!(
            "RPC_IN_DATA /rpc/rpcproxy.dll?exch01.example.com:6001 HTTP/1.1\r\n\
             Host: kcd.test\r\nContent-Length: {declared}\r\n\r\n"
        )
        .as_bytes(),
    );
    c.send(&pattern::bytes(64 * 1024));
    let mut head = None;
    common::poll_until(Duration::from_secs(5), || {
        head = echo.last_head();
        head.is_some()
    });
    let (line, fields) = head.expect("the request head never reached the backend");
    assert!(line.starts_with("RPC_IN_DATA "), "{line}");
    let cl: Vec<&str> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cl, [declared.to_string()], "backend fields: {fields:?}");
    // The channel ends early, as RPC channels do; the proxy must cope (nothing to assert beyond
    // the proxy staying up).
    drop(c);
    let r = proxy.client().get("/still-up");
    assert_eq!(r.status(), 200, "{}", r.summary());
}

#[test]
fn idle_keep_alive_connection_is_closed_after_client_idle_timeout() {
    let (_echo, proxy) = setup(&["--client-idle-timeout", "1s"]);
    let mut c = proxy.client();
    assert_eq!(c.get("/before-idle").status(), 200);
    let t = Instant::now();
    let got = c
        .wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("idle connection with --client-idle-timeout 1s: {e}"));
    assert!(got.is_empty(), "sent on an idle connection: {got:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed after {:?}, before the idle timeout",
        t.elapsed()
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let mut burst = Vec::new();
    burst.extend_from_slice(b"GET /pipe/1 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    burst.extend_from_slice(
        b"POST /pipe/2 HTTP/1.1\r\nHost: kcd.test\r\nContent-Length: 5\r\n\r\nhello",
    );
    burst.extend_from_slice(
        b"POST /pipe/3 HTTP/1.1\r\nHost: kcd.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    burst.extend_from_slice(b"HEAD /pipe/4 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    burst.extend_from_slice(b"GET /pipe/5 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    c.send(&burst);
    for (i, body) in [(1, &b""[..]), (2, b"hello"), (3, b"abc")] {
        let r = c
            .read_final()
            .unwrap_or_else(|e| panic!("pipelined response {i}: {e}"));
        assert_eq!(r.status(), 200, "{}", r.summary());
        let j = r.json();
        assert_eq!(j["target"], format!("/pipe/{i}"), "responses out of order");
        assert_eq!(j["body_sha256"], sha256_hex(body));
    }
    c.next_response_answers_head();
    let r = c.read_final().expect("pipelined HEAD response");
    assert_eq!(r.header("X-Echo-Method"), Some("HEAD"), "{}", r.summary());
    assert!(r.body.is_empty());
    let r = c.read_final().expect("pipelined response 5");
    assert_eq!(r.json()["target"], "/pipe/5");
    assert_eq!(echo.requests(), 5);
}

#[test]
fn http10_client_gets_no_chunked_response() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.send(b"GET /download?bytes=100000&chunked=1 HTTP/1.0\r\nHost: kcd.test\r\n\r\n");
    let r = c.read_final().unwrap();
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_ne!(
        r.head.framing,
        Framing::Chunked,
        "HTTP/1.0 clients do not understand chunked: {:?}",
        r.head.headers
    );
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(pattern::check(0, &r.body), Ok(()));
    // No keep-alive was asked for: the proxy closes.
    c.wait_closed(Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("HTTP/1.0 without keep-alive: {e}"));
}

#[test]
fn concurrent_clients_get_their_own_responses() {
    const CLIENTS: usize = 12;
    const REQUESTS: usize = 25;
    let (echo, proxy) = setup(&[]);
    let port = proxy.port();
    std::thread::scope(|s| {
        for i in 0..CLIENTS {
            s.spawn(move || {
                let mut c = Client::connect(port);
                for j in 0..REQUESTS {
                    let target = format!("/cc/{i}/{j}");
                    let ctx = |r: &common::client::Response| format!("{target}: {}", r.summary());
                    match (i + j) % 4 {
                        0 => {
                            let r = c.get(&target);
                            assert_eq!(r.json()["target"], target.as_str(), "{}", ctx(&r));
                        }
                        1 => {
                            let body = pattern::bytes((i * 7919 + j * 104_729) % 150_000);
                            let r = c.request("POST", &target, &[], &body);
                            let jv = r.json();
                            assert_eq!(jv["target"], target.as_str(), "{}", ctx(&r));
                            assert_eq!(jv["body_sha256"], sha256_hex(&body), "{}", ctx(&r));
                        }
                        2 => {
                            let body = format!("chunked body of {target}");
                            c.send(
                                format!(
                                    "PUT {target} HTTP/1.1\r\nHost: kcd.test\r\n\
                                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                                    body.len()
                                )
                                .as_bytes(),
                            );
                            let r = c.read_final().unwrap_or_else(|e| panic!("{target}: {e}"));
                            let jv = r.json();
                            assert_eq!(jv["target"], target.as_str(), "{}", ctx(&r));
                            assert_eq!(jv["body_sha256"], sha256_hex(body.as_bytes()));
                        }
                        _ => {
                            let n = (i * 31 + j * 977) % 200_000;
                            let chunked = if j % 2 == 0 { "&chunked=1" } else { "" };
                            let r = c.get(&format!("/download?bytes={n}{chunked}&for={target}"));
                            assert_eq!(r.body.len(), n, "{}", ctx(&r));
                            assert_eq!(pattern::check(0, &r.body), Ok(()), "{target}");
                        }
                    }
                }
            });
        }
    });
    assert_eq!(echo.requests(), (CLIENTS * REQUESTS) as u64);
    assert!(
        echo.connections() <= 2 * CLIENTS as u64,
        "{} backend connections for {CLIENTS} concurrent clients",
        echo.connections()
    );
}

/// Makes the backend close the connection the proxy just pooled (a keep-alive response, then a
/// close, as a backend's idle or request limit does), waits until that close has reached the
/// proxy's socket, then sends `method` with `body` on the same client connection.
fn request_after_backend_closed_the_pooled_connection(method: &str, body: &[u8]) {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let r = c.get("/quietclose");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert!(
        common::poll_until(Duration::from_secs(3), || echo.closed() >= 1),
        "echo did not close"
    );
    let target = format!("/after-quiet-close/{method}");
    let r = c.request(method, &target, &[], body);
    assert_eq!(
        r.status(),
        200,
        "{method} with a {}-byte body, sent after the backend had closed the pooled connection \
         (its FIN already received): {}",
        body.len(),
        r.summary()
    );
    assert_eq!(r.json()["body_sha256"], sha256_hex(body));
    assert_eq!(echo.requests(), 2);
}

#[test]
fn pooled_connection_closed_by_the_backend_is_not_used_for_a_bodyless_request() {
    request_after_backend_closed_the_pooled_connection("GET", b"");
}

#[test]
fn pooled_connection_closed_by_the_backend_is_not_used_for_a_request_with_a_body() {
    // A body cannot be replayed on another connection, so a stale pooled connection must be
    // detected before it is used.
    request_after_backend_closed_the_pooled_connection("POST", &pattern::bytes(50_000));
}

#[test]
fn routes_by_host_and_prefix_on_one_client_connection() {
    let (root, b, other) = (Echo::start(), Echo::start(), Echo::start());
    let routes = [
        format!("/={}", root.url()),
        format!("/b={}", b.url()),
        format!("other.example/={}", other.url()),
    ];
    let proxy = Proxy::start(&[
        "--route", &routes[0], "--route", &routes[1], "--route", &routes[2],
    ]);
    let mut c = proxy.client();
    for (host, target, want, why) in [
        ("kcd.test", "/x/1", &root, "catch-all"),
        ("kcd.test", "/b/1", &b, "prefix /b"),
        (
            "kcd.test",
            "/B/2?q=1",
            &b,
            "prefixes compare case-insensitively",
        ),
        ("kcd.test", "/b?q=1", &b, "prefix followed by a query"),
        ("kcd.test", "/bee", &root, "prefixes match whole segments"),
        ("other.example", "/b/3", &other, "a route with a host wins"),
        (
            "OTHER.example:8443",
            "/y",
            &other,
            "host compared without port or case",
        ),
        ("kcd.test", "/x/2", &root, "back to the catch-all"),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        let r = c
            .read_final()
            .unwrap_or_else(|e| panic!("{host}{target}: {e}"));
        assert_eq!(r.status(), 200, "{host}{target}: {}", r.summary());
        let j = r.json();
        assert_eq!(
            j["server"].as_u64(),
            Some(u64::from(want.port())),
            "{host}{target} ({why}) reached the wrong backend"
        );
        assert_eq!(j["target"], target, "the target is forwarded unchanged");
    }
    assert_eq!(
        (root.connections(), b.connections(), other.connections()),
        (1, 1, 1),
        "one pooled connection per backend"
    );
}

#[test]
fn backend_response_with_content_length_and_chunked_is_forwarded_dechunked_correctly() {
    // KB 934022: ISA closed connections whose response had both; RFC 9112 §6.3: chunked wins,
    // and an intermediary that forwards it removes the Content-Length.
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let r = c.get("/cl-and-te");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/cl-and-te");
    assert!(
        r.header("Content-Length").is_none() || r.header("Transfer-Encoding").is_none(),
        "forwarded with both framings: {:?}",
        r.head.headers
    );
    let r = c.get("/after-cl-and-te");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/after-cl-and-te");
    assert_eq!(echo.requests(), 2);
}

#[test]
fn large_backend_response_header_passes() {
    let (_echo, proxy) = setup(&[]);
    let r = proxy.client().get("/big-response-header?pad=40000");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.header("X-Pad").map(str::len), Some(40_000));
}

#[test]
fn access_log_lines_are_flushed_promptly_and_escaped() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.get("/log/prompt");
    assert_eq!(r.status(), 200, "{}", r.summary());
    // The spec says ~250 ms; allow for a loaded machine, but not for flush-at-exit.
    let l = proxy.wait_log_line(|l| l.path() == Some("/log/prompt"), Duration::from_secs(1));
    assert!(t.elapsed() < Duration::from_millis(1500));
    assert_fine(&l, 200);

    // A target with a quote and a backslash must not break the key=value format.
    let weird = r#"/log/q"uo\te"#;
    let r = c.get(weird);
    assert_eq!(r.status(), 200, "{}", r.summary());
    let l = proxy.wait_log_line(
        |l| l.path().is_some_and(|p| p.starts_with("/log/q")),
        Duration::from_secs(1),
    );
    assert_eq!(l.path(), Some(weird), "{}", l.raw);
    assert_eq!(l.status(), Some(200), "{}", l.raw);
}

/// The JSON access-log lines whose `path` satisfies `pred`, parsed with serde_json (a line
/// that does not parse fails the test), waiting up to 3 s for one.
fn json_log_lines(proxy: &Proxy, pred: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    common::poll_until(Duration::from_secs(3), || {
        found = proxy
            .access_log()
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("access-log line is not JSON ({e}): {l}"))
            })
            .filter(|j| j["path"].as_str().is_some_and(&pred))
            .collect();
        !found.is_empty()
    });
    found
}

#[test]
fn json_access_log_keeps_non_ascii_paths_as_unicode() {
    let (_echo, proxy) = setup(&["--access-log-format", "json"]);
    let mut c = proxy.client();
    // Raw UTF-8 in the request target, as some clients send it (RFC 9112 wants it
    // percent-encoded, but the proxy forwards what it gets and must log it legibly).
    let path = "/log/müller/日本/😀";
    let r = c.get(path);
    assert_eq!(r.status(), 200, "{}", r.summary());
    let lines = json_log_lines(&proxy, |p| p.starts_with("/log/m"));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["path"], path, "{}", lines[0]);
    assert_eq!(lines[0]["status"], 200, "{}", lines[0]);
    // A target that is not UTF-8 never reaches the log's path (the head parser answers 400
    // first); the U+FFFD replacement is covered by accesslog's unit tests.
}

#[test]
fn text_access_log_keeps_non_ascii_paths_as_unicode() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let path = "/log/müller/日本";
    let r = c.get(path);
    assert_eq!(r.status(), 200, "{}", r.summary());
    let l = proxy.wait_log_path(path);
    // Bare (no space, quote or backslash in it), the characters themselves.
    assert!(l.raw.contains(&format!(" path={path} ")), "{}", l.raw);
    assert_fine(&l, 200);
}

#[test]
fn interim_responses_from_the_backend_do_not_break_the_exchange() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    let r = c.get("/interim");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/interim");
    assert!(
        r.interim.iter().all(|s| [102, 103].contains(s)),
        "interim statuses {:?}",
        r.interim
    );
    let r = c.get("/after-interim");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(echo.requests(), 2);
}

#[test]
fn empty_bodies_in_every_framing() {
    let (_echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.send(b"POST /empty/chunked HTTP/1.1\r\nHost: kcd.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    let r = c.read_final().unwrap();
    assert_eq!((r.status(), r.json()["body_len"].as_u64()), (200, Some(0)));
    // A body-less POST announcing Expect must not wait for a body that never comes.
    c.set_read_timeout(Duration::from_secs(3));
    c.send(
        b"POST /empty/expect HTTP/1.1\r\nHost: kcd.test\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
    );
    let r = c
        .read_final()
        .unwrap_or_else(|e| panic!("Content-Length: 0 with Expect: {e}"));
    assert_eq!((r.status(), r.json()["body_len"].as_u64()), (200, Some(0)));
    c.set_read_timeout(common::IO_TIMEOUT);
    let r = c.get("/download?bytes=0&chunked=1");
    assert_eq!((r.status(), r.body.len()), (200, 0));
    let r = c.get("/download?bytes=0");
    assert_eq!((r.status(), r.body.len()), (200, 0));
    let r = c.get("/status/204");
    assert_eq!((r.status(), r.body.len()), (204, 0));
    let r = c.get("/after-empties");
    assert_eq!(r.status(), 200, "{}", r.summary());
}

#[test]
fn head_of_a_huge_download_returns_at_once() {
    let (echo, proxy) = setup(&[]);
    let mut c = proxy.client();
    c.set_read_timeout(Duration::from_secs(3));
    for target in [
        "/download?bytes=1073741824",
        "/download?bytes=1073741824&chunked=1",
    ] {
        let r = c.request("HEAD", target, &[], b"");
        assert_eq!(r.status(), 200, "{target}: {}", r.summary());
        assert!(r.body.is_empty());
        assert_eq!(r.header("X-Pattern-Len"), Some("1073741824"), "{target}");
    }
    let r = c.request("HEAD", "/download?bytes=1073741824", &[], b"");
    assert_eq!(
        r.header("Content-Length"),
        Some("1073741824"),
        "a HEAD response keeps the length a GET would have: {}",
        r.summary()
    );
    c.set_read_timeout(common::IO_TIMEOUT);
    let r = c.get("/after-head");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(echo.requests(), 4);
}

/// Outlook Anywhere: the IN and OUT channels of one RPC virtual connection arrive on two client
/// connections (on any worker) and must reach the same backend server; different RPC targets
/// still spread over the backends.
#[test]
fn rpc_in_and_out_channels_reach_the_same_backend() {
    let echos = [Echo::start(), Echo::start(), Echo::start()];
    let route = format!(
        "/rpc={},{},{}",
        echos[0].url(),
        echos[1].url(),
        echos[2].url()
    );
    let proxy = Proxy::start(&["--route", &route, "--workers", "2"]);
    let targets: Vec<String> = (0..8)
        .map(|i| format!("/rpc/rpcproxy.dll?exch{i:02}.example.com:6001"))
        .collect();
    for target in &targets {
        for method in ["RPC_IN_DATA", "RPC_OUT_DATA", "RPC_IN_DATA"] {
            // A new client connection per channel, as Outlook opens them.
            let mut c = proxy.client();
            let r = c.request(method, target, &[], b"ECHO");
            assert_eq!(r.status(), 200, "{}", r.summary());
        }
    }
    let mut backends_used = std::collections::BTreeSet::new();
    for target in &targets {
        let lines: Vec<LogLine> = (0..50)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                proxy
                    .log_lines()
                    .into_iter()
                    .filter(|l| l.get("path") == Some(target.as_str()))
                    .collect::<Vec<_>>()
            })
            .find(|v: &Vec<LogLine>| v.len() == 3)
            .unwrap_or_else(|| panic!("three log lines for {target}"));
        let backends: std::collections::BTreeSet<_> =
            lines.iter().filter_map(|l| l.get("backend")).collect();
        assert_eq!(backends.len(), 1, "{target}: {backends:?}");
        backends_used.extend(backends.into_iter().map(str::to_string));
    }
    assert!(
        backends_used.len() > 1,
        "8 RPC targets all went to {backends_used:?}"
    );
}
