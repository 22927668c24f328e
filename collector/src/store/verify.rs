//! Checking a recording end to end: every chunk readable, in place (its index), chained to the
//! one before it, of this recording, authentic under its key (the chain reader names each
//! break, and verification lists them all); the seal's signature, chunk count and final hash; or,
//! before the session ends, the index's count and hash. Every problem names its chunk.
use std::fs;

use custos_proto::api::VerifyResult;

use super::{Store, StoreError, seal_path};
use crate::trust::{chain::ChainReader, seal::Seal};

impl Store {
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
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) => {
                problems.push(format!("recording file {}: {err}", path.display()));
                Vec::new()
            }
        };
        let mut chain = ChainReader::new(&bytes, &self.keys).expecting(&row.key);
        problems.extend(
            chain
                .by_ref()
                .filter_map(|item| Some(item.err()?.to_string())),
        );
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
        })
    }
}
