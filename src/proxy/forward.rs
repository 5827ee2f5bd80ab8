//! Phase 4: the backend leg. Each attempt takes a backend connection from the pool (or opens
//! one), obtains the user's ticket where the route delegates, writes the request head, then
//! moves both bodies at once; [`retry`](super::retry) decides whether a failed attempt is made
//! again. The connection goes back through [`Pool::checkin`](crate::backend::Pool::checkin),
//! which keeps the identity rule.

use std::rc::Rc;

use futures_util::future::{select, Either};
use tokio::time::Instant;

use super::ctx::WorkerCtx;
use super::pump::{pump_request, ReqBody};
use super::relay::{relay_response, HeadGate, RelayError, RespDone, RespReq};
use super::retry::{Attempt, Cause};
use super::route::{self, Routed};
use super::session::{Done, Failed, Next, Session};
use super::ticket::{self, DelegGate, Delegation, Ticket};
use super::Client;
use crate::auth::Identity;
use crate::backend::{self, BackendConn, Checkin, PoolKey};
use crate::config::route::SendAuth;
use crate::config::Backend;
use crate::error::{Error, ErrorKind};
use crate::http1::{self, authz, BodyFraming};
use crate::net::bufpool;
use crate::net::deadline::write_by;
use crate::net::Io;

/// What an attempt came to.
enum Outcome {
    /// The response (and the request body, if any) went through. `backend_stopped`: the
    /// backend stopped reading the body (it answered early), so neither connection goes on.
    Done {
        resp: RespDone,
        leftover: Vec<u8>,
        backend_stopped: bool,
    },
    /// The response ended while the body was still coming.
    EarlyResponse,
    /// The attempt failed: the error, whether the client connection's framing survives, and
    /// what another attempt could mend.
    Failed(Error, bool, Option<Cause>),
}

/// Sends the request to `backend` and relays the answer.
pub(super) async fn forward(
    c: &mut Client,
    ctx: &WorkerCtx,
    s: &mut Session,
    req: &Routed,
    mut backend: Rc<Backend>,
    protected: bool,
    resp_headers: Vec<(&'static str, Vec<u8>)>,
) -> Result<Done, Failed> {
    let bodyless = req.bodyless;
    let mut body = start_body(c, s, req)?;
    let identity = s.facts.identity.clone();
    let deleg = ticket::delegation(ctx, req.route, identity.as_ref()).map_err(|e| (e, bodyless))?;
    // A client's own NTLM/Negotiate passed through binds the backend connection to it.
    let conn_auth = s
        .head
        .headers_named(&c.buf, "authorization")
        .any(authz::is_connection_bound);
    let mut attempt = Attempt::FIRST;
    let mut continue_sent = false;
    loop {
        let retryable = body.is_none();
        let conn = checkout(
            c, ctx, req.route, &backend, attempt, retryable, &identity, &deleg,
        );
        let (mut bconn, reused) = match conn.await {
            Ok(b) => b,
            Err(e) => {
                // Nothing reached the backend: another backend of the route may serve it.
                let next = attempt.after(Cause::ConnectFailed).and_then(|next| {
                    let other = route::other_backend(c, ctx, &s.head, req.route, &backend)?;
                    Some((next, other))
                });
                match next {
                    Some((next, other)) => {
                        tracing::info!(error = %e, to = %other.display(), "connect failed: retrying on another backend");
                        attempt = next;
                        s.facts.backend = Some(other.clone());
                        backend = other;
                        continue;
                    }
                    None => return Err((e, bodyless)),
                }
            }
        };
        s.facts.reused = reused;
        let gate = DelegGate::default();
        let has_body = body.is_some();
        let t = obtain_ticket(ctx, s, req, &deleg, &bconn, has_body, attempt, &gate).await;
        let ticket = match t {
            Ok(t) => t,
            Err(e) => {
                // Nothing was sent on the connection: it is still good for this user.
                put_back(c, ctx, bconn, Checkin::Reuse);
                return Err((e, bodyless));
            }
        };
        let header = ticket.as_ref().map(|t| &t.header[..]);
        if let Err(e) = send_head(c, ctx, s, req, &bconn, protected, &identity, header).await {
            let retry = reused.then_some(Cause::StaleOnWrite);
            match retry.and_then(|r| attempt.after(r)) {
                Some(next) => {
                    attempt = next;
                    continue;
                }
                None => return Err((e, bodyless)),
            }
        }
        bconn.requests += 1;
        if req.meta.expect_continue && body.is_some() && !continue_sent {
            send_continue(c, ctx).await.map_err(|e| (e, false))?;
            continue_sent = true;
        }
        let gate_ref = deleg.as_ref().map(|_| &gate as &dyn HeadGate);
        let rreq = resp_req(c, s, req, reused, &resp_headers, gate_ref);
        let outcome = match body.take() {
            None => relay_only(c, ctx, s, &bconn, rreq, bodyless, ticket.is_some()).await,
            Some(rest) => duplex(c, ctx, s, &bconn, rest, rreq).await,
        };
        if let Outcome::Failed(e, framing_known, retry) = outcome {
            bconn.stream.shutdown();
            match retry.and_then(|r| attempt.after(r)) {
                Some(next) => attempt = next,
                None => return Err((e, framing_known)),
            }
            continue;
        }
        // Delegated connections are keyed by user and SPN and go back to the shared per-user
        // pool; only pass-through authentication binds one to its client.
        let passthrough = deleg.is_none().then_some(Passthrough {
            conn_auth,
            identity: identity.as_ref(),
        });
        return Ok(finish(c, ctx, bconn, outcome, &gate, passthrough));
    }
}

/// A route that does not delegate: the client's own authentication may pass through to the
/// backend, and then the backend connection belongs to that client.
struct Passthrough<'a> {
    /// The request carried a connection-bound `Authorization` (NTLM, Negotiate).
    conn_auth: bool,
    /// Who the proxy authenticated, if the route authenticates.
    identity: Option<&'a Identity>,
}

/// The response to the client: what its request says, and the proxy's part in it.
fn resp_req<'a>(
    c: &'a Client,
    s: &Session,
    req: &Routed,
    reused: bool,
    extra_headers: &'a [(&'static str, Vec<u8>)],
    gate: Option<&'a dyn HeadGate>,
) -> RespReq<'a> {
    RespReq {
        method: s.head.method(&c.buf),
        client_version: s.head.version,
        keep_alive: req.meta.keep_alive,
        reused,
        extra_headers,
        // The backend's Negotiate answer belongs to the proxy's context, not the client's.
        drop_headers: if gate.is_some() {
            &["www-authenticate", "persistent-auth"]
        } else {
            &[]
        },
        gate,
    }
}

/// After a successful attempt: the backend connection goes back (or closes), and the client
/// connection's fate.
fn finish(
    c: &mut Client,
    ctx: &WorkerCtx,
    mut bconn: BackendConn,
    outcome: Outcome,
    gate: &DelegGate,
    passthrough: Option<Passthrough<'_>>,
) -> Done {
    let Outcome::Done {
        resp,
        leftover,
        backend_stopped,
    } = outcome
    else {
        // The response ended while the body was still coming: the client's next bytes are the
        // rest of the body, so the connection ends here; shutting it down also completes the
        // client read left in flight. (A failed attempt never gets here.)
        bconn.stream.shutdown();
        c.stream.shutdown();
        return (Next::Close, Vec::new());
    };
    if gate.accepted() {
        bconn.set_ticket_accepted();
    }
    // The client's NTLM/Negotiate went through, or the backend started its own handshake.
    let bound_to = passthrough.filter(|p| p.conn_auth || resp.conn_auth_challenge);
    let how = if !resp.backend_reusable || backend_stopped {
        Checkin::Close
    } else if let Some(p) = bound_to {
        Checkin::Bind(p.identity.map(Identity::principal_rc))
    } else {
        Checkin::Reuse
    };
    put_back(c, ctx, bconn, how);
    let next = if resp.client_keep_alive && !backend_stopped {
        Next::KeepAlive
    } else {
        Next::Close
    };
    (next, leftover)
}

/// Frames the body bytes that came with the head (they count as consumed by this request) and
/// returns what of the body is still to come.
fn start_body(c: &Client, s: &mut Session, req: &Routed) -> Result<Option<ReqBody>, Failed> {
    let mut body = ReqBody::for_framing(req.meta.framing);
    if let Some(b) = body.as_mut() {
        let initial = b.frame(&c.buf[s.head.head_len..]).map_err(|e| (e, false))?;
        s.consumed += initial;
        s.progress.bytes_in.set(initial as u64);
    }
    Ok(body.filter(|b| !b.is_done()))
}

/// The backend connection for this attempt: an idle one for the same key (see
/// [`backend::Pool::checkout`]), else a new one, whose connect (success or failure) is the
/// backend's health evidence. Also says whether it was reused. An error is always a failed
/// connect: nothing was sent.
#[allow(clippy::too_many_arguments)] // the phase's inputs, each used once
async fn checkout(
    c: &mut Client,
    ctx: &WorkerCtx,
    route: usize,
    backend: &Rc<Backend>,
    attempt: Attempt,
    retryable: bool,
    identity: &Option<Identity>,
    deleg: &Option<Delegation<'_>>,
) -> Result<(BackendConn, bool), Error> {
    let key = match deleg {
        Some(dl) => dl.pool_key(backend),
        None => PoolKey {
            backend: backend.clone(),
            identity: None,
            spn: None,
        },
    };
    let user = identity.as_ref().map(Identity::principal);
    let idle = ctx.pool.borrow_mut().checkout(
        &mut c.private_backend,
        &key,
        user,
        attempt.fresh,
        retryable,
    );
    if let Some(conn) = idle {
        return Ok((conn, true));
    }
    let cfg = &ctx.shared.cfg;
    let tls = ctx.shared.tls_client.as_ref();
    match backend::connect(backend, tls, cfg.timeouts.backend_connect).await {
        Ok(stream) => {
            ctx.backends.connected(route, backend);
            Ok((BackendConn::new(stream, key), false))
        }
        Err(e) => {
            // A missing TLS client config is the proxy's fault, not the backend's.
            if e.kind != ErrorKind::Internal {
                ctx.backends.connect_failed(route, backend);
            }
            Err(e)
        }
    }
}

fn put_back(c: &mut Client, ctx: &WorkerCtx, conn: BackendConn, how: Checkin) {
    let how = if ctx.is_draining() {
        Checkin::Close
    } else {
        how
    };
    ctx.pool
        .borrow_mut()
        .checkin(&mut c.private_backend, conn, how);
}

/// The user's ticket, when the route delegates and `conn` is not yet authenticated as the
/// user: on the first request of a connection if the route sends it first or the request has a
/// body (which cannot be resent after a 401), or when the retry rule asks for it. The session
/// records where it came from.
#[allow(clippy::too_many_arguments)] // the phase's inputs, each used once
async fn obtain_ticket(
    ctx: &WorkerCtx,
    s: &mut Session,
    req: &Routed,
    deleg: &Option<Delegation<'_>>,
    conn: &BackendConn,
    has_body: bool,
    attempt: Attempt,
    gate: &DelegGate,
) -> Result<Option<Ticket>, Error> {
    let Some(dl) = deleg else {
        return Ok(None);
    };
    let opts = &ctx.shared.cfg.routes.get(req.route).options;
    let wanted = opts.send_auth == SendAuth::First || has_body || attempt.force_ticket;
    if conn.ticket_accepted() || !wanted {
        s.facts.delegation = Some((req.route, "none", None));
        return Ok(None);
    }
    let t = dl.ticket(conn, opts.channel_binding, gate).await?;
    s.facts.delegation = Some((req.route, t.source, t.kdc_time));
    Ok(Some(t))
}

/// Writes the request head (and the body bytes that came with it) to the backend. The client's
/// credentials are for the proxy, never for the backend, and a client-supplied identity header
/// is never believed.
#[allow(clippy::too_many_arguments)] // the phase's inputs, each used once
async fn send_head(
    c: &Client,
    ctx: &WorkerCtx,
    s: &Session,
    req: &Routed,
    conn: &BackendConn,
    protected: bool,
    identity: &Option<Identity>,
    ticket: Option<&[u8]>,
) -> Result<(), Error> {
    let cfg = &ctx.shared.cfg;
    let ident_hdr = cfg.auth.identity_header.as_deref();
    let mut drop_headers: Vec<&str> = Vec::with_capacity(2);
    if protected {
        drop_headers.push("authorization");
    }
    drop_headers.extend(ident_hdr);
    let mut extra_headers: Vec<(&str, &[u8])> = Vec::with_capacity(2);
    if let (Some(h), Some(id)) = (ident_hdr, identity.as_ref()) {
        extra_headers.push((h, id.principal().as_bytes()));
    }
    if let Some(v) = ticket {
        extra_headers.push(("Authorization", v));
    }
    let info = http1::ForwardInfo {
        client_ip: c.peer.ip(),
        proto: if c.stream.is_tls() { "https" } else { "http" },
        host_override: ctx.host_override[req.route].as_deref(),
        framing: match req.meta.framing {
            BodyFraming::CloseDelimited => BodyFraming::None,
            f => f,
        },
        drop_headers: &drop_headers,
        extra_headers: &extra_headers,
    };
    let mut out = bufpool::take();
    http1::encode_request_head(&c.buf, &s.head, &info, &mut out);
    out.extend_from_slice(&c.buf[s.head.head_len..s.consumed]);
    let deadline = Instant::now() + cfg.timeouts.backend;
    match write_by(&conn.stream, out, deadline).await {
        Ok(b) => {
            bufpool::give(b);
            Ok(())
        }
        Err(_) => Err(Error::new(
            ErrorKind::BackendConnect,
            "backend closed while the request head was sent",
        )),
    }
}

/// `100 Continue`: the client may wait for it before sending the body.
async fn send_continue(c: &Client, ctx: &WorkerCtx) -> Result<(), Error> {
    let mut out = Vec::with_capacity(32);
    http1::encode_simple_response(100, "Continue", &[], &[], true, &mut out);
    let deadline = Instant::now() + ctx.shared.cfg.timeouts.client_idle;
    match write_by(&c.stream, out, deadline).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::new(ErrorKind::ClientClosed, "writing 100 Continue")),
    }
}

/// Nothing more to send: only the response moves.
async fn relay_only(
    c: &Client,
    ctx: &WorkerCtx,
    s: &Session,
    conn: &BackendConn,
    rreq: RespReq<'_>,
    bodyless: bool,
    ticket_sent: bool,
) -> Outcome {
    let p = &s.progress;
    match relay_response(&c.stream, &conn.stream, rreq, ctx, p).await {
        Ok(resp) => Outcome::Done {
            resp,
            leftover: Vec::new(),
            backend_stopped: false,
        },
        Err(RelayError::EmptyReply(e)) if !p.response_started.get() => {
            Outcome::Failed(e, bodyless, Some(Cause::EmptyReply))
        }
        Err(RelayError::BackendUnauthorized) if !ticket_sent => {
            let e = RelayError::BackendUnauthorized.into_error();
            Outcome::Failed(e, bodyless, Some(Cause::TicketWanted))
        }
        Err(e) => Outcome::Failed(e.into_error(), bodyless, None),
    }
}

/// Both directions at once: the backend may answer before the body is complete (an early
/// 413/401), and RPC_IN/OUT_DATA-style exchanges need both flowing.
async fn duplex(
    c: &Client,
    ctx: &WorkerCtx,
    s: &Session,
    conn: &BackendConn,
    rest: ReqBody,
    rreq: RespReq<'_>,
) -> Outcome {
    let p = &s.progress;
    let req_fut = pump_request(&c.stream, &conn.stream, rest, ctx, p);
    let resp_fut = relay_response(&c.stream, &conn.stream, rreq, ctx, p);
    futures_util::pin_mut!(req_fut, resp_fut);
    match select(req_fut, resp_fut).await {
        Either::Left((Ok(reqd), resp_fut)) => match resp_fut.await {
            Ok(resp) => Outcome::Done {
                resp,
                leftover: reqd.leftover,
                backend_stopped: reqd.backend_stopped.is_some(),
            },
            // The backend stopped reading and then failed: its first error is the cause.
            Err(e) => {
                let e = match reqd.backend_stopped {
                    Some(first) if !p.response_started.get() => first,
                    _ => e.into_error(),
                };
                Outcome::Failed(e, false, None)
            }
        },
        Either::Left((Err(e), _)) => Outcome::Failed(e, false, None),
        Either::Right((Ok(_), _)) => Outcome::EarlyResponse,
        Either::Right((Err(e), _)) => Outcome::Failed(e.into_error(), false, None),
    }
}
