//! Configuration files, alike for every daemon: the file given, else the default path if
//! present, else the defaults; parse errors as one line naming the exact key path
//! (`alerts.rules[2].argv`, `shipping.retry.max`), found by `serde_path_to_error`.
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration a daemon cannot use.
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

/// A daemon's configuration file.
pub trait ConfigFile: Default + Sized {
    /// Where the daemon looks when no file is given.
    const DEFAULT_PATH: &'static str;

    /// Parses and checks configuration text (`path` is only for messages).
    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError>;

    /// Reads and checks `path`.
    fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The file given; without one, the default path if present, else the defaults. Also
    /// returns the path the configuration is (or would be) read from, for messages.
    fn load_or_default(given: Option<&Path>) -> Result<(Self, PathBuf), ConfigError> {
        let default = Path::new(Self::DEFAULT_PATH);
        match given {
            Some(path) => Ok((Self::load(path)?, path.to_owned())),
            None if default.exists() => Ok((Self::load(default)?, default.to_owned())),
            None => Ok((Self::default(), default.to_owned())),
        }
    }
}

/// Deserializes TOML text; an error is one line naming the key path, the reason and the line.
pub fn from_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let parse = |message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let deserializer =
        toml::Deserializer::parse(text).map_err(|err| parse(crate::toml_error_line(text, &err)))?;
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let inner = err.into_inner();
        if key == "." {
            return parse(crate::toml_error_line(text, &inner));
        }
        let message = inner.message().trim().replace('\n', " ");
        parse(match inner.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                format!("{key}: {message} (line {line})")
            }
            None => format!("{key}: {message}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[serde(default)]
        section: Section,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Section {
        #[serde(default)]
        retry: Retry,
        #[serde(default)]
        #[allow(dead_code, reason = "only its errors are read")]
        items: Vec<Retry>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Retry {
        #[serde(default, deserialize_with = "crate::duration")]
        wait: Duration,
    }

    impl ConfigFile for Sample {
        const DEFAULT_PATH: &'static str = "/nonexistent/custos-sample.toml";
        fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
            from_toml(path, text)
        }
    }

    fn message(text: &str) -> String {
        match Sample::parse(Path::new("sample.toml"), text) {
            Err(ConfigError::Parse { message, .. }) => message,
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn a_dotted_key_is_named_by_its_whole_path() {
        let line = message("[section]\nretry.wait = \"soon\"\n");
        assert!(
            line.starts_with("section.retry.wait: bad duration \"soon\""),
            "{line}"
        );
        assert!(line.ends_with("(line 2)"), "{line}");
        let line = message("section.retry.wait = \"soon\"\n");
        assert!(line.starts_with("section.retry.wait: "), "{line}");
    }

    #[test]
    fn an_array_of_tables_is_named_with_its_index() {
        let text = "[[section.items]]\nwait = \"1s\"\n\n[[section.items]]\nwait = \"soon\"\n";
        let line = message(text);
        assert!(line.starts_with("section.items[1].wait: "), "{line}");
        assert!(line.ends_with("(line 5)"), "{line}");
    }

    #[test]
    fn syntax_errors_and_defaults() {
        let line = message("[section\n");
        assert!(line.contains("line 1"), "{line}");
        let ok = Sample::parse(Path::new("x"), "[section.retry]\nwait = \"1m 30s\"\n").unwrap();
        assert_eq!(ok.section.retry.wait, Duration::from_secs(90));
        let (_, path) = Sample::load_or_default(None).unwrap();
        assert_eq!(path, Path::new(Sample::DEFAULT_PATH));
    }
}
