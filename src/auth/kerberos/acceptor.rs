//! The acceptor: `gss_accept_sec_context` with the proxy's keytab, one round, on the pool;
//! and Basic passwords checked with the KDC through the same keytab.
//!
//! Invariants: a [`KerberosAccepted`] is made only by [`KerberosAcceptor::accept`]; an
//! acceptor is never built with the replay cache turned off; every call here may block (keytab,
//! replay cache, KDC) and belongs on the [`BlockingPool`].

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libgssapi::context::{CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::oid::GSS_MECH_KRB5;

use super::{classify, classify_login, parse_token, KerberosError, KrbWrapping};
use crate::gss::context::{initiate, InitiateError};
use crate::gss::cred::{self, CredStore, DelegatedCred};
use crate::gss::spnego::{self, NegState};
use crate::gss::status::krb5_code;
use crate::gss::{BlockingPool, GssStatus};

/// How to build an acceptor.
#[derive(Clone, Debug, Default)]
pub struct AcceptorConfig {
    /// The keytab holding the proxy's service keys (`HTTP/proxy.example.test@REALM`).
    pub keytab: PathBuf,
    /// Decrypt tickets only with this principal's keys (`HTTP/proxy.example.test@EXAMPLE.TEST`).
    /// `None`: whichever keytab entry the ticket names (MIT's default). MIT checks the key,
    /// not the ticket's server name, so on AD — where all SPNs of an account share its keys —
    /// a ticket for another SPN or the account name of the same account is accepted too.
    /// Must be `None` with [`login`](Self::login), which then names the keys.
    pub principal: Option<String>,
    /// Keep clients' tickets usable for S4U2Proxy: the acceptor credential becomes usage
    /// `Both`, logging in from the same keytab as this principal (`svc-proxy@EXAMPLE.TEST` on
    /// AD, whose KDC refuses an SPN as a login name; `HTTP/proxy.example.test@MIT.TEST` on
    /// MIT). MIT gets the TGT when the acceptor is built (~30 ms against the lab's AD) and
    /// renews it from the keytab once it nears expiry, inside whichever GSS call needs it
    /// (not verified which: assume an `accept` may talk to the KDC). `None`: accept
    /// only; [`KerberosAccepted::delegated`] is then only a TGT the client chose to delegate.
    pub login: Option<String>,
    /// The replay cache (`rcache` store entry, e.g. `file2:/var/lib/kcdproxy/rcache2`).
    /// `None`: MIT's default, `$KRB5RCACHENAME`, or `$KRB5RCACHEDIR/krb5_<euid>.rcache2`
    /// (`/var/tmp` without the variable).
    pub rcache: Option<String>,
}

/// Accepts Kerberos AP-REQs for the proxy. `Send + Sync`: one per process, shared by all pool
/// threads (`Arc<KerberosAcceptor>`); each `accept` makes its own short-lived GSS context.
pub struct KerberosAcceptor {
    cred: Cred,
    with_evidence: bool,
}

impl fmt::Debug for KerberosAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KerberosAcceptor")
            .field("with_evidence", &self.with_evidence)
            .finish_non_exhaustive()
    }
}

/// Distinguishes the in-memory ccaches of acceptors in one process.
static ACCEPTOR_SEQ: AtomicU64 = AtomicU64::new(0);

impl KerberosAcceptor {
    /// Builds the acceptor credential (BLOCKING: reads the keytab; with `login`, MIT may get
    /// a TGT now or on first use). Refuses a turned-off replay cache.
    pub fn new(config: &AcceptorConfig) -> Result<Self, KerberosError> {
        let rcache_off = |v: &str| v.trim().eq_ignore_ascii_case("none") || v.starts_with("none:");
        if let Some(r) = &config.rcache {
            if rcache_off(r) {
                return Err(KerberosError::ReplayCache(format!(
                    "rcache {r:?} turns replay detection off"
                )));
            }
        } else {
            for var in ["KRB5RCACHENAME", "KRB5RCACHETYPE"] {
                if std::env::var(var).is_ok_and(|v| rcache_off(&v)) {
                    return Err(KerberosError::ReplayCache(format!(
                        "{var} turns replay detection off"
                    )));
                }
            }
        }
        if config.login.is_some() && config.principal.is_some() {
            return Err(KerberosError::Credential(
                "set the acceptor principal or the login principal, not both".into(),
            ));
        }
        let cred_err = |e: GssStatus| {
            KerberosError::Credential(format!("keytab {}: {e}", config.keytab.display()))
        };
        let mut store = CredStore::new().keytab(&config.keytab).map_err(cred_err)?;
        if let Some(r) = &config.rcache {
            store = store.rcache(r).map_err(cred_err)?;
        }
        let (usage, name) = match &config.login {
            None => (CredUsage::Accept, config.principal.as_deref()),
            Some(login) => {
                let ccache = format!(
                    "MEMORY:kcdproxy-acceptor-{}-{}",
                    std::process::id(),
                    ACCEPTOR_SEQ.fetch_add(1, Ordering::Relaxed)
                );
                store = store
                    .client_keytab(&config.keytab)
                    .and_then(|s| s.ccache(&ccache))
                    .map_err(cred_err)?;
                (CredUsage::Both, Some(login.as_str()))
            }
        };
        let cred = cred::acquire_from(name, usage, &store).map_err(cred_err)?;
        Ok(KerberosAcceptor {
            cred,
            with_evidence: config.login.is_some(),
        })
    }

    /// Accepts one client token (raw krb5 or SPNEGO, see [`parse_token`]) in a single round.
    /// BLOCKING (keytab, replay cache, maybe the KDC): run it in the pool.
    pub fn accept(&self, token: &[u8]) -> Result<KerberosAccepted, KerberosError> {
        let parsed = parse_token(token)?;
        let mut ctx = ServerCtx::new(Some(self.cred.clone()));
        let out = ctx
            .step(parsed.ap_req, None)
            .map_err(|e| classify(e.into()))?;
        if !ctx.is_complete() {
            return Err(KerberosError::ContinueNeeded);
        }
        let gss = |e: libgssapi::error::Error| KerberosError::Gss(GssStatus::from(e).to_string());
        if ctx.mechanism().map_err(gss)? != GSS_MECH_KRB5 {
            return Err(KerberosError::Malformed("context is not krb5"));
        }
        let flags = ctx.flags().map_err(gss)?;
        if flags.contains(CtxFlags::GSS_C_ANON_FLAG) {
            return Err(KerberosError::Anonymous);
        }
        let name = ctx
            .source_name()
            .map_err(gss)?
            .display_name()
            .map_err(gss)?;
        let principal = std::str::from_utf8(&name)
            .map_err(|_| KerberosError::Malformed("client principal is not UTF-8"))?
            .to_owned();
        if principal.is_empty() {
            return Err(KerberosError::Anonymous);
        }
        let ap_rep = out.map(|b| b.to_vec());
        let response_token = match parsed.wrapping {
            KrbWrapping::Raw => ap_rep,
            KrbWrapping::Spnego {
                mech,
                mech_types_der,
                mech_list_mic,
            } => {
                // RFC 4178 §5: a MIC from the client is checked, and then answered with ours.
                let our_mic = match mech_list_mic {
                    Some(mic) => {
                        ctx.verify_mic(mech_types_der, mic)
                            .map_err(|_| KerberosError::MicMismatch)?;
                        Some(ctx.get_mic(mech_types_der).map_err(gss)?.to_vec())
                    }
                    None => None,
                };
                Some(spnego::build_neg_token_resp(
                    NegState::AcceptCompleted,
                    Some(mech),
                    ap_rep.as_deref(),
                    our_mic.as_deref(),
                ))
            }
        };
        let lifetime = ctx.lifetime().ok();
        let delegated = ctx.take_delegated_cred().map(DelegatedCred::from_accepted);
        Ok(KerberosAccepted {
            principal,
            response_token,
            delegated,
            lifetime,
        })
    }

    /// [`accept`](Self::accept) on `pool` with `timeout`, from a core thread: never blocks it.
    pub async fn accept_in(
        self: &Arc<Self>,
        pool: &BlockingPool,
        timeout: Duration,
        token: Vec<u8>,
    ) -> Result<KerberosAccepted, KerberosError> {
        let me = Arc::clone(self);
        match pool.try_run(timeout, move || me.accept(&token)).await {
            Ok(result) => result,
            Err(e) => Err(KerberosError::Pool(e)),
        }
    }
}

impl KerberosAcceptor {
    /// Checks a Basic password with the KDC: logs `principal` in with `password` (an AS
    /// exchange), then gets a ticket for the proxy's own `service` and accepts it with our
    /// keytab. The second step is what makes the answer trustworthy: a forged KDC can hand
    /// out a TGT for any password, but not a ticket sealed with our service key (the check
    /// `krb5_verify_init_creds` makes). Returns the principal the ticket names. BLOCKING.
    pub fn check_password(
        &self,
        principal: &str,
        password: &str,
        service: &str,
    ) -> Result<String, KerberosError> {
        let name = cred::krb5_name(principal)
            .map_err(|_| KerberosError::Password("basic_bad_user_name"))?;
        let mechs =
            cred::mech_set(&[GSS_MECH_KRB5]).map_err(|s| KerberosError::Gss(s.to_string()))?;
        let user = cred::password_login(&name, password, &mechs).map_err(classify_login)?;
        let (_, token) = initiate(
            &user,
            service,
            CtxFlags::GSS_C_MUTUAL_FLAG,
            GSS_MECH_KRB5,
            None,
        )
        .map_err(|e| match e {
            InitiateError::Name(s) => KerberosError::Credential(format!("{service}: {s}")),
            InitiateError::Step(s) if s.krb5_code() == Some(krb5_code::KDC_UNREACH) => {
                KerberosError::KdcUnreachable(s.to_string())
            }
            InitiateError::Step(s) => {
                KerberosError::Credential(format!("ticket for {service}: {s}"))
            }
            InitiateError::NoToken => KerberosError::Malformed("the initiator produced no token"),
        })?;
        let accepted = self.accept(&token)?;
        Ok(accepted.principal)
    }
}

/// A verified Kerberos login. Only [`KerberosAcceptor::accept`] makes one.
pub struct KerberosAccepted {
    principal: String,
    response_token: Option<Vec<u8>>,
    delegated: Option<DelegatedCred>,
    lifetime: Option<Duration>,
}

impl KerberosAccepted {
    /// The client's principal as the ticket names it, e.g. `alice@EXAMPLE.TEST` (an
    /// enterprise login shows as `alice\@alt.test@EXAMPLE.TEST`).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The token for the final `WWW-Authenticate: Negotiate <b64>`: a NegTokenResp
    /// (accept-completed + AP-REP when the client asked for mutual authentication) for
    /// SPNEGO, the bare AP-REP for a raw token, `None` for a raw token without mutual auth.
    pub fn response_token(&self) -> Option<&[u8]> {
        self.response_token.as_deref()
    }

    pub fn take_response_token(&mut self) -> Option<Vec<u8>> {
        self.response_token.take()
    }

    /// The client's credential for S4U2Proxy (see the module doc), if any.
    pub fn delegated(&self) -> Option<&DelegatedCred> {
        self.delegated.as_ref()
    }

    pub fn take_delegated(&mut self) -> Option<DelegatedCred> {
        self.delegated.take()
    }

    /// How long the client's ticket is still valid, as GSS-API reports the context lifetime.
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

impl fmt::Debug for KerberosAccepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KerberosAccepted")
            .field("principal", &self.principal)
            .field(
                "response_token",
                &self.response_token.as_ref().map(Vec::len),
            )
            .field("delegated", &self.delegated)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptor_refuses_a_disabled_replay_cache() {
        let cfg = AcceptorConfig {
            keytab: PathBuf::from("/nonexistent.keytab"),
            rcache: Some("none:".into()),
            ..AcceptorConfig::default()
        };
        assert!(matches!(
            KerberosAcceptor::new(&cfg),
            Err(KerberosError::ReplayCache(_))
        ));
    }

    #[test]
    fn acceptor_and_results_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KerberosAcceptor>();
        send_sync::<KerberosAccepted>();
        send_sync::<KerberosError>();
    }
}
