//! The spool: batches on disk until the collector acknowledges them.
//!
//! Layout of the spool directory (default /var/lib/custos/spool, mode 0700):
//! - `spool.state`: the spool's id, the next batch sequence number and the head of the spool's
//!   chain of signed batches (JSON, replaced atomically). The id is created once, so a new spool
//!   starts a new sequence space at the collector. The chain's head (the last signed batch's
//!   seq and link hash, which the next batch names as its previous) is always either in a
//!   segment or in the state: the state is written before a segment is deleted, so the chain
//!   continues across restarts. It holds no session content and is not sealed: a new spool key
//!   does not start a new chain.
//! - `segments/<first seq>.seg`: batches appended as [`record`]s and fsynced before they are
//!   sent. A segment is deleted once every batch in it is acknowledged.
//! - `rejected/<seq>.batch`: batches the collector refused for good, one record each, kept for
//!   `spool.keep_rejected`.
//!
//! What sessions did is sealed with the agent's [`seal::SpoolKey`] (`spool.key_file`, outside
//! this directory) before it is written: segments and `rejected/` hold it only encrypted. Clear
//! segments of agents before sealing are still read, and deleted once shipped.
//!
//! The spool is bounded: when a batch would not fit, the oldest segments go, acknowledged or
//! not, and the batches lost are returned so that they become gap records. At start, every
//! segment is read back; damaged records (and records that do not open with the key) are
//! skipped (the records after them are found again) and reported, a torn last record is cut.
pub mod record;
pub mod seal;

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Instant,
};

use custos_pki::batch_signature::BatchSigner;
use custos_proto::{
    event::GapReason,
    wire::{Batch, BatchHash, BatchHeader, BatchLink, BatchSeq, BatchSignature, SpoolId},
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use self::{
    record::{Found, Place},
    seal::SpoolKey,
};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("batch {0} is no longer in the spool")]
    Gone(BatchSeq),
    #[error("batch {0} in the spool is damaged")]
    Damaged(BatchSeq),
    #[error("batch {0} could not be signed: {1}")]
    Sign(BatchSeq, String),
}

fn io(path: &Path, err: impl std::fmt::Display) -> SpoolError {
    SpoolError::Io {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    spool: SpoolId,
    next_batch: u64,
    /// The last signed batch (absent before the first, and in states of agents that did not
    /// sign).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chain: Option<ChainHead>,
}

/// The last signed batch of the spool: the next one names `hash` as its previous.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub seq: BatchSeq,
    /// Its link hash (`BatchLink::hash`).
    pub hash: BatchHash,
}

#[derive(Debug)]
struct Entry {
    segment: u64,
    offset: u64,
    len: u64,
    header: BatchHeader,
    acked: bool,
    /// When this process appended it, or found it at start.
    spooled: Instant,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    size: u64,
}

/// What reading the spool back found wrong.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Bytes that were no readable record, skipped.
    pub skipped_bytes: u64,
    /// Batches whose header survived but whose events did not.
    pub damaged: Vec<BatchHeader>,
    /// Bytes of a torn last record, cut.
    pub torn_bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    id: SpoolId,
    max_size: u64,
    segment_max: u64,
    entries: BTreeMap<BatchSeq, Entry>,
    segments: BTreeMap<u64, Segment>,
    active: Option<(u64, File)>,
    next_seq: u64,
    /// Sequence numbers below this are reserved on disk (`spool.state`): after a crash the
    /// spool starts there, so a number that might have reached the collector (in a record
    /// damaged since) is never used again.
    reserved: u64,
    /// Batches taken out of the queue without reaching the collector (refused for good, or
    /// unreadable), with why: the pipeline turns each into a gap record of its session.
    lost: Vec<(BatchHeader, GapReason)>,
    /// The head of the spool's chain of signed batches.
    chain: Option<ChainHead>,
    /// The head as `spool.state` last recorded it.
    chain_saved: Option<ChainHead>,
    /// Seals what is written to segments and `rejected/`.
    key: SpoolKey,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, bounded to `max_size` bytes of segments, its
    /// batches sealed with `key`.
    pub fn open(
        dir: &Path,
        max_size: u64,
        key: SpoolKey,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let segments_dir = dir.join("segments");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&segments_dir)
            .map_err(|e| io(&segments_dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io(dir, e))?;
        let state_path = dir.join("spool.state");
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes).map_err(|e| {
                io(
                    &state_path,
                    format!("unreadable ({e}); move it away to start a new spool"),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => State {
                spool: SpoolId(uuid::Uuid::new_v4().to_string()),
                next_batch: 1,
                chain: None,
            },
            Err(err) => return Err(io(&state_path, err)),
        };
        let mut spool = Spool {
            dir: dir.to_owned(),
            id: state.spool,
            max_size,
            segment_max: (max_size / 8).clamp(64 * 1024, 8 * 1024 * 1024),
            entries: BTreeMap::new(),
            segments: BTreeMap::new(),
            active: None,
            next_seq: state.next_batch,
            reserved: 0,
            lost: Vec::new(),
            chain: state.chain,
            chain_saved: None,
            key,
        };
        let recovered = spool.read_segments()?;
        spool.reserve()?;
        Ok((spool, recovered))
    }

    pub fn id(&self) -> &SpoolId {
        &self.id
    }

    /// The link hash the next signed batch names as its previous: the last signed batch's, or
    /// zeros before the first.
    pub fn chain_prev(&self) -> BatchHash {
        self.chain.map(|head| head.hash).unwrap_or_default()
    }

    /// The last signed batch.
    #[cfg(test)]
    pub fn chain_head(&self) -> Option<ChainHead> {
        self.chain
    }

    /// Moves the chain's head to `header`'s batch when it is signed and later than the head.
    fn advance_chain(&mut self, header: &BatchHeader) {
        if let Some(link) = header.link()
            && self.chain.is_none_or(|head| head.seq < header.seq)
        {
            self.chain = Some(ChainHead {
                seq: header.seq,
                hash: link.hash(),
            });
        }
    }

    /// Allocates the next batch sequence number.
    pub fn allocate(&mut self) -> Result<BatchSeq, SpoolError> {
        if self.next_seq >= self.reserved {
            self.reserve()?;
        }
        let seq = BatchSeq(self.next_seq);
        self.next_seq += 1;
        Ok(seq)
    }

    fn read_segments(&mut self) -> Result<Recovered, SpoolError> {
        let mut recovered = Recovered::default();
        let segments_dir = self.dir.join("segments");
        let mut ids: Vec<(u64, PathBuf)> = fs::read_dir(&segments_dir)
            .map_err(|e| io(&segments_dir, e))?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".seg")?.parse().ok()?;
                Some((id, entry.path()))
            })
            .collect();
        ids.sort();
        for (id, path) in ids {
            let bytes = fs::read(&path).map_err(|e| io(&path, e))?;
            let mut offset = 0usize;
            while offset < bytes.len() {
                let place = Place::Segment {
                    id,
                    offset: offset as u64,
                };
                match record::read(&bytes[offset..], &self.key, place) {
                    Found::Record { batch, len } => {
                        let header = batch.header;
                        self.next_seq = self.next_seq.max(header.seq.0 + 1);
                        self.advance_chain(&header);
                        self.entries.insert(
                            header.seq,
                            Entry {
                                segment: id,
                                offset: offset as u64,
                                len: len as u64,
                                header,
                                acked: false,
                                spooled: Instant::now(),
                            },
                        );
                        offset += len;
                    }
                    Found::DamagedPayload { header, len } => {
                        warn!(segment = %path.display(), seq = header.seq.0, "damaged batch skipped");
                        self.next_seq = self.next_seq.max(header.seq.0 + 1);
                        self.advance_chain(&header);
                        recovered.damaged.push(header);
                        offset += len;
                    }
                    Found::Unopened { header, len } => {
                        warn!(
                            segment = %path.display(),
                            seq = header.seq.0,
                            "batch that does not open with the spool key (another key, or altered) skipped"
                        );
                        self.next_seq = self.next_seq.max(header.seq.0 + 1);
                        // Like a damaged one: it was signed (and may have reached the
                        // collector), so the next batch names it and the chain shows the loss.
                        self.advance_chain(&header);
                        recovered.damaged.push(header);
                        offset += len;
                    }
                    Found::Damaged => {
                        let next = record::resync(&bytes, offset).unwrap_or(bytes.len());
                        warn!(segment = %path.display(), at = offset, bytes = next - offset, "unreadable spool bytes skipped");
                        recovered.skipped_bytes += (next - offset) as u64;
                        offset = next;
                    }
                    Found::Truncated => {
                        warn!(segment = %path.display(), at = offset, "torn record at the end cut");
                        recovered.torn_bytes += (bytes.len() - offset) as u64;
                        let file = OpenOptions::new()
                            .write(true)
                            .open(&path)
                            .map_err(|e| io(&path, e))?;
                        file.set_len(offset as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io(&path, e))?;
                        break;
                    }
                }
            }
            let size = fs::metadata(&path).map_err(|e| io(&path, e))?.len();
            self.segments.insert(id, Segment { path, size });
        }
        Ok(recovered)
    }

    /// Reserves the next block of sequence numbers on disk, with the spool id.
    fn reserve(&mut self) -> Result<(), SpoolError> {
        const BLOCK: u64 = 1024;
        let reserved = self.next_seq + BLOCK;
        self.write_state(reserved)?;
        self.reserved = reserved;
        self.chain_saved = self.chain;
        Ok(())
    }

    /// Replaces `spool.state` durably: the id, `next_batch` and the chain's head.
    fn write_state(&self, next_batch: u64) -> Result<(), SpoolError> {
        let path = self.dir.join("spool.state");
        let tmp = self.dir.join("spool.state.tmp");
        let state = State {
            spool: self.id.clone(),
            next_batch,
            chain: self.chain,
        };
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(&state).unwrap_or_default())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| io(&path, e))
    }

    /// Before segments are deleted: the chain's head goes to the state unless it is there, so
    /// that it survives the segment holding its batch.
    fn keep_chain_head(&mut self) -> Result<(), SpoolError> {
        if self.chain.is_some() && self.chain != self.chain_saved {
            self.write_state(self.reserved)?;
            self.chain_saved = self.chain;
        }
        Ok(())
    }

    /// Bytes of segments on disk.
    pub fn size(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    /// For each session of `boot` with batches here, the event number after its last one.
    pub fn next_event_seqs(
        &self,
        boot: &custos_proto::BootId,
    ) -> std::collections::HashMap<u32, u64> {
        let mut next = std::collections::HashMap::new();
        for entry in self.entries.values().filter(|e| &e.header.boot_id == boot) {
            let seq = next.entry(entry.header.session.0).or_insert(0);
            *seq = (*seq).max(entry.header.last_seq.0 + 1);
        }
        next
    }

    /// Batches not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.entries.values().filter(|e| !e.acked).count()
    }

    /// When the oldest batch not acknowledged yet was appended (or found at start); `None`
    /// when every batch is acknowledged.
    pub fn oldest_pending(&self) -> Option<Instant> {
        self.entries
            .values()
            .filter(|e| !e.acked)
            .map(|e| e.spooled)
            .min()
    }

    /// Signs `batch` with the agent's key as the next link of the spool's chain (naming the last
    /// signed batch as its previous, docs/protocol.md "Batch signatures") and appends it durably.
    /// Returns the headers of unacknowledged batches dropped to make room.
    pub fn append_signed(
        &mut self,
        mut batch: Batch,
        signer: &BatchSigner,
    ) -> Result<Vec<BatchHeader>, SpoolError> {
        let seq = batch.header.seq;
        let link = BatchLink {
            spool: &batch.header.spool,
            seq,
            content: BatchHash::of_content(&batch.events),
            prev: self.chain_prev(),
        };
        let signature = signer
            .sign(&link.message())
            .map_err(|err| SpoolError::Sign(seq, err.to_string()))?;
        batch.header.signed = Some(BatchSignature {
            content: link.content,
            prev: link.prev,
            signature,
        });
        self.append(&batch)
    }

    /// Appends a batch durably. Returns the headers of unacknowledged batches dropped to make
    /// room (the oldest first).
    pub fn append(&mut self, batch: &Batch) -> Result<Vec<BatchHeader>, SpoolError> {
        let len = record::sealed_len(batch) as u64;
        let mut dropped = Vec::new();
        while self.size() + len > self.max_size && !self.segments.is_empty() {
            dropped.extend(self.drop_oldest_segment()?);
        }
        let rotate = match &self.active {
            Some((id, _)) => self
                .segments
                .get(id)
                .is_none_or(|s| s.size >= self.segment_max),
            None => true,
        };
        if rotate {
            let id = batch.header.seq.0;
            let path = self.dir.join("segments").join(format!("{id:020}.seg"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            let size = file.metadata().map_err(|e| io(&path, e))?.len();
            File::open(self.dir.join("segments"))
                .and_then(|d| d.sync_all())
                .map_err(|e| io(&path, e))?;
            self.segments.insert(id, Segment { path, size });
            self.active = Some((id, file));
        }
        let (id, file) = self.active.as_mut().expect("an active segment");
        let segment = self
            .segments
            .get_mut(id)
            .expect("the active segment is known");
        let place = Place::Segment {
            id: *id,
            offset: segment.size,
        };
        let bytes = record::encode(&self.key, batch, place);
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| io(&segment.path, e))?;
        self.entries.insert(
            batch.header.seq,
            Entry {
                segment: *id,
                offset: segment.size,
                len: bytes.len() as u64,
                header: batch.header.clone(),
                acked: false,
                spooled: Instant::now(),
            },
        );
        segment.size += bytes.len() as u64;
        self.next_seq = self.next_seq.max(batch.header.seq.0 + 1);
        self.advance_chain(&batch.header);
        Ok(dropped)
    }

    fn drop_oldest_segment(&mut self) -> Result<Vec<BatchHeader>, SpoolError> {
        let Some((&id, _)) = self.segments.iter().next() else {
            return Ok(Vec::new());
        };
        let seqs: Vec<BatchSeq> = self
            .entries
            .iter()
            .filter(|(_, e)| e.segment == id)
            .map(|(seq, _)| *seq)
            .collect();
        let mut dropped = Vec::new();
        for seq in seqs {
            if let Some(entry) = self.entries.remove(&seq)
                && !entry.acked
            {
                dropped.push(entry.header);
            }
        }
        self.remove_segment(id)?;
        Ok(dropped)
    }

    fn remove_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        self.keep_chain_head()?;
        if let Some(segment) = self.segments.remove(&id) {
            if self
                .active
                .as_ref()
                .is_some_and(|(active, _)| *active == id)
            {
                self.active = None;
            }
            fs::remove_file(&segment.path).map_err(|e| io(&segment.path, e))?;
        }
        Ok(())
    }

    /// Unacknowledged batches in order (at most `limit`), with the session each belongs to.
    pub fn pending_batches(&self, limit: usize) -> Vec<(BatchSeq, custos_proto::BootId, u32)> {
        self.entries
            .iter()
            .filter(|(_, e)| !e.acked)
            .take(limit)
            .map(|(seq, e)| (*seq, e.header.boot_id.clone(), e.header.session.0))
            .collect()
    }

    /// Reads a batch back, checking it.
    pub fn read(&self, seq: BatchSeq) -> Result<Batch, SpoolError> {
        let entry = self.entries.get(&seq).ok_or(SpoolError::Gone(seq))?;
        let segment = self
            .segments
            .get(&entry.segment)
            .ok_or(SpoolError::Gone(seq))?;
        let mut buf = vec![0u8; entry.len as usize];
        File::open(&segment.path)
            .and_then(|f| f.read_exact_at(&mut buf, entry.offset))
            .map_err(|e| io(&segment.path, e))?;
        let place = Place::Segment {
            id: entry.segment,
            offset: entry.offset,
        };
        match record::read(&buf, &self.key, place) {
            Found::Record { batch, .. } => Ok(batch),
            _ => Err(SpoolError::Damaged(seq)),
        }
    }

    /// Takes a batch the collector refused for good out of the queue, keeping a copy in
    /// `rejected/` for inspection (one sealed [`record`], see [`Spool::read_rejected`]). It leaves the queue even when
    /// the copy cannot be written: resending it could never succeed, and it must not block the
    /// rest.
    /// Its events are reported lost ([`Spool::take_lost`]).
    pub fn set_aside(&mut self, seq: BatchSeq) -> Result<PathBuf, SpoolError> {
        let kept = self.read(seq).and_then(|batch| {
            let dir = self.dir.join("rejected");
            fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            let path = dir.join(format!("{:020}.batch", seq.0));
            let frame = record::encode(&self.key, &batch, Place::Rejected);
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut file| file.write_all(&frame))
                .map_err(|e| io(&path, e))?;
            Ok(path)
        });
        self.give_up(seq, GapReason::RefusedByCollector);
        kept
    }

    /// Takes a batch that cannot be read back out of the queue; its events are reported lost
    /// ([`Spool::take_lost`]).
    pub fn skip_unreadable(&mut self, seq: BatchSeq) {
        self.give_up(seq, GapReason::SpoolCorrupt);
    }

    fn give_up(&mut self, seq: BatchSeq, reason: GapReason) {
        if let Some(entry) = self.entries.get_mut(&seq)
            && !entry.acked
        {
            entry.acked = true;
            self.lost.push((entry.header.clone(), reason));
        }
    }

    /// The batches given up since the last call, with why.
    pub fn take_lost(&mut self) -> Vec<(BatchHeader, GapReason)> {
        std::mem::take(&mut self.lost)
    }

    /// Deletes batches set aside in `rejected/` longer ago than `keep`; how many it deleted.
    pub fn expire_rejected(&self, keep: std::time::Duration) -> Result<usize, SpoolError> {
        let dir = self.dir.join("rejected");
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(io(&dir, err)),
        };
        let mut deleted = 0;
        for item in listing {
            let path = item.map_err(|e| io(&dir, e))?.path();
            let age = fs::metadata(&path)
                .and_then(|meta| meta.modified())
                .map_err(|e| io(&path, e))?
                .elapsed()
                .unwrap_or_default();
            if age > keep {
                fs::remove_file(&path).map_err(|e| io(&path, e))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Marks a batch acknowledged.
    pub fn ack(&mut self, seq: BatchSeq) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.acked = true;
        }
    }

    /// Deletes segments whose every batch is acknowledged (the active one included: the next
    /// batch starts a new segment).
    pub fn collect(&mut self) -> Result<(), SpoolError> {
        let done: Vec<u64> = self
            .segments
            .keys()
            .copied()
            .filter(|id| self.entries.values().all(|e| e.segment != *id || e.acked))
            .collect();
        for id in done {
            self.entries.retain(|_, e| e.segment != id);
            self.remove_segment(id)?;
        }
        Ok(())
    }
}

/// Reads back a batch [`Spool::set_aside`] kept in `rejected/` (`custos-agent --read-rejected`).
pub fn read_rejected(key: &SpoolKey, path: &Path) -> Result<Batch, SpoolError> {
    let bytes = fs::read(path).map_err(|e| io(path, e))?;
    match record::read(&bytes, key, Place::Rejected) {
        Found::Record { batch, len } if len == bytes.len() => Ok(batch),
        Found::Unopened { .. } => Err(io(
            path,
            "does not open with the spool key (another key, or altered)",
        )),
        _ => Err(io(path, "not a readable spool record")),
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        AuditSessionId, BootId, Event, EventBody, Seq, Timestamp, Tty,
        event::{Output, SessionEnd},
        wire::make_batch,
    };

    use super::*;

    fn signer() -> BatchSigner {
        let key = rcgen::KeyPair::generate().unwrap();
        BatchSigner::from_key(&rustls_pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .unwrap()
    }

    #[test]
    fn signed_batches_chain_across_restarts_and_collected_segments() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let first = batch(&mut spool, 1, 10);
        spool.append_signed(first, &signer).unwrap();
        let head = spool.chain_head().unwrap();
        let signed = spool.read(head.seq).unwrap().header;
        assert_eq!(
            signed.link().unwrap().prev,
            BatchHash::default(),
            "the first names none"
        );
        assert_eq!(signed.link().unwrap().hash(), head.hash);
        let second = batch(&mut spool, 1, 10);
        spool.append_signed(second, &signer).unwrap();
        let second = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
        assert_eq!(second.link().unwrap().prev, head.hash);
        let head = spool.chain_head().unwrap();
        drop(spool);
        // Restarted with the batch still in its segment: the head is found there.
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert_eq!(spool.chain_head(), Some(head));
        // Every batch acknowledged and its segment deleted: the head is in spool.state.
        for (seq, _, _) in spool.pending_batches(10) {
            spool.ack(seq);
        }
        spool.collect().unwrap();
        assert_eq!(spool.pending(), 0);
        drop(spool);
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert_eq!(spool.chain_head(), Some(head));
        let third = batch(&mut spool, 1, 10);
        spool.append_signed(third, &signer).unwrap();
        let third = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
        // (A restart skips to the next reserved block of numbers: the chain, not the numbers,
        // says which batch came before.)
        assert_eq!(third.link().unwrap().prev, head.hash);
        assert!(third.seq > head.seq);
    }

    /// A signed batch whose record no longer opens (here: the spool key replaced) is lost, but
    /// its clear header still moves the chain: it may have reached the collector, and if not the
    /// collector sees a break where the gap event explains it, never a fork.
    #[test]
    fn a_signed_batch_lost_in_the_spool_still_moves_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let first = batch(&mut spool, 1, 10);
        spool.append_signed(first, &signer).unwrap();
        let before = spool.chain_head().unwrap();
        let second = batch(&mut spool, 1, 10);
        spool.append_signed(second, &signer).unwrap();
        let lost = spool.chain_head().unwrap();
        // The state holds no head yet (written at open, before any batch): the segment has it.
        drop(spool);
        let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
        assert_eq!(seqs(&recovered.damaged), [before.seq, lost.seq]);
        assert_eq!(spool.chain_head(), Some(lost));
        let next = batch(&mut spool, 1, 10);
        spool.append_signed(next, &signer).unwrap();
        let next = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
        assert_eq!(next.link().unwrap().prev, lost.hash);
        // Restarted again: the new batch opens and is the head, the two before stay lost.
        drop(spool);
        let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
        let (spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
        assert!(recovered.damaged.len() == 2 && spool.pending() == 1);
        assert_eq!(spool.chain_head().unwrap().seq, next.seq);
    }

    fn key() -> SpoolKey {
        SpoolKey::from_bytes(&[9; seal::KEY_LEN]).unwrap()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(paths.len(), 1, "{paths:?}");
        paths.remove(0)
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// A batch of one terminal write printing `text`.
    fn output_batch(spool: &mut Spool, text: &str) -> Batch {
        let seq = spool.allocate().unwrap();
        let event = Event {
            time: Timestamp(seq.0 as i64),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(7),
            seq: Seq(seq.0),
            process: None,
            event: EventBody::Output(Output {
                tty: Tty(34816),
                data: text.into(),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        };
        make_batch(spool.id(), seq, &[event]).unwrap()
    }

    #[test]
    fn what_a_session_printed_is_sealed_on_disk_and_reads_back() {
        const MARKER: &str = "MARKER-7f3a-patient-record";
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let b = output_batch(&mut spool, &format!("{MARKER}\r\n"));
        // The control: the batch's compressed events hold the marker as it was typed, so a
        // clear record would show it.
        assert!(contains(&b.events, MARKER.as_bytes()));
        assert!(contains(&record::encode_clear(&b), MARKER.as_bytes()));
        spool.append(&b).unwrap();
        let raw = fs::read(only_segment(dir.path())).unwrap();
        assert!(
            !contains(&raw, MARKER.as_bytes()),
            "the marker is on disk in clear"
        );
        assert_eq!(spool.read(b.header.seq).unwrap(), b);
        // Read back after a restart too.
        drop(spool);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
        assert_eq!(spool.read(b.header.seq).unwrap(), b);
        // Refused for good: kept in rejected/, sealed as well, and readable with the key.
        let kept = spool.set_aside(b.header.seq).unwrap();
        assert!(!contains(&fs::read(&kept).unwrap(), MARKER.as_bytes()));
        assert_eq!(read_rejected(&key(), &kept).unwrap(), b);
        let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
        let err = read_rejected(&other, &kept).unwrap_err().to_string();
        assert!(err.contains("does not open with the spool key"), "{err}");
    }

    /// Writes `count` batches to a new spool and returns them with the spool's directory.
    fn spooled(count: usize) -> (tempfile::TempDir, Vec<Batch>) {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let batches: Vec<Batch> = (0..count)
            .map(|i| output_batch(&mut spool, &format!("line {i}")))
            .collect();
        for b in &batches {
            spool.append(b).unwrap();
        }
        (dir, batches)
    }

    fn seqs(headers: &[BatchHeader]) -> Vec<BatchSeq> {
        headers.iter().map(|h| h.seq).collect()
    }

    #[test]
    fn with_another_key_every_record_is_reported_lost() {
        let (dir, batches) = spooled(3);
        let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
        assert_eq!(
            seqs(&recovered.damaged),
            seqs(&batches.iter().map(|b| b.header.clone()).collect::<Vec<_>>())
        );
        assert_eq!(spool.pending(), 0, "nothing unreadable is sent");
        // Numbers continue after them, and new batches are sealed with the new key.
        assert!(spool.allocate().unwrap() > batches[2].header.seq);
    }

    #[test]
    fn an_altered_or_moved_record_is_reported_lost_and_the_rest_kept() {
        let (dir, batches) = spooled(4);
        let segment = only_segment(dir.path());
        let mut bytes = fs::read(&segment).unwrap();
        let len = record::sealed_len(&batches[0]);
        assert_eq!(bytes.len(), 4 * len);
        // Records 0 and 1 swapped; in record 2 a byte of the sealed events flipped and the CRC
        // made to match (what a deliberate change would do); record 3 untouched.
        let (first, second) = (bytes[..len].to_vec(), bytes[len..2 * len].to_vec());
        bytes[..len].copy_from_slice(&second);
        bytes[len..2 * len].copy_from_slice(&first);
        let third = &mut bytes[2 * len..3 * len];
        let hlen = u32::from_le_bytes(third[4..8].try_into().unwrap()) as usize;
        third[len - 3] ^= 0x01;
        let crc = crc32c::crc32c(&third[record::PREFIX_LEN + hlen..]);
        third[16..20].copy_from_slice(&crc.to_le_bytes());
        fs::write(&segment, &bytes).unwrap();
        let (spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let mut lost = seqs(&recovered.damaged);
        lost.sort();
        assert_eq!(
            lost,
            [
                batches[0].header.seq,
                batches[1].header.seq,
                batches[2].header.seq
            ]
        );
        assert_eq!(recovered.skipped_bytes, 0);
        assert_eq!(spool.pending(), 1);
        assert_eq!(spool.read(batches[3].header.seq).unwrap(), batches[3]);
    }

    #[test]
    fn a_record_altered_after_start_is_unreadable_when_sent() {
        let (dir, batches) = spooled(2);
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let segment = only_segment(dir.path());
        let mut bytes = fs::read(&segment).unwrap();
        // A byte of the first record's nonce: no CRC covers it, the seal does.
        bytes[record::PREFIX_LEN - 1] ^= 0x01;
        fs::write(&segment, &bytes).unwrap();
        assert!(matches!(
            spool.read(batches[0].header.seq),
            Err(SpoolError::Damaged(seq)) if seq == batches[0].header.seq
        ));
        // What the sender does with it: out of the queue, reported lost.
        spool.skip_unreadable(batches[0].header.seq);
        assert_eq!(
            spool.take_lost(),
            [(batches[0].header.clone(), GapReason::SpoolCorrupt)]
        );
        assert_eq!(spool.read(batches[1].header.seq).unwrap(), batches[1]);
        // Appended after: sealed at its own place, fine.
        let b = output_batch(&mut spool, "after");
        spool.append(&b).unwrap();
        assert_eq!(spool.read(b.header.seq).unwrap(), b);
    }

    #[test]
    fn a_clear_segment_of_an_older_agent_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let old: Vec<Batch> = (0..2)
            .map(|i| output_batch(&mut spool, &format!("old {i}")))
            .collect();
        drop(spool);
        let clear: Vec<u8> = old.iter().flat_map(record::encode_clear).collect();
        let path = dir
            .path()
            .join("segments")
            .join(format!("{:020}.seg", old[0].header.seq.0));
        fs::write(&path, clear).unwrap();
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
        assert_eq!(spool.pending(), 2);
        for b in &old {
            assert_eq!(&spool.read(b.header.seq).unwrap(), b);
        }
        // New batches go to a new, sealed segment; the clear one goes once shipped.
        let new = output_batch(&mut spool, "new");
        spool.append(&new).unwrap();
        assert_eq!(spool.read(new.header.seq).unwrap(), new);
        for b in &old {
            spool.ack(b.header.seq);
        }
        spool.collect().unwrap();
        assert!(!path.exists());
        let sealed = fs::read(only_segment(dir.path())).unwrap();
        assert_eq!(sealed[..4], record::MAGIC);
    }

    fn batch(spool: &mut Spool, session: u32, padding: usize) -> Batch {
        let seq = spool.allocate().unwrap();
        let event = Event {
            time: Timestamp(seq.0 as i64),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(session),
            seq: Seq(seq.0),
            process: None,
            event: EventBody::SessionEnd(SessionEnd {
                duration_secs: padding as f64,
                ..Default::default()
            }),
        };
        let mut batch = make_batch(spool.id(), seq, &[event]).unwrap();
        // Incompressible padding to control sizes.
        batch
            .events
            .extend((0..padding).map(|i| (i * 7919 % 251) as u8));
        batch
    }

    #[test]
    fn the_oldest_pending_batch_is_the_oldest_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert_eq!(spool.oldest_pending(), None);
        let b1 = batch(&mut spool, 1, 10);
        spool.append(&b1).unwrap();
        let first = spool.oldest_pending().expect("one pending");
        // Appended later, so told apart.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b2 = batch(&mut spool, 2, 10);
        spool.append(&b2).unwrap();
        assert_eq!(spool.oldest_pending(), Some(first));
        spool.ack(b1.header.seq);
        let second = spool.oldest_pending().expect("one pending");
        assert!(second > first);
        spool.ack(b2.header.seq);
        assert_eq!(spool.oldest_pending(), None);
    }

    #[test]
    fn batches_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let id = spool.id().clone();
        let b1 = batch(&mut spool, 1, 10);
        let b2 = batch(&mut spool, 1, 10);
        spool.append(&b1).unwrap();
        spool.append(&b2).unwrap();
        assert_eq!(spool.read(b2.header.seq).unwrap(), b2);
        spool.ack(b1.header.seq);
        drop(spool);
        let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert_eq!(spool.id(), &id);
        assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
        // Acks live in memory only: both come back (the collector recognises the resend).
        assert_eq!(spool.pending_batches(10)[0].0, b1.header.seq);
        spool.ack(b1.header.seq);
        spool.ack(b2.header.seq);
        spool.collect().unwrap();
        assert_eq!(spool.size(), 0);
        drop(spool);
        // Sequence numbers are never reused, even after every segment is gone.
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert!(spool.allocate().unwrap() > b2.header.seq);
    }

    #[test]
    fn a_refused_batch_is_kept_private_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let b = batch(&mut spool, 1, 100);
        spool.append(&b).unwrap();
        let kept = spool.set_aside(b.header.seq).unwrap();
        assert_eq!(
            fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(spool.pending(), 0, "set aside, not sent again");
        assert_eq!(
            spool.take_lost(),
            [(b.header.clone(), GapReason::RefusedByCollector)],
            "its events are reported lost"
        );
        assert!(spool.take_lost().is_empty());
        // Younger than the period: kept; older: deleted.
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(spool.expire_rejected(hour).unwrap(), 0);
        let old = std::time::SystemTime::now() - 2 * hour;
        File::options()
            .write(true)
            .open(&kept)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(spool.expire_rejected(hour).unwrap(), 1);
        assert!(!kept.exists());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_says_what() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 256 * 1024, key()).unwrap();
        let mut dropped = Vec::new();
        let mut seqs = Vec::new();
        for i in 0..40 {
            let b = batch(&mut spool, 1 + i % 2, 20_000);
            seqs.push(b.header.seq);
            dropped.extend(spool.append(&b).unwrap());
        }
        assert!(spool.size() <= 256 * 1024, "{}", spool.size());
        assert!(!dropped.is_empty());
        // The oldest went first, and nothing that is still there was reported dropped.
        assert_eq!(dropped[0].seq, seqs[0]);
        for header in &dropped {
            assert!(spool.read(header.seq).is_err());
        }
        assert!(spool.read(*seqs.last().unwrap()).is_ok());
    }

    #[test]
    fn damaged_records_are_skipped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        let batches: Vec<Batch> = (0..4).map(|_| batch(&mut spool, 3, 100)).collect();
        for b in &batches {
            spool.append(b).unwrap();
        }
        drop(spool);
        let segment = fs::read_dir(dir.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = fs::read(&segment).unwrap();
        let len = record::sealed_len(&batches[0]);
        // Flip a payload byte of the second record, a header byte of the third, tear the fourth.
        bytes[len + len - 5] ^= 0xff;
        bytes[2 * len + record::PREFIX_LEN + 3] ^= 0xff;
        bytes.truncate(4 * len - 10);
        fs::write(&segment, &bytes).unwrap();
        let (spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
        assert_eq!(spool.read(batches[0].header.seq).unwrap(), batches[0]);
        assert_eq!(recovered.damaged.len(), 1);
        assert_eq!(recovered.damaged[0].seq, batches[1].header.seq);
        assert!(recovered.skipped_bytes > 0);
        assert!(recovered.torn_bytes > 0);
        assert_eq!(spool.pending(), 1);
        // Sequence numbers continue after the highest seen, damaged ones included.
        let mut spool = spool;
        assert!(spool.allocate().unwrap() > batches[3].header.seq);
    }
}
