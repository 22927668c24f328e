//! Workloads for `cargo xtask bench --only app`: the loops the application benchmark times,
//! a pseudo-terminal runner for shell workloads, and the rate-controlled event generator of the
//! agent capacity test.
//!
//! Every subcommand first puts this process inside a login session (`--login-uid UID`: the
//! uid written to /proc/self/loginuid, which gives it a fresh audit session id, as pam_loginuid
//! does at login) or outside any (`--no-session`: the login uid unset), so its children are
//! recorded or not recorded by the agent. Timing is done by the caller around the whole process.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Workloads of the Custos application benchmark")]
struct Cli {
    /// Enter a login session as this uid before running the workload.
    #[arg(long, conflicts_with = "no_session")]
    login_uid: Option<u32>,
    /// Leave any login session before running the workload.
    #[arg(long)]
    no_session: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Runs ARGV on a new pseudo-terminal (its controlling terminal, stdin, stdout and stderr)
    /// and drains what it writes; exits with its status.
    Pty {
        #[arg(required = true, trailing_var_arg = true)]
        argv: Vec<String>,
    },
    /// Opens and closes PATH read-only COUNT times.
    OpenLoop {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        path: PathBuf,
    },
    /// Writes 64 bytes to /dev/null COUNT times.
    WriteLoop {
        #[arg(long)]
        count: u64,
    },
    /// Calls getppid COUNT times.
    GetppidLoop {
        #[arg(long)]
        count: u64,
    },
    /// Generates about RATE recordable events per second for SECONDS: opens for writing of
    /// files under DIR and 64-byte writes to a pseudo-terminal, alternating, plus EXEC_RATE
    /// runs of /bin/true per second. With PROCESSES above 1, that many generator processes
    /// (children of this one, so in its login session) each do their share of both rates with
    /// their own pseudo-terminal and files (under DIR/pN). Prints `operations execs seconds`
    /// on stdout: the operations and execs summed over the processes, and the longest window.
    Generate {
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        processes: u32,
        #[arg(long, default_value_t = 20.0)]
        exec_rate: f64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("custos-bench-workload: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(uid) = cli.login_uid {
        set_login_uid(&uid.to_string())?;
    } else if cli.no_session {
        set_login_uid("4294967295")?;
    }
    match cli.workload {
        Workload::Pty { argv } => pty_run(&argv),
        Workload::OpenLoop { count, path } => {
            open_loop(count, &path)?;
            Ok(ExitCode::SUCCESS)
        }
        Workload::WriteLoop { count } => {
            write_loop(count)?;
            Ok(ExitCode::SUCCESS)
        }
        Workload::GetppidLoop { count } => {
            for _ in 0..count {
                // SAFETY: getppid has no preconditions.
                std::hint::black_box(unsafe { libc::getppid() });
            }
            Ok(ExitCode::SUCCESS)
        }
        Workload::Generate {
            rate,
            seconds,
            dir,
            processes,
            exec_rate,
        } => {
            let total = if processes == 1 {
                generate(rate, exec_rate, seconds, &dir)?
            } else {
                generate_in(processes, rate, exec_rate, seconds, &dir)?
            };
            println!("{} {} {:.3}", total.operations, total.execs, total.seconds);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes `value` to /proc/self/loginuid (root may change it at any time).
fn set_login_uid(value: &str) -> anyhow::Result<()> {
    std::fs::write("/proc/self/loginuid", value)
        .with_context(|| format!("writing {value} to /proc/self/loginuid"))
}

fn open_loop(count: u64, path: &std::path::Path) -> anyhow::Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    for _ in 0..count {
        // SAFETY: a valid NUL-terminated path; the descriptor is closed right away.
        let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {}", path.display()));
        }
        // SAFETY: fd was just opened by us.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

fn write_loop(count: u64) -> anyhow::Result<()> {
    let null = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    let buf = [b'x'; 64];
    for _ in 0..count {
        // SAFETY: writing a live buffer to an open descriptor.
        let n = unsafe { libc::write(null.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("writing to /dev/null");
        }
    }
    Ok(())
}

/// A new pseudo-terminal pair (master, slave).
fn open_pty() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut master = -1;
    let mut slave = -1;
    // SAFETY: openpty writes two descriptors; the name, termios and winsize are optional.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: both descriptors were just returned by openpty and are ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) })
}

/// Reads `master` until the slave side is gone (EIO), returning the bytes read.
fn drain(master: OwnedFd) -> u64 {
    let mut file = File::from(master);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: every slave descriptor is closed.
            Err(_) => return total,
        }
    }
}

fn pty_run(argv: &[String]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    let (master, slave) = open_pty()?;
    let Some((program, args)) = argv.split_first() else {
        bail!("pty: no command given");
    };
    let slave_fd = slave.as_raw_fd();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(slave.try_clone().context("duplicating the pty slave")?)
        .stdout(slave.try_clone().context("duplicating the pty slave")?)
        .stderr(slave.try_clone().context("duplicating the pty slave")?);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave_fd, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {program} on a pty"))?;
    drop(slave);
    drop(command);
    drain(master);
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"))?;
    if status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("custos-bench-workload: {program} ended with {status}");
    let code = status
        .code()
        .or(status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// What a generator did.
#[derive(Clone, Copy, Default)]
struct Generated {
    operations: u64,
    execs: u64,
    seconds: f64,
}

/// Runs `processes` generators as children of this process (which already holds the session's
/// login uid, so they inherit it and its session id), each with its share of `rate` and
/// `exec_rate`, and sums what they did.
fn generate_in(
    processes: u32,
    rate: u64,
    exec_rate: f64,
    seconds: f64,
    dir: &std::path::Path,
) -> anyhow::Result<Generated> {
    use std::process::Stdio;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut children = Vec::new();
    for i in 0..u64::from(processes) {
        // The remainder goes to the first processes, so the shares sum to `rate`.
        let share = rate / u64::from(processes) + u64::from(i < rate % u64::from(processes));
        let child = Command::new(&exe)
            .arg("generate")
            .args(["--rate", &share.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .arg("--dir")
            .arg(dir.join(format!("p{i}")))
            .args([
                "--exec-rate",
                &(exec_rate / f64::from(processes)).to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting generator {i}"))?;
        children.push(child);
    }
    let mut total = Generated::default();
    let mut failed = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = child
            .wait_with_output()
            .with_context(|| format!("waiting for generator {i}"))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [operations, execs, seconds] if output.status.success() => operations
                .parse::<u64>()
                .ok()
                .zip(execs.parse::<u64>().ok())
                .zip(seconds.parse::<f64>().ok()),
            _ => None,
        };
        match parsed {
            Some(((operations, execs), seconds)) => {
                total.operations += operations;
                total.execs += execs;
                total.seconds = total.seconds.max(seconds);
            }
            None => failed.push(format!("generator {i} ({}): {text:?}", output.status)),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(total)
}

/// The capacity generator of one process: see [`Workload::Generate`].
fn generate(
    rate: u64,
    exec_rate: f64,
    seconds: f64,
    dir: &std::path::Path,
) -> anyhow::Result<Generated> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (master, slave) = open_pty()?;
    let drainer = std::thread::spawn(move || drain(master));
    let mut tty = File::from(slave);
    let paths: Vec<CString> = (0..64)
        .map(|i| {
            let path = dir.join(format!("file-{i}"));
            CString::new(path.as_os_str().as_encoded_bytes()).context("path with a NUL byte")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut line = [b'.'; 64];
    line[63] = b'\n';
    let start = Instant::now();
    let window = Duration::from_secs_f64(seconds);
    let mut operations = 0u64;
    let mut execs = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= window {
            break;
        }
        if (execs as f64) < elapsed.as_secs_f64() * exec_rate {
            Command::new("/bin/true")
                .status()
                .context("running /bin/true")?;
            execs += 1;
        }
        let due = (elapsed.as_secs_f64() * rate as f64) as u64;
        if operations >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // Catch up in bounded batches so the clock is read often enough.
        for _ in 0..(due - operations).min(1000) {
            if operations.is_multiple_of(2) {
                let path = &paths[(operations / 2 % 64) as usize];
                // SAFETY: a valid NUL-terminated path; the descriptor is closed right away.
                let fd = unsafe {
                    libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o600,
                    )
                };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error()).context("opening a file");
                }
                // SAFETY: fd was just opened by us.
                unsafe { libc::close(fd) };
            } else {
                tty.write_all(&line).context("writing to the pty")?;
            }
            operations += 1;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(tty);
    let _ = drainer.join();
    Ok(Generated {
        operations,
        execs,
        seconds,
    })
}
