//! The access log's tamper evidence, in three layers (the formats are in docs/store.md):
//!
//! - a plain hash chain: each entry stores the SHA-256 of the previous entry's hash and its own
//!   fields. Anyone can check it, and anyone who can write the file can recompute it;
//! - a MAC chain: each entry since the collector learned to write them stores an HMAC-SHA256,
//!   keyed with a secret derived from the seal key, over its number, the previous entry's MAC and
//!   its own hash. Editing, inserting or removing an entry in the middle shows, even after the
//!   plain chain was recomputed;
//! - signed checkpoints: from time to time (and when the collector opens and closes the log) the
//!   number of entries, the last entry's number, hash and MAC, and where the MACs start, signed
//!   with the seal key (Ed25519). Removing entries from the tail shows as a checkpoint naming
//!   more entries than there are; checkpoints check with `seal.pub` alone.
use custos_proto::{
    Timestamp,
    api::{AccessEntry, AccessLogCheck},
};
use ring::hmac;
use rusqlite::{Connection, OptionalExtension as _};
use sha2::{Digest, Sha256};

use crate::keys::{SealKey, verify_seal};

/// Errors reading or writing the access log's tables.
pub type AuditError = rusqlite::Error;

const HASH_LABEL: &[u8] = b"custos access v1\0";
const MAC_LABEL: &[u8] = b"custos access mac v1\0";
const CHECKPOINT_LABEL: &[u8] = b"custos access checkpoint v1\0";
/// The HKDF info under which the MAC key is derived from the seal key.
pub const MAC_KEY_PURPOSE: &[u8] = b"custos access log mac v1";
/// At most this many problems are listed; the count of the rest follows.
const MAX_PROBLEMS: usize = 100;

/// An entry's plain hash: SHA-256 over the label, the previous entry's hash (nothing for the
/// first entry) and each field as a big-endian u64 length and its UTF-8 bytes.
pub fn entry_hash(prev: &[u8], entry: &AccessEntry) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(HASH_LABEL);
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
    hasher.finalize().into()
}

/// The key of the access log's MAC chain.
#[derive(Clone)]
pub struct MacKey(hmac::Key);

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

impl MacKey {
    pub fn from_seal(seal: &SealKey) -> Self {
        Self(hmac::Key::new(
            hmac::HMAC_SHA256,
            &seal.derive(MAC_KEY_PURPOSE),
        ))
    }

    /// Entry `id`'s MAC: over the label, `id` (big-endian u64), the previous entry's MAC (its
    /// hash when it has none: the first keyed entry links to the unkeyed part) with its length
    /// (u64), and the entry's own hash.
    pub fn mac(&self, id: i64, prev: &[u8], hash: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(MAC_LABEL);
        context.update(&(id as u64).to_be_bytes());
        context.update(&(prev.len() as u64).to_be_bytes());
        context.update(prev);
        context.update(hash);
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// A signed statement of how far the access log went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub time: Timestamp,
    /// Entries in the log.
    pub entries: u64,
    /// The last entry's number (0 for an empty log).
    pub last_id: i64,
    /// The first entry with a MAC (every later one has one); `last_id + 1` when none has yet.
    pub keyed_from: i64,
    /// The last entry's hash and MAC (32 zero bytes when absent).
    pub last_hash: [u8; 32],
    pub last_mac: [u8; 32],
    pub signature: [u8; 64],
}

fn to32(bytes: Option<&[u8]>) -> [u8; 32] {
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .unwrap_or_default()
}

impl Checkpoint {
    /// What is signed: the label, then `entries` (u64), `last_id`, `keyed_from`, the hash, the
    /// MAC and `time` (i64 nanoseconds), integers big-endian.
    fn message(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(CHECKPOINT_LABEL.len() + 96);
        m.extend_from_slice(CHECKPOINT_LABEL);
        m.extend_from_slice(&self.entries.to_be_bytes());
        m.extend_from_slice(&self.last_id.to_be_bytes());
        m.extend_from_slice(&self.keyed_from.to_be_bytes());
        m.extend_from_slice(&self.last_hash);
        m.extend_from_slice(&self.last_mac);
        m.extend_from_slice(&self.time.0.to_be_bytes());
        m
    }

    /// The checkpoint of the log as `conn` has it now, signed with `seal`.
    pub fn of(conn: &Connection, seal: &SealKey) -> Result<Self, AuditError> {
        let entries: i64 = conn.query_row("SELECT count(*) FROM access_log", [], |r| r.get(0))?;
        let last: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = conn
            .query_row(
                "SELECT id, hash, mac FROM access_log ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let first_keyed: Option<i64> = conn.query_row(
            "SELECT min(id) FROM access_log WHERE mac IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        let last_id = last.as_ref().map(|l| l.0).unwrap_or(0);
        let mut checkpoint = Checkpoint {
            time: Timestamp::now(),
            entries: entries as u64,
            last_id,
            keyed_from: first_keyed.unwrap_or(last_id + 1),
            last_hash: to32(last.as_ref().map(|l| l.1.as_slice())),
            last_mac: to32(last.as_ref().and_then(|l| l.2.as_deref())),
            signature: [0; 64],
        };
        checkpoint.signature = seal.sign(&checkpoint.message());
        Ok(checkpoint)
    }

    pub fn verifies(&self, public: &[u8; 32]) -> bool {
        verify_seal(public, &self.message(), &self.signature)
    }

    pub fn insert(&self, conn: &Connection) -> Result<(), AuditError> {
        conn.execute(
            "INSERT INTO access_checkpoints
             (time_ns, entries, last_id, keyed_from, last_hash, last_mac, signature)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![
                self.time.0,
                self.entries as i64,
                self.last_id,
                self.keyed_from,
                &self.last_hash[..],
                &self.last_mac[..],
                &self.signature[..],
            ],
        )?;
        Ok(())
    }

    /// Every checkpoint in the log, oldest first.
    pub fn all(conn: &Connection) -> Result<Vec<(i64, Checkpoint)>, AuditError> {
        let mut stmt = conn.prepare(
            "SELECT id, time_ns, entries, last_id, keyed_from, last_hash, last_mac, signature
             FROM access_checkpoints ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            let signature: Vec<u8> = r.get(7)?;
            Ok((
                r.get::<_, i64>(0)?,
                Checkpoint {
                    time: Timestamp(r.get(1)?),
                    entries: r.get::<_, i64>(2)? as u64,
                    last_id: r.get(3)?,
                    keyed_from: r.get(4)?,
                    last_hash: to32(Some(&r.get::<_, Vec<u8>>(5)?)),
                    last_mac: to32(Some(&r.get::<_, Vec<u8>>(6)?)),
                    // A signature of the wrong length fails to verify as all zeros.
                    signature: <[u8; 64]>::try_from(signature.as_slice()).unwrap_or([0; 64]),
                },
            ))
        })?;
        rows.collect::<Result<Vec<_>, _>>()
    }

    fn describe(&self) -> String {
        format!(
            "the checkpoint of {} ({} entries, up to entry {})",
            self.time, self.entries, self.last_id
        )
    }
}

/// Checks the access log in `conn`: the plain chain and the checkpoints' signatures with the
/// seal's public key; the MAC chain too when `mac` is given. `remembered` is the last checkpoint
/// the running collector signed (kept in memory): it must still be in the file.
pub fn check(
    conn: &Connection,
    public: &[u8; 32],
    mac: Option<&MacKey>,
    remembered: Option<&Checkpoint>,
) -> Result<AccessLogCheck, AuditError> {
    let mut problems = Vec::new();
    let stored = Checkpoint::all(conn)?;
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    for (id, checkpoint) in &stored {
        if checkpoint.verifies(public) {
            checkpoints.push(checkpoint.clone());
        } else {
            problems.push(format!(
                "checkpoint {id}: signature invalid (forged or edited; it says {} entries up to \
                 entry {} at {})",
                checkpoint.entries, checkpoint.last_id, checkpoint.time
            ));
        }
    }
    if let Some(remembered) = remembered
        && !stored.iter().any(|(_, c)| c == remembered)
    {
        problems.push(format!(
            "{} that this collector signed is missing from the log (checkpoints were removed)",
            remembered.describe()
        ));
        checkpoints.push(remembered.clone());
    }
    if stored.is_empty() && remembered.is_none() {
        problems.push(
            "no signed checkpoint (the collector writes one whenever it opens the log: \
             the checkpoints were removed)"
                .into(),
        );
    }
    // By the number of entries they cover, to meet them during one pass over the entries.
    // (One of an empty log has nothing to compare.)
    checkpoints.sort_by_key(|c| c.entries);
    let mut pending = checkpoints.iter().filter(|c| c.entries > 0).peekable();

    let mut stmt = conn.prepare(
        "SELECT id, time_ns, who, role, peer, action, target, result, hash, mac
         FROM access_log ORDER BY id",
    )?;
    let mut rows = stmt.query([])?;
    let mut count: u64 = 0;
    let mut prev: Option<(i64, Vec<u8>, Option<Vec<u8>>)> = None;
    let mut keyed_from: Option<i64> = None;
    while let Some(row) = rows.next()? {
        count += 1;
        let id: i64 = row.get(0)?;
        let entry = AccessEntry {
            time: Timestamp(row.get(1)?),
            who: row.get(2)?,
            role: row.get(3)?,
            peer: row.get(4)?,
            action: row.get(5)?,
            target: row.get(6)?,
            result: row.get(7)?,
        };
        let hash: Vec<u8> = row.get(8)?;
        let stored_mac: Option<Vec<u8>> = row.get(9)?;
        let prev_hash = prev.as_ref().map(|p| p.1.as_slice()).unwrap_or_default();
        let hash_ok = entry_hash(prev_hash, &entry)[..] == hash[..];
        let mac_ok = match (&stored_mac, keyed_from) {
            (None, None) => true,
            (None, Some(from)) => {
                problems.push(format!(
                    "entry {id} has no MAC, though the entries from {from} on have one \
                     (its MAC was removed)"
                ));
                true
            }
            (Some(stored_mac), _) => {
                keyed_from.get_or_insert(id);
                let prev_link = prev
                    .as_ref()
                    .map(|p| p.2.as_deref().unwrap_or(&p.1))
                    .unwrap_or_default();
                mac.is_none_or(|key| key.mac(id, prev_link, &hash)[..] == stored_mac[..])
            }
        };
        if !hash_ok || !mac_ok {
            let follows = match &prev {
                Some((prev_id, ..)) => *prev_id + 1 == id,
                None => id == 1,
            };
            let how = if hash_ok {
                "its MAC does not match: the plain chain was recomputed"
            } else {
                "its hash does not match its fields and the entry before it"
            };
            problems.push(match (&prev, follows) {
                (_, true) => format!("entry {id} was edited ({how})"),
                (Some((prev_id, ..)), false) => {
                    format!("entries missing after entry {prev_id} (the next is entry {id})")
                }
                (None, false) => format!("entries missing before entry {id}"),
            });
        }
        while let Some(checkpoint) = pending.next_if(|c| c.entries == count) {
            let mac_now = to32(stored_mac.as_deref());
            if checkpoint.last_id != id
                || checkpoint.last_hash[..] != hash[..]
                || checkpoint.last_mac != mac_now
            {
                problems.push(format!(
                    "{} does not match entry {id}, the log's entry number {count}: entries up \
                     to it were edited, removed or inserted",
                    checkpoint.describe()
                ));
            }
        }
        prev = Some((id, hash, stored_mac));
    }
    let last_id = prev.as_ref().map(|p| p.0).unwrap_or(0);
    for checkpoint in pending {
        problems.push(format!(
            "entries missing after entry {last_id}: {} names more entries than the log's {count}",
            checkpoint.describe()
        ));
    }
    let derived = keyed_from.unwrap_or(last_id + 1);
    for checkpoint in &checkpoints {
        // A checkpoint covering keyed entries fixes where the MACs start.
        if checkpoint.keyed_from <= checkpoint.last_id && checkpoint.keyed_from != derived {
            problems.push(format!(
                "{} says the entries from {} on carry a MAC; in the log they start at {} \
                 (MACs were removed)",
                checkpoint.describe(),
                checkpoint.keyed_from,
                keyed_from.map_or("no entry".to_owned(), |k| format!("entry {k}"))
            ));
        }
    }
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("and {more} more problems"));
    }
    Ok(AccessLogCheck {
        ok: problems.is_empty(),
        entries: count,
        keyed_from: keyed_from.map(|k| k as u64),
        checkpoints: stored.len() as u64,
        problems,
    })
}
