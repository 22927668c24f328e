//! Where the collector is and which certificate to use: flags, then environment
//! (`CUSTOS_COLLECTOR`, `CUSTOS_CA`, `CUSTOS_CERT`, `CUSTOS_KEY`), then a configuration file
//! (`--config`, `$CUSTOS_CONFIG`, `~/.config/custos/cli.toml`, `/etc/custos/cli.toml`).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    collector: Option<String>,
    ca: Option<PathBuf>,
    certificate: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub collector: ureq::http::Uri,
    pub ca: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// What the command line said.
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub config: Option<PathBuf>,
    pub collector: Option<String>,
    pub ca: Option<PathBuf>,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn config_file(given: &Option<PathBuf>) -> anyhow::Result<File> {
    let explicit = given
        .clone()
        .or_else(|| std::env::var_os("CUSTOS_CONFIG").map(PathBuf::from));
    let candidates: Vec<PathBuf> = match &explicit {
        Some(path) => vec![path.clone()],
        None => {
            let mut paths = Vec::new();
            if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
                paths.push(Path::new(&dir).join("custos/cli.toml"));
            } else if let Some(home) = std::env::var_os("HOME") {
                paths.push(Path::new(&home).join(".config/custos/cli.toml"));
            }
            paths.push(PathBuf::from("/etc/custos/cli.toml"));
            paths
        }
    };
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                return toml::from_str(&text).with_context(|| format!("config {}", path.display()));
            }
            Err(err) if explicit.is_some() => {
                return Err(err).with_context(|| format!("cannot read config {}", path.display()));
            }
            Err(_) => continue,
        }
    }
    Ok(File::default())
}

impl Settings {
    pub fn resolve(given: &Given) -> anyhow::Result<Settings> {
        let file = config_file(&given.config)?;
        let env = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let collector = given
            .collector
            .clone()
            .or_else(|| std::env::var("CUSTOS_COLLECTOR").ok())
            .or(file.collector);
        let Some(collector) = collector else {
            bail!(
                "which collector? give --collector https://HOST:7444, set CUSTOS_COLLECTOR, or write ~/.config/custos/cli.toml"
            );
        };
        let collector: ureq::http::Uri = collector
            .parse()
            .ok()
            .filter(|uri: &ureq::http::Uri| uri.authority().is_some())
            .with_context(|| {
                format!("--collector {collector:?} is not a URL (https://HOST:7444)")
            })?;
        if collector.scheme_str() != Some("https") {
            bail!("--collector {collector}: the API is HTTPS only");
        }
        let pick = |flag: &Option<PathBuf>, var: &str, from_file: Option<PathBuf>, what: &str| {
            flag.clone()
                .or_else(|| env(var))
                .or(from_file)
                .with_context(|| {
                    format!("no {what}: give --{what}, set {var}, or name it in cli.toml")
                })
        };
        Ok(Settings {
            ca: pick(&given.ca, "CUSTOS_CA", file.ca, "ca")?,
            certificate: pick(&given.certificate, "CUSTOS_CERT", file.certificate, "cert")?,
            key: pick(&given.key, "CUSTOS_KEY", file.key, "key")?,
            collector,
        })
    }
}
