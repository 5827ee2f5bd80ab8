//! Builds the process from its validated configuration, in one place and in dependency order:
//!
//! ```text
//! Config ─► Shared: TLS configs, NT-hash store, KDC pool, auth services, delegator,
//!           one WorkerMetrics per worker
//!        ─► per worker: its AuthCtx (built on the worker's own thread)
//!        ─► metrics Registry: the workers, then every shared service with counters
//! ```
//!
//! Everything here runs before any worker does and may block (files, the keytab, the proxy's
//! own Kerberos login, winbind helpers): a problem found now is a start-up error with the flag
//! or file that caused it, never a 5xx on the first request that needs it.

use std::sync::Arc;

use super::start_error::{StartError, StartErrors};
use crate::accesslog::Sink;
use crate::auth::ntlm::{LocalBackend, NtHashStore, NtlmAcceptor, NtlmConfig, VerifyPolicy};
use crate::auth::{AuthCtx, AuthServices, IdentityMap};
use crate::backend::{Health, HealthPolicy};
use crate::config::{Config, Scheme};
use crate::gss::BlockingPool;
use crate::kcd::{DelegationConfig, Delegator};
use crate::metrics::{Readiness, Registry, Source, WorkerMetrics, Workers};
use crate::proxy::ctx::Shared;
use crate::tls;

/// The state all workers share: certificates and keys loaded, TLS configurations built, the
/// NTLM names checked, the KDC pool started, the Kerberos acceptor and winbind helpers ready
/// and, when a route delegates, the proxy logged in from its keytab. BLOCKING.
///
/// Files are all read before failing, so every broken one is reported at once; the steps
/// after that depend on each other and stop at the first problem.
pub fn shared(cfg: Config) -> Result<Shared, StartErrors> {
    let mut errs = StartErrors::default();
    let serves_tls = cfg.listeners.iter().any(|l| l.tls) || !cfg.tls_certs.is_empty();
    let tls_server = serves_tls
        .then(|| errs.keep(tls::server_config(&cfg.tls_certs)))
        .flatten();
    let https = cfg
        .routes
        .routes()
        .iter()
        .flat_map(|r| &r.backends)
        .any(|b| b.scheme == Scheme::Https);
    let tls_client = https
        .then(|| {
            let r = tls::client_config(cfg.backend_ca.as_deref());
            errs.keep(r.map_err(StartError::from_message))
        })
        .flatten();
    let nt_hashes = cfg.auth.ntlm_hash_file.as_ref().and_then(|p| {
        let r = NtHashStore::load(p);
        errs.keep(r.map_err(|e| StartError::new(format!("--ntlm-hash-file `{}`", p.display()), e)))
    });
    errs.or_ok(())?;

    let a = &cfg.auth;
    let blocking_pool = if a.kerberos.is_some() || a.winbind.is_some() {
        let pool = BlockingPool::new(a.kdc.threads, a.kdc.queue)
            .map_err(|e| StartError::new("KDC pool threads", e))?;
        Some(Arc::new(pool))
    } else {
        None
    };
    let ntlm_config = ntlm_config(&cfg);
    NtlmAcceptor::new(&ntlm_config, VerifyPolicy::default()).map_err(|e| {
        StartError::new("NTLM names (--ntlm-domain/--ntlm-computer/--dns-domain)", e)
    })?;
    let auth_services = Arc::new(AuthServices::new(
        &cfg,
        &ntlm_config,
        blocking_pool.clone(),
    )?);
    let delegator = delegator(&cfg, blocking_pool.as_ref())?;
    let worker_metrics = (0..cfg.workers)
        .map(|_| Arc::new(WorkerMetrics::default()))
        .collect();
    let health = Arc::new(Health::new(
        &cfg.routes,
        HealthPolicy {
            fall: cfg.backend_fall,
            down_time: cfg.backend_down_time,
        },
    ));
    Ok(Shared {
        cfg,
        tls_server,
        tls_client,
        nt_hashes,
        auth_services,
        delegator,
        blocking_pool,
        worker_metrics,
        health,
    })
}

/// Constrained delegation, when a route has `spn=`: the proxy logs in from its keytab now, so
/// a wrong keytab or login is a start-up error, not a 5xx per request.
fn delegator(
    cfg: &Config,
    pool: Option<&Arc<BlockingPool>>,
) -> Result<Option<Arc<Delegator>>, StartError> {
    let delegating = cfg.routes.routes().iter().any(|r| r.options.spn.is_some());
    let (true, Some(k), Some(pool)) = (delegating, cfg.auth.kerberos.as_ref(), pool) else {
        return Ok(None);
    };
    let Some(login) = &k.login else {
        return Err(StartError::bare("spn= routes need --kerberos-login"));
    };
    let kdc = &cfg.auth.kdc;
    let dc = DelegationConfig {
        keytab: k.keytab.clone(),
        login: login.clone(),
        kdc_timeout: kdc.timeout,
        refresh_ahead: kdc.refresh_ahead,
        negative_ttl: kdc.negative_ttl,
        max_entries: kdc.ticket_cache_size,
    };
    match Delegator::new(dc, Arc::clone(pool)) {
        Ok(d) => Ok(Some(Arc::new(d))),
        Err(e) => Err(StartError::new(
            "delegation",
            format!("logging in as {login} from {}: {e}", k.keytab.display()),
        )),
    }
}

/// The NTLM names the proxy announces.
fn ntlm_config(cfg: &Config) -> NtlmConfig {
    let a = &cfg.auth;
    NtlmConfig {
        nb_domain: a.ntlm_domain.clone(),
        nb_computer: a.ntlm_computer.clone(),
        dns_domain: a.dns_domain.clone(),
        dns_computer: format!("{}.{}", a.ntlm_computer.to_ascii_lowercase(), a.dns_domain),
    }
}

/// One worker's authentication state: its own NTLM acceptor and copy of the NT-hash store
/// (no lock or shared cache line on the per-request path), the shared services behind an
/// `Arc`. Called on the worker's thread, after pinning, so the copy is that core's memory.
pub fn auth_ctx(shared: &Shared) -> AuthCtx {
    let a = &shared.cfg.auth;
    let ntlm_cfg = ntlm_config(&shared.cfg);
    // Checked by `shared`, which every process runs first, so this is never `None`.
    let ntlm = NtlmAcceptor::new(&ntlm_cfg, VerifyPolicy::default()).ok();
    AuthCtx {
        ntlm,
        local: shared
            .nt_hashes
            .clone()
            .map(|s| LocalBackend::new(s, &ntlm_cfg)),
        map: IdentityMap {
            domains: a.domain_realm.clone(),
            default_realm: a.realm.clone(),
        },
        basic_realm: a.basic_realm.clone(),
        basic_over_http: a.basic_over_http,
        services: Arc::clone(&shared.auth_services),
    }
}

/// The access log's destination, opened (a file is created or appended to).
pub fn access_log(cfg: &Config) -> Result<Sink, StartError> {
    Sink::open(&cfg.access_log)
        .map_err(|e| StartError::new(format!("access log {:?}", cfg.access_log), e))
}

/// What the metrics endpoint renders, in exposition order: the workers' counters, then the
/// KDC pool's, the authentication services' and the delegation engine's, those that exist,
/// then the backends' health. `/readyz` checks the process's `lifecycle` (listeners up, not
/// draining), a backend up per route, and the proxy's Kerberos login when it delegates.
pub fn registry(shared: &Shared, lifecycle: Arc<dyn Readiness + Send + Sync>) -> Registry {
    let mut sources: Vec<Arc<dyn Source + Send + Sync>> =
        vec![Arc::new(Workers(shared.worker_metrics.clone()))];
    if let Some(pool) = &shared.blocking_pool {
        sources.push(pool.clone());
    }
    sources.push(shared.auth_services.clone());
    if let Some(d) = &shared.delegator {
        sources.push(d.clone());
    }
    sources.push(shared.health.clone());
    let mut readiness: Vec<Arc<dyn Readiness + Send + Sync>> =
        vec![lifecycle, shared.health.clone()];
    if let Some(d) = &shared.delegator {
        readiness.push(d.clone());
    }
    Registry { sources, readiness }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Flags;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec![
            "kcdproxy",
            "--listen",
            "127.0.0.1:0",
            "--route",
            "/=http://127.0.0.1:9",
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        Config::from_flags(&Flags::parse_from(args)).unwrap()
    }

    /// The registry of a process that is serving.
    fn registry(shared: &Shared) -> Registry {
        super::registry(shared, Arc::new(Serving))
    }

    struct Serving;
    impl Readiness for Serving {
        fn ready(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// The metric families' names, in the order a scrape shows them.
    fn families(r: &Registry) -> Vec<String> {
        r.render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn minimal_config_assembles_and_exposes_workers_then_auth() {
        let shared = shared(config(&[])).unwrap();
        assert_eq!(shared.worker_metrics.len(), 2);
        assert!(shared.tls_server.is_none() && shared.tls_client.is_none());
        assert!(shared.blocking_pool.is_none() && shared.delegator.is_none());
        let auth = auth_ctx(&shared);
        assert!(auth.ntlm.is_some() && auth.local.is_none());
        let f = families(&registry(&shared));
        assert_eq!(
            f.first().map(String::as_str),
            Some("kcdproxy_responses_total")
        );
        let tail: Vec<&str> = f.iter().rev().take(5).rev().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "kcdproxy_basic_cache_entries",
                "kcdproxy_backends",
                "kcdproxy_backends_up",
                "kcdproxy_backend_marked_down_total",
                "kcdproxy_backend_marked_up_total",
            ]
        );
        let r = registry(&shared);
        assert!(r.not_ready().is_empty(), "{:?}", r.not_ready());
    }

    /// `/readyz` names what is not ready: here every backend of the route is down.
    #[test]
    fn not_ready_while_a_route_has_no_backend_up() {
        let shared = shared(config(&["--backend-fall", "1"])).unwrap();
        shared.health.connect_failed(0, 0);
        assert_eq!(registry(&shared).not_ready(), ["no backend up for route /"]);
    }

    /// The order scrapers have always seen: workers, KDC pool, authentication.
    #[test]
    fn the_pool_comes_between_workers_and_auth() {
        let mut shared = shared(config(&[])).unwrap();
        shared.blocking_pool = Some(Arc::new(BlockingPool::new(1, 1).unwrap()));
        let f = families(&registry(&shared));
        let end = f.iter().position(|n| n == "kcdproxy_basic_cache_entries");
        let tail: Vec<&str> = f[..=end.unwrap()]
            .iter()
            .rev()
            .take(4)
            .rev()
            .map(String::as_str)
            .collect();
        assert_eq!(
            tail,
            [
                "kcdproxy_client_connections",
                "kcdproxy_kdc_pool_threads",
                "kcdproxy_kdc_pool_admitted",
                "kcdproxy_basic_cache_entries",
            ]
        );
    }

    /// Broken files are all reported together, each naming its flag or file.
    #[test]
    fn every_broken_file_is_reported() {
        let dir = std::env::temp_dir().join(format!("kcd-assemble-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not PEM\n").unwrap();
        let hashes = dir.join("hashes");
        std::fs::write(&hashes, "no colon here\n").unwrap();
        let junk = junk.to_str().unwrap();
        let cfg = config(&[
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            junk,
            "--tls-key",
            junk,
            "--ntlm-hash-file",
            hashes.to_str().unwrap(),
        ]);
        let errs = shared(cfg).err().expect("broken files must not assemble");
        let _ = std::fs::remove_dir_all(&dir);
        let text = errs.to_string();
        assert!(errs.len() >= 2, "{text}");
        assert!(text.contains(junk), "{text}");
        assert!(
            errs.iter()
                .any(|e| e.what.starts_with("--ntlm-hash-file `")),
            "{text}"
        );
    }

    #[test]
    fn bad_ntlm_names_are_a_start_error() {
        let errs = shared(config(&["--ntlm-domain", "TWO WORDS"]))
            .err()
            .expect("a NetBIOS name with a space must not assemble");
        assert!(
            errs.to_string()
                .starts_with("NTLM names (--ntlm-domain/--ntlm-computer/--dns-domain): "),
            "{errs}"
        );
    }
}
