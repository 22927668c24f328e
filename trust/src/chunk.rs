//! The chunk: the unit a recording file is made of (format in docs/store.md).
//!
//! A chunk holds the events of one batch, zstd-compressed and encrypted with
//! XChaCha20-Poly1305 under a key named in its header; the header is the encryption's associated
//! data, so neither can be changed without the tag failing. Each header carries the SHA-256 hash
//! of the previous chunk, which chains a recording's chunks together: a flipped bit, a removed or
//! reordered chunk, all break the chain.
//!
//! Functions over bytes and readers; the store opens the files.
use std::io::Read;

use chacha20poly1305::{XChaCha20Poly1305, XNonce, aead::Aead, aead::KeyInit, aead::Payload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use custos_proto::{
    AuditSessionId, BootId, Seq, Timestamp,
    wire::{BatchHash, BatchLink, BatchSeq, SpoolId},
};

pub const MAGIC: [u8; 4] = *b"CCK1";
pub const VERSION: u32 = 1;
/// magic + header length + body length.
pub const PREFIX_LEN: usize = 12;
/// Largest header or body accepted when reading (a length beyond is damage, not data).
pub const MAX_PART: usize = 256 * 1024 * 1024;

/// A SHA-256 hash of a chunk.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl ChunkHash {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", &self.hex()[..16])
    }
}

/// Names a recording: one login session of one boot of one host.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordingKey {
    pub host: String,
    pub boot_id: BootId,
    pub session: AuditSessionId,
}

impl RecordingKey {
    /// The id auditors use: `host-bootprefix-session`, stable across index rebuilds.
    pub fn id(&self) -> String {
        let boot: String = self
            .boot_id
            .0
            .chars()
            .filter(|c| *c != '-')
            .take(8)
            .collect();
        format!("{}-{}-{}", self.host, boot, self.session.0)
    }
}

/// Which batch a chunk came from (so that a batch sent twice is stored once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRef {
    pub spool: SpoolId,
    pub seq: BatchSeq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub version: u32,
    pub recording: RecordingKey,
    /// Position in the recording, from 0.
    pub index: u64,
    /// Hash of chunk `index - 1`; all zeros for the first.
    pub prev_hash: ChunkHash,
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 24],
    pub batch: BatchRef,
    pub events: u32,
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    /// Size of the events once decompressed.
    pub raw_len: u64,
    /// When the collector received the batch, by the collector's clock (what retention goes
    /// by: the host's times above are the host's to set). Absent in chunks written before
    /// collectors recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<Timestamp>,
    /// The sending host's clock disagreed with the collector's by more than the allowed skew
    /// (`ingest.max_clock_skew`) when the batch arrived. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_clock_skewed: bool,
    /// The agent's signature on the batch, as it arrived (absent for batches of agents that do
    /// not sign, protocol 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<AgentSignature>,
}

impl ChunkHeader {
    /// The link of the agent's chain this chunk's batch is, when it was signed.
    pub fn link(&self) -> Option<BatchLink<'_>> {
        let signed = self.signed.as_ref()?;
        Some(BatchLink {
            spool: &self.batch.spool,
            seq: self.batch.seq,
            content: signed.content,
            prev: signed.prev,
        })
    }
}

/// What the agent signed, kept beside the chunk: the batch's content hash, the link hash of the
/// agent's previous batch in the spool, the signature, and which certificate's key made it (its
/// SHA-256 fingerprint; the certificate is `agents/<fingerprint hex>.der` in the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSignature {
    pub content: BatchHash,
    pub prev: BatchHash,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub certificate: [u8; 32],
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("no chunk magic at this offset")]
    BadMagic,
    #[error("chunk part of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("unreadable chunk header: {0}")]
    BadHeader(String),
    #[error("chunk fails authentication (altered, or encrypted under another key)")]
    Unauthentic,
    #[error("chunk encrypted under unknown key {0}")]
    UnknownKey(String),
    #[error("the recording file could not be read: {0}")]
    Io(String),
}

/// A chunk as read: its header (parsed and as bytes) and its encrypted body.
#[derive(Clone, Debug)]
pub struct RawChunk {
    pub header: ChunkHeader,
    pub header_bytes: Vec<u8>,
    pub body: Vec<u8>,
}

impl RawChunk {
    pub fn hash(&self) -> ChunkHash {
        hash(&self.header_bytes, &self.body)
    }

    pub fn encoded_len(&self) -> usize {
        PREFIX_LEN + self.header_bytes.len() + self.body.len()
    }
}

pub fn hash(header_bytes: &[u8], body: &[u8]) -> ChunkHash {
    let mut hasher = Sha256::new();
    hasher.update(b"custos chunk v1\0");
    hasher.update(header_bytes);
    hasher.update(body);
    let digest = hasher.finalize();
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    ChunkHash(out)
}

/// Encrypts `plaintext` (zstd-compressed events) under `key` and returns the encoded chunk and
/// its hash. `header.nonce` must be fresh.
pub fn encode(header: &ChunkHeader, plaintext: &[u8], key: &[u8; 32]) -> (Vec<u8>, ChunkHash) {
    let header_bytes = rmp_serde::to_vec_named(header).unwrap_or_default();
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let nonce = XNonce::from(header.nonce);
    let body = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &header_bytes,
            },
        )
        .expect("encryption of a bounded message");
    let mut out = Vec::with_capacity(PREFIX_LEN + header_bytes.len() + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&body);
    let chunk_hash = hash(&header_bytes, &body);
    (out, chunk_hash)
}

/// What reading a recording file at a chunk's start found.
#[derive(Debug)]
pub enum Next {
    Chunk(Box<RawChunk>),
    /// The file ends here, between chunks.
    End,
    /// The file ends inside the chunk (a torn write at its end), after this many bytes of it.
    Cut(usize),
}

/// Reads the chunk at the reader's position, and only it: a recording is read one chunk at a
/// time, whatever its size. Lengths are checked before anything is allocated for them, and
/// what is allocated grows only with the bytes actually there.
pub fn read(source: &mut impl Read) -> Result<Next, ChunkError> {
    let mut prefix = [0u8; PREFIX_LEN];
    let got = fill(source, &mut prefix)?;
    if got == 0 {
        return Ok(Next::End);
    }
    if got < PREFIX_LEN {
        return Ok(Next::Cut(got));
    }
    if prefix[..4] != MAGIC {
        return Err(ChunkError::BadMagic);
    }
    let hlen = u32::from_be_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]) as usize;
    let blen = u32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    for len in [hlen, blen] {
        if len > MAX_PART {
            return Err(ChunkError::TooLarge(len));
        }
    }
    let header_bytes = read_part(source, hlen)?;
    let body = if header_bytes.len() == hlen {
        read_part(source, blen)?
    } else {
        Vec::new()
    };
    if header_bytes.len() < hlen || body.len() < blen {
        return Ok(Next::Cut(PREFIX_LEN + header_bytes.len() + body.len()));
    }
    let header: ChunkHeader = rmp_serde::from_slice(&header_bytes)
        .map_err(|err| ChunkError::BadHeader(err.to_string()))?;
    Ok(Next::Chunk(Box::new(RawChunk {
        header,
        header_bytes,
        body,
    })))
}

/// Fills `buf` from `source` as far as it goes: the number of bytes read.
fn fill(source: &mut impl Read, buf: &mut [u8]) -> Result<usize, ChunkError> {
    let mut got = 0;
    while got < buf.len() {
        match source.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(ChunkError::Io(err.to_string())),
        }
    }
    Ok(got)
}

/// Up to `len` bytes of `source` (fewer at its end).
fn read_part(source: &mut impl Read, len: usize) -> Result<Vec<u8>, ChunkError> {
    // What a damaged length announces is not reserved up front: the buffer grows with the data.
    let mut part = Vec::with_capacity(len.min(1024 * 1024));
    source
        .take(len as u64)
        .read_to_end(&mut part)
        .map_err(|err| ChunkError::Io(err.to_string()))?;
    Ok(part)
}

/// Parses the chunk at the start of `buf`. `Ok(None)`: `buf` ends before the chunk does (a
/// torn write at the end of a file).
pub fn parse(mut buf: &[u8]) -> Result<Option<RawChunk>, ChunkError> {
    match read(&mut buf)? {
        Next::Chunk(raw) => Ok(Some(*raw)),
        Next::End | Next::Cut(_) => Ok(None),
    }
}

/// Decrypts a chunk's body with `key`.
pub fn decrypt(chunk: &RawChunk, key: &[u8; 32]) -> Result<Vec<u8>, ChunkError> {
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("32-byte key");
    let nonce = XNonce::from(chunk.header.nonce);
    cipher
        .decrypt(
            &nonce,
            Payload {
                msg: &chunk.body,
                aad: &chunk.header_bytes,
            },
        )
        .map_err(|_| ChunkError::Unauthentic)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn header(index: u64, prev: ChunkHash) -> ChunkHeader {
        ChunkHeader {
            version: VERSION,
            recording: RecordingKey {
                host: "db1".into(),
                boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
                session: AuditSessionId(7),
            },
            index,
            prev_hash: prev,
            key_id: "k1".into(),
            nonce: [index as u8; 24],
            batch: BatchRef {
                spool: SpoolId("s".into()),
                seq: BatchSeq(index + 1),
            },
            events: 1,
            first_seq: Seq(1),
            last_seq: Seq(1),
            first_time: Timestamp(0),
            last_time: Timestamp(0),
            raw_len: 5,
            received: Some(Timestamp(1)),
            host_clock_skewed: false,
            signed: None,
        }
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let key = [7u8; 32];
        let (bytes, hash) = encode(&header(0, ChunkHash::default()), b"hello", &key);
        let chunk = parse(&bytes).unwrap().unwrap();
        assert_eq!(chunk.hash(), hash);
        assert_eq!(chunk.encoded_len(), bytes.len());
        assert_eq!(decrypt(&chunk, &key).unwrap(), b"hello");
        assert_eq!(decrypt(&chunk, &[8u8; 32]), Err(ChunkError::Unauthentic));
        // A flipped bit in the body or the header fails authentication.
        for at in [bytes.len() - 3, PREFIX_LEN + 20] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 1;
            if let Ok(Some(chunk)) = parse(&flipped) {
                assert!(decrypt(&chunk, &key).is_err() || chunk.hash() != hash);
            }
        }
        assert!(
            parse(&bytes[..bytes.len() - 1]).unwrap().is_none(),
            "torn chunk"
        );
        assert_eq!(parse(b"XXXX00000000").unwrap_err(), ChunkError::BadMagic);
        assert_eq!(
            header(0, ChunkHash::default()).recording.id(),
            "db1-3ceb1d62-7"
        );
    }
}
