//! NTLM verification against the domain: [`WinbindBackend`] asks the domain controller, through
//! winbindd, whether an NTLM response proves the user's password, by driving a persistent
//! `ntlm_auth --helper-protocol=ntlm-server-1` child process (Samba's helper, no linking).
//!
//! ```text
//!  pool thread ── WinbindBackend::verify ──► ntlm_auth (child) ──► winbindd ──► DC (netlogon)
//!                 one request block           stdin/stdout          privileged pipe
//!             ◄── BackendVerified ◄────────── "Authenticated: Yes", "User-Session-Key: …"
//! ```
//!
//! One request block per check; the proxy issued the challenge, so the check is stateless:
//!
//! ```text
//! Username:: <base64 of the user, as the client sent it>
//! NT-Domain:: <base64 of the domain, as the client sent it>
//! LANMAN-Challenge: <our 8-byte server challenge, hex>
//! NT-Response: <the client's NtChallengeResponse, hex>
//! Request-User-Session-Key: Yes
//! .
//! ```
//!
//! ## Invariants
//!
//! - **Nothing a client sends can add a line to the protocol.** User and domain travel in the
//!   helper's base64 form (`Key:: …`), and are refused first (`Malformed`) when they hold control
//!   characters (NUL would cut a C string short: the DC would check a different name than the
//!   one we report), a backslash in the user name, or more bytes than any directory allows.
//!   Challenge and response travel as hex. The response is bounded, so a request block always
//!   fits in the pipe and writing it cannot block.
//! - **A reply belongs to its request.** One helper serves one check at a time (a `Mutex`); a
//!   helper that does not answer within [`WinbindConfig::timeout`], answers garbage, or dies is
//!   killed and replaced, so a late reply can never be read as the next check's. Samba 4.17
//!   ends a refusal with *two* `.` lines: a `.` before any other line of a reply is that
//!   leftover, and is skipped.
//! - **A "yes" carries the key.** `Authenticated: Yes` without a 16-byte, non-zero user session
//!   key is treated as a back end failure: without the key the MIC cannot be checked (winbindd
//!   withholds keys from helpers that cannot open its privileged pipe).
//! - **The DC is asked, the proxy decides the rest.** The DC does not stop replays and never
//!   sees our NEGOTIATE/CHALLENGE: challenge freshness, single use and the MIC stay with
//!   [`super::PendingAuth::finish`], as for every back end.
//!
//! ## Identity
//!
//! `ntlm_auth` does not say how the directory spells the account, so the name reported is the
//! client's, made canonical: lower-case user (AD account names and UPNs are unique regardless
//! of case, so one account gets one principal, one ticket-cache entry, one identity header
//! value); the proxy's NetBIOS domain for an empty domain, the NetBIOS domain itself or the
//! proxy's DNS domain (as [`super::LocalBackend`] does); other NetBIOS domains upper-case, DNS
//! domains lower-case; a UPN (`alice@example.test`, empty domain) stays a UPN, since its name
//! part need not be the account name. [`crate::auth::IdentityMap`] then maps all of these to
//! the same principal as the local hash store does for the same login.
//!
//! ## Caveats
//!
//! - `ntlm_auth` does not report a guest logon. Keep the domain's Guest account disabled (AD's
//!   default), or add `--require-membership-of='DOMAIN\Domain Users'` to the command: Guest is
//!   not a member, and every other non-member is refused as a failed logon.
//! - Refusal reasons come as Samba's descriptive texts (and, on some versions, `NT_STATUS_*`
//!   names); both are mapped. An unknown reason is a refusal ([`NtlmError::WrongPassword`]) and
//!   is logged with its text.
//! - A wrapper command should `exec` the helper: on a timeout the child is killed, and a
//!   grandchild would only notice when its stdin closes.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use md5::{Digest as _, Md5};

use super::verify::{BackendVerified, NtlmBackend, VerifyRequest};
use super::{NegotiateFlags, NtlmConfig, NtlmError};

/// The protocol flag appended to the command unless it names one already.
const HELPER_PROTOCOL: &str = "--helper-protocol=ntlm-server-1";

/// Longest user name sent: an AD UPN is at most 1024 characters, but no real one is near this;
/// the bound keeps every request block small.
const MAX_USER_BYTES: usize = 512;
/// Longest domain sent (a DNS domain name is at most 253 characters).
const MAX_DOMAIN_BYTES: usize = 256;
/// Longest NT response sent. Real NTLMv2 responses are 200–600 bytes (the blob holds the
/// server's AV pairs, a channel binding and an SPN); the bound keeps a request block (hex:
/// twice this) far below a pipe's 64 KiB, so writing it never blocks.
const MAX_NT_RESPONSE: usize = 4096;
/// Longest reply line read from the helper (its lines are short texts and hex keys).
const MAX_LINE: usize = 4096;
/// Most lines in one reply block.
const MAX_REPLY_LINES: usize = 16;
/// After a failed start, checks fail at once for this long instead of forking again.
const RESPAWN_BACKOFF: Duration = Duration::from_secs(1);

/// How to reach winbind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinbindConfig {
    /// The helper's argv: `ntlm_auth` and its options (`--configfile=…`,
    /// `--require-membership-of=…`), possibly behind a wrapper that `exec`s it (the lab's
    /// `with-winbind ntlm_auth …`). `--helper-protocol=ntlm-server-1` is appended unless an
    /// argument already starts with `--helper-protocol`.
    pub command: Vec<OsString>,
    /// Longest wait for one verdict. A helper that does not answer in time is killed (the
    /// check fails as [`NtlmError::BackendUnavailable`]) and the next check starts a new one.
    pub timeout: Duration,
}

impl WinbindConfig {
    /// `command` with the default timeout (10 s: winbindd answers in 1–3 ms, and waits up to
    /// its own timeouts for an unreachable DC).
    pub fn new<I, S>(command: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        WinbindConfig {
            command: command.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(10),
        }
    }

    fn argv(&self) -> Vec<OsString> {
        let mut argv = self.command.clone();
        let named = argv
            .iter()
            .skip(1)
            .any(|a| a.to_string_lossy().starts_with("--helper-protocol"));
        if !named {
            argv.push(HELPER_PROTOCOL.into());
        }
        argv
    }
}

impl Default for WinbindConfig {
    /// `ntlm_auth` from `PATH`.
    fn default() -> Self {
        WinbindConfig::new(["ntlm_auth"])
    }
}

/// Verifies NTLM responses with the domain controller through one `ntlm_auth` helper process.
///
/// Checks block (1–3 ms each against a healthy DC, up to [`WinbindConfig::timeout`]) and are
/// serialised per instance: run them on a pool thread, and give a pool of N threads N
/// instances for N checks at once (winbindd itself serialises at roughly 440 checks/s).
/// The helper starts on first use and is restarted whenever it dies or misbehaves.
pub struct WinbindBackend {
    config: WinbindConfig,
    /// The proxy's NetBIOS domain: reported for logins without a domain.
    nb_domain: String,
    /// The proxy's DNS domain: an alias of `nb_domain`.
    dns_domain: String,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    /// INVARIANT: a helper here has answered every request written to it (or has had none),
    /// so its next reply is the next request's.
    helper: Option<Helper>,
    /// When starting a helper last failed (for [`RESPAWN_BACKOFF`]).
    spawn_failed: Option<Instant>,
    /// Helpers started so far (for logs and tests).
    spawned: u64,
}

impl std::fmt::Debug for WinbindBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WinbindBackend")
            .field("command", &self.config.command)
            .field("timeout", &self.config.timeout)
            .field("nb_domain", &self.nb_domain)
            .finish_non_exhaustive()
    }
}

impl WinbindBackend {
    /// A back end for the proxy's NTLM configuration `ntlm` (its domain names, see the module
    /// docs on identity). Starts nothing yet.
    pub fn new(config: WinbindConfig, ntlm: &NtlmConfig) -> Self {
        WinbindBackend {
            config,
            nb_domain: ntlm.nb_domain.clone(),
            dns_domain: ntlm.dns_domain.clone(),
            slot: Mutex::new(Slot::default()),
        }
    }

    pub fn config(&self) -> &WinbindConfig {
        &self.config
    }

    /// Starts the helper if needed and checks that it speaks the protocol, without asking the
    /// DC anything (a block without a password is refused by the helper itself). For start-up
    /// checks: `Err(BackendUnavailable)` names what is wrong.
    pub fn probe(&self) -> Result<(), NtlmError> {
        let reply = self.ask(b"Username: kcdproxy-probe\n.\n")?;
        if reply.iter().any(|l| l.starts_with("Error:")) {
            Ok(())
        } else {
            Err(NtlmError::BackendUnavailable(
                "ntlm_auth does not speak ntlm-server-1",
            ))
        }
    }

    /// How many helper processes this back end has started.
    pub fn helpers_started(&self) -> u64 {
        self.lock().spawned
    }

    /// The process id of the running helper, if one is running.
    pub fn helper_pid(&self) -> Option<u32> {
        self.lock().helper.as_ref().map(|h| h.child.id())
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        match self.slot.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A check panicked mid-exchange: its reply may still be coming, so the helper
                // cannot be trusted to be in step.
                let mut g = poisoned.into_inner();
                if let Some(h) = g.helper.take() {
                    h.kill();
                }
                self.slot.clear_poison();
                g
            }
        }
    }

    /// Sends one request block and returns the reply's lines (without the closing `.`).
    fn ask(&self, request: &[u8]) -> Result<Vec<String>, NtlmError> {
        let mut slot = self.lock();
        let deadline = Instant::now() + self.config.timeout;
        // A helper that died between checks (winbindd restarted, killed by an operator) is
        // noticed only when used: then one new helper is started and asked the same question.
        // Checks are stateless, so asking again is harmless.
        for attempt in 0..2 {
            let reused = slot.helper.is_some();
            if slot.helper.is_none() {
                if let Some(t) = slot.spawn_failed {
                    if t.elapsed() < RESPAWN_BACKOFF {
                        return Err(NtlmError::BackendUnavailable(
                            "ntlm_auth could not be started (retrying shortly)",
                        ));
                    }
                }
                match Helper::spawn(&self.config.argv()) {
                    Ok(h) => {
                        slot.spawned += 1;
                        slot.spawn_failed = None;
                        slot.helper = Some(h);
                    }
                    Err(e) => {
                        tracing::warn!(command = ?self.config.command, error = %e,
                            "cannot start the winbind NTLM helper");
                        slot.spawn_failed = Some(Instant::now());
                        return Err(NtlmError::BackendUnavailable(
                            "ntlm_auth could not be started",
                        ));
                    }
                }
            }
            let Some(helper) = slot.helper.as_mut() else {
                continue;
            };
            match helper.exchange(request, deadline) {
                Ok(reply) => return Ok(reply),
                Err(failure) => {
                    if let Some(h) = slot.helper.take() {
                        h.kill();
                    }
                    match failure {
                        Failure::Exited if reused && attempt == 0 => continue,
                        Failure::Exited => {
                            return Err(NtlmError::BackendUnavailable("ntlm_auth exited"))
                        }
                        Failure::Timeout => {
                            tracing::warn!(timeout = ?self.config.timeout,
                                "the winbind NTLM helper did not answer in time; restarting it");
                            return Err(NtlmError::BackendUnavailable(
                                "ntlm_auth did not answer in time",
                            ));
                        }
                        Failure::Garbled(why) => return Err(NtlmError::BackendUnavailable(why)),
                    }
                }
            }
        }
        Err(NtlmError::BackendUnavailable("ntlm_auth exited"))
    }

    /// The identity reported for a login the DC accepted (see the module docs).
    fn identity(&self, user: &str, domain: &str) -> (String, String) {
        let user = user.to_lowercase();
        if domain.is_empty() {
            let upn = user
                .rsplit_once('@')
                .is_some_and(|(n, s)| !n.is_empty() && !s.is_empty());
            let domain = if upn {
                String::new()
            } else {
                self.nb_domain.clone()
            };
            return (user, domain);
        }
        let domain = if domain.eq_ignore_ascii_case(&self.nb_domain)
            || domain.eq_ignore_ascii_case(&self.dns_domain)
        {
            self.nb_domain.clone()
        } else if domain.contains('.') {
            domain.to_lowercase()
        } else {
            super::crypto::windows_upper(domain)
        };
        (user, domain)
    }
}

impl Drop for WinbindBackend {
    fn drop(&mut self) {
        let slot = match self.slot.get_mut() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(h) = slot.helper.take() {
            h.kill();
        }
    }
}

impl NtlmBackend for WinbindBackend {
    fn verify(&self, req: &VerifyRequest<'_>) -> Result<BackendVerified, NtlmError> {
        let request = encode_request(req)?;
        let reply = self.ask(&request)?;
        let key = interpret(&reply, req)?;
        let (user, domain) = self.identity(req.user, req.domain);
        Ok(BackendVerified::new(user, domain, key))
    }
}

/// The request block for `req`, after checking that every field is safe to send.
fn encode_request(req: &VerifyRequest<'_>) -> Result<Vec<u8>, NtlmError> {
    check_name(req.user, MAX_USER_BYTES)?;
    check_name(req.domain, MAX_DOMAIN_BYTES)?;
    if req.user.is_empty() {
        return Err(NtlmError::Anonymous);
    }
    if req.user.contains('\\') {
        return Err(NtlmError::Malformed("backslash in the NTLM user name"));
    }
    if req.nt_response.len() > MAX_NT_RESPONSE {
        return Err(NtlmError::Malformed("NT response too long"));
    }
    // NTLMv1 with extended session security answers MD5(server ‖ client challenge)[0..8]
    // (MS-NLMP 3.3.1); the DC checks a plain NTLMv1 response against that challenge. Reached
    // only when the policy allows NTLMv1 (and the domain does: AD refuses it by default).
    let challenge: [u8; 8] =
        if req.is_ntlmv1() && req.flags.contains(NegotiateFlags::EXTENDED_SESSIONSECURITY) {
            let Some(client_challenge) = req.lm_response.get(..8) else {
                return Err(NtlmError::Malformed(
                    "NTLMv1 with ESS needs the client challenge",
                ));
            };
            let digest = Md5::new()
                .chain_update(req.server_challenge)
                .chain_update(client_challenge)
                .finalize();
            let mut c = [0u8; 8];
            c.copy_from_slice(&digest[..8]);
            c
        } else {
            *req.server_challenge
        };
    let mut out = String::with_capacity(160 + 2 * req.nt_response.len());
    out.push_str("Username:: ");
    out.push_str(&B64.encode(req.user));
    out.push_str("\nNT-Domain:: ");
    out.push_str(&B64.encode(req.domain));
    out.push_str("\nLANMAN-Challenge: ");
    push_hex(&mut out, &challenge);
    out.push_str("\nNT-Response: ");
    push_hex(&mut out, req.nt_response);
    out.push_str("\nRequest-User-Session-Key: Yes\n.\n");
    Ok(out.into_bytes())
}

fn check_name(s: &str, max: usize) -> Result<(), NtlmError> {
    if s.len() > max {
        return Err(NtlmError::Malformed("NTLM user or domain name too long"));
    }
    if s.chars().any(char::is_control) {
        return Err(NtlmError::Malformed(
            "control character in the NTLM user or domain name",
        ));
    }
    Ok(())
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

fn parse_key(hex: &str) -> Option<[u8; 16]> {
    let hex = hex.as_bytes();
    if hex.len() != 32 {
        return None;
    }
    let mut key = [0u8; 16];
    for (k, pair) in key.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *k = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(key)
}

/// A reply line's value for `key`: `Key: text` or `Key:: base64`.
fn field(reply: &[String], key: &str) -> Option<String> {
    reply.iter().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if !k.eq_ignore_ascii_case(key) {
            return None;
        }
        match v.strip_prefix(':') {
            Some(b64) => B64
                .decode(b64.trim())
                .ok()
                .map(|raw| String::from_utf8_lossy(&raw).into_owned()),
            None => Some(v.trim().to_string()),
        }
    })
}

/// The verdict of a reply: the user session key (the SessionBaseKey), or why not.
fn interpret(reply: &[String], req: &VerifyRequest<'_>) -> Result<[u8; 16], NtlmError> {
    match field(reply, "Authenticated").as_deref() {
        Some(yes) if yes.eq_ignore_ascii_case("Yes") => {
            match field(reply, "User-Session-Key")
                .as_deref()
                .and_then(parse_key)
            {
                Some(key) if key != [0; 16] => Ok(key),
                _ => Err(NtlmError::BackendUnavailable(
                    "winbind gave no user session key (no access to its privileged pipe?)",
                )),
            }
        }
        Some(no) if no.eq_ignore_ascii_case("No") => {
            let reason = field(reply, "Authentication-Error").unwrap_or_default();
            let err = refusal(&reason);
            if err == NtlmError::WrongPassword && !is_wrong_password(&reason) {
                tracing::warn!(user = req.user, domain = req.domain, %reason,
                    "winbind refused an NTLM login for an unrecognised reason");
            }
            Err(err)
        }
        _ => match field(reply, "Error") {
            Some(e) if e.to_ascii_lowercase().contains("winbind") => Err(
                NtlmError::BackendUnavailable("ntlm_auth cannot reach winbindd"),
            ),
            Some(e) => {
                tracing::debug!(user = req.user, error = %e, "ntlm_auth refused the request");
                Err(NtlmError::Malformed("ntlm_auth refused the request"))
            }
            None => Err(NtlmError::BackendUnavailable(
                "ntlm_auth replied without a verdict",
            )),
        },
    }
}

/// Samba's texts (`get_friendly_nt_error_msg`) and NT status names of logon failures, by the
/// start of the text. Stable since Samba 3; unknown texts are refusals.
const REFUSALS: &[(&str, NtlmError)] = &[
    // NT_STATUS_WRONG_PASSWORD
    (
        "When trying to update a password, this return status indicates that the value provided as the current password is not correct",
        NtlmError::WrongPassword,
    ),
    // NT_STATUS_LOGON_FAILURE (also: not a member of --require-membership-of)
    ("The attempted logon is invalid", NtlmError::WrongPassword),
    // NT_STATUS_NO_SUCH_USER, NT_STATUS_NO_SUCH_DOMAIN
    ("The specified account does not exist", NtlmError::UnknownUser),
    ("The specified domain did not exist", NtlmError::UnknownUser),
    // NT_STATUS_ACCOUNT_DISABLED, _LOCKED_OUT, _EXPIRED, PASSWORD_EXPIRED, PASSWORD_MUST_CHANGE,
    // INVALID_LOGON_HOURS, INVALID_WORKSTATION, ACCOUNT_RESTRICTION, the logon-type refusals
    ("The referenced account is currently disabled", NtlmError::AccountDisabled),
    ("The referenced account is currently locked out", NtlmError::AccountDisabled),
    ("The user account has been automatically locked", NtlmError::AccountDisabled),
    ("The user account has expired", NtlmError::AccountDisabled),
    ("The user account password has expired", NtlmError::AccountDisabled),
    ("The user password must be changed", NtlmError::AccountDisabled),
    ("The user account has time restrictions", NtlmError::AccountDisabled),
    ("The user account is restricted so that it cannot be used to log on", NtlmError::AccountDisabled),
    ("Indicates a referenced user name and authentication information are valid, but some user account restriction", NtlmError::AccountDisabled),
    ("The account is not authorized to log on from this station", NtlmError::AccountDisabled),
    ("The account used is a", NtlmError::AccountDisabled),
    ("A user has requested a type of logon", NtlmError::AccountDisabled),
    // The DC could not be asked.
    ("No logon servers are currently available", NtlmError::BackendUnavailable("no logon servers")),
    ("The specified domain either does not exist or could not be contacted", NtlmError::BackendUnavailable("the domain could not be contacted")),
    ("The specified I/O operation was not completed before the time-out", NtlmError::BackendUnavailable("winbindd timed out")),
    ("NT_STATUS_WRONG_PASSWORD", NtlmError::WrongPassword),
    ("NT_STATUS_LOGON_FAILURE", NtlmError::WrongPassword),
    ("NT_STATUS_NO_SUCH_USER", NtlmError::UnknownUser),
    ("NT_STATUS_NO_SUCH_DOMAIN", NtlmError::UnknownUser),
    ("NT_STATUS_ACCOUNT_", NtlmError::AccountDisabled),
    ("NT_STATUS_PASSWORD_", NtlmError::AccountDisabled),
    ("NT_STATUS_INVALID_LOGON_HOURS", NtlmError::AccountDisabled),
    ("NT_STATUS_INVALID_WORKSTATION", NtlmError::AccountDisabled),
    ("NT_STATUS_NO_LOGON_SERVERS", NtlmError::BackendUnavailable("no logon servers")),
    ("NT_STATUS_IO_TIMEOUT", NtlmError::BackendUnavailable("winbindd timed out")),
];

fn refusal(reason: &str) -> NtlmError {
    let reason = reason.trim();
    if let Some((_, err)) = REFUSALS.iter().find(|(p, _)| reason.starts_with(p)) {
        return *err;
    }
    // wbclient's own failures ("Reading winbind reply failed!", WBC_ERR_WINBIND_NOT_AVAILABLE).
    if reason.to_ascii_lowercase().contains("winbind") {
        return NtlmError::BackendUnavailable("ntlm_auth cannot reach winbindd");
    }
    NtlmError::WrongPassword
}

fn is_wrong_password(reason: &str) -> bool {
    REFUSALS
        .iter()
        .any(|(p, e)| *e == NtlmError::WrongPassword && reason.trim().starts_with(p))
}

/// What the stdout reader thread hands over.
enum Line {
    Text(String),
    /// A line longer than [`MAX_LINE`]: the helper is not speaking the protocol.
    TooLong,
    /// The helper closed its stdout (exited).
    Eof,
}

/// Why an exchange failed; every failure retires the helper.
enum Failure {
    Exited,
    Timeout,
    Garbled(&'static str),
}

/// A running helper. Its stdout is read by a thread (std pipes have no read timeout; the
/// channel's `recv_timeout` is the deadline), its stderr by another that logs it.
struct Helper {
    child: Child,
    /// INVARIANT: `Some` while the helper is in use; dropped (closing its stdin) on kill.
    stdin: Option<ChildStdin>,
    lines: Receiver<Line>,
}

impl Helper {
    fn spawn(argv: &[OsString]) -> std::io::Result<Helper> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty helper command")
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let (Some(stdin), Some(stdout), Some(stderr)) = (stdin, stdout, stderr) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("helper started without its pipes"));
        };
        // Bounded: a helper that writes without being asked blocks on a full channel rather
        // than filling memory.
        let (tx, rx) = mpsc::sync_channel(64);
        let threads = std::thread::Builder::new()
            .name("kcd-winbind-out".into())
            .spawn(move || read_lines(stdout, tx))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("kcd-winbind-err".into())
                    .spawn(move || log_stderr(stderr, pid))
            });
        if let Err(e) = threads {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Helper {
            child,
            stdin: Some(stdin),
            lines: rx,
        })
    }

    fn exchange(&mut self, request: &[u8], deadline: Instant) -> Result<Vec<String>, Failure> {
        let stdin = self.stdin.as_mut().ok_or(Failure::Exited)?;
        // Never blocks: the helper has answered everything written before (the slot's
        // invariant), so the pipe is empty, and a request block is far below its capacity.
        stdin
            .write_all(request)
            .and_then(|()| stdin.flush())
            .map_err(|_| Failure::Exited)?;
        let mut reply = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Line::Text(line)) if line == "." => {
                    // A `.` before any other line closes the previous reply (Samba ends a
                    // refusal with two); every reply has at least one line of its own.
                    if !reply.is_empty() {
                        return Ok(reply);
                    }
                }
                Ok(Line::Text(line)) => {
                    if reply.len() == MAX_REPLY_LINES {
                        return Err(Failure::Garbled("ntlm_auth reply too long"));
                    }
                    reply.push(line);
                }
                Ok(Line::TooLong) => return Err(Failure::Garbled("ntlm_auth reply line too long")),
                Ok(Line::Eof) | Err(RecvTimeoutError::Disconnected) => return Err(Failure::Exited),
                Err(RecvTimeoutError::Timeout) => return Err(Failure::Timeout),
            }
        }
    }

    /// Ends the helper: closes its stdin, kills it and reaps it (a killed process exits at
    /// once; the reader threads then see end-of-file and stop).
    fn kill(mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the helper's stdout into `tx` line by line until end-of-file, an error, an
/// over-long line, or the receiving side going away.
fn read_lines(stdout: impl Read, tx: SyncSender<Line>) {
    let mut r = BufReader::new(stdout);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        let read = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf);
        let line = match read {
            Ok(0) | Err(_) => Line::Eof,
            Ok(_) if buf.last() != Some(&b'\n') => {
                if buf.len() > MAX_LINE {
                    Line::TooLong
                } else {
                    Line::Eof // cut off by the helper's exit
                }
            }
            Ok(_) => {
                let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let text = text.strip_suffix(b"\r").unwrap_or(text);
                Line::Text(String::from_utf8_lossy(text).into_owned())
            }
        };
        let last = !matches!(line, Line::Text(_));
        if tx.send(line).is_err() || last {
            return;
        }
    }
}

/// Logs what the helper writes on stderr (Samba's diagnostics), bounded per line.
fn log_stderr(stderr: impl Read, pid: u32) {
    let mut r = BufReader::new(stderr);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end();
                if !text.is_empty() {
                    tracing::warn!(pid, "ntlm_auth: {text}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(user: &'a str, domain: &'a str, nt: &'a [u8]) -> VerifyRequest<'a> {
        VerifyRequest {
            user,
            domain,
            workstation: "WS",
            server_challenge: &[1, 2, 3, 4, 5, 6, 7, 8],
            nt_response: nt,
            lm_response: &[],
            flags: NegotiateFlags(0),
            negotiate: &[],
            challenge: &[],
            authenticate: &[],
        }
    }

    fn ntlm_config() -> NtlmConfig {
        NtlmConfig {
            nb_domain: "EXAMPLE".into(),
            nb_computer: "KCDPROXY".into(),
            dns_domain: "example.test".into(),
            dns_computer: "kcdproxy.example.test".into(),
        }
    }

    /// A fake helper: a shell script run with `sh -c` (the request blocks go to its stdin).
    fn fake(script: &str, timeout: Duration) -> WinbindBackend {
        let mut cfg = WinbindConfig::new(["/bin/sh", "-c", script, "fake-ntlm-auth"]);
        cfg.timeout = timeout;
        WinbindBackend::new(cfg, &ntlm_config())
    }

    const KEY: &str = "00112233445566778899AABBCCDDEEFF";
    const KEY_BYTES: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];

    /// Answers each block (read up to its `.`) with `$reply` (printf format).
    fn answering(reply: &str) -> String {
        format!("while IFS= read -r line; do [ \"$line\" = . ] && printf '{reply}'; done; exit 0")
    }

    #[test]
    fn request_block_is_encoded_safely() {
        let nt = [0xabu8; 40];
        let block =
            String::from_utf8(encode_request(&req("Jürgen", "EXAMPLE", &nt)).unwrap()).unwrap();
        let lines: Vec<&str> = block.lines().collect();
        assert_eq!(
            lines,
            [
                "Username:: SsO8cmdlbg==",
                "NT-Domain:: RVhBTVBMRQ==",
                "LANMAN-Challenge: 0102030405060708",
                &format!("NT-Response: {}", "ab".repeat(40)),
                "Request-User-Session-Key: Yes",
                ".",
            ]
        );
        // An empty domain is sent (the DC uses its own).
        let block = encode_request(&req("alice", "", &nt)).unwrap();
        assert!(String::from_utf8(block).unwrap().contains("NT-Domain:: \n"));
    }

    #[test]
    fn injection_and_oversize_are_refused_before_the_helper() {
        let nt = [0u8; 40];
        let long_nt = [0u8; MAX_NT_RESPONSE + 1];
        let long_user = "a".repeat(MAX_USER_BYTES + 1);
        type Case<'a> = (&'a str, &'a str, &'a [u8], NtlmError);
        let malformed = |s| NtlmError::Malformed(s);
        let cases: [Case; 9] = [
            (
                "alice\n.\nUsername: bob",
                "EXAMPLE",
                &nt,
                malformed("control character in the NTLM user or domain name"),
            ),
            (
                "alice",
                "EXAMPLE\nNT-Response: 00",
                &nt,
                malformed("control character in the NTLM user or domain name"),
            ),
            (
                "alice\r",
                "EXAMPLE",
                &nt,
                malformed("control character in the NTLM user or domain name"),
            ),
            (
                "alice\0bob",
                "EXAMPLE",
                &nt,
                malformed("control character in the NTLM user or domain name"),
            ),
            (
                "alice",
                "EXA\u{85}MPLE",
                &nt,
                malformed("control character in the NTLM user or domain name"),
            ),
            (
                "EXAMPLE\\alice",
                "",
                &nt,
                malformed("backslash in the NTLM user name"),
            ),
            (
                &long_user,
                "EXAMPLE",
                &nt,
                malformed("NTLM user or domain name too long"),
            ),
            (
                "alice",
                "EXAMPLE",
                &long_nt,
                malformed("NT response too long"),
            ),
            ("", "EXAMPLE", &nt, NtlmError::Anonymous),
        ];
        // A helper that would authenticate anybody: refusals must come before it is asked.
        let b = fake(
            &answering(&format!(
                "Authenticated: Yes\\nUser-Session-Key: {KEY}\\n.\\n"
            )),
            Duration::from_secs(5),
        );
        for (user, domain, nt, want) in cases {
            assert_eq!(
                b.verify(&req(user, domain, nt)).unwrap_err(),
                want,
                "{user:?} / {domain:?}"
            );
        }
        assert_eq!(b.helpers_started(), 0, "the helper was never needed");
    }

    #[test]
    fn verdicts_and_identity() {
        let nt = [0u8; 40];
        let b = fake(
            &answering(&format!(
                "Authenticated: Yes\\nUser-Session-Key: {KEY}\\n.\\n"
            )),
            Duration::from_secs(5),
        );
        type Case = (&'static str, &'static str, (&'static str, &'static str));
        let cases: [Case; 7] = [
            ("alice", "EXAMPLE", ("alice", "EXAMPLE")),
            ("ALICE", "example", ("alice", "EXAMPLE")),
            ("alice", "", ("alice", "EXAMPLE")),
            ("alice", "Example.Test", ("alice", "EXAMPLE")),
            ("Alice@Example.Test", "", ("alice@example.test", "")),
            ("carol", "other", ("carol", "OTHER")),
            ("carol", "Corp.Example.COM", ("carol", "corp.example.com")),
        ];
        for (user, domain, (want_user, want_domain)) in cases {
            let v = b.verify(&req(user, domain, &nt)).unwrap();
            let ok = format!("{v:?}");
            assert!(
                ok.contains(&format!("user: {want_user:?}")),
                "{user}/{domain}: {ok}"
            );
            assert!(
                ok.contains(&format!("domain: {want_domain:?}")),
                "{user}/{domain}: {ok}"
            );
        }
        assert_eq!(b.helpers_started(), 1, "one helper serves every check");
    }

    #[test]
    fn session_key_is_the_helpers() {
        // Checked through PendingAuth in the lab tests; here: the hex is parsed as sent.
        assert_eq!(parse_key(KEY), Some(KEY_BYTES));
        assert_eq!(parse_key(&KEY.to_lowercase()), Some(KEY_BYTES));
        assert_eq!(parse_key("0011"), None);
        assert_eq!(parse_key(&"zz".repeat(16)), None);
    }

    #[test]
    fn refusals_are_mapped() {
        let nt = [0u8; 40];
        // Samba 4.17 closes a refusal with two `.` lines: the stray one must not be read as
        // the next reply. The script answers the blocks in turn from a list.
        let script = r#"
n=0
while IFS= read -r line; do
  [ "$line" = . ] || continue
  n=$((n+1))
  case $n in
    1) printf 'Authenticated: No\nAuthentication-Error: When trying to update a password, this return status indicates that the value provided as the current password is not correct.\n.\n.\n' ;;
    2) printf 'Authenticated: No\nAuthentication-Error: The specified account does not exist.\n.\n.\n' ;;
    3) printf 'Authenticated: No\nAuthentication-Error: The referenced account is currently disabled and cannot be logged on to.\n.\n.\n' ;;
    4) printf 'Authenticated: No\nAuthentication-Error: The referenced account is currently locked out and cannot be logged on to.\n.\n.\n' ;;
    5) printf 'Authenticated: No\nAuthentication-Error: No logon servers are currently available to service the logon request.\n.\n.\n' ;;
    6) printf 'Authenticated: No\nAuthentication-Error: Reading winbind reply failed!\n.\n.\n' ;;
    7) printf 'Authenticated: No\nAuthentication-Error: NT_STATUS_NO_SUCH_USER\n.\n' ;;
    8) printf 'Authenticated: No\nAuthentication-Error: (null)\n.\n.\n' ;;
    9) printf 'Error: hex decode of x failed!\n.\n' ;;
    10) printf 'Authenticated: Yes\n.\n' ;;
    11) printf 'Authenticated: Yes\nUser-Session-Key: 00000000000000000000000000000000\n.\n' ;;
    12) printf 'Something: else\n.\n' ;;
    *) printf 'Authenticated: Yes\nUser-Session-Key: %s\n.\n' "$KEY" ;;
  esac
done
"#;
        let b = fake(&format!("KEY={KEY}\n{script}"), Duration::from_secs(5));
        let unavailable = |s| Err(NtlmError::BackendUnavailable(s));
        let want: [Result<(), NtlmError>; 13] = [
            Err(NtlmError::WrongPassword),
            Err(NtlmError::UnknownUser),
            Err(NtlmError::AccountDisabled),
            Err(NtlmError::AccountDisabled),
            unavailable("no logon servers"),
            unavailable("ntlm_auth cannot reach winbindd"),
            Err(NtlmError::UnknownUser),
            Err(NtlmError::WrongPassword),
            Err(NtlmError::Malformed("ntlm_auth refused the request")),
            unavailable("winbind gave no user session key (no access to its privileged pipe?)"),
            unavailable("winbind gave no user session key (no access to its privileged pipe?)"),
            unavailable("ntlm_auth replied without a verdict"),
            Ok(()),
        ];
        for (i, want) in want.into_iter().enumerate() {
            let got = b.verify(&req("alice", "EXAMPLE", &nt)).map(|_| ());
            assert_eq!(got, want, "reply {}", i + 1);
        }
        assert_eq!(b.helpers_started(), 1, "no reply needed a restart");
    }

    #[test]
    fn a_hung_helper_is_bounded_and_replaced() {
        let nt = [0u8; 40];
        // The first helper never answers; the second one does (a marker file tells them apart).
        let dir = std::env::temp_dir().join(format!("kcd-winbind-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("started");
        let script = format!(
            "if [ -e '{m}' ]; then {answer}; else : > '{m}'; exec sleep 60; fi",
            m = marker.display(),
            answer = answering(&format!(
                "Authenticated: Yes\\nUser-Session-Key: {KEY}\\n.\\n"
            ))
        );
        let b = fake(&script, Duration::from_millis(300));
        let t = Instant::now();
        assert_eq!(
            b.verify(&req("alice", "EXAMPLE", &nt)).unwrap_err(),
            NtlmError::BackendUnavailable("ntlm_auth did not answer in time")
        );
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert!(b.helper_pid().is_none(), "the hung helper was retired");
        assert!(b.verify(&req("alice", "EXAMPLE", &nt)).is_ok());
        assert_eq!(b.helpers_started(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_dead_helper_is_restarted_and_the_check_asked_again() {
        let nt = [0u8; 40];
        let b = fake(
            &answering(&format!(
                "Authenticated: Yes\\nUser-Session-Key: {KEY}\\n.\\n"
            )),
            Duration::from_secs(5),
        );
        assert!(b.verify(&req("alice", "EXAMPLE", &nt)).is_ok());
        let pid = b.helper_pid().expect("running");
        // Killed between checks (an operator, the OOM killer): the next check notices, starts
        // a new helper and gets its answer.
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(b.verify(&req("alice", "EXAMPLE", &nt)).is_ok());
        assert_eq!(b.helpers_started(), 2);
        assert_ne!(b.helper_pid(), Some(pid));
    }

    #[test]
    fn a_helper_that_always_dies_fails_fast() {
        let nt = [0u8; 40];
        let b = fake("exit 3", Duration::from_secs(5));
        let t = Instant::now();
        assert_eq!(
            b.verify(&req("alice", "EXAMPLE", &nt)).unwrap_err(),
            NtlmError::BackendUnavailable("ntlm_auth exited")
        );
        assert!(t.elapsed() < Duration::from_secs(3));
        // A missing program: no fork storm, a clear error.
        let mut cfg = WinbindConfig::new(["/nonexistent/ntlm_auth"]);
        cfg.timeout = Duration::from_secs(1);
        let b = WinbindBackend::new(cfg, &ntlm_config());
        for _ in 0..3 {
            let t = Instant::now();
            assert!(matches!(
                b.verify(&req("alice", "EXAMPLE", &nt)).unwrap_err(),
                NtlmError::BackendUnavailable(why) if why.starts_with("ntlm_auth could not be started")
            ));
            assert!(t.elapsed() < Duration::from_millis(500));
        }
        assert_eq!(b.helpers_started(), 0);
    }

    #[test]
    fn garbage_replies_retire_the_helper() {
        let nt = [0u8; 40];
        let long = "x".repeat(MAX_LINE + 10);
        let b = fake(
            &answering(&format!("{long}\\n.\\n")),
            Duration::from_secs(5),
        );
        assert_eq!(
            b.verify(&req("alice", "EXAMPLE", &nt)).unwrap_err(),
            NtlmError::BackendUnavailable("ntlm_auth reply line too long")
        );
        assert!(b.helper_pid().is_none());
        let b = fake(&answering(&"Junk: x\\n".repeat(40)), Duration::from_secs(5));
        assert_eq!(
            b.verify(&req("alice", "EXAMPLE", &nt)).unwrap_err(),
            NtlmError::BackendUnavailable("ntlm_auth reply too long")
        );
    }

    #[test]
    fn ntlmv1_with_ess_sends_the_session_challenge() {
        let nt = [0x11u8; 24];
        let lm = [0x22u8; 24];
        let mut r = req("alice", "EXAMPLE", &nt);
        r.lm_response = &lm;
        r.flags = NegotiateFlags::EXTENDED_SESSIONSECURITY;
        let block = String::from_utf8(encode_request(&r).unwrap()).unwrap();
        let digest = Md5::new()
            .chain_update([1u8, 2, 3, 4, 5, 6, 7, 8])
            .chain_update([0x22u8; 8])
            .finalize();
        let mut want = String::new();
        push_hex(&mut want, &digest[..8]);
        assert!(
            block.contains(&format!("LANMAN-Challenge: {want}\n")),
            "{block}"
        );
        r.flags = NegotiateFlags(0);
        let block = String::from_utf8(encode_request(&r).unwrap()).unwrap();
        assert!(block.contains("LANMAN-Challenge: 0102030405060708\n"));
    }

    #[test]
    fn probe_and_argv() {
        let b = fake(
            &answering("Error: No password supplied!\\n.\\n"),
            Duration::from_secs(5),
        );
        assert_eq!(b.probe(), Ok(()));
        let b = fake(
            &answering("Authenticated: Yes\\n.\\n"),
            Duration::from_secs(5),
        );
        assert!(b.probe().is_err());
        let argv = WinbindConfig::new(["ntlm_auth", "--configfile=x"]).argv();
        assert_eq!(argv, ["ntlm_auth", "--configfile=x", HELPER_PROTOCOL]);
        let argv = WinbindConfig::new(["ntlm_auth", "--helper-protocol=ntlm-server-1"]).argv();
        assert_eq!(argv.len(), 2);
    }

    #[test]
    fn backend_is_send_and_sync() {
        fn is<T: Send + Sync>() {}
        is::<WinbindBackend>();
    }
}
