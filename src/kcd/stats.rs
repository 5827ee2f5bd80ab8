//! The delegation engine's counters: relaxed atomics bumped on the hot path, read as a
//! [`DelegationStats`] snapshot by the metrics endpoint and tests.
//!
//! Invariant: counting never takes a lock or orders memory (`Relaxed`): a snapshot's fields may
//! be a few events apart, and nothing decides on them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters (monotonic unless noted). A snapshot of atomics: fields may be a few events apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelegationStats {
    /// Tokens built from a cached ticket on the calling core.
    pub hits: u64,
    /// Requests that led a KDC exchange.
    pub misses: u64,
    /// Requests that waited for another request's exchange.
    pub joined: u64,
    /// Background refreshes started.
    pub refreshes: u64,
    /// S4U2Self requests sent (attempted) to the KDC.
    pub s4u2self: u64,
    /// S4U2Proxy requests sent (attempted) to the KDC.
    pub s4u2proxy: u64,
    /// Refusals from the KDC (not counting negative-cache answers).
    pub refusals: u64,
    /// Answers from the negative cache.
    pub negative_hits: u64,
    /// KDC unavailable: pool full/timeout, unreachable KDC, waiters timed out.
    pub kdc_errors: u64,
    /// Logins of the proxy itself (start-up and renewals).
    pub proxy_logins: u64,
    /// Entries in the cache now (gauge).
    pub entries: u64,
    /// Sum and count of KDC exchange times measured on the pool thread (µs).
    pub kdc_latency_us_sum: u64,
    pub kdc_latency_count: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) joined: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) s4u2self: AtomicU64,
    pub(super) s4u2proxy: AtomicU64,
    pub(super) refusals: AtomicU64,
    pub(super) negative_hits: AtomicU64,
    pub(super) kdc_errors: AtomicU64,
    pub(super) proxy_logins: AtomicU64,
    pub(super) kdc_latency_us_sum: AtomicU64,
    pub(super) kdc_latency_count: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A snapshot, with `entries` (the cache's size now) filled in by the caller.
    pub(super) fn snapshot(&self, entries: u64) -> DelegationStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DelegationStats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            joined: get(&self.joined),
            refreshes: get(&self.refreshes),
            s4u2self: get(&self.s4u2self),
            s4u2proxy: get(&self.s4u2proxy),
            refusals: get(&self.refusals),
            negative_hits: get(&self.negative_hits),
            kdc_errors: get(&self.kdc_errors),
            proxy_logins: get(&self.proxy_logins),
            entries,
            kdc_latency_us_sum: get(&self.kdc_latency_us_sum),
            kdc_latency_count: get(&self.kdc_latency_count),
        }
    }
}
