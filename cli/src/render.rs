//! What auditors read: tables of sessions, a session's timeline as a process tree, search
//! results, verification reports, the access log, the agents.
use std::collections::{BTreeMap, HashMap, HashSet};

use comfy_table::{Table, presets::NOTHING};
use custos_proto::{
    Timestamp,
    api::{
        AccessEntry, AccessLogCheck, AgentChainResult, AgentInfo, CommandInfo, FileInfo, SearchHit,
        SessionDetail, SessionSummary, VerifyResult,
    },
};

use crate::escape;

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_jiff().strftime("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn clock(t: Timestamp) -> String {
    t.to_jiff().strftime("%H:%M:%S").to_string()
}

fn duration(summary: &SessionSummary) -> String {
    match (summary.start, summary.end.or(summary.last)) {
        (Some(start), Some(end)) if end >= start => {
            let secs = end.seconds_since(start).round() as u64;
            let text = custos_proto::time::format_duration(secs);
            if summary.end.is_none() {
                format!("{text}+")
            } else {
                text
            }
        }
        _ => "-".into(),
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING).set_header(header.to_vec());
    table
}

fn state(summary: &SessionSummary) -> String {
    let mut flags = Vec::new();
    flags.push(if summary.sealed {
        "sealed"
    } else if summary.end.is_some() {
        "ended"
    } else {
        "open"
    });
    if summary.held {
        flags.push("held");
    }
    if summary.clock_skewed {
        flags.push("clock-skewed");
    }
    flags.join(",")
}

/// An agent's clock against the collector's: `+2s`, `-9131d 8h skewed`, or `-` (not said).
fn clock_offset(agent: &AgentInfo) -> String {
    let Some(offset) = agent.clock_offset else {
        return "-".into();
    };
    let sign = if offset < 0.0 { "-" } else { "+" };
    let span = custos_proto::time::format_duration(offset.abs().round() as u64);
    if agent.clock_skewed {
        format!("{sign}{span} skewed")
    } else {
        format!("{sign}{span}")
    }
}

pub fn sessions(sessions: &[SessionSummary], truncated: bool) -> String {
    if sessions.is_empty() {
        return "no sessions match\n".into();
    }
    let mut table = table(&[
        "ID", "USER", "HOST", "TTY", "START", "DURATION", "CMDS", "FILES", "GAPS", "STATE",
    ]);
    for s in sessions {
        table.add_row(vec![
            escape::text(&s.id).into_owned(),
            escape::or_dash(s.login_user.as_deref()).into_owned(),
            escape::text(&s.host).into_owned(),
            escape::or_dash(s.tty.as_deref()).into_owned(),
            time(s.start.or(s.last)),
            duration(s),
            s.commands.to_string(),
            s.files.to_string(),
            s.gaps.to_string(),
            state(s),
        ]);
    }
    let mut out = format!("{table}\n");
    if truncated {
        out.push_str("(more sessions match: narrow the query or raise --limit)\n");
    }
    out
}

fn command_line(c: &CommandInfo) -> String {
    if c.argv.is_empty() {
        escape::text(&c.filename).into_owned()
    } else {
        c.argv
            .iter()
            .map(|a| escape::text(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn outcome(c: &CommandInfo) -> String {
    match (c.exit_code, c.signal) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => String::new(),
    }
}

fn open_outcome(f: &FileInfo) -> String {
    if f.result >= 0 {
        String::new()
    } else {
        format!(" -> errno {}", -f.result)
    }
}

/// A session: metadata, then its commands as a process tree with the files each opened, then
/// its gaps.
pub fn detail(detail: &SessionDetail) -> String {
    let s = &detail.summary;
    let mut out = String::new();
    out.push_str(&format!("Session {}\n", escape::text(&s.id)));
    out.push_str(&format!(
        "  user      {}{}\n",
        escape::or_dash(s.login_user.as_deref()),
        s.login_uid
            .map(|u| format!(" (uid {u})"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  host      {} (boot {})\n",
        escape::text(&s.host),
        escape::text(&s.boot_id)
    ));
    out.push_str(&format!(
        "  terminal  {}\n",
        escape::or_dash(s.tty.as_deref())
    ));
    if let Some(remote) = &s.remote {
        out.push_str(&format!("  from      {}\n", escape::text(remote)));
    }
    out.push_str(&format!("  start     {}\n", time(s.start)));
    out.push_str(&format!("  end       {} ({})\n", time(s.end), duration(s)));
    out.push_str(&format!(
        "  recorded  {} events, {} commands, {} files, {} shown, {} typed, {} gaps; {}\n",
        s.events,
        s.commands,
        s.files,
        bytes(s.bytes_out),
        bytes(s.bytes_in),
        s.gaps,
        state(s)
    ));
    if s.bytes_uncaptured > 0 {
        out.push_str(&format!(
            "  uncaptured {} written to the terminal beyond the agent's tty_write_max (counted, \
             not recorded)\n",
            bytes(s.bytes_uncaptured)
        ));
    }
    out.push_str("\nTimeline (commands as a process tree, with the files each opened):\n");
    timeline(detail, &mut out);
    if detail.commands.is_empty() {
        out.push_str("  (no commands)\n");
    }
    // Files of processes that ran no command of their own (the shell itself, say).
    let ran: HashSet<u32> = detail.commands.iter().map(|c| c.pid).collect();
    let stray: Vec<&FileInfo> = detail
        .files
        .iter()
        .filter(|f| !ran.contains(&f.pid))
        .collect();
    if !stray.is_empty() {
        out.push_str("\nFiles opened by processes that ran no recorded command:\n");
        for f in stray {
            out.push_str(&format!(
                "{}  [{}] {} ({}){}\n",
                clock(f.time),
                f.pid,
                escape::text(&f.path),
                escape::text(&f.access),
                open_outcome(f)
            ));
        }
    }
    if !detail.gaps.is_empty() {
        out.push_str("\nGaps (events known to be missing):\n");
        for g in &detail.gaps {
            out.push_str(&format!(
                "  {} .. {}  {}: {} records, {}\n",
                clock(g.from),
                clock(g.to),
                escape::text(&g.reason),
                g.records,
                bytes(g.bytes)
            ));
        }
    }
    out
}

/// Processes that ran commands, children under their parents, each process once whatever its
/// recorded parent says: pid reuse can make two processes each other's parent, or a process its
/// own, and a chain can be deeper than any stack.
fn timeline(detail: &SessionDetail, out: &mut String) {
    let mut by_pid: BTreeMap<u32, Vec<&CommandInfo>> = BTreeMap::new();
    for c in &detail.commands {
        by_pid.entry(c.pid).or_default().push(c);
    }
    let mut files: HashMap<u32, Vec<&FileInfo>> = HashMap::new();
    for f in &detail.files {
        files.entry(f.pid).or_default().push(f);
    }
    let first = |pid: &u32| by_pid[pid].first().map(|c| c.seq).unwrap_or(0);
    // A process's parent is the one its first command names.
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, commands) in &by_pid {
        let ppid = commands.first().map(|c| c.ppid).unwrap_or(0);
        if ppid != *pid && by_pid.contains_key(&ppid) {
            children.entry(ppid).or_default().push(*pid);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(first);
    }
    // Roots first (processes whose parent ran no command), then, for processes only reachable
    // through a cycle, the one seen first of each.
    let mut order: Vec<u32> = by_pid.keys().copied().collect();
    order.sort_by_key(|pid| {
        let ppid = by_pid[pid].first().map(|c| c.ppid).unwrap_or(0);
        let root = ppid == *pid || !by_pid.contains_key(&ppid);
        (!root, first(pid))
    });
    let mut shown: HashSet<u32> = HashSet::new();
    for start in order {
        if !shown.insert(start) {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        while let Some((pid, depth)) = stack.pop() {
            process(pid, depth, &by_pid, &files, out);
            for child in children.get(&pid).into_iter().flatten().rev() {
                if shown.insert(*child) {
                    stack.push((*child, depth + 1));
                }
            }
        }
    }
}

/// Deeper levels are numbered rather than indented further.
const MAX_INDENT: usize = 16;

/// One process of the timeline: its commands, then the files it opened.
fn process(
    pid: u32,
    depth: usize,
    by_pid: &BTreeMap<u32, Vec<&CommandInfo>>,
    files: &HashMap<u32, Vec<&FileInfo>>,
    out: &mut String,
) {
    let mut indent = "  ".repeat(depth.min(MAX_INDENT));
    if depth > MAX_INDENT {
        indent.push_str(&format!("(depth {depth}) "));
    }
    for c in by_pid.get(&pid).into_iter().flatten() {
        let as_user = match &c.user {
            Some(user) => format!(" as {}", escape::text(user)),
            None => String::new(),
        };
        out.push_str(&format!(
            "{}  {indent}[{}] {}   (in {}{as_user})  {}\n",
            clock(c.time),
            c.pid,
            command_line(c),
            escape::text(&c.cwd),
            outcome(c)
        ));
    }
    for f in files.get(&pid).into_iter().flatten() {
        out.push_str(&format!(
            "{}  {indent}    opened {} ({}){}\n",
            clock(f.time),
            escape::text(&f.path),
            escape::text(&f.access),
            open_outcome(f)
        ));
    }
}

pub fn search(hits: &[SearchHit], truncated: bool) -> String {
    if hits.is_empty() {
        return "no session matches\n".into();
    }
    let mut out = String::new();
    for hit in hits {
        let s = &hit.session;
        out.push_str(&format!(
            "{}  {}@{}  {}\n",
            escape::text(&s.id),
            escape::or_dash(s.login_user.as_deref()),
            escape::text(&s.host),
            time(s.start.or(s.last))
        ));
        for m in &hit.matches {
            out.push_str(&format!(
                "    {}  [{}] {}\n",
                time(Some(m.time)),
                m.pid,
                escape::text(&m.what)
            ));
        }
    }
    if truncated {
        out.push_str("(more sessions match: narrow the query or raise --limit)\n");
    }
    out
}

pub fn verify(results: &[VerifyResult], agents: &[AgentChainResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.ok {
            let unsigned = if r.unsigned_chunks > 0 {
                format!(", {} not signed by their agent", r.unsigned_chunks)
            } else {
                String::new()
            };
            out.push_str(&format!(
                "OK      {}  ({} chunks, {}{unsigned})\n",
                escape::text(&r.id),
                r.chunks,
                if r.sealed { "sealed" } else { "not sealed yet" }
            ));
        } else {
            let id = escape::text(&r.id);
            out.push_str(&format!("FAILED  {id}\n"));
            for problem in &r.problems {
                out.push_str(&format!("        {id}: {}\n", escape::text(problem)));
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    out.push_str(&format!(
        "{} recordings checked, {failed} failed\n",
        results.len()
    ));
    for a in agents {
        let chain = format!(
            "{} spool {}",
            escape::text(&a.agent),
            escape::text(&a.spool)
        );
        if a.ok {
            out.push_str(&format!(
                "OK      agent {chain}  ({} batches, {} removed by purges)\n",
                a.batches, a.removed
            ));
        } else {
            out.push_str(&format!("FAILED  agent {chain}\n"));
            for problem in &a.problems {
                out.push_str(&format!("        {chain}: {}\n", escape::text(problem)));
            }
        }
    }
    if !agents.is_empty() {
        let failed = agents.iter().filter(|a| !a.ok).count();
        out.push_str(&format!(
            "{} agent chains checked, {failed} failed\n",
            agents.len()
        ));
    }
    out
}

/// The access log's part of `custos verify --all`.
pub fn access_log_check(check: &AccessLogCheck) -> String {
    let keyed = match check.keyed_from {
        Some(1) => "all with MACs".to_owned(),
        Some(from) => format!("MACs from entry {from}"),
        None => "none with a MAC yet".to_owned(),
    };
    let mut out = format!(
        "{}  access log  ({} entries, {keyed}, {} signed checkpoints)\n",
        if check.ok { "OK     " } else { "FAILED " },
        check.entries,
        check.checkpoints
    );
    for problem in &check.problems {
        out.push_str(&format!("        access log: {}\n", escape::text(problem)));
    }
    out
}

pub fn access_log(entries: &[AccessEntry]) -> String {
    let mut table = table(&["TIME", "WHO", "ROLE", "FROM", "ACTION", "TARGET", "RESULT"]);
    for e in entries {
        table.add_row(vec![
            time(Some(e.time)),
            escape::text(&e.who).into_owned(),
            escape::text(&e.role).into_owned(),
            escape::text(&e.peer).into_owned(),
            escape::text(&e.action).into_owned(),
            escape::text(&e.target).into_owned(),
            escape::text(&e.result).into_owned(),
        ]);
    }
    format!("{table}\n")
}

pub fn agents(agents: &[AgentInfo]) -> String {
    if agents.is_empty() {
        return "no agent has connected\n".into();
    }
    let mut table = table(&[
        "HOST",
        "VERSION",
        "ADDRESS",
        "BOOT",
        "FIRST CONTACT",
        "LAST CONTACT",
        "CLOCK",
    ]);
    // What an agent said of itself (version, boot id) is its input: escaped like a recording.
    let or_dash = |v: &Option<String>| escape::or_dash(v.as_deref()).into_owned();
    for a in agents {
        table.add_row(vec![
            escape::text(&a.host).into_owned(),
            or_dash(&a.version),
            or_dash(&a.address),
            or_dash(&a.boot_id),
            time(Some(a.first_contact)),
            time(Some(a.last_contact)),
            clock_offset(a),
        ]);
    }
    format!("{table}\n")
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        Timestamp,
        api::{SearchHit, SessionSummary},
    };

    use super::*;

    #[test]
    fn verify_names_broken_agent_chains_and_unsigned_chunks() {
        let result = VerifyResult {
            id: "db1-3ceb1d62-7".into(),
            ok: true,
            chunks: 3,
            sealed: true,
            problems: vec![],
            unsigned_chunks: 1,
        };
        let chain = |ok: bool, problems: Vec<String>| AgentChainResult {
            agent: "db1".into(),
            spool: "s".into(),
            ok,
            batches: 3,
            removed: 1,
            problems,
        };
        let out = verify(
            std::slice::from_ref(&result),
            &[chain(
                false,
                vec!["batches after seq 1 and before seq 4 are missing".into()],
            )],
        );
        assert!(
            out.contains("(3 chunks, sealed, 1 not signed by their agent)"),
            "{out}"
        );
        assert!(out.contains("FAILED  agent db1 spool s\n"), "{out}");
        assert!(
            out.contains("db1 spool s: batches after seq 1 and before seq 4 are missing"),
            "{out}"
        );
        assert!(out.ends_with("1 agent chains checked, 1 failed\n"), "{out}");
        let out = verify(&[result], &[chain(true, vec![])]);
        assert!(
            out.contains("OK      agent db1 spool s  (3 batches, 1 removed by purges)"),
            "{out}"
        );
    }

    fn session(bytes_uncaptured: u64) -> SessionDetail {
        SessionDetail {
            summary: SessionSummary {
                id: "h-b-1".into(),
                host: "h".into(),
                boot_id: "b".into(),
                session: 1,
                login_user: Some("alice".into()),
                login_uid: Some(1000),
                tty: Some("pts/1".into()),
                remote: None,
                start: Some(Timestamp(1_000_000_000_000)),
                end: Some(Timestamp(2_000_000_000_000)),
                last: None,
                events: 10,
                commands: 0,
                files: 0,
                bytes_out: 16384,
                bytes_in: 0,
                bytes_uncaptured,
                gaps: 0,
                sealed: true,
                held: false,
                clock_skewed: false,
            },
            commands: Vec::new(),
            files: Vec::new(),
            gaps: Vec::new(),
        }
    }

    fn command(seq: u64, pid: u32, ppid: u32, argv: &[&str]) -> CommandInfo {
        CommandInfo {
            time: Timestamp(1_000_000_000_000 + seq as i64),
            seq,
            pid,
            ppid,
            uid: 1000,
            euid: 1000,
            user: None,
            filename: argv.first().copied().unwrap_or("/bin/true").into(),
            argv: argv.iter().map(|a| (*a).to_owned()).collect(),
            cwd: "/home/alice".into(),
            exit_code: Some(0),
            signal: None,
        }
    }

    fn with_commands(commands: Vec<CommandInfo>) -> SessionDetail {
        SessionDetail {
            commands,
            ..session(0)
        }
    }

    /// How often `needle` occurs in `haystack`.
    fn occurrences(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    /// Nothing recorded reaches the auditor's terminal as a control character: an argv that
    /// erases the line and asks for the cursor position, a cwd with a bidi override, a path with
    /// a newline, user and host names with escapes, a gap reason with a bell.
    #[test]
    fn recorded_text_is_escaped_in_show() {
        let mut detail = with_commands(vec![CommandInfo {
            cwd: "/tmp/\u{202e}cod".into(),
            user: Some("root\x1b[8m".into()),
            ..command(1, 100, 1, &["echo", "\x1b[2K\x1b[1Ahidden\x1b[6n"])
        }]);
        detail.summary.login_user = Some("al\x1b]0;pwned\x07ice".into());
        detail.summary.host = "db\r1".into();
        detail.summary.tty = Some("pts/\x1bc".into());
        detail.summary.remote = Some("10.0.0.1\n  user      root".into());
        detail.files = vec![FileInfo {
            time: Timestamp(1_000_000_000_001),
            seq: 2,
            pid: 100,
            path: "/srv/a\nb".into(),
            access: "read".into(),
            flags: 0,
            result: 3,
        }];
        detail.gaps = vec![custos_proto::api::GapInfo {
            seq: 3,
            reason: "lost\x07".into(),
            records: 1,
            bytes: 10,
            from: Timestamp(1_000_000_000_000),
            to: Timestamp(1_000_000_000_000),
        }];
        let shown = detail_text(&detail);
        assert_no_controls(&shown);
        for escaped in [
            "echo \\x1b[2K\\x1b[1Ahidden\\x1b[6n",
            "/tmp/\\u{202e}cod",
            "as root\\x1b[8m",
            "al\\x1b]0;pwned\\x07ice",
            "db\\r1",
            "pts/\\x1bc",
            "10.0.0.1\\n  user      root",
            "/srv/a\\nb",
            "lost\\x07",
        ] {
            assert!(shown.contains(escaped), "{escaped} not in\n{shown}");
        }
    }

    /// Only the newlines that end lines, no other control character.
    fn assert_no_controls(shown: &str) {
        for line in shown.lines() {
            assert!(
                !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
                "control character in {line:?}"
            );
        }
    }

    fn detail_text(detail: &SessionDetail) -> String {
        super::detail(detail)
    }

    #[test]
    fn recorded_text_is_escaped_in_lists_and_search() {
        let mut summary = session(0).summary;
        summary.login_user = Some("eve\x1b[2J".into());
        summary.host = "h\u{2066}x".into();
        let listed = sessions(std::slice::from_ref(&summary), false);
        assert_no_controls(&listed);
        assert!(listed.contains("eve\\x1b[2J"), "{listed}");
        assert!(listed.contains("h\\u{2066}x"), "{listed}");
        let found = search(
            &[SearchHit {
                session: summary,
                matches: vec![custos_proto::api::SearchMatch {
                    time: Timestamp(1_000_000_000_000),
                    pid: 7,
                    what: "cat /srv/\x1b[1Aphi".into(),
                }],
            }],
            false,
        );
        assert_no_controls(&found);
        assert!(found.contains("cat /srv/\\x1b[1Aphi"), "{found}");
        let log = access_log(&[AccessEntry {
            time: Timestamp(1_000_000_000_000),
            who: "bob".into(),
            role: "auditor".into(),
            peer: "10.0.0.2".into(),
            action: "show".into(),
            target: "h\x1b[2Kx-b-1".into(),
            result: "ok".into(),
        }]);
        assert_no_controls(&log);
        assert!(log.contains("h\\x1b[2Kx-b-1"), "{log}");
    }

    /// Two processes that are each other's recorded parent (pid reuse) and their children.
    #[test]
    fn a_pid_cycle_hides_nothing() {
        let shown = detail_text(&with_commands(vec![
            command(1, 200, 300, &["cycle-a"]),
            command(2, 300, 200, &["cycle-b"]),
            command(3, 400, 300, &["child-of-b"]),
            command(4, 500, 1, &["plain-root"]),
        ]));
        for name in ["cycle-a", "cycle-b", "child-of-b", "plain-root"] {
            assert_eq!(occurrences(&shown, name), 1, "{name} in\n{shown}");
        }
        // The one seen first leads, the other hangs under it.
        let a = shown.find("cycle-a").unwrap_or(usize::MAX);
        let b = shown.find("cycle-b").unwrap_or(0);
        assert!(a < b, "{shown}");
    }

    #[test]
    fn a_self_parent_is_shown_once_with_its_children() {
        let shown = detail_text(&with_commands(vec![
            command(1, 200, 200, &["own-parent"]),
            command(2, 201, 200, &["its-child"]),
        ]));
        assert_eq!(occurrences(&shown, "own-parent"), 1, "{shown}");
        assert_eq!(occurrences(&shown, "its-child"), 1, "{shown}");
    }

    /// A chain deeper than any real one: every command once, no stack overflow, indentation
    /// bounded.
    #[test]
    fn a_long_chain_is_shown_whole() {
        let depth = 5_000u32;
        let commands = (0..depth)
            .map(|i| command(u64::from(i), 1000 + i, 999 + i, &[&format!("step-{i}-end")]))
            .collect();
        let shown = detail_text(&with_commands(commands));
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for word in shown.split_whitespace().filter(|w| w.starts_with("step-")) {
            *seen.entry(word).or_default() += 1;
        }
        for i in 0..depth {
            assert_eq!(
                seen.get(format!("step-{i}-end").as_str()),
                Some(&1),
                "step {i}"
            );
        }
        let widest = shown.lines().map(str::len).max().unwrap_or(0);
        assert!(widest < 400, "a line of {widest} bytes");
    }

    /// An auditor sees that the terminal showed more than the recording holds.
    #[test]
    fn uncaptured_terminal_bytes_are_shown_when_there_are_any() {
        let shown = detail(&session(114_688));
        assert!(
            shown.contains(
                "uncaptured 112.0 KiB written to the terminal beyond the agent's tty_write_max"
            ),
            "{shown}"
        );
        assert!(!detail(&session(0)).contains("uncaptured"));
    }

    /// An agent whose clock is off shows it in `custos agents`, and its sessions say so.
    #[test]
    fn a_skewed_clock_is_shown_on_agents_and_sessions() {
        let agent = |offset: Option<f64>, skewed| AgentInfo {
            host: "db1".into(),
            version: None,
            boot_id: None,
            address: None,
            first_contact: Timestamp(0),
            last_contact: Timestamp(0),
            clock_offset: offset,
            clock_skewed: skewed,
        };
        let shown = agents(&[agent(Some(-788_918_400.0), true)]);
        assert!(shown.contains("CLOCK"), "{shown}");
        assert!(shown.contains("-9131d skewed"), "{shown}");
        assert!(agents(&[agent(Some(2.4), false)]).contains("+2s"));
        assert!(!agents(&[agent(None, false)]).contains("skewed"));
        let mut skewed = session(0).summary;
        skewed.clock_skewed = true;
        assert!(sessions(&[skewed], false).contains("clock-skewed"));
        assert!(!sessions(&[session(0).summary], false).contains("clock-skewed"));
    }
}
