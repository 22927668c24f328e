//! A tombstone: the collector's signed record that it removed a recording on purpose (retention,
//! or an administrator's purge), listing the agents' batches that went with it, so that the
//! agents' chains still verify across the removal and an unexpected deletion does not
//! (docs/store.md, "Tombstones").
//!
//! The file is JSON: `body` (a JSON string: the [`TombstoneBody`]), `public_key` and `signature`
//! (hex Ed25519, the collector's seal key over `"custos tombstone v1\n"` followed by the exact
//! bytes of `body`). Signing the body's bytes as written spares a verifier any canonical form.
use custos_proto::{
    Timestamp,
    wire::{BatchHash, BatchSeq, SpoolId},
};
use serde::{Deserialize, Serialize};

use crate::{
    chunk::RecordingKey,
    keys::{self, SealKey},
};

/// Starts the message a tombstone's signature covers.
pub const CONTEXT: &[u8] = b"custos tombstone v1\n";

/// What was removed, when, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TombstoneBody {
    pub version: u32,
    pub recording: RecordingKey,
    /// The recording's chunks and the last one's hash (hex) when it was removed.
    pub chunks: u64,
    pub final_hash: String,
    pub removed_at: Timestamp,
    /// Why (the retention run's or the administrator's reason).
    pub reason: String,
    /// Which rule or who: e.g. `retention: last received before <time>`.
    pub by: String,
    /// Each batch the recording held.
    pub batches: Vec<RemovedBatch>,
}

/// One agent batch removed with its recording: its link of the agent's chain, the link's hash
/// and the previous batch's (hex; absent for an unsigned batch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemovedBatch {
    pub spool: SpoolId,
    pub seq: BatchSeq,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
}

impl RemovedBatch {
    /// The link's hash and its previous, when both are there and well formed.
    pub fn hashes(&self) -> Option<(BatchHash, BatchHash)> {
        let parse = |hex: &Option<String>| -> Option<BatchHash> {
            Some(BatchHash(
                hex::decode(hex.as_deref()?).ok()?.try_into().ok()?,
            ))
        };
        Some((parse(&self.link)?, parse(&self.prev)?))
    }
}

/// A tombstone file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tombstone {
    pub body: String,
    pub public_key: String,
    pub signature: String,
}

impl Tombstone {
    pub fn sign(key: &SealKey, body: &TombstoneBody) -> Tombstone {
        let body = serde_json::to_string(body).unwrap_or_default();
        let signature = key.sign(&message(&body));
        Tombstone {
            body,
            public_key: hex::encode(key.public()),
            signature: hex::encode(signature),
        }
    }

    /// The body, when the signature is `public`'s.
    pub fn open(&self, public: &[u8; 32]) -> Result<TombstoneBody, String> {
        let signature = hex::decode(&self.signature).unwrap_or_default();
        if !keys::verify_seal(public, &message(&self.body), &signature) {
            return Err("its signature does not verify with the collector's seal key".into());
        }
        serde_json::from_str(&self.body).map_err(|err| format!("unreadable body: {err}"))
    }
}

fn message(body: &str) -> Vec<u8> {
    let mut out = CONTEXT.to_vec();
    out.extend_from_slice(body.as_bytes());
    out
}
