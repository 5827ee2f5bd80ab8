//! The local NT-hash store: a file of users and their NT hashes, and the [`LocalBackend`] that
//! verifies NTLM responses against it (no domain controller needed: tests, small sites, labs).
//!
//! ## File format
//!
//! One user per line; blank lines and lines starting with `#` are ignored. Accepted forms:
//!
//! ```text
//! EXAMPLE\alice:8846f7eaee8fb117ad06bdd830b7586c      DOMAIN\user:NTHASH
//! alice@EXAMPLE.TEST:8846f7eaee8fb117ad06bdd830b7586c user@REALM:NTHASH
//! bob:8846f7eaee8fb117ad06bdd830b7586c                user:NTHASH (any domain)
//! carol:1001:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:8846F7EAEE8FB117AD06BDD830B7586C:[U          ]:LCT-5F0A1B2C:
//!                                                     Samba smbpasswd
//! ```
//!
//! The NT hash is MD4 of the UTF-16LE password (`samba-tool user getpassword … unicodePwd`, or
//! [`super::crypto::nt_hash`]). smbpasswd lines whose account flags contain `D` (disabled), or
//! whose NT hash is all `X` (no password), load as disabled accounts: they exist, and never
//! authenticate.
//!
//! Loading reports *every* bad line with its number (like the configuration does), and refuses a
//! user listed twice for the same domain.
//!
//! ## Lookup
//!
//! Users and domains match case-insensitively. A client's `user@realm` with an empty domain is
//! split at the last `@`. An entry without a domain matches any domain the client sends: the
//! file is this proxy's own user list, and proving the password of `alice` proves `alice`
//! whatever prefix the client typed — the identity handed on is the entry's, never the
//! client's spelling. [`LocalBackend`] also treats the proxy's NetBIOS and DNS domain names as
//! one domain, so `EXAMPLE\alice` and `alice@example.test` find the same entry.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use super::crypto::{self, Secret16};
use super::verify::{BackendVerified, NtlmBackend, VerifyRequest};
use super::{NtlmConfig, NtlmError};

/// One user of the store.
#[derive(Clone)]
pub struct NtHashEntry {
    /// As written in the file.
    pub user: String,
    /// As written in the file (`DOMAIN\` prefix or `@REALM` suffix); `None` for "any domain".
    pub domain: Option<String>,
    /// `None` for a disabled account.
    hash: Option<Secret16>,
    /// Where the entry came from (1-based).
    pub line: usize,
}

impl NtHashEntry {
    pub fn is_disabled(&self) -> bool {
        self.hash.is_none()
    }

    /// Whether `password` is this account's (its NT hash matches, compared in constant time):
    /// how Basic credentials are checked against the local store. Disabled: never.
    pub fn matches_password(&self, password: &str) -> bool {
        match &self.hash {
            Some(h) => h.ct_eq(&crate::auth::ntlm::crypto::nt_hash(password)),
            None => false,
        }
    }
}

impl fmt::Debug for NtHashEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NtHashEntry")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .field("disabled", &self.is_disabled())
            .field("line", &self.line)
            .finish()
    }
}

/// A bad line of a hash file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Why a hash file could not be loaded: unreadable, or these lines are bad.
#[derive(Debug)]
pub enum HashFileError {
    Io(std::io::Error),
    Lines(Vec<LineError>),
}

impl fmt::Display for HashFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashFileError::Io(e) => write!(f, "cannot read NT hash file: {e}"),
            HashFileError::Lines(lines) => {
                write!(f, "{} bad line(s) in NT hash file", lines.len())?;
                for l in lines {
                    write!(f, "; {l}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for HashFileError {}

/// The users of a hash file, keyed by lowercase (user, domain or "").
#[derive(Clone, Default)]
pub struct NtHashStore {
    entries: HashMap<(String, String), NtHashEntry>,
}

impl fmt::Debug for NtHashStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NtHashStore")
            .field("users", &self.entries.len())
            .finish()
    }
}

fn parse_hash(hex: &str) -> Result<Option<Secret16>, &'static str> {
    if hex.len() == 32 && hex.bytes().all(|b| b == b'X' || b == b'x') {
        return Ok(None); // smbpasswd: no password set
    }
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected an NT hash of 32 hex digits");
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let pair = hex.get(2 * i..2 * i + 2).ok_or("bad hex")?;
        *o = u8::from_str_radix(pair, 16).map_err(|_| "bad hex")?;
    }
    Ok(Some(Secret16::new(out)))
}

/// Splits `DOMAIN\user` or `user@REALM` into (user, domain).
fn split_account(account: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (user, domain) = if let Some((d, u)) = account.split_once('\\') {
        (u, Some(d))
    } else if let Some((u, r)) = account.rsplit_once('@') {
        (u, Some(r))
    } else {
        (account, None)
    };
    if user.is_empty() || domain.is_some_and(str::is_empty) {
        return Err("empty user or domain");
    }
    if user.contains('\\') || account.chars().any(char::is_control) {
        return Err("bad characters in user name");
    }
    Ok((user, domain))
}

fn parse_line(line: &str) -> Result<(String, Option<String>, Option<Secret16>), &'static str> {
    let fields: Vec<&str> = line.split(':').collect();
    let (account, hash) = match fields.as_slice() {
        [account, hash] => (*account, parse_hash(hash.trim())?),
        // smbpasswd: user:uid:LMHASH:NTHASH:[flags]:LCT-xxxxxxxx[:]
        [account, uid, _lm, nt, flags, lct, rest @ ..] => {
            if uid.parse::<u32>().is_err() {
                return Err("smbpasswd line: bad uid");
            }
            if !lct.starts_with("LCT-") || rest.iter().any(|r| !r.is_empty()) {
                return Err("smbpasswd line: expected user:uid:LM:NT:[flags]:LCT-…");
            }
            let flags = flags
                .strip_prefix('[')
                .and_then(|f| f.strip_suffix(']'))
                .ok_or("smbpasswd line: account flags must be in [ ]")?;
            let hash = parse_hash(nt)?;
            (*account, if flags.contains('D') { None } else { hash })
        }
        _ => return Err("expected user:NTHASH or an smbpasswd line"),
    };
    let (user, domain) = split_account(account.trim())?;
    Ok((user.to_string(), domain.map(str::to_string), hash))
}

impl NtHashStore {
    /// Parses a hash file's text; every bad line is reported.
    pub fn parse(text: &str) -> Result<Self, Vec<LineError>> {
        let mut store = NtHashStore::default();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Ok((user, domain, hash)) => {
                    let key = (
                        user.to_lowercase(),
                        domain.as_deref().unwrap_or("").to_lowercase(),
                    );
                    if let Some(first) = store.entries.get(&key) {
                        errors.push(LineError {
                            line: line_no,
                            reason: format!("duplicate user (first on line {})", first.line),
                        });
                        continue;
                    }
                    store.entries.insert(
                        key,
                        NtHashEntry {
                            user,
                            domain,
                            hash,
                            line: line_no,
                        },
                    );
                }
                Err(reason) => errors.push(LineError {
                    line: line_no,
                    reason: reason.to_string(),
                }),
            }
        }
        if errors.is_empty() {
            Ok(store)
        } else {
            Err(errors)
        }
    }

    /// Reads and parses a hash file.
    pub fn load(path: &Path) -> Result<Self, HashFileError> {
        let text = std::fs::read_to_string(path).map_err(HashFileError::Io)?;
        Self::parse(&text).map_err(HashFileError::Lines)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for exactly `user` in `domain` (`None` = the domain-less entry), ignoring case.
    pub fn get(&self, user: &str, domain: Option<&str>) -> Option<&NtHashEntry> {
        let key = (user.to_lowercase(), domain.unwrap_or("").to_lowercase());
        self.entries.get(&key)
    }

    /// The entry for a client's (user, domain): `user@realm` with an empty domain is split;
    /// then the exact domain, then the domain-less entry.
    pub fn lookup(&self, user: &str, domain: &str) -> Option<&NtHashEntry> {
        let (user, domain) = split_client_account(user, domain);
        self.get(user, Some(domain))
            .or_else(|| self.get(user, None))
    }
}

/// `alice@realm` with an empty domain → (`alice`, `realm`); anything else unchanged.
fn split_client_account<'a>(user: &'a str, domain: &'a str) -> (&'a str, &'a str) {
    if domain.is_empty() {
        if let Some((u, r)) = user.rsplit_once('@') {
            if !u.is_empty() && !r.is_empty() {
                return (u, r);
            }
        }
    }
    (user, domain)
}

/// Verifies NTLM responses against an [`NtHashStore`].
#[derive(Debug)]
pub struct LocalBackend {
    store: NtHashStore,
    /// The proxy's own domain names (NetBIOS, DNS), treated as one domain.
    own_domains: [String; 2],
}

impl LocalBackend {
    /// `config` names the proxy's own domain: its NetBIOS and DNS names are aliases here, and
    /// the NetBIOS name is the domain reported for domain-less entries.
    pub fn new(store: NtHashStore, config: &NtlmConfig) -> Self {
        LocalBackend {
            store,
            own_domains: [config.nb_domain.clone(), config.dns_domain.clone()],
        }
    }

    pub fn store(&self) -> &NtHashStore {
        &self.store
    }

    fn is_own(&self, domain: &str) -> bool {
        domain.is_empty()
            || self
                .own_domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(domain))
    }

    fn find(&self, user: &str, domain: &str) -> Option<&NtHashEntry> {
        let (user, domain) = split_client_account(user, domain);
        if let Some(e) = self.store.get(user, Some(domain)) {
            return Some(e);
        }
        if self.is_own(domain) {
            for d in &self.own_domains {
                if let Some(e) = self.store.get(user, Some(d)) {
                    return Some(e);
                }
            }
        }
        self.store.get(user, None)
    }
}

/// A fixed key to spend the same HMAC work on unknown users as on known ones, so response time
/// does not tell which user names exist.
const DECOY_KEY: [u8; 16] = [0x5a; 16];

impl NtlmBackend for LocalBackend {
    fn verify(&self, req: &VerifyRequest<'_>) -> Result<BackendVerified, NtlmError> {
        let entry = self.find(req.user, req.domain);
        let decoy = Secret16::new(DECOY_KEY);
        let hash = entry.and_then(|e| e.hash.as_ref()).unwrap_or(&decoy);

        let (ok, session_base_key) = if req.is_ntlmv1() {
            // Reached only when the policy allows NTLMv1 (the acceptor refuses it otherwise).
            let ess = req
                .flags
                .contains(super::NegotiateFlags::EXTENDED_SESSIONSECURITY);
            let client_challenge: Option<[u8; 8]> = if ess {
                let cc = req.lm_response.get(..8).and_then(|c| c.try_into().ok());
                Some(cc.ok_or(NtlmError::Malformed("NTLMv1 ESS without client challenge"))?)
            } else {
                None
            };
            let expected =
                crypto::ntlmv1_response(hash, req.server_challenge, client_challenge.as_ref());
            (
                crypto::ct_eq(&expected, req.nt_response),
                crypto::session_base_key_v1(hash),
            )
        } else {
            let (Some(proof), Some(blob)) = (req.nt_response.get(..16), req.nt_response.get(16..))
            else {
                return Err(NtlmError::Malformed("NTLMv2 response too short"));
            };
            let key = crypto::ntowfv2(hash, req.user, req.domain);
            let expected = crypto::ntlmv2_proof(&key, req.server_challenge, blob);
            let ok = crypto::ct_eq(&expected, proof);
            (ok, crypto::session_base_key_v2(&key, &expected))
        };

        let Some(entry) = entry else {
            return Err(NtlmError::UnknownUser);
        };
        if entry.is_disabled() {
            return Err(NtlmError::AccountDisabled);
        }
        if !ok {
            return Err(NtlmError::WrongPassword);
        }
        let domain = entry
            .domain
            .clone()
            .unwrap_or_else(|| self.own_domains[0].clone());
        Ok(BackendVerified::new(
            entry.user.clone(),
            domain,
            *session_base_key.expose(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD_HASH: &str = "8846f7eaee8fb117ad06bdd830b7586c"; // "password"

    #[test]
    fn nt_hash_of_password() {
        assert_eq!(
            hex::encode(crypto::nt_hash("password").expose()),
            PASSWORD_HASH
        );
    }

    #[test]
    fn parses_every_form() {
        let text = format!(
            "# users\n\
             \n\
             EXAMPLE\\alice:{PASSWORD_HASH}\n\
             bob@EXAMPLE.TEST:{PASSWORD_HASH}\n\
             carol:{}\n\
             dave:1001:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:{PASSWORD_HASH}:[U          ]:LCT-5F0A1B2C:\n\
             erin:1002:NO PASSWORDXXXXXXXXXXXXXXXXXXXXX:{PASSWORD_HASH}:[DU         ]:LCT-5F0A1B2C:\n\
             frank:1003:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX:[U          ]:LCT-00000000\n",
            PASSWORD_HASH.to_uppercase()
        );
        let s = NtHashStore::parse(&text).unwrap();
        assert_eq!(s.len(), 6);
        let alice = s.get("ALICE", Some("example")).unwrap();
        assert_eq!(
            (alice.user.as_str(), alice.domain.as_deref(), alice.line),
            ("alice", Some("EXAMPLE"), 3)
        );
        assert_eq!(
            s.get("bob", Some("example.test"))
                .unwrap()
                .domain
                .as_deref(),
            Some("EXAMPLE.TEST")
        );
        assert!(s.get("Carol", None).is_some());
        assert!(!s.get("dave", None).unwrap().is_disabled());
        assert!(s.get("erin", None).unwrap().is_disabled(), "D flag");
        assert!(s.get("frank", None).unwrap().is_disabled(), "no NT hash");
    }

    #[test]
    fn reports_every_bad_line() {
        let text = format!(
            "alice:{PASSWORD_HASH}\n\
             bob\n\
             carol:1234\n\
             dave:zz46f7eaee8fb117ad06bdd830b7586c\n\
             ALICE:{PASSWORD_HASH}\n\
             \\eve:{PASSWORD_HASH}\n\
             frank:x1:LM:{PASSWORD_HASH}:[U]:LCT-0\n\
             gina:1:LM:{PASSWORD_HASH}:U:LCT-0\n\
             hal:1:LM:{PASSWORD_HASH}:[U]:0\n\
             a:b:c\n"
        );
        let errs = NtHashStore::parse(&text).unwrap_err();
        let got: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "line 2: expected user:NTHASH or an smbpasswd line",
                "line 3: expected an NT hash of 32 hex digits",
                "line 4: expected an NT hash of 32 hex digits",
                "line 5: duplicate user (first on line 1)",
                "line 6: empty user or domain",
                "line 7: smbpasswd line: bad uid",
                "line 8: smbpasswd line: account flags must be in [ ]",
                "line 9: smbpasswd line: expected user:uid:LM:NT:[flags]:LCT-…",
                "line 10: expected user:NTHASH or an smbpasswd line",
            ]
        );
    }

    #[test]
    fn lookup_rules() {
        let s = NtHashStore::parse(&format!(
            "EXAMPLE\\alice:{PASSWORD_HASH}\nbob:{PASSWORD_HASH}\ncarol@EXAMPLE.TEST:{PASSWORD_HASH}\n"
        ))
        .unwrap();
        type Case = (&'static str, &'static str, Option<usize>);
        let cases: [Case; 8] = [
            ("alice", "EXAMPLE", Some(1)),
            ("Alice", "example", Some(1)),
            ("alice", "OTHER", None),
            ("alice", "", None),
            ("bob", "ANYTHING", Some(2)),
            ("bob@whatever", "", Some(2)),
            ("carol@example.test", "", Some(3)),
            ("carol", "EXAMPLE.TEST", Some(3)),
        ];
        for (user, domain, line) in cases {
            assert_eq!(
                s.lookup(user, domain).map(|e| e.line),
                line,
                "{user} / {domain}"
            );
        }
    }

    #[test]
    fn backend_aliases_own_domains() {
        let cfg = NtlmConfig {
            nb_domain: "EXAMPLE".into(),
            nb_computer: "KCDPROXY".into(),
            dns_domain: "example.test".into(),
            dns_computer: "kcdproxy.example.test".into(),
        };
        let s = NtHashStore::parse(&format!(
            "EXAMPLE\\alice:{PASSWORD_HASH}\ncarol@EXAMPLE.TEST:{PASSWORD_HASH}\n"
        ))
        .unwrap();
        let b = LocalBackend::new(s, &cfg);
        type Case = (&'static str, &'static str, Option<usize>);
        let cases: [Case; 7] = [
            ("alice", "EXAMPLE", Some(1)),
            ("alice@example.test", "", Some(1)),
            ("alice", "example.test", Some(1)),
            ("alice", "", Some(1)),
            ("carol", "EXAMPLE", Some(2)),
            ("alice", "OTHER", None),
            ("alice@other.test", "", None),
        ];
        for (user, domain, line) in cases {
            assert_eq!(
                b.find(user, domain).map(|e| e.line),
                line,
                "{user} / {domain}"
            );
        }
    }
}
