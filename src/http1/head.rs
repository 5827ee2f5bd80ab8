//! Request and response heads as offsets into the read buffer.
//!
//! httparse does the tokenising (method, target, version, status, field names and values; it
//! rejects NUL/CR/LF in values, bad token bytes in names, whitespace before the colon and, with
//! the default config, obs-fold in requests *and* responses). This module adds what httparse
//! leaves to the caller: the head size limits (414/431), a bounded number of empty lines before
//! the start line, rejection of bare-LF line endings, and conversion of every slice into a
//! [`Span`] so the parsed head owns no borrowed data and can live beside the buffer.
//!
//! INVARIANT: every `Span` in a returned head lies inside `buf[..head_len]`, and
//! `head_len <= min(buf.len(), limits.max_head_bytes, u32::MAX)`.

use std::mem::MaybeUninit;

use crate::error::{Error, ErrorKind, Side};

use super::trim_ows;

/// A byte range in the read buffer a head was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes of this span in `buf`: the buffer the head was parsed from. A span that does not
    /// fit `buf` (a bug in the caller) yields an empty slice rather than a panic.
    #[inline]
    pub fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    #[inline]
    pub fn len(self) -> usize {
        self.end.saturating_sub(self.start) as usize
    }

    #[inline]
    pub fn is_empty(self) -> bool {
        self.end <= self.start
    }

    /// The span of `part`, which must be a sub-slice of `buf`; `None` when it is not (httparse
    /// hands out a static `""` for some empty values) or when an offset would not fit `u32`.
    #[inline]
    fn of(buf: &[u8], part: &[u8]) -> Option<Span> {
        // Address arithmetic only, no dereference: this is how the zero-copy slices httparse
        // returns are turned back into offsets without `unsafe`.
        let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
        let end = start.checked_add(part.len())?;
        if end > buf.len() {
            return None;
        }
        Some(Span {
            start: u32::try_from(start).ok()?,
            end: u32::try_from(end).ok()?,
        })
    }
}

/// One header field: both spans index the read buffer; the value is OWS-trimmed.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub name: Span,
    pub value: Span,
}

impl Header {
    #[inline]
    pub fn name<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.name.get(buf)
    }

    #[inline]
    pub fn value<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.value.get(buf)
    }

    /// Whether this header is called `name` (ASCII case-insensitive, as field names are).
    #[inline]
    pub fn is(&self, buf: &[u8], name: &str) -> bool {
        self.name.get(buf).eq_ignore_ascii_case(name.as_bytes())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// Bounds on a head. A head that exceeds them is refused before anything else looks at it.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest head (start line, fields, blank line, and any empty lines before) → 431.
    pub max_head_bytes: usize,
    /// Most header fields → 431.
    pub max_headers: usize,
    /// Longest request line, without its CRLF → 414.
    pub max_request_line: usize,
}

impl Limits {
    /// The flag defaults: 64 KiB heads so a 32 KB Kerberos `Authorization` fits, 128 fields,
    /// 8 KiB request lines (what IIS accepts for a URL by default is less, 4 KiB + query).
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 64 * 1024,
        max_headers: 128,
        max_request_line: 8 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Span,
    pub target: Span,
    pub version: Version,
    pub headers: Vec<Header>,
    /// Bytes up to and including the blank line: the body (or next request) starts here.
    pub head_len: usize,
}

impl RequestHead {
    #[inline]
    pub fn method<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.method.get(buf)
    }

    #[inline]
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.target.get(buf)
    }

    /// Path part of the target for routing: origin-form as is up to `?`; absolute-form
    /// `http://h/p?q` → `/p` (`http://h` → `/`); `*` and authority-form as they are.
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match TargetForm::of(self.target(buf)) {
            TargetForm::Origin(t) => path_of(t),
            TargetForm::Absolute { path_and_query, .. } => match path_of(path_and_query) {
                b"" => b"/",
                p => p,
            },
            TargetForm::Other(t) => t,
        }
    }

    /// The authority (`host[:port]`) of an absolute-form target, which RFC 9112 §3.2.2 says
    /// overrides `Host`; `None` for every other form.
    pub fn target_authority<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        match TargetForm::of(self.target(buf)) {
            TargetForm::Absolute { authority, .. } => Some(authority),
            _ => None,
        }
    }

    /// First header with this name (ASCII case-insensitive), value with OWS trimmed.
    #[inline]
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Every header with this name, in order, values OWS-trimmed.
    #[inline]
    pub fn headers_named<'a>(
        &'a self,
        buf: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        named(&self.headers, buf, name)
    }
}

#[derive(Clone, Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// Empty when the backend sent none, or one with obs-text (httparse drops those).
    pub reason: Span,
    pub version: Version,
    pub headers: Vec<Header>,
    pub head_len: usize,
}

impl ResponseHead {
    /// First header with this name (ASCII case-insensitive), value with OWS trimmed.
    #[inline]
    pub fn header<'a>(&self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(&self.headers, buf, name)
    }

    /// Every header with this name, in order, values OWS-trimmed.
    #[inline]
    pub fn headers_named<'a>(
        &'a self,
        buf: &'a [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'a [u8]> + 'a {
        named(&self.headers, buf, name)
    }
}

#[inline]
pub(crate) fn find_header<'a>(headers: &[Header], buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.is(buf, name))
        .map(|h| trim_ows(h.value.get(buf)))
}

#[inline]
pub(crate) fn named<'a>(
    headers: &'a [Header],
    buf: &'a [u8],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(buf, name))
        .map(move |h| trim_ows(h.value.get(buf)))
}

/// The four forms of a request target (RFC 9112 §3.2), as far as routing and forwarding care.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TargetForm<'a> {
    /// `/path?query`
    Origin(&'a [u8]),
    /// `scheme://authority/path?query`; `path_and_query` may be empty or start with `?`.
    Absolute {
        authority: &'a [u8],
        path_and_query: &'a [u8],
    },
    /// `*` (OPTIONS) or authority-form (CONNECT): no path to speak of.
    Other(&'a [u8]),
}

impl<'a> TargetForm<'a> {
    pub(crate) fn of(target: &'a [u8]) -> TargetForm<'a> {
        if target.first() == Some(&b'/') {
            return TargetForm::Origin(target);
        }
        // scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then "://".
        let scheme_len = target
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
            .unwrap_or(target.len());
        match target.get(scheme_len..) {
            Some([b':', b'/', b'/', rest @ ..])
                if scheme_len > 0 && target.first().is_some_and(u8::is_ascii_alphabetic) =>
            {
                let auth_len = rest
                    .iter()
                    .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                    .unwrap_or(rest.len());
                let (authority, path_and_query) = rest.split_at(auth_len);
                TargetForm::Absolute {
                    authority,
                    path_and_query,
                }
            }
            _ => TargetForm::Other(target),
        }
    }
}

/// The path of an origin-form target: everything before `?` (or a stray `#`).
#[inline]
fn path_of(t: &[u8]) -> &[u8] {
    let end = t
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(t.len());
    t.split_at(end).0
}

/// Why a head was refused. The `&'static str` is the log context; the variant decides the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// → 400 (client) / 502 (backend).
    Malformed(&'static str),
    /// The head exceeds `max_head_bytes` → 431.
    TooLarge,
    /// The request line exceeds `max_request_line` → 414.
    UriTooLong,
    /// More than `max_headers` fields → 431.
    TooManyHeaders,
}

impl ParseError {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::Malformed(why) => why,
            ParseError::TooLarge => "head too large",
            ParseError::UriTooLong => "request line too long",
            ParseError::TooManyHeaders => "too many header fields",
        }
    }

    /// The crate error for a head read from `side`: a client's mistakes map to their own
    /// 4xx kinds; anything wrong with a backend's response is a protocol error (502). The
    /// other sides do not speak HTTP/1, so a parse error there is a bug.
    pub fn into_error(self, side: Side) -> Error {
        let kind = match side {
            Side::Client => match self {
                ParseError::Malformed(_) => ErrorKind::BadRequest,
                ParseError::TooLarge | ParseError::TooManyHeaders => ErrorKind::HeadersTooLarge,
                ParseError::UriTooLong => ErrorKind::UriTooLong,
            },
            Side::Backend => ErrorKind::BackendProtocol,
            Side::Kdc | Side::Internal => ErrorKind::Internal,
        };
        Error::new(kind, self.as_str())
    }
}

super::str_error!(ParseError);

/// Empty lines tolerated before a start line (RFC 9112 §2.2 asks for "at least one"; clients
/// that send any send one, after a POST body). More is noise, or a probe.
const MAX_LEADING_EMPTY_LINES: usize = 4;

/// httparse wants caller-provided header slots. This many live on the stack (uninitialised,
/// so it costs nothing to set up); only a `max_headers` above it allocates.
const STACK_HEADERS: usize = 128;

/// Parses a request head at the start of `buf`.
///
/// `Ok(None)`: incomplete, read more. `head_len` counts the bytes up to and including the blank
/// line. Incomplete with `buf.len() >= max_head_bytes` → `TooLarge`; a request line longer than
/// `max_request_line` (complete or not) → `UriTooLong`; more than `max_headers` fields →
/// `TooManyHeaders`. Up to four empty lines (CRLF) before the request line are skipped.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, ParseError> {
    let Some(start) = skip_empty_lines(buf)? else {
        return incomplete(buf, limits);
    };
    check_request_line(buf, start, limits.max_request_line)?;
    let rest = buf.get(start..).unwrap_or_default();

    let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut req = httparse::Request::new(&mut []);
    let parsed =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, rest, slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => start + n,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(e) => return Err(from_httparse(e)),
    };
    let head = checked_head(buf, head_len, limits)?;

    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(ParseError::Malformed("unsupported HTTP version")),
    };
    let method = req.method.and_then(|m| Span::of(head, m.as_bytes()));
    let target = req.path.and_then(|p| Span::of(head, p.as_bytes()));
    let (Some(method), Some(target)) = (method, target) else {
        return Err(ParseError::Malformed("request line outside the head"));
    };
    Ok(Some(RequestHead {
        method,
        target,
        version,
        headers: spans(head, req.headers)?,
        head_len,
    }))
}

/// Parses a response head at the start of `buf`; same contract as [`parse_request`] except
/// that there is no request line limit (`max_head_bytes` bounds the status line).
pub fn parse_response(buf: &[u8], limits: &Limits) -> Result<Option<ResponseHead>, ParseError> {
    let Some(start) = skip_empty_lines(buf)? else {
        return incomplete(buf, limits);
    };
    let rest = buf.get(start..).unwrap_or_default();

    let mut stack = [const { MaybeUninit::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots = header_slots(&mut stack, &mut heap, limits.max_headers);
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, rest, slots);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => start + n,
        Ok(httparse::Status::Partial) => return incomplete(buf, limits),
        Err(e) => return Err(from_httparse(e)),
    };
    let head = checked_head(buf, head_len, limits)?;

    let version = match resp.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(ParseError::Malformed("unsupported HTTP version")),
    };
    let status = match resp.code {
        Some(code @ 100..=999) => code,
        _ => return Err(ParseError::Malformed("invalid status code")),
    };
    // A missing (or obs-text, which httparse replaces with a static "") reason is empty.
    let reason = resp
        .reason
        .and_then(|r| Span::of(head, r.as_bytes()))
        .unwrap_or_default();
    Ok(Some(ResponseHead {
        status,
        reason,
        version,
        headers: spans(head, resp.headers)?,
        head_len,
    }))
}

/// Skips up to [`MAX_LEADING_EMPTY_LINES`] CRLFs. `Ok(Some(offset))` of the start line,
/// `Ok(None)` when `buf` ends inside the empty lines.
fn skip_empty_lines(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut pos = 0;
    for _ in 0..=MAX_LEADING_EMPTY_LINES {
        match buf.get(pos..) {
            Some([b'\r', b'\n', ..]) => pos += 2,
            Some([] | [b'\r']) | None => return Ok(None),
            Some([b'\r' | b'\n', ..]) => {
                return Err(ParseError::Malformed("bare CR or LF before the start line"))
            }
            Some(_) => return Ok(Some(pos)),
        }
    }
    Err(ParseError::Malformed(
        "too many empty lines before the start line",
    ))
}

/// Refuses a request line longer than `max` (without CRLF), also before it is complete: a
/// client streaming a huge URL gets 414 as soon as it crosses the limit, not 431 later.
fn check_request_line(buf: &[u8], start: usize, max: usize) -> Result<(), ParseError> {
    let window_end = start.saturating_add(max).saturating_add(2).min(buf.len());
    let window = buf.get(start..window_end).unwrap_or_default();
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            let cr = lf.checked_sub(1).and_then(|i| window.get(i)) == Some(&b'\r');
            if lf - usize::from(cr) > max {
                return Err(ParseError::UriTooLong);
            }
        }
        // max + 2 bytes without a LF: even if the last is CR, the line is longer than max.
        None if window.len() >= max.saturating_add(2) => return Err(ParseError::UriTooLong),
        None => {}
    }
    Ok(())
}

fn incomplete<T>(buf: &[u8], limits: &Limits) -> Result<Option<T>, ParseError> {
    if buf.len() >= limits.max_head_bytes {
        Err(ParseError::TooLarge)
    } else {
        Ok(None)
    }
}

/// The complete head, after the size limit and the line-ending check.
fn checked_head<'a>(
    buf: &'a [u8],
    head_len: usize,
    limits: &Limits,
) -> Result<&'a [u8], ParseError> {
    if head_len > limits.max_head_bytes || head_len > u32::MAX as usize {
        return Err(ParseError::TooLarge);
    }
    let head = buf
        .get(..head_len)
        .ok_or(ParseError::Malformed("head longer than the buffer"))?;
    // httparse accepts a bare LF as a line ending; the RFC only permits it. Every CR that
    // httparse accepted is followed by a LF (a lone CR is an error everywhere), so equal counts
    // mean every LF has its CR. Counting vectorises, unlike a search; u8 counters per block of
    // at most 255 bytes (which cannot overflow) keep all 16 lanes of a compare busy, where
    // usize counters widen each compare into 2-lane adds: about 25x slower on a 32 KB head.
    let (mut cr, mut lf) = (0usize, 0usize);
    for block in head.chunks(255) {
        let (mut block_cr, mut block_lf) = (0u8, 0u8);
        for &b in block {
            block_cr += u8::from(b == b'\r');
            block_lf += u8::from(b == b'\n');
        }
        cr += usize::from(block_cr);
        lf += usize::from(block_lf);
    }
    if cr != lf {
        return Err(ParseError::Malformed("bare LF line ending"));
    }
    Ok(head)
}

fn header_slots<'s, 'b>(
    stack: &'s mut [MaybeUninit<httparse::Header<'b>>; STACK_HEADERS],
    heap: &'s mut Vec<MaybeUninit<httparse::Header<'b>>>,
    max: usize,
) -> &'s mut [MaybeUninit<httparse::Header<'b>>] {
    match stack.get_mut(..max) {
        Some(slots) => slots,
        None => {
            heap.resize_with(max, MaybeUninit::uninit);
            heap
        }
    }
}

fn spans(head: &[u8], parsed: &[httparse::Header<'_>]) -> Result<Vec<Header>, ParseError> {
    let mut headers = Vec::with_capacity(parsed.len());
    for h in parsed {
        let (Some(name), Some(value)) =
            (Span::of(head, h.name.as_bytes()), Span::of(head, h.value))
        else {
            return Err(ParseError::Malformed("header field outside the head"));
        };
        headers.push(Header { name, value });
    }
    Ok(headers)
}

fn from_httparse(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
        httparse::Error::HeaderName => ParseError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => ParseError::Malformed("invalid header value"),
        httparse::Error::NewLine => ParseError::Malformed("invalid line ending"),
        httparse::Error::Status => ParseError::Malformed("invalid status line"),
        httparse::Error::Token => ParseError::Malformed("invalid request line"),
        httparse::Error::Version => ParseError::Malformed("invalid HTTP version"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head_bytes: 1024,
        max_headers: 8,
        max_request_line: 64,
    };

    fn req(buf: &[u8]) -> Result<Option<RequestHead>, ParseError> {
        parse_request(buf, &LIMITS)
    }

    /// Table rows: input, then the expected outcome; `ok` rows also check method, target,
    /// version, headers and the head length.
    macro_rules! req {
        ($name:ident, $buf:expr, ok: $method:expr, $target:expr, $ver:expr, [$(($hn:expr, $hv:expr)),*], $len:expr) => {
            #[test]
            fn $name() {
                let buf: &[u8] = $buf;
                let head = req(buf).expect("parse").expect("complete");
                assert_eq!(head.method(buf), $method.as_bytes());
                assert_eq!(head.target(buf), $target.as_bytes());
                assert_eq!(head.version, $ver);
                let got: Vec<(&[u8], &[u8])> =
                    head.headers.iter().map(|h| (h.name(buf), h.value(buf))).collect();
                let want: Vec<(&[u8], &[u8])> = vec![$(($hn.as_bytes(), &$hv[..])),*];
                assert_eq!(got, want);
                assert_eq!(head.head_len, $len);
            }
        };
        ($name:ident, $buf:expr, partial) => {
            #[test]
            fn $name() {
                assert!(matches!(req($buf), Ok(None)), "{:?}", req($buf));
            }
        };
        ($name:ident, $buf:expr, err: $err:pat) => {
            #[test]
            fn $name() {
                let got = req($buf);
                assert!(matches!(got, Err($err)), "{got:?}");
            }
        };
    }

    req!(simple_get, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        ok: "GET", "/", Version::Http11, [("Host", b"a")], 27);
    req!(body_not_in_head, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
        ok: "POST", "/x", Version::Http10, [("Content-Length", b"2")], 39);
    req!(ows_trimmed, b"GET / HTTP/1.1\r\nA: \t v w \t\r\nB:\r\nC:x\r\n\r\n",
        ok: "GET", "/", Version::Http11, [("A", b"v w"), ("B", b""), ("C", b"x")], 39);
    req!(obs_text_value, b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",
        ok: "GET", "/", Version::Http11, [("X", b"caf\xc3\xa9")], 28);
    req!(rpc_method, b"RPC_IN_DATA /rpc/rpcproxy.dll?mail:6001 HTTP/1.1\r\n\r\n",
        ok: "RPC_IN_DATA", "/rpc/rpcproxy.dll?mail:6001", Version::Http11, [], 52);
    req!(one_leading_crlf, b"\r\nGET / HTTP/1.1\r\n\r\n",
        ok: "GET", "/", Version::Http11, [], 20);
    req!(four_leading_crlf, b"\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ok: "GET", "/", Version::Http11, [], 26);
    req!(five_leading_crlf, b"\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n", err: ParseError::Malformed(_));
    req!(leading_bare_lf, b"\nGET / HTTP/1.1\r\n\r\n", err: ParseError::Malformed(_));
    req!(leading_crlf_partial, b"\r\n\r", partial);
    req!(empty_partial, b"", partial);
    req!(partial_request_line, b"GET /inde", partial);
    req!(partial_headers, b"GET / HTTP/1.1\r\nHost: a\r\n", partial);
    req!(partial_last_cr, b"GET / HTTP/1.1\r\nHost: a\r\n\r", partial);
    req!(bare_lf_request_line, b"GET / HTTP/1.1\nHost: a\r\n\r\n", err: ParseError::Malformed(_));
    req!(bare_lf_header, b"GET / HTTP/1.1\r\nHost: a\n\r\n", err: ParseError::Malformed(_));
    req!(bare_lf_end, b"GET / HTTP/1.1\r\nHost: a\r\n\n", err: ParseError::Malformed(_));
    req!(bare_cr_value, b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n", err: ParseError::Malformed(_));
    req!(nul_in_value, b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n", err: ParseError::Malformed(_));
    req!(obs_fold, b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", err: ParseError::Malformed(_));
    req!(space_before_colon, b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", err: ParseError::Malformed(_));
    req!(space_before_first_header, b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", err: ParseError::Malformed(_));
    req!(bad_name_char, b"GET / HTTP/1.1\r\nA(b: c\r\n\r\n", err: ParseError::Malformed(_));
    req!(empty_name, b"GET / HTTP/1.1\r\n: c\r\n\r\n", err: ParseError::Malformed(_));
    req!(no_colon, b"GET / HTTP/1.1\r\nHost\r\n\r\n", err: ParseError::Malformed(_));
    req!(http2_version, b"GET / HTTP/2.0\r\n\r\n", err: ParseError::Malformed(_));
    req!(http09, b"GET /\r\n\r\n", err: ParseError::Malformed(_));
    req!(double_space, b"GET  / HTTP/1.1\r\n\r\n", err: ParseError::Malformed(_));
    req!(space_in_target, b"GET /a b HTTP/1.1\r\n\r\n", err: ParseError::Malformed(_));
    req!(lowercase_version, b"GET / http/1.1\r\n\r\n", err: ParseError::Malformed(_));
    // max_request_line = 64: a line of exactly 64 bytes passes, 65 does not.
    req!(request_line_at_limit,
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n",
        ok: "GET", "/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Version::Http11, [], 68);
    req!(request_line_over_limit,
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n",
        err: ParseError::UriTooLong);
    req!(request_line_over_limit_incomplete,
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        err: ParseError::UriTooLong);
    req!(
        request_line_at_limit_incomplete_cr,
        b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r",
        partial
    );
    req!(too_many_headers,
        b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\n\r\n",
        err: ParseError::TooManyHeaders);
    req!(max_headers_exactly,
        b"GET / HTTP/1.1\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\n\r\n",
        ok: "GET", "/", Version::Http11,
        [("a", b"1"), ("b", b"1"), ("c", b"1"), ("d", b"1"), ("e", b"1"), ("f", b"1"), ("g", b"1"), ("h", b"1")],
        66);

    #[test]
    fn head_size_limit() {
        let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
        buf.resize(LIMITS.max_head_bytes - 1, b'a');
        assert!(matches!(req(&buf), Ok(None)));
        buf.push(b'a');
        assert_eq!(req(&buf).unwrap_err(), ParseError::TooLarge);
        // Complete, but longer than the limit.
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req(&buf).unwrap_err(), ParseError::TooLarge);
        // Exactly at the limit: accepted.
        let mut buf = b"GET / HTTP/1.1\r\nX: ".to_vec();
        buf.resize(LIMITS.max_head_bytes - 4, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req(&buf).unwrap().unwrap().head_len, LIMITS.max_head_bytes);
    }

    #[test]
    fn bare_lf_found_in_any_block() {
        for at in [0usize, 254, 255, 256, 600] {
            let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
            while buf.len() < 800 {
                buf.extend_from_slice(
                    b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                );
            }
            buf.extend_from_slice(b"\r\n");
            let head = parse_request(&buf, &Limits::default()).unwrap().unwrap();
            assert_eq!(head.head_len, buf.len());
            // Turn the CRLF ending the line that contains `at` into a bare LF.
            let cr = at + buf[at..].iter().position(|&b| b == b'\r').unwrap();
            buf.remove(cr);
            assert_eq!(
                parse_request(&buf, &Limits::default()).unwrap_err(),
                ParseError::Malformed("bare LF line ending"),
                "at {at}"
            );
        }
    }

    #[test]
    fn big_authorization_header_with_default_limits() {
        let mut buf =
            b"POST /ews/exchange.asmx HTTP/1.1\r\nHost: mail\r\nAuthorization: Negotiate ".to_vec();
        buf.resize(buf.len() + 32 * 1024, b'Y');
        buf.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        let head = parse_request(&buf, &Limits::default()).unwrap().unwrap();
        assert_eq!(
            head.header(&buf, "authorization").unwrap().len(),
            32 * 1024 + 10
        );
        assert_eq!(head.head_len, buf.len());
    }

    #[test]
    fn max_headers_above_stack_slots() {
        let limits = Limits {
            max_headers: STACK_HEADERS + 10,
            ..Limits::default()
        };
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..STACK_HEADERS + 10 {
            buf.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&buf, &limits).unwrap().unwrap().headers.len(),
            STACK_HEADERS + 10
        );
        let limits = Limits {
            max_headers: STACK_HEADERS + 9,
            ..limits
        };
        assert_eq!(
            parse_request(&buf, &limits).unwrap_err(),
            ParseError::TooManyHeaders
        );
    }

    #[test]
    fn every_split_point_is_partial() {
        let bufs: &[&[u8]] = &[
            b"\r\nPOST /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX:\r\n\r\nabc",
            b"GET http://h/p HTTP/1.0\r\nA: b\r\n\r\n",
        ];
        for buf in bufs {
            let full = req(buf).unwrap().unwrap();
            for cut in 0..full.head_len {
                assert!(matches!(req(&buf[..cut]), Ok(None)), "cut {cut}");
            }
            for cut in full.head_len..=buf.len() {
                assert_eq!(req(&buf[..cut]).unwrap().unwrap().head_len, full.head_len);
            }
        }
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let full = parse_response(buf, &LIMITS).unwrap().unwrap();
        for cut in 0..full.head_len {
            assert!(
                matches!(parse_response(&buf[..cut], &LIMITS), Ok(None)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn paths() {
        /// target, path, authority
        type Row = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let cases: &[Row] = &[
            (b"/", b"/", None),
            (b"/a/b?c=d", b"/a/b", None),
            (b"/a#frag", b"/a", None),
            (b"/?x", b"/", None),
            (b"http://h/p?q", b"/p", Some(b"h")),
            (b"HTTPS://h:443/p/q", b"/p/q", Some(b"h:443")),
            (b"http://h", b"/", Some(b"h")),
            (b"http://h?q", b"/", Some(b"h")),
            (b"*", b"*", None),
            (b"mail:443", b"mail:443", None),
            (b"1http://h/p", b"1http://h/p", None),
            (b"://h/p", b"://h/p", None),
        ];
        for &(target, path, authority) in cases {
            let mut buf = b"GET ".to_vec();
            buf.extend_from_slice(target);
            buf.extend_from_slice(b" HTTP/1.1\r\n\r\n");
            let head = req(&buf).unwrap().unwrap();
            assert_eq!(
                head.path(&buf),
                path,
                "{:?}",
                String::from_utf8_lossy(target)
            );
            assert_eq!(head.target_authority(&buf), authority);
        }
    }

    #[test]
    fn header_lookup() {
        let buf = b"GET / HTTP/1.1\r\nHOST: a\r\nx-y: 1\r\nX-Y: 2\r\n\r\n";
        let head = req(buf).unwrap().unwrap();
        assert_eq!(head.header(buf, "host"), Some(&b"a"[..]));
        assert_eq!(head.header(buf, "X-y"), Some(&b"1"[..]));
        assert_eq!(head.header(buf, "nope"), None);
        let all: Vec<&[u8]> = head.headers_named(buf, "x-Y").collect();
        assert_eq!(all, [&b"1"[..], b"2"]);
    }

    #[test]
    fn responses() {
        let ok = |buf: &[u8]| parse_response(buf, &LIMITS).unwrap().unwrap();
        let r = ok(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(
            (r.status, r.version, r.head_len),
            (200, Version::Http11, 38)
        );
        let buf = b"HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nwww-authenticate: Negotiate\r\n\r\n";
        let r = ok(buf);
        assert_eq!(r.reason.get(buf), b"Unauthorized");
        assert_eq!(r.version, Version::Http10);
        let all: Vec<&[u8]> = r.headers_named(buf, "WWW-Authenticate").collect();
        assert_eq!(all, [&b"NTLM"[..], b"Negotiate"]);
        // No reason, or an obs-text one: empty, not an error.
        let r = ok(b"HTTP/1.1 204\r\n\r\n");
        assert!(r.reason.is_empty());
        let r = ok(b"HTTP/1.1 200 \xe9t\xe9\r\n\r\n");
        assert!(r.reason.is_empty());
        assert_eq!(ok(b"\r\nHTTP/1.1 100 Continue\r\n\r\n").status, 100);

        let err = |buf: &[u8]| parse_response(buf, &LIMITS).unwrap_err();
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\nA: b\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nA: b\r\n\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 099 X\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 2000 X\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 O\rK\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"HTTP/1.1 200 OK\r\nA: \0\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            err(b"ICY 200 OK\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        let mut big = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        big.resize(LIMITS.max_head_bytes, b'a');
        assert_eq!(err(&big), ParseError::TooLarge);
        let many = b"HTTP/1.1 200 OK\r\na: 1\r\nb: 1\r\nc: 1\r\nd: 1\r\ne: 1\r\nf: 1\r\ng: 1\r\nh: 1\r\ni: 1\r\n\r\n";
        assert_eq!(err(many), ParseError::TooManyHeaders);
    }

    #[test]
    fn errors_map_to_kinds() {
        use ErrorKind::*;
        let cases = [
            (ParseError::Malformed("x"), Side::Client, BadRequest),
            (ParseError::TooLarge, Side::Client, HeadersTooLarge),
            (ParseError::TooManyHeaders, Side::Client, HeadersTooLarge),
            (ParseError::UriTooLong, Side::Client, UriTooLong),
            (ParseError::Malformed("x"), Side::Backend, BackendProtocol),
            (ParseError::TooLarge, Side::Backend, BackendProtocol),
            (ParseError::TooManyHeaders, Side::Backend, BackendProtocol),
            (ParseError::UriTooLong, Side::Backend, BackendProtocol),
        ];
        for (e, side, kind) in cases {
            let err = e.into_error(side);
            assert_eq!(err.kind, kind);
            assert_eq!(err.context, e.as_str());
        }
        assert_eq!(
            ParseError::Malformed("why")
                .into_error(Side::Client)
                .context,
            "why"
        );
    }

    #[test]
    fn span_outside_buffer_is_empty() {
        let s = Span { start: 5, end: 10 };
        assert_eq!(s.get(b"abc"), b"");
        assert_eq!(s.len(), 5);
        let bad = Span { start: 3, end: 1 };
        assert!(bad.is_empty() && bad.get(b"abcdef").is_empty());
        assert_eq!(bad.len(), 0);
    }
}
