//! Benchmark family `vmcost`: what each hook backend adds to the calls it hooks and to the calls
//! it does not, inside one qemu boot of Debian's 6.12 kernel (where both backends load; this
//! host refuses fentry).
//!
//! The guest side is `custos-vmtest bench` (tests/src/bin/custos-vmtest/bench.rs): in one boot
//! it rotates through three configurations per round (no agent, the agent on tracepoints, the
//! agent on fentry) and times loops of each call, inside a login session and outside one, in
//! fresh worker processes. Here the samples become ratios against the no-agent time of the same
//! round. Under software emulation only ratios mean anything, and the section says so.
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, bail};

use super::{Context, Section, Stats};
use crate::vm::{KERNELS, Vm};

/// qemu's instruction counter: every guest instruction advances the guest's clocks by 2^0 ns,
/// and an idle guest skips ahead, so what the guest times does not depend on how busy this
/// (shared) host is. Without it, other work on the host shows up as noise of +-50%.
const QEMU_ARGS: [&str; 2] = ["-icount", "shift=0,sleep=off"];

/// The backends compared with the no-agent baseline, as the guest names its configurations.
const BACKENDS: [&str; 2] = ["tracepoint", "fentry"];

/// The workloads, in report order: (guest name, what the row says).
const WORKLOADS: [(&str, &str); 4] = [
    (
        "write",
        "`write` of 8 bytes to a pty slave (terminal capture)",
    ),
    ("open", "`openat` + `close` of /etc/hostname (open capture)"),
    (
        "exec",
        "spawn `/bin/true` and wait (exec, fork, exit: scheduler tracepoints in both backends)",
    ),
    ("getppid", "`getppid` (hooked by neither backend)"),
];

/// One measured loop: (round, config, workload, where) -> (ns per call, agent ns per call after).
type Samples = BTreeMap<(usize, String, String, String), (f64, f64)>;

pub fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    let (_, pattern) = KERNELS
        .iter()
        .find(|(name, _)| name.contains("6.12"))
        .context("no 6.12 kernel in vm::KERNELS")?;
    let vm = Vm::prepare_in(&ctx.work.join("vmcost"))?;
    let kernel = vm.kernel(pattern)?;
    println!(
        "bench vmcost: booting {} under qemu ({} rounds)",
        kernel.package, ctx.runs
    );
    let lines = vm.bench(&kernel, &ctx.runs.to_string(), &QEMU_ARGS)?;
    let report = Report::parse(&lines)?;
    report.check(ctx.runs)?;
    Ok(vec![Section {
        name: "vmcost",
        markdown: report.markdown(&kernel.package, ctx.runs),
    }])
}

/// The guest's report, parsed.
#[derive(Default)]
struct Report {
    kernel: String,
    /// Calls per timed loop, by workload.
    calls: BTreeMap<String, u64>,
    /// (terminal, opens) backends the agent logged, by configuration.
    backends: BTreeMap<String, (String, String)>,
    samples: Samples,
}

impl Report {
    fn parse(lines: &[String]) -> anyhow::Result<Report> {
        let mut report = Report::default();
        for line in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |text: &str| -> anyhow::Result<f64> {
                text.parse()
                    .with_context(|| format!("bad number {text:?} in the bench report: {line}"))
            };
            match fields.as_slice() {
                ["kernel", release] => report.kernel = (*release).to_owned(),
                ["calls", workload, n] => {
                    let n = n
                        .parse()
                        .with_context(|| format!("bad call count in the bench report: {line}"))?;
                    report.calls.insert((*workload).to_owned(), n);
                }
                ["backends", config, terminal, opens] => {
                    report.backends.insert(
                        (*config).to_owned(),
                        ((*terminal).to_owned(), (*opens).to_owned()),
                    );
                }
                ["sample", round, config, workload, place, ns, after] => {
                    let round = round
                        .parse()
                        .with_context(|| format!("bad round in the bench report: {line}"))?;
                    report.samples.insert(
                        (
                            round,
                            (*config).to_owned(),
                            (*workload).to_owned(),
                            (*place).to_owned(),
                        ),
                        (number(ns)?, number(after)?),
                    );
                }
                ["error", ..] => bail!(
                    "the benchmark failed in the VM: {}",
                    line.trim_start().trim_start_matches("error ")
                ),
                // The serial port may carry noise before the first line.
                _ => {}
            }
        }
        Ok(report)
    }

    /// Every configuration ran every workload in every round, with the backend it asked for.
    fn check(&self, runs: usize) -> anyhow::Result<()> {
        for backend in BACKENDS {
            let logged = self
                .backends
                .get(backend)
                .with_context(|| format!("the agent with hooks = {backend} logged no backends"))?;
            if logged.0 != backend || logged.1 != backend {
                bail!(
                    "the agent with hooks = {backend} used terminal {}, opens {}",
                    logged.0,
                    logged.1
                );
            }
        }
        let expected = runs * 3 * WORKLOADS.len() * 2;
        if self.samples.len() != expected {
            bail!(
                "the bench report has {} samples, {expected} expected",
                self.samples.len()
            );
        }
        Ok(())
    }

    /// Per round, this configuration's figure over the no-agent time; `with_after` adds the
    /// agent's CPU after the loop.
    fn ratios(&self, config: &str, workload: &str, place: &str, with_after: bool) -> Vec<f64> {
        let mut ratios = Vec::new();
        for ((round, c, w, p), (ns, after)) in &self.samples {
            if c != config || w != workload || p != place {
                continue;
            }
            let key = (*round, "none".to_owned(), w.clone(), p.clone());
            if let Some((base, _)) = self.samples.get(&key)
                && *base > 0.0
            {
                let time = if with_after { ns + after } else { *ns };
                ratios.push(time / base);
            }
        }
        ratios
    }

    fn cell(&self, config: &str, workload: &str, place: &str, with_after: bool) -> String {
        let ratios = self.ratios(config, workload, place, with_after);
        if ratios.is_empty() {
            return "n/a".into();
        }
        Stats::of(&ratios).display(2)
    }

    fn markdown(&self, package: &str, runs: usize) -> String {
        let mut md = String::new();
        md.push_str("## Hook cost per backend, inside one VM (vmcost)\n\n");
        let _ = writeln!(
            md,
            "**qemu software emulation on 6.12: ratios only, not absolute times.** Produced by \
             `cargo xtask bench --only vmcost`: one boot of Debian's `{package}` (kernel \
             {}) under qemu with software emulation (TCG, one virtual CPU; this host refuses \
             fentry, the Debian kernel allows it), with qemu's instruction counter \
             (`{}`): the guest's clock advances by 1 ns per emulated instruction, so load on \
             this shared host does not enter the figures, and a ratio is one of emulated \
             instructions (caches, TLBs and pipelines are not modelled). The guest driver is \
             `custos-vmtest bench`.\n",
            self.kernel,
            QEMU_ARGS.join(" ")
        );
        let _ = writeln!(
            md,
            "In that boot, {runs} rounds; each round runs three configurations in an order that \
             rotates from round to round: no agent, the agent with `capture.hooks = \
             \"tracepoint\"` (syscall exit tracepoints), and with `\"fentry\"` (fexit on \
             `n_tty_write` and `do_sys_openat2`), the agent restarted for each. Each \
             configuration times a loop of each call in a fresh process, inside a login session \
             (the process writes a login uid, as pam_loginuid does, so its writes and opens are \
             recorded) and outside any (the programs leave at the scope check). A figure is that \
             configuration's time per call over the no-agent time per call of the same round, \
             median of the rounds (min-max): 1.00 adds nothing, and (ratio - 1) is the added \
             time as a fraction of the call's own cost.\n"
        );
        md.push_str(
            "- **caller**: the calling process's time per call. The VM has one CPU, so whatever \
             the agent did while the loop ran is in it.\n\
             - **+ agent after**: adds the agent's CPU time from the end of the loop until it \
             was idle again (events still queued in its ring buffer), per call: the whole cost \
             of recording.\n\n",
        );
        md.push_str(
            "| call | where | calls per loop | tracepoint: caller | tracepoint: + agent after \
             | fentry: caller | fentry: + agent after |\n|---|---|---|---|---|---|---|\n",
        );
        for (workload, what) in WORKLOADS {
            let calls = self
                .calls
                .get(workload)
                .map_or("?".to_owned(), u64::to_string);
            for (place, label) in [("in", "login session"), ("out", "outside sessions")] {
                let _ = write!(md, "| {what} | {label} | {calls} |");
                for backend in BACKENDS {
                    let _ = write!(
                        md,
                        " {} | {} |",
                        self.cell(backend, workload, place, false),
                        self.cell(backend, workload, place, true)
                    );
                }
                md.push('\n');
            }
        }
        md.push_str(
            "\nHow to read it: outside sessions, the tracepoint backend's cost on hooked calls \
             and on getppid is the syscall tracing slow path every syscall of every process pays \
             once any syscall tracepoint is attached; fentry adds a trampoline to the two hooked \
             kernel functions only. Inside a session the hooked calls also build and queue \
             records. Emulated time weighs instructions differently from hardware, so these \
             ratios show which backend costs more where, not the percentages a real server \
             would see.\n",
        );
        md
    }
}
