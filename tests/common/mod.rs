//! The fixture set of the integration tests: every test binary declares `mod common;` and uses
//! the part it needs.
//!
//! - The proxy core: a real HTTP/1.1 origin ([`echo`]), a launcher for the proxy binary
//!   ([`proxy`]), a raw-socket HTTP/1.1 client that parses responses itself ([`client`]), the
//!   `curl` CLI as an independent client ([`curl`]), certificates made with the `openssl` CLI
//!   ([`certs`]) and a deterministic byte pattern for large bodies ([`pattern`]).
//! - The Kerberos lab (`tests/lab/`): the lab itself as typed values ([`lab`]), Kerberos helpers
//!   around its KDCs ([`kdc`]), and what the client pre-authentication and delegation tests add to
//!   the core fixtures ([`authn`]: the proxy in front of the lab's backend, `Authorization`
//!   values, the backend's access log), an origin that records the request heads it receives
//!   ([`recorder`]) and pyspnego as a real SPNEGO client ([`pyspnego`]).
//!
//! Every test starts its own servers on free loopback ports (or shares one per binary, in a
//! `static`), so tests in one binary run in parallel without sharing state. Every socket
//! operation has a timeout and every wait is bounded: a broken proxy makes a test fail with a
//! message, never hang.

// Each test binary compiles this module but uses only part of it.
#![allow(dead_code)]

pub mod authn;
pub mod certs;
pub mod client;
pub mod curl;
pub mod echo;
pub mod kdc;
pub mod lab;
pub mod pattern;
pub mod proxy;
pub mod pyspnego;
pub mod recorder;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The timeout of every blocking socket read or write done by the fixtures and the client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed), and never
/// handed out before by this test process.
///
/// The proxy binds one SO_REUSEPORT socket per worker, so it must be given a concrete port. Two
/// proxies given the same port would *both* bind it (SO_REUSEPORT) and share its connections
/// silently, so ports are never handed out twice, and [`proxy::Proxy`] also checks that no other
/// process listens on its port.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports, none handed out before by this process.
pub fn free_ports<const N: usize>() -> [u16; N] {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..100 {
        // All held open while choosing, so the kernel cannot return one twice.
        let held: Vec<TcpListener> = (0..N)
            .map(|_| {
                TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port")
            })
            .collect();
        let ports: [u16; N] =
            std::array::from_fn(|i| held[i].local_addr().expect("local_addr").port());
        let mut seen = HANDED_OUT.lock().expect("port registry");
        if ports.iter().all(|p| !seen.contains(p)) {
            seen.extend(ports);
            return ports;
        }
    }
    panic!("no fresh free port after 100 tries");
}

/// Inodes of the sockets listening on 127.0.0.1:`port` or 0.0.0.0:`port` (IPv4, this network
/// namespace), from /proc/net/tcp.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && want.iter().any(|w| w == f[1]) && f[3] == "0A")
                .then(|| f[9].parse().ok())
                .flatten()
        })
        .collect()
}

/// Inodes of the sockets process `pid` has open (from its fd links `socket:[N]`).
pub fn socket_inodes_of(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes. Returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A directory under cargo's per-target temporary directory, removed on drop unless the test
/// is failing (then it is kept, and its path printed, for a post-mortem).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("kcdproxy-itest")
            .join(format!("{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("keeping {} for inspection", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// What a client process (curl, a Python client) printed.
#[derive(Debug)]
pub struct Output {
    /// Whether it exited with status 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The JSON documents on stdout, one per line (the echo server ends each with `\n`).
    pub fn json_docs(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("output is not JSON ({e}): {l}\n{}", self.stderr))
            })
            .collect()
    }
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) for at most `limit`: a process
/// still running then is killed, and its output ends with a line saying so. Err only when it
/// cannot be started.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read both pipes while it runs: a child blocked on a full pipe would never exit.
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let exited = poll_until(limit, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let mut out = Output {
        ok: exited && status.success(),
        stdout: String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned(),
    };
    if !exited {
        out.stderr.push_str(&format!("\n(killed after {limit:?})"));
    }
    Ok(out)
}

/// Takes `flock(file, op)` (`libc::LOCK_SH` or `libc::LOCK_EX`), retrying for up to `wait`.
/// Returns whether it got the lock.
pub fn flock_within(file: &File, op: libc::c_int, wait: Duration) -> bool {
    // SAFETY: flock on a descriptor the caller owns; no memory is involved.
    poll_until(wait, || unsafe {
        libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0
    })
}
