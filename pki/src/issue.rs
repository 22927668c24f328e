//! Creating the deployment's certificates with rcgen.
//!
//! A PKI directory holds the CA (`ca.pem`, `ca.key`) and the collector's certificate
//! (`collector.pem`, `collector.key`); issued role certificates go to `issued/` unless another
//! directory is given, as `<role>-<name>.pem` and `.key`. Keys are ECDSA P-256, written 0600.
//! Serial numbers are random; every certificate issued is recorded in the
//! [registry](crate::registry), and `init` writes the first (empty) revocation list.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{
    PkiError, Role,
    files::{read_certificates, replace, write_new},
    registry::{Registry, random_serial},
};

/// Files of a PKI directory.
#[derive(Clone, Debug)]
pub struct PkiDir {
    pub dir: PathBuf,
}

impl PkiDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    pub fn collector_cert(&self) -> PathBuf {
        self.dir.join("collector.pem")
    }

    pub fn collector_key(&self) -> PathBuf {
        self.dir.join("collector.key")
    }

    pub fn issued(&self) -> PathBuf {
        self.dir.join("issued")
    }

    /// The certificate revocation list (`pki revoke`, `pki crl`).
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
}

/// The CA lives ten years; issued certificates one year unless asked otherwise.
pub const CA_DAYS: i64 = 3650;
pub const DEFAULT_DAYS: i64 = 365;

/// Creates the CA and the collector's certificate (for `collector_names`: DNS names or IP
/// addresses agents and auditors connect to). Returns the files written.
pub fn init(pki: &PkiDir, collector_names: &[String], days: i64) -> Result<Vec<PathBuf>, PkiError> {
    if collector_names.is_empty() {
        return Err(PkiError::Issue(
            "the collector needs at least one name".into(),
        ));
    }
    fs::create_dir_all(&pki.dir)
        .map_err(|err| PkiError::file(&pki.dir, format!("cannot create: {err}")))?;
    // Group-readable so packaging can let the collector's group in (root:custos 0750); the CA
    // key stays 0600 and its owner's.
    fs::set_permissions(&pki.dir, fs::Permissions::from_mode(0o750))
        .map_err(|err| PkiError::file(&pki.dir, format!("cannot set mode: {err}")))?;
    for path in [pki.ca_cert(), pki.ca_key()] {
        if path.exists() {
            return Err(PkiError::file(
                &path,
                "already exists: this directory already holds a CA",
            ));
        }
    }
    let key = KeyPair::generate().map_err(|err| PkiError::Issue(err.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Custos deployment CA", None);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|err| PkiError::Issue(err.to_string()))?;
    write_new(&pki.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&pki.ca_cert(), cert.pem().as_bytes(), 0o644)?;
    let (cert_path, key_path) = issue_to(
        pki,
        Role::Collector,
        &collector_names[0],
        collector_names,
        Validity::days(days),
        &pki.collector_cert(),
        &pki.collector_key(),
        false,
    )?;
    let crl = Registry::new(pki).write_crl()?;
    Ok(vec![pki.ca_cert(), pki.ca_key(), cert_path, key_path, crl])
}

/// A new certificate and key for the collector, replacing the old ones atomically (then
/// `SIGHUP` the collector). The names default to the current certificate's.
pub fn renew_collector(
    pki: &PkiDir,
    names: &[String],
    validity: Validity,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let names = if names.is_empty() {
        current_names(&pki.collector_cert())?
    } else {
        names.to_vec()
    };
    if names.is_empty() {
        return Err(PkiError::Issue(
            "the collector needs at least one name".into(),
        ));
    }
    issue_to(
        pki,
        Role::Collector,
        &names[0],
        &names,
        validity,
        &pki.collector_cert(),
        &pki.collector_key(),
        true,
    )
}

/// The common name and subject alternative names of a certificate file.
fn current_names(path: &Path) -> Result<Vec<String>, PkiError> {
    let chain = crate::files::read_certificates(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|err| PkiError::file(path, format!("not an X.509 certificate: {err}")))?;
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            let text = match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => dns.to_string(),
                x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                    4 => std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string(),
                    16 => {
                        let bytes: [u8; 16] = (*ip).try_into().unwrap_or([0; 16]);
                        std::net::Ipv6Addr::from(bytes).to_string()
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if !names.contains(&text) {
                names.push(text);
            }
        }
    }
    Ok(names)
}

/// When an issued certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (clock skew) for `days` days.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::minutes(5),
            not_after: now + Duration::days(days),
        }
    }
}

/// Issues a certificate of `role` for `name` into `out_dir` (default: the PKI's `issued/`).
/// An existing pair for the name is refused, unless `replace` (renewal: the files are replaced
/// atomically, so a daemon reading them sees the old pair or the new one; the old certificate
/// is revoked as superseded).
pub fn issue(
    pki: &PkiDir,
    role: Role,
    name: &str,
    validity: Validity,
    out_dir: Option<&Path>,
    replace: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    if role == Role::Collector {
        return Err(PkiError::Issue(
            "the collector's certificate comes from `pki init`".into(),
        ));
    }
    check_name(name)?;
    if role == Role::Agent && !crate::is_host_name(name) {
        return Err(PkiError::Issue(format!(
            "{name:?} cannot name a recorded host (letters, digits, . - _; not . or ..): the \
             collector would refuse every batch of this agent"
        )));
    }
    let out = out_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| pki.issued());
    fs::create_dir_all(&out)
        .map_err(|err| PkiError::file(&out, format!("cannot create: {err}")))?;
    let base = format!("{}-{name}", role.name());
    issue_to(
        pki,
        role,
        name,
        &[name.to_owned()],
        validity,
        &out.join(format!("{base}.pem")),
        &out.join(format!("{base}.key")),
        replace,
    )
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Issue(format!(
            "{name:?} is not a usable name (letters, digits, . - _ @; at most 253)"
        )))
    }
}

fn name(common: &str, role: Option<Role>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Custos");
    if let Some(role) = role {
        dn.push(DnType::OrganizationalUnitName, role.unit());
    }
    dn.push(DnType::CommonName, common);
    dn
}

#[allow(clippy::too_many_arguments)]
fn issue_to(
    pki: &PkiDir,
    role: Role,
    common: &str,
    names: &[String],
    validity: Validity,
    cert_path: &Path,
    key_path: &Path,
    replacing: bool,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let ca_pem = fs::read_to_string(pki.ca_cert())
        .map_err(|err| PkiError::file(&pki.ca_cert(), format!("cannot read: {err}")))?;
    let ca_key_pem = fs::read_to_string(pki.ca_key())
        .map_err(|err| PkiError::file(&pki.ca_key(), format!("cannot read: {err}")))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|err| PkiError::file(&pki.ca_key(), format!("not a private key: {err}")))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|err| PkiError::file(&pki.ca_cert(), format!("not a CA certificate: {err}")))?;

    let key = KeyPair::generate().map_err(|err| PkiError::Issue(err.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common, Some(role));
    params.subject_alt_names = names
        .iter()
        .filter_map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().ok().map(SanType::DnsName),
        })
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match role {
        Role::Collector => ExtendedKeyUsagePurpose::ServerAuth,
        _ => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    // The certificate being replaced, revoked once its successor is in place.
    let replaced = if replacing && cert_path.exists() {
        Some(read_certificates(cert_path)?.remove(0))
    } else {
        None
    };
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|err| PkiError::Issue(err.to_string()))?;
    if replacing {
        // Key first: a reader between the two renames sees a mismatch and retries later, never
        // a certificate without its key.
        replace(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        replace(cert_path, cert.pem().as_bytes(), 0o644)?;
    } else {
        write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
    }
    let registry = Registry::new(pki);
    registry.record(cert.der())?;
    if let Some(old) = replaced {
        registry.supersede(&old)?;
    }
    Ok((cert_path.to_path_buf(), key_path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;

    #[test]
    fn init_and_issue_write_checked_files_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        init(&pki, &["collector.test".into(), "127.0.0.1".into()], 30).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.ca_key()), 0o600);
        assert_eq!(mode(&pki.ca_cert()), 0o644);
        assert_eq!(mode(&pki.collector_key()), 0o600);
        let collector = files::load_pair(
            &pki.collector_cert(),
            &pki.collector_key(),
            &[Role::Collector],
        )
        .unwrap();
        assert_eq!(collector.identity.name, "collector.test");

        let (cert, key) =
            issue(&pki, Role::Auditor, "dana", Validity::days(1), None, false).unwrap();
        assert!(cert.ends_with("issued/auditor-dana.pem"));
        let pair = files::load_pair(&cert, &key, &[Role::Auditor]).unwrap();
        assert_eq!(pair.identity.name, "dana");
        // The wrong role, a mismatched key, an existing file: each refused, naming the file.
        let err = files::load_pair(&cert, &key, &[Role::Agent])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("auditor-dana.pem") && err.contains("not for an agent"),
            "{err}"
        );
        let err = files::load_pair(&cert, &pki.collector_key(), &[Role::Auditor])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("collector.key") && err.contains("does not match"),
            "{err}"
        );
        assert!(issue(&pki, Role::Auditor, "dana", Validity::days(1), None, false).is_err());
        issue(&pki, Role::Auditor, "dana", Validity::days(2), None, true).unwrap();
        files::load_pair(&cert, &key, &[Role::Auditor]).unwrap();
        renew_collector(&pki, &[], Validity::days(2)).unwrap();
        let renewed = files::load_pair(
            &pki.collector_cert(),
            &pki.collector_key(),
            &[Role::Collector],
        )
        .unwrap();
        assert_eq!(renewed.identity.name, "collector.test");
        assert_eq!(
            current_names(&pki.collector_cert()).unwrap(),
            vec!["collector.test", "127.0.0.1"]
        );
        assert!(
            init(&pki, &["x".into()], 1).is_err(),
            "a second CA over the first"
        );
    }

    #[test]
    fn expired_and_loose_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path());
        init(&pki, &["c".into()], 30).unwrap();
        let past = OffsetDateTime::now_utc() - Duration::days(2);
        let expired = Validity {
            not_before: past - Duration::days(1),
            not_after: past,
        };
        let (cert, key) = issue(&pki, Role::Agent, "old-host", expired, None, false).unwrap();
        let err = files::load_pair(&cert, &key, &[Role::Agent])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("agent-old-host.pem") && err.contains("expired"),
            "{err}"
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = files::read_private_key(&key).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        let err = files::read_certificates(&dir.path().join("missing.pem"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("missing.pem") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn an_agent_name_the_store_would_refuse_is_refused_at_issue() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path().join("pki"));
        init(&pki, &["collector.test".into()], 30).unwrap();
        for name in ["a@b", "..", "."] {
            let err = issue(&pki, Role::Agent, name, Validity::days(1), None, false)
                .expect_err(name)
                .to_string();
            assert!(
                err.contains(&format!("{name:?}")) && err.contains("recorded host"),
                "{err}"
            );
        }
        // An auditor may be named by a mail address; an agent by a host name.
        issue(&pki, Role::Auditor, "a@b", Validity::days(1), None, false).unwrap();
        issue(
            &pki,
            Role::Agent,
            "db-01.example_lab",
            Validity::days(1),
            None,
            false,
        )
        .unwrap();
    }
}
