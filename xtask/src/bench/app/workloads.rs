//! The workloads of the application benchmark (issue 7, items 1-5): their sizes, the files
//! they need, and the command that runs one inside or outside a login session, plainly or with
//! tlog-rec-session as the shell.
use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd;

/// Runs of /bin/true in the exec loop (the 20,000).
pub const EXEC_LOOP: u64 = 20_000;
/// Opens and closes in the open loop (the 1,000,000; under auditd each open writes
/// about 1 KB of log, which the bench's auditd.conf rotates within a bound).
pub const OPEN_LOOP: u64 = 1_000_000;
/// Bytes written to the pty in the terminal flood.
pub const FLOOD_BYTES: u64 = 200 * 1024 * 1024;
/// Small writes to /dev/null, and getppid calls.
pub const SYSCALL_LOOP: u64 = 1_000_000;
/// Files in the tree the admin session tars and untars.
pub const TREE_FILES: usize = 3_000;
/// Times the admin script runs in one timed run: one pass takes about a second here, too short
/// to tell a few percent from the run-to-run noise.
pub const ADMIN_PASSES: u32 = 3;
/// What the admin session searches with `grep -r` (the issue's /usr/share).
pub const GREP_TREE: &str = "/usr/share";
/// Where the files the shell workloads read and write live: a tmpfs (the flood's source, and
/// the admin session's tree, tarball and untarred copy). On this machine's shared virtual disk
/// each file created costs about 0.4 ms, varying several-fold from run to run, and the page
/// cache does not keep a 200 MiB file whole between runs (cat of the flood source read part of
/// it from disk, more so while the agent and collector were writing), so with these files on
/// disk the times were partly the disk's mood, not the work of the commands (or of whatever
/// watches them).
const SCRATCH: &str = "/dev/shm/custos-bench";
/// The login uid of recorded runs (root's).
pub const SESSION_UID: u32 = 0;
/// The environment every workload gets, nothing else: what a root login shell has. Not
/// cargo's: its LD_LIBRARY_PATH (target/*/deps, the toolchain's lib) sends the dynamic loader
/// through dozens of missing directories per exec, each a failed open the agent records.
pub const LOGIN_ENV: [(&str, &str); 7] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
    ("LOGNAME", "root"),
    ("SHELL", "/bin/sh"),
    ("LANG", "C.UTF-8"),
    ("TERM", "xterm-256color"),
];

/// A command for `program` with [`LOGIN_ENV`] as its whole environment.
pub fn login_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env_clear().envs(LOGIN_ENV);
    command
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    ExecLoop,
    OpenLoop,
    Flood,
    Admin,
    WriteLoop,
    GetppidLoop,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::ExecLoop,
        Kind::OpenLoop,
        Kind::Flood,
        Kind::Admin,
        Kind::WriteLoop,
        Kind::GetppidLoop,
    ];

    pub fn title(self) -> String {
        match self {
            Kind::ExecLoop => format!("exec loop ({EXEC_LOOP} x /bin/true from sh)"),
            Kind::OpenLoop => format!("open loop ({OPEN_LOOP} open+close)"),
            Kind::Flood => format!("terminal flood ({} MiB through a pty)", FLOOD_BYTES >> 20),
            Kind::Admin => format!(
                "admin session ({ADMIN_PASSES} x git status, grep -r {GREP_TREE}, tar+untar \
                 {TREE_FILES} files)"
            ),
            Kind::WriteLoop => format!("write loop ({SYSCALL_LOOP} x 64 B to /dev/null)"),
            Kind::GetppidLoop => format!("getppid loop ({SYSCALL_LOOP} calls)"),
        }
    }

    /// Whether it runs outside a session too (the flood runs inside only).
    pub fn outside_too(self) -> bool {
        self != Kind::Flood
    }

    /// A shell workload on a terminal, the kind tlog records.
    pub fn is_shell(self) -> bool {
        matches!(self, Kind::ExecLoop | Kind::Flood | Kind::Admin)
    }

    /// A syscall-heavy loop, compared with the empty-program floor outside a session.
    pub fn is_syscall_loop(self) -> bool {
        matches!(self, Kind::OpenLoop | Kind::WriteLoop | Kind::GetppidLoop)
    }
}

/// The files the workloads use, under one scratch directory (the shell workloads' files under
/// [`SCRATCH`], removed on drop).
pub struct Fixtures {
    /// [`SCRATCH`].
    shm_dir: PathBuf,
    workload: PathBuf,
    open_target: PathBuf,
    flood_file: PathBuf,
    admin_script: PathBuf,
}

impl Fixtures {
    pub fn create(dir: &Path, bin: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let open_target = dir.join("open-target");
        fs::write(&open_target, b"custos\n")
            .with_context(|| format!("writing {}", open_target.display()))?;

        let shm_dir = PathBuf::from(SCRATCH);
        if shm_dir.exists() {
            fs::remove_dir_all(&shm_dir)
                .with_context(|| format!("emptying {}", shm_dir.display()))?;
        }
        fs::create_dir_all(&shm_dir).with_context(|| format!("creating {}", shm_dir.display()))?;
        let flood_file = shm_dir.join("flood");
        let line = b"custos bench terminal flood: 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
        let chunk: Vec<u8> = line.iter().copied().cycle().take(1 << 20).collect();
        let mut flood = Vec::with_capacity(FLOOD_BYTES as usize);
        while (flood.len() as u64) < FLOOD_BYTES {
            flood.extend_from_slice(&chunk);
        }
        fs::write(&flood_file, &flood)
            .with_context(|| format!("writing {}", flood_file.display()))?;

        let tree = shm_dir.join("tree");
        for i in 0..TREE_FILES {
            let sub = tree.join(format!("d{:02}", i % 50));
            fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
            fs::write(
                sub.join(format!("f{i}.txt")),
                format!("file {i}\n").repeat(20),
            )
            .with_context(|| format!("writing under {}", sub.display()))?;
        }

        let repo = dir.join("repo");
        fs::create_dir_all(repo.join("src")).context("creating the git repository")?;
        for i in 0..200 {
            fs::write(
                repo.join("src").join(format!("m{i}.rs")),
                format!("// {i}\n"),
            )
            .context("writing the git repository")?;
        }
        let git = |args: &[&str]| {
            cmd::output(
                Command::new("git")
                    .arg("-C")
                    .arg(&repo)
                    .args(["-c", "user.name=bench", "-c", "user.email=bench@localhost"])
                    .args(args),
            )
        };
        if !repo.join(".git").exists() {
            git(&["init", "-q"])?;
            git(&["add", "."])?;
            git(&["commit", "-q", "-m", "bench"])?;
        }
        fs::write(repo.join("src/m0.rs"), "// changed\n").context("changing the repository")?;

        let admin_script = dir.join("admin.sh");
        let mut script = String::from("set -e\n");
        let d = shm_dir.display();
        let _ = writeln!(script, "cd {}", repo.display());
        script.push_str("git status\ngit log --oneline | head -n 5\ngit diff --stat\n");
        let _ = writeln!(script, "grep -r -l -i copyright {GREP_TREE} | wc -l");
        let _ = writeln!(script, "tar -C {d}/tree -cf {d}/tree.tar .");
        let _ = writeln!(script, "rm -rf {d}/untar && mkdir {d}/untar");
        let _ = writeln!(script, "tar -C {d}/untar -xf {d}/tree.tar");
        let _ = writeln!(script, "ls -l {d}/untar | head -n 20");
        fs::write(&admin_script, script)
            .with_context(|| format!("writing {}", admin_script.display()))?;
        // One untimed pass, so that every timed run finds the files it reads in the page cache
        // (a first grep over /usr/share reads hundreds of MB from disk).
        cmd::output(login_command("sh").arg(&admin_script))
            .context("warming up the admin session")?;

        Ok(Self {
            shm_dir,
            workload: bin.join("custos-bench-workload"),
            open_target,
            flood_file,
            admin_script,
        })
    }

    /// The command running `kind`, in the [`LOGIN_ENV`] environment; `tlog` is the tlog
    /// configuration when tlog-rec-session is the shell.
    pub fn command(&self, kind: Kind, in_session: bool, tlog: Option<&str>) -> Command {
        let mut command = login_command(&self.workload);
        if in_session {
            command.args(["--login-uid", &SESSION_UID.to_string()]);
        } else {
            command.arg("--no-session");
        }
        let shell_line = match kind {
            Kind::ExecLoop => Some(format!(
                "i=0; while [ $i -lt {EXEC_LOOP} ]; do /bin/true; i=$((i+1)); done"
            )),
            Kind::Flood => Some(format!("cat {}", self.flood_file.display())),
            Kind::Admin => Some(format!(
                "i=0; while [ $i -lt {ADMIN_PASSES} ]; do sh {}; i=$((i+1)); done",
                self.admin_script.display()
            )),
            _ => None,
        };
        if let Some(line) = shell_line {
            command.args(["pty", "--"]);
            match tlog {
                Some(config) => {
                    command
                        .args(["tlog-rec-session", "-c", &line])
                        .env("TLOG_REC_SESSION_CONF_TEXT", config);
                }
                None => {
                    command.args(["sh", "-c", &line]);
                }
            }
            return command;
        }
        match kind {
            Kind::OpenLoop => {
                command
                    .args(["open-loop", "--count", &OPEN_LOOP.to_string(), "--path"])
                    .arg(&self.open_target);
            }
            Kind::WriteLoop => {
                command.args(["write-loop", "--count", &SYSCALL_LOOP.to_string()]);
            }
            _ => {
                command.args(["getppid-loop", "--count", &SYSCALL_LOOP.to_string()]);
            }
        }
        command
    }

    /// Frees the large files (the flood source, the admin session's tree).
    pub fn remove_large(&self) {
        let _ = fs::remove_dir_all(&self.shm_dir);
    }
}

impl Drop for Fixtures {
    fn drop(&mut self) {
        // The tmpfs holds memory until the files go; the rest waits for the next run's emptying.
        let _ = fs::remove_dir_all(&self.shm_dir);
    }
}
