//! The delegated-ticket cache: one slot per (user principal, SPN), shared by all cores, with
//! single-flight, refresh ahead of expiry, a negative cache of refusals and a size bound.
//!
//! Generic over the cached value and the error so the decisions can be unit-tested without
//! GSS-API or a KDC; [`super::delegate`] instantiates it with a GSS credential.
//!
//! ```text
//!   lookup(key, now) ─► Fresh(entry)                  use it
//!                     ─► Stale(entry, Some(refresh))  use it; this caller starts the one refresh
//!                     ─► Stale(entry, None)           use it; a refresh is already running
//!                     ─► Refused(err)                 negative cache: same error, no KDC
//!                     ─► Join(waiter)                 another caller's exchange is in flight
//!                     ─► Lead(flight)                 this caller does the exchange
//! ```
//!
//! ## Invariants
//!
//! - **One exchange per key in flight.** A missing or expired key becomes `Pending` under the
//!   write lock, and only the caller that installed it gets the [`Flight`]; everyone else gets
//!   a [`Waiter`]. A refresh of a still-valid entry is elected by a compare-and-swap on the
//!   entry's `next_refresh` time, so at most one refresh starts per backoff period.
//! - **A flight always lands.** [`Flight`] resolves the slot and wakes its waiters in `Drop`
//!   when nobody called [`Flight::complete`] (job skipped by the pool, panic, cancelled
//!   future): a key can never stay `Pending` forever.
//! - **Locks are short.** The map's `RwLock` is held for a hash lookup or insert, never across
//!   an await or a GSS call; a hit takes only the read lock (its LRU stamp is an atomic).
//! - **Bounded.** Inserting into a full map first drops expired entries, then the least recently
//!   used one (ties: the one expiring first). That scan is O(n) and happens only on an insert
//!   into a full map, i.e. on the KDC path, which costs milliseconds anyway. `Pending` slots are
//!   never evicted; there are at most as many as the blocking pool admits jobs, so the bound
//!   can be exceeded by at most that many.
//! - **Keys are exact.** The key is the requested principal and SPN, byte for byte; a value is
//!   only ever stored under the principal it was obtained for (checked by the caller).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What an error must offer the cache.
pub(crate) trait CacheError: Clone + Send + Sync + 'static {
    /// The error waiters get when a flight ended without a result (job skipped, panic).
    fn abandoned() -> Self;
    /// Whether to remember this error for the negative TTL (a KDC refusal), rather than let
    /// the next request try again (an unreachable KDC).
    fn is_negative(&self) -> bool;
}

/// The (principal, SPN) pair, joined with a NUL (which neither may contain; checked by
/// [`Key::new`]), so that one allocation serves as the map key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(Box<str>);

impl Key {
    /// `None` when either part is empty or contains a NUL byte.
    pub(crate) fn new(principal: &str, spn: &str) -> Option<Key> {
        if principal.is_empty() || spn.is_empty() || principal.contains('\0') || spn.contains('\0')
        {
            return None;
        }
        let mut s = String::with_capacity(principal.len() + 1 + spn.len());
        s.push_str(principal);
        s.push('\0');
        s.push_str(spn);
        Some(Key(s.into_boxed_str()))
    }
}

/// A cached value with its expiry.
pub(crate) struct Entry<V> {
    pub(crate) value: V,
    /// When the ticket stops being valid (its end time, as GSS-API reported it).
    pub(crate) expires: Instant,
    /// Milliseconds since the cache's base instant of the last use: the LRU order.
    last_used: AtomicU64,
    /// Milliseconds since the base instant before which no new refresh may start. A refresh
    /// is elected by moving this forward with a compare-and-swap.
    next_refresh: AtomicU64,
}

impl<V> Entry<V> {
    pub(crate) fn remaining(&self, now: Instant) -> Duration {
        self.expires.saturating_duration_since(now)
    }
}

type Outcome<V, E> = Option<Result<Arc<Entry<V>>, E>>;

enum Slot<V, E> {
    Ready(Arc<Entry<V>>),
    /// An exchange is in flight; waiters subscribe here.
    Pending(watch::Receiver<Outcome<V, E>>),
    /// The KDC refused this key; answer the same until `until`.
    Refused {
        error: E,
        until: Instant,
    },
}

/// The answer of [`TicketCache::lookup`].
pub(crate) enum Lookup<V: Clone + Send + Sync + 'static, E: CacheError> {
    /// Valid and not yet inside the refresh window.
    Fresh(Arc<Entry<V>>),
    /// Valid but inside the refresh window: use it now. `Some`: this caller was elected to
    /// start the one refresh (in the background).
    Stale(Arc<Entry<V>>, Option<Flight<V, E>>),
    /// Negative cache hit.
    Refused(E),
    /// Wait for the exchange another caller started.
    Join(Waiter<V, E>),
    /// This caller must do the exchange and [`Flight::complete`] it.
    Lead(Flight<V, E>),
}

struct Shared<V, E> {
    map: RwLock<HashMap<Key, Slot<V, E>>>,
    base: Instant,
    refresh_ahead: Duration,
    negative_ttl: Duration,
    /// How long an elected refresh blocks the next one (a refresh that fails with an
    /// unreachable KDC is retried after this).
    refresh_backoff: Duration,
    max_entries: usize,
}

/// See the module doc. Cheap to clone (an `Arc`).
pub(crate) struct TicketCache<V, E> {
    shared: Arc<Shared<V, E>>,
}

impl<V, E> Clone for TicketCache<V, E> {
    fn clone(&self) -> Self {
        TicketCache {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A ticket is not handed out when it has less than this left (capped at the refresh window):
/// it must still be valid when the backend reads it, and our clock may be ahead of the
/// backend's within the allowed skew. Past this point a request waits for a new ticket.
const MIN_REMAINING: Duration = Duration::from_secs(10);

impl<V: Clone + Send + Sync + 'static, E: CacheError> TicketCache<V, E> {
    pub(crate) fn new(
        max_entries: usize,
        refresh_ahead: Duration,
        negative_ttl: Duration,
        refresh_backoff: Duration,
    ) -> Self {
        TicketCache {
            shared: Arc::new(Shared {
                map: RwLock::new(HashMap::new()),
                base: Instant::now(),
                refresh_ahead,
                negative_ttl,
                refresh_backoff,
                max_entries: max_entries.max(1),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Key, Slot<V, E>>> {
        // No code that can panic runs under this lock with the map half-updated.
        self.shared
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Key, Slot<V, E>>> {
        self.shared
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ms(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.shared.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn min_remaining(&self) -> Duration {
        MIN_REMAINING.min(self.shared.refresh_ahead)
    }

    /// Entries held now (ready, pending and refused).
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// The decision for `key` at `now`; see [`Lookup`].
    pub(crate) fn lookup(&self, key: &Key, now: Instant) -> Lookup<V, E> {
        if let Some(found) = self.decide(key, self.read().get(key), now) {
            return found;
        }
        // Missing, expired, or an expired refusal: take the write lock and check again, since
        // another caller may have got here first.
        let mut map = self.write();
        if let Some(found) = self.decide(key, map.get(key), now) {
            return found;
        }
        let (tx, rx) = watch::channel(None);
        map.remove(key);
        self.make_room(&mut map, now);
        map.insert(key.clone(), Slot::Pending(rx));
        Lookup::Lead(Flight {
            cache: self.clone(),
            key: key.clone(),
            tx: Some(tx),
            refresh_of: None,
        })
    }

    /// Fresh or stale-but-usable, or `None` when the entry is too close to its expiry.
    /// What `slot` answers for `key` at `now`, or `None` when a new exchange is needed.
    fn decide(&self, key: &Key, slot: Option<&Slot<V, E>>, now: Instant) -> Option<Lookup<V, E>> {
        match slot {
            Some(Slot::Ready(entry)) => self.usable(key, entry, now),
            Some(Slot::Pending(rx)) => Some(Lookup::Join(Waiter { rx: rx.clone() })),
            Some(Slot::Refused { error, until }) if now < *until => {
                Some(Lookup::Refused(error.clone()))
            }
            Some(Slot::Refused { .. }) | None => None,
        }
    }

    fn usable(&self, key: &Key, entry: &Arc<Entry<V>>, now: Instant) -> Option<Lookup<V, E>> {
        let remaining = entry.remaining(now);
        if remaining <= self.min_remaining() {
            return None;
        }
        let now_ms = self.ms(now);
        entry.last_used.store(now_ms, Ordering::Relaxed);
        if remaining > self.shared.refresh_ahead {
            return Some(Lookup::Fresh(Arc::clone(entry)));
        }
        // Inside the refresh window: elect at most one refresher per backoff period.
        let next = entry.next_refresh.load(Ordering::Acquire);
        let backoff = u64::try_from(self.shared.refresh_backoff.as_millis()).unwrap_or(u64::MAX);
        let elected = next <= now_ms
            && entry
                .next_refresh
                .compare_exchange(
                    next,
                    now_ms.saturating_add(backoff.max(1)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        let flight = elected.then(|| Flight {
            cache: self.clone(),
            key: key.clone(),
            tx: None,
            refresh_of: Some(Arc::clone(entry)),
        });
        Some(Lookup::Stale(Arc::clone(entry), flight))
    }

    /// Makes room for one insert: drops what has expired, then the least recently used entry
    /// (ties: soonest expiring). Called with the write lock held.
    fn make_room(&self, map: &mut HashMap<Key, Slot<V, E>>, now: Instant) {
        if map.len() < self.shared.max_entries {
            return;
        }
        map.retain(|_, slot| match slot {
            Slot::Ready(e) => e.expires > now,
            Slot::Refused { until, .. } => *until > now,
            Slot::Pending(_) => true,
        });
        while map.len() >= self.shared.max_entries {
            let victim = map
                .iter()
                .filter_map(|(k, slot)| match slot {
                    Slot::Ready(e) => Some((e.last_used.load(Ordering::Relaxed), e.expires, k)),
                    // A refusal's age stands in for its last use.
                    Slot::Refused { until, .. } => Some((
                        self.ms(until
                            .checked_sub(self.shared.negative_ttl)
                            .unwrap_or(*until)),
                        *until,
                        k,
                    )),
                    Slot::Pending(_) => None,
                })
                .min_by_key(|(used, expires, _)| (*used, *expires))
                .map(|(_, _, k)| k.clone());
            match victim {
                Some(k) => {
                    map.remove(&k);
                }
                None => break, // only flights in progress left
            }
        }
    }

    /// Stores a result: a value becomes `Ready`, a negative error `Refused` for the TTL, any
    /// other error removes the slot so that the next request tries again.
    fn store(
        &self,
        key: &Key,
        result: &Result<Arc<Entry<V>>, E>,
        refresh_of: Option<&Arc<Entry<V>>>,
    ) {
        let now = Instant::now();
        let mut map = self.write();
        if let Some(old) = refresh_of {
            // A refresh replaces only the entry it refreshed: if a miss or another refresh
            // changed the slot meanwhile, that one wins.
            match map.get(key) {
                Some(Slot::Ready(current)) if Arc::ptr_eq(current, old) => {}
                _ => return,
            }
        }
        match result {
            Ok(entry) => {
                map.insert(key.clone(), Slot::Ready(Arc::clone(entry)));
            }
            Err(e) if e.is_negative() => {
                let until = now + self.shared.negative_ttl;
                map.insert(
                    key.clone(),
                    Slot::Refused {
                        error: e.clone(),
                        until,
                    },
                );
            }
            Err(_) if refresh_of.is_some() => {
                // The old ticket is still valid: keep serving it; the backoff delays the retry.
            }
            Err(_) => {
                map.remove(key);
            }
        }
        if map.len() > self.shared.max_entries {
            // A slot turned from Pending into Ready/Refused may leave us over the bound.
            self.make_room(&mut map, now);
        }
    }

    /// Builds an entry for a value obtained at `now`, valid for `lifetime`.
    pub(crate) fn entry(&self, value: V, expires: Instant) -> Arc<Entry<V>> {
        let now = self.ms(Instant::now());
        Arc::new(Entry {
            value,
            expires,
            last_used: AtomicU64::new(now),
            next_refresh: AtomicU64::new(0),
        })
    }
}

/// The right and the duty to finish one exchange for a key. Dropping it unfinished resolves
/// the key with [`CacheError::abandoned`] (see the module doc).
pub(crate) struct Flight<V: Clone + Send + Sync + 'static, E: CacheError> {
    cache: TicketCache<V, E>,
    key: Key,
    /// `None` for a refresh, which has no waiters (they keep using the old entry).
    tx: Option<watch::Sender<Outcome<V, E>>>,
    refresh_of: Option<Arc<Entry<V>>>,
}

impl<V: Clone + Send + Sync + 'static, E: CacheError> Flight<V, E> {
    pub(crate) fn is_refresh(&self) -> bool {
        self.refresh_of.is_some()
    }

    pub(crate) fn cache(&self) -> &TicketCache<V, E> {
        &self.cache
    }

    /// Stores the result and wakes the waiters.
    pub(crate) fn complete(mut self, result: Result<Arc<Entry<V>>, E>) {
        self.finish(result);
    }

    fn finish(&mut self, result: Result<Arc<Entry<V>>, E>) {
        self.cache
            .store(&self.key, &result, self.refresh_of.as_ref());
        if let Some(tx) = self.tx.take() {
            // No receiver left is fine: nobody was waiting.
            let _ = tx.send(Some(result));
        }
        self.refresh_of = None;
    }
}

impl<V: Clone + Send + Sync + 'static, E: CacheError> Drop for Flight<V, E> {
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.finish(Err(E::abandoned()));
        }
    }
}

/// Waits for another caller's exchange.
pub(crate) struct Waiter<V, E> {
    rx: watch::Receiver<Outcome<V, E>>,
}

impl<V: Clone, E: CacheError> Waiter<V, E> {
    /// The flight's result, or `None` when `timeout` passed first.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Option<Result<Arc<Entry<V>>, E>> {
        let got = tokio::time::timeout(timeout, self.rx.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(value)) => value.clone(),
            // The sender is gone without a value: cannot happen (Flight always sends), but
            // answer like an abandoned flight rather than hang or panic.
            Ok(Err(_)) => Some(Err(E::abandoned())),
            Err(_elapsed) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum TestErr {
        Abandoned,
        Refused,
        Down,
    }

    impl CacheError for TestErr {
        fn abandoned() -> Self {
            TestErr::Abandoned
        }
        fn is_negative(&self) -> bool {
            *self == TestErr::Refused
        }
    }

    type Cache = TicketCache<u32, TestErr>;

    fn cache(max: usize) -> Cache {
        TicketCache::new(
            max,
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(5),
        )
    }

    fn key(p: &str) -> Key {
        Key::new(p, "HTTP/backend.example.test").unwrap()
    }

    fn lead(c: &Cache, k: &Key, now: Instant) -> Flight<u32, TestErr> {
        match c.lookup(k, now) {
            Lookup::Lead(f) => f,
            _ => panic!("expected to lead"),
        }
    }

    #[test]
    fn keys_refuse_nul_and_empty() {
        assert!(Key::new("a\0b", "s").is_none());
        assert!(Key::new("a", "s\0").is_none());
        assert!(Key::new("", "s").is_none());
        assert!(Key::new("a", "").is_none());
        assert_ne!(Key::new("a", "b/c"), Key::new("a/b", "c"));
    }

    #[test]
    fn single_flight_then_hits() {
        let c = cache(10);
        let k = key("alice@X");
        let now = Instant::now();
        let flight = lead(&c, &k, now);
        // Everyone else joins while the flight is pending.
        let waiters: Vec<_> = (0..5)
            .map(|_| match c.lookup(&k, now) {
                Lookup::Join(w) => w,
                _ => panic!("expected to join"),
            })
            .collect();
        let entry = c.entry(7, now + Duration::from_secs(3600));
        flight.complete(Ok(entry));
        tokio_uring::start(async {
            for w in waiters {
                let got = w.wait(Duration::from_secs(1)).await.unwrap().unwrap();
                assert_eq!(got.value, 7);
            }
        });
        assert!(matches!(c.lookup(&k, now), Lookup::Fresh(e) if e.value == 7));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn an_abandoned_flight_resolves_and_frees_the_key() {
        let c = cache(10);
        let k = key("alice@X");
        let now = Instant::now();
        let flight = lead(&c, &k, now);
        let Lookup::Join(w) = c.lookup(&k, now) else {
            panic!("expected to join")
        };
        drop(flight);
        let got = tokio_uring::start(w.wait(Duration::from_secs(1)));
        assert_eq!(got.map(|r| r.err()), Some(Some(TestErr::Abandoned)));
        // Not negative: the next caller leads a new exchange.
        assert!(matches!(c.lookup(&k, now), Lookup::Lead(_)));
    }

    #[test]
    fn a_waiter_times_out() {
        let c = cache(10);
        let k = key("alice@X");
        let _flight = lead(&c, &k, Instant::now());
        let Lookup::Join(w) = c.lookup(&k, Instant::now()) else {
            panic!("expected to join")
        };
        assert!(tokio_uring::start(w.wait(Duration::from_millis(20))).is_none());
    }

    #[test]
    fn refusals_are_remembered_for_the_ttl_only() {
        let c = cache(10);
        let k = key("bob@X");
        let now = Instant::now();
        lead(&c, &k, now).complete(Err(TestErr::Refused));
        assert!(matches!(
            c.lookup(&k, now),
            Lookup::Refused(TestErr::Refused)
        ));
        assert!(matches!(
            c.lookup(&k, now + Duration::from_secs(29)),
            Lookup::Refused(_)
        ));
        assert!(matches!(
            c.lookup(&k, now + Duration::from_secs(31)),
            Lookup::Lead(_)
        ));
        // An unreachable KDC is not remembered.
        let k2 = key("carol@X");
        lead(&c, &k2, now).complete(Err(TestErr::Down));
        assert!(matches!(c.lookup(&k2, now), Lookup::Lead(_)));
    }

    #[test]
    fn refresh_ahead_elects_one_refresher_and_keeps_serving() {
        let c = cache(10);
        let k = key("alice@X");
        let t0 = Instant::now();
        lead(&c, &k, t0).complete(Ok(c.entry(1, t0 + Duration::from_secs(600))));
        assert!(matches!(c.lookup(&k, t0), Lookup::Fresh(_)));
        // 4 minutes left: inside the 5-minute window.
        let t1 = t0 + Duration::from_secs(360);
        let Lookup::Stale(e, Some(refresh)) = c.lookup(&k, t1) else {
            panic!("expected to be elected")
        };
        assert_eq!(e.value, 1);
        assert!(refresh.is_refresh());
        // Others keep using the old ticket and do not refresh.
        for _ in 0..3 {
            assert!(matches!(c.lookup(&k, t1), Lookup::Stale(ref e, None) if e.value == 1));
        }
        refresh.complete(Ok(c.entry(2, t1 + Duration::from_secs(600))));
        assert!(matches!(c.lookup(&k, t1), Lookup::Fresh(e) if e.value == 2));
    }

    #[test]
    fn a_failed_refresh_keeps_the_old_ticket_and_retries_after_the_backoff() {
        let c = cache(10);
        let k = key("alice@X");
        let t0 = Instant::now();
        lead(&c, &k, t0).complete(Ok(c.entry(1, t0 + Duration::from_secs(600))));
        let t1 = t0 + Duration::from_secs(360);
        let Lookup::Stale(_, Some(refresh)) = c.lookup(&k, t1) else {
            panic!("expected to be elected")
        };
        drop(refresh); // a refresh has no waiters: dropping it is just "no result"
        assert!(matches!(c.lookup(&k, t1), Lookup::Stale(_, None)));
        let t2 = t1 + Duration::from_secs(6);
        let Lookup::Stale(_, Some(refresh)) = c.lookup(&k, t2) else {
            panic!("expected a retry after the backoff")
        };
        refresh.complete(Err(TestErr::Down));
        assert!(matches!(c.lookup(&k, t2), Lookup::Stale(ref e, None) if e.value == 1));
        // Too close to the end: no longer handed out, a new exchange is needed.
        let t3 = t0 + Duration::from_secs(595);
        assert!(matches!(c.lookup(&k, t3), Lookup::Lead(_)));
    }

    #[test]
    fn a_refused_refresh_stops_serving_the_user() {
        let c = cache(10);
        let k = key("alice@X");
        let t0 = Instant::now();
        lead(&c, &k, t0).complete(Ok(c.entry(1, t0 + Duration::from_secs(600))));
        let t1 = t0 + Duration::from_secs(360);
        let Lookup::Stale(_, Some(refresh)) = c.lookup(&k, t1) else {
            panic!("expected to be elected")
        };
        refresh.complete(Err(TestErr::Refused));
        // (The refusal's TTL runs from when it was stored, on the real clock.)
        assert!(matches!(c.lookup(&k, Instant::now()), Lookup::Refused(_)));
    }

    #[test]
    fn the_bound_evicts_expired_then_least_recently_used() {
        let c = cache(3);
        let t0 = Instant::now();
        let long = t0 + Duration::from_secs(3600);
        for (i, p) in ["a@X", "b@X", "c@X"].iter().enumerate() {
            let k = key(p);
            lead(&c, &k, t0).complete(Ok(c.entry(i as u32, long)));
        }
        assert_eq!(c.len(), 3);
        // Use a and c later, so b is the least recently used.
        std::thread::sleep(Duration::from_millis(5));
        let later = Instant::now();
        assert!(matches!(c.lookup(&key("a@X"), later), Lookup::Fresh(_)));
        assert!(matches!(c.lookup(&key("c@X"), later), Lookup::Fresh(_)));
        lead(&c, &key("d@X"), later).complete(Ok(c.entry(3, long)));
        assert_eq!(c.len(), 3);
        assert!(matches!(c.lookup(&key("b@X"), later), Lookup::Lead(_)));
        // (b's lookup installed a pending flight; it was dropped and freed the key again.)
        assert!(c.len() <= 3);
        // Expired entries go first, whatever their use.
        let c = cache(2);
        lead(&c, &key("old@X"), t0).complete(Ok(c.entry(0, t0 + Duration::from_millis(1))));
        lead(&c, &key("new@X"), t0).complete(Ok(c.entry(1, long)));
        std::thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        lead(&c, &key("x@X"), now).complete(Ok(c.entry(2, long)));
        assert!(matches!(c.lookup(&key("new@X"), now), Lookup::Fresh(_)));
        assert!(matches!(c.lookup(&key("x@X"), now), Lookup::Fresh(_)));
    }

    #[test]
    fn a_full_cache_of_flights_still_admits() {
        let c = cache(2);
        let now = Instant::now();
        let f1 = lead(&c, &key("a@X"), now);
        let f2 = lead(&c, &key("b@X"), now);
        let f3 = lead(&c, &key("c@X"), now);
        assert_eq!(c.len(), 3);
        drop((f1, f2, f3));
        assert_eq!(c.len(), 0);
    }
}
