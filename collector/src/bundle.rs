//! `custos-collector export-bundle`: a self-contained copy of what an independent verifier needs
//! (`custos verify --offline DIR`, docs/store.md "Verifying offline"): the recording files and
//! their seals, the agents' certificates, the tombstones, the audit database (access log and its
//! signed checkpoints, copied consistently with SQLite's `VACUUM INTO`), and the public material
//! only: the CA certificate and the seal public key, never a private key nor the store key. Files
//! are 0600 and folders 0700 (recordings stay encrypted, but their headers name hosts and times);
//! `manifest.json` lists every file with its size and SHA-256.
use std::{
    fs::{self, File},
    io::{Read, Write},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use custos_proto::Timestamp;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::trust::{
    access_log,
    keys::SealKey,
    store::{self as layout, AGENTS_DIR, AUDIT_DB, RECORDINGS_DIR, TOMBSTONES_DIR},
};

/// Where the public material goes in a bundle.
pub const PUBLIC_DIR: &str = "public";
/// The CA certificate, in [`PUBLIC_DIR`].
pub const CA_FILE: &str = "ca.pem";
/// The seal public key (hex), in [`PUBLIC_DIR`].
pub const SEAL_PUB_FILE: &str = "seal.pub";
/// The bundle's manifest.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Key(#[from] crate::trust::keys::KeyError),
}

fn err(path: &Path, message: impl std::fmt::Display) -> BundleError {
    BundleError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// What goes into a bundle.
pub struct Source<'a> {
    /// The store directory.
    pub store: &'a Path,
    /// The deployment CA certificate (`tls.ca`).
    pub ca: &'a Path,
    /// The seal key: only its public half is written.
    pub seal_key: &'a Path,
    /// Recording files to copy, relative to the store (`recordings/...`); `None`: all of them.
    pub recordings: Option<Vec<PathBuf>>,
}

/// One file of the bundle, as the manifest lists it.
#[derive(Debug, Serialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The bundle's `manifest.json`.
#[derive(Debug, Serialize)]
pub struct Manifest {
    pub version: u32,
    pub created_at: Timestamp,
    /// `all`, or the recordings asked for (the agents' chains then show the others as missing).
    pub selection: String,
    pub files: Vec<ManifestFile>,
}

/// Writes the bundle into `out`, which must not exist or be empty. Returns its manifest.
pub fn export(source: &Source, out: &Path) -> Result<Manifest, BundleError> {
    if fs::read_dir(out).is_ok_and(|mut listing| listing.next().is_some()) {
        return Err(err(out, "exists and is not empty; give a new folder"));
    }
    make_dir(out)?;
    let mut files = Vec::new();
    let recordings = match &source.recordings {
        Some(chosen) => chosen
            .iter()
            .flat_map(|rec| [rec.clone(), layout::seal_path(rec)])
            .filter(|path| source.store.join(path).exists())
            .collect(),
        None => {
            let mut all = Vec::new();
            for ext in ["rec", "seal"] {
                all.extend(relative(source.store, RECORDINGS_DIR, ext)?);
            }
            all
        }
    };
    let mut copied = recordings;
    copied.extend(relative(source.store, AGENTS_DIR, "der")?);
    copied.extend(relative(source.store, TOMBSTONES_DIR, "json")?);
    // Copied through a buffer, not read whole: a recording can be far larger than memory.
    for path in &copied {
        let from = source.store.join(path);
        let file = File::open(&from).map_err(|e| err(&from, e))?;
        files.push(write_file(out, path, file)?);
    }
    let seal = SealKey::load(source.seal_key)?;
    files.push(copy_audit(source.store, out, &seal)?);
    let ca = fs::read(source.ca).map_err(|e| err(source.ca, e))?;
    files.push(write_file(
        out,
        &Path::new(PUBLIC_DIR).join(CA_FILE),
        &ca[..],
    )?);
    let public = seal.public();
    let public = format!("{}\n", hex::encode(public));
    files.push(write_file(
        out,
        &Path::new(PUBLIC_DIR).join(SEAL_PUB_FILE),
        public.as_bytes(),
    )?);
    let manifest = Manifest {
        version: 1,
        created_at: Timestamp::now(),
        selection: match &source.recordings {
            None => "all".into(),
            Some(chosen) => chosen
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| err(out, e))?;
    write_file(out, Path::new(MANIFEST), &json[..])?;
    Ok(manifest)
}

/// The files ending in `.{ext}` under the store's `folder`, relative to the store.
fn relative(store: &Path, folder: &str, ext: &str) -> Result<Vec<PathBuf>, BundleError> {
    let found = layout::files_under(&store.join(folder), ext).map_err(|e| err(store, e))?;
    Ok(found
        .into_iter()
        .filter_map(|path| path.strip_prefix(store).ok().map(Path::to_owned))
        .collect())
}

fn make_dir(path: &Path) -> Result<(), BundleError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| err(path, e))
}

/// Writes what `source` reads to `out/relative` (0600, its folders 0700), a buffer at a time,
/// and returns its manifest line.
fn write_file(
    out: &Path,
    relative: &Path,
    mut source: impl Read,
) -> Result<ManifestFile, BundleError> {
    let target = out.join(relative);
    if let Some(parent) = target.parent() {
        make_dir(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(|e| err(&target, e))?;
    let mut hashing = Hashing::new(&mut file);
    std::io::copy(&mut source, &mut hashing)
        .and_then(|_| hashing.flush())
        .map_err(|e| err(&target, e))?;
    let line = hashing.manifest_line(relative);
    file.sync_all().map_err(|e| err(&target, e))?;
    Ok(line)
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
        }
    }

    fn manifest_line(self, relative: &Path) -> ManifestFile {
        ManifestFile {
            path: relative.display().to_string(),
            bytes: self.bytes,
            sha256: hex::encode(self.hash.finalize()),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Copies the audit database as one consistent snapshot (`VACUUM INTO`, safe while the
/// collector writes to it), and signs a checkpoint of the copy's access log with the seal key, so
/// that the copy's every entry is covered: an entry removed from it later, from the middle or
/// the tail, shows to a verifier with the public key alone.
fn copy_audit(store: &Path, out: &Path, seal: &SealKey) -> Result<ManifestFile, BundleError> {
    let source = store.join(AUDIT_DB);
    let target = out.join(AUDIT_DB);
    let conn =
        rusqlite::Connection::open_with_flags(&source, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| err(&source, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .and_then(|()| {
            conn.execute(
                "VACUUM INTO ?1",
                [target.to_str().ok_or(rusqlite::Error::InvalidQuery)?],
            )
        })
        .map_err(|e| err(&source, format!("cannot copy: {e}")))?;
    drop(conn);
    rusqlite::Connection::open(&target)
        .and_then(|copy| access_log::Checkpoint::of(&copy, seal)?.insert(&copy))
        .map_err(|e| {
            err(
                &target,
                format!("cannot sign a checkpoint of the copy: {e}"),
            )
        })?;
    fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).map_err(|e| err(&target, e))?;
    let mut hashing = Hashing::new(std::io::sink());
    File::open(&target)
        .and_then(|mut file| {
            std::io::copy(&mut file, &mut hashing)?;
            file.sync_all()
        })
        .map_err(|e| err(&target, e))?;
    Ok(hashing.manifest_line(Path::new(AUDIT_DB)))
}
