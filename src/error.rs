//! The one error type of kcdproxy.
//!
//! Every failure on any leg of a request becomes an [`Error`] with a closed [`ErrorKind`] (what
//! went wrong), a [`Side`] (whose fault it is) and a free-text context (runtime detail for the
//! log). The kind alone decides the HTTP answer; that mapping lives in exactly one place,
//! `proxy::respond`. Runtime strings never go into the kind, so the mapping stays total and
//! testable.

use std::borrow::Cow;
use std::fmt;

/// What went wrong. Closed: adding a variant forces the HTTP mapping to be revisited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    // ---- client ----
    /// The request head or body framing is malformed or ambiguous (smuggling shapes). → 400
    BadRequest,
    /// The request line is longer than the head limit allows. → 414
    UriTooLong,
    /// The request head exceeds `--max-header-bytes`. → 431
    HeadersTooLarge,
    /// The client did not send a complete head within the header timeout. → 408
    ClientHeaderTimeout,
    /// The client stalled while sending a body. → 408 (if no response started) / close
    ClientBodyTimeout,
    /// The client closed or reset the connection. No response possible.
    ClientClosed,
    /// No route matches the Host and path. → 404
    NoRoute,
    /// The method is not proxied (CONNECT, or an absolute-form target to another origin). → 405/400
    MethodNotAllowed,
    /// The request body is larger than allowed. → 413
    PayloadTooLarge,
    /// Authentication is required or failed. → 401 (the auth module adds the challenges)
    Unauthenticated,
    /// Authenticated, but not allowed. → 403
    Forbidden,
    /// A TLS handshake with the client failed. No response possible.
    ClientTls,
    // ---- backend ----
    /// The backend refused the connection or is unreachable. → 502
    BackendConnect,
    /// The backend did not accept the connection within the connect timeout. → 504
    BackendConnectTimeout,
    /// The backend did not answer (or stalled) within the backend timeout. → 504
    BackendTimeout,
    /// The backend sent a malformed response, or closed before completing it. → 502
    BackendProtocol,
    /// TLS to the backend failed (certificate, handshake). → 502
    BackendTls,
    // ---- KDC / identity ----
    /// The KDC (or winbind) is unavailable or too slow, or the pool's queue is full. → 503
    KdcUnavailable,
    /// The KDC refused delegation for this user or SPN. → 403
    DelegationRefused,
    // ---- ours ----
    /// The proxy is shutting down or at its connection limit. → 503
    Overloaded,
    /// A bug or an impossible state. → 500
    Internal,
}

impl ErrorKind {
    /// A short stable token for logs and metrics (`reason=` in the access log).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::ClientHeaderTimeout => "client_header_timeout",
            ErrorKind::ClientBodyTimeout => "client_body_timeout",
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::ClientTls => "client_tls",
            ErrorKind::BackendConnect => "backend_connect",
            ErrorKind::BackendConnectTimeout => "backend_connect_timeout",
            ErrorKind::BackendTimeout => "backend_timeout",
            ErrorKind::BackendProtocol => "backend_protocol",
            ErrorKind::BackendTls => "backend_tls",
            ErrorKind::KdcUnavailable => "kdc_unavailable",
            ErrorKind::DelegationRefused => "delegation_refused",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whose fault it is, as far as the kind tells.
    pub fn side(self) -> Side {
        use ErrorKind::*;
        match self {
            BadRequest | UriTooLong | HeadersTooLarge | ClientHeaderTimeout | ClientBodyTimeout
            | ClientClosed | NoRoute | MethodNotAllowed | PayloadTooLarge | Unauthenticated
            | Forbidden | ClientTls => Side::Client,
            BackendConnect
            | BackendConnectTimeout
            | BackendTimeout
            | BackendProtocol
            | BackendTls => Side::Backend,
            KdcUnavailable | DelegationRefused => Side::Kdc,
            Overloaded | Internal => Side::Internal,
        }
    }
}

/// Which leg of the proxy an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client's connection (HTTP, TLS, authentication).
    Client,
    /// The backend connection.
    Backend,
    Kdc,
    Internal,
}

/// An error with its kind, the runtime context for the log, and an optional cause.
pub struct Error {
    pub kind: ErrorKind,
    pub context: Cow<'static, str>,
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(kind: ErrorKind, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: None,
        }
    }

    pub fn with_cause(
        kind: ErrorKind,
        context: impl Into<Cow<'static, str>>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            context: context.into(),
            cause: Some(Box::new(cause)),
        }
    }

    pub fn side(&self) -> Side {
        self.kind.side()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.context)?;
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
