//! What the client pre-authentication and delegation tests (`tests/auth_*.rs`, `tests/kcd_*.rs`)
//! add to the core fixtures: the proxy in front of the lab's backend ([`start_proxy`]), a raw
//! client that names the proxy's host ([`client`]), `Authorization` values, unique names for
//! paths, and counting requests in the backend's access log.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::certs::CertPair;
use super::client::Client;
use super::lab::{Lab, User};
use super::poll_until;
use super::proxy::{Launch, Proxy};

/// How long a proxy in front of the lab may take to listen (`--kerberos-login` logs in first).
const LAB_READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A unique name for this run (paths in the backend's access log, which outlives test runs).
pub fn nonce(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{tag}-{}-{secs}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts kcdproxy in front of the lab with `args` (routes and auth flags): a plain listener
/// and a TLS one with the lab's proxy certificate (`proxy.example.test`, trusted through the
/// lab's CA), the lab's Kerberos environment, `--no-pin` and `--drain-timeout 1s` unless `args`
/// say otherwise.
pub fn start_proxy(lab: &Lab, args: &[String]) -> Proxy {
    start_proxy_with_env(lab, args, &[])
}

/// [`start_proxy`] with extra environment variables for the proxy (after the lab's, so they may
/// override `KRB5_CONFIG`).
pub fn start_proxy_with_env(lab: &Lab, args: &[String], env: &[(&str, &Path)]) -> Proxy {
    let cert = CertPair {
        cert: lab.pki.proxy_cert.clone(),
        key: lab.pki.proxy_key.clone(),
    };
    let mut launch = Launch::new(args)
        .tls(&[&cert])
        .default_flag("--no-pin", None)
        .default_flag("--drain-timeout", Some("1s"))
        .ready_timeout(LAB_READY_TIMEOUT);
    for (key, value) in lab.krb5_env().into_iter().chain(env.iter().copied()) {
        launch = launch.env(key, value);
    }
    let proxy = launch.start();
    eprintln!(
        "kcdproxy pid {} on {} (TLS port {}); logs in {}",
        proxy.pid(),
        proxy.addr(),
        proxy.tls_port(),
        proxy.dir().path().display()
    );
    proxy
}

/// A raw client connection to `addr` whose requests name the lab's proxy host
/// (`Host: proxy.example.test`), as the lab's clients do.
#[track_caller]
pub fn client(lab: &Lab, addr: SocketAddr) -> Client {
    Client::open(addr).with_host(&lab.proxy_host)
}

/// `SCHEME base64(token)`: an `Authorization` value.
pub fn auth_header(scheme: &str, token: &[u8]) -> String {
    format!("{scheme} {}", B64.encode(token))
}

/// `Basic base64(name:password)` for a lab user (the bare name: the proxy maps it to its realm).
pub fn basic(user: &User) -> String {
    auth_header(
        "Basic",
        format!("{}:{}", user.name, user.password).as_bytes(),
    )
}

/// Counts the backend's (Apache's) access-log lines for `method path`, after waiting up to 3 s
/// for at least `at_least` and then `settle` more for late extra ones.
pub fn backend_hits(
    lab: &Lab,
    method: &str,
    path: &str,
    at_least: usize,
    settle: Duration,
) -> usize {
    let log = lab.log_dir.join("backend-access.log");
    let needle = format!("\"{method} {path} HTTP/1.1\"");
    let count = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    };
    poll_until(Duration::from_secs(3), || count() >= at_least);
    std::thread::sleep(settle);
    count()
}
