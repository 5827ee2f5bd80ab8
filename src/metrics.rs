//! Counters for operators, exported in the Prometheus text format on `--metrics-listen`.
//!
//! Each worker counts into its own [`WorkerMetrics`] (relaxed atomics on a cache line of its
//! own, so cores never contend on a counter); a scrape adds the workers up. The endpoint is a
//! plain blocking thread, off the cores: it serves one scrape at a time, reads at most a
//! small request head and never touches a connection of the proxy.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::auth::{AuthScheme, AuthServices};
use crate::error::{Error, ErrorKind};
use crate::gss::BlockingPool;

const SCHEMES: [AuthScheme; 4] = [
    AuthScheme::Ntlm,
    AuthScheme::NegotiateNtlm,
    AuthScheme::NegotiateKerberos,
    AuthScheme::Basic,
];

fn scheme_index(s: AuthScheme) -> usize {
    match s {
        AuthScheme::Ntlm => 0,
        AuthScheme::NegotiateNtlm => 1,
        AuthScheme::NegotiateKerberos => 2,
        AuthScheme::Basic => 3,
    }
}

/// Delegated-ticket outcomes, as the access log names them.
pub const TICKETS: [&str; 4] = ["hit", "miss", "joined", "none"];

/// One worker's counters.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerMetrics {
    /// By status class: 1xx..5xx, and "no response" (index 0).
    responses: [AtomicU64; 6],
    /// Requests that went through authentication successfully, by scheme.
    authenticated: [AtomicU64; 4],
    /// 401s by reason (the handshake's own challenges included: `ntlm_challenge_sent`).
    refused: Mutex<HashMap<&'static str, u64>>,
    /// Requests that got 503 because the KDC side could not answer.
    kdc_unavailable: AtomicU64,
    /// Delegated requests by where the ticket came from ([`TICKETS`]).
    tickets: [AtomicU64; 4],
    /// Time delegated requests waited on the KDC side, in microseconds.
    kdc_wait_us: AtomicU64,
    connections: AtomicI64,
}

impl WorkerMetrics {
    pub fn conn_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn conn_closed(&self) {
        self.connections.fetch_sub(1, Relaxed);
    }

    /// Counts one finished request.
    pub fn request(&self, status: u16, scheme: Option<AuthScheme>, err: Option<&Error>) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Relaxed);
        if let Some(s) = scheme {
            self.authenticated[scheme_index(s)].fetch_add(1, Relaxed);
        }
        match err {
            Some(e) if e.kind == ErrorKind::Unauthenticated => {
                let mut m = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
                *m.entry(reason_label(e)).or_insert(0) += 1;
            }
            Some(e) if e.kind == ErrorKind::KdcUnavailable => {
                self.kdc_unavailable.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    /// Counts one delegated request.
    pub fn delegation(&self, ticket: &'static str, kdc: Option<Duration>) {
        if let Some(i) = TICKETS.iter().position(|t| *t == ticket) {
            self.tickets[i].fetch_add(1, Relaxed);
        }
        if let Some(d) = kdc {
            self.kdc_wait_us
                .fetch_add(d.as_micros().min(u128::from(u64::MAX)) as u64, Relaxed);
        }
    }
}

/// A bounded label for a refusal: the stable token an error context starts with
/// (`ntlm_wrong_password`, `krb_replay: …`), else the error kind. Static strings only, so the
/// label set cannot grow with attacker-chosen input.
fn reason_label(e: &Error) -> &'static str {
    if let std::borrow::Cow::Borrowed(text) = &e.context {
        let token = text.split(':').next().unwrap_or_default();
        if !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return token;
        }
    }
    e.kind.as_str()
}

/// Appends more exposition text at scrape time.
pub type ExtraRender = Box<dyn Fn(&mut String) + Send + Sync>;

/// What a scrape reads: the workers' counters and the shared services' own.
pub struct Registry {
    pub workers: Vec<Arc<WorkerMetrics>>,
    pub blocking_pool: Option<Arc<BlockingPool>>,
    pub auth: Arc<AuthServices>,
    /// Extra text from the delegation engine (its counters), rendered at scrape time.
    pub extra: Option<ExtraRender>,
}

impl Registry {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let sum =
            |f: &dyn Fn(&WorkerMetrics) -> u64| -> u64 { self.workers.iter().map(|w| f(w)).sum() };
        s.push_str("# HELP kcdproxy_responses_total Responses by status class (0 = none sent).\n");
        s.push_str("# TYPE kcdproxy_responses_total counter\n");
        for (i, class) in ["none", "1xx", "2xx", "3xx", "4xx", "5xx"]
            .iter()
            .enumerate()
        {
            let n = sum(&|w| w.responses[i].load(Relaxed));
            let _ = writeln!(s, "kcdproxy_responses_total{{class=\"{class}\"}} {n}");
        }
        s.push_str("# HELP kcdproxy_authenticated_total Requests authenticated, by scheme.\n");
        s.push_str("# TYPE kcdproxy_authenticated_total counter\n");
        for (i, scheme) in SCHEMES.iter().enumerate() {
            let n = sum(&|w| w.authenticated[i].load(Relaxed));
            let _ = writeln!(
                s,
                "kcdproxy_authenticated_total{{scheme=\"{}\"}} {n}",
                scheme.as_str()
            );
        }
        let mut refused: HashMap<&'static str, u64> = HashMap::new();
        for w in &self.workers {
            let m = w.refused.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, v) in m.iter() {
                *refused.entry(k).or_insert(0) += v;
            }
        }
        let mut refused: Vec<_> = refused.into_iter().collect();
        refused.sort();
        s.push_str(
            "# HELP kcdproxy_auth_challenged_total 401 answers by reason (handshake legs included).\n",
        );
        s.push_str("# TYPE kcdproxy_auth_challenged_total counter\n");
        for (reason, n) in refused {
            let _ = writeln!(
                s,
                "kcdproxy_auth_challenged_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let n = sum(&|w| w.kdc_unavailable.load(Relaxed));
        s.push_str(
            "# HELP kcdproxy_kdc_unavailable_total 503 answers: the KDC side could not answer.\n",
        );
        s.push_str("# TYPE kcdproxy_kdc_unavailable_total counter\n");
        let _ = writeln!(s, "kcdproxy_kdc_unavailable_total {n}");
        s.push_str(
            "# HELP kcdproxy_delegated_requests_total Delegated requests by ticket source.\n",
        );
        s.push_str("# TYPE kcdproxy_delegated_requests_total counter\n");
        for (i, t) in TICKETS.iter().enumerate() {
            let n = sum(&|w| w.tickets[i].load(Relaxed));
            let _ = writeln!(s, "kcdproxy_delegated_requests_total{{ticket=\"{t}\"}} {n}");
        }
        let us = sum(&|w| w.kdc_wait_us.load(Relaxed));
        s.push_str("# HELP kcdproxy_delegation_kdc_wait_seconds_total Time requests waited on the KDC side for tickets.\n");
        s.push_str("# TYPE kcdproxy_delegation_kdc_wait_seconds_total counter\n");
        let _ = writeln!(
            s,
            "kcdproxy_delegation_kdc_wait_seconds_total {:.6}",
            us as f64 / 1e6
        );
        let conns: i64 = self
            .workers
            .iter()
            .map(|w| w.connections.load(Relaxed))
            .sum();
        s.push_str("# HELP kcdproxy_client_connections Client connections open.\n");
        s.push_str("# TYPE kcdproxy_client_connections gauge\n");
        let _ = writeln!(s, "kcdproxy_client_connections {}", conns.max(0));
        if let Some(pool) = &self.blocking_pool {
            let st = pool.stats();
            s.push_str("# HELP kcdproxy_kdc_pool_threads Threads of the KDC pool.\n");
            s.push_str("# TYPE kcdproxy_kdc_pool_threads gauge\n");
            let _ = writeln!(s, "kcdproxy_kdc_pool_threads {}", st.threads);
            s.push_str(
                "# HELP kcdproxy_kdc_pool_admitted Calls running or queued in the KDC pool.\n",
            );
            s.push_str("# TYPE kcdproxy_kdc_pool_admitted gauge\n");
            let _ = writeln!(s, "kcdproxy_kdc_pool_admitted {}", st.admitted);
        }
        s.push_str("# HELP kcdproxy_basic_cache_entries Basic logins remembered.\n");
        s.push_str("# TYPE kcdproxy_basic_cache_entries gauge\n");
        let _ = writeln!(
            s,
            "kcdproxy_basic_cache_entries {}",
            self.auth.basic_cache().len()
        );
        if let Some(extra) = &self.extra {
            extra(&mut s);
        }
        s
    }
}

/// Serves `GET /metrics` on `listener` from a thread of its own, until the process exits.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kcd-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(err) = answer(stream, &registry) {
                            tracing::debug!(%err, "metrics request failed");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(%err, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(())
}

/// Largest request head read from a scraper.
const MAX_HEAD: usize = 8192;

fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = if method == b"GET" && path == b"/metrics" {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        )
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes())
}

/// Binds the metrics listener (at start-up, so a taken port is a start-up error).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_bounded_tokens() {
        let e = Error::new(ErrorKind::Unauthenticated, "ntlm_wrong_password");
        assert_eq!(reason_label(&e), "ntlm_wrong_password");
        let e = Error::new(ErrorKind::Unauthenticated, "krb_replay: more text");
        assert_eq!(reason_label(&e), "krb_replay");
        let e = Error::new(ErrorKind::Unauthenticated, "no credentials");
        assert_eq!(reason_label(&e), "unauthenticated");
        let e = Error::new(ErrorKind::Unauthenticated, format!("user {}", "x"));
        assert_eq!(reason_label(&e), "unauthenticated");
    }

    #[test]
    fn render_sums_workers() {
        let a = Arc::new(WorkerMetrics::default());
        let b = Arc::new(WorkerMetrics::default());
        a.request(200, Some(AuthScheme::Ntlm), None);
        b.request(200, Some(AuthScheme::Ntlm), None);
        b.request(
            401,
            None,
            Some(&Error::new(
                ErrorKind::Unauthenticated,
                "ntlm_wrong_password",
            )),
        );
        b.request(503, None, Some(&Error::new(ErrorKind::KdcUnavailable, "x")));
        a.delegation("hit", None);
        a.delegation("miss", Some(Duration::from_millis(3)));
        let r = Registry {
            workers: vec![a, b],
            blocking_pool: None,
            auth: Arc::new(AuthServices::none()),
            extra: None,
        };
        let text = r.render();
        for want in [
            "kcdproxy_responses_total{class=\"2xx\"} 2",
            "kcdproxy_responses_total{class=\"4xx\"} 1",
            "kcdproxy_authenticated_total{scheme=\"ntlm\"} 2",
            "kcdproxy_auth_challenged_total{reason=\"ntlm_wrong_password\"} 1",
            "kcdproxy_kdc_unavailable_total 1",
            "kcdproxy_delegated_requests_total{ticket=\"hit\"} 1",
            "kcdproxy_delegation_kdc_wait_seconds_total 0.003000",
        ] {
            assert!(text.contains(want), "{want} missing in:\n{text}");
        }
    }
}
