//! TLS on both legs: the proxy terminates client TLS (verified by curl against the test CA,
//! certificate chosen by SNI) and speaks TLS to https:// backends it verifies with
//! `--backend-ca`.

mod common;

use std::time::Duration;

use common::certs::certs;
use common::client::Client;
use common::curl::curl;
use common::echo::Echo;
use common::proxy::Proxy;
use common::{pattern, sha256_hex};

fn resolve(name: &str, port: u16) -> String {
    format!("{name}:{port}:127.0.0.1")
}

#[test]
fn tls_termination_verified_by_curl() {
    let c = certs();
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start_tls(&["--route", &route], &[&c.localhost]);
    let port = proxy.tls_port();
    let ca = c.ca.display().to_string();
    let url1 = format!("https://localhost:{port}/tls/1");
    let url2 = format!("https://localhost:{port}/tls/2?x=1");
    let cr = curl(&[
        "-v",
        "--cacert",
        &ca,
        "--resolve",
        &resolve("localhost", port),
        &url1,
        &url2,
    ]);
    assert!(cr.ok, "curl over TLS to the proxy failed:\n{}", cr.stderr);
    let docs = cr.json_docs();
    assert_eq!(docs.len(), 2, "{}", cr.stdout);
    assert_eq!(docs[0]["target"], "/tls/1");
    assert_eq!(docs[1]["target"], "/tls/2?x=1");
    let xfp: Vec<&str> = docs[0]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| {
            h[0].as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case("x-forwarded-proto"))
        })
        .filter_map(|h| h[1].as_str())
        .collect();
    assert_eq!(xfp, ["https"]);
    assert!(
        cr.stderr.contains("Re-using existing connection")
            || cr.stderr.contains("Reusing existing"),
        "curl opened a second TLS connection instead of keeping the first alive:\n{}",
        cr.stderr
    );
    proxy.wait_log_path("/tls/2").assert_status_reason(200, "-");
}

#[test]
fn sni_selects_the_certificate() {
    let c = certs();
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start_tls(&["--route", &route], &[&c.localhost, &c.alt]);
    let port = proxy.tls_port();
    let ca = c.ca.display().to_string();
    // Each name verifies only against its own certificate, so success proves the choice.
    for name in ["alt.test", "localhost"] {
        let url = format!("https://{name}:{port}/sni/{name}");
        let cr = curl(&["--cacert", &ca, "--resolve", &resolve(name, port), &url]);
        assert!(cr.ok, "SNI {name}: {}", cr.stderr);
        assert_eq!(cr.json_docs()[0]["target"], format!("/sni/{name}"));
    }
    // No SNI (an IP address): the first certificate, which names 127.0.0.1.
    let url = format!("https://127.0.0.1:{port}/sni/none");
    let cr = curl(&["--cacert", &ca, &url]);
    assert!(
        cr.ok,
        "no SNI should get the default certificate: {}",
        cr.stderr
    );
}

#[test]
fn plain_http_on_the_tls_port_is_closed() {
    let c = certs();
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start_tls(&["--route", &route], &[&c.localhost]);
    let mut cl = Client::connect(proxy.tls_port());
    let _ = cl.try_send(b"GET / HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    let got = cl
        .wait_closed(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("plain HTTP on the TLS port: {e}"));
    assert!(
        !got.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was proxied on the TLS port"
    );
    assert_eq!(echo.requests(), 0);
    // The listener still works for real TLS clients.
    let ca = c.ca.display().to_string();
    let url = format!("https://127.0.0.1:{}/after", proxy.tls_port());
    assert!(curl(&["--cacert", &ca, &url]).ok);
}

/// An echo origin in TLS mode and a proxy routing to it with the test CA.
fn https_backend() -> (Echo, Proxy) {
    let c = certs();
    let echo = Echo::start_tls(&c.localhost);
    let route = echo.route();
    assert!(route.starts_with("/=https://"));
    let ca = c.ca.display().to_string();
    let proxy = Proxy::start_tls(
        &[
            "--route",
            &route,
            "--backend-ca",
            &ca,
            "--backend-timeout",
            "5s",
        ],
        &[&c.localhost],
    );
    (echo, proxy)
}

#[test]
fn https_backend_verified_with_backend_ca() {
    let (echo, proxy) = https_backend();
    let mut cl = proxy.client();
    let r = cl.get("/https-backend/1");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["target"], "/https-backend/1");
    let body = pattern::bytes(300_000);
    let r = cl.request("POST", "/https-backend/2", &[], &body);
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["body_sha256"], sha256_hex(&body));
    let r = cl.get("/download?bytes=500000&chunked=1");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(pattern::check(0, &r.body), Ok(()));
    assert_eq!(r.body.len(), 500_000);
    assert_eq!(
        echo.connections(),
        1,
        "the TLS backend connection should be reused"
    );
    proxy
        .wait_log_path("/https-backend/1")
        .assert_status_reason(200, "-");
}

#[test]
fn tls_on_both_legs_with_a_curl_upload() {
    let (_echo, proxy) = https_backend();
    let c = certs();
    let dir = common::TempDir::new("tls-upload");
    let file = dir.join("body.bin");
    let body = pattern::bytes(4 << 20);
    std::fs::write(&file, &body).unwrap();
    let port = proxy.tls_port();
    let url = format!("https://localhost:{port}/both-legs");
    let data = format!("@{}", file.display());
    let ca = c.ca.display().to_string();
    let cr = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve("localhost", port),
        "--data-binary",
        &data,
        &url,
    ]);
    assert!(cr.ok, "{}", cr.stderr);
    let d = &cr.json_docs()[0];
    assert_eq!(d["body_len"], 4 << 20);
    assert_eq!(d["body_sha256"], sha256_hex(&body));
}

#[test]
fn https_backend_with_an_untrusted_certificate_is_502() {
    let c = certs();
    let echo = Echo::start_tls(&c.rogue);
    let route = echo.route();
    let ca = c.ca.display().to_string();
    let proxy = Proxy::start(&["--route", &route, "--backend-ca", &ca]);
    let r = proxy.client().get("/rogue");
    assert_eq!(r.status(), 502, "{}", r.summary());
    proxy
        .wait_log_path("/rogue")
        .assert_status_reason(502, "backend_tls");
    assert_eq!(echo.requests(), 0);
}

#[test]
fn tls_download_through_curl_is_intact() {
    let (_echo, proxy) = https_backend();
    let c = certs();
    let dir = common::TempDir::new("tls-download");
    let out = dir.join("download.bin");
    let port = proxy.tls_port();
    let n = 8 << 20;
    let url = format!("https://localhost:{port}/download?bytes={n}&chunked=1");
    let ca = c.ca.display().to_string();
    let out_s = out.display().to_string();
    let cr = curl(&[
        "--cacert",
        &ca,
        "--resolve",
        &resolve("localhost", port),
        "-o",
        &out_s,
        &url,
    ]);
    assert!(cr.ok, "{}", cr.stderr);
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), n);
    assert_eq!(pattern::check(0, &got), Ok(()));
}

#[test]
fn silent_tls_client_is_closed_at_the_header_timeout() {
    let c = certs();
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start_tls(
        &["--route", &route, "--header-timeout", "1s"],
        &[&c.localhost],
    );
    let mut cl = Client::connect(proxy.tls_port());
    let t = std::time::Instant::now();
    cl.wait_closed(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("a TLS client that never sends a ClientHello: {e}"));
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed after {:?}",
        t.elapsed()
    );
}
