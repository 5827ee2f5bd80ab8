//! Phase 3: who the client is. The auth module's state machine runs inline on the core (NTLM
//! and Basic against the local store cost microseconds); Kerberos, winbind and Basic via the
//! KDC are awaited on the blocking pool. Only the auth module can mint an
//! [`Identity`](crate::auth::Identity); this phase records it in the session.

use super::challenge;
use super::ctx::WorkerCtx;
use super::route::Routed;
use super::session::{Done, Failed, Session};
use super::Client;
use crate::auth::Verdict;

pub(super) enum Authenticated {
    /// The request may go on. `protected`: the route authenticates (the client's
    /// `Authorization` is for the proxy and never reaches the backend); `headers`: what the
    /// response carries from the handshake (the final Negotiate token, Persistent-Auth).
    Yes {
        protected: bool,
        headers: Vec<(&'static str, Vec<u8>)>,
    },
    /// The proxy answered with a 401 challenge.
    Answered(Done),
}

pub(super) async fn authenticate(
    c: &mut Client,
    ctx: &WorkerCtx,
    s: &mut Session,
    req: &Routed,
) -> Result<Authenticated, Failed> {
    let opts = &ctx.shared.cfg.routes.get(req.route).options;
    let offers = opts.offers_for(s.head.header(&c.buf, "user-agent"));
    if offers.is_empty() {
        return Ok(Authenticated::Yes {
            protected: false,
            headers: Vec::new(),
        });
    }
    let authz = s.head.header(&c.buf, "authorization");
    let tls = c.stream.is_tls();
    match ctx.auth.authenticate(&mut c.auth, offers, authz, tls).await {
        Verdict::Proceed { identity, headers } => {
            s.facts.identity = identity;
            Ok(Authenticated::Yes {
                protected: true,
                headers,
            })
        }
        Verdict::Challenge {
            www_authenticate,
            error,
        } => {
            s.facts.auth_note = Some(error);
            let done = challenge::refuse_401(c, ctx, s, &req.meta, www_authenticate).await;
            Ok(Authenticated::Answered(done))
        }
        // 503 (KDC or DC down, pool full) or 500: the client's credentials were not judged.
        Verdict::Fail(error) => Err((error, req.bodyless)),
    }
}
