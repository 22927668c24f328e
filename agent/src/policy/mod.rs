//! The customer's policy, applied in the agent before anything is spooled or shipped:
//! - [`users`]: who is recorded (the user and group rules of `[scope]`; decisions pushed into
//!   the kernel's excluded uids);
//! - [`filter`]: file opens and commands left out, read-only reopens folded into a count;
//! - [`redact`]: values masked, pseudonymised or dropped in terminal data and argv.
//!
//! [`Policy`] holds the compiled rules (replaced whole on reload) and the per-session state they
//! need: each terminal stream's carry-over window, the read-only opens seen, the processes
//! running an excluded command, and the counts the session's end record reports.
pub mod filter;
pub mod redact;
#[cfg(test)]
mod typing_tests;
pub mod users;

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
    users::UserRules,
};
use crate::{
    config::{Config, RedactionAction, RuleConfig},
    metrics::{AgentMetrics, RuleLabel},
};

/// The compiled rules.
#[derive(Clone)]
pub struct Rules {
    pub users: UserRules,
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
            users: UserRules::new(config.scope.clone()),
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

/// The longest any terminal byte is held, however the stream trickles: a value typed with
/// pauses under the hold time is caught if it is typed within this.
pub const LONGEST_HOLD: Duration = Duration::from_secs(30);

/// A terminal stream's held bytes and what the event that releases them needs.
struct Held {
    window: Window,
    /// The event time the next release carries.
    time: Timestamp,
    process: Process,
    echoed: bool,
    uncaptured: u64,
}

/// Most read-only paths a session's processes are tracked for, to fold their reopens: a
/// `grep -r` over a large tree opens each file once, and every path held costs memory until
/// its process exits.
const READ_ONLY_TRACKED_MAX: usize = 16_384;

#[derive(Default)]
struct SessionPolicy {
    /// Per (tty, is input).
    streams: HashMap<(u32, bool), Held>,
    /// Per tty, the last raw bytes the terminal showed (output and echoed input, at most the
    /// window): the left context of a stream that held nothing, so a label printed before a
    /// value typed later still names it.
    shown: HashMap<u32, Vec<u8>>,
    /// Read-only opens seen, per process and path: how many more times.
    opens: HashMap<u32, HashMap<Vec<u8>, u64>>,
    /// Paths in `opens`, at most [`READ_ONLY_TRACKED_MAX`].
    opens_tracked: usize,
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
        self.flush(Release::All, out);
        self.rules = rules;
    }

    pub fn user_rules(&mut self) -> &mut UserRules {
        &mut self.rules.users
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
        self.apply_at(session, process, time, body, Instant::now(), out);
    }

    /// [`Policy::apply`], the event having arrived at `now`.
    fn apply_at(
        &mut self,
        session: u32,
        process: &Process,
        time: Timestamp,
        body: EventBody,
        now: Instant,
        out: &mut Vec<Passed>,
    ) {
        let mut state = self.sessions.remove(&session).unwrap_or_default();
        self.apply_to(&mut state, process, time, body, now, out);
        self.sessions.insert(session, state);
    }

    fn apply_to(
        &self,
        state: &mut SessionPolicy,
        process: &Process,
        time: Timestamp,
        body: EventBody,
        now: Instant,
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
                    (time, now),
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
                    (time, now),
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
                    let paths = state.opens.entry(tgid).or_default();
                    if let Some(repeats) = paths.get_mut(&open.path.0) {
                        *repeats += 1;
                        return;
                    }
                    // Past the bound, new paths pass as plain opens: less folding, nothing lost.
                    if state.opens_tracked < READ_ONLY_TRACKED_MAX {
                        paths.insert(open.path.0.clone(), 0);
                        state.opens_tracked += 1;
                    }
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
        (time, now): (Timestamp, Instant),
        data: &[u8],
        echoed: bool,
        uncaptured: u64,
        out: &mut Vec<Passed>,
    ) {
        let held = state.streams.entry(key).or_insert_with(|| Held {
            window: Window::default(),
            time,
            process: process.clone(),
            echoed,
            uncaptured: 0,
        });
        if held.window.is_empty() {
            held.time = time;
        }
        let shown = state.shown.entry(key.0).or_default();
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
            now,
            shown,
            &mut counts,
        );
        // Keystrokes the terminal did not echo itself come back as output (or not at all).
        if !key.1 || echoed {
            shown.extend_from_slice(data);
            let excess = shown.len().saturating_sub(self.rules.window);
            shown.drain(..excess);
        }
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

    /// Releases what streams hold once they have been quiet for the hold time, and bytes held
    /// for [`LONGEST_HOLD`], per session.
    pub fn flush_due(&mut self, out: &mut Vec<(u32, Passed)>) {
        self.flush_due_at(Instant::now(), out);
    }

    /// [`Policy::flush_due`] at `now`.
    fn flush_due_at(&mut self, now: Instant, out: &mut Vec<(u32, Passed)>) {
        self.flush(Release::Due(now), out);
    }

    fn flush(&mut self, due: Release, out: &mut Vec<(u32, Passed)>) {
        let sessions: Vec<u32> = self.sessions.keys().copied().collect();
        for session in sessions {
            let Some(mut state) = self.sessions.remove(&session) else {
                continue;
            };
            let mut released = Vec::new();
            self.release_streams(&mut state, due, &mut released);
            out.extend(released.into_iter().map(|p| (session, p)));
            self.sessions.insert(session, state);
        }
    }

    fn release_streams(&self, state: &mut SessionPolicy, due: Release, out: &mut Vec<Passed>) {
        let mut total = Counts::new();
        let (redactor, keep) = (&self.rules.redactor, self.rules.window);
        for (key, held) in state.streams.iter_mut() {
            let before = held.window.held();
            if before == 0 {
                continue;
            }
            let stream = if key.1 { Stream::Input } else { Stream::Output };
            let mut counts = Counts::new();
            let data = match due {
                Release::All => held.window.flush(redactor, stream, keep, &mut counts),
                Release::Due(now) => held.window.release_due(
                    redactor,
                    stream,
                    now,
                    self.rules.hold,
                    LONGEST_HOLD,
                    keep,
                    &mut counts,
                ),
            };
            if held.window.held() == before {
                continue;
            }
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

    /// Open repeat counts of process `tgid` (or of every process), in (process, path) order.
    /// Only this process's paths are looked at: a process exiting while another holds tens of
    /// thousands (grep -r) costs nothing extra.
    fn repeats(
        &self,
        state: &mut SessionPolicy,
        tgid: Option<u32>,
        time: Timestamp,
        process: Option<&Process>,
        out: &mut Vec<Passed>,
    ) {
        let mut done: Vec<(u32, HashMap<Vec<u8>, u64>)> = match tgid {
            Some(tgid) => state
                .opens
                .remove(&tgid)
                .map(|p| (tgid, p))
                .into_iter()
                .collect(),
            None => state.opens.drain().collect(),
        };
        done.sort_by_key(|(pid, _)| *pid);
        for (_, paths) in done {
            state.opens_tracked = state.opens_tracked.saturating_sub(paths.len());
            let mut repeated: Vec<(Vec<u8>, u64)> =
                paths.into_iter().filter(|(_, count)| *count > 0).collect();
            repeated.sort();
            for (path, count) in repeated {
                out.push(Passed {
                    time,
                    process: process.cloned(),
                    body: EventBody::OpenRepeated(OpenRepeated {
                        path: ByteString(path),
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
        self.release_streams(&mut state, Release::All, out);
        self.repeats(&mut state, None, time, None, out);
        (state.filtered, state.redacted)
    }

    /// Counts an event of an out-of-scope session that reached userspace before the kernel
    /// filter knew.
    pub fn count_not_recorded(&self) {
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

/// Which held bytes go.
#[derive(Clone, Copy)]
enum Release {
    All,
    /// What is due at this instant.
    Due(Instant),
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

#[cfg(test)]
mod tests {
    use custos_proto::{
        Gid, Pid, Uid,
        event::{Exit, Open},
    };

    use super::*;

    fn process(tgid: u32) -> Process {
        Process {
            pid: Pid(tgid),
            tgid: Pid(tgid),
            ppid: Pid(1),
            uid: Uid(0),
            euid: Uid(0),
            gid: Gid(0),
            loginuid: Some(Uid(0)),
            login_user: None,
            user: None,
            tty: None,
            comm: ByteString::from("grep"),
        }
    }

    fn read(path: &str) -> EventBody {
        EventBody::Open(Open {
            path: ByteString::from(path),
            requested: None,
            syscall: "openat".into(),
            flags: 0,
            access: Access::Read,
            mode: 0,
            fd: Some(3),
            errno: None,
            error: None,
            path_incomplete: false,
        })
    }

    fn kinds(out: &[Passed]) -> Vec<&'static str> {
        out.iter().map(|p| p.body.kind()).collect()
    }

    /// Reopens are folded per process and reported when that process exits, not when another
    /// one does.
    #[test]
    fn reopens_fold_per_process_until_it_exits() {
        let mut policy = Policy::new(Rules::defaults(), None);
        let (grep, ls) = (process(10), process(11));
        let mut out = Vec::new();
        for _ in 0..3 {
            policy.apply(1, &grep, Timestamp(1), read("/srv/phi/a"), &mut out);
        }
        policy.apply(1, &ls, Timestamp(2), read("/srv/phi/a"), &mut out);
        policy.apply(
            1,
            &ls,
            Timestamp(3),
            EventBody::Exit(Exit::from_status(0)),
            &mut out,
        );
        assert_eq!(kinds(&out), ["open", "open", "exit"]);
        out.clear();
        policy.apply(
            1,
            &grep,
            Timestamp(4),
            EventBody::Exit(Exit::from_status(0)),
            &mut out,
        );
        assert_eq!(kinds(&out), ["open_repeated", "exit"]);
        assert!(matches!(&out[0].body, EventBody::OpenRepeated(r) if r.count == 2));
    }

    /// Past the bound of tracked paths, new paths pass as plain opens every time (nothing is
    /// lost), and paths already tracked still fold.
    #[test]
    fn tracked_paths_are_bounded() {
        let mut policy = Policy::new(Rules::defaults(), None);
        let grep = process(10);
        let mut out = Vec::new();
        for i in 0..READ_ONLY_TRACKED_MAX {
            policy.apply(
                1,
                &grep,
                Timestamp(1),
                read(&format!("/srv/f{i}")),
                &mut out,
            );
        }
        out.clear();
        for _ in 0..2 {
            policy.apply(1, &grep, Timestamp(2), read("/srv/one-too-many"), &mut out);
            policy.apply(1, &grep, Timestamp(2), read("/srv/f0"), &mut out);
        }
        assert_eq!(kinds(&out), ["open", "open"]);
        assert!(
            out.iter()
                .all(|p| matches!(&p.body, EventBody::Open(o) if o.path.0 == b"/srv/one-too-many"))
        );
        out.clear();
        policy.apply(
            1,
            &grep,
            Timestamp(3),
            EventBody::Exit(Exit::from_status(0)),
            &mut out,
        );
        assert_eq!(kinds(&out), ["open_repeated", "exit"]);
    }
}
