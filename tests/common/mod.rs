//! Fixtures shared by the integration tests of the proxy core: a real HTTP/1.1 origin
//! ([`echo`]), a launcher for the proxy binary ([`proxy`]), a raw-socket HTTP/1.1 client that
//! parses responses itself ([`client`]), certificates made with the `openssl` CLI ([`certs`]) and
//! a deterministic byte pattern for large bodies ([`pattern`]).
//!
//! Every test starts its own servers on free loopback ports, so tests in one binary run in
//! parallel without sharing state. Every socket operation has a timeout and every wait is
//! bounded: a broken proxy makes a test fail with a message, never hang.

// Each test binary compiles this module but uses only part of it.
#![allow(dead_code)]

pub mod certs;
pub mod client;
pub mod curl;
pub mod echo;
pub mod pattern;
pub mod proxy;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The timeout of every blocking socket read or write done by the fixtures and the client.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, then closed).
///
/// The proxy binds one SO_REUSEPORT socket per worker, so it must be given a concrete port; the
/// small race with other users of the port is handled by [`proxy::Proxy`] retrying on a new one.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (all held open while choosing, so none is handed out twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("local_addr").port())
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
