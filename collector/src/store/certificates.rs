//! The agents' certificates in the store: `agents/<SHA-256 fingerprint hex>.der`, one file per
//! certificate whose key signed a stored batch (chunks name it by fingerprint), written once,
//! durably, before the first chunk naming it, so that a verifier holding only the store
//! directory can check every agent signature.
use std::{
    collections::HashSet,
    fs::{self, File},
    io::Write,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
};

use custos_pki::batch_signature;

use super::{StoreError, group::sync_dir, io_err};

pub use crate::trust::store::{AGENTS_DIR as DIR, certificate_path as path};

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
