//! `custos-vmtest bench RUNS RESULTS`: what the agent's hooks cost the calls they hook and the
//! calls they do not, inside one VM boot (`cargo xtask bench --only vmcost` reads the report).
//!
//! Three configurations share the boot: no agent, the agent on the tracepoint backend, the
//! agent on the fentry backend. Each of the RUNS rounds starts every configuration in turn (the
//! order rotates from round to round, so none always goes first) and times, in a fresh worker
//! process (`bench-loop`), a loop of N calls of each workload, inside a login session (the worker
//! writes a uid to /proc/self/loginuid, as pam_loginuid does) and outside one. N is calibrated
//! once, without an agent, so that a loop takes about [`LOOP_TARGET`]; one untimed pass of every
//! loop follows, so no round's baseline runs cold.
//!
//! The VM has one CPU, so the agent's own work during a loop slows the loop down and is in the
//! caller's time. What the agent still has to do after the loop (events left in its ring buffer)
//! is measured too, as its CPU time from the loop's end until it is idle again.
//!
//! The report is plain text, one fact per line (the host's xtask has no JSON parser):
//!
//! ```text
//! kernel 6.12.57+deb12-amd64
//! calls WORKLOAD N
//! backends CONFIG TERMINAL OPENS
//! sample ROUND CONFIG WORKLOAD WHERE NS_PER_CALL AGENT_AFTER_NS_PER_CALL
//! error MESSAGE
//! CUSTOS-VMTEST-END
//! ```
use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The configurations, as the report names them; `none` runs no agent.
pub const CONFIGS: [&str; 3] = ["none", "tracepoint", "fentry"];

/// What a worker loops over.
pub const WORKLOADS: [&str; 4] = ["write", "open", "exec", "getppid"];

/// Where the worker runs: inside a login session, or outside any.
pub const WHERES: [&str; 2] = ["in", "out"];

/// About how long one timed loop takes without an agent.
const LOOP_TARGET: Duration = Duration::from_millis(250);

/// The login uid a worker inside a session takes (custos-alice in the VM's /etc/passwd).
const SESSION_UID: u32 = 1000;

/// How long the agent may take to start recording.
const AGENT_START: Duration = Duration::from_secs(120);

/// `bench RUNS RESULTS`: every configuration, RUNS rounds; the report goes to `out` as it is
/// measured, so a failure keeps what came before it.
pub fn bench(runs: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let runs: usize = runs
        .parse()
        .with_context(|| format!("bench RUNS: {runs:?} is not a number"))?;
    let mut line = |text: String| -> anyhow::Result<()> {
        eprintln!("custos-vmtest bench: {text}");
        out.write_all(format!("{text}\n").as_bytes())?;
        out.flush()?;
        Ok(())
    };
    line(format!("kernel {}", uname_release()))?;

    let mut calls = Vec::new();
    for workload in WORKLOADS {
        let probe = initial_calls(workload);
        let sample = run_loop(workload, "out", probe, None)?;
        let n = (LOOP_TARGET.as_nanos() as f64 / sample.ns_per_call.max(1.0)) as u64;
        let n = n.clamp(20, 10_000_000);
        line(format!("calls {workload} {n}"))?;
        calls.push((workload, n));
    }

    // One untimed pass of every loop first: the first loop of a kind after boot runs cold
    // (twice as slow for opens in a fresh session) and would skew its round's baseline.
    for &(workload, n) in &calls {
        for place in WHERES {
            run_loop(workload, place, n, None)?;
        }
    }

    for round in 0..runs {
        for i in 0..CONFIGS.len() {
            let config = CONFIGS[(round + i) % CONFIGS.len()];
            let agent = match config {
                "none" => None,
                hooks => Some(BenchAgent::start(hooks)?),
            };
            if round == 0
                && let Some(agent) = &agent
            {
                let (terminal, opens) = agent.backends()?;
                line(format!("backends {config} {terminal} {opens}"))?;
            }
            for &(workload, n) in &calls {
                for place in WHERES {
                    let sample = run_loop(workload, place, n, agent.as_ref())?;
                    let after = match &agent {
                        Some(agent) => agent.cpu_after(sample.agent_cpu_at_end)? as f64 / n as f64,
                        None => 0.0,
                    };
                    line(format!(
                        "sample {round} {config} {workload} {place} {:.1} {after:.1}",
                        sample.ns_per_call
                    ))?;
                }
            }
            if let Some(agent) = agent {
                agent.stop()?;
            }
        }
    }
    Ok(())
}

/// Calls in the calibration loop: enough to time, few enough to be quick under emulation.
fn initial_calls(workload: &str) -> u64 {
    match workload {
        "exec" => 20,
        "open" => 2_000,
        "write" => 5_000,
        _ => 20_000,
    }
}

/// What one worker measured.
struct LoopSample {
    ns_per_call: f64,
    /// The agent's CPU time (ns, all threads) when the loop ended; 0 without an agent.
    agent_cpu_at_end: u64,
}

/// Runs one worker and reads what it measured.
fn run_loop(
    workload: &str,
    place: &str,
    calls: u64,
    agent: Option<&BenchAgent>,
) -> anyhow::Result<LoopSample> {
    let exe = std::env::current_exe().context("finding custos-vmtest's own path")?;
    let pid = agent.map_or(0, |a| a.child.id());
    let out = Command::new(exe)
        .args(["bench-loop", workload, place])
        .arg(calls.to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running a bench-loop worker")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "bench-loop {workload} {place} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut fields = stdout.split_whitespace();
    let mut next = |what: &str| -> anyhow::Result<&str> {
        fields
            .next()
            .with_context(|| format!("bench-loop printed no {what}: {stdout:?}"))
    };
    Ok(LoopSample {
        ns_per_call: next("time")?.parse().context("bench-loop's time")?,
        agent_cpu_at_end: next("agent CPU")?
            .parse()
            .context("bench-loop's agent CPU")?,
    })
}

/// `bench-loop WORKLOAD WHERE CALLS AGENT_PID`: joins a login session if WHERE is `in`, prepares
/// WORKLOAD, runs a tenth of CALLS untimed, then CALLS timed, and prints the nanoseconds per
/// call and the agent's CPU time when the loop ended (0 for AGENT_PID 0).
pub fn bench_loop(workload: &str, place: &str, calls: &str, agent: &str) -> anyhow::Result<()> {
    let calls: u64 = calls
        .parse()
        .with_context(|| format!("bench-loop CALLS: {calls:?}"))?;
    let agent: u32 = agent
        .parse()
        .with_context(|| format!("bench-loop AGENT_PID: {agent:?}"))?;
    match place {
        "in" => {
            std::fs::write("/proc/self/loginuid", SESSION_UID.to_string())
                .context("writing /proc/self/loginuid (needs root)")?;
            let session = std::fs::read_to_string("/proc/self/sessionid")
                .context("reading /proc/self/sessionid")?;
            if session.trim() == "4294967295" {
                bail!("writing the login uid gave no audit session (kernel without audit?)");
            }
        }
        "out" => {
            let uid = std::fs::read_to_string("/proc/self/loginuid")
                .context("reading /proc/self/loginuid")?;
            if uid.trim() != "4294967295" {
                bail!(
                    "the worker is already in a login session (login uid {})",
                    uid.trim()
                );
            }
        }
        _ => bail!("bench-loop WHERE must be in or out, not {place:?}"),
    }
    let mut work = Workload::prepare(workload)?;
    work.run(calls / 10 + 1)?;
    let started = Instant::now();
    work.run(calls)?;
    let elapsed = started.elapsed();
    let agent_cpu = if agent == 0 { 0 } else { cpu_time(agent)? };
    println!(
        "{:.1} {agent_cpu}",
        elapsed.as_nanos() as f64 / calls as f64
    );
    Ok(())
}

/// A prepared workload.
enum Workload {
    /// 8 bytes written to a pty slave in raw mode; a thread drains the master.
    Write { slave: std::fs::File },
    /// openat(/etc/hostname) and close.
    Open,
    /// Spawn /bin/true (busybox) and wait for it.
    Exec,
    /// getppid, which no backend hooks.
    Getppid,
}

impl Workload {
    fn prepare(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "write" => {
                let pty = nix::pty::openpty(None, None).context("opening a pty")?;
                let mut termios =
                    nix::sys::termios::tcgetattr(pty.slave.as_fd()).context("tcgetattr")?;
                nix::sys::termios::cfmakeraw(&mut termios);
                nix::sys::termios::tcsetattr(
                    pty.slave.as_fd(),
                    nix::sys::termios::SetArg::TCSANOW,
                    &termios,
                )
                .context("tcsetattr")?;
                let mut master = std::fs::File::from(pty.master);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    while matches!(master.read(&mut buf), Ok(n) if n > 0) {}
                });
                Workload::Write {
                    slave: std::fs::File::from(pty.slave),
                }
            }
            "open" => Workload::Open,
            "exec" => {
                if !Path::new("/bin/true").exists() {
                    bail!("/bin/true is missing");
                }
                Workload::Exec
            }
            "getppid" => Workload::Getppid,
            _ => bail!("unknown workload {name:?}"),
        })
    }

    fn run(&mut self, calls: u64) -> anyhow::Result<()> {
        match self {
            Workload::Write { slave } => {
                for _ in 0..calls {
                    slave
                        .write_all(std::hint::black_box(b"custos!\n"))
                        .context("writing to the pty slave")?;
                }
            }
            Workload::Open => {
                let path = c"/etc/hostname";
                for _ in 0..calls {
                    // SAFETY: a valid NUL-terminated path; the descriptor is closed at once.
                    let fd = unsafe {
                        libc::openat(
                            libc::AT_FDCWD,
                            path.as_ptr(),
                            libc::O_RDONLY | libc::O_CLOEXEC,
                        )
                    };
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error())
                            .context("opening /etc/hostname");
                    }
                    // SAFETY: closing the descriptor just opened.
                    unsafe { libc::close(fd) };
                }
            }
            Workload::Exec => {
                for _ in 0..calls {
                    let status = Command::new("/bin/true")
                        .status()
                        .context("running /bin/true")?;
                    if !status.success() {
                        bail!("/bin/true failed: {status}");
                    }
                }
            }
            Workload::Getppid => {
                for _ in 0..calls {
                    // SAFETY: no arguments, cannot fail.
                    std::hint::black_box(unsafe { libc::getppid() });
                }
            }
        }
        Ok(())
    }
}

/// An agent started for the benchmark: events to /dev/null, log to a file.
struct BenchAgent {
    child: Child,
    log: PathBuf,
}

impl BenchAgent {
    fn start(hooks: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir();
        let config = dir.join(format!("custos-bench-{hooks}.toml"));
        let log = dir.join(format!("custos-bench-{hooks}.log"));
        std::fs::write(
            &config,
            custos_tests::agent::with_metrics_port(&format!("[capture]\nhooks = \"{hooks}\"\n")),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(custos_tests::bin("custos-agent"))
            .arg("--stdout")
            .arg("--config")
            .arg(&config)
            .env("CUSTOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting custos-agent")?;
        let mut agent = BenchAgent { child, log };
        let deadline = Instant::now() + AGENT_START;
        loop {
            if agent.log_text().contains("recording login sessions") {
                break;
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!(
                    "custos-agent (hooks = {hooks}) exited before recording ({status}):\n{}",
                    agent.log_text()
                );
            }
            if Instant::now() > deadline {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                bail!(
                    "custos-agent (hooks = {hooks}) did not start within {AGENT_START:?}:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Let it finish starting (its first scans) before anything is timed.
        agent.cpu_after(cpu_time(agent.child.id())?)?;
        Ok(agent)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The backends the agent logged: (terminal, opens).
    fn backends(&self) -> anyhow::Result<(String, String)> {
        custos_tests::kernels::backends(&self.log_text())
            .map(|(terminal, opens, _reads)| (terminal, opens))
            .with_context(|| {
                format!(
                    "the agent did not log its hook backends:\n{}",
                    self.log_text()
                )
            })
    }

    /// Waits until the agent is idle (under 2% of the CPU over 100 ms, at most 30 s) and returns
    /// the CPU time it used since `since` (a [`cpu_time`] reading).
    fn cpu_after(&self, since: u64) -> anyhow::Result<u64> {
        let pid = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = cpu_time(pid)?;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = cpu_time(pid)?;
            if now.saturating_sub(last) < 2_000_000 || Instant::now() > deadline {
                return Ok(now.saturating_sub(since));
            }
            last = now;
        }
    }

    /// Stops the agent with SIGINT and checks it exited cleanly.
    fn stop(mut self) -> anyhow::Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)
            .context("signalling custos-agent")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "custos-agent did not stop within 60 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !status.success() {
            bail!("custos-agent exited with {status}:\n{}", self.log_text());
        }
        Ok(())
    }
}

/// CPU time of every thread of process `pid`, in ns (/proc/PID/task/*/schedstat).
fn cpu_time(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("unexpected {}: {text:?}", path.display()))?;
        total += ns;
    }
    Ok(total)
}

fn uname_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One line for the report: the error, with its causes.
pub fn error_line(err: &anyhow::Error) -> String {
    let mut line = String::from("error ");
    let _ = write!(line, "{err:#}");
    line.replace('\n', " | ")
}
