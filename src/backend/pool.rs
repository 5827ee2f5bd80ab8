//! The per-core pool of idle backend connections, and the slot that binds a backend connection
//! to one client connection. Both enforce the identity rule of the module doc themselves: the
//! proxy hands connections in and out through [`Pool::checkout`] and [`Pool::checkin`] and never
//! edits a connection's key or binding.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::Backend;
use crate::net::Io;
use crate::tls::Stream;

/// Idle time after which a pooled connection is checked for a close by the backend before reuse.
const PEEK_AFTER: Duration = Duration::from_millis(500);

/// What makes two backend connections interchangeable.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub backend: Rc<Backend>,
    /// The user the connection is authenticated as: the delegated user, or (once bound) the
    /// client whose own authentication it carried. `None` = anonymous.
    pub identity: Option<Rc<str>>,
    /// The backend's SPN the user's ticket was for (delegation); `None` = no delegation.
    pub spn: Option<Rc<str>>,
}

/// A connection to a backend.
pub struct BackendConn {
    pub stream: Stream,
    /// INVARIANT: fixed when the connection is opened, except that binding it to a client
    /// records that client's user once (see [`Pool::checkin`]).
    key: PoolKey,
    /// Requests already sent on this connection.
    pub requests: u32,
    /// The connection carried connection-bound authentication (NTLM/Negotiate) for one client.
    /// INVARIANT: once set it stays set, and the connection never enters the shared pool.
    bound: bool,
    /// The backend accepted the user's delegated ticket on this connection (its key names the
    /// user and SPN): later requests need no new AP-REQ while the backend keeps the
    /// authentication bound to the connection, as IIS and mod_auth_gssapi do.
    ticket_accepted: bool,
}

impl BackendConn {
    /// A freshly opened connection for `key`.
    pub fn new(stream: Stream, key: PoolKey) -> Self {
        BackendConn {
            stream,
            key,
            requests: 0,
            bound: false,
            ticket_accepted: false,
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn ticket_accepted(&self) -> bool {
        self.ticket_accepted
    }

    /// The backend took the delegated ticket sent on this connection (and proved itself).
    pub fn set_ticket_accepted(&mut self) {
        self.ticket_accepted = true;
    }
}

/// The backend connection bound to one client connection (connection-bound authentication
/// passed through to the backend). INVARIANT: holds only a bound connection.
#[derive(Default)]
pub struct Private(Option<BackendConn>);

impl Private {
    /// Closes the bound connection, if any (the client connection ends).
    pub fn close(&mut self) {
        if let Some(b) = self.0.take() {
            b.stream.shutdown();
        }
    }
}

/// Where a connection goes after a response.
pub enum Checkin {
    /// Not at a clean message boundary, or the worker is draining.
    Close,
    /// Back where it belongs: the shared pool, or its client's slot if it is bound.
    Reuse,
    /// It carried the client's own connection-bound authentication: bind it to that client
    /// (`user`: who the proxy authenticated, if anyone) and keep it in the client's slot.
    Bind(Option<Rc<str>>),
}

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// Idle backend connections of one core. No lock: only this core touches it.
pub struct Pool {
    idle: HashMap<PoolKey, Vec<Idle>>,
    max_per_key: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_per_key: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: HashMap::new(),
            max_per_key,
            idle_timeout,
        }
    }

    /// An open connection for `key`, if one is idle: for a request that is not delegated, the
    /// client's bound connection when it is for the same backend and the same `user` (a client
    /// that re-authenticated as someone else never inherits the previous user's connection;
    /// a mismatched bound connection is closed), else the pool's. `fresh` skips reuse (a retry
    /// after a stale connection). `retryable`: see [`Pool::take`].
    pub fn checkout(
        &mut self,
        private: &mut Private,
        key: &PoolKey,
        user: Option<&str>,
        fresh: bool,
        retryable: bool,
    ) -> Option<BackendConn> {
        // A delegated request is keyed by (backend, user, SPN) in the pool; the client's bound
        // connection (if any) is for pass-through authentication and stays where it is.
        if key.spn.is_none() {
            if let Some(pb) = private.0.take() {
                let same_user = pb.key.identity.as_deref() == user;
                if !fresh
                    && same_user
                    && pb.key.backend == key.backend
                    && !pb.stream.tcp().peer_closed()
                {
                    return Some(pb);
                }
                pb.stream.shutdown();
            }
        }
        if fresh {
            return None;
        }
        self.take(key, retryable)
    }

    /// Returns a connection after a response (see [`Checkin`]).
    pub fn checkin(&mut self, private: &mut Private, mut conn: BackendConn, how: Checkin) {
        match how {
            Checkin::Close => {
                conn.stream.shutdown();
                return;
            }
            Checkin::Bind(user) if !conn.bound => {
                conn.bound = true;
                conn.key.identity = user;
            }
            Checkin::Bind(_) | Checkin::Reuse => {}
        }
        if conn.bound {
            if let Some(old) = private.0.replace(conn) {
                old.stream.shutdown();
            }
        } else {
            self.put(conn);
        }
    }

    /// The most recently used live connection for `key`, if any. Connections idle too long or
    /// closed by the backend are dropped on the way. `retryable`: the caller can resend the
    /// request on a fresh connection if this one turns out closed, so a connection idle only
    /// moments is handed out without the liveness syscall.
    fn take(&mut self, key: &PoolKey, retryable: bool) -> Option<BackendConn> {
        let list = self.idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(idle) = list.pop() {
            let idle_for = now.duration_since(idle.since);
            // The liveness peek costs a syscall; a connection that finished a response moments
            // ago is rarely closed already, and a retryable request is resent if it was. A
            // request whose body streams from the client cannot be resent: always check.
            if idle_for < self.idle_timeout
                && ((retryable && idle_for < PEEK_AFTER) || !idle.conn.stream.tcp().peer_closed())
            {
                return Some(idle.conn);
            }
            idle.conn.stream.shutdown();
        }
        None
    }

    /// Stores a connection that finished a request cleanly.
    fn put(&mut self, conn: BackendConn) {
        // INVARIANT: a bound connection never gets here (`checkin` keeps it in its slot).
        debug_assert!(!conn.bound);
        if self.max_per_key == 0 || conn.bound {
            conn.stream.shutdown();
            return;
        }
        let list = self.idle.entry(conn.key.clone()).or_default();
        if list.len() >= self.max_per_key {
            // Drop the oldest: the newest are the likeliest to still be open at the backend.
            let old = list.remove(0);
            old.conn.stream.shutdown();
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes connections idle past the timeout. Called from the worker's housekeeping tick.
    pub fn evict_expired(&mut self) {
        let now = Instant::now();
        let timeout = self.idle_timeout;
        self.idle.retain(|_, list| {
            list.retain(|i| {
                let keep = now.duration_since(i.since) < timeout;
                if !keep {
                    i.conn.stream.shutdown();
                }
                keep
            });
            !list.is_empty()
        });
    }

    /// Closes everything (shutdown).
    pub fn clear(&mut self) {
        for (_, list) in self.idle.drain() {
            for i in list {
                i.conn.stream.shutdown();
            }
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}
