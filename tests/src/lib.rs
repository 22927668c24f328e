//! The end-to-end test harness: real binaries, real kernel, real terminals.
//!
//! - [`daemon`]: a daemon under test: its log waited on, signals, exit;
//! - [`agent`]: a running `custos-agent` (and, with `--stdout`, the events it printed);
//! - [`deployment`]: a collector with its PKI, keys and store in a temp directory;
//! - [`terminal`]: a program driven through pipes like a person at a terminal (expect/send),
//!   with every byte it showed kept;
//! - [`users`]: test users (created once, idempotently);
//! - [`sshd`]: a real OpenSSH server on a loopback port;
//! - [`metrics`]: a daemon's Prometheus endpoint, scraped;
//! - [`shared`]: copies of our programs that another user may execute, wherever the checkout
//!   lives;
//! - [`kernels`]: the capture scenario every kernel must pass (`cargo xtask vm-test`);
//! - [`webhook`]: an HTTPS receiver for alerts.
//!
//! Every wait is bounded and ends on an event (a line of output, a process exit), never on a
//! sleep.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
pub mod agent;
pub mod bpf;
pub mod cprog;
pub mod daemon;
pub mod deployment;
pub mod https;
pub mod kernels;
pub mod metrics;
pub mod netns;
pub mod quic;
pub mod shared;
pub mod sshd;
pub mod syslog;
pub mod terminal;
pub mod users;
pub mod webhook;

use std::{
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    time::{Duration, Instant},
};

/// A built binary of the workspace (`CUSTOS_BIN_DIR`, set by `cargo xtask test`, or
/// target/debug).
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("CUSTOS_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("debug")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the suite with `cargo xtask test`",
        path.display()
    );
    path
}

/// A marker no other test or process will print.
pub fn marker(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{nanos:08x}", std::process::id())
}

/// A loopback UDP port free now (for a collector's QUIC listener).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port")
}

/// `127.0.0.1:PORT` with a [`free_udp_port`].
pub fn free_udp_address() -> String {
    format!("127.0.0.1:{}", free_udp_port())
}

/// Waits until `check` returns `Some`, polling every 20 ms, at most `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds `needle` in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Waits until the terminal `pty` (a /dev/pts path) is in line mode with echo off, as a
/// program asking for a password sets it (readline's raw mode has echo off too, but not line
/// mode: keystrokes typed then would not end a line).
pub fn wait_echo_off(pty: &str) {
    use std::os::fd::AsFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOCTTY)
        .open(pty)
        .unwrap_or_else(|err| panic!("opening {pty}: {err}"));
    wait_until(
        "the terminal to turn echo off in line mode",
        std::time::Duration::from_secs(10),
        || {
            let termios = nix::sys::termios::tcgetattr(file.as_fd()).ok()?;
            let flags = termios.local_flags;
            (flags.contains(nix::sys::termios::LocalFlags::ICANON)
                && !flags.contains(nix::sys::termios::LocalFlags::ECHO))
            .then_some(())
        },
    );
}

/// A shell in a fresh login session, started the way pam_loginuid starts one (through
/// `custos-testkit login-pty`), with the prompt `custos$ `. Returns it once it prompts, and its
/// audit session id.
pub fn login_shell(user: &str) -> (terminal::Terminal, custos_proto::AuditSessionId) {
    let mut command = std::process::Command::new(bin("custos-testkit"));
    command
        .args(["login-pty", "--user", user, "--"])
        .args(["/bin/bash", "--norc", "--noprofile", "-i"])
        .env("PS1", "custos$ ");
    let mut shell = terminal::Terminal::spawn(command);
    let session: u32 = shell
        .stderr_value("session=")
        .parse()
        .expect("testkit printed its session id");
    shell.expect("custos$ ");
    (shell, custos_proto::AuditSessionId(session))
}

/// Every file under `dir` (recursively), with its bytes.
pub fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("listing a directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            let bytes = std::fs::read(&path).expect("reading a file");
            found.push((path, bytes));
        }
    }
    found
}
