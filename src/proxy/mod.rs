//! The phases of a client connection, fixed and in one place. Each phase is a function in its
//! own file, over the request's `Session`:
//!
//! ```text
//! read_head ─► route ─► authenticate ─┬─► (401 answered: challenge) ─────────────────► log
//!                                     └─► choose backend ─► forward: ┌ connect (pool)
//!                                                                    │ ticket (delegation)
//!                                                                    │ send head [100]
//!                                                                    │ pump ║ relay
//!                                                                    └ retry? (retry.rs)
//!                                                                             ─► log ─► keep-alive?
//! ```
//!
//! - `read_head`: reads a complete request head under the header/idle timeouts.
//! - `route`: framing, the route for host and path, and which of its backends serves.
//! - `authenticate`: the auth module's verdict; `challenge` answers a 401 without losing
//!   the connection the NTLM handshake needs.
//! - `forward`: the backend leg: a connection from the pool ([`crate::backend`]), the user's
//!   ticket (`ticket`), the head, then both bodies at once (`pump` ║ `relay`); a failed
//!   attempt is retried only as `retry` says.
//! - `log`: the access-log line and the metrics; `respond`: every error's answer.
//!
//! Connection state (`Client`) is kept apart from request state (`Session`): the head
//! buffer, the count of requests, the authentication state and a backend connection bound to
//! this client (connection-bound authentication passed through) live as long as the TCP
//! connection; everything else lives for one request.

mod authenticate;
mod challenge;
pub mod ctx;
mod discard;
mod forward;
mod log;
mod pump;
mod read_head;
mod relay;
pub mod respond;
mod retry;
mod route;
mod session;
mod ticket;

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant as StdInstant;

use tokio::time::Instant;

use self::authenticate::Authenticated;
use self::ctx::WorkerCtx;
use self::session::{Done, Facts, Failed, Next, Progress, Session};
use crate::auth::ConnAuth;
use crate::backend::Private;
use crate::error::{Error, Side};
use crate::http1::RequestHead;
use crate::net::Io;
use crate::tls::Stream;

/// Initial head buffer of a connection. An idle keep-alive connection holds only this (and its
/// task): large buffers are borrowed from the per-core pool while a body moves.
const HEAD_BUF: usize = 4096;

/// State of one client connection.
struct Client {
    stream: Stream,
    /// The client: the socket's peer, or the source address of a trusted balancer's PROXY
    /// protocol header (read at accept). Everything that names the client uses this.
    peer: SocketAddr,
    /// The current request head followed by any bytes already read past it.
    buf: Vec<u8>,
    requests: u64,
    /// A backend connection bound to this client because it carried the client's own
    /// connection-oriented authentication (NTLM/Negotiate passed through).
    private_backend: Private,
    /// Who the client is, as far as this connection has shown (NTLM binds the connection).
    auth: ConnAuth,
    /// Declared body length of a request refused with 401 before its body was read (the
    /// client asked `Expect: 100-continue`). If the client sends the body anyway (RFC 9110
    /// §10.1.1 allows it), it arrives where the next head is expected and is dropped.
    refused_body: Option<u64>,
}

/// Serves one accepted client connection until it closes.
pub async fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    ctx: Rc<WorkerCtx>,
    accepted: Instant,
) {
    let mut c = Client {
        stream,
        peer,
        buf: Vec::with_capacity(HEAD_BUF),
        requests: 0,
        private_backend: Private::default(),
        auth: ConnAuth::Anonymous,
        refused_body: None,
    };
    let mut next = Next::Close;
    loop {
        let started = StdInstant::now();
        let head = match read_head::read_head(&mut c, &ctx, accepted).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                next = failed(&mut c, &ctx, None, started, &e, false).await;
                break;
            }
        };
        c.requests += 1;
        next = handle_request(&mut c, &ctx, head, started).await;
        if !matches!(next, Next::KeepAlive) {
            break;
        }
        // Give back what a large head took; an idle connection keeps HEAD_BUF.
        if c.buf.capacity() > 2 * HEAD_BUF && c.buf.len() <= HEAD_BUF {
            c.buf.shrink_to(HEAD_BUF);
        }
    }
    c.private_backend.close();
    // Half-close first: the client sees the end of our response; with Linger we then read
    // (and drop) what it still sends, so our close does not turn into a reset that destroys
    // the response in its receive buffer.
    c.stream.close().await;
    if matches!(next, Next::Linger) {
        discard::linger(&c.stream).await;
    }
}

/// Runs the phases of one request, then logs it (or answers its error).
async fn handle_request(
    c: &mut Client,
    ctx: &WorkerCtx,
    head: RequestHead,
    started: StdInstant,
) -> Next {
    let mut s = Session::new(head, started);
    // Boxed: the exchange's state is large (both body pumps), and keeping it out of the
    // connection's future keeps an idle keep-alive connection small.
    match Box::pin(phases(c, ctx, &mut s)).await {
        Ok((next, leftover)) => {
            let note = s.facts.auth_note.as_ref();
            log::request(
                c,
                ctx,
                Some(&s.head),
                s.started,
                &s.progress,
                &s.facts,
                note,
            );
            c.buf.drain(..s.consumed.min(c.buf.len()));
            c.buf.extend_from_slice(&leftover);
            next
        }
        Err((e, framing_known)) => failed(c, ctx, Some(&s), s.started, &e, framing_known).await,
    }
}

/// A request that failed (`s`: `None` when not even its head was read): its answer, its log
/// line, and what becomes of the connection.
async fn failed(
    c: &mut Client,
    ctx: &WorkerCtx,
    s: Option<&Session>,
    started: StdInstant,
    e: &Error,
    framing_known: bool,
) -> Next {
    let no_progress = Progress::default();
    let p = s.map_or(&no_progress, |s| &s.progress);
    let head = s.map(|s| &s.head);
    let head_request = head.is_some_and(|h| h.method(&c.buf) == b"HEAD");
    let next = respond::answer_error(c, ctx, e, framing_known, head_request, p).await;
    // A request whose framing was lost is logged without what the phases learnt (as if it had
    // failed before them): its identity and backend are not vouched for.
    let no_facts = Facts::default();
    let facts = s.filter(|_| framing_known).map_or(&no_facts, |s| &s.facts);
    log::request(c, ctx, head, started, p, facts, Some(e));
    if let (Next::KeepAlive, Some(h)) = (&next, head) {
        c.buf.drain(..h.head_len.min(c.buf.len()));
    }
    match e.side() {
        Side::Client | Side::Internal => {
            tracing::debug!(peer = %c.peer, error = %e, "request failed")
        }
        _ => tracing::info!(peer = %c.peer, error = %e, "request failed"),
    }
    next
}

/// The fixed phase sequence of one request.
async fn phases(c: &mut Client, ctx: &WorkerCtx, s: &mut Session) -> Result<Done, Failed> {
    let req = route::route(c, ctx, &s.head)?;
    let (protected, resp_headers) = match authenticate::authenticate(c, ctx, s, &req).await? {
        Authenticated::Yes { protected, headers } => (protected, headers),
        Authenticated::Answered(done) => return Ok(done),
    };
    let backend = route::choose_backend(c, ctx, &s.head, req.route);
    s.facts.backend = Some(backend.clone());
    forward::forward(c, ctx, s, &req, backend, protected, resp_headers).await
}
