//! The index: recordings with their metadata and counts, the commands and file opens in them,
//! the batches stored (for exactly-once), and the agents seen. Every question asked of it, and
//! every change made to it, is a method here: no caller holds a connection or writes SQL.
//!
//! Everything in it can be rebuilt from the recording files (`custos-collector index rebuild`),
//! and after a crash the store replays the chunks the index had not committed yet. Writes go
//! through an [`IndexWriter`], one transaction that rolls back unless committed: each stored
//! chunk is committed together with its batch row and what its events add (the group of chunks
//! the store writer stores at once shares one transaction).
//!
//! Today's only backend is SQLite ([`sqlite`]). When PostgreSQL joins it, [`Index`] and
//! [`IndexWriter`] become two traits with these methods, implemented by `sqlite` and a sibling
//! `postgres` module; [`ChunkSummary`], [`RecordingRow`] and [`Filter`] are
//! already backend-free.
pub mod sqlite;
mod summary;

use std::path::{Path, PathBuf};

use custos_proto::Timestamp;
use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use self::{
    sqlite::{crypt::IndexKeys, schema::SCHEMA_VERSION},
    summary::{ChunkSummary, CommandRow, FileOpenRow, GapRow},
};
use crate::trust::chunk::{BatchRef, ChunkHash, RecordingKey};

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "index: schema version {found} is newer than this collector's ({SCHEMA_VERSION}); \
         run the collector release that wrote it, or rebuild the index from the recordings"
    )]
    NewerSchema { found: String },
    #[error(
        "index: schema version {found:?} is not one this collector knows (it reads 1 to \
         {SCHEMA_VERSION}); the index is damaged: rebuild it from the recordings"
    )]
    UnknownSchema { found: String },
    #[error(
        "index {path}: no key of the store key ring ({key_file}: keys {ids}) opens it: it was \
         encrypted under a key no longer in that file, or it is damaged; use the key file the \
         collector wrote it with, or rebuild the index from the recordings \
         (custos-collector index rebuild)"
    )]
    WrongKey {
        path: PathBuf,
        key_file: String,
        ids: String,
    },
    #[error("index {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// A recording as the index knows it.
#[derive(Clone, Debug)]
pub struct RecordingRow {
    pub id: String,
    pub key: RecordingKey,
    /// Path of the recording file, relative to the store directory.
    pub path: String,
    pub chunks: u64,
    /// Length of the file up to the last committed chunk.
    pub stored_len: u64,
    pub last_hash: ChunkHash,
    pub sealed: bool,
}

/// An agent's contact, as the index's agents table records it: what its hello or a batch said.
#[derive(Clone, Debug)]
pub struct AgentContact {
    /// The name in its certificate.
    pub host: String,
    pub version: Option<String>,
    pub boot_id: Option<String>,
    pub spool: Option<String>,
    pub address: String,
    /// Its clock against the collector's, when its hello said its time.
    pub clock: Option<HostClock>,
}

/// How far an agent's clock is from the collector's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostClock {
    /// The agent's clock minus the collector's, in nanoseconds (positive: the host is ahead).
    pub offset_ns: i64,
    /// The offset, either way, is more than the allowed skew (`ingest.max_clock_skew`).
    pub skewed: bool,
}

/// A chunk the store wrote, as the index records it (with the summary of its events).
#[derive(Clone, Copy, Debug)]
pub struct StoredChunk<'a> {
    /// The agent that sent its batch: the name in the agent's certificate (which is the
    /// recording's host). Batches are stored once per agent, spool and seq.
    pub agent: &'a str,
    pub batch: &'a BatchRef,
    /// Position in the recording, from 0.
    pub index: u64,
    /// Length of the recording file with this chunk.
    pub stored_len: u64,
    pub hash: &'a ChunkHash,
    /// When the collector received the batch (by its own clock), if the chunk says: chunks
    /// written before receive times were recorded do not.
    pub received: Option<Timestamp>,
    /// The sending host's clock was off by more than the allowed skew.
    pub host_clock_skewed: bool,
}

/// Which sessions: by login user, host, and a time window the session overlaps.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub user: Option<String>,
    pub host: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub limit: usize,
}

/// The index, open for reading (any number at once) or, through [`Index::writer`], for
/// writing (one collector per store).
pub struct Index {
    conn: Connection,
}

impl Index {
    /// Opens (creating, or upgrading from an earlier schema or a plaintext file) the index at
    /// `path`, encrypted with its key derived from the store key ring.
    pub fn open(path: &Path, keys: &IndexKeys) -> Result<Self, IndexError> {
        Ok(Self {
            conn: sqlite::schema::open(path, keys)?,
        })
    }

    /// Opens the index to read only (safe while a collector writes it).
    pub fn open_read_only(path: &Path, keys: &IndexKeys) -> Result<Self, IndexError> {
        Ok(Self {
            conn: sqlite::schema::open_read_only(path, keys)?,
        })
    }

    /// Starts a write transaction: nothing it does is seen, by this index or any other reader,
    /// until [`IndexWriter::commit`]; dropped uncommitted, it rolls back.
    pub fn writer(&mut self) -> Result<IndexWriter<'_>, IndexError> {
        Ok(IndexWriter {
            tx: self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?,
        })
    }
}

/// One write transaction on the index (see [`Index::writer`]).
pub struct IndexWriter<'a> {
    tx: Transaction<'a>,
}

impl IndexWriter<'_> {
    /// Makes everything written through this writer durable and visible, at once.
    pub fn commit(self) -> Result<(), IndexError> {
        self.tx.commit()?;
        Ok(())
    }
}
