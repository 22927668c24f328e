//! The monitors the application benchmark compares against the agent: the empty-program floor
//! (bpftrace with empty bodies on the agent's hooks), auditd with rules for the same events,
//! and the files tlog-rec-session needs. Each is a guard: dropping it detaches, stops and
//! deletes what it set up, so an error mid-benchmark leaves the machine as it was.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// The hooks the agent attaches with syscall tracepoints (agent/src/load/mod.rs): syscall exit
/// tracepoints for the terminal and open captures, BTF tracepoints on the scheduler. Debian's
/// bpftrace 0.17 has neither tp_btf nor working raw tracepoint probes: the scheduler hooks are
/// classic tracepoints here (the exec, fork and exit rate is low next to the syscalls').
pub const FLOOR_PROBES: &str = "tracepoint:syscalls:sys_exit_write,\
tracepoint:syscalls:sys_exit_writev,\
tracepoint:syscalls:sys_exit_open,\
tracepoint:syscalls:sys_exit_openat,\
tracepoint:syscalls:sys_exit_openat2,\
tracepoint:syscalls:sys_exit_creat,\
tracepoint:sched:sched_process_exec,\
tracepoint:sched:sched_process_fork,\
tracepoint:sched:sched_process_exit { }";

/// How many programs [`FLOOR_PROBES`] attaches.
pub const FLOOR_PROGRAMS: usize = 9;

/// The audit rule: the agent's exec and open events, for every user.
pub const AUDIT_RULE: [&str; 14] = [
    "-a",
    "always,exit",
    "-F",
    "arch=b64",
    "-S",
    "execve",
    "-S",
    "open",
    "-S",
    "openat",
    "-S",
    "openat2",
    "-S",
    "creat",
];

/// Largest audit log file in MB, and how many files auditd keeps (it rotates, deleting the
/// oldest): the disk holds at most their product however many opens the workloads make.
pub const AUDIT_LOG_MB: u32 = 64;
pub const AUDIT_LOGS: u32 = 4;

/// Debian's default /etc/audit/auditd.conf (auditd 3.0.9) but for the log file (in the
/// benchmark's scratch directory), its rotation bound and the plugin directory (an empty one:
/// Debian's plugins are all inactive). `{dir}` is replaced by that directory.
const AUDITD_CONF: &str = "\
local_events = yes
write_logs = yes
log_file = {dir}/audit.log
log_group = adm
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = {max_log_file}
num_logs = {num_logs}
priority_boost = 4
name_format = NONE
max_log_file_action = ROTATE
space_left = 75
space_left_action = SYSLOG
verify_email = yes
action_mail_acct = root
admin_space_left = 50
admin_space_left_action = SUSPEND
disk_full_action = SUSPEND
disk_error_action = SUSPEND
use_libwrap = yes
tcp_listen_queue = 5
tcp_max_per_addr = 1
tcp_client_max_idle = 0
transport = TCP
krb5_principal = auditd
distribute_network = no
q_depth = 2000
overflow_action = SYSLOG
max_restarts = 10
plugin_dir = {dir}/plugins.d
end_of_event_timeout = 2
";

/// A child process killed (SIGINT, then SIGKILL) when dropped.
struct Owned {
    child: Child,
    name: &'static str,
}

impl Owned {
    fn spawn(name: &'static str, command: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("duplicating a log descriptor")?)
            .stderr(file);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Outside any session (never recorded), and gone with xtask.
                crate::run::leave_login_session();
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", cmd::describe(command)))?;
        Ok(Self { child, name })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn stop(&mut self, signal: libc::c_int) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("bench: {} did not stop; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop(libc::SIGINT);
    }
}

/// Empty eBPF programs on the agent's hooks, attached by bpftrace while this lives.
pub struct Floor {
    _bpftrace: Owned,
}

impl Floor {
    pub fn attach(log: &Path) -> anyhow::Result<Self> {
        // bpftrace closes its program descriptors once attached (the perf events hold them),
        // so bpftool shows no owner: count the tracepoint programs that appear.
        let before = tracepoint_programs()?;
        let mut bpftrace = Owned::spawn(
            "bpftrace",
            Command::new("bpftrace").args(["-e", FLOOR_PROBES]),
            log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attached = tracepoint_programs()?
                .iter()
                .filter(|id| !before.contains(id))
                .count();
            if attached >= FLOOR_PROGRAMS {
                return Ok(Self {
                    _bpftrace: bpftrace,
                });
            }
            if let Some(status) = bpftrace.child.try_wait().ok().flatten() {
                bail!(
                    "bpftrace exited ({status}) before attaching: {}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bpftrace.stop(libc::SIGKILL);
                bail!("bpftrace attached {attached} of {FLOOR_PROGRAMS} programs within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Ids of the loaded eBPF programs of type tracepoint (bpftool prog show).
fn tracepoint_programs() -> anyhow::Result<Vec<u64>> {
    let json = cmd::output(Command::new("bpftool").args(["-j", "prog", "show"]))?;
    Ok(json
        .split("{\"id\":")
        .filter(|entry| entry.contains("\"type\":\"tracepoint\""))
        .filter_map(|entry| entry.split(',').next()?.trim().parse().ok())
        .collect())
}

/// auditd running with [`AUDIT_RULE`] and [`AUDITD_CONF`] while this lives; its directory
/// (configuration, audit logs, auditd's own output) is deleted afterwards.
pub struct Audit {
    auditd: Owned,
    dir: PathBuf,
    enabled: String,
    backlog_limit: String,
    lost_at_start: u64,
}

impl Audit {
    /// Starts auditd with its configuration and logs in `dir` (created, and emptied first).
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let status = audit_status()?;
        let field = |name: &str| -> anyhow::Result<String> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                .with_context(|| format!("auditctl -s has no {name}:\n{status}"))
        };
        if field("pid ")? != "0" {
            bail!(
                "an audit daemon is already running; the benchmark needs the audit system to itself"
            );
        }
        let enabled = field("enabled ")?;
        let backlog_limit = field("backlog_limit ")?;
        let _ = fs::remove_dir_all(dir);
        let plugins = dir.join("plugins.d");
        fs::create_dir_all(&plugins).with_context(|| format!("creating {}", plugins.display()))?;
        let conf = dir.join("auditd.conf");
        fs::write(
            &conf,
            AUDITD_CONF
                .replace("{dir}", &dir.display().to_string())
                .replace("{max_log_file}", &AUDIT_LOG_MB.to_string())
                .replace("{num_logs}", &AUDIT_LOGS.to_string()),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        // auditd refuses a configuration others may write.
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&conf, fs::Permissions::from_mode(0o640))
                .with_context(|| format!("setting the mode of {}", conf.display()))?;
        }
        let log = dir.join("auditd.out");
        // Foreground (-n): the guard owns the process; -c: this configuration.
        let auditd = Owned::spawn(
            "auditd",
            Command::new("auditd").arg("-n").arg("-c").arg(dir),
            &log,
        )?;
        let mut audit = Self {
            lost_at_start: 0,
            auditd,
            dir: dir.to_path_buf(),
            enabled,
            backlog_limit,
        };
        let pid = audit.auditd.pid().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        while audit_field("pid")? != pid {
            if Instant::now() > deadline {
                // The guard deletes the directory: quote auditd's output.
                bail!(
                    "auditd did not register with the kernel within 30 s: {}",
                    fs::read_to_string(&log).unwrap_or_default().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Debian's default rules file sets -b 8192 (the kernel's 64 drops under any load).
        auditctl(&["-D"])?;
        auditctl(&["-b", "8192"])?;
        auditctl(&AUDIT_RULE)?;
        auditctl(&["-e", "1"])?;
        audit.lost_at_start = audit_field("lost")?.parse().unwrap_or(0);
        Ok(audit)
    }

    /// Records the kernel lost since the start (backlog full).
    pub fn lost(&self) -> u64 {
        audit_field("lost")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |v| v.saturating_sub(self.lost_at_start))
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        for args in [
            vec!["-D"],
            vec!["-e", self.enabled.as_str()],
            vec!["-b", self.backlog_limit.as_str()],
        ] {
            if let Err(err) = auditctl(&args) {
                eprintln!("bench: restoring the audit settings: {err:#}");
            }
        }
        self.auditd.stop(libc::SIGTERM);
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            eprintln!("bench: removing {}: {err}", self.dir.display());
        }
    }
}

/// While this lives, new processes get no audit context (`auditctl -a never,task`). Once audit
/// has been enabled in this boot (the auditd configuration, or anything before the bench), the
/// kernel gives every new process one even with no rules, and each of its syscalls then takes
/// the audit slow path: without this the other configurations would pay part of auditd's cost.
pub struct NoAuditContexts;

impl NoAuditContexts {
    pub fn install() -> anyhow::Result<Self> {
        auditctl(&NO_AUDIT_CONTEXTS)?;
        Ok(Self)
    }
}

const NO_AUDIT_CONTEXTS: [&str; 2] = ["-a", "never,task"];

impl Drop for NoAuditContexts {
    fn drop(&mut self) {
        if let Err(err) = auditctl(&["-d", NO_AUDIT_CONTEXTS[1]]) {
            eprintln!("bench: removing the audit rule never,task: {err:#}");
        }
    }
}

fn auditctl(args: &[&str]) -> anyhow::Result<()> {
    cmd::output(Command::new("auditctl").args(args)).map(drop)
}

fn audit_status() -> anyhow::Result<String> {
    cmd::output(Command::new("auditctl").arg("-s"))
}

fn audit_field(name: &str) -> anyhow::Result<String> {
    let status = audit_status()?;
    status
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == name).then(|| value.trim().to_owned())
        })
        .with_context(|| format!("auditctl -s has no {name}"))
}

/// What tlog-rec-session needs here: a utmp file (it refuses to record without one; this
/// container has none) and a configuration writing to a file. Deletes what it created.
pub struct Tlog {
    created_utmp: bool,
    pub log: PathBuf,
}

impl Tlog {
    pub const UTMP: &str = "/run/utmp";

    pub fn prepare(log: PathBuf) -> anyhow::Result<Self> {
        let created_utmp = !Path::new(Self::UTMP).exists();
        if created_utmp {
            fs::write(Self::UTMP, b"").with_context(|| format!("creating {}", Self::UTMP))?;
        }
        Ok(Self { created_utmp, log })
    }

    /// The configuration, for TLOG_REC_SESSION_CONF_TEXT.
    pub fn config(&self) -> String {
        format!(
            "{{\"shell\":\"/bin/sh\",\"notice\":\"\",\"writer\":\"file\",\
             \"file\":{{\"path\":\"{}\"}},\"limit\":{{\"action\":\"pass\"}}}}",
            self.log.display()
        )
    }

    /// Deletes the recording (the flood makes it hundreds of MB).
    pub fn clear(&self) {
        let _ = fs::remove_file(&self.log);
    }
}

impl Drop for Tlog {
    fn drop(&mut self) {
        self.clear();
        if self.created_utmp {
            let _ = fs::remove_file(Self::UTMP);
        }
    }
}
