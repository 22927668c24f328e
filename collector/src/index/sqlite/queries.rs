//! What auditors ask of the SQLite index: sessions by user, host and time, a session's
//! timeline, searches for commands (regex) and files (path prefix), the recordings to verify
//! and the agents seen.
use custos_proto::{
    Timestamp,
    api::{CommandInfo, FileInfo, GapInfo, SearchHit, SearchMatch, SessionDetail, SessionSummary},
};
use rusqlite::{OptionalExtension, params_from_iter, types::Value};

use custos_proto::api::AgentInfo;

use crate::index::{Filter, Index, IndexError};

const SUMMARY_COLUMNS: &str = "id, host, boot_id, session, login_user, login_uid, tty, remote,
    start_ns, end_ns, last_ns, events, commands, files, bytes_out, bytes_in, gaps, sealed,
    bytes_uncaptured, clock_skewed";

fn summary(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionSummary> {
    Ok(SessionSummary {
        id: row.get(0)?,
        host: row.get(1)?,
        boot_id: row.get(2)?,
        session: row.get::<_, i64>(3)? as u32,
        login_user: row.get(4)?,
        login_uid: row.get::<_, Option<i64>>(5)?.map(|u| u as u32),
        tty: row.get(6)?,
        remote: row.get(7)?,
        start: row.get::<_, Option<i64>>(8)?.map(Timestamp),
        end: row.get::<_, Option<i64>>(9)?.map(Timestamp),
        last: row.get::<_, Option<i64>>(10)?.map(Timestamp),
        events: row.get::<_, i64>(11)? as u64,
        commands: row.get::<_, i64>(12)? as u64,
        files: row.get::<_, i64>(13)? as u64,
        bytes_out: row.get::<_, i64>(14)? as u64,
        bytes_in: row.get::<_, i64>(15)? as u64,
        gaps: row.get::<_, i64>(16)? as u64,
        sealed: row.get::<_, i64>(17)? != 0,
        bytes_uncaptured: row.get::<_, i64>(18)? as u64,
        held: false,
        clock_skewed: row.get::<_, i64>(19)? != 0,
    })
}

/// `WHERE` clause and parameters for a filter, on table alias `r`.
fn filter_sql(filter: &Filter) -> (String, Vec<Value>) {
    let mut clauses = vec!["1 = 1".to_owned()];
    let mut params = Vec::new();
    if let Some(user) = &filter.user {
        clauses.push("r.login_user = ?".into());
        params.push(Value::Text(user.clone()));
    }
    if let Some(host) = &filter.host {
        clauses.push("r.host = ?".into());
        params.push(Value::Text(host.clone()));
    }
    // The session overlaps [since, until]: it started before `until` and was still going (or
    // had events) at `since`.
    if let Some(until) = filter.until {
        clauses.push("COALESCE(r.start_ns, r.last_ns) <= ?".into());
        params.push(Value::Integer(until.0));
    }
    if let Some(since) = filter.since {
        clauses.push("COALESCE(r.end_ns, r.last_ns, r.start_ns) >= ?".into());
        params.push(Value::Integer(since.0));
    }
    (clauses.join(" AND "), params)
}

impl Index {
    /// Sessions matching `filter`, newest first; and whether more matched than `filter.limit`.
    pub fn sessions(&self, filter: &Filter) -> Result<(Vec<SessionSummary>, bool), IndexError> {
        let (clause, params) = filter_sql(filter);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM recordings r WHERE {clause}
             ORDER BY COALESCE(r.start_ns, r.last_ns) DESC LIMIT {}",
            filter.limit + 1
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let mut rows: Vec<SessionSummary> = stmt
            .query_map(params_from_iter(params), summary)?
            .collect::<Result<_, _>>()?;
        let truncated = rows.len() > filter.limit;
        rows.truncate(filter.limit);
        Ok((rows, truncated))
    }

    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, IndexError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS} FROM recordings r WHERE id = ?1");
        Ok(self.conn.query_row(&sql, [id], summary).optional()?)
    }

    /// A session with its commands, file opens and gaps, in order.
    pub fn detail(&self, id: &str) -> Result<Option<SessionDetail>, IndexError> {
        let Some(summary) = self.session(id)? else {
            return Ok(None);
        };
        let mut stmt = self.conn.prepare(
            "SELECT time_ns, seq, pid, ppid, uid, euid, user, filename, argv, cwd, exit_code, signal
             FROM commands WHERE recording = ?1 ORDER BY seq",
        )?;
        let commands = stmt
            .query_map([id], |r| {
                let argv: String = r.get(8)?;
                Ok(CommandInfo {
                    time: Timestamp(r.get(0)?),
                    seq: r.get::<_, i64>(1)? as u64,
                    pid: r.get(2)?,
                    ppid: r.get(3)?,
                    uid: r.get(4)?,
                    euid: r.get(5)?,
                    user: r.get(6)?,
                    filename: r.get(7)?,
                    argv: serde_json::from_str(&argv).unwrap_or_default(),
                    cwd: r.get(9)?,
                    exit_code: r.get(10)?,
                    signal: r.get(11)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT time_ns, seq, pid, path, access, flags, result FROM files WHERE recording = ?1 ORDER BY seq",
        )?;
        let files = stmt
            .query_map([id], |r| {
                Ok(FileInfo {
                    time: Timestamp(r.get(0)?),
                    seq: r.get::<_, i64>(1)? as u64,
                    pid: r.get(2)?,
                    path: r.get(3)?,
                    access: r.get(4)?,
                    flags: r.get(5)?,
                    result: r.get(6)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT seq, reason, records, bytes, from_ns, to_ns FROM gaps WHERE recording = ?1 ORDER BY seq",
        )?;
        let gaps = stmt
            .query_map([id], |r| {
                Ok(GapInfo {
                    seq: r.get::<_, i64>(0)? as u64,
                    reason: r.get(1)?,
                    records: r.get::<_, i64>(2)? as u64,
                    bytes: r.get::<_, i64>(3)? as u64,
                    from: Timestamp(r.get(4)?),
                    to: Timestamp(r.get(5)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(SessionDetail {
            summary,
            commands,
            files,
            gaps,
        }))
    }

    /// Sessions that ran a command matching `pattern` (against the executable's path and the
    /// command line), with the matching commands.
    pub fn search_commands(
        &self,
        pattern: &regex::Regex,
        filter: &Filter,
    ) -> Result<(Vec<SearchHit>, bool), IndexError> {
        let (clause, params) = filter_sql(filter);
        let sql = format!(
            "SELECT c.recording, c.time_ns, c.pid, c.filename, c.argv FROM commands c
             JOIN recordings r ON r.id = c.recording WHERE {clause} ORDER BY c.recording, c.seq"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(params), |r| {
            let argv: String = r.get(4)?;
            let argv: Vec<String> = serde_json::from_str(&argv).unwrap_or_default();
            let filename: String = r.get(3)?;
            Ok((
                r.get::<_, String>(0)?,
                Timestamp(r.get(1)?),
                r.get::<_, u32>(2)?,
                filename,
                argv.join(" "),
            ))
        })?;
        let mut matches: Vec<(String, SearchMatch)> = Vec::new();
        for row in rows {
            let (recording, time, pid, filename, line) = row?;
            if pattern.is_match(&line) || pattern.is_match(&filename) {
                matches.push((
                    recording,
                    SearchMatch {
                        time,
                        pid,
                        what: line,
                    },
                ));
            }
        }
        self.group(matches, filter.limit)
    }

    /// Sessions that opened a file under `prefix`, with the opens.
    pub fn search_files(
        &self,
        prefix: &str,
        filter: &Filter,
    ) -> Result<(Vec<SearchHit>, bool), IndexError> {
        let (clause, mut params) = filter_sql(filter);
        params.push(Value::Integer(prefix.len() as i64));
        params.push(Value::Text(prefix.to_owned()));
        let sql = format!(
            "SELECT f.recording, f.time_ns, f.pid, f.path, f.access, f.result FROM files f
             JOIN recordings r ON r.id = f.recording
             WHERE {clause} AND substr(f.path, 1, ?) = ? ORDER BY f.recording, f.seq"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let matches = stmt
            .query_map(params_from_iter(params), |r| {
                let path: String = r.get(3)?;
                let access: String = r.get(4)?;
                let result: i64 = r.get(5)?;
                let outcome = if result >= 0 {
                    String::new()
                } else {
                    format!(", errno {}", -result)
                };
                Ok((
                    r.get::<_, String>(0)?,
                    SearchMatch {
                        time: Timestamp(r.get(1)?),
                        pid: r.get(2)?,
                        what: format!("{path} ({access}{outcome})"),
                    },
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        self.group(matches, filter.limit)
    }

    /// Groups matches by session, newest session first, at most `limit` sessions.
    fn group(
        &self,
        matches: Vec<(String, SearchMatch)>,
        limit: usize,
    ) -> Result<(Vec<SearchHit>, bool), IndexError> {
        let mut hits: Vec<SearchHit> = Vec::new();
        for (recording, found) in matches {
            match hits.iter_mut().find(|h| h.session.id == recording) {
                Some(hit) => hit.matches.push(found),
                None => {
                    if let Some(session) = self.session(&recording)? {
                        hits.push(SearchHit {
                            session,
                            matches: vec![found],
                        });
                    }
                }
            }
        }
        hits.sort_by_key(|hit| std::cmp::Reverse(hit.session.start));
        let truncated = hits.len() > limit;
        hits.truncate(limit);
        Ok((hits, truncated))
    }

    /// Ids of every recording, oldest first.
    pub fn recording_ids(&self) -> Result<Vec<String>, IndexError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM recordings ORDER BY start_ns")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }

    /// Every agent that ever connected, by host (the API's body type: the index keeps no twin).
    pub fn agents(&self) -> Result<Vec<AgentInfo>, IndexError> {
        let mut stmt = self.conn.prepare(
            "SELECT host, version, boot_id, address, first_contact_ns, last_contact_ns,
                    clock_offset_ns, clock_skewed
             FROM agents ORDER BY host",
        )?;
        let agents = stmt
            .query_map([], |r| {
                Ok(AgentInfo {
                    host: r.get(0)?,
                    version: r.get(1)?,
                    boot_id: r.get(2)?,
                    address: r.get(3)?,
                    first_contact: Timestamp(r.get(4)?),
                    last_contact: Timestamp(r.get(5)?),
                    clock_offset: r.get::<_, Option<i64>>(6)?.map(|ns| ns as f64 / 1e9),
                    clock_skewed: r.get::<_, i64>(7)? != 0,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(agents)
    }
}
