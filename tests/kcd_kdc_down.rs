//! With the MIT KDC frozen (SIGSTOP; a drop guard always sends SIGCONT, even on panic): a
//! cached user's token is still made at once, on the calling thread; a user not cached gets
//! `KdcUnavailable` within `kdc_timeout`, and a second request for that user joins the stuck
//! exchange instead of starting another. Its own test binary, so that no other test of this
//! process runs while the KDC is frozen; the freeze lasts a few seconds.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::kdc::{mit_kdc_pid, Frozen};
use common::lab::lab;
use kcdproxy::error::ErrorKind;
use kcdproxy::gss::BlockingPool;
use kcdproxy::kcd::{CacheOutcome, DelegationConfig, DelegationError, Delegator, Subject};

#[test]
fn a_frozen_kdc_costs_new_users_kdc_timeout_and_cached_users_nothing() {
    let lab = lab();
    std::env::set_var("KRB5_CONFIG", &lab.krb5_config);
    std::env::set_var("KRB5RCACHEDIR", &lab.rcache_dir);
    let realm = &lab.mit;
    let pid = mit_kdc_pid(lab);
    let timeout = Duration::from_millis(1500);
    let mut cfg = DelegationConfig::new(realm.proxy_keytab.clone(), realm.proxy_principal.clone());
    cfg.kdc_timeout = timeout;
    let d = Delegator::new(cfg, Arc::new(BlockingPool::new(2, 4).unwrap())).unwrap();
    let alice = lab.alice.principal(realm);
    let bob = lab.bob.principal(realm);
    tokio_uring::start(async {
        let first = d
            .token(
                Subject::Transition { principal: &alice },
                &lab.backend_spn,
                None,
            )
            .await
            .unwrap();
        assert_eq!(first.cache(), CacheOutcome::Miss);

        let frozen = Frozen::new(pid);
        let started = Instant::now();
        let hit = d
            .token(
                Subject::Transition { principal: &alice },
                &lab.backend_spn,
                None,
            )
            .await
            .unwrap();
        let hit_took = started.elapsed();
        assert_eq!(hit.cache(), CacheOutcome::Hit);
        assert!(
            hit_took < Duration::from_millis(100),
            "hit took {hit_took:?}"
        );

        // bob was never asked for: S4U2Self hangs on the frozen KDC. Two requests: the first
        // leads the exchange, the second joins it; both give up after the deadline.
        let started = Instant::now();
        let (a, b) = tokio::join!(
            d.token(
                Subject::Transition { principal: &bob },
                &lab.backend_spn,
                None
            ),
            d.token(
                Subject::Transition { principal: &bob },
                &lab.backend_spn,
                None
            ),
        );
        let took = started.elapsed();
        drop(frozen);
        for r in [a, b] {
            let e = r.unwrap_err();
            assert!(matches!(e, DelegationError::KdcUnavailable { .. }), "{e}");
            assert_eq!(e.error_kind(), ErrorKind::KdcUnavailable);
        }
        assert!(took >= timeout, "gave up early: {took:?}");
        assert!(took < timeout + Duration::from_millis(500), "took {took:?}");
        let s = d.stats();
        assert_eq!((s.misses, s.joined, s.s4u2self), (2, 1, 2), "{s:?}");
        eprintln!("frozen KDC: hit in {hit_took:?}, new user gave up after {took:?}; {s:?}");
    });
    // The KDC answers again (the stuck exchange finishes on its own).
    let kdc_back = Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        if state != Some("T") {
            break;
        }
        assert!(
            kdc_back.elapsed() < Duration::from_secs(2),
            "KDC still stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
