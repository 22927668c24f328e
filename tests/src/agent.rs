//! A running `custos-agent --stdout`, with every event it printed parsed as
//! [`custos_proto::Event`] (so each test also checks the JSON is well formed).
use std::{
    io::{BufRead, BufReader},
    process::Command,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use custos_proto::{
    AuditSessionId, Event, EventBody,
    event::{Exec, Open},
};

use crate::{bin, daemon::Daemon};

#[derive(Default)]
struct State {
    events: Vec<Event>,
    stdout_closed: bool,
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

/// A running `custos-agent`: with `--stdout` its events are parsed as they come; shipping, it
/// prints none.
pub struct Agent {
    pub daemon: Daemon,
    shared: Arc<Shared>,
    _dir: tempfile::TempDir,
}

/// What a stopped agent left: its events, its log, and how it exited.
pub struct Stopped {
    pub events: Vec<Event>,
    pub stderr: String,
    pub success: bool,
}

/// How long an agent may take to load and attach its programs.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Agent {
    /// Starts an agent printing events (`--stdout`) with `config` (TOML), once it records.
    pub fn start(config: &str) -> Agent {
        Self::launch(config, true, None)
    }

    /// Starts an agent shipping to a collector, once it records.
    pub fn start_shipping(config: &str) -> Agent {
        Self::launch(config, false, None)
    }

    /// Starts a shipping agent inside network namespace `netns`.
    pub fn start_shipping_in(netns: &str, config: &str) -> Agent {
        Self::launch(config, false, Some(netns))
    }

    /// Starts an agent printing events (`--stdout`) with exactly the user and capabilities its
    /// systemd unit (packaging/systemd/custos-agent.service) grants.
    pub fn start_as_unit(config: &str) -> Agent {
        let unit = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../packaging/systemd/custos-agent.service"),
        )
        .expect("the agent's unit file");
        let setting = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{key}= in the unit"))
                .trim()
                .to_owned()
        };
        let user = setting("User");
        let account = crate::users::ensure_system(&user);
        let caps: Vec<String> = setting("AmbientCapabilities")
            .split_whitespace()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        assert_eq!(
            setting("CapabilityBoundingSet"),
            setting("AmbientCapabilities"),
            "the unit bounds the agent to the capabilities it grants"
        );
        let caps = format!("-all,{}", caps.join(","));
        let wrapper = vec![
            "setpriv".to_owned(),
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            format!("--bounding-set={caps}"),
            "--no-new-privs".to_owned(),
        ];
        Self::launch_wrapped(config, true, None, &wrapper, Some(account.uid))
    }

    fn launch(config: &str, stdout: bool, netns: Option<&str>) -> Agent {
        Self::launch_wrapped(config, stdout, netns, &[], None)
    }

    fn launch_wrapped(
        config: &str,
        stdout: bool,
        netns: Option<&str>,
        wrapper: &[String],
        owner: Option<nix::unistd::Uid>,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("agent.toml");
        // The status file in the test's folder (the unit's /run/custos-agent is not there),
        // in a folder the agent's user may write.
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("creating the status file's folder");
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&run, Some(uid.as_raw()), None).expect("chown run");
        }
        let config = with_status_file(&with_metrics_port(config), &run.join("status.json"));
        std::fs::write(&config_path, config).expect("writing agent config");
        if !wrapper.is_empty() {
            // Readable by the unprivileged user the wrapper switches to.
            use std::os::unix::fs::PermissionsExt as _;
            for (path, mode) in [(dir.path(), 0o755), (config_path.as_path(), 0o644)] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod");
            }
        }
        let mut command = match (netns, wrapper.split_first()) {
            (Some(ns), _) => crate::netns::Network::command(ns, bin("custos-agent")),
            (None, Some((program, args))) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("custos-agent"));
                c
            }
            (None, None) => Command::new(bin("custos-agent")),
        };
        if stdout {
            command.arg("--stdout");
        }
        command
            .arg("--config")
            .arg(&config_path)
            .env("CUSTOS_LOG", "info,custos_agent::ship=debug");
        let (daemon, out) = Daemon::spawn("custos-agent", command, stdout);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        match out {
            Some(out) => {
                let reader = shared.clone();
                std::thread::spawn(move || {
                    let mut out = BufReader::new(out);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match out.read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                let parsed = serde_json::from_str::<Event>(line.trim_end());
                                reader.update(|state| match parsed {
                                    Ok(event) => state.events.push(event),
                                    Err(err) => state.bad_lines.push(format!("{err}: {line}")),
                                });
                            }
                        }
                    }
                    reader.update(|state| state.stdout_closed = true);
                });
            }
            None => shared.update(|state| state.stdout_closed = true),
        }
        daemon.wait_log(&["recording login sessions"], START_TIMEOUT);
        Agent {
            daemon,
            shared,
            _dir: dir,
        }
    }

    /// The configuration file the agent was started with (rewrite it, then SIGHUP).
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("agent.toml")
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
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
                    self.daemon.log_text()
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

    /// Stops the agent with SIGINT (as Ctrl-C would) and collects everything.
    pub fn stop(mut self) -> Stopped {
        self.daemon.signal(libc::SIGINT);
        let status = self.daemon.wait_exit(Duration::from_secs(60));
        self.wait_state(
            "the agent's output to end",
            Duration::from_secs(10),
            |state| state.stdout_closed.then_some(()),
        );
        let state =
            std::mem::take(&mut *self.shared.state.lock().unwrap_or_else(|e| e.into_inner()));
        Stopped {
            events: state.events,
            stderr: self.daemon.log_text(),
            success: status.success(),
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

/// The opens among `events`.
pub fn opens<'a>(events: &[&'a Event]) -> Vec<&'a Open> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Open(open) => Some(open),
            _ => None,
        })
        .collect()
}

/// The execs among `events`.
pub fn execs<'a>(events: &[&'a Event]) -> Vec<&'a Exec> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect()
}

/// Did the session end?
pub fn ended(events: &[Event], id: AuditSessionId) -> bool {
    events
        .iter()
        .any(|e| e.session == id && matches!(e.event, EventBody::SessionEnd(_)))
}

/// Unless `config` sets it, the metrics endpoint on a free port: several daemons may run at once.
/// `config` with `[agent] status_file` set to `path`, unless it sets one.
pub fn with_status_file(config: &str, path: &std::path::Path) -> String {
    if config.contains("status_file") {
        return config.to_owned();
    }
    let key = format!("status_file = {:?}\n", path.display().to_string());
    match config.find("[agent]\n") {
        Some(at) => {
            let (head, tail) = config.split_at(at + "[agent]\n".len());
            format!("{head}{key}{tail}")
        }
        None => format!("{config}\n[agent]\n{key}"),
    }
}

pub fn with_metrics_port(config: &str) -> String {
    if config.contains("[metrics]") {
        config.to_owned()
    } else {
        format!("{config}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
    }
}
