//! Writing and reading tombstones (`tombstones/<recording id>-<removed at, ns>.json`, format in
//! [`crate::trust::tombstone`]): written, fsynced and renamed into place before a purge deletes
//! anything, so that every removal the collector made on purpose is on record when its files are
//! gone.
use std::{
    fs::{self, File},
    io::{Read as _, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
};

use custos_proto::Timestamp;

use super::{Store, StoreError, group::sync_dir, io_err};
use crate::{
    index::RecordingRow,
    trust::{
        chunk,
        tombstone::{RemovedBatch, Tombstone, TombstoneBody},
    },
};

/// The folder of tombstones, in the store directory.
pub use crate::trust::store::TOMBSTONES_DIR as DIR;

/// Writes the tombstone of `row`'s recording, listing the batches of its committed chunks.
pub(super) fn write(
    store: &Store,
    row: &RecordingRow,
    reason: &str,
    by: &str,
) -> Result<(), StoreError> {
    let path = store.dir.join(&row.path);
    let mut batches = Vec::new();
    match fs::File::open(&path) {
        Ok(file) => {
            // The committed chunks' headers, one chunk at a time.
            let mut committed = std::io::BufReader::new(file.take(row.stored_len));
            while let Ok(chunk::Next::Chunk(raw)) = chunk::read(&mut committed) {
                let header = &raw.header;
                let link = header.link();
                batches.push(RemovedBatch {
                    spool: header.batch.spool.clone(),
                    seq: header.batch.seq,
                    link: link.map(|link| link.hash().hex()),
                    prev: link.map(|link| link.prev.hex()),
                });
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_err(&path, err)),
    }
    let body = TombstoneBody {
        version: 1,
        recording: row.key.clone(),
        chunks: row.chunks,
        final_hash: row.last_hash.hex(),
        removed_at: Timestamp::now(),
        reason: reason.to_owned(),
        by: by.to_owned(),
        batches,
    };
    let tombstone = Tombstone::sign(&store.seal_key, &body);
    let folder = store.dir.join(DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&folder)
        .map_err(|e| io_err(&folder, e))?;
    // Named by the time too: a recording purged, continued by a late batch and purged again
    // has two.
    let name = format!("{}-{}", row.id, body.removed_at.0);
    let target = folder.join(format!("{name}.json"));
    let tmp = folder.join(format!("{name}.json.tmp"));
    let json = serde_json::to_vec_pretty(&tombstone).unwrap_or_default();
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, &target)
    };
    write().map_err(|e| io_err(&target, e))?;
    sync_dir(&folder)?;
    sync_dir(&store.dir)
}
