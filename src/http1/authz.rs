//! `Authorization` and `WWW-Authenticate` values: `scheme [token]` (RFC 9110 §11.4; the
//! `Negotiate` token of RFC 4559 §4 and the `NTLM` one of MS-NTHT are single base64 tokens).
//!
//! The one place that splits such a value: the client's `Authorization` (auth), the backend's
//! `WWW-Authenticate` on a 401 or with the AP-REP (proxy, delegation) all go through
//! [`split`], so a scheme is recognised the same way everywhere (case-insensitive, surrounding
//! whitespace ignored).

/// The schemes the proxy tells apart; anything else is [`Scheme::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Ntlm,
    Negotiate,
    Basic,
    Other,
}

impl Scheme {
    /// NTLM and Negotiate authenticate the TCP connection, not the request (MS-NTHT; RFC 4559
    /// §6): a connection that carried them is bound to one user.
    pub fn is_connection_bound(self) -> bool {
        matches!(self, Scheme::Ntlm | Scheme::Negotiate)
    }
}

/// A value split into its scheme and the rest (the token or parameters, trimmed; empty when the
/// value is the bare scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub scheme: Scheme,
    /// The scheme as written (for a log line about an unknown scheme).
    pub scheme_text: &'a [u8],
    pub token: &'a [u8],
}

/// Splits `value` at its first space. Never fails: an empty value is an `Other` scheme with an
/// empty token.
pub fn split(value: &[u8]) -> Credentials<'_> {
    let v = value.trim_ascii();
    let (scheme_text, token) = match v.iter().position(|&b| b == b' ') {
        Some(i) => (&v[..i], v[i + 1..].trim_ascii()),
        None => (v, &[][..]),
    };
    let scheme = if scheme_text.eq_ignore_ascii_case(b"NTLM") {
        Scheme::Ntlm
    } else if scheme_text.eq_ignore_ascii_case(b"Negotiate") {
        Scheme::Negotiate
    } else if scheme_text.eq_ignore_ascii_case(b"Basic") {
        Scheme::Basic
    } else {
        Scheme::Other
    };
    Credentials {
        scheme,
        scheme_text,
        token,
    }
}

/// `scheme <base64 token>`: the value of an `Authorization` or `WWW-Authenticate` header that
/// carries a binary token (NTLM, Negotiate), the inverse of [`split`] and a base64 decode.
pub fn join(scheme: &str, token: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64_len = base64::encoded_len(token.len(), true).unwrap_or(0);
    let mut v = Vec::with_capacity(scheme.len() + 1 + b64_len);
    v.extend_from_slice(scheme.as_bytes());
    v.push(b' ');
    let start = v.len();
    v.resize(start + b64_len, 0);
    // The length was computed for exactly this encoding, so the slice always fits.
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(token, &mut v[start..])
        .unwrap_or(0);
    v.truncate(start + n);
    v
}

/// Whether `value` uses a connection-bound scheme (NTLM or Negotiate).
pub fn is_connection_bound(value: &[u8]) -> bool {
    split(value).scheme.is_connection_bound()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_scheme_and_token() {
        let cases: &[(&[u8], Scheme, &[u8])] = &[
            (b"NTLM TlRMTVNTUAAB", Scheme::Ntlm, b"TlRMTVNTUAAB"),
            (b"negotiate  YIIB ", Scheme::Negotiate, b"YIIB"),
            (b"Negotiate", Scheme::Negotiate, b""),
            (b" Basic dXNlcjpwYXNz", Scheme::Basic, b"dXNlcjpwYXNz"),
            (b"Bearer abc", Scheme::Other, b"abc"),
            (b"NTLMX abc", Scheme::Other, b"abc"),
            (b"", Scheme::Other, b""),
            (b"   ", Scheme::Other, b""),
        ];
        for (value, scheme, token) in cases {
            let c = split(value);
            assert_eq!(c.scheme, *scheme, "{:?}", String::from_utf8_lossy(value));
            assert_eq!(c.token, *token, "{:?}", String::from_utf8_lossy(value));
        }
        assert_eq!(split(b"Bearer x").scheme_text, b"Bearer");
    }

    #[test]
    fn join_is_the_inverse_of_split() {
        assert_eq!(join("Negotiate", b"\x60\x82"), b"Negotiate YII=");
        assert_eq!(join("NTLM", b""), b"NTLM ");
        for token in [&b"abc"[..], b"abcd", b"\0\xff\x10"] {
            let v = join("NTLM", token);
            let c = split(&v);
            assert_eq!(c.scheme, Scheme::Ntlm);
            use base64::Engine as _;
            let back = base64::engine::general_purpose::STANDARD
                .decode(c.token)
                .unwrap();
            assert_eq!(back, token);
        }
    }

    #[test]
    fn connection_bound_schemes() {
        assert!(is_connection_bound(b"NTLM abc"));
        assert!(is_connection_bound(b"Negotiate"));
        assert!(!is_connection_bound(b"Basic abc"));
        assert!(!is_connection_bound(b"NTLMv2 abc"));
    }
}
