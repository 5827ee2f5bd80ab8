//! Active health checks (`check=/path` on a route): one thread for the whole process GETs the
//! path on every backend of those routes every `check-interval` and records the verdict in
//! [`Health`]. One place rather than every core, so a backend sees one check per interval
//! however many workers run, and no core ever blocks on one.
//!
//! A backend passes with a 2xx or 3xx status (haproxy's `httpchk` rule); a refused or timed-out
//! connect, a failed TLS handshake, no status line within the connect timeout, or any other
//! status marks it down at once. Exchange's `/owa/healthcheck.htm` (and the other protocols'
//! `healthcheck.htm`) answers 200 while the protocol is healthy and stops answering it when the
//! server is put into maintenance, while the server still accepts TCP connections: that is what
//! passive health cannot see.
//!
//! Checks run one after another; a backend that times out delays the others' checks by at most
//! the connect timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;

use super::health::Health;
use crate::config::route::RouteTable;
use crate::config::{Backend, Scheme};

/// Longest status line read from a backend's check answer.
const MAX_STATUS_LINE: usize = 1024;

struct Job {
    route: usize,
    backend: usize,
    target: Backend,
    path: String,
    interval: Duration,
    due: Instant,
}

/// Starts the checking thread when a route has `check=`; `Ok(false)` when none has.
pub fn spawn_checks(
    routes: &RouteTable,
    health: Arc<Health>,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> std::io::Result<bool> {
    let now = Instant::now();
    let mut jobs: Vec<Job> = Vec::new();
    for (r, route) in routes.routes().iter().enumerate() {
        let Some(path) = &route.options.check else {
            continue;
        };
        for (b, backend) in route.backends.iter().enumerate() {
            jobs.push(Job {
                route: r,
                backend: b,
                target: backend.clone(),
                path: path.clone(),
                interval: route.options.check_interval,
                due: now,
            });
        }
    }
    if jobs.is_empty() {
        return Ok(false);
    }
    std::thread::Builder::new()
        .name("kcd-checks".into())
        .spawn(move || loop {
            for job in jobs.iter_mut().filter(|j| j.due <= Instant::now()) {
                let verdict = check(&job.target, &job.path, tls.as_ref(), timeout);
                if let Err(why) = &verdict {
                    tracing::debug!(backend = %job.target.display(), path = %job.path, %why, "health check failed");
                }
                health.checked(job.route, job.backend, verdict.is_ok());
                job.due = Instant::now() + job.interval;
            }
            if let Some(next) = jobs.iter().map(|j| j.due).min() {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        })?;
    Ok(true)
}

/// One check: `GET path` on a new connection; `Ok` for a 2xx or 3xx answer, else why not.
pub fn check(
    backend: &Backend,
    path: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<(), String> {
    let tcp = TcpStream::connect_timeout(&backend.addr, timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: kcdproxy-check\r\nConnection: close\r\n\r\n",
        backend.host, backend.port
    );
    let line = match backend.scheme {
        Scheme::Http => exchange(tcp, request.as_bytes()),
        Scheme::Https => {
            let cfg = tls.ok_or("https backend without a TLS client config")?;
            let name = ServerName::try_from(backend.host.clone()).map_err(|e| e.to_string())?;
            let conn =
                rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
            exchange(rustls::StreamOwned::new(conn, tcp), request.as_bytes())
        }
    }?;
    // `HTTP/1.1 200 OK` (RFC 9112 §4).
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {line:?}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

/// Writes `request` and reads the status line of the answer.
fn exchange(mut s: impl Read + Write, request: &[u8]) -> Result<String, String> {
    s.write_all(request)
        .and_then(|()| s.flush())
        .map_err(|e| e.to_string())?;
    let mut got = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    while !got.contains(&b'\n') {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        got.extend_from_slice(&chunk[..n]);
        if got.len() > MAX_STATUS_LINE {
            return Err("status line too long".into());
        }
    }
    let end = got.iter().position(|&b| b == b'\n').unwrap_or(got.len());
    Ok(String::from_utf8_lossy(&got[..end]).trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::config::route::parse_backend;

    /// A one-shot server answering `answer` to the first request; returns its backend.
    fn server(answer: &'static str) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        parse_backend(&format!("http://127.0.0.1:{port}")).unwrap()
    }

    #[test]
    fn two_and_three_hundreds_pass_the_rest_fail() {
        let t = Duration::from_secs(2);
        let ok = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(check(&ok, "/owa/healthcheck.htm", None, t), Ok(()));
        let moved = server("HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n");
        assert_eq!(check(&moved, "/", None, t), Ok(()));
        let maint = server("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert_eq!(check(&maint, "/", None, t), Err("status 503".into()));
        let junk = server("SSH-2.0-OpenSSH\r\n");
        assert!(check(&junk, "/", None, t).is_err());
    }

    #[test]
    fn a_refused_connect_fails() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let b = parse_backend(&format!("http://127.0.0.1:{port}")).unwrap();
        assert!(check(&b, "/", None, Duration::from_secs(1)).is_err());
    }
}
