//! The SQLite index's tables, and opening it: creating them, or upgrading an index an earlier
//! collector wrote.
use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};

use super::crypt::{self, IndexKeys};
use crate::index::IndexError;

/// Version 2 added `recordings.bytes_uncaptured`; version 3 keys `batches` by the sending
/// agent too (`agent`: its certificate's name), adds `spool_agents`, the collector's receive
/// times of each recording (`received_first_ns`, `received_last_ns`) and the host clock skew
/// flags (`recordings.clock_skewed`, `agents.clock_offset_ns`, `agents.clock_skewed`). [`open`]
/// upgrades an earlier index in place, one version at a time.
pub const SCHEMA_VERSION: i64 = 3;

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
    received_first_ns INTEGER,
    received_last_ns INTEGER,
    clock_skewed INTEGER NOT NULL DEFAULT 0,
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
-- A batch is one agent's: two hosts cloned from one image share a spool id, and each one's
-- (spool, seq) is its own batch. `agent` is the name in the sender's certificate, which is the
-- recording's host (ingest refuses a batch naming another host).
CREATE TABLE IF NOT EXISTS batches (
    agent TEXT NOT NULL,
    spool TEXT NOT NULL,
    seq INTEGER NOT NULL,
    recording TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (agent, spool, seq)
);
-- Which agents a spool id arrived from: more than one is cloned agent state.
CREATE TABLE IF NOT EXISTS spool_agents (
    spool TEXT NOT NULL,
    agent TEXT NOT NULL,
    PRIMARY KEY (spool, agent)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents (
    host TEXT PRIMARY KEY,
    version TEXT,
    boot_id TEXT,
    spool TEXT,
    address TEXT,
    first_contact_ns INTEGER NOT NULL,
    last_contact_ns INTEGER NOT NULL,
    clock_offset_ns INTEGER,
    clock_skewed INTEGER NOT NULL DEFAULT 0
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
    let mut version = match found.parse::<i64>() {
        Ok(version @ 1..=SCHEMA_VERSION) => version,
        Ok(newer) if newer > SCHEMA_VERSION => return Err(IndexError::NewerSchema { found }),
        _ => return Err(IndexError::UnknownSchema { found }),
    };
    while version < SCHEMA_VERSION {
        let step = match version {
            // Recordings stored before keep 0: their uncaptured bytes are in their events, and
            // `custos-collector index rebuild` counts them.
            1 => "ALTER TABLE recordings ADD COLUMN bytes_uncaptured INTEGER NOT NULL DEFAULT 0;",
            _ => TO_3,
        };
        version += 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(step)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [version.to_string()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

/// Version 2 to 3. A batch stored before was its recording's host's: that host's certificate
/// sent it (ingest refused any other), so each row gets the recording's host as its agent. The
/// receive times of recordings stored before are unknown (their chunks do not carry them):
/// they stay empty, and retention goes by the host's times for those recordings, as before,
/// until a new chunk arrives (`custos-collector index rebuild` reads the same from the chunks).
const TO_3: &str = "
ALTER TABLE batches RENAME TO batches_2;
CREATE TABLE batches (
    agent TEXT NOT NULL,
    spool TEXT NOT NULL,
    seq INTEGER NOT NULL,
    recording TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    PRIMARY KEY (agent, spool, seq)
);
INSERT INTO batches (agent, spool, seq, recording, chunk)
    SELECT r.host, b.spool, b.seq, b.recording, b.chunk
    FROM batches_2 b JOIN recordings r ON r.id = b.recording ORDER BY b.rowid;
DROP TABLE batches_2;
INSERT OR IGNORE INTO spool_agents (spool, agent) SELECT DISTINCT spool, agent FROM batches;
ALTER TABLE recordings ADD COLUMN received_first_ns INTEGER;
ALTER TABLE recordings ADD COLUMN received_last_ns INTEGER;
ALTER TABLE recordings ADD COLUMN clock_skewed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN clock_offset_ns INTEGER;
ALTER TABLE agents ADD COLUMN clock_skewed INTEGER NOT NULL DEFAULT 0;
";

/// Opens (creating) the index read-write, in write-ahead-log mode with full syncs, encrypted
/// under the current key ([`crypt`]), owner-only (its write-ahead log and shared-memory files
/// take the same mode).
pub(crate) fn open(path: &Path, keys: &IndexKeys) -> Result<Connection, IndexError> {
    let mut conn = crypt::open(path, OpenFlags::default(), keys, true)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    owner_only(path)?;
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

/// Sets the index file and its write-ahead log and shared memory (when there) to mode 0600.
fn owner_only(path: &Path) -> Result<(), IndexError> {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        match fs::set_permissions(&name, fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(err) => {
                return Err(IndexError::Io {
                    path: name.into(),
                    message: format!("cannot set mode 0600: {err}"),
                });
            }
        }
    }
    Ok(())
}

/// Opens the index to read only, with whichever key of the ring opens it.
pub(crate) fn open_read_only(path: &Path, keys: &IndexKeys) -> Result<Connection, IndexError> {
    let conn = crypt::open(path, OpenFlags::SQLITE_OPEN_READ_ONLY, keys, false)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(conn)
}
