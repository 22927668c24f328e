//! `custos-bench-loadgen`: simulated agents for the `pipeline` benchmarks of `cargo xtask bench`.
//!
//! Each simulated agent is a real `custos/1` client, like the agent's shipper: its own QUIC
//! connection, its own agent certificate issued by the deployment CA, a `hello`, then batches
//! made with the proto crate's framing (`wire::make_batch`, `wire::encode_frame`), each on its
//! own stream, never two of one session outstanding. The sessions are realistic (keystrokes and
//! their echo, fork, exec with argv, the opens of a dynamically linked program, terminal output
//! taken from real commands run on this machine, exit, prompt) and every figure it prints
//! counts only what the collector acknowledged (the collector acknowledges a batch only once it
//! is durable). Results go to stdout as `key=value` lines for xtask to read.
//!
//! Subcommands: `certs` (issue agent certificates), `ingest` (N agents at full speed),
//! `storage` (ship a workload, print its raw sizes), `session` (ship one session of a given
//! number of events and print its recording id).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use custos_bench::Rng;
use custos_pki::{
    Role,
    issue::{PkiDir, Validity},
    tls::TlsFiles,
};
use custos_proto::{
    BootId, Event,
    wire::{self, BatchSeq, Frame, Hello, SpoolId},
};

mod client;
mod corpus;
mod workload;

#[derive(Parser)]
#[command(about = "Simulated Custos agents (real QUIC, mutual TLS, custos/1) for benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the simulated agents find the collector and their certificates.
#[derive(clap::Args, Clone)]
struct Target {
    /// The collector's QUIC address.
    #[arg(long)]
    collector: SocketAddr,
    /// The deployment's PKI directory (ca.pem; agent certificates in issued/).
    #[arg(long)]
    pki: PathBuf,
    /// Directory of real command outputs to replay as terminal output (made if missing).
    #[arg(long)]
    corpus: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Issue certificates for agents bench-agent-0000 .. bench-agent-(N-1), skipping those that
    /// exist.
    Certs {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        agents: usize,
    },
    /// N agents, each with its own connection and certificate, send their batches as fast as
    /// the collector acknowledges them.
    Ingest {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        agents: usize,
        /// Sessions of each agent shipping at once (an agent has at most one batch of a session
        /// outstanding).
        #[arg(long)]
        sessions: usize,
        /// Batches each session sends.
        #[arg(long)]
        batches: usize,
        /// Seed of the workload (a different one per run keeps spools and sessions distinct).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Ships a storage workload through one agent and prints its raw sizes.
    Storage {
        #[command(flatten)]
        target: Target,
        /// `output` (commands printing a lot) or `commands` (1,000 commands, short output).
        #[arg(long)]
        kind: String,
    },
    /// Ships one session of exactly `events` events; prints its recording id.
    Session {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Certs { pki, agents } => certs(&pki, agents),
        Cmd::Ingest {
            target,
            agents,
            sessions,
            batches,
            seed,
        } => ingest(&target, agents, sessions, batches, seed),
        Cmd::Storage { target, kind } => storage(&target, &kind),
        Cmd::Session { target, events } => one_session(&target, events),
    }
}

/// Host name (and certificate common name) of simulated agent `i`.
fn agent_name(i: usize) -> String {
    format!("bench-agent-{i:04}")
}

fn certs(pki: &Path, agents: usize) -> anyhow::Result<()> {
    let dir = PkiDir::new(pki);
    for i in 0..agents {
        let name = agent_name(i);
        if dir.issued().join(format!("agent-{name}.pem")).exists() {
            continue;
        }
        custos_pki::issue::issue(&dir, Role::Agent, &name, Validity::days(30), None, false)
            .with_context(|| format!("issuing the certificate of {name}"))?;
    }
    println!("agents={agents}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn ingest(
    target: &Target,
    agents: usize,
    sessions: usize,
    batches: usize,
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        agents > 0 && sessions > 0 && batches > 0,
        "agents, sessions, batches must be > 0"
    );
    let corpus = corpus::load(&target.corpus)?;
    let started = Instant::now();
    let plans = generate(
        &corpus,
        agents,
        sessions,
        batches,
        seed,
        workload::Shape::BUSY,
    )?;
    eprintln!(
        "loadgen: generated {} batches in {:.1}s",
        plans
            .iter()
            .map(|p| p.sessions.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    let result = runtime()?.block_on(client::run_all(target, plans))?;
    result.print();
    Ok(())
}

fn storage(target: &Target, kind: &str) -> anyhow::Result<()> {
    let corpus = corpus::load(&target.corpus)?;
    let shape = match kind {
        "output" => workload::Shape::OUTPUT,
        "commands" => workload::Shape::COMMANDS,
        other => bail!("unknown storage workload {other:?} (output, commands)"),
    };
    let mut rng = Rng::new(7);
    let agent = 0;
    let mut sessions = Vec::new();
    let mut totals = workload::Totals::default();
    // Output: about 64 MiB of terminal output; commands: 1,000 commands.
    let mut session_no = 0u32;
    loop {
        let done = match kind {
            "output" => totals.output_bytes >= 64 << 20,
            _ => totals.commands >= 1000,
        };
        if done {
            break;
        }
        session_no += 1;
        let mut maker =
            workload::Session::new(&corpus, &agent_name(agent), session_no, shape, rng.next());
        let budget = match kind {
            "output" => usize::MAX,
            _ => 1000 - totals.commands as usize,
        };
        let events = maker.whole(budget.min(shape.commands_per_session));
        totals.add(&events)?;
        sessions.push(events);
    }
    let spool = SpoolId(format!("bench-storage-{kind}"));
    let mut seq = 0u64;
    let batched: Vec<Vec<Vec<u8>>> = sessions
        .iter()
        .map(|events| workload::batches(events, &spool, &mut seq))
        .collect::<anyhow::Result<_>>()?;
    let plan = client::AgentPlan {
        name: agent_name(agent),
        spool,
        sessions: batched,
    };
    let result = runtime()?.block_on(client::run_all(target, vec![plan]))?;
    result.print();
    totals.print();
    Ok(())
}

fn one_session(target: &Target, events: usize) -> anyhow::Result<()> {
    anyhow::ensure!(events >= 2, "a session has at least a start and an end");
    let corpus = corpus::load(&target.corpus)?;
    let agent = 0;
    let session = 900_000 + (std::process::id() % 10_000);
    let mut maker = workload::Session::new(
        &corpus,
        &agent_name(agent),
        session,
        workload::Shape::BUSY,
        u64::from(session),
    );
    let list = maker.exactly(events);
    let spool = SpoolId(format!("bench-show-{session}"));
    let mut seq = 0u64;
    let plan = client::AgentPlan {
        name: agent_name(agent),
        spool,
        sessions: vec![workload::batches(
            &list,
            &SpoolId(format!("bench-show-{session}")),
            &mut seq,
        )?],
    };
    runtime()?.block_on(client::run_all(target, vec![plan]))?;
    let first = list.first().ok_or_else(|| anyhow!("no events"))?;
    let boot: String = first
        .boot_id
        .0
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect();
    println!("recording={}-{boot}-{session}", first.host);
    Ok(())
}

/// Builds every agent's batches (in parallel, before anything is sent).
fn generate(
    corpus: &corpus::Corpus,
    agents: usize,
    sessions: usize,
    batches: usize,
    seed: u64,
    shape: workload::Shape,
) -> anyhow::Result<Vec<client::AgentPlan>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = agents.div_ceil(threads);
    let mut plans = Vec::with_capacity(agents);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<Vec<client::AgentPlan>> {
                    let mut out = Vec::new();
                    for agent in (t * per)..((t + 1) * per).min(agents) {
                        let mut rng = Rng::new(seed.wrapping_mul(1_000_003) ^ agent as u64);
                        let spool = SpoolId(format!("bench-{seed}-{agent}"));
                        let mut seq = 0u64;
                        let mut list = Vec::new();
                        for s in 0..sessions {
                            let id = (seed as u32 % 1000) * 100_000 + s as u32 + 1;
                            let mut maker = workload::Session::new(
                                corpus,
                                &agent_name(agent),
                                id,
                                shape,
                                rng.next(),
                            );
                            let mut session_batches = Vec::with_capacity(batches);
                            for _ in 0..batches {
                                let events = maker.batch_events();
                                session_batches.push(workload::frame(&events, &spool, &mut seq)?);
                            }
                            list.push(session_batches);
                        }
                        out.push(client::AgentPlan {
                            name: agent_name(agent),
                            spool,
                            sessions: list,
                        });
                    }
                    Ok(out)
                })
            })
            .collect();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
            plans.extend(part);
        }
        Ok(())
    })?;
    Ok(plans)
}
