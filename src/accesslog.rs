//! The access log: one line per request, written by the core that served it.
//!
//! Each worker owns an [`AccessLog`] that appends formatted lines to a local buffer and writes
//! the buffer out when it passes 32 KiB or when the worker's flush tick (every 200 ms) fires.
//! Each write is one `write(2)` of whole lines on an `O_APPEND` file, so lines from different
//! cores never interleave. Writing to a regular file only copies into the page cache; a slow
//! pipe on stdout can block a core, so production deployments should log to a file.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AccessLogDest, AccessLogFormat};

const FLUSH_AT: usize = 32 * 1024;

/// Where the lines go, shared by all workers.
#[derive(Clone)]
pub enum Sink {
    Off,
    Stdout,
    Stderr,
    File(Arc<File>),
}

impl Sink {
    pub fn open(dest: &AccessLogDest) -> std::io::Result<Sink> {
        Ok(match dest {
            AccessLogDest::Off => Sink::Off,
            AccessLogDest::Stdout => Sink::Stdout,
            AccessLogDest::Stderr => Sink::Stderr,
            AccessLogDest::File(p) => Sink::File(Arc::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
        })
    }
}

/// What one request did. Fields are borrowed from the request buffer: nothing is copied until
/// the line is formatted.
#[derive(Default)]
pub struct Entry<'a> {
    pub client: Option<IpAddr>,
    pub tls: bool,
    pub method: &'a [u8],
    pub path: &'a [u8],
    pub status: u16,
    /// Request body bytes received from the client.
    pub bytes_in: u64,
    /// Response bytes sent to the client (head and body).
    pub bytes_out: u64,
    pub duration: Duration,
    pub backend: Option<&'a str>,
    /// Whether the backend connection came from the pool.
    pub reused: bool,
    /// `ErrorKind::as_str()` of the failure, if any.
    pub reason: Option<&'static str>,
    /// The failure's runtime context.
    pub detail: Option<&'a str>,
    /// How the client authenticated (`ntlm`, `negotiate-kerberos`, `basic`, …).
    pub auth_scheme: Option<&'a str>,
    /// The user as authenticated (`EXAMPLE\alice`).
    pub user: Option<&'a str>,
    /// The Kerberos principal it maps to (`alice@EXAMPLE.TEST`).
    pub principal: Option<&'a str>,
    /// Delegating routes: the backend SPN, where the ticket came from (`hit`, `miss`,
    /// `joined`, or `none` when the backend connection was already authenticated), and the
    /// time spent waiting on the KDC side for it.
    pub delegation: Option<Delegation<'a>>,
}

/// The delegation part of an access-log entry (what F5 APM and TMG log per request: scheme, user, principal, SPN, ticket source, KDC time).
#[derive(Clone, Copy, Debug)]
pub struct Delegation<'a> {
    pub spn: &'a str,
    pub ticket: &'static str,
    pub kdc: Option<Duration>,
}

/// A worker's access log.
pub struct AccessLog {
    sink: Sink,
    format: AccessLogFormat,
    buf: RefCell<Vec<u8>>,
}

impl AccessLog {
    pub fn new(sink: Sink, format: AccessLogFormat) -> Self {
        AccessLog {
            sink,
            format,
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT + 1024)),
        }
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.sink, Sink::Off)
    }

    pub fn log(&self, e: &Entry<'_>) {
        if !self.enabled() {
            return;
        }
        let full = {
            let mut buf = self.buf.borrow_mut();
            match self.format {
                AccessLogFormat::Text => format_text(&mut buf, e),
                AccessLogFormat::Json => format_json(&mut buf, e),
            }
            buf.len() >= FLUSH_AT
        };
        if full {
            self.flush();
        }
    }

    /// Writes out whatever is buffered.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        // A failed log write must not take the proxy down; it is reported on stderr once per
        // flush and the lines are dropped.
        let res = match &self.sink {
            Sink::Off => Ok(()),
            Sink::Stdout => std::io::stdout().lock().write_all(&buf),
            Sink::Stderr => std::io::stderr().lock().write_all(&buf),
            Sink::File(f) => (&**f).write_all(&buf),
        };
        if let Err(err) = res {
            tracing::warn!(%err, "access log write failed");
        }
        buf.clear();
    }
}

fn format_text(out: &mut Vec<u8>, e: &Entry<'_>) {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "ts={} client=", Timestamp(SystemTime::now()));
    match e.client {
        Some(ip) => {
            let _ = write!(s, "{ip}");
        }
        None => s.push('-'),
    }
    let _ = write!(s, " tls={} method=", e.tls as u8);
    text_value(&mut s, e.method);
    s.push_str(" path=");
    text_value(&mut s, e.path);
    let _ = write!(
        s,
        " status={} bytes_in={} bytes_out={} duration_ms={:.3} backend={} reused={} reason={}",
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1000.0,
        e.backend.unwrap_or("-"),
        e.reused as u8,
        e.reason.unwrap_or("-"),
    );
    s.push_str(" auth=");
    s.push_str(e.auth_scheme.unwrap_or("-"));
    s.push_str(" user=");
    text_value(&mut s, e.user.unwrap_or("").as_bytes());
    s.push_str(" principal=");
    text_value(&mut s, e.principal.unwrap_or("").as_bytes());
    if let Some(d) = &e.delegation {
        s.push_str(" spn=");
        text_value(&mut s, d.spn.as_bytes());
        let _ = write!(s, " ticket={} kdc_ms=", d.ticket);
        match d.kdc {
            Some(t) => {
                let _ = write!(s, "{:.3}", t.as_secs_f64() * 1000.0);
            }
            None => s.push('-'),
        }
    }
    if let Some(d) = e.detail {
        s.push_str(" detail=");
        text_value(&mut s, d.as_bytes());
    }
    s.push('\n');
    out.extend_from_slice(s.as_bytes());
}

/// Bare when safe, else quoted with `\"`, `\\` and `\xNN` escapes: a log line can never be
/// split or forged by request bytes.
fn text_value(s: &mut String, v: &[u8]) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    let bare = v
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if bare {
        // All bytes are ASCII graphic.
        s.push_str(std::str::from_utf8(v).unwrap_or("-"));
        return;
    }
    s.push('"');
    for &b in v {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' => s.push(b as char),
            _ => {
                let _ = write!(s, "\\x{b:02x}");
            }
        }
    }
    s.push('"');
}

fn format_json(out: &mut Vec<u8>, e: &Entry<'_>) {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "{{\"ts\":\"{}\",\"client\":",
        Timestamp(SystemTime::now())
    );
    match e.client {
        Some(ip) => {
            let _ = write!(s, "\"{ip}\"");
        }
        None => s.push_str("null"),
    }
    let _ = write!(s, ",\"tls\":{},\"method\":", e.tls);
    json_str(&mut s, e.method);
    s.push_str(",\"path\":");
    json_str(&mut s, e.path);
    let _ = write!(
        s,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"reused\":{},\"backend\":",
        e.status,
        e.bytes_in,
        e.bytes_out,
        e.duration.as_secs_f64() * 1000.0,
        e.reused
    );
    opt_json(&mut s, e.backend);
    s.push_str(",\"reason\":");
    opt_json(&mut s, e.reason);
    s.push_str(",\"detail\":");
    opt_json(&mut s, e.detail);
    s.push_str(",\"auth\":");
    opt_json(&mut s, e.auth_scheme);
    s.push_str(",\"user\":");
    opt_json(&mut s, e.user);
    s.push_str(",\"principal\":");
    opt_json(&mut s, e.principal);
    if let Some(d) = &e.delegation {
        s.push_str(",\"spn\":");
        json_str(&mut s, d.spn.as_bytes());
        let _ = write!(s, ",\"ticket\":\"{}\",\"kdc_ms\":", d.ticket);
        match d.kdc {
            Some(t) => {
                let _ = write!(s, "{:.3}", t.as_secs_f64() * 1000.0);
            }
            None => s.push_str("null"),
        }
    }
    s.push_str("}\n");
    out.extend_from_slice(s.as_bytes());
}

fn opt_json(s: &mut String, v: Option<&str>) {
    match v {
        Some(v) => json_str(s, v.as_bytes()),
        None => s.push_str("null"),
    }
}

fn json_str(s: &mut String, v: &[u8]) {
    s.push('"');
    for &b in v {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b' '..=b'~' => s.push(b as char),
            // Non-ASCII request bytes are not necessarily UTF-8: escape each byte.
            _ => {
                let _ = write!(s, "\\u{:04x}", b);
            }
        }
    }
    s.push('"');
}

/// RFC 3339 UTC with milliseconds, without a date-time dependency.
struct Timestamp(SystemTime);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn text_escapes_cannot_split_lines() {
        let mut out = Vec::new();
        let e = Entry {
            method: b"GET",
            path: b"/a b\r\n\"x\"",
            status: 200,
            detail: Some("two words"),
            ..Default::default()
        };
        format_text(&mut out, &e);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.contains(r#"path="/a b\x0d\x0a\"x\"""#), "{line}");
        assert!(line.contains(r#"detail="two words""#), "{line}");
        assert!(line.contains("reason=- "), "{line}");
    }

    #[test]
    fn json_line() {
        let mut out = Vec::new();
        let e = Entry {
            method: b"POST",
            path: b"/\xff",
            status: 502,
            reason: Some("backend_connect"),
            ..Default::default()
        };
        format_json(&mut out, &e);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#""path":"/\u00ff""#), "{line}");
        assert!(line.contains(r#""reason":"backend_connect""#), "{line}");
    }
}
