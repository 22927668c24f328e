//! The index's encryption at rest: the file (and its write-ahead log) is SQLCipher, every page
//! encrypted and authenticated, keyed with a 256-bit key derived from the store key ring
//! ([`KeyRing::derive`], purpose [`PURPOSE`]), never the ring's own keys. The key is given raw
//! (`PRAGMA key = "x'…'"`), so opening costs no passphrase stretching.
//!
//! Opening tries the key derived from the ring's current key first, then the older ones. The
//! collector (a writer) brings an index to the current key: one written by an earlier
//! collector in plaintext, or under an older key after `store keygen`, is copied into a new
//! file under the current key (`sqlcipher_export`), which then replaces it (rename); both
//! logged once. Readers read whatever key still opens it (a plaintext one too).
use std::{
    fs,
    io::Read as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::{
    index::IndexError,
    trust::keys::{DerivedKey, KeyRing},
};

/// The HKDF purpose the index's keys are derived for.
pub const PURPOSE: &[u8] = b"custos index key v1";

/// The first bytes of a plaintext SQLite database.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The index's keys: one derived from each key of the store key ring, newest first.
#[derive(Clone, Debug)]
pub struct IndexKeys {
    keys: Vec<DerivedKey>,
    /// The key file, for messages.
    key_file: String,
}

impl IndexKeys {
    pub fn new(ring: &KeyRing) -> Self {
        Self {
            keys: ring.derive(PURPOSE),
            key_file: ring
                .path()
                .map(|path| path.display().to_string())
                .unwrap_or_else(|| "the store key ring".into()),
        }
    }

    fn current(&self) -> &DerivedKey {
        // A key ring is never empty.
        &self.keys[0]
    }
}

/// SQLCipher's spelling of a raw key: no passphrase derivation.
fn raw_key(key: &DerivedKey) -> String {
    format!("x'{}'", hex::encode(key.key))
}

fn io_error(path: &Path, what: &str, err: impl std::fmt::Display) -> IndexError {
    IndexError::Io {
        path: path.to_owned(),
        message: format!("{what}: {err}"),
    }
}

/// Whether the file at `path` is a plaintext SQLite database (an index written before the
/// index was encrypted). A missing or empty file is not.
fn is_plaintext(path: &Path) -> Result<bool, IndexError> {
    let mut header = [0u8; 16];
    match fs::File::open(path) {
        Ok(mut file) => match file.read_exact(&mut header) {
            Ok(()) => Ok(&header == PLAINTEXT_HEADER),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(err) => Err(io_error(path, "cannot read", err)),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(io_error(path, "cannot read", err)),
    }
}

/// Opens `path` with `key` (none: plaintext), and reads its schema: `Ok(None)` when the key
/// does not open it.
fn try_open(
    path: &Path,
    flags: OpenFlags,
    key: Option<&DerivedKey>,
) -> Result<Option<Connection>, IndexError> {
    let conn = Connection::open_with_flags(path, flags)?;
    // SQLCipher's own log (process-wide) would write to stderr for each key tried that does
    // not open the index; what fails is reported through errors instead.
    conn.pragma_update(None, "cipher_log_level", "NONE")?;
    if let Some(key) = key {
        conn.pragma_update(None, "key", raw_key(key))?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(_) => Ok(Some(conn)),
        Err(err) if err.sqlite_error_code() == Some(ErrorCode::NotADatabase) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Opens the index at `path` with its key. `upgrade` (the collector's read-write open)
/// re-encrypts a plaintext index, or one under an older key, under the current key first.
pub(crate) fn open(
    path: &Path,
    flags: OpenFlags,
    keys: &IndexKeys,
    upgrade: bool,
) -> Result<Connection, IndexError> {
    let current = keys.current();
    if is_plaintext(path)? {
        if !upgrade {
            return try_open(path, flags, None)?.ok_or_else(|| wrong_key(path, keys));
        }
        reencrypt(path, None, current)?;
        tracing::info!(
            index = %path.display(),
            key = %current.id,
            "the index was plaintext (written by an earlier collector): encrypted it with the \
             index key derived from store key {}", current.id
        );
    }
    for (n, key) in keys.keys.iter().enumerate() {
        let Some(conn) = try_open(path, flags, Some(key))? else {
            continue;
        };
        if n == 0 || !upgrade {
            return Ok(conn);
        }
        drop(conn);
        reencrypt(path, Some(key), current)?;
        tracing::info!(
            index = %path.display(),
            from = %key.id,
            to = %current.id,
            "the index was encrypted under an older store key: re-encrypted it under the current one"
        );
        return try_open(path, flags, Some(current))?.ok_or_else(|| wrong_key(path, keys));
    }
    Err(wrong_key(path, keys))
}

/// A connection to the index, read-write, with whichever key opens it, and nothing else done:
/// for tools and tests that edit the index outside [`crate::index::Index`] (as someone holding
/// the store key could).
pub fn connection(path: &Path, keys: &IndexKeys) -> Result<Connection, IndexError> {
    open(path, OpenFlags::default(), keys, false)
}

fn wrong_key(path: &Path, keys: &IndexKeys) -> IndexError {
    IndexError::WrongKey {
        path: path.to_owned(),
        key_file: keys.key_file.clone(),
        ids: keys
            .keys
            .iter()
            .map(|key| key.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Copies the database at `path` (under `from`, none: plaintext) into a new file under `to`,
/// which then replaces it: the copy is complete and synced before the rename, so a crash
/// leaves either database whole (a leftover copy is removed by the next attempt). The old
/// write-ahead log was checkpointed into the copy and is removed with the old file.
fn reencrypt(path: &Path, from: Option<&DerivedKey>, to: &DerivedKey) -> Result<(), IndexError> {
    let copy = sibling(path, ".encrypting");
    for leftover in [
        copy.clone(),
        sibling(&copy, "-journal"),
        sibling(&copy, "-wal"),
        sibling(&copy, "-shm"),
    ] {
        match fs::remove_file(&leftover) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(&leftover, "cannot remove", err)),
        }
    }
    let source = try_open(path, OpenFlags::default(), from)?.ok_or_else(|| IndexError::Io {
        path: path.to_owned(),
        message: "its key no longer opens it while re-encrypting".into(),
    })?;
    // Everything in the log goes into the database file (which is what is copied, through
    // SQLite), and the log is left empty.
    source.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let copy_name = copy.to_str().ok_or_else(|| IndexError::Io {
        path: copy.clone(),
        message: "the path is not UTF-8".into(),
    })?;
    source.execute(
        "ATTACH DATABASE ?1 AS encrypted KEY ?2",
        rusqlite::params![copy_name, raw_key(to)],
    )?;
    source.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
    source.execute("DETACH DATABASE encrypted", [])?;
    source.close().map_err(|(_, err)| err)?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600))
        .map_err(|err| io_error(&copy, "cannot set mode 0600", err))?;
    fs::File::open(&copy)
        .and_then(|file| file.sync_all())
        .map_err(|err| io_error(&copy, "cannot sync", err))?;
    for log in [sibling(path, "-wal"), sibling(path, "-shm")] {
        match fs::remove_file(&log) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error(&log, "cannot remove", err)),
        }
    }
    fs::rename(&copy, path).map_err(|err| io_error(path, "cannot replace", err))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|err| io_error(dir, "cannot sync", err))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::index::Index;

    const MARKER: &str = "phi-marker-5b1e0c";

    /// A key ring in a file (so that messages can name it) with `keys` keys.
    fn ring(dir: &Path, name: &str, keys: usize) -> KeyRing {
        let path = dir.join(name);
        for _ in 0..keys {
            KeyRing::generate(&path).unwrap();
        }
        KeyRing::load(&path).unwrap()
    }

    fn contains(path: &Path, needle: &[u8]) -> bool {
        let bytes = fs::read(path).unwrap_or_default();
        bytes.windows(needle.len()).any(|window| window == needle)
    }

    fn marker_of(index: &Index) -> String {
        index
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'marker'", [], |row| {
                row.get(0)
            })
            .unwrap()
    }

    fn put_marker(index: &Index) {
        index
            .conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('marker', ?1)",
                [MARKER],
            )
            .unwrap();
    }

    /// Neither the index nor its write-ahead log (written, not yet checkpointed) shows what it
    /// holds or that it is SQLite; the file is owner-only; the same key reopens it (to write
    /// and to read).
    #[test]
    fn the_index_and_its_log_are_ciphertext_and_reopen_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = IndexKeys::new(&ring(dir.path(), "store.key", 1));
        let path = dir.path().join("index.sqlite");
        let index = Index::open(&path, &keys).unwrap();
        put_marker(&index);
        let wal = sibling(&path, "-wal");
        assert!(
            fs::metadata(&wal).unwrap().len() > 0,
            "the write is in the log"
        );
        for file in [&path, &wal] {
            assert!(!contains(file, MARKER.as_bytes()), "{}", file.display());
            assert!(!contains(file, b"SQLite format 3"), "{}", file.display());
            assert!(!contains(file, b"CREATE TABLE"), "{}", file.display());
        }
        for file in [&path, &wal, &sibling(&path, "-shm")] {
            let mode = fs::metadata(file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", file.display());
        }
        drop(index);
        assert!(!contains(&path, MARKER.as_bytes()));
        assert_eq!(marker_of(&Index::open(&path, &keys).unwrap()), MARKER);
        assert_eq!(
            marker_of(&Index::open_read_only(&path, &keys).unwrap()),
            MARKER
        );
    }

    #[test]
    fn the_wrong_key_is_named_with_the_index_and_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let keys = IndexKeys::new(&ring(dir.path(), "store.key", 1));
        put_marker(&Index::open(&path, &keys).unwrap());
        let other = IndexKeys::new(&ring(dir.path(), "other.key", 1));
        for err in [
            Index::open(&path, &other).err().unwrap(),
            Index::open_read_only(&path, &other).err().unwrap(),
        ] {
            let message = err.to_string();
            assert!(
                message.contains(&path.display().to_string())
                    && message.contains("other.key")
                    && message.contains("keys k1")
                    && message.contains("no key of the store key ring")
                    && !message.contains("file is not a database"),
                "{message}"
            );
        }
        // Refused without a change: the right key still opens it.
        assert_eq!(marker_of(&Index::open(&path, &keys).unwrap()), MARKER);
    }

    /// A plaintext index of an earlier collector, its last writes still in its write-ahead log
    /// (as a crash leaves them), is encrypted when the collector opens it: everything kept,
    /// no plaintext left in the index's files, no copy left behind. A reader before that reads
    /// the plaintext one.
    #[test]
    fn a_plaintext_index_is_encrypted_at_open_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let keys = IndexKeys::new(&ring(dir.path(), "store.key", 1));
        let written = dir.path().join("written");
        fs::create_dir(&written).unwrap();
        let plain = Connection::open(written.join("index.sqlite")).unwrap();
        plain.pragma_update(None, "journal_mode", "WAL").unwrap();
        plain
            .execute_batch(&format!(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '3'), ('marker', '{MARKER}');"
            ))
            .unwrap();
        // Copied while open: the rows are in the log only.
        let path = dir.path().join("index.sqlite");
        for suffix in ["", "-wal"] {
            fs::copy(
                sibling(&written.join("index.sqlite"), suffix),
                sibling(&path, suffix),
            )
            .unwrap();
        }
        drop(plain);
        assert!(contains(&sibling(&path, "-wal"), MARKER.as_bytes()));
        assert_eq!(
            marker_of(&Index::open_read_only(&path, &keys).unwrap()),
            MARKER
        );

        let index = Index::open(&path, &keys).unwrap();
        assert_eq!(marker_of(&index), MARKER);
        for file in [&path, &sibling(&path, "-wal")] {
            assert!(!contains(file, MARKER.as_bytes()), "{}", file.display());
            assert!(!contains(file, b"SQLite format 3"), "{}", file.display());
        }
        assert!(!sibling(&path, ".encrypting").exists());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(index);
        assert_eq!(marker_of(&Index::open(&path, &keys).unwrap()), MARKER);
    }

    /// After `store keygen` the index still opens (readers with the older key); the collector
    /// re-encrypts it under the current key, which the older key alone then no longer opens.
    #[test]
    fn a_rotated_key_ring_reencrypts_the_index_under_the_current_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let first = ring(dir.path(), "store.key", 1);
        put_marker(&Index::open(&path, &IndexKeys::new(&first)).unwrap());
        let rotated = IndexKeys::new(&ring(dir.path(), "store.key", 1));
        assert_eq!(
            marker_of(&Index::open_read_only(&path, &rotated).unwrap()),
            MARKER
        );
        assert!(Index::open_read_only(&path, &IndexKeys::new(&first)).is_ok());
        assert_eq!(marker_of(&Index::open(&path, &rotated).unwrap()), MARKER);
        let err = Index::open_read_only(&path, &IndexKeys::new(&first))
            .err()
            .expect("k1 alone no longer opens it")
            .to_string();
        assert!(err.contains("keys k1"), "{err}");
        assert_eq!(
            marker_of(&Index::open_read_only(&path, &rotated).unwrap()),
            MARKER
        );
    }
}
