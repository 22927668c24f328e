//! Failing closed (`[agent] fail_closed`, issue 19): with the package's PAM account hook
//! (packaging/scripts/custos-agent-pam-ready) in a real sshd's PAM stack, an ssh login is
//! refused, with a message to the user and a syslog line, while the agent does not record (never
//! started, stopped, killed) and allowed once it records again; with the mode off, logins go in
//! while the agent is stopped. A session already open when the agent stops has a gap in its
//! recording.
#![allow(unused_crate_dependencies)]
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use custos_proto::{
    EventBody,
    event::{Gap, GapReason},
};
use custos_tests::{
    agent::Agent, bin, contains, deployment::Deployment, free_udp_address, login_shell, marker,
    sshd::Sshd, syslog::Syslog, users,
};

const USER: &str = "custos-fiona";
/// The hook's syslog tag.
const TAG: &str = "custos-agent-pam-ready";

/// The package's hook, calling the agent under test instead of /usr/sbin/custos-agent.
fn install_hook(dir: &Path) -> PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/scripts/custos-agent-pam-ready"),
    )
    .expect("the package's PAM hook");
    assert!(shipped.contains("\nagent=/usr/sbin/custos-agent\n"));
    let hook = dir.join("custos-agent-pam-ready");
    std::fs::write(
        &hook,
        shipped.replace(
            "\nagent=/usr/sbin/custos-agent\n",
            &format!("\nagent={}\n", bin("custos-agent").display()),
        ),
    )
    .expect("writing the hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    hook
}

/// Where the package installs the hook.
const SHIPPED_HOOK: &str = "/usr/lib/custos/custos-agent-pam-ready";

/// The account line of the package's PAM snippet (/etc/pam.d/custos-agent-fail-closed).
fn shipped_pam_line() -> String {
    let snippet = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/pam/custos-agent-fail-closed"),
    )
    .expect("the package's PAM snippet");
    let lines: Vec<&str> = snippet
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one PAM line in the snippet: {lines:?}");
    assert!(lines[0].ends_with(SHIPPED_HOOK), "{}", lines[0]);
    lines[0].to_owned()
}

/// A folder with the agent's configuration (for the agent and the hook alike) and the hook,
/// an sshd whose account stack runs the hook as the package documents it, and what is sent to
/// syslog.
struct Setup {
    dir: tempfile::TempDir,
    config: String,
    sshd: Sshd,
    syslog: Syslog,
}

impl Setup {
    fn new(fail_closed: bool) -> Setup {
        users::ensure(USER);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[agent]\nfail_closed = {fail_closed}\nstatus_file = \"{}\"\n",
            dir.path().join("status.json").display()
        );
        std::fs::write(dir.path().join("agent.toml"), &config).expect("writing the config");
        let hook = install_hook(dir.path());
        let syslog = Syslog::capture(TAG);
        let sshd = Sshd::start_with_account_line(&format!(
            "{} --config {}",
            shipped_pam_line().replace(SHIPPED_HOOK, &hook.display().to_string()),
            dir.path().join("agent.toml").display(),
        ));
        Setup {
            dir,
            config,
            sshd,
            syslog,
        }
    }

    /// `ssh USER echo MARK`: whether the command ran, and what ssh printed.
    fn login(&self) -> (bool, String) {
        let mark = marker("IN-");
        let Output {
            status,
            stdout,
            stderr,
        } = self
            .sshd
            .login_showing_messages(USER)
            .args(["-o", "ConnectTimeout=20", &format!("echo {mark}")])
            .output()
            .expect("running ssh");
        let stdout = String::from_utf8_lossy(&stdout);
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let ran = stdout.contains(&mark);
        assert_eq!(
            ran,
            status.success(),
            "ssh exit {status} and its output disagree: {stdout} {stderr}"
        );
        (ran, stderr)
    }

    fn assert_allowed(&self, when: &str) {
        let (ran, stderr) = self.login();
        assert!(ran, "{when}: the login was refused: {stderr}");
    }

    /// Refused, telling the user why (`reason`), with the hook's log line.
    fn assert_refused(&mut self, when: &str, reason: &str) {
        let (ran, stderr) = self.login();
        assert!(!ran, "{when}: the login went in");
        assert!(
            stderr.contains("Login refused: this host records every login session")
                && stderr.contains(reason),
            "{when}: the user is told why ({reason}): {stderr}"
        );
        // The log line is for the administrators, not the user.
        assert!(!stderr.contains("refused the login of"), "{when}: {stderr}");
        let expected = format!(
            "{TAG}: refused the login of {USER} from 127.0.0.1 ({}): ",
            self.sshd.pam_service()
        );
        let line = self.syslog.wait_for(
            &format!("{expected:?}...{reason:?}"),
            Duration::from_secs(20),
            |line| line.contains(&expected) && line.contains(reason),
        );
        // authpriv.warning (10 * 8 + 4) where the line is raw syslog.
        assert!(
            !line.starts_with('<') || line.starts_with("<84>"),
            "{when}: logged as authpriv.warning: {line}"
        );
    }

    /// `custos-agent status --ready`: its exit status and stderr.
    fn status(&self) -> (bool, String) {
        let out = Command::new(bin("custos-agent"))
            .args(["status", "--ready", "--config"])
            .arg(self.dir.path().join("agent.toml"))
            .output()
            .expect("running custos-agent status");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn fail_closed_refuses_logins_while_the_agent_does_not_record() {
    let mut setup = Setup::new(true);
    let (ready, why) = setup.status();
    assert!(!ready && why.trim().lines().count() == 1, "{why}");
    assert!(why.contains("not running (no status file"), "{why}");
    setup.assert_refused("never started", "custos-agent is not running");

    let agent = Agent::start(&setup.config);
    assert_eq!(setup.status(), (true, String::new()), "recording: ready");
    setup.assert_allowed("recording");

    // Stopped as systemd stops it: the status file goes before the programs detach.
    let stopped = agent.stop();
    assert!(stopped.success, "{}", stopped.stderr);
    setup.assert_refused("stopped", "custos-agent is not running (no status file");

    // Killed: the file stays, its pid is gone.
    let mut agent = Agent::start(&setup.config);
    setup.assert_allowed("recording again");
    agent.daemon.kill();
    setup.assert_refused("killed", "is gone");

    let agent = Agent::start(&setup.config);
    setup.assert_allowed("recording once more");
    drop(agent);
}

#[test]
fn with_fail_closed_off_logins_go_in_while_the_agent_is_stopped() {
    let mut setup = Setup::new(false);
    // The agent does not record, and says so...
    let (ready, why) = setup.status();
    assert!(!ready && why.contains("not running"), "{why}");
    // ...but the hook lets the login in, and logs nothing.
    setup.assert_allowed("never started, fail_closed off");
    let logged = setup.syslog.until_now(TAG);
    assert!(
        !logged.iter().any(|line| line.contains("refused")),
        "{logged:#?}"
    );
}

/// Fast batches, so that the recording arrives soon.
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nshutdown_grace = \"10s\"\n";

/// A session already open when the agent stops (as systemd stops it) goes on, unrecorded: the
/// hook only decides at login. When the agent records again, the session's recording has a
/// gap (`agent_not_running`) for the time it was down, then continues in the same numbering.
#[test]
fn a_session_open_while_the_agent_is_stopped_has_a_gap_in_its_recording() {
    users::ensure(USER);
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    let config = deployment.agent_config(&listen, SHIPPING);
    let agent = Agent::start_shipping(&config);
    let (mut shell, session) = login_shell(USER);
    let say = |shell: &mut custos_tests::terminal::Terminal, what: &str| {
        let (head, tail) = what.split_at(4);
        shell.line(&format!("echo \"{head}\"\"{tail}\""));
        shell.expect(&format!("{what}\r\n"));
        shell.expect("custos$ ");
    };
    say(&mut shell, "before-stop");
    let stopped = agent.stop();
    assert!(stopped.success, "{}", stopped.stderr);
    say(&mut shell, "while-stopped");
    let agent = Agent::start_shipping(&config);
    say(&mut shell, "after-restart");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, Duration::from_secs(120));
    let stopped = agent.stop();
    assert!(stopped.success, "{}", stopped.stderr);
    drop(collector);

    let events = deployment.recording(session);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "one numbering through the stop: {seqs:?}"
    );
    let position = |what: &[u8]| {
        events.iter().position(|e| {
            let refs = [e];
            contains(&custos_tests::agent::terminal_bytes(&refs, false), what)
        })
    };
    let gaps: Vec<(usize, &Gap)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.event {
            EventBody::Gap(g) if g.reason == GapReason::AgentNotRunning => Some((i, g)),
            _ => None,
        })
        .collect();
    assert_eq!(gaps.len(), 1, "one gap for the stop: {gaps:?}");
    let (at, gap) = gaps[0];
    assert!(gap.from <= gap.to, "{gap:?}");
    let before = position(b"before-stop").expect("the output before the stop is recorded");
    let after = position(b"after-restart").expect("the output after the restart is recorded");
    assert!(
        before < at && at < after,
        "the gap lies between: {before} {at} {after}"
    );
    assert_eq!(
        position(b"while-stopped"),
        None,
        "what the session did while the agent was stopped is not recorded"
    );
}
