//! Routes to the terminal and to files besides write(2) and open(2) (issue 19), on the tracepoint
//! backend: each is either captured or leaves a gap naming the process, the route and what is
//! known, never nothing. A root login session (root can open files by handle) takes every
//! route through small C programs (tests/c) and each route is checked for exactly what this
//! backend gives, so that a regression from captured to gap fails:
//!
//! | route | tracepoint backend |
//! |---|---|
//! | pwritev2 (offset -1) to the terminal | captured |
//! | pwrite64, pwritev to the terminal | refused by the kernel (ESPIPE) |
//! | copy_file_range to the terminal | refused by the kernel (EINVAL) |
//! | sendfile to the terminal | gap `sendfile_to_terminal` with the bytes |
//! | splice to the terminal (also after vmsplice and tee) | gap `splice_to_terminal` with the bytes |
//! | open_by_handle_at | captured as an open with the file's path; a failed one is a gap |
//! | io_uring openat and write | gaps `io_uring` naming each opcode |
//! | a 32-bit program | its exec, then a gap `syscalls32_bit` naming it |
//!
//! Run with `cargo xtask test routes` (root; one test at a time, since every agent sees every
//! session).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{process::Command, time::Duration};

use custos_proto::{
    Event, EventBody,
    event::{Gap, GapReason, Open},
};
use custos_tests::{
    agent::{self, Agent, ended, terminal_bytes},
    bin, contains,
    cprog::CPrograms,
    marker,
    terminal::Terminal,
};

const SESSION_END: Duration = Duration::from_secs(20);

/// The gaps of `reason` in `events`, with the command name of their process.
fn gaps<'a>(events: &[&'a Event], reason: GapReason) -> Vec<(&'a Gap, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Gap(gap) if gap.reason == reason => Some((
                gap,
                e.process
                    .as_ref()
                    .map(|p| p.comm.to_string())
                    .unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

fn opens<'a>(events: &[&'a Event]) -> Vec<&'a Open> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Open(open) => Some(open),
            _ => None,
        })
        .collect()
}

#[test]
fn every_route_is_captured_or_a_named_gap() {
    let programs = CPrograms::new();
    let routes = programs.build("routes", "routes.c", &[], &["-luring"], "liburing-dev");
    let routes32 = programs.build(
        "routes32",
        "routes32.c",
        &["-m32", "-static"],
        &[],
        "gcc-multilib",
    );
    let routes = routes.display().to_string();
    let routes32 = routes32.display().to_string();

    // Files whose contents are shown by sendfile and splice (markers that must not be in the
    // recording's output, since these routes are not captured), and files opened by handle,
    // by io_uring and by the 32-bit program (which must not be in the recording's opens).
    let dir = tempfile::Builder::new()
        .prefix("custos-routes-")
        .tempdir_in("/var/tmp")
        .expect("a folder for the routes' files");
    let dir_path = dir.path().canonicalize().expect("canonical folder");
    let file = |name: &str, contents: &str| {
        let path = dir_path.join(name);
        std::fs::write(&path, contents).expect("writing a route's file");
        path.display().to_string()
    };
    let sendfile_mark = marker("SENDFILE-");
    let splice_mark = marker("SPLICE-");
    let vmsplice_mark = marker("VMSPLICE-");
    let pwritev2_mark = marker("PWRITEV2-");
    let sendfile_file = file("sendfile", &format!("{sendfile_mark}\n"));
    let splice_file = file("splice", &format!("{splice_mark}\n"));
    let by_handle = file("by-handle", "opened by handle\n");
    let by_uring = file("by-uring", "opened by io_uring\n");
    let by_ia32 = file("by-ia32", "opened by a 32-bit program\n");

    let agent = Agent::start("[capture]\nhooks = \"tracepoint\"\n");
    let mut command = Command::new(bin("custos-testkit"));
    command
        .args(["login-pty", "--user", "root", "--"])
        .args(["/bin/bash", "--norc", "--noprofile", "-i"])
        .env("PS1", "custos$ ");
    let mut shell = Terminal::spawn(command);
    let session: u32 = shell
        .stderr_value("session=")
        .parse()
        .expect("testkit printed its session id");
    let session = custos_proto::AuditSessionId(session);
    shell.expect("custos$ ");
    // The shell echoes what is typed: a marker is typed in two quoted halves, so that only the
    // program's own output holds it whole.
    let split = |mark: &str| {
        let (head, tail) = mark.split_at(4);
        format!("{head}''{tail}")
    };
    let mut run = |mode: &str, arg: &str| {
        shell.line(&format!("{routes} {mode} '{arg}' && echo ok-{mode}"));
        shell.expect(&format!("ok-{mode}"));
        shell.expect("custos$ ");
    };
    run("pwritev2", &split(&pwritev2_mark));
    run("pwrite64", "never shown");
    run("copy_file_range", &sendfile_file);
    run("sendfile", &sendfile_file);
    run("splice", &splice_file);
    run("vmsplice-tee", &split(&vmsplice_mark));
    run("open_by_handle_at", &by_handle);
    run("io_uring", &by_uring);
    shell.line(&format!("{routes32} {by_ia32} && echo ok-ia32"));
    shell.expect("ok-ia32");
    shell.expect("custos$ ");
    shell.line("exit 0");
    assert!(shell.wait_exit().success());

    agent.wait_for("the session's end record", SESSION_END, |events| {
        ended(events, session).then_some(())
    });
    let stopped = agent.stop();
    assert!(stopped.success, "agent log:\n{}", stopped.stderr);
    assert!(
        stopped.stderr.contains("io_uring=\"attached\""),
        "the io_uring tracepoint is attached on this kernel; agent log:\n{}",
        stopped.stderr
    );
    let events = agent::session(&stopped.events, session);
    let output = terminal_bytes(&events, false);
    let all_gaps: Vec<&Gap> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Gap(gap) => Some(gap),
            _ => None,
        })
        .collect();

    // pwritev2: captured like writev, and no gap.
    assert!(
        contains(&output, pwritev2_mark.as_bytes()),
        "pwritev2's bytes are in the output"
    );

    // sendfile: a gap with the byte count, named for the process; the bytes are not captured.
    let sendfile = gaps(&events, GapReason::SendfileToTerminal);
    assert_eq!(sendfile.len(), 1, "one sendfile gap; gaps: {all_gaps:#?}");
    assert_eq!(sendfile[0].0.bytes, sendfile_mark.len() as u64 + 1);
    assert_eq!(sendfile[0].1, "routes");
    assert!(
        sendfile[0]
            .0
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("/dev/pts/")),
        "the sendfile gap names the terminal: {:?}",
        sendfile[0].0.detail
    );
    assert!(!contains(&output, sendfile_mark.as_bytes()));

    // splice, directly and after vmsplice and tee: a gap each, with the bytes.
    let splice = gaps(&events, GapReason::SpliceToTerminal);
    let bytes: Vec<u64> = splice.iter().map(|(g, _)| g.bytes).collect();
    assert_eq!(
        bytes,
        [splice_mark.len() as u64 + 1, vmsplice_mark.len() as u64],
        "one splice gap per splice to the terminal; gaps: {all_gaps:#?}"
    );
    assert!(splice.iter().all(|(_, comm)| comm == "routes"));
    assert!(!contains(&output, splice_mark.as_bytes()));
    assert!(!contains(&output, vmsplice_mark.as_bytes()));

    // open_by_handle_at: captured as an open of the file; the failed one is a gap.
    let opens = opens(&events);
    let handle_opens: Vec<&&Open> = opens
        .iter()
        .filter(|o| o.syscall == "open_by_handle_at")
        .collect();
    assert_eq!(
        handle_opens.len(),
        1,
        "one successful open_by_handle_at is recorded as an open: {handle_opens:#?}"
    );
    assert_eq!(handle_opens[0].path.to_string(), by_handle);
    assert!(handle_opens[0].fd.is_some() && !handle_opens[0].path_incomplete);
    let by_handle_gaps = gaps(&events, GapReason::OpenByHandle);
    assert_eq!(by_handle_gaps.len(), 1, "gaps: {all_gaps:#?}");
    assert!(
        by_handle_gaps[0]
            .0
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("failed")),
        "{:?}",
        by_handle_gaps[0].0.detail
    );

    // io_uring: a gap per opcode, named; neither the open nor the write is captured.
    let uring = gaps(&events, GapReason::IoUring);
    let mut opcodes: Vec<String> = uring
        .iter()
        .map(|(g, _)| g.detail.clone().unwrap_or_default())
        .collect();
    opcodes.sort();
    assert_eq!(
        opcodes,
        ["IORING_OP_OPENAT", "IORING_OP_WRITE"],
        "gaps: {all_gaps:#?}"
    );
    assert!(
        uring
            .iter()
            .all(|(g, comm)| g.records == 1 && comm == "routes")
    );
    assert!(!opens.iter().any(|o| o.path.to_string() == by_uring));
    assert!(!contains(&output, format!("uring {by_uring}").as_bytes()));

    // A 32-bit program: its exec, then a gap naming it; its open and its output are missing.
    let ia32 = gaps(&events, GapReason::Syscalls32Bit);
    assert_eq!(ia32.len(), 1, "gaps: {all_gaps:#?}");
    assert_eq!(ia32[0].1, "routes32");
    assert!(
        ia32[0]
            .0
            .detail
            .as_deref()
            .is_some_and(|d| d.contains(&routes32)),
        "{:?}",
        ia32[0].0.detail
    );
    assert!(!opens.iter().any(|o| o.path.to_string() == by_ia32));
    assert!(!contains(&output, format!("ia32 {by_ia32}").as_bytes()));

    // Nothing else is a gap: routes the kernel refuses (pwrite64, pwritev, copy_file_range to a
    // terminal) leave none.
    assert_eq!(
        all_gaps.len(),
        sendfile.len() + splice.len() + by_handle_gaps.len() + uring.len() + ia32.len(),
        "no other gap: {all_gaps:#?}"
    );
}
