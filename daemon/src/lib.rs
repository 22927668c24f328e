//! What every Custos daemon does alike.
//!
//! - [`init_logging`]: logs on stderr, one line per event with `key=value` fields, as journald
//!   stores them (no timestamps under systemd, no colours unless on a terminal);
//! - [`config`]: configuration files (the default path if present, errors naming the key path);
//! - [`toml_error_line`]: a TOML syntax error as the one line ops get;
//! - [`duration`]: `60s`, `5m`, `1h 30m` in configuration files;
//! - [`Signals`]: shutdown (SIGINT, SIGTERM) and reload (SIGHUP);
//! - [`quic`]: reading one frame from a QUIC stream;
//! - [`metrics`]: the Prometheus endpoint, and readiness for systemd;
//! - [`reference`]: keeping the commented reference configurations in step with the code.
pub mod config;
pub mod metrics;
pub mod quic;
pub mod reference;

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Logs to stderr, filtered by `CUSTOS_LOG` (default `info`).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CUSTOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// toml's messages span several lines (a source excerpt); ops get one: the reason and the line
/// (with a guess at the key, for errors `serde_path_to_error` cannot place, see [`config`]).
pub fn toml_error_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else {
        return message;
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1).copied().unwrap_or("").trim();
    let table = lines[..line_no.saturating_sub(1).min(lines.len())]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    match (line.split_once('='), table) {
        (Some((key, _)), Some(table)) => {
            format!("{table}.{}: {message} (line {line_no})", key.trim())
        }
        (Some((key, _)), None) => format!("{}: {message} (line {line_no})", key.trim()),
        _ => format!("{message} (line {line_no}: `{line}`)"),
    }
}

/// Deserializes a duration written like `60s`, `5m`, `1h 30m`.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    custos_proto::time::parse_duration(&text)
        .map_err(|err| serde::de::Error::custom(format!("bad duration {text:?}: {err}")))
}

/// What a signal asks of a daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Shutdown,
    Reload,
}

/// SIGINT and SIGTERM (shutdown), SIGHUP (reload).
pub struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::Shutdown,
            _ = self.terminate.recv() => Signal::Shutdown,
            _ = self.hangup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        section: Section,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Section {
        #[serde(deserialize_with = "duration")]
        wait: Duration,
    }

    #[test]
    fn errors_name_table_and_key() {
        let text = "[section]\nwait = \"soon\"\n";
        let err = toml::from_str::<Sample>(text).unwrap_err();
        let line = toml_error_line(text, &err);
        assert!(
            line.starts_with("section.wait: bad duration \"soon\""),
            "{line}"
        );
        assert!(line.ends_with("(line 2)"), "{line}");
        let ok: Sample = toml::from_str("[section]\nwait = \"1m 30s\"\n").unwrap();
        assert_eq!(ok.section.wait, Duration::from_secs(90));
    }
}
