//! Body framing and connection semantics (RFC 9112 §6, §9.3), and the request smuggling defence.
//!
//! A request is framed by exactly one of: nothing, one agreed `Content-Length`, or a lone
//! `Transfer-Encoding: chunked`. Anything a front-end and a back-end could read two ways is
//! refused with 400 here, before any body byte is read: `Content-Length` beside
//! `Transfer-Encoding`, differing lengths, lengths that are not plain digits, transfer codings
//! other than exactly `chunked`, `Transfer-Encoding` in HTTP/1.0, and a missing, repeated or
//! malformed `Host`. Responses follow RFC 9112 §6.3 and are more forgiving, because the
//! backend is trusted to be IIS and a response cannot smuggle a request: there, ambiguity
//! costs the connection (no keep-alive), not the response.
//!
//! Everything here is one pass over the parsed header spans; nothing is copied or allocated.

use super::head::ParseError;
use super::head::{Header, RequestHead, ResponseHead, Span, Version};
use super::{list_elements, trim_ows};

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes. A request with `Content-Length: 0` is `Length(0)`, not `None`,
    /// so the auth phase can tell WinINET's empty POST from a GET.
    Length(u64),
    Chunked,
    /// Until the backend closes: responses only.
    CloseDelimited,
}

/// What the proxy core needs to know about a request before it reads the body.
#[derive(Clone, Copy, Debug)]
pub struct RequestMeta {
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// The `Host` value (validated, no whitespace); `None` only for HTTP/1.0 without one.
    pub host: Option<Span>,
    pub upgrade: bool,
}

/// What the proxy core needs to know about a response before it reads the body.
#[derive(Clone, Copy, Debug)]
pub struct ResponseMeta {
    pub framing: BodyFraming,
    pub keep_alive: bool,
}

/// The `Connection` tokens that matter here.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for token in list_elements(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            }
        }
    }

    /// RFC 9112 §9.3: HTTP/1.1 persists unless `close`; HTTP/1.0 only with `keep-alive`.
    fn persistent(&self, version: Version) -> bool {
        !self.close && (version == Version::Http11 || self.keep_alive)
    }
}

/// Validates the framing of a request (the smuggling defence) and extracts its connection
/// semantics. Every refusal is `Malformed` (400), with the reason as context.
pub fn request_meta(buf: &[u8], head: &RequestHead) -> Result<RequestMeta, ParseError> {
    let mut content_length = ContentLength::default();
    let mut transfer_encodings = 0usize;
    let mut chunked = false;
    let mut host: Option<Span> = None;
    let mut connection = ConnectionTokens::default();
    let mut expect_continue = false;
    let mut upgrade_header = false;

    for h in &head.headers {
        let name = h.name.get(buf);
        let value = trim_ows(h.value.get(buf));
        // Compare the length first: most fields are none of these and fail on it at once.
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => content_length.add(value)?,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // Two TE fields are `a, b` under another name: only a single one can be
                // exactly `chunked`.
                transfer_encodings += 1;
                chunked = value.eq_ignore_ascii_case(b"chunked");
            }
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host.is_some() {
                    return Err(ParseError::Malformed("more than one Host"));
                }
                if !valid_host(value) {
                    return Err(ParseError::Malformed("invalid Host"));
                }
                host = Some(h.value);
            }
            10 if name.eq_ignore_ascii_case(b"connection") => connection.add(value),
            6 if name.eq_ignore_ascii_case(b"expect") => {
                expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade_header = true,
            _ => {}
        }
    }

    let framing = match (transfer_encodings, content_length.value) {
        (0, None) => BodyFraming::None,
        (0, Some(n)) => BodyFraming::Length(n),
        (_, Some(_)) => {
            return Err(ParseError::Malformed(
                "Content-Length with Transfer-Encoding",
            ))
        }
        (_, None) if head.version == Version::Http10 => {
            return Err(ParseError::Malformed("Transfer-Encoding in HTTP/1.0"))
        }
        (1, None) if chunked => BodyFraming::Chunked,
        (_, None) => {
            return Err(ParseError::Malformed(
                "Transfer-Encoding other than chunked",
            ))
        }
    };
    if head.version == Version::Http11 && host.is_none() {
        return Err(ParseError::Malformed("HTTP/1.1 request without Host"));
    }

    Ok(RequestMeta {
        framing,
        keep_alive: connection.persistent(head.version),
        expect_continue,
        host,
        upgrade: connection.upgrade && upgrade_header,
    })
}

/// Framing and persistence of a response to a `request_method` request (RFC 9112 §6.3).
///
/// `HEAD` responses and 1xx/204/304 have no body, whatever their fields say. Otherwise a
/// `Transfer-Encoding` whose final coding is `chunked` wins (a `Content-Length` beside it costs
/// the connection); any other `Transfer-Encoding` means "read until close"; then a valid
/// `Content-Length`; then "read until close". Invalid or differing lengths are `Malformed`.
pub fn response_meta(
    buf: &[u8],
    head: &ResponseHead,
    request_method: &[u8],
) -> Result<ResponseMeta, ParseError> {
    let mut connection = ConnectionTokens::default();
    let mut has_content_length = false;
    let mut transfer_encoding = false;
    let mut final_coding: &[u8] = b"";
    for h in &head.headers {
        let name = h.name.get(buf);
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => connection.add(h.value.get(buf)),
            14 if name.eq_ignore_ascii_case(b"content-length") => has_content_length = true,
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                transfer_encoding = true;
                // Field lines of one name form one list: the last non-empty element of the
                // last field is the final coding. An empty field makes it empty (not chunked).
                final_coding = list_elements(h.value.get(buf))
                    .filter(|c| !c.is_empty())
                    .last()
                    .unwrap_or_default();
            }
            _ => {}
        }
    }
    let mut keep_alive = connection.persistent(head.version);

    let no_body = request_method == b"HEAD"
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    if no_body {
        return Ok(ResponseMeta {
            framing: BodyFraming::None,
            keep_alive,
        });
    }

    let framing = if transfer_encoding {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing; read it
        // as sent but do not trust the connection afterwards.
        if head.version == Version::Http10 || has_content_length {
            keep_alive = false;
        }
        if final_coding.eq_ignore_ascii_case(b"chunked") {
            BodyFraming::Chunked
        } else {
            keep_alive = false;
            BodyFraming::CloseDelimited
        }
    } else {
        match content_length(buf, &head.headers)? {
            Some(n) => BodyFraming::Length(n),
            None => {
                keep_alive = false;
                BodyFraming::CloseDelimited
            }
        }
    };
    Ok(ResponseMeta {
        framing,
        keep_alive,
    })
}

/// The agreed `Content-Length` of a head: `None` without one; `Malformed` if any value is not
/// 1*DIGIT, overflows u64, or differs from another (`5, 5` and repeated equal fields agree).
pub(crate) fn content_length(buf: &[u8], headers: &[Header]) -> Result<Option<u64>, ParseError> {
    let mut cl = ContentLength::default();
    for h in headers.iter().filter(|h| h.is(buf, "content-length")) {
        cl.add(h.value.get(buf))?;
    }
    Ok(cl.value)
}

#[derive(Default)]
struct ContentLength {
    value: Option<u64>,
}

impl ContentLength {
    fn add(&mut self, field: &[u8]) -> Result<(), ParseError> {
        for element in list_elements(field) {
            let n =
                parse_decimal(element).ok_or(ParseError::Malformed("invalid Content-Length"))?;
            match self.value {
                Some(prev) if prev != n => {
                    return Err(ParseError::Malformed("differing Content-Length values"))
                }
                _ => self.value = Some(n),
            }
        }
        Ok(())
    }
}

/// 1*DIGIT into u64; `None` when empty, not all digits (no sign, no spaces) or too large.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2) by character class: reg-name and IP-literal
/// characters only. Whitespace, `/`, `?`, `#`, `@` (userinfo), `\`, controls and non-ASCII are
/// refused: they are how Host-based routing confusion starts. Empty is allowed (RFC 9112
/// §3.2: a target without authority); routing will not match it.
pub(crate) fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{parse_request, parse_response, Limits};

    fn meta(buf: &[u8]) -> Result<RequestMeta, ParseError> {
        let head = parse_request(buf, &Limits::default())
            .expect("head parses")
            .expect("head complete");
        request_meta(buf, &head)
    }

    /// Table of request heads (with `Host: h` for HTTP/1.1 unless the row is about Host) and
    /// the framing, keep-alive, expect and upgrade they must yield, or the refusal.
    macro_rules! meta {
        ($name:ident, $buf:expr, $framing:expr, ka: $ka:expr) => {
            meta!($name, $buf, $framing, ka: $ka, expect: false, upgrade: false);
        };
        ($name:ident, $buf:expr, $framing:expr, ka: $ka:expr, expect: $exp:expr, upgrade: $up:expr) => {
            #[test]
            fn $name() {
                let m = meta($buf).expect("accepted");
                assert_eq!(m.framing, $framing);
                assert_eq!(m.keep_alive, $ka, "keep_alive");
                assert_eq!(m.expect_continue, $exp, "expect_continue");
                assert_eq!(m.upgrade, $up, "upgrade");
            }
        };
        ($name:ident, $buf:expr, reject) => {
            #[test]
            fn $name() {
                let got = meta($buf);
                assert!(matches!(got, Err(ParseError::Malformed(_))), "{got:?}");
            }
        };
    }

    use BodyFraming::*;

    meta!(get_no_body, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", None, ka: true);
    meta!(cl, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 42\r\n\r\n", Length(42), ka: true);
    meta!(cl_zero, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", Length(0), ka: true);
    meta!(cl_leading_zeros, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 007\r\n\r\n", Length(7), ka: true);
    meta!(cl_max, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551615\r\n\r\n",
        Length(u64::MAX), ka: true);
    meta!(cl_repeated_same, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
        Length(5), ka: true);
    meta!(cl_list_same, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5 ,5\r\n\r\n", Length(5), ka: true);
    meta!(
        cl_differ,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        reject
    );
    meta!(
        cl_list_differ,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n",
        reject
    );
    meta!(
        cl_empty,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
        reject
    );
    meta!(
        cl_empty_element,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\n",
        reject
    );
    meta!(
        cl_plus,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n",
        reject
    );
    meta!(
        cl_minus,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
        reject
    );
    meta!(
        cl_hex,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n",
        reject
    );
    meta!(
        cl_inner_space,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\n",
        reject
    );
    meta!(
        cl_overflow,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n",
        reject
    );
    meta!(
        cl_huge,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        reject
    );
    meta!(chunked, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", Chunked, ka: true);
    meta!(chunked_case_ows, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \t ChUnKeD \r\n\r\n", Chunked, ka: true);
    meta!(
        te_and_cl,
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        reject
    );
    meta!(
        cl_and_te,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        reject
    );
    meta!(
        te_gzip_chunked,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        reject
    );
    meta!(
        te_chunked_chunked,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        reject
    );
    meta!(te_two_fields, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", reject);
    meta!(
        te_identity,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
        reject
    );
    meta!(
        te_empty,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n",
        reject
    );
    meta!(
        te_chunked_trailing_comma,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n",
        reject
    );
    meta!(
        te_xchunked,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
        reject
    );
    meta!(
        te_chunked_semicolon,
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n",
        reject
    );
    meta!(
        te_http10,
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        reject
    );
    meta!(
        te_http10_with_host,
        b"POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        reject
    );
    meta!(no_host_11, b"GET / HTTP/1.1\r\n\r\n", reject);
    meta!(
        two_hosts,
        b"GET / HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
        reject
    );
    meta!(host_space, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", reject);
    meta!(host_tab, b"GET / HTTP/1.1\r\nHost: a\tb\r\n\r\n", reject);
    meta!(host_slash, b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", reject);
    meta!(
        host_userinfo,
        b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
        reject
    );
    meta!(
        host_backslash,
        b"GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n",
        reject
    );
    meta!(
        host_non_ascii,
        b"GET / HTTP/1.1\r\nHost: \xc3\xa9\r\n\r\n",
        reject
    );
    meta!(host_port_ipv6, b"GET / HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n", None, ka: true);
    meta!(host_empty, b"GET / HTTP/1.1\r\nHost:\r\n\r\n", None, ka: true);
    meta!(no_host_10, b"GET / HTTP/1.0\r\n\r\n", None, ka: false);
    meta!(ka_10, b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", None, ka: true);
    meta!(close_11, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", None, ka: false);
    meta!(close_in_list, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, , CLOSE\r\n\r\n", None, ka: false);
    meta!(close_second_field, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", None, ka: false);
    meta!(closed_substring, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n", None, ka: true);
    meta!(ka_and_close_10, b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", None, ka: false);
    meta!(expect, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\nExpect: 100-Continue\r\n\r\n",
        Length(9), ka: true, expect: true, upgrade: false);
    meta!(expect_other, b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n",
        None, ka: true, expect: false, upgrade: false);
    meta!(upgrade, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        None, ka: true, expect: false, upgrade: true);
    meta!(upgrade_header_only, b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        None, ka: true, expect: false, upgrade: false);
    meta!(upgrade_token_only, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
        None, ka: true, expect: false, upgrade: false);

    #[test]
    fn host_span_points_at_value() {
        let buf = b"GET / HTTP/1.1\r\nHost:  mail.example.com:443 \r\n\r\n";
        let m = meta(buf).unwrap();
        assert_eq!(m.host.unwrap().get(buf), b"mail.example.com:443");
    }

    fn resp(buf: &[u8], method: &[u8]) -> Result<ResponseMeta, ParseError> {
        let head = parse_response(buf, &Limits::default()).unwrap().unwrap();
        response_meta(buf, &head, method)
    }

    #[test]
    fn response_framing() {
        // (head, request method, framing, keep_alive)
        let cases: &[(&[u8], &[u8], BodyFraming, bool)] = &[
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                b"GET",
                Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
                b"GET",
                Length(3),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
                b"HEAD",
                None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: bogus\r\n\r\n",
                b"HEAD",
                None,
                true,
            ),
            (
                b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
                b"GET",
                None,
                true,
            ),
            (
                b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET",
                None,
                true,
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\n", b"POST", None, true),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                b"GET",
                None,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET",
                Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
                b"GET",
                Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET",
                Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                b"GET",
                CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                b"GET",
                CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
                b"GET",
                CloseDelimited,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n",
                b"GET",
                Chunked,
                true,
            ),
            // ISA KB 934022: both present is framed by chunked, and the connection retired.
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET",
                Chunked,
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"GET",
                Chunked,
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n",
                b"GET",
                Chunked,
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", CloseDelimited, false),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                b"GET",
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
                b"GET",
                Length(1),
                false,
            ),
            (
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n",
                b"GET",
                Length(1),
                true,
            ),
            (
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                b"POST",
                Length(0),
                true,
            ),
        ];
        for (i, &(buf, method, framing, ka)) in cases.iter().enumerate() {
            let m = resp(buf, method).unwrap_or_else(|e| panic!("row {i}: {e}"));
            assert_eq!((m.framing, m.keep_alive), (framing, ka), "row {i}");
        }
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert!(matches!(resp(bad, b"GET"), Err(ParseError::Malformed(_))));
        }
    }

    #[test]
    fn decimal() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), Option::None);
        assert_eq!(parse_decimal(b""), Option::None);
        assert_eq!(parse_decimal(b"1a"), Option::None);
        assert_eq!(parse_decimal(b":"), Option::None);
        assert_eq!(parse_decimal(b"/"), Option::None);
    }
}
