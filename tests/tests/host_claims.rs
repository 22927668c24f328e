//! What a host says of itself does not decide what the collector keeps: through real QUIC and
//! mutual TLS to a real collector, two agent certificates sending the same spool id (hosts
//! cloned from one image) each get their batch stored, and the clone is alerted; a session whose
//! events carry the host's clock set back to 2001 is not expired by retention, and the host's
//! clock is flagged as skewed; a clock set in a recorded session is in its recording and raises
//! the built-in alert.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use custos_collector::{index::Filter, store::Store};
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    api::SessionSummary,
    event::{Output, SessionEnd},
    wire::{self, BatchSeq, Frame, SpoolId, make_batch},
};
use custos_tests::{
    agent::Agent,
    deployment::{Deployment, collector_command},
    free_udp_address, login_shell,
    quic::{self, Answer},
    wait_until,
};

const DELIVERY: Duration = Duration::from_secs(20);
/// 2001-01-01T00:00:00Z: `date -s 2001-01-01` on the recorded host.
const Y2001_NS: i64 = 978_307_200_000_000_000;

/// A whole session of `host` (a line of output, then its end), at host time `time`, as one
/// batch frame of spool `spool`.
fn session_frame(host: &str, spool: &str, time: i64) -> Vec<u8> {
    let event = |seq: u64, body| Event {
        time: Timestamp(time + seq as i64),
        host: host.into(),
        boot_id: BootId("0b5e7c2a-51f4-4c39-9f0e-2d6f1c3a8b90".into()),
        session: AuditSessionId(4242),
        seq: Seq(seq),
        process: None,
        event: body,
    };
    let events = [
        event(
            1,
            EventBody::Output(Output {
                tty: Tty::from_parts(136, 3),
                data: ByteString::from(format!("on {host}\r\n").as_str()),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        ),
        event(
            2,
            EventBody::SessionEnd(SessionEnd {
                duration_secs: 1.0,
                ..Default::default()
            }),
        ),
    ];
    let batch = make_batch(&SpoolId(spool.into()), BatchSeq(1), &events).expect("a batch");
    wire::encode_frame(&Frame::Batch(batch))
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
    (
        pki.join(format!("issued/agent-{host}.pem")),
        pki.join(format!("issued/agent-{host}.key")),
    )
}

/// Sends `frame` with `identity`'s certificate; the collector's answer.
fn send(address: SocketAddr, ca: &Path, identity: &(PathBuf, PathBuf), frame: &[u8]) -> Answer {
    quic::requests(address, ca, (&identity.0, &identity.1), &[frame.to_vec()])
        .expect("the agent certificate connects")
        .pop()
        .expect("an answer")
}

/// The sessions of `host` the collector's index lists.
fn sessions_of(deployment: &Deployment, host: &str) -> Vec<SessionSummary> {
    let store = Store::open_read_only(&deployment.store_config()).expect("the store");
    let filter = Filter {
        host: Some(host.into()),
        limit: 10,
        ..Default::default()
    };
    store.index().sessions(&filter).expect("sessions").0
}

#[test]
fn two_agents_with_one_spool_id_are_both_stored_and_the_clone_is_alerted() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let alerts = deployment.path("alerts.jsonl");
    let listen = free_udp_address();
    let collector = deployment.start_collector_with(
        &listen,
        None,
        &format!("[alerts]\njson_log = \"{}\"\n", alerts.display()),
    );
    let address: SocketAddr = listen.parse().expect("address");
    let (a, b) = ("clone-a", "clone-b");
    let (id_a, id_b) = (
        agent_identity(&deployment, a),
        agent_identity(&deployment, b),
    );
    let now = Timestamp::now().0;
    let (from_a, from_b) = (
        session_frame(a, "spool-of-the-image", now),
        session_frame(b, "spool-of-the-image", now),
    );

    assert_eq!(
        send(address, &ca, &id_a, &from_a),
        Answer::Ack { duplicate: false }
    );
    // Host B's batch 1 of the same spool is its own, not a resend of host A's.
    assert_eq!(
        send(address, &ca, &id_b, &from_b),
        Answer::Ack { duplicate: false }
    );
    // Each one's resend is its own duplicate.
    assert_eq!(
        send(address, &ca, &id_a, &from_a),
        Answer::Ack { duplicate: true }
    );
    assert_eq!(
        send(address, &ca, &id_b, &from_b),
        Answer::Ack { duplicate: true }
    );

    let mut batches = deployment.stored_batches();
    batches.sort();
    assert_eq!(
        batches,
        vec![
            (a.to_owned(), "spool-of-the-image".to_owned(), 1),
            (b.to_owned(), "spool-of-the-image".to_owned(), 1),
        ]
    );
    for host in [a, b] {
        let sessions = sessions_of(&deployment, host);
        assert_eq!(sessions.len(), 1, "{host}: {sessions:?}");
    }

    // The alert names both hosts and the spool id, once.
    let alert: serde_json::Value = wait_until("the cloned agent state alert", DELIVERY, || {
        let text = std::fs::read_to_string(&alerts).ok()?;
        let line = text
            .lines()
            .find(|line| line.contains("cloned_agent_state"))?;
        serde_json::from_str(line).ok()
    });
    assert_eq!(alert["rule"], "cloned_agent_state", "{alert}");
    assert_eq!(alert["host"], b, "{alert}");
    let summary = alert["summary"].as_str().unwrap_or_default();
    for needed in [a, b, "spool-of-the-image"] {
        assert!(summary.contains(needed), "{needed} not in {summary}");
    }
    collector
        .daemon
        .wait_log(&["cloned agent state", "clone-b"], DELIVERY);
    let text = std::fs::read_to_string(&alerts).expect("the alert log");
    assert_eq!(
        text.lines()
            .filter(|line| line.contains("cloned_agent_state"))
            .count(),
        1,
        "one alert per new agent of a spool: {text}"
    );
}

#[test]
fn a_session_ended_with_the_host_clock_set_to_2001_is_not_expired_and_the_clock_is_flagged() {
    let deployment = Deployment::new(&[]);
    let ca = deployment.pki().join("ca.pem");
    let listen = free_udp_address();
    let _collector =
        deployment.start_collector_with(&listen, None, "[retention]\nkeep = \"1days\"\n");
    let address: SocketAddr = listen.parse().expect("address");
    let host = deployment.host.clone();
    let agent = (
        deployment.pki().join(format!("issued/agent-{host}.pem")),
        deployment.pki().join(format!("issued/agent-{host}.key")),
    );
    // The agent says its (2001) time in its hello, then sends the session on that connection.
    let hello = wire::encode_frame(&Frame::Hello(wire::Hello {
        protocol: wire::PROTOCOL_VERSION,
        agent_version: "test".into(),
        host: host.clone(),
        boot_id: BootId("0b5e7c2a-51f4-4c39-9f0e-2d6f1c3a8b90".into()),
        spool: SpoolId("spool".into()),
        time: Some(Timestamp(Y2001_NS)),
    }));
    let answers = quic::requests(
        address,
        &ca,
        (&agent.0, &agent.1),
        &[hello, session_frame(&host, "spool", Y2001_NS)],
    )
    .expect("the agent certificate connects");
    assert_eq!(
        answers,
        vec![
            Answer::Frame("welcome".into()),
            Answer::Ack { duplicate: false }
        ]
    );
    let admin = deployment.auditor("root-admin", "admin");
    let out = deployment.custos(&admin, &["retention", "purge"]).ok();
    assert!(out.contains("0 purged"), "{out}");
    let sessions = sessions_of(&deployment, &host);
    assert_eq!(sessions.len(), 1, "the recording is gone: {sessions:?}");
    // Listings keep the host's (wrong) times for display, and say its clock was off.
    assert_eq!(sessions[0].end.map(|t| t.0), Some(Y2001_NS + 2));
    assert!(sessions[0].clock_skewed, "{:?}", sessions[0]);
    let listed = deployment.custos(&admin, &["sessions"]).ok();
    assert!(listed.contains("clock-skewed"), "{listed}");
    // `custos agents` flags the host (contacts are written within seconds).
    let agents = wait_until("the agent's clock flagged", DELIVERY, || {
        let out = deployment.custos(&admin, &["agents"]).ok();
        out.contains("skewed").then_some(out)
    });
    assert!(agents.contains(&host), "{agents}");
}

/// `date -s` as root in a recorded session: the session's recording holds the step
/// (`clock_set`) after the `date` that made it, and the collector raises the built-in
/// `clock_set` alert naming the host, with no rule configured. The clock is set to what it
/// reads (a step of milliseconds), so the machine's clock is not disturbed.
#[test]
fn a_clock_set_in_a_recorded_session_is_recorded_and_alerted() {
    let deployment = Deployment::new(&[]);
    let json_log = deployment.path("alerts.jsonl");
    let listen = free_udp_address();
    let alerts = format!("[alerts]\njson_log = \"{}\"\n", json_log.display());
    let _collector = deployment.start_collector_with(&listen, None, &alerts);
    let shipping = "[shipping]\nbatch_interval = \"100ms\"\n";
    let _agent = Agent::start_shipping(&deployment.agent_config(&listen, shipping));

    let (mut shell, session) = login_shell("root");
    shell.line("date -s \"@$(date +%s.%N)\" >/dev/null && echo clock-set-$((40 + 2))");
    shell.expect("clock-set-42");
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    // The shell may end its session before the agent sees the step: the step then follows the
    // session's end (and the recording is sealed again).
    let clock_set = |events: &[Event]| {
        events.iter().enumerate().find_map(|(i, e)| match &e.event {
            EventBody::ClockSet(set) => Some((i, set.step_ns)),
            _ => None,
        })
    };
    let (events, (at, step)) = wait_until("the clock_set record", DELIVERY, || {
        if !deployment.sealed(session) {
            return None;
        }
        let events = deployment.recording(session);
        clock_set(&events).map(|found| (events, found))
    });
    let is_date = |e: &Event| {
        matches!(&e.event, EventBody::Exec(exec)
            if exec.filename.to_string().ends_with("/date") && exec.argv.len() == 3)
    };
    let date = events
        .iter()
        .position(is_date)
        .expect("the date that set the clock is recorded");
    assert!(
        at > date,
        "the step is recorded after the date that made it"
    );
    assert!(step.abs() < 1_000_000_000, "a step of {step} ns");

    let alert = wait_until("the clock_set alert", DELIVERY, || {
        let log = std::fs::read_to_string(&json_log).ok()?;
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|alert| alert["rule"] == "clock_set")
    });
    assert_eq!(alert["host"].as_str(), Some(deployment.host.as_str()));
    let summary = alert["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("wall clock") && summary.contains("was set"),
        "{summary}"
    );
}
