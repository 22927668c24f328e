//! Reading a recording's chain: the one place that walks chunk after chunk, checking that each
//! is whole, in its place (its index), chained to the one before (previous hash), of the
//! recording expected, and authentic under its key, then decrypts it.
//!
//! [`ChainReader`] yields each chunk that passes, or a [`ChainBreak`] naming what failed and
//! where. A cut-short or unreadable chunk ends the chain (nothing after it can be found); after
//! any other break the reader goes on with the next chunk, chained to the broken one's hash, so
//! that a verifier can name every problem. Callers keep their own policy: the store's recovery
//! cuts the tail at the first break, reading for auditors fails, an index rebuild stops and
//! marks the recording damaged, and verification lists them all.
//!
//! It reads from any [`Read`] (a recording file, or bytes in memory), one chunk at a time: only
//! the chunk being checked is ever in memory, whatever the recording's size.
use std::{collections::VecDeque, io::Read};

use custos_proto::{Event, wire};

use crate::{
    chunk::{self, ChunkError, ChunkHash, Next, RawChunk, RecordingKey},
    keys::KeyRing,
};

/// Largest decompressed chunk read back.
pub const MAX_CHUNK_RAW: usize = wire::DEFAULT_MAX_BATCH_RAW;

/// A chunk that passed every check, decrypted.
#[derive(Debug)]
pub struct ChainChunk {
    pub raw: RawChunk,
    /// Its hash, which the next chunk must name.
    pub hash: ChunkHash,
    /// Where it starts and ends in the bytes read (from where the reader started).
    pub start: usize,
    pub end: usize,
    /// The compressed events; `None` when read without the store key ([`ChainReader::public`]),
    /// which checks everything but the encryption's authentication and the content.
    pub plaintext: Option<Vec<u8>>,
}

impl ChainChunk {
    /// The chunk's events.
    pub fn events(&self) -> Result<Vec<Event>, ChainBreak> {
        let broke = |why: String| ChainBreak {
            chunk: self.raw.header.index,
            offset: self.start,
            kind: BreakKind::Undecodable(why),
        };
        let plaintext = self
            .plaintext
            .as_deref()
            .ok_or_else(|| broke("not decrypted (read without the store key)".into()))?;
        wire::decode_events(plaintext, self.raw.header.raw_len, MAX_CHUNK_RAW)
            .map_err(|err| broke(err.to_string()))
    }
}

/// Where the chain broke: the chunk's position (counted from the start of the recording) and
/// byte offset (in the bytes read), and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk {chunk}: {kind}")]
pub struct ChainBreak {
    pub chunk: u64,
    pub offset: usize,
    pub kind: BreakKind,
}

impl ChainBreak {
    /// Whether the reader stops here (nothing after it is found).
    pub fn ends_chain(&self) -> bool {
        matches!(
            self.kind,
            BreakKind::Truncated { .. } | BreakKind::Unreadable { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BreakKind {
    #[error("cut short ({remaining} bytes left at the end of the file)")]
    Truncated { remaining: usize },
    #[error("unreadable at byte {at}: {error}")]
    Unreadable { at: usize, error: ChunkError },
    #[error("the chunk here says it is chunk {found} (a chunk was removed, added or moved)")]
    IndexMismatch { found: u64 },
    #[error("does not chain to the chunk before it (altered, removed or reordered)")]
    PreviousHashMismatch,
    #[error("belongs to another recording ({found})")]
    OtherRecording { found: String },
    #[error("needs key {key_id}, not in the key file")]
    UnknownKey { key_id: String },
    #[error("fails authentication (altered)")]
    DecryptFailed,
    #[error("undecodable events: {0}")]
    Undecodable(String),
}

/// Walks a recording's chunks (see the module doc). An iterator of `Result<ChainChunk,
/// ChainBreak>`.
pub struct ChainReader<'a, R> {
    source: R,
    /// `None`: chunks are not decrypted (a check with public material only).
    keys: Option<&'a KeyRing>,
    recording: Option<&'a RecordingKey>,
    offset: usize,
    next_index: u64,
    prev: ChunkHash,
    /// Breaks of the current chunk not yielded yet.
    pending: VecDeque<ChainBreak>,
    ended: bool,
}

impl<'a, R: Read> ChainReader<'a, R> {
    /// Reads a whole recording, from its first chunk.
    pub fn new(source: R, keys: &'a KeyRing) -> Self {
        Self::resume(source, keys, 0, ChunkHash::default())
    }

    /// Reads a whole recording without the store key: every check but decryption (the chunks'
    /// hashes cover the ciphertext, so the chain, the indexes and the recording still check);
    /// the chunks yielded carry no plaintext.
    pub fn public(source: R) -> Self {
        Self::start(source, None, 0, ChunkHash::default())
    }

    /// Reads a whole recording, decrypting when `keys` are given ([`Self::public`] otherwise).
    pub fn with_keys(source: R, keys: Option<&'a KeyRing>) -> Self {
        Self::start(source, keys, 0, ChunkHash::default())
    }

    /// Reads chunks that follow chunk `next_index - 1`, whose hash is `prev` (the store's
    /// recovery reads what lies past the committed end).
    pub fn resume(source: R, keys: &'a KeyRing, next_index: u64, prev: ChunkHash) -> Self {
        Self::start(source, Some(keys), next_index, prev)
    }

    fn start(source: R, keys: Option<&'a KeyRing>, next_index: u64, prev: ChunkHash) -> Self {
        Self {
            source,
            keys,
            recording: None,
            offset: 0,
            next_index,
            prev,
            pending: VecDeque::new(),
            ended: false,
        }
    }

    /// Also checks that every chunk belongs to `recording`.
    pub fn expecting(mut self, recording: &'a RecordingKey) -> Self {
        self.recording = Some(recording);
        self
    }

    /// How many chunks were found (broken or not).
    pub fn chunks_read(&self) -> u64 {
        self.next_index
    }

    /// The hash of the last chunk found (all zeros before the first).
    pub fn last_hash(&self) -> ChunkHash {
        self.prev
    }

    /// Reads the next chunk: `Ok` when it passes every check, its breaks otherwise; `None` at
    /// the end of the file.
    fn read(&mut self) -> Option<Result<ChainChunk, ()>> {
        let index = self.next_index;
        let start = self.offset;
        let broke = |kind| ChainBreak {
            chunk: index,
            offset: start,
            kind,
        };
        let raw = match chunk::read(&mut self.source) {
            Ok(Next::Chunk(raw)) => *raw,
            Ok(Next::End) => return None,
            Ok(Next::Cut(remaining)) => {
                self.pending
                    .push_back(broke(BreakKind::Truncated { remaining }));
                return Some(Err(()));
            }
            Err(err) => {
                self.pending.push_back(broke(BreakKind::Unreadable {
                    at: start,
                    error: err,
                }));
                return Some(Err(()));
            }
        };
        let header = &raw.header;
        if header.index != index {
            self.pending.push_back(broke(BreakKind::IndexMismatch {
                found: header.index,
            }));
        }
        if header.prev_hash != self.prev {
            self.pending
                .push_back(broke(BreakKind::PreviousHashMismatch));
        }
        if let Some(expected) = self.recording
            && header.recording != *expected
        {
            self.pending.push_back(broke(BreakKind::OtherRecording {
                found: header.recording.id(),
            }));
        }
        let plaintext = match self.keys.map(|keys| keys.get(&header.key_id)) {
            None => Some(None),
            Some(None) => {
                self.pending.push_back(broke(BreakKind::UnknownKey {
                    key_id: header.key_id.clone(),
                }));
                None
            }
            Some(Some(key)) => match chunk::decrypt(&raw, key) {
                Ok(plain) => Some(Some(plain)),
                Err(_) => {
                    self.pending.push_back(broke(BreakKind::DecryptFailed));
                    None
                }
            },
        };
        let hash = raw.hash();
        let end = start + raw.encoded_len();
        self.prev = hash;
        self.offset = end;
        self.next_index += 1;
        Some(match plaintext {
            Some(plaintext) if self.pending.is_empty() => Ok(ChainChunk {
                raw,
                hash,
                start,
                end,
                plaintext,
            }),
            _ => Err(()),
        })
    }
}

impl<R: Read> Iterator for ChainReader<'_, R> {
    type Item = Result<ChainChunk, ChainBreak>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(broken) = self.pending.pop_front() {
            self.ended |= broken.ends_chain();
            return Some(Err(broken));
        }
        if self.ended {
            return None;
        }
        match self.read() {
            None => {
                self.ended = true;
                None
            }
            Some(Ok(chunk)) => Some(Ok(chunk)),
            Some(Err(())) => self.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::header;

    const KEY: [u8; 32] = [7; 32];

    /// A chain of `n` chunks as the store writes it, and each chunk's (start, end).
    fn chain(n: u64) -> (Vec<u8>, Vec<(usize, usize)>) {
        let (mut bytes, mut spans, mut prev) = (Vec::new(), Vec::new(), ChunkHash::default());
        for index in 0..n {
            let (encoded, hash) = chunk::encode(&header(index, prev), b"hello", &KEY);
            spans.push((bytes.len(), bytes.len() + encoded.len()));
            bytes.extend_from_slice(&encoded);
            prev = hash;
        }
        (bytes, spans)
    }

    fn read(bytes: &[u8]) -> Vec<Result<u64, String>> {
        let keys = KeyRing::single("k1", KEY);
        ChainReader::new(bytes, &keys)
            .map(|item| item.map(|c| c.raw.header.index).map_err(|b| b.to_string()))
            .collect()
    }

    #[test]
    fn without_the_key_the_chain_still_checks_but_nothing_is_decrypted() {
        let (bytes, spans) = chain(3);
        let public: Vec<_> = ChainReader::public(&bytes[..]).collect();
        assert_eq!(public.len(), 3);
        for chunk in &public {
            let chunk = chunk.as_ref().unwrap();
            assert!(chunk.plaintext.is_none());
            assert!(chunk.events().is_err(), "no events without the key");
        }
        // A chunk removed from the middle breaks the chain for a public reader too.
        let mut cut = bytes[..spans[0].1].to_vec();
        cut.extend_from_slice(&bytes[spans[2].0..]);
        let breaks: Vec<String> = ChainReader::public(&cut[..])
            .filter_map(|item| item.err().map(|b| b.to_string()))
            .collect();
        assert_eq!(
            breaks,
            vec![
                "chunk 1: the chunk here says it is chunk 2 (a chunk was removed, added or moved)",
                "chunk 1: does not chain to the chunk before it (altered, removed or reordered)",
            ]
        );
    }

    #[test]
    fn a_whole_chain_reads_back_in_order() {
        let (bytes, spans) = chain(3);
        assert_eq!(read(&bytes), vec![Ok(0), Ok(1), Ok(2)]);
        let keys = KeyRing::single("k1", KEY);
        let mut reader = ChainReader::new(&bytes[..], &keys);
        let first = reader.next().unwrap().unwrap();
        assert_eq!((first.start, first.end), spans[0]);
        assert_eq!(first.plaintext.as_deref(), Some(&b"hello"[..]));
        assert_eq!(reader.by_ref().count(), 2);
        assert_eq!(reader.chunks_read(), 3);
    }

    #[test]
    fn each_break_is_named_and_a_cut_ends_the_chain() {
        let (bytes, spans) = chain(3);
        // A flipped bit in the second chunk's body: it fails authentication, and the third
        // no longer chains to it.
        let mut flipped = bytes.clone();
        flipped[spans[1].1 - 3] ^= 1;
        assert_eq!(
            read(&flipped),
            vec![
                Ok(0),
                Err("chunk 1: fails authentication (altered)".into()),
                Err(
                    "chunk 2: does not chain to the chunk before it (altered, removed or reordered)"
                        .into()
                ),
            ]
        );
        // The second chunk removed: the third sits in its place.
        let mut removed = bytes.clone();
        removed.drain(spans[1].0..spans[1].1);
        let read_back = read(&removed);
        assert_eq!(read_back[0], Ok(0));
        assert_eq!(
            read_back[1],
            Err(
                "chunk 1: the chunk here says it is chunk 2 (a chunk was removed, added or moved)"
                    .into()
            )
        );
        // Cut inside the third chunk: the reader stops there.
        let cut = &bytes[..spans[2].1 - 1];
        let remaining = spans[2].1 - 1 - spans[2].0;
        assert_eq!(
            read(cut),
            vec![
                Ok(0),
                Ok(1),
                Err(format!(
                    "chunk 2: cut short ({remaining} bytes left at the end of the file)"
                )),
            ]
        );
    }

    #[test]
    fn an_unknown_key_and_another_recording_are_breaks() {
        let (bytes, _) = chain(1);
        let other_keys = KeyRing::single("k2", KEY);
        let breaks: Vec<_> = ChainReader::new(&bytes[..], &other_keys).collect();
        assert!(
            matches!(&breaks[..], [Err(ChainBreak { chunk: 0, kind: BreakKind::UnknownKey { key_id }, .. })] if key_id == "k1"),
            "{breaks:?}"
        );
        let keys = KeyRing::single("k1", KEY);
        let mut elsewhere = header(0, ChunkHash::default()).recording;
        elsewhere.host = "db2".into();
        let breaks: Vec<_> = ChainReader::new(&bytes[..], &keys)
            .expecting(&elsewhere)
            .collect();
        assert!(
            matches!(
                &breaks[..],
                [Err(ChainBreak {
                    kind: BreakKind::OtherRecording { .. },
                    ..
                })]
            ),
            "{breaks:?}"
        );
    }

    #[test]
    fn resuming_past_a_committed_end_checks_the_link_to_it() {
        let (bytes, spans) = chain(3);
        let keys = KeyRing::single("k1", KEY);
        let at = spans[1].0;
        let prev = chunk::parse(&bytes).unwrap().unwrap().hash();
        let tail: Vec<_> = ChainReader::resume(&bytes[at..], &keys, 1, prev)
            .map(|item| item.map(|c| (c.raw.header.index, c.end)))
            .collect();
        assert_eq!(
            tail,
            vec![Ok((1, spans[1].1 - at)), Ok((2, spans[2].1 - at))]
        );
        let wrong = ChainReader::resume(&bytes[at..], &keys, 1, ChunkHash::default())
            .next()
            .unwrap();
        assert!(
            matches!(
                wrong,
                Err(ChainBreak {
                    chunk: 1,
                    offset: 0,
                    kind: BreakKind::PreviousHashMismatch
                })
            ),
            "{wrong:?}"
        );
    }
}
