//! Rendering tests: escaping, the process tree, folded opens, uncaptured bytes, skew.
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
    super::detail(detail, false)
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
    let shown = detail(&session(114_688), false);
    assert!(
        shown.contains(
            "uncaptured 112.0 KiB written to the terminal beyond the agent's tty_write_max"
        ),
        "{shown}"
    );
    assert!(!detail(&session(0), false).contains("uncaptured"));
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

#[test]
fn routine_reads_are_one_counted_line_per_process_unless_all_files() {
    let mut detail = with_commands(vec![command(1, 10, 1, &["cat", "/etc/shadow"])]);
    let open = |pid: u32, path: &str| FileInfo {
        time: Timestamp(1_000_000_000_000),
        seq: 2,
        pid,
        path: path.into(),
        access: "read".into(),
        flags: 0,
        result: 3,
    };
    detail.files = vec![
        open(10, "/etc/ld.so.cache"),
        open(10, "/lib/x86_64-linux-gnu/libc.so.6"),
        open(10, "/etc/shadow"),
        open(20, "/usr/lib/locale/locale-archive"),
        open(20, "/home/alice/.bashrc"),
    ];
    let shown = super::detail(&detail, false);
    assert!(shown.contains("opened /etc/shadow (read)"), "{shown}");
    assert!(shown.contains("[20] /home/alice/.bashrc (read)"), "{shown}");
    assert!(
        !shown.contains("libc.so.6") && !shown.contains("locale-archive"),
        "{shown}"
    );
    assert_eq!(
        occurrences(&shown, "+ 2 routine opens (system libraries"),
        1,
        "{shown}"
    );
    assert!(
        shown.contains("[20] 1 routine open (system libraries"),
        "{shown}"
    );
    let all = super::detail(&detail, true);
    for path in [
        "/etc/ld.so.cache",
        "libc.so.6",
        "locale-archive",
        "/etc/shadow",
    ] {
        assert!(all.contains(path), "{path} with --all-files: {all}");
    }
    assert!(!all.contains("routine open"), "{all}");
}
