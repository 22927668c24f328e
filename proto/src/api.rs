//! The query API between the collector and `custos`, the auditor's CLI: JSON over HTTPS with
//! client certificates (paths and semantics in docs/api.md). These types are the bodies.
use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Path prefix of every endpoint.
pub const PREFIX: &str = "/v1";

/// The endpoints' paths, for the collector's router and its clients alike. `{id}` stands for
/// a path parameter (axum's syntax); [`path::with_id`] fills it in.
pub mod path {
    pub const SESSIONS: &str = "/v1/sessions";
    pub const SESSION: &str = "/v1/sessions/{id}";
    pub const SESSION_EVENTS: &str = "/v1/sessions/{id}/events";
    pub const SESSION_EXPORT: &str = "/v1/sessions/{id}/export";
    pub const SEARCH: &str = "/v1/search";
    pub const VERIFY: &str = "/v1/verify";
    pub const ACCESS_LOG: &str = "/v1/access-log";
    pub const HOLDS: &str = "/v1/holds";
    pub const HOLD: &str = "/v1/holds/{id}";
    pub const RETENTION: &str = "/v1/retention";
    pub const RETENTION_PURGE: &str = "/v1/retention/purge";
    pub const AGENTS: &str = "/v1/agents";

    /// Every path, for checks.
    pub const ALL: [&str; 12] = [
        SESSIONS,
        SESSION,
        SESSION_EVENTS,
        SESSION_EXPORT,
        SEARCH,
        VERIFY,
        ACCESS_LOG,
        HOLDS,
        HOLD,
        RETENTION,
        RETENTION_PURGE,
        AGENTS,
    ];

    /// `template` with its `{id}` replaced by `id`, which the caller has percent-encoded.
    pub fn with_id(template: &str, id: &str) -> String {
        template.replace("{id}", id)
    }
}

/// One recorded login session, as listed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// `host-bootprefix-session`: what auditors pass to show, replay, export, verify.
    pub id: String,
    pub host: String,
    pub boot_id: String,
    pub session: u32,
    pub login_user: Option<String>,
    pub login_uid: Option<u32>,
    pub tty: Option<String>,
    pub remote: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    /// Time of the latest event stored.
    pub last: Option<Timestamp>,
    pub events: u64,
    pub commands: u64,
    pub files: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Terminal bytes written but not recorded: the part of a write beyond the agent's
    /// `tty_write_max` (counted, so an auditor knows the display showed more than the
    /// recording holds). Absent from collectors older than index schema 2.
    #[serde(default)]
    pub bytes_uncaptured: u64,
    pub gaps: u64,
    pub sealed: bool,
    /// Under a legal hold (exempt from retention).
    pub held: bool,
    /// The host's clock disagreed with the collector's by more than `ingest.max_clock_skew`
    /// when batches of this session arrived: its times are the host's, not to be trusted.
    #[serde(default)]
    pub clock_skewed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionSummary>,
    /// More matched than the limit.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandInfo {
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
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileInfo {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: u32,
    pub path: String,
    /// read, write, read_write, path.
    pub access: String,
    pub flags: u32,
    /// The file descriptor, or minus the errno.
    pub result: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapInfo {
    pub seq: u64,
    pub reason: String,
    pub records: u64,
    pub bytes: u64,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A session with its timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionDetail {
    pub summary: SessionSummary,
    pub commands: Vec<CommandInfo>,
    pub files: Vec<FileInfo>,
    pub gaps: Vec<GapInfo>,
}

/// A session that matched a search, with what matched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub session: SessionSummary,
    pub matches: Vec<SearchMatch>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchMatch {
    pub time: Timestamp,
    pub pid: u32,
    /// The command line, or the file path and access.
    pub what: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    pub truncated: bool,
}

/// What checking one recording found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyResult {
    pub id: String,
    pub ok: bool,
    pub chunks: u64,
    pub sealed: bool,
    /// Each problem names the chunk where it is.
    pub problems: Vec<String>,
    /// Chunks whose batch its agent did not sign (agents of protocol 1): nothing but the
    /// collector vouches for them.
    #[serde(default)]
    pub unsigned_chunks: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub results: Vec<VerifyResult>,
    /// The access log's check, when the whole store was verified (absent from a collector
    /// older than it, and when one recording was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogCheck>,
    /// The agents' chains of batches, checked across the whole store (`verify --all` only).
    #[serde(default)]
    pub agents: Vec<AgentChainResult>,
}

/// What checking the access log (its hash chain, its MAC chain and its signed checkpoints)
/// found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessLogCheck {
    pub ok: bool,
    /// Entries in the log.
    pub entries: u64,
    /// The first entry carrying a MAC; entries before it (written by a collector without MACs)
    /// are covered by the plain hash chain and by the signed checkpoints only.
    pub keyed_from: Option<u64>,
    /// Signed checkpoints found.
    pub checkpoints: u64,
    /// Each problem names the entry or the checkpoint.
    pub problems: Vec<String>,
}

/// What checking one agent's chain of signed batches (one spool of one agent) found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentChainResult {
    /// The agent's certificate name (its host).
    pub agent: String,
    pub spool: String,
    pub ok: bool,
    /// Batches stored (signed or not).
    pub batches: u64,
    /// Batches removed by retention or a purge, as the store's tombstones record them.
    #[serde(default)]
    pub removed: u64,
    /// Each problem names the missing or broken sequence numbers.
    pub problems: Vec<String>,
}

/// One line of the access log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub time: Timestamp,
    /// The certificate's name.
    pub who: String,
    pub role: String,
    pub peer: String,
    /// sessions, show, search, replay, export, verify, access-log, holds, retention...
    pub action: String,
    /// What was asked (a session id, a query).
    pub target: String,
    /// ok, denied, not found, error.
    pub result: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessLog {
    pub entries: Vec<AccessEntry>,
    pub truncated: bool,
}

/// What a hold is on: one session (by recording id) or every session of a login user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldKind {
    Session,
    User,
}

impl HoldKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldKind::Session => "session",
            HoldKind::User => "user",
        }
    }
}

impl std::fmt::Display for HoldKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for HoldKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "session" => Ok(HoldKind::Session),
            "user" => Ok(HoldKind::User),
            other => Err(format!(
                "hold kind {other:?} is neither \"session\" nor \"user\""
            )),
        }
    }
}

/// A legal hold: the session, or every session of the user, is kept past retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hold {
    pub id: u64,
    pub kind: HoldKind,
    pub target: String,
    pub reason: String,
    pub created_by: String,
    pub created: Timestamp,
}

impl Hold {
    /// Whether this hold keeps the recording `recording` of login user `login_user`.
    pub fn covers(&self, recording: &str, login_user: Option<&str>) -> bool {
        match self.kind {
            HoldKind::Session => self.target == recording,
            HoldKind::User => login_user == Some(self.target.as_str()),
        }
    }
}

/// A hold asked for; `kind` is checked by the collector (a wrong one is answered, and logged,
/// as a bad request).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewHold {
    pub kind: String,
    pub target: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holds {
    pub holds: Vec<Hold>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionInfo {
    /// Sessions are kept this many days after they end.
    pub keep_days: f64,
    pub sessions: u64,
    pub held_sessions: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// Recordings removed.
    pub purged: Vec<String>,
    /// Expired recordings kept because of a hold.
    pub held: Vec<String>,
}

/// `GET /v1/agents`: each agent that ever connected, by host name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agents {
    pub agents: Vec<AgentInfo>,
}

/// An agent as the collector last saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The name in its certificate.
    pub host: String,
    pub version: Option<String>,
    pub boot_id: Option<String>,
    /// The address it last connected from.
    pub address: Option<String>,
    pub first_contact: Timestamp,
    pub last_contact: Timestamp,
    /// The agent's clock minus the collector's, in seconds, at its last hello (absent for
    /// agents that do not send their time).
    #[serde(default)]
    pub clock_offset: Option<f64>,
    /// That offset is more than `ingest.max_clock_skew`.
    #[serde(default)]
    pub clock_skewed: bool,
}

/// One line of `/v1/verify`'s streamed answer: a recording's check, an agent chain's, or the
/// access log's (`{"result": ...}`, `{"agent": ...}`, `{"access_log": ...}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyLine {
    Result(VerifyResult),
    Agent(AgentChainResult),
    AccessLog(AccessLogCheck),
}

impl VerifyReport {
    /// Adds one streamed line to the report.
    pub fn add(&mut self, line: VerifyLine) {
        match line {
            VerifyLine::Result(result) => self.results.push(result),
            VerifyLine::Agent(agent) => self.agents.push(agent),
            VerifyLine::AccessLog(check) => self.access_log = Some(check),
        }
    }
}

/// The last line of every streamed answer (`/events`, `/export`, `/verify`), written as
/// `{"custos_end": {"ok": ..., "lines": ..., "error": ...}}`: whether the lines before it are
/// the whole answer. The status (200) and the first lines are sent before the collector knows
/// how reading a recording ends; a failure after them (a chunk that does not decrypt or chain, a
/// file that cannot be read) is this line with `ok: false` and the error, and a connection cut
/// before it leaves no end line at all. Either way a client must treat what it read as
/// incomplete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    pub ok: bool,
    /// Lines sent before this one.
    pub lines: u64,
    /// What ended the answer early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How an end line starts. No other line does: an event's JSON starts `{"time"`, an asciicast
/// line `[` or `{"version"`, a verify line `{"result"`, `{"agent"` or `{"access_log"`.
pub const STREAM_END_PREFIX: &str = "{\"custos_end\":";

impl StreamEnd {
    /// The end line (without its newline).
    pub fn line(&self) -> String {
        let body = serde_json::to_string(self).unwrap_or_else(|_| "{\"ok\":false}".into());
        format!("{STREAM_END_PREFIX}{body}}}")
    }

    /// `None` when `line` is not an end line; else the end it says, or why it is unreadable.
    pub fn parse(line: &str) -> Option<Result<StreamEnd, String>> {
        let body = line.trim_end().strip_prefix(STREAM_END_PREFIX)?;
        let body = body.strip_suffix('}').unwrap_or(body);
        Some(serde_json::from_str(body).map_err(|err| format!("unreadable end line: {err}")))
    }
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_under_the_prefix() {
        for p in path::ALL {
            assert!(
                p.starts_with(PREFIX) && p[PREFIX.len()..].starts_with('/'),
                "{p}"
            );
        }
        assert_eq!(
            path::with_id(path::SESSION_EVENTS, "h-1-2"),
            "/v1/sessions/h-1-2/events"
        );
    }

    #[test]
    fn an_end_line_reads_back_and_no_other_line_is_one() {
        let end = StreamEnd {
            ok: false,
            lines: 3,
            error: Some("chunk 1: fails authentication (altered)".into()),
        };
        let line = end.line();
        assert!(line.starts_with(r#"{"custos_end":{"ok":false"#), "{line}");
        assert_eq!(StreamEnd::parse(&line), Some(Ok(end)));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["custos_end"]["lines"], 3, "the line is JSON too");
        let verify = serde_json::to_string(&VerifyLine::Agent(AgentChainResult {
            agent: "db1".into(),
            spool: "s".into(),
            ok: true,
            batches: 1,
            removed: 0,
            problems: vec![],
        }))
        .unwrap();
        for other in [r#"{"time":1,"host":"h"}"#, r#"[0.5,"o","x"]"#, &verify] {
            assert_eq!(StreamEnd::parse(other), None, "{other}");
        }
        assert!(matches!(
            StreamEnd::parse(r#"{"custos_end":{"ok":"#),
            Some(Err(_))
        ));
    }
}
