//! `cargo xtask run`: the main job on this machine. Builds release binaries, prepares a
//! development deployment under ./custos-data once (a CA and certificates, the store key,
//! configurations for the collector, the agent and `custos`), starts a collector with its
//! embedded store and an agent recording this host, and prints how to look at what it records.
//! Ctrl-C stops the agent first (it ships what it holds), then the collector.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

#[derive(clap::Args, Debug)]
pub struct RunOptions {
    /// Where the deployment lives (certificates, keys, store, spool, logs).
    #[arg(long, default_value = "custos-data")]
    data: PathBuf,
    /// First of four local TCP/UDP ports: agents' QUIC, auditors' HTTPS, then the agent's and
    /// the collector's metrics.
    #[arg(long, default_value_t = 7443)]
    ports: u16,
}

/// OpenSSH's server, as Debian installs it: `run` suggests `ssh localhost` only when it is there.
const SSHD: &str = "/usr/sbin/sshd";

/// How long each daemon may take to start, and to stop.
const START: Duration = Duration::from_secs(120);
const STOP: Duration = Duration::from_secs(60);

pub fn run(options: RunOptions) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("recording this host loads eBPF programs: run as root");
    }
    setup::setup()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--bins"]))?;
    let bin = cmd::target_dir().join("release");
    let data = std::path::absolute(&options.data).context("resolving --data")?;
    let dev = DevDeployment::prepare(&bin, &data, options.ports)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    let mut collector = Daemon::start(
        "collector",
        Command::new(bin.join("custos-collector"))
            .arg("--config")
            .arg(&dev.collector_config),
        &dev.logs,
    )?;
    collector.wait_for("collector listening", START, &stop)?;
    let mut agent = match Daemon::start(
        "agent",
        &mut agent_command(&bin, &dev.agent_config),
        &dev.logs,
    )
    .and_then(|mut agent| {
        agent
            .wait_for("recording login sessions", START, &stop)
            .map(|()| agent)
    }) {
        Ok(agent) => agent,
        Err(err) => {
            collector.stop();
            return Err(err);
        }
    };

    let custos = format!(
        "{} --config {}",
        relative(&bin.join("custos")),
        relative(&dev.cli_config)
    );
    println!(
        "run: recording: this host's login sessions go to a local collector; data in {}",
        relative(&data)
    );
    println!(
        "run: open a recorded session (another terminal, this folder): cargo xtask login   (a login \
         shell as {}; --user NAME for another user)",
        crate::login::DEFAULT_USER
    );
    if Path::new(SSHD).exists() {
        println!("run:   or: ssh localhost (any ssh or console login is recorded)");
    } else {
        println!(
            "run:   ssh logins are recorded too once an OpenSSH server runs here \
             (apt-get install openssh-server)"
        );
    }
    println!("run: then: {custos} sessions");
    println!("run:   {custos} replay ID        (also: show ID, export ID --format asciicast)");
    println!(
        "run: logs in {}, metrics at http://127.0.0.1:{}/metrics and :{}. Ctrl-C stops both; nothing is lost.",
        relative(&dev.logs),
        options.ports + 2,
        options.ports + 3
    );

    // Until Ctrl-C, or until a daemon dies.
    let failure = loop {
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        if let Some(exit) = agent.exited() {
            break Some(format!("the agent stopped ({exit})"));
        }
        if let Some(exit) = collector.exited() {
            break Some(format!("the collector stopped ({exit})"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("run: stopping the agent (it ships what it holds), then the collector");
    let agent_ok = agent.stop();
    let collector_ok = collector.stop();
    if let Some(failure) = failure {
        bail!("{failure}; see {}", relative(&dev.logs));
    }
    if !(agent_ok && collector_ok) {
        bail!("a daemon did not stop cleanly; see {}", relative(&dev.logs));
    }
    println!(
        "run: stopped; everything recorded is in {}",
        relative(&data)
    );
    Ok(())
}

/// `path` relative to the current directory when it is below it (shorter to copy).
fn relative(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

/// The files of a development deployment.
pub(crate) struct DevDeployment {
    pub(crate) collector_config: PathBuf,
    pub(crate) agent_config: PathBuf,
    pub(crate) cli_config: PathBuf,
    pub(crate) logs: PathBuf,
}

impl DevDeployment {
    /// Creates what is missing under `data` (keys and certificates only once) and writes the
    /// configurations (every time: they are generated).
    pub(crate) fn prepare(bin: &Path, data: &Path, ports: u16) -> anyhow::Result<Self> {
        let pki = data.join("pki");
        let logs = data.join("logs");
        for dir in [data, &logs] {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            set_mode(dir, 0o700)?;
        }
        let collector = bin.join("custos-collector");
        let pki_arg = pki.to_string_lossy().into_owned();
        let host = hostname()?;
        let store_key = pki.join("store.key");
        if !pki.join("ca.pem").exists() {
            println!(
                "run: creating a development CA and certificates in {}",
                relative(&pki)
            );
        }
        ensure_pki(&collector, &pki, &store_key)?;
        let issued = pki.join("issued");
        if !issued.join(format!("agent-{host}.pem")).exists() {
            cmd::output(
                Command::new(&collector).args(["pki", "issue", "agent", &host, "--dir", &pki_arg]),
            )?;
        }
        if !issued.join("admin-dev.pem").exists() {
            cmd::output(Command::new(&collector).args([
                "pki", "issue", "auditor", "dev", "--role", "admin", "--dir", &pki_arg,
            ]))?;
        }

        let path = |p: &Path| p.display().to_string();
        let collector_config = data.join("collector.toml");
        write_config(
            &collector_config,
            &format!(
                "# Written by cargo xtask run on every start.\n\
                 [ingest]\nlisten = \"127.0.0.1:{ingest}\"\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [tls]\nca = \"{ca}\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\ncrl = \"{crl}\"\n\
                 [store]\ndir = \"{store}\"\nkey_file = \"{store_key}\"\nseal_key = \"{seal}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
                ingest = ports,
                api = ports + 1,
                metrics = ports + 3,
                ca = path(&pki.join("ca.pem")),
                cert = path(&pki.join("collector.pem")),
                key = path(&pki.join("collector.key")),
                crl = path(&pki.join("crl.pem")),
                store = path(&data.join("store")),
                store_key = path(&store_key),
                seal = path(&pki.join("seal.key")),
            ),
        )?;
        let agent_config = data.join("agent.toml");
        write_config(
            &agent_config,
            &format!(
                "# Written by cargo xtask run on every start.\n\
                 [collector]\naddress = \"127.0.0.1:{ingest}\"\nserver_name = \"localhost\"\n\
                 ca = \"{ca}\"\ncertificate = \"{cert}\"\nkey = \"{key}\"\n\
                 [spool]\ndir = \"{spool}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
                ingest = ports,
                metrics = ports + 2,
                ca = path(&pki.join("ca.pem")),
                cert = path(&issued.join(format!("agent-{host}.pem"))),
                key = path(&issued.join(format!("agent-{host}.key"))),
                spool = path(&data.join("spool")),
            ),
        )?;
        let cli_config = data.join("cli.toml");
        write_config(
            &cli_config,
            &format!(
                "# Written by cargo xtask run on every start: custos --config {cli} ...\n\
                 collector = \"https://localhost:{api}\"\nca = \"{ca}\"\n\
                 certificate = \"{cert}\"\nkey = \"{key}\"\n",
                cli = path(&data.join("cli.toml")),
                api = ports + 1,
                ca = path(&pki.join("ca.pem")),
                cert = path(&issued.join("admin-dev.pem")),
                key = path(&issued.join("admin-dev.key")),
            ),
        )?;
        Ok(Self {
            collector_config,
            agent_config,
            cli_config,
            logs,
        })
    }
}

/// Creates, when missing, a CA and collector certificate (for localhost and 127.0.0.1), a seal
/// key and a revocation list under `pki`, and a store key at `store_key`, with the collector's
/// own commands.
pub(crate) fn ensure_pki(collector: &Path, pki: &Path, store_key: &Path) -> anyhow::Result<()> {
    if !pki.join("ca.pem").exists() {
        cmd::output(
            Command::new(collector)
                .args(["pki", "init", "--dir"])
                .arg(pki)
                .args(["--name", "localhost", "--name", "127.0.0.1"]),
        )?;
    }
    // A PKI made before revocation lists existed gets its first one.
    if !pki.join("crl.pem").exists() {
        cmd::output(
            Command::new(collector)
                .args(["pki", "crl", "--dir"])
                .arg(pki),
        )?;
    }
    if !store_key.exists() {
        cmd::output(
            Command::new(collector)
                .args(["store", "keygen", "--key-file"])
                .arg(store_key),
        )?;
    }
    Ok(())
}

fn write_config(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn hostname() -> anyhow::Result<String> {
    let name = cmd::output(&mut Command::new("hostname"))?;
    Ok(name.trim().to_owned())
}

/// A daemon started by `run`, logging to a file.
pub(crate) struct Daemon {
    name: &'static str,
    pub(crate) child: Child,
    log: PathBuf,
    /// Where this run's lines begin in the log.
    log_start: u64,
}

/// The agent's scheduling priority, as packaging/systemd/custos-agent.service sets it (`Nice=`):
/// ahead of the sessions it records, so that it is not the one that waits when they keep every
/// core busy (as auditd raises its own priority).
pub(crate) const AGENT_NICE: libc::c_int = -10;

/// `custos-agent --config CONFIG` from `bin`, at [`AGENT_NICE`] as the package's unit runs it.
pub(crate) fn agent_command(bin: &Path, config: &Path) -> Command {
    let mut command = Command::new(bin.join("custos-agent"));
    command.arg("--config").arg(config);
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::setpriority(libc::PRIO_PROCESS, 0, AGENT_NICE) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

impl Daemon {
    pub(crate) fn start(
        name: &'static str,
        command: &mut Command,
        logs: &Path,
    ) -> anyhow::Result<Self> {
        let log = logs.join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let log_start = file.metadata().map(|m| m.len()).unwrap_or(0);
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env(
                "CUSTOS_LOG",
                std::env::var("CUSTOS_LOG").unwrap_or_else(|_| "info".into()),
            );
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                // Its own process group: Ctrl-C reaches xtask, which stops the daemons in order.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Stop with xtask if it dies.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Outside any login session, as under systemd: the daemons' own work is not
                // recorded even when xtask runs in a recorded session.
                leave_login_session();
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", cmd::describe(command)))?;
        Ok(Self {
            name,
            child,
            log,
            log_start,
        })
    }

    /// Waits until this run's log has a line containing `needle`.
    pub(crate) fn wait_for(
        &mut self,
        needle: &str,
        timeout: Duration,
        stop: &AtomicBool,
    ) -> anyhow::Result<()> {
        let start = usize::try_from(self.log_start).unwrap_or(usize::MAX);
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(text.get(start..).unwrap_or_default());
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!(
                    "the {} exited at start ({status}):\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                self.stop();
                bail!(
                    "the {} did not start within {timeout:?}:\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits; SIGKILL after [`STOP`]. True when it stopped cleanly.
    pub(crate) fn stop(&mut self) -> bool {
        if let Some(status) = self.exited() {
            return status.success();
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "run: the {} did not stop within {STOP:?}; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.stop();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Unsets this process's login uid (and with it its audit session), as root may.
pub(crate) fn leave_login_session() {
    const UNSET: &[u8] = b"4294967295";
    // SAFETY: open, write and close on a static path; async-signal-safe.
    unsafe {
        let fd = libc::open(c"/proc/self/loginuid".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, UNSET.as_ptr().cast(), UNSET.len());
            libc::close(fd);
        }
    }
}
