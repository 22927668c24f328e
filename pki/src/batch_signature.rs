//! Agents' batch signatures: an agent signs every batch it ships with its certificate's key
//! (ECDSA P-256, SHA-256, ASN.1 DER signature), and anyone holding the certificate checks it.
//! The message is `custos_proto::wire::BatchLink::message` (docs/protocol.md, "Batch
//! signatures"); this module only signs and verifies bytes.
use std::path::Path;

use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use std::sync::Arc;

use rustls::server::{WebPkiClientVerifier, danger::ClientCertVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::{Identity, PkiError};

/// An agent's signing key: the private key of its TLS certificate.
pub struct BatchSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for BatchSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchSigner(ECDSA P-256)")
    }
}

impl BatchSigner {
    /// Reads the key file (PEM PKCS#8, as `pki issue` writes it), refusing one others may read.
    pub fn load(path: &Path) -> Result<BatchSigner, PkiError> {
        let key = crate::files::read_private_key(path)?;
        BatchSigner::from_key(&key).map_err(|err| PkiError::file(path, err.to_string()))
    }

    /// A signer from a PKCS#8 ECDSA P-256 key.
    pub fn from_key(key: &PrivateKeyDer<'_>) -> Result<BatchSigner, PkiError> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(PkiError::Certificate(
                "the key is not PKCS#8: batches are signed with an ECDSA P-256 PKCS#8 key (as \
                 `custos-collector pki issue` writes it)"
                    .into(),
            ));
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|err| {
            PkiError::Certificate(format!(
                "not an ECDSA P-256 key usable to sign batches: {err}"
            ))
        })?;
        Ok(BatchSigner { key, rng })
    }

    /// Signs `message` (ASN.1 DER ECDSA signature).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, PkiError> {
        self.key
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| PkiError::Certificate("signing a batch failed".into()))
    }
}

/// Why a batch signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the certificate cannot be read: {0}")]
    Certificate(String),
    #[error("the signature does not verify with the certificate's key")]
    Invalid,
}

/// Checks an ECDSA P-256 SHA-256 signature over `message` with the public key of the DER
/// certificate `certificate`.
pub fn verify(certificate: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
    let (_, cert) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|err| SignatureError::Certificate(err.to_string()))?;
    let public = cert.public_key().subject_public_key.data.as_ref();
    ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public)
        .verify(message, signature)
        .map_err(|_| SignatureError::Invalid)
}

/// Checks stored agents' certificates against the deployment CA, as of when their batches
/// arrived (a certificate that expired or was revoked since still vouches for what it signed
/// while it was valid: revocation lists are not consulted).
pub struct AgentCertificates {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl AgentCertificates {
    /// With the CA certificate in `ca` (PEM).
    pub fn new(ca: &Path) -> Result<AgentCertificates, PkiError> {
        let roots = Arc::new(crate::files::read_ca(ca)?);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, Arc::new(crate::tls::provider()))
                .build()
                .map_err(|err| PkiError::file(ca, format!("cannot verify with it: {err}")))?;
        Ok(AgentCertificates { verifier })
    }

    /// The identity of `certificate` (DER) when it chains to the CA, was valid `at_ns` (ns since
    /// the Unix epoch) and is an agent's.
    pub fn check(&self, certificate: &[u8], at_ns: i64) -> Result<Identity, String> {
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_nanos(
            u64::try_from(at_ns).unwrap_or_default(),
        ));
        self.verifier
            .verify_client_cert(&CertificateDer::from(certificate), &[], at)
            .map_err(|err| format!("not a certificate of the deployment CA then: {err}"))?;
        let identity = crate::identity_of(certificate).map_err(|err| err.to_string())?;
        if identity.role != crate::Role::Agent {
            return Err(format!("a certificate of {identity}, not an agent's"));
        }
        Ok(identity)
    }
}

/// The SHA-256 fingerprint of a DER certificate: how stored chunks name the certificate whose key
/// signed their batch.
pub fn fingerprint(certificate: &[u8]) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, certificate)
        .as_ref()
        .try_into()
        .unwrap_or([0; 32])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Vec<u8>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (cert.der().to_vec(), der)
    }

    #[test]
    fn a_signature_verifies_with_its_certificate_only_and_over_its_message_only() {
        let (cert, key) = pair();
        let (other_cert, _) = pair();
        let signer = BatchSigner::from_key(&key).unwrap();
        let signature = signer.sign(b"message").unwrap();
        assert_eq!(verify(&cert, b"message", &signature), Ok(()));
        assert_eq!(
            verify(&cert, b"massage", &signature),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify(&other_cert, b"message", &signature),
            Err(SignatureError::Invalid)
        );
        assert!(matches!(
            verify(b"junk", b"message", &signature),
            Err(SignatureError::Certificate(_))
        ));
        assert_ne!(fingerprint(&cert), fingerprint(&other_cert));
    }
}
