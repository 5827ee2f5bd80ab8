//! The phase sequence of a client connection, fixed and in one place:
//!
//! ```text
//! read head ─► parse, validate framing ─► route ─► backend connection ─► write head
//!   ─► [100 Continue] ─► request body ║ response head + body ─► log ─► keep-alive?
//! ```
//!
//! Connection state ([`Client`]) is kept apart from request state: the head buffer, the count
//! of requests, and a backend connection that became private to this client (connection-bound
//! authentication) live as long as the TCP connection; everything else lives for one request.
//!
//! Every failure becomes an [`Error`]; [`respond`] turns it into the client's answer.

pub mod body;
pub mod ctx;
pub mod respond;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant as StdInstant;

use futures_util::future::{select, Either};
use tokio::time::Instant;

use self::body::{Progress, RelayErr, ReqBody, RespReq};
use self::ctx::WorkerCtx;
use crate::accesslog::{Delegation, Entry};
use crate::auth::{ConnAuth, Identity, Verdict};
use crate::backend::{self, BackendConn, PoolKey};
use crate::config::route::SendAuth;
use crate::config::Backend;
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{self, BodyFraming, ChunkedDecoder, RequestHead};
use crate::kcd::{BackendToken, Delegator, Subject};
use crate::net::deadline::{read_by, write_by, ReadErr};
use crate::net::{bufpool, Io};
use crate::tls::Stream;

/// Initial head buffer of a connection. An idle keep-alive connection holds only this (and its
/// task): large buffers are borrowed from the per-core pool while a body moves.
const HEAD_BUF: usize = 4096;

/// Bytes and time spent reading a rejected request's leftovers before closing, so the client
/// reads our error response instead of a reset (a close with unread data sends RST).
const LINGER_BYTES: usize = 1 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// State of one client connection.
struct Client {
    stream: Stream,
    peer: SocketAddr,
    /// The current request head followed by any bytes already read past it.
    buf: Vec<u8>,
    requests: u64,
    /// A backend connection bound to this client because it carried connection-oriented
    /// authentication (NTLM/Negotiate). INVARIANT: never returned to the shared pool.
    private_backend: Option<BackendConn>,
    /// Who the client is, as far as this connection has shown (NTLM binds the connection).
    auth: ConnAuth,
    /// Declared body length of a request refused with 401 before its body was read (the
    /// client asked `Expect: 100-continue`). If the client sends the body anyway, it arrives
    /// where the next head is expected and is dropped (RFC 9110 §10.1.1: a client may send the body anyway).
    refused_body: Option<u64>,
}

enum Next {
    KeepAlive,
    Close,
    /// Close after reading (bounded) what the client still sends.
    Linger,
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
        private_backend: None,
        auth: ConnAuth::Anonymous,
        refused_body: None,
    };
    let mut next = Next::Close;
    loop {
        let started = StdInstant::now();
        let head = match read_head(&mut c, &ctx, accepted).await {
            Ok(Some(h)) => h,
            Ok(None) => break,
            Err(e) => {
                next =
                    answer_error(&mut c, &ctx, None, &e, started, &Progress::default(), None).await;
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
    if let Some(b) = c.private_backend.take() {
        b.stream.shutdown();
    }
    // Half-close first: the client sees the end of our response; with Linger we then read
    // (and drop) what it still sends, so our close does not turn into a reset that destroys
    // the response in its receive buffer.
    c.stream.close().await;
    if matches!(next, Next::Linger) {
        linger(&c.stream).await;
    }
}

/// Reads until a complete request head is in `c.buf`. `Ok(None)`: the client went away (or
/// the worker is draining) between requests, which is not an error.
async fn read_head(
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
        if c.buf.len() == c.buf.capacity() {
            let room =
                c.buf.capacity().max(HEAD_BUF).min(
                    ctx.limits.max_head_bytes + 1 - c.buf.len().min(ctx.limits.max_head_bytes),
                );
            c.buf.reserve(room.max(1));
        }
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
            Err((ReadErr::Timeout, _)) if waiting && c.requests > 0 => return Ok(None),
            Err((ReadErr::Timeout, _)) => {
                return Err(Error::new(
                    ErrorKind::ClientHeaderTimeout,
                    "request head not received within --header-timeout",
                ))
            }
            Err((ReadErr::Io(_), _)) if waiting => return Ok(None),
            Err((ReadErr::Io(e), _)) => {
                return Err(Error::with_cause(
                    ErrorKind::ClientClosed,
                    "reading the head",
                    e,
                ))
            }
        }
    }
}

/// Per-request facts the log needs beyond [`Progress`].
#[derive(Default)]
struct ReqLog {
    backend: Option<Rc<Backend>>,
    reused: bool,
    identity: Option<Identity>,
    /// Why the proxy answered 401 (the challenge itself is not a failure of the request).
    auth_note: Option<Error>,
    /// Delegating routes: the route (its SPN), where the ticket came from, KDC wait.
    delegation: Option<(usize, &'static str, Option<std::time::Duration>)>,
}

async fn handle_request(
    c: &mut Client,
    ctx: &WorkerCtx,
    head: RequestHead,
    started: StdInstant,
) -> Next {
    let p = Progress::default();
    let mut rl = ReqLog::default();
    // Boxed: the exchange's state is large (both body pumps), and keeping it out of the
    // connection's future keeps an idle keep-alive connection small.
    match Box::pin(exchange(c, ctx, &head, &p, &mut rl)).await {
        Ok((next, consumed, leftover)) => {
            log_request(c, ctx, Some(&head), started, &p, &rl, rl.auth_note.as_ref());
            c.buf.drain(..consumed.min(c.buf.len()));
            c.buf.extend_from_slice(&leftover);
            next
        }
        Err((e, framing_known)) => {
            answer_error(
                c,
                ctx,
                Some(&head),
                &e,
                started,
                &p,
                framing_known.then_some(&rl),
            )
            .await
        }
    }
}

/// Sends the error's response if none has started, logs the request, and says whether the
/// connection can go on. Only errors that leave the framing intact on a body-less request keep
/// the connection.
async fn answer_error(
    c: &mut Client,
    ctx: &WorkerCtx,
    head: Option<&RequestHead>,
    e: &Error,
    started: StdInstant,
    p: &Progress,
    keep: Option<&ReqLog>,
) -> Next {
    let can_keep = keep.is_some() && respond::keeps_connection(e.kind) && !ctx.is_draining();
    let mut next = if can_keep {
        Next::KeepAlive
    } else {
        Next::Close
    };
    if !p.response_started.get() {
        let mut out = Vec::new();
        if let Some(status) = respond::error_response(
            e,
            can_keep,
            head.is_some_and(|h| h.method(&c.buf) == b"HEAD"),
            &mut out,
        ) {
            p.status.set(status);
            let n = out.len();
            let deadline = Instant::now() + ctx.shared.cfg.timeouts.client_idle;
            if write_by(&c.stream, out, deadline).await.is_ok() {
                p.bytes_out.set(p.bytes_out.get() + n as u64);
                if !can_keep && e.side() == Side::Client && e.kind != ErrorKind::ClientHeaderTimeout
                {
                    next = Next::Linger;
                }
            } else {
                next = Next::Close;
            }
        }
    }
    let rl_default = ReqLog::default();
    log_request(
        c,
        ctx,
        head,
        started,
        p,
        keep.unwrap_or(&rl_default),
        Some(e),
    );
    if matches!(next, Next::KeepAlive) {
        if let Some(h) = head {
            c.buf.drain(..h.head_len.min(c.buf.len()));
        }
    }
    match e.side() {
        Side::Client | Side::Internal => {
            tracing::debug!(peer = %c.peer, error = %e, "request failed")
        }
        _ => tracing::info!(peer = %c.peer, error = %e, "request failed"),
    }
    next
}

fn log_request(
    c: &Client,
    ctx: &WorkerCtx,
    head: Option<&RequestHead>,
    started: StdInstant,
    p: &Progress,
    rl: &ReqLog,
    err: Option<&Error>,
) {
    let id = rl.identity.as_ref();
    ctx.metrics.request(
        p.status.get(),
        id.map(Identity::scheme),
        err.or(rl.auth_note.as_ref()),
    );
    if let Some((_, ticket, kdc)) = rl.delegation {
        ctx.metrics.delegation(ticket, kdc);
    }
    if !ctx.log.enabled() {
        return;
    }
    let backend = rl.backend.as_ref().map(|b| b.display());
    let detail = err.map(|e| e.to_string());
    ctx.log.log(&Entry {
        client: Some(c.peer.ip()),
        tls: c.stream.is_tls(),
        method: head.map_or(&b"-"[..], |h| h.method(&c.buf)),
        path: head.map_or(&b"-"[..], |h| h.target(&c.buf)),
        status: p.status.get(),
        bytes_in: p.bytes_in.get(),
        bytes_out: p.bytes_out.get(),
        duration: started.elapsed(),
        backend: backend.as_deref(),
        reused: rl.reused,
        reason: err.map(|e| e.kind.as_str()),
        detail: detail.as_deref(),
        auth_scheme: id.map(|i| i.scheme().as_str()),
        user: id.map(Identity::user),
        principal: id.map(Identity::principal),
        delegation: rl.delegation.and_then(|(route, ticket, kdc)| {
            let spn = ctx.shared.cfg.routes.get(route).options.spn.as_deref()?;
            Some(Delegation { spn, ticket, kdc })
        }),
    });
}

/// A failed exchange: the error, and whether the request's framing was understood and the
/// body (if any) was not started (so the connection could continue).
type Failed = (Error, bool);

/// Proxies one request. On success: what to do with the connection, how many bytes of
/// `c.buf` the request used, and bytes read past its end (pipelined).
async fn exchange(
    c: &mut Client,
    ctx: &WorkerCtx,
    head: &RequestHead,
    p: &Progress,
    rl: &mut ReqLog,
) -> Result<(Next, usize, Vec<u8>), Failed> {
    let cfg = &ctx.shared.cfg;
    let meta =
        http1::request_meta(&c.buf, head).map_err(|e| (e.into_error(Side::Client), false))?;
    let bodyless = meta.framing == BodyFraming::None;
    let method = head.method(&c.buf);
    if method == b"CONNECT" {
        return Err((
            Error::new(ErrorKind::MethodNotAllowed, "CONNECT is not proxied"),
            bodyless,
        ));
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority overrides Host.
    let host = head
        .target_authority(&c.buf)
        .or(meta.host.map(|s| s.get(&c.buf)));
    let route = cfg.routes.find(host, head.path(&c.buf)).ok_or_else(|| {
        (
            Error::new(ErrorKind::NoRoute, "no route for this host and path"),
            bodyless,
        )
    })?;
    let route_opts = &cfg.routes.get(route).options;

    // ---- authenticate: inline on the core (NTLM and Basic against the local store cost
    // microseconds); Kerberos, winbind and Basic via the KDC are awaited on the KDC pool ----
    let offers = route_opts.offers_for(head.header(&c.buf, "user-agent"));
    let mut resp_headers = Vec::new();
    if !offers.is_empty() {
        let authz = head.header(&c.buf, "authorization");
        let tls = c.stream.is_tls();
        match ctx.auth.authenticate(&mut c.auth, offers, authz, tls).await {
            Verdict::Proceed { identity, headers } => {
                rl.identity = identity;
                resp_headers = headers;
            }
            Verdict::Challenge {
                www_authenticate,
                error,
            } => {
                rl.auth_note = Some(error);
                return refuse_401(c, ctx, head, &meta, www_authenticate, p).await;
            }
            // 503 (KDC or DC down, pool full) or 500: the client's credentials were not judged.
            Verdict::Fail(error) => return Err((error, bodyless)),
        }
    }

    // RPC over HTTP: the IN and OUT channels of one virtual connection carry the same
    // `?server:port` target from the same client, so that pair picks the backend.
    let backend = if method == b"RPC_IN_DATA" || method == b"RPC_OUT_DATA" {
        let ip = match c.peer.ip() {
            std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(a) => a.octets(),
        };
        ctx.pick_backend_by(route, &[&ip, head.target(&c.buf)])
    } else {
        ctx.pick_backend(route)
    };
    rl.backend = Some(backend.clone());
    let conn_auth = head
        .headers_named(&c.buf, "authorization")
        .any(http1::authz::is_connection_bound);

    // What of the body is already in the head buffer.
    let after_head = c.buf.len() - head.head_len;
    let (mut body, initial) = match meta.framing {
        BodyFraming::Length(n) => {
            let mut b = ReqBody::Length(n);
            let k = b.frame(&c.buf[head.head_len..]).map_err(|e| (e, false))?;
            (Some(b), k)
        }
        BodyFraming::Chunked => {
            let mut b = ReqBody::Chunked(ChunkedDecoder::new());
            let k = b.frame(&c.buf[head.head_len..]).map_err(|e| (e, false))?;
            (Some(b), k)
        }
        _ => (None, 0),
    };
    if body.as_ref().is_some_and(ReqBody::is_done) {
        body = None;
    }
    debug_assert!(initial <= after_head);
    p.bytes_in.set(initial as u64);
    let consumed = head.head_len + initial;
    let forward_framing = match meta.framing {
        BodyFraming::Length(n) => BodyFraming::Length(n),
        BodyFraming::Chunked => BodyFraming::Chunked,
        _ => BodyFraming::None,
    };
    let proto = if c.stream.is_tls() { "https" } else { "http" };
    // The client's credentials are for the proxy, never for the backend; a client-supplied
    // identity header is never believed.
    let identity = rl.identity.clone();
    let ident_hdr = cfg.auth.identity_header.as_deref();
    let mut drop_headers: Vec<&str> = Vec::with_capacity(2);
    if !offers.is_empty() {
        drop_headers.push("authorization");
    }
    drop_headers.extend(ident_hdr);
    let mut extra_headers: Vec<(&str, &[u8])> = Vec::with_capacity(1);
    if let (Some(h), Some(id)) = (ident_hdr, identity.as_ref()) {
        extra_headers.push((h, id.principal().as_bytes()));
    }

    // ---- constrained delegation: the backend sees the user, with a ticket for its SPN ----
    let deleg = match (&route_opts.spn, ctx.shared.delegator.as_deref()) {
        (Some(spn), Some(d)) => match identity.as_ref() {
            Some(id) => Some(Deleg {
                delegator: d,
                spn: spn.as_str(),
                principal: id.principal(),
                key: (id.principal_rc(), ctx.route_spn(route)),
                identity: id,
            }),
            // Config makes spn= routes authenticated; never forward one anonymously.
            None => {
                return Err((
                    Error::new(ErrorKind::Internal, "delegating route without an identity"),
                    bodyless,
                ))
            }
        },
        _ => None,
    };
    let send_first = route_opts.send_auth == SendAuth::First;
    // A backend 401 to a request sent without a ticket: the retry carries one.
    let mut force_ticket = false;

    let mut attempt = 0;
    let mut continue_sent = false;
    loop {
        // ---- backend connection ----
        let (mut bconn, reused) = backend_conn(
            c,
            ctx,
            &backend,
            attempt > 0,
            body.is_none(),
            identity.as_ref(),
            deleg.as_ref().map(|d| d.key.clone()),
        )
        .await
        .map_err(|e| (e, bodyless))?;
        rl.reused = reused;

        // ---- the user's ticket, on a backend connection not yet authenticated as them ----
        let gate = DelegGate::default();
        let mut ticket_header: Option<Vec<u8>> = None;
        if let Some(dl) = &deleg {
            let needed = !bconn.kerberos && (send_first || body.is_some() || force_ticket);
            if needed {
                let subject = match dl.identity.evidence() {
                    Some(cred) => Subject::Evidence {
                        principal: dl.principal,
                        cred,
                    },
                    None => Subject::Transition {
                        principal: dl.principal,
                    },
                };
                let cb = if route_opts.channel_binding {
                    bconn.stream.tls_server_end_point()
                } else {
                    None
                };
                match dl.delegator.token(subject, dl.spn, cb.as_deref()).await {
                    Ok(tok) => {
                        rl.delegation = Some((route, tok.cache().as_str(), tok.kdc_time()));
                        ticket_header = Some(tok.header_value().to_vec());
                        *gate.token.borrow_mut() = Some(tok);
                    }
                    Err(e) => {
                        // Nothing was sent on the connection: it is still good for this user.
                        finish_backend(c, ctx, bconn, true, false, None);
                        return Err((e.into(), bodyless));
                    }
                }
            } else {
                rl.delegation = Some((route, "none", None));
            }
        }
        let mut attempt_headers;
        let head_extra: &[(&str, &[u8])] = match &ticket_header {
            Some(v) => {
                attempt_headers = extra_headers.clone();
                attempt_headers.push(("Authorization", v));
                &attempt_headers
            }
            None => &extra_headers,
        };

        // ---- head (and the body bytes that came with it) ----
        let mut out = bufpool::take();
        let info = http1::ForwardInfo {
            client_ip: c.peer.ip(),
            proto,
            host_override: ctx.host_override[route].as_deref(),
            framing: forward_framing,
            drop_headers: &drop_headers,
            extra_headers: head_extra,
        };
        http1::encode_request_head(&c.buf, head, &info, &mut out);
        out.extend_from_slice(&c.buf[head.head_len..consumed]);
        let deadline = Instant::now() + cfg.timeouts.backend;
        match write_by(&bconn.stream, out, deadline).await {
            Ok(b) => bufpool::give(b),
            Err(_) if reused && attempt == 0 => {
                attempt += 1;
                continue;
            }
            Err(_) => {
                return Err((
                    Error::new(
                        ErrorKind::BackendConnect,
                        "backend closed while the request head was sent",
                    ),
                    bodyless,
                ))
            }
        }
        bconn.requests += 1;

        // ---- 100 Continue: the client may wait for it before sending the body ----
        if meta.expect_continue && body.is_some() && !continue_sent {
            let mut out = Vec::with_capacity(32);
            http1::encode_simple_response(100, "Continue", &[], &[], true, &mut out);
            let deadline = Instant::now() + cfg.timeouts.client_idle;
            write_by(&c.stream, out, deadline).await.map_err(|_| {
                (
                    Error::new(ErrorKind::ClientClosed, "writing 100 Continue"),
                    false,
                )
            })?;
            continue_sent = true;
        }

        let rreq = RespReq {
            method: head.method(&c.buf),
            client_version: head.version,
            keep_alive: meta.keep_alive,
            reused,
            extra_headers: &resp_headers,
            // The backend's Negotiate answer belongs to the proxy's context, not the client's.
            drop_headers: if deleg.is_some() {
                &["www-authenticate", "persistent-auth"]
            } else {
                &[]
            },
            gate: deleg.as_ref().map(|_| &gate as &dyn body::HeadGate),
        };
        // Connections keyed by user and SPN go back to the shared per-user pool; only
        // client-passthrough authentication makes a connection private.
        let passthrough = deleg.is_none();

        // ---- bodies ----
        let Some(rest) = body.take() else {
            // Nothing more to send: only the response moves.
            let res = body::relay_response(&c.stream, &bconn.stream, rreq, ctx, p).await;
            return match res {
                Ok(done) => {
                    bconn.kerberos |= gate.accepted.get();
                    finish_backend(
                        c,
                        ctx,
                        bconn,
                        done.backend_reusable,
                        passthrough && (conn_auth || done.conn_auth_challenge),
                        identity.as_ref(),
                    );
                    let next = if done.client_keep_alive {
                        Next::KeepAlive
                    } else {
                        Next::Close
                    };
                    Ok((next, consumed, Vec::new()))
                }
                Err(RelayErr::EmptyReply(_)) if attempt == 0 && !p.response_started.get() => {
                    bconn.stream.shutdown();
                    attempt += 1;
                    continue;
                }
                // The backend wants the ticket we did not send (send-auth=401, or a backend
                // that does not keep Kerberos per connection): once more, with it, on a new
                // connection. Never the client's problem (MS-SFU 3.1.5.2; TMG's redirect lost POST bodies, KB 951508).
                Err(RelayErr::BackendUnauthorized) if ticket_header.is_none() && attempt == 0 => {
                    bconn.stream.shutdown();
                    force_ticket = true;
                    attempt += 1;
                    continue;
                }
                Err(e) => {
                    bconn.stream.shutdown();
                    Err((e.into_error(), bodyless))
                }
            };
        };

        // Both directions at once: the backend may answer before the body is complete
        // (an early 413/401), and RPC_IN/OUT_DATA-style exchanges need both flowing.
        enum Outcome {
            Both(body::RespDone, body::ReqBodyDone),
            /// The response ended while the body was still coming.
            EarlyResponse,
            Failed(Error),
        }
        let outcome = {
            let req_fut = body::pump_request(&c.stream, &bconn.stream, rest, ctx, p);
            let resp_fut = body::relay_response(&c.stream, &bconn.stream, rreq, ctx, p);
            futures_util::pin_mut!(req_fut, resp_fut);
            match select(req_fut, resp_fut).await {
                Either::Left((Ok(reqd), resp_fut)) => match resp_fut.await {
                    Ok(done) => Outcome::Both(done, reqd),
                    // The backend stopped reading and then failed: its first error is the cause.
                    Err(e) => Outcome::Failed(match reqd.backend_stopped {
                        Some(first) if !p.response_started.get() => first,
                        _ => e.into_error(),
                    }),
                },
                Either::Left((Err(e), _)) => Outcome::Failed(e),
                Either::Right((Ok(_), _)) => Outcome::EarlyResponse,
                Either::Right((Err(e), _)) => Outcome::Failed(e.into_error()),
            }
        };
        return match outcome {
            Outcome::EarlyResponse => {
                // The client's next bytes are the rest of the body, so the connection ends
                // here; shutting it down also completes the client read left in flight.
                bconn.stream.shutdown();
                c.stream.shutdown();
                Ok((Next::Close, consumed, Vec::new()))
            }
            Outcome::Both(done, reqd) => {
                let clean = done.backend_reusable && reqd.backend_stopped.is_none();
                bconn.kerberos |= gate.accepted.get();
                finish_backend(
                    c,
                    ctx,
                    bconn,
                    clean,
                    passthrough && (conn_auth || done.conn_auth_challenge),
                    identity.as_ref(),
                );
                let next = if done.client_keep_alive && reqd.backend_stopped.is_none() {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
                Ok((next, consumed, reqd.leftover))
            }
            Outcome::Failed(e) => {
                bconn.stream.shutdown();
                Err((e, false))
            }
        };
    }
}

/// Bodies up to this size are read and dropped after a 401 so the connection survives the
/// handshake; larger ones close it.
const DRAIN_AFTER_401: u64 = 64 * 1024;

/// The allowance while this connection waits for an NTLM AUTHENTICATE: the challenge is bound
/// to the connection, so closing it would make the handshake impossible for clients that send
/// the whole request on every leg (requests-ntlm, SOAP stacks without `Expect`).
const DRAIN_DURING_HANDSHAKE: u64 = 16 * 1024 * 1024;

/// A delegating route's request: who, to which SPN.
struct Deleg<'a> {
    delegator: &'a Delegator,
    spn: &'a str,
    principal: &'a str,
    /// (user, SPN) for the backend pool key: shared strings, no copy per request.
    key: (Rc<str>, Rc<str>),
    identity: &'a Identity,
}

/// The delegated leg's look at the response head: a 401 never reaches the client, and the
/// backend's mutual-authentication token is checked before anything is relayed.
#[derive(Default)]
struct DelegGate {
    /// The token sent on this attempt (taken by the check).
    token: RefCell<Option<BackendToken>>,
    /// The backend answered the ticket and proved itself (or sent no AP-REP, as IIS may).
    accepted: Cell<bool>,
}

impl body::HeadGate for DelegGate {
    fn check(&self, status: u16, negotiate: Option<&[u8]>) -> Result<(), body::GateStop> {
        if status == 401 {
            return Err(body::GateStop::Unauthorized);
        }
        if let Some(token) = self.token.borrow_mut().take() {
            token
                .verify_mutual(negotiate)
                .map_err(|e| body::GateStop::Fail(e.into()))?;
            self.accepted.set(true);
        }
        Ok(())
    }
}

/// Answers 401 with the auth module's challenges. The connection stays open (the NTLM
/// AUTHENTICATE must come on it) unless an unread body makes its framing unknowable or is
/// larger than the drain allowance.
async fn refuse_401(
    c: &mut Client,
    ctx: &WorkerCtx,
    head: &RequestHead,
    meta: &http1::RequestMeta,
    www_authenticate: Vec<Vec<u8>>,
    p: &Progress,
) -> Result<(Next, usize, Vec<u8>), Failed> {
    let t = &ctx.shared.cfg.timeouts;
    let handshaking = matches!(
        c.auth,
        ConnAuth::NtlmChallenged(_) | ConnAuth::SpnegoNtlmSelected(_)
    );
    let allowance = if handshaking {
        DRAIN_DURING_HANDSHAKE
    } else {
        DRAIN_AFTER_401
    };
    let mut keep_alive = meta.keep_alive && !ctx.is_draining();
    // What of the body is here, and what is still to come.
    let mut body = match meta.framing {
        BodyFraming::Length(n) => Some(ReqBody::Length(n)),
        BodyFraming::Chunked => Some(ReqBody::Chunked(ChunkedDecoder::new())),
        _ => None,
    };
    let mut consumed = head.head_len;
    if let Some(b) = body.as_mut() {
        match b.frame(&c.buf[head.head_len..]) {
            Ok(k) => consumed += k,
            Err(_) => {
                keep_alive = false;
                consumed = c.buf.len();
                body = None;
            }
        }
    }
    let mut drain = None;
    match body {
        Some(b) if b.is_done() => {}
        None => {}
        // `Expect: 100-continue` and no 100 sent: the client should not send the body; if it
        // does anyway, `read_head` recognises and drops it.
        Some(ReqBody::Length(n)) if meta.expect_continue => c.refused_body = Some(n),
        // A chunked body that may or may not come cannot be skipped by its length.
        Some(ReqBody::Chunked(_)) if meta.expect_continue => keep_alive = false,
        Some(ReqBody::Length(n)) if n > allowance => keep_alive = false,
        Some(b) if keep_alive => drain = Some(b),
        Some(_) => {}
    }
    let mut headers: Vec<(&str, &[u8])> = www_authenticate
        .iter()
        .map(|v| ("WWW-Authenticate", &v[..]))
        .collect();
    headers.push(("Content-Type", b"text/plain; charset=utf-8"));
    // A response to HEAD has no body, whatever its framing says.
    let text: &[u8] = if head.method(&c.buf) == b"HEAD" {
        b""
    } else {
        b"401 Unauthorized\n"
    };
    let mut out = Vec::with_capacity(256);
    http1::encode_simple_response(401, "Unauthorized", &headers, text, keep_alive, &mut out);
    p.status.set(401);
    p.response_started.set(true);
    let n = out.len();
    if write_by(&c.stream, out, Instant::now() + t.client_idle)
        .await
        .is_err()
    {
        return Ok((Next::Close, consumed, Vec::new()));
    }
    p.bytes_out.set(n as u64);
    let mut leftover = Vec::new();
    if let Some(mut body) = drain {
        let mut drained = (consumed - head.head_len) as u64;
        let mut buf = bufpool::take();
        while !body.is_done() {
            buf.clear();
            match read_by(&c.stream, buf, Instant::now() + t.client_idle).await {
                Ok((0, _)) | Err(_) => return Ok((Next::Close, consumed, Vec::new())),
                Ok((_, b)) => {
                    buf = b;
                    let Ok(k) = body.frame(&buf) else {
                        return Ok((Next::Close, consumed, Vec::new()));
                    };
                    drained += k as u64;
                    p.bytes_in.set(p.bytes_in.get() + k as u64);
                    // A chunked body announces no length: it is bounded here.
                    if drained > allowance {
                        return Ok((Next::Close, consumed, Vec::new()));
                    }
                    leftover.extend_from_slice(&buf[k..]);
                }
            }
        }
        bufpool::give(buf);
    }
    let next = if keep_alive {
        Next::KeepAlive
    } else {
        Next::Linger
    };
    Ok((next, consumed, leftover))
}

/// The backend connection for this request: the client's private one when it is for the same
/// backend, else an idle pooled one, else a new one. `fresh` skips reuse (a retry after a stale
/// pooled connection).
async fn backend_conn(
    c: &mut Client,
    ctx: &WorkerCtx,
    backend: &Rc<Backend>,
    fresh: bool,
    retryable: bool,
    identity: Option<&Identity>,
    delegated: Option<(Rc<str>, Rc<str>)>,
) -> Result<(BackendConn, bool), Error> {
    // A delegated connection is keyed by (backend, user, SPN) in the core's pool; the client's
    // private connection (if any) is for passthrough routes and stays where it is.
    if delegated.is_none() {
        if let Some(pb) = c.private_backend.take() {
            // Only for the same backend and the same user: a client that re-authenticated as
            // someone else never inherits the previous user's backend connection.
            let same_user = pb.key.identity.as_deref() == identity.map(Identity::principal);
            if !fresh && same_user && *pb.key.backend == **backend && !pb.stream.tcp().peer_closed()
            {
                return Ok((pb, true));
            }
            pb.stream.shutdown();
        }
    }
    let (identity_key, spn_key) = match delegated {
        Some((user, spn)) => (Some(user), Some(spn)),
        None => (None, None),
    };
    let key = PoolKey {
        backend: backend.clone(),
        identity: identity_key,
        spn: spn_key,
    };
    if !fresh {
        if let Some(bc) = ctx.pool.borrow_mut().take(&key, retryable) {
            return Ok((bc, true));
        }
    }
    let cfg = &ctx.shared.cfg;
    let stream = backend::connect(
        backend,
        ctx.shared.tls_client.as_ref(),
        cfg.timeouts.backend_connect,
    )
    .await?;
    Ok((
        BackendConn {
            private: false,
            kerberos: false,
            stream,
            key,
            requests: 0,
        },
        false,
    ))
}

/// After a response: pool the backend connection, keep it private to this client, or close it.
fn finish_backend(
    c: &mut Client,
    ctx: &WorkerCtx,
    mut bconn: BackendConn,
    reusable: bool,
    private: bool,
    identity: Option<&Identity>,
) {
    if private && !bconn.private {
        bconn.private = true;
        bconn.key.identity = identity.map(Identity::principal_rc);
    }
    if !reusable || ctx.is_draining() {
        bconn.stream.shutdown();
    } else if bconn.private {
        if let Some(old) = c.private_backend.replace(bconn) {
            old.stream.shutdown();
        }
    } else {
        ctx.pool.borrow_mut().put(bconn);
    }
}

/// Half-closes, then reads and discards what the client still sends (bounded in bytes and
/// time), so the error response is read before the connection is torn down.
async fn linger(stream: &Stream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut total = 0;
    let mut buf = bufpool::take();
    while total < LINGER_BYTES {
        buf.clear();
        match read_by(stream, buf, deadline).await {
            Ok((0, _)) | Err(_) => return,
            Ok((n, b)) => {
                total += n;
                buf = b;
            }
        }
    }
    bufpool::give(buf);
}
