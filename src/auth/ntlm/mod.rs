//! NTLM (NTLMSSP, MS-NLMP) on the server side: the proxy is the *acceptor*.
//!
//! ```text
//!  client                           proxy (this module)                   backend
//!  NEGOTIATE ─────────────────────► NtlmAcceptor::challenge
//!                                   → ChallengeState (held by the connection)
//!  ◄─────────────────────────────── CHALLENGE  (ChallengeState::message)
//!  AUTHENTICATE ──────────────────► NtlmAcceptor::accept(state, …)   consumes the state
//!                                   → PendingAuth ── request() ──────► NtlmBackend::verify
//!                                                                     (local hashes | winbind)
//!                                   PendingAuth::finish(verdict) ◄─── BackendVerified
//!                                   → NtlmVerified (user, domain, session key)
//! ```
//!
//! ## Invariants
//!
//! - **Only a proof of the password authenticates.** [`NtlmVerified`] has no public
//!   constructor: the only way to one is `PendingAuth::finish` with a [`BackendVerified`],
//!   and backends produce those only after checking NTProofStr (NTLMv2) or the NTLMv1 response
//!   against the user's key. Flags, MIC bits, key-exchange fields and response lengths are all
//!   checked *in addition* — none of them can skip the proof.
//! - **Each server challenge is used once.** [`ChallengeState`] is neither `Clone` nor `Copy`,
//!   and `accept` takes it by value: a replayed AUTHENTICATE has no state left to be checked
//!   against. Challenges come from the OS CSPRNG and expire after
//!   [`VerifyPolicy::challenge_lifetime`].
//! - **Every backend gets the same rules.** Anonymous logins, NTLMv1 refusal, timestamp skew and
//!   the MIC live in [`verify`], around the backend call; a backend only answers "is this the
//!   response of this user's key, and what is the session base key".
//! - **NTLMv2 only by default.** 24-byte (NTLMv1/LM) responses are refused unless
//!   [`VerifyPolicy::allow_ntlmv1`]. LM responses are never checked at all.
//! - **The MIC binds all three messages.** When the client's blob says a MIC is present
//!   (MsvAvFlags bit 0x2), the MIC must verify under the ExportedSessionKey; a non-zero MIC
//!   field without that bit is refused as tampering. The blob is covered by NTProofStr, so a
//!   man in the middle can neither clear the bit nor add it.
//! - **No input can panic the codec** ([`crate::gss::reader`]); secrets are compared in constant time and
//!   wiped on drop ([`crypto`]).
//!
//! ## Modules
//!
//! - [`message`]: NEGOTIATE/AUTHENTICATE parsing, CHALLENGE building, AV pairs, the NTLMv2 blob.
//! - [`crypto`]: NT hash, NTOWFv2, NTProofStr, key exchange, MIC, signing; NTLMv1 (opt-in).
//! - [`verify`]: the acceptor, challenge state, backend trait, policy and the shared checks.
//! - [`hashfile`]: the local NT-hash store and the backend that checks against it.
//! - [`negotiate`]: NTLM inside `Negotiate` (raw or SPNEGO-wrapped) on the SPNEGO codec of
//!   [`crate::gss::spnego`], and the NTLM mechListMIC.
//! - [`winbind`]: the back end that asks the domain controller (`ntlm_auth` → winbindd).
//! - [`client`]: an NTLMv2 initiator for tests, benches and load tools (not used to serve).

pub mod client;
pub mod crypto;
pub mod hashfile;
pub mod message;
pub mod negotiate;
pub mod verify;
pub mod winbind;

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use hashfile::{LocalBackend, NtHashStore};
pub use message::NegotiateFlags;
pub use verify::{
    BackendVerified, ChallengeState, NtlmAcceptor, NtlmBackend, NtlmVerified, PendingAuth,
    VerifyPolicy, VerifyRequest,
};

/// Why an NTLM exchange failed. Closed: the auth module maps each to an HTTP answer and a log
/// reason ([`NtlmError::as_str`]); runtime detail never goes into the variant (`Malformed`
/// carries a static description of the rule broken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NtlmError {
    /// The message breaks the wire format or the protocol rules (the text says which).
    Malformed(&'static str),
    /// Anonymous authentication (empty user or empty NT response, or the ANONYMOUS flag).
    Anonymous,
    /// An NTLMv1 (24-byte) response while the policy allows only NTLMv2.
    NtlmV1Refused,
    /// No such user in the back end.
    UnknownUser,
    /// The response does not match the user's key.
    WrongPassword,
    /// The account exists but may not log on.
    AccountDisabled,
    /// The policy requires a MIC, or the blob announces one the message has no room for.
    MicMissing,
    /// The MIC does not verify: the messages were altered (or the key exchange is wrong).
    MicMismatch,
    /// A non-zero MIC field although the blob does not announce a MIC: tampering.
    MicUnexpected,
    /// The NTLMv2 blob's timestamp is further from our clock than the allowed skew.
    Expired,
    /// The AUTHENTICATE came after the server challenge's lifetime.
    ChallengeExpired,
    /// The back end (domain controller, winbind) could not answer.
    BackendUnavailable(&'static str),
    /// The OS random generator failed; no challenge can be issued.
    RandomUnavailable,
}

impl NtlmError {
    /// A short stable token for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            NtlmError::Malformed(_) => "ntlm_malformed",
            NtlmError::Anonymous => "ntlm_anonymous",
            NtlmError::NtlmV1Refused => "ntlm_v1_refused",
            NtlmError::UnknownUser => "ntlm_unknown_user",
            NtlmError::WrongPassword => "ntlm_wrong_password",
            NtlmError::AccountDisabled => "ntlm_account_disabled",
            NtlmError::MicMissing => "ntlm_mic_missing",
            NtlmError::MicMismatch => "ntlm_mic_mismatch",
            NtlmError::MicUnexpected => "ntlm_mic_unexpected",
            NtlmError::Expired => "ntlm_expired",
            NtlmError::ChallengeExpired => "ntlm_challenge_expired",
            NtlmError::BackendUnavailable(_) => "ntlm_backend_unavailable",
            NtlmError::RandomUnavailable => "ntlm_random_unavailable",
        }
    }

    /// The proxy-wide error kind: a client that failed gets 401 (with fresh challenges); a back
    /// end that could not answer is a 503; a broken RNG is ours.
    pub fn error_kind(self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            NtlmError::BackendUnavailable(_) => ErrorKind::KdcUnavailable,
            NtlmError::RandomUnavailable => ErrorKind::Internal,
            _ => ErrorKind::Unauthenticated,
        }
    }
}

impl fmt::Display for NtlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NtlmError::Malformed(why) | NtlmError::BackendUnavailable(why) => {
                write!(f, "{}: {why}", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}

impl std::error::Error for NtlmError {}

impl From<NtlmError> for crate::error::Error {
    fn from(e: NtlmError) -> Self {
        crate::error::Error::with_cause(e.error_kind(), "ntlm", e)
    }
}

/// A Windows FILETIME: 100-ns intervals since 1601-01-01 UTC, the clock of MS-NLMP timestamps.
/// Verification takes "now" as an argument, so tests and replays of recorded traffic can pin it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileTime(pub u64);

impl FileTime {
    /// 1970-01-01 as a FILETIME.
    const UNIX_EPOCH: u64 = 116_444_736_000_000_000;

    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// Converts, saturating at the ends of the FILETIME range.
    pub fn from_system_time(t: SystemTime) -> Self {
        let ticks = |d: Duration| -> u64 {
            let t = d.as_nanos() / 100;
            u64::try_from(t).unwrap_or(u64::MAX)
        };
        match t.duration_since(UNIX_EPOCH) {
            Ok(after) => FileTime(Self::UNIX_EPOCH.saturating_add(ticks(after))),
            Err(before) => FileTime(Self::UNIX_EPOCH.saturating_sub(ticks(before.duration()))),
        }
    }

    /// |self − other| as a duration.
    pub fn distance(self, other: FileTime) -> Duration {
        let ticks = self.0.abs_diff(other.0);
        Duration::from_secs(ticks / 10_000_000) + Duration::from_nanos((ticks % 10_000_000) * 100)
    }

    pub fn saturating_add(self, d: Duration) -> FileTime {
        let ticks = u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX);
        FileTime(self.0.saturating_add(ticks))
    }
}

/// Who the proxy says it is in CHALLENGE messages (TargetName and the AV pairs of TargetInfo).
///
/// With a winbind back end these must be the joined member's names: the domain controller
/// checks the NTLMv2 blob's computer name against the account that forwards the check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NtlmConfig {
    /// NetBIOS domain, e.g. `EXAMPLE` (TargetName, MsvAvNbDomainName).
    pub nb_domain: String,
    /// NetBIOS computer name, e.g. `KCDPROXY` (MsvAvNbComputerName).
    pub nb_computer: String,
    /// DNS domain, e.g. `example.test` (MsvAvDnsDomainName).
    pub dns_domain: String,
    /// DNS computer name, e.g. `kcdproxy.example.test` (MsvAvDnsComputerName).
    pub dns_computer: String,
}

#[cfg(test)]
mod tests;
