//! Routes: `[HOST]/PATH-PREFIX=BACKEND[,BACKEND...][;option=value...]` and the table that picks
//! one for a request.
//!
//! Matching: a route with a host is preferred over one without; among candidates the longest
//! path prefix wins. Prefixes compare ASCII case-insensitively (IIS paths are case-insensitive
//! and Exchange clients mix `/EWS` and `/ews`), and match on a segment boundary: `/owa` matches
//! `/owa`, `/owa/`, `/owa?x`, not `/owax`.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// `http` or `https` to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Http,
    Https,
}

/// One backend server of a route.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    pub scheme: Scheme,
    /// Host as written in the URL (used for TLS SNI and certificate verification).
    pub host: String,
    pub port: u16,
    /// Resolved once at start-up.
    pub addr: SocketAddr,
}

impl Backend {
    /// `http://host:port` as written in logs.
    pub fn display(&self) -> String {
        let s = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{s}://{}:{}", self.host, self.port)
    }
}

/// An authentication scheme a route can offer to clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offer {
    Negotiate,
    Ntlm,
    Basic,
}

impl Offer {
    fn parse(s: &str) -> Option<Offer> {
        match s.trim().to_ascii_lowercase().as_str() {
            "negotiate" => Some(Offer::Negotiate),
            "ntlm" => Some(Offer::Ntlm),
            "basic" => Some(Offer::Basic),
            _ => None,
        }
    }
}

/// Per-route options after `;`. Unknown options are configuration errors.
#[derive(Clone, Debug)]
pub struct RouteOptions {
    /// Send the backend's host:port as Host instead of the client's Host (`host=backend`).
    pub rewrite_host: bool,
    /// Schemes offered, in the order of the `WWW-Authenticate` headers (`auth=negotiate,ntlm`).
    /// Empty: anonymous route.
    pub auth: Vec<Offer>,
    /// Per-client overrides (`auth-ua=SUBSTRING:ntlm`, repeatable): a client whose User-Agent
    /// contains SUBSTRING is offered these schemes instead. First match wins. This is the
    /// per-rule fix ISA Server could only make system-wide: clients that break when offered
    /// Negotiate and NTLM together get NTLM alone, browsers on the same route keep Negotiate.
    pub auth_ua: Vec<(String, Vec<Offer>)>,
    /// Kerberos constrained delegation (`spn=HTTP/backend.example.test[@REALM]`): the backend's
    /// service principal. Set: the proxy reaches the backend *as the user* with a ticket for
    /// this SPN (S4U2Self + S4U2Proxy, or S4U2Proxy with a Kerberos client's own ticket).
    pub spn: Option<String>,
    /// When the delegated ticket is sent (`send-auth=first|401`, F5 APM's
    /// `send-authorization always|401`).
    pub send_auth: SendAuth,
    /// Put the backend certificate's `tls-server-end-point` channel binding (RFC 5929) into
    /// the AP-REQ (`channel-binding=tls-server-end-point`; Exchange Extended Protection).
    pub channel_binding: bool,
    /// Active health check (`check=/owa/healthcheck.htm`): the path GET on every backend of
    /// the route every `check_interval`; a status other than 2xx/3xx, or no answer, marks the
    /// backend down until a check passes again.
    pub check: Option<String>,
    /// `check-interval=5s` (the default).
    pub check_interval: Duration,
}

/// One option a route accepts after `;`: what `--help` prints for it. The parser rejects any
/// name not in [`ROUTE_OPTIONS`], so this table is the complete list an operator can use.
#[derive(Clone, Copy, Debug)]
pub struct RouteOption {
    /// The name before `=`.
    pub name: &'static str,
    /// What follows `=`, as `--help` shows it.
    pub values: &'static str,
    /// One line: what it does, its default, what it needs.
    pub help: &'static str,
    /// A valid `name=value`, for the tests that keep this table and the parser in step.
    pub example: &'static str,
}

/// Every route option, in the order `--help` lists them.
pub const ROUTE_OPTIONS: &[RouteOption] = &[
    RouteOption {
        name: "auth",
        values: "SCHEMES",
        help: "schemes offered to clients, in WWW-Authenticate order, from negotiate, ntlm, \
               basic (comma-separated); absent: anonymous route",
        example: "auth=negotiate,ntlm",
    },
    RouteOption {
        name: "auth-ua",
        values: "SUBSTRING:SCHEMES",
        help: "(repeatable) a client whose User-Agent contains SUBSTRING (any case) is offered \
               SCHEMES instead; the first match wins",
        example: "auth-ua=Communicator:ntlm",
    },
    RouteOption {
        name: "spn",
        values: "SERVICE/HOST[@REALM]",
        help: "reach the backend as the user with Kerberos constrained delegation to this \
               service principal (needs auth= and --kerberos-login)",
        example: "spn=HTTP/backend.example.test",
    },
    RouteOption {
        name: "send-auth",
        values: "first|401",
        help: "when the delegated ticket is sent: on each backend connection's first request \
               (default) or only after the backend answers 401 Negotiate (needs spn=)",
        example: "send-auth=401",
    },
    RouteOption {
        name: "channel-binding",
        values: "none|tls-server-end-point",
        help: "put the backend certificate's RFC 5929 channel binding in the ticket, for \
               Exchange Extended Protection (default none; needs spn=)",
        example: "channel-binding=tls-server-end-point",
    },
    RouteOption {
        name: "host",
        values: "client|backend",
        help: "the Host header sent to the backend: the client's (default) or the backend's \
               host:port",
        example: "host=backend",
    },
    RouteOption {
        name: "check",
        values: "/PATH",
        help: "actively check each backend with GET /PATH (2xx/3xx = up, anything else = down \
               until a check passes), from one thread for the whole process",
        example: "check=/owa/healthcheck.htm",
    },
    RouteOption {
        name: "check-interval",
        values: "DURATION",
        help: "time between two active checks of a backend (default 5s; needs check=)",
        example: "check-interval=10s",
    },
];

/// The `--route` part of `--help`: one line per [`ROUTE_OPTIONS`] entry.
pub fn options_help() -> String {
    let width = ROUTE_OPTIONS
        .iter()
        .map(|o| o.name.len() + 1 + o.values.len())
        .max()
        .unwrap_or(0);
    let mut out = String::from(
        "Route options, after `;` (e.g. `/ews=https://10.0.0.5;auth=negotiate,ntlm`):",
    );
    for o in ROUTE_OPTIONS {
        let syntax = format!("{}={}", o.name, o.values);
        out.push_str(&format!("\n  {syntax:<width$}  {}", o.help));
    }
    out
}

/// Time between two active checks of a backend when the route gives none.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// When a delegating route sends the user's ticket to the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SendAuth {
    /// With the first request on each backend connection (what Entra App Proxy does): one
    /// round trip fewer, the backend never sees the user unauthenticated.
    #[default]
    First,
    /// Only after the backend answered 401 with `Negotiate`: backends that serve some paths
    /// anonymously never get a ticket for them.
    On401,
}

impl RouteOptions {
    /// The schemes offered to a client with this User-Agent.
    pub fn offers_for(&self, user_agent: Option<&[u8]>) -> &[Offer] {
        if let Some(ua) = user_agent {
            for (needle, offers) in &self.auth_ua {
                if ua
                    .windows(needle.len())
                    .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
                {
                    return offers;
                }
            }
        }
        &self.auth
    }
}

fn parse_offers(spec: &str, v: &str) -> Result<Vec<Offer>, String> {
    let mut out = Vec::new();
    for s in v.split(',').filter(|s| !s.trim().is_empty()) {
        let o = Offer::parse(s).ok_or_else(|| {
            format!("route `{spec}`: unknown auth scheme `{s}` (negotiate, ntlm, basic)")
        })?;
        if !out.contains(&o) {
            out.push(o);
        }
    }
    Ok(out)
}

#[derive(Clone, Debug)]
pub struct Route {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, starts with `/`, stored lower-case.
    pub prefix: String,
    pub backends: Vec<Backend>,
    pub options: RouteOptions,
    /// The route as given on the command line, for logs.
    pub spec: String,
}

/// Parses one `--route` value.
pub fn parse_route(spec: &str) -> Result<Route, String> {
    let (main, opts) = match spec.split_once(';') {
        Some((m, o)) => (m, Some(o)),
        None => (spec, None),
    };
    let (lhs, rhs) = main
        .split_once('=')
        .ok_or_else(|| format!("route `{spec}`: expected [HOST]/PREFIX=BACKEND"))?;
    let slash = lhs
        .find('/')
        .ok_or_else(|| format!("route `{spec}`: the path prefix must start with `/`"))?;
    let host = &lhs[..slash];
    let prefix = &lhs[slash..];
    let host = if host.is_empty() {
        None
    } else {
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!("route `{spec}`: invalid host `{host}`"));
        }
        Some(host.to_ascii_lowercase())
    };
    if prefix
        .bytes()
        .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
    {
        return Err(format!("route `{spec}`: invalid path prefix `{prefix}`"));
    }
    let mut backends = Vec::new();
    for b in rhs.split(',') {
        backends.push(parse_backend(b.trim()).map_err(|e| format!("route `{spec}`: {e}"))?);
    }
    let mut options = RouteOptions {
        rewrite_host: false,
        auth: Vec::new(),
        auth_ua: Vec::new(),
        spn: None,
        send_auth: SendAuth::default(),
        channel_binding: false,
        check: None,
        check_interval: DEFAULT_CHECK_INTERVAL,
    };
    let mut interval_given = false;
    if let Some(opts) = opts {
        for opt in opts.split(';').filter(|o| !o.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            let (k, v) = (k.trim(), v.trim());
            // The table decides which names exist, so `--help` (built from it) lists them all.
            if !ROUTE_OPTIONS.iter().any(|o| o.name == k) {
                return Err(format!("route `{spec}`: unknown option `{k}={v}`"));
            }
            match (k, v) {
                ("host", "backend") => options.rewrite_host = true,
                ("host", "client") => options.rewrite_host = false,
                ("auth", v) => options.auth = parse_offers(spec, v)?,
                ("auth-ua", v) => {
                    let (needle, schemes) = v.rsplit_once(':').ok_or_else(|| {
                        format!("route `{spec}`: auth-ua expects SUBSTRING:schemes")
                    })?;
                    if needle.is_empty() {
                        return Err(format!(
                            "route `{spec}`: auth-ua needs a User-Agent substring"
                        ));
                    }
                    options
                        .auth_ua
                        .push((needle.to_string(), parse_offers(spec, schemes)?));
                }
                ("spn", v) => {
                    let ok = v.contains('/')
                        && !v.starts_with('/')
                        && v.bytes()
                            .all(|b| b.is_ascii_graphic() && b != b',' && b != b';');
                    if !ok {
                        return Err(format!(
                            "route `{spec}`: spn `{v}` is not a service principal like \
                             HTTP/backend.example.com"
                        ));
                    }
                    options.spn = Some(v.to_string());
                }
                ("send-auth", "first") => options.send_auth = SendAuth::First,
                ("send-auth", "401") => options.send_auth = SendAuth::On401,
                ("channel-binding", "tls-server-end-point") => options.channel_binding = true,
                ("channel-binding", "none") => options.channel_binding = false,
                ("check", v) => {
                    // Sent as the request target: an origin-form path, nothing to split a
                    // request line on (RFC 9112 §3.2.1).
                    if !v.starts_with('/') || v.bytes().any(|b| !b.is_ascii_graphic()) {
                        return Err(format!(
                            "route `{spec}`: check `{v}` is not a path like /owa/healthcheck.htm"
                        ));
                    }
                    options.check = Some(v.to_string());
                }
                ("check-interval", v) => {
                    options.check_interval = super::parse_duration(v)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            format!("route `{spec}`: check-interval `{v}` is not a duration > 0")
                        })?;
                    interval_given = true;
                }
                (k, v) => return Err(format!("route `{spec}`: unknown option `{k}={v}`")),
            }
        }
    }
    if options.spn.is_none() && (options.channel_binding || options.send_auth != SendAuth::First) {
        return Err(format!(
            "route `{spec}`: send-auth and channel-binding need spn= (delegation)"
        ));
    }
    if interval_given && options.check.is_none() {
        return Err(format!("route `{spec}`: check-interval needs check=/path"));
    }
    if options.spn.is_some() && options.auth.is_empty() {
        return Err(format!(
            "route `{spec}`: spn= delegates as the user, so the route needs auth= to know who \
             the user is"
        ));
    }
    Ok(Route {
        host,
        prefix: prefix.to_ascii_lowercase(),
        backends,
        options,
        spec: spec.to_string(),
    })
}

/// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed) and
/// resolves it.
pub fn parse_backend(url: &str) -> Result<Backend, String> {
    let (scheme, rest, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r, 443)
    } else {
        return Err(format!(
            "backend `{url}` must start with http:// or https://"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') {
        return Err(format!(
            "backend `{url}`: a path is not supported, only scheme://host:port"
        ));
    }
    let (host, port) = if let Some(h) = rest.strip_prefix('[') {
        let (h, after) = h
            .split_once(']')
            .ok_or_else(|| format!("backend `{url}`: bad IPv6"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse()
                .map_err(|_| format!("backend `{url}`: bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("backend `{url}`: bad address")),
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse()
                    .map_err(|_| format!("backend `{url}`: bad port"))?,
            ),
            None => (rest.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("backend `{url}`: missing host"));
    }
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("backend `{url}`: cannot resolve `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("backend `{url}`: `{host}` has no address"))?;
    Ok(Backend {
        scheme,
        host,
        port,
        addr,
    })
}

/// The routes, searchable by host and path.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        RouteTable { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for `host` (as sent: may carry a port, any case) and `path` (the
    /// request target's path). Returns its index.
    pub fn find(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        let host = host.map(strip_port);
        let mut best: Option<(usize, bool, usize)> = None; // (index, has_host, prefix_len)
        for (i, r) in self.routes.iter().enumerate() {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(rh), Some(h)) => rh.as_bytes().eq_ignore_ascii_case(h),
                (Some(_), None) => false,
            };
            if !host_ok || !prefix_matches(r.prefix.as_bytes(), path) {
                continue;
            }
            let cand = (i, r.host.is_some(), r.prefix.len());
            best = match best {
                Some(b) if (b.1, b.2) >= (cand.1, cand.2) => Some(b),
                _ => Some(cand),
            };
        }
        best.map(|b| b.0)
    }

    pub fn get(&self, i: usize) -> &Route {
        &self.routes[i]
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // [v6]:port
        return match host.iter().position(|&b| b == b']') {
            Some(e) => &host[..=e],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

fn prefix_matches(prefix: &[u8], path: &[u8]) -> bool {
    if path.len() < prefix.len() || !path[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return false;
    }
    if prefix.last() == Some(&b'/') || path.len() == prefix.len() {
        return true;
    }
    matches!(path[prefix.len()], b'/' | b'?')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(specs: &[&str]) -> RouteTable {
        RouteTable::new(specs.iter().map(|s| parse_route(s).unwrap()).collect())
    }

    #[test]
    fn check_options() {
        let r = parse_route("/owa=http://127.0.0.1:8080;check=/owa/healthcheck.htm").unwrap();
        assert_eq!(r.options.check.as_deref(), Some("/owa/healthcheck.htm"));
        assert_eq!(r.options.check_interval, DEFAULT_CHECK_INTERVAL);
        let r = parse_route("/=http://127.0.0.1:8080;check=/h;check-interval=500ms").unwrap();
        assert_eq!(r.options.check_interval, Duration::from_millis(500));
        for bad in [
            "/=http://127.0.0.1:8080;check=h",
            "/=http://127.0.0.1:8080;check=/a b",
            "/=http://127.0.0.1:8080;check=/h;check-interval=0",
            "/=http://127.0.0.1:8080;check-interval=5s",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn longest_prefix_and_host_preference() {
        let t = table(&[
            "/=http://127.0.0.1:1",
            "/owa=http://127.0.0.1:2",
            "/owa/auth=http://127.0.0.1:3",
            "mail.example.test/=http://127.0.0.1:4",
        ]);
        let cases: &[(Option<&str>, &str, usize)] = &[
            (None, "/", 0),
            (None, "/x", 0),
            (None, "/owa", 1),
            (None, "/OWA/", 1),
            (None, "/owa?x=1", 1),
            (None, "/owax", 0),
            (None, "/owa/auth/logon.aspx", 2),
            (Some("mail.example.test"), "/owa", 3),
            (Some("MAIL.example.test:443"), "/", 3),
            (Some("other"), "/owa", 1),
        ];
        for (h, p, want) in cases {
            assert_eq!(
                t.find(h.map(str::as_bytes), p.as_bytes()),
                Some(*want),
                "{h:?} {p}"
            );
        }
    }

    #[test]
    fn no_match() {
        let t = table(&["/ews=http://127.0.0.1:1"]);
        assert_eq!(t.find(None, b"/owa"), None);
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "/x",
            "x=http://127.0.0.1:1",
            "/=ftp://127.0.0.1",
            "/=http://127.0.0.1:99999",
            "/=http://127.0.0.1:1/path",
            "/=http://127.0.0.1:1;bogus=1",
            "ho st/=http://127.0.0.1:1",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn auth_options_and_ua_override() {
        let r = parse_route(
            "/ews=http://127.0.0.1:1;auth=negotiate,ntlm;auth-ua=Communicator:ntlm;auth-ua=curl:basic",
        )
        .unwrap();
        assert_eq!(r.options.auth, vec![Offer::Negotiate, Offer::Ntlm]);
        assert_eq!(r.options.offers_for(None), &[Offer::Negotiate, Offer::Ntlm]);
        assert_eq!(
            r.options.offers_for(Some(b"Mozilla/5.0")),
            &[Offer::Negotiate, Offer::Ntlm]
        );
        assert_eq!(
            r.options
                .offers_for(Some(b"Microsoft Office Communicator 2007")),
            &[Offer::Ntlm]
        );
        assert_eq!(r.options.offers_for(Some(b"CURL/7.88")), &[Offer::Basic]);
        assert!(parse_route("/=http://127.0.0.1:1;auth=kerberos").is_err());
        assert!(parse_route("/=http://127.0.0.1:1;auth-ua=x").is_err());
        let anon = parse_route("/=http://127.0.0.1:1").unwrap();
        assert!(anon.options.offers_for(Some(b"x")).is_empty());
    }

    #[test]
    fn delegation_options() {
        let r = parse_route(
            "/ews=https://10.0.0.5;auth=ntlm;spn=HTTP/mail.corp.example;send-auth=401;\
             channel-binding=tls-server-end-point",
        )
        .unwrap();
        assert_eq!(r.options.spn.as_deref(), Some("HTTP/mail.corp.example"));
        assert_eq!(r.options.send_auth, SendAuth::On401);
        assert!(r.options.channel_binding);
        let d = parse_route("/=http://127.0.0.1:1;auth=basic;spn=HTTP/b@R.TEST").unwrap();
        assert_eq!(d.options.send_auth, SendAuth::First);
        assert!(!d.options.channel_binding);
        for bad in [
            "/=http://127.0.0.1:1;auth=basic;spn=backend",
            "/=http://127.0.0.1:1;auth=basic;spn=/x",
            "/=http://127.0.0.1:1;auth=basic;spn=HTTP/x;send-auth=never",
            "/=http://127.0.0.1:1;spn=HTTP/x",
            "/=http://127.0.0.1:1;auth=basic;send-auth=401",
        ] {
            assert!(parse_route(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_route_option_in_the_table_parses_and_no_other() {
        for o in ROUTE_OPTIONS {
            assert!(o.example.starts_with(&format!("{}=", o.name)), "{o:?}");
            // The options that need another (spn=, check=) get it.
            let spec = format!(
                "/x=http://127.0.0.1:1;auth=ntlm;spn=HTTP/b.test;check=/h;{}",
                o.example
            );
            parse_route(&spec).unwrap_or_else(|e| panic!("{o:?}: {e}"));
            assert!(!o.help.contains('\n'), "one line: {o:?}");
        }
        let names: Vec<&str> = ROUTE_OPTIONS.iter().map(|o| o.name).collect();
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), names.len(), "{names:?}");
        // A name the table does not have is refused, whatever its value.
        for bad in ["bogus=1", "Auth=ntlm", "spns=HTTP/x", "hosts=backend"] {
            let spec = format!("/x=http://127.0.0.1:1;{bad}");
            let e = parse_route(&spec).unwrap_err();
            assert!(e.contains("unknown option"), "{e}");
        }
    }

    #[test]
    fn options_help_has_one_line_per_option() {
        let help = options_help();
        for o in ROUTE_OPTIONS {
            let lines: Vec<&str> = help
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("{}=", o.name)))
                .collect();
            assert_eq!(lines.len(), 1, "{}: {help}", o.name);
            assert!(lines[0].ends_with(o.help), "{}", lines[0]);
        }
    }

    #[test]
    fn parse_backends() {
        let r =
            parse_route("h.test/a=http://127.0.0.1:8080,https://[::1]:8443/;host=backend").unwrap();
        assert_eq!(r.host.as_deref(), Some("h.test"));
        assert_eq!(r.backends[0].port, 8080);
        assert_eq!(r.backends[1].scheme, Scheme::Https);
        assert_eq!(r.backends[1].host, "::1");
        assert!(r.options.rewrite_host);
    }
}
