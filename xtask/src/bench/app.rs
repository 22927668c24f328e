//! Benchmark family `app` (issue 7, items 1-6 and the agent half of 10): what the agent costs
//! the applications it watches, against a baseline, the empty-program floor, auditd and tlog,
//! and the agent's capacity and footprint.
//!
//! Configurations are interleaved round by round (baseline, floor, custos, auditd, tlog, then
//! again), each round running every workload once, so drift on this shared machine hits every
//! configuration alike. This module owns the rounds; the pieces live in the submodules.
use std::{
    collections::HashMap,
    fs,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{Context, Section, Stats};
use crate::test::ensure_packages;

mod agent;
mod capacity;
mod monitors;
mod report;
mod workloads;

use workloads::{Fixtures, Kind};

/// Debian packages the comparisons need.
const PACKAGES: [(&str, &str); 4] = [
    ("bpftrace", "/usr/bin/bpftrace"),
    ("auditd", "/usr/sbin/auditd"),
    ("tlog", "/usr/bin/tlog-rec-session"),
    ("bpftool", "/usr/sbin/bpftool"),
];

/// What a workload runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Config {
    Baseline,
    Floor,
    Custos,
    Auditd,
    Tlog,
}

impl Config {
    pub const ALL: [Config; 5] = [
        Config::Baseline,
        Config::Floor,
        Config::Custos,
        Config::Auditd,
        Config::Tlog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Floor => "empty-program floor",
            Config::Custos => "custos-agent",
            Config::Auditd => "auditd",
            Config::Tlog => "tlog-rec-session",
        }
    }

    fn applies(self, kind: Kind, in_session: bool) -> bool {
        self != Config::Tlog || (kind.is_shell() && in_session)
    }
}

/// One workload variant: the workload, inside a session or not.
pub type Variant = (Kind, bool);

/// What the agent reported for one variant, summed over the runs.
#[derive(Default, Clone, Copy)]
pub struct AgentCounts {
    pub records: f64,
    pub dropped: f64,
    pub spool_lost: f64,
}

/// Everything measured.
#[derive(Default)]
pub struct Results {
    pub seconds: HashMap<(Variant, Config), Vec<f64>>,
    pub agent: HashMap<Variant, AgentCounts>,
    pub audit_lost: HashMap<Variant, u64>,
}

impl Results {
    pub fn stats(&self, variant: Variant, config: Config) -> Option<Stats> {
        self.seconds
            .get(&(variant, config))
            .filter(|s| !s.is_empty())
            .map(|s| Stats::of(s))
    }
}

pub fn variants() -> Vec<Variant> {
    let mut all = Vec::new();
    for kind in Kind::ALL {
        all.push((kind, true));
        if kind.outside_too() {
            all.push((kind, false));
        }
    }
    all
}

pub fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    let started = Instant::now();
    // Ctrl-C or SIGTERM ends the benchmark through an error, so every guard (auditd and its
    // rules, bpftrace, agent, collector, /run/utmp) is undone.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    ensure_packages(&PACKAGES)?;
    let work = ctx.work.join("app");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    println!("bench app: preparing workloads in {}", work.display());
    let fixtures = Fixtures::create(&work.join("fixtures"), &ctx.bin_dir)?;
    let custos = agent::Custos::start(&ctx.bin_dir, &work.join("deploy"))?;
    let tlog = monitors::Tlog::prepare(work.join("tlog.log"))?;

    let mut results = Results::default();
    for round in 0..ctx.runs {
        for config in Config::ALL {
            anyhow::ensure!(!stop.load(Ordering::Relaxed), "interrupted");
            println!(
                "bench app: round {}/{}: {} ({:.0} s so far)",
                round + 1,
                ctx.runs,
                config.name(),
                started.elapsed().as_secs_f64()
            );
            run_config(config, &fixtures, &custos, &tlog, &work, &mut results)?;
        }
    }
    let capacity = capacity::measure(
        &custos,
        &ctx.bin_dir.join("custos-bench-workload"),
        &work.join("generator"),
    )?;
    drop(tlog);
    drop(custos);
    fixtures.remove_large();
    let _ = fs::remove_dir_all(work.join("deploy/store"));
    let markdown = report::render(ctx, &results, &capacity, started.elapsed());
    Ok(vec![Section {
        name: "app",
        markdown,
    }])
}

/// One configuration of one round: sets it up, runs every workload it applies to, tears down.
fn run_config(
    config: Config,
    fixtures: &Fixtures,
    custos: &agent::Custos,
    tlog: &monitors::Tlog,
    work: &Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    let _floor = match config {
        Config::Floor => Some(monitors::Floor::attach(&work.join("bpftrace.log"))?),
        _ => None,
    };
    let _no_audit_contexts = match config {
        Config::Auditd => None,
        _ => Some(monitors::NoAuditContexts::install()?),
    };
    let audit = match config {
        Config::Auditd => Some(monitors::Audit::start(&work.join("auditd"))?),
        _ => None,
    };
    let agent = match config {
        Config::Custos => Some(custos.agent()?),
        _ => None,
    };
    for variant @ (kind, in_session) in variants() {
        if !config.applies(kind, in_session) {
            continue;
        }
        let tlog_config = (config == Config::Tlog).then(|| tlog.config());
        let mut command = fixtures.command(kind, in_session, tlog_config.as_deref());
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let before = agent.as_ref().map(|a| a.metrics()).transpose()?;
        let lost_before = audit.as_ref().map(monitors::Audit::lost);
        // Write back what earlier runs left dirty (the admin session writes and deletes
        // thousands of files), so that no run pays for another's writeback.
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let start = Instant::now();
        let output = command
            .output()
            .with_context(|| format!("running {}", crate::cmd::describe(&command)))?;
        let seconds = start.elapsed().as_secs_f64();
        anyhow::ensure!(
            output.status.success(),
            "{} under {} failed ({}): {}",
            kind.title(),
            config.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        results
            .seconds
            .entry((variant, config))
            .or_default()
            .push(seconds);
        if let (Some(agent), Some(before)) = (&agent, before) {
            agent.settle(Duration::from_secs(60))?;
            let after = agent.metrics()?;
            let counts = results.agent.entry(variant).or_default();
            counts.records += after.get(agent::RECORDS) - before.get(agent::RECORDS);
            counts.dropped += after.get(agent::DROPPED) - before.get(agent::DROPPED);
            counts.spool_lost += after.get(agent::SPOOL_LOST) - before.get(agent::SPOOL_LOST);
        }
        if let (Some(audit), Some(lost_before)) = (&audit, lost_before) {
            *results.audit_lost.entry(variant).or_default() +=
                audit.lost().saturating_sub(lost_before);
        }
        if config == Config::Tlog {
            tlog.clear();
        }
    }
    if let Some(agent) = agent
        && !agent.stop()
    {
        eprintln!(
            "bench app: the agent did not stop cleanly; see {}",
            custos.logs().display()
        );
    }
    Ok(())
}
