//! The store's keys (the files, and checking a seal's signature).
//!
//! - The encryption key file: one key per line, `<id> <64 hex digits>`, `#` comments. The last
//!   key encrypts new chunks; the others still decrypt the chunks they encrypted, so rotating is
//!   appending a line (`custos-collector store keygen`). Mode 0600 is required.
//! - The seal key: the collector's Ed25519 key that signs ended recordings (`seal.key`, 0600,
//!   `custos seal key v1` and 64 hex digits), and its public half (`seal.pub`) for anyone who
//!   verifies.
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

fn err(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::File {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn random_32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    bytes
}

/// Reads a secret file: owner-only mode, then its text.
fn read_secret(path: &Path) -> Result<String, KeyError> {
    let meta = fs::metadata(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(
            path,
            format!(
                "key file is readable by group or others (mode {mode:04o}); run chmod 600 on it"
            ),
        ));
    }
    fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))
}

fn parse_hex32(path: &Path, line_no: usize, text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(text)
        .map_err(|_| err(path, format!("line {line_no}: the key is not hexadecimal")))?;
    bytes.try_into().map_err(|_| {
        err(
            path,
            format!("line {line_no}: a key is 64 hex digits (32 bytes)"),
        )
    })
}

/// Encryption keys by id; the last one is current.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "KeyRing({ids:?})")
    }
}

impl KeyRing {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret(path)?;
        let mut keys: Vec<(String, [u8; 32])> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, key) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| err(path, format!("line {}: expected `<id> <hex key>`", i + 1)))?;
            if keys.iter().any(|(known, _)| known == id) {
                return Err(err(
                    path,
                    format!("line {}: key id {id} appears twice", i + 1),
                ));
            }
            keys.push((id.to_owned(), parse_hex32(path, i + 1, key.trim())?));
        }
        if keys.is_empty() {
            return Err(err(path, "holds no key"));
        }
        Ok(Self { keys })
    }

    /// A key ring of one key (tests build chains without key files).
    pub fn single(id: &str, key: [u8; 32]) -> Self {
        Self {
            keys: vec![(id.to_owned(), key)],
        }
    }

    /// The key new chunks are encrypted with.
    pub fn current(&self) -> (&str, &[u8; 32]) {
        let (id, key) = self.keys.last().expect("a key ring is never empty");
        (id, key)
    }

    pub fn get(&self, id: &str) -> Option<&[u8; 32]> {
        self.keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, key)| key)
    }

    /// Appends a fresh key to `path` (creating it, 0600), which becomes the current one.
    /// Returns its id.
    pub fn generate(path: &Path) -> Result<String, KeyError> {
        let existing = if path.exists() {
            Some(Self::load(path)?)
        } else {
            None
        };
        let next = existing
            .as_ref()
            .map(|ring| ring.keys.len() + 1)
            .unwrap_or(1);
        let mut id = format!("k{next}");
        while existing
            .as_ref()
            .is_some_and(|ring| ring.get(&id).is_some())
        {
            id.push('x');
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(path, format!("cannot open: {e}")))?;
        if existing.is_none() {
            writeln!(
                file,
                "# Custos store encryption keys: `<id> <hex>`, the last encrypts new chunks.\n\
                 # Keep every key: old chunks need theirs. Back this file up apart from the store."
            )
            .map_err(|e| err(path, format!("cannot write: {e}")))?;
        }
        writeln!(file, "{id} {}", hex::encode(random_32()))
            .and_then(|()| file.sync_all())
            .map_err(|e| err(path, format!("cannot write: {e}")))?;
        Ok(id)
    }
}

const SEAL_HEADER: &str = "custos seal key v1";

/// The collector's seal signing key.
pub struct SealKey {
    key: SigningKey,
}

impl SealKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret(path)?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(SEAL_HEADER) {
            return Err(err(
                path,
                format!("not a seal key (first line must be `{SEAL_HEADER}`)"),
            ));
        }
        let hex_key = lines
            .next()
            .ok_or_else(|| err(path, "missing the key line"))?;
        Ok(Self {
            key: SigningKey::from_bytes(&parse_hex32(path, 2, hex_key)?),
        })
    }

    /// Writes a new seal key to `path` (0600) and its public key to `public` (0644).
    pub fn generate(path: &Path, public: &Path) -> Result<(), KeyError> {
        let key = SigningKey::from_bytes(&random_32());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(path, format!("cannot create: {e}")))?;
        writeln!(file, "{SEAL_HEADER}\n{}", hex::encode(key.to_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(|e| err(path, format!("cannot write: {e}")))?;
        fs::write(
            public,
            format!("{}\n", hex::encode(key.verifying_key().to_bytes())),
        )
        .map_err(|e| err(public, format!("cannot write: {e}")))?;
        Ok(())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// A 32-byte secret for `purpose`, derived from the seal key with HKDF-SHA256 (salt
    /// `custos seal key derivation v1`, info `purpose`): whoever lacks the seal key cannot
    /// compute it, and each purpose gets its own.
    pub fn derive(&self, purpose: &[u8]) -> [u8; 32] {
        use ring::hkdf;
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"custos seal key derivation v1")
            .extract(&self.key.to_bytes());
        let mut out = [0u8; 32];
        prk.expand(&[purpose], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 yields 32 bytes");
        out
    }
}

/// Reads a seal public key file (`seal.pub`: 64 hex digits, as `SealKey::generate` writes it).
pub fn read_seal_public(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = fs::read_to_string(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    parse_hex32(path, 1, text.trim()).map_err(|_| {
        err(
            path,
            "not a seal public key (64 hex digits, as seal.pub holds)",
        )
    })
}

/// Checks a seal signature against a public key.
pub fn verify_seal(public: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(public) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rings_rotate_and_refuse_loose_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        assert_eq!(KeyRing::generate(&path).unwrap(), "k1");
        assert_eq!(KeyRing::generate(&path).unwrap(), "k2");
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.current().0, "k2");
        assert!(ring.get("k1").is_some());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let message = KeyRing::load(&path).unwrap_err().to_string();
        assert!(
            message.contains("store.key") && message.contains("chmod 600"),
            "{message}"
        );
    }

    #[test]
    fn seals_verify_with_the_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let (path, public) = (dir.path().join("seal.key"), dir.path().join("seal.pub"));
        SealKey::generate(&path, &public).unwrap();
        let key = SealKey::load(&path).unwrap();
        let signature = key.sign(b"message");
        assert!(verify_seal(&key.public(), b"message", &signature));
        assert!(!verify_seal(&key.public(), b"massage", &signature));
    }
}
