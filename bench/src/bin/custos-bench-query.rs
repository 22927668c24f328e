//! `custos-bench-query`: the query benchmark's two halves.
//!
//! - `populate`: fills a store's index with many ended sessions through the collector's own
//!   index code (an `index::IndexWriter`: `insert_recording`, `commit_chunk` with a
//!   [`ChunkSummary`], `set_sealed`, one transaction per [`BULK`] sessions), the rows the collector would have written had the sessions
//!   come over the network. Shipping a million sessions through QUIC, each batch fsynced twice,
//!   would take hours on this machine; the rows are the same either way and the query path
//!   measured afterwards (the real `custos` binary against the real collector's HTTPS API) does
//!   not know how they got there.
//! - `time`: runs the real `custos` CLI repeatedly (`sessions --user U --since T --until T`, or
//!   `show ID`) and prints wall-time percentiles of whole invocations (process start, mutual TLS
//!   handshake, query, rendering) as `key=value` lines.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use custos_bench::Rng;
use custos_collector::{
    index::{ChunkSummary, Index, IndexKeys, StoredChunk},
    trust::chunk::{BatchRef, ChunkHash, RecordingKey},
};
use custos_proto::{
    AuditSessionId, BootId, Timestamp,
    wire::{BatchSeq, SpoolId},
};

#[derive(Parser)]
#[command(about = "Index population and query timing for the pipeline benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Adds ended sessions to the index of the store in `store` (no collector may run on it).
    Populate {
        #[arg(long)]
        store: PathBuf,
        /// The store key file the collector will open the store with (the index is encrypted
        /// with a key derived from it).
        #[arg(long)]
        key_file: PathBuf,
        #[arg(long)]
        sessions: u64,
    },
    /// Times repeated `custos` invocations against a running collector.
    Time {
        /// The `custos` binary.
        #[arg(long)]
        custos: PathBuf,
        /// `sessions` (by user and a one-day window) or `show` (of `--id`).
        #[arg(long)]
        what: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        queries: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Users, hosts and the year the populated sessions spread over.
const USERS: u64 = 500;
const HOSTS: u64 = 1000;
const YEAR_START_NS: i64 = 1_735_689_600_000_000_000; // 2025-01-01T00:00:00Z
const DAY_NS: i64 = 86_400_000_000_000;
const DAYS: i64 = 365;

fn user(n: u64) -> String {
    format!("user{n:03}")
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Populate {
            store,
            key_file,
            sessions,
        } => populate(&store, &key_file, sessions),
        Cmd::Time {
            custos,
            what,
            id,
            queries,
            seed,
        } => time(&custos, &what, id.as_deref(), queries, seed),
    }
}

/// Sessions added per index transaction.
const BULK: u64 = 10_000;

fn populate(
    store: &std::path::Path,
    key_file: &std::path::Path,
    sessions: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(store).with_context(|| format!("creating {}", store.display()))?;
    let path = custos_collector::store::index_path(store);
    let keys = IndexKeys::new(&custos_collector::trust::keys::KeyRing::load(key_file)?);
    let mut index =
        Index::open(&path, &keys).with_context(|| format!("opening {}", path.display()))?;
    let started = Instant::now();
    let mut rng = Rng::new(42);
    let boot = BootId("0d6f1e2a-3b4c-4d5e-8f60-718293a4b5c6".into());
    let mut writer = index.writer()?;
    for n in 0..sessions {
        // Bulk loading: the rows are what the collector writes, with one commit (and fsync)
        // per many sessions instead of one per chunk.
        if n > 0 && n % BULK == 0 {
            writer.commit()?;
            writer = index.writer()?;
        }
        let key = RecordingKey {
            host: format!("host{:04}", n % HOSTS),
            boot_id: boot.clone(),
            session: AuditSessionId((n / HOSTS + 1) as u32),
        };
        let path = format!(
            "recordings/{}/{}/{}.rec",
            key.host, key.boot_id.0, key.session.0
        );
        let row = writer.insert_recording(&key, &path)?;
        let start = YEAR_START_NS + rng.below((DAYS * DAY_NS) as u64) as i64;
        // From a minute to eight hours.
        let end = start + 60_000_000_000 + rng.below(8 * 3_600_000_000_000) as i64;
        let user_no = rng.below(USERS);
        let summary = ChunkSummary {
            events: 200 + rng.below(5000),
            login_user: Some(user(user_no)),
            login_uid: Some(1000 + user_no as u32),
            tty: Some(format!("pts/{}", rng.below(8))),
            remote: Some(format!("10.0.{}.{}", rng.below(250), 1 + rng.below(250))),
            start: Some(Timestamp(start)),
            end: Some(Timestamp(end)),
            last: Some(Timestamp(end)),
            bytes_out: rng.below(1 << 20),
            bytes_in: rng.below(1 << 12),
            ..ChunkSummary::default()
        };
        let batch = BatchRef {
            spool: SpoolId(format!("spool-{}", key.host)),
            seq: BatchSeq(n / HOSTS + 1),
        };
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&n.to_be_bytes());
        let chunk = StoredChunk {
            agent: &key.host,
            batch: &batch,
            index: 0,
            stored_len: 4096,
            hash: &ChunkHash(hash),
            received: Some(Timestamp(end)),
            host_clock_skewed: false,
        };
        writer.commit_chunk(&row.id, &chunk, &summary)?;
        writer.set_sealed(&row.id)?;
    }
    writer.commit()?;
    println!("sessions={sessions}");
    println!("secs={:.1}", started.elapsed().as_secs_f64());
    Ok(())
}

fn time(
    custos: &std::path::Path,
    what: &str,
    id: Option<&str>,
    queries: usize,
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(queries > 0, "--queries must be > 0");
    let mut rng = Rng::new(seed);
    let mut times = Vec::with_capacity(queries);
    let mut rows = 0usize;
    for _ in 0..queries {
        let mut command = Command::new(custos);
        match (what, id) {
            ("sessions", _) => {
                let day = rng.below(DAYS as u64) as i64;
                let since = Timestamp(YEAR_START_NS + day * DAY_NS);
                let until = Timestamp(since.0 + DAY_NS);
                command.args([
                    "sessions",
                    "--user",
                    &user(rng.below(USERS)),
                    "--since",
                    &since.to_string(),
                    "--until",
                    &until.to_string(),
                ]);
            }
            ("show", Some(id)) => {
                command.args(["show", id]);
            }
            _ => bail!("--what sessions, or --what show with --id"),
        }
        let started = Instant::now();
        let output = command
            .output()
            .with_context(|| format!("running {}", custos.display()))?;
        times.push(started.elapsed());
        if !output.status.success() {
            bail!(
                "{command:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        rows += output.stdout.iter().filter(|b| **b == b'\n').count();
    }
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        ms(times[i])
    };
    println!("queries={queries}");
    println!("p50_ms={:.3}", pct(0.50));
    println!("p99_ms={:.3}", pct(0.99));
    println!("lines_per_query={:.1}", rows as f64 / queries as f64);
    Ok(())
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
