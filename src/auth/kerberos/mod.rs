//! The Kerberos half of `Negotiate`: the proxy accepts a client's AP-REQ with its own keytab.
//!
//! ```text
//!  Authorization: Negotiate <b64>          core (inline, µs)            pool thread (blocking)
//!  ─────────────────────────────► parse_token: raw krb5 or SPNEGO ─► KerberosAcceptor::accept
//!                                 NegTokenInit with a krb5 token      gss_accept_sec_context
//!                                                                     (keytab, replay cache)
//!  WWW-Authenticate: Negotiate <b64> ◄── KerberosAccepted { principal, response_token,
//!  (on the final response)                                  delegated } ◄──────────────┘
//! ```
//!
//! ## What blocks, and why it runs in the pool
//!
//! [`KerberosAcceptor::accept`] calls MIT's `gss_accept_sec_context`, which reads the keytab,
//! locks, reads and appends to the replay-cache file, and — with an acceptor credential of
//! usage `Both` — may fetch or refresh the proxy's own TGT from the KDC. All of that is
//! synchronous, so callers run it on [`crate::gss::BlockingPool`] (see
//! [`KerberosAcceptor::accept_in`]), never on a core. [`parse_token`] is pure and cheap: the
//! auth state machine may call it inline to decide whether a token is Kerberos at all.
//!
//! ## SPNEGO: unwrapped here, not by GSS-API's SPNEGO mechanism
//!
//! The SPNEGO framing is parsed with the same panic-free codec as NTLM-in-Negotiate
//! ([`crate::gss::spnego`]), and only the inner krb5 token is handed to GSS-API, with a
//! credential restricted to the krb5 mechanism. Why:
//!
//! - one parser decides what a `Negotiate` token is, so NTLM and Kerberos cannot disagree;
//! - HTTP allows exactly one Kerberos round: we accept only a NegTokenInit whose *first*
//!   mechanism is Kerberos (1.2.840.113554.1.2.2, or 1.2.840.48018.1.2.2 as Windows lists
//!   first) and that carries its optimistic token. No mechanism is negotiated, so no
//!   downgrade is possible and the mechListMIC is optional (RFC 4178 §5); when the client
//!   sends one anyway it is verified and ours is returned;
//! - errors come straight from the krb5 mechanism, so minor codes map cleanly onto
//!   [`KerberosError`] (replay, skew, wrong key …) instead of through SPNEGO's wrapping.
//!
//! The answer mirrors the request: a raw AP-REP for a raw token; for SPNEGO a NegTokenResp
//! `accept-completed`, `supportedMech` = the client's first OID, `responseToken` = AP-REP.
//!
//! ## Invariants
//!
//! - **Replay cache on, shared by all cores.** MIT's acceptor records every authenticator in
//!   its file replay cache (`$KRB5RCACHEDIR/krb5_<euid>.rcache2` unless the acceptor names an
//!   `rcache`), locked per access by the library, so an AP-REQ presented twice — on another
//!   core, thread, acceptor instance or proxy process of the same user — is refused as
//!   [`KerberosError::Replay`]. [`KerberosAcceptor::new`] refuses to build an acceptor when
//!   the replay cache is turned off (`KRB5RCACHETYPE=none`, `rcache = none:`). Each token is
//!   accepted once per request (RFC 4120 §3.2.3: replays are caught by the replay cache,
//!   shared by all cores): there is no cache of accepted tokens here.
//! - **Only `accept` mints a [`KerberosAccepted`]**: its fields are private and it has no
//!   public constructor, so holding one proves a ticket was verified with our key.
//! - **No token can panic this module**: framing is checked by a bounded reader before
//!   anything reaches GSS-API, and GSS-API failures are values.
//!
//! ## `delegated`: the evidence for S4U2Proxy ([`crate::gss::DelegatedCred`])
//!
//! With an acceptor credential of usage `Both` ([`AcceptorConfig::login`]), MIT keeps the
//! client's service ticket as an *evidence ticket* bound to the proxy's own TGT whenever the
//! ticket is forwardable — even if the client did not ask for delegation. That credential,
//! handed to `ClientCtx::new` for the backend's SPN, makes MIT do S4U2Proxy with the client's
//! own ticket (MS-SFU 3.1.5.2: no S4U2Self for Kerberos clients). If the client delegated
//! its TGT (`GSS_C_DELEG_FLAG`) the credential is that TGT instead. Holding a credential does
//! not mean delegation will succeed: for an AD "sensitive" user (bob in the lab) MIT still
//! keeps the evidence ticket, and the KDC refuses the S4U2Proxy (`KDC_ERR_BADOPTION`).

//!
//! ## Modules
//!
//! - `token` ([`parse_token`]): what in a `Negotiate` token is Kerberos, without blocking.
//! - `acceptor` ([`KerberosAcceptor`]): `gss_accept_sec_context` with our keytab, and Basic
//!   passwords checked against the KDC.
//! - `initiator` ([`KerberosInitiator`]): the client side, for tests and load tools.
//! - here: [`KerberosError`] and the mapping of GSS status codes onto it.

mod acceptor;
mod initiator;
mod token;

use std::fmt;

use crate::error::ErrorKind;
use crate::gss::status::{krb5_code, routine, supplementary, ASN1_TABLE_BASE};
use crate::gss::{GssStatus, PoolError};

pub use acceptor::{AcceptorConfig, KerberosAccepted, KerberosAcceptor};
pub use initiator::{InitiatorCtx, InitiatorMech, KerberosInitiator};
pub use token::{parse_token, KrbToken, KrbWrapping};

/// Why a Kerberos acceptance failed. Closed; runtime detail only in the `String`s (GSS text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KerberosError {
    /// Broken framing, or a token the krb5 mechanism cannot decode (the text says which).
    Malformed(&'static str),
    /// A valid `Negotiate` token that is not Kerberos for us: NTLM, or SPNEGO whose first
    /// mechanism is not Kerberos or that carries no Kerberos token.
    NotKerberos,
    /// This authenticator was seen before (replay cache): `KRB_AP_ERR_REPEAT`.
    Replay,
    /// The authenticator's clock is too far from ours: `KRB_AP_ERR_SKEW`.
    Skew,
    /// The ticket has expired or is not yet valid (`KRB_AP_ERR_TKT_EXPIRED`/`_NYV`).
    Expired,
    /// The ticket is for a service this acceptor does not accept (`KRB_AP_ERR_NOT_US`,
    /// `KRB_AP_WRONG_PRINC`, `KRB_AP_ERR_BADMATCH`).
    WrongPrincipal,
    /// No key for the ticket in our keytab (principal, kvno or enctype): another SPN's
    /// ticket, or a stale keytab (`KRB5_KT_NOTFOUND`, `KRB_AP_ERR_BADKEYVER`, `_NOKEY`).
    NoKey,
    /// The ticket or authenticator fails its integrity check: wrong key or tampering
    /// (`KRB_AP_ERR_MODIFIED`, `_BAD_INTEGRITY`).
    Integrity,
    /// The mechanism wants another round (e.g. DCE-style); HTTP Negotiate has only one.
    ContinueNeeded,
    /// An anonymous (PKINIT anonymous) client: authenticates nobody.
    Anonymous,
    /// The client's SPNEGO mechListMIC does not verify.
    MicMismatch,
    /// The replay cache cannot be used (I/O, permissions) or is turned off. Never skipped.
    ReplayCache(String),
    /// The acceptor's credential cannot be built (keytab missing or unreadable, bad name).
    Credential(String),
    /// Any other GSS-API failure, with its text.
    Gss(String),
    /// The blocking pool did not run the acceptance (full, timed out, worker gone).
    Pool(PoolError),
    /// A Basic password the KDC refused (wrong, unknown user, disabled, expired).
    Password(&'static str),
    /// The KDC did not answer (unreachable, realm unknown): nothing was decided.
    KdcUnreachable(String),
}

impl KerberosError {
    /// A short stable token for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            KerberosError::Malformed(_) => "krb_malformed",
            KerberosError::NotKerberos => "krb_not_kerberos",
            KerberosError::Replay => "krb_replay",
            KerberosError::Skew => "krb_skew",
            KerberosError::Expired => "krb_expired",
            KerberosError::WrongPrincipal => "krb_wrong_principal",
            KerberosError::NoKey => "krb_no_key",
            KerberosError::Integrity => "krb_integrity",
            KerberosError::ContinueNeeded => "krb_continue_needed",
            KerberosError::Anonymous => "krb_anonymous",
            KerberosError::MicMismatch => "krb_mic_mismatch",
            KerberosError::ReplayCache(_) => "krb_replay_cache",
            KerberosError::Credential(_) => "krb_credential",
            KerberosError::Gss(_) => "krb_gss",
            KerberosError::Pool(p) => p.as_str(),
            KerberosError::Password(why) => why,
            KerberosError::KdcUnreachable(_) => "kdc_unreachable",
        }
    }

    /// The proxy-wide kind: the client's failures are 401 (with fresh challenges); our own
    /// broken replay cache or credential is a 500; a saturated pool is a 503.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            KerberosError::ReplayCache(_) | KerberosError::Credential(_) => ErrorKind::Internal,
            KerberosError::Pool(p) => p.error_kind(),
            KerberosError::KdcUnreachable(_) => ErrorKind::KdcUnavailable,
            _ => ErrorKind::Unauthenticated,
        }
    }
}

impl fmt::Display for KerberosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KerberosError::Malformed(why) => write!(f, "{}: {why}", self.as_str()),
            KerberosError::ReplayCache(t)
            | KerberosError::Credential(t)
            | KerberosError::Gss(t) => {
                write!(f, "{}: {t}", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

impl std::error::Error for KerberosError {}

impl From<KerberosError> for crate::error::Error {
    fn from(e: KerberosError) -> Self {
        crate::error::Error::with_cause(e.error_kind(), "kerberos", e)
    }
}

/// Maps a failed password login (`gss_acquire_cred_with_password`: an AS exchange).
pub(crate) fn classify_login(s: GssStatus) -> KerberosError {
    use krb5_code as k;
    if s.kdc_unreachable() {
        return KerberosError::KdcUnreachable(s.to_string());
    }
    match s.krb5_code() {
        Some(k::KDC_ERR_PREAUTH_FAILED | k::AP_ERR_BAD_INTEGRITY) => {
            KerberosError::Password("basic_wrong_password")
        }
        Some(k::KDC_ERR_C_PRINCIPAL_UNKNOWN) => KerberosError::Password("basic_unknown_user"),
        Some(k::KDC_ERR_CLIENT_REVOKED) => KerberosError::Password("basic_account_disabled"),
        Some(k::KDC_ERR_KEY_EXP) => KerberosError::Password("basic_password_expired"),
        // Anything else (skew, policy, an encryption type mismatch): refuse, and say why.
        _ => KerberosError::Password("basic_kdc_refused"),
    }
}

/// Maps a failed `gss_accept_sec_context` onto the closed error.
pub(crate) fn classify(s: GssStatus) -> KerberosError {
    use krb5_code as k;
    if s.supplementary() & (supplementary::DUPLICATE_TOKEN | supplementary::OLD_TOKEN) != 0 {
        return KerberosError::Replay;
    }
    match s.krb5_code() {
        Some(k::AP_ERR_REPEAT | k::RC_REPLAY) => return KerberosError::Replay,
        Some(k::AP_ERR_SKEW) => return KerberosError::Skew,
        Some(k::AP_ERR_TKT_EXPIRED | k::AP_ERR_TKT_NYV) => return KerberosError::Expired,
        Some(k::AP_ERR_NOT_US | k::AP_ERR_BADMATCH | k::AP_WRONG_PRINC) => {
            return KerberosError::WrongPrincipal
        }
        Some(
            k::AP_ERR_BADKEYVER | k::AP_ERR_NOKEY | k::KT_NOTFOUND | k::KT_END | k::KT_KVNONOTFOUND,
        ) => return KerberosError::NoKey,
        Some(k::AP_ERR_MODIFIED | k::AP_ERR_BAD_INTEGRITY) => return KerberosError::Integrity,
        Some(k::AP_ERR_BADVERSION | k::AP_ERR_MSG_TYPE) => {
            return KerberosError::Malformed("not an AP-REQ")
        }
        Some(k::RC_FIRST..=k::RC_LAST | k::RC_REQUIRED) => {
            return KerberosError::ReplayCache(s.to_string())
        }
        _ => {}
    }
    if s.minor.wrapping_sub(ASN1_TABLE_BASE) < 64 {
        return KerberosError::Malformed("AP-REQ does not decode (ASN.1)");
    }
    match s.routine() {
        routine::DEFECTIVE_TOKEN => KerberosError::Malformed("defective krb5 token"),
        routine::BAD_MECH => KerberosError::Malformed("not a krb5 token"),
        routine::CREDENTIALS_EXPIRED | routine::CONTEXT_EXPIRED => KerberosError::Expired,
        routine::BAD_SIG => KerberosError::Integrity,
        routine::NO_CRED => KerberosError::NoKey,
        _ => KerberosError::Gss(s.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gss_status_maps_onto_the_closed_error() {
        let krb = GssStatus::krb5_failure;
        assert_eq!(classify(krb(34)), KerberosError::Replay);
        assert_eq!(classify(krb(37)), KerberosError::Skew);
        assert_eq!(classify(krb(32)), KerberosError::Expired);
        assert_eq!(classify(krb(35)), KerberosError::WrongPrincipal);
        assert_eq!(classify(krb(144)), KerberosError::WrongPrincipal);
        assert_eq!(classify(krb(181)), KerberosError::NoKey);
        assert_eq!(classify(krb(44)), KerberosError::NoKey);
        assert_eq!(classify(krb(41)), KerberosError::Integrity);
        assert!(matches!(classify(krb(167)), KerberosError::ReplayCache(_)));
        let dup = GssStatus {
            major: (routine::FAILURE << 16) | supplementary::DUPLICATE_TOKEN,
            minor: 0,
        };
        assert_eq!(classify(dup), KerberosError::Replay);
        let defective = GssStatus {
            major: routine::DEFECTIVE_TOKEN << 16,
            minor: 0,
        };
        assert!(matches!(classify(defective), KerberosError::Malformed(_)));
        let asn1 = GssStatus {
            major: routine::FAILURE << 16,
            minor: ASN1_TABLE_BASE + 5,
        };
        assert!(matches!(classify(asn1), KerberosError::Malformed(_)));
        assert!(matches!(
            classify(GssStatus {
                major: routine::UNAVAILABLE << 16,
                minor: 0
            }),
            KerberosError::Gss(_)
        ));
    }

    #[test]
    fn error_kinds() {
        assert_eq!(
            KerberosError::Replay.error_kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            KerberosError::ReplayCache("x".into()).error_kind(),
            ErrorKind::Internal
        );
        assert_eq!(
            KerberosError::Pool(PoolError::QueueFull).error_kind(),
            ErrorKind::KdcUnavailable
        );
        assert_eq!(
            KerberosError::Pool(PoolError::Timeout).as_str(),
            "pool_timeout"
        );
        assert_eq!(
            KerberosError::Malformed("x").to_string(),
            "krb_malformed: x"
        );
    }
}
