//! The process-wide half of authentication: what every core shares (`Send + Sync`, built once
//! at start-up) and every check that may block, run on the blocking pool.
//!
//! ```text
//!  core (AuthCtx, inline)                      AuthServices (Arc, all cores)
//!  NTLM AUTHENTICATE ─ accept (µs) ──────────► winbind: pool ─ ntlm_auth ─ finish (MIC)
//!  Negotiate krb5 token ─ parse (µs) ────────► kerberos: pool ─ gss_accept_sec_context
//!  Basic user:password ─ cache lookup (µs) ──► pool ─ winbind (synthetic NTLMv2) or KDC
//! ```
//!
//! The core never waits on a lock held across a blocking call: the pool's queue mutex and the
//! Basic cache's mutex are held for a push or a lookup only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::kerberos::{AcceptorConfig, KerberosAccepted, KerberosAcceptor, KerberosError};
use super::ntlm::verify::PendingAuth;
use super::ntlm::winbind::{WinbindBackend, WinbindConfig};
use super::ntlm::{NtlmBackend, NtlmConfig, NtlmError, NtlmVerified};
use crate::config::{BasicVerify, Config};
use crate::gss::BlockingPool;

/// Shared authentication services. Everything optional is absent when not configured.
pub struct AuthServices {
    /// Where blocking checks run; present when anything below needs it.
    pool: Option<Arc<BlockingPool>>,
    kerberos: Option<Arc<KerberosAcceptor>>,
    /// The proxy's own service principal, for checking Basic passwords with the KDC.
    kerberos_spn: Option<String>,
    winbind: Option<Arc<WinbindSet>>,
    /// Resolved from `--basic-verify auto`: never `Auto` here.
    basic: BasicVerify,
    basic_cache: BasicCache,
    timeout: Duration,
}

impl std::fmt::Debug for AuthServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServices")
            .field("kerberos", &self.kerberos.is_some())
            .field("winbind", &self.winbind.is_some())
            .field("basic", &self.basic)
            .finish_non_exhaustive()
    }
}

/// Why a check that went off the core produced no verdict.
#[derive(Debug)]
pub enum OffCore<E> {
    /// The check ran and said no (or the input was bad).
    Refused(E),
    /// Nothing was decided: the pool is full, the deadline passed, the KDC or DC is down.
    Unavailable(&'static str),
}

impl AuthServices {
    /// Nothing configured: NTLM and Basic against the local hash file only, no Kerberos.
    pub fn none() -> Self {
        AuthServices {
            pool: None,
            kerberos: None,
            kerberos_spn: None,
            winbind: None,
            basic: BasicVerify::Local,
            basic_cache: BasicCache::new(Duration::ZERO),
            timeout: Duration::from_secs(5),
        }
    }

    /// Builds the services `cfg` asks for. BLOCKING: reads the keytab (and with a login
    /// principal, gets the proxy's TGT), starts and probes the winbind helpers. Start-up only.
    pub fn new(
        cfg: &Config,
        ntlm: &NtlmConfig,
        pool: Option<Arc<BlockingPool>>,
    ) -> Result<Self, Vec<String>> {
        let a = &cfg.auth;
        let mut errs = Vec::new();
        let kerberos = match &a.kerberos {
            Some(k) => match KerberosAcceptor::new(&AcceptorConfig {
                keytab: k.keytab.clone(),
                principal: None,
                login: k.login.clone(),
                rcache: k.rcache.clone(),
            }) {
                Ok(acc) => Some(Arc::new(acc)),
                Err(e) => {
                    errs.push(format!("--keytab `{}`: {e}", k.keytab.display()));
                    None
                }
            },
            None => None,
        };
        let winbind = a.winbind.as_ref().map(|argv| {
            let mut wc = WinbindConfig::new(argv.iter().map(String::as_str));
            wc.timeout = cfg.auth.kdc.timeout;
            // One helper per pool thread: each helper answers one check at a time.
            Arc::new(WinbindSet::new(&wc, ntlm, cfg.auth.kdc.threads.max(1)))
        });
        if let Some(set) = &winbind {
            if let Err(e) = set.backends[0].probe() {
                errs.push(format!("--winbind: {e}"));
            }
        }
        let basic = match a.basic_verify {
            BasicVerify::Auto if a.ntlm_hash_file.is_some() => BasicVerify::Local,
            BasicVerify::Auto if winbind.is_some() => BasicVerify::Winbind,
            BasicVerify::Auto if kerberos.is_some() => BasicVerify::Kdc,
            BasicVerify::Auto => BasicVerify::Local,
            other => other,
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        let needs_pool = kerberos.is_some() || winbind.is_some();
        Ok(AuthServices {
            pool: if needs_pool { pool } else { None },
            kerberos,
            kerberos_spn: a.kerberos.as_ref().and_then(|k| k.spn.clone()),
            winbind,
            basic,
            basic_cache: BasicCache::new(a.basic_cache_ttl),
            timeout: a.kdc.timeout,
        })
    }

    pub fn has_kerberos(&self) -> bool {
        self.kerberos.is_some()
    }

    pub fn has_winbind(&self) -> bool {
        self.winbind.is_some()
    }

    pub fn basic_verify(&self) -> BasicVerify {
        self.basic
    }

    pub fn basic_cache(&self) -> &BasicCache {
        &self.basic_cache
    }

    fn pool(&self) -> Result<&BlockingPool, &'static str> {
        self.pool.as_deref().ok_or("no KDC pool")
    }

    /// Accepts a client's Kerberos AP-REQ on the pool.
    pub async fn kerberos_accept(
        &self,
        token: Vec<u8>,
    ) -> Result<KerberosAccepted, OffCore<KerberosError>> {
        let (Some(acc), Ok(pool)) = (&self.kerberos, self.pool()) else {
            return Err(OffCore::Refused(KerberosError::Credential(
                "Kerberos is not configured (no --keytab)".into(),
            )));
        };
        match acc.accept_in(pool, self.timeout, token).await {
            Ok(a) => Ok(a),
            Err(KerberosError::Pool(p)) => Err(OffCore::Unavailable(p.as_str())),
            Err(e) => Err(OffCore::Refused(e)),
        }
    }

    /// Finishes an NTLM login through winbind on the pool: the DC checks the response, and
    /// `finish` checks the MIC with the session key the DC returned.
    pub async fn winbind_finish(
        &self,
        pending: PendingAuth,
    ) -> Result<NtlmVerified, OffCore<NtlmError>> {
        let (Some(set), Ok(pool)) = (&self.winbind, self.pool()) else {
            return Err(OffCore::Refused(NtlmError::BackendUnavailable(
                "winbind is not configured",
            )));
        };
        let set = Arc::clone(set);
        let job = move || {
            let verdict = set.verify(&pending.request());
            pending.finish(verdict)
        };
        match pool.try_run(self.timeout, job).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(NtlmError::BackendUnavailable(why))) => Err(OffCore::Unavailable(why)),
            Ok(Err(e)) => Err(OffCore::Refused(e)),
            Err(p) => Err(OffCore::Unavailable(p.as_str())),
        }
    }

    /// Checks a Basic password with the KDC on the pool; returns the principal.
    pub async fn basic_kdc(
        &self,
        principal: String,
        password: String,
    ) -> Result<String, OffCore<KerberosError>> {
        let (Some(acc), Some(spn), Ok(pool)) = (&self.kerberos, &self.kerberos_spn, self.pool())
        else {
            return Err(OffCore::Refused(KerberosError::Credential(
                "Basic via the KDC needs --keytab and --kerberos-login".into(),
            )));
        };
        let (acc, spn) = (Arc::clone(acc), spn.clone());
        let job = move || acc.check_password(&principal, &password, &spn);
        match pool.try_run(self.timeout, job).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(KerberosError::KdcUnreachable(_))) => {
                Err(OffCore::Unavailable("kdc_unreachable"))
            }
            Ok(Err(e)) => Err(OffCore::Refused(e)),
            Err(p) => Err(OffCore::Unavailable(p.as_str())),
        }
    }
}

/// Several `ntlm_auth` helpers (each answers one check at a time), used in turn.
pub struct WinbindSet {
    backends: Vec<WinbindBackend>,
    next: AtomicUsize,
}

impl WinbindSet {
    fn new(cfg: &WinbindConfig, ntlm: &NtlmConfig, n: usize) -> Self {
        WinbindSet {
            backends: (0..n.max(1))
                .map(|_| WinbindBackend::new(cfg.clone(), ntlm))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }
}

impl NtlmBackend for WinbindSet {
    fn verify(
        &self,
        req: &super::ntlm::VerifyRequest<'_>,
    ) -> Result<super::ntlm::BackendVerified, NtlmError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends[i].verify(req)
    }
}

/// Basic logins recently checked by winbind or the KDC, so a client that sends Basic on every
/// request costs one check per `ttl`, not one per request.
///
/// Keyed by SHA-256(random per-process salt ‖ login ‖ 0 ‖ password): the password is never
/// stored, a memory dump does not give a precomputed-table attack, and a changed password
/// misses the cache at once (a wrong password is never cached).
pub struct BasicCache {
    ttl: Duration,
    salt: [u8; 32],
    map: Mutex<HashMap<[u8; 32], CachedLogin>>,
}

/// What a cache hit gives back: enough to mint the identity again.
#[derive(Clone, Debug)]
pub struct CachedLogin {
    pub principal: String,
    expires: Instant,
}

/// Bound on cached logins; beyond it expired entries go, then everything (a flood of distinct
/// logins must not grow memory).
const BASIC_CACHE_MAX: usize = 50_000;

impl BasicCache {
    pub fn new(ttl: Duration) -> Self {
        let mut salt = [0u8; 32];
        // No randomness: a zero salt still hides passwords, only less well; and the cache is
        // then turned off below rather than keyed predictably.
        let ok = getrandom::getrandom(&mut salt).is_ok();
        BasicCache {
            ttl: if ok { ttl } else { Duration::ZERO },
            salt,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    fn key(&self, login: &str, password: &str) -> [u8; 32] {
        Sha256::new()
            .chain_update(self.salt)
            .chain_update(login.as_bytes())
            .chain_update([0u8])
            .chain_update(password.as_bytes())
            .finalize()
            .into()
    }

    pub fn get(&self, login: &str, password: &str) -> Option<CachedLogin> {
        if !self.enabled() {
            return None;
        }
        let key = self.key(login, password);
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&key)
            .filter(|c| c.expires > Instant::now())
            .cloned()
    }

    pub fn put(&self, login: &str, password: &str, principal: &str) {
        if !self.enabled() {
            return;
        }
        let key = self.key(login, password);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= BASIC_CACHE_MAX {
            map.retain(|_, c| c.expires > now);
            if map.len() >= BASIC_CACHE_MAX {
                map.clear();
            }
        }
        map.insert(
            key,
            CachedLogin {
                principal: principal.to_string(),
                expires: now + self.ttl,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_cache_hits_only_the_same_password_and_expires() {
        let c = BasicCache::new(Duration::from_millis(50));
        assert!(c.get("alice", "pw").is_none());
        c.put("alice", "pw", "alice@EXAMPLE.TEST");
        assert_eq!(
            c.get("alice", "pw").map(|h| h.principal),
            Some("alice@EXAMPLE.TEST".to_string())
        );
        assert!(c.get("alice", "pw2").is_none());
        assert!(c.get("alicepw", "").is_none());
        assert!(c.get("bob", "pw").is_none());
        std::thread::sleep(Duration::from_millis(70));
        assert!(c.get("alice", "pw").is_none());
    }

    #[test]
    fn basic_cache_off_with_zero_ttl() {
        let c = BasicCache::new(Duration::ZERO);
        c.put("alice", "pw", "alice@R");
        assert!(c.get("alice", "pw").is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn basic_cache_is_bounded() {
        let c = BasicCache::new(Duration::from_secs(60));
        for i in 0..BASIC_CACHE_MAX + 10 {
            c.put(&format!("u{i}"), "pw", "p@R");
        }
        assert!(c.len() <= BASIC_CACHE_MAX);
    }

    #[test]
    fn salts_differ_between_caches() {
        let a = BasicCache::new(Duration::from_secs(1));
        let b = BasicCache::new(Duration::from_secs(1));
        assert_ne!(a.key("alice", "pw"), b.key("alice", "pw"));
    }
}
