//! Starts the proxy binary ([`binary`]) for a test, waits until it listens, and reads its
//! access log; the process is killed when the [`Proxy`] is dropped.
//!
//! The launcher adds `--listen 127.0.0.1:PORT` (a free port: every worker binds its own
//! SO_REUSEPORT socket, so port 0 cannot work), a TLS listener when given certificates,
//! `--workers 2`, and a text access log in the proxy's temporary directory, unless the caller gave
//! those flags. Stdout and stderr go to files there; when a test fails, dropping the proxy prints
//! the end of both and of the access log, and keeps the directory.
//!
//! A proxy shared by the tests of a binary lives in a `static` and is never dropped: a guard
//! process stops it when the test process exits (however it ends) and removes its directory
//! unless `KCD_TEST_KEEP_LOGS=1`.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::certs::CertPair;
use super::client::Client;
use super::{free_ports, listening_inodes, local, poll_until, socket_inodes_of, TempDir};

/// How long the proxy may take to listen after being spawned, unless the launch says otherwise.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a start is retried when the chosen port was taken meanwhile.
const PORT_RETRIES: usize = 3;
/// How long the access-log readers wait for the lines they expect (each worker flushes its log
/// every 200 ms).
const LOG_WAIT: Duration = Duration::from_secs(3);

/// The binary under test: the crate's `kcdproxy`, or `$KCDPROXY_ITEST_BIN` when set (to run
/// the suite against another build, or a stand-in when checking the tests themselves).
pub fn binary() -> String {
    std::env::var("KCDPROXY_ITEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_kcdproxy").into())
}

/// How to start a proxy: its flags, TLS certificates, environment and start-up patience.
/// [`Proxy::start`] and [`Proxy::start_tls`] are the usual shorthands.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Flags after the launcher's own (routes, timeouts, auth…).
    pub args: Vec<String>,
    /// Certificates of a TLS listener (first = default for SNI); none: no TLS listener.
    pub certs: Vec<CertPair>,
    /// Environment variables of the process besides the test process's own, set in order.
    pub env: Vec<(OsString, OsString)>,
    /// How long the proxy may take to listen after being spawned.
    pub ready_timeout: Duration,
}

impl Launch {
    pub fn new<S: AsRef<str>>(args: &[S]) -> Launch {
        Launch {
            args: args.iter().map(|a| a.as_ref().to_string()).collect(),
            certs: Vec::new(),
            env: Vec::new(),
            ready_timeout: READY_TIMEOUT,
        }
    }

    /// Adds a TLS listener serving `certs` (first = default for SNI).
    pub fn tls(mut self, certs: &[&CertPair]) -> Launch {
        self.certs.extend(certs.iter().map(|c| (*c).clone()));
        self
    }

    /// Sets `key=value` in the process's environment (after those set before: a later one wins).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Launch {
        self.ready_timeout = timeout;
        self
    }

    /// Whether the caller's flags include `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|a| a == flag)
    }

    /// Adds `flag` (and its `value`) unless the caller's flags already have it: the proxy
    /// refuses a flag given twice.
    pub fn default_flag(mut self, flag: &str, value: Option<&str>) -> Launch {
        if !self.has(flag) {
            self.args.push(flag.into());
            self.args.extend(value.map(String::from));
        }
        self
    }

    /// Starts the proxy; panics with its stderr if it does not come up.
    #[track_caller]
    pub fn start(&self) -> Proxy {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the proxy; Err describes why it is not listening (exit status, stderr).
    pub fn try_start(&self) -> Result<Proxy, String> {
        let mut last = String::new();
        for _ in 0..PORT_RETRIES {
            match Proxy::spawn_once(self) {
                Ok(p) => return Ok(p),
                Err((msg, port_taken)) => {
                    last = msg;
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

/// A running proxy process.
pub struct Proxy {
    child: Child,
    port: u16,
    tls_port: Option<u16>,
    dir: TempDir,
    access_log: PathBuf,
    stderr: PathBuf,
    stdout: PathBuf,
    exit: Option<ExitStatus>,
    /// Stops the process at exit if the proxy is never dropped; disarmed once it is reaped.
    guard: Option<ExitGuard>,
}

impl Proxy {
    /// Starts the proxy with `args` (routes, timeouts…) and a plain listener; panics with its
    /// stderr if it does not come up.
    #[track_caller]
    pub fn start(args: &[&str]) -> Proxy {
        Launch::new(args).start()
    }

    /// Like [`Proxy::start`], plus a TLS listener serving `certs` (first = default for SNI).
    #[track_caller]
    pub fn start_tls(args: &[&str], certs: &[&CertPair]) -> Proxy {
        Launch::new(args).tls(certs).start()
    }

    /// Starts the proxy; Err describes why it is not listening (exit status, stderr).
    pub fn try_start(args: &[&str], certs: &[&CertPair]) -> Result<Proxy, String> {
        Launch::new(args).tls(certs).try_start()
    }

    /// Err((message, whether the failure looks like a port someone else took)).
    fn spawn_once(launch: &Launch) -> Result<Proxy, (String, bool)> {
        let dir = TempDir::new("proxy");
        let access_log = dir.join("access.log");
        let stderr = dir.join("stderr.log");
        let stdout = dir.join("stdout.log");
        let [port, tls_port] = free_ports::<2>();

        let mut full: Vec<String> = vec!["--listen".into(), format!("127.0.0.1:{port}")];
        let tls_port = if launch.certs.is_empty() {
            None
        } else {
            full.extend(["--listen-tls".into(), format!("127.0.0.1:{tls_port}")]);
            for c in &launch.certs {
                full.extend([
                    "--tls-cert".into(),
                    c.cert.display().to_string(),
                    "--tls-key".into(),
                    c.key.display().to_string(),
                ]);
            }
            Some(tls_port)
        };
        let launch = launch
            .clone()
            .default_flag("--workers", Some("2"))
            .default_flag("--access-log", Some(&access_log.display().to_string()))
            .default_flag("--access-log-format", Some("text"));
        full.extend(launch.args.iter().cloned());

        let create =
            |p: &PathBuf| File::create(p).map_err(|e| (format!("create {p:?}: {e}"), false));
        let child = Command::new(binary())
            .args(&full)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(create(&stdout)?)
            .stderr(create(&stderr)?)
            .spawn()
            .map_err(|e| (format!("spawn kcdproxy: {e}"), false))?;
        let guard = ExitGuard::spawn(child.id(), dir.path());
        let mut proxy = Proxy {
            child,
            port,
            tls_port,
            dir,
            access_log,
            stderr,
            stdout,
            exit: None,
            guard: Some(guard),
        };

        let ports: Vec<u16> = std::iter::once(port).chain(tls_port).collect();
        let ready_timeout = launch.ready_timeout;
        let deadline = Instant::now() + ready_timeout;
        let mut ready = vec![false; ports.len()];
        loop {
            for (i, p) in ports.iter().enumerate() {
                if !ready[i] {
                    ready[i] = std::net::TcpStream::connect_timeout(
                        &local(*p),
                        Duration::from_millis(200),
                    )
                    .is_ok();
                }
            }
            if ready.iter().all(|r| *r) {
                // SO_REUSEPORT lets another process listen on the same port and take a share of
                // the connections: make sure every listener on our ports is our child's.
                let ours = socket_inodes_of(proxy.pid());
                let foreign: Vec<u16> = ports
                    .iter()
                    .copied()
                    .filter(|p| listening_inodes(*p).iter().any(|i| !ours.contains(i)))
                    .collect();
                if foreign.is_empty() {
                    return Ok(proxy);
                }
                return Err((format!("another process also listens on {foreign:?}"), true));
            }
            if let Some(status) = proxy.try_exit() {
                let err = proxy.stderr();
                let taken = err.contains("in use") || err.contains("AddrInUse");
                return Err((
                    format!(
                        "kcdproxy exited ({status}) before listening on {ports:?}\n\
                         args: {full:?}\n--- stderr ---\n{err}\n--- stdout ---\n{}",
                        proxy.stdout()
                    ),
                    taken,
                ));
            }
            if Instant::now() >= deadline {
                return Err((
                    format!(
                        "kcdproxy is running but not listening on {ports:?} after \
                         {ready_timeout:?}\nargs: {full:?}\n--- stderr ---\n{}",
                        proxy.stderr()
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The plain listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS listener's port (panics if started without certificates).
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("proxy started without a TLS listener")
    }

    /// The plain listener's address.
    pub fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// A new client connection to the plain listener.
    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    /// The test's temporary directory (holds the logs).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The last 20 lines of stderr, for assertion messages.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr(), 20)
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Sends SIGTERM (graceful shutdown); panics if the process already exited.
    pub fn stop_sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends `sig`; panics if the process already exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        assert!(
            self.try_exit().is_none(),
            "kcdproxy exited ({:?}) before signal {sig}\n--- stderr ---\n{}",
            self.exit,
            self.stderr()
        );
        // SAFETY: kill(2) touches no memory of ours. The pid is our child and has not been
        // reaped (try_exit just saw it running), so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({sig}): {}", std::io::Error::last_os_error());
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
            if self.exit.is_some() {
                // Reaped: its pid may name another process from now on.
                if let Some(guard) = self.guard.take() {
                    guard.disarm();
                }
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for the process to exit; panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let ok = poll_until(timeout, || self.try_exit().is_some());
        assert!(
            ok,
            "kcdproxy still running {timeout:?} after being asked to stop\n--- stderr ---\n{}",
            self.stderr()
        );
        self.exit.expect("exit status")
    }

    /// Complete lines of the access log so far.
    pub fn access_log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..i],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    }

    /// The access log, parsed; panics on a line that is not `key=value …`.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.access_log()
            .iter()
            .map(|l| LogLine::parse(l).unwrap_or_else(|e| panic!("access log line {l:?}: {e}")))
            .collect()
    }

    /// Waits up to `timeout` for an access-log line matching `pred`; panics listing the log if
    /// none comes.
    pub fn wait_log_line(&self, pred: impl Fn(&LogLine) -> bool, timeout: Duration) -> LogLine {
        let mut found = None;
        poll_until(timeout, || {
            found = self.log_lines().into_iter().find(|l| pred(l));
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no matching access-log line within {timeout:?}; the log has:\n{}",
                self.access_log().join("\n")
            )
        })
    }

    /// Waits for the access-log line of the request to `path` (query ignored).
    pub fn wait_log_path(&self, path: &str) -> LogLine {
        self.wait_log_line(|l| l.path() == Some(path), LOG_WAIT)
    }

    /// The access-log lines of the requests to `path` (query ignored), waiting (up to 3 s)
    /// until there are at least `at_least`.
    pub fn access_lines(&self, path: &str, at_least: usize) -> Vec<String> {
        self.access_lines_until(path, |lines| lines.len() >= at_least)
    }

    /// The access-log lines of the requests to `path` (query ignored), waiting (up to 3 s)
    /// until `done` holds for them; what there is then.
    pub fn access_lines_until(&self, path: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        poll_until(LOG_WAIT, || {
            lines = self
                .log_lines()
                .into_iter()
                .filter(|l| l.path() == Some(path))
                .map(|l| l.raw)
                .collect();
            done(&lines)
        });
        lines
    }

    /// Current resident set size, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Peak resident set size, KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    fn proc_status_kib(&self, key: &str) -> u64 {
        proc_status_kib(self.pid(), key)
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/status", self.pid()))
    }

    /// Starts sampling VmRSS every 20 ms in a thread until [`RssSampler::stop`].
    pub fn sample_rss(&self) -> RssSampler {
        let pid = self.pid();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut max = 0;
            while !st.load(Ordering::SeqCst) {
                match proc_status_kib(pid, "VmRSS:") {
                    Some(v) => max = max.max(v),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        RssSampler { stop, handle }
    }
}

/// A `kB` field of /proc/PID/status; None if the process is gone.
pub fn proc_status_kib(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A thread sampling a process's resident set size.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    /// Stops sampling; returns the largest VmRSS seen, KiB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("RSS sampler thread")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- kcdproxy on port {} (exit: {:?}) stderr (tail) ---\n{}\n--- access log (tail) ---\n{}",
                self.port,
                self.exit,
                tail(&self.stderr(), 40),
                tail(&self.access_log().join("\n"), 20),
            );
        }
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A `sh` that waits for end-of-file on a pipe whose only writer is this test process, then
/// stops the proxy (TERM, KILL a second later) and removes its directory unless
/// `KCD_TEST_KEEP_LOGS=1`. The end-of-file comes when the test process is gone, however it
/// ended (exit, panic, signal): the only way to stop a proxy held in a `static`.
struct ExitGuard {
    sh: Child,
    /// The write end; never written, only closed.
    _pipe: ChildStdin,
}

impl ExitGuard {
    fn spawn(pid: u32, dir: &Path) -> ExitGuard {
        let script = "read _ignored; kill -TERM \"$1\" 2>/dev/null; sleep 1; \
                      kill -KILL \"$1\" 2>/dev/null; \
                      [ \"$KCD_TEST_KEEP_LOGS\" = 1 ] || rm -rf -- \"$2\"; exit 0";
        let mut sh = Command::new("/bin/sh")
            .args(["-c", script, "kcd-test-guard", &pid.to_string()])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the proxy's exit guard (/bin/sh)");
        let pipe = sh.stdin.take().expect("guard stdin");
        ExitGuard { sh, _pipe: pipe }
    }

    /// Stops the guard without letting it act (killed before its pipe closes).
    fn disarm(mut self) {
        let _ = self.sh.kill();
        let _ = self.sh.wait();
    }
}

/// One access-log line in the text format: `key=value` pairs separated by spaces; a value with
/// spaces is double-quoted (with `\"` and `\\` escapes).
#[derive(Clone, Debug)]
pub struct LogLine {
    pub raw: String,
    pub fields: Vec<(String, String)>,
}

impl LogLine {
    pub fn parse(line: &str) -> Result<LogLine, String> {
        let mut fields = Vec::new();
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b' ' {
                i += 1;
                continue;
            }
            let key_start = i;
            while i < b.len() && b[i] != b'=' && b[i] != b' ' {
                i += 1;
            }
            if i >= b.len() || b[i] != b'=' {
                return Err(format!("`{}` is not key=value", &line[key_start..i]));
            }
            let key = line[key_start..i].to_string();
            i += 1;
            let mut value = String::new();
            if i < b.len() && b[i] == b'"' {
                i += 1;
                loop {
                    match b.get(i) {
                        None => return Err(format!("unterminated quoted value of `{key}`")),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if i + 1 < b.len() => {
                            value.push(b[i + 1] as char);
                            i += 2;
                        }
                        Some(_) => {
                            // Copy one UTF-8 character.
                            let ch = line[i..].chars().next().expect("char");
                            value.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
            } else {
                let start = i;
                while i < b.len() && b[i] != b' ' {
                    i += 1;
                }
                value.push_str(&line[start..i]);
            }
            fields.push((key, value));
        }
        Ok(LogLine {
            raw: line.to_string(),
            fields,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> Option<u16> {
        self.get("status").and_then(|s| s.parse().ok())
    }

    pub fn reason(&self) -> Option<&str> {
        self.get("reason")
    }

    /// The logged path without any query.
    pub fn path(&self) -> Option<&str> {
        self.get("path").map(|p| p.split('?').next().unwrap_or(p))
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// Asserts `status=` and `reason=`, showing the whole line otherwise.
    pub fn assert_status_reason(&self, status: u16, reason: &str) {
        assert_eq!(
            (self.status(), self.reason()),
            (Some(status), Some(reason)),
            "access-log line: {}",
            self.raw
        );
    }
}
