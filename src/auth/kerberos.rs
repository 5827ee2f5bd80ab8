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
//! synchronous, so callers run it on [`crate::kcd::pool::BlockingPool`] (see
//! [`KerberosAcceptor::accept_in`]), never on a core. [`parse_token`] is pure and cheap: the
//! auth state machine may call it inline to decide whether a token is Kerberos at all.
//!
//! ## SPNEGO: unwrapped here, not by GSS-API's SPNEGO mechanism
//!
//! The SPNEGO framing is parsed with the same panic-free DER codec as NTLM-in-Negotiate
//! ([`super::ntlm::spnego`]), and only the inner krb5 token is handed to GSS-API, with a
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
//!   accepted once per request (RFC 4120 §3.2.3: replays are caught by the replay cache, shared by all cores): there is no cache of accepted tokens here.
//! - **Only `accept` mints a [`KerberosAccepted`]**: its fields are private and it has no
//!   public constructor, so holding one proves a ticket was verified with our key.
//! - **No token can panic this module**: framing is checked by a bounded reader before
//!   anything reaches GSS-API, and GSS-API failures are values.
//!
//! ## `delegated`: the evidence for S4U2Proxy
//!
//! With an acceptor credential of usage `Both` ([`AcceptorConfig::login`]), MIT keeps the
//! client's service ticket as an *evidence ticket* bound to the proxy's own TGT whenever the
//! ticket is forwardable — even if the client did not ask for delegation. That credential,
//! handed to `ClientCtx::new` for the backend's SPN, makes MIT do S4U2Proxy with the client's
//! own ticket (MS-SFU 3.1.5.2: no S4U2Self for Kerberos clients). If the client delegated
//! its TGT (`GSS_C_DELEG_FLAG`) the credential is that TGT instead. Holding a credential does
//! not mean delegation will succeed: for an AD "sensitive" user (bob in the lab) MIT still
//! keeps the evidence ticket, and the KDC refuses the S4U2Proxy (`KDC_ERR_BADOPTION`).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{OidSet, GSS_MECH_KRB5, GSS_MECH_SPNEGO, GSS_NT_KRB5_PRINCIPAL};

use super::ntlm::reader::Reader;
use super::ntlm::spnego::{self, oid, NegState, NegotiateToken};
use crate::error::ErrorKind;
use crate::kcd::cred::{self as kcred, routine, supplementary, CredStore, GssStatus};
use crate::kcd::pool::{BlockingPool, PoolError};

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

/// MIT krb5 error-table offsets (`minor - ERROR_TABLE_BASE_krb5`); below 128 they are the
/// KRB-ERROR numbers of RFC 4120 §7.5.9.
mod krb5_code {
    pub const KDC_ERR_C_PRINCIPAL_UNKNOWN: u32 = 6;
    pub const KDC_ERR_CLIENT_REVOKED: u32 = 18;
    pub const KDC_ERR_KEY_EXP: u32 = 23;
    pub const KDC_ERR_PREAUTH_FAILED: u32 = 24;
    pub const AP_ERR_BAD_INTEGRITY: u32 = 31;
    pub const AP_ERR_TKT_EXPIRED: u32 = 32;
    pub const AP_ERR_TKT_NYV: u32 = 33;
    pub const AP_ERR_REPEAT: u32 = 34;
    pub const AP_ERR_NOT_US: u32 = 35;
    pub const AP_ERR_BADMATCH: u32 = 36;
    pub const AP_ERR_SKEW: u32 = 37;
    pub const AP_ERR_BADVERSION: u32 = 39;
    pub const AP_ERR_MSG_TYPE: u32 = 40;
    pub const AP_ERR_MODIFIED: u32 = 41;
    pub const AP_ERR_BADKEYVER: u32 = 44;
    pub const AP_ERR_NOKEY: u32 = 45;
    pub const AP_WRONG_PRINC: u32 = 144;
    /// KRB5_RC_TYPE_EXISTS ..= KRB5_RC_IO_SPACE
    pub const REALM_UNKNOWN: u32 = 154;
    pub const KDC_UNREACH: u32 = 156;
    pub const RC_FIRST: u32 = 159;
    pub const RC_REPLAY: u32 = 163;
    pub const RC_LAST: u32 = 172;
    pub const KT_NOTFOUND: u32 = 181;
    pub const KT_END: u32 = 182;
    pub const RC_REQUIRED: u32 = 215;
    pub const REALM_CANT_RESOLVE: u32 = 220;
    pub const KT_KVNONOTFOUND: u32 = 230;
}

/// Maps a failed password login (`gss_acquire_cred_with_password`: an AS exchange).
fn classify_login(s: GssStatus) -> KerberosError {
    use krb5_code as k;
    match s.krb5_code() {
        Some(k::KDC_ERR_PREAUTH_FAILED | k::AP_ERR_BAD_INTEGRITY) => {
            KerberosError::Password("basic_wrong_password")
        }
        Some(k::KDC_ERR_C_PRINCIPAL_UNKNOWN) => KerberosError::Password("basic_unknown_user"),
        Some(k::KDC_ERR_CLIENT_REVOKED) => KerberosError::Password("basic_account_disabled"),
        Some(k::KDC_ERR_KEY_EXP) => KerberosError::Password("basic_password_expired"),
        Some(k::KDC_UNREACH | k::REALM_UNKNOWN | k::REALM_CANT_RESOLVE) => {
            KerberosError::KdcUnreachable(s.to_string())
        }
        // Anything else (skew, policy, an encryption type mismatch): refuse, and say why.
        _ => KerberosError::Password("basic_kdc_refused"),
    }
}

/// MIT's ASN.1 error table (`ERROR_TABLE_BASE_asn1`): the AP-REQ inside did not decode.
const ASN1_TABLE_BASE: u32 = 1_859_794_432;

/// Maps a failed `gss_accept_sec_context` onto the closed error.
fn classify(s: GssStatus) -> KerberosError {
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

/// How the Kerberos token arrived, so the answer goes back the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KrbWrapping<'a> {
    /// A bare GSS krb5 token (`Negotiate` without SPNEGO, as some Java and old clients send).
    Raw,
    /// Inside a SPNEGO NegTokenInit.
    Spnego {
        /// The client's first mechanism OID (contents): krb5 or MS-krb5; echoed back.
        mech: &'a [u8],
        /// The DER of the client's MechTypeList, which a mechListMIC signs.
        mech_types_der: &'a [u8],
        /// The client's mechListMIC, if it sent one.
        mech_list_mic: Option<&'a [u8]>,
    },
}

/// A Kerberos token found in a `Negotiate` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KrbToken<'a> {
    /// The GSS-framed krb5 InitialContextToken (the AP-REQ), as GSS-API takes it.
    pub ap_req: &'a [u8],
    pub wrapping: KrbWrapping<'a>,
}

/// Finds the Kerberos token in a (base64-decoded) `Negotiate` token, without blocking:
/// a raw GSS krb5 token, or a SPNEGO NegTokenInit whose first mechanism is Kerberos and that
/// carries the optimistic krb5 token. NTLM (raw or in SPNEGO) is [`KerberosError::NotKerberos`].
pub fn parse_token(token: &[u8]) -> Result<KrbToken<'_>, KerberosError> {
    if token.len() > spnego::MAX_TOKEN_LEN {
        return Err(KerberosError::Malformed("Negotiate token too large"));
    }
    if token.first() == Some(&0x60) {
        // A GSS InitialContextToken: bare krb5, or SPNEGO's NegTokenInit.
        let Some(mech) = gss_framed_mech(token) else {
            return Err(KerberosError::Malformed(
                "GSS token framing (length or OID)",
            ));
        };
        if is_krb5(mech) {
            check_ap_req(token)?;
            return Ok(KrbToken {
                ap_req: token,
                wrapping: KrbWrapping::Raw,
            });
        }
        if mech != oid::SPNEGO {
            return Err(KerberosError::Malformed(
                "GSS token of an unknown mechanism",
            ));
        }
    }
    let init = match spnego::parse_negotiate_token(token) {
        Ok(NegotiateToken::Init(init)) => init,
        Ok(NegotiateToken::RawNtlm(_) | NegotiateToken::Resp(_)) => {
            return Err(KerberosError::NotKerberos)
        }
        Err(e) => {
            return Err(KerberosError::Malformed(match e {
                super::ntlm::NtlmError::Malformed(why) => why,
                _ => "malformed SPNEGO token",
            }))
        }
    };
    let Some(first) = init.preferred().filter(|m| is_krb5(m)) else {
        return Err(KerberosError::NotKerberos);
    };
    let Some(ap_req) = init.mech_token else {
        return Err(KerberosError::NotKerberos);
    };
    match gss_framed_mech(ap_req) {
        Some(m) if is_krb5(m) => check_ap_req(ap_req)?,
        _ => {
            return Err(KerberosError::Malformed(
                "SPNEGO mechToken is not a krb5 token",
            ))
        }
    }
    Ok(KrbToken {
        ap_req,
        wrapping: KrbWrapping::Spnego {
            mech: first,
            mech_types_der: init.mech_types_der(),
            mech_list_mic: init.mech_list_mic,
        },
    })
}

fn is_krb5(mech: &[u8]) -> bool {
    mech == oid::KRB5 || mech == oid::MS_KRB5
}

/// The mechanism OID (contents) of a GSS InitialContextToken (`[APPLICATION 0] { OID, … }`,
/// RFC 2743 §3.1) whose outer length covers exactly the token; `None` otherwise.
fn gss_framed_mech(token: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(token);
    if r.u8()? != 0x60 {
        return None;
    }
    let len = der_len(&mut r)?;
    if len != r.remaining() {
        return None;
    }
    if r.u8()? != 0x06 {
        return None;
    }
    let oid_len = der_len(&mut r)?;
    r.take(oid_len)
}

/// The shape of a krb5 InitialContextToken after its OID (RFC 4121 §4.1): TOK_ID `01 00`
/// (AP-REQ), then one `[APPLICATION 14]` AP-REQ filling the rest. MIT reports an AP-REQ that
/// does not decode as a bare GSS_S_FAILURE without a reason, so obvious garbage is told
/// apart here, before it reaches GSS-API.
fn check_ap_req(token: &[u8]) -> Result<(), KerberosError> {
    let shape = || -> Option<()> {
        let mut r = Reader::new(token);
        r.u8()?; // 0x60, checked by gss_framed_mech
        der_len(&mut r)?;
        r.u8()?; // 0x06
        let oid_len = der_len(&mut r)?;
        r.skip(oid_len)?;
        if r.take(2)? != [0x01, 0x00] {
            return None;
        }
        if r.u8()? != 0x6e {
            return None;
        }
        (der_len(&mut r)? == r.remaining()).then_some(())
    };
    shape().ok_or(KerberosError::Malformed("krb5 token is not an AP-REQ"))
}

fn der_len(r: &mut Reader<'_>) -> Option<usize> {
    let first = r.u8()?;
    if first < 0x80 {
        return Some(usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for b in r.take(n)? {
        len = (len << 8) | usize::from(*b);
    }
    Some(len)
}

/// How to build an acceptor.
#[derive(Clone, Debug, Default)]
pub struct AcceptorConfig {
    /// The keytab holding the proxy's service keys (`HTTP/proxy.example.test@REALM`).
    pub keytab: PathBuf,
    /// Decrypt tickets only with this principal's keys (`HTTP/proxy.example.test@EXAMPLE.TEST`).
    /// `None`: whichever keytab entry the ticket names (MIT's default). MIT checks the key,
    /// not the ticket's server name, so on AD — where all SPNs of an account share its keys —
    /// a ticket for another SPN or the account name of the same account is accepted too.
    /// Must be `None` with [`login`](Self::login), which then names the keys.
    pub principal: Option<String>,
    /// Keep clients' tickets usable for S4U2Proxy: the acceptor credential becomes usage
    /// `Both`, logging in from the same keytab as this principal (`svc-proxy@EXAMPLE.TEST` on
    /// AD, whose KDC refuses an SPN as a login name; `HTTP/proxy.example.test@MIT.TEST` on
    /// MIT). MIT gets the TGT when the acceptor is built (~30 ms against the lab's AD) and
    /// renews it from the keytab once it nears expiry, inside whichever GSS call needs it
    /// (not verified which: assume an `accept` may talk to the KDC). `None`: accept
    /// only; [`KerberosAccepted::delegated`] is then only a TGT the client chose to delegate.
    pub login: Option<String>,
    /// The replay cache (`rcache` store entry, e.g. `file2:/var/lib/kcdproxy/rcache2`).
    /// `None`: MIT's default, `$KRB5RCACHENAME`, or `$KRB5RCACHEDIR/krb5_<euid>.rcache2`
    /// (`/var/tmp` without the variable).
    pub rcache: Option<String>,
}

/// Accepts Kerberos AP-REQs for the proxy. `Send + Sync`: one per process, shared by all pool
/// threads (`Arc<KerberosAcceptor>`); each `accept` makes its own short-lived GSS context.
pub struct KerberosAcceptor {
    cred: Cred,
    with_evidence: bool,
}

impl fmt::Debug for KerberosAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KerberosAcceptor")
            .field("with_evidence", &self.with_evidence)
            .finish_non_exhaustive()
    }
}

/// Distinguishes the in-memory ccaches of acceptors in one process.
static ACCEPTOR_SEQ: AtomicU64 = AtomicU64::new(0);

impl KerberosAcceptor {
    /// Builds the acceptor credential (BLOCKING: reads the keytab; with `login`, MIT may get
    /// a TGT now or on first use). Refuses a turned-off replay cache.
    pub fn new(config: &AcceptorConfig) -> Result<Self, KerberosError> {
        let rcache_off = |v: &str| v.trim().eq_ignore_ascii_case("none") || v.starts_with("none:");
        if let Some(r) = &config.rcache {
            if rcache_off(r) {
                return Err(KerberosError::ReplayCache(format!(
                    "rcache {r:?} turns replay detection off"
                )));
            }
        } else {
            for var in ["KRB5RCACHENAME", "KRB5RCACHETYPE"] {
                if std::env::var(var).is_ok_and(|v| rcache_off(&v)) {
                    return Err(KerberosError::ReplayCache(format!(
                        "{var} turns replay detection off"
                    )));
                }
            }
        }
        if config.login.is_some() && config.principal.is_some() {
            return Err(KerberosError::Credential(
                "set the acceptor principal or the login principal, not both".into(),
            ));
        }
        let cred_err = |e: GssStatus| {
            KerberosError::Credential(format!("keytab {}: {e}", config.keytab.display()))
        };
        let mut store = CredStore::new().keytab(&config.keytab).map_err(cred_err)?;
        if let Some(r) = &config.rcache {
            store = store.rcache(r).map_err(cred_err)?;
        }
        let (usage, name) = match &config.login {
            None => (CredUsage::Accept, config.principal.as_deref()),
            Some(login) => {
                let ccache = format!(
                    "MEMORY:kcdproxy-acceptor-{}-{}",
                    std::process::id(),
                    ACCEPTOR_SEQ.fetch_add(1, Ordering::Relaxed)
                );
                store = store
                    .client_keytab(&config.keytab)
                    .and_then(|s| s.ccache(&ccache))
                    .map_err(cred_err)?;
                (CredUsage::Both, Some(login.as_str()))
            }
        };
        let cred = kcred::acquire_from(name, usage, &store).map_err(cred_err)?;
        Ok(KerberosAcceptor {
            cred,
            with_evidence: config.login.is_some(),
        })
    }

    /// Accepts one client token (raw krb5 or SPNEGO, see [`parse_token`]) in a single round.
    /// BLOCKING (keytab, replay cache, maybe the KDC): run it in the pool.
    pub fn accept(&self, token: &[u8]) -> Result<KerberosAccepted, KerberosError> {
        let parsed = parse_token(token)?;
        let mut ctx = ServerCtx::new(Some(self.cred.clone()));
        let out = ctx
            .step(parsed.ap_req, None)
            .map_err(|e| classify(e.into()))?;
        if !ctx.is_complete() {
            return Err(KerberosError::ContinueNeeded);
        }
        let gss = |e: libgssapi::error::Error| KerberosError::Gss(GssStatus::from(e).to_string());
        if ctx.mechanism().map_err(gss)? != GSS_MECH_KRB5 {
            return Err(KerberosError::Malformed("context is not krb5"));
        }
        let flags = ctx.flags().map_err(gss)?;
        if flags.contains(CtxFlags::GSS_C_ANON_FLAG) {
            return Err(KerberosError::Anonymous);
        }
        let name = ctx
            .source_name()
            .map_err(gss)?
            .display_name()
            .map_err(gss)?;
        let principal = std::str::from_utf8(&name)
            .map_err(|_| KerberosError::Malformed("client principal is not UTF-8"))?
            .to_owned();
        if principal.is_empty() {
            return Err(KerberosError::Anonymous);
        }
        let ap_rep = out.map(|b| b.to_vec());
        let response_token = match parsed.wrapping {
            KrbWrapping::Raw => ap_rep,
            KrbWrapping::Spnego {
                mech,
                mech_types_der,
                mech_list_mic,
            } => {
                // RFC 4178 §5: a MIC from the client is checked, and then answered with ours.
                let our_mic = match mech_list_mic {
                    Some(mic) => {
                        ctx.verify_mic(mech_types_der, mic)
                            .map_err(|_| KerberosError::MicMismatch)?;
                        Some(ctx.get_mic(mech_types_der).map_err(gss)?.to_vec())
                    }
                    None => None,
                };
                Some(spnego::build_neg_token_resp(
                    NegState::AcceptCompleted,
                    Some(mech),
                    ap_rep.as_deref(),
                    our_mic.as_deref(),
                ))
            }
        };
        let lifetime = ctx.lifetime().ok();
        // MIT sets GSS_C_DELEG_FLAG for an evidence ticket too; what tells them apart is the
        // impersonator (the proxy) that an S4U2Proxy-capable credential records.
        let delegated = ctx.take_delegated_cred().map(|cred| DelegatedCred {
            forwarded_tgt: matches!(cred.proxy(), Ok(None)),
            cred,
        });
        Ok(KerberosAccepted {
            principal,
            response_token,
            delegated,
            lifetime,
        })
    }

    /// [`accept`](Self::accept) on `pool` with `timeout`, from a core thread: never blocks it.
    pub async fn accept_in(
        self: &Arc<Self>,
        pool: &BlockingPool,
        timeout: Duration,
        token: Vec<u8>,
    ) -> Result<KerberosAccepted, KerberosError> {
        let me = Arc::clone(self);
        match pool.try_run(timeout, move || me.accept(&token)).await {
            Ok(result) => result,
            Err(e) => Err(KerberosError::Pool(e)),
        }
    }
}

impl KerberosAcceptor {
    /// Checks a Basic password with the KDC: logs `principal` in with `password` (an AS
    /// exchange), then gets a ticket for the proxy's own `service` and accepts it with our
    /// keytab. The second step is what makes the answer trustworthy: a forged KDC can hand
    /// out a TGT for any password, but not a ticket sealed with our service key (the check
    /// `krb5_verify_init_creds` makes). Returns the principal the ticket names. BLOCKING.
    pub fn check_password(
        &self,
        principal: &str,
        password: &str,
        service: &str,
    ) -> Result<String, KerberosError> {
        let gss = |e: libgssapi::error::Error| GssStatus::from(e);
        let name = Name::new(principal.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL))
            .map_err(|_| KerberosError::Password("basic_bad_user_name"))?;
        let mut mechs = OidSet::new();
        mechs
            .add(GSS_MECH_KRB5)
            .map_err(|e| KerberosError::Gss(gss(e).to_string()))?;
        let cred = Cred::acquire_with_password(
            Some(&name),
            password,
            None,
            CredUsage::Initiate,
            Some(&mechs),
        )
        .map_err(|e| classify_login(gss(e)))?;
        let target = Name::new(service.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL))
            .map_err(|e| KerberosError::Credential(format!("{service}: {}", gss(e))))?;
        let mut ctx = ClientCtx::new(
            Some(cred),
            target,
            CtxFlags::GSS_C_MUTUAL_FLAG,
            Some(GSS_MECH_KRB5),
        );
        let token = ctx
            .step(None, None)
            .map_err(|e| {
                let s = gss(e);
                match s.krb5_code() {
                    Some(krb5_code::KDC_UNREACH) => KerberosError::KdcUnreachable(s.to_string()),
                    _ => KerberosError::Credential(format!("ticket for {service}: {s}")),
                }
            })?
            .ok_or(KerberosError::Malformed("the initiator produced no token"))?;
        let accepted = self.accept(&token)?;
        Ok(accepted.principal)
    }
}

/// A verified Kerberos login. Only [`KerberosAcceptor::accept`] makes one.
pub struct KerberosAccepted {
    principal: String,
    response_token: Option<Vec<u8>>,
    delegated: Option<DelegatedCred>,
    lifetime: Option<Duration>,
}

impl KerberosAccepted {
    /// The client's principal as the ticket names it, e.g. `alice@EXAMPLE.TEST` (an
    /// enterprise login shows as `alice\@alt.test@EXAMPLE.TEST`).
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The token for the final `WWW-Authenticate: Negotiate <b64>`: a NegTokenResp
    /// (accept-completed + AP-REP when the client asked for mutual authentication) for
    /// SPNEGO, the bare AP-REP for a raw token, `None` for a raw token without mutual auth.
    pub fn response_token(&self) -> Option<&[u8]> {
        self.response_token.as_deref()
    }

    pub fn take_response_token(&mut self) -> Option<Vec<u8>> {
        self.response_token.take()
    }

    /// The client's credential for S4U2Proxy (see the module doc), if any.
    pub fn delegated(&self) -> Option<&DelegatedCred> {
        self.delegated.as_ref()
    }

    pub fn take_delegated(&mut self) -> Option<DelegatedCred> {
        self.delegated.take()
    }

    /// How long the client's ticket is still valid, as GSS-API reports the context lifetime.
    pub fn lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

impl fmt::Debug for KerberosAccepted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KerberosAccepted")
            .field("principal", &self.principal)
            .field(
                "response_token",
                &self.response_token.as_ref().map(Vec::len),
            )
            .field("delegated", &self.delegated)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The client's credential kept by the acceptor: an S4U2Proxy-capable evidence ticket (or the
/// TGT the client delegated). Opaque: it goes to `ClientCtx::new` for the backend's SPN and
/// nowhere else. `Send + Sync`, cheap to clone (a reference-counted GSS handle).
#[derive(Clone)]
pub struct DelegatedCred {
    cred: Cred,
    forwarded_tgt: bool,
}

impl DelegatedCred {
    /// The GSS credential, for `ClientCtx::new(Some(cred), backend_spn, …)`.
    pub fn gss_cred(&self) -> &Cred {
        &self.cred
    }

    /// `true`: the client delegated its TGT (it asked with `GSS_C_DELEG_FLAG` and its KDC
    /// allowed it). `false`: the evidence ticket only, bound to the proxy's own TGT, usable for
    /// S4U2Proxy to the SPNs the proxy may delegate to.
    pub fn is_forwarded_tgt(&self) -> bool {
        self.forwarded_tgt
    }
}

impl fmt::Debug for DelegatedCred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelegatedCred")
            .field("forwarded_tgt", &self.forwarded_tgt)
            .finish_non_exhaustive()
    }
}

/// The client side, for tests, benches and load tools (not used to serve): a user's
/// credential from a password, and `Negotiate` tokens for a service. BLOCKING (AS and TGS
/// exchanges with the KDC on first use of each service).
pub struct KerberosInitiator {
    cred: Cred,
}

/// Which framing a test client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiatorMech {
    /// GSS-API's own SPNEGO (MIT), as curl and browsers send.
    Spnego,
    /// A bare krb5 token.
    Krb5,
}

impl KerberosInitiator {
    /// Logs `principal` in with `password` (an AS exchange; the tickets stay in memory).
    pub fn with_password(principal: &str, password: &str) -> Result<Self, KerberosError> {
        let gss = |e: libgssapi::error::Error| {
            KerberosError::Credential(format!("{principal}: {}", GssStatus::from(e)))
        };
        let name = Name::new(principal.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL)).map_err(gss)?;
        let mut mechs = OidSet::new();
        mechs.add(GSS_MECH_KRB5).map_err(gss)?;
        // MIT's SPNEGO initiator negotiates only among the credential's mechanisms, so it
        // must be listed too, or it "cannot find mechanisms to negotiate".
        mechs.add(GSS_MECH_SPNEGO).map_err(gss)?;
        let cred = Cred::acquire_with_password(
            Some(&name),
            password,
            None,
            CredUsage::Initiate,
            Some(&mechs),
        )
        .map_err(gss)?;
        Ok(KerberosInitiator { cred })
    }

    /// Wraps an existing initiator credential (e.g. a [`DelegatedCred`] for S4U2Proxy).
    pub fn from_cred(cred: Cred) -> Self {
        KerberosInitiator { cred }
    }

    /// Starts a context to `service` (`HTTP/proxy.example.test@EXAMPLE.TEST`) asking for
    /// mutual authentication (and delegation of the TGT when `delegate`). Returns the token
    /// for `Authorization: Negotiate` and the context that checks the server's answer.
    pub fn token(
        &self,
        service: &str,
        mech: InitiatorMech,
        delegate: bool,
    ) -> Result<(Vec<u8>, InitiatorCtx), KerberosError> {
        let gss = |e: libgssapi::error::Error| KerberosError::Gss(GssStatus::from(e).to_string());
        let target = Name::new(service.as_bytes(), Some(GSS_NT_KRB5_PRINCIPAL)).map_err(gss)?;
        let mut flags = CtxFlags::GSS_C_MUTUAL_FLAG
            | CtxFlags::GSS_C_REPLAY_FLAG
            | CtxFlags::GSS_C_SEQUENCE_FLAG
            | CtxFlags::GSS_C_INTEG_FLAG;
        if delegate {
            flags |= CtxFlags::GSS_C_DELEG_FLAG;
        }
        let oid = match mech {
            InitiatorMech::Spnego => GSS_MECH_SPNEGO,
            InitiatorMech::Krb5 => GSS_MECH_KRB5,
        };
        let mut ctx = ClientCtx::new(Some(self.cred.clone()), target, flags, Some(oid));
        let token = ctx
            .step(None, None)
            .map_err(gss)?
            .ok_or(KerberosError::Malformed("the initiator produced no token"))?
            .to_vec();
        Ok((token, InitiatorCtx { ctx }))
    }
}

/// A client context waiting for the server's final token.
pub struct InitiatorCtx {
    ctx: ClientCtx,
}

impl InitiatorCtx {
    /// Checks the server's `WWW-Authenticate: Negotiate` token (mutual authentication).
    pub fn finish(&mut self, server_token: &[u8]) -> Result<(), KerberosError> {
        match self.ctx.step(Some(server_token), None) {
            Ok(None) if self.ctx.is_complete() => Ok(()),
            Ok(_) => Err(KerberosError::ContinueNeeded),
            Err(e) => Err(classify(e.into())),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.ctx.is_complete()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
            n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }

    /// A raw krb5 token of the right shape: `60 L 06 09 <krb5> 01 00 6e L <ap_req body>`.
    fn raw_krb5(ap_req_body: &[u8]) -> Vec<u8> {
        let mut inner = der(0x06, oid::KRB5);
        inner.extend_from_slice(&[0x01, 0x00]);
        inner.extend_from_slice(&der(0x6e, ap_req_body));
        der(0x60, &inner)
    }

    #[test]
    fn raw_krb5_is_raw() {
        let tok = raw_krb5(&[]);
        let p = parse_token(&tok).unwrap();
        assert_eq!(p.wrapping, KrbWrapping::Raw);
        assert_eq!(p.ap_req, &tok[..]);
        let long = raw_krb5(&[0u8; 300]);
        assert_eq!(parse_token(&long).unwrap().ap_req.len(), long.len());
    }

    #[test]
    fn spnego_with_krb5_first_is_unwrapped() {
        let ap_req = raw_krb5(&[0x30, 0x00]);
        for first in [oid::MS_KRB5, oid::KRB5] {
            let tok = spnego::build_neg_token_init(&[first, oid::KRB5, oid::NTLM], Some(&ap_req));
            let p = parse_token(&tok).unwrap();
            assert_eq!(p.ap_req, &ap_req[..]);
            let KrbWrapping::Spnego {
                mech,
                mech_types_der,
                mech_list_mic,
            } = p.wrapping
            else {
                panic!("not SPNEGO")
            };
            assert_eq!(mech, first);
            assert_eq!(
                mech_types_der,
                spnego::mech_type_list(&[first, oid::KRB5, oid::NTLM])
            );
            assert_eq!(mech_list_mic, None);
        }
    }

    #[test]
    fn not_kerberos_and_malformed_are_told_apart() {
        let ap_req = raw_krb5(&[]);
        let ntlm = b"NTLMSSP\0\x01\x00\x00\x00\x07\x82\x08\xa2";
        let cases: Vec<(&str, Vec<u8>, KerberosError)> = vec![
            ("raw NTLM", ntlm.to_vec(), KerberosError::NotKerberos),
            (
                "SPNEGO NTLM first",
                spnego::build_neg_token_init(&[oid::NTLM, oid::KRB5], Some(ntlm)),
                KerberosError::NotKerberos,
            ),
            (
                "krb5 first without a token",
                spnego::build_neg_token_init(&[oid::KRB5, oid::NTLM], None),
                KerberosError::NotKerberos,
            ),
            (
                "NegTokenResp",
                spnego::build_neg_token_resp(NegState::AcceptIncomplete, None, Some(&ap_req), None),
                KerberosError::NotKerberos,
            ),
            (
                "krb5 first with an NTLM token",
                spnego::build_neg_token_init(&[oid::KRB5], Some(ntlm)),
                KerberosError::Malformed("SPNEGO mechToken is not a krb5 token"),
            ),
        ];
        for (name, tok, want) in cases {
            assert_eq!(parse_token(&tok), Err(want), "{name}");
        }
        for garbage in [
            &b""[..],
            b"\x60",
            b"\x60\x05\x06\x09",
            b"\x60\x84\xff\xff\xff\xff\x06",
            b"\x60\x0b\x06\x09\x2a\x86\x48\x86\xf7\x12\x01\x02\x03", // krb5-like, wrong OID
            b"hello world",
            b"\xa1\x00",
        ] {
            assert!(
                matches!(parse_token(garbage), Err(KerberosError::Malformed(_))),
                "{garbage:?}"
            );
        }
        // Trailing byte after a raw token: the outer length no longer covers it exactly.
        let mut trailing = raw_krb5(&[]);
        trailing.push(0);
        assert!(parse_token(&trailing).is_err());
    }

    #[test]
    fn no_input_panics_the_parser() {
        // Every prefix and single-byte corruption of real-shaped tokens.
        let ap_req = raw_krb5(&[0x30; 200]);
        let spnego_tok =
            spnego::build_neg_token_init(&[oid::MS_KRB5, oid::KRB5, oid::NTLM], Some(&ap_req));
        for tok in [ap_req, spnego_tok] {
            for n in 0..=tok.len() {
                let _ = parse_token(&tok[..n]);
            }
            for i in 0..tok.len() {
                for b in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                    let mut t = tok.clone();
                    t[i] = b;
                    let _ = parse_token(&t);
                }
            }
        }
    }

    #[test]
    fn gss_status_maps_onto_the_closed_error() {
        let krb = |n: i32| GssStatus {
            major: routine::FAILURE << 16,
            minor: (-1_765_328_384i32 + n) as u32,
        };
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

    #[test]
    fn acceptor_refuses_a_disabled_replay_cache() {
        let cfg = AcceptorConfig {
            keytab: PathBuf::from("/nonexistent.keytab"),
            rcache: Some("none:".into()),
            ..AcceptorConfig::default()
        };
        assert!(matches!(
            KerberosAcceptor::new(&cfg),
            Err(KerberosError::ReplayCache(_))
        ));
    }

    #[test]
    fn acceptor_and_results_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<KerberosAcceptor>();
        send_sync::<KerberosAccepted>();
        send_sync::<DelegatedCred>();
        send_sync::<KerberosError>();
    }
}
