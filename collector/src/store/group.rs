//! Storing batches durably, once, a group at a time: each batch's chunk is written at its
//! recording's committed end, the group's files are fsynced together, ended recordings sealed,
//! and the index commits the group in one transaction (which rolls back if anything before the
//! commit fails).
use std::{
    fs::{self, File, OpenOptions},
    io::{Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use custos_proto::{
    Timestamp,
    wire::{self, Batch},
};
use tracing::warn;

use super::{Store, StoreError, certificates::AgentCertificates, io_err, seal};
use crate::{
    index::{ChunkSummary, IndexWriter, RecordingRow, StoredChunk},
    trust::{
        chain::MAX_CHUNK_RAW,
        chunk::{self, AgentSignature, BatchRef, ChunkHeader, RecordingKey},
        keys::KeyRing,
    },
};

/// What storing a batch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored {
        recording: String,
        chunk: u64,
        /// The other agents whose batches came from this batch's spool id, when this is the
        /// first batch of the spool from this agent: cloned agent state (two hosts made from one
        /// image). Usually empty.
        spool_shared_with: Vec<String>,
    },
    /// Stored before (a resend); nothing written.
    Duplicate { recording: String },
}

/// A batch decoded and summarised for the index, ready for [`Store::append_group`]. Decoding
/// is most of the work of storing a batch; it needs no store, so it runs before the writer, on
/// any thread.
pub struct Prepared {
    batch: Arc<Batch>,
    summary: ChunkSummary,
    receipt: Receipt,
}

/// What the collector knows of a batch's arrival, beside the batch: stored in its chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// When the collector received it, by its own clock.
    pub received: Timestamp,
    /// The sending host's clock disagreed with the collector's by more than the allowed skew.
    pub host_clock_skewed: bool,
    /// The sender's certificate (DER), whose key signed the batch (ingest checked the
    /// signature): kept in the store for verifiers.
    pub agent_certificate: Option<std::sync::Arc<Vec<u8>>>,
}

impl Receipt {
    /// Received now, from a host whose clock is not known to be off.
    pub fn now() -> Receipt {
        Receipt {
            received: Timestamp::now(),
            host_clock_skewed: false,
            agent_certificate: None,
        }
    }
}

impl Prepared {
    /// Decodes the batch's events (refusing a batch whose events do not match its header) and
    /// summarises what they add to the index.
    pub fn new(batch: Arc<Batch>, receipt: Receipt) -> Result<Prepared, StoreError> {
        let events = wire::unpack_events(&batch.header, &batch.events, MAX_CHUNK_RAW)
            .map_err(|err| StoreError::Refused(err.to_string()))?;
        let summary = ChunkSummary::of(&events);
        Ok(Prepared {
            batch,
            summary,
            receipt,
        })
    }
}

impl Store {
    /// Stores one batch (already checked against its header and the sender's identity) durably,
    /// once, received now.
    pub fn append(&mut self, batch: Batch) -> Result<Appended, StoreError> {
        let prepared = Prepared::new(Arc::new(batch), Receipt::now())?;
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
        let Store {
            dir,
            index,
            keys,
            seal_key,
            certificates,
            ..
        } = self;
        let mut writer = match index.writer() {
            Ok(writer) => writer,
            Err(err) => return fail_all(err.to_string()),
        };
        let staged: Vec<_> = group
            .iter()
            .map(|batch| stage(&mut writer, keys, certificates, dir, batch))
            .collect();
        let written: Vec<&Written> = staged
            .iter()
            .filter_map(|staged| staged.as_ref().ok()?.written.as_ref())
            .collect();
        if let Err(err) = make_durable(&written) {
            drop(writer);
            warn!(batches = group.len(), error = %err, "chunks not made durable; the group is not stored");
            return fail_all(err.to_string());
        }
        let stored: Vec<_> = staged
            .into_iter()
            .map(|staged| {
                let staged = staged?;
                if let Some(id) = &staged.seal {
                    seal::write_seal(&writer, seal_key, dir, id)?;
                }
                Ok(staged.appended)
            })
            .collect();
        match writer.commit() {
            Ok(()) => stored,
            Err(err) => {
                warn!(batches = group.len(), error = %err, "the index did not commit a group of batches");
                fail_all(err.to_string())
            }
        }
    }
}

/// Where a recording's file goes, relative to the store directory; refuses a host or boot id
/// that would lead elsewhere.
fn recording_path(key: &RecordingKey) -> Result<String, StoreError> {
    // A boot id is held to the same rule as a host name: both become folder names.
    if !custos_pki::is_host_name(&key.host) || !custos_pki::is_host_name(&key.boot_id.0) {
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

/// Writes one prepared batch's chunk (not yet fsynced) and records it in the open index
/// transaction.
fn stage(
    writer: &mut IndexWriter<'_>,
    keys: &KeyRing,
    certificates: &mut AgentCertificates,
    dir: &Path,
    prepared: &Prepared,
) -> Result<Staged, StoreError> {
    let Prepared {
        batch,
        summary,
        receipt,
    } = prepared;
    let header = &batch.header;
    // The batch's host is its sender's certificate name (ingest refuses any other): batches
    // are one agent's, keyed by its name, spool and seq.
    let agent = header.host.as_str();
    if let Some(recording) = writer.batch_recording(agent, &header.spool, header.seq)? {
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
    let row = match writer.recording(&key.id())? {
        Some(row) => row,
        None => writer.insert_recording(&key, &recording_path(&key)?)?,
    };
    let signed = match (&header.signed, &receipt.agent_certificate) {
        (Some(signed), Some(certificate)) => Some(AgentSignature {
            content: signed.content,
            prev: signed.prev,
            signature: signed.signature.clone(),
            certificate: certificates.keep(dir, certificate)?,
        }),
        (Some(_), None) => {
            return Err(StoreError::Refused(
                "a signed batch without its agent's certificate".into(),
            ));
        }
        (None, _) => None,
    };
    let (key_id, enc_key) = keys.current();
    let mut nonce = [0u8; 24];
    getrandom::fill(&mut nonce).map_err(|e| io_err(dir, format!("no randomness: {e}")))?;
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
        received: Some(receipt.received),
        host_clock_skewed: receipt.host_clock_skewed,
        signed,
    };
    let (bytes, hash) = chunk::encode(&chunk_header, &batch.events, enc_key);
    let written = write_chunk(dir, &row, &bytes)?;
    let spool_shared_with = writer.commit_chunk(
        &row.id,
        &StoredChunk {
            agent,
            batch: &chunk_header.batch,
            index: row.chunks,
            stored_len: written.stored_len,
            hash: &hash,
            received: chunk_header.received,
            host_clock_skewed: receipt.host_clock_skewed,
        },
        summary,
    )?;
    let seal = (summary.end.is_some() || row.sealed).then(|| row.id.clone());
    Ok(Staged {
        appended: Appended::Stored {
            recording: row.id,
            chunk: row.chunks,
            spool_shared_with,
        },
        written: Some(written),
        seal,
    })
}

/// Writes chunk bytes at the committed end of the recording; [`make_durable`] fsyncs them.
fn write_chunk(dir: &Path, row: &RecordingRow, bytes: &[u8]) -> Result<Written, StoreError> {
    let path = dir.join(&row.path);
    let parent = path.parent().unwrap_or(dir).to_path_buf();
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

pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}
