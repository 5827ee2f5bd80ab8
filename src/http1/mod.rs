//! HTTP/1.1 for the proxy: zero-copy head parsing, body framing, chunked decoding, head encoding.
//!
//! ## Job
//!
//! - `head`: [`parse_request`] / [`parse_response`] run httparse over the connection's read
//!   buffer and keep only *offsets* ([`Span`]) into it, so a 32 KB Kerberos `Authorization` header
//!   is never copied. Accessors take the same buffer back and hand out slices of it.
//! - `framing`: [`request_meta`] / [`response_meta`] decide how a body is delimited (RFC 9112
//!   §6) and whether the connection persists. This is the request smuggling defence: every
//!   ambiguous framing shape is rejected before a byte of body is read.
//! - `chunked`: [`ChunkedDecoder`], an explicit byte-at-a-time state machine for
//!   `Transfer-Encoding: chunked` that accepts input split anywhere and never copies payload.
//! - `encode`: the heads the proxy writes: the request to the backend (hop-by-hop headers
//!   removed, framing and `X-Forwarded-*`/`Via` regenerated), the response to the client, and
//!   the proxy's own small responses.
//!
//! ## Invariants
//!
//! - **Nothing here panics on any input.** No indexing that can go out of bounds, no `unwrap` on
//!   data that came off the wire; `tests::no_panic_on_mutated_input` hammers every entry point.
//! - **Offsets fit `u32`:** a head is accepted only when it is at most `Limits::max_head_bytes`
//!   (and never more than `u32::MAX`) long, and every [`Span`] lies inside it.
//! - **A [`Span`] is only meaningful with the buffer it was parsed from**, unchanged. A span
//!   used with another buffer yields other bytes or an empty slice, never a panic.
//! - **Incomplete input is a state, not an error:** parsers return `Ok(None)` (heads) or
//!   `done == false` (chunked) and the caller reads more.
//! - **What the backend sees is regenerated:** the proxy never forwards the client's own framing
//!   headers or line endings, so a framing quirk that slips past the checks here still cannot
//!   be replayed to the backend in a different interpretation.
//!
//! ## Strictness, and why
//!
//! The proxy sits in front of IIS/HTTP.sys and is the only party that interprets the client's
//! framing. Real Exchange and SharePoint clients (Outlook, WinINET, .NET, browsers) send clean
//! HTTP/1.1, so every tolerance is a risk without a customer. Rejected: bare LF line endings,
//! obs-fold (also in responses), `Content-Length` with `Transfer-Encoding`, differing
//! `Content-Length`s, any request transfer coding other than a lone `chunked`, `Transfer-Encoding`
//! in HTTP/1.0 requests, missing or repeated `Host` in HTTP/1.1, malformed chunk sizes and bare
//! LF inside chunked framing. Tolerated because the RFC asks for it: a few empty lines before
//! the request line, OWS around field values and list elements, empty list elements.

mod chunked;
mod encode;
mod framing;
mod head;

pub use chunked::*;
pub use encode::*;
pub use framing::*;
pub use head::*;

/// Trims optional whitespace (SP / HTAB, RFC 9110 §5.6.3) from both ends of a field value.
#[inline]
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// The elements of a comma-separated field value (RFC 9110 §5.6.1), OWS-trimmed. Empty
/// elements are yielded too: some callers must reject them (`Content-Length: 5,`), others skip
/// them (`Connection: , close`).
#[inline]
pub(crate) fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// Whether `b` may appear in a field name or other `token` (RFC 9110 §5.6.2).
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_'
        | b'`' | b'|' | b'~')
}

/// Whether `b` may appear inside a field value (HTAB, SP, VCHAR, obs-text; RFC 9110 §5.5).
#[inline]
pub(crate) fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        let v: Vec<&[u8]> = list_elements(b" a ,, b,").collect();
        assert_eq!(v, [&b"a"[..], b"", b"b", b""]);
    }
}
