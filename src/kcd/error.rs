//! Why delegation produced no token: the closed [`DelegationError`], and the mapping of a GSS
//! failure of a KDC-bound call onto it, by the KDC request it came from ([`Phase`]).
//!
//! Invariant: every variant has a stable log token ([`DelegationError::as_str`]) and one HTTP
//! kind ([`DelegationError::error_kind`]); runtime text (the KDC's message) lives only in the
//! `String`s, so logs and metrics never depend on it.

use std::fmt;

use super::cache::CacheError;
use crate::error::ErrorKind;
use crate::gss::status::krb5_code;
use crate::gss::{GssStatus, PoolError};

/// Why the KDC refused, as far as it can be told (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The S4U2Self ticket is not forwardable: a sensitive user (AD `NOT_DELEGATED`, MIT
    /// `-allow_forwardable`), or protocol transition is off for the proxy.
    UserNotDelegable,
    /// S4U2Proxy refused after a forwardable S4U2Self: the SPN is not in the proxy's list.
    SpnNotAllowed,
    /// Refused for a reason the KDC does not tell apart (Evidence path, policy, revoked user).
    KdcRefused,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UserNotDelegable => "user_not_delegable",
            Refusal::SpnNotAllowed => "spn_not_allowed",
            Refusal::KdcRefused => "kdc_refused",
        }
    }
}

/// Which name the KDC did not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    User,
    Spn,
}

/// Why no token was made. Closed; runtime detail (GSS text) only in the `String`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DelegationError {
    /// The KDC side cannot answer now: pool full or timed out, KDC unreachable or silent.
    /// `reason` is a stable token (`pool_queue_full`, `pool_timeout`, `kdc_unreachable`, …).
    KdcUnavailable { reason: &'static str },
    /// The KDC refused to delegate; `detail` is its text, for the log.
    Refused { reason: Refusal, detail: String },
    /// The KDC does not know the user or the SPN.
    UnknownPrincipal(Unknown),
    /// The backend's answer does not authenticate it (wrong or garbled AP-REP).
    MutualAuthFailed(String),
    /// A principal or SPN we cannot hand to the KDC (empty, NUL byte, does not parse), or an
    /// evidence credential that is not `principal`'s.
    BadName(&'static str),
    /// Any other GSS-API failure, with its text.
    Gss(String),
}

impl DelegationError {
    /// A short stable token for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            DelegationError::KdcUnavailable { .. } => "kdc_unavailable",
            DelegationError::Refused { reason, .. } => reason.as_str(),
            DelegationError::UnknownPrincipal(Unknown::User) => "unknown_user",
            DelegationError::UnknownPrincipal(Unknown::Spn) => "unknown_spn",
            DelegationError::MutualAuthFailed(_) => "mutual_auth_failed",
            DelegationError::BadName(_) => "bad_name",
            DelegationError::Gss(_) => "delegation_gss",
        }
    }

    /// The HTTP-facing kind: the KDC side down is 503; this user cannot be delegated is 403;
    /// a backend SPN we may not (or cannot) delegate to and a backend that fails mutual
    /// authentication are 502 (the gateway's configuration or the backend is at fault).
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            DelegationError::KdcUnavailable { .. } => ErrorKind::KdcUnavailable,
            DelegationError::Refused {
                reason: Refusal::SpnNotAllowed,
                ..
            }
            | DelegationError::UnknownPrincipal(Unknown::Spn)
            | DelegationError::MutualAuthFailed(_) => ErrorKind::BackendProtocol,
            DelegationError::Refused { .. }
            | DelegationError::UnknownPrincipal(Unknown::User)
            | DelegationError::BadName(_) => ErrorKind::DelegationRefused,
            DelegationError::Gss(_) => ErrorKind::Internal,
        }
    }

    pub(super) fn pool(e: PoolError) -> Self {
        DelegationError::KdcUnavailable { reason: e.as_str() }
    }
}

impl fmt::Display for DelegationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DelegationError::KdcUnavailable { reason } => write!(f, "kdc_unavailable: {reason}"),
            DelegationError::Refused { detail, .. }
            | DelegationError::MutualAuthFailed(detail)
            | DelegationError::Gss(detail) => write!(f, "{}: {detail}", self.as_str()),
            DelegationError::BadName(why) => write!(f, "bad_name: {why}"),
            DelegationError::UnknownPrincipal(_) => f.write_str(self.as_str()),
        }
    }
}

impl std::error::Error for DelegationError {}

impl From<DelegationError> for crate::error::Error {
    fn from(e: DelegationError) -> Self {
        crate::error::Error::with_cause(e.error_kind(), "delegation", e)
    }
}

impl CacheError for DelegationError {
    fn abandoned() -> Self {
        DelegationError::KdcUnavailable {
            reason: "exchange_abandoned",
        }
    }

    fn is_negative(&self) -> bool {
        matches!(
            self,
            DelegationError::Refused { .. } | DelegationError::UnknownPrincipal(_)
        )
    }
}

/// Which KDC request a GSS failure came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Login,
    S4u2Self,
    /// After a forwardable S4U2Self.
    S4u2ProxyTransition,
    S4u2ProxyEvidence,
}

pub(super) fn gss(e: libgssapi::error::Error) -> DelegationError {
    status(e.into())
}

pub(super) fn status(s: GssStatus) -> DelegationError {
    DelegationError::Gss(s.to_string())
}

/// errno values MIT passes through as minor codes when a KDC socket fails.
const NET_ERRNOS: [u32; 5] = [
    libc::ETIMEDOUT as u32,
    libc::ECONNREFUSED as u32,
    libc::EHOSTUNREACH as u32,
    libc::ENETUNREACH as u32,
    libc::ECONNRESET as u32,
];

/// Maps a GSS failure of a KDC-bound call onto the closed error.
pub(super) fn classify(s: GssStatus, phase: Phase) -> DelegationError {
    use krb5_code as k;
    let refused = |reason| DelegationError::Refused {
        reason,
        detail: s.minor_text(),
    };
    if s.kdc_unreachable() || NET_ERRNOS.contains(&s.minor) {
        return DelegationError::KdcUnavailable {
            reason: "kdc_unreachable",
        };
    }
    match s.krb5_code() {
        Some(k::KDC_ERR_C_PRINCIPAL_UNKNOWN) => DelegationError::UnknownPrincipal(Unknown::User),
        Some(k::KDC_ERR_S_PRINCIPAL_UNKNOWN) => match phase {
            // In S4U2Self the server is the proxy itself (known); the name looked up is the user.
            Phase::S4u2Self => DelegationError::UnknownPrincipal(Unknown::User),
            Phase::Login => DelegationError::Gss(s.to_string()),
            Phase::S4u2ProxyTransition | Phase::S4u2ProxyEvidence => {
                DelegationError::UnknownPrincipal(Unknown::Spn)
            }
        },
        Some(k::KDC_ERR_BADOPTION | k::KDC_ERR_POLICY) => match phase {
            Phase::S4u2ProxyTransition => refused(Refusal::SpnNotAllowed),
            Phase::Login => DelegationError::Gss(s.to_string()),
            Phase::S4u2Self | Phase::S4u2ProxyEvidence => refused(Refusal::KdcRefused),
        },
        Some(k::KDC_ERR_CLIENT_REVOKED) => refused(Refusal::KdcRefused),
        _ => DelegationError::Gss(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gss::status::routine;

    fn krb(n: u32) -> GssStatus {
        GssStatus::krb5_failure(n)
    }

    #[test]
    fn refusals_are_told_apart_by_phase() {
        let spn = classify(krb(13), Phase::S4u2ProxyTransition);
        assert!(matches!(
            spn,
            DelegationError::Refused {
                reason: Refusal::SpnNotAllowed,
                ..
            }
        ));
        assert_eq!(spn.error_kind(), ErrorKind::BackendProtocol);
        assert_eq!(spn.as_str(), "spn_not_allowed");
        let ev = classify(krb(13), Phase::S4u2ProxyEvidence);
        assert_eq!(ev.as_str(), "kdc_refused");
        assert_eq!(ev.error_kind(), ErrorKind::DelegationRefused);
        assert_eq!(
            classify(krb(7), Phase::S4u2ProxyTransition),
            DelegationError::UnknownPrincipal(Unknown::Spn)
        );
        assert_eq!(
            classify(krb(7), Phase::S4u2Self),
            DelegationError::UnknownPrincipal(Unknown::User)
        );
        assert_eq!(
            classify(krb(156), Phase::S4u2Self),
            DelegationError::KdcUnavailable {
                reason: "kdc_unreachable"
            }
        );
        let down = GssStatus {
            major: routine::FAILURE << 16,
            minor: libc::ETIMEDOUT as u32,
        };
        assert_eq!(
            classify(down, Phase::S4u2ProxyTransition).error_kind(),
            ErrorKind::KdcUnavailable
        );
        assert!(matches!(
            classify(krb(41), Phase::S4u2Self),
            DelegationError::Gss(_)
        ));
    }

    #[test]
    fn error_kinds_and_tokens() {
        let user = DelegationError::Refused {
            reason: Refusal::UserNotDelegable,
            detail: String::new(),
        };
        assert_eq!(user.error_kind(), ErrorKind::DelegationRefused);
        assert_eq!(user.as_str(), "user_not_delegable");
        assert!(user.is_negative());
        let down = DelegationError::pool(PoolError::QueueFull);
        assert_eq!(down.error_kind(), ErrorKind::KdcUnavailable);
        assert!(!down.is_negative());
        assert_eq!(down.to_string(), "kdc_unavailable: pool_queue_full");
        assert_eq!(
            DelegationError::MutualAuthFailed("x".into()).error_kind(),
            ErrorKind::BackendProtocol
        );
        assert_eq!(
            DelegationError::UnknownPrincipal(Unknown::User).error_kind(),
            ErrorKind::DelegationRefused
        );
        let e: crate::error::Error = DelegationError::Gss("boom".into()).into();
        assert_eq!(e.kind, ErrorKind::Internal);
    }
}
