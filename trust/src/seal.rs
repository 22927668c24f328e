//! A recording's seal: the collector's signature over its final hash and chunk count, written
//! when the session ends. Making the message, signing and checking are here; where the seal
//! file lives is the store's.
use custos_proto::Timestamp;
use serde::{Deserialize, Serialize};

use crate::{
    chunk::{ChunkHash, RecordingKey},
    keys::{self, SealKey},
};

/// What a recording's seal file holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Seal {
    pub version: u32,
    pub recording: RecordingKey,
    pub chunks: u64,
    pub final_hash: String,
    pub sealed_at: Timestamp,
    pub public_key: String,
    pub signature: String,
}

impl Seal {
    /// The bytes the signature covers.
    pub fn message(recording: &RecordingKey, chunks: u64, final_hash: &str) -> Vec<u8> {
        format!(
            "custos seal v1\n{}\n{}\n{}\n{chunks}\n{final_hash}\n",
            recording.host, recording.boot_id, recording.session
        )
        .into_bytes()
    }

    /// Signs a recording of `chunks` chunks ending with `final_hash`, now.
    pub fn sign(
        key: &SealKey,
        recording: &RecordingKey,
        chunks: u64,
        final_hash: ChunkHash,
    ) -> Self {
        let final_hash = final_hash.hex();
        let signature = key.sign(&Self::message(recording, chunks, &final_hash));
        Seal {
            version: 1,
            recording: recording.clone(),
            chunks,
            final_hash,
            sealed_at: Timestamp::now(),
            public_key: hex::encode(key.public()),
            signature: hex::encode(signature),
        }
    }

    /// Whether the signature is `public`'s over this seal's recording, count and hash.
    pub fn verifies(&self, public: &[u8; 32]) -> bool {
        let message = Self::message(&self.recording, self.chunks, &self.final_hash);
        let signature = hex::decode(&self.signature).unwrap_or_default();
        keys::verify_seal(public, &message, &signature)
    }
}
