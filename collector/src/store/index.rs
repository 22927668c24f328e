//! The index (SQLite): recordings with their metadata and counts, the commands and file opens
//! in them, the batches stored (for exactly-once), and the agents seen.
//!
//! Everything here can be rebuilt from the recording files (`custos-collector index rebuild`),
//! and after a crash the store replays the chunks the index had not committed yet. Each stored
//! chunk is committed together with its batch row and what its events add, in one transaction
//! (or in the one transaction of the group of chunks the store writer stores at once).
use std::path::Path;

use custos_proto::{
    Event, EventBody, Timestamp,
    wire::{BatchSeq, SpoolId},
};
use rusqlite::{Connection, OptionalExtension, params};

use super::chunk::{BatchRef, ChunkHash, RecordingKey};

/// Version 2 added `recordings.bytes_uncaptured`; [`Index::open`] upgrades a version 1 index
/// in place.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS recordings (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    boot_id TEXT NOT NULL,
    session INTEGER NOT NULL,
    path TEXT NOT NULL,
    login_user TEXT,
    login_uid INTEGER,
    tty TEXT,
    remote TEXT,
    start_ns INTEGER,
    end_ns INTEGER,
    last_ns INTEGER,
    events INTEGER NOT NULL DEFAULT 0,
    commands INTEGER NOT NULL DEFAULT 0,
    files INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_uncaptured INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    stored_len INTEGER NOT NULL DEFAULT 0,
    last_hash BLOB NOT NULL DEFAULT x'0000000000000000000000000000000000000000000000000000000000000000',
    sealed INTEGER NOT NULL DEFAULT 0,
    UNIQUE (host, boot_id, session)
);
CREATE INDEX IF NOT EXISTS recordings_user ON recordings (login_user, start_ns);
CREATE INDEX IF NOT EXISTS recordings_host ON recordings (host, start_ns);
CREATE INDEX IF NOT EXISTS recordings_start ON recordings (start_ns);
CREATE TABLE IF NOT EXISTS commands (
    recording TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    ppid INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    euid INTEGER NOT NULL,
    user TEXT,
    filename TEXT NOT NULL,
    argv TEXT NOT NULL,
    cwd TEXT NOT NULL,
    exit_code INTEGER,
    signal INTEGER
);
CREATE INDEX IF NOT EXISTS commands_recording ON commands (recording, time_ns);
CREATE INDEX IF NOT EXISTS commands_filename ON commands (filename);
-- Commands still running, for matching an exit to its command: without it every exit scanned
-- all the recording's commands (quadratic in a session that runs many).
CREATE INDEX IF NOT EXISTS commands_running ON commands (recording, pid, seq)
    WHERE exit_code IS NULL AND signal IS NULL;
CREATE TABLE IF NOT EXISTS files (
    recording TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    path TEXT NOT NULL,
    access TEXT NOT NULL,
    flags INTEGER NOT NULL,
    result INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_recording ON files (recording, time_ns);
CREATE INDEX IF NOT EXISTS files_path ON files (path);
CREATE TABLE IF NOT EXISTS gaps (
    recording TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    records INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    from_ns INTEGER NOT NULL,
    to_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS gaps_recording ON gaps (recording, seq);
CREATE TABLE IF NOT EXISTS batches (
    spool TEXT NOT NULL,
    seq INTEGER NOT NULL,
    recording TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (spool, seq)
);
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    version TEXT,
    boot_id TEXT,
    spool TEXT,
    address TEXT,
    first_contact_ns INTEGER NOT NULL,
    last_contact_ns INTEGER NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(
        "index: schema version {found} is newer than this collector's ({SCHEMA_VERSION}); \
         run the collector release that wrote it, or rebuild the index from the recordings"
    )]
    NewerSchema { found: String },
    #[error(
        "index: schema version {found:?} is not one this collector knows (it reads 1 to \
         {SCHEMA_VERSION}); the index is damaged: rebuild it from the recordings"
    )]
    UnknownSchema { found: String },
}

/// A recording as the index knows it.
#[derive(Clone, Debug)]
pub struct RecordingRow {
    pub id: String,
    pub key: RecordingKey,
    /// Path of the recording file, relative to the store directory.
    pub path: String,
    pub chunks: u64,
    /// Length of the file up to the last committed chunk.
    pub stored_len: u64,
    pub last_hash: ChunkHash,
    pub sealed: bool,
}

/// What one chunk's events add to the index.
#[derive(Debug, Default)]
pub struct Summary {
    pub events: u64,
    pub login_user: Option<String>,
    pub login_uid: Option<u32>,
    pub tty: Option<String>,
    pub remote: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub last: Option<Timestamp>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Terminal bytes counted but beyond the agent's per-write limit.
    pub bytes_uncaptured: u64,
    pub gaps: Vec<GapRow>,
    pub commands: Vec<CommandRow>,
    pub files: Vec<FileRow>,
    /// (pid, exit code, signal) of processes that ended.
    pub exits: Vec<(u32, Option<i32>, Option<i32>)>,
}

#[derive(Debug)]
pub struct CommandRow {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub user: Option<String>,
    pub filename: String,
    pub argv: Vec<String>,
    pub cwd: String,
}

#[derive(Debug)]
pub struct GapRow {
    pub seq: u64,
    pub reason: String,
    pub records: u64,
    pub bytes: u64,
    pub from: Timestamp,
    pub to: Timestamp,
}

#[derive(Debug)]
pub struct FileRow {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: u32,
    pub path: String,
    pub access: String,
    pub flags: u32,
    /// The fd, or minus the errno.
    pub result: i64,
}

impl Summary {
    pub fn of(events: &[Event]) -> Self {
        let mut summary = Summary {
            events: events.len() as u64,
            ..Summary::default()
        };
        for event in events {
            summary.last = Some(summary.last.map_or(event.time, |t| t.max(event.time)));
            let process = event.process.as_ref();
            match &event.event {
                EventBody::SessionStart(start) => {
                    summary.login_user = start.login_user.clone();
                    summary.login_uid = start.login_uid.map(|u| u.0);
                    if start.tty_name.is_some() {
                        summary.tty = start.tty_name.clone();
                    }
                    summary.remote = start.remote.clone();
                    summary.start = Some(event.time);
                }
                EventBody::SessionEnd(_) => summary.end = Some(event.time),
                EventBody::Output(output) => {
                    summary.bytes_out += output.data.len() as u64;
                    summary.bytes_uncaptured += output.uncaptured;
                    // A session whose leader had no terminal is known by the one it wrote to.
                    summary.tty.get_or_insert_with(|| output.tty.name());
                }
                EventBody::Input(input) => {
                    summary.bytes_in += input.data.len() as u64;
                    summary.bytes_uncaptured += input.uncaptured;
                    summary.tty.get_or_insert_with(|| input.tty.name());
                }
                EventBody::Gap(gap) => summary.gaps.push(GapRow {
                    seq: event.seq.0,
                    reason: serde_json::to_value(gap.reason)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    records: gap.records,
                    bytes: gap.bytes,
                    from: gap.from,
                    to: gap.to,
                }),
                EventBody::Exec(exec) => summary.commands.push(CommandRow {
                    time: event.time,
                    seq: event.seq.0,
                    pid: process.map_or(0, |p| p.tgid.0),
                    ppid: process.map_or(0, |p| p.ppid.0),
                    uid: process.map_or(0, |p| p.uid.0),
                    euid: process.map_or(0, |p| p.euid.0),
                    user: process.and_then(|p| p.user.clone()),
                    filename: exec.filename.to_string(),
                    argv: exec.argv.iter().map(|a| a.to_string()).collect(),
                    cwd: exec.cwd.to_string(),
                }),
                EventBody::Open(open) => summary.files.push(FileRow {
                    time: event.time,
                    seq: event.seq.0,
                    pid: process.map_or(0, |p| p.tgid.0),
                    path: open.path.to_string(),
                    access: format!("{:?}", open.access).to_lowercase(),
                    flags: open.flags,
                    result: match (open.fd, open.errno) {
                        (Some(fd), _) => i64::from(fd),
                        (None, Some(errno)) => -i64::from(errno),
                        (None, None) => -1,
                    },
                }),
                EventBody::Exit(exit) => {
                    if let Some(process) = process {
                        summary.exits.push((process.tgid.0, exit.code, exit.signal));
                    }
                }
                EventBody::InputSuppressed(_) | EventBody::Fork(_) | EventBody::OpenRepeated(_) => {
                }
            }
        }
        summary
    }
}

/// Brings an index written by an earlier collector to [`SCHEMA_VERSION`], in one transaction;
/// refuses one written by a later collector rather than misread it.
fn upgrade(conn: &Connection) -> Result<(), IndexError> {
    let found: String = conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |row| row.get(0),
    )?;
    match found.parse::<i64>() {
        Ok(SCHEMA_VERSION) => Ok(()),
        Ok(1) => {
            // Recordings stored before keep 0: their uncaptured bytes are in their events, and
            // `custos-collector index rebuild` counts them.
            conn.execute_batch(
                "BEGIN IMMEDIATE;
                 ALTER TABLE recordings ADD COLUMN bytes_uncaptured INTEGER NOT NULL DEFAULT 0;
                 UPDATE meta SET value = '2' WHERE key = 'schema_version';
                 COMMIT;",
            )?;
            Ok(())
        }
        Ok(newer) if newer > SCHEMA_VERSION => Err(IndexError::NewerSchema { found }),
        _ => Err(IndexError::UnknownSchema { found }),
    }
}

/// An exit ends the latest running command of its process in the recording (found through
/// the `commands_running` index).
const EXIT_UPDATE: &str = "UPDATE commands SET exit_code = ?3, signal = ?4
     WHERE rowid = (SELECT rowid FROM commands WHERE recording = ?1 AND pid = ?2
                    AND exit_code IS NULL AND signal IS NULL
                    ORDER BY seq DESC LIMIT 1)";

pub struct Index {
    conn: Connection,
}

impl Index {
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        // Every statement of the ingest path stays prepared (parsing was a visible share of a
        // small batch's cost).
        conn.set_prepared_statement_cache_capacity(32);
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?1)",
            params![SCHEMA_VERSION.to_string()],
        )?;
        upgrade(&conn)?;
        Ok(Self { conn })
    }

    pub fn open_read_only(path: &Path) -> Result<Self, IndexError> {
        let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self { conn })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The recording a batch was stored in, if it was.
    pub fn batch_recording(
        &self,
        spool: &SpoolId,
        seq: BatchSeq,
    ) -> Result<Option<String>, IndexError> {
        Ok(self
            .conn
            .prepare_cached("SELECT recording FROM batches WHERE spool = ?1 AND seq = ?2")?
            .query_row(params![spool.0, seq.0 as i64], |row| row.get(0))
            .optional()?)
    }

    fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RecordingRow> {
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

    const ROW_COLUMNS: &'static str =
        "id, host, boot_id, session, path, chunks, stored_len, sealed, last_hash";

    pub fn recording(&self, id: &str) -> Result<Option<RecordingRow>, IndexError> {
        let sql = format!("SELECT {} FROM recordings WHERE id = ?1", Self::ROW_COLUMNS);
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![id], Self::row)
            .optional()?)
    }

    /// Creates the row of a new recording (committed before its file is written, so that a
    /// crash leaves nothing the recovery does not look at).
    pub fn insert_recording(
        &self,
        key: &RecordingKey,
        path: &str,
    ) -> Result<RecordingRow, IndexError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO recordings (id, host, boot_id, session, path) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![key.id(), key.host, key.boot_id.0, key.session.0, path],
        )?;
        self.recording(&key.id())?
            .ok_or(IndexError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Recordings not sealed yet: the ones a crash may have left with chunks the index lacks.
    pub fn unsealed(&self) -> Result<Vec<RecordingRow>, IndexError> {
        let sql = format!(
            "SELECT {} FROM recordings WHERE sealed = 0",
            Self::ROW_COLUMNS
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt
            .query_map([], Self::row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Opens a transaction that the following writes join (each chunk's commit becomes a
    /// savepoint in it) until [`Index::commit`]: a group of chunks then costs one commit, one
    /// fsync of the write-ahead log, instead of one each.
    pub fn begin(&self) -> Result<(), IndexError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    /// Commits the transaction [`Index::begin`] opened.
    pub fn commit(&self) -> Result<(), IndexError> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    /// Abandons the transaction [`Index::begin`] opened, if it is still open.
    pub fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Records a stored chunk: its batch, the recording's new length, count and hash, and what
    /// its events add. All or nothing: one transaction, or one savepoint within the transaction
    /// of [`Index::begin`].
    pub fn commit_chunk(
        &mut self,
        recording: &str,
        batch: &BatchRef,
        chunk_index: u64,
        stored_len: u64,
        hash: &ChunkHash,
        summary: &Summary,
    ) -> Result<(), IndexError> {
        let tx = self.conn.savepoint()?;
        tx.prepare_cached(
            "INSERT INTO batches (spool, seq, recording, chunk) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            batch.spool.0,
            batch.seq.0 as i64,
            recording,
            chunk_index as i64
        ])?;
        tx.prepare_cached(
            "UPDATE recordings SET
                chunks = ?2, stored_len = ?3, last_hash = ?4,
                events = events + ?5, bytes_out = bytes_out + ?6, bytes_in = bytes_in + ?7,
                gaps = gaps + ?8, commands = commands + ?9, files = files + ?10,
                login_user = COALESCE(?11, login_user), login_uid = COALESCE(?12, login_uid),
                tty = COALESCE(tty, ?13), remote = COALESCE(remote, ?14),
                start_ns = COALESCE(start_ns, ?15), end_ns = COALESCE(?16, end_ns),
                last_ns = MAX(COALESCE(last_ns, 0), COALESCE(?17, 0)),
                bytes_uncaptured = bytes_uncaptured + ?18
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
        Ok(())
    }

    /// Removes a recording and everything indexed from it.
    pub fn delete_recording(&mut self, id: &str) -> Result<(), IndexError> {
        let tx = self.conn.transaction()?;
        for table in ["commands", "files", "gaps", "batches"] {
            tx.execute(&format!("DELETE FROM {table} WHERE recording = ?1"), [id])?;
        }
        tx.execute("DELETE FROM recordings WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_sealed(&self, id: &str) -> Result<(), IndexError> {
        self.conn.execute(
            "UPDATE recordings SET sealed = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(())
    }

    /// Notes an agent's contact.
    pub fn agent_contact(
        &self,
        host: &str,
        version: Option<&str>,
        boot_id: Option<&str>,
        spool: Option<&str>,
        address: &str,
        now: Timestamp,
    ) -> Result<(), IndexError> {
        self.conn.execute(
            "INSERT INTO agents (host, version, boot_id, spool, address, first_contact_ns, last_contact_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
             ON CONFLICT (host) DO UPDATE SET
                version = COALESCE(?2, version), boot_id = COALESCE(?3, boot_id),
                spool = COALESCE(?4, spool), address = ?5, last_contact_ns = ?6",
            params![host, version, boot_id, spool, address, now.0],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::query;
    use custos_proto::{AuditSessionId, BootId};

    /// A recording with one chunk whose summary counts `uncaptured` bytes.
    fn store_one(index: &mut Index, session: u32, uncaptured: u64) -> String {
        let key = RecordingKey {
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(session),
        };
        let row = index.insert_recording(&key, "r.rec").unwrap();
        let batch = BatchRef {
            spool: SpoolId("s".into()),
            seq: BatchSeq(u64::from(session)),
        };
        let summary = Summary {
            events: 1,
            bytes_out: 10,
            bytes_uncaptured: uncaptured,
            ..Summary::default()
        };
        index
            .commit_chunk(&row.id, &batch, 0, 64, &ChunkHash([0; 32]), &summary)
            .unwrap();
        row.id
    }

    fn uncaptured(index: &Index, id: &str) -> u64 {
        query::session(index.connection(), id)
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
        let old = {
            let mut index = Index::open(&path).unwrap();
            let id = store_one(&mut index, 1, 0);
            index
                .connection()
                .execute_batch(
                    "ALTER TABLE recordings DROP COLUMN bytes_uncaptured;
                     UPDATE meta SET value = '1' WHERE key = 'schema_version';",
                )
                .unwrap();
            id
        };
        let mut index = Index::open(&path).unwrap();
        let version: String = index
            .connection()
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION.to_string());
        assert_eq!(uncaptured(&index, &old), 0);
        let new = store_one(&mut index, 2, 114_688);
        assert_eq!(uncaptured(&index, &new), 114_688);
    }

    #[test]
    fn an_index_of_a_newer_schema_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        Index::open(&path)
            .unwrap()
            .connection()
            .execute(
                "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
                [],
            )
            .unwrap();
        let err = Index::open(&path).err().expect("refused").to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");
    }

    #[test]
    fn uncaptured_terminal_bytes_are_summed_from_output_and_input() {
        use custos_proto::{
            ByteString, Seq, Tty,
            event::{Input, Output},
        };
        let event = |seq: u64, body: EventBody| Event {
            time: Timestamp(1),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
            seq: Seq(seq),
            process: None,
            event: body,
        };
        let tty = Tty((136 << 20) | 3);
        let summary = Summary::of(&[
            event(
                1,
                EventBody::Output(Output {
                    tty,
                    data: ByteString::from(vec![b'x'; 16]),
                    uncaptured: 100,
                    redacted: Default::default(),
                }),
            ),
            event(
                2,
                EventBody::Input(Input {
                    tty,
                    data: ByteString::from(vec![b'y'; 4]),
                    echoed: false,
                    uncaptured: 7,
                    redacted: Default::default(),
                }),
            ),
        ]);
        assert_eq!(
            (
                summary.bytes_out,
                summary.bytes_in,
                summary.bytes_uncaptured
            ),
            (16, 4, 107)
        );
    }

    /// Matching an exit to its command must not scan the recording's commands: a session that
    /// runs tens of thousands of commands would make every batch slower than the last.
    #[test]
    fn exit_finds_its_command_through_the_running_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        let plan: Vec<String> = index
            .connection()
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
}
