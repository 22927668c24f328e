//! A benchmark deployment: the PKI (made with the collector's own `pki` commands, agent
//! certificates with the load generator), the store key, a collector process on free local
//! ports that is stopped when dropped, and the small readings taken from it (peak RSS, store
//! size, `key=value` output of the bench binaries).
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::cmd;

/// Certificates, keys and scratch directories of one benchmark deployment.
pub struct Deployment {
    pub bin: PathBuf,
    pub dir: PathBuf,
}

impl Deployment {
    /// Creates (once) the CA, collector certificate, seal key, store key and an auditor
    /// certificate under `dir`, and agent certificates for `agents` agents.
    pub fn prepare(bin: &Path, dir: &Path, agents: usize) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let deployment = Deployment {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
        };
        let pki = deployment.pki();
        let pki_arg = pki.to_string_lossy().into_owned();
        let collector = bin.join("custos-collector");
        crate::run::ensure_pki(&collector, &pki, &deployment.store_key())?;
        if !pki.join("issued/auditor-bench.pem").exists() {
            cmd::output(Command::new(&collector).args([
                "pki", "issue", "auditor", "bench", "--role", "auditor", "--dir", &pki_arg,
            ]))?;
        }
        cmd::output(
            Command::new(bin.join("custos-bench-loadgen"))
                .args(["certs", "--pki", &pki_arg, "--agents"])
                .arg(agents.to_string()),
        )?;
        Ok(deployment)
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    pub fn store_key(&self) -> PathBuf {
        self.dir.join("store.key")
    }

    /// Real command outputs the load generator replays (made once).
    pub fn corpus(&self) -> PathBuf {
        self.dir.join("corpus")
    }

    /// Starts a collector on `store` (a directory under the deployment), on free ports.
    pub fn start_collector(&self, store: &Path, name: &str) -> anyhow::Result<Collector> {
        let ingest = free_udp_port()?;
        let api = free_tcp_port()?;
        let pki = self.pki();
        let config = self.dir.join(format!("{name}.toml"));
        let path = |p: PathBuf| p.display().to_string();
        fs::write(
            &config,
            format!(
                "[ingest]\nlisten = \"127.0.0.1:{ingest}\"\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [tls]\nca = \"{ca}\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\ncrl = \"{crl}\"\n\
                 [store]\ndir = \"{store}\"\nkey_file = \"{store_key}\"\nseal_key = \"{seal}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n",
                ca = path(pki.join("ca.pem")),
                cert = path(pki.join("collector.pem")),
                key = path(pki.join("collector.key")),
                crl = path(pki.join("crl.pem")),
                store = store.display(),
                store_key = path(self.store_key()),
                seal = path(pki.join("seal.key")),
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = self.dir.join(format!("{name}.log"));
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(self.bin.join("custos-collector"))
            .arg("--config")
            .arg(&config)
            .env("CUSTOS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file")?)
            .stderr(file)
            .spawn()
            .context("starting custos-collector")?;
        let collector = Collector {
            child: Some(child),
            log,
            ingest: format!("127.0.0.1:{ingest}"),
            api: format!("https://localhost:{api}"),
        };
        collector.wait_for("collector listening", Duration::from_secs(120))?;
        Ok(collector)
    }

    /// Environment for the `custos` CLI as this deployment's auditor against `collector`.
    pub fn cli_env(&self, collector: &Collector) -> Vec<(&'static str, String)> {
        let pki = self.pki();
        vec![
            ("CUSTOS_COLLECTOR", collector.api.clone()),
            ("CUSTOS_CA", pki.join("ca.pem").display().to_string()),
            (
                "CUSTOS_CERT",
                pki.join("issued/auditor-bench.pem").display().to_string(),
            ),
            (
                "CUSTOS_KEY",
                pki.join("issued/auditor-bench.key").display().to_string(),
            ),
            ("CUSTOS_CONFIG", "/dev/null".into()),
        ]
    }

    /// `custos-bench-loadgen SUBCOMMAND --collector .. --pki .. --corpus .. ARGS`, parsed.
    pub fn loadgen(
        &self,
        collector: &Collector,
        subcommand: &str,
        args: &[String],
    ) -> anyhow::Result<HashMap<String, String>> {
        let out = cmd::output(
            Command::new(self.bin.join("custos-bench-loadgen"))
                .arg(subcommand)
                .args(["--collector", &collector.ingest, "--pki"])
                .arg(self.pki())
                .arg("--corpus")
                .arg(self.corpus())
                .args(args),
        )?;
        Ok(key_values(&out))
    }
}

/// A running collector; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Collector {
    child: Option<Child>,
    log: PathBuf,
    /// QUIC address agents connect to.
    pub ingest: String,
    /// HTTPS base URL of the query API.
    pub api: String,
}

impl Collector {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn wait_for(&self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(line) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the collector did not log {line:?} within {timeout:?}; see {}",
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size (VmHWM) so far, in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .with_context(|| format!("no VmHWM in {path}"))
    }

    /// Stops the collector and waits for it (a clean stop closes the index, folding its WAL).
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill on a process id we started and have not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().context("waiting for the collector")? {
                if !status.success() {
                    bail!(
                        "the collector stopped with {status}; see {}",
                        self.log.display()
                    );
                }
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the collector did not stop within 30 s; killed")
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("finding a free UDP port")?
        .port())
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("finding a free TCP port")?
        .port())
}

/// `key=value` lines of a bench binary's output.
pub fn key_values(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// A number from a bench binary's `key=value` output.
pub fn number(values: &HashMap<String, String>, key: &str) -> anyhow::Result<f64> {
    values
        .get(key)
        .with_context(|| format!("no {key}= in the output"))?
        .parse()
        .with_context(|| format!("{key} is not a number"))
}

/// Sizes under a store directory: (recordings and seals, index, everything).
pub fn store_size(store: &Path) -> anyhow::Result<StoreSize> {
    let mut size = StoreSize::default();
    let mut stack = vec![store.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let meta = entry.metadata().context("metadata")?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            size.total += meta.len();
            if name.ends_with(".rec") || name.ends_with(".seal") {
                size.recordings += meta.len();
            } else if name.starts_with("index.sqlite") {
                size.index += meta.len();
            }
        }
    }
    Ok(size)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct StoreSize {
    pub recordings: u64,
    pub index: u64,
    pub total: u64,
}

/// Empties (removes) a scratch directory.
pub fn fresh(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
