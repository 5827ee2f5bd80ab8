//! rustls configurations from PEM files.
//!
//! Both builders read everything they are given before failing, so an operator fixes every
//! broken file in one go; each message names the file and what is wrong with it.
//!
//! Shared state: a [`ServerConfig`] is built once and shared by every worker thread, so its
//! session cache ([`ServerSessionMemoryCache`], a mutex-protected map) and its ticket key
//! rotator are the only TLS structures that cross cores. Both are touched once per handshake,
//! never per record.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ServerSessionMemoryCache;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::sni::{leaf_dns_names, SniResolver};
use super::ALPN_HTTP11;

/// TLS 1.2 sessions remembered for session-ID resumption (clients that do not take tickets).
/// An entry is a few hundred bytes.
const SESSION_CACHE_ENTRIES: usize = 4096;

/// Builds the server config from (cert chain PEM path, private key PEM path) pairs.
///
/// TLS 1.2 and 1.3, ALPN `http/1.1`, resumption by tickets (TLS 1.2 and 1.3) and by a server
/// session cache (TLS 1.2 session IDs). With several pairs the certificate is chosen by SNI:
/// an exact DNS subjectAltName first, then a `*.example.com` wildcard; no SNI or no match
/// gives the first pair. A chain file and a key file may be the same file.
///
/// Errors: one message per problem, for every pair, each naming its file.
pub fn server_config(pairs: &[(PathBuf, PathBuf)]) -> Result<Arc<ServerConfig>, Vec<String>> {
    if pairs.is_empty() {
        return Err(vec!["no TLS certificate configured".to_owned()]);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errors = Vec::new();
    let mut keys = Vec::with_capacity(pairs.len());
    for (i, (cert, key)) in pairs.iter().enumerate() {
        match load_pair(cert, key, &provider) {
            // Only the first pair is ever chosen without a name.
            Ok(ck) if i > 0 && leaf_dns_names(&ck).is_empty() => errors.push(format!(
                "certificate in {} has no DNS subjectAltName, so SNI can never select it",
                cert.display()
            )),
            Ok(ck) => keys.push(ck),
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let resolver = SniResolver::new(keys);

    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| vec![format!("TLS server configuration: {e}")])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| vec![format!("TLS session ticket keys: {e}")])?;
    Ok(Arc::new(cfg))
}

/// Client config for https backends: trusted roots are the CA certificates in `ca_file`
/// (`None` → an empty root store, so every backend certificate fails verification), ALPN
/// `http/1.1`, rustls' default in-memory resumption.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        for cert in load_certs(path, "CA file")? {
            roots
                .add(cert)
                .map_err(|e| format!("bad CA certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS client configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// Loads one chain + key pair and checks that the key belongs to the chain's first
/// certificate. Both files are read even if the first is broken, to report both.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, Vec<String>> {
    let (chain, key_der) = match (load_certs(cert, "certificate file"), load_key(key)) {
        (Ok(chain), Ok(key_der)) => (chain, key_der),
        (chain, key_der) => return Err(chain.err().into_iter().chain(key_der.err()).collect()),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| vec![format!("unusable private key in {}: {e}", key.display())])?;
    let ck = CertifiedKey::new(chain, signing_key);
    match ck.keys_match() {
        // `Unknown`: the key type cannot tell its public key; rustls itself accepts that.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(_)) => Err(vec![format!(
            "key does not match certificate: {} is not the private key of the first certificate in {}",
            key.display(),
            cert.display()
        )]),
        Err(e) => Err(vec![format!("bad certificate in {}: {e}", cert.display())]),
    }
}

/// All certificates in a PEM file, in order; at least one.
fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "no certificate in {} (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) in a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read_file(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "no private key in {} (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" block)",
            path.display()
        ),
        e => format!("bad PEM in private key file {}: {e}", path.display()),
    })
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}
