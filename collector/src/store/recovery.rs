//! Crash recovery, when the store opens: chunks that reached a recording file but not the
//! index are replayed into it (they were written, maybe not acknowledged; the agent's resend
//! is then a duplicate), the first chunk that breaks the chain and everything after it is cut
//! off (a torn write, never acknowledged), and recordings whose end is stored are sealed.
use std::{
    fs::OpenOptions,
    io::{Read, Seek, SeekFrom},
};

use tracing::{info, warn};

use super::{Store, StoreError, io_err, seal::write_seal};
use crate::{
    index::{ChunkSummary, StoredChunk},
    trust::chain::ChainReader,
};

impl Store {
    /// Replays chunks a crash left outside the index, cuts torn tails, seals what ended.
    pub(super) fn recover(&mut self) -> Result<(), StoreError> {
        for row in self.index.unsealed()? {
            let path = self.dir.join(&row.path);
            let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    if row.stored_len > 0 {
                        warn!(recording = %row.id, path = %path.display(), "recording file missing");
                    }
                    continue;
                }
                Err(err) => return Err(io_err(&path, err)),
            };
            let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
            if len < row.stored_len {
                warn!(recording = %row.id, file_len = len, committed = row.stored_len,
                    "recording file is shorter than the index says: damaged");
                continue;
            }
            let mut tail = Vec::new();
            file.seek(SeekFrom::Start(row.stored_len))
                .and_then(|_| file.read_to_end(&mut tail))
                .map_err(|e| io_err(&path, e))?;
            let mut writer = self.index.writer()?;
            let mut chunks = row.chunks;
            let mut ended = false;
            for item in ChainReader::resume(&tail[..], &self.keys, row.chunks, row.last_hash) {
                let replayed = item
                    .and_then(|chunk| Ok((chunk.events()?, chunk)))
                    .map_err(|broken| (broken.offset, broken.to_string()))
                    .and_then(|(events, chunk)| {
                        let summary = ChunkSummary::of(&events);
                        let header = &chunk.raw.header;
                        let stored = StoredChunk {
                            agent: &header.recording.host,
                            batch: &header.batch,
                            index: header.index,
                            stored_len: row.stored_len + chunk.end as u64,
                            hash: &chunk.hash,
                            received: header.received,
                            host_clock_skewed: header.host_clock_skewed,
                        };
                        writer
                            .commit_chunk(&row.id, &stored, &summary)
                            .map(|_| summary.end.is_some())
                            .map_err(|err| (chunk.start, err.to_string()))
                    });
                match replayed {
                    Ok(had_end) => {
                        chunks += 1;
                        ended |= had_end;
                    }
                    Err((offset, why)) => {
                        warn!(recording = %row.id, at = row.stored_len + offset as u64, why,
                            "cutting an unacknowledged tail");
                        file.set_len(row.stored_len + offset as u64)
                            .and_then(|()| file.sync_all())
                            .map_err(|e| io_err(&path, e))?;
                        break;
                    }
                }
            }
            writer.commit()?;
            if chunks > row.chunks {
                info!(recording = %row.id, chunks = chunks - row.chunks, "replayed chunks after a crash");
            }
            if ended || self.index.has_ended(&row.id)? {
                let writer = self.index.writer()?;
                write_seal(&writer, &self.seal_key, &self.dir, &row.id)?;
                writer.commit()?;
            }
        }
        Ok(())
    }
}
