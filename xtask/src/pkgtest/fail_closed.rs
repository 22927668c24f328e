//! The package test of failing closed (issue 19): in the Debian root, the packaged sshd's PAM
//! stack includes the packaged `/etc/pam.d/custos-agent-fail-closed` as README.md says, and a
//! real ssh login (from this host's ssh client to an sshd running in the root) is let in with
//! `fail_closed` off, refused with the user's message and a syslog line with it on while the
//! agent does not run, and let in once the packaged agent (run in the root with `--stdout`)
//! records. Loads the agent's eBPF programs: run under the kernel lock, like the e2e tests.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::net::UnixDatagram,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::Root;

const USER: &str = "custos-pkguser";
/// How long sshd, a login, a syslog line or the agent's start may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the scenario, reporting each step through `check`.
pub fn check_fail_closed(root: &Root, check: &mut dyn FnMut(bool, String)) -> anyhow::Result<()> {
    let included = root.sh(&format!(
        "useradd -m -s /bin/sh {USER} && mkdir -p /run/sshd && ssh-keygen -A >/dev/null && \
         rm -f /tmp/client_key /tmp/client_key.pub && ssh-keygen -q -t ed25519 -N '' -f /tmp/client_key && \
         install -d -o {USER} -m 700 /home/{USER}/.ssh && \
         install -o {USER} -m 600 /tmp/client_key.pub /home/{USER}/.ssh/authorized_keys && \
         sed -i '0,/^@include common-account/s//@include custos-agent-fail-closed\\n&/' /etc/pam.d/sshd && \
         grep -B1 -m1 '^@include common-account' /etc/pam.d/sshd | grep -qx '@include custos-agent-fail-closed'"
    ))?;
    check(
        included.ok,
        format!(
            "/etc/pam.d/sshd includes custos-agent-fail-closed before its account lines{}",
            included.why()
        ),
    );
    if !included.ok {
        return Ok(());
    }
    let syslog = Syslog::bind(root)?;
    let sshd = Sshd::start(root)?;

    // Off (the packaged default): the agent is not running, the login goes in.
    let (ran, said) = sshd.login(root)?;
    check(
        ran,
        format!("fail_closed off, agent not running: an ssh login goes in ({said})"),
    );

    let on = root.sh(
        "sed -i 's/^# fail_closed = false$/fail_closed = true/' /etc/custos/agent.toml && \
         grep -qx 'fail_closed = true' /etc/custos/agent.toml",
    )?;
    check(
        on.ok,
        format!("one line of agent.toml turns fail_closed on{}", on.why()),
    );
    let (ran, said) = sshd.login(root)?;
    check(
        !ran && said.contains("Login refused: this host records every login session")
            && said.contains("custos-agent is not running"),
        format!("fail_closed on, agent not running: the login is refused, saying why ({said})"),
    );
    let expected = format!(
        "custos-agent-pam-ready: refused the login of {USER} from 127.0.0.1 (sshd): custos-agent is not running"
    );
    let line = syslog.wait_for(&expected);
    check(
        line.is_some(),
        format!("the refusal is logged to syslog: {expected}... ({line:?})"),
    );

    // The packaged agent records: the login goes in.
    let mut agent = Agent::start(root)?;
    let ready = agent.wait_ready(root)?;
    check(
        ready.is_ok(),
        format!("the packaged agent starts and custos-agent status --ready says so ({ready:?})"),
    );
    if ready.is_ok() {
        let (ran, said) = sshd.login(root)?;
        check(
            ran,
            format!("fail_closed on, agent recording: an ssh login goes in ({said})"),
        );
    }
    drop(agent);
    drop(sshd);
    drop(syslog);
    Ok(())
}

/// sshd running in the root on a free loopback port.
struct Sshd {
    child: Child,
    port: u16,
}

impl Sshd {
    fn start(root: &Root) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = root
            .command("/usr/sbin/sshd")
            .args(["-D", "-e", "-p", &port.to_string()])
            .args(["-o", "ListenAddress=127.0.0.1", "-o", "PrintMotd=no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sshd in the root")?;
        let stderr = child.stderr.take().context("sshd's stderr")?;
        let (send, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server listening on") {
                    let _ = send.send(Ok(()));
                }
                said.push_str(&line);
                said.push('\n');
            }
            let _ = send.send(Err(said));
        });
        let sshd = Self { child, port };
        match listening.recv_timeout(TIMEOUT) {
            Ok(Ok(())) => Ok(sshd),
            Ok(Err(said)) => bail!("sshd in the root exited: {said}"),
            Err(_) => bail!("sshd in the root did not listen within {TIMEOUT:?}"),
        }
    }

    /// `ssh USER@127.0.0.1 echo MARK` from this host: whether the command ran, and what ssh
    /// printed (the PAM hook's message to the user among it).
    fn login(&self, root: &Root) -> anyhow::Result<(bool, String)> {
        let mark = format!("IN-{}", std::process::id());
        let out = Command::new("ssh")
            .args(["-T", "-F", "/dev/null", "-i"])
            .arg(root.path.join("tmp/client_key"))
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=20",
                "-o",
                "LogLevel=INFO",
                "-p",
                &self.port.to_string(),
                &format!("{USER}@127.0.0.1"),
                &format!("echo {mark}"),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running ssh")?;
        let ran = String::from_utf8_lossy(&out.stdout).contains(&mark) && out.status.success();
        let said = String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("Warning: Permanently added"))
            .collect::<Vec<_>>()
            .join(" | ");
        Ok((ran, said))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The root's `/dev/log`, received here.
struct Syslog {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Syslog {
    fn bind(root: &Root) -> anyhow::Result<Self> {
        let path = root.path.join("dev/log");
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        Ok(Self { socket, path })
    }

    /// The first line containing `expected`, within [`TIMEOUT`].
    fn wait_for(&self, expected: &str) -> Option<String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.socket.set_read_timeout(Some(left)).is_err() {
                return None;
            }
            let n = self.socket.recv(&mut buf).ok()?;
            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
            if line.contains(expected) {
                return Some(line);
            }
        }
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The packaged agent, run in the root as root with `--stdout` (no collector), with the
/// host's /sys (BTF, tracefs, bpffs) bound into the root; stopped and unbound on drop.
struct Agent {
    child: Child,
    sys: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(root: &Root) -> anyhow::Result<Self> {
        let sys = root.path.join("sys");
        crate::cmd::run(Command::new("mount").arg("--rbind").arg("/sys").arg(&sys))?;
        // Unmounting below the root later must not reach the host's /sys.
        crate::cmd::run(Command::new("mount").arg("--make-rslave").arg(&sys))?;
        let log = root.path.join("tmp/agent.log");
        let child = root
            .command("/usr/sbin/custos-agent")
            .args(["--config", "/etc/custos/agent.toml", "--stdout"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the agent's log")?)
            .spawn()
            .context("starting the packaged agent in the root")?;
        Ok(Self { child, sys, log })
    }

    /// Waits, bounded, for `custos-agent status --ready` to succeed in the root; the agent's
    /// log if it exits first or the time runs out.
    fn wait_ready(&mut self, root: &Root) -> anyhow::Result<Result<(), String>> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if root.sh("custos-agent status --ready")?.ok {
                return Ok(Ok(()));
            }
            let exited = self.child.try_wait()?;
            if exited.is_some() || Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Ok(Err(format!("not recording ({exited:?}): {log}")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
        let _ = Command::new("umount")
            .arg("-R")
            .arg("-l")
            .arg(&self.sys)
            .status();
    }
}
