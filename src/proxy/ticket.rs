//! The delegated backend leg (routes with `spn=`): the backend sees the user, with a service
//! ticket for its SPN obtained by S4U2Self + S4U2Proxy (or S4U2Proxy alone with a Kerberos
//! client's own ticket as evidence; MS-SFU 3.1.5.1, 3.1.5.2). The ticket goes only on a
//! backend connection not yet authenticated as the user (IIS and mod_auth_gssapi keep Kerberos
//! per connection), and the backend's answer to it is checked before the client sees anything.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::ctx::WorkerCtx;
use super::relay::{GateStop, HeadGate};
use crate::auth::Identity;
use crate::backend::{BackendConn, PoolKey};
use crate::config::Backend;
use crate::error::{Error, ErrorKind};
use crate::kcd::{BackendToken, DelegationError, Delegator, Subject};

/// A delegating route's request: who, to which SPN.
pub(super) struct Delegation<'a> {
    delegator: &'a Delegator,
    spn: &'a str,
    identity: &'a Identity,
    /// (user, SPN) for the backend pool key: shared strings, no copy per request.
    key: (Rc<str>, Rc<str>),
}

/// A ticket sent on one attempt, and where it came from (for the access log).
pub(super) struct Ticket {
    pub header: Vec<u8>,
    pub source: &'static str,
    pub kdc_time: Option<std::time::Duration>,
}

/// The delegation of this request, if its route delegates.
pub(super) fn delegation<'a>(
    ctx: &'a WorkerCtx,
    route: usize,
    identity: Option<&'a Identity>,
) -> Result<Option<Delegation<'a>>, Error> {
    let spn = &ctx.shared.cfg.routes.get(route).options.spn;
    let (Some(spn), Some(delegator)) = (spn, ctx.shared.delegator.as_deref()) else {
        return Ok(None);
    };
    // Config makes spn= routes authenticated; never forward one anonymously.
    let Some(identity) = identity else {
        return Err(Error::new(
            ErrorKind::Internal,
            "delegating route without an identity",
        ));
    };
    Ok(Some(Delegation {
        delegator,
        spn,
        identity,
        key: (identity.principal_rc(), ctx.route_spn(route)),
    }))
}

impl Delegation<'_> {
    /// The pool key of a connection authenticated as this user for this SPN.
    pub fn pool_key(&self, backend: &Rc<Backend>) -> PoolKey {
        PoolKey {
            backend: backend.clone(),
            identity: Some(self.key.0.clone()),
            spn: Some(self.key.1.clone()),
        }
    }

    /// The user's ticket for `conn`, armed into `gate` for the check of the backend's answer.
    /// `channel_binding`: bind it to the backend's TLS certificate (RFC 5929 §4).
    pub async fn ticket(
        &self,
        conn: &BackendConn,
        channel_binding: bool,
        gate: &DelegGate,
    ) -> Result<Ticket, DelegationError> {
        let principal = self.identity.principal();
        let subject = match self.identity.evidence() {
            Some(cred) => Subject::Evidence { principal, cred },
            None => Subject::Transition { principal },
        };
        let cb = if channel_binding {
            conn.stream.tls_server_end_point()
        } else {
            None
        };
        let tok = self
            .delegator
            .token(subject, self.spn, cb.as_deref())
            .await?;
        let ticket = Ticket {
            header: tok.header_value().to_vec(),
            source: tok.cache().as_str(),
            kdc_time: tok.kdc_time(),
        };
        *gate.token.borrow_mut() = Some(tok);
        Ok(ticket)
    }
}

/// The delegated leg's look at the response head: a 401 never reaches the client, and the
/// backend's mutual-authentication token is checked before anything is relayed.
#[derive(Default)]
pub(super) struct DelegGate {
    /// The token sent on this attempt (taken by the check).
    token: RefCell<Option<BackendToken>>,
    /// The backend answered the ticket and proved itself (or sent no AP-REP, as IIS may).
    accepted: Cell<bool>,
}

impl DelegGate {
    pub fn accepted(&self) -> bool {
        self.accepted.get()
    }
}

impl HeadGate for DelegGate {
    fn check(&self, status: u16, negotiate: Option<&[u8]>) -> Result<(), GateStop> {
        if status == 401 {
            return Err(GateStop::Unauthorized);
        }
        if let Some(token) = self.token.borrow_mut().take() {
            token
                .verify_mutual(negotiate)
                .map_err(|e| GateStop::Fail(e.into()))?;
            self.accepted.set(true);
        }
        Ok(())
    }
}
