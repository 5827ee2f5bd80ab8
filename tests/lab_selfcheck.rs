//! The lab's own test: the fixture brings the lab up, `tests/lab/selfcheck.sh` proves it does what
//! kcdproxy's tests rely on (S4U2Self + S4U2Proxy in both realms, the AD-like refusals, NTLM
//! through winbindd, curl --negotiate to the backend), and the fixture's values are checked from
//! the Rust side.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::lab::{lab, Lab};

#[test]
fn selfcheck_passes() {
    let lab = lab();
    let out = Command::new(Lab::script("selfcheck.sh"))
        .env("KCD_LAB_DIR", &lab.dir)
        .output()
        .expect("run tests/lab/selfcheck.sh");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        out.status.success(),
        "lab self-check failed ({}):\n{report}",
        out.status
    );
    assert!(!report.contains("FAIL"), "{report}");
}

#[test]
fn fixture_files_exist() {
    let lab = lab();
    let files = [
        &lab.krb5_config,
        &lab.ad.krb5_config,
        &lab.mit.krb5_config,
        &lab.ad.proxy_keytab,
        &lab.ad.backend_keytab,
        &lab.mit.proxy_keytab,
        &lab.mit.backend_keytab,
        &lab.backend.keytab,
        &lab.nt_hash_file,
        &lab.pki.ca,
        &lab.pki.proxy_cert,
        &lab.pki.proxy_key,
        &lab.pki.backend_cert,
        &lab.pki.backend_key,
        &lab.winbind.ntlm_auth,
        &lab.winbind.with_winbind,
        &lab.winbind.smb_conf,
    ];
    for file in files {
        let meta = std::fs::metadata(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(meta.len() > 0, "{} is empty", file.display());
    }
    assert!(lab.rcache_dir.is_dir() && lab.log_dir.is_dir());
    assert!(
        lab.winbind.socket_dir.join("pipe").exists(),
        "winbindd has no pipe in {}",
        lab.winbind.socket_dir.display()
    );
    let krb5 = std::fs::read_to_string(&lab.krb5_config).unwrap();
    for realm in lab.realms() {
        assert!(
            krb5.contains(&format!("kdc = {}", realm.kdc)),
            "krb5.conf lacks the {} KDC:\n{krb5}",
            realm.name
        );
    }
}

#[test]
fn fixture_identities() {
    let lab = lab();
    assert_eq!(lab.ad.name, "EXAMPLE.TEST");
    assert_eq!(lab.mit.name, "MIT.TEST");
    assert_eq!(lab.dc.domain, "EXAMPLE");
    assert_eq!(lab.proxy_spn, format!("HTTP/{}", lab.proxy_host));
    assert_eq!(lab.backend_spn, "HTTP/backend.example.test");
    assert_ne!(lab.nondelegable_spn, lab.backend_spn);
    assert_eq!(lab.alice.principal(&lab.ad), "alice@EXAMPLE.TEST");
    assert_ne!(lab.alice.nt_hash, lab.bob.nt_hash);
    // The hash file and lab.env agree (both come from the DC's unicodePwd).
    let file = std::fs::read_to_string(&lab.nt_hash_file).unwrap();
    for user in [&lab.alice, &lab.bob] {
        let line = format!("{}:{}", user.name, hex::encode(user.nt_hash));
        assert!(
            file.lines().any(|l| l == line),
            "{} lacks {line}",
            lab.nt_hash_file.display()
        );
    }
    // The DC sits on a link-local /30 beside the host; the rest is on loopback.
    assert!(
        lab.dc.addr.to_string().starts_with("169.254.77."),
        "{}",
        lab.dc.addr
    );
    assert!(lab.backend.http.ip().is_loopback() && lab.backend.https.ip().is_loopback());
    assert!(lab.mit.kdc.ip().is_loopback());
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

#[test]
fn daemons_accept_connections() {
    let lab = lab();
    for addr in [lab.ad.kdc, lab.mit.kdc, lab.backend.http, lab.backend.https] {
        connect(addr);
    }
}

#[test]
fn backend_public_echo_from_rust() {
    let lab = lab();
    let mut stream = connect(lab.backend.http);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = b"kcdproxy";
    let head = format!(
        "POST /public/echo/from-rust?x=1 HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        lab.backend_host,
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for line in [
        "not authenticated",
        "method=POST",
        "path=/public/echo/from-rust",
        "body_length=8",
        "query=x=1",
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "no {line:?} in:\n{response}"
        );
    }
}

#[test]
fn backend_requires_negotiate_from_rust() {
    let lab = lab();
    let mut stream = connect(lab.backend.http);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /whoami HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        lab.backend_host
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response
            .lines()
            .any(|l| l.trim_end() == "WWW-Authenticate: Negotiate"),
        "{response}"
    );
}
