//! Failing closed (`[agent] fail_closed`, issue 19): with the package's PAM account hook
//! (packaging/scripts/custos-agent-pam-ready) in a real sshd's PAM stack, an ssh login is
//! refused, with a message to the user and a syslog line, while the agent does not record (never
//! started, stopped, killed) and allowed once it records again; with the mode off, logins go in
//! while the agent is stopped.
#![allow(unused_crate_dependencies)]
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use custos_tests::{agent::Agent, bin, marker, sshd::Sshd, syslog::Syslog, users};

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
            "account requisite pam_exec.so quiet stdout {hook} --config {config}",
            hook = hook.display(),
            config = dir.path().join("agent.toml").display(),
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

    fn assert_allowed(&mut self, when: &str) {
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
