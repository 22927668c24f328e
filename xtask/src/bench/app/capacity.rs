//! Agent capacity and footprint (issue 7, items 6 and 10): the agent's CPU and memory while
//! idle, then generator processes inside a session stepping their event rate up, one window
//! per step, until the kernel drops records or the generators cannot go faster.
use std::{path::Path, time::Duration};

use anyhow::Context as _;

use super::{
    agent::{Custos, DROPPED, Memory, RECORDS, threads_schedstat},
    workloads::{SESSION_UID, login_command},
};

/// Generator rates tried, in operations per second (each one kernel record), finer around
/// the limit seen on the 2-core machine (drops from 125,000-150,000).
pub const RATES: [u64; 10] = [
    25_000, 50_000, 100_000, 125_000, 150_000, 175_000, 200_000, 250_000, 300_000, 400_000,
];
/// Seconds per step (the 60).
pub const WINDOW: f64 = 60.0;
/// Seconds of idle measurement.
pub const IDLE: u64 = 60;
/// Generator processes the steps start with. Measured on the 2-core machine with the agent
/// running, flat out (15 s, twice each): one process reached 100,000-130,000 operations/s,
/// two 160,000-175,000, three and four 160,000-187,000, the same within the noise, all with
/// both cores saturated. At a set rate of 125,000, one process reached 103,000, two 122,000.
pub const PROCESSES: u32 = 2;

/// The most generator processes a step may use: one per core, at least [`PROCESSES`]. When
/// the generators fall short of a step's rate, the step runs again with one more process.
pub fn max_processes() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores).unwrap_or(u32::MAX).max(PROCESSES)
}

/// A step reached its rate when the generators did at least this share of it.
pub const REACHED: f64 = 0.9;

pub struct Step {
    pub target: u64,
    /// Generator processes sharing the rate.
    pub processes: u32,
    /// Operations per second the generators reached, summed.
    pub achieved: f64,
    /// Kernel records per second the agent took in.
    pub records_per_s: f64,
    pub dropped: f64,
    /// Agent CPU seconds per million records (the window and the drain after it).
    pub cpu_per_million: f64,
    /// Agent CPU use over the window, percent of one core.
    pub cpu_percent: f64,
}

impl Step {
    /// Whether the generators reached the step's rate.
    pub fn reached(&self) -> bool {
        self.achieved >= REACHED * self.target as f64
    }
}

pub struct Capacity {
    /// From /proc/PID/stat (10 ms ticks).
    pub idle_cpu_percent: f64,
    /// From the threads' schedstat (exact).
    pub idle_sched: IdleSched,
    /// Memory at the end of the idle window.
    pub idle: Memory,
    pub steps: Vec<Step>,
    /// Memory after the last step's drain.
    pub load: Memory,
    /// The capture backends the agent reported (custos_agent_hooks).
    pub hooks: Vec<String>,
}

/// The idle agent's CPU by its threads' schedstat.
pub struct IdleSched {
    pub cpu_percent: f64,
    /// Times its threads were scheduled in, per second.
    pub wakeups_per_second: f64,
}

pub fn measure(custos: &Custos, workload: &Path, dir: &Path) -> anyhow::Result<Capacity> {
    let agent = custos.agent()?;
    std::thread::sleep(Duration::from_secs(5));
    let hooks = agent.metrics()?.labels_with("custos_agent_hooks", 1.0);
    println!("bench app: agent idle for {IDLE} s");
    let (cpu0, _, _) = agent.usage()?;
    let sched0 = threads_schedstat(agent.pid())?;
    std::thread::sleep(Duration::from_secs(IDLE));
    let (cpu1, _, _) = agent.usage()?;
    let sched1 = threads_schedstat(agent.pid())?;
    let idle = agent.memory()?;
    let idle_cpu_percent = (cpu1 - cpu0) / IDLE as f64 * 100.0;
    let idle_sched = IdleSched {
        cpu_percent: sched1.0.saturating_sub(sched0.0) as f64 / 1e9 / IDLE as f64 * 100.0,
        wakeups_per_second: sched1.1.saturating_sub(sched0.1) as f64 / IDLE as f64,
    };

    let mut steps = Vec::new();
    let mut processes = PROCESSES;
    let max_processes = max_processes();
    let mut rates = RATES.iter().copied().peekable();
    while let Some(&target) = rates.peek() {
        println!(
            "bench app: capacity step {target}/s from {processes} generator processes for \
             {WINDOW} s"
        );
        let before = agent.metrics()?;
        let (cpu_before, _, _) = agent.usage()?;
        // A login environment, like the workloads (the generator runs /bin/true).
        let output = crate::cmd::output(login_command(workload).args([
            "--login-uid",
            &SESSION_UID.to_string(),
            "generate",
            "--rate",
            &target.to_string(),
            "--seconds",
            &WINDOW.to_string(),
            "--processes",
            &processes.to_string(),
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
            processes,
            achieved: operations / seconds,
            records_per_s: records / seconds,
            dropped: after.get(DROPPED) - before.get(DROPPED),
            cpu_per_million: (cpu_after - cpu_before) / (records / 1e6).max(1e-9),
            cpu_percent: (cpu_window - cpu_before) / seconds * 100.0,
        };
        let reached = step.reached();
        let dropped = step.dropped > 0.0;
        steps.push(step);
        if dropped {
            break;
        }
        if reached {
            rates.next();
        } else if processes < max_processes {
            // The generators, not the agent, fell short: the same rate from one more process.
            processes += 1;
        } else {
            break;
        }
    }
    let load = agent.memory()?;
    if !agent.stop() {
        eprintln!(
            "bench app: the agent did not stop cleanly; see {}",
            custos.logs().display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(Capacity {
        idle_cpu_percent,
        idle_sched,
        idle,
        steps,
        load,
        hooks,
    })
}
