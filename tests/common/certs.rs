//! Test certificates, made once per test binary with the `openssl` CLI.
//!
//! Two independent CAs: `ca` signs the server certificates the tests trust; `rogue_ca` signs a
//! certificate with the same names that nothing trusts (for the negative TLS tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain file and its key file.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct Certs {
    /// The CA the tests trust (`curl --cacert`, `--backend-ca`).
    pub ca: PathBuf,
    /// `localhost` and IP 127.0.0.1, signed by `ca`.
    pub localhost: CertPair,
    /// `alt.test`, signed by `ca` (the second certificate for the SNI test).
    pub alt: CertPair,
    /// `localhost` and IP 127.0.0.1 again, but signed by a CA nobody trusts.
    pub rogue: CertPair,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run the openssl CLI (is it installed? scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-subj",
            &format!("/CN=kcdproxy test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_leaf(dir: &Path, ca: &str, name: &str, san: &str) -> CertPair {
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        format!(
            "subjectAltName={san}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .expect("write openssl extension file");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "3",
            "-extfile",
            &ext,
        ],
    );
    CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// The certificates of this test binary, made on first use.
pub fn certs() -> &'static Certs {
    static C: OnceLock<Certs> = OnceLock::new();
    C.get_or_init(|| {
        // Lives as long as the test binary. Directories of earlier runs whose process is gone
        // are removed here.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kcdproxy-itest");
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("certs-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create certs dir");
        make_ca(&dir, "ca");
        make_ca(&dir, "rogue-ca");
        let localhost = make_leaf(&dir, "ca", "localhost", "DNS:localhost,IP:127.0.0.1");
        let alt = make_leaf(&dir, "ca", "alt.test", "DNS:alt.test");
        let rogue = make_leaf(&dir, "rogue-ca", "rogue", "DNS:localhost,IP:127.0.0.1");
        Certs {
            ca: dir.join("ca.pem"),
            localhost,
            alt,
            rogue,
        }
    })
}

/// A rustls server configuration serving `pair` (used by the echo backend's TLS mode).
pub fn server_config(pair: &CertPair) -> Arc<rustls::ServerConfig> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .unwrap_or_else(|e| panic!("read {}: {e:?}", pair.cert.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e:?}", pair.cert.display()));
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .unwrap_or_else(|e| panic!("read key {}: {e:?}", pair.key.display()));
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("rustls protocol versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("rustls server certificate");
    Arc::new(cfg)
}
