//! PROXY protocol v1 and v2 (haproxy's spec "The PROXY protocol") in front of the real binary:
//! from a source in `--proxy-protocol-from` the header's client address is the client (the
//! echo origin's `X-Forwarded-For`, the access log's `client=`, RPC-over-HTTP backend
//! affinity), on plain and TLS listeners; from anywhere else a header is not believed; a
//! missing, malformed or late header closes the connection with its reason logged, and the
//! proxy goes on serving.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, TcpStream};
use std::time::Duration;

use common::certs::certs;
use common::echo::Echo;
use common::proxy::Proxy;

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header for TCP over IPv4 (`cmd` 1 = PROXY, 0 = LOCAL), with `tlv` after the addresses.
fn v2_tcp4(cmd: u8, src: [u8; 4], sport: u16, tlv: &[u8]) -> Vec<u8> {
    let mut body = src.to_vec();
    body.extend_from_slice(&[127, 0, 0, 1]);
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    body.extend_from_slice(tlv);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20 | cmd, 0x11]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// A v2 header for TCP over IPv6.
fn v2_tcp6(src: Ipv6Addr, sport: u16) -> Vec<u8> {
    let mut body = src.octets().to_vec();
    body.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    body.extend_from_slice(&sport.to_be_bytes());
    body.extend_from_slice(&443u16.to_be_bytes());
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x21]);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// An echo origin and a proxy in front of it trusting `from` to send PROXY headers.
fn setup(from: &str, extra: &[&str]) -> (Echo, Proxy) {
    let echo = Echo::start();
    let route = echo.route();
    let mut args = vec!["--route", route.as_str(), "--proxy-protocol-from", from];
    args.extend_from_slice(extra);
    (echo, Proxy::start(&args))
}

/// The `X-Forwarded-For` values the echo origin received.
fn xff(json: &serde_json::Value) -> Vec<String> {
    json["headers"]
        .as_array()
        .expect("echo JSON has headers")
        .iter()
        .filter(|h| {
            h[0].as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("x-forwarded-for"))
        })
        .map(|h| h[1].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Sends `header`, then a GET of `path` on the same connection; the request must be proxied
/// as coming from `client` (X-Forwarded-For and the access log).
#[track_caller]
fn assert_proxied_as(proxy: &Proxy, header: &[u8], path: &str, client: &str) {
    let mut c = proxy.client();
    c.send(header);
    let r = c.get(path);
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(xff(&r.json()), [client], "{}", r.summary());
    // The connection stays the client's for its next requests.
    let r = c.get(&format!("{path}/again"));
    assert_eq!(xff(&r.json()), [client], "{}", r.summary());
    let line = proxy.wait_log_path(path);
    line.assert_status_reason(200, "-");
    assert_eq!(line.get("client"), Some(client), "{line:?}");
}

/// The proxy closes `s` without writing a byte.
#[track_caller]
fn assert_closed_silently(mut s: &TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => assert!(
            got.is_empty(),
            "got an answer: {:?}",
            String::from_utf8_lossy(&got)
        ),
        // A reset (unread bytes at close) closes it too.
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// Waits until the proxy's diagnostics contain `needle`.
#[track_caller]
fn assert_logged(proxy: &Proxy, needle: &str) {
    assert!(
        common::poll_until(Duration::from_secs(5), || proxy.stderr().contains(needle)),
        "stderr lacks {needle:?}:\n{}",
        proxy.stderr_tail()
    );
}

#[test]
fn v1_and_v2_headers_from_a_trusted_source_name_the_client() {
    let (echo, proxy) = setup("127.0.0.0/8", &[]);
    assert_proxied_as(
        &proxy,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\n",
        "/pp/v1",
        "192.0.2.7",
    );
    assert_proxied_as(
        &proxy,
        b"PROXY TCP6 2001:db8::7 ::1 51000 80\r\n",
        "/pp/v1-6",
        "2001:db8::7",
    );
    assert_proxied_as(
        &proxy,
        &v2_tcp4(1, [198, 51, 100, 9], 40000, &[]),
        "/pp/v2",
        "198.51.100.9",
    );
    assert_proxied_as(
        &proxy,
        &v2_tcp6("2001:db8::9".parse().unwrap(), 40000),
        "/pp/v2-6",
        "2001:db8::9",
    );
    // TLVs (an authority and a NOOP, spec §2.2.2) are skipped.
    let tlv = [0x02, 0x00, 0x04, b'h', b'o', b's', b't', 0x04, 0x00, 0x00];
    assert_proxied_as(
        &proxy,
        &v2_tcp4(1, [203, 0, 113, 5], 40000, &tlv),
        "/pp/v2-tlv",
        "203.0.113.5",
    );
    // LOCAL (a balancer's health check) and UNKNOWN keep the socket's own address.
    assert_proxied_as(
        &proxy,
        &v2_tcp4(0, [203, 0, 113, 6], 1, &[]),
        "/pp/local",
        "127.0.0.1",
    );
    assert_proxied_as(&proxy, b"PROXY UNKNOWN\r\n", "/pp/unknown", "127.0.0.1");
    // Header and request in one write: the bytes past the header are the request.
    let mut c = proxy.client();
    c.send(b"PROXY TCP4 192.0.2.8 127.0.0.1 1 80\r\nGET /pp/one-write HTTP/1.1\r\nHost: h\r\n\r\n");
    let r = c.read_final().expect("response");
    assert_eq!(xff(&r.json()), ["192.0.2.8"], "{}", r.summary());
    assert!(echo.requests() >= 15);
}

#[test]
fn a_header_split_over_several_writes_is_read_whole() {
    let (_echo, proxy) = setup("127.0.0.1", &[]);
    for (header, client, path) in [
        (
            b"PROXY TCP4 192.0.2.10 127.0.0.1 51000 80\r\n".to_vec(),
            "192.0.2.10",
            "/split/v1",
        ),
        (
            v2_tcp4(1, [192, 0, 2, 11], 51000, &[0x04, 0x00, 0x02, 0, 0]),
            "192.0.2.11",
            "/split/v2",
        ),
    ] {
        let mut c = proxy.client();
        // Cut inside the signature, inside the fixed part and inside the addresses; the last
        // piece carries the start of the request.
        for piece in [&header[..3], &header[3..13], &header[13..20], &header[20..]] {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(50));
        }
        c.send(format!("GET {path} HTTP/1.1\r\nHo").as_bytes());
        std::thread::sleep(Duration::from_millis(50));
        c.send(b"st: h\r\n\r\n");
        let r = c.read_final().expect("response");
        assert_eq!(r.status(), 200, "{}", r.summary());
        assert_eq!(xff(&r.json()), [client], "{}", r.summary());
        assert_eq!(proxy.wait_log_path(path).get("client"), Some(client));
    }
}

#[test]
fn a_header_from_an_untrusted_source_is_not_believed() {
    // 127.0.0.1 is not a balancer here: its connections are served as without the flag.
    let (echo, proxy) = setup("192.0.2.0/24", &[]);
    let mut c = proxy.client();
    let r = c.get("/untrusted/plain");
    assert_eq!(xff(&r.json()), ["127.0.0.1"], "{}", r.summary());

    for header in [
        b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\n".to_vec(),
        v2_tcp4(1, [192, 0, 2, 7], 51000, &[]),
    ] {
        let before = echo.requests();
        let mut c = proxy.client();
        c.send(&header);
        c.send(b"GET /untrusted/claimed HTTP/1.1\r\nHost: h\r\n\r\n");
        // The header is taken for the start of a request, and a bad one.
        let h = c.read_head().expect("an answer");
        assert_eq!(h.status, 400, "{header:?}");
        assert_eq!(echo.requests(), before, "nothing reached the origin");
    }
    let lines = proxy.access_lines_until("-", |l| l.len() >= 2);
    assert!(
        lines.iter().all(|l| l.contains("client=127.0.0.1 ")),
        "{lines:#?}"
    );
    assert!(!proxy.access_log().iter().any(|l| l.contains("192.0.2.7")));
}

#[test]
fn a_trusted_source_must_send_a_valid_header() {
    // Timeouts and closes are logged at debug (a balancer's TCP health checks connect and
    // close without a header); malformed headers at info.
    let (echo, proxy) = setup(
        "127.0.0.1",
        &[
            "--header-timeout",
            "1s",
            "--log-level",
            "info,kcdproxy::runtime::worker=debug",
        ],
    );
    let cases: [(&[u8], &str); 7] = [
        (
            b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "no PROXY protocol signature",
        ),
        (
            b"PROXY TCP4 192.0.2.7 127.0.0.1 99999 80\r\n",
            "v1 header: bad port",
        ),
        (b"PROXY TCP4 192.0.2.7\r\n", "v1 header: missing field"),
        (
            b"PROXY SCTP 192.0.2.7 127.0.0.1 1 80\r\n",
            "v1 header: unknown protocol",
        ),
        (&[0u8; 0], "no complete PROXY header before the deadline"),
        (
            b"PROXY TCP4 192.0.2.7 ",
            "no complete PROXY header before the deadline",
        ),
        (
            b"\r\n\r\n\0\r\nQUIT\n\x21",
            "no complete PROXY header before the deadline",
        ),
    ];
    for (bytes, reason) in cases {
        let s = TcpStream::connect(proxy.addr()).expect("connect");
        (&s).write_all(bytes).expect("write");
        assert_closed_silently(&s);
        assert_logged(&proxy, reason);
    }
    // v2: wrong version, unknown command, addresses longer than the length, unknown family.
    let good = v2_tcp4(1, [192, 0, 2, 7], 1, &[]);
    let mut bad_version = good.clone();
    bad_version[12] = 0x11;
    let mut bad_command = good.clone();
    bad_command[12] = 0x2f;
    let mut short = good.clone();
    short[15] = 4;
    let mut bad_family = good.clone();
    bad_family[13] = 0x51;
    for (bytes, reason) in [
        (bad_version, "v2 header: version is not 2"),
        (bad_command, "v2 header: unknown command"),
        (short, "v2 header: length shorter than its addresses"),
        (bad_family, "v2 header: unknown address family"),
    ] {
        let s = TcpStream::connect(proxy.addr()).expect("connect");
        (&s).write_all(&bytes).expect("write");
        assert_closed_silently(&s);
        assert_logged(&proxy, reason);
    }
    assert_logged(&proxy, "PROXY protocol: connection closed");
    assert_eq!(echo.requests(), 0, "nothing reached the origin");
    assert!(proxy.access_log().is_empty(), "{:#?}", proxy.access_log());
    // Still serving.
    assert_proxied_as(
        &proxy,
        b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\n",
        "/after/bad",
        "192.0.2.7",
    );
}

#[test]
fn tls_listener_with_a_v2_header_before_the_client_hello() {
    let c = certs();
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start_tls(
        &["--route", &route, "--proxy-protocol-from", "127.0.0.0/8"],
        &[&c.localhost],
    );
    let get = |header: &[u8], path: &str| -> serde_json::Value {
        let cfg = kcdproxy::tls::client_config(Some(&c.ca)).expect("client config");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let conn = rustls::ClientConnection::new(cfg, name).expect("client");
        let mut sock = TcpStream::connect(("127.0.0.1", proxy.tls_port())).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        sock.write_all(header).expect("header");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("request");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    };
    let j = get(&v2_tcp4(1, [192, 0, 2, 99], 50000, &[]), "/tls/v2");
    assert_eq!(xff(&j), ["192.0.2.99"]);
    let j = get(b"PROXY TCP4 192.0.2.98 127.0.0.1 50000 443\r\n", "/tls/v1");
    assert_eq!(xff(&j), ["192.0.2.98"]);
    let line = proxy.wait_log_path("/tls/v2");
    line.assert_status_reason(200, "-");
    assert_eq!(line.get("client"), Some("192.0.2.99"));
    assert_eq!(line.get("tls"), Some("1"));

    // Without the header the ClientHello itself is refused as one.
    let s = TcpStream::connect(("127.0.0.1", proxy.tls_port())).expect("connect");
    (&s).write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0])
        .expect("write");
    assert_closed_silently(&s);
    assert_logged(&proxy, "no PROXY protocol signature");
}

/// RPC over HTTP affinity hashes the client address: with one RPC target and every connection
/// coming from 127.0.0.1, only the addresses the balancer claims can spread the clients over
/// the backends, and each client's IN and OUT channels must still meet on one backend.
#[test]
fn rpc_affinity_follows_the_claimed_client() {
    let echos = [Echo::start(), Echo::start(), Echo::start()];
    let route = format!(
        "/rpc={},{},{}",
        echos[0].url(),
        echos[1].url(),
        echos[2].url()
    );
    let proxy = Proxy::start(&["--route", &route, "--proxy-protocol-from", "127.0.0.1"]);
    let target = "/rpc/rpcproxy.dll?exch01.example.com:6001";
    let mut servers = std::collections::BTreeSet::new();
    for i in 1..=16u8 {
        let header = format!("PROXY TCP4 198.51.100.{i} 127.0.0.1 40000 80\r\n");
        let mut seen = Vec::new();
        for method in ["RPC_IN_DATA", "RPC_OUT_DATA"] {
            // One client connection per channel, as Outlook opens them.
            let mut c = proxy.client();
            c.send(header.as_bytes());
            let r = c.request(method, target, &[], b"ECHO");
            assert_eq!(r.status(), 200, "{}", r.summary());
            let j = r.json();
            assert_eq!(xff(&j), [format!("198.51.100.{i}")]);
            seen.push(j["server"].as_u64().expect("echo server port"));
        }
        assert_eq!(
            seen[0], seen[1],
            "client {i}: IN and OUT on different backends"
        );
        servers.insert(seen[0]);
    }
    assert!(
        servers.len() > 1,
        "16 claimed clients all hashed to one backend: {servers:?}"
    );
}
