//! A spool record: one batch, framed so that a torn or damaged record is recognised and the
//! records after it are still found.
//!
//! ```text
//! magic "CSP1" | header_len u32 LE | payload_len u32 LE | header_crc u32 LE | payload_crc u32 LE
//! header: MessagePack BatchHeader | payload: the batch's compressed events
//! ```
//! CRCs are CRC-32C. A damaged header loses the record; a damaged payload keeps its header, so
//! the loss can be reported in the right session.
use custos_proto::wire::{Batch, BatchHeader};

pub const MAGIC: [u8; 4] = *b"CSP1";
pub const PREFIX_LEN: usize = 20;
/// Largest header or payload accepted when reading.
pub const MAX_PART: usize = 64 * 1024 * 1024;

pub fn encode(batch: &Batch) -> Vec<u8> {
    let header = rmp_serde::to_vec_named(&batch.header).unwrap_or_default();
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + batch.events.len());
    out.extend_from_slice(&MAGIC);
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
    /// An intact record of `len` bytes.
    Record { header: BatchHeader, len: usize },
    /// A record whose header is intact but payload is damaged: its events are lost.
    DamagedPayload { header: BatchHeader, len: usize },
    /// Not a readable record here.
    Damaged,
    /// The data ends inside a record (a torn write at the end).
    Truncated,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Reads the record at the start of `buf`.
pub fn read(buf: &[u8]) -> Found {
    if buf.len() < PREFIX_LEN {
        return if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            Found::Truncated
        } else {
            Found::Damaged
        };
    }
    if buf[..4] != MAGIC {
        return Found::Damaged;
    }
    let (hlen, plen) = (u32_at(buf, 4) as usize, u32_at(buf, 8) as usize);
    if hlen > MAX_PART || plen > MAX_PART {
        return Found::Damaged;
    }
    let len = PREFIX_LEN + hlen + plen;
    if buf.len() < PREFIX_LEN + hlen {
        return Found::Truncated;
    }
    let header_bytes = &buf[PREFIX_LEN..PREFIX_LEN + hlen];
    if crc32c::crc32c(header_bytes) != u32_at(buf, 12) {
        return Found::Damaged;
    }
    let Ok(header) = rmp_serde::from_slice::<BatchHeader>(header_bytes) else {
        return Found::Damaged;
    };
    if buf.len() < len {
        return Found::Truncated;
    }
    if crc32c::crc32c(&buf[PREFIX_LEN + hlen..len]) != u32_at(buf, 16) {
        return Found::DamagedPayload { header, len };
    }
    Found::Record { header, len }
}

/// The payload of an intact record of `len` bytes at the start of `buf`.
pub fn payload(buf: &[u8], len: usize) -> &[u8] {
    let hlen = u32_at(buf, 4) as usize;
    &buf[PREFIX_LEN + hlen..len]
}

/// Where the next record may start after damage at `from`: the next magic.
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from + 1..)?
        .windows(4)
        .position(|w| w == MAGIC)
        .map(|pos| from + 1 + pos)
}
