//! Checking a recording end to end, and every agent's chain, through the shared verifier
//! ([`crate::trust::store`], which `custos verify --offline` uses too): every chunk readable, in
//! place, chained, of this recording, authentic under its key and what its agent signed; the
//! seal's signature, chunk count and final hash; or, before the session ends, the index's count
//! and hash. Every problem names its chunk.
//!
//! [`Store::verify_agents`] checks every agent's chain of batches across the store, from the
//! recording files found on disk and the tombstones (not from the index): a batch or a whole
//! recording removed from the middle of a host's stream is a break naming the sequence numbers
//! around it.
use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use custos_pki::batch_signature::AgentCertificates;
use custos_proto::api::{AgentChainResult, VerifyResult};

use super::{Store, StoreError, io_err, seal_path};
use crate::trust::{
    agent::AgentChains,
    store::{CertificateCache, Verifier},
};

impl Store {
    /// The deployment CA's check of agents' certificates, when the store knows the CA.
    fn agent_trust(&self) -> Result<Option<AgentCertificates>, StoreError> {
        self.agent_ca
            .as_deref()
            .map(AgentCertificates::new)
            .transpose()
            .map_err(|err| io_err(self.agent_ca.as_deref().unwrap_or(Path::new("")), err))
    }

    fn verifier<'a>(&'a self, trust: Option<&'a AgentCertificates>) -> Verifier<'a> {
        Verifier {
            dir: self.dir(),
            seal_public: self.seal_key.public(),
            trust,
            keys: Some(&self.keys),
        }
    }

    /// Checks every agent's chain of batches across the store: the links of every chunk of
    /// every recording file under `recordings/` (the files found, not the index), with the
    /// batches tombstones record as removed. A chunk counts as a link only when it is readable
    /// and its agent signature and content verify (a recording file the index does not list is
    /// checked as well). One result per agent and spool.
    pub fn verify_agents(&self) -> Result<Vec<AgentChainResult>, StoreError> {
        Ok(self.verify_files()?.1)
    }

    /// Checks every recording file found under `recordings/` (with its seal, not the index)
    /// and every agent's chain: one result per file, one per agent and spool.
    pub fn verify_files(&self) -> Result<(Vec<VerifyResult>, Vec<AgentChainResult>), StoreError> {
        let trust = self.agent_trust()?;
        self.verifier(trust.as_ref())
            .check_recordings()
            .map_err(|err| io_err(self.dir(), err))
    }

    pub fn verify(&self, id: &str) -> Result<VerifyResult, StoreError> {
        let row = self
            .index()
            .recording(id)?
            .ok_or_else(|| StoreError::Recording {
                recording: id.to_owned(),
                message: "no such recording".into(),
            })?;
        let path = self.dir().join(&row.path);
        // Read one chunk at a time, as it is checked.
        let (file, unreadable): (Box<dyn Read>, _) = match File::open(&path) {
            Ok(file) => (Box::new(BufReader::new(file)), None),
            Err(err) => (
                Box::new(std::io::empty()),
                Some(format!("recording file {}: {err}", path.display())),
            ),
        };
        let trust = self.agent_trust()?;
        let verifier = self.verifier(trust.as_ref());
        let mut certificates = CertificateCache::new(self.dir());
        let mut read = verifier.check_recording(
            file,
            &row.key,
            &mut certificates,
            &mut AgentChains::default(),
        );
        read.problems.splice(0..0, unreadable);
        let (count, prev) = (read.chunks, read.last_hash);
        let seal_file = self.dir().join(seal_path(&row.path));
        let seal = verifier.check_seal(&seal_file, &row.key, &read);
        let sealed = seal.is_some();
        if let Some(problems) = seal {
            read.problems.extend(problems);
        } else if row.sealed {
            read.problems
                .push(format!("seal {} is missing", seal_file.display()));
        } else if count < row.chunks {
            read.problems.push(format!(
                "chunk {count}: the recording ends after {count} chunks but the index has {} (truncated)",
                row.chunks
            ));
        } else if count == row.chunks && prev != row.last_hash {
            read.problems.push(format!(
                "chunk {}: the last chunk's hash differs from the index's",
                count.saturating_sub(1)
            ));
        }
        Ok(VerifyResult {
            id: id.to_owned(),
            ok: read.problems.is_empty(),
            chunks: count,
            sealed,
            problems: read.problems,
            unsigned_chunks: read.unsigned_chunks,
        })
    }
}
