//! The end-to-end test harness: real binaries, real kernel, real terminals.
//!
//! - [`agent`]: a running `custos-agent --stdout` and the events it printed;
//! - [`terminal`]: a program driven through pipes like a person at a terminal (expect/send),
//!   with every byte it showed kept;
//! - [`users`]: test users (created once, idempotently);
//! - [`sshd`]: a real OpenSSH server on a loopback port.
//!
//! Every wait is bounded and ends on an event (a line of output, a process exit), never on a
//! sleep.
pub mod agent;
pub mod bpf;
pub mod sshd;
pub mod terminal;
pub mod users;

use std::{
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
