//! PHI at rest, end to end: with redaction off, a marker typed in a real session (as a command's
//! argument, so also in its output, its keystrokes and the index's command lines) is recorded,
//! and yet no file of the deployment holds it readably: not the collector's store (recordings,
//! the encrypted index and its write-ahead log, the audit database), not the agent's spool, not
//! the logs of either daemon, not the alerts (JSON log and syslog) of rules that fired on it.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    net::UdpSocket,
    path::{Path, PathBuf},
    time::Duration,
};

use custos_collector::store::Store;
use custos_proto::EventBody;
use custos_tests::{
    agent::Agent, contains, deployment::Deployment, free_udp_address, login_shell, marker, users,
    wait_until,
};

const DELIVERY: Duration = Duration::from_secs(60);
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nkeep_alive = \"1s\"\n";

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    files
}

/// The files under `dir` that hold `mark`, and every file looked at.
fn holding(dir: &Path, mark: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let files = files_under(dir);
    let found = files
        .iter()
        .filter(|path| std::fs::read(path).is_ok_and(|bytes| contains(&bytes, mark.as_bytes())))
        .cloned()
        .collect();
    (found, files)
}

#[test]
fn a_marker_typed_in_a_session_is_on_no_disk_in_the_clear() {
    users::ensure("custos-phi");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let alert_log = deployment.path("alerts.jsonl");
    let syslog = UdpSocket::bind("127.0.0.1:0").expect("a syslog socket");
    syslog
        .set_read_timeout(Some(DELIVERY))
        .expect("a read timeout");
    // Rules that fire on the marker in the command line and in the output; their alerts go to
    // the JSON log and syslog.
    let mut collector = deployment.start_collector_with(
        &listen,
        None,
        &format!(
            "[alerts]\njson_log = \"{}\"\nsyslog = \"udp:{}\"\n\
             [[alerts.rules]]\nname = \"phi-command\"\nkind = \"exec\"\nargv = \"PHI-\"\n\
             [[alerts.rules]]\nname = \"phi-output\"\nkind = \"output\"\ndata = \"PHI-\"\n",
            alert_log.display(),
            syslog.local_addr().expect("its address"),
        ),
    );
    // No [redaction] rules: nothing is redacted, the marker is recorded as typed.
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));

    let (mut shell, session) = login_shell("custos-phi");
    let mark = marker("PHI-");
    shell.line(&format!("/bin/echo {mark}"));
    shell.expect(&format!("{mark}\r\n"));
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);

    // Recorded: in the exec's argv, the terminal output, and the index's command line.
    let events = deployment.recording(session);
    assert!(
        events.iter().any(|e| matches!(&e.event,
            EventBody::Exec(exec) if exec.argv.iter().any(|a| a.to_string().contains(&mark)))),
        "the marker is in the recorded command line"
    );
    assert!(
        events.iter().any(|e| matches!(&e.event,
            EventBody::Output(out) if contains(out.data.as_bytes(), mark.as_bytes()))),
        "the marker is in the recorded output"
    );
    let id = deployment.recording_id(session);
    let detail = Store::open_read_only(&deployment.store_config())
        .expect("the store")
        .index()
        .detail(&id)
        .expect("the index")
        .expect("the session in the index");
    assert!(
        detail
            .commands
            .iter()
            .any(|c| c.argv.iter().any(|a| a.contains(&mark))),
        "the index holds the command line with the marker: {:?}",
        detail.commands
    );

    // The alerts: both rules fired, in both sinks, naming the field, not its value.
    let mut datagram = vec![0u8; 65536];
    let mut messages = Vec::new();
    while !["phi-command", "phi-output"]
        .iter()
        .all(|rule| messages.iter().any(|m: &String| m.contains(rule)))
    {
        let n = syslog.recv(&mut datagram).expect("the alerts over syslog");
        messages.push(String::from_utf8_lossy(&datagram[..n]).into_owned());
    }
    for message in &messages {
        assert!(!message.contains(&mark), "syslog: {message}");
        assert!(message.contains("redacted"), "syslog: {message}");
    }
    let logged = wait_until("both alerts in the JSON log", DELIVERY, || {
        let text = std::fs::read_to_string(&alert_log).ok()?;
        (text.contains("phi-command") && text.contains("phi-output")).then_some(text)
    });
    assert!(logged.contains("\"redacted\":true"), "{logged}");

    // Running (the index's last writes in its write-ahead log): no file holds it.
    let (found, files) = holding(deployment.dir.path(), &mark);
    assert!(found.is_empty(), "the marker in the clear in {found:?}");
    for expected in [
        "store/index.sqlite",
        "store/index.sqlite-wal",
        "store/audit.sqlite",
    ] {
        assert!(
            files.contains(&deployment.path(expected)),
            "{expected} looked at: {files:?}"
        );
    }
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "rec")),
        "the recording looked at: {files:?}"
    );

    // Stopped (logs complete, the index checkpointed): still nowhere, logs included.
    let stopped = agent.stop();
    assert!(
        stopped.success,
        "the agent stopped cleanly: {}",
        stopped.stderr
    );
    collector.daemon.signal(libc::SIGTERM);
    assert!(
        collector
            .daemon
            .wait_exit(Duration::from_secs(30))
            .success(),
        "the collector stopped cleanly"
    );
    let (found, _) = holding(deployment.dir.path(), &mark);
    assert!(found.is_empty(), "the marker in the clear in {found:?}");
    assert!(
        !stopped.stderr.contains(&mark),
        "the agent's log holds the marker"
    );
    assert!(
        !collector.daemon.log_text().contains(&mark),
        "the collector's log holds the marker"
    );
}
