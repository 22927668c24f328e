//! The TLS configurations of Custos's connections: TLS 1.3 only, both sides authenticated by
//! the deployment CA. A server lists the roles it accepts and checks clients against the CA's
//! revocation list; a revoked client certificate or one of any other role is refused inside the
//! handshake, with a reason the server can log.
use std::{path::Path, sync::Arc};

use rustls::{
    DigitallySignedStruct, DistinguishedName, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::{Identity, PkiError, Role, files, identity_of};

/// The one crypto provider (ring).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Where a party's certificate, key and CA are.
#[derive(Clone, Debug)]
pub struct TlsFiles<'a> {
    pub ca: &'a Path,
    pub certificate: &'a Path,
    pub key: &'a Path,
}

/// Verifies client certificates: the chain to the CA in `ca`, not revoked by the list in `crl`
/// (`pki crl` writes it; a client the list cannot vouch for is refused), and one of `accept`'s
/// roles. A malformed list is an error naming `crl`.
pub fn client_verifier(
    ca: &Path,
    crl: &Path,
    accept: &'static [Role],
) -> Result<Arc<dyn ClientCertVerifier>, PkiError> {
    let roots = Arc::new(files::read_ca(ca)?);
    let crls = files::read_crls(crl)?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots, Arc::new(provider()))
        .with_crls(crls)
        .build()
        .map_err(|err| match err {
            rustls::server::VerifierBuilderError::InvalidCrl(err) => {
                PkiError::file(crl, format!("not a usable revocation list: {err:?}"))
            }
            err => PkiError::file(ca, format!("cannot verify clients with it: {err}")),
        })?;
    Ok(Arc::new(RoleVerifier { inner, accept }))
}

/// Whether `verifier` now refuses a peer's certificate `chain` as revoked (for connections
/// opened before the revocation list changed).
pub fn is_revoked(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'_>]) -> bool {
    let Some((end_entity, intermediates)) = chain.split_first() else {
        return false;
    };
    matches!(
        verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    )
}

/// A server (the collector) with its certificate and key from `files`, checking clients with
/// `verifier` ([`client_verifier`]). Returns the configuration and the server's own identity.
pub fn server_config(
    files: &TlsFiles<'_>,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<(rustls::ServerConfig, Identity), PkiError> {
    let pair = files::load_pair(files.certificate, files.key, &[Role::Collector])?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| PkiError::Tls(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pair.chain, pair.key)
        .map_err(|err| PkiError::file(files.certificate, err.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((config, pair.identity))
}

/// A client (agent, auditor) with a certificate of one of `roles`, verifying the server's
/// certificate chain to the CA and its name. There is no way to turn verification off.
pub fn client_config(
    files: &TlsFiles<'_>,
    roles: &[Role],
    alpn: &[&[u8]],
) -> Result<(rustls::ClientConfig, Identity), PkiError> {
    client_config_and_key(files, roles, alpn).map(|(config, identity, _)| (config, identity))
}

/// [`client_config`], and the private key it was made with (read once: an agent signs its
/// batches with the key of the certificate of the connection that carries them).
pub fn client_config_and_key(
    files: &TlsFiles<'_>,
    roles: &[Role],
    alpn: &[&[u8]],
) -> Result<
    (
        rustls::ClientConfig,
        Identity,
        rustls_pki_types::PrivateKeyDer<'static>,
    ),
    PkiError,
> {
    let roots = files::read_ca(files.ca)?;
    let pair = files::load_pair(files.certificate, files.key, roles)?;
    let key = pair.key.clone_key();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| PkiError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(pair.chain, pair.key)
        .map_err(|err| PkiError::file(files.certificate, err.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((config, pair.identity, key))
}

/// The identity of a verified peer, from its certificate chain.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Result<Identity, PkiError> {
    let end_entity = chain
        .first()
        .ok_or_else(|| PkiError::Certificate("the peer presented no certificate".into()))?;
    identity_of(end_entity)
}

/// WebPKI chain verification, then the role.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    accept: &'static [Role],
}

impl ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let identity =
            identity_of(end_entity).map_err(|err| rustls::Error::General(err.to_string()))?;
        if !self.accept.contains(&identity.role) {
            let accepted: Vec<&str> = self.accept.iter().map(|r| r.name()).collect();
            return Err(rustls::Error::General(format!(
                "certificate of {identity} refused: this service accepts {}",
                accepted.join(" or ")
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
