//! Item 8, storage: bytes on the collector's disk (recordings and index, after the agent's
//! compression and the store's encryption) for two workloads shipped through the protocol,
//! against their raw size.
use std::fmt::Write as _;

use super::deploy::{self, Deployment};

/// The target: stored at least this many times smaller than raw.
const TARGET_RATIO: f64 = 5.0;

pub struct Workload {
    kind: &'static str,
    events: f64,
    commands: f64,
    output_bytes: f64,
    /// The terminal output alone, compressed as the agent compresses a batch.
    output_compressed_bytes: f64,
    jsonl_bytes: f64,
    msgpack_bytes: f64,
    size: deploy::StoreSize,
}

pub fn run(deployment: &Deployment) -> anyhow::Result<Vec<Workload>> {
    let mut results = Vec::new();
    for kind in ["output", "commands"] {
        println!("bench: pipeline: storage, {kind} workload");
        let store = deployment.dir.join("storage-store");
        deploy::fresh(&store)?;
        let collector = deployment.start_collector(&store, "storage-collector")?;
        let out = deployment.loadgen(&collector, "storage", &[format!("--kind={kind}")])?;
        collector.stop()?;
        let size = deploy::store_size(&store)?;
        results.push(Workload {
            kind,
            events: deploy::number(&out, "workload_events")?,
            commands: deploy::number(&out, "workload_commands")?,
            output_bytes: deploy::number(&out, "workload_output_bytes")?,
            output_compressed_bytes: deploy::number(&out, "workload_output_compressed_bytes")?,
            jsonl_bytes: deploy::number(&out, "workload_jsonl_bytes")?,
            msgpack_bytes: deploy::number(&out, "workload_msgpack_bytes")?,
            size,
        });
        deploy::fresh(&store)?;
    }
    Ok(results)
}

fn mib(bytes: f64) -> String {
    format!("{:.2} MiB", bytes / (1 << 20) as f64)
}

pub fn markdown(results: &[Workload], out: &mut String) {
    let _ = writeln!(
        out,
        "### Storage (item 8)\n\n\
         Each workload is shipped by one simulated agent through QUIC to a fresh collector, \
         which is then stopped (its index folds its WAL); stored = every file in the store \
         directory (recordings `.rec` and `.seal`, `index.sqlite`, the access log). Terminal \
         output is replayed from real commands run on this machine (`ls -l /usr/bin`, `ps aux`, \
         `dmesg`, `journalctl`, rendered man pages, `git log --stat`, /proc/cpuinfo, \
         /etc/services...), windows of 1 to 2,000 lines (output workload, about 64 MiB of \
         output) or 1 to 12 lines (commands workload: 1,000 commands, each typed, forked, \
         executed with 4-9 opens, its output, its exit). Batches are cut as the agent cuts \
         them (256 KiB) and compressed as the agent compresses them (zstd level 3); the store \
         encrypts without recompressing. Deterministic workload, one run.\n"
    );
    let _ = writeln!(
        out,
        "| workload | events | raw terminal output | raw events as JSON lines | raw events as MessagePack | stored: recordings | stored: index | stored: total | raw / stored |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for w in results {
        let total = w.size.total as f64;
        let (baseline, what) = match w.kind {
            "output" => (w.output_bytes, "terminal output"),
            _ => (w.jsonl_bytes, "JSON lines"),
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1}x ({what}) |",
            w.kind,
            w.events,
            mib(w.output_bytes),
            mib(w.jsonl_bytes),
            mib(w.msgpack_bytes),
            mib(w.size.recordings as f64),
            mib(w.size.index as f64),
            mib(total),
            baseline / total,
        );
    }
    let _ = writeln!(out);
    for w in results {
        let total = w.size.total as f64;
        match w.kind {
            "output" => {
                let per_mb = total / (w.output_bytes / 1e6);
                let ratio = w.output_bytes / total;
                let _ = writeln!(
                    out,
                    "- Per MB of terminal output: **{:.0} KB on disk** (everything the session \
                     recorded counted against the output alone): {ratio:.1}x smaller than raw \
                     (target ≥ {TARGET_RATIO:.0}x: {}). The output alone, without the events \
                     around it, compressed as the agent compresses (zstd level 3, 256 KiB at a \
                     time): {:.1}x smaller than raw; that is the most a recording compressed \
                     this way could reach on this output.",
                    per_mb / 1e3,
                    verdict(ratio),
                    w.output_bytes / w.output_compressed_bytes,
                );
            }
            _ => {
                let per_1000 = total / (w.commands / 1000.0);
                let ratio = w.jsonl_bytes / total;
                let _ = writeln!(
                    out,
                    "- Per 1,000 commands: **{:.0} KB on disk** (of which index {:.0} KB), against \
                     {:.0} KB as JSON lines ({ratio:.1}x smaller, target ≥ {TARGET_RATIO:.0}x: {}) \
                     and {:.0} KB as uncompressed MessagePack ({:.1}x).",
                    per_1000 / 1e3,
                    w.size.index as f64 / (w.commands / 1000.0) / 1e3,
                    w.jsonl_bytes / (w.commands / 1000.0) / 1e3,
                    verdict(ratio),
                    w.msgpack_bytes / (w.commands / 1000.0) / 1e3,
                    w.msgpack_bytes / total,
                );
            }
        }
    }
    let output = results.iter().find(|w| w.kind == "output");
    let _ = writeln!(
        out,
        "\nWhat the ratios say: stored bytes are essentially the agent's zstd output (level 3, \
         per 256 KiB batch) plus a chunk header (a few hundred bytes: names, hashes, nonce) and \
         the 16-byte tag per batch, plus the index. The terminal output alone compresses only \
         {:.1}x that way, so no packing of the events around it can bring a recording of this \
         output to 5x at that level and batch size (on a sample of the same sources zstd level 19 \
         gained about 14% over level 3): the target would need compression across batches, at \
         the store over a session's chunks with a long window, where output that repeats across \
         batches (as this replayed output does) compresses away. Between that \
         and the {:.1}x stored lie the events' envelopes (host, boot id, session, seq, time, and \
         a process map with field names, MessagePack `to_vec_named`), keystrokes and their echo \
         as one event per byte, and the index (its per-open rows are most of it). Against the \
         events' own raw size (MessagePack) the output workload is stored {:.1}x smaller.\n",
        output.map_or(0.0, |w| w.output_bytes / w.output_compressed_bytes),
        output.map_or(0.0, |w| w.output_bytes / w.size.total as f64),
        output.map_or(0.0, |w| w.msgpack_bytes / w.size.total as f64),
    );
}

fn verdict(ratio: f64) -> &'static str {
    if ratio >= TARGET_RATIO {
        "met"
    } else {
        "**missed**"
    }
}
