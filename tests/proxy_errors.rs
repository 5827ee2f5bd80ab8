//! Bad input and failing backends: every malformed or ambiguous request gets the right status,
//! the right access-log reason, a closed connection, and never reaches the backend; backend
//! failures map to 502/504; a client that sends its head too slowly is cut off.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::client::{is_timeout, preview, Client};
use common::echo::Echo;
use common::proxy::Proxy;
use common::{free_port, local};

const LOG_WAIT: Duration = Duration::from_secs(3);

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    reason: &'static str,
}

fn case(name: &'static str, request: &[u8], status: u16, reason: &'static str) -> Case {
    Case {
        name,
        request: request.to_vec(),
        status,
        reason,
    }
}

/// Runs every case against its own echo origin and proxy (started with `extra` flags), a few
/// at a time, and fails once listing every problem of every case.
fn run_cases(extra: &[&str], cases: &[Case]) {
    let mut problems = Vec::new();
    for batch in cases.chunks(6) {
        std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|case| s.spawn(move || check_case(extra, case)))
                .collect();
            for h in handles {
                problems.extend(h.join().expect("case thread"));
            }
        });
    }
    let failed: std::collections::BTreeSet<&str> = problems.iter().map(|(name, _)| *name).collect();
    assert!(
        problems.is_empty(),
        "{} of {} bad-input cases failed:\n  {}",
        failed.len(),
        cases.len(),
        problems
            .iter()
            .map(|(name, p)| format!("{name}: {p}"))
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// Sends one case on a fresh connection to a fresh proxy; checks the answer, that the
/// connection is closed, the access-log line, and that the backend saw no request.
fn check_case(extra: &[&str], case: &Case) -> Vec<(&'static str, String)> {
    let (echo, proxy) = echo_and_proxy(extra);
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push((case.name, p));
    let mut c = proxy.client();
    // The proxy may answer and close before reading everything: a failed write is fine.
    let _ = c.try_send(&case.request);
    let r = match c.read_final() {
        Ok(r) => r,
        Err(e) => {
            let stderr = proxy.stderr();
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            problem(format!(
                "no response: {e} (proxy stderr, last lines: {tail:?})"
            ));
            return problems;
        }
    };
    if let Some(why) = r.header("X-Echo-Error") {
        problem(format!("forwarded, and the backend rejected it ({why})"));
        return problems;
    }
    if r.status() != case.status {
        problem(format!(
            "status {} (expected {}): {}",
            r.status(),
            case.status,
            r.summary()
        ));
        return problems;
    }
    if let Err(e) = c.wait_closed(Duration::from_secs(2)) {
        problem(format!(
            "answered {} but kept the connection open: {e}",
            case.status
        ));
    }
    let mut line = None;
    common::poll_until(LOG_WAIT, || {
        line = proxy
            .log_lines()
            .into_iter()
            .find(|l| l.status() == Some(case.status));
        line.is_some()
    });
    match line {
        None => problem(format!(
            "no access-log line with status={} within {LOG_WAIT:?}; log: {:?}",
            case.status,
            proxy.access_log()
        )),
        Some(l) if l.reason() != Some(case.reason) => problem(format!(
            "access-log reason {:?} (expected {}): {}",
            l.reason(),
            case.reason,
            l.raw
        )),
        Some(_) => {}
    }
    if echo.requests() != 0 {
        problem(format!(
            "the backend received {} complete request(s)",
            echo.requests()
        ));
    } else if echo.connections() != 0 && case.head_error() {
        problem("a backend connection was opened for a request with a bad head".into());
    }
    problems
}

impl Case {
    /// Whether the defect is in the head (so nothing at all may reach the backend); body
    /// defects (chunk sizes) may be found after the head was forwarded.
    fn head_error(&self) -> bool {
        !self.name.contains("chunk size")
    }
}

fn echo_and_proxy(extra: &[&str]) -> (Echo, Proxy) {
    let echo = Echo::start();
    let route = echo.route();
    let mut args = vec!["--route", route.as_str()];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    (echo, proxy)
}

#[test]
fn malformed_and_ambiguous_requests_are_rejected() {
    const H: &str = "Host: kcd.test\r\n";
    let smuggle = "GET /smuggled HTTP/1.1\r\nHost: kcd.test\r\n\r\n";
    let head = |fields: &str, body: &str| -> Vec<u8> {
        format!("POST /bad HTTP/1.1\r\n{H}{fields}\r\n{body}").into_bytes()
    };
    let mut big_head = format!("GET /big-head HTTP/1.1\r\n{H}");
    for i in 0..70 {
        big_head.push_str(&format!("X-Pad-{i:02}: {}\r\n", "a".repeat(1000)));
    }
    big_head.push_str("\r\n");
    let long_line = format!("GET /{} HTTP/1.1\r\n{H}\r\n", "u".repeat(20 * 1024));

    let cases = [
        case(
            "Content-Length with Transfer-Encoding",
            &head(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{smuggle}"),
            ),
            400,
            "bad_request",
        ),
        case(
            "Transfer-Encoding with Content-Length",
            &head(
                "Transfer-Encoding: chunked\r\nContent-Length: 45\r\n",
                &format!("0\r\n\r\n{smuggle}"),
            ),
            400,
            "bad_request",
        ),
        case(
            "differing duplicate Content-Length",
            &head("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            400,
            "bad_request",
        ),
        case(
            "Content-Length list with differing values",
            &head("Content-Length: 5, 6\r\n", "hello!"),
            400,
            "bad_request",
        ),
        case(
            "non-numeric Content-Length",
            &head("Content-Length: abc\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "negative Content-Length",
            &head("Content-Length: -1\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "overflowing Content-Length",
            &head("Content-Length: 99999999999999999999999\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "Transfer-Encoding: gzip, chunked",
            &head("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            400,
            "bad_request",
        ),
        case(
            "Transfer-Encoding: identity",
            &head("Transfer-Encoding: identity\r\n", "hello"),
            400,
            "bad_request",
        ),
        case(
            "obs-fold (space)",
            &head("X-Folded: a\r\n b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "obs-fold (tab)",
            &head("X-Folded: a\r\n\tb\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "invalid chunk size",
            &head("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            400,
            "bad_request",
        ),
        case(
            "chunk size with 0x prefix",
            &head(
                "Transfer-Encoding: chunked\r\n",
                "0x5\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            "bad_request",
        ),
        case(
            "overflowing chunk size",
            &head(
                "Transfer-Encoding: chunked\r\n",
                "1FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
            ),
            400,
            "bad_request",
        ),
        case(
            "NUL in a header value",
            &head("X-Nul: a\0b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "CR in a header value",
            &head("X-Cr: a\rb\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "bare LF in a header value",
            &head("X-Lf: a\nb\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "space before the colon",
            &head("X-Space : b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "space in a header name",
            &head("Bad Name: b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "non-token header name",
            &head("X(paren): b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "empty header name",
            &head(": b\r\nContent-Length: 0\r\n", ""),
            400,
            "bad_request",
        ),
        case(
            "malformed request line",
            format!("GET /two spaces HTTP/1.1\r\n{H}\r\n").as_bytes(),
            400,
            "bad_request",
        ),
        case(
            "head larger than --max-header-bytes",
            big_head.as_bytes(),
            431,
            "headers_too_large",
        ),
        case(
            "request line longer than 16 KiB",
            long_line.as_bytes(),
            414,
            "uri_too_long",
        ),
    ];
    run_cases(&[], &cases);
}

#[test]
fn host_header_rules_of_rfc9112() {
    let cases = [
        case(
            "HTTP/1.1 request without Host",
            b"GET /no-host HTTP/1.1\r\nX-A: b\r\n\r\n",
            400,
            "bad_request",
        ),
        case(
            "two Host headers",
            b"GET /two-hosts HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
            400,
            "bad_request",
        ),
    ];
    run_cases(&[], &cases);
}

#[test]
fn a_lower_max_header_bytes_is_enforced() {
    let limit = ["--max-header-bytes", "4096"];
    let (_echo, proxy) = echo_and_proxy(&limit);
    let fits = format!("X-Pad: {}", "b".repeat(2000));
    let r = proxy
        .client()
        .request("GET", "/fits", &[("X-Fill", &fits)], b"");
    assert_eq!(r.status(), 200, "{}", r.summary());
    let mut req = String::from("GET /too-big HTTP/1.1\r\nHost: kcd.test\r\n");
    req.push_str(&format!("X-Pad: {}\r\n\r\n", "c".repeat(5000)));
    run_cases(
        &limit,
        &[case(
            "5 KB head over a 4 KiB limit",
            req.as_bytes(),
            431,
            "headers_too_large",
        )],
    );
}

#[test]
fn unknown_route_is_404_no_route() {
    let echo = Echo::start();
    let route = format!("/api={}", echo.url());
    let proxy = Proxy::start(&["--route", &route]);
    let mut c = proxy.client();
    let r = c.get("/api/x");
    assert_eq!(r.status(), 200, "{}", r.summary());
    let r = c.get("/other/x");
    assert_eq!(r.status(), 404, "{}", r.summary());
    proxy
        .wait_log_path("/other/x")
        .assert_status_reason(404, "no_route");
    assert_eq!(echo.requests(), 1);
}

#[test]
fn refused_backend_connection_is_502() {
    let dead = free_port(); // nothing listens there
    let route = format!("/=http://127.0.0.1:{dead}");
    let proxy = Proxy::start(&["--route", &route, "--backend-connect-timeout", "2s"]);
    let t = Instant::now();
    let r = proxy.client().get("/refused");
    assert_eq!(r.status(), 502, "{}", r.summary());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    let l = proxy.wait_log_path("/refused");
    l.assert_status_reason(502, "backend_connect");
}

#[test]
fn backend_that_does_not_accept_is_504_connect_timeout() {
    // A listener with a full accept queue that never accepts: further SYNs are dropped, so a
    // connect neither succeeds nor is refused.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&local(0).into()).unwrap();
    sock.listen(0).unwrap();
    let port = sock.local_addr().unwrap().as_socket().unwrap().port();
    let mut fillers = Vec::new();
    let mut blackholed = false;
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&local(port), Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => {
                blackholed = true;
                break;
            }
        }
    }
    assert!(
        blackholed,
        "fixture: could not make a loopback port that times out connects"
    );

    let route = format!("/=http://127.0.0.1:{port}");
    let proxy = Proxy::start(&["--route", &route, "--backend-connect-timeout", "1s"]);
    let t = Instant::now();
    let r = proxy.client().get("/blackhole");
    let took = t.elapsed();
    assert_eq!(r.status(), 504, "{}", r.summary());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?} with --backend-connect-timeout 1s"
    );
    proxy
        .wait_log_path("/blackhole")
        .assert_status_reason(504, "backend_connect_timeout");
    drop(fillers);
}

#[test]
fn slow_backend_is_504_after_backend_timeout() {
    let (echo, proxy) = echo_and_proxy(&["--backend-timeout", "2s"]);
    let mut c = proxy.client();
    let t = Instant::now();
    let r = c.get("/slow?ms=6000");
    let took = t.elapsed();
    assert_eq!(r.status(), 504, "{}", r.summary());
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(4),
        "answered after {took:?} with --backend-timeout 2s"
    );
    proxy
        .wait_log_path("/slow")
        .assert_status_reason(504, "backend_timeout");
    // The timed-out backend connection is not reused for the next request.
    let r = proxy.client().get("/after-timeout");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["conn_request"], 1, "{}", r.summary());
    assert!(echo.connections() >= 2);
}

#[test]
fn garbage_from_the_backend_is_502_backend_protocol() {
    let (_echo, proxy) = echo_and_proxy(&[]);
    let r = proxy.client().get("/garbage");
    assert_eq!(r.status(), 502, "{}", r.summary());
    proxy
        .wait_log_path("/garbage")
        .assert_status_reason(502, "backend_protocol");
}

#[test]
fn slow_request_head_is_cut_off_at_the_header_timeout() {
    let (echo, proxy) = echo_and_proxy(&["--header-timeout", "2s"]);
    let mut s = std::net::TcpStream::connect_timeout(&local(proxy.port()), Duration::from_secs(5))
        .expect("connect to the proxy");
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Keeps sending a byte every 200 ms: an idle timer would never fire, only a deadline
    // counted from the first byte does.
    let partial = b"GET /slowloris HTTP/1.1\r\nHost: kcd.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let mut received = Vec::new();
    let mut closed_at = None;
    let mut tmp = [0u8; 4096];
    'outer: for b in partial.iter().cycle() {
        if start.elapsed() > Duration::from_secs(6) {
            break;
        }
        if s.write_all(&[*b]).is_err() {
            closed_at = Some(start.elapsed());
            break;
        }
        loop {
            match s.read(&mut tmp) {
                Ok(0) => {
                    closed_at = Some(start.elapsed());
                    break 'outer;
                }
                Ok(n) => received.extend_from_slice(&tmp[..n]),
                Err(e) if is_timeout(&e) => break,
                Err(_) => {
                    closed_at = Some(start.elapsed());
                    break 'outer;
                }
            }
        }
    }
    let closed_at = closed_at.unwrap_or_else(|| {
        panic!(
            "the proxy kept a connection open for {:?} while the head trickled in \
             (--header-timeout 2s); received {:?}",
            start.elapsed(),
            preview(&received)
        )
    });
    assert!(
        closed_at >= Duration::from_millis(1500) && closed_at <= Duration::from_secs(3),
        "closed after {closed_at:?}; expected about 2 s (--header-timeout 2s)"
    );
    if !received.is_empty() {
        assert!(
            received.starts_with(b"HTTP/1.1 408"),
            "the only acceptable answer is 408: {:?}",
            preview(&received)
        );
        let l = proxy.wait_log_line(|l| l.status() == Some(408), LOG_WAIT);
        l.assert_status_reason(408, "client_header_timeout");
    }
    assert_eq!(echo.connections(), 0);
    // The proxy still serves others.
    let r = Client::connect(proxy.port()).get("/alive");
    assert_eq!(r.status(), 200, "{}", r.summary());
}

#[test]
fn truncated_backend_response_closes_the_client_connection() {
    let (_echo, proxy) = echo_and_proxy(&[]);
    let mut c = proxy.client();
    c.send(b"GET /truncate?bytes=100000 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    let t = Instant::now();
    match c.read_final() {
        Ok(r) => panic!(
            "the client got a complete response although the backend sent half of it: {}",
            r.summary()
        ),
        Err(e) => assert!(
            e.contains("closed") || e.contains("reset"),
            "expected the connection to be closed mid-body: {e}"
        ),
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let l = proxy.wait_log_path("/truncate");
    assert_ne!(
        l.reason(),
        Some("-"),
        "a truncated response is not fine: {}",
        l.raw
    );
}

#[test]
fn backend_stalling_mid_response_is_cut_at_the_backend_timeout() {
    let (_echo, proxy) = echo_and_proxy(&["--backend-timeout", "1s"]);
    let mut c = proxy.client();
    c.send(b"GET /drip?chunks=3&ms=4000&size=10 HTTP/1.1\r\nHost: kcd.test\r\n\r\n");
    let head = c.read_head().expect("the response head comes at once");
    assert_eq!(head.status, 200);
    let t = Instant::now();
    let mut got = 0;
    let r = c.read_body_with(&head, &mut |b| got += b.len());
    let took = t.elapsed();
    assert!(r.is_err(), "the stalled body completed?! {got} bytes");
    assert!(got < 30, "{got} bytes");
    assert!(
        took < Duration::from_millis(2500),
        "connection cut only after {took:?} with --backend-timeout 1s"
    );
    proxy
        .wait_log_path("/drip")
        .assert_status_reason(200, "backend_timeout");
}

#[test]
fn client_stalling_mid_body_is_cut_at_the_client_idle_timeout() {
    let (echo, proxy) = echo_and_proxy(&["--client-idle-timeout", "1s"]);
    let mut c = proxy.client();
    c.send(b"POST /stalled HTTP/1.1\r\nHost: kcd.test\r\nContent-Length: 100\r\n\r\n0123456789");
    let t = Instant::now();
    let got = c
        .wait_closed(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("client stalled mid-body, --client-idle-timeout 1s: {e}"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
    if !got.is_empty() {
        assert!(
            got.starts_with(b"HTTP/1.1 408"),
            "the only acceptable answer is 408: {:?}",
            preview(&got)
        );
    }
    let l = proxy.wait_log_path("/stalled");
    assert_eq!(l.reason(), Some("client_body_timeout"), "{}", l.raw);
    assert_eq!(echo.requests(), 0);
}

#[test]
fn client_abort_mid_upload_does_not_poison_the_backend_pool() {
    let (echo, proxy) = echo_and_proxy(&[]);
    let mut c = proxy.client();
    assert_eq!(c.get("/warm").status(), 200);
    c.send(b"POST /aborted HTTP/1.1\r\nHost: kcd.test\r\nContent-Length: 10485760\r\n\r\n");
    c.send(&common::pattern::bytes(1 << 20));
    assert!(
        common::poll_until(Duration::from_secs(3), || echo
            .last_head()
            .is_some_and(|(line, _)| line.starts_with("POST /aborted "))),
        "the upload never reached the backend"
    );
    drop(c);
    // The backend connection carried half a body: the proxy must close it, never reuse it.
    assert!(
        common::poll_until(Duration::from_secs(3), || echo.closed() >= 1),
        "the proxy kept the backend connection of an aborted upload open"
    );
    let r = proxy.client().get("/after-abort");
    assert_eq!(r.status(), 200, "{}", r.summary());
    assert_eq!(r.json()["conn_request"], 1, "{}", r.summary());
    assert_eq!(echo.requests(), 2);
}

#[test]
fn silent_connection_is_closed_at_the_header_timeout() {
    let (echo, proxy) = echo_and_proxy(&["--header-timeout", "1s"]);
    let mut c = proxy.client();
    let t = Instant::now();
    let got = c
        .wait_closed(Duration::from_secs(4))
        .unwrap_or_else(|e| panic!("a connection that never sends a byte: {e}"));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?} with --header-timeout 1s"
    );
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        preview(&got)
    );
    assert_eq!(echo.connections(), 0);
}
