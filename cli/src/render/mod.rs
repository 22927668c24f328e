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

use crate::{escape, fold};

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
/// its gaps. Routine reads (system libraries, locale, loader: [`fold`]) are one counted line
/// per process unless `all_files`.
pub fn detail(detail: &SessionDetail, all_files: bool) -> String {
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
    timeline(detail, all_files, &mut out);
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
        let mut by_pid: BTreeMap<u32, Vec<&FileInfo>> = BTreeMap::new();
        for f in stray {
            by_pid.entry(f.pid).or_default().push(f);
        }
        for (pid, files) in by_pid {
            let (listed, folded) = fold::split(files.iter().copied(), all_files);
            for f in listed {
                out.push_str(&format!(
                    "{}  [{}] {} ({}){}\n",
                    clock(f.time),
                    f.pid,
                    escape::text(&f.path),
                    escape::text(&f.access),
                    open_outcome(f)
                ));
            }
            if folded > 0 {
                out.push_str(&format!(
                    "{:8}  [{pid}] {}\n",
                    "",
                    fold::folded_line(folded)
                ));
            }
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
fn timeline(detail: &SessionDetail, all_files: bool, out: &mut String) {
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
            process(pid, depth, &by_pid, &files, all_files, out);
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
    all_files: bool,
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
    let (listed, folded) = fold::split(files.get(&pid).into_iter().flatten().copied(), all_files);
    for f in listed {
        out.push_str(&format!(
            "{}  {indent}    opened {} ({}){}\n",
            clock(f.time),
            escape::text(&f.path),
            escape::text(&f.access),
            open_outcome(f)
        ));
    }
    if folded > 0 {
        out.push_str(&format!(
            "{:8}  {indent}    + {}\n",
            "",
            fold::folded_line(folded)
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
mod tests;
