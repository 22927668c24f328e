//! The agents' certificates in the store: `agents/<SHA-256 fingerprint hex>.der`, one file per
//! certificate whose key signed a stored batch (chunks name it by fingerprint), written once,
//! durably, before the first chunk naming it, so that a verifier holding only the store
//! directory can check every agent signature.
use std::{
    collections::{HashMap, HashSet},
    fs::{self, File},
    io::Write,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use custos_pki::batch_signature;

use super::{StoreError, group::sync_dir, io_err};

/// The folder of the agents' certificates, in the store directory.
pub const DIR: &str = "agents";

/// The path of the certificate of fingerprint `fingerprint`, relative to the store directory.
pub fn path(fingerprint: &[u8; 32]) -> PathBuf {
    Path::new(DIR).join(format!("{}.der", hex::encode(fingerprint)))
}

/// Which certificates this process knows to be in `agents/` already.
#[derive(Default)]
pub struct AgentCertificates {
    written: HashSet<[u8; 32]>,
}

impl AgentCertificates {
    /// Makes sure `certificate` is in the store (written and fsynced when new) and returns its
    /// fingerprint.
    pub fn keep(&mut self, dir: &Path, certificate: &[u8]) -> Result<[u8; 32], StoreError> {
        let fingerprint = batch_signature::fingerprint(certificate);
        if self.written.contains(&fingerprint) {
            return Ok(fingerprint);
        }
        let target = dir.join(path(&fingerprint));
        if fs::read(&target).ok().as_deref() != Some(certificate) {
            let folder = dir.join(DIR);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&folder)
                .map_err(|e| io_err(&folder, e))?;
            let tmp = target.with_extension("der.tmp");
            let write = || -> std::io::Result<()> {
                let mut file = File::create(&tmp)?;
                file.set_permissions(fs::Permissions::from_mode(0o600))?;
                file.write_all(certificate)?;
                file.sync_all()?;
                fs::rename(&tmp, &target)
            };
            write().map_err(|e| io_err(&target, e))?;
            sync_dir(&folder)?;
            sync_dir(dir)?;
        }
        self.written.insert(fingerprint);
        Ok(fingerprint)
    }
}

/// The certificates read from a store's `agents/` folder, by fingerprint, for verification.
#[derive(Default)]
pub struct CertificateCache {
    dir: PathBuf,
    read: HashMap<[u8; 32], Result<Vec<u8>, String>>,
}

impl CertificateCache {
    pub fn new(dir: &Path) -> Self {
        CertificateCache {
            dir: dir.to_owned(),
            read: HashMap::new(),
        }
    }

    /// The certificate of `fingerprint`, checked to have that fingerprint.
    pub fn get(&mut self, fingerprint: &[u8; 32]) -> Result<&[u8], String> {
        let dir = &self.dir;
        self.read
            .entry(*fingerprint)
            .or_insert_with(|| {
                let file = dir.join(path(fingerprint));
                let bytes = fs::read(&file)
                    .map_err(|err| format!("agent certificate {}: {err}", file.display()))?;
                if batch_signature::fingerprint(&bytes) != *fingerprint {
                    return Err(format!(
                        "agent certificate {} is not the certificate of that fingerprint",
                        file.display()
                    ));
                }
                Ok(bytes)
            })
            .as_deref()
            .map_err(Clone::clone)
    }
}
