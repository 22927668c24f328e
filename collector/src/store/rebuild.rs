//! Rebuilding the index from the recording files (`custos-collector index rebuild`, collector
//! stopped): every recording is read with the chain reader and indexed up to its first break;
//! the old index is replaced only once the new one is complete.
use std::fs;

use super::{StoreConfig, StoreError, group::sync_dir, io_err, lock, seal_path};
use crate::{
    index::{ChunkSummary, Index, IndexKeys, RecordingRow, StoredChunk},
    trust::{chain::ChainReader, keys::KeyRing},
};

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
    let mut index = Index::open(&new_path, &IndexKeys::new(&keys))?;
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
        let file = fs::File::open(&path).map_err(|e| io_err(&path, e))?;
        let relative = path
            .strip_prefix(&config.dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut writer = index.writer()?;
        let mut row: Option<RecordingRow> = None;
        for item in ChainReader::new(std::io::BufReader::new(file), &keys) {
            let Ok((events, chunk)) = item.and_then(|chunk| Ok((chunk.events()?, chunk))) else {
                rebuilt.damaged.push(relative.clone());
                break;
            };
            let current = match &row {
                Some(row) => row.clone(),
                None => writer.insert_recording(&chunk.raw.header.recording, &relative)?,
            };
            let header = &chunk.raw.header;
            writer.commit_chunk(
                &current.id,
                &StoredChunk {
                    // Ingest stores a batch only under its sender's certificate name.
                    agent: &header.recording.host,
                    batch: &header.batch,
                    index: header.index,
                    stored_len: chunk.end as u64,
                    hash: &chunk.hash,
                    received: header.received,
                    host_clock_skewed: header.host_clock_skewed,
                },
                &ChunkSummary::of(&events),
            )?;
            row = Some(current);
            rebuilt.chunks += 1;
        }
        if let Some(row) = row {
            rebuilt.recordings += 1;
            if config.dir.join(seal_path(&row.path)).exists() {
                writer.set_sealed(&row.id)?;
            }
        }
        writer.commit()?;
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
