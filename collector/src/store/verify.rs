//! Checking a recording end to end: every chunk readable, in place (its index), chained to the
//! one before it, of this recording, authentic under its key (the chain reader names each
//! break, and verification lists them all); the seal's signature, chunk count and final hash; or,
//! before the session ends, the index's count and hash; each chunk's agent signature (its events
//! are what the agent signed, [`crate::trust::agent`]). Every problem names its chunk.
//!
//! [`Store::verify_agents`] checks every agent's chain of batches across the store, from the
//! recording files found on disk and the tombstones (not from the index): a batch or a whole
//! recording removed from the middle of a host's stream is a break naming the sequence numbers
//! around it.
use std::{
    fs::{self, File},
    io::{BufReader, Read},
    path::Path,
};

use custos_pki::batch_signature::AgentCertificates;
use custos_proto::api::{AgentChainResult, VerifyResult};

use super::{Store, StoreError, certificates::CertificateCache, io_err, seal_path};
use crate::trust::{
    agent::{self, AgentChains},
    chain::ChainReader,
    seal::Seal,
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

    /// Checks every agent's chain of batches across the store: the links of every chunk of
    /// every recording file under `recordings/` (the files found, not the index), with the
    /// batches tombstones record as removed. A chunk counts as a link only when it is readable
    /// and its agent signature and content verify (a recording file the index does not list is
    /// checked as well). One result per agent and spool.
    pub fn verify_agents(&self) -> Result<Vec<AgentChainResult>, StoreError> {
        let trust = self.agent_trust()?;
        let mut certificates = CertificateCache::new(self.dir());
        let mut chains = AgentChains::default();
        let recordings = self.dir().join("recordings");
        for path in files_under(&recordings, "rec")? {
            let file = File::open(&path).map_err(|e| io_err(&path, e))?;
            // Chunks that do not read are not links; their breaks are the recording's.
            for chunk in ChainReader::new(BufReader::new(file), &self.keys).flatten() {
                let header = &chunk.raw.header;
                if let Some(signed) = &header.signed {
                    let problems = agent::check_chunk(
                        &chunk,
                        certificates.get(&signed.certificate),
                        trust.as_ref(),
                    );
                    if !problems.is_empty() {
                        chains.add_unverified(header, &problems);
                        continue;
                    }
                }
                chains.add_chunk(header);
            }
        }
        self.add_tombstones(&mut chains)?;
        Ok(chains.check())
    }

    pub fn verify(&self, id: &str) -> Result<VerifyResult, StoreError> {
        let row = self
            .index()
            .recording(id)?
            .ok_or_else(|| StoreError::Recording {
                recording: id.to_owned(),
                message: "no such recording".into(),
            })?;
        let mut problems = Vec::new();
        let path = self.dir().join(&row.path);
        // Read one chunk at a time, as it is checked.
        let file: Box<dyn Read> = match File::open(&path) {
            Ok(file) => Box::new(BufReader::new(file)),
            Err(err) => {
                problems.push(format!("recording file {}: {err}", path.display()));
                Box::new(std::io::empty())
            }
        };
        let trust = self.agent_trust()?;
        let mut certificates = CertificateCache::new(self.dir());
        let mut unsigned_chunks = 0;
        let mut chain = ChainReader::new(file, &self.keys).expecting(&row.key);
        for item in chain.by_ref() {
            match item {
                Err(broken) => problems.push(broken.to_string()),
                Ok(chunk) => match &chunk.raw.header.signed {
                    None => unsigned_chunks += 1,
                    Some(signed) => problems.extend(agent::check_chunk(
                        &chunk,
                        certificates.get(&signed.certificate),
                        trust.as_ref(),
                    )),
                },
            }
        }
        let count = chain.chunks_read();
        let prev = chain.last_hash();
        let seal_file = self.dir().join(seal_path(&row.path));
        let sealed = seal_file.exists();
        if sealed {
            match fs::read(&seal_file)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Seal>(&b).map_err(|e| e.to_string()))
            {
                Err(err) => {
                    problems.push(format!("seal {}: unreadable: {err}", seal_file.display()))
                }
                Ok(seal) => {
                    if seal.recording != row.key || !seal.verifies(&self.seal_key.public()) {
                        problems.push(
                            "seal: the signature does not verify with the collector's seal key"
                                .into(),
                        );
                    }
                    if seal.chunks != count {
                        problems.push(format!(
                            "chunk {count}: the recording ends after {count} chunks but its seal says {} (truncated or extended)",
                            seal.chunks
                        ));
                    } else if seal.final_hash != prev.hex() {
                        problems.push(format!(
                            "chunk {}: the last chunk's hash differs from the sealed one",
                            count.saturating_sub(1)
                        ));
                    }
                }
            }
        } else if row.sealed {
            problems.push(format!("seal {} is missing", seal_file.display()));
        } else if count < row.chunks {
            problems.push(format!(
                "chunk {count}: the recording ends after {count} chunks but the index has {} (truncated)",
                row.chunks
            ));
        } else if count == row.chunks && prev != row.last_hash {
            problems.push(format!(
                "chunk {}: the last chunk's hash differs from the index's",
                count.saturating_sub(1)
            ));
        }
        Ok(VerifyResult {
            id: id.to_owned(),
            ok: problems.is_empty(),
            chunks: count,
            sealed,
            problems,
            unsigned_chunks,
        })
    }
}

/// Files ending in `.{ext}` anywhere under `dir` (none when it does not exist), sorted.
pub(super) fn files_under(dir: &Path, ext: &str) -> Result<Vec<std::path::PathBuf>, StoreError> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let listing = match fs::read_dir(&folder) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(&folder, err)),
        };
        for entry in listing {
            let entry = entry.map_err(|e| io_err(&folder, e))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| io_err(&path, e))?;
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}
