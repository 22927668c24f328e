//! A daemon under test (agent or collector): its log lines kept and waited on, signals sent,
//! exit awaited, all bounded.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: Arc<(Mutex<Log>, Condvar)>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `command` with stderr (its log) captured; stdout is left to the caller (taken
    /// from the returned child handle before it is used) or discarded.
    pub fn spawn(
        name: &str,
        mut command: Command,
        capture_stdout: bool,
    ) -> (Daemon, Option<std::process::ChildStdout>) {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(if capture_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name}: {err}"));
        let stdout = child.stdout.take();
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let writer = log.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (lock, changed) = &*writer;
                lock.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .lines
                    .push(line);
                changed.notify_all();
            }
            let (lock, changed) = &*writer;
            lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            changed.notify_all();
        });
        (
            Daemon {
                name: name.to_owned(),
                child: Some(child),
                log,
                status: None,
            },
            stdout,
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for a log line containing every one of `parts`, at or after line `from`; returns
    /// its index and text.
    pub fn wait_log_from(&self, from: usize, parts: &[&str], timeout: Duration) -> (usize, String) {
        let (lock, changed) = &*self.log;
        let deadline = Instant::now() + timeout;
        let mut log = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((i, line)) = log
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, line)| parts.iter().all(|p| line.contains(p)))
            {
                return (i, line.clone());
            }
            let now = Instant::now();
            if log.closed || now >= deadline {
                let why = if log.closed { "it exited" } else { "timed out" };
                let tail: Vec<&String> = log.lines.iter().rev().take(30).collect();
                panic!(
                    "{}: {why} waiting for a log line with {parts:?}; last lines:\n{}",
                    self.name,
                    tail.into_iter()
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            log = changed
                .wait_timeout(log, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    pub fn wait_log(&self, parts: &[&str], timeout: Duration) -> String {
        self.wait_log_from(0, parts, timeout).1
    }

    /// Number of log lines so far (a cursor for [`Daemon::wait_log_from`]).
    pub fn log_len(&self) -> usize {
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .len()
    }

    pub fn log_text(&self) -> String {
        self.log
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines
            .join("\n")
    }

    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Waits for the process to exit (after a signal), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.status = Some(status);
        // The log pipe closes with the process.
        let (lock, changed) = &*self.log;
        let mut log = lock.lock().unwrap_or_else(|e| e.into_inner());
        let until = Instant::now() + Duration::from_secs(5);
        while !log.closed && Instant::now() < until {
            log = changed
                .wait_timeout(log, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        status
    }

    /// SIGTERM, as systemd stops a service, and waits.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Some(child) = &mut self.child
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
