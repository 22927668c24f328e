//! A deployment in a temporary directory: the PKI and the store keys made with the collector's
//! own commands, configuration files, a collector to start and stop, and its store to read.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use custos_collector::{
    store::{Store, StoreConfig},
    trust::chunk::RecordingKey,
};
use custos_proto::{AuditSessionId, BootId, Event};

use crate::{bin, daemon::Daemon};

pub struct Deployment {
    pub dir: tempfile::TempDir,
    /// The name in this host's agent certificate (its host name).
    pub host: String,
    /// TCP port of the collector's query API.
    pub api_port: u16,
}

pub struct Collector {
    pub daemon: Daemon,
}

/// Runs one of the collector's commands, which must succeed.
pub fn collector_command(args: &[&str]) -> String {
    let output = Command::new(bin("custos-collector"))
        .args(args)
        .output()
        .expect("running custos-collector");
    assert!(
        output.status.success(),
        "custos-collector {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .expect("hostname")
        .to_string_lossy()
        .into_owned()
}

impl Deployment {
    /// A CA whose collector certificate names localhost, 127.0.0.1 and `extra_names`; an agent
    /// certificate for this host; a store key.
    pub fn new(extra_names: &[&str]) -> Deployment {
        // CUSTOS_TEST_KEEP=1 keeps the directory for a look after a failure.
        let dir = tempfile::Builder::new()
            .prefix("custos-deployment-")
            .disable_cleanup(std::env::var_os("CUSTOS_TEST_KEEP").is_some())
            .tempdir()
            .expect("temp dir");
        let pki = dir.path().join("pki");
        let pki_s = pki.to_string_lossy().into_owned();
        let mut args = vec![
            "pki",
            "init",
            "--dir",
            &pki_s,
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
        ];
        for name in extra_names {
            args.extend(["--name", name]);
        }
        collector_command(&args);
        let host = hostname();
        collector_command(&["pki", "issue", "agent", &host, "--dir", &pki_s]);
        let key = dir.path().join("store.key");
        collector_command(&["store", "keygen", "--key-file", &key.to_string_lossy()]);
        let api_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free TCP port");
        Deployment {
            dir,
            host,
            api_port,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pki(&self) -> PathBuf {
        self.path("pki")
    }

    /// Writes the collector's configuration for `listen` (`extra` is appended) and returns its
    /// path.
    pub fn collector_config(&self, listen: &str, extra: &str) -> PathBuf {
        self.collector_config_ingest(listen, "", extra)
    }

    /// As [`Deployment::collector_config`], with more keys of `[ingest]` (`ingest`, lines).
    pub fn collector_config_ingest(&self, listen: &str, ingest: &str, extra: &str) -> PathBuf {
        let pki = self.pki();
        let config = format!(
            "[ingest]\nlisten = \"{listen}\"\n{ingest}\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [tls]\nca = \"{ca}\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\ncrl = \"{crl}\"\n\
             [store]\ndir = \"{store}\"\nkey_file = \"{store_key}\"\nseal_key = \"{seal}\"\n{extra}\n",
            api = self.api_port,
            ca = pki.join("ca.pem").display(),
            cert = pki.join("collector.pem").display(),
            key = pki.join("collector.key").display(),
            crl = pki.join("crl.pem").display(),
            store = self.path("store").display(),
            store_key = self.path("store.key").display(),
            seal = pki.join("seal.key").display(),
        );
        let path = self.path("collector.toml");
        std::fs::write(&path, crate::agent::with_metrics_port(&config))
            .expect("writing collector config");
        path
    }

    /// Starts the collector (optionally inside a network namespace) and waits until it listens.
    pub fn start_collector(&self, listen: &str, netns: Option<&str>) -> Collector {
        self.start_collector_with(listen, netns, "")
    }

    /// As [`Deployment::start_collector`], with more configuration.
    pub fn start_collector_with(
        &self,
        listen: &str,
        netns: Option<&str>,
        extra: &str,
    ) -> Collector {
        self.start_collector_ingest(listen, netns, "", extra)
    }

    /// As [`Deployment::start_collector_with`], with more keys of `[ingest]` (`ingest`, lines).
    pub fn start_collector_ingest(
        &self,
        listen: &str,
        netns: Option<&str>,
        ingest: &str,
        extra: &str,
    ) -> Collector {
        let config = self.collector_config_ingest(listen, ingest, extra);
        self.start_collector_at(&config, netns)
    }

    /// Starts the collector with the configuration file `config` (see
    /// [`Deployment::collector_config`]) and waits until it listens.
    pub fn start_collector_at(&self, config: &Path, netns: Option<&str>) -> Collector {
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("custos-collector"));
                c
            }
            None => Command::new(bin("custos-collector")),
        };
        command
            .arg("--config")
            .arg(config)
            .env("CUSTOS_LOG", "info,custos_collector::ingest=debug");
        let (daemon, _) = Daemon::spawn("custos-collector", command, false);
        daemon.wait_log(&["collector listening"], Duration::from_secs(30));
        Collector { daemon }
    }

    /// An agent configuration shipping to `address`, with this deployment's certificates.
    pub fn agent_config(&self, address: &str, extra: &str) -> String {
        let pki = self.pki();
        format!(
            "[collector]\naddress = \"{address}\"\nserver_name = \"localhost\"\n\
             ca = \"{ca}\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
             [spool]\ndir = \"{spool}\"\n{extra}\n",
            ca = pki.join("ca.pem").display(),
            cert = pki
                .join(format!("issued/agent-{}.pem", self.host))
                .display(),
            key = pki
                .join(format!("issued/agent-{}.key", self.host))
                .display(),
            spool = self.path("spool").display(),
        )
    }

    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            dir: self.path("store"),
            key_file: self.path("store.key"),
            seal_key: self.pki().join("seal.key"),
            agent_ca: Some(self.pki().join("ca.pem")),
        }
    }

    /// Every stored event of this host's session `session`, read back through the store (its
    /// chain checked).
    pub fn recording(&self, session: AuditSessionId) -> Vec<Event> {
        let store = Store::open_read_only(&self.store_config()).expect("opening the store");
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        let key = RecordingKey {
            host: self.host.clone(),
            boot_id: BootId(boot.trim().to_owned()),
            session,
        };
        store
            .read_events(&key.id())
            .unwrap_or_else(|err| panic!("reading {}: {err}", key.id()))
    }

    /// Whether the store has sealed the recording of `session`.
    pub fn sealed(&self, session: AuditSessionId) -> bool {
        let Ok(store) = Store::open_read_only(&self.store_config()) else {
            return false;
        };
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let key = RecordingKey {
            host: self.host.clone(),
            boot_id: BootId(boot.trim().to_owned()),
            session,
        };
        matches!(store.index().recording(&key.id()), Ok(Some(row)) if row.sealed)
    }

    /// Waits until the store has sealed the recording of `session` (its end stored).
    pub fn wait_sealed(&self, session: AuditSessionId, timeout: Duration) {
        crate::wait_until("the recording to be sealed", timeout, || {
            self.sealed(session).then_some(())
        });
    }

    /// Stored batches, as (agent, spool, seq), in storing order.
    pub fn stored_batches(&self) -> Vec<(String, String, u64)> {
        let store = Store::open_read_only(&self.store_config()).expect("opening the store");
        store.index().stored_batches().expect("stored batches")
    }
}

/// What a `custos` command did.
pub struct Cli {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Cli {
    /// The command succeeded; its output.
    pub fn ok(self) -> String {
        assert!(
            self.status.success(),
            "custos failed ({}): {}",
            self.status,
            self.stderr
        );
        self.stdout
    }
}

impl Deployment {
    /// Issues a certificate for an auditor (`role` auditor or admin); returns (cert, key).
    pub fn auditor(&self, name: &str, role: &str) -> (PathBuf, PathBuf) {
        let pki = self.pki().to_string_lossy().into_owned();
        collector_command(&[
            "pki", "issue", "auditor", name, "--role", role, "--dir", &pki,
        ]);
        (
            self.pki().join(format!("issued/{role}-{name}.pem")),
            self.pki().join(format!("issued/{role}-{name}.key")),
        )
    }

    /// Runs `custos ARGS` with the given certificate against this deployment's API.
    pub fn custos(&self, identity: &(PathBuf, PathBuf), args: &[&str]) -> Cli {
        let output = Command::new(bin("custos"))
            .args(args)
            .env(
                "CUSTOS_COLLECTOR",
                format!("https://localhost:{}", self.api_port),
            )
            .env("CUSTOS_CA", self.pki().join("ca.pem"))
            .env("CUSTOS_CERT", &identity.0)
            .env("CUSTOS_KEY", &identity.1)
            .env("CUSTOS_CONFIG", "/dev/null")
            .output()
            .expect("running custos");
        Cli {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The recording id of this host's session `session`.
    pub fn recording_id(&self, session: AuditSessionId) -> String {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        RecordingKey {
            host: self.host.clone(),
            boot_id: BootId(boot.trim().to_owned()),
            session,
        }
        .id()
    }

    /// The recording file of this host's session `session`.
    pub fn recording_file(&self, session: AuditSessionId) -> PathBuf {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
        self.path("store")
            .join("recordings")
            .join(&self.host)
            .join(boot.trim())
            .join(format!("{}.rec", session.0))
    }
}
