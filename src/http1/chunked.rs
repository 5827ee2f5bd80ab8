//! Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! The decoder is an explicit state machine ([`State`]) that advances one byte at a time through
//! the framing and jumps over payload in one step, handing out sub-slices of the input: no
//! payload byte is copied or buffered. Input may be split anywhere, even one byte per call; the
//! state carries everything needed to resume.
//!
//! Strict where a lenient reading would let two parsers disagree about where a chunk ends:
//! CRLF is required everywhere (a bare LF is an error), a chunk size is 1 to 16 hex digits (so it
//! always fits u64) with nothing before it, and trailer fields must be well-formed field lines
//! without obs-fold. Extensions and trailers are skipped, not kept, and bounded so that framing
//! bytes cannot outgrow payload without limit: [`MAX_EXTENSION_LINE`] per size line,
//! [`MAX_EXTENSIONS_TOTAL`] per message, [`MAX_TRAILERS`] for the trailer section.
//!
//! Tolerated: whitespace between the size and `;` or CRLF (BWS, RFC 9112 §7.1.1). The proxy
//! re-chunks bodies itself, so this leniency never reaches the backend.

use crate::error::{Error, ErrorKind, Side};

use super::{is_field_vchar, is_tchar};

/// Longest chunk-size line after the digits (whitespace and extensions).
pub const MAX_EXTENSION_LINE: usize = 4 * 1024;
/// Most extension bytes over a whole message: 1-byte chunks with 4 KiB of extensions each would
/// otherwise be a cheap way to make the proxy parse 4096 framing bytes per payload byte.
pub const MAX_EXTENSIONS_TOTAL: usize = 16 * 1024;
/// Largest trailer section, including line endings.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// Where the decoder is in the chunked grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum State {
    /// Before the first hex digit of a chunk size.
    #[default]
    SizeStart,
    /// Inside the hex digits.
    Size,
    /// Whitespace after the digits: only more of it, `;` or CR may follow.
    SizeLws,
    /// After `;`, up to CR.
    Extension,
    /// CR of the size line seen, LF expected.
    SizeLf,
    /// `remaining` payload bytes of this chunk still to pass through.
    Body,
    /// Payload done, CR expected.
    BodyCr,
    /// LF expected after the payload.
    BodyLf,
    /// After the last chunk or a trailer line: a field name, or CR of the final empty line.
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// After the trailer field's colon, up to CR.
    TrailerValue,
    /// CR of a trailer line seen, LF expected.
    TrailerLf,
    /// CR of the final empty line seen, LF expected.
    EndLf,
    /// The message is complete; further input belongs to the next message.
    Done,
    /// A framing error: sticky, the connection cannot be reused.
    Failed(ChunkError),
}

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkError {
    /// Not a hex digit where a chunk size must start, or a stray byte after it.
    InvalidSize,
    /// More than 16 hex digits.
    SizeOverflow,
    /// A line not ended by CRLF (bare LF, or payload longer than its size).
    MissingCrlf,
    /// A control byte in a chunk extension.
    InvalidExtension,
    /// A size line longer than [`MAX_EXTENSION_LINE`], or extensions over
    /// [`MAX_EXTENSIONS_TOTAL`] in one message.
    ExtensionTooLong,
    /// Trailer section over [`MAX_TRAILERS`].
    TrailersTooLarge,
    /// A trailer line that is not `name: value` (includes obs-fold).
    InvalidTrailer,
}

impl ChunkError {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkError::InvalidSize => "invalid chunk size",
            ChunkError::SizeOverflow => "chunk size too large",
            ChunkError::MissingCrlf => "chunk framing without CRLF",
            ChunkError::InvalidExtension => "invalid chunk extension",
            ChunkError::ExtensionTooLong => "chunk extensions too long",
            ChunkError::TrailersTooLarge => "chunked trailers too large",
            ChunkError::InvalidTrailer => "invalid chunked trailer",
        }
    }

    /// The crate error for a body read from `side`: a client's bad framing is a 400, a
    /// backend's a protocol error (502); other sides do not send chunked bodies.
    pub fn into_error(self, side: Side) -> Error {
        let kind = match side {
            Side::Client => ErrorKind::BadRequest,
            Side::Backend => ErrorKind::BackendProtocol,
            Side::Kdc | Side::Internal => ErrorKind::Internal,
        };
        Error::new(kind, self.as_str())
    }
}

super::str_error!(ChunkError);

/// Decodes one chunked message body; create a new one (or `Default`) per message.
#[derive(Clone, Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// INVARIANT: in `Size`, the value of the digits so far; in `Body`, the payload bytes left
    /// in this chunk (> 0); after the size line, 0 means this was the last chunk.
    size: u64,
    /// INVARIANT: hex digits read in `Size`, at most 16, so `size` cannot overflow.
    digits: u8,
    /// Bytes after the digits on the current size line.
    line: usize,
    /// Extension bytes in this message so far.
    extensions: usize,
    /// Trailer section bytes so far.
    trailers: usize,
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder::default()
    }

    /// Whether the last chunk, the trailers and the final CRLF have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes a prefix of `input` (which may be split anywhere, even one byte per call) and
    /// calls `on_data` with each run of payload, as sub-slices of `input`.
    ///
    /// Returns `(consumed, done)`: `done` once the last chunk, trailers and final CRLF have been
    /// consumed, and then the bytes after `consumed` belong to the next message; while not
    /// done, `consumed == input.len()`. After an error the decoder stays failed.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<(usize, bool), ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok((pos, true)),
                State::Failed(e) => return Err(e),
                State::Body => {
                    let rest = input.get(pos..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    // `size` may exceed usize on 32-bit targets: then the whole rest is payload.
                    let n = usize::try_from(self.size).map_or(rest.len(), |s| s.min(rest.len()));
                    let (data, _) = rest.split_at(n);
                    on_data(data);
                    pos += n;
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::BodyCr;
                    }
                }
                _ => {
                    let Some(&b) = input.get(pos) else {
                        return Ok((pos, false));
                    };
                    pos += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Advances the framing states by one byte. `Body`, `Done` and `Failed` never get here.
    #[inline]
    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::SizeStart => {
                let d = hex_value(b).ok_or(ChunkError::InvalidSize)?;
                self.size = u64::from(d);
                self.digits = 1;
                self.line = 0;
                State::Size
            }
            State::Size => match b {
                b'\r' => State::SizeLf,
                b';' => State::Extension,
                b' ' | b'\t' => {
                    self.count_line(1)?;
                    State::SizeLws
                }
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => {
                    let d = hex_value(b).ok_or(ChunkError::InvalidSize)?;
                    if self.digits == 16 {
                        return Err(ChunkError::SizeOverflow);
                    }
                    self.digits += 1;
                    self.size = (self.size << 4) | u64::from(d);
                    State::Size
                }
            },
            State::SizeLws => match b {
                b' ' | b'\t' => {
                    self.count_line(1)?;
                    State::SizeLws
                }
                b';' => State::Extension,
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ => return Err(ChunkError::InvalidSize),
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkError::MissingCrlf),
                _ if is_field_vchar(b) => {
                    self.count_line(1)?;
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS_TOTAL {
                        return Err(ChunkError::ExtensionTooLong);
                    }
                    State::Extension
                }
                _ => return Err(ChunkError::InvalidExtension),
            },
            State::SizeLf => match b {
                b'\n' if self.size == 0 => State::TrailerStart,
                b'\n' => State::Body,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::BodyCr => match b {
                b'\r' => State::BodyLf,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::BodyLf => match b {
                b'\n' => State::SizeStart,
                _ => return Err(ChunkError::MissingCrlf),
            },
            State::TrailerStart => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(ChunkError::MissingCrlf),
                    // Leading whitespace would be obs-fold of the previous line.
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(ChunkError::InvalidTrailer),
                }
            }
            State::TrailerName => {
                self.count_trailer()?;
                match b {
                    b':' => State::TrailerValue,
                    _ if is_tchar(b) => State::TrailerName,
                    _ => return Err(ChunkError::InvalidTrailer),
                }
            }
            State::TrailerValue => {
                self.count_trailer()?;
                match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(ChunkError::MissingCrlf),
                    _ if is_field_vchar(b) => State::TrailerValue,
                    _ => return Err(ChunkError::InvalidTrailer),
                }
            }
            State::TrailerLf => {
                self.count_trailer()?;
                match b {
                    b'\n' => State::TrailerStart,
                    _ => return Err(ChunkError::MissingCrlf),
                }
            }
            State::EndLf => match b {
                b'\n' => State::Done,
                _ => return Err(ChunkError::MissingCrlf),
            },
            // feed() handles these without calling step(); keeping them put is the safe answer.
            s @ (State::Body | State::Done | State::Failed(_)) => s,
        };
        Ok(())
    }

    #[inline]
    fn count_line(&mut self, n: usize) -> Result<(), ChunkError> {
        self.line += n;
        if self.line > MAX_EXTENSION_LINE {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(())
    }

    #[inline]
    fn count_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLarge);
        }
        Ok(())
    }
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` whole and at every split point into two pieces, and one byte at a time;
    /// all must agree. Returns (payload, consumed, outcome).
    fn decode(input: &[u8]) -> (Vec<u8>, usize, Result<bool, ChunkError>) {
        let whole = run(input, &[input.len()]);
        for cut in 0..=input.len() {
            assert_eq!(
                run(input, &[cut, input.len() - cut]),
                whole,
                "split at {cut}"
            );
        }
        assert_eq!(run(input, &vec![1; input.len()]), whole, "byte by byte");
        whole
    }

    fn run(input: &[u8], pieces: &[usize]) -> (Vec<u8>, usize, Result<bool, ChunkError>) {
        let mut dec = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut at = 0;
        for &n in pieces {
            let piece = &input[at..at + n];
            match dec.feed(piece, |d| data.extend_from_slice(d)) {
                Ok((used, true)) => {
                    assert!(dec.is_done());
                    return (data, at + used, Ok(true));
                }
                Ok((used, false)) => assert_eq!(used, n, "not done but not all consumed"),
                Err(e) => {
                    // Sticky.
                    assert_eq!(dec.feed(b"0\r\n\r\n", |_| {}), Err(e));
                    // How far into the input is not part of the contract on error.
                    return (data, 0, Err(e));
                }
            }
            at += n;
        }
        (data, at, Ok(false))
    }

    /// Table: input, expected payload, and `done(consumed)`, `partial` or `err(ChunkError)`.
    macro_rules! chunked {
        ($name:ident, $input:expr, $payload:expr, done($consumed:expr)) => {
            #[test]
            fn $name() {
                let (data, consumed, outcome) = decode($input);
                assert_eq!(data, &$payload[..]);
                assert_eq!(outcome, Ok(true));
                assert_eq!(consumed, $consumed);
            }
        };
        ($name:ident, $input:expr, $payload:expr, partial) => {
            #[test]
            fn $name() {
                let (data, consumed, outcome) = decode($input);
                assert_eq!(data, &$payload[..]);
                assert_eq!(outcome, Ok(false));
                assert_eq!(consumed, $input.len());
            }
        };
        ($name:ident, $input:expr, err($e:expr)) => {
            #[test]
            fn $name() {
                let (_, _, outcome) = decode($input);
                assert_eq!(outcome, Err($e));
            }
        };
    }

    chunked!(simple, b"5\r\nhello\r\n0\r\n\r\n", b"hello", done(15));
    chunked!(
        two_chunks,
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"hello world",
        done(26)
    );
    chunked!(empty_body, b"0\r\n\r\n", b"", done(5));
    chunked!(
        next_message_after,
        b"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
        b"a",
        done(11)
    );
    chunked!(
        hex_upper_lower,
        b"A\r\n0123456789\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
        b"01234567890123456789abcde",
        done(40)
    );
    chunked!(
        leading_zeros,
        b"0005\r\nhello\r\n000\r\n\r\n",
        b"hello",
        done(20)
    );
    chunked!(
        sixteen_digits,
        b"0000000000000001\r\nx\r\n0\r\n\r\n",
        b"x",
        done(26)
    );
    chunked!(
        extensions,
        b"5;name=value;flag\r\nhello\r\n0;last=\"q s\"\r\n\r\n",
        b"hello",
        done(42)
    );
    chunked!(
        bws_before_ext,
        b"5 \t;a=b\r\nhello\r\n0\r\n\r\n",
        b"hello",
        done(21)
    );
    chunked!(
        bws_before_crlf,
        b"5 \r\nhello\r\n0 \r\n\r\n",
        b"hello",
        done(17)
    );
    chunked!(
        trailers,
        b"5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum:\r\n\r\n",
        b"hello",
        done(39)
    );
    chunked!(partial_size, b"5", b"", partial);
    chunked!(partial_payload, b"5\r\nhel", b"hel", partial);
    chunked!(
        partial_after_last,
        b"5\r\nhello\r\n0\r\n",
        b"hello",
        partial
    );
    chunked!(partial_trailer, b"0\r\nA: b\r\n", b"", partial);
    chunked!(
        overflow_17_digits,
        b"00000000000000001\r\nx\r\n0\r\n\r\n",
        err(ChunkError::SizeOverflow)
    );
    chunked!(
        overflow_big,
        b"FFFFFFFFFFFFFFFFF\r\n",
        err(ChunkError::SizeOverflow)
    );
    chunked!(
        invalid_hex,
        b"5g\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        no_digits,
        b"\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        hex_prefix,
        b"0x5\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        negative,
        b"-5\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        leading_space,
        b" 5\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        space_inside_size,
        b"5 5\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidSize)
    );
    chunked!(
        bare_lf_size,
        b"5\nhello\r\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        bare_lf_after_ext,
        b"5;a\nhello\r\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        bare_lf_after_bws,
        b"5 \nhello\r\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        bare_cr_size,
        b"5\rhello\r\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        bare_lf_after_data,
        b"5\r\nhello\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        data_longer_than_size,
        b"5\r\nhello!\r\n0\r\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(bare_lf_end, b"0\r\n\n", err(ChunkError::MissingCrlf));
    chunked!(
        bare_lf_trailer,
        b"0\r\nA: b\n\r\n",
        err(ChunkError::MissingCrlf)
    );
    chunked!(
        ctl_in_extension,
        b"5;a\x01\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidExtension)
    );
    chunked!(
        nul_in_extension,
        b"5;\0\r\nhello\r\n0\r\n\r\n",
        err(ChunkError::InvalidExtension)
    );
    chunked!(
        obs_fold_trailer,
        b"0\r\nA: b\r\n c\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );
    chunked!(
        trailer_no_colon,
        b"0\r\nAb\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );
    chunked!(
        trailer_space_before_colon,
        b"0\r\nA : b\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );
    chunked!(
        trailer_empty_name,
        b"0\r\n: b\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );
    chunked!(
        trailer_ctl_value,
        b"0\r\nA: \x7f\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );
    chunked!(
        trailer_nul_value,
        b"0\r\nA: b\0\r\n\r\n",
        err(ChunkError::InvalidTrailer)
    );

    #[test]
    fn extension_line_limit() {
        let mut ok = b"1;".to_vec();
        ok.resize(2 + MAX_EXTENSION_LINE, b'x'); // `;` is not counted, the rest is
        ok.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(run(&ok, &[ok.len()]).2, Ok(true));
        let mut bad = b"1;".to_vec();
        bad.resize(2 + MAX_EXTENSION_LINE + 1, b'x');
        bad.extend_from_slice(b"\r\na\r\n0\r\n\r\n");
        assert_eq!(run(&bad, &[bad.len()]).2, Err(ChunkError::ExtensionTooLong));
        // Whitespace counts too: an endless run of BWS must not be free.
        let mut spaces = b"1".to_vec();
        spaces.resize(1 + MAX_EXTENSION_LINE + 1, b' ');
        assert_eq!(
            run(&spaces, &[spaces.len()]).2,
            Err(ChunkError::ExtensionTooLong)
        );
    }

    #[test]
    fn extension_total_limit() {
        let ext = vec![b'x'; 1000];
        let mut body = Vec::new();
        for _ in 0..MAX_EXTENSIONS_TOTAL / 1000 {
            body.extend_from_slice(b"1;");
            body.extend_from_slice(&ext);
            body.extend_from_slice(b"\r\na\r\n");
        }
        let mut ok = body.clone();
        ok.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(run(&ok, &[ok.len()]).2, Ok(true));
        body.extend_from_slice(b"1;");
        body.extend_from_slice(&ext);
        assert_eq!(
            run(&body, &[body.len()]).2,
            Err(ChunkError::ExtensionTooLong)
        );
    }

    #[test]
    fn trailer_limit() {
        let mut t = b"0\r\n".to_vec();
        while t.len() < 3 + MAX_TRAILERS {
            t.extend_from_slice(
                b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        t.extend_from_slice(b"\r\n");
        assert_eq!(run(&t, &[t.len()]).2, Err(ChunkError::TrailersTooLarge));
        let ok = b"0\r\nA: b\r\n\r\n";
        assert_eq!(run(ok, &[ok.len()]).2, Ok(true));
    }

    #[test]
    fn max_size_chunk_streams() {
        // A 16-digit size near u64::MAX is accepted and streams whatever arrives.
        let mut dec = ChunkedDecoder::new();
        let mut n = 0;
        let (used, done) = dec
            .feed(b"FFFFFFFFFFFFFFFF\r\nabc", |d| n += d.len())
            .unwrap();
        assert_eq!((used, done, n), (21, false, 3));
    }

    #[test]
    fn payload_is_borrowed_not_copied() {
        let input = b"4\r\nwxyz\r\n0\r\n\r\n";
        let mut dec = ChunkedDecoder::new();
        let base = input.as_ptr() as usize;
        let mut offsets = Vec::new();
        dec.feed(input, |d| offsets.push(d.as_ptr() as usize - base))
            .unwrap();
        assert_eq!(offsets, [3]);
    }

    #[test]
    fn done_consumes_nothing_more() {
        let mut dec = ChunkedDecoder::new();
        assert_eq!(dec.feed(b"0\r\n\r\n", |_| {}), Ok((5, true)));
        assert_eq!(
            dec.feed(b"5\r\nhello", |_| panic!("no data after done")),
            Ok((0, true))
        );
    }

    #[test]
    fn errors_map_to_kinds() {
        let e = ChunkError::MissingCrlf;
        assert_eq!(e.into_error(Side::Client).kind, ErrorKind::BadRequest);
        assert_eq!(e.into_error(Side::Backend).kind, ErrorKind::BackendProtocol);
        assert_eq!(e.into_error(Side::Backend).context, e.as_str());
    }
}
