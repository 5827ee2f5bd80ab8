//! Incremental HTTP/1.1 response reader: head, then a body framed by Content-Length, chunked
//! transfer coding, or the end of the connection.
//!
//! The reader never copies the body: it is fed slices of the connection's receive buffer and says
//! how many bytes it consumed. An incomplete head consumes nothing (the caller keeps the bytes and
//! reads more); everything after the head is consumed as it arrives, so a 1 MiB body streams
//! through a small buffer.
//!
//! INVARIANT: `advance` returns `done == true` exactly once per response, and only then is
//! `outcome` meaningful; the caller `reset`s the reader before the next request.

/// Most response headers accepted; a response with more is a parse error.
const MAX_HEADERS: usize = 64;

/// Why a response could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The head is not valid HTTP/1.x.
    Head(httparse::Error),
    /// Content-Length is not a number, or two differ.
    ContentLength,
    /// A chunk-size line or chunk terminator is malformed.
    Chunked,
    /// The connection ended before the response did.
    UnexpectedEof,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Head(e) => write!(f, "bad response head: {e}"),
            ParseError::ContentLength => f.write_str("bad Content-Length"),
            ParseError::Chunked => f.write_str("bad chunked framing"),
            ParseError::UnexpectedEof => f.write_str("connection closed mid-response"),
        }
    }
}

/// What one complete response looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    pub status: u16,
    /// The server will close the connection after this response (or the framing needs it).
    pub close: bool,
    /// Body bytes after removing chunked framing.
    pub body_bytes: u64,
}

/// Result of feeding bytes to the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input that belong to this response; the rest belong to the next one.
    pub consumed: usize,
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Length { remaining: u64 },
    Chunk(Chunk),
    UntilClose,
    Done,
}

/// Position inside chunked framing. `Size` accumulates the hex size; a size line ends with CRLF
/// (a bare LF is accepted, as most servers' parsers do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size {
        value: u64,
        digits: u8,
    },
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        remaining: u64,
    },
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerLineStart,
    TrailerLine,
    FinalLf,
}

/// Reads one response at a time; see the module doc.
#[derive(Debug)]
pub struct ResponseReader {
    state: State,
    outcome: Outcome,
    /// The token of a `WWW-Authenticate: NTLM <token>` header of a 401 (an NTLM CHALLENGE);
    /// only 401s are looked at, so the hot path never allocates.
    ntlm_challenge: Option<Vec<u8>>,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    pub fn new() -> Self {
        ResponseReader {
            state: State::Head,
            outcome: Outcome::default(),
            ntlm_challenge: None,
        }
    }

    /// Prepares for the next response on the same connection.
    pub fn reset(&mut self) {
        *self = ResponseReader::new();
    }

    /// The finished response; meaningful once `advance` or `eof` said done.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// The base64 NTLM CHALLENGE token of the last 401, if it carried one.
    pub fn take_ntlm_challenge(&mut self) -> Option<Vec<u8>> {
        self.ntlm_challenge.take()
    }

    /// Feeds the unconsumed bytes of the receive buffer.
    pub fn advance(&mut self, input: &[u8]) -> Result<Step, ParseError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => {
                    return Ok(Step {
                        consumed: pos,
                        done: true,
                    })
                }
                State::Head => match self.parse_head(&input[pos..])? {
                    Some(n) => pos += n,
                    None => {
                        return Ok(Step {
                            consumed: pos,
                            done: false,
                        })
                    }
                },
                State::Length { remaining } => {
                    let take = remaining.min((input.len() - pos) as u64);
                    pos += take as usize;
                    self.outcome.body_bytes += take;
                    if take == remaining {
                        self.state = State::Done;
                    } else {
                        self.state = State::Length {
                            remaining: remaining - take,
                        };
                        return Ok(Step {
                            consumed: pos,
                            done: false,
                        });
                    }
                }
                State::UntilClose => {
                    self.outcome.body_bytes += (input.len() - pos) as u64;
                    return Ok(Step {
                        consumed: input.len(),
                        done: false,
                    });
                }
                State::Chunk(chunk) => {
                    if pos == input.len() {
                        return Ok(Step {
                            consumed: pos,
                            done: false,
                        });
                    }
                    pos += self.chunk_step(chunk, &input[pos..])?;
                }
            }
        }
    }

    /// The connection reached end of file; only a body framed by the close completes here.
    pub fn eof(&mut self) -> Result<Outcome, ParseError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(self.outcome)
            }
            _ => Err(ParseError::UnexpectedEof),
        }
    }

    /// Parses a complete head; `None` when more bytes are needed.
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, ParseError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(input).map_err(ParseError::Head)? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => return Ok(None),
        };
        let status = resp.code.unwrap_or(0);
        // Interim 1xx responses (except 101) precede the real one on the same connection.
        if (100..200).contains(&status) && status != 101 {
            return Ok(Some(n));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = resp.version == Some(0);
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(ParseError::ContentLength)?;
                if length.is_some_and(|l| l != v) {
                    return Err(ParseError::ContentLength);
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked must be the last coding; anything else is framed by the close.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
                if !chunked {
                    length = None;
                }
            } else if status == 401 && h.name.eq_ignore_ascii_case("www-authenticate") {
                if let Some(token) = h.value.strip_prefix(b"NTLM ") {
                    self.ntlm_challenge = Some(token.trim_ascii().to_vec());
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        close = false;
                    }
                }
            }
        }
        self.outcome.status = status;
        // Only GET is sent: 204 and 304 are the bodiless statuses that matter.
        self.state = if status == 204 || status == 304 {
            State::Done
        } else if chunked {
            State::Chunk(Chunk::Size {
                value: 0,
                digits: 0,
            })
        } else if let Some(len) = length {
            if len == 0 {
                State::Done
            } else {
                State::Length { remaining: len }
            }
        } else {
            close = true;
            State::UntilClose
        };
        self.outcome.close = close;
        Ok(Some(n))
    }

    /// Advances chunked framing over a non-empty input; returns bytes consumed (at least one).
    fn chunk_step(&mut self, chunk: Chunk, input: &[u8]) -> Result<usize, ParseError> {
        if let Chunk::Data { remaining } = chunk {
            let take = remaining.min(input.len() as u64);
            self.outcome.body_bytes += take;
            self.state = State::Chunk(if take == remaining {
                Chunk::DataCr
            } else {
                Chunk::Data {
                    remaining: remaining - take,
                }
            });
            return Ok(take as usize);
        }
        let b = input[0];
        let next = match chunk {
            Chunk::Size { value, digits } => match hex_digit(b) {
                // 16 hex digits overflow nothing; more is a size no response here can have.
                Some(d) if digits < 15 => Chunk::Size {
                    value: value << 4 | d,
                    digits: digits + 1,
                },
                Some(_) => return Err(ParseError::Chunked),
                None if digits == 0 => return Err(ParseError::Chunked),
                None => match b {
                    b';' | b' ' | b'\t' => Chunk::Extension { value },
                    b'\r' => Chunk::SizeLf { value },
                    b'\n' => size_line_done(value),
                    _ => return Err(ParseError::Chunked),
                },
            },
            Chunk::Extension { value } => match b {
                b'\r' => Chunk::SizeLf { value },
                b'\n' => size_line_done(value),
                _ => Chunk::Extension { value },
            },
            Chunk::SizeLf { value } => match b {
                b'\n' => size_line_done(value),
                _ => return Err(ParseError::Chunked),
            },
            Chunk::DataCr => match b {
                b'\r' => Chunk::DataLf,
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ParseError::Chunked),
            },
            Chunk::DataLf => match b {
                b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                },
                _ => return Err(ParseError::Chunked),
            },
            Chunk::TrailerLineStart => match b {
                b'\r' => Chunk::FinalLf,
                b'\n' => {
                    self.state = State::Done;
                    return Ok(1);
                }
                _ => Chunk::TrailerLine,
            },
            Chunk::TrailerLine => match b {
                b'\n' => Chunk::TrailerLineStart,
                _ => Chunk::TrailerLine,
            },
            Chunk::FinalLf => match b {
                b'\n' => {
                    self.state = State::Done;
                    return Ok(1);
                }
                _ => return Err(ParseError::Chunked),
            },
            Chunk::Data { .. } => unreachable!("handled above"),
        };
        self.state = State::Chunk(next);
        Ok(1)
    }
}

fn size_line_done(value: u64) -> Chunk {
    if value == 0 {
        Chunk::TrailerLineStart
    } else {
        Chunk::Data { remaining: value }
    }
}

fn hex_digit(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `piece` bytes the way the connection loop does (unconsumed
    /// bytes stay and are offered again with the next read); returns the outcome and the bytes
    /// that belong to the next response (pending plus not yet fed).
    fn feed(wire: &[u8], piece: usize) -> Result<(Outcome, Vec<u8>), ParseError> {
        let mut r = ResponseReader::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut chunks = wire.chunks(piece);
        loop {
            let step = r.advance(&pending)?;
            pending.drain(..step.consumed);
            if step.done {
                chunks.for_each(|c| pending.extend_from_slice(c));
                return Ok((r.outcome(), pending));
            }
            match chunks.next() {
                Some(c) => pending.extend_from_slice(c),
                None => return r.eof().map(|o| (o, pending)),
            }
        }
    }

    fn ok(status: u16, close: bool, body_bytes: u64) -> Outcome {
        Outcome {
            status,
            close,
            body_bytes,
        }
    }

    #[test]
    fn responses_parse_at_every_split() {
        #[rustfmt::skip]
        let table: &[(&str, &[u8], Outcome, &[u8])] = &[
            ("content-length",
             b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT", ok(200, false, 5), b"NEXT"),
            ("zero length",
             b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", ok(200, false, 0), b""),
            ("connection close header",
             b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", ok(200, true, 2), b""),
            ("http/1.0 defaults to close",
             b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", ok(200, true, 2), b""),
            ("http/1.0 keep-alive",
             b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\nhi", ok(200, false, 2), b""),
            ("chunked with extension and trailer",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT",
             ok(200, false, 15), b"NEXT"),
            ("chunked with bare LF",
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", ok(200, false, 3), b""),
            ("chunked wins over content-length",
             b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
             ok(200, false, 1), b""),
            ("until close",
             b"HTTP/1.1 200 OK\r\n\r\nbody until eof", ok(200, true, 14), b""),
            ("non-200 status is reported",
             b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", ok(502, false, 3), b""),
            ("304 has no body",
             b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\nNEXT", ok(304, false, 0), b"NEXT"),
            ("interim 100 is skipped",
             b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", ok(200, false, 1), b""),
        ];
        for (name, wire, want, rest) in table {
            for piece in [1, 2, 7, wire.len()] {
                let (got, left) =
                    feed(wire, piece).unwrap_or_else(|e| panic!("{name}/{piece}: {e}"));
                assert_eq!(got, *want, "{name} in pieces of {piece}");
                assert_eq!(
                    left, *rest,
                    "{name} in pieces of {piece}: bytes of the next response"
                );
            }
        }
    }

    #[test]
    fn malformed_responses_are_errors() {
        #[rustfmt::skip]
        let table: &[(&str, &[u8], ParseError)] = &[
            ("bad length", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", ParseError::ContentLength),
            ("two lengths", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", ParseError::ContentLength),
            ("bad chunk size", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", ParseError::Chunked),
            ("missing chunk CRLF", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy", ParseError::Chunked),
            ("huge chunk", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1234567890abcdef0\r\n", ParseError::Chunked),
            ("truncated body", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", ParseError::UnexpectedEof),
            ("truncated head", b"HTTP/1.1 200 OK\r\nContent-Len", ParseError::UnexpectedEof),
        ];
        for (name, wire, want) in table {
            assert_eq!(feed(wire, wire.len()).unwrap_err(), *want, "{name}");
        }
        assert!(matches!(
            feed(b"HTTX/1.1 200 OK\r\n\r\n", 64),
            Err(ParseError::Head(_))
        ));
    }

    #[test]
    fn large_body_streams_without_buffering() {
        let mut r = ResponseReader::new();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
        assert_eq!(
            r.advance(head).unwrap(),
            Step {
                consumed: head.len(),
                done: false
            }
        );
        let block = vec![0u8; 65536];
        for i in 0..16 {
            let step = r.advance(&block).unwrap();
            assert_eq!(
                step,
                Step {
                    consumed: 65536,
                    done: i == 15
                }
            );
        }
        assert_eq!(r.outcome(), ok(200, false, 1 << 20));
    }
}
