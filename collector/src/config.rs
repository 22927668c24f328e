//! The collector's TOML configuration (reference: packaging/collector.toml). Checked at start;
//! a configuration the collector cannot honour is refused with one line naming the key.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bytesize::ByteSize;
use serde::Deserialize;

pub use custos_daemon::config::{ConfigError, ConfigFile};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub ingest: IngestConfig,
    pub api: ApiConfig,
    pub tls: TlsConfig,
    pub store: crate::store::StoreConfig,
    pub retention: RetentionConfig,
    /// Real-time alerts on the live stream.
    pub alerts: crate::alerts::AlertsConfig,
    /// The Prometheus endpoint (default 127.0.0.1:9465).
    pub metrics: custos_daemon::metrics::MetricsConfig<9465>,
}

/// The auditors' query API (HTTPS with client certificates).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// TCP address `custos` connects to.
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7444".parse().expect("valid default address"),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// A recording is removed this long after the collector last received a batch of it (by the
    /// collector's clock), unless held. Default six years
    /// (HIPAA's documentation retention, 45 CFR 164.316(b)(2)(i)).
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub keep: Duration,
    /// How often expired recordings are looked for.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub check_every: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(2192 * 86_400),
            check_every: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// UDP address agents connect to (QUIC).
    pub listen: SocketAddr,
    /// Largest frame accepted.
    pub max_frame_size: ByteSize,
    /// Largest batch once decompressed.
    pub max_batch_size: ByteSize,
    /// Streams an agent may have open at once on one connection.
    pub max_streams_per_connection: u32,
    /// A connection silent this long is closed (agents send keep-alives).
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub idle_timeout: Duration,
    /// An agent whose clock is off from the collector's by more than this is flagged, with the
    /// recordings it sends (retention goes by the collector's clock either way).
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub max_clock_skew: Duration,
    /// Bytes of request frames held at once by all connections together (docs/protocol.md,
    /// Memory and misbehaving agents): a stream reserves its frame's length before reading it
    /// and waits while the budget is used up.
    pub memory_budget: ByteSize,
    /// The share of `memory_budget` one agent identity (certificate) may hold, all its
    /// connections together.
    pub identity_memory: ByteSize,
    /// The share one connection may hold (at least `max_frame_size`).
    pub connection_memory: ByteSize,
    /// Connections one agent identity may have open at once; more are refused.
    pub max_connections_per_identity: u32,
    /// A request whose frame does not advance by 16 KiB (or to its end) within this is reset,
    /// and counts against its agent (enough such strikes cut the agent off).
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub stall_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:7443".parse().expect("valid default address"),
            max_frame_size: ByteSize::mib(16),
            max_batch_size: ByteSize::mib(64),
            max_streams_per_connection: 64,
            idle_timeout: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(300),
            memory_budget: ByteSize::mib(512),
            identity_memory: ByteSize::mib(64),
            connection_memory: ByteSize::mib(32),
            max_connections_per_identity: 4,
            stall_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// The CA's certificate revocation list (`pki revoke` and `pki crl` write it).
    pub crl: PathBuf,
    /// How often the revocation list file is looked at for changes.
    #[serde(deserialize_with = "custos_daemon::duration")]
    pub crl_check_every: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            ca: "/etc/custos/pki/ca.pem".into(),
            certificate: "/etc/custos/pki/collector.pem".into(),
            key: "/etc/custos/pki/collector.key".into(),
            crl: "/etc/custos/pki/crl.pem".into(),
            crl_check_every: Duration::from_secs(2),
        }
    }
}

impl ConfigFile for Config {
    const DEFAULT_PATH: &'static str = "/etc/custos/collector.toml";

    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = custos_daemon::config::from_toml(path, text)?;
        config.store.agent_ca = Some(config.tls.ca.clone());
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })?;
        // Alert rules: their messages name the key (alerts.rules[2].argv: ...).
        config
            .alerts
            .compile()
            .map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            })?;
        Ok(config)
    }
}

impl Config {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let frame = self.ingest.max_frame_size.as_u64();
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&frame) {
            return Err((
                "ingest.max_frame_size",
                format!("must be 64 KiB to 1 GiB, not {frame} bytes"),
            ));
        }
        if self.ingest.max_batch_size.as_u64() < frame {
            return Err((
                "ingest.max_batch_size",
                "must be at least ingest.max_frame_size".into(),
            ));
        }
        // Every reader of the store (replay, verify, rebuild) reads chunks up to this size.
        let chunk_max = custos_proto::wire::DEFAULT_MAX_BATCH_RAW as u64;
        if self.ingest.max_batch_size.as_u64() > chunk_max {
            return Err((
                "ingest.max_batch_size",
                format!(
                    "must be at most {} MiB (the store's chunk limit)",
                    chunk_max >> 20
                ),
            ));
        }
        if !(1..=10_000).contains(&self.ingest.max_streams_per_connection) {
            return Err((
                "ingest.max_streams_per_connection",
                "must be 1 to 10000".into(),
            ));
        }
        let ingest = &self.ingest;
        if ingest.connection_memory < ingest.max_frame_size {
            return Err((
                "ingest.connection_memory",
                "must be at least ingest.max_frame_size".into(),
            ));
        }
        if ingest.identity_memory < ingest.connection_memory {
            return Err((
                "ingest.identity_memory",
                "must be at least ingest.connection_memory".into(),
            ));
        }
        if ingest.memory_budget < ingest.identity_memory {
            return Err((
                "ingest.memory_budget",
                "must be at least ingest.identity_memory".into(),
            ));
        }
        if ingest.memory_budget > ByteSize::tib(1) {
            return Err(("ingest.memory_budget", "must be at most 1 TiB".into()));
        }
        if !(1..=64).contains(&ingest.max_connections_per_identity) {
            return Err((
                "ingest.max_connections_per_identity",
                "must be 1 to 64".into(),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&ingest.stall_timeout) {
            return Err(("ingest.stall_timeout", "must be 1s to 60s".into()));
        }
        if self.ingest.idle_timeout < Duration::from_secs(5) {
            return Err(("ingest.idle_timeout", "must be at least 5s".into()));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60))
            .contains(&self.tls.crl_check_every)
        {
            return Err(("tls.crl_check_every", "must be 100ms to 60s".into()));
        }
        if self.retention.keep.is_zero() {
            return Err(("retention.keep", "must be more than 0".into()));
        }
        if self.retention.check_every < Duration::from_secs(1) {
            return Err(("retention.check_every", "must be at least 1s".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let config = Config::parse(Path::new("c.toml"), "").unwrap();
        assert_eq!(config.ingest.listen.port(), 7443);
        let err = Config::parse(Path::new("c.toml"), "[ingest]\nidle_timeout = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config c.toml: ingest.idle_timeout: must be at least 5s"
        );
        let err = Config::parse(Path::new("c.toml"), "[ingest]\nlisten = \"nowhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ingest.listen") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn the_memory_budget_must_hold_its_shares_and_a_frame() {
        let error = |ingest: &str| {
            Config::parse(Path::new("c.toml"), &format!("[ingest]\n{ingest}"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("connection_memory = \"1 MiB\"\n"),
            "config c.toml: ingest.connection_memory: must be at least ingest.max_frame_size"
        );
        assert_eq!(
            error("identity_memory = \"16 MiB\"\n"),
            "config c.toml: ingest.identity_memory: must be at least ingest.connection_memory"
        );
        assert_eq!(
            error("memory_budget = \"32 MiB\"\n"),
            "config c.toml: ingest.memory_budget: must be at least ingest.identity_memory"
        );
        assert!(error("max_connections_per_identity = 0\n").contains("must be 1 to 64"));
        assert!(error("stall_timeout = \"0s\"\n").contains("must be 1s to 60s"));
        Config::parse(
            Path::new("c.toml"),
            "[ingest]\nmax_frame_size = \"1 MiB\"\nmemory_budget = \"4 MiB\"\n\
             identity_memory = \"2 MiB\"\nconnection_memory = \"1 MiB\"\n",
        )
        .expect("a small budget for small frames");
    }

    #[test]
    fn a_max_batch_size_the_store_cannot_read_back_is_refused() {
        let err = Config::parse(
            Path::new("c.toml"),
            "[ingest]\nmax_batch_size = \"65 MiB\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ingest.max_batch_size: must be at most 64 MiB"),
            "{err}"
        );
    }

    #[test]
    fn the_reference_file_documents_every_key_with_its_default() {
        use custos_daemon::reference;
        let text = include_str!("../../packaging/collector.toml");
        let defaults = Config::default();
        assert_eq!(
            reference::documented_keys(text),
            reference::config_keys(&format!("{defaults:?}")),
            "packaging/collector.toml and Config disagree on the keys"
        );
        let mut documented =
            Config::parse(Path::new("collector.toml"), &reference::uncomment(text))
                .expect("the reference parses");
        // The examples of optional sinks are not defaults.
        documented.alerts.json_log = None;
        documented.alerts.syslog = None;
        documented.alerts.webhook = None;
        assert_eq!(format!("{documented:?}"), format!("{defaults:?}"));
    }
}
