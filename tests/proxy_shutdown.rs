//! Graceful shutdown: on SIGTERM the proxy stops accepting, lets in-flight requests finish (up
//! to --drain-timeout), closes idle keep-alive connections, and exits 0.

mod common;

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::echo::Echo;
use common::proxy::Proxy;
use common::{local, pattern};

fn setup(drain: &str) -> (Echo, Proxy) {
    let echo = Echo::start();
    let route = echo.route();
    let proxy = Proxy::start(&["--route", &route, "--drain-timeout", drain]);
    (echo, proxy)
}

/// Whether a new connection to `port` is refused right now.
fn refused(port: u16) -> bool {
    match TcpStream::connect_timeout(&local(port), Duration::from_millis(300)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

#[test]
fn sigterm_lets_an_inflight_upload_finish_then_exits_0() {
    let (echo, mut proxy) = setup("15s");
    const PIECE: usize = 1 << 20;
    const PIECES: u64 = 48;
    let total = PIECES * PIECE as u64;

    // An idle keep-alive connection: it must not hold the shutdown up.
    let mut idle = proxy.client();
    assert_eq!(idle.get("/idle").status(), 200);

    let mut c = proxy.client();
    c.send(
        format!("POST /drain-upload HTTP/1.1\r\nHost: kcd.test\r\nContent-Length: {total}\r\n\r\n")
            .as_bytes(),
    );
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut term_at = None;
    let mut refused_after = None;
    for i in 0..PIECES {
        let off = i * PIECE as u64;
        pattern::fill(off, &mut buf);
        hasher.update(&buf);
        if let Err(e) = c.try_send(&buf) {
            panic!(
                "the in-flight upload was cut at byte {off} of {total}, {:?} after SIGTERM: {e}",
                term_at.map(|t: Instant| t.elapsed())
            );
        }
        if i == 8 {
            proxy.stop_sigterm();
            term_at = Some(Instant::now());
        }
        if let Some(t) = term_at {
            if refused_after.is_none() && refused(proxy.port()) {
                refused_after = Some(t.elapsed());
            }
        }
        // Pace the upload so that it spans the shutdown (about 2 s in all).
        std::thread::sleep(Duration::from_millis(40));
    }
    let term_at = term_at.expect("SIGTERM sent");
    let upload_done = term_at.elapsed();
    let r = c
        .read_final()
        .unwrap_or_else(|e| panic!("no response to the in-flight upload after SIGTERM: {e}"));
    assert_eq!(r.status(), 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["body_len"], total);
    assert_eq!(j["body_sha256"], hex::encode(hasher.finalize()));

    assert!(
        refused_after.is_some(),
        "new connections were still accepted {upload_done:?} after SIGTERM (the upload was still \
         running): the proxy should stop accepting at once"
    );

    let status = proxy.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after a graceful shutdown: {status}\n{}",
        proxy.stderr()
    );
    assert!(
        term_at.elapsed() < Duration::from_secs(10),
        "the proxy took {:?} to exit after SIGTERM although only one upload of ~2 s was in \
         flight (--drain-timeout 15s): idle connections held it up?",
        term_at.elapsed()
    );
    idle.wait_closed(Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("idle keep-alive connection after exit: {e}"));
    assert!(refused(proxy.port()), "the port still accepts after exit");
    assert_eq!(echo.requests(), 2);
    proxy
        .wait_log_path("/drain-upload")
        .assert_status_reason(200, "-");
}

#[test]
fn drain_timeout_bounds_the_shutdown() {
    let (echo, mut proxy) = setup("1s");
    let mut c = proxy.client();
    c.send(b"GET /slow?ms=20000 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    // Wait until the request is in flight at the backend.
    assert!(
        common::poll_until(Duration::from_secs(3), || echo.requests() == 1),
        "the slow request never reached the backend"
    );
    let t = Instant::now();
    proxy.stop_sigterm();
    let status = proxy.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "exit {took:?} after SIGTERM with --drain-timeout 1s"
    );
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the 1 s drain timeout, with a request in flight"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status: {status}\n{}",
        proxy.stderr()
    );
    // The client's connection is closed (whatever was or wasn't sent on it).
    c.wait_closed(Duration::from_secs(1)).unwrap();
}

#[test]
fn sigint_also_shuts_down_gracefully() {
    let (_echo, mut proxy) = setup("5s");
    assert_eq!(proxy.client().get("/before-sigint").status(), 200);
    let t = Instant::now();
    proxy.signal(libc::SIGINT);
    let status = proxy.wait_exit(Duration::from_secs(3));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status: {status}\n{}",
        proxy.stderr()
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(refused(proxy.port()));
}

/// SIGHUP, as logrotate's `postrotate` sends it, reopens the access log at its path and changes
/// nothing else: the proxy keeps serving (a HUP's default action would have killed it), the
/// keep-alive connection survives, the rotated file keeps the lines written before and the new
/// file gets the ones after.
#[test]
fn sighup_reopens_the_access_log_and_keeps_serving() {
    let (_echo, mut proxy) = setup("5s");
    let mut c = proxy.client();
    assert_eq!(c.get("/before-rotation").status(), 200);
    proxy.wait_log_path("/before-rotation");

    let log = proxy.dir().join("access.log");
    let rotated = proxy.dir().join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate the access log");
    proxy.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(
            Instant::now() < deadline,
            "no new access log 5 s after SIGHUP; stderr:\n{}",
            proxy.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(proxy.try_exit().is_none(), "SIGHUP stopped the proxy");

    assert_eq!(
        c.get("/after-rotation").status(),
        200,
        "same keep-alive connection"
    );
    assert_eq!(proxy.client().get("/new-connection").status(), 200);
    proxy.wait_log_path("/after-rotation");
    proxy.wait_log_path("/new-connection");
    let new_log = std::fs::read_to_string(&log).expect("new access log");
    let old_log = std::fs::read_to_string(&rotated).expect("rotated access log");
    assert!(old_log.contains("path=/before-rotation"), "{old_log}");
    assert!(!old_log.contains("/after-rotation"), "{old_log}");
    assert!(!new_log.contains("/before-rotation"), "{new_log}");
    assert!(
        proxy.stderr().contains("access log reopened"),
        "{}",
        proxy.stderr_tail()
    );

    proxy.stop_sigterm();
    assert!(proxy.wait_exit(Duration::from_secs(10)).success());
}
