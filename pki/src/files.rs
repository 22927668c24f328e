//! Certificate and key files: reading and checking them (every error names the file), and
//! writing them with the right modes (keys 0600, certificates 0644).
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use rustls::{pki_types::pem::PemObject, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::{Identity, PkiError, Role, identity_of};

/// Every certificate in a PEM file (a certificate and, optionally, its chain).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let bytes =
        fs::read(path).map_err(|err| PkiError::file(path, format!("cannot read: {err}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| PkiError::file(path, format!("not a PEM certificate file: {err}")))?;
    if certs.is_empty() {
        return Err(PkiError::file(path, "holds no certificate"));
    }
    Ok(certs)
}

/// A private key, refused when others than its owner may read it.
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let meta =
        fs::metadata(path).map_err(|err| PkiError::file(path, format!("cannot read: {err}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::file(
            path,
            format!(
                "private key is readable by group or others (mode {mode:04o}); run chmod 600 on it"
            ),
        ));
    }
    let bytes =
        fs::read(path).map_err(|err| PkiError::file(path, format!("cannot read: {err}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|err| PkiError::file(path, format!("not a PEM private key: {err}")))
}

/// Checks that a certificate is valid now and has one of `roles` (any, if empty); returns its
/// identity.
pub fn check_certificate(path: &Path, der: &[u8], roles: &[Role]) -> Result<Identity, PkiError> {
    let identity = identity_of(der).map_err(|err| PkiError::file(path, err.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| PkiError::file(path, format!("not an X.509 certificate: {err}")))?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(PkiError::file(
            path,
            format!(
                "certificate of {identity} expired on {}",
                validity.not_after
            ),
        ));
    }
    if now < validity.not_before {
        return Err(PkiError::file(
            path,
            format!(
                "certificate of {identity} is not valid before {}",
                validity.not_before
            ),
        ));
    }
    if !roles.is_empty() && !roles.contains(&identity.role) {
        let wanted: Vec<String> = roles
            .iter()
            .map(|r| {
                let name = r.name();
                let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
                    "an"
                } else {
                    "a"
                };
                format!("{article} {name}")
            })
            .collect();
        return Err(PkiError::file(
            path,
            format!(
                "certificate is for {identity}, not for {}",
                wanted.join(" or ")
            ),
        ));
    }
    Ok(identity)
}

/// A certificate, its key and its identity, checked: readable, valid now, of `role`, and the
/// key belonging to the certificate.
pub struct CertifiedPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub certified: Arc<CertifiedKey>,
    pub identity: Identity,
}

pub fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    roles: &[Role],
) -> Result<CertifiedPair, PkiError> {
    let chain = read_certificates(cert_path)?;
    let identity = check_certificate(cert_path, &chain[0], roles)?;
    let key = read_private_key(key_path)?;
    let provider = crate::tls::provider();
    let mismatch = || {
        PkiError::file(
            key_path,
            format!(
                "private key does not match the certificate in {}",
                cert_path.display()
            ),
        )
    };
    let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |err| match err {
            rustls::Error::InconsistentKeys(_) => mismatch(),
            err => PkiError::file(key_path, format!("unusable private key: {err}")),
        },
    )?;
    certified.keys_match().map_err(|_| mismatch())?;
    Ok(CertifiedPair {
        chain,
        key,
        certified: Arc::new(certified),
        identity,
    })
}

/// Reads a PEM certificate revocation list (`pki crl` writes it); its contents are checked
/// when a verifier is built from it.
pub fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    let bytes =
        fs::read(path).map_err(|err| PkiError::file(path, format!("cannot read: {err}")))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| PkiError::file(path, format!("not a PEM revocation list: {err}")))?;
    if crls.is_empty() {
        return Err(PkiError::file(
            path,
            "holds no revocation list (custos-collector pki crl writes one)",
        ));
    }
    Ok(crls)
}

/// Reads the CA certificate(s) a peer must chain to.
pub fn read_ca(path: &Path) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots
            .add(cert)
            .map_err(|err| PkiError::file(path, format!("not a usable CA certificate: {err}")))?;
    }
    Ok(roots)
}

/// Writes `contents` to `path` with `mode`, replacing it atomically if it exists (written to a
/// temporary file, fsynced, renamed over). The new file keeps the old one's owner and group
/// (root renewing the collector's key leaves it readable by the collector's user).
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("new");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    if let Ok(old) = fs::metadata(path) {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(&tmp, Some(old.uid()), Some(old.gid())).map_err(|err| {
            PkiError::file(
                path,
                format!("cannot give the new file the old one's owner: {err}"),
            )
        })?;
    }
    fs::rename(&tmp, path).map_err(|err| PkiError::file(path, format!("cannot replace: {err}")))
}

/// Writes a new file with `mode`; refuses to replace an existing one.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => {
                PkiError::file(path, "already exists; not replacing it")
            }
            _ => PkiError::file(path, format!("cannot create: {err}")),
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|err| PkiError::file(path, format!("cannot write: {err}")))?;
    // The umask may have narrowed the mode; certificates must stay readable.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|err| PkiError::file(path, format!("cannot set mode: {err}")))
}
