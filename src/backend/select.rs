//! Which backend of a route serves a request: round robin per core, or a stable hash where two
//! requests must meet on one server.

use std::cell::Cell;
use std::rc::Rc;

use crate::config::route::RouteTable;
use crate::config::Backend;

/// Every route's backends, as one core sees them. Single-threaded: the round-robin positions
/// are `Cell`s.
pub struct BackendSets {
    /// Per route: its backends, shared by every pool key that names them.
    sets: Vec<Vec<Rc<Backend>>>,
    /// Round-robin position per route.
    rr: Vec<Cell<usize>>,
}

impl BackendSets {
    /// `start`: the first round-robin position (the worker id, so cores start apart).
    pub fn new(routes: &RouteTable, start: usize) -> Self {
        let sets: Vec<Vec<Rc<Backend>>> = routes
            .routes()
            .iter()
            .map(|r| r.backends.iter().map(|b| Rc::new(b.clone())).collect())
            .collect();
        let rr = (0..sets.len()).map(|_| Cell::new(start)).collect();
        BackendSets { sets, rr }
    }

    /// The next backend of route `route`, round robin.
    pub fn pick(&self, route: usize) -> Rc<Backend> {
        let list = &self.sets[route];
        let i = self.rr[route].get();
        self.rr[route].set(i.wrapping_add(1));
        list[i % list.len()].clone()
    }

    /// The backend for `key` on route `route`, the same for every request with that key on
    /// every core (a stable hash, not the process-random one). Outlook Anywhere opens the IN
    /// and the OUT channel of one RPC virtual connection as two HTTP requests on two TCP
    /// connections, and both must reach the same server (MS-RPCH: IN and OUT channels of a
    /// virtual connection).
    pub fn pick_by(&self, route: usize, key: &[&[u8]]) -> Rc<Backend> {
        let list = &self.sets[route];
        // FNV-1a: stable across processes and restarts, and enough to spread keys.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for part in key {
            for &b in *part {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        list[(h % list.len() as u64) as usize].clone()
    }
}
