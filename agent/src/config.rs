//! The agent's TOML configuration: every key, its default, and the checks that make the agent
//! refuse a configuration it cannot honour (with one line naming the key and the reason).
//!
//! The commented reference file is packaging/agent.toml; keep both in step.
use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use serde::Deserialize;

/// Where ops put the configuration.
pub const DEFAULT_PATH: &str = "/etc/custos/agent.toml";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureConfig,
}

/// Which tasks the kernel side captures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Tasks in an audit login session (pam_loginuid set a session id): ssh, console and su -l
    /// logins. Services never are.
    #[default]
    LoginSessions,
    /// Also tasks outside a login session that have a controlling terminal (a terminal opened
    /// by a service, `docker exec -t`...).
    LoginSessionsAndTerminals,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub scope: Scope,
    /// Kernel ring buffer between the programs and the agent. A power of two, 64 KiB to 1 GiB
    /// (the largest record is a little over 16 KiB).
    pub ring_buffer_size: ByteSize,
    /// Most argv bytes recorded per exec; longer ones are marked truncated with their length.
    pub argv_max: ByteSize,
    /// Most bytes recorded per terminal write; the rest are counted as uncaptured.
    pub tty_write_max: ByteSize,
    /// Do not record keystrokes typed while the terminal has ECHO off (password prompts); a
    /// marker with the byte count is recorded instead.
    pub suppress_echo_off_input: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            scope: Scope::default(),
            ring_buffer_size: ByteSize::mib(8),
            argv_max: ByteSize::kib(16),
            tty_write_max: ByteSize::kib(64),
            suppress_echo_off_input: true,
        }
    }
}

/// Largest value of `argv_max` and `tty_write_max` (the programs' loop bounds).
pub const CAPTURE_MAX: u64 = 256 * 1024;

/// A configuration the agent cannot honour.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {key}: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks configuration text (`path` is only for messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: custos_daemon::toml_error_line(text, &err),
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_owned(),
                key,
                reason,
            })?;
        Ok(config)
    }

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
        Ok(())
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
        assert_eq!(config.capture.scope, Scope::LoginSessions);
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
    }
}
