//! Phase 1: reading a request head. The first head must arrive within `--header-timeout` of
//! the accept; later ones may wait `--client-idle-timeout` for their first byte, then get the
//! header timeout for the rest. A draining worker closes a connection between requests.

use tokio::time::Instant;

use super::ctx::WorkerCtx;
use super::{Client, HEAD_BUF};
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{self, RequestHead};
use crate::net::deadline::{read_by, ReadError};
use crate::net::Io;

/// Reads until a complete request head is in `c.buf`. `Ok(None)`: the client went away (or
/// the worker is draining) between requests, which is not an error.
pub(super) async fn read_head(
    c: &mut Client,
    ctx: &WorkerCtx,
    accepted: Instant,
) -> Result<Option<RequestHead>, Error> {
    let t = &ctx.shared.cfg.timeouts;
    // The first request's head must arrive within the header timeout of the accept; later
    // ones within the header timeout of their first byte, after at most the idle timeout.
    let mut head_deadline = (c.requests == 0).then(|| accepted + t.header);
    loop {
        if !c.buf.is_empty() {
            match http1::parse_request(&c.buf, &ctx.limits) {
                Ok(Some(h)) => {
                    c.refused_body = None;
                    return Ok(Some(h));
                }
                Ok(None) => {}
                // Not a request: the body of the request we refused with 401, sent anyway.
                Err(_) if c.refused_body.is_some() => {
                    let left = c.refused_body.unwrap_or(0);
                    let k = (left.min(c.buf.len() as u64)) as usize;
                    c.buf.drain(..k);
                    c.refused_body = (left > k as u64).then_some(left - k as u64);
                    continue;
                }
                Err(e) => return Err(e.into_error(Side::Client)),
            }
            head_deadline.get_or_insert_with(|| Instant::now() + t.header);
        }
        grow(&mut c.buf, ctx.limits.max_head_bytes);
        let waiting = c.buf.is_empty();
        let deadline = match head_deadline {
            Some(d) if !waiting || c.requests == 0 => d,
            _ => Instant::now() + t.client_idle,
        };
        let buf = std::mem::take(&mut c.buf);
        let res = if waiting {
            // Between requests: a draining worker closes the connection right away.
            tokio::select! {
                r = read_by(&c.stream, buf, deadline) => r,
                _ = ctx.drain_signal() => {
                    c.stream.shutdown();
                    return Ok(None);
                }
            }
        } else {
            read_by(&c.stream, buf, deadline).await
        };
        match res {
            Ok((0, buf)) => {
                c.buf = buf;
                if waiting {
                    return Ok(None);
                }
                return Err(Error::new(
                    ErrorKind::ClientClosed,
                    "client closed mid-head",
                ));
            }
            Ok((_, buf)) => c.buf = buf,
            Err((ReadError::Timeout, _)) if waiting && c.requests > 0 => return Ok(None),
            Err((ReadError::Timeout, _)) => {
                return Err(Error::new(
                    ErrorKind::ClientHeaderTimeout,
                    "request head not received within --header-timeout",
                ))
            }
            Err((ReadError::Io(_), _)) if waiting => return Ok(None),
            Err((ReadError::Io(e), _)) => {
                return Err(Error::with_cause(
                    ErrorKind::ClientClosed,
                    "reading the head",
                    e,
                ))
            }
        }
    }
}

/// Makes room for the next read of a head when the buffer is full: doubling, but never past
/// one byte over the head limit (enough for the parser to see the head is too large).
fn grow(buf: &mut Vec<u8>, max_head_bytes: usize) {
    if buf.len() == buf.capacity() {
        let room = buf
            .capacity()
            .max(HEAD_BUF)
            .min(max_head_bytes + 1 - buf.len().min(max_head_bytes));
        buf.reserve(room.max(1));
    }
}
