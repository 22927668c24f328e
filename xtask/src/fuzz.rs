//! `cargo xtask fuzz`: runs each fuzz target of `fuzz/` (cargo-fuzz, libFuzzer, on the nightly
//! toolchain) for a bounded time, starting from its committed corpus (`fuzz/corpus/TARGET`).
//! A crash, a panic, a timeout or an allocation over the limit fails it; libFuzzer leaves the
//! input in `fuzz/artifacts/TARGET/` (reproduce with `cargo +nightly fuzz run TARGET FILE`).
//! Installs cargo-fuzz when it is missing. What the fuzzer finds new goes to a scratch corpus
//! under `fuzz/target/`, so the committed one only changes on purpose (docs/development.md).
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cmd;

/// The targets, in the order they run.
pub const TARGETS: [&str; 4] = ["frame", "batch", "spool", "chunk"];

#[derive(clap::Args)]
pub struct FuzzOptions {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Only this target (frame, batch, spool or chunk).
    target: Option<String>,
}

/// `rustup run nightly cargo ARGS`, in the workspace root (cargo-fuzz finds `fuzz/` there).
fn nightly_cargo() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo"])
        .current_dir(cmd::workspace_root());
    command
}

pub fn fuzz(options: FuzzOptions) -> anyhow::Result<()> {
    let targets: Vec<&str> = match &options.target {
        Some(target) if TARGETS.contains(&target.as_str()) => vec![target.as_str()],
        Some(target) => bail!("no fuzz target {target}: the targets are {TARGETS:?}"),
        None => TARGETS.to_vec(),
    };
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed for the nightly toolchain cargo-fuzz builds with")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        bail!(
            "fuzzing needs the nightly toolchain: run `cargo xtask setup` (or `rustup toolchain install nightly`)"
        );
    }
    if cmd::output(nightly_cargo().args(["fuzz", "--version"])).is_err() {
        println!("fuzz: installing cargo-fuzz");
        cmd::run(cmd::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    cmd::run(nightly_cargo().args(["fuzz", "build"]))?;
    let scratch = cmd::workspace_root().join("fuzz/target/corpus");
    for target in targets {
        let found = scratch.join(target);
        std::fs::create_dir_all(&found)
            .with_context(|| format!("cannot create {}", found.display()))?;
        println!("fuzz: {target} for {} s", options.seconds);
        cmd::run(nightly_cargo().args([
            "fuzz".into(),
            "run".into(),
            target.into(),
            found.display().to_string(),
            format!("fuzz/corpus/{target}"),
            "--".into(),
            format!("-max_total_time={}", options.seconds),
            // Slower than this per input, or allocating more, is a finding.
            "-timeout=10".into(),
            "-rss_limit_mb=2048".into(),
            "-print_final_stats=1".into(),
        ]))
        .with_context(|| {
            format!("fuzz target {target} failed: its input is in fuzz/artifacts/{target}/")
        })?;
    }
    Ok(())
}
