//! When a failed attempt at the backend leg is made again. The whole rule is here, as data:
//! an [`Attempt`] says how the next try connects and what it sends, and [`Attempt::after`] is
//! the one place that decides whether there is a next try.
//!
//! Only failures that prove the backend never acted on the request are retried, and only once:
//! a pooled connection the backend had closed (the head could not be written, or not a byte of
//! response came back), and a backend 401 to a request the proxy sent without the user's
//! ticket (`send-auth=401`, or a backend that does not keep Kerberos per connection) — the
//! retry carries the ticket — and a connect to the backend that failed (refused, timed out, TLS
//! handshake): nothing was sent, so the retry goes to another backend of the route that is up. A backend 401 is never the client's problem (MS-SFU 3.1.5.2;
//! TMG's redirect in that case lost POST bodies, KB 951508).

/// Why an attempt failed in a way that another attempt can mend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// A pooled connection was closed by the backend: the head could not be written.
    StaleOnWrite,
    /// A pooled connection closed (or failed) before a byte of the response.
    EmptyReply,
    /// The backend answered 401 to a request sent without the user's ticket.
    TicketWanted,
    /// No connection to the backend could be opened: not a byte was sent. The retry goes to
    /// another backend of the route (the caller picks it).
    ConnectFailed,
}

/// How one attempt is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Attempt {
    /// 0 for the first.
    pub number: u8,
    /// Open a new backend connection rather than reuse one.
    pub fresh: bool,
    /// Send the user's ticket even where the route waits for the backend's 401.
    pub force_ticket: bool,
}

impl Attempt {
    pub const FIRST: Attempt = Attempt {
        number: 0,
        fresh: false,
        force_ticket: false,
    };

    /// The attempt after one that failed for `cause`, or `None` when the failure stands. One
    /// retry per request: a second failure is the backend's real answer.
    pub fn after(self, cause: Cause) -> Option<Attempt> {
        if self.number > 0 {
            return None;
        }
        Some(Attempt {
            number: self.number + 1,
            fresh: true,
            force_ticket: self.force_ticket || cause == Cause::TicketWanted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_retry_on_a_fresh_connection() {
        let all = [
            Cause::StaleOnWrite,
            Cause::EmptyReply,
            Cause::TicketWanted,
            Cause::ConnectFailed,
        ];
        for cause in all {
            let second = Attempt::FIRST
                .after(cause)
                .expect("first failure is retried");
            assert!(second.fresh);
            assert_eq!(second.number, 1);
            assert_eq!(second.force_ticket, cause == Cause::TicketWanted);
            for again in all {
                assert_eq!(second.after(again), None, "{cause:?} then {again:?}");
            }
        }
    }
}
