//! The agent's TOML configuration: every key, its default, and the checks that make the agent
//! refuse a configuration it cannot honour (with one line naming the key and the reason).
//!
//! The commented reference file is packaging/agent.toml; keep both in step.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use bytesize::ByteSize;
use serde::Deserialize;

pub use custos_daemon::config::{ConfigError, ConfigFile};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The agent itself: failing closed, and where it says whether it records.
    pub agent: AgentConfig,
    pub capture: CaptureConfig,
    pub collector: CollectorConfig,
    pub spool: SpoolConfig,
    pub shipping: ShippingConfig,
    /// Who is recorded (`[scope]`: the user and group rules).
    pub scope: RecordedUsersConfig,
    /// File opens left out, PHI paths always kept.
    pub files: FileFilterConfig,
    /// Commands left out.
    pub commands: CommandFilterConfig,
    /// Values de-identified before they leave the host.
    pub redaction: RedactionConfig,
    /// Telling users their sessions are recorded.
    pub notice: NoticeConfig,
    /// The Prometheus endpoint (default 127.0.0.1:9464).
    pub metrics: custos_daemon::metrics::MetricsConfig<9464>,
}

/// `[agent]`: how the host treats logins while the agent is not recording.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Refuse new logins while the agent is not recording (not running, programs detached, ring
    /// buffer not read, spool full), through the PAM account hook that calls
    /// `custos-agent status --ready --if-fail-closed`. Off: the hook allows every login.
    pub fail_closed: bool,
    /// The file the running agent keeps fresh (every second) for `custos-agent status`: its pid,
    /// a heartbeat, whether its programs are attached, when it last read the ring buffer and how
    /// full its spool is. Mode 0644, no secrets; removed when the agent stops.
    pub status_file: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            fail_closed: false,
            status_file: "/run/custos-agent/status.json".into(),
        }
    }
}

/// Include and exclude rules by user and group (like SSSD's session recording scope).
/// Exclusions win; with no include list, everyone else is recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordedUsersConfig {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub exclude_users: Vec<String>,
    pub exclude_groups: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileFilterConfig {
    /// When not empty, only opens of matching paths are recorded (and PHI paths).
    pub include: Vec<String>,
    /// Opens of matching paths are left out (unless under a PHI path).
    pub exclude: Vec<String>,
    /// Always recorded, every time.
    pub phi_paths: Vec<String>,
    /// A process reading the same file again: recorded once, with the count of repeats when it
    /// exits.
    pub dedup_read_only: bool,
}

impl Default for FileFilterConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: [
                "/proc/**",
                "/sys/**",
                "/dev/**",
                "/etc/ld.so.cache",
                "/{lib,lib64,usr/lib,usr/lib64,usr/local/lib}/**/*.so",
                "/{lib,lib64,usr/lib,usr/lib64,usr/local/lib}/**/*.so.*",
            ]
            .map(String::from)
            .to_vec(),
            phi_paths: Vec::new(),
            dedup_read_only: true,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandFilterConfig {
    /// Executable path globs whose commands (exec, exit and their opens outside PHI paths) are
    /// left out. Their terminal output never is.
    pub exclude: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactionAction {
    #[default]
    Mask,
    #[serde(alias = "pseudonymize")]
    Pseudonymise,
    Drop,
}

/// One redaction rule: a built-in (`builtin = "ssn"`) or a named pattern.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Option<String>,
    pub builtin: Option<String>,
    pub pattern: Option<String>,
    /// The capture group replaced (0: the whole match; built-ins name their own).
    pub group: Option<usize>,
    #[serde(default)]
    pub action: RedactionAction,
    /// With `mask`: how many trailing letters and digits stay visible.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    #[serde(default = "all_streams")]
    pub applies_to: Vec<String>,
}

fn default_keep_last() -> usize {
    4
}

fn all_streams() -> Vec<String> {
    ["output", "input", "argv"].map(String::from).to_vec()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    pub rules: Vec<RuleConfig>,
    /// The pattern of the `mrn` built-in (its group 1 is replaced).
    pub mrn_pattern: String,
    /// The deployment's pseudonym key: random bytes, the same file on every host.
    pub key_file: Option<PathBuf>,
    /// Raw bytes each terminal stream holds back so that a value split across writes is still
    /// matched...
    pub window: ByteSize,
    /// ...until the stream has been quiet this long (a value typed with shorter pauses is held
    /// whole), and never longer than `policy::LONGEST_HOLD`.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub hold: Duration,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            mrn_pattern: crate::policy::redact::builtin("mrn")
                .map(|(p, _)| p.to_owned())
                .unwrap_or_default(),
            key_file: None,
            window: ByteSize::b(256),
            hold: Duration::from_millis(2500),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NoticeConfig {
    /// Show users a notice at login (pam_motd and sshd's pre-login banner).
    pub enabled: bool,
    pub text: String,
}

impl Default for NoticeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            text: "NOTICE: this session is recorded (terminal, commands and files opened) for \
                   security and compliance auditing."
                .into(),
        }
    }
}

/// Where recordings go, and the agent's certificate for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// `host:port` of the collector (UDP, QUIC). Required unless the agent runs with --stdout.
    pub address: String,
    /// The name the collector's certificate must carry (default: the host part of `address`).
    pub server_name: Option<String>,
    /// The deployment CA certificate.
    pub ca: PathBuf,
    /// This host's agent certificate (`custos-collector pki issue agent HOSTNAME`); its name is
    /// the host name recordings carry.
    pub certificate: PathBuf,
    pub key: PathBuf,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            server_name: None,
            ca: "/etc/custos/ca.pem".into(),
            certificate: "/etc/custos/agent.pem".into(),
            key: "/etc/custos/agent.key".into(),
        }
    }
}

impl CollectorConfig {
    /// The host part of `address` (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }

    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| self.host())
    }
}

/// The on-disk queue of batches not yet acknowledged.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// When full, the oldest unsent batches are dropped and reported as gap records.
    pub max_size: ByteSize,
    /// Batches the collector refused for good are kept in `rejected/` this long, for
    /// inspection, then deleted (they hold what sessions did).
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub keep_rejected: Duration,
    /// The key that seals spooled batches (32 random bytes, 0600; created when missing).
    /// Default: `spool.key` next to `dir` (/var/lib/custos/spool.key).
    pub key_file: Option<PathBuf>,
}

impl SpoolConfig {
    /// Where the spool key is: `key_file`, or `spool.key` in `dir`'s parent.
    pub fn key_file(&self) -> PathBuf {
        self.key_file.clone().unwrap_or_else(|| {
            self.dir
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
                .unwrap_or(&self.dir)
                .join("spool.key")
        })
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: "/var/lib/custos/spool".into(),
            max_size: ByteSize::gib(1),
            keep_rejected: Duration::from_secs(7 * 24 * 3600),
            key_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShippingConfig {
    /// A session's events are sent in batches of at most this much (uncompressed).
    pub batch_max_bytes: ByteSize,
    /// ...and wait at most this long before they are.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub batch_interval: Duration,
    /// Batches sent and not yet acknowledged.
    pub in_flight: usize,
    /// How long a batch sent (or the hello of a new connection) may wait for the collector's
    /// answer: past it the connection is given up and a new one made; the batch stays spooled
    /// and goes again. Also the longest a handshake attempt may take.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub ack_timeout: Duration,
    /// Reconnection backoff: from this...
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub reconnect_min: Duration,
    /// ...doubling, with jitter, never above this.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub reconnect_max: Duration,
    /// Keep-alive interval on an idle connection.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub keep_alive: Duration,
    /// At shutdown, how long to keep sending what is spooled.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub shutdown_grace: Duration,
}

impl Default for ShippingConfig {
    fn default() -> Self {
        Self {
            batch_max_bytes: ByteSize::kib(256),
            batch_interval: Duration::from_millis(250),
            in_flight: 16,
            ack_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Which tasks the kernel side captures (`[capture] scope`), before any user rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskSelection {
    /// Tasks in an audit login session (pam_loginuid set a session id): ssh, console and su -l
    /// logins. Services never are.
    #[default]
    LoginSessions,
    /// Also tasks outside a login session that have a controlling terminal (a terminal opened
    /// by a service, `docker exec -t`...).
    LoginSessionsAndTerminals,
}

/// Which kernel hooks capture terminal data and opens (exec, fork and exit always use the
/// scheduler's BTF tracepoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hooks {
    /// fentry where the kernel allows it, tracepoints otherwise (with a warning saying why).
    #[default]
    Auto,
    /// Syscall exit tracepoints: every kernel from 5.8, but every syscall pays a little.
    Tracepoint,
    /// fexit on n_tty_write and do_sys_openat2; refuse to start where the kernel does not allow
    /// it.
    Fentry,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub scope: TaskSelection,
    pub hooks: Hooks,
    /// Kernel ring buffer between the programs and the agent. A power of two, 64 KiB to 1 GiB
    /// (the largest record is a little over 16 KiB).
    pub ring_buffer_size: ByteSize,
    /// Most argv bytes recorded per exec; longer ones are marked truncated with their length.
    pub argv_max: ByteSize,
    /// Most bytes recorded per terminal write; the rest are counted as uncaptured. The default
    /// is the most the programs read ([`CAPTURE_MAX`]): a whole write of `cat` (128 KiB).
    pub tty_write_max: ByteSize,
    /// Do not record keystrokes typed while the terminal has ECHO off (password prompts); a
    /// marker with the byte count is recorded instead.
    pub suppress_echo_off_input: bool,
    /// Read kernel structs with plain loads the verifier checks against BTF where the kernel
    /// allows it (5.15, or the helpers backported), instead of one probe-read helper call per
    /// field. false forces the helper calls (slower; every kernel from 5.8).
    pub direct_reads: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            scope: TaskSelection::default(),
            hooks: Hooks::default(),
            ring_buffer_size: ByteSize::mib(8),
            argv_max: ByteSize::kib(16),
            tty_write_max: ByteSize::b(CAPTURE_MAX),
            suppress_echo_off_input: true,
            direct_reads: true,
        }
    }
}

/// Largest value of `argv_max` and `tty_write_max` (the programs' loop bounds).
pub const CAPTURE_MAX: u64 = 256 * 1024;

/// A valid configuration this host cannot honour (found once the kernel is asked), such as
/// `hooks = "fentry"` on a kernel without BPF trampolines: the agent exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unhonoured(pub String);

impl ConfigFile for Config {
    /// Where ops put the configuration.
    const DEFAULT_PATH: &'static str = "/etc/custos/agent.toml";

    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = custos_daemon::config::from_toml(path, text)?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })?;
        // The policy's regexes, globs and key file: checked now, compiled again when used.
        crate::policy::Rules::compile(&config).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let capture = &self.capture;
        let ring = capture.ring_buffer_size.as_u64();
        if !ring.is_power_of_two() || !(64 * 1024..=1024 * 1024 * 1024).contains(&ring) {
            return Err((
                "capture.ring_buffer_size",
                format!("must be a power of two from 64 KiB to 1 GiB, not {ring} bytes"),
            ));
        }
        for (key, value) in [
            ("capture.argv_max", capture.argv_max),
            ("capture.tty_write_max", capture.tty_write_max),
        ] {
            let value = value.as_u64();
            if !(1..=CAPTURE_MAX).contains(&value) {
                return Err((
                    key,
                    format!("must be from 1 byte to 256 KiB, not {value} bytes"),
                ));
            }
        }
        let collector = &self.collector;
        if !collector.address.is_empty() {
            let port = collector
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok());
            if port.is_none() || collector.host().is_empty() {
                return Err((
                    "collector.address",
                    format!("must be host:port, not {:?}", collector.address),
                ));
            }
        }
        if self.spool.max_size.as_u64() < 1024 * 1024 {
            return Err(("spool.max_size", "must be at least 1 MiB".into()));
        }
        let shipping = &self.shipping;
        if !(64 * 1024..=16 * 1024 * 1024).contains(&shipping.batch_max_bytes.as_u64()) {
            return Err((
                "shipping.batch_max_bytes",
                "must be 64 KiB to 16 MiB".into(),
            ));
        }
        if shipping.batch_interval.is_zero() || shipping.batch_interval > Duration::from_secs(60) {
            return Err((
                "shipping.batch_interval",
                "must be more than 0 and at most 60s".into(),
            ));
        }
        if !(1..=1024).contains(&shipping.in_flight) {
            return Err(("shipping.in_flight", "must be 1 to 1024".into()));
        }
        if shipping.ack_timeout < Duration::from_millis(100)
            || shipping.ack_timeout > Duration::from_secs(600)
        {
            return Err((
                "shipping.ack_timeout",
                "must be at least 100ms and at most 10m".into(),
            ));
        }
        if shipping.reconnect_min.is_zero() || shipping.reconnect_max < shipping.reconnect_min {
            return Err((
                "shipping.reconnect_max",
                "must be at least shipping.reconnect_min, which must be more than 0".into(),
            ));
        }
        if shipping.keep_alive.is_zero() {
            return Err(("shipping.keep_alive", "must be more than 0".into()));
        }
        if self.redaction.window.as_u64() > 64 * 1024 {
            return Err(("redaction.window", "must be at most 64 KiB".into()));
        }
        if self.redaction.hold > Duration::from_secs(10) {
            return Err(("redaction.hold", "must be at most 10s".into()));
        }
        Ok(())
    }

    /// The collector settings, when the agent ships (not with --stdout).
    pub fn require_collector(&self, path: &Path) -> Result<&CollectorConfig, ConfigError> {
        if self.collector.address.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                key: "collector.address",
                reason: "required to ship recordings (or run with --stdout)".into(),
            });
        }
        Ok(&self.collector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("agent.toml"), text)
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.capture.scope, TaskSelection::LoginSessions);
        assert_eq!(config.capture.ring_buffer_size.as_u64(), 8 << 20);
        assert_eq!(config.capture.argv_max.as_u64(), 16 << 10);
        assert!(config.capture.suppress_echo_off_input);
    }

    #[test]
    fn sizes_accept_units() {
        let config = parse("[capture]\nring_buffer_size = \"64 KiB\"\nargv_max = 4096\n").unwrap();
        assert_eq!(config.capture.ring_buffer_size.as_u64(), 65536);
        assert_eq!(config.capture.argv_max.as_u64(), 4096);
    }

    #[test]
    fn errors_name_the_key() {
        let err = parse("[capture]\nring_buffer_size = \"3 MiB\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "config agent.toml: capture.ring_buffer_size: must be a power of two from 64 KiB to \
             1 GiB, not 3145728 bytes"
        );
        let err = parse("[capture]\nscope = \"everyone\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.scope"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = parse("[capture]\nargv_maxx = 1\n").unwrap_err().to_string();
        assert!(err.contains("argv_maxx"), "{err}");
        let err = parse("[shipping]\nack_timeout = \"10ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("shipping.ack_timeout: must be at least 100ms and at most 10m"),
            "{err}"
        );
    }

    #[test]
    fn the_reference_file_documents_every_key_with_its_default() {
        use custos_daemon::reference;
        let text = include_str!("../../packaging/agent.toml");
        let defaults = Config::default();
        assert_eq!(
            reference::documented_keys(text),
            reference::config_keys(&format!("{defaults:?}")),
            "packaging/agent.toml and Config disagree on the keys"
        );
        let mut documented = parse(&reference::uncomment(text)).expect("the reference parses");
        // The example collector is not a default.
        documented.collector.address.clear();
        documented.collector.server_name = None;
        documented.redaction.key_file = None;
        // Derived from spool.dir when not set: the file shows where that puts it.
        assert_eq!(documented.spool.key_file(), defaults.spool.key_file());
        documented.spool.key_file = None;
        assert_eq!(format!("{documented:?}"), format!("{defaults:?}"));
    }
}
