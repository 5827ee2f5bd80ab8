//! The response, backend → client: its head (1xx skipped: the proxy answered any `Expect`
//! itself), a look by the delegation gate, the framing the client can read, then the body,
//! streamed with backpressure. A pass-through piece is written to the client while the next is
//! read from the backend, so a large download is not paced by read, write, read, write in turn.

use tokio::time::Instant;

use super::ctx::WorkerCtx;
use super::session::Progress;
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{self, authz, BodyFraming, ChunkedDecoder, ResponseHead, ResponseMeta, Version};
use crate::net::bufpool;
use crate::net::deadline::{read_by, write_by, ReadError, WriteError};
use crate::tls::Stream;

/// What the client's request says about the response it may get.
pub struct RespReq<'a> {
    pub method: &'a [u8],
    pub client_version: Version,
    pub keep_alive: bool,
    /// The backend connection came from a pool: an empty reply may be a stale connection.
    pub reused: bool,
    /// Headers the proxy adds to the response (the final Negotiate token, Persistent-Auth).
    pub extra_headers: &'a [(&'static str, Vec<u8>)],
    /// Backend headers not passed on (see [`http1::ResponseInfo::drop_headers`]).
    pub drop_headers: &'static [&'static str],
    /// Sees the response head before the client does (constrained delegation).
    pub gate: Option<&'a dyn HeadGate>,
}

/// A look at the backend's response head before any of it reaches the client. With
/// constrained delegation the backend's 401 and its mutual-authentication token answer the
/// proxy's ticket, not anything the client did: they are handled on the backend leg and the
/// client never sees them (MS-SFU 3.1.5.2; unlike TMG, which redirected the client: KB 951508).
pub trait HeadGate {
    /// `negotiate`: the value of the backend's `WWW-Authenticate: Negotiate [<b64>]`.
    fn check(&self, status: u16, negotiate: Option<&[u8]>) -> Result<(), GateStop>;
}

/// Why the gate stopped a response.
pub enum GateStop {
    /// A 401: the backend did not take (or was not given) the delegated ticket.
    Unauthorized,
    /// Anything else wrong with the head (mutual authentication failed): answer this error.
    Fail(Error),
}

pub struct RespDone {
    /// The backend connection is at a clean message boundary and may carry another request.
    pub backend_reusable: bool,
    pub client_keep_alive: bool,
    /// A 401 with an NTLM/Negotiate challenge: the backend started connection-bound auth.
    pub conn_auth_challenge: bool,
}

pub enum RelayError {
    /// A reused connection closed without a byte of response: safe to retry elsewhere.
    EmptyReply(Error),
    /// The gate stopped a 401; nothing was sent to the client.
    BackendUnauthorized,
    Failed(Error),
}

impl RelayError {
    pub fn into_error(self) -> Error {
        match self {
            RelayError::EmptyReply(e) | RelayError::Failed(e) => e,
            RelayError::BackendUnauthorized => Error::new(
                ErrorKind::BackendProtocol,
                "backend_refused_delegation: the backend answered 401 to the delegated ticket",
            ),
        }
    }
}

/// A malformed chunked body from the backend (http1 maps it to a 502 protocol error).
fn chunk_failed(e: http1::ChunkError) -> RelayError {
    RelayError::Failed(e.into_error(Side::Backend))
}

fn backend_err(kind: ErrorKind, ctx: &'static str) -> RelayError {
    RelayError::Failed(Error::new(kind, ctx))
}

/// Response body state, as the backend frames it.
enum RespBody {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the backend closes.
    Close,
}

impl RespBody {
    fn for_framing(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::None => RespBody::None,
            BodyFraming::Length(n) => RespBody::Length(n),
            BodyFraming::Chunked => RespBody::Chunked(ChunkedDecoder::new()),
            BodyFraming::CloseDelimited => RespBody::Close,
        }
    }

    /// Consumes the leading part of `input` that belongs to the body: (bytes, body complete).
    fn frame(&mut self, input: &[u8]) -> Result<(usize, bool), RelayError> {
        match self {
            RespBody::None => Ok((0, true)),
            RespBody::Length(rem) => {
                let take = (*rem).min(input.len() as u64);
                *rem -= take;
                Ok((take as usize, *rem == 0))
            }
            RespBody::Chunked(d) => d.feed(input, |_| {}).map_err(chunk_failed),
            RespBody::Close => Ok((input.len(), false)),
        }
    }

    /// Like [`RespBody::frame`], but appends only the payload to `out` (chunk framing
    /// removed), for clients that cannot read chunked.
    fn frame_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), RelayError> {
        match self {
            RespBody::Chunked(d) => d
                .feed(input, |data| out.extend_from_slice(data))
                .map_err(chunk_failed),
            _ => {
                let (n, done) = self.frame(input)?;
                out.extend_from_slice(&input[..n]);
                Ok((n, done))
            }
        }
    }
}

/// How the body goes to the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reframe {
    /// As the backend framed it.
    Pass,
    /// A close-delimited body, chunked for an HTTP/1.1 client so its connection survives.
    Rechunk,
    /// A chunked body for an HTTP/1.0 client, which cannot read chunked: the data, delimited
    /// by our close.
    Dechunk,
}

/// One response on its way to the client.
struct Relay<'a> {
    client: &'a Stream,
    backend: &'a Stream,
    ctx: &'a WorkerCtx,
    p: &'a Progress,
    reframe: Reframe,
    body: RespBody,
    /// The backend connection is still at a message boundary (no bytes past the response).
    backend_clean: bool,
}

/// Reads the backend's response and streams it to the client.
pub async fn relay_response(
    client: &Stream,
    backend: &Stream,
    req: RespReq<'_>,
    ctx: &WorkerCtx,
    p: &Progress,
) -> Result<RespDone, RelayError> {
    let (rbuf, head, meta) = read_head(backend, &req, ctx).await?;
    let reframe = match (meta.framing, req.client_version) {
        (BodyFraming::CloseDelimited, Version::Http11) => Reframe::Rechunk,
        (BodyFraming::Chunked, Version::Http10) => Reframe::Dechunk,
        _ => Reframe::Pass,
    };
    let client_framing = match reframe {
        Reframe::Rechunk => BodyFraming::Chunked,
        Reframe::Dechunk => BodyFraming::CloseDelimited,
        Reframe::Pass => meta.framing,
    };
    let client_keep_alive =
        req.keep_alive && client_framing != BodyFraming::CloseDelimited && !ctx.is_draining();
    let challenges = || head.headers_named(&rbuf, "www-authenticate");
    let conn_auth_challenge = head.status == 401 && challenges().any(authz::is_connection_bound);
    if let Some(gate) = req.gate {
        let negotiate = challenges().find(|v| authz::split(v).scheme == authz::Scheme::Negotiate);
        match gate.check(head.status, negotiate) {
            Ok(()) => {}
            Err(GateStop::Unauthorized) => return Err(RelayError::BackendUnauthorized),
            Err(GateStop::Fail(e)) => return Err(RelayError::Failed(e)),
        }
    }
    p.status.set(head.status);
    let mut out = bufpool::take();
    let info = http1::ResponseInfo {
        framing: client_framing,
        keep_alive: client_keep_alive,
        client_version: req.client_version,
        drop_headers: req.drop_headers,
    };
    http1::encode_response_head(&rbuf, &head, &info, &mut out);
    add_headers(&mut out, req.extra_headers);
    let mut r = Relay {
        client,
        backend,
        ctx,
        p,
        reframe,
        body: RespBody::for_framing(meta.framing),
        backend_clean: meta.keep_alive && meta.framing != BodyFraming::CloseDelimited,
    };
    let done = r.first_piece(&rbuf[head.head_len..], &mut out)?;
    p.response_started.set(true);
    let n_out = out.len();
    let out = write_client(client, out, ctx).await?;
    p.add_out(n_out);
    let done = r.rest(done, rbuf, out).await?;
    Ok(RespDone {
        backend_reusable: r.backend_clean && done,
        client_keep_alive,
        conn_auth_challenge,
    })
}

/// Reads until a complete final (non-1xx) response head is in the returned buffer.
async fn read_head(
    backend: &Stream,
    req: &RespReq<'_>,
    ctx: &WorkerCtx,
) -> Result<(Vec<u8>, ResponseHead, ResponseMeta), RelayError> {
    let mut rbuf = bufpool::take();
    let deadline = Instant::now() + ctx.shared.cfg.timeouts.backend;
    loop {
        if !rbuf.is_empty() {
            match http1::parse_response(&rbuf, &ctx.limits) {
                Ok(Some(h)) if h.status == 101 => {
                    return Err(backend_err(
                        ErrorKind::BackendProtocol,
                        "backend switched protocols unasked",
                    ))
                }
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    rbuf.drain(..h.head_len);
                    continue;
                }
                Ok(Some(h)) => match http1::response_meta(&rbuf, &h, req.method) {
                    Ok(m) => return Ok((rbuf, h, m)),
                    Err(e) => return Err(RelayError::Failed(e.into_error(Side::Backend))),
                },
                Ok(None) => {}
                Err(e) => return Err(RelayError::Failed(e.into_error(Side::Backend))),
            }
        }
        if rbuf.len() == rbuf.capacity() {
            let grow = rbuf.capacity().min(ctx.limits.max_head_bytes + 1);
            rbuf.reserve(grow);
        }
        let empty = rbuf.is_empty();
        rbuf = match read_by(backend, rbuf, deadline).await {
            Ok((0, _)) if empty && req.reused => {
                return Err(RelayError::EmptyReply(Error::new(
                    ErrorKind::BackendProtocol,
                    "pooled backend connection closed without a response",
                )))
            }
            Ok((0, _)) => {
                return Err(backend_err(
                    ErrorKind::BackendProtocol,
                    "backend closed before a complete response head",
                ))
            }
            Ok((_, b)) => b,
            Err((ReadError::Timeout, _)) => {
                return Err(backend_err(
                    ErrorKind::BackendTimeout,
                    "backend did not answer within --backend-timeout",
                ))
            }
            Err((ReadError::Io(e), _)) => {
                let (stale, what) = if empty && req.reused {
                    (true, "pooled backend connection failed before a response")
                } else {
                    (false, "reading the response head")
                };
                let e = Error::with_cause(ErrorKind::BackendProtocol, what, e);
                return Err(if stale {
                    RelayError::EmptyReply(e)
                } else {
                    RelayError::Failed(e)
                });
            }
        };
    }
}

/// Inserts the proxy's own response headers before the blank line that ends the head.
fn add_headers(out: &mut Vec<u8>, extra: &[(&'static str, Vec<u8>)]) {
    if extra.is_empty() || !out.ends_with(b"\r\n\r\n") {
        return;
    }
    out.truncate(out.len() - 2);
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

impl Relay<'_> {
    /// Appends to `out` the body bytes that came with the head; whether the body is complete.
    fn first_piece(&mut self, avail: &[u8], out: &mut Vec<u8>) -> Result<bool, RelayError> {
        let (fwd, done) = if self.reframe == Reframe::Dechunk {
            // The payload is appended to `out` as it is decoded.
            self.body.frame_data(avail, out)?
        } else {
            self.body.frame(avail)?
        };
        if fwd < avail.len() {
            // Bytes after the end of the response: the backend is out of step, don't reuse it.
            self.backend_clean = false;
        }
        match self.reframe {
            Reframe::Rechunk if fwd > 0 => {
                http1::write_chunk_header(fwd, out);
                out.extend_from_slice(&avail[..fwd]);
                out.extend_from_slice(http1::CHUNK_END);
            }
            Reframe::Pass => out.extend_from_slice(&avail[..fwd]),
            Reframe::Rechunk | Reframe::Dechunk => {}
        }
        Ok(done)
    }

    /// Streams the rest of the body (if `done` is false), then gives the buffers back; whether
    /// the body ended at its framing's end (a close-delimited body ends with the backend's
    /// close and is never complete in that sense).
    async fn rest(
        &mut self,
        mut done: bool,
        mut rbuf: Vec<u8>,
        mut out: Vec<u8>,
    ) -> Result<bool, RelayError> {
        let t = &self.ctx.shared.cfg.timeouts;
        let mut spare: Option<Vec<u8>> = None;
        // `rbuf` already holds the next piece (read during the last write).
        let mut have_next = false;
        while !done {
            if !have_next {
                rbuf.clear();
                rbuf = read_body(self.backend, rbuf, Instant::now() + t.backend).await?;
            }
            have_next = false;
            if rbuf.is_empty() {
                self.backend_closed(&mut out).await?;
                break;
            }
            if self.reframe != Reframe::Pass {
                (done, out) = self.reframed_piece(&rbuf, out).await?;
                continue;
            }
            let (fwd, d) = self.body.frame(&rbuf)?;
            done = d;
            if fwd < rbuf.len() {
                self.backend_clean = false;
                rbuf.truncate(fwd);
            }
            if fwd == 0 {
                continue;
            }
            if done {
                // The read buffer itself goes to the client, no copy.
                rbuf = write_client(self.client, rbuf, self.ctx).await?;
                self.p.add_out(fwd);
            } else {
                let mut next = spare.take().unwrap_or_else(bufpool::take);
                next.clear();
                // Either side failing ends both at once (the relay is over either way).
                let (written, next) = futures_util::future::try_join(
                    write_client(self.client, rbuf, self.ctx),
                    read_body(self.backend, next, Instant::now() + t.backend),
                )
                .await?;
                self.p.add_out(fwd);
                spare = Some(written);
                rbuf = next;
                have_next = true;
            }
        }
        bufpool::give(rbuf);
        if let Some(b) = spare {
            bufpool::give(b);
        }
        bufpool::give(out);
        Ok(done)
    }

    /// The backend closed: the end of a close-delimited body (chunked to the client: its last
    /// chunk now), or a truncated response.
    async fn backend_closed(&mut self, out: &mut Vec<u8>) -> Result<(), RelayError> {
        if !matches!(self.body, RespBody::Close) {
            return Err(backend_err(
                ErrorKind::BackendProtocol,
                "backend closed mid-response",
            ));
        }
        if self.reframe == Reframe::Rechunk {
            let mut buf = std::mem::take(out);
            buf.clear();
            buf.extend_from_slice(http1::LAST_CHUNK);
            *out = write_client(self.client, buf, self.ctx).await?;
            self.p.add_out(http1::LAST_CHUNK.len());
        }
        Ok(())
    }

    /// One piece of a body whose framing changes on the way (re- or de-chunked), copied
    /// through `out`. Returns whether the body is complete, and `out` back.
    async fn reframed_piece(
        &mut self,
        piece: &[u8],
        mut out: Vec<u8>,
    ) -> Result<(bool, Vec<u8>), RelayError> {
        out.clear();
        let (fwd, done) = if self.reframe == Reframe::Dechunk {
            self.body.frame_data(piece, &mut out)?
        } else {
            let (fwd, done) = self.body.frame(piece)?;
            if fwd > 0 {
                http1::write_chunk_header(fwd, &mut out);
                out.extend_from_slice(&piece[..fwd]);
                out.extend_from_slice(http1::CHUNK_END);
            }
            (fwd, done)
        };
        if fwd < piece.len() {
            self.backend_clean = false;
        }
        if !out.is_empty() {
            let n = out.len();
            out = write_client(self.client, out, self.ctx).await?;
            self.p.add_out(n);
        }
        Ok((done, out))
    }
}

/// Reads the next piece of a response body into `buf` (cleared by the caller): an empty
/// result is the backend's EOF.
async fn read_body(
    backend: &Stream,
    buf: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, RelayError> {
    match read_by(backend, buf, deadline).await {
        Ok((_, b)) => Ok(b),
        Err((ReadError::Timeout, _)) => Err(backend_err(
            ErrorKind::BackendTimeout,
            "backend stalled mid-response",
        )),
        Err((ReadError::Io(e), _)) => Err(RelayError::Failed(Error::with_cause(
            ErrorKind::BackendProtocol,
            "reading the response body",
            e,
        ))),
    }
}

async fn write_client(
    client: &Stream,
    buf: Vec<u8>,
    ctx: &WorkerCtx,
) -> Result<Vec<u8>, RelayError> {
    let deadline = Instant::now() + ctx.shared.cfg.timeouts.client_idle;
    write_by(client, buf, deadline).await.map_err(|e| {
        RelayError::Failed(match e {
            WriteError::Timeout => Error::new(
                ErrorKind::ClientBodyTimeout,
                "client stopped reading the response",
            ),
            WriteError::Io(e) => {
                Error::with_cause(ErrorKind::ClientClosed, "writing the response", e)
            }
        })
    })
}
