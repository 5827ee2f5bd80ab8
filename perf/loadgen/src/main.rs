//! kcdload: the closed-loop HTTP/1.1 load generator of kcdproxy's perf harness.
//!
//! `--connections N` connections each send a GET, read the whole response (Content-Length,
//! chunked or until close), record its latency and send the next: a closed loop, so the offered
//! load is whatever the target sustains. After `--warmup`, requests that complete inside the
//! `--duration` window are counted and their latencies recorded in one HDR histogram (ns,
//! 3 significant digits); requests still in flight when it closes are dropped. The result is
//! one JSON line on stdout.
//!
//! One OS thread drives every connection: a current_thread tokio runtime with the connections
//! as tasks on a LocalSet, sharing `Rc` state without locks. Pin the process to one core (the
//! harness uses taskset) and it costs exactly that core.
//!
//! `--basic-users FILE` gives connections distinct users (see `creds`), and
//! `--requests-per-conn N` closes each connection after N requests and opens a new one, so a
//! proxy that authenticates per connection pays that cost every N requests. `--ntlm-users FILE`
//! authenticates each connection with an NTLM handshake instead (see `ntlm`).
//!
//! `--idle N` is the memory mode: open N connections, complete one request on each, report,
//! then hold them idle for `--hold` while the harness measures the server's memory.

mod creds;
mod ntlm;
mod parse;
mod target;

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::time::{sleep_until, timeout_at, Instant};

use parse::ResponseReader;
use target::{DialError, Dialer, ExchangeError, RecvBuf, Url};

/// Closed-loop HTTP/1.1 keep-alive load generator; prints one JSON result line.
#[derive(Parser, Debug)]
#[command(name = "kcdload", version, about, long_about = None)]
struct Args {
    /// Target URL: http://HOST[:PORT]/PATH or https://... (https implies --tls).
    #[arg(long)]
    url: String,

    /// Connections kept busy at once (each one request at a time).
    #[arg(short = 'c', long, default_value_t = 1)]
    connections: usize,

    /// Measurement window, e.g. 5s, 500ms, 1m (a bare number is seconds).
    #[arg(short = 'd', long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,

    /// Load before the window whose requests are not counted (connections open during it).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,

    /// Speak TLS even for an http:// URL.
    #[arg(long)]
    tls: bool,

    /// PEM file of CA certificates to trust for TLS (the only roots used).
    #[arg(long, value_name = "PEM")]
    cacert: Option<PathBuf>,

    /// Extra request header, `Name: value` (repeatable), e.g. an Authorization header.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    headers: Vec<String>,

    /// Open a new connection (and TLS handshake) for every request; latency then includes them.
    /// The same as --requests-per-conn 1.
    #[arg(long)]
    new_conn_per_request: bool,

    /// Close each connection after N requests (the last one says `Connection: close`) and open
    /// a new one. The first request on each connection includes connect (and TLS handshake) time
    /// in its latency. Default: keep connections for the whole run.
    #[arg(long, value_name = "N", conflicts_with = "new_conn_per_request")]
    requests_per_conn: Option<u64>,

    /// File of `user:password` lines: every request carries `Authorization: Basic` of one line.
    /// Connection task i starts with line i mod N; with --requests-per-conn each reconnect moves
    /// the task on by the number of connections, so all lines are used.
    #[arg(long, value_name = "FILE")]
    basic_users: Option<PathBuf>,

    /// File of `user:password` lines: every connection first authenticates with an NTLM
    /// handshake (NEGOTIATE → 401 CHALLENGE → AUTHENTICATE on the first real request) as one
    /// line's user, chosen like --basic-users; later requests on it carry no Authorization. The
    /// first request's latency includes the handshake.
    #[arg(long, value_name = "FILE", conflicts_with = "basic_users")]
    ntlm_users: Option<PathBuf>,

    /// NetBIOS domain for --ntlm-users.
    #[arg(long, value_name = "NAME", default_value = "EXAMPLE")]
    ntlm_domain: String,

    /// Disable TLS session resumption, so every handshake is a full one.
    #[arg(long)]
    no_tls_resumption: bool,

    /// Longest one request (or connect) may take before it counts as a timeout error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,

    /// Free text copied into the result line (the harness names the target and scenario).
    #[arg(long, default_value = "")]
    label: String,

    /// Process whose CPU time (utime+stime, all threads, from /proc/PID/stat) is sampled at the
    /// window's start and end and reported per request (repeatable: the values are summed).
    #[arg(long = "watch-pid", value_name = "PID")]
    watch_pids: Vec<u32>,

    /// Memory mode: open this many connections, one request each, then hold them idle.
    #[arg(long, value_name = "N")]
    idle: Option<usize>,

    /// Memory mode: how long to hold the idle connections after reporting.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    hold: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * unit))
}

/// Error classes counted separately in the result line.
#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    Connect,
    Tls,
    Io,
    Parse,
    Status,
    Timeout,
}

const ERROR_NAMES: [&str; 6] = ["connect", "tls", "io", "parse", "status", "timeout"];

/// What every connection task shares. Single-threaded: `Cell`/`RefCell`, no locks.
struct Shared {
    dialer: Dialer,
    /// One entry per credential line (one entry without --basic-users).
    requests: Vec<Request>,
    /// Requests per connection before it is closed and a new one opened (None: keep it).
    per_conn: Option<u64>,
    /// Connection tasks (for the credential rotation, `creds::line_for`).
    tasks: usize,
    /// --ntlm-users: the users (then `requests` has one entry, without Authorization), the URL
    /// and extra headers to build the handshake's requests from, and the client-challenge PRNG.
    ntlm: Option<NtlmLoad>,
    timeout: Duration,
    /// INVARIANT: measure_start <= end. A request is counted (and its latency recorded) when it
    /// completes inside [measure_start, end], whenever it started: requiring the start inside
    /// too would never count requests slower than the window (256 × 1 MiB on a busy core).
    measure_start: Instant,
    end: Instant,
    /// Latency in nanoseconds.
    hist: RefCell<Histogram<u64>>,
    completed: Cell<u64>,
    bytes: Cell<u64>,
    connects: Cell<u64>,
    errors: [Cell<u64>; 6],
    first_error: RefCell<Option<String>>,
    tls: RefCell<Option<String>>,
}

impl Shared {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t <= self.end
    }

    /// Counts an error if it happens inside the window; keeps the first message of any.
    fn error(&self, kind: ErrorKind, what: impl FnOnce() -> String) {
        if self.in_window(Instant::now()) {
            let c = &self.errors[kind as usize];
            c.set(c.get() + 1);
        }
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(format!("{}: {}", ERROR_NAMES[kind as usize], what()));
        }
    }

    fn exchange_error(&self, e: ExchangeError) {
        match e {
            ExchangeError::Io(e) => self.error(ErrorKind::Io, || e.to_string()),
            ExchangeError::Parse(e) => self.error(ErrorKind::Parse, || e.to_string()),
            ExchangeError::HeadTooLarge => {
                self.error(ErrorKind::Parse, || "response head too large".into())
            }
        }
    }

    fn dial_error(&self, e: DialError) {
        match e {
            DialError::Connect(e) => self.error(ErrorKind::Connect, || e.to_string()),
            DialError::Tls(e) => self.error(ErrorKind::Tls, || e.to_string()),
        }
    }
}

/// What the NTLM mode needs besides `Shared::requests`.
struct NtlmLoad {
    users: Vec<ntlm::NtlmUser>,
    url: Url,
    headers: Vec<String>,
    /// xorshift64 state for client challenges (unpredictability is not needed for load).
    rng: Cell<u64>,
}

impl NtlmLoad {
    fn client_challenge(&self) -> [u8; 8] {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x.to_le_bytes()
    }

    fn request(&self, auth: &str, close: bool) -> Vec<u8> {
        let mut headers = self.headers.clone();
        headers.push(format!("Authorization: NTLM {auth}"));
        target::request_bytes(&self.url, &headers, close)
    }
}

/// NTLM's first leg on a fresh connection: NEGOTIATE, expecting a 401 with a CHALLENGE. Returns
/// the AUTHENTICATE token (base64) for the first real request, or counts an error.
async fn ntlm_leg1<S>(
    sh: &Shared,
    n: &NtlmLoad,
    user: usize,
    stream: &mut S,
    rb: &mut RecvBuf,
    reader: &mut ResponseReader,
    deadline: Instant,
) -> Option<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let leg1 = n.request(&creds::base64(&ntlm::negotiate()), false);
    let outcome = match timeout_at(deadline, target::exchange(stream, &leg1, rb, reader)).await {
        Ok(Ok((outcome, _))) => outcome,
        Ok(Err(e)) => {
            sh.exchange_error(e);
            return None;
        }
        Err(_) => {
            if Instant::now() < sh.end {
                sh.error(ErrorKind::Timeout, || "NTLM NEGOTIATE timed out".into());
            }
            return None;
        }
    };
    let challenge = reader.take_ntlm_challenge();
    let token = match (outcome.status, &challenge) {
        (401, Some(c)) if !outcome.close => creds::base64_decode(c).and_then(|c| {
            n.users[user].authenticate(&c, n.client_challenge(), ntlm::filetime_now())
        }),
        _ => None,
    };
    if token.is_none() {
        sh.error(ErrorKind::Status, || {
            format!(
                "NTLM NEGOTIATE answered {} (close {}) without a usable CHALLENGE",
                outcome.status, outcome.close
            )
        });
    }
    token.map(|t| creds::base64(&t))
}

/// The bytes of one credential's GET: the keep-alive form and the form that ends a connection.
struct Request {
    keep: Vec<u8>,
    close: Vec<u8>,
}

impl Request {
    fn new(url: &Url, headers: &[String]) -> Self {
        Request {
            keep: target::request_bytes(url, headers, false),
            close: target::request_bytes(url, headers, true),
        }
    }
}

/// One closed-loop connection: connect, exchange until the server closes, the per-connection
/// request count is reached or the window ends; reconnect after any error (after a short pause
/// when connecting itself fails).
async fn connection_task(sh: Rc<Shared>, task: usize) {
    let mut rb = RecvBuf::new(64 * 1024);
    let mut reader = ResponseReader::new();
    // Connections this task has opened (successfully), for the credential rotation.
    let mut opened = 0u64;
    'connection: loop {
        let t_dial = Instant::now();
        if t_dial >= sh.end {
            return;
        }
        let mut stream = match timeout_at((t_dial + sh.timeout).min(sh.end), sh.dialer.dial()).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                sh.dial_error(e);
                // A refused connect returns at once: pause so a dead target is not spun on.
                sleep_until((Instant::now() + Duration::from_millis(10)).min(sh.end)).await;
                continue;
            }
            Err(_) if Instant::now() >= sh.end => return,
            Err(_) => {
                sh.error(ErrorKind::Timeout, || "connect timed out".into());
                continue;
            }
        };
        sh.connects.set(sh.connects.get() + 1);
        if sh.tls.borrow().is_none() {
            *sh.tls.borrow_mut() = stream.tls_description();
        }
        let users = sh
            .ntlm
            .as_ref()
            .map_or(sh.requests.len(), |n| n.users.len());
        let line = creds::line_for(task, opened, sh.tasks, users);
        let req = &sh.requests[if sh.ntlm.is_some() { 0 } else { line }];
        opened += 1;
        rb.clear();
        // NTLM: the first leg now; the AUTHENTICATE goes on the first real request.
        let mut authenticate = None;
        if let Some(n) = &sh.ntlm {
            let deadline = (t_dial + sh.timeout).min(sh.end);
            match ntlm_leg1(&sh, n, line, &mut stream, &mut rb, &mut reader, deadline).await {
                Some(token) => authenticate = Some(token),
                None if Instant::now() >= sh.end => return,
                None => continue 'connection,
            }
        }
        let mut sent = 0u64;
        loop {
            // When connections are renewed or authenticated, the first request's latency
            // includes connect and handshake: that is the cost the per-connection figure is about.
            let t0 = if (sh.per_conn.is_some() || sh.ntlm.is_some()) && sent == 0 {
                t_dial
            } else {
                Instant::now()
            };
            if t0 >= sh.end {
                return;
            }
            sent += 1;
            let last = sh.per_conn.is_some_and(|n| sent >= n);
            let first_ntlm = match (authenticate.take(), &sh.ntlm) {
                (Some(token), Some(n)) => Some(n.request(&token, last)),
                _ => None,
            };
            let bytes = match &first_ntlm {
                Some(b) => b,
                None if last => &req.close,
                None => &req.keep,
            };
            let deadline = (t0 + sh.timeout).min(sh.end);
            match timeout_at(
                deadline,
                target::exchange(&mut stream, bytes, &mut rb, &mut reader),
            )
            .await
            {
                Ok(Ok((outcome, received))) => {
                    let t1 = Instant::now();
                    if outcome.status != 200 {
                        sh.error(ErrorKind::Status, || format!("status {}", outcome.status));
                    } else if sh.in_window(t1) {
                        let ns = (t1 - t0).as_nanos().min(u128::from(u64::MAX)) as u64;
                        sh.hist.borrow_mut().saturating_record(ns.max(1));
                        sh.completed.set(sh.completed.get() + 1);
                        sh.bytes.set(sh.bytes.get() + received);
                    }
                    if outcome.close || last {
                        continue 'connection;
                    }
                }
                Ok(Err(e)) => {
                    sh.exchange_error(e);
                    continue 'connection;
                }
                // The window closed with this request in flight: it is simply not counted.
                Err(_) if Instant::now() >= sh.end => return,
                Err(_) => {
                    sh.error(ErrorKind::Timeout, || "request timed out".into());
                    continue 'connection;
                }
            }
        }
    }
}

/// CPU time (utime + stime, all threads) of a process in clock ticks, from /proc/PID/stat
/// (`self` for this process).
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Kernel clock ticks per second (USER_HZ), which is 100 on every Linux this runs on.
const CLOCK_TICKS: f64 = 100.0;

/// Appends `"key":"value",` with the value escaped as a JSON string.
fn json_str(out: &mut String, key: &str, value: &str) {
    let _ = write!(out, "\"{key}\":\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push_str("\",");
}

async fn run_load(args: &Args, sh: Rc<Shared>) -> String {
    // CPU time of this process and of the watched ones over exactly the measurement window.
    let cpu = {
        let sh = sh.clone();
        let pids: Vec<String> = args.watch_pids.iter().map(u32::to_string).collect();
        tokio::task::spawn_local(async move {
            let sample =
                |pids: &[String]| -> Option<u64> { pids.iter().map(|p| cpu_ticks(p)).sum() };
            sleep_until(sh.measure_start).await;
            let (own0, watched0) = (cpu_ticks("self"), sample(&pids));
            sleep_until(sh.end).await;
            let (own1, watched1) = (cpu_ticks("self"), sample(&pids));
            let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
            (delta(own0, own1), delta(watched0, watched1))
        })
    };
    let tasks: Vec<_> = (0..args.connections)
        .map(|i| tokio::task::spawn_local(connection_task(sh.clone(), i)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let (own_ticks, watched_ticks) = cpu.await.unwrap_or((None, None));

    let secs = (sh.end - sh.measure_start).as_secs_f64();
    let hist = sh.hist.borrow();
    let q = |p: f64| {
        if hist.is_empty() {
            0.0
        } else {
            hist.value_at_quantile(p) as f64 / 1000.0
        }
    };
    let errors: u64 = sh.errors.iter().map(Cell::get).sum();
    let mut o = String::from("{");
    json_str(&mut o, "mode", "load");
    json_str(&mut o, "label", &args.label);
    json_str(&mut o, "url", &args.url);
    let _ = write!(
        o,
        "\"connections\":{},\"new_conn_per_request\":{},\"requests_per_conn\":{},\"users\":{},\"duration_s\":{:.3},\"requests\":{},\"errors\":{},",
        args.connections,
        sh.per_conn == Some(1),
        sh.per_conn.map_or("null".into(), |n| n.to_string()),
        sh.ntlm.as_ref().map_or(sh.requests.len(), |n| n.users.len()),
        secs,
        sh.completed.get(),
        errors
    );
    o.push_str("\"error_kinds\":{");
    for (i, name) in ERROR_NAMES.iter().enumerate() {
        let _ = write!(
            o,
            "{}\"{name}\":{}",
            if i > 0 { "," } else { "" },
            sh.errors[i].get()
        );
    }
    o.push_str("},");
    let _ = write!(
        o,
        "\"rps\":{:.1},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1},\"mean_us\":{:.1},\"bytes_per_s\":{:.0},\"connects\":{},",
        sh.completed.get() as f64 / secs,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        if hist.is_empty() { 0.0 } else { hist.max() as f64 / 1000.0 },
        if hist.is_empty() { 0.0 } else { hist.mean() / 1000.0 },
        sh.bytes.get() as f64 / secs,
        sh.connects.get(),
    );
    let pct = |ticks: Option<u64>| match ticks {
        Some(t) => format!("{:.1}", t as f64 / CLOCK_TICKS / secs * 100.0),
        None => "null".into(),
    };
    let _ = write!(o, "\"loadgen_cpu_pct\":{},", pct(own_ticks));
    let watched = watched_ticks.filter(|_| !args.watch_pids.is_empty());
    let per_req = match watched {
        Some(t) if sh.completed.get() > 0 => format!(
            "{:.2}",
            t as f64 / CLOCK_TICKS * 1e6 / sh.completed.get() as f64
        ),
        _ => "null".into(),
    };
    let _ = write!(
        o,
        "\"target_cpu_ticks\":{},\"target_cpu_pct\":{},\"target_cpu_us_per_req\":{per_req},",
        watched.map_or("null".into(), |t| t.to_string()),
        pct(watched),
    );
    json_str(&mut o, "tls", sh.tls.borrow().as_deref().unwrap_or(""));
    json_str(
        &mut o,
        "first_error",
        sh.first_error.borrow().as_deref().unwrap_or(""),
    );
    o.pop();
    o.push('}');
    o
}

/// Connections opened at once in memory mode (a 10,000-connection burst would overflow the
/// listen backlog and turn into retransmission delays, not into a memory figure).
const IDLE_DIAL_CONCURRENCY: usize = 256;

async fn run_idle(args: &Args, sh: Rc<Shared>, count: usize) -> String {
    let gate = Rc::new(tokio::sync::Semaphore::new(IDLE_DIAL_CONCURRENCY));
    let ready = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let started = Instant::now();
    for _ in 0..count {
        let (sh, gate, ready, failed) = (sh.clone(), gate.clone(), ready.clone(), failed.clone());
        tokio::task::spawn_local(async move {
            let permit = gate.acquire().await;
            let t0 = Instant::now();
            let opened = async {
                let mut stream = sh.dialer.dial().await.map_err(|e| format!("{e:?}"))?;
                // The buffer lives only for the one exchange: idle connections hold just the socket.
                let mut rb = RecvBuf::new(16 * 1024);
                let (outcome, _) = target::exchange(
                    &mut stream,
                    &sh.requests[0].keep,
                    &mut rb,
                    &mut ResponseReader::new(),
                )
                .await
                .map_err(|e| format!("{e:?}"))?;
                if outcome.status != 200 || outcome.close {
                    return Err(format!("status {} close {}", outcome.status, outcome.close));
                }
                Ok(stream)
            };
            match timeout_at(t0 + sh.timeout, opened).await {
                Ok(Ok(stream)) => {
                    ready.set(ready.get() + 1);
                    drop(permit);
                    // Hold until the runtime is dropped at the end of --hold.
                    std::future::pending::<()>().await;
                    drop(stream);
                }
                Ok(Err(e)) => {
                    sh.error(ErrorKind::Io, || e);
                    failed.set(failed.get() + 1);
                }
                Err(_) => {
                    sh.error(ErrorKind::Timeout, || "idle open timed out".into());
                    failed.set(failed.get() + 1);
                }
            }
        });
    }
    // Opening is bounded: every task ends in ready or failed within a few timeouts.
    let give_up = started + sh.timeout * 4;
    while ready.get() + failed.get() < count && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut o = String::from("{");
    json_str(&mut o, "mode", "idle");
    json_str(&mut o, "label", &args.label);
    json_str(&mut o, "url", &args.url);
    let _ = write!(
        o,
        "\"requested\":{count},\"established\":{},\"errors\":{},\"open_s\":{:.3},",
        ready.get(),
        count - ready.get(),
        started.elapsed().as_secs_f64()
    );
    json_str(
        &mut o,
        "first_error",
        sh.first_error.borrow().as_deref().unwrap_or(""),
    );
    o.pop();
    o.push('}');
    // Report first, then hold: the harness measures while the connections sit idle.
    println!("{o}");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(args.hold).await;
    String::new()
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("kcdload: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let url = Url::parse(&args.url)?;
    let tls = url.tls || args.tls;
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.requests_per_conn == Some(0) {
        return Err("--requests-per-conn must be at least 1".into());
    }
    let per_conn = if args.new_conn_per_request {
        Some(1)
    } else {
        args.requests_per_conn
    };
    let ntlm = match &args.ntlm_users {
        None => None,
        Some(path) => Some(NtlmLoad {
            users: creds::read_users(path)?
                .iter()
                .map(|(u, p)| ntlm::NtlmUser::new(u, &args.ntlm_domain, p))
                .collect(),
            url: url.clone(),
            headers: args.headers.clone(),
            rng: Cell::new(ntlm::filetime_now() | 1),
        }),
    };
    let requests: Vec<Request> = match &args.basic_users {
        None => vec![Request::new(&url, &args.headers)],
        Some(path) => creds::basic_headers(path)?
            .into_iter()
            .map(|auth| {
                let mut headers = args.headers.clone();
                headers.push(auth);
                Request::new(&url, &headers)
            })
            .collect(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, async {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("{}: {e}", url.host))?
            .next()
            .ok_or_else(|| format!("{}: no address", url.host))?;
        let tls = if tls {
            let name = rustls_pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("{}: {e}", url.host))?;
            Some((
                target::tls_connector(args.cacert.as_deref(), !args.no_tls_resumption)?,
                name,
            ))
        } else {
            None
        };
        let measure_start = Instant::now() + args.warmup;
        let sh = Rc::new(Shared {
            dialer: Dialer { addr, tls },
            requests,
            per_conn,
            tasks: args.connections,
            ntlm,
            timeout: args.timeout,
            measure_start,
            end: measure_start + args.duration,
            hist: RefCell::new(
                Histogram::new_with_bounds(1, 3_600_000_000_000, 3).map_err(|e| e.to_string())?,
            ),
            completed: Cell::new(0),
            bytes: Cell::new(0),
            connects: Cell::new(0),
            errors: Default::default(),
            first_error: RefCell::new(None),
            tls: RefCell::new(None),
        });
        Ok::<_, String>(match args.idle {
            Some(n) => run_idle(&args, sh, n).await,
            None => run_load(&args, sh).await,
        })
    })?;
    if !out.is_empty() {
        println!("{out}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        #[rustfmt::skip]
        let table: &[(&str, Option<u64>)] = &[
            ("5s", Some(5000)), ("500ms", Some(500)), ("1m", Some(60_000)), ("2", Some(2000)),
            ("0.25s", Some(250)), ("-1s", None), ("x", None), ("", None),
        ];
        for (s, want) in table {
            assert_eq!(
                parse_duration(s).ok().map(|d| d.as_millis() as u64),
                *want,
                "{s}"
            );
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut o = String::new();
        json_str(&mut o, "k", "a\"b\\c\nd");
        assert_eq!(o, r#""k":"a\"b\\c\u000ad","#);
    }
}
