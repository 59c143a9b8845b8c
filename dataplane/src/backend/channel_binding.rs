//! `tls-server-end-point` channel binding data (RFC 5929 §4.1) for SCRAM-SHA-256-PLUS.
//!
//! The binding is a hash of the server's end-entity certificate, using the hash of the
//! certificate's signature algorithm, except that MD5 and SHA-1 are replaced by SHA-256. The
//! server computes the same (`be_tls_get_certificate_hash`), so the hash must match its choice
//! or authentication fails. We read the signature algorithm OID with a minimal DER walk and fall
//! back to SHA-256 for anything unrecognised (RSA-PSS, whose hash sits in parameters, is the
//! known gap; Ed25519 certificates have no binding hash and the server refuses -PLUS with them).

use sha2::{Digest, Sha256, Sha384, Sha512};

/// DER contents of the signature-algorithm OIDs that select a hash other than SHA-256.
const SHA384_OIDS: [&[u8]; 2] = [
    // sha384WithRSAEncryption 1.2.840.113549.1.1.12
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
    // ecdsa-with-SHA384 1.2.840.10045.4.3.3
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
];
const SHA512_OIDS: [&[u8]; 2] = [
    // sha512WithRSAEncryption 1.2.840.113549.1.1.13
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    // ecdsa-with-SHA512 1.2.840.10045.4.3.4
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04],
];

/// The channel-binding hash of a DER certificate.
pub fn tls_server_end_point(cert_der: &[u8]) -> Vec<u8> {
    let oid = signature_algorithm_oid(cert_der);
    match oid {
        Some(o) if SHA384_OIDS.contains(&o) => Sha384::digest(cert_der).to_vec(),
        Some(o) if SHA512_OIDS.contains(&o) => Sha512::digest(cert_der).to_vec(),
        _ => Sha256::digest(cert_der).to_vec(),
    }
}

/// Reads one DER TLV at the start of `der`: (tag, contents, rest).
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = rest.get(..n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest.get(n..)?)
    };
    let contents = rest.get(..len)?;
    Some((tag, contents, rest.get(len..)?))
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, … }, … }
fn signature_algorithm_oid(cert_der: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (tag, cert, _) = tlv(cert_der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (_, _tbs, rest) = tlv(cert)?;
    let (tag, alg, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = tlv(alg)?;
    (tag == OID).then_some(oid)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_signature_algorithm() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&p256)
            .unwrap();
        assert_eq!(
            tls_server_end_point(c.der()),
            Sha256::digest(c.der()).to_vec()
        );
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let c = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&p384)
            .unwrap();
        assert_eq!(
            tls_server_end_point(c.der()),
            Sha384::digest(c.der()).to_vec()
        );
        // Garbage falls back to SHA-256 rather than failing.
        assert_eq!(
            tls_server_end_point(b"\x30\x82"),
            Sha256::digest(b"\x30\x82").to_vec()
        );
    }
}
