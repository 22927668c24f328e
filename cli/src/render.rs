//! What auditors read: tables of sessions, a session's timeline as a process tree, search
//! results, verification reports, the access log, the agents.
use std::collections::{BTreeMap, HashMap};

use comfy_table::{Table, presets::NOTHING};
use custos_proto::{
    Timestamp,
    api::{
        AccessEntry, AgentInfo, CommandInfo, FileInfo, SearchHit, SessionDetail, SessionSummary,
        VerifyResult,
    },
};

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
    flags.join(",")
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
            s.id.clone(),
            s.login_user.clone().unwrap_or_else(|| "-".into()),
            s.host.clone(),
            s.tty.clone().unwrap_or_else(|| "-".into()),
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
        c.filename.clone()
    } else {
        c.argv.join(" ")
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
    out.push_str(&format!("Session {}\n", s.id));
    out.push_str(&format!(
        "  user      {}{}\n",
        s.login_user.as_deref().unwrap_or("-"),
        s.login_uid
            .map(|u| format!(" (uid {u})"))
            .unwrap_or_default()
    ));
    out.push_str(&format!("  host      {} (boot {})\n", s.host, s.boot_id));
    out.push_str(&format!(
        "  terminal  {}\n",
        s.tty.as_deref().unwrap_or("-")
    ));
    if let Some(remote) = &s.remote {
        out.push_str(&format!("  from      {remote}\n"));
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
    // Processes that ran commands, children under their parents.
    let mut by_pid: BTreeMap<u32, Vec<&CommandInfo>> = BTreeMap::new();
    for c in &detail.commands {
        by_pid.entry(c.pid).or_default().push(c);
    }
    let mut files: HashMap<u32, Vec<&FileInfo>> = HashMap::new();
    for f in &detail.files {
        files.entry(f.pid).or_default().push(f);
    }
    let parent_of: HashMap<u32, u32> = detail.commands.iter().map(|c| (c.pid, c.ppid)).collect();
    let mut roots: Vec<u32> = by_pid
        .keys()
        .copied()
        .filter(|pid| {
            parent_of
                .get(pid)
                .is_none_or(|ppid| !by_pid.contains_key(ppid))
        })
        .collect();
    let first = |pid: &u32| {
        by_pid
            .get(pid)
            .and_then(|cs| cs.first())
            .map(|c| c.seq)
            .unwrap_or(0)
    };
    roots.sort_by_key(first);
    fn walk(
        pid: u32,
        depth: usize,
        by_pid: &BTreeMap<u32, Vec<&CommandInfo>>,
        files: &HashMap<u32, Vec<&FileInfo>>,
        parent_of: &HashMap<u32, u32>,
        out: &mut String,
    ) {
        let indent = "  ".repeat(depth);
        for c in by_pid.get(&pid).into_iter().flatten() {
            let as_user = match &c.user {
                Some(user) => format!(" as {user}"),
                None => String::new(),
            };
            out.push_str(&format!(
                "{}  {indent}[{}] {}   (in {}{as_user})  {}\n",
                clock(c.time),
                c.pid,
                command_line(c),
                c.cwd,
                outcome(c)
            ));
        }
        for f in files.get(&pid).into_iter().flatten() {
            out.push_str(&format!(
                "{}  {indent}    opened {} ({}){}\n",
                clock(f.time),
                f.path,
                f.access,
                open_outcome(f)
            ));
        }
        let mut children: Vec<u32> = by_pid
            .keys()
            .copied()
            .filter(|child| parent_of.get(child) == Some(&pid) && *child != pid)
            .collect();
        children.sort_by_key(|child| {
            by_pid
                .get(child)
                .and_then(|cs| cs.first())
                .map(|c| c.seq)
                .unwrap_or(0)
        });
        for child in children {
            walk(child, depth + 1, by_pid, files, parent_of, out);
        }
    }
    for root in roots {
        walk(root, 0, &by_pid, &files, &parent_of, &mut out);
    }
    if detail.commands.is_empty() {
        out.push_str("  (no commands)\n");
    }
    // Files of processes that ran no command of their own (the shell itself, say).
    let stray: Vec<&FileInfo> = detail
        .files
        .iter()
        .filter(|f| !by_pid.contains_key(&f.pid))
        .collect();
    if !stray.is_empty() {
        out.push_str("\nFiles opened by processes that ran no recorded command:\n");
        for f in stray {
            out.push_str(&format!(
                "{}  [{}] {} ({}){}\n",
                clock(f.time),
                f.pid,
                f.path,
                f.access,
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
                g.reason,
                g.records,
                bytes(g.bytes)
            ));
        }
    }
    out
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
            s.id,
            s.login_user.as_deref().unwrap_or("-"),
            s.host,
            time(s.start.or(s.last))
        ));
        for m in &hit.matches {
            out.push_str(&format!(
                "    {}  [{}] {}\n",
                time(Some(m.time)),
                m.pid,
                m.what
            ));
        }
    }
    if truncated {
        out.push_str("(more sessions match: narrow the query or raise --limit)\n");
    }
    out
}

pub fn verify(results: &[VerifyResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.ok {
            out.push_str(&format!(
                "OK      {}  ({} chunks, {})\n",
                r.id,
                r.chunks,
                if r.sealed { "sealed" } else { "not sealed yet" }
            ));
        } else {
            out.push_str(&format!("FAILED  {}\n", r.id));
            for problem in &r.problems {
                out.push_str(&format!("        {}: {problem}\n", r.id));
            }
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    out.push_str(&format!(
        "{} recordings checked, {failed} failed\n",
        results.len()
    ));
    out
}

pub fn access_log(entries: &[AccessEntry]) -> String {
    let mut table = table(&["TIME", "WHO", "ROLE", "FROM", "ACTION", "TARGET", "RESULT"]);
    for e in entries {
        table.add_row(vec![
            time(Some(e.time)),
            e.who.clone(),
            e.role.clone(),
            e.peer.clone(),
            e.action.clone(),
            e.target.clone(),
            e.result.clone(),
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
    ]);
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for a in agents {
        table.add_row(vec![
            a.host.clone(),
            or_dash(&a.version),
            or_dash(&a.address),
            or_dash(&a.boot_id),
            time(Some(a.first_contact)),
            time(Some(a.last_contact)),
        ]);
    }
    format!("{table}\n")
}

#[cfg(test)]
mod tests {
    use custos_proto::{Timestamp, api::SessionSummary};

    use super::*;

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
            },
            commands: Vec::new(),
            files: Vec::new(),
            gaps: Vec::new(),
        }
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
}
