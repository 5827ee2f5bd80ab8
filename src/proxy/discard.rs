//! Reading and dropping what a client still sends: the rest of a body refused with 401, and
//! whatever follows an error answer before the connection closes. One loop for both, bounded
//! in bytes and in time, so a client can neither hold the connection nor make us buffer.

use std::time::Duration;

use tokio::time::Instant;

use super::pump::ReqBody;
use super::session::Progress;
use crate::net::bufpool;
use crate::net::deadline::read_by;
use crate::tls::Stream;

/// Bytes and time spent reading a rejected request's leftovers before closing, so the client
/// reads our error response instead of a reset (a close with unread data sends RST).
const LINGER_BYTES: u64 = 1 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// How long the reads may take.
pub(super) enum Deadline {
    /// All of them together, by then.
    Total(Instant),
    /// Each read within this much of its start.
    PerRead(Duration),
}

/// Reads and drops input until `body` ends (or, with no body, until the client closes).
/// `seen`: body bytes already dropped. Returns the bytes read past the body's end (the start
/// of the next request), or `None` if the client closed, stalled, broke the framing, or sent
/// more than `limit` bytes first: the connection is then over.
pub(super) async fn discard(
    stream: &Stream,
    mut body: Option<ReqBody>,
    mut seen: u64,
    limit: u64,
    deadline: Deadline,
    p: Option<&Progress>,
) -> Option<Vec<u8>> {
    let mut leftover = Vec::new();
    let mut buf = bufpool::take();
    while !body.as_ref().is_some_and(ReqBody::is_done) {
        buf.clear();
        let by = match deadline {
            Deadline::Total(at) => at,
            Deadline::PerRead(d) => Instant::now() + d,
        };
        buf = match read_by(stream, buf, by).await {
            Ok((0, _)) | Err(_) => return None,
            Ok((_, b)) => b,
        };
        let k = match body.as_mut() {
            Some(b) => b.frame(&buf).ok()?,
            None => buf.len(),
        };
        seen += k as u64;
        if let Some(p) = p {
            p.add_in(k);
        }
        // A chunked body announces no length: it is bounded here.
        if seen > limit {
            return None;
        }
        leftover.extend_from_slice(&buf[k..]);
    }
    bufpool::give(buf);
    Some(leftover)
}

/// After a half-close: reads and discards what the client still sends (bounded in bytes and
/// time), so the error response is read before the connection is torn down.
pub(super) async fn linger(stream: &Stream) {
    let until = Deadline::Total(Instant::now() + LINGER_TIME);
    let _ = discard(stream, None, 0, LINGER_BYTES, until, None).await;
}
