//! The one place where an [`Error`] becomes an HTTP answer.
//!
//! Everything that fails on any leg of a request ends here: the status, reason phrase and
//! extra headers are a function of the [`ErrorKind`] alone; the error's context goes to the
//! access log, never to the client (it may name internal hosts).

use super::ctx::WorkerCtx;
use super::session::{Next, Progress};
use super::Client;
use crate::error::{Error, ErrorKind, Side};
use crate::http1;
use crate::net::deadline::write_by;

/// How the proxy answers an error: `None` when no answer can be sent (the client is gone or
/// its TLS failed).
pub fn status_for(kind: ErrorKind) -> Option<(u16, &'static str)> {
    use ErrorKind::*;
    Some(match kind {
        BadRequest => (400, "Bad Request"),
        UriTooLong => (414, "URI Too Long"),
        HeadersTooLarge => (431, "Request Header Fields Too Large"),
        ClientHeaderTimeout | ClientBodyTimeout => (408, "Request Timeout"),
        NoRoute => (404, "Not Found"),
        MethodNotAllowed => (405, "Method Not Allowed"),
        PayloadTooLarge => (413, "Content Too Large"),
        Unauthenticated => (401, "Unauthorized"),
        Forbidden | DelegationRefused => (403, "Forbidden"),
        BackendConnect | BackendProtocol | BackendTls => (502, "Bad Gateway"),
        BackendConnectTimeout | BackendTimeout => (504, "Gateway Timeout"),
        KdcUnavailable | Overloaded => (503, "Service Unavailable"),
        Internal => (500, "Internal Server Error"),
        ClientClosed | ClientTls => return None,
    })
}

/// Encodes the response for `err` into `out`. Returns the status, or `None` if nothing should
/// be sent. `keep_alive` is honoured only for errors that leave the framing intact.
/// `head_request`: the answer to a HEAD has no body (it would desynchronise keep-alive).
pub fn error_response(
    err: &Error,
    keep_alive: bool,
    head_request: bool,
    out: &mut Vec<u8>,
) -> Option<u16> {
    let (status, phrase) = status_for(err.kind)?;
    let keep_alive = keep_alive && keeps_connection(err.kind);
    let body = format!("{status} {phrase}\n");
    let mut headers: Vec<(&str, &[u8])> = vec![("Content-Type", b"text/plain; charset=utf-8")];
    if matches!(err.kind, ErrorKind::KdcUnavailable | ErrorKind::Overloaded) {
        headers.push(("Retry-After", b"5"));
    }
    let body: &[u8] = if head_request { b"" } else { body.as_bytes() };
    http1::encode_simple_response(status, phrase, &headers, body, keep_alive, out);
    Some(status)
}

/// Whether the client connection may carry another request after this error. Framing and
/// timeout errors mean we no longer know where the next request starts.
pub fn keeps_connection(kind: ErrorKind) -> bool {
    use ErrorKind::*;
    matches!(
        kind,
        NoRoute | Unauthenticated | Forbidden | DelegationRefused | KdcUnavailable
    )
}

/// Sends the error's answer unless the response has started, and says whether the connection
/// can go on. `framing_known`: the request's framing was understood and its body (if any) not
/// started; only then, and for errors that leave the framing intact, is the connection kept.
pub(super) async fn answer_error(
    c: &Client,
    ctx: &WorkerCtx,
    e: &Error,
    framing_known: bool,
    head_request: bool,
    p: &Progress,
) -> Next {
    let keep = framing_known && keeps_connection(e.kind) && !ctx.is_draining();
    if p.response_started.get() {
        return if keep { Next::KeepAlive } else { Next::Close };
    }
    let mut out = Vec::new();
    let Some(status) = error_response(e, keep, head_request, &mut out) else {
        return if keep { Next::KeepAlive } else { Next::Close };
    };
    p.status.set(status);
    let n = out.len();
    let deadline = tokio::time::Instant::now() + ctx.shared.cfg.timeouts.client_idle;
    if write_by(&c.stream, out, deadline).await.is_err() {
        return Next::Close;
    }
    p.add_out(n);
    if keep {
        Next::KeepAlive
    } else if e.side() == Side::Client && e.kind != ErrorKind::ClientHeaderTimeout {
        // The client may still be sending: read what it sends so it reads the answer.
        Next::Linger
    } else {
        Next::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (ErrorKind::BadRequest, Some(400)),
            (ErrorKind::UriTooLong, Some(414)),
            (ErrorKind::HeadersTooLarge, Some(431)),
            (ErrorKind::BackendConnect, Some(502)),
            (ErrorKind::BackendTimeout, Some(504)),
            (ErrorKind::BackendConnectTimeout, Some(504)),
            (ErrorKind::KdcUnavailable, Some(503)),
            (ErrorKind::ClientClosed, None),
        ];
        for (k, want) in cases {
            assert_eq!(status_for(k).map(|s| s.0), want, "{k:?}");
        }
    }

    #[test]
    fn retry_after_on_503() {
        let mut out = Vec::new();
        error_response(
            &Error::new(ErrorKind::KdcUnavailable, "kdc1.internal down"),
            true,
            false,
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 "), "{s}");
        assert!(s.contains("Retry-After: 5\r\n"), "{s}");
        assert!(!s.contains("kdc1.internal"), "context must not leak: {s}");
    }
}
