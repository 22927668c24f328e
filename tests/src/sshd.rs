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
    /// The fixture's own PAM service file in /etc/pam.d, removed on drop.
    pam_service: Option<PathBuf>,
}

impl Sshd {
    /// Starts sshd; every user may log in with the fixture's key.
    pub fn start() -> Sshd {
        Self::launch(None)
    }

    /// Starts sshd with its own PAM service: Debian's `/etc/pam.d/sshd` with `line` before its
    /// first account line. OpenSSH 9.2 names its PAM service after the program, so this sshd
    /// runs through a link named after the service.
    pub fn start_with_account_line(line: &str) -> Sshd {
        let debian = std::fs::read_to_string("/etc/pam.d/sshd").expect("reading /etc/pam.d/sshd");
        let mut lines: Vec<&str> = debian.lines().collect();
        let first_account = lines
            .iter()
            .position(|l| {
                let l = l.trim_start();
                l.starts_with("account") || l.starts_with("@include common-account")
            })
            .expect("an account line in /etc/pam.d/sshd");
        lines.insert(first_account, line);
        let service = format!("custos-test-sshd-{}", std::process::id());
        let pam_file = Path::new("/etc/pam.d").join(&service);
        std::fs::write(&pam_file, lines.join("\n") + "\n").expect("writing the PAM service");
        Self::launch(Some(pam_file))
    }

    /// The PAM service name of this server (`sshd` unless started with its own).
    pub fn pam_service(&self) -> String {
        self.pam_service
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or_else(|| "sshd".into(), |n| n.to_string_lossy().into_owned())
    }

    fn launch(pam_service: Option<PathBuf>) -> Sshd {
        let dir = tempfile::tempdir().expect("temp dir");
        // sshd re-executes itself by this path for every connection.
        let program = match pam_service.as_deref().and_then(Path::file_name) {
            Some(service) => {
                let link = dir.path().join(service);
                std::os::unix::fs::symlink("/usr/sbin/sshd", &link).expect("linking sshd");
                link
            }
            None => PathBuf::from("/usr/sbin/sshd"),
        };
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
            .args(["no-session", "--"])
            .arg(&program)
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"));
        let server = Terminal::spawn(command);
        server.stderr_value("Server listening on");
        Sshd {
            _server: server,
            dir,
            port,
            pam_service,
        }
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// `ssh -tt user@127.0.0.1`: a remote terminal even though our side is a pipe.
    pub fn login(&self, user: &str) -> Command {
        self.tty_login(user, "ERROR")
    }

    /// As [`Sshd::login`], with what the server sends before the session (banners, the
    /// messages of PAM modules refusing the login) shown on ssh's stderr.
    pub fn login_showing_messages(&self, user: &str) -> Command {
        self.tty_login(user, "INFO")
    }

    fn tty_login(&self, user: &str, log_level: &str) -> Command {
        let mut command = self.client("ssh", "-p", log_level);
        command.arg("-tt").arg(format!("{user}@127.0.0.1"));
        command
    }

    /// `ssh -T user@127.0.0.1 COMMAND`: a command without a terminal, as scripts run them.
    pub fn run(&self, user: &str, remote_command: &str) -> Command {
        let mut command = self.client("ssh", "-p", "ERROR");
        command
            .arg("-T")
            .arg(format!("{user}@127.0.0.1"))
            .arg(remote_command);
        command
    }

    /// `scp LOCAL user@127.0.0.1:REMOTE`: an upload (over SFTP, scp's default).
    pub fn scp(&self, local: &Path, user: &str, remote: &str) -> Command {
        let mut command = self.client("scp", "-P", "ERROR");
        command.arg(local).arg(format!("{user}@127.0.0.1:{remote}"));
        command
    }

    /// `program` (ssh or scp) with the fixture's key, no host key checks, ssh's `log_level`,
    /// this server's port (given with `port_flag`).
    fn client(&self, program: &str, port_flag: &str, log_level: &str) -> Command {
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
                &format!("LogLevel={log_level}"),
                "-o",
                "BatchMode=yes",
                port_flag,
            ])
            .arg(self.port.to_string());
        command
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(path) = &self.pam_service {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("local address").port()
}
