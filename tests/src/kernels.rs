//! The capture scenario every kernel must pass (`cargo xtask vm-test` runs it in each VM, and on
//! this host): [`run`] plays it against a real agent and writes what happened as a [`Report`];
//! [`judge`], on the host, checks the report and names the first check that fails.
//!
//! The scenario: a login session started as pam_loginuid starts one, in a real pty; output with a
//! random marker; typed keystrokes; a password typed at an ECHO-off prompt, which must not be
//! recorded; a command run with full argv and exit code 3; an absolute, a relative and a failing
//! open; and, before it, a busy loop outside any session, which must produce no event.
use std::process::Command;

use custos_proto::{
    AuditSessionId, Event, EventBody,
    event::{Exec, Open},
};
use serde::{Deserialize, Serialize};

use crate::{
    agent::{Agent, ended, session as session_events, terminal_bytes},
    bin, contains, marker,
    shared::SharedBins,
    terminal::Terminal,
    wait_echo_off,
};

/// The user the scenario logs in as.
pub const USER: &str = "custos-alice";
/// The arguments after the program of the command whose exec and exit code are checked.
const ARGS: [&str; 6] = ["exit-with", "3", "--", "one", "two words", "three"];

/// What a scenario run produced, for the judge.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// `uname -r`.
    pub kernel: String,
    /// The variant the agent was started with: its `capture.hooks`, and `+helpers` when it ran
    /// with `capture.direct_reads = false` ([`variant`]).
    pub hooks: String,
    pub session: u32,
    /// The user's uid.
    pub uid: u32,
    /// The full argv of the command that exits with 3.
    pub argv: Vec<String>,
    pub marker: String,
    pub secret: String,
    /// The file the relative open names (relative to /etc).
    pub relative: String,
    pub missing: String,
    pub agent_log: String,
    pub agent_ok: bool,
    pub events: Vec<Event>,
}

/// The suffix of a variant whose agent reads kernel structs with a helper call per field.
const HELPERS: &str = "+helpers";

/// A scenario variant (`tracepoint`, `fentry+helpers`...) as the `capture.hooks` it sets and
/// whether the programs read with helper calls (`capture.direct_reads = false`).
pub fn variant(name: &str) -> (&str, bool) {
    match name.strip_suffix(HELPERS) {
        Some(hooks) => (hooks, true),
        None => (name, false),
    }
}

/// Runs the scenario with an agent in the variant `hooks` (see [`variant`]).
pub fn run(hooks: &str) -> Report {
    let uid = crate::users::ensure(USER).uid.as_raw();
    // The login user runs it: a copy it may execute wherever the checkout lives.
    let shared = SharedBins::copy(&["custos-testkit"]);
    let testkit = shared.path("custos-testkit").display().to_string();
    let argv: Vec<String> = std::iter::once(testkit.clone())
        .chain(ARGS.iter().map(|a| a.to_string()))
        .collect();
    let (capture_hooks, helpers) = variant(hooks);
    let agent = Agent::start(&format!(
        "[capture]\nhooks = \"{capture_hooks}\"\ndirect_reads = {}\n",
        !helpers
    ));

    // A busy process outside any session first: none of this may be recorded.
    let busy = Command::new(bin("custos-testkit"))
        .args(["no-session", "--", "/bin/sh", "-c"])
        .arg(format!(
            "i=0; while [ $i -lt 100 ]; do cat /etc/hostname >/dev/null; \
             {testkit} exit-with 0 -- busy-outside >/dev/null; i=$((i+1)); done"
        ))
        .status()
        .expect("busy loop");
    assert!(busy.success(), "the busy loop failed");

    let mut command = Command::new(bin("custos-testkit"));
    command
        .args([
            "login-pty",
            "--user",
            USER,
            "--",
            "/bin/busybox",
            "sh",
            "-i",
        ])
        .env("PS1", "custos$ ");
    let mut shell = Terminal::spawn(command);
    let session: u32 = shell
        .stderr_value("session=")
        .parse()
        .expect("testkit printed its session id");
    let pty = shell.stderr_value("pty=");
    shell.expect("custos$ ");

    let mark = marker("VM-");
    let (head, tail) = mark.split_at(3);
    let secret = marker("hunter2-");
    let missing = format!("/nonexistent-{mark}");
    let relative = "passwd".to_owned();
    shell.line(&format!("echo \"{head}\"\"{tail}\""));
    shell.expect(&format!("{mark}\r\n"));
    shell.expect("custos$ ");
    shell.line("cat /etc/hostname");
    shell.expect("custos$ ");
    shell.line(&format!("cd /etc && cat ./{relative} >/dev/null; cd /"));
    shell.expect("custos$ ");
    shell.line(&format!("cat {missing}"));
    shell.expect("custos$ ");
    let quoted: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
    shell.line(&format!("{}; echo \"status $?\"", quoted.join(" ")));
    shell.expect("status 3");
    shell.expect("custos$ ");
    shell.line("read -s -p 'Pass''word: ' pw; echo; echo \"got ${#pw}\"");
    wait_echo_off(&pty);
    shell.line(&secret);
    shell.expect(&format!("got {}", secret.len()));
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();

    let id = AuditSessionId(session);
    agent.wait_for(
        "the session's end record",
        std::time::Duration::from_secs(60),
        |events| ended(events, id).then_some(()),
    );
    let stopped = agent.stop();
    Report {
        kernel: uname_release(),
        hooks: hooks.to_owned(),
        session,
        uid,
        argv,
        marker: mark,
        secret,
        relative,
        missing,
        agent_log: stopped.stderr,
        agent_ok: stopped.success,
        events: stopped.events,
    }
}

fn uname_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The backends the agent logged (`terminal="fentry" opens="tracepoint"`) and how its programs
/// read kernel structs (`reads="direct"`).
pub fn backends(log: &str) -> Option<(String, String, String)> {
    let line = log
        .lines()
        .find(|l| l.contains("kernel capture attached"))?;
    let field = |name: &str| {
        line.split(&format!("{name}=\""))
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_owned)
    };
    Some((field("terminal")?, field("opens")?, field("reads")?))
}

/// Checks a report; the first failing check, or Ok.
pub fn judge(report: &Report) -> Result<(), String> {
    let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_owned()) };
    check(report.agent_ok, "the agent stopped cleanly")?;
    let (terminal, opens, reads) =
        backends(&report.agent_log).ok_or("the agent logged its hook backends")?;
    let (hooks, helpers) = variant(&report.hooks);
    if hooks != "auto" {
        check(
            terminal == hooks && opens == hooks,
            &format!("both captures use {hooks} (terminal {terminal}, opens {opens})"),
        )?;
    }
    // Every kernel tested (6.1, 6.12 and this host's) has the helpers direct reads need.
    let expected = if helpers { "helpers" } else { "direct" };
    check(
        reads == expected,
        &format!("the programs read kernel structs with {expected} (the agent logged {reads})"),
    )?;
    let id = AuditSessionId(report.session);
    check(
        report.events.iter().all(|e| e.session == id),
        "nothing outside the login session is recorded (the busy loop left no event)",
    )?;
    let events = session_events(&report.events, id);
    let start = events.first().map(|e| &e.event);
    check(
        matches!(start, Some(EventBody::SessionStart(s))
            if s.login_user.as_deref() == Some(USER) && s.login_uid.map(|u| u.0) == Some(report.uid)),
        "the session starts with a session_start naming the user",
    )?;
    check(
        matches!(
            events.last().map(|e| &e.event),
            Some(EventBody::SessionEnd(_))
        ),
        "the session ends with a session_end",
    )?;
    let output = terminal_bytes(&events, false);
    let input = terminal_bytes(&events, true);
    check(
        contains(&output, report.marker.as_bytes()),
        "the marker is in the output",
    )?;
    check(
        contains(&input, b"cat /etc/hostname"),
        "typed keystrokes are in the input",
    )?;
    check(
        !contains(&output, report.secret.as_bytes()) && !contains(&input, report.secret.as_bytes()),
        "the password typed with echo off is not recorded",
    )?;
    check(
        events.iter().any(|e| {
            matches!(&e.event, EventBody::InputSuppressed(s) if s.bytes as usize >= report.secret.len())
        }),
        "an input_suppressed marker counts the password's bytes",
    )?;
    let execs: Vec<(&Event, &Exec)> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Exec(exec) => Some((*e, exec)),
            _ => None,
        })
        .collect();
    let (exec_event, _) = execs
        .iter()
        .find(|(_, exec)| {
            exec.argv
                .iter()
                .map(|a| a.to_string())
                .eq(report.argv.iter().cloned())
        })
        .ok_or("the exec with its full argv is recorded")?;
    check(
        !execs
            .iter()
            .any(|(_, exec)| exec.argv.iter().any(|a| a.to_string() == "busy-outside")),
        "the busy loop's commands are not recorded",
    )?;
    let pid = exec_event.process.as_ref().map(|p| p.tgid);
    check(
        events.iter().any(|e| {
            e.process.as_ref().map(|p| p.tgid) == pid
                && matches!(&e.event, EventBody::Exit(exit) if exit.code == Some(3))
        }),
        "the command's exit code 3 is recorded",
    )?;
    let opens: Vec<&Open> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Open(open) => Some(open),
            _ => None,
        })
        .collect();
    check(
        opens
            .iter()
            .any(|o| o.path.to_string() == "/etc/hostname" && o.fd.is_some()),
        "the absolute open of /etc/hostname is recorded with its descriptor",
    )?;
    check(
        opens.iter().any(|o| {
            o.path.to_string() == format!("/etc/{}", report.relative)
                && o.requested.as_ref().map(|r| r.to_string())
                    == Some(format!("./{}", report.relative))
        }),
        "the relative open of ./passwd is recorded as /etc/passwd",
    )?;
    check(
        opens
            .iter()
            .any(|o| o.path.to_string() == report.missing && o.errno == Some(2)),
        "the failed open is recorded with ENOENT",
    )?;
    Ok(())
}
