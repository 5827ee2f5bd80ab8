//! Which backend of a route serves a request: round robin per core, or a stable hash where two
//! requests must meet on one server; either way skipping backends that [`Health`] has down.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use super::health::{Health, State};
use crate::config::route::RouteTable;
use crate::config::Backend;

/// Every route's backends, as one core sees them. Single-threaded: the round-robin positions
/// are `Cell`s; the health state is the process's, shared.
pub struct BackendSets {
    /// Per route: its backends, shared by every pool key that names them.
    sets: Vec<Vec<Rc<Backend>>>,
    /// Round-robin position per route.
    rr: Vec<Cell<usize>>,
    health: Arc<Health>,
}

impl BackendSets {
    /// `start`: the first round-robin position (the worker id, so cores start apart).
    pub fn new(routes: &RouteTable, start: usize, health: Arc<Health>) -> Self {
        let sets: Vec<Vec<Rc<Backend>>> = routes
            .routes()
            .iter()
            .map(|r| r.backends.iter().map(|b| Rc::new(b.clone())).collect())
            .collect();
        let rr = (0..sets.len()).map(|_| Cell::new(start)).collect();
        BackendSets { sets, rr, health }
    }

    /// The next backend of route `route` that is up (or due a probe), round robin. When every
    /// one is down, the next in turn anyway: a request is never refused without trying.
    pub fn pick(&self, route: usize) -> Rc<Backend> {
        let i = self.next_rr(route);
        self.pick_from(route, i, None)
            .unwrap_or_else(|| self.sets[route][i % self.sets[route].len()].clone())
    }

    /// The backend for `key` on route `route`, the same for every request with that key on
    /// every core (a stable hash, not the process-random one). Outlook Anywhere opens the IN
    /// and the OUT channel of one RPC virtual connection as two HTTP requests on two TCP
    /// connections, and both must reach the same server (MS-RPCH: IN and OUT channels of a
    /// virtual connection).
    ///
    /// While the hashed backend is up, the answer depends on nothing else, so affinity never
    /// moves because *another* server went down. When it is down, the key is hashed again over
    /// the backends that are up, in the route's order: deterministic for a given up set, which
    /// all cores share, so IN and OUT still meet. (When a down backend is due its probe, the
    /// one request that probes it may part from its pair once; the client reconnects.)
    pub fn pick_by(&self, route: usize, key: &[&[u8]]) -> Rc<Backend> {
        let h = stable_hash(key);
        let list = &self.sets[route];
        self.hashed(route, h, None)
            .unwrap_or_else(|| list[(h % list.len() as u64) as usize].clone())
    }

    /// Another backend of `route` than `failed` for the one retry of a request whose connect
    /// failed: by `key`'s fallback hash when the request has one (so an RPC pair's retries
    /// meet too), else round robin. `None` when no other is up or due a probe.
    pub fn pick_other(
        &self,
        route: usize,
        failed: &Rc<Backend>,
        key: Option<&[&[u8]]>,
    ) -> Option<Rc<Backend>> {
        let skip = self.index_of(route, failed);
        match key {
            Some(k) => self.hashed(route, stable_hash(k), skip),
            None => {
                let i = self.next_rr(route);
                self.pick_from(route, i, skip)
            }
        }
    }

    /// A connection to `backend` of `route` was opened.
    pub fn connected(&self, route: usize, backend: &Rc<Backend>) {
        if let Some(i) = self.index_of(route, backend) {
            self.health.connected(route, i);
        }
    }

    /// A connect to `backend` of `route` failed (TCP refused or timed out, TLS handshake).
    pub fn connect_failed(&self, route: usize, backend: &Rc<Backend>) {
        if let Some(i) = self.index_of(route, backend) {
            self.health.connect_failed(route, i);
        }
    }

    fn next_rr(&self, route: usize) -> usize {
        let i = self.rr[route].get();
        self.rr[route].set(i.wrapping_add(1));
        i
    }

    fn index_of(&self, route: usize, backend: &Rc<Backend>) -> Option<usize> {
        self.sets[route].iter().position(|b| Rc::ptr_eq(b, backend))
    }

    /// The first admitted backend from round-robin position `i` on, other than `skip`.
    fn pick_from(&self, route: usize, i: usize, skip: Option<usize>) -> Option<Rc<Backend>> {
        let list = &self.sets[route];
        let n = list.len();
        (0..n)
            .map(|k| (i.wrapping_add(k)) % n)
            .filter(|&b| Some(b) != skip)
            .find(|&b| self.health.admit(route, b))
            .map(|b| list[b].clone())
    }

    /// The hashed choice for `h`, other than `skip`: see [`pick_by`](Self::pick_by).
    fn hashed(&self, route: usize, h: u64, skip: Option<usize>) -> Option<Rc<Backend>> {
        let list = &self.sets[route];
        let primary = (h % list.len() as u64) as usize;
        // The common case, on every RPC request: its server is up (no allocation, no clock).
        if Some(primary) != skip && self.health.admit(route, primary) {
            return Some(list[primary].clone());
        }
        let states: Vec<State> = (0..list.len())
            .map(|b| {
                if Some(b) == skip {
                    State::Down
                } else {
                    self.health.state(route, b)
                }
            })
            .collect();
        if let Some(b) = fallback(h, primary, &states) {
            return Some(list[b].clone());
        }
        // Nothing up: a backend due its probe, if one is.
        (0..list.len())
            .filter(|&b| states[b] == State::ProbeDue && b != primary)
            .find(|&b| self.health.admit(route, b))
            .map(|b| list[b].clone())
    }
}

/// FNV-1a over the key's parts: stable across processes and restarts, and enough to spread
/// keys.
fn stable_hash(key: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in key {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The backend a key whose `primary` is down falls back to: its hash taken again over the
/// backends that are up, in the route's order. Uses the hash's high half, independent of the
/// low bits that chose the primary, so the keys of a down server spread over all the others.
fn fallback(h: u64, primary: usize, states: &[State]) -> Option<usize> {
    let up: Vec<usize> = (0..states.len())
        .filter(|&b| b != primary && states[b] == State::Up)
        .collect();
    if up.is_empty() {
        return None;
    }
    Some(up[((h >> 32) % up.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::super::health::HealthPolicy;
    use super::*;
    use crate::config::{Config, Flags};

    fn sets(backends: usize) -> (BackendSets, Arc<Health>) {
        let list: Vec<String> = (0..backends)
            .map(|i| format!("http://127.0.0.1:{}", 9000 + i))
            .collect();
        let route = format!("/={}", list.join(","));
        let cfg = Config::from_flags(&Flags::parse_from([
            "kcdproxy",
            "--listen",
            "127.0.0.1:0",
            "--route",
            &route,
        ]))
        .unwrap();
        let policy = HealthPolicy {
            fall: 1,
            down_time: Duration::from_secs(600),
        };
        let health = Arc::new(Health::new(&cfg.routes, policy));
        (BackendSets::new(&cfg.routes, 0, health.clone()), health)
    }

    fn port(b: &Rc<Backend>) -> u16 {
        b.addr.port()
    }

    #[test]
    fn round_robin_skips_a_down_backend_and_tries_one_when_all_are_down() {
        let (s, h) = sets(3);
        let all: Vec<u16> = (0..3).map(|_| port(&s.pick(0))).collect();
        assert_eq!(all, [9000, 9001, 9002]);
        h.connect_failed(0, 1);
        let some: Vec<u16> = (0..4).map(|_| port(&s.pick(0))).collect();
        assert!(!some.contains(&9001), "{some:?}");
        h.connect_failed(0, 0);
        h.connect_failed(0, 2);
        // Every backend down: still one to try, in turn.
        let _ = s.pick(0);
    }

    #[test]
    fn the_hash_is_stable_and_moves_only_when_its_backend_is_down() {
        let (s, h) = sets(3);
        let keys: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i, b'x', i]).collect();
        let before: Vec<u16> = keys.iter().map(|k| port(&s.pick_by(0, &[k]))).collect();
        // Same answer again (and on any other core: nothing per core goes into it).
        let again: Vec<u16> = keys.iter().map(|k| port(&s.pick_by(0, &[k]))).collect();
        assert_eq!(before, again);
        h.connect_failed(0, 2);
        let after: Vec<u16> = keys.iter().map(|k| port(&s.pick_by(0, &[k]))).collect();
        let mut moved_to = std::collections::HashSet::new();
        for (b, a) in before.iter().zip(&after) {
            if *b == 9002 {
                assert_ne!(*a, 9002);
                moved_to.insert(*a);
            } else {
                assert_eq!(a, b, "a key whose backend is up never moves");
            }
        }
        assert_eq!(
            moved_to.len(),
            2,
            "a down server's keys spread over the others"
        );
        // The fallback is deterministic: IN and OUT of one key still meet.
        let twice: Vec<u16> = keys.iter().map(|k| port(&s.pick_by(0, &[k]))).collect();
        assert_eq!(after, twice);
    }

    #[test]
    fn a_retry_goes_elsewhere_and_an_rpc_pair_retries_to_the_same_place() {
        let (s, h) = sets(3);
        let first = s.pick(0);
        let other = s.pick_other(0, &first, None).expect("two others are up");
        assert!(!Rc::ptr_eq(&first, &other));
        let key: &[&[u8]] = &[b"client", b"/rpc/rpcproxy.dll?mbx:6001"];
        let primary = s.pick_by(0, key);
        let a = s.pick_other(0, &primary, Some(key)).unwrap();
        let b = s.pick_other(0, &primary, Some(key)).unwrap();
        assert!(Rc::ptr_eq(&a, &b) && !Rc::ptr_eq(&a, &primary));
        // No other backend up: the failure stands.
        for i in 0..3 {
            h.connect_failed(0, i);
        }
        assert!(s.pick_other(0, &first, None).is_none());
    }
}
