//! Moving bodies: the client's request body to the backend, and the backend's response (head
//! and body) to the client. The two run at the same time (see `proxy::exchange`), each with its
//! own buffer and its own backpressure: a direction reads again only after its last write
//! completed, so memory per transfer is one buffer whatever the body's length (u64).

use std::cell::Cell;

use tokio::time::Instant;

use super::ctx::WorkerCtx;
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{self, BodyFraming, ChunkedDecoder, Version};
use crate::net::bufpool;
use crate::net::deadline::{read_by, write_by, ReadErr, WriteErr};
use crate::tls::Stream;

/// What both directions report as they go; read by the access log and the error path.
#[derive(Default)]
pub struct Progress {
    pub status: Cell<u16>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Set once any byte of the response head went to the client: from then on an error can
    /// only close the connection.
    pub response_started: Cell<bool>,
}

impl Progress {
    fn add_in(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }
    fn add_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}

/// The part of a request body still to come from the client.
pub enum ReqBody {
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl ReqBody {
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
            Err((ReadErr::Timeout, _)) => {
                return Err(Error::new(
                    ErrorKind::ClientBodyTimeout,
                    "client stalled sending the request body",
                ))
            }
            Err((ReadErr::Io(e), _)) => {
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
            Err(WriteErr::Timeout) => {
                let e = Error::new(
                    ErrorKind::BackendTimeout,
                    "backend stopped reading the request body",
                );
                return Ok(ReqBodyDone {
                    leftover,
                    backend_stopped: Some(e),
                });
            }
            Err(WriteErr::Io(e)) => {
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

pub enum RelayErr {
    /// A reused connection closed without a byte of response: safe to retry elsewhere.
    EmptyReply(Error),
    /// The gate stopped a 401; nothing was sent to the client.
    BackendUnauthorized,
    Failed(Error),
}

impl RelayErr {
    pub fn into_error(self) -> Error {
        match self {
            RelayErr::EmptyReply(e) | RelayErr::Failed(e) => e,
            RelayErr::BackendUnauthorized => Error::new(
                ErrorKind::BackendProtocol,
                "backend_refused_delegation: the backend answered 401 to the delegated ticket",
            ),
        }
    }
}

/// A malformed chunked body from the backend (http1 maps it to a 502 protocol error).
fn chunk_failed(e: http1::ChunkError) -> RelayErr {
    RelayErr::Failed(e.into_error(Side::Backend))
}

fn backend_err(kind: ErrorKind, ctx: &'static str) -> RelayErr {
    RelayErr::Failed(Error::new(kind, ctx))
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
    /// Consumes the leading part of `input` that belongs to the body: (bytes, body complete).
    fn frame(&mut self, input: &[u8]) -> Result<(usize, bool), RelayErr> {
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
    fn frame_data(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), RelayErr> {
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

/// Reads the backend's response and streams it to the client.
pub async fn relay_response(
    client: &Stream,
    backend: &Stream,
    req: RespReq<'_>,
    ctx: &WorkerCtx,
    p: &Progress,
) -> Result<RespDone, RelayErr> {
    let t = &ctx.shared.cfg.timeouts;
    let mut rbuf = bufpool::take();
    let head_deadline = Instant::now() + t.backend;

    // ---- the head (skipping 1xx: the proxy answered any Expect itself) ----
    let (head, meta) = loop {
        if !rbuf.is_empty() {
            match http1::parse_response(&rbuf, &ctx.limits) {
                Ok(Some(h)) if (100..200).contains(&h.status) => {
                    if h.status == 101 {
                        return Err(backend_err(
                            ErrorKind::BackendProtocol,
                            "backend switched protocols unasked",
                        ));
                    }
                    rbuf.drain(..h.head_len);
                    continue;
                }
                Ok(Some(h)) => match http1::response_meta(&rbuf, &h, req.method) {
                    Ok(m) => break (h, m),
                    Err(e) => return Err(RelayErr::Failed(e.into_error(Side::Backend))),
                },
                Ok(None) => {}
                Err(e) => return Err(RelayErr::Failed(e.into_error(Side::Backend))),
            }
        }
        if rbuf.len() == rbuf.capacity() {
            let grow = rbuf.capacity().min(ctx.limits.max_head_bytes + 1);
            rbuf.reserve(grow);
        }
        let had = rbuf.len();
        match read_by(backend, rbuf, head_deadline).await {
            Ok((0, _)) if had == 0 && req.reused => {
                return Err(RelayErr::EmptyReply(Error::new(
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
            Ok((_, b)) => rbuf = b,
            Err((ReadErr::Timeout, _)) => {
                return Err(backend_err(
                    ErrorKind::BackendTimeout,
                    "backend did not answer within --backend-timeout",
                ))
            }
            Err((ReadErr::Io(e), _)) if had == 0 && req.reused => {
                return Err(RelayErr::EmptyReply(Error::with_cause(
                    ErrorKind::BackendProtocol,
                    "pooled backend connection failed before a response",
                    e,
                )))
            }
            Err((ReadErr::Io(e), _)) => {
                return Err(RelayErr::Failed(Error::with_cause(
                    ErrorKind::BackendProtocol,
                    "reading the response head",
                    e,
                )))
            }
        }
    };

    // ---- framing toward the client ----
    // A close-delimited response becomes chunked for HTTP/1.1 clients so their connection
    // survives; HTTP/1.0 clients get it close-delimited.
    let rechunk =
        meta.framing == BodyFraming::CloseDelimited && req.client_version == Version::Http11;
    // HTTP/1.0 clients cannot read chunked: they get the data, delimited by our close.
    let dechunk = meta.framing == BodyFraming::Chunked && req.client_version == Version::Http10;
    let client_framing = if rechunk {
        BodyFraming::Chunked
    } else if dechunk {
        BodyFraming::CloseDelimited
    } else {
        meta.framing
    };
    let client_keep_alive =
        req.keep_alive && client_framing != BodyFraming::CloseDelimited && !ctx.is_draining();
    let conn_auth_challenge = head.status == 401
        && head
            .headers_named(&rbuf, "www-authenticate")
            .any(http1::authz::is_connection_bound);
    if let Some(gate) = req.gate {
        let negotiate = head
            .headers_named(&rbuf, "www-authenticate")
            .find(|v| http1::authz::split(v).scheme == http1::authz::Scheme::Negotiate);
        match gate.check(head.status, negotiate) {
            Ok(()) => {}
            Err(GateStop::Unauthorized) => return Err(RelayErr::BackendUnauthorized),
            Err(GateStop::Fail(e)) => return Err(RelayErr::Failed(e)),
        }
    }
    p.status.set(head.status);

    let mut out = bufpool::take();
    http1::encode_response_head(
        &rbuf,
        &head,
        &http1::ResponseInfo {
            framing: client_framing,
            keep_alive: client_keep_alive,
            client_version: req.client_version,
            drop_headers: req.drop_headers,
        },
        &mut out,
    );
    if !req.extra_headers.is_empty() && out.ends_with(b"\r\n\r\n") {
        // Insert before the blank line that ends the head.
        out.truncate(out.len() - 2);
        for (name, value) in req.extra_headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut body = match meta.framing {
        BodyFraming::None => RespBody::None,
        BodyFraming::Length(n) => RespBody::Length(n),
        BodyFraming::Chunked => RespBody::Chunked(ChunkedDecoder::new()),
        BodyFraming::CloseDelimited => RespBody::Close,
    };
    let mut backend_clean = meta.keep_alive && meta.framing != BodyFraming::CloseDelimited;

    let avail = &rbuf[head.head_len..];
    let (fwd, mut done) = if dechunk {
        // The payload is appended to `out` as it is decoded.
        body.frame_data(avail, &mut out)?
    } else {
        body.frame(avail)?
    };
    if fwd < avail.len() {
        // Bytes after the end of the response: the backend is out of step, don't reuse it.
        backend_clean = false;
    }
    if rechunk {
        if fwd > 0 {
            http1::write_chunk_header(fwd, &mut out);
            out.extend_from_slice(&avail[..fwd]);
            out.extend_from_slice(http1::CHUNK_END);
        }
    } else if !dechunk {
        out.extend_from_slice(&avail[..fwd]);
    }
    p.response_started.set(true);
    let n_out = out.len();
    let mut out = write_client(client, out, ctx).await?;
    p.add_out(n_out);

    // ---- the rest of the body ----
    // Pass-through pieces are written to the client while the next piece is read from the
    // backend (a second buffer, taken only for bodies longer than one read), so a large
    // download is not paced by read, write, read, write in turn.
    let mut spare: Option<Vec<u8>> = None;
    // `rbuf` already holds the next piece (read during the last write).
    let mut have_next = false;
    while !done {
        if !have_next {
            rbuf.clear();
            rbuf = read_body(backend, rbuf, Instant::now() + t.backend).await?;
        }
        have_next = false;
        let n = rbuf.len();
        if n == 0 {
            if matches!(body, RespBody::Close) {
                if rechunk {
                    out.clear();
                    out.extend_from_slice(http1::LAST_CHUNK);
                    out = write_client(client, out, ctx).await?;
                    p.add_out(http1::LAST_CHUNK.len());
                }
                break;
            }
            return Err(backend_err(
                ErrorKind::BackendProtocol,
                "backend closed mid-response",
            ));
        }
        if dechunk {
            out.clear();
            let (fwd, d) = body.frame_data(&rbuf, &mut out)?;
            done = d;
            if fwd < rbuf.len() {
                backend_clean = false;
            }
            if !out.is_empty() {
                let n = out.len();
                out = write_client(client, out, ctx).await?;
                p.add_out(n);
            }
            continue;
        }
        let (fwd, d) = body.frame(&rbuf)?;
        done = d;
        if fwd < rbuf.len() {
            backend_clean = false;
            rbuf.truncate(fwd);
        }
        if fwd == 0 {
            continue;
        }
        if rechunk {
            out.clear();
            http1::write_chunk_header(fwd, &mut out);
            out.extend_from_slice(&rbuf);
            out.extend_from_slice(http1::CHUNK_END);
            let n = out.len();
            out = write_client(client, out, ctx).await?;
            p.add_out(n);
        } else if done {
            // Pass-through: the read buffer itself goes to the client, no copy.
            rbuf = write_client(client, rbuf, ctx).await?;
            p.add_out(fwd);
        } else {
            let mut next = spare.take().unwrap_or_else(bufpool::take);
            next.clear();
            // Either side failing ends both at once (the relay is over either way).
            let (written, next) = futures_util::future::try_join(
                write_client(client, rbuf, ctx),
                read_body(backend, next, Instant::now() + t.backend),
            )
            .await?;
            p.add_out(fwd);
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
    Ok(RespDone {
        backend_reusable: backend_clean && done,
        client_keep_alive,
        conn_auth_challenge,
    })
}

/// Reads the next piece of a response body into `buf` (cleared by the caller): an empty
/// result is the backend's EOF.
async fn read_body(backend: &Stream, buf: Vec<u8>, deadline: Instant) -> Result<Vec<u8>, RelayErr> {
    match read_by(backend, buf, deadline).await {
        Ok((_, b)) => Ok(b),
        Err((ReadErr::Timeout, _)) => Err(backend_err(
            ErrorKind::BackendTimeout,
            "backend stalled mid-response",
        )),
        Err((ReadErr::Io(e), _)) => Err(RelayErr::Failed(Error::with_cause(
            ErrorKind::BackendProtocol,
            "reading the response body",
            e,
        ))),
    }
}

async fn write_client(client: &Stream, buf: Vec<u8>, ctx: &WorkerCtx) -> Result<Vec<u8>, RelayErr> {
    let deadline = Instant::now() + ctx.shared.cfg.timeouts.client_idle;
    write_by(client, buf, deadline).await.map_err(|e| {
        RelayErr::Failed(match e {
            WriteErr::Timeout => Error::new(
                ErrorKind::ClientBodyTimeout,
                "client stopped reading the response",
            ),
            WriteErr::Io(e) => {
                Error::with_cause(ErrorKind::ClientClosed, "writing the response", e)
            }
        })
    })
}
