//! The per-connection authentication state machine. Runs inline on the core: parsing,
//! challenge generation and local verification cost microseconds; only checks that may block
//! (a domain controller, a KDC) go to the bounded pool.
//!
//! ```text
//!              NEGOTIATE (NTLM or Negotiate-wrapped)         AUTHENTICATE, proof verified
//!  Anonymous ─────────────────────────────► NtlmChallenged ─────────────────► Authenticated(id)
//!      ▲  ▲                                   │  (state consumed: a challenge is used once)   │
//!      │  └───────────── proof fails ─────────┘                                                │
//!      └──────────── a new NEGOTIATE restarts the handshake on an authenticated connection ───┘
//! ```
//!
//! NTLM and Negotiate authenticate the *connection*: a later request without `Authorization`
//! keeps the identity; a new `Authorization` starts over (MS-N2HT). Basic authenticates each
//! request and never changes the connection's state.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use std::sync::Arc;

use super::identity::{AuthScheme, Identity, IdentityMap};
use super::kerberos::{self, KerberosError};
use super::ntlm::client::NtlmClient;
use super::ntlm::negotiate::{self, NtlmRoute, Wrapping};
use super::ntlm::{ChallengeState, FileTime, LocalBackend, NtlmAcceptor, NtlmError, NtlmVerified};
use super::services::{AuthServices, OffCore};
use crate::config::route::Offer;
use crate::config::BasicVerify;
use crate::error::{Error, ErrorKind};
use crate::gss::oid;
use crate::gss::spnego::{self, NegState};
use crate::http1::authz;

/// What the connection knows about its client.
#[derive(Default)]
pub enum ConnAuth {
    #[default]
    Anonymous,
    /// SPNEGO picked NTLM for a client that led with another mechanism; its NEGOTIATE comes
    /// next. Holds the client's MechTypeList, which the final mechListMIC signs.
    SpnegoNtlmSelected(Vec<u8>),
    /// A CHALLENGE was sent; the AUTHENTICATE must come on this connection.
    NtlmChallenged(Box<Challenged>),
    Authenticated(Identity),
}

pub struct Challenged {
    state: ChallengeState,
    /// `NTLM` or `Negotiate`: the answer goes back under the same header.
    via: Via,
    /// SPNEGO: the client's MechTypeList, which the final mechListMIC signs.
    mech_types_der: Option<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    Ntlm,
    NegotiateRaw,
    NegotiateSpnego,
}

/// Proxy-wide authentication settings and verifiers, one per core (the hash store is a
/// per-core copy; `services` is shared by all cores and does what may block).
pub struct AuthCtx {
    pub ntlm: Option<NtlmAcceptor>,
    pub local: Option<LocalBackend>,
    pub map: IdentityMap,
    pub basic_realm: String,
    /// Accept Basic on plain-HTTP listeners (the password would cross the network in clear).
    pub basic_over_http: bool,
    pub services: Arc<AuthServices>,
}

/// The auth phase's answer for one request.
pub enum Verdict {
    /// Forward the request; `identity` is `None` on anonymous routes. `headers` go on the
    /// response to the client (final Negotiate token, `Persistent-Auth`).
    Proceed {
        identity: Option<Identity>,
        headers: Vec<(&'static str, Vec<u8>)>,
    },
    /// Answer 401 with these `WWW-Authenticate` values; the connection stays open.
    Challenge {
        www_authenticate: Vec<Vec<u8>>,
        error: Error,
    },
    /// Nothing was decided about the client: the KDC or DC cannot answer now (503 with
    /// `Retry-After`), or our own configuration is broken (500). Never a 401: a client told
    /// its credentials failed would prompt the user for a password that was right.
    Fail(Error),
}

fn challenge(
    www: Vec<Vec<u8>>,
    kind: ErrorKind,
    why: impl Into<std::borrow::Cow<'static, str>>,
) -> Verdict {
    Verdict::Challenge {
        www_authenticate: www,
        error: Error::new(kind, why),
    }
}

impl AuthCtx {
    /// The first-round challenges for `offers`, one header value each, no token data.
    pub fn initial_challenges(&self, offers: &[Offer], tls: bool) -> Vec<Vec<u8>> {
        offers
            .iter()
            .filter_map(|o| match o {
                Offer::Negotiate => Some(b"Negotiate".to_vec()),
                Offer::Ntlm => Some(b"NTLM".to_vec()),
                Offer::Basic if tls || self.basic_over_http => Some(
                    format!("Basic realm=\"{}\", charset=\"UTF-8\"", self.basic_realm).into_bytes(),
                ),
                Offer::Basic => None,
            })
            .collect()
    }

    /// A 401 with the route's first-round challenges: whatever the client sent, it starts over.
    fn retry(
        &self,
        offers: &[Offer],
        tls: bool,
        why: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Verdict {
        self.retry_with(offers, tls, Error::new(ErrorKind::Unauthenticated, why))
    }

    /// [`retry`](Self::retry) with an error of the caller's kind (an NTLM failure's own).
    fn retry_with(&self, offers: &[Offer], tls: bool, error: Error) -> Verdict {
        Verdict::Challenge {
            www_authenticate: self.initial_challenges(offers, tls),
            error,
        }
    }

    /// Runs the auth phase for one request. `authorization` is the request's header value.
    /// Inline on the core except for checks that may block (Kerberos accept, winbind, Basic
    /// against the KDC), which are awaited on the KDC pool.
    pub async fn authenticate(
        &self,
        conn: &mut ConnAuth,
        offers: &[Offer],
        authorization: Option<&[u8]>,
        tls: bool,
    ) -> Verdict {
        if offers.is_empty() {
            return Verdict::Proceed {
                identity: None,
                headers: Vec::new(),
            };
        }
        // A route that offers only Basic, reached over plain HTTP: there is no scheme to
        // offer, and a 401 without WWW-Authenticate is not HTTP (RFC 9110 §15.5.2). 403, and
        // the log says why.
        if offers.iter().all(|o| *o == Offer::Basic) && !(tls || self.basic_over_http) {
            return Verdict::Fail(Error::new(
                ErrorKind::Forbidden,
                "basic_needs_tls: the route offers only Basic, which is refused over plain \
                 HTTP (--basic-over-http allows it)",
            ));
        }
        let retry = |why: &'static str| self.retry(offers, tls, why);
        let Some(auth) = authorization else {
            if let ConnAuth::Authenticated(id) = conn {
                if id.scheme().is_connection_bound() && offers_scheme(offers, id.scheme()) {
                    return Verdict::Proceed {
                        identity: Some(id.clone()),
                        headers: Vec::new(),
                    };
                }
            }
            return retry("no credentials");
        };
        let authz::Credentials { scheme, token, .. } = authz::split(auth);
        if scheme == authz::Scheme::Ntlm && offers.contains(&Offer::Ntlm) {
            let Some(raw) = decode_b64(token) else {
                *conn = ConnAuth::Anonymous;
                return retry("NTLM token is not base64");
            };
            return self
                .ntlm_step(conn, offers, tls, &raw, Via::Ntlm, None, None)
                .await;
        }
        if scheme == authz::Scheme::Negotiate && offers.contains(&Offer::Negotiate) {
            let Some(raw) = decode_b64(token) else {
                *conn = ConnAuth::Anonymous;
                return retry("Negotiate token is not base64");
            };
            return self.negotiate_step(conn, offers, tls, &raw).await;
        }
        if scheme == authz::Scheme::Basic && offers.contains(&Offer::Basic) {
            if !(tls || self.basic_over_http) {
                return retry("Basic refused on a plain-HTTP listener");
            }
            return self.basic(offers, tls, token).await;
        }
        *conn = ConnAuth::Anonymous;
        retry("authorization scheme not offered on this route")
    }

    async fn negotiate_step(
        &self,
        conn: &mut ConnAuth,
        offers: &[Offer],
        tls: bool,
        raw: &[u8],
    ) -> Verdict {
        let retry = |why: &'static str| self.retry(offers, tls, why);
        // Kerberos first: a SPNEGO token that leads with Kerberos and also lists NTLM is a
        // Kerberos login when we can accept one (asking it to switch would downgrade it).
        if self.services.has_kerberos() {
            match kerberos::parse_token(raw) {
                Ok(_) => return self.kerberos_step(conn, offers, tls, raw.to_vec()).await,
                Err(KerberosError::NotKerberos) => {}
                Err(e) => {
                    *conn = ConnAuth::Anonymous;
                    return self.retry(offers, tls, e.as_str());
                }
            }
        }
        let route = match negotiate::route_ntlm(raw) {
            Ok(r) => r,
            Err(e) => {
                *conn = ConnAuth::Anonymous;
                return self.retry(offers, tls, e.to_string());
            }
        };
        // NTLM inside Negotiate is accepted only where the route allows NTLM; otherwise the
        // client is told the remaining schemes (a 401, never a 403: RFC 9110 §15.5.2, RFC 4559).
        let ntlm_ok = offers.contains(&Offer::Ntlm) && self.ntlm.is_some();
        match route {
            NtlmRoute::Message { ntlm, wrapping } if ntlm_ok => {
                let via = match wrapping {
                    Wrapping::Raw => Via::NegotiateRaw,
                    Wrapping::Spnego => Via::NegotiateSpnego,
                };
                let (mech_types, client_mic) = match spnego::parse_negotiate_token(raw) {
                    Ok(spnego::NegotiateToken::Init(init)) => {
                        (Some(init.mech_types_der().to_vec()), None)
                    }
                    Ok(spnego::NegotiateToken::Resp(resp)) => (None, resp.mech_list_mic),
                    _ => (None, None),
                };
                self.ntlm_step(conn, offers, tls, ntlm, via, mech_types, client_mic)
                    .await
            }
            NtlmRoute::NtlmOffered if ntlm_ok => {
                // The client lists NTLM but led with another mechanism's token: ask it to
                // continue with NTLM (RFC 4178 §3.2 mechanism selection).
                let init_types = match spnego::parse_negotiate_token(raw) {
                    Ok(spnego::NegotiateToken::Init(init)) => Some(init.mech_types_der().to_vec()),
                    _ => None,
                };
                let token = spnego::build_neg_token_resp(
                    NegState::AcceptIncomplete,
                    Some(oid::NTLM),
                    None,
                    None,
                );
                // Remember the mech list for the MIC; the NEGOTIATE comes next.
                *conn = match init_types {
                    Some(t) => ConnAuth::SpnegoNtlmSelected(t),
                    None => ConnAuth::Anonymous,
                };
                challenge(
                    vec![neg_header(&token)],
                    ErrorKind::Unauthenticated,
                    "SPNEGO: continue with NTLM",
                )
            }
            NtlmRoute::Message { .. } | NtlmRoute::NtlmOffered => {
                *conn = ConnAuth::Anonymous;
                retry("NTLM inside Negotiate is not allowed on this route")
            }
            NtlmRoute::NotNtlm => {
                *conn = ConnAuth::Anonymous;
                retry("Kerberos is not configured on this proxy (no --keytab)")
            }
        }
    }

    /// One Kerberos round: the AP-REQ is accepted on the pool (keytab, replay cache shared by
    /// all cores; the token moves into the pool job); success authenticates the connection and
    /// answers with the AP-REP.
    async fn kerberos_step(
        &self,
        conn: &mut ConnAuth,
        offers: &[Offer],
        tls: bool,
        token: Vec<u8>,
    ) -> Verdict {
        // Whatever happens, a new Authorization restarts authentication (MS-N2HT).
        *conn = ConnAuth::Anonymous;
        let mut accepted = match self.services.kerberos_accept(token).await {
            Ok(a) => a,
            Err(OffCore::Unavailable(why)) => {
                return Verdict::Fail(Error::new(ErrorKind::KdcUnavailable, why))
            }
            Err(OffCore::Refused(e)) if e.error_kind() == ErrorKind::Unauthenticated => {
                return self.retry(offers, tls, e.as_str())
            }
            Err(OffCore::Refused(e)) => return Verdict::Fail(e.into()),
        };
        let mut headers: Vec<(&'static str, Vec<u8>)> = vec![("Persistent-Auth", b"true".to_vec())];
        if let Some(token) = accepted.take_response_token() {
            headers.push(("WWW-Authenticate", neg_header(&token)));
        }
        let id = Identity::kerberos(accepted.principal().to_string(), accepted.take_delegated());
        *conn = ConnAuth::Authenticated(id.clone());
        Verdict::Proceed {
            identity: Some(id),
            headers,
        }
    }

    #[allow(clippy::too_many_arguments)] // Reason: one step of a handshake, all its inputs named.
    async fn ntlm_step(
        &self,
        conn: &mut ConnAuth,
        offers: &[Offer],
        tls: bool,
        msg: &[u8],
        via: Via,
        mech_types_der: Option<Vec<u8>>,
        client_mech_list_mic: Option<&[u8]>,
    ) -> Verdict {
        let retry = |e: Error| self.retry_with(offers, tls, e);
        let Some(acceptor) = &self.ntlm else {
            *conn = ConnAuth::Anonymous;
            return retry(Error::new(
                ErrorKind::Unauthenticated,
                "NTLM is not configured (no --ntlm-hash-file)",
            ));
        };
        match msg.get(8) {
            // NEGOTIATE: always answered with a challenge, never forwarded — also on an
            // authenticated connection (WinINET's zero-length POST that expects a 401: MS-NTHT; IEInternals, "Challenge-Response Authentication and Zero-Length Posts").
            Some(1) => match acceptor.challenge(msg, FileTime::now()) {
                Ok(state) => {
                    let mech_types_der = match (mech_types_der, std::mem::take(conn)) {
                        (Some(t), _) => Some(t),
                        (None, ConnAuth::SpnegoNtlmSelected(t)) if via == Via::NegotiateSpnego => {
                            Some(t)
                        }
                        _ => None,
                    };
                    let token = match via {
                        Via::NegotiateSpnego => spnego::build_neg_token_resp(
                            NegState::AcceptIncomplete,
                            Some(oid::NTLM),
                            Some(state.message()),
                            None,
                        ),
                        _ => state.message().to_vec(),
                    };
                    let header = match via {
                        Via::Ntlm => authz::join("NTLM", &token),
                        _ => neg_header(&token),
                    };
                    *conn = ConnAuth::NtlmChallenged(Box::new(Challenged {
                        state,
                        via,
                        mech_types_der,
                    }));
                    Verdict::Challenge {
                        www_authenticate: vec![header],
                        error: Error::new(ErrorKind::Unauthenticated, "ntlm_challenge_sent"),
                    }
                }
                Err(e) => {
                    *conn = ConnAuth::Anonymous;
                    retry(e.into())
                }
            },
            Some(3) => {
                let ConnAuth::NtlmChallenged(ch) = std::mem::take(conn) else {
                    return retry(Error::new(
                        ErrorKind::Unauthenticated,
                        "NTLM AUTHENTICATE without a challenge on this connection",
                    ));
                };
                let Challenged {
                    state,
                    via: ch_via,
                    mech_types_der,
                } = *ch;
                if (ch_via == Via::Ntlm) != (via == Via::Ntlm) {
                    return retry(Error::new(
                        ErrorKind::Unauthenticated,
                        "NTLM handshake switched header scheme",
                    ));
                }
                let verified = match self.ntlm_verify(acceptor, state, msg).await {
                    Ok(v) => v,
                    Err(OffCore::Refused(e)) => return retry(ntlm_error(e)),
                    Err(OffCore::Unavailable(why)) => {
                        return Verdict::Fail(Error::new(ErrorKind::KdcUnavailable, why))
                    }
                };
                let Some(principal) = self.map.principal(verified.user(), verified.domain()) else {
                    return retry(Error::new(
                        ErrorKind::Unauthenticated,
                        "no realm for the user's domain (--realm)",
                    ));
                };
                let user = if verified.domain().is_empty() {
                    verified.user().to_string()
                } else {
                    format!("{}\\{}", verified.domain(), verified.user())
                };
                let scheme = if via == Via::Ntlm {
                    AuthScheme::Ntlm
                } else {
                    AuthScheme::NegotiateNtlm
                };
                let mut headers: Vec<(&'static str, Vec<u8>)> =
                    vec![("Persistent-Auth", b"true".to_vec())];
                if via == Via::NegotiateSpnego {
                    let mic = match &mech_types_der {
                        Some(types) => {
                            match negotiate::ntlm_mech_list_mic(
                                &verified,
                                types,
                                client_mech_list_mic,
                            ) {
                                Ok(m) => Some(m),
                                Err(e) => return retry(ntlm_error(e)),
                            }
                        }
                        None => None,
                    };
                    let token = spnego::build_neg_token_resp(
                        NegState::AcceptCompleted,
                        None,
                        None,
                        mic.as_ref().map(|m| &m[..]),
                    );
                    headers.push(("WWW-Authenticate", neg_header(&token)));
                }
                let id = Identity::new(scheme, user, principal);
                *conn = ConnAuth::Authenticated(id.clone());
                Verdict::Proceed {
                    identity: Some(id),
                    headers,
                }
            }
            _ => {
                *conn = ConnAuth::Anonymous;
                retry(Error::new(
                    ErrorKind::Unauthenticated,
                    "NTLM message is neither NEGOTIATE nor AUTHENTICATE",
                ))
            }
        }
    }

    /// Verifies an AUTHENTICATE: against the local hash file inline when it knows the user,
    /// else through winbind on the pool.
    async fn ntlm_verify(
        &self,
        acceptor: &NtlmAcceptor,
        state: ChallengeState,
        msg: &[u8],
    ) -> Result<NtlmVerified, OffCore<NtlmError>> {
        let pending = acceptor
            .accept(state, msg, FileTime::now())
            .map_err(OffCore::Refused)?;
        let local = self
            .local
            .as_ref()
            .filter(|l| l.store().lookup(pending.user(), pending.domain()).is_some());
        match (local, self.services.has_winbind()) {
            (None, true) => self.services.winbind_finish(pending).await,
            // The hash file knows the user, or there is nothing else to ask (then the local
            // back end answers "unknown user").
            (local, _) => match local.or(self.local.as_ref()) {
                Some(local) => {
                    let verdict = super::ntlm::NtlmBackend::verify(local, &pending.request());
                    pending.finish(verdict).map_err(OffCore::Refused)
                }
                None => Err(OffCore::Refused(NtlmError::BackendUnavailable(
                    "no NTLM verification back end",
                ))),
            },
        }
    }

    async fn basic(&self, offers: &[Offer], tls: bool, token: &[u8]) -> Verdict {
        let retry = |why: &'static str| self.retry(offers, tls, why);
        let Some(raw) = decode_b64(token) else {
            return retry("Basic credentials are not base64");
        };
        let Ok(text) = std::str::from_utf8(&raw) else {
            return retry("Basic credentials are not UTF-8");
        };
        let Some((login, password)) = text.split_once(':') else {
            return retry("Basic credentials without ':'");
        };
        if login.is_empty() || password.is_empty() {
            return retry("Basic credentials with an empty user or password");
        }
        let (domain, user) = match login.split_once('\\') {
            Some((d, u)) => (d, u),
            None => ("", login),
        };
        let Some(principal) = self.map.principal(user, domain) else {
            return retry("no realm for the user's domain (--realm)");
        };
        let proceed = |principal: String| Verdict::Proceed {
            identity: Some(Identity::new(
                AuthScheme::Basic,
                login.to_string(),
                principal,
            )),
            headers: Vec::new(),
        };
        let how = self.services.basic_verify();
        if how == BasicVerify::Local {
            let Some(store) = self.local.as_ref().map(LocalBackend::store) else {
                return retry("Basic is not configured (no --ntlm-hash-file)");
            };
            if !store
                .lookup(user, domain)
                .is_some_and(|e| e.matches_password(password))
            {
                return retry("basic_wrong_password");
            }
            return proceed(principal);
        }
        // Winbind and the KDC cost a pool round trip and a DC/KDC exchange: remember success.
        let cache = self.services.basic_cache();
        if let Some(hit) = cache.get(login, password) {
            return proceed(hit.principal);
        }
        let checked = match how {
            BasicVerify::Winbind => self.basic_winbind(user, domain, password).await,
            _ => {
                match self
                    .services
                    .basic_kdc(principal.clone(), password.to_string())
                    .await
                {
                    Ok(p) => Ok(p),
                    Err(OffCore::Refused(e)) if e.error_kind() == ErrorKind::Unauthenticated => {
                        Err(OffCore::Refused(Error::new(
                            ErrorKind::Unauthenticated,
                            e.as_str(),
                        )))
                    }
                    Err(OffCore::Refused(e)) => Err(OffCore::Refused(e.into())),
                    Err(OffCore::Unavailable(why)) => Err(OffCore::Unavailable(why)),
                }
            }
        };
        match checked {
            Ok(p) => {
                cache.put(login, password, &p);
                proceed(p)
            }
            Err(OffCore::Refused(e)) if e.kind == ErrorKind::Unauthenticated => {
                self.retry_with(offers, tls, e)
            }
            Err(OffCore::Refused(e)) => Verdict::Fail(e),
            Err(OffCore::Unavailable(why)) => {
                Verdict::Fail(Error::new(ErrorKind::KdcUnavailable, why))
            }
        }
    }

    /// Basic through winbind: winbind checks challenge/response pairs, not passwords, so the
    /// proxy plays both sides of an NTLMv2 exchange (our challenge, a response computed from
    /// the password) and lets the DC judge the response, then checks the MIC itself.
    async fn basic_winbind(
        &self,
        user: &str,
        domain: &str,
        password: &str,
    ) -> Result<String, OffCore<Error>> {
        let refused = |e: NtlmError| {
            // Say "basic" in the log: the user typed a password, no NTLM client was involved.
            let why = match e {
                NtlmError::WrongPassword => "basic_wrong_password",
                NtlmError::UnknownUser => "basic_unknown_user",
                NtlmError::AccountDisabled => "basic_account_disabled",
                _ => return OffCore::Refused(ntlm_error(e)),
            };
            OffCore::Refused(Error::new(e.error_kind(), why))
        };
        let Some(acceptor) = &self.ntlm else {
            return Err(refused(NtlmError::BackendUnavailable("no NTLM acceptor")));
        };
        let client = NtlmClient::new(user, domain, password);
        let negotiate = client.negotiate();
        let state = acceptor
            .challenge(&negotiate, FileTime::now())
            .map_err(refused)?;
        let auth = client
            .authenticate(&negotiate, state.message())
            .map_err(|why| refused(NtlmError::Malformed(why)))?;
        let pending = acceptor
            .accept(state, &auth.message, FileTime::now())
            .map_err(refused)?;
        let verified = match self.services.winbind_finish(pending).await {
            Ok(v) => v,
            Err(OffCore::Refused(e)) => return Err(refused(e)),
            Err(OffCore::Unavailable(why)) => return Err(OffCore::Unavailable(why)),
        };
        self.map
            .principal(verified.user(), verified.domain())
            .ok_or_else(|| {
                OffCore::Refused(Error::new(
                    ErrorKind::Unauthenticated,
                    "no realm for the user's domain (--realm)",
                ))
            })
    }
}

fn ntlm_error(e: NtlmError) -> Error {
    Error::new(e.error_kind(), e.as_str())
}

fn offers_scheme(offers: &[Offer], s: AuthScheme) -> bool {
    match s {
        AuthScheme::Ntlm => offers.contains(&Offer::Ntlm),
        AuthScheme::NegotiateNtlm | AuthScheme::NegotiateKerberos => {
            offers.contains(&Offer::Negotiate)
        }
        AuthScheme::Basic => offers.contains(&Offer::Basic),
    }
}

/// Largest base64 token accepted: Kerberos tickets with large PACs exceed 8 KB (RFC 4559;
/// MS-PAC: a PAC grows with group membership); the head limit bounds it anyway.
const MAX_TOKEN: usize = 64 * 1024;

fn decode_b64(token: &[u8]) -> Option<Vec<u8>> {
    if token.is_empty() || token.len() > MAX_TOKEN {
        return None;
    }
    B64.decode(token).ok()
}

fn neg_header(token: &[u8]) -> Vec<u8> {
    authz::join("Negotiate", token)
}
