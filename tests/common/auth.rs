//! Helpers of the client pre-authentication tests (`tests/auth_*.rs`): the real kcdproxy binary
//! in front of the lab's backend, a raw HTTP/1.1 client for the exchanges real clients make
//! (and the forged ones they do not), a header-recording origin, curl and pyspnego runners.
//!
//! Test files include this with `#[path = "common/auth.rs"] mod auth;` beside `mod common;`, so
//! `tests/common/mod.rs` stays as other test suites have it.
//!
//! Every wait is bounded: sockets have read/write timeouts, child processes `--max-time` or a
//! deadline, polls of log files a deadline.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::common::lab::Lab;

/// Socket read/write timeout of the raw client: far above any answer the proxy owes.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A unique name for this run (paths in the backend's persistent access log).
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

// ---------------------------------------------------------------- the proxy

/// A kcdproxy started for a test binary. It is stopped when the test process exits (a guard
/// process watches a pipe whose only writer is this process).
pub struct Proxy {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub pid: u32,
    pub dir: PathBuf,
    pub access_log: PathBuf,
    /// The proxy's stderr (diagnostics).
    pub log: PathBuf,
}

/// Keeps the guards' pipes open for the life of the test process.
static GUARDS: Mutex<Vec<(Child, ChildStdin)>> = Mutex::new(Vec::new());

fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Socket inodes listening on 127.0.0.1:`port`, from /proc/net/tcp.
fn listening_inodes(port: u16) -> BTreeSet<String> {
    let want = format!("0100007F:{port:04X}");
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 9 && f[1] == want && f[3] == "0A").then(|| f[9].to_string())
        })
        .collect()
}

/// Socket inodes among `pid`'s file descriptors.
fn socket_inodes(pid: u32) -> BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect()
}

impl Proxy {
    /// Starts kcdproxy on two free loopback ports (plain and TLS, the lab's proxy certificate)
    /// with `args` (routes and auth flags) and waits until both accept connections. kcdproxy
    /// binds with SO_REUSEPORT, so a port another process took meanwhile would silently share
    /// the traffic: the listening sockets are checked to be the proxy's own, else it starts again
    /// on other ports.
    pub fn start(lab: &Lab, args: &[String]) -> Proxy {
        Self::start_with_env(lab, args, &[])
    }

    /// [`start`](Self::start) with extra environment variables for the proxy (after the lab's,
    /// so they may override `KRB5_CONFIG`).
    pub fn start_with_env(lab: &Lab, args: &[String], env: &[(&str, &Path)]) -> Proxy {
        let dir = std::env::temp_dir().join(nonce("kcd-auth-tests"));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let mut last = String::new();
        for _ in 0..3 {
            let (http, https) = (free_port(), free_port());
            let access_log = dir.join(format!("access-{http}.log"));
            let log = dir.join(format!("proxy-{http}.log"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_kcdproxy"));
            cmd.args(["--listen", &format!("127.0.0.1:{http}")])
                .args(["--listen-tls", &format!("127.0.0.1:{https}")])
                .arg("--tls-cert")
                .arg(&lab.pki.proxy_cert)
                .arg("--tls-key")
                .arg(&lab.pki.proxy_key)
                .arg("--access-log")
                .arg(&access_log)
                .args(["--no-pin", "--drain-timeout", "1s"])
                .args(if args.iter().any(|a| a == "--workers") {
                    &[][..]
                } else {
                    &["--workers", "2"][..]
                })
                .args(args)
                .envs(lab.krb5_env())
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(File::create(dir.join(format!("proxy-{http}.out"))).expect("log file"))
                .stderr(File::create(&log).expect("log file"));
            let mut child = cmd.spawn().expect("start kcdproxy");
            let pid = child.id();
            guard(pid, &dir);
            let proxy = Proxy {
                http: SocketAddr::from((Ipv4Addr::LOCALHOST, http)),
                https: SocketAddr::from((Ipv4Addr::LOCALHOST, https)),
                pid,
                dir: dir.clone(),
                access_log,
                log,
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut up = false;
            while Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("kcdproxy exited ({status}): {}", proxy.stderr_tail());
                    break;
                }
                let ready = [proxy.http, proxy.https]
                    .iter()
                    .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok());
                if ready {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !up {
                let _ = child.kill();
                let _ = child.wait();
                if last.is_empty() {
                    last = format!("kcdproxy not listening after 15 s: {}", proxy.stderr_tail());
                }
                continue;
            }
            let ours = socket_inodes(pid);
            let foreign: Vec<u16> = [http, https]
                .into_iter()
                .filter(|p| !listening_inodes(*p).is_subset(&ours))
                .collect();
            if foreign.is_empty() {
                eprintln!(
                    "kcdproxy pid {pid} on http {} / https {}; logs in {} \
                     (removed at exit unless KCD_TEST_KEEP_LOGS=1)",
                    proxy.http,
                    proxy.https,
                    dir.display()
                );
                // The child is reaped by the guard's kill or at exit; keep it from being
                // dropped (which would not kill it either, but says what is meant).
                std::mem::forget(child);
                return proxy;
            }
            last = format!("another process listens on port(s) {foreign:?} too");
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("kcdproxy did not start: {last}");
    }

    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Access-log lines whose path is exactly `path` (or `path?…`), waiting (up to 3 s: the
    /// log is flushed every 200 ms by each worker) until there are at least `at_least`.
    pub fn access_lines(&self, path: &str, at_least: usize) -> Vec<String> {
        self.access_lines_until(path, |lines| lines.len() >= at_least)
    }

    /// Access-log lines of `path`, waiting (up to 3 s) until `done` holds for them.
    pub fn access_lines_until(&self, path: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| {
                    l.split(' ').any(|f| {
                        f.strip_prefix("path=")
                            .is_some_and(|p| p == path || p.starts_with(&format!("{path}?")))
                    })
                })
                .map(str::to_string)
                .collect();
            if done(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A process that kills `pid` when this test process exits (its stdin reaches end-of-file when
/// the last writer, this process, is gone — also when it is killed), then removes `dir` unless
/// `KCD_TEST_KEEP_LOGS=1`.
fn guard(pid: u32, dir: &Path) {
    let script =
        "read _ignored; kill -TERM \"$1\" 2>/dev/null; sleep 1; kill -KILL \"$1\" 2>/dev/null; \
                  [ \"$KCD_TEST_KEEP_LOGS\" = 1 ] || rm -rf -- \"$2\"; exit 0";
    let mut child = Command::new("/bin/sh")
        .args(["-c", script, "kcd-test-guard", &pid.to_string()])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the guard");
    let stdin = child.stdin.take().expect("guard stdin");
    GUARDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((child, stdin));
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
    let deadline = Instant::now() + Duration::from_secs(3);
    while count() < at_least && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(settle);
    count()
}

// ---------------------------------------------------------------- a raw HTTP/1.1 client

/// One response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `WWW-Authenticate` values, in order.
    pub fn challenges(&self) -> Vec<&str> {
        self.headers_named("www-authenticate")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A `key=value` line of the lab's echo (`x_kcd_user`, `body_length`, `body_sha256`, …).
    pub fn echo(&self, key: &str) -> Option<String> {
        self.text()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
    }

    /// The token of the `WWW-Authenticate: SCHEME <base64>` header.
    pub fn token(&self, scheme: &str) -> Option<Vec<u8>> {
        self.challenges().iter().find_map(|v| {
            let (s, t) = v.split_once(' ')?;
            if s.eq_ignore_ascii_case(scheme) {
                B64.decode(t.trim()).ok()
            } else {
                None
            }
        })
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A client connection that writes exactly what it is told and parses what comes back.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pub addr: SocketAddr,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to kcdproxy");
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
            addr,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to kcdproxy");
    }

    /// Writes a request head: `method path`, Host, the given headers, and `Content-Length`
    /// when `content_length` is given.
    pub fn send_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_length: Option<usize>,
    ) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: proxy.example.test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = content_length {
            head.push_str(&format!("Content-Length: {n}\r\n"));
        }
        head.push_str("\r\n");
        self.send(head.as_bytes());
    }

    /// A whole request (Content-Length always sent for POST/PUT) and its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let cl = (!body.is_empty() || method == "POST" || method == "PUT").then_some(body.len());
        self.send_head(method, path, headers, cl);
        self.send(body);
        self.read_response()
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) => panic!("reading from kcdproxy ({}): {e}", self.addr),
        }
    }

    /// Reads one response (an interim 1xx is a response too).
    pub fn read_response(&mut self) -> Response {
        self.read_response_to(false)
    }

    /// Reads the response to a HEAD request: its head only, whatever Content-Length says.
    pub fn read_head_response(&mut self) -> Response {
        self.read_response_to(true)
    }

    fn read_response_to(&mut self, head_request: bool) -> Response {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill() == 0 {
                panic!(
                    "kcdproxy closed the connection before a response head (got {:?})",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if (100..200).contains(&status) || head_request || status == 204 || status == 304 {
            return resp;
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            resp.body = self.read_chunked();
        } else {
            let n: usize = resp
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < n {
                if self.fill() == 0 {
                    panic!("kcdproxy closed the connection mid-body");
                }
            }
            resp.body = self.buf.drain(..n).collect();
        }
        resp
    }

    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                assert!(self.fill() > 0, "closed inside a chunked body");
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = i == 0;
                        self.buf.drain(..i + 2);
                        if empty {
                            return body;
                        }
                        continue;
                    }
                    assert!(self.fill() > 0, "closed inside chunked trailers");
                }
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill() > 0, "closed inside a chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Whether the proxy closes this connection within `wait` (reads end-of-file or a reset);
    /// anything it sends meanwhile is kept for the next read.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 4096];
        let closed = match self.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        closed
    }

    /// Whether the proxy sent anything (e.g. an unwanted `100 Continue`) within `wait`.
    pub fn has_data_within(&mut self, wait: Duration) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        !self.closed_within(wait) && !self.buf.is_empty()
    }

    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// `SCHEME base64(token)`.
pub fn auth_header(scheme: &str, token: &[u8]) -> String {
    format!("{scheme} {}", B64.encode(token))
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

// ---------------------------------------------------------------- a header-recording origin

/// A tiny HTTP/1.1 origin that records every request head it receives and answers `200 ok`
/// (keep-alive; bodies by Content-Length are read and dropped).
pub struct Recorder {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the recorder");
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let h = h.clone();
                std::thread::spawn(move || serve_recorded(stream, &h));
            }
        });
        Recorder { addr, heads }
    }

    /// The heads received whose request line contains `path`, waiting up to 3 s for at least one.
    pub fn heads_for(&self, path: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let found: Vec<String> = self
                .heads
                .lock()
                .unwrap()
                .iter()
                .filter(|h| h.lines().next().is_some_and(|l| l.contains(path)))
                .cloned()
                .collect();
            if !found.is_empty() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Header values named `name` in a recorded head.
pub fn head_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn serve_recorded(mut stream: TcpStream, heads: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let len: usize = head_values(&head, "content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..len);
        heads.lock().unwrap().push(head);
        let body = b"recorded\n";
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if stream.write_all(resp.as_bytes()).is_err() || stream.write_all(body).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------- real clients

/// Output of a client process.
pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs curl with `args` (plus `-sS --max-time 20`), in the lab's environment.
pub fn curl(args: &[&str]) -> Output {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A Python with the `spnego` module (pyspnego): `$KCDPROXY_PYTHON` if it has one, else a venv
/// cached in `/tmp/kcdproxy-pyspnego` (created once, under a lock, with `pip install pyspnego`).
/// `None`, with a note printed, when none can be had (no venv module, PyPI unreachable).
pub fn pyspnego() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(find_pyspnego).clone()
}

fn has_spnego(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import spnego"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn find_pyspnego() -> Option<PathBuf> {
    if let Some(py) = std::env::var_os("KCDPROXY_PYTHON").map(PathBuf::from) {
        if has_spnego(&py) {
            return Some(py);
        }
        eprintln!(
            "note: KCDPROXY_PYTHON={} has no spnego module",
            py.display()
        );
    }
    let venv = PathBuf::from("/tmp/kcdproxy-pyspnego");
    let python = venv.join("bin/python3");
    if has_spnego(&python) {
        return Some(python);
    }
    // One test process builds it; others wait on the lock and then find it.
    let lock = File::create("/tmp/kcdproxy-pyspnego.lock").ok()?;
    let _held = FlockGuard::exclusive(&lock, Duration::from_secs(120))?;
    if has_spnego(&python) {
        return Some(python);
    }
    // Built in place: others wait on the lock, and a half-built venv fails the import check.
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command| -> Result<(), String> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(err.lines().rev().take(3).collect::<Vec<_>>().join(" | "))
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("timed out after 90 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let built = run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).and_then(|()| {
        run(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "20",
            "pyspnego",
        ]))
    });
    match built {
        Ok(()) if has_spnego(&python) => Some(python),
        res => {
            let _ = std::fs::remove_dir_all(&venv);
            let why = res
                .err()
                .unwrap_or_else(|| "spnego still not importable".into());
            eprintln!(
                "note: cannot set up pyspnego (python3 -m venv + pip install pyspnego: {why}); \
                 skipping the pyspnego tests (set KCDPROXY_PYTHON to a python with pyspnego)"
            );
            None
        }
    }
}

/// An exclusive flock, released on drop.
struct FlockGuard<'a>(&'a File);

impl<'a> FlockGuard<'a> {
    fn exclusive(file: &'a File, wait: Duration) -> Option<Self> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(FlockGuard(file));
            }
            if Instant::now() > deadline {
                eprintln!("note: /tmp/kcdproxy-pyspnego.lock held for {wait:?}; skipping");
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The pyspnego HTTP client: SPNEGO (NTLM inside, since the venv has no Kerberos) against
/// `http://HOST:PORT/PATH`, each leg on one keep-alive connection, verifying the server's
/// final token (mechListMIC). Prints `status=`, `complete=`, `rounds=`, then the body.
pub const PYSPNEGO_CLIENT: &str = r#"
import base64, http.client, sys
import spnego

host, port, path, user, password, body = sys.argv[1:7]
ctx = spnego.client(user, password, hostname="proxy.example.test", service="HTTP",
                    protocol="negotiate")
conn = http.client.HTTPConnection(host, int(port), timeout=10)
token = ctx.step()
rounds = 0
while True:
    conn.request("POST", path, body=body.encode(),
                 headers={"Authorization": "Negotiate " + base64.b64encode(token).decode()})
    resp = conn.getresponse()
    data = resp.read()
    rounds += 1
    neg = [v.split(" ", 1)[1] for k, v in resp.getheaders()
           if k.lower() == "www-authenticate" and v.startswith("Negotiate ")]
    if resp.status == 401 and neg and rounds < 4:
        token = ctx.step(base64.b64decode(neg[0]))
        continue
    if resp.status == 200 and neg:
        ctx.step(base64.b64decode(neg[0]))  # the server's mechListMIC: raises when wrong
    print(f"status={resp.status}")
    print(f"complete={ctx.complete}")
    print(f"rounds={rounds}")
    sys.stdout.write(data.decode(errors="replace"))
    break
"#;

/// Runs [`PYSPNEGO_CLIENT`] with `python`.
pub fn pyspnego_post(
    python: &Path,
    addr: SocketAddr,
    path: &str,
    user: &str,
    password: &str,
    body: &str,
) -> Output {
    let mut child = Command::new(python)
        .args(["-c", PYSPNEGO_CLIENT])
        .args([
            &addr.ip().to_string(),
            &addr.port().to_string(),
            path,
            user,
            password,
            body,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python output");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
