//! `custos-collector`: the central server.
// The dependencies are the library's, checked there.
#![allow(unused_crate_dependencies)]
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use custos_collector::{
    api::{self, ApiState},
    audit::Audit,
    config::{Config, ConfigFile as _},
    ingest::{self, Limits},
    metrics::CollectorMetrics,
    pki::{self, PkiCommand},
    retention::{self, Retention},
    store::{self, Store},
    trust,
    writer::StoreHandle,
};
use custos_daemon::{Signal, Signals};
use tracing::{info, warn};

/// Receives session recordings from Custos agents, stores them, serves auditors.
#[derive(Parser, Debug)]
#[command(name = "custos-collector", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/custos/collector.toml if present, else
    /// defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Check the configuration (and the files it names) and exit.
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the collector (the default).
    Run,
    /// Manage the deployment's certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Manage the store's keys.
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Write a self-contained bundle for an independent verifier (`custos verify --offline
    /// DIR`): recordings, seals, agents' certificates, tombstones, the access log and the public
    /// material only (CA certificate, seal public key). Safe while the collector runs.
    ExportBundle {
        /// A new (or empty) folder to write it into.
        #[arg(long)]
        out: PathBuf,
        /// Only this recording (repeat for more); the agents' chains then show the batches of
        /// the others as missing. Default: every recording.
        #[arg(long)]
        session: Vec<String>,
        /// Only sessions active at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<jiff::Timestamp>,
        /// Only sessions active at or before this time (RFC 3339).
        #[arg(long)]
        to: Option<jiff::Timestamp>,
    },
    /// Manage the index of the recordings.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Rebuild the index from the recording files (stop the collector first).
    Rebuild,
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// Add a new encryption key (creating the key file); new chunks use it, old ones keep theirs.
    Keygen {
        /// The key file (default: store.key_file of the configuration).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    custos_daemon::init_logging();
    let result = match cli.command {
        Some(Command::Pki { command }) => pki::run(command),
        Some(Command::Store { command }) => store_command(cli.config.as_deref(), command),
        Some(Command::ExportBundle {
            out,
            session,
            from,
            to,
        }) => load_config(cli.config.as_deref()).and_then(|config| {
            export_bundle(
                &config,
                &out,
                &session,
                from.map(Into::into),
                to.map(Into::into),
            )
        }),
        Some(Command::Index {
            command: IndexCommand::Rebuild,
        }) => load_config(cli.config.as_deref()).and_then(|config| {
            let rebuilt = store::rebuild_index(&config.store)?;
            println!(
                "indexed {} recordings ({} chunks) from {}",
                rebuilt.recordings,
                rebuilt.chunks,
                config.store.dir.display()
            );
            for damaged in &rebuilt.damaged {
                println!("damaged: {damaged} (indexed up to the damage; run custos verify)");
            }
            Ok(())
        }),
        Some(Command::Run) | None => {
            // A configuration, certificate or key the collector cannot use: one line, status 2
            // (the unit does not restart on it).
            let config = match load_config(cli.config.as_deref())
                .and_then(|config| check(&config).map(|()| config))
            {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("custos-collector: {err:#}");
                    return ExitCode::from(2);
                }
            };
            if cli.check_config {
                println!("configuration ok");
                return ExitCode::SUCCESS;
            }
            run(config, cli.config.clone())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("custos-collector: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Ok(Config::load_or_default(path)?.0)
}

fn store_command(config: Option<&std::path::Path>, command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Keygen { key_file } => {
            let path = match key_file {
                Some(path) => path,
                None => load_config(config)?.store.key_file,
            };
            let id = trust::keys::KeyRing::generate(&path)?;
            println!("added key {id} to {} (new chunks use it)", path.display());
        }
    }
    Ok(())
}

/// `export-bundle`: the recordings asked for are found through the index (to pick them; the
/// verifier never reads it).
fn export_bundle(
    config: &Config,
    out: &std::path::Path,
    sessions: &[String],
    from: Option<custos_proto::Timestamp>,
    to: Option<custos_proto::Timestamp>,
) -> anyhow::Result<()> {
    let recordings = if sessions.is_empty() && from.is_none() && to.is_none() {
        None
    } else {
        let index =
            custos_collector::index::Index::open_read_only(&config.store.dir.join("index.sqlite"))?;
        let mut ids = sessions.to_vec();
        if from.is_some() || to.is_some() {
            let filter = custos_collector::index::Filter {
                since: from,
                until: to,
                // Every session of the window (the index has no more than this).
                limit: u32::MAX as usize,
                ..Default::default()
            };
            ids.extend(index.sessions(&filter)?.0.into_iter().map(|s| s.id));
        }
        ids.sort();
        ids.dedup();
        let mut paths = Vec::new();
        for id in &ids {
            let row = index
                .recording(id)?
                .with_context(|| format!("no recording {id} in the index"))?;
            paths.push(PathBuf::from(row.path));
        }
        Some(paths)
    };
    let source = custos_collector::bundle::Source {
        store: &config.store.dir,
        ca: &config.tls.ca,
        seal_key: &config.store.seal_key,
        recordings,
    };
    let manifest = custos_collector::bundle::export(&source, out)?;
    println!(
        "wrote {} files to {} (public material only; check it with: custos verify --offline {})",
        manifest.files.len(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// Validates the configuration and every file it names.
fn check(config: &Config) -> anyhow::Result<()> {
    custos_collector::tls::load(config)?;
    trust::keys::KeyRing::load(&config.store.key_file)?;
    trust::keys::SealKey::load(&config.store.seal_key)?;
    Ok(())
}

/// How often the access log gets a signed checkpoint (when it has new entries).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);

/// Signs an access log checkpoint every [`CHECKPOINT_EVERY`] while there are new entries.
async fn checkpoints(
    audit: Arc<std::sync::Mutex<Audit>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let audit = audit.clone();
        let signed = tokio::task::spawn_blocking(move || {
            audit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .checkpoint_if_new()
        })
        .await;
        match signed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => warn!(error = %err, "could not sign an access log checkpoint"),
            Err(err) => warn!(error = %err, "the access log checkpoint task failed"),
        }
    }
}

/// A duration in whole days, hours, minutes or seconds, for the access log.
fn duration_text(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config, path))
}

async fn serve(config: Config, path: Option<PathBuf>) -> anyhow::Result<()> {
    let tls = custos_collector::tls::load(&config)?;
    let identity = tls.identity.clone();
    let store_config = config.store.clone();
    let opening = store_config.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&opening)).await??;
    info!(dir = %config.store.dir.display(), "store open");
    let mut opened = Audit::open(
        &config.store.dir.join("audit.sqlite"),
        trust::keys::SealKey::load(&config.store.seal_key)?,
    )?;
    // A retention period that took effect is an entry of the access log.
    let retention_setting = format!(
        "keep {}, check every {}",
        duration_text(config.retention.keep),
        duration_text(config.retention.check_every)
    );
    if opened.last_system("retention")?.as_deref() != Some(retention_setting.as_str()) {
        opened.log_system("retention", &retention_setting, "in effect")?;
    }
    let audit = Arc::new(std::sync::Mutex::new(opened));
    let (store, writer) = StoreHandle::spawn(store);
    // Its stateless-reset key survives restarts: agents of a crashed collector reconnect at once.
    let endpoint = ingest::bind(config.ingest.listen, &config.tls.key, tls.quic.clone())?;
    let (reloader, tls) = custos_collector::tls::Reloader::new(&config, endpoint.clone(), tls);
    let limits = Limits {
        max_frame: config.ingest.max_frame_size.as_u64() as usize,
        max_batch_raw: config.ingest.max_batch_size.as_u64() as usize,
        max_clock_skew: config.ingest.max_clock_skew,
    };
    let metrics = Arc::new(CollectorMetrics::default());
    let alerts =
        custos_collector::alerts::start(&config.alerts, store_config.clone(), metrics.clone())?;
    let alert_rules = alerts.clone();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ingest_task = tokio::spawn(ingest::serve(
        endpoint.clone(),
        Arc::new(ingest::Ingest {
            store: store.clone(),
            limits,
            metrics: metrics.ingest.clone(),
            alerts,
            revocation: tls.agents,
        }),
        stop_rx.clone(),
    ));
    let retention = Arc::new(Retention {
        keep: config.retention.keep,
        audit: audit.clone(),
        writer: store.clone(),
    });
    let api_state = Arc::new(ApiState {
        store: store_config,
        audit: audit.clone(),
        retention: retention.clone(),
        metrics: metrics.clone(),
    });
    let crl_task = tokio::spawn(reloader.clone().watch_crl(stop_tx.subscribe()));
    let api_task = tokio::spawn(api::serve(
        api::bind(config.api.listen).await?,
        tls.api,
        tls.auditors,
        // Moved, not shared: the store writer ends (and the collector stops) only once every
        // handle to it, the retention's among them, is gone.
        api_state,
        stop_tx.subscribe(),
    ));
    let retention_task = tokio::spawn(retention::job(
        retention,
        config.retention.check_every,
        stop_tx.subscribe(),
    ));
    let checkpoint_task = tokio::spawn(checkpoints(audit.clone(), stop_tx.subscribe()));
    let metrics_task =
        custos_daemon::metrics::serve(&config.metrics, metrics.registry(), stop_rx).await?;
    // Signal handlers before saying ready: a SIGHUP right after must reload, not kill.
    let mut signals = Signals::new()?;
    info!(
        address = %endpoint.local_addr()?,
        name = %identity.name,
        "collector listening"
    );
    custos_daemon::metrics::notify_ready();

    while let Signal::Reload = signals.next().await {
        // The alert rules from the file as it is now; an invalid file keeps those running.
        match load_config(path.as_deref())
            .map_err(|err| format!("{err:#}"))
            .and_then(|new| alert_rules.reload(&new.alerts))
        {
            Ok(()) => info!("reloaded the alert rules"),
            Err(err) => warn!(error = %err, "reload failed; keeping the running alert rules"),
        }
        match reloader.reload() {
            Ok(identity) => {
                info!(
                    name = %identity.name,
                    "reloaded the CA, its revocation list and the collector's certificate"
                );
            }
            Err(err) => warn!(
                error = %format!("{err:#}"),
                "reload failed; keeping the previous certificates"
            ),
        }
    }
    info!("stopping");
    custos_daemon::metrics::notify_stopping();
    let _ = stop_tx.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    let _ = ingest_task.await;
    let _ = api_task.await;
    let _ = crl_task.await;
    let _ = retention_task.await;
    let _ = checkpoint_task.await;
    // The closing checkpoint covers the last requests.
    let closing = audit.clone();
    let signed = tokio::task::spawn_blocking(move || {
        closing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checkpoint_if_new()
    })
    .await?;
    if let Err(err) = signed {
        warn!(error = %err, "could not sign the access log's closing checkpoint");
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), endpoint.wait_idle()).await;
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the store writer panicked"))?;
    info!("stopped");
    Ok(())
}
