//! `custos-agent`: records interactive login sessions on this host.
//!
//! Along an event's path: [`load`] attaches the kernel programs, [`capture`] reads their ring
//! buffer, [`session`] attributes and enriches events, [`output`] writes them out.
mod capture;
mod config;
mod load;
mod output;
mod session;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use aya::maps::RingBuf;
use clap::Parser;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::{
    capture::{Capture, drops::DropMonitor},
    config::Config,
    output::{JsonLines, Sink},
    session::{Tracker, host::HostIdentity},
};

/// Records interactive login sessions (terminal, commands, file opens) with eBPF.
#[derive(Parser, Debug)]
#[command(name = "custos-agent", version, about)]
struct Cli {
    /// Configuration file (TOML). Without it, /etc/custos/agent.toml if present, else defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print events as JSON lines on standard output instead of shipping them.
    #[arg(long)]
    stdout: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    custos_daemon::init_logging();
    let config = match load_config(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            error!("{err:#}");
            eprintln!("custos-agent: {err:#}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    if !cli.stdout {
        eprintln!("custos-agent: shipping to a collector is not configured; use --stdout");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("custos-agent: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let sink = Box::new(JsonLines::new(std::io::stdout()));
    match runtime.block_on(run(config, sink)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("custos-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => {
            let default = std::path::Path::new(config::DEFAULT_PATH);
            if default.exists() {
                Ok(Config::load(default)?)
            } else {
                Ok(Config::default())
            }
        }
    }
}

async fn run(config: Config, mut sink: Box<dyn Sink>) -> anyhow::Result<()> {
    let agent_tgid = std::process::id();
    load::check_kernel()?;
    let mut probes = load::load(&config.capture, agent_tgid)?;
    let ring = RingBuf::try_from(
        probes
            .ebpf
            .take_map("EVENTS")
            .context("map EVENTS missing from the eBPF object")?,
    )?;
    let monitor = DropMonitor::new(&mut probes.ebpf)?;
    let mut tracker = Tracker::new(HostIdentity::read()?);

    // Sessions already running; their events wait in the ring buffer meanwhile.
    let mut out = Vec::new();
    tracker.seed(agent_tgid, &mut out);
    write_all(sink.as_mut(), &mut out)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(65536);
    let reader = tokio::spawn(capture::read_ring(ring, tx.clone(), stop_rx.clone()));
    let losses = tokio::spawn(capture::watch_losses(
        monitor,
        tx,
        stop_rx,
        Duration::from_millis(250),
    ));
    let tracking = tokio::spawn(track(rx, tracker, sink));
    info!(
        host = %HostIdentity::read()?.hostname,
        "recording login sessions"
    );

    let mut signals = custos_daemon::Signals::new()?;
    while signals.next().await != custos_daemon::Signal::Shutdown {}
    info!("stopping: detaching programs and draining the ring buffer");
    // Detach first, so that nothing new enters the ring buffer while it drains.
    drop(probes);
    let _ = stop_tx.send(true);
    let stats = reader.await??;
    let monitor = losses.await?;
    let counters = monitor.counters();
    tracking.await??;
    info!(
        records = stats.records,
        undecodable = stats.undecodable,
        kernel_dropped = counters.dropped_records(),
        "stopped"
    );
    Ok(())
}

/// Runs the session tracker until capture ends, writing every event to `sink`.
async fn track(
    mut rx: mpsc::Receiver<Capture>,
    mut tracker: Tracker,
    mut sink: Box<dyn Sink>,
) -> anyhow::Result<()> {
    let mut out = Vec::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                handle(&mut tracker, message, &mut out);
                while let Ok(message) = rx.try_recv() {
                    handle(&mut tracker, message, &mut out);
                    if out.len() >= 1024 {
                        write_all(sink.as_mut(), &mut out)?;
                    }
                }
            }
            _ = sweep.tick() => tracker.sweep(&mut out),
        }
        write_all(sink.as_mut(), &mut out)?;
    }
    write_all(sink.as_mut(), &mut out)?;
    Ok(())
}

fn handle(tracker: &mut Tracker, message: Capture, out: &mut Vec<custos_proto::Event>) {
    match message {
        Capture::Event(captured) => tracker.on_capture(captured, out),
        Capture::Loss(loss) => tracker.on_loss(loss, out),
    }
}

fn write_all(sink: &mut dyn Sink, out: &mut Vec<custos_proto::Event>) -> anyhow::Result<()> {
    for event in out.drain(..) {
        sink.write(&event)?;
    }
    sink.flush()
}

