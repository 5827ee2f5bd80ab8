//! The 401 answer of the authenticate phase. The connection stays open — the NTLM AUTHENTICATE
//! must come on the connection that got the CHALLENGE (MS-NTHT) — unless an unread body makes
//! its framing unknowable or is larger than the drain allowance. The request is never
//! forwarded: a zero-length POST that expects a 401 gets one, and the backend sees the request
//! once, after the handshake, with its body.

use tokio::time::Instant;

use super::ctx::WorkerCtx;
use super::discard::{discard, Deadline};
use super::pump::ReqBody;
use super::session::{Done, Next, Session};
use super::Client;
use crate::auth::ConnAuth;
use crate::http1::{self, RequestMeta};
use crate::net::deadline::write_by;

/// Bodies up to this size are read and dropped after a 401 so the connection survives the
/// handshake; larger ones close it.
const DRAIN_AFTER_401: u64 = 64 * 1024;

/// The allowance while this connection waits for an NTLM AUTHENTICATE: the challenge is bound
/// to the connection, so closing it would make the handshake impossible for clients that send
/// the whole request on every leg (requests-ntlm, SOAP stacks without `Expect`).
const DRAIN_DURING_HANDSHAKE: u64 = 16 * 1024 * 1024;

/// Answers 401 with the auth module's challenges, then drops the request's body if it comes.
pub(super) async fn refuse_401(
    c: &mut Client,
    ctx: &WorkerCtx,
    s: &mut Session,
    meta: &RequestMeta,
    www_authenticate: Vec<Vec<u8>>,
) -> Done {
    let handshaking = matches!(
        c.auth,
        ConnAuth::NtlmChallenged(_) | ConnAuth::SpnegoNtlmSelected(_)
    );
    let allowance = if handshaking {
        DRAIN_DURING_HANDSHAKE
    } else {
        DRAIN_AFTER_401
    };
    let keep_alive = meta.keep_alive && !ctx.is_draining();
    let (drain, keep_alive) = plan_drain(c, s, meta, keep_alive, allowance);
    let head_request = s.head.method(&c.buf) == b"HEAD";
    let mut out = Vec::with_capacity(256);
    encode_401(&www_authenticate, head_request, keep_alive, &mut out);
    let p = &s.progress;
    p.status.set(401);
    p.response_started.set(true);
    let n = out.len();
    let idle = ctx.shared.cfg.timeouts.client_idle;
    if write_by(&c.stream, out, Instant::now() + idle)
        .await
        .is_err()
    {
        return (Next::Close, Vec::new());
    }
    p.bytes_out.set(n as u64);
    let mut leftover = Vec::new();
    if let Some(body) = drain {
        let seen = (s.consumed - s.head.head_len) as u64;
        let per_read = Deadline::PerRead(idle);
        match discard(&c.stream, Some(body), seen, allowance, per_read, Some(p)).await {
            Some(rest) => leftover = rest,
            None => return (Next::Close, Vec::new()),
        }
    }
    let next = if keep_alive {
        Next::KeepAlive
    } else {
        Next::Linger
    };
    (next, leftover)
}

/// What of the body is already here (added to `s.consumed`), what must be drained after the
/// answer, and whether the connection can stay open.
fn plan_drain(
    c: &mut Client,
    s: &mut Session,
    meta: &RequestMeta,
    mut keep_alive: bool,
    allowance: u64,
) -> (Option<ReqBody>, bool) {
    let head_len = s.head.head_len;
    let mut body = ReqBody::for_framing(meta.framing);
    if let Some(b) = body.as_mut() {
        match b.frame(&c.buf[head_len..]) {
            Ok(k) => s.consumed += k,
            Err(_) => {
                keep_alive = false;
                s.consumed = c.buf.len();
                body = None;
            }
        }
    }
    match body {
        Some(b) if b.is_done() => {}
        None => {}
        // `Expect: 100-continue` and no 100 sent: the client should not send the body; if it
        // does anyway, `read_head` recognises and drops it.
        Some(ReqBody::Length(n)) if meta.expect_continue => c.refused_body = Some(n),
        // A chunked body that may or may not come cannot be skipped by its length.
        Some(ReqBody::Chunked(_)) if meta.expect_continue => keep_alive = false,
        Some(ReqBody::Length(n)) if n > allowance => keep_alive = false,
        Some(b) if keep_alive => return (Some(b), true),
        Some(_) => {}
    }
    (None, keep_alive)
}

fn encode_401(www_authenticate: &[Vec<u8>], head_request: bool, keep: bool, out: &mut Vec<u8>) {
    let mut headers: Vec<(&str, &[u8])> = www_authenticate
        .iter()
        .map(|v| ("WWW-Authenticate", &v[..]))
        .collect();
    headers.push(("Content-Type", b"text/plain; charset=utf-8"));
    // A response to HEAD has no body, whatever its framing says.
    let text: &[u8] = if head_request {
        b""
    } else {
        b"401 Unauthorized\n"
    };
    http1::encode_simple_response(401, "Unauthorized", &headers, text, keep, out);
}
