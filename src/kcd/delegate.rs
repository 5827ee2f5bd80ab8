//! The delegation engine: a backend `Authorization: Negotiate` token *as the user*, by
//! Kerberos Constrained Delegation (MS-SFU 3.1.5.1 S4U2self, 3.1.5.2 S4U2proxy; RFC 5929 channel bindings).
//!
//! ```text
//!  core thread                                  pool thread (blocking, deadline = kdc_timeout)
//!  token(subject, spn, cb)
//!   ├─ cache hit ─► ClientCtx::step on the core   (no KDC: the service ticket is in the
//!   │              (~0.1 ms, see below)             cached credential's MEMORY ccache)
//!   ├─ refused   ─► the remembered error (negative cache, no KDC)
//!   ├─ joined    ─► wait for the exchange in flight for this (user, SPN)
//!   └─ miss      ─► pool.try_run ──────────────────► [renew the proxy's TGT from the keytab]
//!                                                    S4U2Self (Cred::impersonate)   Transition
//!                                                    first ClientCtx::step = S4U2Proxy TGS-REQ
//!                    ◄── AP-REQ + context ◄────────── store the credential in the cache
//! ```
//!
//! ## What runs where, and why it is safe on a core
//!
//! Every GSS call that may reach the KDC runs on the [`BlockingPool`]: acquiring and renewing
//! the proxy's own credential (`gss_acquire_cred_from` with a client keytab), S4U2Self
//! (`gss_acquire_cred_impersonate_name`) and the first `gss_init_sec_context` for an SPN
//! (S4U2Proxy). The proxy's credential — the only one MIT would renew by itself from the
//! keytab inside a call — is used only there.
//!
//! A cache hit calls `gss_init_sec_context` on the core with the cached credential (the
//! impersonated credential, or the client's evidence credential). MIT finds the service
//! ticket that the S4U2Proxy exchange stored in that credential's own MEMORY ccache and
//! builds the AP-REQ locally; the lab test counts KDC log lines to prove it. That credential
//! has no keytab, so MIT cannot try to renew it. The one way such a call could still go to the
//! KDC is a service ticket that has expired, so a hit is served only while the expiry recorded
//! at exchange time is more than a margin away (see [`super::cache`]); after that the request
//! is a miss and goes to the pool. The call does read the krb5 profile (a `stat` of
//! krb5.conf, cached by MIT) — file metadata, not network.
//!
//! ## Cache semantics
//!
//! Keyed by (user principal, SPN) exactly as given. The value is a credential *for that
//! principal*: an impersonated one (Transition) or the client's evidence (Evidence; its name is
//! checked against `principal` before the exchange), so no ticket can serve another principal.
//! Both paths share a key: a Kerberos client and an NTLM client that are the same user may get
//! the same cached ticket (an S4U2Self-based PAC carries AD's "service asserted identity" SID
//! instead of "authentication authority asserted identity"; backends that authorise on that
//! SID need separate keys, which this engine does not do).
//!
//! Single-flight, refresh-ahead, negative cache and the bound are in [`super::cache`].
//!
//! ## Refusals
//!
//! The KDC says `KDC_ERR_BADOPTION` for a sensitive user, an SPN outside the proxy's list, and
//! protocol transition turned off. After a refused S4U2Proxy the user's ticket tells them
//! apart ([`crate::gss::tickets`] reads the flags GSS-API does not show): an S4U2Self ticket — or a
//! Kerberos client's evidence ticket — without the forwardable flag means the user cannot be
//! delegated ([`Refusal::UserNotDelegable`], 403); with it, the SPN was refused
//! ([`Refusal::SpnNotAllowed`], 502: configuration between proxy and backend). The flags are
//! read only on that path, so a successful exchange costs nothing extra. Only when they cannot
//! be read does `Inner::refine_refusal` fall back to history (an SPN that worked for someone is
//! allowed).
//!
//! ## Channel bindings
//!
//! `channel_bindings` is the RFC 5929 `tls-server-end-point` application data (the bytes
//! `tls-server-end-point:` followed by the hash of the backend's certificate). It goes into the
//! `gss_channel_bindings_struct`'s application data (addresses empty), which is what Windows'
//! Extended Protection checks (Kerberos puts its MD5 into the authenticator's checksum).
//!
//! ## Mechanism
//!
//! The AP-REQ is sent as a raw krb5 GSS token (`Negotiate <base64 krb5 token>`), which IIS,
//! HTTP.sys and mod_auth_gssapi accept (Java's clients send the same); the backend answers
//! in kind. [`BackendToken::verify_mutual`] also accepts a SPNEGO NegTokenResp answer.

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::oid::GSS_MECH_KRB5;

use super::cache::{Entry, Flight, Key, Lookup, TicketCache};
use super::error::{classify, gss, status, Phase};
use super::stats::{bump, Counters, DelegationStats};
use super::token::{header_value, BackendToken, CacheOutcome};
use super::{DelegationError, Refusal};
use crate::gss::context::{initiate, InitiateError};
use crate::gss::cred::{self, CredStore, DelegatedCred};
use crate::gss::{tickets, BlockingPool, GssStatus};

/// How to delegate. See the field docs for defaults ([`DelegationConfig::new`]).
#[derive(Clone, Debug)]
pub struct DelegationConfig {
    /// The proxy's keytab: keys of [`login`](Self::login) (lab: `KCD_LAB_AD_PROXY_KEYTAB`).
    pub keytab: PathBuf,
    /// The principal the proxy logs in as: `svc-proxy@EXAMPLE.TEST` on AD (whose KDC refuses
    /// an SPN as AS-REQ client), `HTTP/proxy.example.test@MIT.TEST` on MIT. Its realm is the
    /// realm of SPNs given without one.
    pub login: String,
    /// Deadline around every KDC-bound call (MIT 1.20 has none of its own: a KDC that drops
    /// packets blocks it 18–36 s). Default 5 s.
    pub kdc_timeout: Duration,
    /// Renew a cached ticket (and the proxy's TGT) this long before it expires. Default 5 min.
    pub refresh_ahead: Duration,
    /// How long a KDC refusal is remembered per (user, SPN). Default 30 s.
    pub negative_ttl: Duration,
    /// At most this many (user, SPN) entries. Default 10 000.
    pub max_entries: usize,
}

impl DelegationConfig {
    pub fn new(keytab: impl Into<PathBuf>, login: impl Into<String>) -> Self {
        DelegationConfig {
            keytab: keytab.into(),
            login: login.into(),
            kdc_timeout: Duration::from_secs(5),
            refresh_ahead: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(30),
            max_entries: 10_000,
        }
    }
}

/// Whose ticket to get.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// NTLM/Basic clients: protocol transition. S4U2Self for `principal` (`user@REALM`), then
    /// S4U2Proxy.
    Transition { principal: &'a str },
    /// Kerberos clients: S4U2Proxy with the client's own ticket as evidence (no S4U2Self).
    /// `principal` must be the credential's own name (as `KerberosAccepted::principal`).
    Evidence {
        principal: &'a str,
        cred: &'a DelegatedCred,
    },
}

impl Subject<'_> {
    fn principal(&self) -> &str {
        match self {
            Subject::Transition { principal } | Subject::Evidence { principal, .. } => principal,
        }
    }

    fn evidence(&self) -> Option<Cred> {
        match self {
            Subject::Transition { .. } => None,
            Subject::Evidence { cred, .. } => Some(cred.gss_cred().clone()),
        }
    }
}

/// A cached credential: it holds the service ticket for the key's SPN in its own ccache.
#[derive(Clone)]
struct Ticket {
    cred: Cred,
}

/// The proxy's own credential (TGT from the keytab), used only on pool threads.
struct ProxyCred {
    cred: Cred,
    /// Renew (a fresh login from the keytab) from this instant on.
    renew_at: Instant,
    /// When the credential ends, in seconds since the UNIX epoch.
    ends_unix: u64,
}

struct Inner {
    cfg: DelegationConfig,
    /// The login principal's realm: the realm of SPNs given without one.
    realm: String,
    pool: Arc<BlockingPool>,
    /// INVARIANT: locked only on pool threads (and in `new`), around a GSS login at most.
    proxy: Mutex<ProxyCred>,
    cache: TicketCache<Ticket, DelegationError>,
    /// The end of the proxy's current credential (seconds since the UNIX epoch), readable
    /// without the `proxy` mutex, which only pool threads take.
    proxy_ends_unix: AtomicU64,
    /// SPNs (with realm) that a Transition S4U2Proxy succeeded for: see `refine_refusal`.
    /// Bounded by the configured routes' SPNs (only SPNs the KDC granted get in).
    good_spns: RwLock<HashSet<String>>,
    stats: Counters,
}

/// The engine. `Send + Sync`: one per process, `Arc`-shared by all core threads.
pub struct Delegator {
    inner: Arc<Inner>,
}

impl fmt::Debug for Delegator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delegator")
            .field("login", &self.inner.cfg.login)
            .field("entries", &self.inner.cache.len())
            .finish_non_exhaustive()
    }
}

/// Distinguishes the MEMORY ccaches of the proxy's logins in one process.
static LOGIN_SEQ: AtomicU64 = AtomicU64::new(0);

impl Delegator {
    /// Logs the proxy in from its keytab (BLOCKING: keytab and the first TGT). Call once at
    /// start-up, off the cores.
    pub fn new(cfg: DelegationConfig, pool: Arc<BlockingPool>) -> Result<Self, DelegationError> {
        let realm = match cfg.login.rsplit_once('@') {
            Some((_, r)) if !r.is_empty() => r.to_owned(),
            _ => return Err(DelegationError::BadName("login principal has no realm")),
        };
        let stats = Counters::default();
        let proxy = login(&cfg, &stats)?;
        let cache = TicketCache::new(
            cfg.max_entries,
            cfg.refresh_ahead,
            cfg.negative_ttl,
            // A refresh that failed (KDC down) is retried after one KDC deadline.
            cfg.kdc_timeout.max(Duration::from_secs(1)),
        );
        Ok(Delegator {
            inner: Arc::new(Inner {
                cfg,
                realm,
                pool,
                proxy_ends_unix: AtomicU64::new(proxy.ends_unix),
                proxy: Mutex::new(proxy),
                cache,
                good_spns: RwLock::new(HashSet::new()),
                stats,
            }),
        })
    }

    /// The `Authorization` value for a backend request as `subject` to `spn`
    /// (`HTTP/backend.example.test`, or with `@REALM`). From a core thread: never blocks it
    /// (see the module doc for what runs where).
    pub async fn token(
        &self,
        subject: Subject<'_>,
        spn: &str,
        channel_bindings: Option<&[u8]>,
    ) -> Result<BackendToken, DelegationError> {
        let inner = &self.inner;
        let principal = subject.principal();
        let key = Key::new(principal, spn).ok_or(DelegationError::BadName(
            "empty principal or SPN, or a NUL byte in one",
        ))?;
        let target = inner.target(spn);
        match inner.cache.lookup(&key, Instant::now()) {
            Lookup::Fresh(entry) => inner.hit(&entry, &target, channel_bindings),
            Lookup::Stale(entry, refresh) => {
                if let Some(flight) = refresh {
                    self.start_refresh(flight, subject, target.clone());
                }
                inner.hit(&entry, &target, channel_bindings)
            }
            Lookup::Refused(e) => {
                bump(&inner.stats.negative_hits);
                tracing::debug!(
                    principal,
                    spn,
                    reason = e.as_str(),
                    "delegation refused (cached)"
                );
                Err(e)
            }
            Lookup::Join(waiter) => {
                bump(&inner.stats.joined);
                let started = Instant::now();
                match waiter.wait(inner.cfg.kdc_timeout).await {
                    Some(Ok(entry)) => {
                        let mut tok = inner.build(&entry, &target, channel_bindings)?;
                        tok.cache = CacheOutcome::Joined;
                        tok.kdc_time = Some(started.elapsed());
                        Ok(tok)
                    }
                    Some(Err(e)) => Err(e),
                    None => {
                        bump(&inner.stats.kdc_errors);
                        Err(DelegationError::KdcUnavailable {
                            reason: "kdc_timeout",
                        })
                    }
                }
            }
            Lookup::Lead(flight) => {
                bump(&inner.stats.misses);
                let started = Instant::now();
                let job = Exchange {
                    principal: principal.to_owned(),
                    target,
                    evidence: subject.evidence(),
                    cb: channel_bindings.map(<[u8]>::to_vec),
                };
                let me = Arc::clone(inner);
                // The flight moves into the job: whatever happens to the job (done, skipped
                // after our deadline, panic), the key is resolved for the waiters.
                let ran = inner
                    .pool
                    .try_run(inner.cfg.kdc_timeout, move || {
                        me.exchange_and_store(job, flight)
                    })
                    .await;
                match ran {
                    Ok(Ok((ctx, token))) => Ok(BackendToken {
                        header: header_value(&token),
                        ctx,
                        cache: CacheOutcome::Miss,
                        kdc_time: Some(started.elapsed()),
                    }),
                    Ok(Err(e)) => Err(e),
                    Err(e) => {
                        bump(&inner.stats.kdc_errors);
                        tracing::warn!(
                            principal,
                            spn,
                            reason = e.as_str(),
                            "KDC exchange not done"
                        );
                        Err(DelegationError::pool(e))
                    }
                }
            }
        }
    }

    /// Starts the one background refresh of a ticket inside its refresh window. Fire and
    /// forget: the job stores its result; when the pool is full it is simply not started, and
    /// the cache's backoff lets a later request try again.
    fn start_refresh(
        &self,
        flight: Flight<Ticket, DelegationError>,
        subject: Subject<'_>,
        target: String,
    ) {
        let inner = &self.inner;
        bump(&inner.stats.refreshes);
        let job = Exchange {
            principal: subject.principal().to_owned(),
            target,
            evidence: subject.evidence(),
            cb: None,
        };
        let me = Arc::clone(inner);
        if let Err(e) = inner.pool.try_submit(move || {
            let _ = me.exchange_and_store(job, flight);
        }) {
            tracing::debug!(reason = e.as_str(), "ticket refresh not started");
        }
    }
    /// A snapshot of the counters.
    pub fn stats(&self) -> DelegationStats {
        self.inner.stats.snapshot(self.inner.cache.len() as u64)
    }

    /// Whether the proxy's own login (its TGT from the keytab) is still valid. It is renewed
    /// ahead of its end on the first delegation after `refresh_ahead`; when the KDC or the
    /// keytab keeps that renewal failing, the credential runs out and no user can be
    /// delegated. Cheap (one atomic), for `/readyz`.
    pub fn proxy_login_valid(&self) -> bool {
        unix_now() < self.inner.proxy_ends_unix.load(Ordering::Relaxed)
    }

    /// The login principal, for messages.
    pub fn login_principal(&self) -> &str {
        &self.inner.cfg.login
    }
}

/// One KDC exchange's input, owned so it can move to a pool thread.
struct Exchange {
    principal: String,
    target: String,
    evidence: Option<Cred>,
    cb: Option<Vec<u8>>,
}

impl Inner {
    /// `spn@REALM`: with the realm named, MIT neither canonicalises nor asks for a referral,
    /// so the S4U2Proxy result is stored and found again under exactly this name.
    fn target(&self, spn: &str) -> String {
        if spn.contains('@') {
            spn.to_owned()
        } else {
            format!("{spn}@{}", self.realm)
        }
    }

    fn hit(
        &self,
        entry: &Entry<Ticket>,
        target: &str,
        cb: Option<&[u8]>,
    ) -> Result<BackendToken, DelegationError> {
        bump(&self.stats.hits);
        self.build(entry, target, cb)
    }

    /// An AP-REQ from a cached credential, on the calling thread (see the module doc).
    fn build(
        &self,
        entry: &Entry<Ticket>,
        target: &str,
        cb: Option<&[u8]>,
    ) -> Result<BackendToken, DelegationError> {
        let (ctx, token) =
            first_step(&entry.value.cred, target, cb).map_err(StepError::into_error)?;
        Ok(BackendToken {
            header: header_value(&token),
            ctx,
            cache: CacheOutcome::Hit,
            kdc_time: None,
        })
    }

    /// On a pool thread: the exchange, its result stored for everyone (the flight), and the
    /// first context for the caller that led it.
    fn exchange_and_store(
        &self,
        job: Exchange,
        flight: Flight<Ticket, DelegationError>,
    ) -> Result<(ClientCtx, Vec<u8>), DelegationError> {
        let refresh = flight.is_refresh();
        let started = Instant::now();
        let result = self.exchange(&job);
        let took = started.elapsed();
        self.stats.kdc_latency_us_sum.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        bump(&self.stats.kdc_latency_count);
        match result {
            Ok((ticket, expires, ctx, token)) => {
                tracing::debug!(
                    principal = %job.principal,
                    target = %job.target,
                    refresh,
                    ms = took.as_secs_f64() * 1e3,
                    valid_s = expires.saturating_duration_since(Instant::now()).as_secs(),
                    "delegated ticket obtained"
                );
                let entry = flight.cache().entry(ticket, expires);
                flight.complete(Ok(entry));
                Ok((ctx, token))
            }
            Err(e) => {
                match &e {
                    DelegationError::Refused { detail, .. } => {
                        bump(&self.stats.refusals);
                        tracing::warn!(
                            principal = %job.principal, target = %job.target,
                            reason = e.as_str(), kdc = %detail, "delegation refused"
                        );
                    }
                    DelegationError::UnknownPrincipal(_) => {
                        bump(&self.stats.refusals);
                        tracing::warn!(
                            principal = %job.principal, target = %job.target,
                            reason = e.as_str(), "delegation refused"
                        );
                    }
                    DelegationError::KdcUnavailable { .. } => {
                        bump(&self.stats.kdc_errors);
                        tracing::warn!(principal = %job.principal, error = %e, "KDC unavailable");
                    }
                    _ => {
                        tracing::warn!(principal = %job.principal, error = %e, "delegation failed")
                    }
                }
                flight.complete(Err(e.clone()));
                Err(e)
            }
        }
    }

    /// S4U2Self (Transition) and S4U2Proxy. BLOCKING.
    fn exchange(
        &self,
        job: &Exchange,
    ) -> Result<(Ticket, Instant, ClientCtx, Vec<u8>), DelegationError> {
        let (cred, phase) = match &job.evidence {
            Some(evidence) => {
                // The evidence must be the principal's own: never cache one user's ticket
                // under another's name.
                let name = cred_name(evidence)?;
                if name != job.principal {
                    return Err(DelegationError::BadName(
                        "evidence credential is not the principal's",
                    ));
                }
                (evidence.clone(), Phase::S4u2ProxyEvidence)
            }
            None => {
                let proxy = self.proxy_cred()?;
                let user = cred::krb5_name(&job.principal)
                    .map_err(|_| DelegationError::BadName("user principal does not parse"))?;
                let mechs = cred::mech_set(&[GSS_MECH_KRB5]).map_err(status)?;
                bump(&self.stats.s4u2self);
                let cred = proxy
                    .impersonate(&user, None, CredUsage::Initiate, Some(&mechs))
                    .map_err(|e| classify(e.into(), Phase::S4u2Self))?;
                (cred, Phase::S4u2ProxyTransition)
            }
        };
        bump(&self.stats.s4u2proxy);
        let (ctx, token) =
            first_step(&cred, &job.target, job.cb.as_deref()).map_err(|e| match e {
                StepError::Status(s) => {
                    self.explain_refusal(classify(s, phase), &cred, &job.target)
                }
                StepError::Other(e) => e,
            })?;
        // Either path proves the proxy may delegate to this SPN (one allowed-to list).
        {
            self.good_spns
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(job.target.clone());
        }
        // The expiry: MIT reports no lifetime for a context that awaits the AP-REP (0), so
        // the credential's is used: the S4U2Self (or evidence) ticket's end, which bounds the
        // S4U2Proxy ticket's end (RFC 4120 / MS-SFU: the KDC never extends it). A KDC policy
        // that gives the backend's tickets a shorter life than the user's is not seen here.
        let now = Instant::now();
        let ctx_left = ctx.lifetime().ok().filter(|d| !d.is_zero());
        let cred_left = cred.lifetime().ok().filter(|d| !d.is_zero());
        // The backend's own service ticket, when libkrb5 can read it: a KDC policy may give
        // it a shorter life than the user's ticket.
        let ticket_left = service_ticket_left(&cred, &job.target);
        let left = [ctx_left, cred_left, ticket_left]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::ZERO);
        Ok((Ticket { cred }, now + left, ctx, token))
    }

    /// Who a refused S4U2Proxy is about. The KDC gives the same code for a user who may not
    /// be delegated and an SPN outside the proxy's list; the user's ticket (S4U2Self, or the
    /// client's evidence) tells them apart: without the forwardable flag the user is the
    /// problem (403), with it the SPN (502). Read only on this path: success costs nothing
    /// extra, and the negative cache keeps a refused user from asking again.
    fn explain_refusal(&self, e: DelegationError, cred: &Cred, target: &str) -> DelegationError {
        let DelegationError::Refused { reason, detail } = e else {
            return e;
        };
        match (reason, forwardable(cred)) {
            (_, Some(false)) => DelegationError::Refused {
                reason: Refusal::UserNotDelegable,
                detail: format!("the user's ticket is not forwardable ({detail})"),
            },
            (Refusal::SpnNotAllowed | Refusal::KdcRefused, Some(true)) => {
                DelegationError::Refused {
                    reason: Refusal::SpnNotAllowed,
                    detail,
                }
            }
            (reason, _) => self.refine_refusal(DelegationError::Refused { reason, detail }, target),
        }
    }

    /// A Transition S4U2Proxy refusal after S4U2Self when the S4U2Self ticket's flags could
    /// not be read (normally they are: see [`crate::gss::tickets`]). The KDC gives the same
    /// code for a sensitive user and an SPN outside the proxy's list, so this falls back to
    /// history: if this SPN has worked for another user since start-up, the SPN is allowed
    /// and the user is the problem; otherwise the SPN is blamed.
    fn refine_refusal(&self, e: DelegationError, target: &str) -> DelegationError {
        match e {
            DelegationError::Refused {
                reason: Refusal::SpnNotAllowed,
                detail,
            } if self
                .good_spns
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(target) =>
            {
                DelegationError::Refused {
                    reason: Refusal::UserNotDelegable,
                    detail,
                }
            }
            other => other,
        }
    }

    /// The proxy's credential, renewed from the keytab first when it is within `refresh_ahead`
    /// of its end. BLOCKING (pool threads only).
    fn proxy_cred(&self) -> Result<Cred, DelegationError> {
        let mut proxy = self.proxy.lock().unwrap_or_else(PoisonError::into_inner);
        if Instant::now() >= proxy.renew_at {
            // Other pool threads wait here for the renewal rather than start their own.
            *proxy = login(&self.cfg, &self.stats)?;
            self.proxy_ends_unix
                .store(proxy.ends_unix, Ordering::Relaxed);
        }
        Ok(proxy.cred.clone())
    }
}

/// A fresh login of the proxy from its keytab into a new MEMORY ccache (so it really is a new
/// AS exchange, not the old TGT read back). BLOCKING.
fn login(cfg: &DelegationConfig, stats: &Counters) -> Result<ProxyCred, DelegationError> {
    let ccache = format!(
        "MEMORY:kcdproxy-kcd-{}-{}",
        std::process::id(),
        LOGIN_SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let store = CredStore::new()
        .client_keytab(&cfg.keytab)
        .and_then(|s| s.ccache(&ccache))
        .map_err(|_| DelegationError::BadName("keytab path or ccache name has a NUL byte"))?;
    bump(&stats.proxy_logins);
    let cred = cred::acquire_from(Some(&cfg.login), CredUsage::Initiate, &store).map_err(|e| {
        match classify(e, Phase::Login) {
            DelegationError::Gss(t) => DelegationError::Gss(format!(
                "login {} from {}: {t}",
                cfg.login,
                cfg.keytab.display()
            )),
            other => other,
        }
    })?;
    // MIT gets the TGT lazily in some cases; asking for the lifetime makes it resolve now.
    let left = cred.lifetime().map_err(gss)?;
    if left.is_zero() {
        return Err(DelegationError::Gss(format!(
            "login {}: credential has no lifetime",
            cfg.login
        )));
    }
    let renew_in = left.saturating_sub(cfg.refresh_ahead).max(left / 2);
    tracing::info!(login = %cfg.login, valid_s = left.as_secs(), "proxy logged in from keytab");
    Ok(ProxyCred {
        cred,
        renew_at: Instant::now() + renew_in,
        ends_unix: unix_now() + left.as_secs(),
    })
}

/// Seconds since the UNIX epoch (0 on a clock before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The credential's name, for comparing with a principal.
fn cred_name(cred: &Cred) -> Result<String, DelegationError> {
    let name = cred.name().map_err(gss)?.display_name().map_err(gss)?;
    String::from_utf8(name.to_vec()).map_err(|_| DelegationError::BadName("principal is not UTF-8"))
}

/// `gss_init_sec_context` once: the AP-REQ (krb5, mutual authentication requested) and the
/// context that will check the AP-REP. May reach the KDC unless the service ticket is cached.
fn first_step(
    cred: &Cred,
    target: &str,
    cb: Option<&[u8]>,
) -> Result<(ClientCtx, Vec<u8>), StepError> {
    initiate(cred, target, CtxFlags::GSS_C_MUTUAL_FLAG, GSS_MECH_KRB5, cb).map_err(|e| match e {
        InitiateError::Name(_) => StepError::Other(DelegationError::BadName("SPN does not parse")),
        InitiateError::Step(s) => StepError::Status(s),
        InitiateError::NoToken => {
            StepError::Other(DelegationError::Gss("no AP-REQ produced".into()))
        }
    })
}

/// A failed [`first_step`]: the GSS status is kept so that an exchange can classify it by
/// phase; on a core it is just text.
enum StepError {
    Status(GssStatus),
    Other(DelegationError),
}

impl StepError {
    fn into_error(self) -> DelegationError {
        match self {
            StepError::Status(s) => DelegationError::Gss(s.to_string()),
            StepError::Other(e) => e,
        }
    }
}

/// Whether the credential's (non-TGT) tickets are forwardable: `None` when libkrb5 cannot
/// read them or the credential holds none.
fn forwardable(cred: &Cred) -> Option<bool> {
    let tickets = match tickets::tickets_of(cred) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "reading the credential's tickets");
            return None;
        }
    };
    let mut service = tickets
        .iter()
        .filter(|t| !tickets::is_tgt(&t.server))
        .peekable();
    service.peek()?;
    Some(service.any(|t| t.forwardable))
}

/// How long the ticket for `target` in `cred` has left, if libkrb5 can read it.
fn service_ticket_left(cred: &Cred, target: &str) -> Option<Duration> {
    let tickets = tickets::tickets_of(cred).ok()?;
    let end = tickets
        .iter()
        .filter(|t| t.server == target)
        .map(|t| t.endtime)
        .min()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(u64::from(end).saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Delegator>();
        send_sync::<DelegationError>();
        send::<BackendToken>();
    }
}
