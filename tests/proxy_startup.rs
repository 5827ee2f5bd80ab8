//! Start-up as an operator meets it, through the real binary: what the process says when it
//! cannot start, and what `--check-config` and `--help` report.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

/// `kcdproxy` with a valid configuration (one plain listener on a free port, one route), so
/// that the only problem a test sees is the one it makes.
fn kcdproxy(extra: &[&str]) -> Command {
    let [port] = common::free_ports::<1>();
    let mut cmd = Command::new(common::proxy::binary());
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--route", "/=http://127.0.0.1:9"])
        .args(["--workers", "1", "--access-log", "off"])
        .args(extra);
    cmd
}

/// Runs `cmd` with a seccomp filter (installed in the child between fork and exec) that makes
/// `io_uring_setup` fail with EPERM, as a container runtime's default profile does.
fn without_io_uring(mut cmd: Command) -> Output {
    // Classic BPF over `struct seccomp_data` (linux/seccomp.h): load the system call number
    // (offset 0); if it is io_uring_setup, return ERRNO(EPERM), else ALLOW. The number is the
    // same on every architecture (425, from the unified table of Linux 5.1); x32 calls carry
    // an extra bit and are simply allowed.
    // linux/bpf_common.h: BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    let filter = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    let prog_addr = &prog as *const libc::sock_fprog as usize;
    // SAFETY: only prctl (async-signal-safe) runs in the forked child; `filter` and `prog`
    // live to the end of this function, after `output()` has returned.
    unsafe {
        cmd.pre_exec(move || {
            // Without CAP_SYS_ADMIN a filter needs no_new_privs (seccomp(2)).
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    prog_addr,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run kcdproxy under the seccomp filter")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn without_io_uring_start_and_check_config_fail_with_one_line_naming_the_fix() {
    for check in [false, true] {
        let args: &[&str] = if check { &["--check-config"] } else { &[] };
        let out = without_io_uring(kcdproxy(args));
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "check-config={check}: exit as other start-up errors; stderr:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "no worker panic:\n{stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("kcdproxy: "))
            .collect();
        assert_eq!(lines.len(), 1, "one problem, one line:\n{stderr}");
        assert!(
            lines[0].starts_with(
                "kcdproxy: io_uring is not available (io_uring_setup: Operation not permitted"
            ),
            "{stderr}"
        );
        assert!(lines[0].contains("seccomp profile"), "{stderr}");
        assert!(lines[0].contains("kernel.io_uring_disabled=0"), "{stderr}");
        assert!(!text(&out.stdout).contains("configuration OK"));
    }
}

#[test]
fn the_same_configuration_starts_where_io_uring_is_allowed() {
    // The controls of the test above: the configuration itself is valid here (io_uring
    // allowed), and the wrapper alone does not break the binary (`--version` makes no ring).
    let out = kcdproxy(&["--check-config"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration OK"));

    let mut version = Command::new(common::proxy::binary());
    version.arg("--version");
    let out = without_io_uring(version);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("kcdproxy "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn help_lists_every_route_option_the_parser_accepts() {
    let out = Command::new(common::proxy::binary())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    // The parser refuses any option name that is not in this table (config::route's unit
    // tests), so the table is what the parser accepts.
    let options = kcdproxy::config::route::ROUTE_OPTIONS;
    assert!(options.len() >= 6, "{options:?}");
    for o in options {
        let lines: Vec<&str> = help
            .lines()
            .filter(|l| l.trim_start().starts_with(&format!("{}=", o.name)))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one line for {}= in --help:\n{help}",
            o.name
        );
        assert!(lines[0].contains(o.help), "{}", lines[0]);
    }
    for name in [
        "auth",
        "spn",
        "send-auth",
        "channel-binding",
        "auth-ua",
        "host",
    ] {
        assert!(
            options.iter().any(|o| o.name == name),
            "{name} is a documented route option"
        );
    }
}

/// The `kcdproxy: ` lines of a failed run's stderr.
fn problems(out: &Output) -> Vec<String> {
    text(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("kcdproxy: "))
        .map(String::from)
        .collect()
}

#[test]
fn check_config_reports_every_listen_address_that_cannot_be_bound_with_the_file_problems() {
    // Two ports held by sockets without SO_REUSEPORT (another program), one free.
    let taken_a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken_a.local_addr().unwrap();
    let b = taken_b.local_addr().unwrap();
    let [free] = common::free_ports::<1>();
    let dir = common::TempDir::new("check-config");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.join("missing.pem");

    // A file problem found while validating the flags (a missing certificate), and one found
    // while loading them (a key file with no key in it): the listeners are reported with each.
    for (cert, file_problem) in [
        (&missing, format!("cannot read `{}`", missing.display())),
        (&empty, format!("no certificate in {}", empty.display())),
    ] {
        let out = Command::new(common::proxy::binary())
            .arg("--check-config")
            .args(["--listen", &a.to_string()])
            .args(["--listen", &format!("127.0.0.1:{free}")])
            .args(["--listen-tls", &b.to_string()])
            .args(["--tls-cert", cert.to_str().unwrap()])
            .args(["--tls-key", empty.to_str().unwrap()])
            .args(["--route", "/=http://127.0.0.1:9"])
            .output()
            .unwrap();
        let p = problems(&out);
        assert_eq!(out.status.code(), Some(2), "{p:#?}");
        assert!(!text(&out.stdout).contains("configuration OK"));
        assert!(p.iter().any(|l| l.starts_with(&file_problem)), "{p:#?}");
        for taken in [a, b] {
            let want = format!("listen {taken}: Address already in use");
            assert_eq!(
                p.iter().filter(|l| l.starts_with(&want)).count(),
                1,
                "{want}: {p:#?}"
            );
        }
        assert!(
            !p.iter().any(|l| l.contains(&format!(":{free}"))),
            "the free address is fine: {p:#?}"
        );
    }
}

#[test]
fn check_config_beside_a_running_proxy_does_not_count_its_ports_as_taken() {
    let running = common::proxy::Proxy::start(&["--route", "/=http://127.0.0.1:9"]);
    let out = Command::new(common::proxy::binary())
        .args(["--check-config", "--listen", &running.addr().to_string()])
        .args(["--route", "/=http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{:#?}", problems(&out));
    assert!(text(&out.stdout).contains("configuration OK"));
}
