//! Kerberos helpers shared by the tests that talk to the lab's KDCs: the process environment
//! for in-process GSS-API, `kinit` into a ticket cache for Kerberos clients in other processes,
//! counting S4U exchanges in the MIT KDC's log, and freezing the MIT KDC (SIGSTOP) for KDC-down
//! tests.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::lab::{lab, Lab, Realm, User};

/// The lab, with `KRB5_CONFIG` and `KRB5RCACHEDIR` set for this process (in-process GSS-API
/// reads them) — once, before any thread uses GSS-API.
pub fn krb5_lab() -> &'static Lab {
    static ENV: OnceLock<()> = OnceLock::new();
    let lab = lab();
    ENV.get_or_init(|| {
        std::env::set_var("KRB5_CONFIG", &lab.krb5_config);
        std::env::set_var("KRB5RCACHEDIR", &lab.rcache_dir);
        std::env::remove_var("KRB5RCACHETYPE");
        std::env::remove_var("KRB5_KTNAME");
    });
    lab
}

/// Logs `user` in to `realm` with `kinit` (password on stdin), into the ticket cache `ccache`
/// (`FILE:…`, what a client process then gets as `KRB5CCNAME`); panics if it fails.
pub fn kinit(realm: &Realm, user: &User, ccache: &str) {
    let mut child = Command::new("kinit")
        .arg(user.principal(realm))
        .env("KRB5_CONFIG", &realm.krb5_config)
        .env("KRB5CCNAME", ccache)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kinit");
    writeln!(
        child.stdin.take().expect("kinit stdin"),
        "{}",
        user.password
    )
    .expect("kinit stdin");
    let out = child.wait_with_output().expect("kinit");
    assert!(out.status.success(), "kinit: {out:?}");
}

/// Lines of the MIT KDC's log containing `needle` (after a moment for the last to land).
pub fn mit_log_count(lab: &Lab, needle: &str) -> usize {
    std::thread::sleep(Duration::from_millis(200));
    std::fs::read_to_string(lab.log_dir.join("krb5kdc.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// S4U exchanges the MIT KDC logged for one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S4uCounts {
    pub s4u2self: usize,
    pub s4u2proxy: usize,
}

/// S4U2Self (`PROTOCOL-TRANSITION`) and S4U2Proxy (`CONSTRAINED-DELEGATION`) lines the MIT
/// KDC logged for `principal`.
pub fn mit_s4u(lab: &Lab, principal: &str) -> S4uCounts {
    S4uCounts {
        s4u2self: mit_log_count(lab, &format!("PROTOCOL-TRANSITION s4u-client={principal}")),
        s4u2proxy: mit_log_count(
            lab,
            &format!("CONSTRAINED-DELEGATION s4u-client={principal}"),
        ),
    }
}

/// The MIT KDC's pid, from the lab's pid file.
pub fn mit_kdc_pid(lab: &Lab) -> libc::pid_t {
    let pid_file = lab.dir.join("mit/krb5kdc.pid");
    std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()))
}

/// SIGSTOPs a process for as long as it lives; SIGCONT on drop, also when a test panics.
pub struct Frozen(libc::pid_t);

impl Frozen {
    pub fn new(pid: libc::pid_t) -> Frozen {
        // SAFETY: kill(2) on a pid read from the lab's pid file; no memory is involved.
        assert_eq!(
            unsafe { libc::kill(pid, libc::SIGSTOP) },
            0,
            "SIGSTOP {pid}"
        );
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}
