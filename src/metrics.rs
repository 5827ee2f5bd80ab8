//! Counters for operators, exported in the Prometheus text format on `--metrics-listen`.
//!
//! Each worker counts into its own [`WorkerMetrics`] (relaxed atomics on a cache line of its
//! own, so cores never contend on a counter); a scrape adds the workers up. Everything else
//! that has counters (the KDC pool, the authentication services, the delegation engine)
//! renders them itself as a [`Source`], next to the counters, through the [`Exposition`]
//! writer; this module knows none of them, only the [`Registry`] of sources that start-up
//! assembles.
//!
//! The endpoint is a plain blocking thread, off the cores: it serves one scrape at a time,
//! reads at most a small request head and never touches a connection of the proxy. Being the
//! admin listener, it also answers the probes of a load balancer in front of several proxies:
//! `/healthz` (the process runs) and `/readyz` (every registered [`Readiness`] check passes:
//! listeners up, a backend up per route, the proxy's Kerberos login valid).

use std::collections::HashMap;
use std::fmt::{Display, Write as _};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Authentication schemes as the counters label them, in exposition order (the access log's
/// names for them).
pub const SCHEMES: [&str; 4] = ["ntlm", "negotiate-ntlm", "negotiate-kerberos", "basic"];

/// An authentication scheme, as far as counting goes: its index in [`SCHEMES`]. The type that
/// names the schemes implements it, so this module depends on no authentication code.
pub trait SchemeSlot: Copy {
    fn slot(self) -> usize;
}

/// Delegated-ticket outcomes, as the access log names them.
pub const TICKETS: [&str; 4] = ["hit", "miss", "joined", "none"];

/// One worker's counters.
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerMetrics {
    /// By status class: 1xx..5xx, and "no response" (index 0).
    responses: [AtomicU64; 6],
    /// Requests that went through authentication successfully, by scheme ([`SCHEMES`]).
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
    pub fn request(&self, status: u16, scheme: Option<impl SchemeSlot>, err: Option<&Error>) {
        let class = usize::from(status / 100).min(5);
        self.responses[class].fetch_add(1, Relaxed);
        if let Some(c) = scheme.and_then(|s| self.authenticated.get(s.slot())) {
            c.fetch_add(1, Relaxed);
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

/// The Prometheus text exposition (format 0.0.4) being written for one scrape.
///
/// Names, help texts and label values are the callers' static strings: none of them needs
/// escaping, so none is escaped.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

/// Microseconds, exposed as seconds with microsecond precision (`0.003000`).
#[derive(Clone, Copy, Debug)]
pub struct Seconds {
    pub micros: u64,
}

impl Seconds {
    pub fn from_micros(micros: u64) -> Self {
        Seconds { micros }
    }
}

impl Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.6}", self.micros as f64 / 1e6)
    }
}

impl Exposition {
    pub fn new() -> Self {
        Exposition {
            text: String::with_capacity(4096),
        }
    }

    /// A counter without labels.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, help, "counter");
        self.sample(name, "", value);
    }

    /// A counter family with one label: a sample per `(label value, value)`, in the order
    /// given. The HELP and TYPE lines are written even when there is no sample yet.
    pub fn counters<L: Display, V: Display>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.labelled(name, help, "counter", label, samples);
    }

    /// A gauge family with one label, like [`counters`](Self::counters).
    pub fn gauges<L: Display, V: Display>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.labelled(name, help, "gauge", label, samples);
    }

    /// A family of `kind` with one label. Label values are escaped as the text format asks
    /// (backslash, double quote, newline): fixed tokens pass unchanged, route labels may not.
    fn labelled<L: Display, V: Display>(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(name, help, kind);
        for (l, v) in samples {
            let l = l
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let _ = writeln!(self.text, "{name}{{{label}=\"{l}\"}} {v}");
        }
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) {
        self.family(name, help, "gauge");
        self.sample(name, "", value);
    }

    /// A summary without quantiles: `NAME_sum` and `NAME_count`.
    pub fn summary(&mut self, name: &str, help: &str, sum: impl Display, count: u64) {
        self.family(name, help, "summary");
        self.sample(name, "_sum", sum);
        self.sample(name, "_count", count);
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    fn family(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, suffix: &str, value: impl Display) {
        let _ = writeln!(self.text, "{name}{suffix} {value}");
    }
}

/// Something with counters of its own, rendered at scrape time.
pub trait Source {
    fn render(&self, out: &mut Exposition);
}

/// The workers' counters, added up over all workers.
pub struct Workers(pub Vec<Arc<WorkerMetrics>>);

impl Workers {
    fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.0.iter().map(|w| f(w)).sum()
    }
}

impl Source for Workers {
    fn render(&self, out: &mut Exposition) {
        out.counters(
            "kcdproxy_responses_total",
            "Responses by status class (0 = none sent).",
            "class",
            ["none", "1xx", "2xx", "3xx", "4xx", "5xx"]
                .iter()
                .enumerate()
                .map(|(i, class)| (class, self.sum(|w| w.responses[i].load(Relaxed)))),
        );
        out.counters(
            "kcdproxy_authenticated_total",
            "Requests authenticated, by scheme.",
            "scheme",
            SCHEMES
                .iter()
                .enumerate()
                .map(|(i, scheme)| (scheme, self.sum(|w| w.authenticated[i].load(Relaxed)))),
        );
        let mut refused: HashMap<&'static str, u64> = HashMap::new();
        for w in &self.0 {
            let m = w.refused.lock().unwrap_or_else(PoisonError::into_inner);
            for (k, v) in m.iter() {
                *refused.entry(k).or_insert(0) += v;
            }
        }
        let mut refused: Vec<_> = refused.into_iter().collect();
        refused.sort();
        out.counters(
            "kcdproxy_auth_challenged_total",
            "401 answers by reason (handshake legs included).",
            "reason",
            refused,
        );
        out.counter(
            "kcdproxy_kdc_unavailable_total",
            "503 answers: the KDC side could not answer.",
            self.sum(|w| w.kdc_unavailable.load(Relaxed)),
        );
        out.counters(
            "kcdproxy_delegated_requests_total",
            "Delegated requests by ticket source.",
            "ticket",
            TICKETS
                .iter()
                .enumerate()
                .map(|(i, t)| (t, self.sum(|w| w.tickets[i].load(Relaxed)))),
        );
        out.counter(
            "kcdproxy_delegation_kdc_wait_seconds_total",
            "Time requests waited on the KDC side for tickets.",
            Seconds::from_micros(self.sum(|w| w.kdc_wait_us.load(Relaxed))),
        );
        let conns: i64 = self.0.iter().map(|w| w.connections.load(Relaxed)).sum();
        out.gauge(
            "kcdproxy_client_connections",
            "Client connections open.",
            conns.max(0),
        );
    }
}

/// One condition of `/readyz`, checked at probe time by the part of the process that knows it
/// (this module knows none of them).
pub trait Readiness {
    /// `Err`: a short line saying what is not ready, for the 503's body.
    fn ready(&self) -> Result<(), String>;
}

/// What a scrape reads: every source, in order; and what `/readyz` checks, in order.
pub struct Registry {
    pub sources: Vec<Arc<dyn Source + Send + Sync>>,
    pub readiness: Vec<Arc<dyn Readiness + Send + Sync>>,
}

impl Registry {
    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        for s in &self.sources {
            s.render(&mut out);
        }
        out.into_text()
    }

    /// Every check that fails, one line each; empty when ready.
    pub fn not_ready(&self) -> Vec<String> {
        self.readiness
            .iter()
            .filter_map(|r| r.ready().err())
            .collect()
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
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = method == b"GET" || method == b"HEAD";
    let (status, ctype, body) = match path {
        b"/metrics" if get => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        // Alive as long as this thread answers: the process is up.
        b"/healthz" if get => ("200 OK", TEXT, "ok\n".to_string()),
        b"/readyz" if get => {
            let failed = registry.not_ready();
            if failed.is_empty() {
                ("200 OK", TEXT, "ready\n".to_string())
            } else {
                let mut body = failed.join("\n");
                body.push('\n');
                ("503 Service Unavailable", TEXT, body)
            }
        }
        _ => (
            "404 Not Found",
            TEXT,
            "GET /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    // HEAD: the same status and length, no body (RFC 9110 §9.3.2).
    let len = body.len();
    let body = if method == b"HEAD" { "" } else { &body[..] };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
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

    /// The schemes in [`SCHEMES`] order, standing in for the authentication module's type.
    #[derive(Clone, Copy)]
    struct Slot(usize);

    impl SchemeSlot for Slot {
        fn slot(self) -> usize {
            self.0
        }
    }

    const NTLM: Slot = Slot(0);
    const NEGOTIATE_KERBEROS: Slot = Slot(2);
    const BASIC: Slot = Slot(3);

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
        a.request(200, Some(NTLM), None);
        b.request(200, Some(NTLM), None);
        b.request(
            401,
            None::<Slot>,
            Some(&Error::new(
                ErrorKind::Unauthenticated,
                "ntlm_wrong_password",
            )),
        );
        b.request(
            503,
            None::<Slot>,
            Some(&Error::new(ErrorKind::KdcUnavailable, "x")),
        );
        a.delegation("hit", None);
        a.delegation("miss", Some(Duration::from_millis(3)));
        let r = Registry {
            sources: vec![Arc::new(Workers(vec![a, b]))],
            readiness: Vec::new(),
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

    /// The exact text scrapers have always read: names, HELP and TYPE lines, label order,
    /// number formats, and a family with no samples yet.
    #[test]
    fn worker_exposition_is_unchanged() {
        let a = Arc::new(WorkerMetrics::default());
        let b = Arc::new(WorkerMetrics::default());
        a.request(200, Some(NTLM), None);
        b.request(200, Some(BASIC), None);
        a.request(0, None::<Slot>, None);
        b.request(101, Some(NEGOTIATE_KERBEROS), None);
        let refused = |w: &WorkerMetrics, why: &'static str| {
            w.request(
                401,
                None::<Slot>,
                Some(&Error::new(ErrorKind::Unauthenticated, why)),
            )
        };
        refused(&b, "ntlm_wrong_password");
        refused(&b, "krb_replay: x");
        refused(&a, "krb_replay: y");
        b.request(
            503,
            None::<Slot>,
            Some(&Error::new(ErrorKind::KdcUnavailable, "x")),
        );
        a.delegation("hit", None);
        a.delegation("miss", Some(Duration::from_micros(3001)));
        b.delegation("none", Some(Duration::from_millis(1500)));
        a.conn_opened();
        a.conn_opened();
        b.conn_opened();
        b.conn_closed();
        let mut out = Exposition::new();
        Workers(vec![a, b]).render(&mut out);
        assert_eq!(
            out.as_str(),
            "\
# HELP kcdproxy_responses_total Responses by status class (0 = none sent).
# TYPE kcdproxy_responses_total counter
kcdproxy_responses_total{class=\"none\"} 1
kcdproxy_responses_total{class=\"1xx\"} 1
kcdproxy_responses_total{class=\"2xx\"} 2
kcdproxy_responses_total{class=\"3xx\"} 0
kcdproxy_responses_total{class=\"4xx\"} 3
kcdproxy_responses_total{class=\"5xx\"} 1
# HELP kcdproxy_authenticated_total Requests authenticated, by scheme.
# TYPE kcdproxy_authenticated_total counter
kcdproxy_authenticated_total{scheme=\"ntlm\"} 1
kcdproxy_authenticated_total{scheme=\"negotiate-ntlm\"} 0
kcdproxy_authenticated_total{scheme=\"negotiate-kerberos\"} 1
kcdproxy_authenticated_total{scheme=\"basic\"} 1
# HELP kcdproxy_auth_challenged_total 401 answers by reason (handshake legs included).
# TYPE kcdproxy_auth_challenged_total counter
kcdproxy_auth_challenged_total{reason=\"krb_replay\"} 2
kcdproxy_auth_challenged_total{reason=\"ntlm_wrong_password\"} 1
# HELP kcdproxy_kdc_unavailable_total 503 answers: the KDC side could not answer.
# TYPE kcdproxy_kdc_unavailable_total counter
kcdproxy_kdc_unavailable_total 1
# HELP kcdproxy_delegated_requests_total Delegated requests by ticket source.
# TYPE kcdproxy_delegated_requests_total counter
kcdproxy_delegated_requests_total{ticket=\"hit\"} 1
kcdproxy_delegated_requests_total{ticket=\"miss\"} 1
kcdproxy_delegated_requests_total{ticket=\"joined\"} 0
kcdproxy_delegated_requests_total{ticket=\"none\"} 1
# HELP kcdproxy_delegation_kdc_wait_seconds_total Time requests waited on the KDC side for tickets.
# TYPE kcdproxy_delegation_kdc_wait_seconds_total counter
kcdproxy_delegation_kdc_wait_seconds_total 1.503001
# HELP kcdproxy_client_connections Client connections open.
# TYPE kcdproxy_client_connections gauge
kcdproxy_client_connections 2
"
        );
    }

    #[test]
    fn a_family_without_samples_still_has_help_and_type() {
        let mut out = Exposition::new();
        out.counters("x_total", "Xs.", "reason", Vec::<(&str, u64)>::new());
        assert_eq!(out.as_str(), "# HELP x_total Xs.\n# TYPE x_total counter\n");
    }

    #[test]
    fn summaries_and_seconds() {
        let mut out = Exposition::new();
        out.summary("s", "S.", Seconds::from_micros(1_234_567), 12);
        assert_eq!(
            out.as_str(),
            "# HELP s S.\n# TYPE s summary\ns_sum 1.234567\ns_count 12\n"
        );
    }

    #[test]
    fn registry_renders_sources_in_order() {
        struct Fixed(&'static str, u64);
        impl Source for Fixed {
            fn render(&self, out: &mut Exposition) {
                out.gauge(self.0, "G.", self.1);
            }
        }
        let r = Registry {
            sources: vec![Arc::new(Fixed("b", 2)), Arc::new(Fixed("a", 1))],
            readiness: Vec::new(),
        };
        assert_eq!(
            r.render(),
            "# HELP b G.\n# TYPE b gauge\nb 2\n# HELP a G.\n# TYPE a gauge\na 1\n"
        );
    }
}
