//! `cargo xtask bench`: every benchmark, written into BENCHMARKS.md.
//!
//! Each benchmark family lives in its own module and returns Markdown sections; this module
//! owns the command line, the shared statistics (median, min-max, ratio against a baseline
//! measured in the same run) and the report file. Sections are delimited by
//! `<!-- bench:NAME -->` markers so `--only NAME` rewrites one section and keeps the others.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{cmd, setup};

mod app;
mod pipeline;
mod vmcost;

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchOptions {
    /// Only these benchmark families (app, pipeline, vmcost); the others keep their section.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Runs per measurement; the report gives their median and min-max (at least 5).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Where the report goes.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub output: PathBuf,
}

/// What every benchmark family gets.
pub struct Context {
    /// Runs per measurement.
    pub runs: usize,
    /// Release binaries (custos-agent, custos-collector, custos, custos-bench-*).
    pub bin_dir: PathBuf,
    /// Scratch space under target/bench, emptied by each family as it needs.
    pub work: PathBuf,
}

/// One section of BENCHMARKS.md.
pub struct Section {
    /// Stable key: the family's name (app, pipeline, vmcost).
    pub name: &'static str,
    /// Markdown, starting with a `##` heading.
    pub markdown: String,
}

/// Median and range of repeated measurements.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Stats {
    /// Statistics of `samples` (must not be empty).
    pub fn of(samples: &[f64]) -> Stats {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs: n,
        }
    }

    /// `median (min-max)` with `digits` decimals.
    pub fn display(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}-{:.digits$})",
            self.median, self.min, self.max
        )
    }

    /// This median over the baseline's median, as `1.034x`.
    pub fn ratio(&self, baseline: &Stats) -> String {
        format!("{:.3}x", self.median / baseline.median)
    }
}

pub fn bench(options: BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        cmd::is_root(),
        "cargo xtask bench needs root (it loads eBPF programs)"
    );
    anyhow::ensure!(options.runs >= 5, "--runs must be at least 5");
    setup::setup()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--bins"]))?;
    let ctx = Context {
        runs: options.runs,
        bin_dir: cmd::target_dir().join("release"),
        work: cmd::target_dir().join("bench"),
    };
    std::fs::create_dir_all(&ctx.work)
        .with_context(|| format!("cannot create {}", ctx.work.display()))?;
    let wanted = |name: &str| options.only.is_empty() || options.only.iter().any(|o| o == name);
    let mut sections = Vec::new();
    if wanted("app") {
        sections.extend(app::run(&ctx)?);
    }
    if wanted("pipeline") {
        sections.extend(pipeline::run(&ctx)?);
    }
    if wanted("vmcost") {
        sections.extend(vmcost::run(&ctx)?);
    }
    let output = cmd::workspace_root().join(&options.output);
    write_report(&output, &sections, &options)?;
    println!("bench: wrote {}", output.display());
    Ok(())
}

/// Rewrites the sections in `sections` in the report at `path`, keeping the others.
fn write_report(path: &Path, sections: &[Section], options: &BenchOptions) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut names: Vec<&str> = Vec::new();
    for line in old.lines() {
        if let Some(name) = line
            .strip_prefix("<!-- bench:")
            .and_then(|r| r.strip_suffix(" -->"))
        {
            names.push(name);
        }
    }
    for section in sections {
        if !names.contains(&section.name) {
            names.push(section.name);
        }
    }
    let mut text = String::new();
    text.push_str("# Custos benchmarks\n\n");
    let _ = writeln!(
        text,
        "Produced by `cargo xtask bench` (as root; `--only app|pipeline|vmcost` reruns one \
         family, `--runs N` sets the repetitions, {} this time). Every figure is the median of \
         the runs with the min-max in brackets, and every comparison is a ratio against a \
         baseline measured in the same run on the same machine: on a shared 2-core machine \
         absolute times are not targets, ratios are.\n",
        options.runs
    );
    let _ = writeln!(text, "{}\n", machine_line());
    for name in names {
        let body = match sections.iter().find(|s| s.name == name) {
            Some(section) => section.markdown.trim_end().to_owned(),
            None => match old_section(&old, name) {
                Some(body) => body,
                None => continue,
            },
        };
        let _ = writeln!(
            text,
            "<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->\n"
        );
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn old_section(old: &str, name: &str) -> Option<String> {
    let start = old.find(&format!("<!-- bench:{name} -->\n"))?;
    let body_start = start + format!("<!-- bench:{name} -->\n").len();
    let end = old[body_start..].find(&format!("<!-- /bench:{name} -->"))? + body_start;
    Some(old[body_start..end].trim_end().to_owned())
}

/// Kernel, CPUs and memory of this machine, for the report's header.
fn machine_line() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    format!("Machine: Linux {}, {cpus} CPUs ({model}).", kernel.trim())
}
