//! The last phase: one access-log line and the metrics of a request, whatever its outcome.

use std::time::Instant;

use super::ctx::WorkerCtx;
use super::session::{Facts, Progress};
use super::Client;
use crate::accesslog::{Delegation, Entry};
use crate::auth::Identity;
use crate::error::Error;
use crate::http1::RequestHead;

/// Logs the request; `err`: its failure, or why it was answered with a 401.
pub(super) fn request(
    c: &Client,
    ctx: &WorkerCtx,
    head: Option<&RequestHead>,
    started: Instant,
    p: &Progress,
    facts: &Facts,
    err: Option<&Error>,
) {
    let id = facts.identity.as_ref();
    ctx.metrics.request(
        p.status.get(),
        id.map(Identity::scheme),
        err.or(facts.auth_note.as_ref()),
    );
    if let Some((_, ticket, kdc)) = facts.delegation {
        ctx.metrics.delegation(ticket, kdc);
    }
    if !ctx.log.enabled() {
        return;
    }
    let backend = facts.backend.as_ref().map(|b| b.display());
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
        reused: facts.reused,
        reason: err.map(|e| e.kind.as_str()),
        detail: detail.as_deref(),
        auth_scheme: id.map(|i| i.scheme().as_str()),
        user: id.map(Identity::user),
        principal: id.map(Identity::principal),
        delegation: facts.delegation.and_then(|(route, ticket, kdc)| {
            let spn = ctx.shared.cfg.routes.get(route).options.spn.as_deref()?;
            Some(Delegation { spn, ticket, kdc })
        }),
    });
}
