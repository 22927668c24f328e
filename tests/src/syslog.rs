//! What programs send to syslog during a test: a receiver on `/dev/log` when the host has none
//! (containers), else the journal followed with `journalctl -f`. Either way [`Syslog::wait_for`]
//! waits, bounded, for the line it is told to expect.
use std::{
    io::{BufRead as _, BufReader},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

const DEV_LOG: &str = "/dev/log";

/// Syslog lines arriving from now on.
pub struct Syslog {
    lines: Receiver<String>,
    /// Every line seen so far (for failure messages).
    seen: Vec<String>,
    source: Source,
}

enum Source {
    /// Our own `/dev/log`, removed on drop.
    Socket {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
    /// `journalctl -f` for the tag.
    Journal(Child),
}

impl Syslog {
    /// Starts receiving the lines tagged `tag` (all lines when the socket is ours).
    pub fn capture(tag: &str) -> Syslog {
        let (send, lines) = mpsc::channel();
        // A socket left by a test that did not clean up: nobody reads it.
        if Path::new(DEV_LOG).exists()
            && UnixDatagram::unbound()
                .and_then(|s| s.connect(DEV_LOG))
                .is_err_and(|err| err.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            let _ = std::fs::remove_file(DEV_LOG);
        }
        let source = if Path::new(DEV_LOG).exists() {
            let mut child = Command::new("journalctl")
                .args([
                    "--follow",
                    "--lines=0",
                    "--output=short",
                    "--identifier",
                    tag,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!("{DEV_LOG} exists and is not ours, and journalctl does not run: {err}")
                });
            let stdout = child.stdout.take().expect("journalctl's stdout");
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if send.send(line).is_err() {
                        break;
                    }
                }
            });
            Source::Journal(child)
        } else {
            let socket = UnixDatagram::bind(DEV_LOG)
                .unwrap_or_else(|err| panic!("binding {DEV_LOG}: {err}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
            let stop = Arc::new(AtomicBool::new(false));
            let stopping = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stopping.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(n) => {
                            let line = String::from_utf8_lossy(&buf[..n]).into_owned();
                            if send.send(line).is_err() {
                                break;
                            }
                        }
                        Err(err)
                            if matches!(
                                err.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(err) => panic!("receiving on {DEV_LOG}: {err}"),
                    }
                }
            });
            Source::Socket {
                stop,
                thread: Some(thread),
            }
        };
        Syslog {
            lines,
            seen: Vec::new(),
            source,
        }
    }

    /// The first line from now on that `matches`, within `timeout`; panics naming `what` and
    /// the lines seen otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "timed out after {timeout:?} waiting for the syslog line {what}; seen: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Every line logged before now, up to a marker this sends with `tag` (syslog keeps a
    /// sender's order), so that a test may check that something was not logged.
    pub fn until_now(&mut self, tag: &str) -> Vec<String> {
        let mark = crate::marker("SYSLOG-");
        let status = Command::new("logger")
            .args(["-t", tag, "--", &mark])
            .status()
            .expect("running logger");
        assert!(status.success(), "logger failed");
        let from = self.seen.len();
        self.wait_for(&mark, Duration::from_secs(20), |line| line.contains(&mark));
        self.seen[from..self.seen.len() - 1].to_vec()
    }
}

impl Drop for Syslog {
    fn drop(&mut self) {
        match &mut self.source {
            Source::Socket { stop, thread } => {
                stop.store(true, Ordering::Relaxed);
                let _ = std::fs::remove_file(DEV_LOG);
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Source::Journal(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
