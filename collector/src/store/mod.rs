//! The embedded store: one directory holding every recording (format in docs/store.md).
//!
//! - `recordings/<host>/<boot id>/<session>.rec`: a recording, append-only, one chunk per
//!   batch, encrypted and hash-chained ([`crate::trust`]); `<session>.seal`: the collector's
//!   signature over the final hash and chunk count, written when the session ends.
//! - `index.sqlite`: the [`crate::index`], rebuildable from the recordings, encrypted with a
//!   key derived from the store key ring ([`crate::index::sqlite::crypt`]).
//! - `agents/<fingerprint>.der`: the certificates whose keys signed stored batches
//!   ([`certificates`]), so that a verifier has them.
//!
//! A batch is durable when its chunk is written and fsynced and the index has committed it:
//! only then is it acknowledged ([`group`]). After a crash, [`Store::open`] replays chunks that
//! reached the disk but not the index, and cuts off a torn last chunk (never acknowledged)
//! ([`recovery`]). Ended recordings are sealed ([`seal`]); reading, [`verify`]ing and
//! [`rebuild`]ing the index all walk a recording with the one chain reader.
//!
//! The store knows no network; the ingest and API modules call it.
pub mod certificates;
mod group;
mod rebuild;
mod recovery;
mod seal;
mod tombstones;
mod verify;

use std::{
    fs::{self, File, OpenOptions},
    io::{BufReader, Read as _},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
};

use custos_proto::Event;
use serde::Deserialize;

pub use self::{
    group::{Appended, Prepared, Receipt},
    rebuild::{Rebuilt, rebuild_index},
    seal::seal_path,
};
use crate::{
    index::{self, Index, IndexKeys},
    trust::{
        chain::ChainReader,
        keys::{self, KeyRing, SealKey},
    },
};

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

/// Where the store is and which keys it uses: the configuration's `[store]` section, and what
/// every opening of the store takes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store directory (recordings and index).
    pub dir: PathBuf,
    /// Encryption keys (`custos-collector store keygen`).
    pub key_file: PathBuf,
    /// The Ed25519 key that seals ended recordings (`custos-collector pki init` writes it).
    pub seal_key: PathBuf,
    /// The deployment CA's certificate, which agents' certificates kept in the store must chain
    /// to for their signatures to count (`tls.ca`, set when the configuration is read).
    #[serde(skip)]
    pub agent_ca: Option<PathBuf>,
}

/// The configuration's keys only (`agent_ca` is `tls.ca`, not a key of `[store]`).
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("dir", &self.dir)
            .field("key_file", &self.key_file)
            .field("seal_key", &self.seal_key)
            .finish()
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            dir: "/var/lib/custos-collector".into(),
            key_file: "/etc/custos/pki/store.key".into(),
            seal_key: "/etc/custos/pki/seal.key".into(),
            agent_ca: None,
        }
    }
}

/// A recording's chunks as [`Store::chunks`] reads them: the events of each, or the break
/// that ended the reading.
pub struct RecordingChunks<'a> {
    id: String,
    /// `None` once the chain broke.
    chain: Option<ChainReader<'a, BufReader<std::io::Take<File>>>>,
}

impl Iterator for RecordingChunks<'_> {
    type Item = Result<Vec<Event>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.chain.as_mut()?.next()?;
        let events = chunk.and_then(|chunk| chunk.events()).map_err(|broken| {
            self.chain = None;
            StoreError::Recording {
                recording: self.id.clone(),
                message: format!("{broken} (run custos verify)"),
            }
        });
        Some(events)
    }
}

pub struct Store {
    dir: PathBuf,
    index: Index,
    keys: KeyRing,
    seal_key: SealKey,
    /// The agents' certificates kept in `agents/`.
    certificates: certificates::AgentCertificates,
    /// The deployment CA's certificate, to check agents' certificates with.
    agent_ca: Option<PathBuf>,
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

/// The index's file in the store directory `dir`.
pub fn index_path(dir: &Path) -> PathBuf {
    dir.join("index.sqlite")
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
        let keys = KeyRing::load(&config.key_file)?;
        let index = Index::open(&index_path(&config.dir), &IndexKeys::new(&keys))?;
        let mut store = Store {
            dir: config.dir.clone(),
            index,
            keys,
            seal_key: SealKey::load(&config.seal_key)?,
            certificates: Default::default(),
            agent_ca: config.agent_ca.clone(),
            _lock: Some(lock),
        };
        store.recover()?;
        Ok(store)
    }

    /// Opens the store to read only: no recovery, no writes (safe while a collector runs).
    pub fn open_read_only(config: &StoreConfig) -> Result<Store, StoreError> {
        let keys = KeyRing::load(&config.key_file)?;
        Ok(Store {
            dir: config.dir.clone(),
            index: Index::open_read_only(&index_path(&config.dir), &IndexKeys::new(&keys))?,
            keys,
            seal_key: SealKey::load(&config.seal_key)?,
            certificates: Default::default(),
            agent_ca: config.agent_ca.clone(),
            _lock: None,
        })
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// A write transaction on the index, for what the store's writer records beside chunks
    /// (agents' contacts).
    pub fn index_writer(&mut self) -> Result<index::IndexWriter<'_>, StoreError> {
        Ok(self.index.writer()?)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every event of a recording, in order, after checking its chain (all in memory: for
    /// tests and tools; the API streams with [`Store::chunks`]).
    pub fn read_events(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        for chunk in self.chunks(id)? {
            events.extend(chunk?);
        }
        Ok(events)
    }

    /// The events of each committed chunk of a recording, in order, read from its file one
    /// chunk at a time as they are asked for (decrypted, decompressed and checked against the
    /// chain as they come): memory holds one chunk, whatever the recording's size. A break in
    /// the chain is an error, and the last item.
    pub fn chunks(&self, id: &str) -> Result<RecordingChunks<'_>, StoreError> {
        let row = self
            .index
            .recording(id)?
            .ok_or_else(|| StoreError::Recording {
                recording: id.to_owned(),
                message: "no such recording".into(),
            })?;
        let path = self.dir.join(&row.path);
        let file = File::open(&path).map_err(|e| io_err(&path, e))?;
        // Only what the index committed: a chunk being written is not read.
        let committed = BufReader::new(file.take(row.stored_len));
        Ok(RecordingChunks {
            id: id.to_owned(),
            chain: Some(ChainReader::new(committed, &self.keys)),
        })
    }

    /// Calls `each` with the events of each committed chunk of a recording, in order (see
    /// [`Store::chunks`]); stops early when `each` returns false. A break in the chain is an
    /// error.
    pub fn for_each_chunk(
        &self,
        id: &str,
        mut each: impl FnMut(Vec<Event>) -> bool,
    ) -> Result<(), StoreError> {
        for chunk in self.chunks(id)? {
            if !each(chunk?) {
                break;
            }
        }
        Ok(())
    }

    /// Deletes a recording: first its tombstone (`reason`, and `by` which rule or whom, signed
    /// with the seal key, listing the agents' batches it held), then its files, then its index
    /// rows (a crash between leaves rows of a missing file, which the next purge removes).
    pub fn purge(&mut self, id: &str, reason: &str, by: &str) -> Result<(), StoreError> {
        let Some(row) = self.index.recording(id)? else {
            return Ok(());
        };
        tombstones::write(self, &row, reason, by)?;
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
            group::sync_dir(parent)?;
        }
        let writer = self.index.writer()?;
        writer.delete_recording(id)?;
        writer.commit()?;
        Ok(())
    }
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
mod agent_tests;
#[cfg(test)]
pub(crate) mod tests;
