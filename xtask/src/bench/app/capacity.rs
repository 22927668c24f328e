//! Agent capacity and footprint (issue 7, items 6 and 10): the agent's CPU and memory while
//! idle, then a generator inside a session stepping its event rate up, one window per step,
//! until the kernel drops records or the generator cannot go faster.
use std::{path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use super::{
    agent::{Custos, DROPPED, RECORDS},
    workloads::SESSION_UID,
};

/// Generator rates tried, in operations per second (each one kernel record or two).
pub const RATES: [u64; 7] = [25_000, 50_000, 100_000, 150_000, 200_000, 300_000, 400_000];
/// Seconds per step (the issue asks 60; 20 to fit the time box).
pub const WINDOW: f64 = 20.0;
/// Seconds of idle measurement.
pub const IDLE: u64 = 30;

pub struct Step {
    pub target: u64,
    /// Operations per second the generator reached.
    pub achieved: f64,
    /// Kernel records per second the agent took in.
    pub records_per_s: f64,
    pub dropped: f64,
    /// Agent CPU seconds per million records (the window and the drain after it).
    pub cpu_per_million: f64,
    /// Agent CPU use over the window, percent of one core.
    pub cpu_percent: f64,
}

pub struct Capacity {
    pub idle_cpu_percent: f64,
    pub idle_rss_kib: u64,
    pub idle_hwm_kib: u64,
    pub steps: Vec<Step>,
    pub load_rss_kib: u64,
    pub load_hwm_kib: u64,
    /// The capture backends the agent reported (custos_agent_hooks).
    pub hooks: Vec<String>,
}

pub fn measure(custos: &Custos, workload: &Path, dir: &Path) -> anyhow::Result<Capacity> {
    let agent = custos.agent()?;
    std::thread::sleep(Duration::from_secs(5));
    let hooks = agent.metrics()?.labels_with("custos_agent_hooks", 1.0);
    println!("bench app: agent idle for {IDLE} s");
    let (cpu0, _, _) = agent.usage()?;
    std::thread::sleep(Duration::from_secs(IDLE));
    let (cpu1, idle_rss_kib, idle_hwm_kib) = agent.usage()?;
    let idle_cpu_percent = (cpu1 - cpu0) / IDLE as f64 * 100.0;

    let mut steps = Vec::new();
    for target in RATES {
        println!("bench app: capacity step {target}/s for {WINDOW} s");
        let before = agent.metrics()?;
        let (cpu_before, _, _) = agent.usage()?;
        let output = crate::cmd::output(Command::new(workload).args([
            "--login-uid",
            &SESSION_UID.to_string(),
            "generate",
            "--rate",
            &target.to_string(),
            "--seconds",
            &WINDOW.to_string(),
            "--dir",
            &dir.display().to_string(),
        ]))?;
        let (cpu_window, _, _) = agent.usage()?;
        agent.settle(Duration::from_secs(60))?;
        let after = agent.metrics()?;
        let (cpu_after, _, _) = agent.usage()?;
        let fields: Vec<f64> = output
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let (operations, seconds) = match fields.as_slice() {
            [operations, _execs, seconds] => (*operations, *seconds),
            _ => anyhow::bail!("unexpected generator output {output:?}"),
        };
        let records = after.get(RECORDS) - before.get(RECORDS);
        let step = Step {
            target,
            achieved: operations / seconds,
            records_per_s: records / seconds,
            dropped: after.get(DROPPED) - before.get(DROPPED),
            cpu_per_million: (cpu_after - cpu_before) / (records / 1e6).max(1e-9),
            cpu_percent: (cpu_window - cpu_before) / seconds * 100.0,
        };
        let saturated = step.achieved < 0.9 * target as f64;
        let dropped = step.dropped > 0.0;
        steps.push(step);
        if saturated || dropped {
            break;
        }
    }
    let (_, load_rss_kib, load_hwm_kib) = agent.usage()?;
    if !agent.stop() {
        eprintln!(
            "bench app: the agent did not stop cleanly; see {}",
            custos.logs().display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Capacity {
        idle_cpu_percent,
        idle_rss_kib,
        idle_hwm_kib,
        steps,
        load_rss_kib,
        load_hwm_kib,
        hooks,
    })
}
