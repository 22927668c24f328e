//! A program driven like a person at a terminal: `send` types, `expect` waits for the screen to
//! show something. Every byte the program printed is kept, in order ([`Terminal::transcript`]).
use std::{
    io::{Read, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

/// Bytes read from a pipe so far, and whether it closed.
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

type Shared = Arc<(Mutex<Screen>, Condvar)>;

/// Reads `pipe` into a shared screen on a thread.
fn read_into(mut pipe: impl Read + Send + 'static) -> Shared {
    let screen: Shared = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
    let writer = screen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        loop {
            let n = pipe.read(&mut buf).unwrap_or(0);
            let (lock, changed) = &*writer;
            let mut screen = lock.lock().unwrap_or_else(|e| e.into_inner());
            if n == 0 {
                screen.closed = true;
                changed.notify_all();
                break;
            }
            screen.bytes.extend_from_slice(&buf[..n]);
            changed.notify_all();
        }
    });
    screen
}

/// Waits until `screen` holds `needle` at or after `from`; returns the end of the match.
fn wait_for(
    screen: &Shared,
    from: usize,
    needle: &[u8],
    what: &str,
    timeout: Duration,
) -> Result<usize, String> {
    let (lock, changed) = &**screen;
    let deadline = Instant::now() + timeout;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(pos) = state.bytes[from.min(state.bytes.len())..]
            .windows(needle.len())
            .position(|w| w == needle)
        {
            return Ok(from + pos + needle.len());
        }
        let now = Instant::now();
        if state.closed || now >= deadline {
            let why = if state.closed {
                "the program closed its output"
            } else {
                "timed out"
            };
            let seen = &state.bytes[from.min(state.bytes.len())..];
            let tail = &seen[seen.len().saturating_sub(1500)..];
            return Err(format!(
                "{why} waiting for {what} {:?}; {} bytes seen since, ending with: {:?}",
                String::from_utf8_lossy(needle),
                seen.len(),
                String::from_utf8_lossy(tail)
            ));
        }
        state = changed
            .wait_timeout(state, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

pub struct Terminal {
    child: Child,
    stdin: Option<ChildStdin>,
    screen: Shared,
    stderr: Shared,
    /// Where the next `expect` starts looking.
    cursor: usize,
    /// Everything `send` wrote.
    typed: Vec<u8>,
}

pub const TIMEOUT: Duration = Duration::from_secs(20);

impl Terminal {
    /// Starts `command` with its stdin, stdout and stderr on pipes.
    pub fn spawn(mut command: Command) -> Terminal {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {command:?}: {err}"));
        let screen = read_into(child.stdout.take().expect("stdout"));
        let stderr = read_into(child.stderr.take().expect("stderr"));
        let stdin = child.stdin.take();
        Terminal {
            child,
            stdin,
            screen,
            stderr,
            cursor: 0,
            typed: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Types `text` (one write, as a terminal delivers a paste or a fast typist).
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("terminal input closed");
        stdin.write_all(text.as_bytes()).expect("typing");
        stdin.flush().expect("typing");
        self.typed.extend_from_slice(text.as_bytes());
    }

    /// Types a command line and Enter (a carriage return, as terminals send it).
    pub fn line(&mut self, text: &str) {
        self.send(&format!("{text}\r"));
    }

    /// Waits until the program has printed `text` after the previous match.
    pub fn expect(&mut self, text: &str) {
        self.expect_within(text, TIMEOUT);
    }

    /// [`Terminal::expect`] with a longer bound, for commands that print a lot.
    pub fn expect_within(&mut self, text: &str, timeout: Duration) {
        match wait_for(
            &self.screen,
            self.cursor,
            text.as_bytes(),
            "output",
            timeout,
        ) {
            Ok(end) => self.cursor = end,
            Err(err) => panic!("{err}; stderr: {}", self.stderr()),
        }
    }

    /// Waits for a line of stderr starting with `prefix` and returns the rest of it.
    pub fn stderr_value(&self, prefix: &str) -> String {
        let end = wait_for(&self.stderr, 0, prefix.as_bytes(), "stderr", TIMEOUT)
            .unwrap_or_else(|err| panic!("{err}"));
        let line_end = wait_for(&self.stderr, end, b"\n", "end of line", TIMEOUT)
            .unwrap_or_else(|err| panic!("{err}"));
        let bytes = self
            .stderr
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clone();
        String::from_utf8_lossy(&bytes[end..line_end - 1]).into_owned()
    }

    /// Waits for the program to exit (its output closed and the process reaped).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let (lock, changed) = &*self.screen;
        let deadline = Instant::now() + TIMEOUT;
        let mut screen = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !screen.closed {
            let now = Instant::now();
            assert!(now < deadline, "timed out waiting for the program to exit");
            screen = changed
                .wait_timeout(screen, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(screen);
        self.stdin = None;
        self.child.wait().expect("waiting for the program")
    }

    /// Every byte the program printed so far.
    pub fn transcript(&self) -> Vec<u8> {
        self.screen
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
            .clone()
    }

    /// Everything typed so far.
    pub fn typed(&self) -> &[u8] {
        &self.typed
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(
            &self
                .stderr
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .bytes,
        )
        .into_owned()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
