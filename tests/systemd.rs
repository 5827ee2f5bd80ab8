//! systemd integration: the notify protocol (sd_notify(3)) through the real binary, with the
//! test playing the service manager on a datagram socket, and the unit file of `dist/`.

mod common;

use std::ffi::OsString;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{self, UnixDatagram};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use kcdproxy::config::{parse_duration, Flags};

use common::client::Client;
use common::echo::Echo;
use common::proxy::{binary, Launch};
use common::TempDir;

/// The unit file, as installed.
const UNIT: &str = include_str!("../dist/kcdproxy.service");

/// The service manager's end of `$NOTIFY_SOCKET`.
struct Manager {
    sock: UnixDatagram,
    /// The value of `NOTIFY_SOCKET` naming it.
    env: OsString,
    /// Holds a path socket's directory.
    _dir: Option<TempDir>,
}

impl Manager {
    /// A socket at a path, as systemd makes it (`/run/systemd/notify`).
    fn at_path() -> Manager {
        let dir = TempDir::new("notify");
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        Manager {
            sock,
            env: path.into_os_string(),
            _dir: Some(dir),
        }
    }

    /// A socket in the abstract namespace: `NOTIFY_SOCKET=@name`.
    fn abstract_name() -> Manager {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "kcdproxy-itest-notify-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let addr = net::SocketAddr::from_abstract_name(&name).expect("abstract address");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind the abstract notify socket");
        Manager {
            sock,
            env: format!("@{name}").into(),
            _dir: None,
        }
    }

    /// The next notification, None if none comes within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        recv(&self.sock, timeout)
    }
}

fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).expect("read timeout");
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 notification")),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("receiving a notification: {e}"),
    }
}

/// The `KEY=VALUE` lines of a notification, in order.
fn fields(msg: &str) -> Vec<(&str, &str)> {
    msg.lines()
        .map(|l| {
            l.split_once('=')
                .unwrap_or_else(|| panic!("{l:?} in {msg:?}"))
        })
        .collect()
}

fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    fields(msg)
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Starts a proxy told to notify `manager`, checks `READY=1` (and that the listener it names
/// serves a request the moment it arrives), then SIGTERM and `STOPPING=1`, then exit 0.
fn ready_then_stopping(manager: Manager) {
    let echo = Echo::start();
    let route = echo.route();

    // Receives READY=1 and at once sends a request to the first listener its STATUS names: if
    // READY came before the listeners were bound, the connection would be refused.
    let sock = manager.sock.try_clone().expect("clone the notify socket");
    let first = std::thread::spawn(move || {
        let msg = recv(&sock, Duration::from_secs(15)).expect("no notification within 15 s");
        let status = field(&msg, "STATUS").unwrap_or_default().to_string();
        let addr: SocketAddr = status
            .strip_prefix("serving on ")
            .and_then(|s| s.split([',', ' ']).next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in STATUS={status:?}"));
        let answer = Client::try_open(addr).map(|mut c| c.get("/after-ready").status());
        (msg, answer)
    });

    let mut proxy = Launch::new(&["--route", &route, "--drain-timeout", "5s"])
        .env("NOTIFY_SOCKET", &manager.env)
        .start();
    let (ready, answer) = first.join().expect("the notification receiver");
    assert_eq!(
        field(&ready, "READY"),
        Some("1"),
        "first notification {ready:?}"
    );
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(proxy.pid().to_string().as_str()),
        "{ready:?}"
    );
    let status = field(&ready, "STATUS").expect("a STATUS line");
    assert!(
        status.contains(&format!("127.0.0.1:{}", proxy.port())),
        "STATUS names the listener: {status:?}"
    );
    assert_eq!(
        answer.expect("connect right after READY=1"),
        200,
        "a request right after READY=1"
    );
    assert_eq!(echo.requests(), 1, "the request reached the origin");

    // Serving: nothing more to say until a stop.
    assert_eq!(manager.recv(Duration::from_millis(300)), None);

    proxy.stop_sigterm();
    let stopping = manager
        .recv(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no STOPPING=1 after SIGTERM\n{}", proxy.stderr_tail()));
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert!(
        field(&stopping, "STATUS").is_some_and(|s| s.starts_with("draining")),
        "{stopping:?}"
    );
    let exit = proxy.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "exit after the drain: {exit:?}");
    assert_eq!(
        manager.recv(Duration::from_millis(100)),
        None,
        "nothing after STOPPING=1"
    );
}

#[test]
fn ready_when_serving_and_stopping_on_sigterm_at_a_path() {
    ready_then_stopping(Manager::at_path());
}

#[test]
fn ready_when_serving_and_stopping_on_sigterm_at_an_abstract_name() {
    ready_then_stopping(Manager::abstract_name());
}

/// A `NOTIFY_SOCKET` nobody listens on (the manager went away) is logged, not fatal.
#[test]
fn an_unreachable_notify_socket_does_not_stop_the_proxy() {
    let echo = Echo::start();
    let dir = TempDir::new("notify-gone");
    let proxy = Launch::new(&["--route", &echo.route()])
        .env("NOTIFY_SOCKET", dir.join("nobody.sock"))
        .start();
    assert_eq!(proxy.client().get("/still-serving").status(), 200);
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("cannot notify systemd"),
        "the failed READY=1 is logged:\n{stderr}"
    );
}

/// `systemd-analyze verify` (systemd's own parser) accepts the unit without a warning. The
/// unit names the installed binary, /usr/bin/kcdproxy, which verify requires to exist: the
/// copy checked here names the binary under test instead, and differs in nothing else.
#[test]
fn the_unit_file_verifies() {
    let dir = TempDir::new("unit");
    let unit = dir.join("kcdproxy.service");
    let text = UNIT.replace(
        "ExecStart=/usr/bin/kcdproxy ",
        &format!("ExecStart={} ", binary()),
    );
    assert_ne!(text, UNIT, "the unit's ExecStart= names /usr/bin/kcdproxy");
    std::fs::write(&unit, text).expect("write the unit copy");
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            eprintln!("skipped: systemd-analyze is not installed (Debian package `systemd`)");
            return;
        }
        Err(e) => panic!("running systemd-analyze: {e}"),
    };
    // Unknown keys and bad values are warnings with exit status 0: any output is a failure.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

/// The unit's stop timeout leaves the default drain time to finish: systemd's SIGKILL must not
/// cut a graceful drain short.
#[test]
fn the_unit_waits_longer_than_the_default_drain() {
    let value = |key: &str| {
        UNIT.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .trim()
    };
    let stop = parse_duration(value("TimeoutStopSec")).expect("TimeoutStopSec");
    let flags = Flags::try_parse_from(["kcdproxy"]).expect("no flags parse");
    let drain = parse_duration(&flags.drain_timeout).expect("default --drain-timeout");
    assert!(
        stop >= drain + Duration::from_secs(10),
        "TimeoutStopSec={stop:?} must stay above --drain-timeout's default {drain:?}"
    );
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert!(
        value("SystemCallFilter")
            .split_whitespace()
            .any(|s| s == "io_uring_setup"),
        "the seccomp filter keeps io_uring"
    );
}

/// The example flags of `dist/kcdproxy.default`, uncommented and split as systemd splits
/// `$KCDPROXY_OPTS` (at whitespace, after the backslash-newline continuations), are flags the
/// proxy knows: a copied example does not fail on a misspelt flag.
#[test]
fn the_default_file_example_parses() {
    let text = include_str!("../dist/kcdproxy.default");
    let example: String = text
        .lines()
        .skip_while(|l| !l.starts_with("# KCDPROXY_OPTS="))
        .map(|l| l.strip_prefix('#').unwrap_or(l))
        .take_while(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let value = example
        .trim()
        .strip_prefix("KCDPROXY_OPTS=\"")
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or_else(|| panic!("a quoted KCDPROXY_OPTS example:\n{example}"))
        .replace("\\\n", " ");
    let args: Vec<&str> = value.split_whitespace().collect();
    assert!(args.contains(&"--listen-tls"), "{args:?}");
    let flags = Flags::try_parse_from(std::iter::once("kcdproxy").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("the example flags: {e}"));
    assert_eq!(flags.route.len(), 1, "one route: {args:?}");
}
