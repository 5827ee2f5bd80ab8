//! The lab fixture: the real Active Directory, MIT KDC and Kerberos backend of `tests/lab/`,
//! brought up once per test binary and handed to tests as typed values.
//!
//! [`lab()`] runs `tests/lab/lab.sh up --auto` the first time it is called (a quick OK when the
//! lab is already up), reads `$KCD_LAB_DIR/lab.env` and returns the same [`Lab`] to every test.
//! The lab needs root; `KCD_LAB_DIR` picks the state directory (default `/tmp/kcdproxy-lab`).
//!
//! Lifetime: while this process runs it holds a shared `flock` on `$KCD_LAB_DIR/users.lock`, so
//! `lab.sh down` from elsewhere refuses to pull the lab away mid-test. At exit the lock is
//! released and `lab.sh down --auto` runs: it stops the lab only if a test run started it (not
//! a developer's `lab.sh up`) and no other test process still holds it. `KCD_LAB_KEEP=1` keeps
//! it up for the next run (saves ~15 s per test binary).
//!
//! Processes that talk to the lab should get [`Lab::krb5_env`] (the lab's `krb5.conf`, and a
//! replay cache inside the state directory rather than `/var/tmp`).

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::flock_within;

/// One Kerberos realm of the lab, with the proxy's and the backend's credentials in it.
#[derive(Debug, Clone)]
pub struct Realm {
    /// `EXAMPLE.TEST` (Samba AD DC) or `MIT.TEST` (MIT krb5kdc + LDAP).
    pub name: String,
    /// The realm's KDC (TCP and UDP).
    pub kdc: SocketAddr,
    /// The directory behind the KDC: AD's LDAP on the DC, or the MIT realm's slapd.
    pub ldap_url: String,
    /// A `krb5.conf` with both realms whose `default_realm` is this one (what `kvno -U user`
    /// needs to name a user of this realm).
    pub krb5_config: PathBuf,
    /// The principal the proxy logs in as (`kinit -k`): `svc-proxy@EXAMPLE.TEST` on AD,
    /// `HTTP/proxy.example.test@MIT.TEST` on MIT.
    pub proxy_principal: String,
    /// AES keys of the proxy: its login principal and `HTTP/proxy.example.test`.
    pub proxy_keytab: PathBuf,
    /// AES keys of `HTTP/backend.example.test` and `HTTP/other.example.test` in this realm.
    pub backend_keytab: PathBuf,
}

/// A lab user: the same name and password in both realms and in the AD (NTLM).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    /// MD4 of the UTF-16LE password, as the DC stores it (`unicodePwd`).
    pub nt_hash: [u8; 16],
}

impl User {
    /// `user@REALM`.
    pub fn principal(&self, realm: &Realm) -> String {
        format!("{}@{}", self.name, realm.name)
    }
}

/// The Samba AD DC in its network namespace.
#[derive(Debug, Clone)]
pub struct DomainController {
    /// The DC's address on its side of the veth pair (link-local /30).
    pub addr: IpAddr,
    /// The host's address on the same /30.
    pub host_addr: IpAddr,
    pub hostname: String,
    /// The DC's NetBIOS name (`DC1`): what an NTLM challenge's target names for its winbindd.
    pub netbios_name: String,
    /// The NetBIOS domain (`EXAMPLE`).
    pub domain: String,
    /// The DNS domain (`example.test`).
    pub dns_domain: String,
    /// `ip netns exec <netns> ...` runs a command beside the DC (e.g. to make its KDC drop packets).
    pub netns: String,
}

/// NTLM validation through the DC's winbindd.
#[derive(Debug, Clone)]
pub struct Winbind {
    /// `ntlm_auth` wired to the lab's winbindd: `ntlm_auth --helper-protocol=ntlm-server-1`.
    pub ntlm_auth: PathBuf,
    /// Runs a command where libwbclient finds the lab's winbindd (a private mount namespace with
    /// the lab's run directory on /run/samba): `with-winbind CMD ARGS...`. Needs root.
    pub with_winbind: PathBuf,
    /// Where winbindd's `pipe` is (`winbindd_privileged/` is next to the DC's other state).
    pub socket_dir: PathBuf,
    /// The directory `with-winbind` binds over /run/samba.
    pub run_dir: PathBuf,
    /// The DC's smb.conf.
    pub smb_conf: PathBuf,
}

/// The Kerberos-protected Apache backend (mod_auth_gssapi), on loopback.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Plain HTTP. Locations: `/echo/...` and `/whoami` (Negotiate required), `/public/...` (open).
    pub http: SocketAddr,
    /// TLS with a lab-CA certificate for `backend.example.test`, `localhost` and `127.0.0.1`.
    pub https: SocketAddr,
    /// `http://127.0.0.1:PORT`; for Negotiate, clients must name [`Lab::backend_host`] instead
    /// (the SPN comes from the host name), e.g. `curl --resolve backend.example.test:PORT:127.0.0.1`.
    pub http_url: String,
    pub https_url: String,
    /// The acceptor keytab: the backend SPNs of both realms.
    pub keytab: PathBuf,
}

/// Lab CA and server certificates (PEM; keys are PKCS#8).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca: PathBuf,
    /// kcdproxy's certificate: `proxy.example.test`, `localhost`, `127.0.0.1`.
    pub proxy_cert: PathBuf,
    pub proxy_key: PathBuf,
    pub backend_cert: PathBuf,
    pub backend_key: PathBuf,
}

/// Everything a test needs to know about the running lab (from `lab.env`).
#[derive(Debug, Clone)]
pub struct Lab {
    pub dir: PathBuf,
    /// Changes with every `up`.
    pub instance: String,
    pub log_dir: PathBuf,
    /// The lab's client `krb5.conf` (both realms, default `EXAMPLE.TEST`). Never /etc/krb5.conf.
    pub krb5_config: PathBuf,
    /// Replay caches of acceptors started by tests belong here (`KRB5RCACHEDIR`).
    pub rcache_dir: PathBuf,
    pub ad: Realm,
    pub mit: Realm,
    pub dc: DomainController,
    pub winbind: Winbind,
    pub backend: Backend,
    pub pki: Pki,
    /// `proxy.example.test`; its SPN is [`Lab::proxy_spn`].
    pub proxy_host: String,
    pub proxy_spn: String,
    /// `backend.example.test`; its SPN is [`Lab::backend_spn`].
    pub backend_host: String,
    /// The SPN the proxy may delegate to (in both realms).
    pub backend_spn: String,
    /// An SPN of the backend account that the proxy may NOT delegate to.
    pub nondelegable_spn: String,
    pub alice: User,
    /// Sensitive: cannot be delegated (AD `NOT_DELEGATED`; MIT `-allow_forwardable`).
    pub bob: User,
    /// A second delegable user (like alice).
    pub carol: User,
    /// `user:hexhash` lines (with `#` comments) for offline NTLM validation.
    pub nt_hash_file: PathBuf,
    /// Every `KEY=VALUE` of lab.env, for what the typed fields do not cover.
    pub vars: BTreeMap<String, String>,
}

impl Lab {
    /// Both realms, for tests that must hold against both KDC families.
    pub fn realms(&self) -> [&Realm; 2] {
        [&self.ad, &self.mit]
    }

    /// Environment for a child process that uses Kerberos against the lab.
    pub fn krb5_env(&self) -> [(&'static str, &Path); 2] {
        [
            ("KRB5_CONFIG", &self.krb5_config),
            ("KRB5RCACHEDIR", &self.rcache_dir),
        ]
    }

    /// A lab.env value by name; panics naming the key when it is missing.
    pub fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .unwrap_or_else(|| panic!("lab.env has no {key} (instance {})", self.instance))
    }

    /// A script of `tests/lab/`.
    pub fn script(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/lab")
            .join(name)
    }
}

static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
/// The shared lock on users.lock; never dropped (released at exit by [`release_lab`]).
static USERS_LOCK: OnceLock<File> = OnceLock::new();

/// The running lab, brought up on first use. Panics with lab.sh's own report (which daemon
/// failed, which log to read) when the lab cannot be brought up; every later call panics with
/// the same report instead of retrying.
pub fn lab() -> &'static Lab {
    match LAB.get_or_init(start) {
        Ok(lab) => lab,
        Err(report) => panic!("the test lab is not available:\n{report}"),
    }
}

fn lab_dir() -> PathBuf {
    std::env::var_os("KCD_LAB_DIR")
        .map_or_else(|| PathBuf::from("/tmp/kcdproxy-lab"), PathBuf::from)
}

fn start() -> Result<Lab, String> {
    let dir = lab_dir();
    // `up` and the shared lock are two steps: a `down --auto` of another test process may slip in
    // between. Then the directory is gone or new, and we start again.
    for _ in 0..3 {
        let up = Command::new(Lab::script("lab.sh"))
            .args(["up", "--auto"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run tests/lab/lab.sh: {e}"))?;
        let stderr = String::from_utf8_lossy(&up.stderr);
        eprint!("{stderr}");
        if !up.status.success() {
            return Err(format!(
                "tests/lab/lab.sh up failed ({}):\n{stderr}",
                up.status
            ));
        }
        let Some(lock) = lock_shared(&dir)? else {
            continue;
        };
        let env_path = dir.join("lab.env");
        let text = match std::fs::read_to_string(&env_path) {
            Ok(text) => text,
            Err(_) => continue, // taken down between `up` and the lock
        };
        let lab = parse(&text).map_err(|e| format!("{}: {e}", env_path.display()))?;
        if USERS_LOCK.set(lock).is_ok() {
            // SAFETY: `release_lab` is an `extern "C" fn()` with no arguments that only uses
            // statics and spawns a process; atexit has no other requirement.
            unsafe { libc::atexit(release_lab) };
        }
        return Ok(lab);
    }
    Err(format!(
        "the lab in {} kept disappearing while starting (3 attempts)",
        dir.display()
    ))
}

/// Takes a shared flock on `DIR/users.lock` (waiting up to 2 minutes for a `down` in progress).
/// `None` when the directory vanished or was replaced meanwhile.
fn lock_shared(dir: &Path) -> Result<Option<File>, String> {
    let path = dir.join("users.lock");
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if !flock_within(&file, libc::LOCK_SH, Duration::from_secs(120)) {
        return Err(format!(
            "{} stayed locked for 2 minutes (a lab.sh down hanging?)",
            path.display()
        ));
    }
    let same = match (file.metadata(), std::fs::metadata(&path)) {
        (Ok(held), Ok(now)) => held.dev() == now.dev() && held.ino() == now.ino(),
        _ => false,
    };
    Ok(same.then_some(file))
}

extern "C" fn release_lab() {
    let Some(lock) = USERS_LOCK.get() else { return };
    // SAFETY: unlocking a descriptor we own.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
    if std::env::var_os("KCD_LAB_KEEP").is_some_and(|v| v == "1") {
        return;
    }
    let _ = Command::new(Lab::script("lab.sh"))
        .args(["down", "--auto"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
}

fn parse(text: &str) -> Result<Lab, String> {
    let mut vars = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("not KEY=VALUE: {line:?}"))?;
        vars.insert(key.to_owned(), value.to_owned());
    }
    let get = |key: &str| {
        vars.get(key)
            .cloned()
            .ok_or_else(|| format!("missing {key}"))
    };
    let path = |key: &str| get(key).map(PathBuf::from);
    let addr = |key: &str| -> Result<SocketAddr, String> {
        get(key)?.parse().map_err(|e| format!("{key}: {e}"))
    };
    let ip = |key: &str| -> Result<IpAddr, String> {
        get(key)?.parse().map_err(|e| format!("{key}: {e}"))
    };
    let user = |prefix: &str| -> Result<User, String> {
        let hex = get(&format!("{prefix}_NT_HASH"))?;
        let bytes = hex::decode(&hex).map_err(|e| format!("{prefix}_NT_HASH: {e}"))?;
        Ok(User {
            name: get(prefix)?,
            password: get(&format!("{prefix}_PASSWORD"))?,
            nt_hash: bytes
                .try_into()
                .map_err(|_| format!("{prefix}_NT_HASH is not 16 bytes"))?,
        })
    };
    Ok(Lab {
        dir: path("KCD_LAB_DIR")?,
        instance: get("KCD_LAB_INSTANCE")?,
        log_dir: path("KCD_LAB_LOG_DIR")?,
        krb5_config: path("KRB5_CONFIG")?,
        rcache_dir: path("KRB5RCACHEDIR")?,
        ad: Realm {
            name: get("KCD_LAB_AD_REALM")?,
            kdc: addr("KCD_LAB_AD_KDC")?,
            ldap_url: get("KCD_LAB_AD_LDAP_URL")?,
            krb5_config: path("KCD_LAB_KRB5_CONFIG")?,
            proxy_principal: get("KCD_LAB_AD_PROXY_PRINCIPAL")?,
            proxy_keytab: path("KCD_LAB_AD_PROXY_KEYTAB")?,
            backend_keytab: path("KCD_LAB_AD_BACKEND_KEYTAB")?,
        },
        mit: Realm {
            name: get("KCD_LAB_MIT_REALM")?,
            kdc: addr("KCD_LAB_MIT_KDC")?,
            ldap_url: get("KCD_LAB_MIT_LDAP_URL")?,
            krb5_config: path("KCD_LAB_MIT_KRB5_CONFIG")?,
            proxy_principal: get("KCD_LAB_MIT_PROXY_PRINCIPAL")?,
            proxy_keytab: path("KCD_LAB_MIT_PROXY_KEYTAB")?,
            backend_keytab: path("KCD_LAB_MIT_BACKEND_KEYTAB")?,
        },
        dc: DomainController {
            addr: ip("KCD_LAB_DC_ADDR")?,
            host_addr: ip("KCD_LAB_HOST_ADDR")?,
            hostname: get("KCD_LAB_DC_HOSTNAME")?,
            netbios_name: get("KCD_LAB_DC_NETBIOS")?,
            domain: get("KCD_LAB_AD_DOMAIN")?,
            dns_domain: get("KCD_LAB_AD_DNS_DOMAIN")?,
            netns: get("KCD_LAB_DC_NETNS")?,
        },
        winbind: Winbind {
            ntlm_auth: path("KCD_LAB_NTLM_AUTH")?,
            with_winbind: path("KCD_LAB_WITH_WINBIND")?,
            socket_dir: path("KCD_LAB_WINBIND_SOCKET_DIR")?,
            run_dir: path("KCD_LAB_WINBIND_RUN_DIR")?,
            smb_conf: path("KCD_LAB_SMB_CONF")?,
        },
        backend: Backend {
            http: addr("KCD_LAB_BACKEND_HTTP")?,
            https: addr("KCD_LAB_BACKEND_HTTPS")?,
            http_url: get("KCD_LAB_BACKEND_HTTP_URL")?,
            https_url: get("KCD_LAB_BACKEND_HTTPS_URL")?,
            keytab: path("KCD_LAB_BACKEND_KEYTAB")?,
        },
        pki: Pki {
            ca: path("KCD_LAB_CA")?,
            proxy_cert: path("KCD_LAB_PROXY_CERT")?,
            proxy_key: path("KCD_LAB_PROXY_KEY")?,
            backend_cert: path("KCD_LAB_BACKEND_CERT")?,
            backend_key: path("KCD_LAB_BACKEND_KEY")?,
        },
        proxy_host: get("KCD_LAB_PROXY_HOST")?,
        proxy_spn: get("KCD_LAB_PROXY_SPN")?,
        backend_host: get("KCD_LAB_BACKEND_HOST")?,
        backend_spn: get("KCD_LAB_BACKEND_SPN")?,
        nondelegable_spn: get("KCD_LAB_NONDELEGABLE_SPN")?,
        alice: user("KCD_LAB_ALICE")?,
        bob: user("KCD_LAB_BOB")?,
        carol: user("KCD_LAB_CAROL")?,
        nt_hash_file: path("KCD_LAB_NT_HASH_FILE")?,
        vars,
    })
}
