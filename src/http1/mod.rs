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
//! - [`authz`]: `Authorization` / `WWW-Authenticate` values split into scheme and token.
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

pub mod authz;
mod chunked;
mod encode;
mod framing;
mod head;

/// `Display` and `Error` for an error enum whose text is its `as_str()`.
macro_rules! str_error {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::error::Error for $t {}
    };
}
use str_error;

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
    //! Properties that span the submodules: the no-panic loop over mutated input, and
    //! agreement between whole and split input.

    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// xorshift64*: deterministic, dependency-free randomness for the mutation loop.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            if n == 0 {
                0
            } else {
                (self.next() % n as u64) as usize
            }
        }
    }

    const SEEDS: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nPOST /ews/exchange.asmx?x=1 HTTP/1.1\r\nHost: mail.example.com\r\nContent-Length: 5\r\nConnection: keep-alive, X-Foo\r\nX-Foo: 1\r\nExpect: 100-continue\r\n\r\nhello",
        b"POST http://h:8080/p?q HTTP/1.1\r\nHost: h:8080\r\nTransfer-Encoding: chunked\r\nVia: 1.0 a\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"GET * HTTP/1.0\r\nConnection: keep-alive\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: NTLM\r\nWWW-Authenticate: Negotiate\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.0 304 \r\nContent-Length: 5, 5\r\n\r\n",
        b"a;x=y\r\n0123456789\r\n10\r\n0123456789abcdef\r\n0\r\nExpires: never\r\n\r\n",
    ];

    const INTERESTING: &[u8] = b"\r\n :,;\t0f9F\x00\xff\x7f-=\"";

    fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(v.len() + 1);
            match rng.below(8) {
                0 if at < v.len() => v[at] = (rng.next() & 0xff) as u8,
                1 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                2 if at < v.len() => {
                    v.remove(at);
                }
                3 if rng.below(4) == 0 => v.truncate(at),
                4 => {
                    // Duplicate a run: repeats headers, digits, CRLFs.
                    let end = (at + rng.below(16)).min(v.len());
                    let run = v[at..end].to_vec();
                    v.splice(at..at, run);
                }
                _ if at < v.len() => v[at] = INTERESTING[rng.below(INTERESTING.len())],
                _ => {}
            }
        }
        v
    }

    fn exercise(input: &[u8], rng: &mut XorShift, stats: &mut Stats) {
        let limits = Limits {
            max_head_bytes: 512,
            max_headers: 8,
            max_request_line: 64,
        };
        let info = ForwardInfo {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            proto: "https",
            host_override: Some("backend:443"),
            framing: BodyFraming::Chunked,
            drop_headers: &["authorization"],
            extra_headers: &[("Authorization", b"Negotiate YII=")],
        };
        let mut out = Vec::new();
        if let Ok(Some(req)) = parse_request(input, &limits) {
            stats.requests += 1;
            assert!(req.head_len <= input.len());
            for h in &req.headers {
                assert!(
                    h.name.end as usize <= req.head_len && h.value.end as usize <= req.head_len
                );
            }
            let _ = req.path(input);
            let _ = req.header(input, "host");
            if let Ok(meta) = request_meta(input, &req) {
                stats.valid_requests += 1;
                // What the proxy sends must pass its own checks, with the framing it declared.
                let info = ForwardInfo {
                    framing: meta.framing,
                    host_override: info.host_override.filter(|_| rng.below(2) == 0),
                    ..info
                };
                out.clear();
                encode_request_head(input, &req, &info, &mut out);
                let again = parse_request(&out, &Limits::default())
                    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
                    .expect("complete");
                assert_eq!(again.head_len, out.len());
                let meta2 = request_meta(&out, &again)
                    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
                assert_eq!(meta2.framing, meta.framing);
            } else {
                encode_request_head(input, &req, &info, &mut out);
            }
        }
        if let Ok(Some(resp)) = parse_response(input, &limits) {
            stats.responses += 1;
            assert!(resp.head_len <= input.len());
            for method in [&b"GET"[..], b"HEAD"] {
                if let Ok(meta) = response_meta(input, &resp, method) {
                    let info = ResponseInfo {
                        framing: meta.framing,
                        keep_alive: meta.keep_alive,
                        client_version: Version::Http10,
                        drop_headers: &[],
                    };
                    out.clear();
                    encode_response_head(input, &resp, &info, &mut out);
                    let again = parse_response(&out, &Limits::default())
                        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)))
                        .expect("complete");
                    assert_eq!(again.head_len, out.len());
                }
            }
        }
        // Chunked: feeding in random pieces must agree with feeding all at once.
        let whole = decode_all(input, &[input.len()]);
        let mut cuts = Vec::new();
        let mut left = input.len();
        while left > 0 {
            let n = 1 + rng.below(left.min(9));
            cuts.push(n);
            left -= n;
        }
        assert_eq!(
            whole,
            decode_all(input, &cuts),
            "input {input:?} cuts {cuts:?}"
        );
        stats.chunked_done += usize::from(whole.2 == Ok(true));
    }

    /// How deep the mutated inputs got: a loop whose inputs all fail early proves little.
    #[derive(Default, Debug)]
    struct Stats {
        requests: usize,
        valid_requests: usize,
        responses: usize,
        chunked_done: usize,
    }

    /// Feeds `input` in pieces of the given sizes; returns the payload, bytes consumed and the
    /// outcome.
    fn decode_all(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, Result<bool, ChunkError>) {
        let mut dec = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut at = 0;
        for &n in cuts {
            let piece = &input[at..at + n];
            match dec.feed(piece, |d| data.extend_from_slice(d)) {
                Ok((used, true)) => return (data, at + used, Ok(true)),
                Ok((used, false)) => assert_eq!(used, piece.len()),
                // How far into the input is not part of the contract on error.
                Err(e) => return (data, 0, Err(e)),
            }
            at += n;
        }
        (data, at, Ok(false))
    }

    #[test]
    fn no_panic_on_mutated_input() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut stats = Stats::default();
        for i in 0..20_000 {
            let seed = SEEDS[i % SEEDS.len()];
            let input = mutate(&mut rng, seed);
            exercise(&input, &mut rng, &mut stats);
        }
        // Pure noise too, biased towards protocol bytes.
        for _ in 0..2000 {
            let len = rng.below(200);
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.below(2) == 0 {
                        INTERESTING[rng.below(INTERESTING.len())]
                    } else {
                        (rng.next() & 0xff) as u8
                    }
                })
                .collect();
            exercise(&input, &mut rng, &mut stats);
        }
        eprintln!("{stats:?}");
        assert!(stats.valid_requests > 1000 && stats.responses > 1000 && stats.chunked_done > 300);
    }

    #[test]
    fn helpers() {
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b" \t "), b"");
        assert_eq!(trim_ows(b""), b"");
        let v: Vec<&[u8]> = list_elements(b" a ,, b,").collect();
        assert_eq!(v, [&b"a"[..], b"", b"b", b""]);
    }
}
