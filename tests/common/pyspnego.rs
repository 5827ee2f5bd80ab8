//! pyspnego (the `spnego` Python module) as a real SPNEGO client: NTLM inside Negotiate,
//! verifying the server's final token as a Windows client does.
//!
//! [`pyspnego`] finds or builds a Python that has the module; [`post`] runs [`CLIENT`] with it.
//! Both are bounded: the venv build and every client run have a deadline.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::{flock_within, run_bounded, Output};

/// Where the venv is cached between test runs, and the lock its builder holds.
const VENV: &str = "/tmp/kcdproxy-pyspnego";
const LOCK: &str = "/tmp/kcdproxy-pyspnego.lock";

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
    let venv = PathBuf::from(VENV);
    let python = venv.join("bin/python3");
    if has_spnego(&python) {
        return Some(python);
    }
    // One test process builds it; others wait on the lock and then find it.
    let lock = File::create(LOCK).ok()?;
    let _held = FlockGuard::exclusive(&lock, Duration::from_secs(120))?;
    if has_spnego(&python) {
        return Some(python);
    }
    // Built in place: others wait on the lock, and a half-built venv fails the import check.
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = run_bounded(cmd, Duration::from_secs(90)).map_err(|e| e.to_string())?;
        if out.ok {
            Ok(())
        } else {
            Err(out
                .stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | "))
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
        if flock_within(file, libc::LOCK_EX, wait) {
            Some(FlockGuard(file))
        } else {
            eprintln!("note: {LOCK} held for {wait:?}; skipping");
            None
        }
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// The pyspnego HTTP client: SPNEGO (NTLM inside, since the venv has no Kerberos) against
/// `http://HOST:PORT/PATH`, each leg on one keep-alive connection, verifying the server's
/// final token (mechListMIC). Prints `status=`, `complete=`, `rounds=`, then the body.
pub const CLIENT: &str = r#"
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

/// Runs [`CLIENT`] with `python` (for at most 30 s): `user` with `password` POSTs `body` to
/// `path` at `addr`.
pub fn post(
    python: &Path,
    addr: SocketAddr,
    path: &str,
    user: &str,
    password: &str,
    body: &str,
) -> Output {
    run_bounded(
        Command::new(python).args(["-c", CLIENT]).args([
            &addr.ip().to_string(),
            &addr.port().to_string(),
            path,
            user,
            password,
            body,
        ]),
        Duration::from_secs(30),
    )
    .expect("run python")
}
