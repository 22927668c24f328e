//! Batches the collector refuses for good (too large on the wire or once unpacked): each
//! refusal is an answer on a connection that stays up, the agent keeps the batch sealed in its
//! spool's rejected/, and the recording carries a refused_by_collector gap where it was.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::time::Duration;

use custos_proto::{Event, EventBody, event::GapReason};
use custos_tests::{
    agent::{Agent, terminal_bytes},
    bin,
    deployment::{Collector, Deployment},
    files_under, free_udp_address, login_shell, users,
};

const DELIVERY: Duration = Duration::from_secs(60);

/// Fast reconnects and small batches.
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nkeep_alive = \"1s\"\nshutdown_grace = \"10s\"\n";

/// What the recording's terminal showed.
fn output(events: &[Event]) -> Vec<u8> {
    let refs: Vec<&Event> = events.iter().collect();
    terminal_bytes(&refs, false)
}

/// What [`deployment_with_ingest`] starts.
struct Started {
    deployment: Deployment,
    /// The collector's QUIC address.
    listen: String,
    collector: Collector,
    agent: Agent,
}

/// A deployment whose collector has these `[ingest]` settings, an agent shipping to it, both
/// connected.
fn deployment_with_ingest(ingest: &str) -> Started {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let config = deployment.collector_config(&listen, "");
    let text = std::fs::read_to_string(&config).expect("the collector's configuration");
    let text = text.replacen("[ingest]\n", &format!("[ingest]\n{ingest}"), 1);
    std::fs::write(&config, text).expect("writing the collector's configuration");
    let collector = deployment.start_collector_at(&config, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    collector
        .daemon
        .wait_log(&["agent connected", &deployment.host], DELIVERY);
    Started {
        deployment,
        listen,
        collector,
        agent,
    }
}

#[test]
fn a_batch_refused_for_good_becomes_a_gap_in_its_recording() {
    let Started {
        deployment,
        listen,
        collector,
        agent,
    } = deployment_with_ingest("max_frame_size = \"64 KiB\"\n");

    let (mut shell, session) = login_shell("custos-alice");
    // Random bytes in base64 do not compress: a batch of them is over 64 KiB on the wire, and a
    // full one (256 KiB of output) over the collector's 128 KiB stream window.
    shell.line("head -c 300000 /dev/urandom | base64 -w 0; echo; echo after-\"\"refusal");
    shell.expect("after-refusal\r\n");
    shell.expect("custos$ ");
    agent
        .daemon
        .wait_log(&["refused a batch for good"], DELIVERY);
    shell.line("exit 0");
    assert!(shell.wait_exit().success());
    deployment.wait_sealed(session, DELIVERY);
    // A refusal is an answer on a connection that stays up, also for a batch larger than the
    // collector's stream window (refused before it is read whole): not a lost connection, a
    // resend and, resent again and again, the agent cut off as misbehaving.
    let log = agent.stop().stderr;
    assert!(
        !log.contains("connection to the collector lost"),
        "a refused batch cost the connection:\n{log}"
    );
    assert!(
        !collector.daemon.log_text().contains("agent cut off"),
        "the collector cut off an agent whose batch it refused"
    );

    let events = deployment.recording(session);
    let refused: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::Gap(g) if g.reason == GapReason::RefusedByCollector => Some(g),
            _ => None,
        })
        .collect();
    assert!(
        !refused.is_empty(),
        "no refused_by_collector gap in the recording"
    );
    assert!(refused.iter().all(|g| g.records > 0), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&output(&events)).contains("after-refusal"),
        "the rest of the session is recorded"
    );

    // The refused batch is kept sealed in rejected/; the agent's key opens it.
    let rejected = files_under(&deployment.path("spool/rejected"));
    assert!(!rejected.is_empty(), "nothing kept in rejected/");
    let config = deployment.path("agent.toml");
    std::fs::write(&config, deployment.agent_config(&listen, SHIPPING)).expect("writing");
    let read = std::process::Command::new(bin("custos-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--read-rejected")
        .arg(&rejected[0].0)
        .output()
        .expect("running custos-agent --read-rejected");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let shown: Vec<Event> = String::from_utf8_lossy(&read.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("an event per line"))
        .collect();
    assert!(
        shown
            .iter()
            .any(|e| matches!(e.event, EventBody::Output(_))),
        "{shown:?}"
    );
}
