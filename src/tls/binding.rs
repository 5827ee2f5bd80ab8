//! RFC 5929 `tls-server-end-point` channel bindings: what Exchange's Extended Protection
//! checks in the Kerberos AP-REQ of a client that reached it over TLS (RFC 5929 §4; Exchange Extended Protection).
//!
//! The binding is the hash of the server's end-entity certificate, with the hash of the
//! certificate's own signature algorithm — except that MD5 and SHA-1 become SHA-256
//! (RFC 5929 §4.1). Only the outer `signatureAlgorithm` is read, with a bounded DER walk.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// `tls-server-end-point:` followed by the certificate hash (the GSS application data).
pub fn server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let hash = match signature_hash(cert_der)? {
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
    };
    let mut out = b"tls-server-end-point:".to_vec();
    out.extend_from_slice(&hash);
    Some(out)
}

#[derive(Debug, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

/// One DER TLV at the start of `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The hash named by `Certificate.signatureAlgorithm`; unknown algorithms (and MD5, SHA-1,
/// SHA-256, Ed25519) bind with SHA-256.
fn signature_hash(cert: &[u8]) -> Option<Hash> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, certificate, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = tlv(certificate)?;
    let (tag, alg, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = tlv(alg)?;
    if tag != OID {
        return None;
    }
    Some(match oid {
        // sha384WithRSAEncryption 1.2.840.113549.1.1.12, ecdsa-with-SHA384 1.2.840.10045.4.3.3
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03] => Hash::Sha384,
        // sha512WithRSAEncryption 1.2.840.113549.1.1.13, ecdsa-with-SHA512 1.2.840.10045.4.3.4
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d]
        | [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04] => Hash::Sha512,
        _ => Hash::Sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with_alg(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut alg_seq = vec![0x30, alg.len() as u8];
        alg_seq.extend_from_slice(&alg);
        let mut body = tbs.to_vec();
        body.extend_from_slice(&alg_seq);
        body.extend_from_slice(&[0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend_from_slice(&body);
        cert
    }

    #[test]
    fn hash_follows_the_signature_algorithm() {
        let ecdsa256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        let ecdsa384 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let rsa512 = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
        let sha1rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
        assert_eq!(
            signature_hash(&cert_with_alg(&ecdsa256)),
            Some(Hash::Sha256)
        );
        assert_eq!(
            signature_hash(&cert_with_alg(&ecdsa384)),
            Some(Hash::Sha384)
        );
        assert_eq!(signature_hash(&cert_with_alg(&rsa512)), Some(Hash::Sha512));
        assert_eq!(signature_hash(&cert_with_alg(&sha1rsa)), Some(Hash::Sha256));
        let c = cert_with_alg(&ecdsa384);
        let b = server_end_point(&c).unwrap();
        assert!(b.starts_with(b"tls-server-end-point:"));
        assert_eq!(b.len(), 21 + 48);
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..64 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = server_end_point(&junk);
        }
        assert_eq!(signature_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let mut c = cert_with_alg(&[0x2a]);
        c.truncate(c.len() - 5);
        assert_eq!(signature_hash(&c), None);
    }
}
