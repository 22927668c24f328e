//! The spool key: the agent's own ChaCha20-Poly1305 key that seals what sessions did before it
//! touches the disk (spool segments and `rejected/`).
//!
//! The key file holds 32 random bytes, mode 0600, owned by the agent's user (`spool.key_file`,
//! default `/var/lib/custos/spool.key`, next to the spool). The package's setup script creates
//! it at install; an agent that finds none creates one at start and says so in its log. A key
//! readable by group or others, or of the wrong size, is refused with a line naming the file.
//! Losing the key loses what is spooled (each batch becomes a gap), nothing else: the
//! collector never needs it.
use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ring::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use tracing::info;

/// Bytes of a spool key.
pub const KEY_LEN: usize = 32;
/// Bytes the seal adds to a payload.
pub const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("spool key {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> KeyError {
    KeyError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The key that seals spooled batches.
pub struct SpoolKey {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SpoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpoolKey(..)")
    }
}

impl SpoolKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<SpoolKey> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(SpoolKey {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// Reads the key in `path`, creating it (0600, 32 random bytes) when there is none.
    pub fn load_or_create(path: &Path) -> Result<SpoolKey, KeyError> {
        match fs::metadata(path) {
            Ok(_) => SpoolKey::load(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                create(path)?;
                info!(path = %path.display(), "spool key created (0600): spooled batches are sealed with it");
                SpoolKey::load(path)
            }
            Err(err) => Err(file_error(path, err)),
        }
    }

    /// Reads the key in `path`, refusing one others may read.
    pub fn load(path: &Path) -> Result<SpoolKey, KeyError> {
        let meta = fs::metadata(path).map_err(|e| file_error(path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format!("readable by group or others (mode {mode:04o}); run chmod 600 on it"),
            ));
        }
        let bytes = fs::read(path).map_err(|e| file_error(path, e))?;
        if bytes.len() != KEY_LEN {
            return Err(file_error(
                path,
                format!(
                    "holds {} bytes, a spool key is {KEY_LEN} random bytes (head -c 32 /dev/urandom); \
                     a new key makes what is spooled unreadable",
                    bytes.len()
                ),
            ));
        }
        SpoolKey::from_bytes(&bytes).ok_or_else(|| file_error(path, "not a key"))
    }

    /// Seals `plain` bound to `aad`: the nonce used and the sealed bytes (tag included).
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        // The system's random source does not fail once the process is running; were it to,
        // a fixed nonce would be unsafe, so the agent stops.
        self.random
            .fill(&mut nonce)
            .expect("the system's random source failed");
        let mut sealed = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .expect("a batch is far below ChaCha20-Poly1305's message limit");
        (nonce, sealed)
    }

    /// Opens what [`SpoolKey::seal`] sealed with the same `aad`; `None` when the key, the
    /// bytes or the `aad` differ.
    pub fn open(&self, nonce: [u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut buf,
            )
            .ok()?;
        let len = plain.len();
        buf.truncate(len);
        Some(buf)
    }
}

fn random_key(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let mut bytes = [0u8; KEY_LEN];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| file_error(path, "the system's random source failed"))?;
    Ok(bytes)
}

/// Writes a new key to `path` whole or not at all (a temporary file renamed into place).
fn create(path: &Path) -> Result<(), KeyError> {
    let bytes = random_key(path)?;
    let tmp = path.with_extension("key.tmp");
    let _ = fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| file_error(path, format!("cannot create: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_key_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.key");
        let key = SpoolKey::load_or_create(&path).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let (nonce, sealed) = key.seal(b"here", b"secret");
        // The same key comes back from the file.
        let again = SpoolKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(nonce, b"here", &sealed).unwrap(), b"secret");
        assert!(again.open(nonce, b"there", &sealed).is_none());
    }

    #[test]
    fn a_key_others_may_read_or_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.key");
        fs::write(&path, [7u8; KEY_LEN]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = SpoolKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, [7u8; 16]).unwrap();
        let err = SpoolKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("holds 16 bytes"), "{err}");
    }
}
