//! The request body, client → backend: framed as the client declared it, streamed with one
//! buffer whatever its length (u64), a read only after the last write completed (backpressure).
//! It runs at the same time as the response relay (see `forward`).

use tokio::time::Instant;

use super::ctx::WorkerCtx;
use super::session::Progress;
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{BodyFraming, ChunkedDecoder};
use crate::net::bufpool;
use crate::net::deadline::{read_by, write_by, ReadError, WriteError};
use crate::tls::Stream;

/// The part of a request body still to come from the client.
pub enum ReqBody {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl ReqBody {
    /// The state for a body framed as `framing`; `None` when the request has none.
    pub fn for_framing(framing: BodyFraming) -> Option<ReqBody> {
        match framing {
            BodyFraming::Length(n) => Some(ReqBody::Length(n)),
            BodyFraming::Chunked => Some(ReqBody::Chunked(ChunkedDecoder::new())),
            BodyFraming::None | BodyFraming::CloseDelimited => None,
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            ReqBody::Length(n) => *n == 0,
            ReqBody::Chunked(d) => d.is_done(),
        }
    }

    /// How many leading bytes of `input` belong to the body (and consumes them).
    pub fn frame(&mut self, input: &[u8]) -> Result<usize, Error> {
        match self {
            ReqBody::Length(rem) => {
                let take = (*rem).min(input.len() as u64);
                *rem -= take;
                Ok(take as usize)
            }
            ReqBody::Chunked(d) => d
                .feed(input, |_| {})
                .map(|(n, _)| n)
                .map_err(|e| e.into_error(Side::Client)),
        }
    }
}

pub struct ReqBodyDone {
    /// Bytes read past the end of the body: the start of the next (pipelined) request.
    pub leftover: Vec<u8>,
    /// The backend stopped taking the body (it may have answered early); the response side
    /// decides what the client sees.
    pub backend_stopped: Option<Error>,
}

/// Streams the rest of the request body from `client` to `backend`.
pub async fn pump_request(
    client: &Stream,
    backend: &Stream,
    mut body: ReqBody,
    ctx: &WorkerCtx,
    p: &Progress,
) -> Result<ReqBodyDone, Error> {
    let t = &ctx.shared.cfg.timeouts;
    let mut buf = bufpool::take();
    let mut leftover = Vec::new();
    while !body.is_done() {
        buf.clear();
        let (n, b) = match read_by(client, buf, Instant::now() + t.client_idle).await {
            Ok(r) => r,
            Err((ReadError::Timeout, _)) => {
                return Err(Error::new(
                    ErrorKind::ClientBodyTimeout,
                    "client stalled sending the request body",
                ))
            }
            Err((ReadError::Io(e), _)) => {
                return Err(Error::with_cause(
                    ErrorKind::ClientClosed,
                    "reading the request body",
                    e,
                ))
            }
        };
        buf = b;
        if n == 0 {
            return Err(Error::new(
                ErrorKind::ClientClosed,
                "client closed before sending the whole body",
            ));
        }
        let fwd = body.frame(&buf)?;
        if fwd < buf.len() {
            leftover.extend_from_slice(&buf[fwd..]);
            buf.truncate(fwd);
        }
        p.add_in(fwd);
        if fwd == 0 {
            continue;
        }
        buf = match write_by(backend, buf, Instant::now() + t.backend).await {
            Ok(b) => b,
            Err(WriteError::Timeout) => {
                let e = Error::new(
                    ErrorKind::BackendTimeout,
                    "backend stopped reading the request body",
                );
                return Ok(ReqBodyDone {
                    leftover,
                    backend_stopped: Some(e),
                });
            }
            Err(WriteError::Io(e)) => {
                let e =
                    Error::with_cause(ErrorKind::BackendProtocol, "writing the request body", e);
                return Ok(ReqBodyDone {
                    leftover,
                    backend_stopped: Some(e),
                });
            }
        };
    }
    bufpool::give(buf);
    Ok(ReqBodyDone {
        leftover,
        backend_stopped: None,
    })
}
