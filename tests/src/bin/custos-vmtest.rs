//! `custos-vmtest`: the capture scenario of [`custos_tests::kernels`], on both sides of a VM.
//!
//! - `guest HOOKS RESULTS`: runs the scenario with an agent using HOOKS (auto, tracepoint,
//!   fentry) and writes the report to RESULTS (a serial port in the VMs, set to raw mode), as
//!   one JSON line followed by an end line.
//! - `judge RESULTS`: checks a report and prints one line: kernel, hook backends, and `passed`
//!   or the first failing check (then the agent's log). Exit status 1 when it failed.
//! - `bench RUNS RESULTS`: times hooked and unhooked calls with no agent and with the agent on
//!   each backend ([`bench`]), and writes the samples to RESULTS, one per line.
//! - `bench-loop WORKLOAD WHERE CALLS AGENT_PID`: one timed loop (bench's worker process).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{fs::File, io::Write as _, os::fd::AsFd as _};

use anyhow::{Context as _, bail};
use custos_tests::kernels::{self, Report};

#[path = "custos-vmtest/bench.rs"]
mod bench;

const END: &str = "CUSTOS-VMTEST-END";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["guest", hooks, results] => guest(hooks, results),
        ["judge", results] => judge(results),
        ["bench", runs, results] => bench_report(runs, results),
        ["bench-loop", workload, place, calls, agent] => {
            bench::bench_loop(workload, place, calls, agent).map(|()| true)
        }
        _ => Err(anyhow::anyhow!(
            "usage: custos-vmtest guest HOOKS RESULTS | judge RESULTS | bench RUNS RESULTS"
        )),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(err) => {
            eprintln!("custos-vmtest: {err:#}");
            std::process::exit(2);
        }
    }
}

/// Opens the report file, a serial port in the VMs: set to raw mode (no output processing),
/// so the report arrives byte for byte.
fn open_results(results: &str) -> anyhow::Result<File> {
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(results)
        .with_context(|| format!("opening {results}"))?;
    if let Ok(mut termios) = nix::sys::termios::tcgetattr(out.as_fd()) {
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(out.as_fd(), nix::sys::termios::SetArg::TCSANOW, &termios)?;
    }
    Ok(out)
}

/// Writes the end line and waits until a serial port has sent everything.
fn finish_results(mut out: File) -> anyhow::Result<()> {
    out.write_all(format!("{END}\n").as_bytes())?;
    out.flush()?;
    let _ = nix::sys::termios::tcdrain(out.as_fd());
    Ok(())
}

fn guest(hooks: &str, results: &str) -> anyhow::Result<bool> {
    let mut out = open_results(results)?;
    let report = kernels::run(hooks);
    let mut text = serde_json::to_string(&report)?;
    text.push('\n');
    out.write_all(text.as_bytes())?;
    finish_results(out)?;
    Ok(true)
}

/// The bench mode: samples as they are measured, then an `error` line if one stopped it, then
/// the end line.
fn bench_report(runs: &str, results: &str) -> anyhow::Result<bool> {
    let mut out = open_results(results)?;
    let result = bench::bench(runs, &mut out);
    if let Err(err) = &result {
        out.write_all(format!("{}\n", bench::error_line(err)).as_bytes())?;
    }
    finish_results(out)?;
    result.map(|()| true)
}

fn judge(results: &str) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(results).with_context(|| format!("reading {results}"))?;
    let Some(json) = text
        .lines()
        .take_while(|l| *l != END)
        .find(|l| l.starts_with('{'))
    else {
        bail!("no report in {results} (the scenario did not finish; see the console log)");
    };
    if !text.lines().any(|l| l == END) {
        bail!("the report in {results} is cut short");
    }
    let report: Report = serde_json::from_str(json).context("parsing the report")?;
    let backends = kernels::backends(&report.agent_log)
        .map(|(terminal, opens, reads)| {
            let hooks = if terminal == opens {
                terminal
            } else {
                format!("terminal {terminal}, opens {opens}")
            };
            format!("{hooks} ({reads} reads)")
        })
        .unwrap_or_else(|| "unknown".into());
    match kernels::judge(&report) {
        Ok(()) => {
            println!(
                "kernel {}: hooks = {} -> {backends}: passed",
                report.kernel, report.hooks
            );
            Ok(true)
        }
        Err(failed) => {
            println!(
                "kernel {}: hooks = {} -> {backends}: FAILED: {failed}",
                report.kernel, report.hooks
            );
            println!("agent log:\n{}", report.agent_log);
            Ok(false)
        }
    }
}
