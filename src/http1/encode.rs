//! The heads the proxy writes: requests to the backend, responses to the client, its own
//! small responses, and chunk framing.
//!
//! The proxy never forwards framing as it received it. Hop-by-hop fields (RFC 9110 §7.6.1),
//! including every field a `Connection` header names, are dropped; `Content-Length` /
//! `Transfer-Encoding` are written fresh from the framing the core decided; `X-Forwarded-*` and
//! `Via` are rebuilt. So whatever oddity a client's head had, the backend sees one clean
//! HTTP/1.1 head with CRLF line endings and exactly one framing header.
//!
//! Everything appends to a caller-owned `Vec<u8>` (reused per connection): no allocation beyond
//! its growth, no formatting machinery except for the client IP.
//!
//! Fields the caller supplies (`extra_headers`, `host_override`, `proto`, simple-response
//! headers) are written only if the name is a token and the value holds no CR, LF or NUL; an
//! invalid one is left out rather than allowed to split the head (header injection).

use std::io::Write as _;
use std::net::IpAddr;

use super::framing::{content_length, valid_host, BodyFraming};
use super::head::{Header, RequestHead, ResponseHead, TargetForm, Version};
use super::{is_tchar, list_elements, trim_ows};

/// Written after each chunk's data.
pub const CHUNK_END: &[u8] = b"\r\n";
/// The last chunk with no trailers: ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The `Via` pseudonym of this proxy (RFC 9110 §7.6.3).
const VIA: &[u8] = b"1.1 kcdproxy";

/// Hop-by-hop fields: meaningful for one connection only, never forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Fields the proxy rebuilds on the way to the backend, so the client's copies never pass.
const REBUILT_REQUEST: &[&str] = &[
    "content-length",
    // The proxy answers 100-continue itself (and must 401 first when auth is pending).
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
];

/// What the proxy adds to or removes from a request on its way to the backend.
#[derive(Clone, Copy, Debug)]
pub struct ForwardInfo<'a> {
    pub client_ip: IpAddr,
    /// `"http"` | `"https"`: the client-facing scheme.
    pub proto: &'a str,
    /// `Some("backend:port")` → send this `Host` instead of the client's.
    pub host_override: Option<&'a str>,
    /// Framing to declare to the backend: `None`, `Length(n)` or `Chunked`. A request cannot
    /// be close-delimited; `CloseDelimited` declares nothing, like `None`.
    pub framing: BodyFraming,
    /// Extra field names to strip (any case), e.g. `"authorization"`. Naming
    /// `x-forwarded-for` or `via` here also drops the client's values from the rebuilt field,
    /// for routes that do not trust what clients claim.
    pub drop_headers: &'a [&'a str],
    /// Fields appended last, e.g. the delegated `Authorization: Negotiate …`.
    pub extra_headers: &'a [(&'a str, &'a [u8])],
}

/// Writes the head to send to the backend into `out` (appending).
///
/// `METHOD origin-form HTTP/1.1` (an absolute-form target becomes origin-form), then the
/// client's fields except hop-by-hop ones, those a `Connection` token names (never `Host`: the
/// backend needs one), `Content-Length`, `Expect`, `X-Forwarded-*`, `Via`, `Host` when
/// overridden and `drop_headers`; then `Host` (override, or the target's authority when the
/// client sent none), the framing field, `X-Forwarded-For: <existing>, <client_ip>`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host: <client Host>`, `Via: <existing>, 1.1 kcdproxy`,
/// `extra_headers` and the blank line. No `Connection` field: HTTP/1.1 persists by default.
pub fn encode_request_head(
    buf: &[u8],
    head: &RequestHead,
    info: &ForwardInfo<'_>,
    out: &mut Vec<u8>,
) {
    // The client's head plus what is added is nearly always enough: one growth at most.
    out.reserve(head.head_len + 256);
    let target = head.target(buf);
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    match TargetForm::of(target) {
        TargetForm::Absolute { path_and_query, .. } => {
            if path_and_query.first() != Some(&b'/') {
                out.push(b'/');
            }
            out.extend_from_slice(path_and_query);
        }
        TargetForm::Origin(t) | TargetForm::Other(t) => out.extend_from_slice(t),
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let dropped = |name: &str| {
        info.drop_headers
            .iter()
            .any(|d| d.eq_ignore_ascii_case(name))
    };
    let has_connection = head.headers.iter().any(|h| h.is(buf, "connection"));
    let mut client_host: Option<&[u8]> = None;
    let mut host_sent = false;
    for h in &head.headers {
        let name = h.name.get(buf);
        let value = h.value.get(buf);
        let is_host = name.eq_ignore_ascii_case(b"host");
        if is_host && client_host.is_none() {
            client_host = Some(trim_ows(value));
        }
        if one_of(name, HOP_BY_HOP)
            || one_of(name, REBUILT_REQUEST)
            || one_of(name, info.drop_headers)
            || (is_host && info.host_override.is_some())
            || (has_connection && !is_host && nominated(buf, &head.headers, name))
        {
            continue;
        }
        host_sent |= is_host;
        push_field(out, name, value);
    }

    if !host_sent {
        let host = match info.host_override {
            Some(h) => Some(h.as_bytes()),
            // An authority with userinfo or junk is not a Host worth passing on.
            None => head.target_authority(buf).filter(|a| valid_host(a)),
        };
        // HTTP/1.1 requires a Host; with nothing to name, an empty one is the RFC's answer.
        push_checked_field(out, "Host", host.unwrap_or_default());
    }
    push_framing(out, info.framing);

    out.extend_from_slice(b"X-Forwarded-For: ");
    if !dropped("x-forwarded-for") {
        for v in head.headers_named(buf, "x-forwarded-for") {
            if !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{}", info.client_ip);
    out.extend_from_slice(b"\r\n");
    push_checked_field(out, "X-Forwarded-Proto", info.proto.as_bytes());
    if let Some(host) = client_host {
        push_field(out, b"X-Forwarded-Host", host);
    }
    out.extend_from_slice(b"Via: ");
    if !dropped("via") {
        for v in head.headers_named(buf, "via") {
            if !v.is_empty() {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    out.extend_from_slice(VIA);
    out.extend_from_slice(b"\r\n");
    for (name, value) in info.extra_headers {
        push_checked_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response head to the client is framed.
#[derive(Clone, Copy, Debug)]
pub struct ResponseInfo {
    /// As sent to the client: `None`, `Length`, `Chunked` (HTTP/1.1 clients only) or
    /// `CloseDelimited`.
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub client_version: Version,
    /// Lower-case names of backend headers not to pass on (a delegating proxy drops the
    /// backend's `WWW-Authenticate`/`Persistent-Auth`: they belong to the proxy's own
    /// Kerberos context with the backend, not to the client's).
    pub drop_headers: &'static [&'static str],
}

/// Writes the response head for the client into `out` (appending).
///
/// `HTTP/1.1 <status> <reason>` (the canonical reason if the backend sent none), the backend's
/// fields minus hop-by-hop ones, `Connection`-named ones, `Content-Length` and
/// `Transfer-Encoding`; then the framing field for `info.framing`; `Connection: close` when not
/// keeping alive (always for `CloseDelimited`), `Connection: keep-alive` for a persistent
/// HTTP/1.0 client. With `BodyFraming::None` the backend's valid `Content-Length` is kept
/// (it describes the entity in answers to HEAD and in 304s) except on 1xx and 204. A 1xx head
/// gets no framing or `Connection` field: it is interim.
pub fn encode_response_head(
    buf: &[u8],
    head: &ResponseHead,
    info: &ResponseInfo,
    out: &mut Vec<u8>,
) {
    out.reserve(head.head_len + 64);
    let reason = match head.reason.get(buf) {
        b"" => canonical_reason(head.status).as_bytes(),
        r => r,
    };
    push_status_line(out, head.status, reason);

    let has_connection = head.headers.iter().any(|h| h.is(buf, "connection"));
    for h in &head.headers {
        let name = h.name.get(buf);
        if one_of(name, HOP_BY_HOP)
            || name.eq_ignore_ascii_case(b"content-length")
            || (has_connection && nominated(buf, &head.headers, name))
            || one_of(name, info.drop_headers)
        {
            continue;
        }
        push_field(out, name, h.value.get(buf));
    }

    let interim = (100..200).contains(&head.status);
    if !interim {
        match info.framing {
            BodyFraming::None if head.status != 204 => {
                if let Ok(Some(n)) = content_length(buf, &head.headers) {
                    push_framing(out, BodyFraming::Length(n));
                }
            }
            framing => push_framing(out, framing),
        }
        let keep_alive = info.keep_alive && info.framing != BodyFraming::CloseDelimited;
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if info.client_version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A response made by the proxy itself (errors, 401 challenges, `100 Continue`), appended to
/// `out` with its body.
///
/// Adds `Content-Length: body.len()` and `Connection: close` when `!keep_alive`. A 1xx status
/// is interim: status line and `headers` only, no length, `Connection` or body. 204 and 304
/// carry no body and no length. An empty or unsafe `reason` is replaced by the canonical one.
/// A persistent HTTP/1.0 client needs `Connection: keep-alive` in `headers`.
pub fn encode_simple_response(
    status: u16,
    reason: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.reserve(64 + body.len());
    let reason = if !reason.is_empty() && safe_value(reason.as_bytes()) {
        reason
    } else {
        canonical_reason(status)
    };
    push_status_line(out, status, reason.as_bytes());
    for (name, value) in headers {
        push_checked_field(out, name, value);
    }
    if (100..200).contains(&status) {
        out.extend_from_slice(b"\r\n");
        return;
    }
    let has_body = status != 204 && status != 304;
    if has_body {
        push_framing(out, BodyFraming::Length(body.len() as u64));
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if has_body {
        out.extend_from_slice(body);
    }
}

/// Writes a chunk-size line: `{len:x}\r\n`.
pub fn write_chunk_header(len: usize, out: &mut Vec<u8>) {
    let mut digits = [0u8; 16];
    let mut n = len as u64;
    let mut used = 0;
    for slot in digits.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        used += 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(digits.len() - used..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase for the statuses this proxy produces or commonly relays; empty
/// for others (a reason phrase is optional, the space before it is not).
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        440 => "Login Timeout",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

fn push_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::CloseDelimited => {}
    }
}

/// A field from a parsed head: httparse already validated name and value.
#[inline]
fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field the caller made up: written only if it cannot break the head.
fn push_checked_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    if !name.is_empty() && name.bytes().all(is_tchar) && safe_value(value) {
        push_field(out, name.as_bytes(), value);
    }
}

#[inline]
fn safe_value(v: &[u8]) -> bool {
    !v.iter().any(|&b| matches!(b, b'\r' | b'\n' | b'\0'))
}

#[inline]
fn one_of(name: &[u8], names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Whether a `Connection` field of this head names `name` as hop-by-hop.
fn nominated(buf: &[u8], headers: &[Header], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.is(buf, "connection"))
        .flat_map(|h| list_elements(h.value.get(buf)))
        .any(|token| token.eq_ignore_ascii_case(name))
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut used = 0;
    for slot in digits.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        used += 1;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(digits.len() - used..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, parse_response, Limits};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    fn info() -> ForwardInfo<'static> {
        ForwardInfo {
            client_ip: IP,
            proto: "https",
            host_override: None,
            framing: BodyFraming::None,
            drop_headers: &[],
            extra_headers: &[],
        }
    }

    fn forward(buf: &[u8], info: &ForwardInfo<'_>) -> String {
        let head = parse_request(buf, &Limits::default()).unwrap().unwrap();
        let mut out = b"prefix|".to_vec();
        encode_request_head(buf, &head, info, &mut out);
        let out = String::from_utf8(out).unwrap();
        // Appends, and what it writes is itself a valid head.
        let written = out.strip_prefix("prefix|").expect("appends").to_string();
        let again = parse_request(written.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(again.head_len, written.len());
        written
    }

    /// Table: client head, forward info, expected backend head.
    macro_rules! fwd {
        ($name:ident, $buf:expr, $info:expr, $want:expr) => {
            #[test]
            fn $name() {
                assert_eq!(forward($buf, &$info), $want);
            }
        };
    }

    fwd!(
        plain_get,
        b"GET /owa/ HTTP/1.1\r\nHost: mail\r\nAccept: */*\r\n\r\n",
        info(),
        "GET /owa/ HTTP/1.1\r\nHost: mail\r\nAccept: */*\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: mail\r\nVia: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(hop_by_hop_removed,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Trace, x-two\r\nKeep-Alive: 5\r\n\
          Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\n\
          Proxy-Authorization: Basic x\r\nProxy-Authenticate: Basic\r\nX-Trace: 1\r\nX-Two: 2\r\nX-Keep: 3\r\n\r\n",
        info(),
        "GET / HTTP/1.1\r\nHost: h\r\nX-Keep: 3\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n");
    fwd!(connection_cannot_drop_host,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: host, authorization\r\nAuthorization: NTLM x\r\n\r\n",
        info(),
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n");
    fwd!(xff_and_via_appended,
        b"GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\nHost: h\r\nx-forwarded-for: 10.0.0.3\r\n\
          Via: 1.0 fw\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: evil\r\n\r\n",
        info(),
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nVia: 1.0 fw, 1.1 kcdproxy\r\n\r\n");
    fwd!(
        xff_untrusted_when_dropped,
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 6.6.6.6\r\nVia: 1.0 fw\r\n\r\n",
        ForwardInfo {
            drop_headers: &["x-forwarded-for", "via"],
            ..info()
        },
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(
        ipv6_client,
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n",
        ForwardInfo {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            proto: "http",
            ..info()
        },
        "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: http\r\n\
         X-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(
        content_length_reemitted,
        b"POST /ews HTTP/1.1\r\nHost: h\r\nContent-Length: 005\r\nExpect: 100-continue\r\n\r\n",
        ForwardInfo {
            framing: BodyFraming::Length(5),
            ..info()
        },
        "POST /ews HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(chunked_declared,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        ForwardInfo { framing: BodyFraming::Chunked, ..info() },
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n");
    fwd!(
        chunked_to_length,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        ForwardInfo {
            framing: BodyFraming::Length(0),
            ..info()
        },
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(host_override_and_extras,
        b"RPC_IN_DATA /rpc/rpcproxy.dll?mbx:6001 HTTP/1.1\r\nHost: mail.example.com\r\n\
          Authorization: NTLM TlRMTVNTUAAB\r\nCookie: a=b\r\n\r\n",
        ForwardInfo {
            host_override: Some("exch01:443"),
            framing: BodyFraming::Length(1073741824),
            drop_headers: &["authorization"],
            extra_headers: &[("Authorization", b"Negotiate YIIB"), ("Bad Name", b"x"), ("X-Inj", b"a\r\nEvil: 1")],
            ..info()
        },
        "RPC_IN_DATA /rpc/rpcproxy.dll?mbx:6001 HTTP/1.1\r\nCookie: a=b\r\nHost: exch01:443\r\n\
         Content-Length: 1073741824\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: mail.example.com\r\nVia: 1.1 kcdproxy\r\nAuthorization: Negotiate YIIB\r\n\r\n");
    fwd!(absolute_form_to_origin_form,
        b"GET http://mail.example.com/owa/?a=b HTTP/1.1\r\nHost: mail.example.com\r\n\r\n", info(),
        "GET /owa/?a=b HTTP/1.1\r\nHost: mail.example.com\r\nX-Forwarded-For: 192.0.2.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: mail.example.com\r\nVia: 1.1 kcdproxy\r\n\r\n");
    fwd!(absolute_form_no_path_no_host,
        b"GET https://mail:443?x HTTP/1.0\r\n\r\n", info(),
        "GET /?x HTTP/1.1\r\nHost: mail:443\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         Via: 1.1 kcdproxy\r\n\r\n");
    fwd!(
        http10_without_host_gets_empty_host,
        b"GET / HTTP/1.0\r\n\r\n",
        info(),
        "GET / HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         Via: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(
        absolute_form_userinfo_not_a_host,
        b"GET http://u:p@h/ HTTP/1.0\r\n\r\n",
        info(),
        "GET / HTTP/1.1\r\nHost: \r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         Via: 1.1 kcdproxy\r\n\r\n"
    );
    fwd!(absolute_form_bare_authority,
        b"OPTIONS http://h HTTP/1.1\r\nHost: h\r\n\r\n", info(),
        "OPTIONS / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: h\r\nVia: 1.1 kcdproxy\r\n\r\n");

    fn respond(buf: &[u8], info: ResponseInfo) -> String {
        let head = parse_response(buf, &Limits::default()).unwrap().unwrap();
        let mut out = Vec::new();
        encode_response_head(buf, &head, &info, &mut out);
        let out = String::from_utf8(out).unwrap();
        let again = parse_response(out.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(again.head_len, out.len());
        out
    }

    fn ri(framing: BodyFraming, keep_alive: bool, client_version: Version) -> ResponseInfo {
        ResponseInfo {
            framing,
            keep_alive,
            client_version,
            drop_headers: &[],
        }
    }

    #[test]
    fn response_heads() {
        use BodyFraming::*;
        use Version::*;
        let cases: &[(&[u8], ResponseInfo, &str)] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 10\r\n\r\n",
                ri(Length(10), true, Http11),
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 10\r\n\r\n"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-A\r\nX-A: 1\r\nKeep-Alive: t=5\r\nSet-Cookie: s=1\r\n\r\n",
                ri(Chunked, true, Http11),
                "HTTP/1.1 200 OK\r\nSet-Cookie: s=1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
                ri(Length(3), true, Http10),
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n"),
            (b"HTTP/1.1 200 OK\r\n\r\n",
                ri(CloseDelimited, true, Http11),
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
            (b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
                ri(Length(0), false, Http11),
                "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            (b"HTTP/1.1 401\r\nWWW-Authenticate: NTLM TlRMTVNTUAAC\r\nContent-Length: 0\r\n\r\n",
                ri(Length(0), true, Http11),
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM TlRMTVNTUAAC\r\nContent-Length: 0\r\n\r\n"),
            // HEAD and 304 keep the entity's length; 204 and 1xx get none.
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                ri(None, true, Http11),
                "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
            (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7, 7\r\nETag: \"x\"\r\n\r\n",
                ri(None, true, Http11),
                "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 7\r\n\r\n"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
                ri(None, true, Http11),
                "HTTP/1.1 200 OK\r\n\r\n"),
            (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                ri(None, true, Http11),
                "HTTP/1.1 204 No Content\r\n\r\n"),
            (b"HTTP/1.1 100 Continue\r\n\r\n",
                ri(None, false, Http10),
                "HTTP/1.1 100 Continue\r\n\r\n"),
        ];
        for (i, (buf, info, want)) in cases.iter().enumerate() {
            assert_eq!(respond(buf, *info), *want, "row {i}");
        }
    }

    #[test]
    fn simple_responses() {
        type Fields = &'static [(&'static str, &'static [u8])];
        /// status, reason, headers, body, keep_alive, expected
        type Row = (u16, &'static str, Fields, &'static [u8], bool, &'static str);
        let cases: &[Row] = &[
            (401, "Unauthorized", &[("WWW-Authenticate", b"NTLM"), ("WWW-Authenticate", b"Negotiate")], b"", true,
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nWWW-Authenticate: Negotiate\r\nContent-Length: 0\r\n\r\n"),
            (400, "", &[], b"bad", false,
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad"),
            (100, "Continue", &[], b"ignored", false, "HTTP/1.1 100 Continue\r\n\r\n"),
            (204, "No Content", &[], b"ignored", true, "HTTP/1.1 204 No Content\r\n\r\n"),
            (502, "Bad\r\nX: y", &[("X\r\n", b"v"), ("Y", b"\n")], b"", true,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"),
            (599, "", &[], b"", true, "HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n"),
        ];
        for (i, (status, reason, headers, body, ka, want)) in cases.iter().enumerate() {
            let mut out = Vec::new();
            encode_simple_response(*status, reason, headers, body, *ka, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), *want, "row {i}");
        }
    }

    #[test]
    fn chunk_headers() {
        for (len, want) in [
            (0usize, &b"0\r\n"[..]),
            (1, b"1\r\n"),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (65536, b"10000\r\n"),
            (u32::MAX as usize, b"ffffffff\r\n"),
        ] {
            let mut out = vec![b'x'];
            write_chunk_header(len, &mut out);
            assert_eq!(&out[1..], want, "{len}");
        }
    }

    #[test]
    fn decimal() {
        for n in [0u64, 7, 10, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
