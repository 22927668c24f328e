//! `cargo xtask login [--user NAME]`: a recorded login session that needs nothing installed (no
//! sshd). Starts NAME's shell as a login shell the way a login does: its process writes NAME's
//! uid to /proc/self/loginuid (as pam_loginuid does, so the kernel opens a new audit session),
//! starts a new session with a fresh pseudo-terminal as its controlling terminal, then becomes
//! NAME. This process relays the caller's terminal to it (in raw mode, window size included) and
//! stays outside that audit session, so what it copies is not recorded a second time.
use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    os::{
        fd::{AsFd, AsRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, bail};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    pty::{OpenptyResult, Winsize, openpty},
    sys::termios::{self, SetArg, Termios},
    unistd::{Gid, User, getgrouplist},
};

use crate::cmd;

/// The user `login` logs in as when none is named, created on first use.
pub const DEFAULT_USER: &str = "custos-demo";

#[derive(clap::Args, Debug)]
pub struct LoginOptions {
    /// The user to log in as (an existing account). Without it: custos-demo, an unprivileged
    /// user without a password, created when missing.
    #[arg(long)]
    user: Option<String>,
}

/// Runs the session; its shell's exit code.
pub fn login(options: LoginOptions) -> anyhow::Result<i32> {
    if !cmd::is_root() {
        bail!(
            "starting a login session writes /proc/self/loginuid, which needs root: run it as root"
        );
    }
    let user = match &options.user {
        Some(name) => User::from_name(name)
            .with_context(|| format!("looking up user {name}"))?
            .with_context(|| {
                format!(
                    "no user {name}: create it (useradd --create-home {name}), or leave out \
                     --user to log in as {DEFAULT_USER}"
                )
            })?,
        None => default_user()?,
    };
    let stdin = std::io::stdin();
    let terminal = termios::tcgetattr(stdin.as_fd()).ok();
    let OpenptyResult { master, slave } = openpty(Some(&window_size(&stdin)), terminal.as_ref())
        .context("opening a pseudo-terminal")?;
    let tty = nix::unistd::ttyname(&slave).context("naming the pseudo-terminal")?;
    let mut shell = login_shell(&user, slave)?;
    let mut child = shell
        .spawn()
        .with_context(|| format!("starting {}'s shell", user.name))?;
    // The command held the terminal's other side for the child; only the child keeps it now.
    drop(shell);
    // Spawn returned once the child exec'd: it has its session id.
    let session = std::fs::read_to_string(format!("/proc/{}/sessionid", child.id()))
        .context("reading the session's id")?;
    eprintln!(
        "login: session {}, user {}, terminal {}: recorded. Exit the shell to end it.",
        session.trim(),
        user.name,
        tty.display()
    );
    let raw = terminal
        .map(|saved| RawMode::enter(&stdin, saved))
        .transpose()?;
    let relayed = relay(&master);
    drop(raw);
    let status = child.wait().context("waiting for the session's shell")?;
    relayed?;
    eprintln!("login: session {} ended ({status})", session.trim());
    Ok(status.code().unwrap_or(1))
}

/// [`DEFAULT_USER`], created (home, bash, no password) when missing.
fn default_user() -> anyhow::Result<User> {
    if let Some(user) = User::from_name(DEFAULT_USER).context("looking up users")? {
        return Ok(user);
    }
    println!(
        "login: creating user {DEFAULT_USER} (unprivileged, with a home and bash, no password: \
         only root can start its sessions)"
    );
    cmd::run(Command::new("useradd").args([
        "--create-home",
        "--shell",
        "/bin/bash",
        "--comment",
        "Custos demo user",
        DEFAULT_USER,
    ]))?;
    User::from_name(DEFAULT_USER)
        .context("looking up users")?
        .with_context(|| format!("no user {DEFAULT_USER} after useradd"))
}

/// The caller's window size, or 24x80 when it has no terminal.
fn window_size(stdin: &std::io::Stdin) -> Winsize {
    let mut size = Winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize; on failure `size` keeps the default.
    unsafe { libc::ioctl(stdin.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    size
}

/// `user`'s shell as a login shell (`-bash`) on `slave`, in a new audit session and a new
/// session with `slave` as its controlling terminal, with the environment a login gives.
fn login_shell(user: &User, slave: OwnedFd) -> anyhow::Result<Command> {
    let shell = if user.shell.as_os_str().is_empty() {
        Path::new("/bin/sh")
    } else {
        user.shell.as_path()
    };
    let base = shell
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sh".into());
    let name = CString::new(user.name.as_str()).context("user name")?;
    let groups: Vec<libc::gid_t> = getgrouplist(&name, user.gid)
        .with_context(|| format!("listing {}'s groups", user.name))?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let loginuid = uid.to_string().into_bytes();
    let home = if user.dir.is_dir() {
        user.dir.as_path()
    } else {
        Path::new("/")
    };
    let mut command = Command::new(shell);
    command
        .arg0(format!("-{base}"))
        .env_clear()
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .env("SHELL", shell)
        .env(
            "TERM",
            std::env::var_os("TERM").unwrap_or_else(|| "xterm".into()),
        )
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .current_dir(home)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls (open, write, close, setsid, ioctl, set*id) between
    // fork and exec, on buffers made before the fork.
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_int| {
                if result < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            // pam_loginuid's step: a new audit session, for this user.
            let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
            check(fd)?;
            let written = libc::write(fd, loginuid.as_ptr().cast(), loginuid.len());
            libc::close(fd);
            if written < 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::setsid())?;
            check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    Ok(command)
}

/// The caller's terminal in raw mode (keystrokes go to the session as typed: Ctrl-C too),
/// restored when dropped.
struct RawMode<'a> {
    stdin: &'a std::io::Stdin,
    saved: Termios,
}

impl<'a> RawMode<'a> {
    fn enter(stdin: &'a std::io::Stdin, saved: Termios) -> anyhow::Result<Self> {
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(Self { stdin, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.stdin.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// Copies stdin to the session's terminal and its output to stdout, and the caller's window
/// size when it changes, until the session's terminal closes.
fn relay(master: &OwnedFd) -> anyhow::Result<()> {
    let resized = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGWINCH, resized.clone())
        .context("watching the window size")?;
    let stdin = std::io::stdin();
    let mut stdin_open = true;
    let mut out = std::io::stdout().lock();
    let mut terminal = std::fs::File::from(master.try_clone()?);
    let mut buf = vec![0u8; 65536];
    loop {
        if resized.swap(false, Ordering::Relaxed) {
            let size = window_size(&stdin);
            // SAFETY: TIOCSWINSZ reads a winsize.
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        }
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::from(500u16)) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => other.context("waiting for the terminal")?,
        };
        let ready =
            |fd: Option<&PollFd>| fd.and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
        let (output, input) = (ready(fds.first()), ready(fds.get(1)));
        drop(fds);
        if output {
            match terminal.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    out.write_all(&buf[..n])?;
                    out.flush()?;
                }
                // EIO: every process of the session closed the terminal.
                Err(err) if err.raw_os_error() == Some(libc::EIO) => return Ok(()),
                Err(err) => return Err(err).context("reading the session's terminal"),
            }
        }
        if input {
            match nix::unistd::read(stdin.as_fd(), &mut buf).context("reading stdin")? {
                0 => stdin_open = false,
                n => terminal
                    .write_all(&buf[..n])
                    .context("typing into the session")?,
            }
        }
    }
}
