//! Benchmark family `pipeline`: the collector side of a deployment, measured with its real
//! parts (release `custos-collector`, QUIC with mutual TLS, the `custos/1` protocol, the
//! `custos` CLI over HTTPS).
//!
//! - [`ingest`]: events/s, MB/s, acknowledgement latency and peak RSS with 1, 100 and 1,000
//!   simulated agents (item 7);
//! - [`storage`]: bytes on disk per MB of terminal output and per 1,000 commands (item 8);
//! - [`query`]: `custos sessions` over 1,000,000 sessions and `custos show` of 10,000 events
//!   (item 9);
//! - [`deploy`]: the PKI, the collector process and the readings they share.
//!
//! Scratch space is `ctx.work/pipeline`; certificates, the command-output corpus and the
//! populated query index are kept there between invocations, stores of each run are removed.
mod deploy;
mod ingest;
mod query;
mod storage;

use std::fmt::Write as _;

use super::{Context, Section};

/// The command that produces this section.
const COMMAND: &str = "cargo xtask bench --only pipeline";

pub fn run(ctx: &Context) -> anyhow::Result<Vec<Section>> {
    let started = std::time::Instant::now();
    let dir = ctx.work.join("pipeline");
    let deployment = deploy::Deployment::prepare(&ctx.bin_dir, &dir, 1000)?;
    let storage = storage::run(&deployment)?;
    let ingest = ingest::run(ctx, &deployment)?;
    let query = query::run(ctx, &deployment)?;

    let mut markdown = String::new();
    let _ = writeln!(
        markdown,
        "## Pipeline: collector ingest, storage and queries\n\n\
         Produced by `{COMMAND}` ({runs} runs, {mins:.1} min). Everything is the real thing: the \
         release `custos-collector` with its embedded store, QUIC with mutual TLS (agent \
         certificates issued by the deployment CA), the `custos/1` framing from `custos-proto`, \
         and the `custos` CLI over HTTPS. The load generator (`custos-bench-loadgen`) runs on \
         the same 2-core machine as the collector and competes with it for CPU; other builds \
         and benchmarks may have run at the same time, so absolute figures are noisy \
         (the min-max ranges show how much).\n",
        runs = ctx.runs,
        mins = started.elapsed().as_secs_f64() / 60.0,
    );
    ingest::markdown(&ingest, &mut markdown);
    storage::markdown(&storage, &mut markdown);
    query::markdown(&query, &mut markdown);
    Ok(vec![Section {
        name: "pipeline",
        markdown,
    }])
}
