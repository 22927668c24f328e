//! `custos-testkit`: plays the parts of a login that tests need, as real programs do them.
//!
//! - `login-pty --user NAME -- CMD...`: what sshd or login does for a terminal login: writes the
//!   user's uid to /proc/self/loginuid (pam_loginuid; the kernel gives the process a new audit
//!   session), opens a pseudo-terminal, runs CMD on its slave as the user (own session,
//!   controlling terminal), and relays: bytes from stdin are written to the master (keystrokes),
//!   bytes from the master are copied to stdout (what the terminal shows). Prints
//!   `session=N` and `pty=/dev/pts/N` on stderr first.
//! - `login-console --user NAME --tty /dev/ttyN -- CMD...`: what getty and login do for a
//!   console login: the login uid as above, then CMD as the user on the console terminal
//!   (own session, that terminal as its controlling terminal, taken from any session that
//!   had it); waits for it. Prints `session=N` on stderr first.
//! - `no-session -- CMD...`: runs CMD outside any login session and without a controlling
//!   terminal (clears the login uid, which root may do, and calls setsid).
//! - `exit-with CODE -- ARGS...`: prints ARGS joined by `|` and exits with CODE (a real exec
//!   with a known argv and exit code, where a shell's builtins would not exec).
//! - `udp-relay LISTEN UPSTREAM DELAY_MS --`: relays UDP datagrams between one client and
//!   UPSTREAM, holding each one DELAY_MS milliseconds in each direction (a slow network, since
//!   the kernel has no netem).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    ffi::CString,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use anyhow::{Context as _, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    pty::{OpenptyResult, Winsize, openpty},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, Gid, Uid, User, execvp, fork, setgid, setsid, setuid},
};

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("custos-testkit: {err:#}");
            std::process::exit(101);
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .context("usage: custos-testkit MODE [OPTIONS] -- CMD...")?;
    let (opts, command) = (&args[..split], &args[split + 1..]);
    let mode = opts.first().map(String::as_str);
    if command.is_empty() && !matches!(mode, Some("udp-relay" | "exit-with")) {
        bail!("no command after --");
    }
    match opts.first().map(String::as_str) {
        Some("login-pty") => {
            let user = match opts {
                [_, flag, name] if flag == "--user" => name.clone(),
                _ => bail!("usage: custos-testkit login-pty --user NAME -- CMD..."),
            };
            login_pty(&user, command)
        }
        Some("login-console") => match opts {
            [_, user_flag, user, tty_flag, tty] if user_flag == "--user" && tty_flag == "--tty" => {
                login_console(user, tty, command)
            }
            _ => bail!("usage: custos-testkit login-console --user NAME --tty /dev/ttyN -- CMD..."),
        },
        Some("no-session") => no_session(command),
        Some("exit-with") => match opts {
            [_, code] => {
                println!("{}", command.join("|"));
                Ok(code.parse().context("exit-with CODE: not a number")?)
            }
            _ => bail!("usage: custos-testkit exit-with CODE -- ARGS..."),
        },
        Some("udp-relay") => match opts {
            [_, listen, upstream, delay] => udp_relay(listen, upstream, delay.parse()?),
            _ => bail!("usage: custos-testkit udp-relay LISTEN UPSTREAM DELAY_MS --"),
        },
        _ => {
            bail!("unknown mode; use login-pty, login-console, no-session, exit-with or udp-relay")
        }
    }
}

fn write_loginuid(uid: u32) -> anyhow::Result<()> {
    std::fs::write("/proc/self/loginuid", uid.to_string())
        .context("writing /proc/self/loginuid (needs root)")
}

fn login_pty(user: &str, command: &[String]) -> anyhow::Result<i32> {
    let user = User::from_name(user)?.with_context(|| format!("no user {user}"))?;
    write_loginuid(user.uid.as_raw())?;
    let session = std::fs::read_to_string("/proc/self/sessionid")?;
    eprintln!("session={}", session.trim());
    let winsize = Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let OpenptyResult { master, slave } = openpty(Some(&winsize), None)?;
    eprintln!("pty={}", nix::unistd::ttyname(&slave)?.display());
    // SAFETY: the child only calls async-signal-safe functions before exec.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(master);
            let code = match exec_on_terminal(slave, &user, command) {
                Ok(never) => match never {},
                Err(err) => {
                    eprintln!("custos-testkit: {err:#}");
                    127
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => {
            drop(slave);
            relay(&master)?;
            match waitpid(child, None)? {
                WaitStatus::Exited(_, code) => Ok(code),
                WaitStatus::Signaled(_, signal, _) => Ok(128 + signal as i32),
                other => bail!("unexpected wait status {other:?}"),
            }
        }
    }
}

fn login_console(user: &str, tty: &str, command: &[String]) -> anyhow::Result<i32> {
    let user = User::from_name(user)?.with_context(|| format!("no user {user}"))?;
    // As getty does before it runs login: the console is this process's terminal first.
    setsid()?;
    let console = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tty)
        .with_context(|| format!("opening {tty}"))?;
    // SAFETY: TIOCSCTTY on a terminal, in the session this process leads.
    if unsafe { libc::ioctl(console.as_raw_fd(), libc::TIOCSCTTY, 1) } != 0 {
        bail!("TIOCSCTTY on {tty}: {}", std::io::Error::last_os_error());
    }
    write_loginuid(user.uid.as_raw())?;
    let session = std::fs::read_to_string("/proc/self/sessionid")?;
    eprintln!("session={}", session.trim());
    // SAFETY: the child only calls async-signal-safe functions before exec.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match exec_on_terminal(console.into(), &user, command) {
                Ok(never) => match never {},
                Err(err) => {
                    eprintln!("custos-testkit: {err:#}");
                    127
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, code) => Ok(code),
            WaitStatus::Signaled(_, signal, _) => Ok(128 + signal as i32),
            other => bail!("unexpected wait status {other:?}"),
        },
    }
}

fn exec_on_terminal(
    slave: OwnedFd,
    user: &User,
    command: &[String],
) -> anyhow::Result<std::convert::Infallible> {
    setsid()?;
    // SAFETY: TIOCSCTTY on a terminal in a new session; 1: root takes a console another
    // session had (a fresh pty has none).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 1) } != 0 {
        bail!("TIOCSCTTY: {}", std::io::Error::last_os_error());
    }
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            bail!("dup2: {}", std::io::Error::last_os_error());
        }
    }
    drop(slave);
    let name = CString::new(user.name.as_str())?;
    nix::unistd::initgroups(&name, user.gid)?;
    setgid(Gid::from_raw(user.gid.as_raw()))?;
    setuid(Uid::from_raw(user.uid.as_raw()))?;
    // SAFETY: single-threaded child before exec.
    unsafe {
        std::env::set_var("HOME", &user.dir);
        std::env::set_var("USER", &user.name);
        std::env::set_var("LOGNAME", &user.name);
        std::env::set_var("SHELL", &user.shell);
        std::env::set_var("TERM", "xterm");
        std::env::set_var("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    std::env::set_current_dir(&user.dir).or_else(|_| std::env::set_current_dir("/"))?;
    exec(command)
}

fn exec(command: &[String]) -> anyhow::Result<std::convert::Infallible> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    Ok(execvp(&argv[0], &argv)?)
}

/// stdin -> master (each read written at once, as a terminal sends keystrokes), master ->
/// stdout, until the terminal closes.
fn relay(master: &OwnedFd) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 65536];
    let mut out = std::io::stdout().lock();
    let mut master_file = std::fs::File::from(master.try_clone()?);
    loop {
        let stdin_fd = stdin.as_fd();
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        poll(&mut fds, PollTimeout::NONE)?;
        let master_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let stdin_ready = fds
            .get(1)
            .and_then(|fd| fd.revents())
            .unwrap_or(PollFlags::empty());
        if !master_ready.is_empty() {
            match master_file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                // EIO: the slave side is closed (the program exited).
                Err(err) if err.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Err(err) => return Err(err.into()),
            }
        }
        if !stdin_ready.is_empty() {
            let n = nix::unistd::read(stdin.as_fd(), &mut buf)?;
            if n == 0 {
                stdin_open = false;
            } else {
                master_file.write_all(&buf[..n])?;
            }
        }
    }
}

fn no_session(command: &[String]) -> anyhow::Result<i32> {
    let current = std::fs::read_to_string("/proc/self/loginuid")?;
    if current.trim() != u32::MAX.to_string() {
        write_loginuid(u32::MAX)?;
    }
    let _ = setsid();
    match exec(command)? {}
}

/// Forwards datagrams both ways, each after `delay_ms`.
fn udp_relay(listen: &str, upstream: &str, delay_ms: u64) -> anyhow::Result<i32> {
    use std::{
        net::{SocketAddr, UdpSocket},
        sync::{Arc, Mutex, mpsc},
        time::{Duration, Instant},
    };
    let front = Arc::new(UdpSocket::bind(listen)?);
    let back = Arc::new(UdpSocket::bind("0.0.0.0:0")?);
    back.connect(upstream)?;
    let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
    let delay = Duration::from_millis(delay_ms);
    eprintln!("relaying {listen} -> {upstream} with {delay_ms} ms each way");
    // One delayed queue per direction: (when to send, bytes).
    let (to_back, from_front) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (to_front, from_back) = mpsc::channel::<(Instant, Vec<u8>)>();
    {
        let (front, client) = (front.clone(), client.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, peer)) = front.recv_from(&mut buf) {
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
                if to_back
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    {
        let back = back.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf) {
                if to_front
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    {
        let back = back.clone();
        std::thread::spawn(move || {
            for (at, bytes) in from_front {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let _ = back.send(&bytes);
            }
        });
    }
    for (at, bytes) in from_back {
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        if let Some(peer) = *client.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = front.send_to(&bytes, peer);
        }
    }
    Ok(0)
}
