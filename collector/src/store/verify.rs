//! Checking a recording end to end: every chunk readable, in place (its index), chained to the
//! one before it, authentic under its key; the seal's signature, chunk count and final hash; or,
//! before the session ends, the index's count and hash. Every problem names its chunk.
use std::fs;

use custos_proto::api::VerifyResult;

use super::{
    Seal, Store, StoreError,
    chunk::{self, ChunkHash},
    keys, seal_path,
};

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
        let mut offset = 0usize;
        let mut count = 0u64;
        let mut prev = ChunkHash::default();
        while offset < bytes.len() {
            let raw = match chunk::parse(&bytes[offset..]) {
                Ok(Some(raw)) => raw,
                Ok(None) => {
                    problems.push(format!(
                        "chunk {count}: cut short ({} bytes left at the end of the file)",
                        bytes.len() - offset
                    ));
                    break;
                }
                Err(err) => {
                    problems.push(format!("chunk {count}: unreadable at byte {offset}: {err}"));
                    break;
                }
            };
            if raw.header.index != count {
                problems.push(format!(
                    "chunk {count}: the chunk here says it is chunk {} (a chunk was removed, added or moved)",
                    raw.header.index
                ));
            }
            if raw.header.prev_hash != prev {
                problems.push(format!(
                    "chunk {count}: does not chain to the chunk before it (altered, removed or reordered)"
                ));
            }
            if raw.header.recording != row.key {
                problems.push(format!(
                    "chunk {count}: belongs to another recording ({})",
                    raw.header.recording.id()
                ));
            }
            match self.keys.get(&raw.header.key_id) {
                None => problems.push(format!(
                    "chunk {count}: needs key {}, not in the key file",
                    raw.header.key_id
                )),
                Some(key) => {
                    if chunk::decrypt(&raw, key).is_err() {
                        problems.push(format!("chunk {count}: fails authentication (altered)"));
                    }
                }
            }
            prev = raw.hash();
            offset += raw.encoded_len();
            count += 1;
        }
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
                    let message = Seal::message(&seal.recording, seal.chunks, &seal.final_hash);
                    let signature = hex::decode(&seal.signature).unwrap_or_default();
                    if seal.recording != row.key
                        || !keys::verify_seal(&self.seal_key.public(), &message, &signature)
                    {
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

    /// Ids of every recording in the index.
    pub fn recording_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .index()
            .connection()
            .prepare("SELECT id FROM recordings ORDER BY start_ns")
            .map_err(super::index::IndexError::from)?;
        let ids = stmt
            .query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
            .map_err(super::index::IndexError::from)?;
        Ok(ids)
    }
}
