//! `custos-agent`: records interactive login sessions on this host.
//!
//! Along an event's path: [`load`] attaches the kernel programs, [`capture`] reads their ring
//! buffer, [`session`] attributes and enriches events, [`pipeline`] writes them out: as JSON
//! lines (`--stdout`) or in [`batch`]es to the [`spool`], from which [`ship`] sends them to the
//! collector.
mod batch;
mod capture;
mod config;
mod load;
mod memory;
mod metrics;
mod notice;
mod pipeline;
mod policy;
mod session;
mod ship;
mod spool;
mod status;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use clap::{CommandFactory as _, Parser};
use custos_pki::{Role, tls::TlsFiles};
use custos_proto::event::GapReason;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::{
    batch::Batcher,
    capture::drops::DropMonitor,
    config::{Config, ConfigFile as _},
    metrics::AgentMetrics,
    pipeline::{Output, Spooler},
    session::{Tracker, host::HostIdentity},
    ship::Shipping,
    spool::Spool,
};

/// Captured events waiting between the ring buffer reader and the session tracker. The ring
/// buffer is the buffer (its losses are counted and reported as gaps); this queue only lets the
/// reader run a little ahead of the tracker. It holds events, each up to one record's 16 KiB of
/// terminal output, so a deep queue would hold a flood's megabytes in the agent's heap.
const CAPTURE_QUEUE: usize = 2048;

/// Records interactive login sessions (terminal, commands, file opens) with eBPF and ships them
/// to the Custos collector.
#[derive(Parser, Debug)]
#[command(name = "custos-agent", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/custos/agent.toml if present, else defaults.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// Print events as JSON lines on standard output instead of shipping them.
    #[arg(long)]
    stdout: bool,
    /// Check the configuration (and the certificates it names) and exit.
    #[arg(long)]
    check_config: bool,
    /// Write (or, with the notice off, remove) the login notice files of [notice] and exit.
    #[arg(long)]
    apply_notice: bool,
    /// With --apply-notice: the root the files go under.
    #[arg(long, default_value = "/", requires = "apply_notice")]
    root: PathBuf,
    /// Print the events of a batch the collector refused (a file of the spool's rejected/,
    /// sealed with the spool key) as JSON lines, and exit.
    #[arg(long, value_name = "FILE")]
    read_rejected: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Whether the running agent records (programs attached, ring buffer read, spool not full),
    /// from its status file ([agent] status_file). Exit 0 when it does, 1 when it does not.
    Status {
        /// Print nothing when recording, else one line on stderr: for scripts and PAM.
        #[arg(long)]
        ready: bool,
        /// Exit 0 without looking when [agent] fail_closed is off (the PAM hook's question).
        #[arg(long)]
        if_fail_closed: bool,
    },
}

fn main() -> ExitCode {
    if let Some(code) = custos_clidoc::generate_if_asked(Cli::command) {
        return code;
    }
    memory::configure_allocator();
    let cli = Cli::parse();
    custos_daemon::init_logging();
    let (config, config_path) = match Config::load_or_default(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(err) => return refuse(err.into()),
    };
    if let Some(Command::Status {
        ready,
        if_fail_closed,
    }) = cli.command
    {
        return status::command::run(
            &config,
            status::command::Ask {
                ready,
                if_fail_closed,
            },
        );
    }
    if cli.apply_notice {
        return match notice::apply(&config.notice, &cli.root) {
            Ok(done) => {
                for line in done {
                    println!("{line}");
                }
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("custos-agent: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = &cli.read_rejected {
        return match print_rejected(&config, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("custos-agent: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let shipping = if cli.stdout {
        None
    } else {
        match prepare_shipping(&config, &config_path) {
            Ok(shipping) => Some(shipping),
            Err(err) => return refuse(err),
        }
    };
    if cli.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    // One worker thread: the agent's tasks (ring reader, session tracker, shipping) are light
    // and pass events along a chain, so a second worker mostly woke up to find nothing to
    // steal, and each wake-up costs a context switch (an idle agent used 0.11% of a core with
    // two workers, 0.07% with one). Disk work leaves the worker with `block_in_place`.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("custos-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, config_path, shipping)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.downcast_ref::<config::Unhonoured>().is_some() => refuse(err),
        Err(err) => {
            eprintln!("custos-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the events of a refused batch kept in `rejected/` as JSON lines.
fn print_rejected(config: &Config, path: &Path) -> anyhow::Result<()> {
    let key = spool::seal::SpoolKey::load(&config.spool.key_file())?;
    let batch = spool::read_rejected(&key, path)?;
    let events = custos_proto::wire::decode_events(
        &batch.events,
        batch.header.raw_len,
        custos_proto::wire::DEFAULT_MAX_BATCH_RAW,
    )
    .with_context(|| format!("{}: events", path.display()))?;
    let mut out = std::io::stdout().lock();
    for event in events {
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// A configuration the agent cannot honour: one line, exit code 2.
fn refuse(err: anyhow::Error) -> ExitCode {
    eprintln!("custos-agent: {err:#}");
    ExitCode::from(2)
}

/// Checks what shipping needs before anything is loaded: the collector's address and this
/// host's certificate (readable, valid, an agent's, matching its key). The certificate's name is
/// the host name recordings carry.
fn prepare_shipping(
    config: &Config,
    path: &Path,
) -> anyhow::Result<(Shipping, Spool, spool::Recovered)> {
    let collector = config.require_collector(path)?;
    let files = TlsFiles {
        ca: &collector.ca,
        certificate: &collector.certificate,
        key: &collector.key,
    };
    let (_, identity) =
        custos_pki::tls::client_config(&files, &[Role::Agent], &[custos_proto::wire::ALPN])?;
    if !custos_pki::is_host_name(&identity.name) {
        anyhow::bail!(
            "{}: the certificate names {:?}, which cannot name a recorded host (letters, digits, \
             . - _): the collector would refuse every batch; issue one with `custos-collector pki \
             issue agent HOSTNAME`",
            collector.certificate.display(),
            identity.name
        );
    }
    // The certificate's key also signs every batch (docs/protocol.md, "Batch signatures").
    let signer = custos_pki::batch_signature::BatchSigner::load(&collector.key)
        .context("loading the key that signs batches")?;
    let host = HostIdentity::read()?;
    if host.hostname != identity.name {
        warn!(
            hostname = host.hostname,
            certificate = identity.name,
            "the host name differs from the agent certificate's name; recordings carry the certificate's"
        );
    }
    let key = spool::seal::SpoolKey::load_or_create(&config.spool.key_file())?;
    let (spool, recovered) = Spool::open(&config.spool.dir, config.spool.max_size.as_u64(), key)
        .context("opening the spool")?;
    Ok((
        Shipping {
            collector: collector.clone(),
            options: config.shipping.clone(),
            host: identity.name,
            boot_id: host.boot_id,
            keep_rejected: config.spool.keep_rejected,
            signer: Arc::new(signer),
        },
        spool,
        recovered,
    ))
}

async fn run(
    config: Config,
    config_path: PathBuf,
    shipping: Option<(Shipping, Spool, spool::Recovered)>,
) -> anyhow::Result<()> {
    let agent_tgid = std::process::id();
    // A kernel the agent cannot capture on will not change by restarting: status 2, one line.
    let mut probes = load::check_kernel()
        .and_then(|()| load::load(&config.capture, agent_tgid))
        .map_err(|err| config::Unhonoured(format!("{err:#}")))?;
    let ring = RingBuf::try_from(
        probes
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing from the eBPF object")?,
    )?;
    let parking = capture::Parking::new(&mut probes.ebpf)?;
    let monitor = DropMonitor::new(&mut probes.ebpf)?;
    let mut host = HostIdentity::read()?;
    let mut events = Vec::new();
    let metrics = Arc::new(AgentMetrics::default());
    for (capture, backend) in ["terminal", "opens"].into_iter().zip(probes.backends) {
        metrics
            .hooks
            .get_or_create(&metrics::HookLabels {
                capture,
                backend: backend.name(),
            })
            .set(1);
    }

    // Where events go: JSON lines, or batches on the spool for the sender.
    let (output, sender, mut tracker) = match shipping {
        None => (
            Output::Json(std::io::BufWriter::new(std::io::stdout())),
            None,
            Tracker::new(host),
        ),
        Some((shipping, spool, recovered)) => {
            host.hostname = shipping.host.clone();
            let mut tracker = Tracker::new(host);
            let state_path = config.spool.dir.join("sessions.json");
            let next = spool.next_event_seqs(tracker.boot_id());
            tracker.restore(pipeline::load_state(&state_path), &next);
            if recovered.skipped_bytes > 0 || recovered.torn_bytes > 0 {
                warn!(
                    skipped_bytes = recovered.skipped_bytes,
                    torn_bytes = recovered.torn_bytes,
                    "damaged spool data skipped"
                );
            }
            pipeline::report_dropped(
                &mut tracker,
                &recovered.damaged,
                GapReason::SpoolCorrupt,
                &mut events,
                &metrics,
            );
            let spool = Arc::new(Mutex::new(spool));
            let wake = Arc::new(Notify::new());
            let spooler = Spooler {
                batcher: Batcher::new(
                    config.shipping.batch_max_bytes.as_u64() as usize,
                    config.shipping.batch_interval,
                ),
                packer: custos_proto::wire::Packer::new(),
                spool: spool.clone(),
                signer: shipping.signer.clone(),
                wake: wake.clone(),
                state_path,
                checkpoint_due: true,
            };
            (
                Output::Spool(spooler),
                Some((shipping, spool, wake)),
                tracker,
            )
        }
    };
    // The policy first: sessions already running are in scope or not like new ones.
    let rules = policy::Rules::compile(&config).map_err(config::Unhonoured)?;
    tracker.set_policy(
        policy::Policy::new(rules, Some(metrics.clone())),
        Some(load::ExcludedUids::take(&mut probes.ebpf)?),
    );
    // Sessions already running; their events wait in the ring buffer meanwhile.
    tracker.seed(agent_tgid, &mut events);
    // What loading needed (the kernel's BTF above all) is freed; give it back.
    memory::release_free();

    let tracker_boot_id = tracker.boot_id().0.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(CAPTURE_QUEUE);
    let ring_emptied = Arc::new(AtomicU64::new(capture::boot_now_ns()));
    let reader = tokio::spawn(capture::read_ring(
        ring,
        parking,
        tx.clone(),
        stop_rx.clone(),
        metrics.records_read.clone(),
        ring_emptied.clone(),
        capture::clock::ClockWatch::new(),
    ));
    let losses = tokio::spawn(capture::watch_losses(
        monitor,
        tx,
        stop_rx.clone(),
        Duration::from_secs(1),
        metrics.clone(),
    ));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let pipeline = tokio::spawn(pipeline::run(
        rx,
        reload_rx,
        tracker,
        output,
        events,
        metrics.clone(),
    ));
    let (ship_stop, ship_stop_rx) = watch::channel(false);
    let reconnect = Arc::new(Notify::new());
    let status_sources = status::writer::Sources {
        pid: agent_tgid,
        boot_id: tracker_boot_id,
        ring_emptied,
        spool: sender
            .as_ref()
            .map(|(_, spool, _)| (spool.clone(), config.spool.max_size.as_u64())),
    };
    let ship_task = sender.map(|(shipping, spool, wake)| {
        tokio::spawn(ship::run(
            shipping,
            spool,
            wake,
            reconnect.clone(),
            ship_stop_rx,
            metrics.clone(),
        ))
    });
    let metrics_server =
        custos_daemon::metrics::serve(&config.metrics, metrics.registry(), stop_rx).await?;
    // Signal handlers before saying ready: a SIGHUP right after must reload, not kill.
    let mut signals = custos_daemon::Signals::new()?;
    // From here `custos-agent status` says the agent records (the PAM hook lets logins in).
    let status_writer =
        status::writer::StatusWriter::start(config.agent.status_file.clone(), status_sources);
    info!(host = %HostIdentity::read()?.hostname, "recording login sessions");
    custos_daemon::metrics::notify_ready();

    while signals.next().await != custos_daemon::Signal::Shutdown {
        // SIGHUP: the policy sections again (a configuration that does not load leaves the
        // running policy in place), and the certificate files as they are now.
        match Config::load(&config_path)
            .map_err(|err| err.to_string())
            .and_then(|new| policy::Rules::compile(&new))
        {
            Ok(rules) => {
                if reload_tx.send(rules).await.is_ok() {
                    info!(config = %config_path.display(), "SIGHUP: configuration loaded; handing the new policy to the pipeline");
                }
            }
            Err(err) => warn!(
                error = %err,
                "SIGHUP: the configuration does not load; keeping the running policy"
            ),
        }
        info!("SIGHUP: reconnecting with the certificate files as they are now");
        reconnect.notify_one();
    }
    custos_daemon::metrics::notify_stopping();
    // Not recording from here on: new logins wait (with fail_closed) until an agent records.
    status_writer.stop().await;
    info!("stopping: detaching programs and draining the ring buffer");
    // Detach first, so that nothing new enters the ring buffer while it drains.
    drop(probes);
    let _ = stop_tx.send(true);
    let stats = reader.await??;
    let monitor = losses.await?;
    let counters = monitor.counters();
    pipeline.await??;
    let _ = ship_stop.send(true);
    if let Some(ship_task) = ship_task {
        ship_task.await??;
    }
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    info!(
        records = stats.records(),
        undecodable = stats.undecodable,
        kernel_dropped = counters.dropped_records(),
        "stopped"
    );
    Ok(())
}
