//! Backend health through the real binary: a route with a dead backend costs no request (the
//! connect is retried on the other backend, and after `--backend-fall` failures the dead one
//! is skipped), it gets traffic again once it is back and its down time is over, RPC IN/OUT
//! pairs stay together and move together, and the admin listener's `/healthz` and `/readyz`.
//!
//! Every proxy here runs with `--backend-pool-size 0`, so each request opens its own backend
//! connection: a backend that stopped listening is then seen by the next request's connect,
//! not hidden behind a pooled connection it still serves.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::echo::Echo;
use common::proxy::Proxy;
use common::{free_port, free_ports, poll_until};

/// `GET path` on the admin (metrics) listener: the status and the body.
fn admin(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("admin response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The value of one sample of the Prometheus text (`name{labels}` as written).
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `GET path` on a new client connection: the status and, when the echo answered, its port.
fn get(proxy: &Proxy, path: &str) -> (u16, Option<u16>) {
    let r = proxy.client().get(path);
    let server = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|j| j["server"].as_u64())
        .map(|p| p as u16);
    (r.status(), server)
}

#[test]
fn a_dead_backend_costs_no_request_and_gets_traffic_again_once_back() {
    let alive = Echo::start();
    let dead_port = free_port();
    let admin_port = free_port();
    let route = format!("/={},http://127.0.0.1:{dead_port}", alive.url());
    let proxy = Proxy::start(&[
        "--route",
        &route,
        "--backend-pool-size",
        "0",
        "--backend-fall",
        "2",
        "--backend-down-time",
        "1s",
        "--metrics-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    // Every request succeeds: those sent to the dead backend before it is marked down are
    // retried on the live one (nothing was sent), and after that it is not tried at all.
    for i in 0..20 {
        let (status, server) = get(&proxy, &format!("/r{i}"));
        assert_eq!((status, server), (200, Some(alive.port())), "request {i}");
    }
    // Each worker flushes its own log buffer: wait for all twenty lines.
    let mut served = Vec::new();
    poll_until(Duration::from_secs(3), || {
        served = proxy
            .access_log()
            .into_iter()
            .filter(|l| l.contains("path=/r"))
            .collect();
        served.len() == 20
    });
    assert_eq!(served.len(), 20, "{served:#?}");
    let want = format!("backend=http://127.0.0.1:{}", alive.port());
    for l in &served {
        assert!(l.contains(&want) && l.contains("status=200"), "{l}");
    }
    let (_, metrics) = admin(admin_port, "/metrics");
    assert_eq!(
        sample(&metrics, "kcdproxy_backends_up{route=\"/\"}"),
        Some(1),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kcdproxy_backends{route=\"/\"}"),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kcdproxy_backend_marked_down_total"),
        Some(1),
        "{metrics}"
    );
    // One route has a backend up: ready.
    assert_eq!(admin(admin_port, "/readyz").0, 200);

    // The backend comes back: after its down time a request probes it, and from then on it
    // takes its share again.
    let back = Echo::start_on(dead_port);
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let came_back = poll_until(Duration::from_secs(10), || {
        let (status, server) = get(&proxy, "/again");
        assert_eq!(status, 200);
        seen.extend(server);
        seen.contains(&back.port())
    });
    assert!(
        came_back,
        "only {seen:?} answered after the backend came back"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "back before its down time was over: {:?}",
        started.elapsed()
    );
    let servers: BTreeSet<u16> = (0..6).filter_map(|_| get(&proxy, "/rr").1).collect();
    assert_eq!(servers, BTreeSet::from([alive.port(), back.port()]));
    let (_, metrics) = admin(admin_port, "/metrics");
    assert_eq!(
        sample(&metrics, "kcdproxy_backends_up{route=\"/\"}"),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "kcdproxy_backend_marked_up_total"),
        Some(1),
        "{metrics}"
    );
}

#[test]
fn rpc_in_and_out_stay_together_and_move_together_when_their_backend_goes_down() {
    let mut echos = vec![Echo::start(), Echo::start()];
    let route = format!("/rpc={},{}", echos[0].url(), echos[1].url());
    let proxy = Proxy::start(&[
        "--route",
        &route,
        "--backend-pool-size",
        "0",
        "--backend-fall",
        "1",
        "--backend-down-time",
        "60s",
    ]);
    let targets: Vec<String> = (0..8)
        .map(|i| format!("/rpc/rpcproxy.dll?exch{i:02}.example.com:6001"))
        .collect();
    // Each channel on a connection of its own, as Outlook opens them: IN and OUT of a
    // target meet on one server, whichever core accepted them.
    let pair = |target: &str| -> u16 {
        let servers: Vec<u16> = ["RPC_IN_DATA", "RPC_OUT_DATA"]
            .iter()
            .map(|method| {
                let r = proxy.client().request(method, target, &[], b"ECHO");
                assert_eq!(r.status(), 200, "{method} {target}: {}", r.summary());
                r.json()["server"].as_u64().expect("echo server port") as u16
            })
            .collect();
        assert_eq!(servers[0], servers[1], "{target}: IN and OUT parted");
        servers[0]
    };
    let before: Vec<u16> = targets.iter().map(|t| pair(t)).collect();
    assert_eq!(
        before,
        targets.iter().map(|t| pair(t)).collect::<Vec<_>>(),
        "the same target picks the same server again"
    );
    let ports: BTreeSet<u16> = before.iter().copied().collect();
    assert_eq!(ports.len(), 2, "eight targets use both servers: {before:?}");

    // The server of the first target stops listening.
    let gone = before[0];
    let at = echos.iter().position(|e| e.port() == gone).unwrap();
    let survivor = echos[1 - at].port();
    drop(echos.remove(at));
    let after: Vec<u16> = targets.iter().map(|t| pair(t)).collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if *b == gone {
            assert_eq!(*a, survivor, "{}: moved to the survivor", targets[i]);
        } else {
            assert_eq!(a, b, "{}: its server is up, it must not move", targets[i]);
        }
    }
}

#[test]
fn readyz_follows_the_backends_and_healthz_the_process() {
    let [backend_port, admin_port] = free_ports::<2>();
    let proxy = Proxy::start(&[
        "--route",
        &format!("/=http://127.0.0.1:{backend_port}"),
        "--backend-pool-size",
        "0",
        "--backend-fall",
        "1",
        "--backend-down-time",
        "300ms",
        "--metrics-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    assert_eq!(admin(admin_port, "/healthz"), (200, "ok\n".into()));
    // The workers are started by the time the proxy listens; readiness follows at once.
    assert!(poll_until(Duration::from_secs(3), || admin(
        admin_port, "/readyz"
    )
    .0 == 200));
    // The only backend refuses: the request fails (there is no other to retry on) and the
    // route has no backend up.
    assert_eq!(get(&proxy, "/down").0, 502);
    let (status, body) = admin(admin_port, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "no backend up for route /\n")
    );
    assert_eq!(admin(admin_port, "/healthz").0, 200, "alive all the same");
    // With every backend down a request still tries one (never refused untried), so once the
    // backend is back the next request after the down time brings it up.
    let _back = Echo::start_on(backend_port);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(get(&proxy, "/up").0, 200);
    assert_eq!(admin(admin_port, "/readyz"), (200, "ready\n".into()));
    assert_eq!(admin(admin_port, "/nothing").0, 404);
}

#[test]
fn an_active_check_marks_backends_down_and_up_without_a_request() {
    let alive = Echo::start();
    let [dead_port, admin_port] = free_ports::<2>();
    let route = format!(
        "/={},http://127.0.0.1:{dead_port};check=/healthcheck.htm;check-interval=100ms",
        alive.url()
    );
    let _proxy = Proxy::start(&[
        "--route",
        &route,
        "--metrics-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    let up = || {
        let (_, m) = admin(admin_port, "/metrics");
        sample(&m, "kcdproxy_backends_up{route=\"/\"}")
    };
    assert!(
        poll_until(Duration::from_secs(3), || up() == Some(1)),
        "the dead backend is not marked down: {:?}",
        up()
    );
    let requests = alive.requests();
    assert!(requests >= 1, "the live backend was checked");
    let head = alive.last_head().expect("a check's head");
    assert!(head.0.starts_with("GET /healthcheck.htm "), "{head:?}");
    let _back = Echo::start_on(dead_port);
    assert!(
        poll_until(Duration::from_secs(3), || up() == Some(2)),
        "the backend is not marked up again: {:?}",
        up()
    );
}

#[test]
fn a_backend_in_maintenance_stays_down_though_it_accepts_connections() {
    // The health page answers 503 (Exchange's healthcheck.htm in maintenance), the server
    // still accepts connections and serves requests.
    let echo = Echo::start();
    let admin_port = free_port();
    let route = format!("/={};check=/status/503;check-interval=100ms", echo.url());
    let proxy = Proxy::start(&[
        "--route",
        &route,
        "--metrics-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    assert!(poll_until(Duration::from_secs(3), || admin(
        admin_port, "/readyz"
    )
    .0 == 503));
    // Every backend of the route is down: a request still tries one, and its successful
    // connect does not overrule the check.
    assert_eq!(get(&proxy, "/still").0, 200);
    let (status, body) = admin(admin_port, "/readyz");
    assert_eq!(
        (status, body.as_str()),
        (503, "no backend up for route /\n")
    );
}

#[test]
fn readyz_turns_503_when_the_drain_starts() {
    let echo = Echo::start();
    let admin_port = free_port();
    let mut proxy = Proxy::start(&[
        "--route",
        &echo.route(),
        "--metrics-listen",
        &format!("127.0.0.1:{admin_port}"),
    ]);
    assert!(poll_until(Duration::from_secs(3), || admin(
        admin_port, "/readyz"
    )
    .0 == 200));
    // A request in flight keeps the process draining (and the admin listener up) a while.
    let mut slow = proxy.client();
    slow.send(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n");
    std::thread::sleep(Duration::from_millis(200));
    proxy.signal(libc::SIGTERM);
    let mut seen = (0, String::new());
    assert!(
        poll_until(Duration::from_secs(1), || {
            seen = admin(admin_port, "/readyz");
            seen.0 == 503
        }),
        "{seen:?}"
    );
    assert_eq!(seen.1, "draining: shutting down\n");
    assert_eq!(
        admin(admin_port, "/healthz").0,
        200,
        "still alive while draining"
    );
    let r = slow.read_final().expect("the in-flight request finishes");
    assert_eq!(r.status(), 200);
}
