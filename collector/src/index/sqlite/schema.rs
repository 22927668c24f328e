//! The SQLite index's tables, and opening it: creating them, or upgrading an index an earlier
//! collector wrote.
use std::path::Path;

use rusqlite::{Connection, TransactionBehavior, params};

use crate::index::IndexError;

/// Version 2 added `recordings.bytes_uncaptured`; [`open`] upgrades a version 1 index
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

/// Brings an index written by an earlier collector to [`SCHEMA_VERSION`], in one transaction;
/// refuses one written by a later collector rather than misread it.
fn upgrade(conn: &mut Connection) -> Result<(), IndexError> {
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
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(
                "ALTER TABLE recordings ADD COLUMN bytes_uncaptured INTEGER NOT NULL DEFAULT 0;
                 UPDATE meta SET value = '2' WHERE key = 'schema_version';",
            )?;
            tx.commit()?;
            Ok(())
        }
        Ok(newer) if newer > SCHEMA_VERSION => Err(IndexError::NewerSchema { found }),
        _ => Err(IndexError::UnknownSchema { found }),
    }
}

/// Opens (creating) the index read-write, in write-ahead-log mode with full syncs.
pub(crate) fn open(path: &Path) -> Result<Connection, IndexError> {
    let mut conn = Connection::open(path)?;
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
    upgrade(&mut conn)?;
    Ok(conn)
}

pub(crate) fn open_read_only(path: &Path) -> Result<Connection, IndexError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}
