//! The audit database (`audit.sqlite` in the store directory): what auditors did (the access
//! log), legal holds, and purges. Unlike the index it cannot be rebuilt from the recordings; it
//! is a record in its own right. Each access log entry carries the SHA-256 of the previous one,
//! so removing or editing an entry breaks the chain (`custos access-log` checks it).
use std::path::Path;

use custos_proto::{
    Timestamp,
    api::{AccessEntry, Hold, HoldKind},
};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS access_log (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    peer TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    result TEXT NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_time ON access_log (time_ns);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('session', 'user')),
    target TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    recording TEXT NOT NULL,
    login_user TEXT,
    start_ns INTEGER,
    end_ns INTEGER,
    reason TEXT NOT NULL
);
";

#[derive(Debug, thiserror::Error)]
#[error("audit database: {0}")]
pub struct AuditError(#[from] rusqlite::Error);

pub struct Audit {
    conn: Connection,
}

fn entry_hash(prev: &[u8], entry: &AccessEntry) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(b"custos access v1\0");
    hasher.update(prev);
    for field in [
        entry.time.0.to_string().as_str(),
        &entry.who,
        &entry.role,
        &entry.peer,
        &entry.action,
        &entry.target,
        &entry.result,
    ] {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.finalize().to_vec()
}

impl Audit {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Appends an access log entry, chained to the previous one.
    pub fn log(&mut self, entry: &AccessEntry) -> Result<(), AuditError> {
        let tx = self.conn.transaction()?;
        let prev: Vec<u8> = tx
            .query_row(
                "SELECT hash FROM access_log ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_default();
        tx.execute(
            "INSERT INTO access_log (time_ns, who, role, peer, action, target, result, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                entry.time.0,
                entry.who,
                entry.role,
                entry.peer,
                entry.action,
                entry.target,
                entry.result,
                entry_hash(&prev, entry)
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Entries since `since` (oldest first, at most `limit`), and whether the whole chain is
    /// intact (a broken link names the entry).
    pub fn entries(
        &self,
        since: Option<Timestamp>,
        limit: usize,
    ) -> Result<(Vec<AccessEntry>, bool, Option<String>), AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT time_ns, who, role, peer, action, target, result, hash, id FROM access_log ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        let mut prev: Vec<u8> = Vec::new();
        let mut broken = None;
        let mut entries = Vec::new();
        let mut truncated = false;
        while let Some(row) = rows.next()? {
            let entry = AccessEntry {
                time: Timestamp(row.get(0)?),
                who: row.get(1)?,
                role: row.get(2)?,
                peer: row.get(3)?,
                action: row.get(4)?,
                target: row.get(5)?,
                result: row.get(6)?,
            };
            let hash: Vec<u8> = row.get(7)?;
            if broken.is_none() && entry_hash(&prev, &entry) != hash {
                let id: i64 = row.get(8)?;
                broken = Some(format!(
                    "access log entry {id} was altered, or an entry before it removed"
                ));
            }
            prev = hash;
            if since.is_none_or(|since| entry.time >= since) {
                if entries.len() >= limit {
                    truncated = true;
                } else {
                    entries.push(entry);
                }
            }
        }
        Ok((entries, truncated, broken))
    }

    pub fn add_hold(
        &self,
        kind: HoldKind,
        target: &str,
        reason: &str,
        by: &str,
    ) -> Result<Hold, AuditError> {
        let now = Timestamp::now();
        self.conn.execute(
            "INSERT INTO holds (kind, target, reason, created_by, created_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![kind.as_str(), target, reason, by, now.0],
        )?;
        Ok(Hold {
            id: self.conn.last_insert_rowid() as u64,
            kind,
            target: target.to_owned(),
            reason: reason.to_owned(),
            created_by: by.to_owned(),
            created: now,
        })
    }

    /// Removes a hold; false when there was none with that id.
    pub fn remove_hold(&self, id: u64) -> Result<bool, AuditError> {
        Ok(self
            .conn
            .execute("DELETE FROM holds WHERE id = ?1", params![id as i64])?
            > 0)
    }

    /// Every hold; a kind this collector does not know is an error naming it (not taken for a
    /// user, which would hold the wrong recordings).
    pub fn holds(&self) -> Result<Vec<Hold>, AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, target, reason, created_by, created_ns FROM holds ORDER BY id",
        )?;
        let holds = stmt
            .query_map([], |r| {
                Ok(Hold {
                    id: r.get::<_, i64>(0)? as u64,
                    kind: r.get::<_, String>(1)?.parse().map_err(|why: String| {
                        rusqlite::Error::FromSqlConversionFailure(
                            1,
                            rusqlite::types::Type::Text,
                            why.into(),
                        )
                    })?,
                    target: r.get(2)?,
                    reason: r.get(3)?,
                    created_by: r.get(4)?,
                    created: Timestamp(r.get(5)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(holds)
    }

    pub fn record_purge(
        &self,
        recording: &str,
        login_user: Option<&str>,
        start: Option<i64>,
        end: Option<i64>,
        reason: &str,
    ) -> Result<(), AuditError> {
        self.conn.execute(
            "INSERT INTO purges (time_ns, recording, login_user, start_ns, end_ns, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![Timestamp::now().0, recording, login_user, start, end, reason],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(who: &str) -> AccessEntry {
        AccessEntry {
            time: Timestamp::now(),
            who: who.into(),
            role: "auditor".into(),
            peer: "127.0.0.1:1".into(),
            action: "show".into(),
            target: "x".into(),
            result: "ok".into(),
        }
    }

    #[test]
    fn the_access_log_is_chained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.sqlite");
        let mut audit = Audit::open(&path).unwrap();
        for who in ["a", "b", "c"] {
            audit.log(&entry(who)).unwrap();
        }
        let (entries, truncated, broken) = audit.entries(None, 10).unwrap();
        assert_eq!((entries.len(), truncated, broken), (3, false, None));
        audit
            .conn
            .execute("UPDATE access_log SET who = 'mallory' WHERE id = 2", [])
            .unwrap();
        let (_, _, broken) = audit.entries(None, 10).unwrap();
        assert_eq!(
            broken.as_deref(),
            Some("access log entry 2 was altered, or an entry before it removed")
        );
    }

    #[test]
    fn holds_keep_their_kind_and_an_unknown_kind_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(&dir.path().join("audit.sqlite")).unwrap();
        audit
            .add_hold(HoldKind::Session, "db1-3ceb1d62-7", "case 1", "admin")
            .unwrap();
        audit
            .add_hold(HoldKind::User, "alice", "case 2", "admin")
            .unwrap();
        let kinds: Vec<_> = audit.holds().unwrap().iter().map(|h| h.kind).collect();
        assert_eq!(kinds, vec![HoldKind::Session, HoldKind::User]);
        // The table refuses such a kind; a database written otherwise (by hand, or a later
        // collector) may still hold one.
        audit
            .conn
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON;
                 UPDATE holds SET kind = 'group' WHERE id = 2;",
            )
            .unwrap();
        let err = audit.holds().expect_err("an unknown kind").to_string();
        assert!(err.contains("\"group\" is neither"), "{err}");
    }
}
