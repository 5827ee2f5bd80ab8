//! The command-line flags. Every flag has a doc line: it is what `--help` prints.

use std::path::PathBuf;

use clap::Parser;

/// kcdproxy: an authenticating reverse proxy for Exchange and SharePoint with Kerberos
/// constrained delegation. Configured entirely with these flags.
#[derive(Parser, Debug, Clone)]
#[command(name = "kcdproxy", version, about, long_about = None)]
pub struct Flags {
    /// Plain-HTTP listener address (repeatable), e.g. 0.0.0.0:80 or [::]:8080.
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,

    /// TLS listener address (repeatable), e.g. 0.0.0.0:443. Needs --tls-cert/--tls-key.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    pub listen_tls: Vec<String>,

    /// Expect a PROXY protocol header (v1 or v2, haproxy's spec) on --listen and --listen-tls
    /// listeners from connections whose source is in this network (repeatable; CIDR, IPv4 or
    /// IPv6, e.g. 10.0.0.0/24 or 2001:db8::/64; a bare address is one host). The client address
    /// it carries becomes the connection's client (access log, X-Forwarded-For, RPC affinity).
    /// Connections from these networks without a valid header are closed; from anywhere else no
    /// header is expected or believed.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR")]
    pub proxy_protocol_from: Vec<String>,

    /// PEM certificate chain for TLS listeners (repeatable, paired in order with --tls-key).
    /// With several, the one whose names match the client's SNI is served; the first is the default.
    #[arg(long = "tls-cert", value_name = "PEM")]
    pub tls_cert: Vec<PathBuf>,

    /// PEM private key for the --tls-cert at the same position (repeatable).
    #[arg(long = "tls-key", value_name = "PEM")]
    pub tls_key: Vec<PathBuf>,

    /// A route (repeatable): `[HOST]/PATH-PREFIX=BACKEND[,BACKEND...][;option=value...]`.
    /// BACKEND is http://host:port or https://host:port. The longest matching prefix wins; a
    /// route with a host is preferred over one without. Example: `mail.example.com/owa=https://10.0.0.5`.
    #[arg(long = "route", value_name = "ROUTE", long_help = route_long_help())]
    pub route: Vec<String>,

    /// PEM file of CA certificates trusted for https:// backends (default: none, so https
    /// backends need this flag).
    #[arg(long = "backend-ca", value_name = "PEM")]
    pub backend_ca: Option<PathBuf>,

    /// Number of worker threads, one per core (default: the number of CPUs available).
    #[arg(long = "workers", value_name = "N")]
    pub workers: Option<usize>,

    /// Pin workers to these CPUs, in order (comma list, ranges allowed: 0,2-3). Default: pin
    /// worker i to the i-th CPU of the process's affinity mask.
    #[arg(long = "cpus", value_name = "LIST")]
    pub cpus: Option<String>,

    /// Do not pin workers to CPUs.
    #[arg(long = "no-pin")]
    pub no_pin: bool,

    /// Time a client has to send a complete request head, from its first byte.
    #[arg(
        long = "header-timeout",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub header_timeout: String,

    /// Time an idle keep-alive client connection is kept open between requests. Also the
    /// longest a client may stall while sending a body.
    #[arg(
        long = "client-idle-timeout",
        value_name = "DURATION",
        default_value = "75s"
    )]
    pub client_idle_timeout: String,

    /// Time to establish a backend TCP (and TLS) connection.
    #[arg(
        long = "backend-connect-timeout",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub backend_connect_timeout: String,

    /// Consecutive failed connects (TCP refused or timed out, TLS handshake failed) after which
    /// a backend is marked down and skipped (like haproxy's `fall 3`).
    #[arg(long = "backend-fall", value_name = "N", default_value_t = 3)]
    pub backend_fall: u32,

    /// How long a backend marked down is skipped before one request probes it again; a
    /// successful connect brings it back.
    #[arg(
        long = "backend-down-time",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub backend_down_time: String,

    /// Time the backend may take to start a response, or stall while sending one.
    #[arg(
        long = "backend-timeout",
        value_name = "DURATION",
        default_value = "120s"
    )]
    pub backend_timeout: String,

    /// Time an idle pooled backend connection is kept for reuse.
    #[arg(
        long = "backend-idle-timeout",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub backend_idle_timeout: String,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before exit.
    #[arg(long = "drain-timeout", value_name = "DURATION", default_value = "30s")]
    pub drain_timeout: String,

    /// Largest request head accepted (request line + headers), in bytes. Larger → 431
    /// (or 414 when the request line alone is too long). At least 64 KiB by default so a 32 KB
    /// Kerberos Authorization header fits.
    #[arg(
        long = "max-header-bytes",
        value_name = "BYTES",
        default_value_t = 65536
    )]
    pub max_header_bytes: usize,

    /// Largest number of headers in a request or response head.
    #[arg(long = "max-headers", value_name = "N", default_value_t = 128)]
    pub max_headers: usize,

    /// Most client connections open at once, over all workers; beyond it new connections are
    /// closed at accept.
    #[arg(long = "max-connections", value_name = "N", default_value_t = 65536)]
    pub max_connections: usize,

    /// Idle backend connections kept per worker and backend.
    #[arg(long = "backend-pool-size", value_name = "N", default_value_t = 64)]
    pub backend_pool_size: usize,

    /// Local NT-hash file for NTLM and Basic verification: one account per line,
    /// `DOMAIN\user:<32 hex NT hash>`, `user:<hash>`, `user@REALM:<hash>`, or Samba smbpasswd lines.
    #[arg(long = "ntlm-hash-file", value_name = "PATH")]
    pub ntlm_hash_file: Option<PathBuf>,

    /// NetBIOS domain name the proxy announces in NTLM challenges (default: the first label of
    /// --realm, else WORKGROUP).
    #[arg(long = "ntlm-domain", value_name = "NAME")]
    pub ntlm_domain: Option<String>,

    /// NetBIOS computer name the proxy announces in NTLM challenges.
    #[arg(
        long = "ntlm-computer",
        value_name = "NAME",
        default_value = "KCDPROXY"
    )]
    pub ntlm_computer: String,

    /// DNS domain the proxy announces in NTLM challenges (default: --realm in lower case).
    #[arg(long = "dns-domain", value_name = "NAME")]
    pub dns_domain: Option<String>,

    /// Default Kerberos realm: users authenticated without a domain, or with an unmapped
    /// NetBIOS domain, become user@REALM.
    #[arg(long = "realm", value_name = "REALM")]
    pub realm: Option<String>,

    /// Maps a NetBIOS domain to a realm for identity mapping (repeatable), e.g. EXAMPLE=EXAMPLE.TEST.
    #[arg(long = "domain-realm", value_name = "DOMAIN=REALM")]
    pub domain_realm: Vec<String>,

    /// Realm text of the Basic challenge.
    #[arg(long = "basic-realm", value_name = "TEXT", default_value = "kcdproxy")]
    pub basic_realm: String,

    /// Offer and accept Basic on plain-HTTP listeners too (the password crosses the network
    /// in clear text; by default Basic is only used over TLS).
    #[arg(long = "basic-over-http")]
    pub basic_over_http: bool,

    /// Send the authenticated principal to the backend in this header (for backends that do
    /// not use Kerberos). Client-supplied copies of the header are always removed.
    #[arg(long = "identity-header", value_name = "NAME")]
    pub identity_header: Option<String>,

    /// Verify NTLM (and Basic) against the domain through winbind (`ntlm_auth` from PATH, on a
    /// domain member or DC). Checks run on the KDC pool, one helper per pool thread.
    #[arg(long = "winbind")]
    pub winbind: bool,

    /// The `ntlm_auth` command line for --winbind, split on spaces (e.g. a wrapper, or
    /// `ntlm_auth --require-membership-of=EXAMPLE\\webusers`). Implies --winbind.
    #[arg(long = "winbind-command", value_name = "COMMAND")]
    pub winbind_command: Option<String>,

    /// The proxy's keytab: turns on Kerberos (Negotiate) for clients and, with
    /// --kerberos-login, constrained delegation to backends (route option spn=).
    #[arg(long = "keytab", value_name = "PATH")]
    pub keytab: Option<PathBuf>,

    /// The principal the proxy logs in as from --keytab for delegation, e.g.
    /// svc-proxy@EXAMPLE.TEST on AD (whose KDC refuses an SPN as a login name).
    #[arg(long = "kerberos-login", value_name = "PRINCIPAL")]
    pub kerberos_login: Option<String>,

    /// The proxy's own service principal (HTTP/proxy.example.com[@REALM]). Basic checked by
    /// the KDC gets a ticket for it and verifies that ticket with --keytab. Default: the
    /// --kerberos-login principal.
    #[arg(long = "kerberos-spn", value_name = "PRINCIPAL")]
    pub kerberos_spn: Option<String>,

    /// Replay cache for clients' Kerberos tickets, shared by all workers (MIT syntax, e.g.
    /// file2:/var/lib/kcdproxy/rcache2). Default: MIT's ($KRB5RCACHENAME, $KRB5RCACHEDIR).
    #[arg(long = "kerberos-rcache", value_name = "NAME")]
    pub kerberos_rcache: Option<String>,

    /// Threads of the KDC pool, where every call that may block runs (KDC, GSS-API, winbind).
    /// Also the most KDC requests in flight at once: keep it small (MIT's KDC backlog is 5).
    #[arg(long = "kdc-threads", value_name = "N", default_value_t = 4)]
    pub kdc_threads: usize,

    /// Calls that may wait for a KDC pool thread; beyond it requests get 503 at once.
    #[arg(long = "kdc-queue", value_name = "N", default_value_t = 64)]
    pub kdc_queue: usize,

    /// Deadline of every KDC-bound call (queueing included); past it the request gets 503
    /// with Retry-After. MIT krb5 1.20 has no deadline of its own.
    #[arg(long = "kdc-timeout", value_name = "DURATION", default_value = "5s")]
    pub kdc_timeout: String,

    /// How Basic passwords are checked: `auto` (the NT-hash file, else winbind, else the KDC),
    /// `local`, `winbind` or `kdc` (an initial ticket, then a ticket for the proxy itself
    /// checked against --keytab, so a forged KDC cannot vouch for a password).
    #[arg(long = "basic-verify", value_name = "HOW", default_value = "auto")]
    pub basic_verify: String,

    /// How long a Basic login checked by winbind or the KDC is remembered (under a salted
    /// hash of the password, never the password); 0 turns the cache off.
    #[arg(
        long = "basic-cache-ttl",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub basic_cache_ttl: String,

    /// Most (user, SPN) delegated tickets cached, over all workers.
    #[arg(long = "ticket-cache-size", value_name = "N", default_value_t = 10000)]
    pub ticket_cache_size: usize,

    /// Renew a cached delegated ticket this long before it expires, so that active users
    /// never wait on the KDC.
    #[arg(
        long = "ticket-refresh-ahead",
        value_name = "DURATION",
        default_value = "5m"
    )]
    pub ticket_refresh_ahead: String,

    /// How long a KDC refusal (sensitive user, SPN not allowed) is remembered per user and SPN
    /// before the KDC is asked again.
    #[arg(
        long = "kdc-negative-ttl",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub kdc_negative_ttl: String,

    /// Serve counters in the Prometheus text format at http://ADDR/metrics (plain HTTP, no
    /// authentication: bind it to a management address).
    #[arg(long = "metrics-listen", value_name = "IP:PORT")]
    pub metrics_listen: Option<String>,

    /// Access log destination: a file path, `stdout`, `stderr`, or `off`.
    #[arg(long = "access-log", value_name = "DEST", default_value = "stdout")]
    pub access_log: String,

    /// Access log line format: `text` (key=value) or `json`.
    #[arg(
        long = "access-log-format",
        value_name = "FORMAT",
        default_value = "text"
    )]
    pub access_log_format: String,

    /// Diagnostic log filter (tracing EnvFilter syntax), written to stderr.
    #[arg(long = "log-level", value_name = "FILTER", default_value = "info")]
    pub log_level: String,

    /// Validate the configuration (flags, files, certificates, io_uring, that every --listen and
    /// --listen-tls address can be bound), report every problem, and exit.
    #[arg(long = "check-config")]
    pub check_config: bool,
}

/// `--route`'s `--help` text: the doc comment above, then every option the route parser
/// accepts, from its own table so that the two cannot drift apart.
fn route_long_help() -> String {
    format!(
        "A route (repeatable): `[HOST]/PATH-PREFIX=BACKEND[,BACKEND...][;option=value...]`. \
         BACKEND is http://host:port or https://host:port. The longest matching prefix wins; a \
         route with a host is preferred over one without. Example: \
         `mail.example.com/owa=https://10.0.0.5`.\n\n{}",
        super::route::options_help()
    )
}
