//! Choosing the server certificate by SNI.
//!
//! The DNS names of each certificate are read once, when the config is built, into two maps:
//! exact names, and wildcard parents (`*.example.com` is stored as `example.com`). A handshake
//! then costs one or two hash lookups. An exact name wins over a wildcard; among equals the
//! pair listed first wins; no SNI, or a name no certificate covers, gets the first pair (the
//! client then decides whether to trust it, as with any default certificate).
//!
//! Wildcards follow RFC 6125 as browsers do: `*` is a whole left-most label and matches exactly
//! one label, so `*.example.com` covers `a.example.com` but neither `example.com` nor
//! `a.b.example.com`. Partial wildcards (`w*.example.com`) are ignored.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub(super) struct SniResolver {
    /// INVARIANT: every index in the maps is in range. Not empty in practice; if it were,
    /// handshakes would fail (no certificate), not panic.
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl SniResolver {
    /// Indexes the certificates' DNS names. `keys` must not be empty (the first is the
    /// default); `server_config` guarantees it.
    pub(super) fn new(keys: Vec<CertifiedKey>) -> Self {
        let mut resolver = SniResolver {
            keys: Vec::with_capacity(keys.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, ck) in keys.into_iter().enumerate() {
            for name in leaf_dns_names(&ck) {
                let name = normalise(&name);
                if let Some(parent) = name.strip_prefix("*.") {
                    resolver.wildcard.entry(parent.to_owned()).or_insert(i);
                } else if !name.contains('*') {
                    resolver.exact.entry(name).or_insert(i);
                }
            }
            resolver.keys.push(Arc::new(ck));
        }
        resolver
    }

    /// The index of the certificate for `sni`, if one covers it.
    pub(super) fn lookup(&self, sni: &str) -> Option<usize> {
        let sni = normalise(sni);
        if let Some(&i) = self.exact.get(&sni) {
            return Some(i);
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = match (self.keys.len(), hello.server_name()) {
            (1, _) | (_, None) => 0,
            (_, Some(name)) => self.lookup(name).unwrap_or(0),
        };
        self.keys.get(i).cloned()
    }
}

/// DNS names compare case-insensitively, and a trailing dot names the same host.
fn normalise(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// The DNS names of a chain's end-entity certificate.
pub(super) fn leaf_dns_names(ck: &CertifiedKey) -> Vec<String> {
    ck.cert.first().map(|c| dns_names(c)).unwrap_or_default()
}

/// The dNSName entries of a certificate's subjectAltName extension. Malformed or unusual
/// encodings give fewer names, never a panic (the certificate was already parsed by webpki when
/// its key was checked, so in practice the DER is well formed).
pub(super) fn dns_names(cert_der: &[u8]) -> Vec<String> {
    san_dns_names(cert_der).unwrap_or_default()
}

fn san_dns_names(cert_der: &[u8]) -> Option<Vec<String>> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { ..., [3] EXPLICIT Extensions }, ... }
    const SEQUENCE: u8 = 0x30;
    const EXTENSIONS: u8 = 0xa3;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const DNS_NAME: u8 = 0x82; // GeneralName [2] IMPLICIT IA5String
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17

    let cert = Der(cert_der).expect(SEQUENCE)?;
    let mut tbs = Der(Der(cert).expect(SEQUENCE)?);
    // The fields before the extensions are skipped whole: only their lengths matter.
    let extensions = loop {
        let (tag, body) = tbs.next()?;
        if tag == EXTENSIONS {
            break body;
        }
    };
    let mut extensions = Der(Der(extensions).expect(SEQUENCE)?);
    while let Some(ext) = extensions.expect(SEQUENCE) {
        let mut ext = Der(ext);
        if ext.expect(OID)? != SUBJECT_ALT_NAME {
            continue;
        }
        let (mut tag, mut value) = ext.next()?;
        if tag == BOOLEAN {
            (tag, value) = ext.next()?;
        }
        if tag != OCTET_STRING {
            return None;
        }
        let mut general_names = Der(Der(value).expect(SEQUENCE)?);
        let mut names = Vec::new();
        while let Some((tag, value)) = general_names.next() {
            if tag == DNS_NAME {
                if let Ok(name) = std::str::from_utf8(value) {
                    names.push(name.to_owned());
                }
            }
        }
        return Some(names);
    }
    Some(Vec::new())
}

/// A DER reader that cannot panic: every access is bounds-checked and malformed input ends the
/// walk with `None`. Only single-byte tags, which is all X.509 uses.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element as (tag, contents).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form: the low bits count the length bytes. 0 would be BER's indefinite
            // length, which DER forbids; more than 4 would describe a >4 GiB element.
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return None;
            }
            let (bytes, after) = rest.split_at_checked(count)?;
            rest = after;
            bytes
                .iter()
                .fold(0usize, |len, &b| (len << 8) | usize::from(b))
        };
        let (body, after) = rest.split_at_checked(len)?;
        self.0 = after;
        Some((tag, body))
    }

    /// The contents of the next element if it has tag `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, body) if t == tag => Some(body),
            _ => None,
        }
    }
}
