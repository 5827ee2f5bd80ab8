//! Configuration: command-line flags → a validated [`Config`].
//!
//! Validation collects *every* problem before failing, so an operator fixes a command line in
//! one pass (`--check-config` prints them all and exits non-zero).

pub mod cidr;
pub mod flags;
pub mod route;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use cidr::Cidr;
pub use flags::Flags;
pub use route::{Backend, Route, RouteTable, Scheme};

/// Where access-log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogDest {
    Off,
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    Json,
}

/// A listener address and whether it speaks TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Listener {
    /// The `--listen` and `--listen-tls` addresses that parse, and a message for each that does
    /// not. Apart from [`Config::from_flags`] so that `--check-config` can try to bind them
    /// even when other flags are wrong.
    pub fn from_flags(f: &Flags) -> (Vec<Listener>, Vec<String>) {
        let mut listeners = Vec::new();
        let mut errs = Vec::new();
        for (list, tls) in [(&f.listen, false), (&f.listen_tls, true)] {
            for a in list {
                match a.parse::<SocketAddr>() {
                    Ok(addr) => listeners.push(Listener { addr, tls }),
                    Err(_) => errs.push(format!(
                        "listener `{a}`: expected IP:PORT, e.g. 0.0.0.0:8080"
                    )),
                }
            }
        }
        (listeners, errs)
    }
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    pub header: Duration,
    pub client_idle: Duration,
    pub backend_connect: Duration,
    pub backend: Duration,
    pub backend_idle: Duration,
    pub drain: Duration,
}

/// Client authentication settings.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    pub ntlm_hash_file: Option<PathBuf>,
    pub ntlm_domain: String,
    pub ntlm_computer: String,
    pub dns_domain: String,
    pub realm: Option<String>,
    /// (NetBIOS domain, realm)
    pub domain_realm: Vec<(String, String)>,
    pub basic_realm: String,
    pub basic_over_http: bool,
    /// Lower-case header name.
    pub identity_header: Option<String>,
    /// The `ntlm_auth` argv when NTLM is verified through winbind.
    pub winbind: Option<Vec<String>>,
    pub basic_verify: BasicVerify,
    /// Zero: no cache.
    pub basic_cache_ttl: Duration,
    pub kerberos: Option<KerberosConfig>,
    pub kdc: KdcConfig,
}

/// Where Basic passwords are checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BasicVerify {
    /// The NT-hash file if given, else winbind, else the KDC.
    #[default]
    Auto,
    Local,
    Winbind,
    Kdc,
}

/// The proxy's own Kerberos identity.
#[derive(Clone, Debug)]
pub struct KerberosConfig {
    pub keytab: PathBuf,
    /// The login principal for delegation; `None`: accept clients' tickets only.
    pub login: Option<String>,
    /// The proxy's own service principal (for checking Basic passwords with the KDC).
    pub spn: Option<String>,
    pub rcache: Option<String>,
}

/// The KDC pool and the delegated-ticket cache.
#[derive(Clone, Debug)]
pub struct KdcConfig {
    pub threads: usize,
    pub queue: usize,
    pub timeout: Duration,
    pub ticket_cache_size: usize,
    pub refresh_ahead: Duration,
    pub negative_ttl: Duration,
}

impl Default for KdcConfig {
    fn default() -> Self {
        KdcConfig {
            threads: 4,
            queue: 64,
            timeout: Duration::from_secs(5),
            ticket_cache_size: 10_000,
            refresh_ahead: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
        }
    }
}

/// The validated configuration every worker reads (shared read-only).
#[derive(Clone, Debug)]
pub struct Config {
    pub listeners: Vec<Listener>,
    /// Sources that must open their connections with a PROXY protocol header (every
    /// listener); empty: PROXY protocol off.
    pub proxy_protocol_from: Vec<Cidr>,
    /// (certificate chain PEM, private key PEM) pairs; the first is the default for SNI.
    pub tls_certs: Vec<(PathBuf, PathBuf)>,
    pub routes: RouteTable,
    pub backend_ca: Option<PathBuf>,
    pub workers: usize,
    /// CPU for each worker, or empty for no pinning.
    pub cpus: Vec<usize>,
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    pub backend_pool_size: usize,
    pub access_log: AccessLogDest,
    pub access_log_format: AccessLogFormat,
    pub log_level: String,
    pub auth: AuthConfig,
    pub metrics_listen: Option<SocketAddr>,
    /// Passive backend health: failed connects in a row that mark a backend down.
    pub backend_fall: u32,
    /// Passive backend health: how long a down backend is skipped before a probe.
    pub backend_down_time: Duration,
}

impl Config {
    /// Validates `flags`, reporting every problem found.
    pub fn from_flags(f: &Flags) -> Result<Config, Vec<String>> {
        let (listeners, mut errs) = Listener::from_flags(f);
        if listeners.is_empty() {
            errs.push("no listener: give at least one --listen or --listen-tls".into());
        }
        let mut proxy_protocol_from = Vec::new();
        for n in &f.proxy_protocol_from {
            match Cidr::parse(n) {
                Ok(net) => proxy_protocol_from.push(net),
                Err(e) => errs.push(format!("--proxy-protocol-from {e}")),
            }
        }

        if f.tls_cert.len() != f.tls_key.len() {
            errs.push(format!(
                "--tls-cert given {} times but --tls-key {} times: they pair up in order",
                f.tls_cert.len(),
                f.tls_key.len()
            ));
        }
        let tls_certs: Vec<_> = f
            .tls_cert
            .iter()
            .cloned()
            .zip(f.tls_key.iter().cloned())
            .collect();
        if !f.listen_tls.is_empty() && tls_certs.is_empty() {
            errs.push("--listen-tls needs at least one --tls-cert/--tls-key pair".into());
        }
        for (c, k) in &tls_certs {
            for p in [c, k] {
                if let Err(e) = std::fs::metadata(p) {
                    errs.push(format!("cannot read `{}`: {e}", p.display()));
                }
            }
        }
        if let Some(ca) = &f.backend_ca {
            if let Err(e) = std::fs::metadata(ca) {
                errs.push(format!("--backend-ca `{}`: {e}", ca.display()));
            }
        }

        let mut routes = Vec::new();
        for r in &f.route {
            match route::parse_route(r) {
                Ok(r) => routes.push(r),
                Err(e) => errs.push(e),
            }
        }
        if f.route.is_empty() {
            errs.push("no route: give at least one --route /=http://HOST:PORT".into());
        }
        if f.backend_ca.is_none()
            && routes
                .iter()
                .flat_map(|r| &r.backends)
                .any(|b| b.scheme == Scheme::Https)
        {
            errs.push(
                "an https:// backend needs --backend-ca (the CA that signed its certificate)"
                    .into(),
            );
        }

        let available = available_cpus();
        let workers = match f.workers {
            Some(0) => {
                errs.push("--workers must be at least 1".into());
                1
            }
            Some(n) => n,
            None => available.len().max(1),
        };
        let cpus = if f.no_pin {
            Vec::new()
        } else if let Some(list) = &f.cpus {
            match parse_cpu_list(list) {
                Ok(c) if c.len() >= workers => c[..workers].to_vec(),
                Ok(c) => {
                    errs.push(format!(
                        "--cpus lists {} CPUs for {workers} workers",
                        c.len()
                    ));
                    Vec::new()
                }
                Err(e) => {
                    errs.push(e);
                    Vec::new()
                }
            }
        } else {
            // Default: worker i on the i-th allowed CPU, wrapping when there are more workers.
            (0..workers)
                .map(|i| available[i % available.len().max(1)])
                .collect()
        };

        let mut dur = |name: &str, v: &str| match parse_duration(v) {
            Ok(d) => d,
            Err(e) => {
                errs.push(format!("--{name} `{v}`: {e}"));
                Duration::from_secs(1)
            }
        };
        let timeouts = Timeouts {
            header: dur("header-timeout", &f.header_timeout),
            client_idle: dur("client-idle-timeout", &f.client_idle_timeout),
            backend_connect: dur("backend-connect-timeout", &f.backend_connect_timeout),
            backend: dur("backend-timeout", &f.backend_timeout),
            backend_idle: dur("backend-idle-timeout", &f.backend_idle_timeout),
            drain: dur("drain-timeout", &f.drain_timeout),
        };
        let backend_down_time = dur("backend-down-time", &f.backend_down_time);
        if f.backend_fall == 0 {
            errs.push("--backend-fall must be at least 1".into());
        }

        if f.max_header_bytes < 1024 {
            errs.push("--max-header-bytes must be at least 1024".into());
        }
        if f.max_headers == 0 {
            errs.push("--max-headers must be at least 1".into());
        }
        if f.max_connections == 0 {
            errs.push("--max-connections must be at least 1".into());
        }

        let access_log = match f.access_log.as_str() {
            "off" => AccessLogDest::Off,
            "stdout" | "-" => AccessLogDest::Stdout,
            "stderr" => AccessLogDest::Stderr,
            p => AccessLogDest::File(PathBuf::from(p)),
        };
        let access_log_format = match f.access_log_format.as_str() {
            "text" => AccessLogFormat::Text,
            "json" => AccessLogFormat::Json,
            other => {
                errs.push(format!(
                    "--access-log-format `{other}`: expected text or json"
                ));
                AccessLogFormat::Text
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&f.log_level) {
            errs.push(format!("--log-level `{}`: {e}", f.log_level));
        }

        let auth = auth_config(f, &routes, &mut errs);
        let metrics_listen = match &f.metrics_listen {
            Some(a) => match a.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    errs.push(format!("--metrics-listen `{a}`: expected IP:PORT"));
                    None
                }
            },
            None => None,
        };

        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Config {
            listeners,
            proxy_protocol_from,
            tls_certs,
            routes: RouteTable::new(routes),
            backend_ca: f.backend_ca.clone(),
            workers,
            cpus,
            timeouts,
            max_header_bytes: f.max_header_bytes,
            max_headers: f.max_headers,
            max_connections: f.max_connections,
            backend_pool_size: f.backend_pool_size,
            access_log,
            access_log_format,
            log_level: f.log_level.clone(),
            auth,
            metrics_listen,
            backend_fall: f.backend_fall,
            backend_down_time,
        })
    }
}

fn auth_config(f: &Flags, routes: &[Route], errs: &mut Vec<String>) -> AuthConfig {
    use route::Offer;
    let realm = f.realm.as_ref().map(|r| r.to_ascii_uppercase());
    let mut domain_realm = Vec::new();
    for m in &f.domain_realm {
        match m.split_once('=') {
            Some((d, r)) if !d.is_empty() && !r.is_empty() => {
                domain_realm.push((d.to_ascii_uppercase(), r.to_ascii_uppercase()))
            }
            _ => errs.push(format!("--domain-realm `{m}`: expected DOMAIN=REALM")),
        }
    }
    if let Some(p) = &f.ntlm_hash_file {
        if let Err(e) = std::fs::metadata(p) {
            errs.push(format!("--ntlm-hash-file `{}`: {e}", p.display()));
        }
    }
    let winbind = match (&f.winbind_command, f.winbind) {
        (Some(cmd), _) => {
            let argv: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            if argv.is_empty() {
                errs.push("--winbind-command is empty".into());
            }
            Some(argv)
        }
        (None, true) => Some(vec!["ntlm_auth".to_string()]),
        (None, false) => None,
    };
    let kerberos = match (&f.keytab, &f.kerberos_login) {
        (Some(keytab), login) => {
            if let Err(e) = std::fs::metadata(keytab) {
                errs.push(format!("--keytab `{}`: {e}", keytab.display()));
            }
            Some(KerberosConfig {
                keytab: keytab.clone(),
                login: login.clone(),
                spn: f.kerberos_spn.clone().or_else(|| login.clone()),
                rcache: f.kerberos_rcache.clone(),
            })
        }
        (None, Some(_)) => {
            errs.push("--kerberos-login needs --keytab (the keys it logs in with)".into());
            None
        }
        (None, None) => None,
    };
    let local = f.ntlm_hash_file.is_some();
    let basic_verify = match f.basic_verify.as_str() {
        "auto" => BasicVerify::Auto,
        "local" => BasicVerify::Local,
        "winbind" => BasicVerify::Winbind,
        "kdc" => BasicVerify::Kdc,
        other => {
            errs.push(format!(
                "--basic-verify `{other}`: expected auto, local, winbind or kdc"
            ));
            BasicVerify::Auto
        }
    };
    let basic_ok = match basic_verify {
        BasicVerify::Auto => {
            local || winbind.is_some() || kerberos.as_ref().is_some_and(|k| k.spn.is_some())
        }
        BasicVerify::Local => local,
        BasicVerify::Winbind => winbind.is_some(),
        BasicVerify::Kdc => kerberos.as_ref().is_some_and(|k| k.spn.is_some()),
    };
    let ntlm_ok = local || winbind.is_some();
    let mut delegating = false;
    for r in routes {
        let offers: Vec<Offer> = r
            .options
            .auth
            .iter()
            .chain(r.options.auth_ua.iter().flat_map(|(_, o)| o))
            .copied()
            .collect();
        if offers.contains(&Offer::Ntlm) && !ntlm_ok {
            errs.push(format!(
                "route `{}` offers NTLM but no verifier is configured: give --ntlm-hash-file \
                 or --winbind",
                r.spec
            ));
        }
        if offers.contains(&Offer::Basic) && !basic_ok {
            errs.push(format!(
                "route `{}` offers Basic but --basic-verify {} has nothing to check against \
                 (--ntlm-hash-file, --winbind, or --keytab with --kerberos-login/--kerberos-spn)",
                r.spec, f.basic_verify
            ));
        }
        if offers.contains(&Offer::Negotiate)
            && kerberos.is_none()
            && !offers.contains(&Offer::Ntlm)
        {
            errs.push(format!(
                "route `{}` offers Negotiate without --keytab: Negotiate could then only carry \
                 NTLM, so give --keytab or add ntlm to auth=",
                r.spec
            ));
        }
        delegating |= r.options.spn.is_some();
    }
    if delegating && !kerberos.as_ref().is_some_and(|k| k.login.is_some()) {
        errs.push(
            "routes with spn= delegate: give --keytab and --kerberos-login (the proxy's \
             account, allowed to delegate to those SPNs)"
                .into(),
        );
    }
    let mut dur = |name: &str, v: &str| match parse_duration(v) {
        Ok(d) => d,
        Err(e) => {
            errs.push(format!("--{name} `{v}`: {e}"));
            Duration::ZERO
        }
    };
    let kdc = KdcConfig {
        threads: f.kdc_threads,
        queue: f.kdc_queue,
        timeout: dur("kdc-timeout", &f.kdc_timeout),
        ticket_cache_size: f.ticket_cache_size,
        refresh_ahead: dur("ticket-refresh-ahead", &f.ticket_refresh_ahead),
        negative_ttl: dur("kdc-negative-ttl", &f.kdc_negative_ttl),
    };
    let basic_cache_ttl = dur("basic-cache-ttl", &f.basic_cache_ttl);
    if kdc.threads == 0 || kdc.threads > 256 {
        errs.push("--kdc-threads must be between 1 and 256".into());
    }
    if kdc.timeout.is_zero() {
        errs.push("--kdc-timeout must be more than 0".into());
    }
    if kdc.ticket_cache_size == 0 {
        errs.push("--ticket-cache-size must be at least 1".into());
    }
    let ntlm_domain = f
        .ntlm_domain
        .clone()
        .or_else(|| {
            realm
                .as_ref()
                .and_then(|r| r.split('.').next())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "WORKGROUP".into())
        .to_ascii_uppercase();
    let dns_domain = f
        .dns_domain
        .clone()
        .or_else(|| realm.as_ref().map(|r| r.to_ascii_lowercase()))
        .unwrap_or_else(|| "localdomain".into());
    let identity_header = f.identity_header.as_ref().map(|h| h.to_ascii_lowercase());
    if let Some(h) = &identity_header {
        if h.is_empty()
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            errs.push(format!("--identity-header `{h}`: not a header name"));
        }
    }
    AuthConfig {
        ntlm_hash_file: f.ntlm_hash_file.clone(),
        ntlm_domain,
        ntlm_computer: f.ntlm_computer.to_ascii_uppercase(),
        dns_domain,
        realm,
        domain_realm,
        basic_realm: f.basic_realm.clone(),
        basic_over_http: f.basic_over_http,
        identity_header,
        winbind,
        basic_verify,
        basic_cache_ttl,
        kerberos,
        kdc,
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| "expected a number with a unit: 500ms, 10s, 2m, 1h".to_string())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit `{u}`: use ms, s, m or h")),
    };
    if !(secs > 0.0 && secs < 86_400.0 * 365.0) {
        return Err("must be positive and less than a year".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `0,2-3` into [0, 2, 3].
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--cpus `{s}`: expected a list like 0,2-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("--cpus `{s}`: empty"));
    }
    Ok(out)
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn available_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most size_of::<cpu_set_t>()
    // bytes into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        for bad in ["", "x", "10x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0,2-3").unwrap(), vec![0, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("a").is_err());
    }

    #[test]
    fn every_error_is_reported() {
        let f = Flags::parse_from([
            "kcdproxy",
            "--listen",
            "nope",
            "--listen-tls",
            "127.0.0.1:1",
            "--route",
            "bad",
            "--header-timeout",
            "zz",
            "--access-log-format",
            "xml",
        ]);
        let errs = Config::from_flags(&f).unwrap_err();
        assert!(errs.len() >= 5, "{errs:#?}");
    }

    #[test]
    fn minimal_ok() {
        let f = Flags::parse_from([
            "kcdproxy",
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/=http://127.0.0.1:9",
        ]);
        let c = Config::from_flags(&f).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert!(c.workers >= 1);
        assert!(c.proxy_protocol_from.is_empty());
    }

    #[test]
    fn proxy_protocol_networks() {
        let f = Flags::parse_from([
            "kcdproxy",
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/=http://127.0.0.1:9",
            "--proxy-protocol-from",
            "10.0.0.0/8",
            "--proxy-protocol-from",
            "2001:db8::/32",
        ]);
        let c = Config::from_flags(&f).unwrap();
        let nets: Vec<String> = c
            .proxy_protocol_from
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "2001:db8::/32"]);

        let f = Flags::parse_from([
            "kcdproxy",
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/=http://127.0.0.1:9",
            "--proxy-protocol-from",
            "10.0.0.1/8",
            "--proxy-protocol-from",
            "lb.example",
        ]);
        let errs = Config::from_flags(&f).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].starts_with("--proxy-protocol-from `10.0.0.1/8`"),
            "{errs:#?}"
        );
    }
}
