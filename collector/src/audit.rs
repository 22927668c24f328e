//! The audit database (`audit.sqlite` in the store directory): what auditors did (the access
//! log), legal holds, and purges. Unlike the index it cannot be rebuilt from the recordings; it
//! is a record in its own right. The access log is hash-chained, MAC-chained with a key derived
//! from the seal key, and signed at checkpoints ([`chain`]), so an entry edited, inserted or
//! removed, even from the tail, shows to `custos verify` and `custos access-log`.
pub use custos_trust::access_log as chain;

use std::path::{Path, PathBuf};

use custos_proto::{
    Timestamp,
    api::{AccessEntry, AccessLogCheck, Hold, HoldKind},
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tracing::{info, warn};

use crate::trust::keys::SealKey;
use chain::{Checkpoint, MacKey};

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
    hash BLOB NOT NULL,
    mac BLOB
);
CREATE INDEX IF NOT EXISTS access_log_time ON access_log (time_ns);
CREATE TABLE IF NOT EXISTS access_checkpoints (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    last_id INTEGER NOT NULL,
    keyed_from INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    last_mac BLOB NOT NULL,
    signature BLOB NOT NULL
);
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

/// A checkpoint is signed after this many entries, besides the periodic and closing ones.
const CHECKPOINT_EVERY_ENTRIES: u64 = 1000;

#[derive(Debug, thiserror::Error)]
#[error("audit database: {0}")]
pub struct AuditError(#[from] rusqlite::Error);

pub struct Audit {
    conn: Connection,
    path: PathBuf,
    seal: SealKey,
    mac: MacKey,
    /// The last checkpoint signed (or found current when the log was opened).
    checkpoint: Option<Checkpoint>,
    /// Entries appended since it.
    unsigned: u64,
}

/// Checks the access log in the audit database at `path` with the seal's public key only: the
/// plain hash chain and the signed checkpoints (not the MACs, which need the seal key).
pub fn check_public(path: &Path, public: &[u8; 32]) -> Result<AccessLogCheck, AuditError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(chain::check(&conn, public, None, None)?)
}

/// What checking the access log needs, taken from a running [`Audit`] so that the check runs on
/// its own connection without holding up logging.
pub struct Checker {
    path: PathBuf,
    public: [u8; 32],
    mac: MacKey,
    remembered: Option<Checkpoint>,
}

impl Checker {
    pub fn check(&self) -> Result<AccessLogCheck, AuditError> {
        let conn = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(chain::check(
            &conn,
            &self.public,
            Some(&self.mac),
            self.remembered.as_ref(),
        )?)
    }
}

impl Audit {
    /// Opens (creating or migrating) the audit database; `seal` signs the access log's
    /// checkpoints and keys its MACs. An access log written before MACs existed keeps its
    /// entries as they are; the MACs start with the next entry, and a checkpoint is signed at
    /// once over what is there.
    pub fn open(path: &Path, seal: SealKey) -> Result<Self, AuditError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let has_mac: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('access_log') WHERE name = 'mac'")?
            .exists([])?;
        let has_log: bool = conn
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'access_log'")?
            .exists([])?;
        if has_log && !has_mac {
            conn.execute_batch("ALTER TABLE access_log ADD COLUMN mac BLOB")?;
            info!(path = %path.display(), "access log: MACs and signed checkpoints start now");
        }
        conn.execute_batch(SCHEMA)?;
        let mut audit = Self {
            conn,
            path: path.to_owned(),
            mac: MacKey::from_seal(&seal),
            seal,
            checkpoint: None,
            unsigned: 0,
        };
        let check = audit.checker().check()?;
        if !check.ok {
            warn!(
                problems = check.problems.join("; "),
                "the access log was tampered with (custos verify --all lists the problems)"
            );
        }
        // Signed now over what is there; a log tampered with stays so: the earlier
        // checkpoints still disagree with it.
        let last_id: i64 =
            audit
                .conn
                .query_row("SELECT coalesce(max(id), 0) FROM access_log", [], |r| {
                    r.get(0)
                })?;
        match Checkpoint::all(&audit.conn)?.pop().map(|(_, c)| c) {
            Some(latest)
                if latest.verifies(&audit.seal.public())
                    && latest.last_id == last_id
                    && latest.entries == check.entries =>
            {
                audit.checkpoint = Some(latest);
            }
            _ => audit.checkpoint()?,
        }
        Ok(audit)
    }

    /// What checks the log (see [`Checker`]).
    pub fn checker(&self) -> Checker {
        Checker {
            path: self.path.clone(),
            public: self.seal.public(),
            mac: self.mac.clone(),
            remembered: self.checkpoint.clone(),
        }
    }

    /// Signs a checkpoint over the log as it is now, unless the last one already covers it.
    pub fn checkpoint_if_new(&mut self) -> Result<(), AuditError> {
        if self.unsigned > 0 || self.checkpoint.is_none() {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Signs a checkpoint over the log as it is now, stores it, and says it in the collector's
    /// log too (a copy out of reach of whoever can write the store).
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        let checkpoint = Checkpoint::of(&self.conn, &self.seal)?;
        checkpoint.insert(&self.conn)?;
        info!(
            entries = checkpoint.entries,
            last_id = checkpoint.last_id,
            keyed_from = checkpoint.keyed_from,
            last_hash = hex::encode(checkpoint.last_hash),
            last_mac = hex::encode(checkpoint.last_mac),
            time_ns = checkpoint.time.0,
            signature = hex::encode(checkpoint.signature),
            "access log checkpoint"
        );
        self.checkpoint = Some(checkpoint);
        self.unsigned = 0;
        Ok(())
    }

    /// Appends an access log entry, chained (hash and MAC) to the previous one.
    pub fn log(&mut self, entry: &AccessEntry) -> Result<(), AuditError> {
        let tx = self.conn.transaction()?;
        let prev: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT id, hash, mac FROM access_log ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let id = prev.as_ref().map(|p| p.0).unwrap_or(0) + 1;
        let prev_hash = prev.as_ref().map(|p| p.1.as_slice()).unwrap_or_default();
        let hash = chain::entry_hash(prev_hash, entry);
        // The first entry with a MAC links to the hash of the last one without.
        let prev_link = prev
            .as_ref()
            .map(|p| p.2.as_deref().unwrap_or(&p.1))
            .unwrap_or_default();
        let mac = self.mac.mac(id, prev_link, &hash);
        tx.execute(
            "INSERT INTO access_log (id, time_ns, who, role, peer, action, target, result, hash, mac)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                id,
                entry.time.0,
                entry.who,
                entry.role,
                entry.peer,
                entry.action,
                entry.target,
                entry.result,
                &hash[..],
                &mac[..],
            ],
        )?;
        tx.commit()?;
        self.unsigned += 1;
        if self.unsigned >= CHECKPOINT_EVERY_ENTRIES {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Logs what the collector did on its own (a retention purge, a configuration taking
    /// effect): who is `collector`, role `system`, no peer.
    pub fn log_system(
        &mut self,
        action: &str,
        target: &str,
        result: &str,
    ) -> Result<(), AuditError> {
        self.log(&AccessEntry {
            time: Timestamp::now(),
            who: "collector".into(),
            role: "system".into(),
            peer: "-".into(),
            action: action.into(),
            target: target.into(),
            result: result.into(),
        })
    }

    /// The target of the last entry the collector wrote itself with `action`.
    pub fn last_system(&self, action: &str) -> Result<Option<String>, AuditError> {
        Ok(self
            .conn
            .query_row(
                "SELECT target FROM access_log WHERE who = 'collector' AND role = 'system'
                 AND action = ?1 ORDER BY id DESC LIMIT 1",
                params![action],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Entries since `since` (oldest first, at most `limit`), and whether more were left out.
    /// [`Audit::checker`] checks them.
    pub fn entries(
        &self,
        since: Option<Timestamp>,
        limit: usize,
    ) -> Result<(Vec<AccessEntry>, bool), AuditError> {
        let mut stmt = self.conn.prepare(
            "SELECT time_ns, who, role, peer, action, target, result FROM access_log
             WHERE time_ns >= ?1 ORDER BY id LIMIT ?2",
        )?;
        let mut entries = stmt
            .query_map(
                params![
                    since.map_or(i64::MIN, |s| s.0),
                    limit.saturating_add(1) as i64
                ],
                |row| {
                    Ok(AccessEntry {
                        time: Timestamp(row.get(0)?),
                        who: row.get(1)?,
                        role: row.get(2)?,
                        peer: row.get(3)?,
                        action: row.get(4)?,
                        target: row.get(5)?,
                        result: row.get(6)?,
                    })
                },
            )?
            .collect::<Result<Vec<_>, _>>()?;
        let truncated = entries.len() > limit;
        entries.truncate(limit);
        Ok((entries, truncated))
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

    /// Removes a hold, returning it; `None` when there was none with that id.
    pub fn remove_hold(&self, id: u64) -> Result<Option<Hold>, AuditError> {
        let hold = self.holds()?.into_iter().find(|hold| hold.id == id);
        if hold.is_some() {
            self.conn
                .execute("DELETE FROM holds WHERE id = ?1", params![id as i64])?;
        }
        Ok(hold)
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

    /// Records a purged recording in the purge register and in the access log (action `purge`,
    /// the recording as target, `purged: REASON` as result).
    pub fn record_purge(
        &mut self,
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
        let target = match login_user {
            Some(user) => format!("{recording} (user {user})"),
            None => recording.to_owned(),
        };
        self.log_system("purge", &target, &format!("purged: {reason}"))
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

    struct Fixture {
        dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            SealKey::generate(&dir.path().join("seal.key"), &dir.path().join("seal.pub")).unwrap();
            let path = dir.path().join("audit.sqlite");
            Fixture { dir, path }
        }

        fn seal(&self) -> SealKey {
            SealKey::load(&self.dir.path().join("seal.key")).unwrap()
        }

        fn open(&self) -> Audit {
            Audit::open(&self.path, self.seal()).unwrap()
        }

        /// Five entries, `a` to `e`, and a checkpoint after them.
        fn five(&self) -> Audit {
            let mut audit = self.open();
            for who in ["a", "b", "c", "d", "e"] {
                audit.log(&entry(who)).unwrap();
            }
            audit.checkpoint().unwrap();
            audit
        }

        /// The attacker: a plain connection to the file, no keys.
        fn attacker(&self) -> Connection {
            Connection::open(&self.path).unwrap()
        }

        /// Checked with the seal's public key only.
        fn public_check(&self) -> AccessLogCheck {
            check_public(&self.path, &self.seal().public()).unwrap()
        }
    }

    /// What the attacker can do without keys: recompute every entry's plain SHA-256 link.
    fn recompute_plain_chain(conn: &Connection) {
        let rows: Vec<(i64, AccessEntry)> = conn
            .prepare(
                "SELECT id, time_ns, who, role, peer, action, target, result FROM access_log
                 ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    AccessEntry {
                        time: Timestamp(r.get(1)?),
                        who: r.get(2)?,
                        role: r.get(3)?,
                        peer: r.get(4)?,
                        action: r.get(5)?,
                        target: r.get(6)?,
                        result: r.get(7)?,
                    },
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut prev = Vec::new();
        for (id, entry) in rows {
            let hash = chain::entry_hash(&prev, &entry).to_vec();
            conn.execute(
                "UPDATE access_log SET hash = ?1 WHERE id = ?2",
                params![hash, id],
            )
            .unwrap();
            prev = hash;
        }
    }

    fn has(check: &AccessLogCheck, needle: &str) -> bool {
        check.problems.iter().any(|p| p.contains(needle))
    }

    #[test]
    fn an_intact_log_checks_clean_with_the_key_and_with_the_public_key() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        let check = audit.checker().check().unwrap();
        assert!(check.ok, "{:?}", check.problems);
        assert_eq!((check.entries, check.keyed_from), (5, Some(1)));
        // One on opening the empty log, one after the five entries.
        assert_eq!(check.checkpoints, 2);
        assert!(fixture.public_check().ok);
        let (entries, truncated) = audit.entries(None, 3).unwrap();
        assert_eq!((entries.len(), truncated), (3, true));
    }

    #[test]
    fn an_entry_edited_shows_even_with_the_plain_chain_recomputed() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        let attacker = fixture.attacker();
        attacker
            .execute("UPDATE access_log SET who = 'mallory' WHERE id = 3", [])
            .unwrap();
        // Edited alone, the plain chain names it.
        let check = audit.checker().check().unwrap();
        assert!(
            has(&check, "entry 3 was edited (its hash does not match"),
            "{:?}",
            check.problems
        );
        // Recomputed, the plain chain holds; the MAC does not, nor does the checkpoint.
        recompute_plain_chain(&attacker);
        let check = audit.checker().check().unwrap();
        assert!(
            has(
                &check,
                "entry 3 was edited (its MAC does not match: the plain chain was recomputed)"
            ),
            "{:?}",
            check.problems
        );
        let public = fixture.public_check();
        assert!(
            has(&public, "(5 entries, up to entry 5) does not match entry 5"),
            "{:?}",
            public.problems
        );
    }

    #[test]
    fn an_entry_removed_shows() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        let attacker = fixture.attacker();
        attacker
            .execute("DELETE FROM access_log WHERE id = 3", [])
            .unwrap();
        recompute_plain_chain(&attacker);
        let check = audit.checker().check().unwrap();
        assert!(
            has(
                &check,
                "entries missing after entry 2 (the next is entry 4)"
            ),
            "{:?}",
            check.problems
        );
        assert!(!fixture.public_check().ok);
    }

    #[test]
    fn the_tail_removed_shows_and_keeps_showing_after_a_restart() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        drop(audit);
        fixture
            .attacker()
            .execute("DELETE FROM access_log WHERE id > 3", [])
            .unwrap();
        let expected = "entries missing after entry 3: the checkpoint of";
        let public = fixture.public_check();
        assert!(
            has(&public, expected) && has(&public, "(5 entries, up to entry 5) names more"),
            "{:?}",
            public.problems
        );
        // The collector starts again, signs what it finds and appends: the earlier checkpoint
        // still disagrees.
        let mut audit = fixture.open();
        for who in ["f", "g", "h"] {
            audit.log(&entry(who)).unwrap();
        }
        audit.checkpoint().unwrap();
        let check = audit.checker().check().unwrap();
        assert!(
            has(&check, "(5 entries, up to entry 5) does not match entry 5"),
            "{:?}",
            check.problems
        );
    }

    #[test]
    fn the_tail_and_its_checkpoints_removed_under_a_running_collector_shows() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        let attacker = fixture.attacker();
        attacker
            .execute_batch(
                "DELETE FROM access_log WHERE id > 3;
                 DELETE FROM access_checkpoints WHERE entries > 3;",
            )
            .unwrap();
        let check = audit.checker().check().unwrap();
        assert!(
            has(&check, "that this collector signed is missing from the log"),
            "{:?}",
            check.problems
        );
        assert!(has(&check, "entries missing after entry 3"));
        // Every checkpoint gone is a problem of its own.
        attacker
            .execute("DELETE FROM access_checkpoints", [])
            .unwrap();
        assert!(has(&fixture.public_check(), "no signed checkpoint"));
    }

    #[test]
    fn a_forged_checkpoint_or_stripped_macs_show() {
        let fixture = Fixture::new();
        let audit = fixture.five();
        let attacker = fixture.attacker();
        attacker
            .execute(
                "UPDATE access_checkpoints SET entries = 4, last_id = 4 WHERE entries = 5",
                [],
            )
            .unwrap();
        let check = audit.checker().check().unwrap();
        assert!(has(&check, "signature invalid"), "{:?}", check.problems);
        drop(audit);
        let fixture = Fixture::new();
        let audit = fixture.five();
        // Passing the entries off as written before MACs existed.
        fixture
            .attacker()
            .execute("UPDATE access_log SET mac = NULL", [])
            .unwrap();
        let public = fixture.public_check();
        assert!(
            has(
                &public,
                "says the entries from 1 on carry a MAC; in the log they start at no entry"
            ),
            "{:?}",
            public.problems
        );
        drop(audit);
    }

    #[test]
    fn a_log_written_before_macs_is_kept_and_checkpointed() {
        let fixture = Fixture::new();
        // The log as the collector wrote it before: the plain chain only.
        let old = Connection::open(&fixture.path).unwrap();
        old.execute_batch(
            "CREATE TABLE access_log (id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL,
             who TEXT NOT NULL, role TEXT NOT NULL, peer TEXT NOT NULL, action TEXT NOT NULL,
             target TEXT NOT NULL, result TEXT NOT NULL, hash BLOB NOT NULL);",
        )
        .unwrap();
        let mut prev = Vec::new();
        for who in ["old1", "old2"] {
            let e = entry(who);
            let hash = chain::entry_hash(&prev, &e).to_vec();
            old.execute(
                "INSERT INTO access_log (time_ns, who, role, peer, action, target, result, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    e.time.0, e.who, e.role, e.peer, e.action, e.target, e.result, hash
                ],
            )
            .unwrap();
            prev = hash;
        }
        drop(old);
        let mut audit = fixture.open();
        audit.log(&entry("new")).unwrap();
        let check = audit.checker().check().unwrap();
        assert!(check.ok, "{:?}", check.problems);
        assert_eq!((check.entries, check.keyed_from), (3, Some(3)));
        // The old entries are under the checkpoint signed on opening: editing one and
        // recomputing the chain shows, with the public key alone.
        let attacker = fixture.attacker();
        attacker
            .execute("UPDATE access_log SET who = 'mallory' WHERE id = 1", [])
            .unwrap();
        recompute_plain_chain(&attacker);
        let public = fixture.public_check();
        assert!(
            has(&public, "(2 entries, up to entry 2) does not match entry 2"),
            "{:?}",
            public.problems
        );
    }

    #[test]
    fn a_purge_is_in_the_access_log() {
        let fixture = Fixture::new();
        let mut audit = fixture.open();
        audit
            .record_purge(
                "db1-3ceb1d62-7",
                Some("alice"),
                Some(1),
                Some(2),
                "retention period passed",
            )
            .unwrap();
        let (entries, _) = audit.entries(None, 10).unwrap();
        let check = audit.checker().check().unwrap();
        assert!(check.ok, "{:?}", check.problems);
        assert!(
            entries.iter().any(|e| e.action == "purge"
                && e.target == "db1-3ceb1d62-7 (user alice)"
                && e.result == "purged: retention period passed"
                && e.who == "collector"),
            "{entries:?}"
        );
    }

    #[test]
    fn holds_keep_their_kind_and_an_unknown_kind_is_an_error() {
        let fixture = Fixture::new();
        let audit = fixture.open();
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
