//! Real-time alerts on the live stream: every batch ingest stores is offered to the engine
//! (never waited on: when the engine falls behind, batches are skipped and counted, and ingest
//! goes on), which matches its events against the rules, limits each rule's rate, and hands
//! alerts to the sinks.
//! - [`rules`]: what fires (the customer's rules and the built-ins);
//! - [`networks`]: known networks and CIDR lists in rules;
//! - [`sinks`]: where alerts go (JSON lines, syslog, HTTPS webhook; [`syslog_tls`] over TLS).
pub mod networks;
pub mod rules;
pub mod sinks;
pub mod syslog_tls;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    time::{Duration, Instant},
};

use custos_proto::{BootId, Event, EventBody, Timestamp, wire};
use serde::Deserialize;
use tracing::{info, warn};

use self::{
    networks::Networks,
    rules::{BuiltinConfig, Builtins, Rule, RuleConfig, SessionContext},
    sinks::{Alert, AlertEvent, JsonLog, MatchedField, Sink, Syslog, Webhook, WebhookConfig},
};
use crate::{
    metrics::{CollectorMetrics, RuleLabel},
    store::StoreConfig,
    trust::chunk::RecordingKey,
};

/// `[alerts]` in collector.toml.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// A JSON lines file alerts are appended to.
    pub json_log: Option<PathBuf>,
    /// `unix:/dev/log`, `udp:HOST:PORT` (RFC 5424) or `tls:HOST:PORT` (RFC 5425, the
    /// receiver's certificate checked against `syslog_ca`).
    pub syslog: Option<String>,
    /// CA certificates (PEM) a `tls:` syslog receiver's certificate must chain to.
    pub syslog_ca: PathBuf,
    pub webhook: Option<WebhookConfig>,
    /// At most this many alerts per rule per `rate_window`; the rest are counted and reported
    /// in one notice when the window ends.
    pub rate_limit: u32,
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub rate_window: Duration,
    /// Networks logins are expected from (CIDR blocks or addresses), for the built-in
    /// login_from_unknown_network and rules' `remote_in` / `remote_not_in = ["known"]`.
    pub known_networks: Vec<String>,
    pub builtin: BuiltinConfig,
    pub rules: Vec<RuleConfig>,
    /// Bytes of stored batches (compressed) waiting for the engine at most; beyond, alerting
    /// skips new batches (counted) and ingest goes on.
    pub queue_size: bytesize::ByteSize,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            json_log: None,
            syslog: None,
            syslog_ca: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            webhook: None,
            rate_limit: 20,
            rate_window: Duration::from_secs(60),
            known_networks: Vec::new(),
            builtin: BuiltinConfig::default(),
            rules: Vec::new(),
            queue_size: bytesize::ByteSize::mib(64),
        }
    }
}

impl AlertsConfig {
    /// Compiles the rules; the error names the key.
    pub fn compile(&self) -> Result<(Vec<Rule>, Builtins), String> {
        let known = Networks::parse("alerts.known_networks", &self.known_networks, None)?;
        let rules = self
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Rule::compile(index, rule, &known))
            .collect::<Result<Vec<_>, _>>()?;
        let builtins = Builtins::compile(&self.builtin, &known)?;
        if self.rate_limit == 0 {
            return Err("alerts.rate_limit: must be at least 1".into());
        }
        if let Some(syslog) = &self.syslog {
            Syslog::new(syslog, &self.syslog_ca)?;
        }
        Ok((rules, builtins))
    }

    /// Whether any rule can fire.
    fn active(&self) -> bool {
        let b = &self.builtin;
        !self.rules.is_empty()
            || b.phi_write
            || b.shadow_read
            || b.exfiltration_after_phi
            || b.agent_silent.is_some()
            || b.clock_set
            || b.login_from_unknown_network
    }
}

/// What the engine is sent.
enum Message {
    /// A stored batch, shared with the store (not copied).
    Batch(Arc<wire::Batch>),
    Cloned(ClonedSpool),
    Rules(Box<CompiledRules>),
}

/// A spool id that arrived from a second agent certificate: two hosts made from one image (or
/// an agent using another's spool id). Both hosts' batches are stored; this raises the built-in
/// alert `cloned_agent_state`.
#[derive(Clone, Debug)]
pub struct ClonedSpool {
    /// The agent (certificate name) the spool id just arrived from.
    pub agent: String,
    pub spool: String,
    /// The agents it arrived from before.
    pub others: Vec<String>,
    /// The recording the new agent's batch went to.
    pub recording: String,
}

/// Everything a reload can change.
struct CompiledRules {
    rules: Vec<Rule>,
    builtins: Builtins,
    limit: u32,
    window: Duration,
}

/// Ingest's side: offers stored batches to the engine without ever waiting.
#[derive(Clone)]
pub struct AlertFeed {
    sender: SyncSender<Message>,
    /// Some rule can fire (otherwise batches are not even offered).
    active: Arc<AtomicBool>,
    queue: Arc<QueueBytes>,
    metrics: Arc<CollectorMetrics>,
}

/// The bytes of batches offered to the engine and not yet evaluated, against their limit.
struct QueueBytes {
    queued: AtomicUsize,
    limit: usize,
}

impl QueueBytes {
    /// Counts `bytes` in unless that would pass the limit.
    fn admit(&self, bytes: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued
                    .checked_add(bytes)
                    .filter(|&after| after <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What a batch counts against the queue's limit.
fn queued_size(batch: &wire::Batch) -> usize {
    batch.events.len() + std::mem::size_of::<wire::Batch>()
}

impl AlertFeed {
    pub fn wants(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Offers a stored batch (shared with the store) to the engine; skipped (and counted) when
    /// the engine's queue is full, in bytes or in batches.
    pub fn offer(&self, batch: Arc<wire::Batch>) {
        let events = u64::from(batch.header.events);
        let size = queued_size(&batch);
        if !self.queue.admit(size) {
            self.metrics.alert_events_skipped.inc_by(events);
            return;
        }
        match self.sender.try_send(Message::Batch(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queue.release(size);
                self.metrics.alert_events_skipped.inc_by(events);
            }
        }
    }

    /// Reports a spool id arriving from a second agent (raised whatever rules are active,
    /// unless `alerts.builtin.cloned_agent` is off). Never waits: with the engine's queue full it
    /// is only logged (ingest has logged it already).
    pub fn cloned_spool(&self, cloned: ClonedSpool) {
        if self.sender.try_send(Message::Cloned(cloned)).is_err() {
            warn!("alerts: the engine is behind; a cloned agent state alert was not raised");
        }
    }

    /// New rules (SIGHUP); sinks stay as they were at start. An invalid configuration changes
    /// nothing and says why.
    pub fn reload(&self, config: &AlertsConfig) -> Result<(), String> {
        let (rules, builtins) = config.compile()?;
        self.active.store(config.active(), Ordering::Relaxed);
        self.sender
            .send(Message::Rules(Box::new(CompiledRules {
                rules,
                builtins,
                limit: config.rate_limit,
                window: config.rate_window,
            })))
            .map_err(|_| "the alert engine has stopped".to_owned())
    }
}

/// Batches waiting for the engine at most (then ingest skips alerting on new ones).
const FEED_DEPTH: usize = 4096;

/// Starts the engine (a thread); it idles until a rule is configured.
pub fn start(
    config: &AlertsConfig,
    store: StoreConfig,
    metrics: Arc<CollectorMetrics>,
) -> anyhow::Result<AlertFeed> {
    let (rules, builtins) = config.compile().map_err(anyhow::Error::msg)?;
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(path) = &config.json_log {
        sinks.push(Box::new(JsonLog::new(path.clone())));
    }
    if let Some(target) = &config.syslog {
        sinks.push(Box::new(
            Syslog::new(target, &config.syslog_ca).map_err(anyhow::Error::msg)?,
        ));
    }
    if let Some(webhook) = &config.webhook {
        sinks.push(Box::new(
            Webhook::start(webhook, metrics.clone()).map_err(anyhow::Error::msg)?,
        ));
    }
    if sinks.is_empty() && config.active() {
        warn!(
            "alert rules are configured but no sink ([alerts] json_log, syslog or webhook): alerts only go to this log"
        );
    }
    let (sender, receiver) = sync_channel(FEED_DEPTH);
    let queue = Arc::new(QueueBytes {
        queued: AtomicUsize::new(0),
        limit: usize::try_from(config.queue_size.as_u64()).unwrap_or(usize::MAX),
    });
    let mut engine = Engine {
        queue: queue.clone(),
        rules,
        builtins,
        sinks,
        sessions: HashMap::new(),
        windows: HashMap::new(),
        limit: config.rate_limit,
        window: config.rate_window,
        silent: HashMap::new(),
        clock_sets: HashMap::new(),
        store,
        metrics: metrics.clone(),
    };
    std::thread::Builder::new()
        .name("alerts".into())
        .spawn(move || engine.run(receiver))?;
    if config.active() {
        info!(rules = config.rules.len(), "alert rules active");
    }
    Ok(AlertFeed {
        sender,
        active: Arc::new(AtomicBool::new(config.active())),
        queue,
        metrics,
    })
}

/// One rule's rate window.
struct Window {
    start: Instant,
    sent: u32,
    suppressed: u64,
    /// The last suppressed alert, for the notice's session and host.
    last: Option<Alert>,
}

struct Engine {
    /// Bytes of batches waiting for it (released once evaluated).
    queue: Arc<QueueBytes>,
    rules: Vec<Rule>,
    builtins: Builtins,
    sinks: Vec<Box<dyn Sink>>,
    /// Per recording id.
    sessions: HashMap<String, SessionContext>,
    windows: HashMap<String, Window>,
    limit: u32,
    window: Duration,
    /// Agents already reported silent, by host.
    silent: HashMap<String, Timestamp>,
    /// The last clock step alerted, by host (every open session records the same step).
    clock_sets: HashMap<String, (i64, Timestamp)>,
    store: StoreConfig,
    metrics: Arc<CollectorMetrics>,
}

/// Sessions remembered at most (ended ones are forgotten at their end record).
const SESSIONS_MAX: usize = 200_000;

impl Engine {
    fn run(&mut self, receiver: Receiver<Message>) {
        let mut last_check = Instant::now();
        loop {
            match receiver.recv_timeout(Duration::from_millis(500)) {
                Ok(Message::Batch(batch)) => {
                    self.batch(&batch);
                    self.queue.release(queued_size(&batch));
                }
                Ok(Message::Cloned(cloned)) => self.cloned(cloned),
                Ok(Message::Rules(new)) => {
                    self.rules = new.rules;
                    self.builtins = new.builtins;
                    self.limit = new.limit;
                    self.window = new.window;
                    info!(rules = self.rules.len(), "alert rules reloaded");
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.close_windows();
            let check_silence = self
                .builtins
                .agent_silent
                .map(|s| (s / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)));
            if let Some(every) = check_silence
                && last_check.elapsed() >= every
            {
                self.agents_silent();
                last_check = Instant::now();
            }
        }
    }

    fn batch(&mut self, batch: &wire::Batch) {
        let limit = 1 << 30;
        let events = match wire::decode_events(&batch.events, batch.header.raw_len, limit) {
            Ok(events) => events,
            Err(err) => {
                warn!(error = %err, "alerts: undecodable batch skipped");
                return;
            }
        };
        for event in &events {
            self.event(event);
        }
    }

    fn event(&mut self, event: &Event) {
        let id = RecordingKey {
            host: event.host.clone(),
            boot_id: BootId(event.boot_id.0.clone()),
            session: event.session,
        }
        .id();
        if self.sessions.len() > SESSIONS_MAX {
            self.sessions.clear();
        }
        let context = self.sessions.entry(id.clone()).or_default().clone();
        let minute = {
            let zoned = event.time.to_jiff().to_zoned(jiff::tz::TimeZone::system());
            u32::from(zoned.hour().unsigned_abs()) * 60 + u32::from(zoned.minute().unsigned_abs())
        };
        let mut fired: Vec<String> = self
            .builtins
            .fired(event, &context)
            .into_iter()
            .filter(|rule| *rule != "clock_set" || self.first_of_clock_set(event))
            .map(String::from)
            .collect();
        fired.extend(
            self.rules
                .iter()
                .filter(|r| r.matches(event, &context, minute))
                .map(|r| r.name.clone()),
        );
        // The session's context after this event.
        match &event.event {
            EventBody::SessionStart(start) => {
                let c = self.sessions.entry(id.clone()).or_default();
                c.user = start.login_user.clone();
                c.remote = start.remote.clone();
            }
            EventBody::Open(open) if self.builtins.is_phi(&open.path.to_string()) => {
                self.sessions.entry(id.clone()).or_default().touched_phi = true;
            }
            EventBody::SessionEnd(_) => {
                self.sessions.remove(&id);
            }
            _ => {}
        }
        let user = context
            .user
            .clone()
            .or_else(|| event.process.as_ref().and_then(|p| p.login_user.clone()));
        for rule in fired {
            // Built-ins never include the value; a configured rule may.
            let include = self.rules.iter().any(|r| r.name == rule && r.include_match);
            let about = alert_event(event, include);
            let alert = Alert {
                time: Timestamp::now(),
                summary: summary(&rule, event, user.as_deref(), &about),
                rule,
                host: event.host.clone(),
                show: format!("custos show {id}"),
                session: id.clone(),
                user: user.clone(),
                event: Some(about),
                suppressed: None,
            };
            self.raise(alert);
        }
    }

    /// Whether `event`, a clock step, is the first this host reported of that step (each of
    /// the host's open sessions records it, within moments of each other).
    fn first_of_clock_set(&mut self, event: &Event) -> bool {
        let EventBody::ClockSet(set) = &event.event else {
            return true;
        };
        const SAME_STEP_NS: i64 = 10_000_000_000;
        let seen = self
            .clock_sets
            .get(&event.host)
            .is_some_and(|(step, time)| {
                *step == set.step_ns && (event.time.0 - time.0).abs() < SAME_STEP_NS
            });
        if self.clock_sets.len() > SESSIONS_MAX {
            self.clock_sets.clear();
        }
        self.clock_sets
            .insert(event.host.clone(), (set.step_ns, event.time));
        !seen
    }

    /// Sends `alert` unless its rule is over its rate.
    fn raise(&mut self, alert: Alert) {
        let label = RuleLabel {
            rule: alert.rule.clone(),
        };
        let window = self.windows.entry(alert.rule.clone()).or_insert(Window {
            start: Instant::now(),
            sent: 0,
            suppressed: 0,
            last: None,
        });
        if window.sent >= self.limit {
            window.suppressed += 1;
            window.last = Some(alert);
            self.metrics.alerts_suppressed.get_or_create(&label).inc();
            return;
        }
        window.sent += 1;
        self.metrics.alerts_fired.get_or_create(&label).inc();
        self.deliver(&alert);
    }

    fn deliver(&mut self, alert: &Alert) {
        warn!(
            rule = alert.rule,
            host = alert.host,
            session = alert.session,
            user = alert.user.as_deref().unwrap_or("-"),
            "alert: {}",
            alert.summary
        );
        for sink in &mut self.sinks {
            sink.send(alert);
        }
    }

    /// Ends rate windows that are over, sending one notice per rule that suppressed alerts.
    fn close_windows(&mut self) {
        let now = Instant::now();
        let over: Vec<String> = self
            .windows
            .iter()
            .filter(|(_, w)| now.duration_since(w.start) >= self.window)
            .map(|(rule, _)| rule.clone())
            .collect();
        for rule in over {
            let Some(window) = self.windows.remove(&rule) else {
                continue;
            };
            if let (n, Some(last)) = (window.suppressed, window.last)
                && n > 0
            {
                let notice = Alert {
                    time: Timestamp::now(),
                    summary: format!(
                        "{n} more alerts of rule {rule} in {:?} were not sent (rate limit {} per window); the last one was: {}",
                        self.window, self.limit, last.summary
                    ),
                    rule: rule.clone(),
                    suppressed: Some(n),
                    event: None,
                    ..last
                };
                self.deliver(&notice);
            }
        }
    }

    /// The built-in rule for a spool id arriving from more than one agent.
    fn cloned(&mut self, cloned: ClonedSpool) {
        if !self.builtins.cloned_agent {
            return;
        }
        let ClonedSpool {
            agent,
            spool,
            others,
            recording,
        } = cloned;
        let alert = Alert {
            time: Timestamp::now(),
            rule: "cloned_agent_state".into(),
            summary: format!(
                "[cloned_agent_state] spool {spool} arrives from {agent} and from {}: cloned \
                 agent state (hosts made from one image that carried the agent's spool, or an \
                 agent using another's spool id); each host's batches are stored as its own",
                others.join(", ")
            ),
            show: format!("custos show {recording}"),
            host: agent,
            session: recording,
            user: None,
            event: None,
            suppressed: None,
        };
        self.raise(alert);
    }

    /// The built-in rule for agents that stopped reporting.
    fn agents_silent(&mut self) {
        let Some(silence) = self.builtins.agent_silent else {
            return;
        };
        let agents = crate::store::Store::open_read_only(&self.store)
            .ok()
            .and_then(|store| store.index().agents().ok())
            .unwrap_or_default();
        let now = Timestamp::now();
        for agent in agents {
            let quiet = now.seconds_since(agent.last_contact);
            if quiet < silence.as_secs_f64() {
                self.silent.remove(&agent.host);
                continue;
            }
            if self.silent.get(&agent.host) == Some(&agent.last_contact) {
                continue;
            }
            self.silent.insert(agent.host.clone(), agent.last_contact);
            let alert = Alert {
                time: now,
                rule: "agent_silent".into(),
                summary: format!(
                    "the agent on {} has not reported since {} ({:.0} minutes)",
                    agent.host,
                    agent.last_contact,
                    quiet / 60.0
                ),
                show: format!("custos sessions --host {}", agent.host),
                host: agent.host,
                session: String::new(),
                user: None,
                event: None,
                suppressed: None,
            };
            self.raise(alert);
        }
    }
}

/// The field of `event` alert rules are about, and its value.
fn matched_field(event: &Event) -> Option<(&'static str, String)> {
    match &event.event {
        EventBody::Exec(exec) => {
            let argv: Vec<String> = exec.argv.iter().map(|a| a.to_string()).collect();
            Some(("argv", argv.join(" ")))
        }
        EventBody::Open(open) => Some(("path", open.path.to_string())),
        EventBody::Output(output) => Some(("data", output.data.to_string())),
        EventBody::Input(input) => Some(("data", input.data.to_string())),
        EventBody::SessionStart(start) => start.remote.clone().map(|r| ("remote", r)),
        _ => None,
    }
}

/// What an alert says of the event that fired it: ids and kind, and the matched field's value
/// only when `include` (the rule's `include_match`).
fn alert_event(event: &Event, include: bool) -> AlertEvent {
    AlertEvent {
        kind: event.kind().to_owned(),
        time: event.time,
        seq: event.seq.0,
        pid: event.process.as_ref().map(|p| p.tgid.0),
        field: matched_field(event).map(|(name, value)| MatchedField {
            name: name.to_owned(),
            value: include.then_some(value),
            redacted: !include,
        }),
    }
}

/// The longest matched value a summary quotes (the alert's field has it whole).
const SUMMARY_VALUE_MAX: usize = 200;

/// What happened, in one line: no command line, path or terminal data unless the alert
/// includes the matched value (`about`).
fn summary(rule: &str, event: &Event, user: Option<&str>, about: &AlertEvent) -> String {
    let who = user.unwrap_or("an unknown user");
    let what = match &event.event {
        EventBody::Exec(_) => "ran a command".to_owned(),
        EventBody::Open(open) => {
            let access = match open.access {
                custos_proto::event::Access::Read => "reading",
                custos_proto::event::Access::Write => "writing",
                custos_proto::event::Access::ReadWrite => "reading and writing",
                custos_proto::event::Access::Path => "its path only",
            };
            format!("opened a file for {access}")
        }
        EventBody::ClockSet(set) => {
            let (by, way) = (
                set.step_ns.unsigned_abs() as f64 / 1e9,
                if set.step_ns < 0 { "back" } else { "forward" },
            );
            return format!(
                "[{rule}] the wall clock of {} was set {by:.3} s {way} during a session of {who}",
                event.host
            );
        }
        other => format!("{} event", other.kind()),
    };
    let quoted = match about.field.as_ref() {
        Some(MatchedField {
            name,
            value: Some(value),
            ..
        }) => {
            let mut shown: String = value
                .chars()
                .filter(|c| !c.is_control())
                .take(SUMMARY_VALUE_MAX)
                .collect();
            if value.chars().count() > SUMMARY_VALUE_MAX {
                shown.push('…');
            }
            format!(" ({name}: {shown})")
        }
        Some(MatchedField { name, .. }) => format!(" ({name} redacted)"),
        None => String::new(),
    };
    format!("[{rule}] {who} {what} on {}{quoted}", event.host)
}

#[cfg(test)]
mod tests;
