//! Alert rules: what an event must be to fire one. Rules from `[[alerts.rules]]` match on event
//! kind, login user, host, command path and argv, file path and access, time of day and the
//! session's remote address; built-in rules (`[alerts.builtin]`, all off by default) cover a
//! write under a PHI path, a read of /etc/shadow, and an exfiltration tool run in a session that
//! touched a PHI path. (The built-ins for an agent that stopped reporting and for cloned agent
//! state live in the engine: they fire on silence and on what the store saw, not on an event.)
use globset::{Glob, GlobMatcher};
use regex::Regex;
use serde::Deserialize;

use custos_proto::{Event, EventBody, event::Access};

use super::networks::{Networks, remote_address};

/// `[[alerts.rules]]` as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// exec, open, session_start, output, input, ...
    pub kind: Option<String>,
    /// Login user (glob).
    pub user: Option<String>,
    /// Host name (glob).
    pub host: Option<String>,
    /// Executable path (glob), for exec events.
    pub command: Option<String>,
    /// Regex on the command line (argv joined by spaces), for exec events.
    pub argv: Option<String>,
    /// File path (glob), for open events.
    pub path: Option<String>,
    /// `read` or `write` (write includes read-write), for open events.
    pub access: Option<String>,
    /// Local time of day on the collector, `HH:MM-HH:MM` (may wrap midnight).
    pub hours: Option<String>,
    /// Regex on the session's remote address (ssh sessions).
    pub remote: Option<String>,
    /// The session's remote address is in one of these networks (CIDR, address, or `known`
    /// for `alerts.known_networks`).
    pub remote_in: Option<Vec<String>>,
    /// The session has a remote address and it is in none of these networks (as `remote_in`):
    /// `remote_not_in = ["known"]` is a login from an unknown network.
    pub remote_not_in: Option<Vec<String>>,
    /// Regex on terminal data, for output and input events.
    pub data: Option<String>,
    /// Put the value of the field the rule is about (the command line, the path, the terminal
    /// data, the remote address) in the alert; by default the alert names the field only.
    #[serde(default)]
    pub include_match: bool,
}

/// What the engine knows of the session an event belongs to.
#[derive(Clone, Debug, Default)]
pub struct SessionContext {
    pub user: Option<String>,
    pub remote: Option<String>,
    /// The session opened a file under a PHI path.
    pub touched_phi: bool,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    kind: Option<String>,
    user: Option<GlobMatcher>,
    host: Option<GlobMatcher>,
    command: Option<GlobMatcher>,
    argv: Option<Regex>,
    path: Option<GlobMatcher>,
    write: Option<bool>,
    hours: Option<(u32, u32)>,
    remote: Option<Regex>,
    remote_in: Option<Networks>,
    remote_not_in: Option<Networks>,
    data: Option<regex::bytes::Regex>,
    /// Its alerts carry the matched field's value (`include_match`).
    pub include_match: bool,
}

/// The session's remote address: from its context, or from the start event itself (the
/// context is the session's before the event).
fn remote_of<'a>(event: &'a Event, session: &'a SessionContext) -> Option<&'a str> {
    match &event.event {
        EventBody::SessionStart(start) => start.remote.as_deref(),
        _ => session.remote.as_deref(),
    }
}

fn glob(key: &str, pattern: &Option<String>) -> Result<Option<GlobMatcher>, String> {
    pattern
        .as_ref()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|err| format!("{key}: {p:?}: {err}"))
        })
        .transpose()
}

fn regex(key: &str, pattern: &Option<String>) -> Result<Option<Regex>, String> {
    pattern
        .as_ref()
        .map(|p| {
            Regex::new(p)
                .map_err(|err| format!("{key}: not a valid regex: {}", one_line(&err.to_string())))
        })
        .transpose()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `HH:MM` as minutes after midnight.
fn minutes(key: &str, text: &str) -> Result<u32, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("{key}: {text:?} is not HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.trim()
            .parse()
            .map_err(|_| format!("{key}: {text:?} is not HH:MM"))?,
        m.trim()
            .parse()
            .map_err(|_| format!("{key}: {text:?} is not HH:MM"))?,
    );
    if h > 23 || m > 59 {
        return Err(format!("{key}: {text:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

const KINDS: [&str; 11] = [
    "session_start",
    "session_end",
    "output",
    "input",
    "input_suppressed",
    "exec",
    "open",
    "open_repeated",
    "fork",
    "exit",
    "gap",
];

impl Rule {
    /// Compiles rule number `index`; `known` is `alerts.known_networks`.
    pub fn compile(index: usize, c: &RuleConfig, known: &Networks) -> Result<Self, String> {
        let key = |field: &str| format!("alerts.rules[{index}].{field}");
        if c.name.trim().is_empty() {
            return Err(format!("{}: required", key("name")));
        }
        if let Some(kind) = &c.kind
            && !KINDS.contains(&kind.as_str())
        {
            return Err(format!(
                "{}: {kind:?} is not one of {}",
                key("kind"),
                KINDS.join(", ")
            ));
        }
        let write = match c.access.as_deref() {
            None => None,
            Some("read") => Some(false),
            Some("write") => Some(true),
            Some(other) => {
                return Err(format!("{}: {other:?} is not read or write", key("access")));
            }
        };
        let hours = c
            .hours
            .as_ref()
            .map(|h| {
                let (from, to) = h
                    .split_once('-')
                    .ok_or_else(|| format!("{}: {h:?} is not HH:MM-HH:MM", key("hours")))?;
                Ok::<_, String>((minutes(&key("hours"), from)?, minutes(&key("hours"), to)?))
            })
            .transpose()?;
        Ok(Self {
            name: c.name.clone(),
            kind: c.kind.clone(),
            user: glob(&key("user"), &c.user)?,
            host: glob(&key("host"), &c.host)?,
            command: glob(&key("command"), &c.command)?,
            argv: regex(&key("argv"), &c.argv)?,
            path: glob(&key("path"), &c.path)?,
            write,
            hours,
            remote: regex(&key("remote"), &c.remote)?,
            remote_in: c
                .remote_in
                .as_ref()
                .map(|list| Networks::parse(&key("remote_in"), list, Some(known)))
                .transpose()?,
            remote_not_in: c
                .remote_not_in
                .as_ref()
                .map(|list| Networks::parse(&key("remote_not_in"), list, Some(known)))
                .transpose()?,
            data: c
                .data
                .as_ref()
                .map(|p| {
                    regex::bytes::Regex::new(p).map_err(|err| {
                        format!(
                            "{}: not a valid regex: {}",
                            key("data"),
                            one_line(&err.to_string())
                        )
                    })
                })
                .transpose()?,
            include_match: c.include_match,
        })
    }

    /// Whether `event` (with its session's context, at local minute-of-day `now_minutes` of
    /// the event) fires this rule.
    pub fn matches(&self, event: &Event, session: &SessionContext, minute_of_day: u32) -> bool {
        if self.kind.as_deref().is_some_and(|k| k != event.kind()) {
            return false;
        }
        if let Some(user) = &self.user {
            let name = session
                .user
                .as_deref()
                .or_else(|| event.process.as_ref().and_then(|p| p.login_user.as_deref()));
            if !name.is_some_and(|n| user.is_match(n)) {
                return false;
            }
        }
        if self.host.as_ref().is_some_and(|h| !h.is_match(&event.host)) {
            return false;
        }
        if let Some((from, to)) = self.hours {
            let inside = if from <= to {
                (from..to).contains(&minute_of_day)
            } else {
                minute_of_day >= from || minute_of_day < to
            };
            if !inside {
                return false;
            }
        }
        let remote = remote_of(event, session);
        if let Some(pattern) = &self.remote
            && !remote.is_some_and(|r| pattern.is_match(r))
        {
            return false;
        }
        let address = remote.and_then(remote_address);
        if let Some(networks) = &self.remote_in
            && !address.is_some_and(|a| networks.contains(a))
        {
            return false;
        }
        if let Some(networks) = &self.remote_not_in
            && address.is_none_or(|a| networks.contains(a))
        {
            return false;
        }
        let exec = match &event.event {
            EventBody::Exec(exec) => Some(exec),
            _ => None,
        };
        if self.command.is_some() || self.argv.is_some() {
            let Some(exec) = exec else { return false };
            if self
                .command
                .as_ref()
                .is_some_and(|c| !c.is_match(exec.filename.to_string()))
            {
                return false;
            }
            if let Some(argv) = &self.argv {
                let line: Vec<String> = exec.argv.iter().map(|a| a.to_string()).collect();
                if !argv.is_match(&line.join(" ")) {
                    return false;
                }
            }
        }
        if self.path.is_some() || self.write.is_some() {
            let EventBody::Open(open) = &event.event else {
                return false;
            };
            if self
                .path
                .as_ref()
                .is_some_and(|p| !p.is_match(open.path.to_string()))
            {
                return false;
            }
            if let Some(write) = self.write {
                let writes = matches!(open.access, Access::Write | Access::ReadWrite);
                if writes != write {
                    return false;
                }
            }
        }
        if let Some(data) = &self.data {
            let bytes = match &event.event {
                EventBody::Output(o) => &o.data.0,
                EventBody::Input(i) => &i.data.0,
                _ => return false,
            };
            if !data.is_match(bytes) {
                return false;
            }
        }
        true
    }
}

/// `[alerts.builtin]`: the built-in rules, all off by default but `cloned_agent` and
/// `clock_set`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinConfig {
    /// Paths holding PHI (globs), for phi_write and exfiltration_after_phi.
    pub phi_paths: Vec<String>,
    /// A file under a PHI path opened for writing.
    pub phi_write: bool,
    /// /etc/shadow (or gshadow) opened.
    pub shadow_read: bool,
    /// One of `exfiltration_tools` run in a session that touched a PHI path.
    pub exfiltration_after_phi: bool,
    pub exfiltration_tools: Vec<String>,
    /// An agent silent for longer than this ("off" by default).
    #[serde(deserialize_with = "silence")]
    pub agent_silent: Option<std::time::Duration>,
    /// A spool id arriving from a second agent certificate (`cloned_agent_state`; on by
    /// default).
    pub cloned_agent: bool,
    /// The host's wall clock set while a session was open (`clock_set`; on by default): once
    /// per host and step, whichever sessions were open.
    pub clock_set: bool,
    /// A session that starts from a remote address outside `alerts.known_networks`
    /// (`login_from_unknown_network`).
    pub login_from_unknown_network: bool,
}

fn silence<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "off" {
        return Ok(None);
    }
    custos_proto::time::parse_duration(&text)
        .map(Some)
        .map_err(|err| {
            serde::de::Error::custom(format!("bad duration {text:?}: {err} (or \"off\")"))
        })
}

impl Default for BuiltinConfig {
    fn default() -> Self {
        Self {
            phi_paths: Vec::new(),
            phi_write: false,
            shadow_read: false,
            exfiltration_after_phi: false,
            exfiltration_tools: [
                "scp", "sftp", "rsync", "curl", "wget", "nc", "ncat", "netcat", "socat", "rclone",
                "ftp", "lftp", "aws", "gsutil", "azcopy",
            ]
            .map(String::from)
            .to_vec(),
            agent_silent: None,
            cloned_agent: true,
            clock_set: true,
            login_from_unknown_network: false,
        }
    }
}

/// The built-in rules, compiled.
#[derive(Clone, Debug)]
pub struct Builtins {
    phi: globset::GlobSet,
    phi_write: bool,
    shadow_read: bool,
    exfiltration: bool,
    tools: Vec<String>,
    pub agent_silent: Option<std::time::Duration>,
    pub cloned_agent: bool,
    clock_set: bool,
    /// `alerts.known_networks` when login_from_unknown_network is on.
    unknown_network: Option<Networks>,
}

impl Builtins {
    /// Compiles the built-ins; `known` is `alerts.known_networks`.
    pub fn compile(c: &BuiltinConfig, known: &Networks) -> Result<Self, String> {
        if c.login_from_unknown_network && known.is_empty() {
            return Err(
                "alerts.builtin.login_from_unknown_network: needs alerts.known_networks".into(),
            );
        }
        let mut set = globset::GlobSetBuilder::new();
        for p in &c.phi_paths {
            set.add(Glob::new(p).map_err(|err| format!("alerts.builtin.phi_paths: {p:?}: {err}"))?);
        }
        if (c.phi_write || c.exfiltration_after_phi) && c.phi_paths.is_empty() {
            return Err(
                "alerts.builtin.phi_paths: needed by phi_write and exfiltration_after_phi".into(),
            );
        }
        Ok(Self {
            phi: set
                .build()
                .map_err(|err| format!("alerts.builtin.phi_paths: {err}"))?,
            phi_write: c.phi_write,
            shadow_read: c.shadow_read,
            exfiltration: c.exfiltration_after_phi,
            tools: c.exfiltration_tools.clone(),
            agent_silent: c.agent_silent,
            cloned_agent: c.cloned_agent,
            clock_set: c.clock_set,
            unknown_network: c.login_from_unknown_network.then(|| known.clone()),
        })
    }

    pub fn is_phi(&self, path: &str) -> bool {
        self.phi.is_match(path)
    }

    /// The built-in rules `event` fires (the session's context as it was before the event).
    pub fn fired(&self, event: &Event, session: &SessionContext) -> Vec<&'static str> {
        let mut fired = Vec::new();
        match &event.event {
            EventBody::Open(open) => {
                let path = open.path.to_string();
                let writes = matches!(open.access, Access::Write | Access::ReadWrite);
                if self.phi_write && writes && self.is_phi(&path) {
                    fired.push("phi_write");
                }
                if self.shadow_read && (path == "/etc/shadow" || path == "/etc/gshadow") {
                    fired.push("shadow_read");
                }
            }
            EventBody::Exec(exec) if self.exfiltration && session.touched_phi => {
                let filename = exec.filename.to_string();
                let base = filename.rsplit('/').next().unwrap_or(&filename);
                if self.tools.iter().any(|t| t == base) {
                    fired.push("exfiltration_after_phi");
                }
            }
            EventBody::ClockSet(_) if self.clock_set => fired.push("clock_set"),
            EventBody::SessionStart(start) => {
                if let (Some(known), Some(address)) = (
                    &self.unknown_network,
                    start.remote.as_deref().and_then(remote_address),
                ) && !known.contains(address)
                {
                    fired.push("login_from_unknown_network");
                }
            }
            _ => {}
        }
        fired
    }
}
