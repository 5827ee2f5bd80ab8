//! Phase 2: what the request is and where it goes: its framing (RFC 9112 §6; every ambiguous
//! shape was refused by the parser), the route for its host and path, and, once it may go on,
//! which of the route's backends serves it.

use std::rc::Rc;

use super::ctx::WorkerCtx;
use super::session::Failed;
use super::Client;
use crate::config::Backend;
use crate::error::{Error, ErrorKind, Side};
use crate::http1::{self, BodyFraming, RequestHead, RequestMeta};

/// A request with a route.
pub(super) struct Routed {
    pub meta: RequestMeta,
    pub route: usize,
    /// The request has no body: an error before the backend leg leaves the connection usable.
    pub bodyless: bool,
}

pub(super) fn route(c: &Client, ctx: &WorkerCtx, head: &RequestHead) -> Result<Routed, Failed> {
    let meta =
        http1::request_meta(&c.buf, head).map_err(|e| (e.into_error(Side::Client), false))?;
    let bodyless = meta.framing == BodyFraming::None;
    if head.method(&c.buf) == b"CONNECT" {
        let e = Error::new(ErrorKind::MethodNotAllowed, "CONNECT is not proxied");
        return Err((e, bodyless));
    }
    // RFC 9112 §3.2.2: an absolute-form target's authority overrides Host.
    let host = head
        .target_authority(&c.buf)
        .or(meta.host.map(|s| s.get(&c.buf)));
    let Some(route) = ctx.shared.cfg.routes.find(host, head.path(&c.buf)) else {
        let e = Error::new(ErrorKind::NoRoute, "no route for this host and path");
        return Err((e, bodyless));
    };
    Ok(Routed {
        meta,
        route,
        bodyless,
    })
}

/// The backend for an authenticated request. RPC over HTTP: the IN and OUT channels of one
/// virtual connection carry the same `?server:port` target from the same client, so that pair
/// picks the backend (MS-RPCH); everything else is round robin. Both skip backends that are
/// down (`backend::Health`).
pub(super) fn choose_backend(
    c: &Client,
    ctx: &WorkerCtx,
    head: &RequestHead,
    route: usize,
) -> Rc<Backend> {
    match rpc_key(c, head) {
        Some((ip, target)) => ctx.backends.pick_by(route, &[&ip, target]),
        None => ctx.backends.pick(route),
    }
}

/// Another backend than `failed` for the one retry after a failed connect, chosen the same
/// way (an RPC pair's retries meet on the same server); `None` when no other is up.
pub(super) fn other_backend(
    c: &Client,
    ctx: &WorkerCtx,
    head: &RequestHead,
    route: usize,
    failed: &Rc<Backend>,
) -> Option<Rc<Backend>> {
    match rpc_key(c, head) {
        Some((ip, target)) => ctx.backends.pick_other(route, failed, Some(&[&ip, target])),
        None => ctx.backends.pick_other(route, failed, None),
    }
}

/// What ties an RPC-over-HTTP request to its pair: the client address and the target.
fn rpc_key<'b>(c: &'b Client, head: &RequestHead) -> Option<([u8; 16], &'b [u8])> {
    let method = head.method(&c.buf);
    if method != b"RPC_IN_DATA" && method != b"RPC_OUT_DATA" {
        return None;
    }
    let ip = match c.peer.ip() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    Some((ip, head.target(&c.buf)))
}
