//! A collector that crashes and comes back: the agent resumes shipping within 2 s of it
//! listening again (the restarted collector answers the agent's probes on the old connection
//! with a stateless reset, which ends it at once; silence and acknowledgement deadlines and a
//! quick first retry do the rest; a collector down for systemd's RestartSec is reached by short
//! handshake attempts), and nothing is lost or stored twice.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use custos_tests::{
    agent::Agent,
    deployment::Deployment,
    free_udp_address, login_shell,
    metrics::{sample, scrape},
    users,
};

const DELIVERY: Duration = Duration::from_secs(60);
/// How long the test looks for the agent's recovery after each restart.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// What the agent must do better than.
const RECOVERY: Duration = Duration::from_secs(2);
/// Collector restarts, and the time between them.
const RESTARTS: usize = 4;
const SPACING: Duration = Duration::from_secs(5);
/// After the quick restarts, one more after the collector stayed down this long (its systemd
/// unit's RestartSec): the agent has given the old connection up by then.
const SLOW_RESTART: Duration = Duration::from_secs(2);

/// The lines `N:<k>:` of `text`, with how often each occurs.
fn numbered_lines(text: &str) -> std::collections::BTreeMap<u64, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for part in text.split("N:").skip(1) {
        let Some((digits, _)) = part.split_once(':') else {
            continue;
        };
        if let Ok(n) = digits.parse::<u64>() {
            *counts.entry(n).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn an_agent_resumes_within_two_seconds_of_each_collector_restart_and_loses_nothing() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let mut collector = deployment.start_collector(&listen, None);
    // The shipping defaults (keep-alive, back-off, acknowledgement deadline) but small batches.
    let agent = Agent::start_shipping(
        &deployment.agent_config(&listen, "[shipping]\nbatch_interval = \"100ms\"\n"),
    );
    collector
        .daemon
        .wait_log(&["agent connected", &deployment.host], DELIVERY);

    let (mut shell, session) = login_shell("custos-alice");
    let stop = deployment.path("stop-printing");
    // A numbered line every 10 ms until the stop file appears.
    shell.line(&format!(
        "i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo \"N:$i:\"; sleep 0.01; done; \
         echo \"DO\"\"NE:$i:\"",
        stop = stop.display()
    ));
    shell.expect("N:50:");

    let mut recoveries = Vec::new();
    for round in 0..=RESTARTS {
        let acked_before = sample(
            &scrape(&agent.daemon.log_text()),
            "custos_agent_batches_acked_total",
        );
        let log_from = agent.daemon.log_len();
        collector.daemon.kill();
        drop(collector);
        if round == RESTARTS {
            std::thread::sleep(SLOW_RESTART);
        }
        collector = deployment.start_collector(&listen, None);
        // The log line "collector listening" has just been read.
        let listening = Instant::now();
        let deadline = listening + RECOVERY_BOUND;
        let recovered = loop {
            let now = Instant::now();
            assert!(
                now < deadline,
                "round {round}: the agent did not recover within {RECOVERY_BOUND:?} of the \
                 collector's restart; agent log:\n{}\ncollector log:\n{}",
                tail(&agent.daemon.log_text(), 40),
                tail(&collector.daemon.log_text(), 20)
            );
            // The restarted collector's log: the agent is back.
            if !collector.daemon.log_text().contains("agent connected") {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let metrics = scrape(&agent.daemon.log_text());
            let connected = sample(&metrics, "custos_agent_ship_connected");
            let oldest = sample(&metrics, "custos_agent_ship_oldest_unacked_seconds");
            let acked = sample(&metrics, "custos_agent_batches_acked_total");
            if connected == 1.0 && oldest < 2.0 && acked > acked_before {
                break now - listening;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = agent.daemon.log_text();
        let lost = log
            .lines()
            .skip(log_from)
            .find(|l| l.contains("connection to the collector lost"))
            .unwrap_or("(no connection lost)")
            .to_owned();
        eprintln!(
            "round {round}: shipping again {recovered:?} after the collector listened; {lost}"
        );
        recoveries.push((recovered, lost));
        // The scenario: restarts about SPACING apart, while the session keeps printing.
        std::thread::sleep(SPACING.saturating_sub(listening.elapsed()));
    }

    std::fs::write(&stop, b"").expect("writing the stop file");
    shell.expect("NE:");
    shell.expect("custos$ ");
    shell.line("exit 0");
    assert!(shell.wait_exit().success());
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();

    for (round, (recovered, _)) in recoveries.iter().enumerate() {
        assert!(
            *recovered < RECOVERY,
            "round {round}: shipping resumed {recovered:?} after the collector listened"
        );
    }
    // The restarted collector knew the old connections (its keys survive restarts) and reset
    // them; a restart slower than the agent's silence limit may leave that to the limit.
    assert!(
        recoveries
            .iter()
            .any(|(_, lost)| lost.contains("reset by peer")),
        "no connection was reset by a restarted collector: {recoveries:?}"
    );

    // Every line stored exactly once, read back through the auditor's tool.
    let auditor = deployment.auditor("dana", "auditor");
    let id = deployment.recording_id(session);
    let replay = deployment
        .custos(&auditor, &["replay", &id, "--speed", "1000000"])
        .ok();
    let done: u64 = replay
        .split("DONE:")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse().ok())
        .expect("the loop's last number in the replay");
    assert!(done > 500, "the session printed through the restarts");
    let counts = numbered_lines(&replay);
    for n in 1..=done {
        assert_eq!(
            counts.get(&n).copied().unwrap_or(0),
            1,
            "line N:{n}: stored once (lines 1 to {done})"
        );
    }
    let transcript = String::from_utf8_lossy(&shell.transcript()).into_owned();
    assert_eq!(
        numbered_lines(&transcript),
        counts,
        "the replay shows what the screen showed"
    );
    let batches = deployment.stored_batches();
    let distinct: HashSet<&(String, String, u64)> = batches.iter().collect();
    assert_eq!(distinct.len(), batches.len(), "a batch was stored twice");

    let verify = deployment.custos(&auditor, &["verify", &id]);
    assert!(
        verify.status.success(),
        "custos verify {id}: {}{}",
        verify.stdout,
        verify.stderr
    );
    drop(collector);
}

/// The last `lines` lines of a log, but for the acknowledgement of each batch.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("batch acknowledged"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
