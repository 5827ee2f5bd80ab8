//! Passive backend health: a backend that refused or timed out `fall` connects in a row (TCP
//! connect, or the TLS handshake) is *down* for `down_time`, and the choice of a backend skips
//! it; after that one request is let through to probe it (half-open) and a successful connect
//! brings it back. The same idea as haproxy's `fall`/`inter` and F5's passive monitors; a
//! failure costs requests nothing once the backend is down, where before every Nth request of a
//! route with a dead server got a 502 until an admin edited the route.
//!
//! Where the state lives: one [`Health`] per process, shared by every core behind an `Arc`, a
//! few atomics per (route, backend). Shared rather than per core because (a) the RPC-over-HTTP
//! IN and OUT channels of one virtual connection usually arrive on two cores, and both must
//! see the same up/down set to rehash to the same fallback server, (b) every core learns of a
//! dead server from the first `fall` failures instead of each paying its own, and (c) the
//! metrics and `/readyz` threads read it without asking the cores. The hot path only *reads*
//! one atomic per candidate (relaxed: a stale view for a moment costs at most one more failed
//! connect, which the connect retry mends); writes happen on connect failures and on the
//! transitions.
//!
//! Health is per (route, backend slot): the same server named by two routes is tracked twice.
//!
//! A route's active check (`check=`, see `check.rs`) feeds the same state: its failure marks
//! the backend down until a check passes, whatever requests' connects say meanwhile.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::route::RouteTable;
use crate::metrics::{Exposition, Readiness, Source};

/// How many failures make a backend down and how long it stays down before a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive connect failures that mark a backend down (haproxy's `fall`). At least 1.
    pub fall: u32,
    /// Time a down backend is skipped before one request probes it.
    pub down_time: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            fall: 3,
            down_time: Duration::from_secs(10),
        }
    }
}

/// One backend's state. `down_until` is milliseconds since [`Health::epoch`] plus one; 0 means
/// up. A down backend whose time has come is *probe-able*: the first request that claims it
/// (by moving `down_until` a whole `down_time` on, compare-and-swap) is the probe, and every
/// other request keeps skipping it until the probe's connect succeeds or the time passes again.
#[derive(Default)]
struct Slot {
    failures: AtomicU32,
    down_until: AtomicU64,
    /// The route's active check (`check=`) last found it down. Dominates the passive state: a
    /// server in maintenance still accepts connections (its health page answers 503), so a
    /// request's successful connect must not bring it back, and it gets no probes; only a
    /// passing check clears it.
    checked_down: AtomicBool,
}

/// What one backend looks like to a request choosing a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Up,
    /// Down and not yet due a probe.
    Down,
    /// Down, and its down time is over: one request may probe it.
    ProbeDue,
}

/// The health of every backend of every route, shared by all cores.
pub struct Health {
    policy: HealthPolicy,
    epoch: Instant,
    /// Per route, per backend (the route's order).
    slots: Vec<Vec<Slot>>,
    /// Per route: its host and path prefix, for the metrics label and `/readyz`.
    names: Vec<String>,
    marked_down: AtomicU64,
    marked_up: AtomicU64,
}

impl Health {
    pub fn new(routes: &RouteTable, policy: HealthPolicy) -> Self {
        let mut h = Health::with_sizes(routes.routes().iter().map(|r| r.backends.len()), policy);
        h.names = routes
            .routes()
            .iter()
            .map(|r| format!("{}{}", r.host.as_deref().unwrap_or(""), r.prefix))
            .collect();
        h
    }

    /// `sizes`: the number of backends of each route (routes named by their index).
    pub fn with_sizes(sizes: impl Iterator<Item = usize>, policy: HealthPolicy) -> Self {
        let slots: Vec<Vec<Slot>> = sizes
            .map(|n| (0..n).map(|_| Slot::default()).collect())
            .collect();
        Health {
            policy: HealthPolicy {
                fall: policy.fall.max(1),
                ..policy
            },
            epoch: Instant::now(),
            names: (0..slots.len()).map(|i| format!("#{i}")).collect(),
            slots,
            marked_down: AtomicU64::new(0),
            marked_up: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 stays "up" even in the first millisecond.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn slot(&self, route: usize, backend: usize) -> &Slot {
        &self.slots[route][backend]
    }

    /// The backend's state now, without side effects.
    pub fn state(&self, route: usize, backend: usize) -> State {
        self.state_at(route, backend, self.now_ms())
    }

    fn state_at(&self, route: usize, backend: usize, now: u64) -> State {
        let slot = self.slot(route, backend);
        if slot.checked_down.load(Ordering::Relaxed) {
            return State::Down;
        }
        let until = slot.down_until.load(Ordering::Relaxed);
        if until == 0 {
            State::Up
        } else if now >= until {
            State::ProbeDue
        } else {
            State::Down
        }
    }

    pub fn is_up(&self, route: usize, backend: usize) -> bool {
        self.state(route, backend) == State::Up
    }

    /// Whether a request may go to this backend now: it is up, or it is due a probe and this
    /// caller won the probe (the next probe is then a whole down time away).
    pub fn admit(&self, route: usize, backend: usize) -> bool {
        let slot = self.slot(route, backend);
        let until = slot.down_until.load(Ordering::Relaxed);
        // The common case, on every request: up, two relaxed loads and no clock read.
        if until == 0 && !slot.checked_down.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.now_ms();
        if now < until || slot.checked_down.load(Ordering::Relaxed) {
            return false;
        }
        let next = now + self.policy.down_time.as_millis() as u64;
        slot.down_until
            .compare_exchange(until, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// A connection to the backend was opened (TCP and, for `https://`, TLS): it is up.
    pub fn connected(&self, route: usize, backend: usize) {
        let slot = self.slot(route, backend);
        // Loads first: every new backend connection of every core comes here, and a healthy
        // backend's line should stay shared in all their caches, not bounce between them.
        if slot.failures.load(Ordering::Relaxed) != 0 {
            slot.failures.store(0, Ordering::Relaxed);
        }
        if slot.checked_down.load(Ordering::Relaxed) {
            return;
        }
        let until = slot.down_until.load(Ordering::Relaxed);
        if until != 0
            && slot
                .down_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.marked_up.fetch_add(1, Ordering::Relaxed);
            tracing::info!(route, backend, "backend up again");
        }
    }

    /// A connect to the backend failed (refused, timed out, TLS handshake failed). The
    /// `fall`th failure in a row marks it down; a failed probe keeps it down (the probe already
    /// moved its next chance a down time on).
    pub fn connect_failed(&self, route: usize, backend: usize) {
        let slot = self.slot(route, backend);
        let n = slot
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if n < self.policy.fall {
            return;
        }
        let next = self.now_ms() + self.policy.down_time.as_millis() as u64;
        let was = slot.down_until.load(Ordering::Relaxed);
        if was == 0 {
            if slot
                .down_until
                .compare_exchange(0, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                self.marked_down.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(route, backend, failures = n, "backend marked down");
            }
        } else {
            slot.down_until.fetch_max(next, Ordering::Relaxed);
        }
    }

    /// The verdict of the route's active check (`backend::check`): deliberate evidence, so it
    /// takes effect at once, either way.
    pub fn checked(&self, route: usize, backend: usize, up: bool) {
        let slot = self.slot(route, backend);
        if up {
            slot.checked_down.store(false, Ordering::Relaxed);
            self.connected(route, backend);
            return;
        }
        slot.checked_down.store(true, Ordering::Relaxed);
        let next = self.now_ms() + self.policy.down_time.as_millis() as u64;
        if slot
            .down_until
            .compare_exchange(0, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.marked_down.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(route, backend, "backend marked down by its health check");
        }
    }

    /// Backends of `route` that are up now.
    pub fn up_count(&self, route: usize) -> usize {
        let now = self.now_ms();
        (0..self.slots[route].len())
            .filter(|&b| self.state_at(route, b, now) == State::Up)
            .count()
    }

    /// Number of routes.
    pub fn routes(&self) -> usize {
        self.slots.len()
    }

    /// Backends marked down, since start.
    pub fn marked_down(&self) -> u64 {
        self.marked_down.load(Ordering::Relaxed)
    }

    /// Backends brought back up, since start.
    pub fn marked_up(&self) -> u64 {
        self.marked_up.load(Ordering::Relaxed)
    }
}

impl Source for Health {
    fn render(&self, out: &mut Exposition) {
        let routes = 0..self.routes();
        out.gauges(
            "kcdproxy_backends",
            "Backends configured per route.",
            "route",
            routes
                .clone()
                .map(|r| (&self.names[r], self.slots[r].len())),
        );
        out.gauges(
            "kcdproxy_backends_up",
            "Backends per route not marked down by failed connects.",
            "route",
            routes.map(|r| (&self.names[r], self.up_count(r))),
        );
        out.counter(
            "kcdproxy_backend_marked_down_total",
            "Times a backend was marked down (--backend-fall connects failed in a row).",
            self.marked_down(),
        );
        out.counter(
            "kcdproxy_backend_marked_up_total",
            "Times a down backend came back (a probe's connect succeeded).",
            self.marked_up(),
        );
    }
}

/// `/readyz`: every route has a backend up. (A route whose backends are all down still sends
/// requests to them, one probe at a time; the balancer in front should prefer another proxy.)
impl Readiness for Health {
    fn ready(&self) -> Result<(), String> {
        let down: Vec<&str> = (0..self.routes())
            .filter(|&r| self.up_count(r) == 0)
            .map(|r| self.names[r].as_str())
            .collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("no backend up for route {}", down.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(fall: u32, down_ms: u64) -> Health {
        Health::with_sizes(
            [2usize].into_iter(),
            HealthPolicy {
                fall,
                down_time: Duration::from_millis(down_ms),
            },
        )
    }

    #[test]
    fn fall_failures_in_a_row_mark_down_and_a_success_resets_the_count() {
        let h = health(3, 60_000);
        h.connect_failed(0, 1);
        h.connect_failed(0, 1);
        h.connected(0, 1);
        h.connect_failed(0, 1);
        h.connect_failed(0, 1);
        assert_eq!(h.state(0, 1), State::Up, "the success broke the run");
        h.connect_failed(0, 1);
        assert_eq!(h.state(0, 1), State::Down);
        assert!(!h.admit(0, 1));
        assert!(h.admit(0, 0), "the other backend is untouched");
        assert_eq!((h.up_count(0), h.marked_down(), h.marked_up()), (1, 1, 0));
        // More failures while down mark nothing again.
        h.connect_failed(0, 1);
        assert_eq!(h.marked_down(), 1);
    }

    #[test]
    fn after_the_down_time_one_request_probes_and_a_success_brings_it_back() {
        let h = health(1, 30);
        h.connect_failed(0, 0);
        assert!(!h.admit(0, 0));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.state(0, 0), State::ProbeDue);
        assert!(h.admit(0, 0), "the first request is the probe");
        assert!(!h.admit(0, 0), "only one probe per down time");
        h.connected(0, 0);
        assert_eq!(h.state(0, 0), State::Up);
        assert!(h.admit(0, 0));
        assert_eq!((h.marked_down(), h.marked_up()), (1, 1));
    }

    #[test]
    fn a_failed_probe_keeps_it_down_for_another_down_time() {
        let h = health(2, 30);
        h.connect_failed(0, 0);
        h.connect_failed(0, 0);
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.admit(0, 0));
        h.connect_failed(0, 0);
        assert_eq!(h.state(0, 0), State::Down);
        assert!(!h.admit(0, 0));
        assert_eq!(h.marked_down(), 1, "still the same outage");
    }

    #[test]
    fn an_active_check_overrides_request_successes_until_it_passes() {
        let h = health(3, 10);
        h.checked(0, 0, false);
        assert_eq!(h.state(0, 0), State::Down, "one failed check is enough");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!h.admit(0, 0), "no probe while the check says down");
        h.connected(0, 0);
        assert_eq!(
            h.state(0, 0),
            State::Down,
            "a connect does not overrule the check"
        );
        h.checked(0, 0, true);
        assert_eq!(h.state(0, 0), State::Up);
        assert_eq!((h.marked_down(), h.marked_up()), (1, 1));
    }

    #[test]
    fn ready_while_every_route_has_a_backend_up_and_counted_on_the_metrics() {
        let h = health(1, 60_000);
        assert_eq!(h.ready(), Ok(()));
        h.connect_failed(0, 0);
        assert_eq!(h.ready(), Ok(()), "one of two is still up");
        h.connect_failed(0, 1);
        assert_eq!(h.ready(), Err("no backend up for route #0".into()));
        let mut out = Exposition::new();
        h.render(&mut out);
        let text = out.into_text();
        for want in [
            "kcdproxy_backends{route=\"#0\"} 2\n",
            "kcdproxy_backends_up{route=\"#0\"} 0\n",
            "kcdproxy_backend_marked_down_total 2\n",
            "kcdproxy_backend_marked_up_total 0\n",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        h.connected(0, 1);
        assert_eq!(h.ready(), Ok(()));
    }
}
