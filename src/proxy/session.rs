//! The state the phases of one request share: what the request has shown so far and what of
//! it has moved. Connection state ([`super::Client`]) is apart from it: NTLM authenticates a
//! connection, while everything here ends with the request.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::auth::Identity;
use crate::config::Backend;
use crate::error::Error;
use crate::http1::RequestHead;

/// One request, from its parsed head to its access-log line.
pub(super) struct Session {
    pub head: RequestHead,
    pub started: Instant,
    pub progress: Progress,
    pub facts: Facts,
    /// Bytes of the connection buffer that belong to this request (its head and the body
    /// bytes that came with it); dropped from the buffer when the request is done.
    pub consumed: usize,
}

impl Session {
    pub fn new(head: RequestHead, started: Instant) -> Self {
        let consumed = head.head_len;
        Session {
            head,
            started,
            progress: Progress::default(),
            facts: Facts::default(),
            consumed,
        }
    }
}

/// What both body directions report as they go; read by the access log and the error path.
/// `Cell`s: the request pump and the response relay run at once in one task.
#[derive(Default)]
pub struct Progress {
    pub status: Cell<u16>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Set once any byte of the response head went to the client: from then on an error can
    /// only close the connection.
    pub response_started: Cell<bool>,
}

impl Progress {
    pub fn add_in(&self, n: usize) {
        self.bytes_in.set(self.bytes_in.get() + n as u64);
    }
    pub fn add_out(&self, n: usize) {
        self.bytes_out.set(self.bytes_out.get() + n as u64);
    }
}

/// The facts the phases learn that the access log and the metrics report.
#[derive(Default)]
pub(super) struct Facts {
    pub backend: Option<Rc<Backend>>,
    /// The backend connection came from a pool (or the client's bound one).
    pub reused: bool,
    pub identity: Option<Identity>,
    /// Why the proxy answered 401 (the challenge itself is not a failure of the request).
    pub auth_note: Option<Error>,
    /// Delegating routes: the route (its SPN), where the ticket came from, KDC wait.
    pub delegation: Option<(usize, &'static str, Option<Duration>)>,
}

/// A failed request: the error, and whether the request's framing was understood and its body
/// (if any) not started, so that the connection could go on after the error's answer.
pub(super) type Failed = (Error, bool);

/// What to do with the client connection after a request.
pub(super) enum Next {
    KeepAlive,
    Close,
    /// Close after reading (bounded) what the client still sends.
    Linger,
}

/// A request that ran its course: what comes next on the connection, and bytes read past the
/// request's end (the start of a pipelined one).
pub(super) type Done = (Next, Vec<u8>);
