//! Custos's deployment certificates.
//!
//! One private CA per deployment signs every certificate. What a certificate may do is its
//! [`Role`], written in the subject's organizational unit; its [`Identity`] is the role and the
//! common name (an agent's host name, an auditor's name).
//!
//! - [`issue`]: creating the CA, the collector's certificate and role certificates (rcgen);
//! - [`registry`]: the record of issued certificates, revocation and the CRL (rcgen);
//! - [`batch_signature`]: agents signing their batches with their certificate key, and checking
//!   those signatures;
//! - [`files`]: reading and checking certificate and key files, with errors that name the file;
//! - [`tls`]: the rustls configurations every connection uses (mutual TLS 1.3 only), and the
//!   verifiers that refuse a certificate of the wrong role during the handshake.
pub mod batch_signature;
pub mod files;
pub mod issue;
pub mod registry;
pub mod tls;

use std::fmt;

/// What a certificate may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The collector's server certificate.
    Collector,
    /// A recorded host: may send recordings, nothing else.
    Agent,
    /// May read recordings.
    Auditor,
    /// May read recordings, the access log, and manage holds and retention.
    Admin,
}

impl Role {
    /// The subject OU that carries the role.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Collector => "custos-collector",
            Role::Agent => "custos-agent",
            Role::Auditor => "custos-auditor",
            Role::Admin => "custos-admin",
        }
    }

    pub fn from_unit(unit: &str) -> Option<Role> {
        [Role::Collector, Role::Agent, Role::Auditor, Role::Admin]
            .into_iter()
            .find(|role| role.unit() == unit)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Collector => "collector",
            Role::Agent => "agent",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    /// The subject's common name: a host name for agents and the collector, a person or
    /// service name for auditors.
    pub name: String,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("issuing a certificate: {0}")]
    Issue(String),
    #[error("certificate registry: {0}")]
    Registry(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

impl PkiError {
    pub(crate) fn file(path: &std::path::Path, message: impl Into<String>) -> Self {
        PkiError::File {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

/// Whether `name` can name a recorded host: letters, digits, `.`, `-` and `_`, not `.` or `..`,
/// at most 253 bytes. The one rule for agents' names: `pki issue agent` refuses others, the agent
/// refuses to start with a certificate of another name, and the store makes a folder of it.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Reads the identity (role and name) from a DER certificate.
pub fn identity_of(der: &[u8]) -> Result<Identity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|err| PkiError::Certificate(format!("not an X.509 certificate: {err}")))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::Certificate("no common name".into()))?
        .to_owned();
    let unit = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .ok_or_else(|| PkiError::Certificate(format!("{name}: no Custos role (subject OU)")))?;
    let role = Role::from_unit(unit)
        .ok_or_else(|| PkiError::Certificate(format!("{name}: unknown role {unit:?}")))?;
    Ok(Identity { role, name })
}
