//! The authenticated user.
//!
//! INVARIANT: an [`Identity`] exists only if a scheme verified the client's proof. Its
//! constructor is private to `auth`, so delegation and the backend pool — which act *as* the
//! user — can only be handed one by the auth module (the pattern of rustls' `verify.rs`: a verified value no other module can build).

use std::fmt;
use std::rc::Rc;

use crate::gss::DelegatedCred;

/// How the client authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthScheme {
    Ntlm,
    /// NTLMSSP carried in a `Negotiate` header (SPNEGO or raw).
    NegotiateNtlm,
    /// Kerberos through SPNEGO.
    NegotiateKerberos,
    Basic,
}

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Ntlm => "ntlm",
            AuthScheme::NegotiateNtlm => "negotiate-ntlm",
            AuthScheme::NegotiateKerberos => "negotiate-kerberos",
            AuthScheme::Basic => "basic",
        }
    }

    /// Schemes that authenticate the TCP connection rather than each request.
    pub fn is_connection_bound(self) -> bool {
        !matches!(self, AuthScheme::Basic)
    }
}

struct Inner {
    scheme: AuthScheme,
    /// The name as the client presented it (`EXAMPLE\alice`, `alice@example.test`).
    user: String,
    /// The Kerberos principal delegation acts as (`alice@EXAMPLE.TEST`). Shared: backend pool
    /// keys hold it too, without a copy per request.
    principal: Rc<str>,
    /// Kerberos clients: their own ticket, kept by the acceptor as S4U2Proxy evidence.
    evidence: Option<DelegatedCred>,
}

/// An authenticated user: cheap to clone, per core. Two identities are equal when scheme,
/// name and principal are (the evidence ticket is how, not who).
#[derive(Clone)]
pub struct Identity(Rc<Inner>);

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.scheme == b.scheme && a.user == b.user && a.principal == b.principal
    }
}

impl Eq for Identity {}

impl Identity {
    /// Only the auth module mints identities.
    pub(in crate::auth) fn new(scheme: AuthScheme, user: String, principal: String) -> Self {
        Identity(Rc::new(Inner {
            scheme,
            user,
            principal: principal.into(),
            evidence: None,
        }))
    }

    /// A Kerberos client's identity, with its evidence ticket for S4U2Proxy (if the acceptor
    /// kept one).
    pub(in crate::auth) fn kerberos(principal: String, evidence: Option<DelegatedCred>) -> Self {
        Identity(Rc::new(Inner {
            scheme: AuthScheme::NegotiateKerberos,
            principal: Rc::from(principal.as_str()),
            user: principal,
            evidence,
        }))
    }

    /// The client's own ticket as S4U2Proxy evidence (Kerberos clients only; MS-SFU 3.1.5.2).
    pub fn evidence(&self) -> Option<&DelegatedCred> {
        self.0.evidence.as_ref()
    }

    pub fn scheme(&self) -> AuthScheme {
        self.0.scheme
    }

    pub fn user(&self) -> &str {
        &self.0.user
    }

    pub fn principal(&self) -> &str {
        &self.0.principal
    }

    /// The principal as a shared string (a pool key takes it without copying).
    pub fn principal_rc(&self) -> Rc<str> {
        Rc::clone(&self.0.principal)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identity({} as {} via {})",
            self.0.user,
            self.0.principal,
            self.0.scheme.as_str()
        )
    }
}

/// Maps a name as authenticated (`DOMAIN\user`, `user@dns.domain`, bare `user`) to a Kerberos
/// principal `user@REALM`: NetBIOS domains through the configured domain→realm map, UPN
/// suffixes upper-cased (AD realms are the upper-cased DNS domain), bare names into the
/// default realm.
#[derive(Clone, Debug, Default)]
pub struct IdentityMap {
    /// (NetBIOS domain upper-case, realm)
    pub domains: Vec<(String, String)>,
    pub default_realm: Option<String>,
}

impl IdentityMap {
    pub fn principal(&self, user: &str, domain: &str) -> Option<String> {
        if let Some((name, suffix)) = user.rsplit_once('@') {
            if !name.is_empty() && !suffix.is_empty() {
                return Some(format!("{name}@{}", suffix.to_ascii_uppercase()));
            }
        }
        let realm = if domain.is_empty() {
            self.default_realm.clone()?
        } else {
            match self
                .domains
                .iter()
                .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            {
                Some((_, r)) => r.clone(),
                // A dotted domain is a DNS domain: its realm is its upper-case form.
                None if domain.contains('.') => domain.to_ascii_uppercase(),
                None => self.default_realm.clone()?,
            }
        };
        Some(format!("{user}@{realm}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let m = IdentityMap {
            domains: vec![("EXAMPLE".into(), "EXAMPLE.TEST".into())],
            default_realm: Some("EXAMPLE.TEST".into()),
        };
        assert_eq!(
            m.principal("alice", "EXAMPLE").as_deref(),
            Some("alice@EXAMPLE.TEST")
        );
        assert_eq!(
            m.principal("alice", "example").as_deref(),
            Some("alice@EXAMPLE.TEST")
        );
        assert_eq!(
            m.principal("alice", "").as_deref(),
            Some("alice@EXAMPLE.TEST")
        );
        assert_eq!(
            m.principal("alice@example.test", "").as_deref(),
            Some("alice@EXAMPLE.TEST")
        );
        assert_eq!(
            m.principal("bob", "corp.example.com").as_deref(),
            Some("bob@CORP.EXAMPLE.COM")
        );
        let none = IdentityMap::default();
        assert_eq!(none.principal("alice", ""), None);
    }
}
