//! A real OpenSSH server (Debian's openssh-server) on a loopback port, with PAM on, so that
//! pam_loginuid starts an audit session for each login as on any Debian server.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{bin, terminal::Terminal};

pub struct Sshd {
    /// Kept for its stderr and so that dropping the fixture stops the server.
    _server: Terminal,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl Sshd {
    /// Starts sshd; every user may log in with the fixture's key.
    pub fn start() -> Sshd {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        for (key, kind) in [("host_key", "ed25519"), ("client_key", "ed25519")] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-f"])
                .arg(path(key))
                .status()
                .expect("running ssh-keygen");
            assert!(status.success(), "ssh-keygen failed");
        }
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {host_key}\n\
             PidFile {pid}\n\
             AuthorizedKeysFile {authorized}\n\
             StrictModes no\n\
             UsePAM yes\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PermitRootLogin no\n\
             PrintMotd no\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n\
             LogLevel INFO\n",
            host_key = path("host_key").display(),
            pid = path("sshd.pid").display(),
            authorized = path("authorized_keys").display(),
        );
        std::fs::write(path("sshd_config"), config).expect("writing sshd_config");
        // Privilege separation directory, as the Debian package's unit creates it.
        std::fs::create_dir_all("/run/sshd").expect("creating /run/sshd");
        let mut command = Command::new(bin("custos-testkit"));
        command
            .args(["no-session", "--", "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(path("sshd_config"));
        let server = Terminal::spawn(command);
        server.stderr_value("Server listening on");
        Sshd {
            _server: server,
            dir,
            port,
        }
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// `ssh -tt user@127.0.0.1`: a remote terminal even though our side is a pipe.
    pub fn login(&self, user: &str) -> Command {
        let mut command = self.client("ssh", "-p");
        command.arg("-tt").arg(format!("{user}@127.0.0.1"));
        command
    }

    /// `ssh -T user@127.0.0.1 COMMAND`: a command without a terminal, as scripts run them.
    pub fn run(&self, user: &str, remote_command: &str) -> Command {
        let mut command = self.client("ssh", "-p");
        command
            .arg("-T")
            .arg(format!("{user}@127.0.0.1"))
            .arg(remote_command);
        command
    }

    /// `scp LOCAL user@127.0.0.1:REMOTE`: an upload (over SFTP, scp's default).
    pub fn scp(&self, local: &Path, user: &str, remote: &str) -> Command {
        let mut command = self.client("scp", "-P");
        command.arg(local).arg(format!("{user}@127.0.0.1:{remote}"));
        command
    }

    /// `program` (ssh or scp) with the fixture's key, no host key checks, this server's port
    /// (given with `port_flag`).
    fn client(&self, program: &str, port_flag: &str) -> Command {
        let mut command = Command::new(program);
        command
            .args(["-F", "/dev/null", "-i"])
            .arg(self.client_key())
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                port_flag,
            ])
            .arg(self.port.to_string());
        command
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}
