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
            AccessLogDest::File(p) => Sink::File(Arc::new(open_append(p)?)),
        })
    }

    /// Opens the log file at its path again and makes every writer write there: what log
    /// rotation needs after it renamed the file (logrotate's `postrotate` sends SIGHUP). The new
    /// file takes the old one's descriptor number (dup2(2)), so the workers, which share the
    /// descriptor, switch over without a lock on their path and without losing a line: a write
    /// goes wholly to the old file or wholly to the new one. No-op for stdout, stderr and off.
    pub fn reopen(&self, dest: &AccessLogDest) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Sink::File(file), AccessLogDest::File(path)) = (self, dest) else {
            return Ok(());
        };
        let new = open_append(path)?;
        // SAFETY: both descriptors are open and owned for the duration of the call (`new`
        // here, `file` by the shared `Arc`); dup2 atomically closes the old file behind
        // `file`'s number and makes that number refer to `new`'s open file, which stays open
        // after `new` is dropped.
        let rc = unsafe { libc::dup2(new.as_raw_fd(), file.as_raw_fd()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
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
/// split or forged by request bytes. Valid UTF-8 is written as is (`user=müller`, not its
/// bytes escaped one by one), except characters that could hide or rearrange text on an
/// admin's terminal ([`hides_text`]), which are escaped byte by byte like invalid UTF-8; the
/// escapes keep the original bytes recoverable.
fn text_value(s: &mut String, v: &[u8]) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    let bare = v.utf8_chunks().all(|c| {
        c.invalid().is_empty()
            && c.valid().chars().all(|ch| {
                if ch.is_ascii() {
                    ch.is_ascii_graphic() && ch != '"' && ch != '\\'
                } else {
                    // Unicode spaces would make the value look like two fields.
                    !ch.is_whitespace() && !hides_text(ch)
                }
            })
    });
    if bare {
        // Valid UTF-8 throughout (checked above).
        s.push_str(std::str::from_utf8(v).unwrap_or("-"));
        return;
    }
    s.push('"');
    for chunk in v.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                _ if hides_text(ch) => {
                    for b in ch.encode_utf8(&mut [0; 4]).bytes() {
                        let _ = write!(s, "\\x{b:02x}");
                    }
                }
                _ => s.push(ch),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s.push('"');
}

/// Characters never written raw in either format: control characters (C0, DEL, C1: a line
/// break or a terminal escape sequence), the Unicode line and paragraph separators, and the
/// zero-width and bidirectional formatting characters that make text read differently from
/// what it is (the "Trojan Source" attack, CVE-2021-42574; Unicode UAX #9).
fn hides_text(ch: char) -> bool {
    ch.is_control()
        || matches!(
            ch,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
        )
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

/// A JSON string (RFC 8259 §7) of request bytes. JSON text is Unicode (RFC 8259 §8.1): valid
/// UTF-8 is written as is; each maximal invalid sequence becomes U+FFFD, as
/// `String::from_utf8_lossy` does, because a `\u00NN` escape per byte would name a different
/// character (`\u00c3\u00bc` is "Ã¼", not "ü"). Besides `"` and `\`, which RFC 8259 requires
/// escaped along with U+0000..U+001F, every [`hides_text`] character is escaped as `\uXXXX`,
/// so a JSON line viewed raw shows no control or bidirectional characters.
fn json_str(s: &mut String, v: &[u8]) {
    s.push('"');
    for chunk in v.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '"' => s.push_str("\\\""),
                '\\' => s.push_str("\\\\"),
                '\n' => s.push_str("\\n"),
                '\r' => s.push_str("\\r"),
                '\t' => s.push_str("\\t"),
                // Every character that needs escaping is in the Basic Multilingual Plane, so
                // one `\uXXXX` escape (no surrogate pair) names it.
                _ if hides_text(ch) => {
                    let _ = write!(s, "\\u{:04x}", ch as u32);
                }
                _ => s.push(ch),
            }
        }
        if !chunk.invalid().is_empty() {
            s.push(char::REPLACEMENT_CHARACTER);
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
        // 0xff is not UTF-8: one replacement character, not "ÿ" (U+00FF).
        assert!(line.contains("\"path\":\"/\u{fffd}\""), "{line}");
        assert!(line.contains(r#""reason":"backend_connect""#), "{line}");
    }

    /// The JSON line of `e`, checked to be one line, parsed back.
    fn json_of(e: &Entry<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        format_json(&mut out, e);
        let line = String::from_utf8(out).expect("a JSON line is UTF-8");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'), "{line}");
        assert!(
            !line.trim_end_matches('\n').chars().any(hides_text),
            "no raw control or bidi character: {line:?}"
        );
        serde_json::from_str(&line).unwrap_or_else(|err| panic!("{err}: {line}"))
    }

    #[test]
    fn json_keeps_valid_utf8_and_replaces_invalid_bytes() {
        let path: &[u8] = "/café/日本/😀?q=ü".as_bytes();
        let j = json_of(&Entry {
            method: b"GET",
            path,
            status: 200,
            user: Some("EXAMPLE\\müller"),
            principal: Some("müller@EXAMPLE.TEST"),
            delegation: Some(Delegation {
                spn: "HTTP/bäckend.example.test",
                ticket: "miss",
                kdc: None,
            }),
            ..Default::default()
        });
        assert_eq!(j["path"], "/café/日本/😀?q=ü");
        assert_eq!(j["user"], "EXAMPLE\\müller");
        assert_eq!(j["principal"], "müller@EXAMPLE.TEST");
        assert_eq!(j["spn"], "HTTP/bäckend.example.test");

        // Each maximal invalid sequence is one U+FFFD, as String::from_utf8_lossy does: a lone
        // 0xff, a truncated "é" (0xc3 at the end), an overlong "/" (0xc0 0xaf: two).
        let bad: &[u8] = b"/a\xffb/\xc0\xafc/\xc3";
        let j = json_of(&Entry {
            method: b"GET",
            path: bad,
            ..Default::default()
        });
        assert_eq!(j["path"], "/a\u{fffd}b/\u{fffd}\u{fffd}c/\u{fffd}");
        assert_eq!(j["path"], *String::from_utf8_lossy(bad));
    }

    #[test]
    fn json_escapes_what_could_split_or_disguise_a_line() {
        let path = "/\"q\"\\\r\n\t\u{0}\u{1b}[31m\u{7f}\u{85}\u{2028}\u{202e}txt.exe\u{feff}";
        let j = json_of(&Entry {
            method: b"GET",
            path: path.as_bytes(),
            detail: Some("a\nb"),
            ..Default::default()
        });
        // Escaped on the line (checked by json_of), the same string once parsed.
        assert_eq!(j["path"], path);
        assert_eq!(j["detail"], "a\nb");
    }

    #[test]
    fn text_keeps_valid_utf8_and_escapes_invalid_bytes() {
        let mut out = Vec::new();
        let e = Entry {
            method: b"GET",
            path: b"/caf\xc3\xa9/\xff",
            status: 200,
            user: Some("müller"),
            principal: Some("müller@EXAMPLE.TEST"),
            detail: Some("für alle"),
            ..Default::default()
        };
        format_text(&mut out, &e);
        let line = String::from_utf8(out).unwrap();
        // Valid UTF-8 stays bare when it has no space, quote or backslash.
        assert!(line.contains(" user=müller "), "{line}");
        assert!(line.contains(" principal=müller@EXAMPLE.TEST"), "{line}");
        // Invalid bytes keep the text format's \xNN escape (lossless), and force quoting.
        assert!(line.contains(r#" path="/café/\xff" "#), "{line}");
        assert!(line.contains(r#" detail="für alle""#), "{line}");
    }

    #[test]
    fn text_escapes_bidi_controls_and_quotes_unicode_spaces() {
        let mut out = Vec::new();
        let e = Entry {
            method: b"GET",
            path: "/a\u{202e}b\u{85}".as_bytes(),
            user: Some("a\u{a0}b"),
            ..Default::default()
        };
        format_text(&mut out, &e);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(
            line.contains(r#" path="/a\xe2\x80\xaeb\xc2\x85" "#),
            "{line}"
        );
        // A no-break space would look like a field separator if left bare.
        assert!(line.contains(" user=\"a\u{a0}b\" "), "{line}");
    }
}
