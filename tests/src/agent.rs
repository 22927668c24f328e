//! A running `custos-agent --stdout`, with every event it printed parsed as
//! [`custos_proto::Event`] (so each test also checks the JSON is well formed).
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use custos_proto::{AuditSessionId, Event, EventBody};

use crate::bin;

#[derive(Default)]
struct State {
    events: Vec<Event>,
    stdout_bytes: usize,
    stderr: String,
    ready: bool,
    stdout_closed: bool,
    stderr_closed: bool,
    bad_lines: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state);
        self.changed.notify_all();
    }
}

pub struct Agent {
    child: Option<Child>,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

/// What a stopped agent left: its events, its log, and how it exited.
pub struct Stopped {
    pub events: Vec<Event>,
    pub stderr: String,
    pub stdout_bytes: usize,
    pub success: bool,
}

/// How long an agent may take to load and attach its programs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts an agent with `config` (TOML) and waits until it records.
    pub fn start(config: &str) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("agent.toml");
        std::fs::write(&config_path, config).expect("writing agent config");
        let mut child = Command::new(bin("custos-agent"))
            .arg("--stdout")
            .arg("--config")
            .arg(&config_path)
            .env("CUSTOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting custos-agent");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let stdout = child.stdout.take().expect("stdout");
        let reader = shared.clone();
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match stdout.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let parsed = serde_json::from_str::<Event>(line.trim_end());
                        reader.update(|state| {
                            state.stdout_bytes += n;
                            match parsed {
                                Ok(event) => state.events.push(event),
                                Err(err) => state.bad_lines.push(format!("{err}: {line}")),
                            }
                        });
                    }
                }
            }
            reader.update(|state| state.stdout_closed = true);
        });
        let stderr = child.stderr.take().expect("stderr");
        let reader = shared.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                reader.update(|state| {
                    if line.contains("recording login sessions") {
                        state.ready = true;
                    }
                    state.stderr.push_str(&line);
                    state.stderr.push('\n');
                });
            }
            reader.update(|state| state.stderr_closed = true);
        });
        let agent = Agent {
            child: Some(child),
            shared,
            _dir: dir,
        };
        agent.wait_state("the agent to start recording", START_TIMEOUT, |state| {
            if state.stderr_closed && !state.ready {
                panic!("custos-agent exited before recording:\n{}", state.stderr);
            }
            state.ready.then_some(())
        });
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn wait_state<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            assert!(
                state.bad_lines.is_empty(),
                "the agent printed lines that are not events: {:?}",
                state.bad_lines
            );
            if let Some(value) = check(&state) {
                return value;
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} events so far; agent log:\n{}",
                    state.events.len(),
                    state.stderr
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until `check` finds what it wants in the events printed so far.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Event]) -> Option<T>,
    ) -> T {
        self.wait_state(what, timeout, |state| check(&state.events))
    }

    /// A copy of the events printed so far.
    pub fn events(&self) -> Vec<Event> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .clone()
    }

    /// Stops the agent with SIGINT (as Ctrl-C or systemd would) and collects everything.
    pub fn stop(mut self) -> Stopped {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the agent") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("the agent did not stop within 30 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.wait_state(
            "the agent's output to end",
            Duration::from_secs(10),
            |state| (state.stdout_closed && state.stderr_closed).then_some(()),
        );
        let state =
            std::mem::take(&mut *self.shared.state.lock().unwrap_or_else(|e| e.into_inner()));
        Stopped {
            events: state.events,
            stderr: state.stderr,
            stdout_bytes: state.stdout_bytes,
            success: status.success(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The events of one session, in the order printed.
pub fn session(events: &[Event], id: AuditSessionId) -> Vec<&Event> {
    events.iter().filter(|e| e.session == id).collect()
}

/// The session whose start record names `user` as the login user and whose leader runs
/// something matching `leader`.
pub fn find_session(events: &[Event], user: &str) -> Option<AuditSessionId> {
    events.iter().rev().find_map(|e| match &e.event {
        EventBody::SessionStart(start) if start.login_user.as_deref() == Some(user) => {
            Some(e.session)
        }
        _ => None,
    })
}

/// Concatenated terminal output (or input) of a session.
pub fn terminal_bytes(events: &[&Event], input: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    for event in events {
        match (&event.event, input) {
            (EventBody::Output(output), false) => bytes.extend_from_slice(output.data.as_bytes()),
            (EventBody::Input(data), true) => bytes.extend_from_slice(data.data.as_bytes()),
            _ => {}
        }
    }
    bytes
}

/// Did the session end?
pub fn ended(events: &[Event], id: AuditSessionId) -> bool {
    events
        .iter()
        .any(|e| e.session == id && matches!(e.event, EventBody::SessionEnd(_)))
}
