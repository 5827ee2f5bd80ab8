//! Bodies are streamed, not buffered: a 1 GiB upload (an Outlook RPC_IN_DATA channel declares
//! 1 GB) and a 1 GiB download go through the proxy while its resident memory grows by less than
//! 64 MiB. The client streams the pattern and checks it on the fly; so does the echo origin.

mod common;

use std::time::{Duration, Instant};

use common::echo::Echo;
use common::pattern;
use common::proxy::Proxy;

const GIB: u64 = 1 << 30;
/// How much the proxy's RSS may grow while a transfer runs.
const RSS_BUDGET_KIB: u64 = 64 * 1024;
/// A transfer slower than this fails instead of running on.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

fn setup() -> (Echo, Proxy) {
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start(&["--route", &route]);
    // Warm up: buffers, pools and the backend connection exist before the baseline.
    let r = proxy
        .client()
        .request("POST", "/warm-up", &[], &pattern::bytes(1 << 20));
    assert_eq!(r.status(), 200, "{}", r.summary());
    (echo, proxy)
}

fn assert_rss(proxy: &Proxy, baseline: u64, sampled_max: u64, what: &str) {
    let peak = proxy.peak_rss_kib();
    let grew = sampled_max.max(peak).saturating_sub(baseline);
    assert!(
        grew < RSS_BUDGET_KIB,
        "{what}: the proxy's RSS grew by {} MiB (baseline {} MiB, sampled max {} MiB, VmHWM {} MiB); \
         budget {} MiB: the body is being buffered",
        grew / 1024,
        baseline / 1024,
        sampled_max / 1024,
        peak / 1024,
        RSS_BUDGET_KIB / 1024
    );
}

#[test]
fn one_gib_upload_is_streamed() {
    let (_echo, proxy) = setup();
    let baseline = proxy.rss_kib();
    let sampler = proxy.sample_rss();

    let mut c = proxy.client();
    c.send(
        format!(
            "RPC_IN_DATA /rpc/rpcproxy.dll?exch01.example.com:6001 HTTP/1.1\r\n\
             Host: kcd.test\r\nContent-Length: {GIB}\r\n\r\n"
        )
        .as_bytes(),
    );
    let start = Instant::now();
    let mut sent = 0u64;
    pattern::for_each_piece(GIB, 256 * 1024, |p| {
        if let Err(e) = c.try_send(p) {
            panic!("upload failed after {sent} of {GIB} bytes: {e}");
        }
        sent += p.len() as u64;
        assert!(
            start.elapsed() < TRANSFER_DEADLINE,
            "upload too slow: {sent} bytes in {:?}",
            start.elapsed()
        );
    });
    let r = c.read_final().expect("response to the 1 GiB upload");
    let took = start.elapsed();
    let max = sampler.stop();
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["body_len"], GIB);
    assert_eq!(
        j["pattern_mismatch"],
        serde_json::Value::Null,
        "offset of the first byte the backend received wrong"
    );
    eprintln!(
        "1 GiB upload in {took:?} ({:.0} MiB/s); RSS baseline {} MiB, max {} MiB",
        1024.0 / took.as_secs_f64(),
        baseline / 1024,
        max / 1024
    );
    assert_rss(&proxy, baseline, max, "1 GiB upload");
    let l = proxy.wait_log_path("/rpc/rpcproxy.dll");
    l.assert_status_reason(200, "-");
    assert!(l.num("bytes_in").is_some_and(|n| n >= GIB), "{}", l.raw);
}

#[test]
fn one_gib_download_is_streamed() {
    let (_echo, proxy) = setup();
    let baseline = proxy.rss_kib();
    let sampler = proxy.sample_rss();

    let mut c = proxy.client();
    c.send(format!("GET /download?bytes={GIB} HTTP/1.1\r\nHost: kcd.test\r\n\r\n").as_bytes());
    let start = Instant::now();
    let head = c.read_head().expect("response head of the 1 GiB download");
    assert_eq!(head.status, 200, "{:?}", head.headers);
    let mut got = 0u64;
    let mut first_bad = None;
    c.read_body_with(&head, &mut |b| {
        if first_bad.is_none() {
            first_bad = pattern::check(got, b).err();
        }
        got += b.len() as u64;
        assert!(
            start.elapsed() < TRANSFER_DEADLINE,
            "download too slow: {got} bytes in {:?}",
            start.elapsed()
        );
    })
    .unwrap_or_else(|e| panic!("1 GiB download: {e}"));
    let took = start.elapsed();
    let max = sampler.stop();
    assert_eq!(got, GIB);
    assert_eq!(first_bad, None, "first byte that differs from the pattern");
    eprintln!(
        "1 GiB download in {took:?} ({:.0} MiB/s); RSS baseline {} MiB, max {} MiB",
        1024.0 / took.as_secs_f64(),
        baseline / 1024,
        max / 1024
    );
    assert_rss(&proxy, baseline, max, "1 GiB download");
    let l = proxy.wait_log_path("/download");
    l.assert_status_reason(200, "-");
    assert!(l.num("bytes_out").is_some_and(|n| n >= GIB), "{}", l.raw);
}
