//! The embedded store: one directory holding every recording (format in docs/store.md).
//!
//! - `recordings/<host>/<boot id>/<session>.rec`: a recording, append-only, one [`chunk`] per
//!   batch, encrypted and hash-chained; `<session>.seal`: the collector's signature over the
//!   final hash and chunk count, written when the session ends.
//! - `index.sqlite`: the [`index`], rebuildable from the recordings.
//!
//! A batch is durable when its chunk is written and fsynced and the index has committed it:
//! only then is it acknowledged. After a crash, [`Store::open`] replays chunks that reached the
//! disk but not the index, and cuts off a torn last chunk (never acknowledged).
//!
//! The store knows no network; the ingest and API modules call it.
pub mod chunk;
pub mod index;
pub mod keys;
pub mod query;
mod verify;

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use custos_proto::{
    Event, EventBody, Timestamp,
    wire::{self, Batch},
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::{
    chunk::{BatchRef, ChunkHash, ChunkHeader, RawChunk, RecordingKey},
    index::{Index, RecordingRow, Summary},
    keys::{KeyRing, SealKey},
};

/// Largest decompressed chunk the store reads back.
const MAX_CHUNK_RAW: usize = wire::DEFAULT_MAX_BATCH_RAW;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(transparent)]
    Index(#[from] index::IndexError),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    #[error("recording {recording}: {message}")]
    Recording { recording: String, message: String },
    #[error("refused batch: {0}")]
    Refused(String),
    #[error("the index did not commit: {0}")]
    Commit(String),
    #[error("the store is shutting down")]
    ShuttingDown,
}

fn io_err(path: &Path, err: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub key_file: PathBuf,
    pub seal_key: PathBuf,
}

/// What storing a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored {
        recording: String,
        chunk: u64,
    },
    /// Stored before (a resend); nothing written.
    Duplicate {
        recording: String,
    },
}

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
}

/// A batch decoded and summarised for the index, ready for [`Store::append_group`]. Decoding
/// is most of the work of storing a batch; it needs no store, so it runs before the writer, on
/// any thread.
pub struct Prepared {
    batch: Box<Batch>,
    summary: Summary,
}

impl Prepared {
    /// Decodes the batch's events (refusing a batch whose events do not match its header) and
    /// summarises what they add to the index.
    pub fn new(batch: Box<Batch>) -> Result<Prepared, StoreError> {
        let events = wire::unpack_events(&batch.header, &batch.events, MAX_CHUNK_RAW)
            .map_err(|err| StoreError::Refused(err.to_string()))?;
        let summary = Summary::of(&events);
        Ok(Prepared { batch, summary })
    }
}

pub struct Store {
    dir: PathBuf,
    index: Index,
    keys: KeyRing,
    seal_key: SealKey,
    /// Held while a writer has the store open: one collector per store.
    _lock: Option<File>,
}

/// Takes the store's exclusive lock (`store.lock`), or says who holds it.
fn lock(dir: &Path) -> Result<File, StoreError> {
    use std::os::fd::AsRawFd;
    let path = dir.join("store.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io_err(
            dir,
            "the store is in use by another collector (or an index rebuild); stop it first",
        ));
    }
    Ok(file)
}

impl Store {
    /// Opens (creating) the store, and repairs what a crash left behind.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(config.dir.join("recordings"))
            .map_err(|e| io_err(&config.dir, e))?;
        fs::set_permissions(&config.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&config.dir, e))?;
        let lock = lock(&config.dir)?;
        let index = Index::open(&config.dir.join("index.sqlite"))?;
        let mut store = Store {
            dir: config.dir.clone(),
            index,
            keys: KeyRing::load(&config.key_file)?,
            seal_key: SealKey::load(&config.seal_key)?,
            _lock: Some(lock),
        };
        store.recover()?;
        Ok(store)
    }

    /// Opens the store to read only: no recovery, no writes (safe while a collector runs).
    pub fn open_read_only(config: &StoreConfig) -> Result<Store, StoreError> {
        Ok(Store {
            dir: config.dir.clone(),
            index: Index::open_read_only(&config.dir.join("index.sqlite"))?,
            keys: KeyRing::load(&config.key_file)?,
            seal_key: SealKey::load(&config.seal_key)?,
            _lock: None,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn recording_path(key: &RecordingKey) -> Result<String, StoreError> {
        let safe = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !safe(&key.host) || !safe(&key.boot_id.0) {
            return Err(StoreError::Refused(format!(
                "host {:?} or boot id {:?} is not usable in a path",
                key.host, key.boot_id.0
            )));
        }
        Ok(format!(
            "recordings/{}/{}/{}.rec",
            key.host, key.boot_id.0, key.session.0
        ))
    }

    /// Stores one batch (already checked against its header and the sender's identity) durably,
    /// once.
    pub fn append(&mut self, batch: Batch) -> Result<Appended, StoreError> {
        let prepared = Prepared::new(Box::new(batch))?;
        let mut stored = self.append_group(std::slice::from_ref(&prepared));
        stored.pop().unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Stores a group of batches, each durably and once, with one index commit for the group:
    /// every chunk is written, the written files are fsynced together (concurrent fsyncs share
    /// the filesystem's journal commits), ended recordings are sealed, and the index commits the
    /// group. One result per batch, in order: `Ok` means stored durably (an `Err` after the
    /// chunk was committed, a seal that could not be written, is answered as a duplicate when
    /// the agent resends). A batch that fails does not stop the others; an fsync or a commit
    /// that fails fails them all (their chunks are past the committed end, cut off by the next
    /// append or replayed by the next start).
    pub fn append_group(&mut self, group: &[Prepared]) -> Vec<Result<Appended, StoreError>> {
        let fail_all = |why: String| {
            group
                .iter()
                .map(|_| Err(StoreError::Commit(why.clone())))
                .collect()
        };
        if let Err(err) = self.index.begin() {
            return fail_all(err.to_string());
        }
        let staged: Vec<_> = group.iter().map(|batch| self.stage(batch)).collect();
        let written: Vec<&Written> = staged
            .iter()
            .filter_map(|staged| staged.as_ref().ok()?.written.as_ref())
            .collect();
        if let Err(err) = make_durable(&written) {
            self.index.rollback();
            warn!(batches = group.len(), error = %err, "chunks not made durable; the group is not stored");
            return fail_all(err.to_string());
        }
        let stored: Vec<_> = staged
            .into_iter()
            .map(|staged| {
                let staged = staged?;
                if let Some(id) = &staged.seal {
                    self.seal(id)?;
                }
                Ok(staged.appended)
            })
            .collect();
        match self.index.commit() {
            Ok(()) => stored,
            Err(err) => {
                self.index.rollback();
                warn!(batches = group.len(), error = %err, "the index did not commit a group of batches");
                fail_all(err.to_string())
            }
        }
    }

    /// Writes one prepared batch's chunk (not yet fsynced) and records it in the open index
    /// transaction.
    fn stage(&mut self, prepared: &Prepared) -> Result<Staged, StoreError> {
        let Prepared { batch, summary } = prepared;
        let header = &batch.header;
        if let Some(recording) = self.index.batch_recording(&header.spool, header.seq)? {
            return Ok(Staged {
                appended: Appended::Duplicate { recording },
                written: None,
                seal: None,
            });
        }
        let key = RecordingKey {
            host: header.host.clone(),
            boot_id: header.boot_id.clone(),
            session: header.session,
        };
        let row = match self.index.recording(&key.id())? {
            Some(row) => row,
            None => self
                .index
                .insert_recording(&key, &Self::recording_path(&key)?)?,
        };
        let (key_id, enc_key) = self.keys.current();
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce)
            .map_err(|e| io_err(&self.dir, format!("no randomness: {e}")))?;
        let chunk_header = ChunkHeader {
            version: chunk::VERSION,
            recording: key,
            index: row.chunks,
            prev_hash: row.last_hash,
            key_id: key_id.to_owned(),
            nonce,
            batch: BatchRef {
                spool: header.spool.clone(),
                seq: header.seq,
            },
            events: header.events,
            first_seq: header.first_seq,
            last_seq: header.last_seq,
            first_time: header.first_time,
            last_time: header.last_time,
            raw_len: header.raw_len,
        };
        let (bytes, hash) = chunk::encode(&chunk_header, &batch.events, enc_key);
        let written = self.write_chunk(&row, &bytes)?;
        self.index.commit_chunk(
            &row.id,
            &chunk_header.batch,
            row.chunks,
            written.stored_len,
            &hash,
            summary,
        )?;
        let seal = (summary.end.is_some() || row.sealed).then(|| row.id.clone());
        Ok(Staged {
            appended: Appended::Stored {
                recording: row.id,
                chunk: row.chunks,
            },
            written: Some(written),
            seal,
        })
    }

    /// Writes chunk bytes at the committed end of the recording; [`make_durable`] fsyncs them.
    fn write_chunk(&self, row: &RecordingRow, bytes: &[u8]) -> Result<Written, StoreError> {
        let path = self.dir.join(&row.path);
        let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
        let created = !path.exists();
        if created {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .map_err(|e| io_err(&parent, e))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        if created {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(&path, e))?;
        }
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        if len != row.stored_len {
            // Bytes past the committed end were never acknowledged (a write whose commit failed).
            warn!(recording = %row.id, file_len = len, committed = row.stored_len, "cutting uncommitted bytes");
            file.set_len(row.stored_len).map_err(|e| io_err(&path, e))?;
        }
        file.seek(SeekFrom::Start(row.stored_len))
            .and_then(|_| file.write_all(bytes))
            .map_err(|e| io_err(&path, e))?;
        Ok(Written {
            stored_len: row.stored_len + bytes.len() as u64,
            new_in: created.then_some(parent),
            path,
            file,
        })
    }

    /// Signs the recording's final hash and chunk count.
    fn seal(&mut self, id: &str) -> Result<(), StoreError> {
        let row = self
            .index
            .recording(id)?
            .ok_or_else(|| StoreError::Recording {
                recording: id.to_owned(),
                message: "not in the index".into(),
            })?;
        let final_hash = row.last_hash.hex();
        let signature = self
            .seal_key
            .sign(&Seal::message(&row.key, row.chunks, &final_hash));
        let seal = Seal {
            version: 1,
            recording: row.key.clone(),
            chunks: row.chunks,
            final_hash,
            sealed_at: Timestamp::now(),
            public_key: hex::encode(self.seal_key.public()),
            signature: hex::encode(signature),
        };
        let path = self.dir.join(seal_path(&row.path));
        let tmp = path.with_extension("seal.tmp");
        let json = serde_json::to_vec_pretty(&seal).unwrap_or_default();
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| io_err(&path, e))?;
        sync_dir(path.parent().unwrap_or(&self.dir))?;
        self.index.set_sealed(id)?;
        Ok(())
    }

    /// Replays chunks a crash left outside the index, cuts torn tails, seals what ended.
    fn recover(&mut self) -> Result<(), StoreError> {
        for row in self.index.unsealed()? {
            let path = self.dir.join(&row.path);
            let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    if row.stored_len > 0 {
                        warn!(recording = %row.id, path = %path.display(), "recording file missing");
                    }
                    continue;
                }
                Err(err) => return Err(io_err(&path, err)),
            };
            let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
            if len < row.stored_len {
                warn!(recording = %row.id, file_len = len, committed = row.stored_len,
                    "recording file is shorter than the index says: damaged");
                continue;
            }
            let mut tail = Vec::new();
            file.seek(SeekFrom::Start(row.stored_len))
                .and_then(|_| file.read_to_end(&mut tail))
                .map_err(|e| io_err(&path, e))?;
            let mut offset = 0usize;
            let mut chunks = row.chunks;
            let mut prev = row.last_hash;
            let mut ended = false;
            while offset < tail.len() {
                let replayed = match chunk::parse(&tail[offset..]) {
                    Ok(Some(raw)) => self.replay(
                        &row,
                        &raw,
                        chunks,
                        prev,
                        row.stored_len + (offset + raw.encoded_len()) as u64,
                    ),
                    Ok(None) => Err("torn chunk".to_owned()),
                    Err(err) => Err(err.to_string()),
                };
                match replayed {
                    Ok((hash, len, had_end)) => {
                        offset += len;
                        chunks += 1;
                        prev = hash;
                        ended |= had_end;
                    }
                    Err(why) => {
                        warn!(recording = %row.id, at = row.stored_len + offset as u64, why,
                            "cutting an unacknowledged tail");
                        file.set_len(row.stored_len + offset as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io_err(&path, e))?;
                        break;
                    }
                }
            }
            if chunks > row.chunks {
                info!(recording = %row.id, chunks = chunks - row.chunks, "replayed chunks after a crash");
            }
            let had_end: bool = self
                .index
                .connection()
                .query_row(
                    "SELECT end_ns IS NOT NULL FROM recordings WHERE id = ?1",
                    [&row.id],
                    |r| r.get(0),
                )
                .map_err(index::IndexError::from)?;
            if ended || had_end {
                self.seal(&row.id)?;
            }
        }
        Ok(())
    }

    /// Checks one chunk found past the committed end and commits it. Returns its hash, its
    /// encoded length and whether it ends the session.
    fn replay(
        &mut self,
        row: &RecordingRow,
        raw: &RawChunk,
        expected_index: u64,
        prev: ChunkHash,
        stored_len: u64,
    ) -> Result<(ChunkHash, usize, bool), String> {
        if raw.header.index != expected_index || raw.header.prev_hash != prev {
            return Err("chunk out of chain".into());
        }
        let events = self.decrypt_events(raw).map_err(|e| e.to_string())?;
        let summary = Summary::of(&events);
        let hash = raw.hash();
        self.index
            .commit_chunk(
                &row.id,
                &raw.header.batch,
                expected_index,
                stored_len,
                &hash,
                &summary,
            )
            .map_err(|e| e.to_string())?;
        Ok((hash, raw.encoded_len(), summary.end.is_some()))
    }

    fn decrypt_events(&self, raw: &RawChunk) -> Result<Vec<Event>, StoreError> {
        let recording = raw.header.recording.id();
        let key = self
            .keys
            .get(&raw.header.key_id)
            .ok_or_else(|| StoreError::Recording {
                recording: recording.clone(),
                message: format!(
                    "chunk {} needs key {}, not in the key file",
                    raw.header.index, raw.header.key_id
                ),
            })?;
        let plain = chunk::decrypt(raw, key).map_err(|err| StoreError::Recording {
            recording: recording.clone(),
            message: format!("chunk {}: {err}", raw.header.index),
        })?;
        wire::decode_events(&plain, raw.header.raw_len, MAX_CHUNK_RAW).map_err(|err| {
            StoreError::Recording {
                recording,
                message: format!("chunk {}: {err}", raw.header.index),
            }
        })
    }

    /// Every event of a recording, in order, after checking its chain.
    pub fn read_events(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        self.for_each_chunk(id, |chunk| {
            events.extend(chunk);
            true
        })?;
        Ok(events)
    }

    /// Calls `each` with the events of each chunk of a recording, in order, checking the chain
    /// as it goes; stops early when `each` returns false.
    pub fn for_each_chunk(
        &self,
        id: &str,
        mut each: impl FnMut(Vec<Event>) -> bool,
    ) -> Result<(), StoreError> {
        let row = self
            .index
            .recording(id)?
            .ok_or_else(|| StoreError::Recording {
                recording: id.to_owned(),
                message: "no such recording".into(),
            })?;
        let path = self.dir.join(&row.path);
        let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
        let committed = &bytes[..(row.stored_len as usize).min(bytes.len())];
        let mut offset = 0;
        let mut prev = ChunkHash::default();
        let mut index = 0u64;
        while offset < committed.len() {
            let raw = chunk::parse(&committed[offset..])
                .map_err(|err| StoreError::Recording {
                    recording: id.to_owned(),
                    message: format!("chunk {index}: {err}"),
                })?
                .ok_or_else(|| StoreError::Recording {
                    recording: id.to_owned(),
                    message: format!("chunk {index} is cut short"),
                })?;
            if raw.header.index != index || raw.header.prev_hash != prev {
                return Err(StoreError::Recording {
                    recording: id.to_owned(),
                    message: format!("chunk {index} is out of chain (run custos verify)"),
                });
            }
            if !each(self.decrypt_events(&raw)?) {
                return Ok(());
            }
            prev = raw.hash();
            offset += raw.encoded_len();
            index += 1;
        }
        Ok(())
    }

    /// Recordings whose last activity is before `cutoff`, with their login user.
    pub fn expired(&self, cutoff: Timestamp) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut stmt = self
            .index
            .connection()
            .prepare(
                "SELECT id, login_user FROM recordings
                 WHERE COALESCE(end_ns, last_ns, start_ns, 0) < ?1 ORDER BY start_ns",
            )
            .map_err(index::IndexError::from)?;
        let rows = stmt
            .query_map([cutoff.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(index::IndexError::from)?;
        Ok(rows)
    }

    /// Deletes a recording: its files, then its index rows (a crash between leaves rows of a
    /// missing file, which the next purge removes).
    pub fn purge(&mut self, id: &str) -> Result<(), StoreError> {
        let Some(row) = self.index.recording(id)? else {
            return Ok(());
        };
        for path in [
            self.dir.join(&row.path),
            self.dir.join(seal_path(&row.path)),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err(&path, err)),
            }
        }
        if let Some(parent) = self.dir.join(&row.path).parent() {
            sync_dir(parent)?;
        }
        self.index.delete_recording(id)?;
        Ok(())
    }

    /// Whether a batch of events ends its session.
    pub fn ends_session(events: &[Event]) -> bool {
        events
            .iter()
            .any(|e| matches!(e.event, EventBody::SessionEnd(_)))
    }
}

/// `x/y/7.rec` to `x/y/7.seal`.
pub fn seal_path(recording_path: &str) -> String {
    match recording_path.strip_suffix(".rec") {
        Some(base) => format!("{base}.seal"),
        None => format!("{recording_path}.seal"),
    }
}

/// A chunk written to its recording file, not yet fsynced.
struct Written {
    /// The recording's committed length once this chunk is committed.
    stored_len: u64,
    path: PathBuf,
    file: File,
    /// The directory of the recording file this chunk created: it and its parent are fsynced
    /// too.
    new_in: Option<PathBuf>,
}

/// One batch of a group, staged: its chunk written and its rows in the open index transaction.
struct Staged {
    appended: Appended,
    written: Option<Written>,
    /// The recording to seal once the chunk is durable (its session ended).
    seal: Option<String>,
}

/// The most fsyncs in flight at once.
const SYNC_THREADS: usize = 16;

/// Fsyncs the written chunks' files, several at once (a filesystem's journal commits concurrent
/// fsyncs together, so a group waits about one commit instead of one per chunk), each file once
/// however many of the group's chunks it got (fsync flushes the file, whichever handle asks),
/// then the directories of new files.
fn make_durable(written: &[&Written]) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::new();
    let files: Vec<&Written> = written
        .iter()
        .copied()
        .filter(|w| seen.insert(w.path.as_path()))
        .collect();
    let sync = |part: &[&Written]| {
        part.iter()
            .try_for_each(|w| w.file.sync_data().map_err(|e| io_err(&w.path, e)))
    };
    if files.len() <= 1 {
        sync(&files)?;
    } else {
        let per_thread = files.len().div_ceil(SYNC_THREADS);
        std::thread::scope(|scope| {
            let threads: Vec<_> = files
                .chunks(per_thread)
                .map(|part| scope.spawn(move || sync(part)))
                .collect();
            threads.into_iter().try_for_each(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err(io_err(Path::new("."), "an fsync thread panicked")))
            })
        })?;
    }
    let mut dirs = std::collections::BTreeSet::new();
    for dir in written.iter().filter_map(|w| w.new_in.as_deref()) {
        dirs.insert(dir);
        dirs.extend(dir.parent());
    }
    dirs.into_iter().try_for_each(sync_dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// What rebuilding the index found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub recordings: u64,
    pub chunks: u64,
    /// Recordings whose chain broke: indexed up to the chunk before.
    pub damaged: Vec<String>,
}

/// Rebuilds the index from the recording files (the collector must be stopped): the old index
/// is replaced only once the new one is complete.
pub fn rebuild_index(config: &StoreConfig) -> Result<Rebuilt, StoreError> {
    let _lock = lock(&config.dir)?;
    let keys = KeyRing::load(&config.key_file)?;
    let new_path = config.dir.join("index.sqlite.rebuild");
    for suffix in ["", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", new_path.display()));
    }
    let mut index = Index::open(&new_path)?;
    let mut rebuilt = Rebuilt::default();
    let recordings = config.dir.join("recordings");
    let mut files = Vec::new();
    for host in fs::read_dir(&recordings)
        .map_err(|e| io_err(&recordings, e))?
        .flatten()
    {
        for boot in fs::read_dir(host.path())
            .map_err(|e| io_err(&host.path(), e))?
            .flatten()
        {
            for file in fs::read_dir(boot.path())
                .map_err(|e| io_err(&boot.path(), e))?
                .flatten()
            {
                if file.path().extension().is_some_and(|e| e == "rec") {
                    files.push(file.path());
                }
            }
        }
    }
    files.sort();
    for path in files {
        let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
        let relative = path
            .strip_prefix(&config.dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut offset = 0usize;
        let mut prev = ChunkHash::default();
        let mut count = 0u64;
        let mut row: Option<RecordingRow> = None;
        while offset < bytes.len() {
            let Ok(Some(raw)) = chunk::parse(&bytes[offset..]) else {
                rebuilt.damaged.push(relative.clone());
                break;
            };
            let events = keys
                .get(&raw.header.key_id)
                .and_then(|key| chunk::decrypt(&raw, key).ok())
                .and_then(|plain| {
                    wire::decode_events(&plain, raw.header.raw_len, MAX_CHUNK_RAW).ok()
                });
            let (Some(events), true) = (
                events,
                raw.header.index == count && raw.header.prev_hash == prev,
            ) else {
                rebuilt.damaged.push(relative.clone());
                break;
            };
            let current = match &row {
                Some(row) => row.clone(),
                None => index.insert_recording(&raw.header.recording, &relative)?,
            };
            let hash = raw.hash();
            offset += raw.encoded_len();
            index.commit_chunk(
                &current.id,
                &raw.header.batch,
                count,
                offset as u64,
                &hash,
                &Summary::of(&events),
            )?;
            row = Some(current);
            prev = hash;
            count += 1;
            rebuilt.chunks += 1;
        }
        if let Some(row) = row {
            rebuilt.recordings += 1;
            if config.dir.join(seal_path(&row.path)).exists() {
                index.set_sealed(&row.id)?;
            }
        }
    }
    drop(index);
    let live = config.dir.join("index.sqlite");
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", live.display()));
    }
    fs::rename(&new_path, &live).map_err(|e| io_err(&live, e))?;
    sync_dir(&config.dir)?;
    Ok(rebuilt)
}

/// Creates a new store's keys: the encryption key file and the seal key pair.
pub fn generate_keys(
    key_file: &Path,
    seal_key: &Path,
    seal_public: &Path,
) -> Result<(), StoreError> {
    if !key_file.exists() {
        KeyRing::generate(key_file)?;
    }
    if !seal_key.exists() {
        SealKey::generate(seal_key, seal_public)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        AuditSessionId, BootId, ByteString, Pid, Seq, Tty,
        event::{Output, SessionEnd},
        wire::{BatchSeq, SpoolId, make_batch},
    };

    use super::*;

    fn event(seq: u64, body: EventBody) -> Event {
        Event {
            time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
            host: "db1".into(),
            boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
            session: AuditSessionId(7),
            seq: Seq(seq),
            process: None,
            event: body,
        }
    }

    fn output(seq: u64, text: &str) -> Event {
        event(
            seq,
            EventBody::Output(Output {
                tty: Tty::from_parts(136, 1),
                data: ByteString::from(text),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        )
    }

    fn fixture() -> (tempfile::TempDir, StoreConfig) {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            dir: dir.path().join("store"),
            key_file: dir.path().join("store.key"),
            seal_key: dir.path().join("seal.key"),
        };
        generate_keys(
            &config.key_file,
            &config.seal_key,
            &dir.path().join("seal.pub"),
        )
        .unwrap();
        (dir, config)
    }

    fn batch(seq: u64, events: &[Event]) -> Batch {
        make_batch(&SpoolId("spool-a".into()), BatchSeq(seq), events).unwrap()
    }

    #[test]
    fn stores_once_reads_back_and_seals() {
        let (_dir, config) = fixture();
        let mut store = Store::open(&config).unwrap();
        let first = batch(1, &[output(1, "hello"), output(2, " world")]);
        let id = match store.append(first.clone()).unwrap() {
            Appended::Stored { recording, chunk } => {
                assert_eq!(chunk, 0);
                recording
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            store.append(first.clone()).unwrap(),
            Appended::Duplicate {
                recording: id.clone()
            }
        );
        let end = event(
            3,
            EventBody::SessionEnd(SessionEnd {
                duration_secs: 2.0,
                ..Default::default()
            }),
        );
        store.append(batch(2, std::slice::from_ref(&end))).unwrap();
        let events = store.read_events(&id).unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let row = store.index().recording(&id).unwrap().unwrap();
        assert!(row.sealed);
        let seal: Seal =
            serde_json::from_slice(&fs::read(store.dir().join(seal_path(&row.path))).unwrap())
                .unwrap();
        assert_eq!(seal.chunks, 2);
        assert_eq!(seal.final_hash, row.last_hash.hex());
        let public: [u8; 32] = hex::decode(&seal.public_key).unwrap().try_into().unwrap();
        assert!(keys::verify_seal(
            &public,
            &Seal::message(&row.key, seal.chunks, &seal.final_hash),
            &hex::decode(&seal.signature).unwrap()
        ));
        let _ = Pid(0);
    }

    #[test]
    fn a_group_chains_its_chunks_skips_repeats_and_isolates_a_bad_batch() {
        let (_dir, config) = fixture();
        let mut store = Store::open(&config).unwrap();
        let prepare = |batch: Batch| Prepared::new(Box::new(batch)).unwrap();
        let mut other_session = output(1, "elsewhere");
        other_session.session = AuditSessionId(8);
        let mut bad_host = output(1, "x");
        bad_host.host = "../etc".into();
        let group = [
            prepare(batch(1, &[output(1, "a")])),
            prepare(batch(2, &[output(2, "b")])),
            prepare(batch(1, &[output(1, "a")])),
            prepare(make_batch(&SpoolId("spool-b".into()), BatchSeq(1), &[bad_host]).unwrap()),
            prepare(make_batch(&SpoolId("spool-c".into()), BatchSeq(1), &[other_session]).unwrap()),
        ];
        let stored = store.append_group(&group);
        let Ok(Appended::Stored {
            recording,
            chunk: 0,
        }) = &stored[0]
        else {
            panic!("{:?}", stored[0])
        };
        assert!(
            matches!(&stored[1], Ok(Appended::Stored { recording: r, chunk: 1 }) if r == recording),
            "{:?}",
            stored[1]
        );
        assert!(
            matches!(&stored[2], Ok(Appended::Duplicate { recording: r }) if r == recording),
            "{:?}",
            stored[2]
        );
        assert!(
            matches!(&stored[3], Err(StoreError::Refused(_))),
            "{:?}",
            stored[3]
        );
        let Ok(Appended::Stored {
            recording: other,
            chunk: 0,
        }) = &stored[4]
        else {
            panic!("{:?}", stored[4])
        };
        // Committed: a store opened afterwards sees both recordings whole and chained.
        drop(store);
        let store = Store::open(&config).unwrap();
        let verified = store.verify(recording).unwrap();
        assert!(verified.ok && verified.chunks == 2, "{verified:?}");
        assert!(store.verify(other).unwrap().ok);
        let events = store.read_events(recording).unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }

    #[test]
    fn a_crash_between_write_and_commit_is_replayed_and_a_torn_tail_cut() {
        let (_dir, config) = fixture();
        let (id, path) = {
            let mut store = Store::open(&config).unwrap();
            let Appended::Stored { recording, .. } =
                store.append(batch(1, &[output(1, "a")])).unwrap()
            else {
                panic!()
            };
            let row = store.index().recording(&recording).unwrap().unwrap();
            // Simulate a crash after the chunk of batch 2 reached the disk, before its commit:
            // write it with the store's own encoder, then "lose" the index update.
            let b2 = batch(2, &[output(2, "b")]);
            let (key_id, key) = store.keys.current();
            let header = ChunkHeader {
                version: chunk::VERSION,
                recording: row.key.clone(),
                index: 1,
                prev_hash: row.last_hash,
                key_id: key_id.to_owned(),
                nonce: [9; 24],
                batch: BatchRef {
                    spool: b2.header.spool.clone(),
                    seq: b2.header.seq,
                },
                events: 1,
                first_seq: Seq(2),
                last_seq: Seq(2),
                first_time: b2.header.first_time,
                last_time: b2.header.last_time,
                raw_len: b2.header.raw_len,
            };
            let (bytes, _) = chunk::encode(&header, &b2.events, key);
            let path = store.dir().join(&row.path);
            let mut file = OpenOptions::new().append(true).open(&path).unwrap();
            file.write_all(&bytes).unwrap();
            // And a torn third chunk after it.
            file.write_all(&bytes[..bytes.len() / 2]).unwrap();
            (recording, path)
        };
        let before = fs::metadata(&path).unwrap().len();
        let mut store = Store::open(&config).unwrap();
        assert!(fs::metadata(&path).unwrap().len() < before, "torn tail cut");
        let events = store.read_events(&id).unwrap();
        assert_eq!(
            events.len(),
            2,
            "the written but uncommitted chunk was replayed"
        );
        // The agent resends batch 2 (it never got the ack): stored once.
        assert!(matches!(
            store.append(batch(2, &[output(2, "b")])).unwrap(),
            Appended::Duplicate { .. }
        ));
        assert!(matches!(
            store.append(batch(3, &[output(3, "c")])).unwrap(),
            Appended::Stored { chunk: 2, .. }
        ));
        assert_eq!(store.read_events(&id).unwrap().len(), 3);
    }
}
