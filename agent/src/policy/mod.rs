//! The customer's policy, applied in the agent before anything is spooled or shipped:
//! - [`scope`]: who is recorded (users and groups; decisions pushed into the kernel filter);
//! - [`filter`]: file opens and commands left out, read-only reopens folded into a count;
//! - [`redact`]: values masked, pseudonymised or dropped in terminal data and argv.
//!
//! [`Policy`] holds the compiled rules (replaced whole on reload) and the per-session state they
//! need: each terminal stream's carry-over window, the read-only opens seen, the processes
//! running an excluded command, and the counts the session's end record reports.
pub mod filter;
pub mod redact;
pub mod scope;

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use custos_proto::{
    ByteString, Timestamp,
    event::{Access, EventBody, OpenRepeated, Process},
};

use self::{
    filter::{CommandFilter, FileFilter, OpenVerdict},
    redact::{Action, Counts, Redactor, Rule, Stream, Window},
    scope::Scope,
};
use crate::{
    config::{Config, RedactionAction, RuleConfig},
    metrics::{AgentMetrics, RuleLabel},
};

/// The compiled rules.
#[derive(Clone)]
pub struct Rules {
    pub scope: Scope,
    files: FileFilter,
    commands: CommandFilter,
    redactor: Redactor,
    /// Raw bytes a terminal stream may hold back, and for how long.
    window: usize,
    hold: Duration,
}

impl Rules {
    /// The default policy: everyone recorded, the default file exclusions, no redaction.
    pub fn defaults() -> Self {
        Self::compile(&Config::default()).expect("the default policy compiles")
    }

    /// Compiles the policy sections of `config`; the error names the key.
    pub fn compile(config: &Config) -> Result<Self, String> {
        let redaction = &config.redaction;
        let mut rules = Vec::new();
        for (index, rule) in redaction.rules.iter().enumerate() {
            rules.push(compile_rule(index, rule, &redaction.mrn_pattern)?);
        }
        let needs_key = rules.iter().any(|r| r.action == Action::Pseudonymise);
        let key = match (&redaction.key_file, needs_key) {
            (_, false) => Vec::new(),
            (None, true) => {
                return Err(
                    "redaction.key_file: required by rules that pseudonymise (a file of random bytes, 0600, the same on every host of the deployment)"
                        .into(),
                );
            }
            (Some(path), true) => read_key(path)?,
        };
        Ok(Self {
            scope: Scope::new(config.scope.clone()),
            files: FileFilter::new(&config.files)?,
            commands: CommandFilter::new(&config.commands)?,
            redactor: Redactor::new(rules, key),
            window: redaction.window.as_u64() as usize,
            hold: redaction.hold,
        })
    }
}

fn compile_rule(index: usize, rule: &RuleConfig, mrn_pattern: &str) -> Result<Rule, String> {
    let key = format!("redaction.rules[{index}]");
    let (name, pattern, group) = match (&rule.builtin, &rule.pattern) {
        (Some(builtin), None) => {
            let (pattern, group) = redact::builtin(builtin).ok_or_else(|| {
                let known: Vec<&str> = redact::BUILTINS.iter().map(|(n, _, _)| *n).collect();
                format!(
                    "{key}.builtin: {builtin:?} is not one of {}",
                    known.join(", ")
                )
            })?;
            let pattern = if builtin == "mrn" {
                mrn_pattern
            } else {
                pattern
            };
            (
                rule.name.clone().unwrap_or_else(|| builtin.clone()),
                pattern.to_owned(),
                rule.group.unwrap_or(group),
            )
        }
        (None, Some(pattern)) => (
            rule.name
                .clone()
                .ok_or_else(|| format!("{key}.name: required with a pattern"))?,
            pattern.clone(),
            rule.group.unwrap_or(0),
        ),
        _ => return Err(format!("{key}: give either builtin or pattern")),
    };
    let regex = regex::bytes::Regex::new(&pattern).map_err(|err| {
        format!(
            "{key}.pattern: not a valid regex: {}",
            one_line(&err.to_string())
        )
    })?;
    if group >= regex.captures_len() {
        return Err(format!("{key}.group: the pattern has no group {group}"));
    }
    let action = match rule.action {
        RedactionAction::Mask => Action::Mask {
            keep_last: rule.keep_last,
        },
        RedactionAction::Pseudonymise => Action::Pseudonymise,
        RedactionAction::Drop => Action::Drop,
    };
    let applies = |stream: &str| rule.applies_to.iter().any(|s| s == stream);
    for stream in &rule.applies_to {
        if !["output", "input", "argv"].contains(&stream.as_str()) {
            return Err(format!(
                "{key}.applies_to: {stream:?} is not output, input or argv"
            ));
        }
    }
    Ok(Rule {
        name,
        regex,
        group,
        action,
        output: applies("output"),
        input: applies("input"),
        argv: applies("argv"),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let key = "redaction.key_file";
    let meta =
        std::fs::metadata(path).map_err(|err| format!("{key}: {}: {err}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{key}: {} is readable by group or others; run chmod 600 on it",
            path.display()
        ));
    }
    let bytes = std::fs::read(path).map_err(|err| format!("{key}: {}: {err}", path.display()))?;
    if bytes.len() < 16 {
        return Err(format!(
            "{key}: {} holds {} bytes; at least 16 random bytes are needed",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// A terminal stream's held bytes and what the event that releases them needs.
struct Held {
    window: Window,
    /// When the oldest held byte arrived (for the hold limit) and its event time.
    since: Instant,
    time: Timestamp,
    process: Process,
    echoed: bool,
    uncaptured: u64,
}

#[derive(Default)]
struct SessionPolicy {
    /// Per (tty, is input).
    streams: HashMap<(u32, bool), Held>,
    /// Read-only opens seen, per (process, path): how many more times.
    opens: HashMap<(u32, Vec<u8>), u64>,
    /// Processes running an excluded command.
    excluded: HashSet<u32>,
    filtered: Counts,
    redacted: Counts,
}

/// An event the policy lets through (possibly changed), or releases later.
pub struct Passed {
    pub time: Timestamp,
    pub process: Option<Process>,
    pub body: EventBody,
}

pub struct Policy {
    rules: Rules,
    sessions: HashMap<u32, SessionPolicy>,
    metrics: Option<Arc<AgentMetrics>>,
}

impl Policy {
    pub fn new(rules: Rules, metrics: Option<Arc<AgentMetrics>>) -> Self {
        Self {
            rules,
            sessions: HashMap::new(),
            metrics,
        }
    }

    /// Replaces the rules. What streams hold is released under the old rules first, into
    /// `out` per session.
    pub fn replace(&mut self, rules: Rules, out: &mut Vec<(u32, Passed)>) {
        self.flush(|_| true, out);
        self.rules = rules;
    }

    pub fn scope(&mut self) -> &mut Scope {
        &mut self.rules.scope
    }

    fn count(&self, session: &mut SessionPolicy, rule: &str, filtered: bool) {
        let counts = if filtered {
            &mut session.filtered
        } else {
            &mut session.redacted
        };
        *counts.entry(rule.to_owned()).or_default() += 1;
        if let Some(metrics) = &self.metrics {
            let family = if filtered {
                &metrics.filtered
            } else {
                &metrics.redacted
            };
            family
                .get_or_create(&RuleLabel {
                    rule: rule.to_owned(),
                })
                .inc();
        }
    }

    fn add_redacted(&self, session: &mut SessionPolicy, counts: &Counts) {
        for (rule, n) in counts {
            *session.redacted.entry(rule.clone()).or_default() += n;
            if let Some(metrics) = &self.metrics {
                metrics
                    .redacted
                    .get_or_create(&RuleLabel { rule: rule.clone() })
                    .inc_by(*n);
            }
        }
    }

    /// Applies the policy to one event of `session`; what passes goes to `out`.
    pub fn apply(
        &mut self,
        session: u32,
        process: &Process,
        time: Timestamp,
        body: EventBody,
        out: &mut Vec<Passed>,
    ) {
        let mut state = self.sessions.remove(&session).unwrap_or_default();
        self.apply_to(&mut state, process, time, body, out);
        self.sessions.insert(session, state);
    }

    fn apply_to(
        &self,
        state: &mut SessionPolicy,
        process: &Process,
        time: Timestamp,
        body: EventBody,
        out: &mut Vec<Passed>,
    ) {
        let tgid = process.tgid.0;
        let pass = |body: EventBody, out: &mut Vec<Passed>| {
            out.push(Passed {
                time,
                process: Some(process.clone()),
                body,
            })
        };
        match body {
            EventBody::Output(output) if !self.rules.redactor.is_empty() => {
                let data = output.data.0;
                self.stream(
                    state,
                    (output.tty.0, false),
                    process,
                    time,
                    &data,
                    false,
                    output.uncaptured,
                    out,
                );
            }
            EventBody::Input(input) if !self.rules.redactor.is_empty() => {
                let data = input.data.0;
                self.stream(
                    state,
                    (input.tty.0, true),
                    process,
                    time,
                    &data,
                    input.echoed,
                    input.uncaptured,
                    out,
                );
            }
            EventBody::Exec(mut exec) => {
                if let Some(rule) = self.rules.commands.excluded(&exec.filename.0) {
                    state.excluded.insert(tgid);
                    self.count(state, &rule, true);
                    return;
                }
                state.excluded.remove(&tgid);
                if !self.rules.redactor.is_empty() {
                    let mut counts = Counts::new();
                    for arg in &mut exec.argv {
                        arg.0 = self
                            .rules
                            .redactor
                            .redact(&arg.0, Stream::Argv, &mut counts);
                    }
                    self.add_redacted(state, &counts);
                    exec.redacted = counts;
                }
                pass(EventBody::Exec(exec), out);
            }
            EventBody::Open(open) => {
                let verdict = self.rules.files.judge(&open.path.0);
                if let OpenVerdict::Drop(rule) = &verdict {
                    self.count(state, rule, true);
                    return;
                }
                if verdict == OpenVerdict::Keep && state.excluded.contains(&tgid) {
                    self.count(state, "commands.exclude (opens of excluded commands)", true);
                    return;
                }
                let read_only = open.access == Access::Read && open.fd.is_some();
                if verdict == OpenVerdict::Keep && read_only && self.rules.files.dedup_read_only {
                    let key = (tgid, open.path.0.clone());
                    if let Some(repeats) = state.opens.get_mut(&key) {
                        *repeats += 1;
                        return;
                    }
                    state.opens.insert(key, 0);
                }
                pass(EventBody::Open(open), out);
            }
            EventBody::Fork(fork) => {
                if state.excluded.contains(&tgid) {
                    state.excluded.insert(fork.child.0);
                }
                pass(EventBody::Fork(fork), out);
            }
            EventBody::Exit(exit) => {
                self.repeats(state, Some(tgid), time, Some(process), out);
                if state.excluded.remove(&tgid) {
                    self.count(state, "commands.exclude (exits of excluded commands)", true);
                    return;
                }
                pass(EventBody::Exit(exit), out);
            }
            other => pass(other, out),
        }
    }

    /// Terminal data through its stream's window.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        state: &mut SessionPolicy,
        key: (u32, bool),
        process: &Process,
        time: Timestamp,
        data: &[u8],
        echoed: bool,
        uncaptured: u64,
        out: &mut Vec<Passed>,
    ) {
        let held = state.streams.entry(key).or_insert_with(|| Held {
            window: Window::default(),
            since: Instant::now(),
            time,
            process: process.clone(),
            echoed,
            uncaptured: 0,
        });
        if held.window.is_empty() {
            held.since = Instant::now();
            held.time = time;
        }
        held.process = process.clone();
        held.echoed = echoed;
        held.uncaptured += uncaptured;
        let stream = if key.1 { Stream::Input } else { Stream::Output };
        let mut counts = Counts::new();
        let released = held.window.push(
            &self.rules.redactor,
            stream,
            data,
            self.rules.window,
            &mut counts,
        );
        let release_time = held.time;
        if !held.window.is_empty() {
            held.time = time;
        }
        if !released.is_empty() || held.uncaptured > 0 {
            let body = terminal_body(
                key,
                released,
                held.echoed,
                std::mem::take(&mut held.uncaptured),
                counts.clone(),
            );
            out.push(Passed {
                time: release_time,
                process: Some(held.process.clone()),
                body,
            });
        }
        self.add_redacted(state, &counts);
    }

    /// Releases what streams have held longer than the hold limit, per session.
    pub fn flush_due(&mut self, out: &mut Vec<(u32, Passed)>) {
        let hold = self.rules.hold;
        let now = Instant::now();
        self.flush(|held| now.duration_since(held.since) >= hold, out);
    }

    fn flush(&mut self, due: impl Fn(&Held) -> bool, out: &mut Vec<(u32, Passed)>) {
        let sessions: Vec<u32> = self.sessions.keys().copied().collect();
        for session in sessions {
            let Some(mut state) = self.sessions.remove(&session) else {
                continue;
            };
            let mut released = Vec::new();
            self.release_streams(&mut state, &due, &mut released);
            out.extend(released.into_iter().map(|p| (session, p)));
            self.sessions.insert(session, state);
        }
    }

    fn release_streams(
        &self,
        state: &mut SessionPolicy,
        due: &dyn Fn(&Held) -> bool,
        out: &mut Vec<Passed>,
    ) {
        let mut total = Counts::new();
        for (key, held) in state.streams.iter_mut() {
            if held.window.is_empty() || !due(held) {
                continue;
            }
            let stream = if key.1 { Stream::Input } else { Stream::Output };
            let mut counts = Counts::new();
            let data = held.window.flush(&self.rules.redactor, stream, &mut counts);
            for (rule, n) in &counts {
                *total.entry(rule.clone()).or_default() += n;
            }
            out.push(Passed {
                time: held.time,
                process: Some(held.process.clone()),
                body: terminal_body(
                    *key,
                    data,
                    held.echoed,
                    std::mem::take(&mut held.uncaptured),
                    counts,
                ),
            });
        }
        self.add_redacted(state, &total);
    }

    /// Open repeat counts of process `tgid` (or of every process).
    fn repeats(
        &self,
        state: &mut SessionPolicy,
        tgid: Option<u32>,
        time: Timestamp,
        process: Option<&Process>,
        out: &mut Vec<Passed>,
    ) {
        let mut keys: Vec<(u32, Vec<u8>)> = state
            .opens
            .keys()
            .filter(|(pid, _)| tgid.is_none_or(|t| t == *pid))
            .cloned()
            .collect();
        keys.sort();
        for key in keys {
            let Some(count) = state.opens.remove(&key) else {
                continue;
            };
            if count > 0 {
                out.push(Passed {
                    time,
                    process: process.cloned(),
                    body: EventBody::OpenRepeated(OpenRepeated {
                        path: ByteString(key.1),
                        count,
                    }),
                });
            }
        }
    }

    /// The session ended: everything held is released, repeats reported; returns what the
    /// end record says was filtered and redacted.
    pub fn end_session(
        &mut self,
        session: u32,
        time: Timestamp,
        out: &mut Vec<Passed>,
    ) -> (Counts, Counts) {
        let Some(mut state) = self.sessions.remove(&session) else {
            return (Counts::new(), Counts::new());
        };
        self.release_streams(&mut state, &|_| true, out);
        self.repeats(&mut state, None, time, None, out);
        (state.filtered, state.redacted)
    }

    /// Counts an event of an out-of-scope session that reached userspace before the kernel
    /// filter knew.
    pub fn count_out_of_scope(&self) {
        if let Some(metrics) = &self.metrics {
            metrics
                .filtered
                .get_or_create(&RuleLabel {
                    rule: "scope".into(),
                })
                .inc();
        }
    }
}

fn terminal_body(
    key: (u32, bool),
    data: Vec<u8>,
    echoed: bool,
    uncaptured: u64,
    redacted: Counts,
) -> EventBody {
    let tty = custos_proto::Tty(key.0);
    if key.1 {
        EventBody::Input(custos_proto::event::Input {
            tty,
            data: ByteString(data),
            echoed,
            uncaptured,
            redacted,
        })
    } else {
        EventBody::Output(custos_proto::event::Output {
            tty,
            data: ByteString(data),
            uncaptured,
            redacted,
        })
    }
}
