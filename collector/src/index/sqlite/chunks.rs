//! The SQLite index's side of storing: committing a chunk (its batch, the recording's new
//! length, count and hash, and what its events add), new recordings, seals and agents'
//! contacts; and the rows the store reads back to continue a recording.
use custos_proto::{
    Timestamp,
    wire::{BatchSeq, SpoolId},
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    index::{
        AgentContact, ChunkSummary, Index, IndexError, IndexWriter, RecordingRow, StoredChunk,
    },
    trust::chunk::{ChunkHash, RecordingKey},
};

/// An exit ends the latest running command of its process in the recording (found through
/// the `commands_running` index).
const EXIT_UPDATE: &str = "UPDATE commands SET exit_code = ?3, signal = ?4
     WHERE rowid = (SELECT rowid FROM commands WHERE recording = ?1 AND pid = ?2
                    AND exit_code IS NULL AND signal IS NULL
                    ORDER BY seq DESC LIMIT 1)";

const ROW_COLUMNS: &str = "id, host, boot_id, session, path, chunks, stored_len, sealed, last_hash";

fn recording_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecordingRow> {
    let hash: Vec<u8> = row.get(8)?;
    let mut last_hash = [0u8; 32];
    if hash.len() == 32 {
        last_hash.copy_from_slice(&hash);
    }
    Ok(RecordingRow {
        id: row.get(0)?,
        key: RecordingKey {
            host: row.get(1)?,
            boot_id: custos_proto::BootId(row.get(2)?),
            session: custos_proto::AuditSessionId(row.get::<_, i64>(3)? as u32),
        },
        path: row.get(4)?,
        chunks: row.get::<_, i64>(5)? as u64,
        stored_len: row.get::<_, i64>(6)? as u64,
        sealed: row.get::<_, i64>(7)? != 0,
        last_hash: ChunkHash(last_hash),
    })
}

fn recording(conn: &Connection, id: &str) -> Result<Option<RecordingRow>, IndexError> {
    let sql = format!("SELECT {ROW_COLUMNS} FROM recordings WHERE id = ?1");
    Ok(conn
        .prepare_cached(&sql)?
        .query_row(params![id], recording_row)
        .optional()?)
}

impl Index {
    pub fn recording(&self, id: &str) -> Result<Option<RecordingRow>, IndexError> {
        recording(&self.conn, id)
    }

    /// Recordings not sealed yet: the ones a crash may have left with chunks the index lacks.
    pub fn unsealed(&self) -> Result<Vec<RecordingRow>, IndexError> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM recordings WHERE sealed = 0");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt
            .query_map([], recording_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Whether the recording's end has been stored (its session ended).
    pub fn has_ended(&self, id: &str) -> Result<bool, IndexError> {
        Ok(self.conn.query_row(
            "SELECT end_ns IS NOT NULL FROM recordings WHERE id = ?1",
            [id],
            |r| r.get(0),
        )?)
    }

    /// Stored batches, as (agent, spool, seq), in storing order.
    pub fn stored_batches(&self) -> Result<Vec<(String, String, u64)>, IndexError> {
        let mut stmt = self
            .conn
            .prepare("SELECT agent, spool, seq FROM batches ORDER BY rowid")?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, i64>(2)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl IndexWriter<'_> {
    /// The recording a batch of `agent` was stored in, if it was.
    pub fn batch_recording(
        &self,
        agent: &str,
        spool: &SpoolId,
        seq: BatchSeq,
    ) -> Result<Option<String>, IndexError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT recording FROM batches WHERE agent = ?1 AND spool = ?2 AND seq = ?3",
            )?
            .query_row(params![agent, spool.0, seq.0 as i64], |row| row.get(0))
            .optional()?)
    }

    /// A recording's row as this transaction sees it.
    pub fn recording(&self, id: &str) -> Result<Option<RecordingRow>, IndexError> {
        recording(&self.tx, id)
    }

    /// Creates the row of a new recording (committed before its file is written, so that a
    /// crash leaves nothing the recovery does not look at).
    pub fn insert_recording(
        &self,
        key: &RecordingKey,
        path: &str,
    ) -> Result<RecordingRow, IndexError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO recordings (id, host, boot_id, session, path) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.id(), key.host, key.boot_id.0, key.session.0, path],
        )?;
        self.recording(&key.id())?
            .ok_or(IndexError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Records a stored chunk: its batch, the recording's new length, count, hash and receive
    /// times, and what its events add. All or nothing: a savepoint within the writer's
    /// transaction, so that one chunk that fails leaves the group's others in it.
    ///
    /// Returns the other agents this chunk's spool id arrived from before, when this is the
    /// first batch of the spool from this agent (cloned agent state); usually none.
    pub fn commit_chunk(
        &mut self,
        recording: &str,
        chunk: &StoredChunk<'_>,
        summary: &ChunkSummary,
    ) -> Result<Vec<String>, IndexError> {
        let StoredChunk {
            agent,
            batch,
            index: chunk_index,
            stored_len,
            hash,
            received,
            host_clock_skewed,
        } = *chunk;
        let tx = self.tx.savepoint()?;
        tx.prepare_cached(
            "INSERT INTO batches (agent, spool, seq, recording, chunk) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            agent,
            batch.spool.0,
            batch.seq.0 as i64,
            recording,
            chunk_index as i64
        ])?;
        let new_to_agent = tx
            .prepare_cached("INSERT OR IGNORE INTO spool_agents (spool, agent) VALUES (?1, ?2)")?
            .execute(params![batch.spool.0, agent])?
            == 1;
        let shared_with = if new_to_agent {
            tx.prepare_cached(
                "SELECT agent FROM spool_agents WHERE spool = ?1 AND agent != ?2 ORDER BY agent",
            )?
            .query_map(params![batch.spool.0, agent], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?
        } else {
            Vec::new()
        };
        tx.prepare_cached(
            "UPDATE recordings SET
                chunks = ?2, stored_len = ?3, last_hash = ?4,
                events = events + ?5, bytes_out = bytes_out + ?6, bytes_in = bytes_in + ?7,
                gaps = gaps + ?8, commands = commands + ?9, files = files + ?10,
                login_user = COALESCE(?11, login_user), login_uid = COALESCE(?12, login_uid),
                tty = COALESCE(tty, ?13), remote = COALESCE(remote, ?14),
                start_ns = COALESCE(start_ns, ?15), end_ns = COALESCE(?16, end_ns),
                last_ns = MAX(COALESCE(last_ns, 0), COALESCE(?17, 0)),
                bytes_uncaptured = bytes_uncaptured + ?18,
                received_first_ns = COALESCE(received_first_ns, ?19),
                received_last_ns = MAX(COALESCE(received_last_ns, ?19), COALESCE(?19, received_last_ns)),
                clock_skewed = MAX(clock_skewed, ?20)
             WHERE id = ?1",
        )?
        .execute(params![
            recording,
            (chunk_index + 1) as i64,
            stored_len as i64,
            hash.0.to_vec(),
            summary.events as i64,
            summary.bytes_out as i64,
            summary.bytes_in as i64,
            summary.gaps.len() as i64,
            summary.commands.len() as i64,
            summary.files.len() as i64,
            summary.login_user,
            summary.login_uid,
            summary.tty,
            summary.remote,
            summary.start.map(|t| t.0),
            summary.end.map(|t| t.0),
            summary.last.map(|t| t.0),
            summary.bytes_uncaptured as i64,
            received.map(|t| t.0),
            i64::from(host_clock_skewed),
        ])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO commands (recording, time_ns, seq, pid, ppid, uid, euid, user, filename, argv, cwd)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for c in &summary.commands {
                insert.execute(params![
                    recording,
                    c.time.0,
                    c.seq as i64,
                    c.pid,
                    c.ppid,
                    c.uid,
                    c.euid,
                    c.user,
                    c.filename,
                    serde_json::to_string(&c.argv).unwrap_or_default(),
                    c.cwd,
                ])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO files (recording, time_ns, seq, pid, path, access, flags, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for f in &summary.files {
                insert.execute(params![
                    recording,
                    f.time.0,
                    f.seq as i64,
                    f.pid,
                    f.path,
                    f.access,
                    f.flags,
                    f.result
                ])?;
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO gaps (recording, seq, reason, records, bytes, from_ns, to_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for g in &summary.gaps {
                insert.execute(params![
                    recording,
                    g.seq as i64,
                    g.reason,
                    g.records as i64,
                    g.bytes as i64,
                    g.from.0,
                    g.to.0
                ])?;
            }
            let mut exit = tx.prepare_cached(EXIT_UPDATE)?;
            for (pid, code, signal) in &summary.exits {
                exit.execute(params![recording, pid, code, signal])?;
            }
        }
        tx.commit()?;
        Ok(shared_with)
    }

    pub fn set_sealed(&self, id: &str) -> Result<(), IndexError> {
        self.tx.execute(
            "UPDATE recordings SET sealed = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Notes an agent's contact (`clock`: its clock's offset from the collector's, in ns, and
    /// whether that is more than the allowed skew, when it said its time).
    pub fn agent_contact(&self, contact: &AgentContact, now: Timestamp) -> Result<(), IndexError> {
        let (offset, skewed) = match contact.clock {
            Some(clock) => (Some(clock.offset_ns), Some(i64::from(clock.skewed))),
            None => (None, None),
        };
        self.tx.execute(
            "INSERT INTO agents (host, version, boot_id, spool, address, first_contact_ns, last_contact_ns,
                                 clock_offset_ns, clock_skewed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, COALESCE(?8, 0))
             ON CONFLICT (host) DO UPDATE SET
                version = COALESCE(?2, version), boot_id = COALESCE(?3, boot_id),
                spool = COALESCE(?4, spool), address = ?5, last_contact_ns = ?6,
                clock_offset_ns = COALESCE(?7, clock_offset_ns),
                clock_skewed = COALESCE(?8, clock_skewed)",
            params![
                contact.host,
                contact.version,
                contact.boot_id,
                contact.spool,
                contact.address,
                now.0,
                offset,
                skewed
            ],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{AuditSessionId, BootId};

    use super::{super::schema::SCHEMA_VERSION, *};
    use crate::{
        index::IndexKeys,
        trust::{chunk::BatchRef, keys::KeyRing},
    };

    /// The index keys of a test store key ring.
    fn keys() -> IndexKeys {
        IndexKeys::new(&KeyRing::single("k1", [7; 32]))
    }

    /// A recording with one chunk whose summary counts `uncaptured` bytes.
    fn store_one(index: &mut Index, session: u32, uncaptured: u64) -> String {
        store_from(index, "h", session, uncaptured).0
    }

    /// A recording of `host` with one chunk (batch `session` of spool `s`), and the other agents
    /// spool `s` came from before.
    fn store_from(
        index: &mut Index,
        host: &str,
        session: u32,
        uncaptured: u64,
    ) -> (String, Vec<String>) {
        let key = RecordingKey {
            host: host.into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(session),
        };
        let mut writer = index.writer().unwrap();
        let row = writer.insert_recording(&key, "r.rec").unwrap();
        let batch = BatchRef {
            spool: SpoolId("s".into()),
            seq: BatchSeq(u64::from(session)),
        };
        let summary = ChunkSummary {
            events: 1,
            bytes_out: 10,
            bytes_uncaptured: uncaptured,
            ..ChunkSummary::default()
        };
        let chunk = StoredChunk {
            agent: &key.host,
            batch: &batch,
            index: 0,
            stored_len: 64,
            hash: &ChunkHash([0; 32]),
            received: None,
            host_clock_skewed: false,
        };
        let shared = writer.commit_chunk(&row.id, &chunk, &summary).unwrap();
        writer.commit().unwrap();
        (row.id, shared)
    }

    fn schema_version(index: &Index) -> String {
        index
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get(0),
            )
            .unwrap()
    }

    /// Turns an index of today's schema into what a version 2 collector wrote.
    const DOWN_TO_2: &str = "
        ALTER TABLE recordings DROP COLUMN received_first_ns;
        ALTER TABLE recordings DROP COLUMN received_last_ns;
        ALTER TABLE recordings DROP COLUMN clock_skewed;
        ALTER TABLE agents DROP COLUMN clock_offset_ns;
        ALTER TABLE agents DROP COLUMN clock_skewed;
        CREATE TABLE batches_2 (spool TEXT NOT NULL, seq INTEGER NOT NULL,
            recording TEXT NOT NULL, chunk INTEGER NOT NULL, PRIMARY KEY (spool, seq));
        INSERT INTO batches_2 SELECT spool, seq, recording, chunk FROM batches;
        DROP TABLE batches;
        ALTER TABLE batches_2 RENAME TO batches;
        DROP TABLE spool_agents;
        UPDATE meta SET value = '2' WHERE key = 'schema_version';";

    /// An index with one recording (its id returned), turned back by `downgrades` into what an
    /// earlier collector wrote.
    fn earlier_index(path: &std::path::Path, downgrades: &[&str]) -> String {
        let mut index = Index::open(path, &keys()).unwrap();
        let id = store_one(&mut index, 1, 0);
        for step in downgrades {
            index.conn.execute_batch(step).unwrap();
        }
        id
    }

    /// An index written by a collector of schema 2 (batches keyed by spool and seq alone) is
    /// upgraded in place: each batch becomes its recording's host's, so that the host's resend
    /// is still a duplicate, another agent's batch of the same spool and seq is not, and the
    /// spool arriving from that second agent is reported.
    #[test]
    fn a_schema_2_index_is_upgraded_to_batches_of_agents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let old = earlier_index(&path, &[DOWN_TO_2]);
        let mut index = Index::open(&path, &keys()).unwrap();
        assert_eq!(schema_version(&index), SCHEMA_VERSION.to_string());
        assert_eq!(
            index.stored_batches().unwrap(),
            vec![("h".to_owned(), "s".to_owned(), 1)]
        );
        let writer = index.writer().unwrap();
        let stored_in = |agent| {
            writer
                .batch_recording(agent, &SpoolId("s".into()), BatchSeq(1))
                .unwrap()
        };
        assert_eq!(stored_in("h"), Some(old));
        assert_eq!(stored_in("h2"), None);
        drop(writer);
        let (_, shared) = store_from(&mut index, "h2", 1, 0);
        assert_eq!(shared, vec!["h".to_owned()]);
    }

    fn uncaptured(index: &Index, id: &str) -> u64 {
        index
            .session(id)
            .unwrap()
            .expect("the recording")
            .bytes_uncaptured
    }

    /// An index written by a collector of schema 1 (no uncaptured column) opens, is upgraded in
    /// place, keeps its recordings and counts uncaptured bytes from then on.
    #[test]
    fn a_schema_1_index_is_upgraded_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let old = earlier_index(
            &path,
            &[
                DOWN_TO_2,
                "ALTER TABLE recordings DROP COLUMN bytes_uncaptured;
                 UPDATE meta SET value = '1' WHERE key = 'schema_version';",
            ],
        );
        let mut index = Index::open(&path, &keys()).unwrap();
        assert_eq!(schema_version(&index), SCHEMA_VERSION.to_string());
        assert_eq!(uncaptured(&index, &old), 0);
        let new = store_one(&mut index, 2, 114_688);
        assert_eq!(uncaptured(&index, &new), 114_688);
    }

    #[test]
    fn an_index_of_a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        Index::open(&path, &keys())
            .unwrap()
            .conn
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let err = Index::open(&path, &keys())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }

    /// Matching an exit to its command must not scan the recording's commands: a session that
    /// runs tens of thousands of commands would make every batch slower than the last.
    #[test]
    fn exit_finds_its_command_through_the_running_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite"), &keys()).unwrap();
        let plan: Vec<String> = index
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {EXIT_UPDATE}"))
            .unwrap()
            .query_map(params!["r", 1, 0, 0], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("commands_running")),
            "plan: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("USE TEMP B-TREE")),
            "plan: {plan:?}"
        );
    }

    /// A writer dropped before its commit leaves nothing behind (a group whose fsync failed is
    /// not in the index), and what one writer commits another reader sees.
    #[test]
    fn a_writer_dropped_uncommitted_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut index = Index::open(&path, &keys()).unwrap();
        let key = RecordingKey {
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
        };
        {
            let writer = index.writer().unwrap();
            writer.insert_recording(&key, "r.rec").unwrap();
            assert!(
                writer.recording(&key.id()).unwrap().is_some(),
                "seen inside"
            );
        }
        assert!(index.recording(&key.id()).unwrap().is_none());
        let id = store_one(&mut index, 2, 0);
        let reader = Index::open_read_only(&path, &keys()).unwrap();
        assert_eq!(reader.recording(&id).unwrap().unwrap().chunks, 1);
        assert_eq!(
            reader.stored_batches().unwrap(),
            vec![("h".to_owned(), "s".to_owned(), 2)]
        );
    }
}
