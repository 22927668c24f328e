//! Where alerts go: a JSON lines file, syslog (RFC 5424, over the local socket or UDP, or over
//! TLS: [`super::syslog_tls`]), and an
//! HTTPS webhook (with retries, from a bounded queue: when the receiver is down, the oldest
//! alerts waiting are dropped and counted, never the collector's ingest).
use std::{
    collections::VecDeque,
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::syslog_tls::TlsSyslog;
use crate::metrics::CollectorMetrics;

/// One alert, as every sink sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Alert {
    /// When the collector raised it.
    pub time: custos_proto::Timestamp,
    pub rule: String,
    pub host: String,
    /// The recording id (`custos show` takes it).
    pub session: String,
    pub user: Option<String>,
    /// What happened, in one line.
    pub summary: String,
    /// The command that opens the session.
    pub show: String,
    /// What fired the rule (absent for alerts about agents or suppression): which event, and
    /// the field that matched, its value only when the rule says so. Never the event itself:
    /// alerts leave the collector, and a sink keeps them in the clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AlertEvent>,
    /// For a suppression notice: how many alerts of `rule` were not sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// The event an alert is about, as far as the alert tells it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// Its kind: exec, open, output...
    pub kind: String,
    /// When it happened on the host (the host's clock).
    pub time: custos_proto::Timestamp,
    /// Its number in the recording.
    pub seq: u64,
    /// The process, when the event names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The field of the event the rule is about (absent for kinds with none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<MatchedField>,
}

/// The field of an event a rule is about: its name, and its value only when the rule sets
/// `include_match = true` (command lines, paths and terminal data are what the recording
/// protects).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchedField {
    /// `argv` (exec), `path` (open), `data` (output, input), `remote` (session start).
    pub name: String,
    /// The value, when the rule includes it; otherwise absent and `redacted` true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub redacted: bool,
}

/// `[alerts.webhook]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// An https:// URL.
    pub url: String,
    /// A CA certificate (PEM) to trust besides the system's.
    pub ca: Option<PathBuf>,
    #[serde(
        default = "default_timeout",
        deserialize_with = "custos_daemon::duration"
    )]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Alerts waiting for the receiver at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_retries() -> u32 {
    5
}
fn default_queue() -> usize {
    1000
}

pub trait Sink: Send {
    fn send(&mut self, alert: &Alert);
}

pub struct JsonLog {
    path: PathBuf,
}

impl JsonLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

impl Sink for JsonLog {
    fn send(&mut self, alert: &Alert) {
        let write = || -> std::io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            let mut line = serde_json::to_vec(alert).map_err(std::io::Error::other)?;
            line.push(b'\n');
            file.write_all(&line)
        };
        if let Err(err) = write() {
            warn!(path = %self.path.display(), error = %err, "cannot write the alert log");
        }
    }
}

/// RFC 5424 over a datagram socket (`unix:/dev/log`, `udp:HOST:PORT`) or over TLS
/// (`tls:HOST:PORT`, RFC 5425).
pub struct Syslog {
    target: String,
    tls: Option<TlsSyslog>,
    hostname: String,
}

impl Syslog {
    /// A sink for `target`; a `tls:` receiver is checked against the CAs in `ca`.
    pub fn new(target: &str, ca: &Path) -> Result<Self, String> {
        let tls = match target.strip_prefix("tls:") {
            Some(address) => Some(TlsSyslog::new(address, ca)?),
            None if target.starts_with("unix:") || target.starts_with("udp:") => None,
            None => {
                return Err(format!(
                    "alerts.syslog: {target:?} is not unix:PATH, udp:HOST:PORT or tls:HOST:PORT"
                ));
            }
        };
        Ok(Self {
            target: target.to_owned(),
            tls,
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "-".into()),
        })
    }

    /// The message: facility authpriv, severity warning; the alert as structured data and JSON.
    pub fn format(&self, alert: &Alert) -> String {
        const PRI: u32 = 10 * 8 + 4;
        let escape = |v: &str| {
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace(']', "\\]")
        };
        let msgid: String = alert
            .rule
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        format!(
            "<{PRI}>1 {} {} custos-collector {} {} [custos@32473 session=\"{}\" host=\"{}\" user=\"{}\"] {}",
            alert.time,
            self.hostname,
            std::process::id(),
            if msgid.is_empty() { "-".into() } else { msgid },
            escape(&alert.session),
            escape(&alert.host),
            escape(alert.user.as_deref().unwrap_or("-")),
            serde_json::to_string(alert).unwrap_or_default()
        )
    }
}

impl Sink for Syslog {
    fn send(&mut self, alert: &Alert) {
        let message = self.format(alert);
        if let Some(tls) = &mut self.tls {
            if let Err(err) = tls.send(&message) {
                warn!(target = self.target, error = %err, "cannot send the alert to syslog");
            }
            return;
        }
        let sent = if let Some(path) = self.target.strip_prefix("unix:") {
            std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.send_to(message.as_bytes(), path).map(|_| ()))
        } else {
            let addr = self.target.trim_start_matches("udp:");
            std::net::UdpSocket::bind("0.0.0.0:0")
                .or_else(|_| std::net::UdpSocket::bind("[::]:0"))
                .and_then(|s| s.send_to(message.as_bytes(), addr).map(|_| ()))
        };
        if let Err(err) = sent {
            warn!(target = self.target, error = %err, "cannot send the alert to syslog");
        }
    }
}

/// The webhook: a thread posting from a bounded queue, retrying with backoff.
pub struct Webhook {
    queue: Arc<(Mutex<VecDeque<Alert>>, Condvar)>,
    capacity: usize,
    metrics: Arc<CollectorMetrics>,
}

impl Webhook {
    pub fn start(config: &WebhookConfig, metrics: Arc<CollectorMetrics>) -> Result<Self, String> {
        if !config.url.starts_with("https://") {
            return Err(format!(
                "alerts.webhook.url: {:?} is not an https:// URL",
                config.url
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca)
                .map_err(|err| format!("alerts.webhook.ca: {}: {err}", ca.display()))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!(
                    "alerts.webhook.ca: {}: no certificate in it",
                    ca.display()
                ));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .timeout_global(Some(config.timeout))
            .http_status_as_error(true)
            .build()
            .into();
        let queue = Arc::new((Mutex::new(VecDeque::<Alert>::new()), Condvar::new()));
        let worker = queue.clone();
        let (url, retries) = (config.url.clone(), config.retries);
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("alert-webhook".into())
            .spawn(move || {
                loop {
                    let alert = {
                        let (lock, ready) = &*worker;
                        let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
                        loop {
                            if let Some(alert) = queue.pop_front() {
                                break alert;
                            }
                            queue = ready.wait(queue).unwrap_or_else(|e| e.into_inner());
                        }
                    };
                    let body = serde_json::to_string(&alert).unwrap_or_default();
                    let mut delay = Duration::from_millis(200);
                    let mut attempt = 0;
                    loop {
                        match agent
                            .post(&url)
                            .header("content-type", "application/json")
                            .send(&body)
                        {
                            Ok(_) => {
                                thread_metrics.alerts_delivered.inc();
                                break;
                            }
                            Err(err) if attempt < retries => {
                                attempt += 1;
                                warn!(url, attempt, error = %err, "webhook refused or unreachable; retrying");
                                std::thread::sleep(delay);
                                delay = (delay * 2).min(Duration::from_secs(30));
                            }
                            Err(err) => {
                                thread_metrics.alerts_failed.inc();
                                warn!(url, error = %err, rule = alert.rule, "webhook failed; alert dropped (it is in the other sinks)");
                                break;
                            }
                        }
                    }
                }
            })
            .map_err(|err| format!("starting the webhook thread: {err}"))?;
        Ok(Self {
            queue,
            capacity: config.queue.max(1),
            metrics,
        })
    }
}

impl Sink for Webhook {
    fn send(&mut self, alert: &Alert) {
        let (lock, ready) = &*self.queue;
        let mut queue = lock.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= self.capacity {
            queue.pop_front();
            self.metrics.alerts_failed.inc();
        }
        queue.push_back(alert.clone());
        ready.notify_one();
    }
}
