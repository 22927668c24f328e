//! README's first command, as a new user runs it: `cargo xtask run` in a clean clone reaches
//! "recording", the login session it suggests (`cargo xtask login`) is then listed by `custos
//! sessions` under its user and replays, Ctrl-C stops everything cleanly, and a second run picks
//! up the same data. The clone and its build live where only root can enter (as in /root, or a
//! `mktemp -d` folder), and the capture scenario of `cargo xtask vm-test` runs on this host from
//! that build.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use custos_proto::{AuditSessionId, BootId, api::SessionList};
use custos_tests::{daemon::Daemon, deployment::hostname, marker, terminal::Terminal, wait_until};

/// The clean clone's build directory (kept between runs: registry crates stay built), and the
/// folder the clone is made in. Only root may enter it, as /root on Debian.
const CLONE_HOME: &str = "target/clean-clone";

/// The release build of a fresh clone dominates.
const BUILD: Duration = Duration::from_secs(40 * 60);
const DELIVERY: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port_block() -> u16 {
    // Four consecutive ports, UDP and TCP, free now.
    (20000..60000)
        .step_by(97)
        .find(|base| {
            (0..4).all(|i| {
                std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                    && std::net::UdpSocket::bind(("127.0.0.1", base + i)).is_ok()
            })
        })
        .expect("four free ports")
}

/// `sh -c SCRIPT cargo ARGS...` in `clone`, with the clone's build directory.
fn cargo_in(clone: &Path, script: &str) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(script)
        .arg(cargo)
        .current_dir(clone)
        // Its own build directory: the suite's cargo holds the lock on the workspace's.
        .env("CARGO_TARGET_DIR", workspace_root().join(CLONE_HOME))
        .env_remove("CUSTOS_BIN_DIR");
    command
}

/// `cargo xtask run` in `clone`, its output (stdout and stderr) as the daemon's log.
fn xtask_run(clone: &Path, ports: u16) -> Daemon {
    let mut command = cargo_in(clone, "exec \"$0\" xtask run --ports \"$1\" 1>&2");
    command.arg(ports.to_string());
    let (daemon, _) = Daemon::spawn("cargo xtask run", command, false);
    daemon
}

/// The clean clone's release binaries.
fn release() -> PathBuf {
    workspace_root().join(CLONE_HOME).join("release")
}

fn custos(clone: &Path, args: &[&str]) -> std::process::Output {
    Command::new(release().join("custos"))
        .arg("--config")
        .arg(clone.join("custos-data/cli.toml"))
        .args(args)
        .output()
        .expect("running custos")
}

fn listed(clone: &Path, user: &str) -> Vec<custos_proto::api::SessionSummary> {
    let out = custos(clone, &["sessions", "--user", user, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<SessionList>(&out.stdout)
        .expect("JSON session list")
        .sessions
}

fn recording_id(session: AuditSessionId) -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    custos_collector::trust::chunk::RecordingKey {
        host: hostname(),
        boot_id: BootId(boot.trim().to_owned()),
        session,
    }
    .id()
}

#[test]
fn cargo_xtask_run_from_a_clean_clone_records_a_session_that_custos_lists_and_replays() {
    let home = workspace_root().join(CLONE_HOME);
    std::fs::create_dir_all(&home).expect("creating the clone's folder");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
        .expect("making the clone's folder root's alone");
    let dir = tempfile::tempdir_in(&home).expect("temp dir");
    let clone = dir.path().join("custos");
    let cloned = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(workspace_root())
        .arg(&clone)
        .status()
        .expect("git");
    assert!(cloned.success(), "git clone of the workspace");
    let ports = free_port_block();

    let mut run = xtask_run(&clone, ports);
    run.wait_log(&["run: recording"], BUILD);
    // What to do next follows, naming the CLI configuration it wrote.
    run.wait_log(&["custos-data/cli.toml sessions"], Duration::from_secs(10));

    // The session it suggests, opened as suggested: `cargo xtask login` in the clone.
    assert!(
        run.log_text().contains(
            "open a recorded session (another terminal, this folder): cargo xtask login "
        ),
        "cargo xtask run suggests cargo xtask login:\n{}",
        run.log_text()
    );
    let mut shell = Terminal::spawn(cargo_in(&clone, "exec \"$0\" xtask login"));
    // "login: session N, user NAME, terminal ...".
    let opened = shell.stderr_value("login: session ");
    let (session, user) = opened
        .split_once(", user ")
        .and_then(|(session, rest)| Some((session.parse().ok()?, rest.split(',').next()?)))
        .unwrap_or_else(|| panic!("cargo xtask login named its session and user: {opened}"));
    let session = AuditSessionId(session);
    let user = user.to_owned();
    assert!(
        run.log_text()
            .contains(&format!("(a login shell as {user};")),
        "the session is the suggested user's"
    );
    let mark = marker("RUN-");
    let (head, tail) = mark.split_at(4);
    shell.line(&format!("echo \"{head}\"\"{tail}\""));
    shell.expect(&format!("{mark}\r\n"));
    shell.line("exit 0");
    assert!(shell.wait_exit().success(), "{}", shell.stderr());
    let id = recording_id(session);
    wait_until("the session to be listed, sealed", DELIVERY, || {
        listed(&clone, &user)
            .iter()
            .any(|s| s.id == id && s.sealed)
            .then_some(())
    });
    let replay = custos(&clone, &["replay", &id, "--speed", "1000"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        String::from_utf8_lossy(&replay.stdout).contains(&mark),
        "the replay shows what the terminal showed"
    );

    // Ctrl-C: both daemons stop cleanly.
    run.signal(libc::SIGINT);
    let status = run.wait_exit(Duration::from_secs(120));
    assert!(
        status.success(),
        "cargo xtask run after Ctrl-C: {status}\n{}",
        run.log_text()
    );
    assert!(run.log_text().contains("run: stopped"));
    for daemon in ["custos-agent", "custos-collector"] {
        let left = Command::new("pgrep")
            .args(["-f", &format!("clean-clone/release/{daemon}")])
            .output()
            .expect("pgrep");
        assert!(
            left.stdout.is_empty(),
            "{daemon} still running after Ctrl-C"
        );
    }

    // A second run reuses the deployment: same CA, same recordings.
    let ca = std::fs::read(clone.join("custos-data/pki/ca.pem")).expect("CA");
    let mut again = xtask_run(&clone, ports);
    again.wait_log(&["run: recording"], BUILD);
    assert!(!again.log_text().contains("creating a development CA"));
    assert_eq!(
        std::fs::read(clone.join("custos-data/pki/ca.pem")).expect("CA"),
        ca
    );
    assert!(listed(&clone, &user).iter().any(|s| s.id == id));
    again.signal(libc::SIGINT);
    assert!(again.wait_exit(Duration::from_secs(120)).success());

    // The capture scenario on this host, as `cargo xtask vm-test` runs it, from the clone's
    // build: its login user runs programs of ours though it may not enter the clone's folder.
    let report = dir.path().join("host.report");
    let vmtest = |args: &[&std::ffi::OsStr], what: &str| {
        let out = Command::new(release().join("custos-vmtest"))
            .args(args)
            .env("CUSTOS_BIN_DIR", release())
            .output()
            .expect("running custos-vmtest");
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    vmtest(
        &["guest".as_ref(), "auto".as_ref(), report.as_os_str()],
        "the capture scenario from a folder only root may enter",
    );
    vmtest(
        &["judge".as_ref(), report.as_os_str()],
        "the capture scenario's report",
    );
}
