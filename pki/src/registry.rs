//! The registry of issued certificates and the revocation list built from it.
//!
//! Every certificate `pki` issues is recorded as `registry/SERIAL.toml` in the PKI directory
//! (name, role, serial, not_after; once revoked also revoked_at and reason). Revoking marks the
//! entry and rewrites `crl.pem`, the CA-signed certificate revocation list (rcgen) the collector
//! checks every client certificate against. Certificates issued before the registry existed are
//! picked up from `collector.pem` and `issued/` the first time the registry is read.
use std::{fs, path::PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::{
    PkiError, Role,
    files::{read_certificates, replace},
    identity_of,
    issue::{CA_DAYS, PkiDir},
};

/// Why a certificate was revoked (RFC 5280's reason codes that apply to Custos).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unspecified,
    /// The private key was lost or stolen.
    KeyCompromise,
    /// The person or host left (a departed auditor, a decommissioned host).
    AffiliationChanged,
    /// Replaced by a new certificate (`pki issue --replace`).
    Superseded,
    /// No longer used.
    CessationOfOperation,
    /// The role's rights were taken away.
    PrivilegeWithdrawn,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
            Reason::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }

    fn code(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// One issued certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub role: String,
    /// The serial number, lower-case hex.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub reason: Option<Reason>,
}

/// Where a certificate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Issued,
    Expired,
    Revoked,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Issued => "issued",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
}

impl Entry {
    /// The entry for a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Result<Entry, PkiError> {
        let identity = identity_of(der)?;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|err| PkiError::Certificate(format!("not an X.509 certificate: {err}")))?;
        Ok(Entry {
            name: identity.name,
            role: identity.role.name().to_owned(),
            serial: hex(cert.raw_serial()),
            not_after: cert.validity().not_after.to_datetime(),
            revoked_at: None,
            reason: None,
        })
    }

    pub fn state(&self, now: OffsetDateTime) -> State {
        if self.revoked_at.is_some() {
            State::Revoked
        } else if self.not_after < now {
            State::Expired
        } else {
            State::Issued
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A fresh random serial: 16 bytes, positive, no leading zero byte.
pub fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|err| PkiError::Issue(format!("no random serial number: {err}")))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The `registry/` directory of a PKI directory.
pub struct Registry {
    pki: PkiDir,
}

impl Registry {
    pub fn new(pki: &PkiDir) -> Self {
        Self { pki: pki.clone() }
    }

    pub fn dir(&self) -> PathBuf {
        self.pki.dir.join("registry")
    }

    fn path(&self, serial: &str) -> PathBuf {
        self.dir().join(format!("{serial}.toml"))
    }

    /// Records a certificate just issued.
    pub fn record(&self, der: &[u8]) -> Result<Entry, PkiError> {
        let entry = Entry::of_certificate(der)?;
        self.write(&entry)?;
        Ok(entry)
    }

    fn write(&self, entry: &Entry) -> Result<(), PkiError> {
        let dir = self.dir();
        fs::create_dir_all(&dir)
            .map_err(|err| PkiError::file(&dir, format!("cannot create: {err}")))?;
        let text = toml::to_string(entry)
            .map_err(|err| PkiError::file(&self.path(&entry.serial), err.to_string()))?;
        replace(&self.path(&entry.serial), text.as_bytes(), 0o644)
    }

    /// Every recorded certificate, by name then expiry. Certificates in `collector.pem` and
    /// `issued/` that are not recorded yet (issued before the registry) are recorded first.
    pub fn entries(&self) -> Result<Vec<Entry>, PkiError> {
        self.adopt_unrecorded()?;
        let dir = self.dir();
        let mut entries = Vec::new();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(entries),
            Err(err) => return Err(PkiError::file(&dir, format!("cannot list: {err}"))),
        };
        for item in listing {
            let path = item
                .map_err(|err| PkiError::file(&dir, format!("cannot list: {err}")))?
                .path();
            if path.extension().is_none_or(|ext| ext != "toml") {
                continue;
            }
            let text = fs::read_to_string(&path)
                .map_err(|err| PkiError::file(&path, format!("cannot read: {err}")))?;
            let entry: Entry = toml::from_str(&text)
                .map_err(|err| PkiError::file(&path, format!("not a registry entry: {err}")))?;
            entries.push(entry);
        }
        // By name, then age; of two certificates issued in the same second (one replaced by
        // the other), the revoked one first.
        entries.sort_by(|a, b| {
            let key = |e: &Entry| (e.name.clone(), e.not_after, e.revoked_at.is_none());
            key(a).cmp(&key(b)).then_with(|| a.serial.cmp(&b.serial))
        });
        Ok(entries)
    }

    fn adopt_unrecorded(&self) -> Result<(), PkiError> {
        let mut candidates = vec![self.pki.collector_cert()];
        if let Ok(listing) = fs::read_dir(self.pki.issued()) {
            candidates.extend(
                listing
                    .filter_map(|item| item.ok().map(|item| item.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "pem")),
            );
        }
        for path in candidates {
            if !path.exists() {
                continue;
            }
            let chain = read_certificates(&path)?;
            let entry = Entry::of_certificate(&chain[0])
                .map_err(|err| PkiError::file(&path, err.to_string()))?;
            if !self.path(&entry.serial).exists() {
                self.write(&entry)?;
            }
        }
        Ok(())
    }

    /// Revokes the certificates `what` names: a serial number (hex, colons allowed), or every
    /// unrevoked certificate of that name (of `role`, if given). Returns those revoked now;
    /// nothing matching is an error.
    pub fn revoke(
        &self,
        what: &str,
        role: Option<Role>,
        reason: Reason,
    ) -> Result<Vec<Entry>, PkiError> {
        let entries = self.entries()?;
        let serial = what.replace(':', "").to_ascii_lowercase();
        let by_serial: Vec<&Entry> = entries.iter().filter(|e| e.serial == serial).collect();
        let chosen: Vec<&Entry> = if !by_serial.is_empty() {
            by_serial
        } else {
            entries
                .iter()
                .filter(|e| e.name == what && role.is_none_or(|r| r.name() == e.role))
                .collect()
        };
        if chosen.is_empty() {
            return Err(PkiError::Registry(format!(
                "no certificate named or numbered {what:?} in {} (pki list shows them)",
                self.dir().display()
            )));
        }
        let now = OffsetDateTime::now_utc();
        let mut revoked = Vec::new();
        for entry in chosen {
            if entry.revoked_at.is_some() {
                continue;
            }
            let mut entry = entry.clone();
            entry.revoked_at = Some(now);
            entry.reason = Some(reason);
            self.write(&entry)?;
            revoked.push(entry);
        }
        self.write_crl()?;
        Ok(revoked)
    }

    /// Revokes one certificate (DER) as superseded, recording it first if needed.
    pub fn supersede(&self, der: &[u8]) -> Result<Entry, PkiError> {
        let mut entry = Entry::of_certificate(der)?;
        if let Ok(text) = fs::read_to_string(self.path(&entry.serial))
            && let Ok(known) = toml::from_str::<Entry>(&text)
        {
            entry = known;
        }
        if entry.revoked_at.is_none() {
            entry.revoked_at = Some(OffsetDateTime::now_utc());
            entry.reason = Some(Reason::Superseded);
            self.write(&entry)?;
        }
        self.write_crl()?;
        Ok(entry)
    }

    /// Rewrites `crl.pem` from the registry, signed by the CA: every revoked certificate that
    /// has not expired yet (an expired one is refused anyway). Returns its path.
    pub fn write_crl(&self) -> Result<PathBuf, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked = self
            .entries()?
            .into_iter()
            .filter_map(|entry| {
                let at = entry.revoked_at?;
                (entry.not_after >= now).then_some((entry, at))
            })
            .map(|(entry, at)| {
                let serial = unhex(&entry.serial).ok_or_else(|| {
                    PkiError::file(&self.path(&entry.serial), "serial is not hex")
                })?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: at,
                    reason_code: entry.reason.map(Reason::code),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        // CRL numbers must grow: the time in nanoseconds does.
        let number = now.unix_timestamp_nanos().to_be_bytes();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(CA_DAYS),
            crl_number: SerialNumber::from_slice(&number[4..]),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let issuer_key = fs::read_to_string(self.pki.ca_key())
            .map_err(|err| PkiError::file(&self.pki.ca_key(), format!("cannot read: {err}")))
            .and_then(|pem| {
                KeyPair::from_pem(&pem).map_err(|err| {
                    PkiError::file(&self.pki.ca_key(), format!("not a private key: {err}"))
                })
            })?;
        let ca_pem = fs::read_to_string(self.pki.ca_cert())
            .map_err(|err| PkiError::file(&self.pki.ca_cert(), format!("cannot read: {err}")))?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, issuer_key).map_err(|err| {
            PkiError::file(&self.pki.ca_cert(), format!("not a CA certificate: {err}"))
        })?;
        let pem = params
            .signed_by(&issuer)
            .and_then(|crl| crl.pem())
            .map_err(|err| PkiError::Issue(format!("signing the CRL: {err}")))?;
        let path = self.pki.crl();
        replace(&path, pem.as_bytes(), 0o644)?;
        Ok(path)
    }
}

/// `pki list`'s table: one certificate a line.
pub fn table(entries: &[Entry]) -> String {
    let now = OffsetDateTime::now_utc();
    let day = |t: OffsetDateTime| t.date().to_string();
    let mut out = format!(
        "{:<9} {:<9} {:<24} {:<32} {:<10} {}\n",
        "STATE", "ROLE", "NAME", "SERIAL", "NOT_AFTER", "REVOKED"
    );
    for entry in entries {
        let revoked = match (entry.revoked_at, entry.reason) {
            (Some(at), Some(reason)) => format!("{} {}", day(at), reason.name()),
            (Some(at), None) => day(at),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<9} {:<9} {:<24} {:<32} {:<10} {}\n",
            entry.state(now).name(),
            entry.role,
            entry.name,
            entry.serial,
            day(entry.not_after),
            revoked
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        issue::{self, Validity},
        tls,
    };

    fn cert(path: &std::path::Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        read_certificates(path).unwrap()
    }

    #[test]
    fn revoked_and_replaced_certificates_are_refused_by_the_verifier() {
        let dir = tempfile::tempdir().unwrap();
        let pki = PkiDir::new(dir.path());
        issue::init(&pki, &["c".into()], 30).unwrap();
        let registry = Registry::new(&pki);
        let (dana, _) =
            issue::issue(&pki, Role::Auditor, "dana", Validity::days(1), None, false).unwrap();
        let (erin, _) =
            issue::issue(&pki, Role::Auditor, "erin", Validity::days(1), None, false).unwrap();
        let dana_old = cert(&dana);
        let verifier = || tls::client_verifier(&pki.ca_cert(), &pki.crl(), &[Role::Auditor]);
        assert!(!tls::is_revoked(verifier().unwrap().as_ref(), &dana_old));

        // Serials are random and recorded.
        let entries = registry.entries().unwrap();
        let dana_entry = entries.iter().find(|e| e.name == "dana").unwrap();
        assert_eq!(dana_entry.serial.len(), 32);
        assert_eq!(dana_entry.state(OffsetDateTime::now_utc()), State::Issued);

        // Renewal revokes the replaced certificate, not the new one.
        issue::issue(&pki, Role::Auditor, "dana", Validity::days(2), None, true).unwrap();
        let v = verifier().unwrap();
        assert!(tls::is_revoked(v.as_ref(), &dana_old), "replaced cert");
        assert!(!tls::is_revoked(v.as_ref(), &cert(&dana)), "its successor");

        // Revoke by name: every unrevoked certificate of the name; by serial too.
        let revoked = registry
            .revoke("erin", None, Reason::AffiliationChanged)
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert!(tls::is_revoked(verifier().unwrap().as_ref(), &cert(&erin)));
        let err = registry
            .revoke("nobody", None, Reason::Unspecified)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nobody") && err.contains("pki list"), "{err}");

        let now = OffsetDateTime::now_utc();
        let states: Vec<(String, State, Option<Reason>)> = registry
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e.state(now), e.reason))
            .collect();
        assert_eq!(
            states,
            vec![
                ("c".into(), State::Issued, None),
                ("dana".into(), State::Revoked, Some(Reason::Superseded)),
                ("dana".into(), State::Issued, None),
                (
                    "erin".into(),
                    State::Revoked,
                    Some(Reason::AffiliationChanged)
                ),
            ]
        );

        // A malformed list is refused, naming the file.
        fs::write(
            pki.crl(),
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let err = verifier().err().unwrap().to_string();
        assert!(
            err.contains("crl.pem") && err.contains("revocation list"),
            "{err}"
        );
    }
}
