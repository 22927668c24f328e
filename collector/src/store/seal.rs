//! Sealing a recording whose session ended: the seal file beside it (written whole, then
//! renamed) and the index's mark, in the writer's transaction.
use std::{
    fs::{self, File},
    io::Write,
    path::Path,
};

use super::{StoreError, group::sync_dir, io_err};
use crate::{
    index::IndexWriter,
    trust::{keys::SealKey, seal::Seal},
};

/// `x/y/7.rec` to `x/y/7.seal`.
pub fn seal_path(recording_path: &str) -> String {
    match recording_path.strip_suffix(".rec") {
        Some(base) => format!("{base}.seal"),
        None => format!("{recording_path}.seal"),
    }
}

/// Signs the recording's final hash and chunk count (as `writer` sees them) and marks it sealed.
pub(super) fn write_seal(
    writer: &IndexWriter<'_>,
    key: &SealKey,
    dir: &Path,
    id: &str,
) -> Result<(), StoreError> {
    let row = writer.recording(id)?.ok_or_else(|| StoreError::Recording {
        recording: id.to_owned(),
        message: "not in the index".into(),
    })?;
    let seal = Seal::sign(key, &row.key, row.chunks, row.last_hash);
    let path = dir.join(seal_path(&row.path));
    let tmp = path.with_extension("seal.tmp");
    let json = serde_json::to_vec_pretty(&seal).unwrap_or_default();
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| io_err(&path, e))?;
    sync_dir(path.parent().unwrap_or(dir))?;
    writer.set_sealed(id)?;
    Ok(())
}
