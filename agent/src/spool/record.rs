//! A spool record: one batch, framed so that a torn or damaged record is recognised and the
//! records after it are still found, its events sealed with the spool key.
//!
//! Version 2 (`CSP2`, written):
//! ```text
//! magic "CSP2" | header_len u32 LE | payload_len u32 LE | header_crc u32 LE | payload_crc u32 LE
//!   | nonce [12]
//! header: MessagePack BatchHeader, clear (ids, sequence numbers, counts, times: what a gap
//!         record needs; no session content)
//! payload: ChaCha20-Poly1305(spool key, nonce, events) with its 16-byte tag, the associated
//!          data being magic | place | header, where place is where the record lies:
//!          0u8 | segment id u64 LE | offset u64 LE in a segment, 1u8 in rejected/
//! ```
//! The nonce is random per record. A record moved to another segment or offset, two records
//! swapped, a flipped byte or another key: the payload does not open, and the record is reported
//! like a damaged one (its header names the batch lost).
//!
//! Version 1 (`CSP1`, agents before sealing; read, never written): the same without the nonce,
//! the payload (the batch's compressed events) in clear.
//!
//! CRCs are CRC-32C. A damaged header loses the record; a damaged payload keeps its header, so
//! the loss can be reported in the right session.
use custos_proto::wire::{Batch, BatchHeader};
use ring::aead::NONCE_LEN;

use super::seal::{SpoolKey, TAG_LEN};

/// The clear records of agents before sealing.
pub const MAGIC_CLEAR: [u8; 4] = *b"CSP1";
/// Sealed records.
pub const MAGIC: [u8; 4] = *b"CSP2";
const PREFIX_CLEAR: usize = 20;
/// Bytes before the header of a sealed record.
pub const PREFIX_LEN: usize = PREFIX_CLEAR + NONCE_LEN;
/// Largest header or payload accepted when reading.
pub const MAX_PART: usize = 64 * 1024 * 1024;

/// Where a record lies: part of what its seal is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Segment {
        id: u64,
        offset: u64,
    },
    /// Alone in a file of `rejected/`.
    Rejected,
}

fn associated(header: &[u8], place: Place) -> Vec<u8> {
    let mut aad = Vec::with_capacity(4 + 17 + header.len());
    aad.extend_from_slice(&MAGIC);
    match place {
        Place::Segment { id, offset } => {
            aad.push(0);
            aad.extend_from_slice(&id.to_le_bytes());
            aad.extend_from_slice(&offset.to_le_bytes());
        }
        Place::Rejected => aad.push(1),
    }
    aad.extend_from_slice(header);
    aad
}

fn header_bytes(batch: &Batch) -> Vec<u8> {
    rmp_serde::to_vec_named(&batch.header).unwrap_or_default()
}

/// The length of `batch`'s sealed record.
pub fn sealed_len(batch: &Batch) -> usize {
    PREFIX_LEN + header_bytes(batch).len() + batch.events.len() + TAG_LEN
}

/// `batch` as a sealed record lying at `place`.
pub fn encode(key: &SpoolKey, batch: &Batch, place: Place) -> Vec<u8> {
    let header = header_bytes(batch);
    let (nonce, payload) = key.seal(&associated(&header, place), &batch.events);
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    out
}

/// `batch` as a clear record of version 1 (what agents before sealing wrote).
#[cfg(test)]
pub fn encode_clear(batch: &Batch) -> Vec<u8> {
    let header = header_bytes(batch);
    let mut out = Vec::with_capacity(PREFIX_CLEAR + header.len() + batch.events.len());
    out.extend_from_slice(&MAGIC_CLEAR);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&batch.events).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&batch.events);
    out
}

/// What was found at an offset of a segment.
#[derive(Debug)]
pub enum Found {
    /// An intact record of `len` bytes, opened.
    Record { batch: Batch, len: usize },
    /// A record whose header is intact but payload is damaged: its events are lost.
    DamagedPayload { header: BatchHeader, len: usize },
    /// A record whose header is intact but whose payload does not open with this key here
    /// (another key, or moved, swapped or altered): its events are lost.
    Unopened { header: BatchHeader, len: usize },
    /// Not a readable record here.
    Damaged,
    /// The data ends inside a record (a torn write at the end).
    Truncated,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads the record at the start of `buf`, which lies at `place`, opening its events.
pub fn read(buf: &[u8], key: &SpoolKey, place: Place) -> Found {
    let magic = &buf[..buf.len().min(4)];
    let sealed = if magic == MAGIC {
        true
    } else if magic == MAGIC_CLEAR {
        false
    } else if buf.len() < 4 && (MAGIC.starts_with(magic) || MAGIC_CLEAR.starts_with(magic)) {
        return Found::Truncated;
    } else {
        return Found::Damaged;
    };
    let prefix = if sealed { PREFIX_LEN } else { PREFIX_CLEAR };
    if buf.len() < prefix {
        return Found::Truncated;
    }
    let (hlen, plen) = (u32_at(buf, 4) as usize, u32_at(buf, 8) as usize);
    if hlen > MAX_PART || plen > MAX_PART || (sealed && plen < TAG_LEN) {
        return Found::Damaged;
    }
    let len = prefix + hlen + plen;
    if buf.len() < prefix + hlen {
        return Found::Truncated;
    }
    let header_bytes = &buf[prefix..prefix + hlen];
    if crc32c::crc32c(header_bytes) != u32_at(buf, 12) {
        return Found::Damaged;
    }
    let Ok(header) = rmp_serde::from_slice::<BatchHeader>(header_bytes) else {
        return Found::Damaged;
    };
    if buf.len() < len {
        return Found::Truncated;
    }
    let payload = &buf[prefix + hlen..len];
    if crc32c::crc32c(payload) != u32_at(buf, 16) {
        return Found::DamagedPayload { header, len };
    }
    let events = if sealed {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[PREFIX_CLEAR..PREFIX_LEN]);
        match key.open(nonce, &associated(header_bytes, place), payload) {
            Some(events) => events,
            None => return Found::Unopened { header, len },
        }
    } else {
        payload.to_vec()
    };
    Found::Record {
        batch: Batch { header, events },
        len,
    }
}

/// Where the next record may start after damage at `from`: the next magic (of either version).
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from + 1..)?
        .windows(4)
        .position(|w| w == MAGIC || w == MAGIC_CLEAR)
        .map(|pos| from + 1 + pos)
}
