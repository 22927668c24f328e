//! A recording too large to hold in memory, read back through the real collector and `custos`:
//! 2 GiB of terminal output (`CUSTOS_LARGE_RECORDING_MIB` says otherwise), shipped through real
//! QUIC and mutual TLS as an agent ships it (batches signed with the agent's key), then replayed
//! (the `events` stream), exported in both formats and verified. The output is text that
//! compresses about 4:1, so that the recording file (about 512 MiB) is larger than the memory
//! bound too: a collector that reads a recording whole, or its events whole, fails. The
//! collector's peak resident memory over all of it stays under 200 MiB, and so does each
//! `custos` command's, and every answer is whole (every byte replayed, every event exported,
//! every chunk verified).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use custos_pki::batch_signature::BatchSigner;
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    api::VerifyReport,
    event::Output,
    wire::{self, BatchHash, BatchLink, BatchSeq, BatchSignature, Frame, SpoolId, make_batch},
};
use custos_tests::{
    deployment::Deployment,
    free_udp_address,
    quic::{self, Answer},
};

/// Terminal bytes per output event (a large write, as `cat` of a big file makes).
const EVENT_BYTES: usize = 64 * 1024;
/// Events per batch: 8 MiB of terminal output, well within a batch's limits.
const EVENTS_PER_BATCH: usize = 128;
const BATCH_BYTES: usize = EVENT_BYTES * EVENTS_PER_BATCH;
/// Terminal output recorded, in MiB, unless `CUSTOS_LARGE_RECORDING_MIB` says otherwise: the
/// issue's 2 GiB (a few minutes with debug builds, whose per-byte work on recordings is optimised:
/// the workspace's `profile.dev.package` settings).
const DEFAULT_MIB: usize = 2048;
/// The bound on the collector's (and each command's) peak resident memory.
const MAX_RSS_KIB: u64 = 200 * 1024;
const SESSION: AuditSessionId = AuditSessionId(4242);

/// A small xorshift generator: the test's data need be unpredictable to zstd, not to anyone.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A pool of text of 4 letters drawn at random (2 bits of entropy a byte: zstd keeps about a
/// quarter of it), which events take windows of at random offsets, farther apart than zstd
/// looks back: the recording file is about a quarter of the output recorded.
fn pool(noise: &mut Noise, len: usize) -> Vec<u8> {
    const LETTERS: &[u8; 4] = b"ACGT";
    let mut pool = Vec::with_capacity(len);
    while pool.len() < len {
        let mut word = noise.next();
        for _ in 0..32 {
            pool.push(LETTERS[(word & 3) as usize]);
            word >>= 2;
        }
    }
    pool
}

/// Batch number `index` (from 0) of the session, signed as the link after `prev`.
fn batch(
    host: &str,
    signer: &BatchSigner,
    index: usize,
    prev: BatchHash,
    pool: &[u8],
    noise: &mut Noise,
    start: Timestamp,
) -> wire::Batch {
    let events: Vec<Event> = (0..EVENTS_PER_BATCH)
        .map(|i| {
            let n = index * EVENTS_PER_BATCH + i;
            let at = (noise.next() as usize) % (pool.len() - EVENT_BYTES);
            Event {
                time: Timestamp(start.0 + n as i64 * 1_000),
                host: host.into(),
                boot_id: BootId("5a1e0c4d-8b2f-4e6a-9c3d-7f1b2a3c4d5e".into()),
                session: SESSION,
                seq: Seq(n as u64 + 1),
                process: None,
                event: EventBody::Output(Output {
                    tty: Tty::from_parts(136, 4),
                    data: ByteString(pool[at..at + EVENT_BYTES].to_vec()),
                    uncaptured: 0,
                    redacted: Default::default(),
                }),
            }
        })
        .collect();
    let spool = SpoolId("spool".into());
    let seq = BatchSeq(index as u64 + 1);
    let mut batch = make_batch(&spool, seq, &events).expect("a batch");
    let link = BatchLink {
        spool: &spool,
        seq,
        content: BatchHash::of_content(&batch.events),
        prev,
    };
    batch.header.signed = Some(BatchSignature {
        content: link.content,
        prev,
        signature: signer.sign(&link.message()).expect("signed"),
    });
    batch
}

/// A process's peak resident memory so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status"))
}

/// What a `custos` command did, with its peak resident memory (from the kernel, as it exited).
struct Measured {
    status: ExitStatus,
    stderr: String,
    /// The bytes it wrote to its standard output, when that was a pipe.
    stdout_bytes: Option<u64>,
    peak_rss_kib: u64,
    took: Duration,
}

/// Runs `custos ARGS` as [`Deployment::custos`] does, its standard output to `stdout` (a pipe:
/// counted).
fn custos(
    deployment: &Deployment,
    identity: &(PathBuf, PathBuf),
    args: &[&str],
    stdout: Stdio,
) -> Measured {
    let began = Instant::now();
    // Reaped by wait4 below, which also reports its peak memory.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(custos_tests::bin("custos"))
        .args(args)
        .env(
            "CUSTOS_COLLECTOR",
            format!("https://localhost:{}", deployment.api_port),
        )
        .env("CUSTOS_CA", deployment.pki().join("ca.pem"))
        .env("CUSTOS_CERT", &identity.0)
        .env("CUSTOS_KEY", &identity.1)
        .env("CUSTOS_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running custos");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let counter = child.stdout.take().map(|mut stdout| {
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()).ok())
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with pointers to live locals.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32, "waiting for custos {args:?}");
    Measured {
        status: ExitStatus::from_raw(status),
        stderr: reader.join().unwrap_or_default(),
        stdout_bytes: counter.and_then(|counter| counter.join().ok().flatten()),
        peak_rss_kib: usage.ru_maxrss as u64,
        took: began.elapsed(),
    }
}

fn succeeded(what: &str, run: &Measured) {
    assert!(
        run.status.success(),
        "{what} failed ({}): {}",
        run.status,
        run.stderr
    );
    eprintln!(
        "{what}: {:.1} s, custos peak RSS {} MiB",
        run.took.as_secs_f64(),
        run.peak_rss_kib / 1024
    );
    assert!(
        run.peak_rss_kib < MAX_RSS_KIB,
        "{what}: custos's peak RSS was {} MiB",
        run.peak_rss_kib / 1024
    );
}

/// The number of lines in `path` (`wc -l`, which reads gigabytes faster than a debug build).
fn lines(path: &Path) -> u64 {
    let out = Command::new("wc")
        .arg("-l")
        .arg(path)
        .output()
        .expect("running wc");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wc -l {}: {:?}", path.display(), out))
}

/// The first and the last line of `path`.
fn first_and_last_line(path: &Path) -> (String, String) {
    let mut file = std::fs::File::open(path).expect("the export");
    let mut first = String::new();
    BufReader::new(&file)
        .read_line(&mut first)
        .expect("reading the export");
    let len = file.metadata().expect("the export's size").len();
    let tail_len = (4 * EVENT_BYTES as u64).min(len);
    file.seek(SeekFrom::Start(len - tail_len))
        .expect("seeking the export");
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).expect("reading the export");
    let tail = String::from_utf8(tail).expect("UTF-8 export");
    let last = tail
        .trim_end_matches('\n')
        .rsplit('\n')
        .next()
        .unwrap_or_default()
        .to_owned();
    (first, last)
}

#[test]
fn a_recording_larger_than_memory_streams_with_bounded_memory() {
    let began = Instant::now();
    let mib: usize = std::env::var("CUSTOS_LARGE_RECORDING_MIB")
        .ok()
        .and_then(|mib| mib.parse().ok())
        .unwrap_or(DEFAULT_MIB);
    let batches = ((mib << 20) / BATCH_BYTES).max(1);
    let total_events = batches * EVENTS_PER_BATCH;
    let total_bytes = (batches * BATCH_BYTES) as u64;
    let deployment = Deployment::new(&[]);
    let pki = deployment.pki();
    let host = deployment.host.clone();
    let listen = free_udp_address();
    let config = deployment.collector_config(&listen, "");
    let mut collector = deployment.start_collector_at(&config, None);
    let agent = (
        pki.join(format!("issued/agent-{host}.pem")),
        pki.join(format!("issued/agent-{host}.key")),
    );
    let signer = BatchSigner::load(&agent.1).expect("the agent's key");

    // Shipped as an agent ships: one batch a stream, each acknowledged once stored.
    let address: SocketAddr = listen.parse().expect("address");
    let connection = quic::Held::open(address, &pki.join("ca.pem"), (&agent.0, &agent.1))
        .expect("the agent certificate connects");
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let pool = pool(&mut noise, 64 * 1024 * 1024);
    let start = Timestamp::now();
    let mut prev = BatchHash::default();
    for index in 0..batches {
        let batch = batch(&host, &signer, index, prev, &pool, &mut noise, start);
        prev = batch.header.link().expect("signed").hash();
        let answer = connection.request(&wire::encode_frame(&Frame::Batch(batch)));
        assert_eq!(answer, Answer::Ack { duplicate: false }, "batch {index}");
    }
    drop(connection);
    drop(pool);
    let id = custos_collector::trust::chunk::RecordingKey {
        host: host.clone(),
        boot_id: BootId("5a1e0c4d-8b2f-4e6a-9c3d-7f1b2a3c4d5e".into()),
        session: SESSION,
    }
    .id();
    let file_size = walk_size(&deployment.path("store").join("recordings"));
    eprintln!(
        "shipped {} MiB of output in {:.1} s; the recording file is {} MiB",
        total_bytes >> 20,
        began.elapsed().as_secs_f64(),
        file_size >> 20
    );
    assert!(
        file_size > MAX_RSS_KIB * 1024,
        "the recording file ({file_size} bytes) is larger than the memory bound"
    );

    // A fresh collector: its peak memory is what reading the recording back took.
    collector.daemon.stop();
    let collector = deployment.start_collector_at(&config, None);
    let pid = collector.daemon.pid();
    let auditor = deployment.auditor("dana", "auditor");

    let replay = custos(
        &deployment,
        &auditor,
        // Events are a microsecond apart: played without pauses.
        &["replay", &id, "--speed", "1000000"],
        Stdio::piped(),
    );
    succeeded("replay", &replay);
    assert_eq!(
        replay.stdout_bytes,
        Some(total_bytes),
        "replay: every byte of output played"
    );

    for (format, header_lines) in [("jsonl", 0), ("asciicast", 1)] {
        let path = deployment.path(&format!("export.{format}"));
        let export = custos(
            &deployment,
            &auditor,
            &[
                "export",
                &id,
                "--format",
                format,
                "-o",
                path.to_str().expect("a UTF-8 path"),
            ],
            Stdio::null(),
        );
        succeeded(&format!("export --format {format}"), &export);
        let metadata = std::fs::metadata(&path).expect("the export was written");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
            0o600,
            "an export holds PHI: its owner's only"
        );
        assert!(
            metadata.len() > total_bytes,
            "{format}: {} bytes exported",
            metadata.len()
        );
        assert_eq!(
            lines(&path),
            total_events as u64 + header_lines,
            "{format}: one line per event"
        );
        let (first, last) = first_and_last_line(&path);
        if format == "jsonl" {
            let first: Event = serde_json::from_str(&first).expect("an event");
            let last: Event = serde_json::from_str(&last).expect("an event");
            assert_eq!((first.seq, last.seq), (Seq(1), Seq(total_events as u64)));
        } else {
            let header: serde_json::Value = serde_json::from_str(&first).expect("a header");
            assert_eq!(header["version"], 2, "{first}");
            let last: serde_json::Value = serde_json::from_str(&last).expect("an event line");
            assert_eq!(last[1], "o");
            assert_eq!(last[2].as_str().map(str::len), Some(EVENT_BYTES));
        }
        std::fs::remove_file(&path).expect("removing the export");
    }

    let report_path = deployment.path("verify.json");
    let verify = custos(
        &deployment,
        &auditor,
        &["verify", &id, "--json"],
        Stdio::from(std::fs::File::create(&report_path).expect("a report file")),
    );
    succeeded("verify", &verify);
    let report: VerifyReport =
        serde_json::from_slice(&std::fs::read(&report_path).expect("the report"))
            .expect("a JSON report");
    assert_eq!(report.results.len(), 1, "{report:?}");
    let result = &report.results[0];
    assert!(result.ok, "{report:?}");
    assert_eq!(
        (result.chunks, result.unsigned_chunks),
        (batches as u64, 0),
        "{report:?}"
    );

    let collector_peak = peak_rss_kib(pid);
    eprintln!(
        "collector peak RSS while reading back: {} MiB; the test took {:.1} s",
        collector_peak / 1024,
        began.elapsed().as_secs_f64()
    );
    assert!(
        collector_peak < MAX_RSS_KIB,
        "the collector's peak RSS was {} MiB reading a recording of {} MiB",
        collector_peak / 1024,
        file_size >> 20
    );
    drop(collector);
    // The store (hundreds of MiB) goes with the deployment's directory.
}

/// The bytes of every file under `dir`.
fn walk_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("listing the store") {
            let entry = entry.expect("a store entry");
            let kind = entry.file_type().expect("a file type");
            if kind.is_dir() {
                folders.push(entry.path());
            } else {
                total += entry.metadata().expect("a size").len();
            }
        }
    }
    total
}
