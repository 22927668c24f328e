//! One agent key cannot take the collector down: through real QUIC and mutual TLS, an agent
//! certificate opening 4 connections of 64 streams, each announcing a 16 MiB frame, sending a
//! first MiB of it and then trickling the rest, and later garbage frames, while a well-behaved
//! agent ships a batch every 50 ms on the side. The collector's memory (RSS) stays under its
//! configured budget plus a fixed overhead, the good agent's batches are acknowledged within a
//! second, a fifth connection of the hostile key is refused, and the hostile key is cut off
//! (its connections closed, new ones refused) and logged with its name.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    event::Output,
    wire::{self, BatchSeq, Frame, SpoolId, make_batch},
};
use custos_tests::{
    deployment::{Deployment, collector_command},
    free_udp_address,
    metrics::{sample, scrape},
    quic::{self, Answer},
};

/// `[ingest] memory_budget` for this test, and its shares.
const BUDGET_MIB: u64 = 64;
/// What the collector holds beside the budget: its code, runtime and stores, and the QUIC
/// buffers of streams waiting for budget (bounded per stream by the collector's receive window).
const OVERHEAD_MIB: u64 = 64;
const INGEST: &str = "memory_budget = \"64 MiB\"\nidentity_memory = \"32 MiB\"\n\
                      connection_memory = \"16 MiB\"\nmax_connections_per_identity = 4\n\
                      stall_timeout = \"2s\"\n";
const HOSTILE: &str = "hostile-host";
/// The frame length each hostile stream announces (the default `ingest.max_frame_size`).
const ANNOUNCED: u32 = 16 * 1024 * 1024;
/// What each hostile stream sends at once, before trickling.
const FIRST: usize = 1024 * 1024;
const CONNECTIONS: usize = 4;
/// Trickling streams per connection (the other 2 of its 64 carry garbage later).
const TRICKLING: usize = 62;
/// The good agent's acknowledgements must come within this (the p99).
const ACK_P99: Duration = Duration::from_secs(1);
const PHASE: Duration = Duration::from_secs(25);

/// Resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

/// Issues an agent certificate for `host`; returns (cert, key).
fn agent_identity(deployment: &Deployment, host: &str) -> (PathBuf, PathBuf) {
    let pki = deployment.pki();
    collector_command(&[
        "pki",
        "issue",
        "agent",
        host,
        "--dir",
        pki.to_str().expect("a UTF-8 path"),
    ]);
    own_identity(deployment, host)
}

fn own_identity(deployment: &Deployment, host: &str) -> (PathBuf, PathBuf) {
    let pki = deployment.pki();
    (
        pki.join(format!("issued/agent-{host}.pem")),
        pki.join(format!("issued/agent-{host}.key")),
    )
}

/// Batch `seq` of the good agent: one line of output of its session.
fn good_frame(host: &str, seq: u64) -> Vec<u8> {
    let event = Event {
        time: Timestamp::now(),
        host: host.into(),
        boot_id: BootId("0b5e7c2a-51f4-4c39-9f0e-2d6f1c3a8b90".into()),
        session: AuditSessionId(777),
        seq: Seq(seq),
        process: None,
        event: EventBody::Output(Output {
            tty: Tty::from_parts(136, 7),
            data: ByteString::from(format!("line {seq}\r\n").as_str()),
            uncaptured: 0,
            redacted: Default::default(),
        }),
    };
    let batch =
        make_batch(&SpoolId("good-spool".into()), BatchSeq(seq), &[event]).expect("a batch");
    wire::encode_frame(&Frame::Batch(batch))
}

/// The good agent: a batch every 50 ms on one connection until `stop`; the time each took to
/// be acknowledged, and the answers that were not acks.
fn good_agent(
    address: SocketAddr,
    ca: PathBuf,
    identity: (PathBuf, PathBuf),
    host: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<(Vec<Duration>, Vec<String>)> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (endpoint, connection) =
                quic::connect(address, &ca, Some((&identity.0, &identity.1)))
                    .await
                    .expect("the good agent connects");
            let mut latencies = Vec::new();
            let mut failures = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let frame = good_frame(&host, seq);
                let sent = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    quic::exchange(&connection, &frame),
                )
                .await
                .unwrap_or(Answer::Other("no answer within 10 s".into()));
                latencies.push(sent.elapsed());
                match answer {
                    Answer::Ack { .. } => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("batch {seq}: {other:?}")),
                }
            }
            connection.close(0u32.into(), b"test done");
            endpoint.wait_idle().await;
            (latencies, failures)
        })
    })
}

/// One hostile stream: announces a 16 MiB frame, sends its first MiB, then a byte every
/// 300 ms until the stream or the connection fails.
async fn trickle(connection: quinn::Connection) {
    let Ok((mut send, _recv)) = connection.open_bi().await else {
        return;
    };
    let mut first = ANNOUNCED.to_be_bytes().to_vec();
    first.resize(4 + FIRST, 0x92);
    if send.write_all(&first).await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if send.write_all(&[0x92]).await.is_err() {
            return;
        }
    }
}

/// A garbage frame: a prefix and bytes that are no MessagePack frame.
fn garbage() -> Vec<u8> {
    let mut frame = 64u32.to_be_bytes().to_vec();
    frame.extend([0xc1; 64]);
    frame
}

fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default()
}

#[test]
fn a_hostile_agent_key_is_cut_off_within_the_memory_budget_and_others_keep_shipping() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let hostile = agent_identity(&deployment, HOSTILE);
    let good = own_identity(&deployment, &deployment.host);
    let listen = free_udp_address();
    let collector = deployment.start_collector_ingest(&listen, None, INGEST, "");
    let address: SocketAddr = listen.parse().expect("address");
    let pid = collector.daemon.pid();
    let limit = (BUDGET_MIB + OVERHEAD_MIB) * 1024 * 1024;
    let before = rss(pid);
    assert!(before > 0, "the collector's RSS is readable");

    // The good agent ships all along.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let good_agent = good_agent(
        address,
        ca.clone(),
        good,
        deployment.host.clone(),
        stop.clone(),
        acked.clone(),
    );

    // The hostile key: 4 connections (a fifth is refused), each with 62 trickling streams.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pair = (hostile.0.as_path(), hostile.1.as_path());
    let connections: Vec<(quinn::Endpoint, quinn::Connection)> = (0..CONNECTIONS)
        .map(|i| {
            runtime
                .block_on(quic::connect(address, &ca, Some(pair)))
                .unwrap_or_else(|err| panic!("hostile connection {i}: {err}"))
        })
        .collect();
    for (_, connection) in &connections {
        for _ in 0..TRICKLING {
            runtime.spawn(trickle(connection.clone()));
        }
    }

    // Until the collector resets a stalled hostile stream, memory stays bounded.
    let max_rss = |what: &str, until: &dyn Fn() -> bool| {
        let deadline = Instant::now() + PHASE;
        let mut max = 0;
        loop {
            let now = rss(pid);
            max = max.max(now);
            assert!(
                now <= limit,
                "{what}: the collector's RSS is {} MiB, over its budget {BUDGET_MIB} MiB + \
                 {OVERHEAD_MIB} MiB (it was {} MiB before)",
                now >> 20,
                before >> 20
            );
            if until() {
                return max;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not done within {PHASE:?}; collector log:\n{}",
                collector.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let log_has = |parts: &[&str]| {
        collector
            .daemon
            .log_text()
            .lines()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    };
    let acked_before = acked.load(Ordering::Relaxed);
    let mut peak = max_rss("trickling", &|| {
        log_has(&["stalled", HOSTILE]) && acked.load(Ordering::Relaxed) >= acked_before + 20
    });

    // A fifth connection of the key is refused.
    let fifth = quic::handshake(address, &ca, Some(pair));
    assert!(
        fifth.is_err(),
        "a fifth connection of one agent key was accepted"
    );
    collector
        .daemon
        .wait_log(&["too many connections", HOSTILE], PHASE);

    // Garbage frames: the key is cut off.
    for (_, connection) in &connections {
        for _ in 0..2 {
            let connection = connection.clone();
            runtime.spawn(async move { quic::exchange(&connection, &garbage()).await });
        }
    }
    peak = peak.max(max_rss("garbage", &|| {
        log_has(&["cut off", HOSTILE])
            && connections
                .iter()
                .all(|(_, connection)| connection.close_reason().is_some())
    }));
    for (i, (_, connection)) in connections.iter().enumerate() {
        match connection.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => assert_eq!(
                close.error_code,
                wire::CLOSE_MISBEHAVING.into(),
                "hostile connection {i}: {close:?}"
            ),
            other => panic!("hostile connection {i} ended by {other:?}"),
        }
    }
    let again = quic::handshake(address, &ca, Some(pair));
    assert!(again.is_err(), "the cut-off key connects again");
    let metrics = scrape(&collector.daemon.log_text());
    assert_eq!(
        sample(&metrics, "custos_collector_agents_cut_off_total"),
        1.0
    );
    assert!(sample(&metrics, "custos_collector_requests_stalled_total") >= 1.0);
    assert!(sample(&metrics, "custos_collector_frames_malformed_total") >= 1.0);

    // The good agent goes on after it.
    let acked_after = acked.load(Ordering::Relaxed);
    max_rss("after the cut-off", &|| {
        acked.load(Ordering::Relaxed) >= acked_after + 10
    });
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, failures) = good_agent.join().expect("the good agent");
    assert!(
        failures.is_empty(),
        "the good agent's batches: {failures:?}"
    );
    let p99 = p99(&mut latencies);
    assert!(
        p99 < ACK_P99,
        "the good agent's acks took {p99:?} (p99) over {} batches",
        latencies.len()
    );
    eprintln!(
        "collector RSS {} MiB before, {} MiB at most; {} good batches, ack p99 {p99:?}",
        before >> 20,
        peak >> 20,
        latencies.len()
    );
    drop(connections);
}
