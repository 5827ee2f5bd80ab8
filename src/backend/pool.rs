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
    /// after a stale connection). `retryable`: see `Pool::take`.
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

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::config::Scheme;
    use crate::net::TcpIo;

    /// Runs `f` with a pool and a way to open real loopback connections to one backend (the
    /// pool peeks at sockets, so they must be real).
    fn with_pool(f: impl AsyncFnOnce(&mut Pool, Rc<Backend>, &TcpListener)) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backend = Rc::new(Backend {
            scheme: Scheme::Http,
            host: "127.0.0.1".into(),
            port: addr.port(),
            addr,
        });
        tokio_uring::start(async {
            let mut pool = Pool::new(4, Duration::from_secs(60));
            f(&mut pool, backend, &listener).await;
        });
    }

    async fn open(backend: &Rc<Backend>, listener: &TcpListener, key: PoolKey) -> BackendConn {
        let tcp = TcpIo::connect(backend.addr).await.expect("connect");
        // Keep the accepted side open so the connection stays alive for the peek.
        let (peer, _) = listener.accept().expect("accept");
        std::mem::forget(peer);
        BackendConn::new(Stream::Plain(tcp), key)
    }

    fn key(backend: &Rc<Backend>, user: Option<&str>, spn: Option<&str>) -> PoolKey {
        PoolKey {
            backend: backend.clone(),
            identity: user.map(Rc::from),
            spn: spn.map(Rc::from),
        }
    }

    #[test]
    fn a_connection_bound_to_one_user_is_never_handed_to_another() {
        with_pool(async |pool, backend, listener| {
            let mut slot = Private::default();
            let anon = key(&backend, None, None);
            let conn = open(&backend, listener, anon.clone()).await;
            pool.checkin(
                &mut slot,
                conn,
                Checkin::Bind(Some(Rc::from("alice@A.TEST"))),
            );
            assert_eq!(
                pool.idle_count(),
                0,
                "a bound connection never enters the pool"
            );
            // Bob on the same client connection: alice's connection is closed, not reused.
            let got = pool.checkout(&mut slot, &anon, Some("bob@A.TEST"), false, false);
            assert!(got.is_none());
            assert!(slot.0.is_none(), "the mismatched bound connection is gone");

            let conn = open(&backend, listener, anon.clone()).await;
            pool.checkin(
                &mut slot,
                conn,
                Checkin::Bind(Some(Rc::from("alice@A.TEST"))),
            );
            let got = pool.checkout(&mut slot, &anon, Some("alice@A.TEST"), false, false);
            let got = got.expect("alice gets her own connection back");
            assert_eq!(got.key().identity.as_deref(), Some("alice@A.TEST"));
            // Binding again keeps the first user: the key never changes hands.
            pool.checkin(&mut slot, got, Checkin::Bind(Some(Rc::from("bob@A.TEST"))));
            let got = pool.checkout(&mut slot, &anon, Some("bob@A.TEST"), false, false);
            assert!(got.is_none());
        });
    }

    #[test]
    fn delegated_connections_are_pooled_by_user_and_spn_only() {
        with_pool(async |pool, backend, listener| {
            let mut slot = Private::default();
            let alice = key(&backend, Some("alice@A.TEST"), Some("HTTP/web.a.test"));
            let conn = open(&backend, listener, alice.clone()).await;
            pool.checkin(&mut slot, conn, Checkin::Reuse);
            assert_eq!(pool.idle_count(), 1);
            let carol = key(&backend, Some("carol@A.TEST"), Some("HTTP/web.a.test"));
            let other_spn = key(&backend, Some("alice@A.TEST"), Some("HTTP/other.a.test"));
            for k in [&carol, &other_spn] {
                assert!(pool.checkout(&mut slot, k, None, false, false).is_none());
            }
            // A fresh attempt never reuses, even for the right key.
            assert!(pool
                .checkout(&mut slot, &alice, None, true, false)
                .is_none());
            let got = pool.checkout(&mut slot, &alice, None, false, false);
            assert_eq!(got.expect("same user and SPN").key(), &alice);
        });
    }

    #[test]
    fn closed_connections_are_not_kept() {
        with_pool(async |pool, backend, listener| {
            let mut slot = Private::default();
            let anon = key(&backend, None, None);
            let conn = open(&backend, listener, anon.clone()).await;
            pool.checkin(&mut slot, conn, Checkin::Close);
            assert_eq!(pool.idle_count(), 0);
            assert!(pool
                .checkout(&mut slot, &anon, None, false, false)
                .is_none());
        });
    }
}
