//! Verifying a store directory (or an exported bundle of one) from its files alone: every
//! recording file found under `recordings/` (never the index, which anyone who can write the
//! store can edit), its chain, its seal (signature, chunk count and final hash), each chunk's agent
//! signature, every agent's chain of batches across recordings with the tombstones' removals,
//! and the access log's checkpoints. With public material only (the seal public key, the CA
//! certificate; the agents' certificates are in the store), or with the store key too, which adds
//! decryption and the check of each chunk's content against its agent's signature
//! (docs/store.md, "Verifying offline").
//!
//! The collector's `verify` goes through the same functions ([`check_recording`],
//! [`check_seal`], [`agent_chains`]); the auditor's `custos verify --offline` through
//! [`verify_dir`].
use std::{
    collections::HashMap,
    fs::{self, File},
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use custos_pki::batch_signature::{self, AgentCertificates};
use custos_proto::{
    AuditSessionId, BootId,
    api::{AgentChainResult, VerifyReport, VerifyResult},
};
use rusqlite::{Connection, OpenFlags};

use crate::{
    access_log,
    agent::{self, AgentChains},
    chain::ChainReader,
    chunk::{ChunkHash, RecordingKey},
    keys::KeyRing,
    seal::Seal,
    tombstone::Tombstone,
};

/// The folder of the agents' certificates, in the store directory.
pub const AGENTS_DIR: &str = "agents";
/// The folder of tombstones, in the store directory.
pub const TOMBSTONES_DIR: &str = "tombstones";
/// The folder of recordings, in the store directory.
pub const RECORDINGS_DIR: &str = "recordings";
/// The audit database (access log, checkpoints, holds, purges), in the store directory.
pub const AUDIT_DB: &str = "audit.sqlite";

/// The path of the agent certificate of fingerprint `fingerprint`, relative to the store
/// directory.
pub fn certificate_path(fingerprint: &[u8; 32]) -> PathBuf {
    Path::new(AGENTS_DIR).join(format!("{}.der", hex::encode(fingerprint)))
}

/// A recording's seal file, beside its recording file.
pub fn seal_path(recording: &Path) -> PathBuf {
    recording.with_extension("seal")
}

/// Files ending in `.{ext}` anywhere under `dir` (none when it does not exist), sorted.
pub fn files_under(dir: &Path, ext: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        let listing = match fs::read_dir(&folder) {
            Ok(listing) => listing,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(std::io::Error::new(err.kind(), at(&folder, err))),
        };
        for entry in listing {
            let entry = entry.map_err(|e| std::io::Error::new(e.kind(), at(&folder, e)))?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|e| e == ext) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn at(path: &Path, err: impl std::fmt::Display) -> String {
    format!("{}: {err}", path.display())
}

/// The certificates read from a store's `agents/` folder, by fingerprint, for verification.
#[derive(Default)]
pub struct CertificateCache {
    dir: PathBuf,
    read: HashMap<[u8; 32], Result<Vec<u8>, String>>,
}

impl CertificateCache {
    pub fn new(dir: &Path) -> Self {
        CertificateCache {
            dir: dir.to_owned(),
            read: HashMap::new(),
        }
    }

    /// The certificate of `fingerprint`, checked to have that fingerprint.
    pub fn get(&mut self, fingerprint: &[u8; 32]) -> Result<&[u8], String> {
        let dir = &self.dir;
        self.read
            .entry(*fingerprint)
            .or_insert_with(|| {
                let file = dir.join(certificate_path(fingerprint));
                let bytes = fs::read(&file)
                    .map_err(|err| format!("agent certificate {}: {err}", file.display()))?;
                if batch_signature::fingerprint(&bytes) != *fingerprint {
                    return Err(format!(
                        "agent certificate {} is not the certificate of that fingerprint",
                        file.display()
                    ));
                }
                Ok(bytes)
            })
            .as_deref()
            .map_err(Clone::clone)
    }
}

/// What checks a store's files: the public material, and optionally the store key.
pub struct Verifier<'a> {
    /// The store directory (or bundle): `recordings/`, `agents/`, `tombstones/`.
    pub dir: &'a Path,
    /// The collector's seal public key (`seal.pub`).
    pub seal_public: [u8; 32],
    /// The deployment CA's check of agents' certificates; without it only their names are
    /// compared with the hosts.
    pub trust: Option<&'a AgentCertificates>,
    /// The store's encryption keys: with them each chunk is decrypted and its content checked
    /// against its agent's signature.
    pub keys: Option<&'a KeyRing>,
}

/// What reading one recording file found.
#[derive(Debug, Default)]
pub struct RecordingCheck {
    /// Chunks found (broken or not), and the last one's hash.
    pub chunks: u64,
    pub last_hash: ChunkHash,
    pub unsigned_chunks: u64,
    /// Each names its chunk.
    pub problems: Vec<String>,
}

impl Verifier<'_> {
    /// Reads a recording (a file, or bytes) with the chain reader, one chunk at a time
    /// (expecting every chunk to be of `recording`), checks each chunk's agent signature, and
    /// adds each chunk's batch to `chains` (a chunk that does not verify as a problem of its
    /// agent's chain instead). Memory holds one chunk, whatever the recording's size.
    pub fn check_recording(
        &self,
        source: impl Read,
        recording: &RecordingKey,
        certificates: &mut CertificateCache,
        chains: &mut AgentChains,
    ) -> RecordingCheck {
        let mut check = RecordingCheck::default();
        let mut chain = ChainReader::with_keys(source, self.keys).expecting(recording);
        for item in chain.by_ref() {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(broken) => {
                    check.problems.push(broken.to_string());
                    continue;
                }
            };
            let header = &chunk.raw.header;
            let Some(signed) = &header.signed else {
                check.unsigned_chunks += 1;
                chains.add_chunk(header);
                continue;
            };
            let problems =
                agent::check_chunk(&chunk, certificates.get(&signed.certificate), self.trust);
            if problems.is_empty() {
                chains.add_chunk(header);
            } else {
                chains.add_unverified(header, &problems);
                check.problems.extend(problems);
            }
        }
        check.chunks = chain.chunks_read();
        check.last_hash = chain.last_hash();
        check
    }

    /// Checks `recording`'s seal file against the chain read: its signature, that it is this
    /// recording's, and that it names as many chunks and the same last hash (an older seal
    /// restored, or a recording cut or extended, does not match). `Ok(None)`: no seal file.
    pub fn check_seal(
        &self,
        seal_file: &Path,
        recording: &RecordingKey,
        read: &RecordingCheck,
    ) -> Option<Vec<String>> {
        let bytes = match fs::read(seal_file) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => return Some(vec![format!("seal {}: {err}", seal_file.display())]),
        };
        let seal = match serde_json::from_slice::<Seal>(&bytes) {
            Ok(seal) => seal,
            Err(err) => {
                return Some(vec![format!(
                    "seal {}: unreadable: {err}",
                    seal_file.display()
                )]);
            }
        };
        let mut problems = Vec::new();
        if seal.recording != *recording || !seal.verifies(&self.seal_public) {
            problems
                .push("seal: the signature does not verify with the collector's seal key".into());
        }
        let count = read.chunks;
        if seal.chunks != count {
            problems.push(format!(
                "chunk {count}: the recording ends after {count} chunks but its seal says {} \
                 (truncated, extended, or an older seal restored)",
                seal.chunks
            ));
        } else if seal.final_hash != read.last_hash.hex() {
            problems.push(format!(
                "chunk {}: the last chunk's hash differs from the sealed one",
                count.saturating_sub(1)
            ));
        }
        Some(problems)
    }

    /// Adds the batches every tombstone records as removed to `chains`; a tombstone whose
    /// signature does not verify counts for nothing, and is reported.
    pub fn add_tombstones(&self, chains: &mut AgentChains) -> std::io::Result<()> {
        for path in files_under(&self.dir.join(TOMBSTONES_DIR), "json")? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let read = fs::read(&path)
                .map_err(|err| err.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<Tombstone>(&bytes).map_err(|err| err.to_string())
                });
            let body = match read.and_then(|tombstone| tombstone.open(&self.seal_public)) {
                Ok(body) => body,
                Err(err) => {
                    chains.add_problem(format!(
                        "tombstone {name}: {err}; what it records as removed is not accepted"
                    ));
                    continue;
                }
            };
            for batch in &body.batches {
                chains.add_removed(
                    &body.recording.host,
                    &batch.spool,
                    batch.seq,
                    batch.hashes(),
                    &format!("{name} ({}, by {})", body.reason, body.by),
                );
            }
        }
        Ok(())
    }

    /// Checks every recording file under `recordings/` and every agent's chain across them
    /// (with the tombstones); the index is not read. One result per recording (by its id, or
    /// its path when the path does not name one), one per agent and spool.
    pub fn check_recordings(&self) -> std::io::Result<(Vec<VerifyResult>, Vec<AgentChainResult>)> {
        let mut certificates = CertificateCache::new(self.dir);
        let mut chains = AgentChains::default();
        let mut results = Vec::new();
        let recordings = self.dir.join(RECORDINGS_DIR);
        for path in files_under(&recordings, "rec")? {
            let Some(key) = recording_of(&recordings, &path) else {
                results.push(failed(
                    &path,
                    "not where a recording file belongs (recordings/<host>/<boot id>/<session>.rec)",
                ));
                continue;
            };
            let file = match File::open(&path) {
                Ok(file) => BufReader::new(file),
                Err(err) => {
                    results.push(failed(&path, &err.to_string()));
                    continue;
                }
            };
            let mut read = self.check_recording(file, &key, &mut certificates, &mut chains);
            let seal = self.check_seal(&seal_path(&path), &key, &read);
            let sealed = seal.is_some();
            read.problems.extend(seal.into_iter().flatten());
            results.push(VerifyResult {
                id: key.id(),
                ok: read.problems.is_empty(),
                chunks: read.chunks,
                sealed,
                problems: read.problems,
                unsigned_chunks: read.unsigned_chunks,
            });
        }
        // A seal whose recording file is gone: the recording was deleted.
        for path in files_under(&recordings, "seal")? {
            if !path.with_extension("rec").exists() {
                let id = recording_of(&recordings, &path).map(|key| key.id());
                results.push(VerifyResult {
                    id: id.unwrap_or_else(|| path.display().to_string()),
                    ok: false,
                    chunks: 0,
                    sealed: true,
                    problems: vec![format!(
                        "its recording file {} is missing (the recording was deleted; its seal \
                         remains)",
                        path.with_extension("rec").display()
                    )],
                    unsigned_chunks: 0,
                });
            }
        }
        self.add_tombstones(&mut chains)?;
        Ok((results, chains.check()))
    }
}

fn failed(path: &Path, problem: &str) -> VerifyResult {
    VerifyResult {
        id: path.display().to_string(),
        ok: false,
        chunks: 0,
        sealed: false,
        problems: vec![problem.to_owned()],
        unsigned_chunks: 0,
    }
}

/// The recording a file under `recordings/` is named for: `<host>/<boot id>/<session>.<ext>`.
pub fn recording_of(recordings: &Path, path: &Path) -> Option<RecordingKey> {
    let relative = path.strip_prefix(recordings).ok()?;
    let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
    let [host, boot, file] = parts[..] else {
        return None;
    };
    let session = Path::new(file).file_stem()?.to_str()?.parse().ok()?;
    Some(RecordingKey {
        host: host.to_owned(),
        boot_id: BootId(boot.to_owned()),
        session: AuditSessionId(session),
    })
}

/// Checks a store directory or bundle with `verifier`: every recording, every agent's chain,
/// and the access log's chain and checkpoints (`audit.sqlite`, with the seal public key only;
/// absent: reported).
pub fn verify_dir(verifier: &Verifier) -> Result<VerifyReport, String> {
    let (results, agents) = verifier.check_recordings().map_err(|err| err.to_string())?;
    let audit = verifier.dir.join(AUDIT_DB);
    let access_log = if audit.exists() {
        Connection::open_with_flags(&audit, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|conn| access_log::check(&conn, &verifier.seal_public, None, None))
            .map_err(|err| at(&audit, err))?
    } else {
        custos_proto::api::AccessLogCheck {
            ok: false,
            entries: 0,
            keyed_from: None,
            checkpoints: 0,
            problems: vec![format!(
                "{} is missing: the access log is gone",
                audit.display()
            )],
        }
    };
    Ok(VerifyReport {
        results,
        access_log: Some(access_log),
        agents,
    })
}
