//! Shipping, end to end: a real agent sends real sessions over QUIC with mutual TLS to a real
//! collector, which stores them; outages, kills, bad certificates, garbage and a lossy, slow
//! network do not lose or duplicate anything.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    collections::HashSet,
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use custos_pki::{
    Role,
    issue::{self, PkiDir, Validity},
};
use custos_proto::{
    Event, EventBody,
    api::VerifyReport,
    event::GapReason,
    wire::{self, Frame, Hello, SpoolId},
};
use custos_tests::{
    agent::Agent,
    bin, contains,
    deployment::{Deployment, collector_command},
    files_under, free_udp_address, free_udp_port, login_shell, marker,
    netns::{self, Network},
    quic::{self, Answer},
    terminal::Terminal,
    users,
};

const DELIVERY: Duration = Duration::from_secs(60);

/// Fast reconnects and small batches, so that tests see many of both.
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nkeep_alive = \"1s\"\nshutdown_grace = \"10s\"\n";

/// Every event once, in order, numbered without holes from 1: the recording is complete.
fn assert_complete(events: &[Event]) {
    if std::env::var_os("CUSTOS_TEST_DEBUG").is_some() {
        for e in events {
            eprintln!(
                "{} {} {:?}",
                e.seq.0,
                e.kind(),
                e.process.as_ref().map(|p| (p.tgid.0, p.comm.to_string()))
            );
        }
    }
    assert!(
        matches!(
            events.first().map(|e| &e.event),
            Some(EventBody::SessionStart(_))
        ),
        "the recording starts with its session start"
    );
    assert!(matches!(
        events.last().map(|e| &e.event),
        Some(EventBody::SessionEnd(_))
    ));
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq.0,
            i as u64 + 1,
            "event {i} of the recording: {event:?}"
        );
    }
}

fn output(events: &[Event]) -> Vec<u8> {
    let refs: Vec<&Event> = events.iter().collect();
    custos_tests::agent::terminal_bytes(&refs, false)
}

#[test]
fn a_recorded_session_arrives_at_the_collector_complete() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let mut collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    collector
        .daemon
        .wait_log(&["agent connected", &deployment.host], DELIVERY);

    let (mut shell, session) = login_shell("custos-alice");
    let mark = marker("SHIP-");
    let (head, tail) = mark.split_at(3);
    shell.line(&format!("echo \"{head}\"\"{tail}\"; cat /etc/hostname"));
    shell.expect(&format!("{mark}\r\n"));
    shell.expect("custos$ ");
    shell.line("exit 0");
    assert!(shell.wait_exit().success());
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    collector.daemon.stop();

    let events = deployment.recording(session);
    assert_complete(&events);
    let refs: Vec<&Event> = events.iter().collect();
    assert_eq!(
        output(&events),
        shell.transcript(),
        "stored output differs from the screen"
    );
    assert_eq!(
        custos_tests::agent::terminal_bytes(&refs, true),
        shell.typed()
    );
    assert!(events.iter().all(|e| e.host == deployment.host));
    assert!(events.iter().any(
        |e| matches!(&e.event, EventBody::Exec(x) if x.filename.to_string() == "/usr/bin/cat")
    ));
}

/// A batch the collector refuses for good (here: larger than its frame limit) is not lost
/// silently: a gap record in its session says how many events it held, and the rest of the
/// session arrives.
/// `bytes` and, after them, what every zstd frame found in them decompresses to: a clear spool
/// record's events are such a frame, whose literals zstd may have Huffman-coded out of sight.
fn with_decompressed(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut all = bytes.to_vec();
    for (at, _) in bytes
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == ZSTD_MAGIC)
    {
        if let Ok(decoder) = zstd::stream::read::Decoder::new(&bytes[at..]) {
            // What it decodes before the frame ends or turns out not to be one.
            let _ = decoder.single_frame().read_to_end(&mut all);
        }
    }
    all
}

/// What a session did is on the agent's disk only sealed: while no collector listens, a typed
/// marker (in terminal output, argv and a path) sits in the spool, and no file under the spool
/// directory (segments, state files), the spool key or the agent's log holds it; with its key a
/// restarted agent ships it whole.
#[test]
fn the_agents_spool_holds_nothing_a_session_did_in_clear() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let config = deployment.agent_config(
        &listen,
        "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nshutdown_grace = \"1s\"\n",
    );
    let agent = Agent::start_shipping(&config);
    let (mut shell, session) = login_shell("custos-alice");
    let mark = marker("SEALED-");
    let (head, tail) = mark.split_at(4);
    shell.line(&format!(
        "echo \"{head}\"\"{tail}\"; cat /tmp/\"{head}\"\"{tail}\" 2>/dev/null"
    ));
    shell.expect(&format!("{mark}\r\n"));
    shell.expect("custos$ ");
    shell.line("exit 0");
    assert!(shell.wait_exit().success());
    // Stopping writes what is batched to the spool; nobody acknowledges it.
    let stopped = agent.stop();
    assert!(stopped.success, "{}", stopped.stderr);
    assert!(
        !stopped.stderr.contains(&mark),
        "the agent's log holds the marker"
    );
    let key = deployment.path("spool.key");
    let meta = std::fs::metadata(&key).expect("the agent created its spool key");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
    let mut files = files_under(&deployment.path("spool"));
    let segments = files
        .iter()
        .filter(|(path, bytes)| path.extension().is_some_and(|e| e == "seg") && !bytes.is_empty())
        .count();
    assert!(segments > 0, "nothing spooled: {files:?}");
    files.push((key.clone(), std::fs::read(&key).expect("reading the key")));
    for (path, bytes) in &files {
        assert!(
            !contains(&with_decompressed(bytes), mark.as_bytes()),
            "{} holds the marker in clear",
            path.display()
        );
    }

    // With the key, the spooled session arrives whole.
    let collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&config);
    deployment.wait_sealed(session, DELIVERY);
    // A session after the restart: its batches continue the chain from the head the agent read
    // back from its sealed segments (no segment was deleted, so the state has none).
    let (mut shell, after) = login_shell("custos-alice");
    shell.line("exit 0");
    assert!(shell.wait_exit().success());
    deployment.wait_sealed(after, DELIVERY);
    let stopped = agent.stop();
    assert!(
        !stopped.stderr.contains(&mark),
        "the agent's log holds the marker"
    );
    // The batches were signed as they were spooled, sealed; the agent's chain verifies unbroken
    // across the restart.
    let auditor = deployment.auditor("carol", "auditor");
    let out = deployment.custos(&auditor, &["verify", "--all", "--json"]);
    let report: VerifyReport = serde_json::from_str(&out.stdout).expect("JSON report");
    assert!(out.status.success(), "{report:?}");
    assert!(
        report.results.iter().all(|r| r.unsigned_chunks == 0),
        "{report:?}"
    );
    assert!(
        report.agents.len() == 1 && report.agents[0].ok && report.agents[0].batches > 1,
        "{report:?}"
    );
    drop(collector);
    let events = deployment.recording(session);
    assert_complete(&events);
    assert!(contains(&output(&events), format!("{mark}\r\n").as_bytes()));
    assert!(events.iter().any(|e| matches!(
        &e.event,
        EventBody::Exec(x) if x.argv.iter().any(|a| a.to_string().contains(&mark))
    )));
}

#[test]
fn a_collector_outage_loses_and_duplicates_nothing() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let mut collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    let (mut shell, session) = login_shell("custos-alice");
    shell.line("echo before-\"\"outage");
    shell.expect("before-outage\r\n");
    collector.daemon.wait_log(&["batch stored"], DELIVERY);
    collector.daemon.stop();
    agent
        .daemon
        .wait_log(&["connection to the collector lost"], DELIVERY);

    // Several batches' worth while nobody listens (a batch leaves every 100 ms).
    let marks: Vec<String> = (0..6).map(|i| marker(&format!("OUT{i}-"))).collect();
    for mark in &marks {
        let (head, tail) = mark.split_at(4);
        shell.line(&format!("echo \"{head}\"\"{tail}\"; sleep 0.2"));
        shell.expect(&format!("{mark}\r\n"));
        shell.expect("custos$ ");
    }
    agent
        .daemon
        .wait_log(&["cannot reach the collector"], DELIVERY);
    let collector = deployment.start_collector(&listen, None);
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    drop(collector);

    let events = deployment.recording(session);
    assert_complete(&events);
    let shown = output(&events);
    let mut at = 0;
    for mark in &marks {
        let needle = format!("{mark}\r\n");
        let found = shown[at..]
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{mark} missing or out of order"));
        at += found + needle.len();
    }
    assert_eq!(shown, shell.transcript());
}

#[test]
fn an_agent_killed_while_shipping_loses_no_acknowledged_batch_and_stores_none_twice() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    let config = deployment.agent_config(
        &listen,
        &format!("{SHIPPING}batch_max_bytes = \"64 KiB\"\nin_flight = 4\n"),
    );
    let mut agent = Agent::start_shipping(&config);
    let (mut shell, session) = login_shell("custos-alice");
    // Plenty of output: many batches in flight when the agent dies.
    shell.line("seq 1 300000; echo seq-\"\"done");
    agent.daemon.wait_log(
        &["batch acknowledged", &format!("session={}", session.0)],
        DELIVERY,
    );
    agent.daemon.kill();
    let acknowledged: Vec<u64> = agent
        .daemon
        .log_text()
        .lines()
        .filter(|l| {
            l.contains("batch acknowledged") && l.contains(&format!("session={}", session.0))
        })
        .filter_map(|l| {
            l.split("last_event=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!acknowledged.is_empty());
    shell.expect_within("seq-done\r\n", Duration::from_secs(120));
    shell.expect("custos$ ");

    let agent = Agent::start_shipping(&config);
    shell.line("echo after-\"\"restart");
    shell.expect("after-restart\r\n");
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, Duration::from_secs(120));
    agent.stop();
    drop(collector);

    let events = deployment.recording(session);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
    let unique: HashSet<u64> = seqs.iter().copied().collect();
    if unique.len() != seqs.len() {
        let mut seen = HashSet::new();
        for e in &events {
            if !seen.insert(e.seq.0) {
                eprintln!(
                    "duplicate {} {} {:?} {:?}",
                    e.seq.0,
                    e.kind(),
                    e.time,
                    e.process.as_ref().map(|p| p.comm.to_string())
                );
            }
        }
    }
    assert_eq!(unique.len(), seqs.len(), "an event was stored twice");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "events out of order");
    for last in &acknowledged {
        assert!(
            unique.contains(last),
            "event {last} of an acknowledged batch is missing"
        );
    }
    // The time the agent was down is a gap in the recording, not a silent hole.
    assert!(
        events.iter().any(
            |e| matches!(&e.event, EventBody::Gap(g) if g.reason == GapReason::AgentNotRunning)
        )
    );
    assert!(contains(&output(&events), b"after-restart\r\n"));
    let batches = deployment.stored_batches();
    let distinct: HashSet<&(String, String, u64)> = batches.iter().collect();
    assert_eq!(distinct.len(), batches.len(), "a batch was stored twice");
}

#[test]
fn a_collector_killed_right_after_acknowledging_has_the_data_on_disk() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let mut collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    let (mut shell, session) = login_shell("custos-alice");
    let mark = marker("DURABLE-");
    let (head, tail) = mark.split_at(4);
    let from = agent.daemon.log_len();
    shell.line(&format!("echo \"{head}\"\"{tail}\""));
    shell.expect(&format!("{mark}\r\n"));
    // The first acknowledgement of this session after the marker was shown: kill at once.
    let (_, line) = agent.daemon.wait_log_from(
        from,
        &["batch acknowledged", &format!("session={}", session.0)],
        DELIVERY,
    );
    collector.daemon.kill();
    let last: u64 = line
        .split("last_event=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("last_event in the acknowledgement");
    shell.line("exit 0");
    shell.wait_exit();
    let collector = deployment.start_collector(&listen, None);
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    drop(collector);
    let events = deployment.recording(session);
    assert!(
        events.iter().any(|e| e.seq.0 == last),
        "acknowledged event {last} lost"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "duplicated or out of order"
    );
    assert_complete(&events);
}

#[test]
fn wrong_certificates_are_refused_and_garbage_disturbs_no_one() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let port = free_udp_port();
    let listen = format!("127.0.0.1:{port}");
    let address: SocketAddr = listen.parse().expect("address");
    let collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    let (mut shell, session) = login_shell("custos-alice");
    let ca = deployment.pki().join("ca.pem");

    // An agent certificate from another deployment's CA.
    let other = Deployment::new(&[]);
    let other_cert = other.pki().join(format!("issued/agent-{}.pem", other.host));
    let other_key = other.pki().join(format!("issued/agent-{}.key", other.host));
    // An expired agent certificate from the right CA.
    let pki = PkiDir::new(deployment.pki());
    let past = time_ago(2);
    let (expired_cert, expired_key) = issue::issue(
        &pki,
        Role::Agent,
        "old-host",
        Validity {
            not_before: past - time::Duration::days(30),
            not_after: past,
        },
        Some(&deployment.path("expired")),
        false,
    )
    .expect("issuing an expired certificate");
    // An auditor's certificate from the right CA.
    let pki_dir = deployment.pki().to_string_lossy().into_owned();
    collector_command(&["pki", "issue", "auditor", "dana", "--dir", &pki_dir]);
    let auditor_cert = deployment.pki().join("issued/auditor-dana.pem");
    let auditor_key = deployment.pki().join("issued/auditor-dana.key");

    type Identity<'a> = Option<(&'a std::path::Path, &'a std::path::Path)>;
    let cases: [(&str, Identity, &str); 4] = [
        (
            "another CA",
            Some((&other_cert, &other_key)),
            "invalid peer certificate",
        ),
        (
            "expired",
            Some((&expired_cert, &expired_key)),
            "certificate expired",
        ),
        (
            "auditor",
            Some((&auditor_cert, &auditor_key)),
            "certificate of auditor dana refused",
        ),
        ("no certificate", None, "peer sent no certificates"),
    ];
    for (what, identity, reason) in cases {
        let from = collector.daemon.log_len();
        let result = quic::handshake(address, &ca, identity);
        assert!(result.is_err(), "{what}: the handshake succeeded");
        let (_, line) = collector
            .daemon
            .wait_log_from(from, &["refused a connection"], DELIVERY);
        assert!(
            line.contains(reason),
            "{what}: the log does not say {reason:?}: {line}"
        );
        assert!(
            line.contains("peer=127.0.0.1:"),
            "{what}: the log does not name the peer: {line}"
        );
    }

    // Random datagrams at the port, and broken frames on a valid connection.
    let garbage = UdpSocket::bind("127.0.0.1:0").expect("socket");
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..2000 {
        let len = 1 + (i * 37) % 1400;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let _ = garbage.send_to(&bytes, address);
    }
    let agent_cert = deployment
        .pki()
        .join(format!("issued/agent-{}.pem", deployment.host));
    let agent_key = deployment
        .pki()
        .join(format!("issued/agent-{}.key", deployment.host));
    let hello = wire::encode_frame(&Frame::Hello(Hello {
        protocol: wire::PROTOCOL_VERSION,
        agent_version: "test".into(),
        host: deployment.host.clone(),
        boot_id: custos_proto::BootId("test".into()),
        spool: SpoolId("test".into()),
        time: None,
    }));
    let mut malformed = 5u32.to_be_bytes().to_vec();
    malformed.extend_from_slice(b"\xc1\xc1\xc1\xc1\xc1");
    let oversized = (1u32 << 30).to_be_bytes().to_vec();
    let answers = quic::requests(
        address,
        &ca,
        (&agent_cert, &agent_key),
        &[malformed, hello.clone(), oversized, hello],
    )
    .expect("an agent certificate connects");
    assert_eq!(
        answers,
        vec![
            Answer::Reset(u64::from(wire::ErrorCode::Malformed.stream_code())),
            Answer::Frame("welcome".into()),
            Answer::Reset(u64::from(wire::ErrorCode::TooLarge.stream_code())),
            Answer::Frame("welcome".into()),
        ]
    );
    collector
        .daemon
        .wait_log(&["bad frame: stream reset", "malformed frame"], DELIVERY);
    collector
        .daemon
        .wait_log(&["bad frame: stream reset", "over the limit"], DELIVERY);

    // The real agent did not notice any of it.
    let mark = marker("STILL-");
    let (head, tail) = mark.split_at(3);
    shell.line(&format!("echo \"{head}\"\"{tail}\""));
    shell.expect(&format!("{mark}\r\n"));
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    drop(collector);
    let events = deployment.recording(session);
    assert_complete(&events);
    assert!(contains(&output(&events), mark.as_bytes()));
}

fn time_ago(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::days(days)
}

#[test]
fn a_lossy_slow_network_delivers_everything_exactly_once() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[netns::COLLECTOR_IP]);
    let network = Network::lossy(10);
    let collector_addr = format!("{}:7443", netns::COLLECTOR_IP);
    let collector = deployment.start_collector(&collector_addr, Some(&network.collector_ns));
    // 100 ms each way through a relay in the agent's namespace.
    let mut relay = Network::command(&network.agent_ns, bin("custos-testkit"));
    relay.args(["udp-relay", "127.0.0.1:7000", &collector_addr, "100", "--"]);
    let relay = Terminal::spawn(relay);
    relay.stderr_value("relaying ");
    let agent = Agent::start_shipping_in(
        &network.agent_ns,
        &deployment.agent_config("127.0.0.1:7000", SHIPPING),
    );
    collector.daemon.wait_log(&["agent connected"], DELIVERY);

    let (mut shell, session) = login_shell("custos-alice");
    let marks: Vec<String> = (0..15).map(|i| marker(&format!("NET{i:02}-"))).collect();
    for mark in &marks {
        let (head, tail) = mark.split_at(5);
        shell.line(&format!(
            "echo \"{head}\"\"{tail}\"; seq 1 2000 | tail -n 1"
        ));
        shell.expect(&format!("{mark}\r\n"));
        shell.expect("custos$ ");
    }
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, Duration::from_secs(180));
    agent.stop();
    drop(collector);
    drop(relay);
    drop(network);

    let events = deployment.recording(session);
    assert_complete(&events);
    assert_eq!(output(&events), shell.transcript());
}

#[test]
fn certificates_rotate_without_losing_data() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    let (mut shell, session) = login_shell("custos-alice");
    shell.line("echo before-\"\"rotation");
    shell.expect("before-rotation\r\n");
    shell.expect("custos$ ");

    let pki = deployment.pki().to_string_lossy().into_owned();
    let old_collector = std::fs::read(deployment.pki().join("collector.pem")).expect("read");
    collector_command(&["pki", "renew-collector", "--dir", &pki]);
    assert_ne!(
        std::fs::read(deployment.pki().join("collector.pem")).expect("read"),
        old_collector
    );
    let from = collector.daemon.log_len();
    collector.daemon.signal(libc::SIGHUP);
    collector.daemon.wait_log_from(
        from,
        &["reloaded the CA, its revocation list and the collector's certificate"],
        DELIVERY,
    );

    collector_command(&[
        "pki",
        "issue",
        "agent",
        &deployment.host,
        "--dir",
        &pki,
        "--replace",
    ]);
    let from = agent.daemon.log_len();
    agent.daemon.signal(libc::SIGHUP);
    agent
        .daemon
        .wait_log_from(from, &["connected to the collector"], DELIVERY);

    shell.line("echo after-\"\"rotation");
    shell.expect("after-rotation\r\n");
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    drop(collector);
    let events = deployment.recording(session);
    assert_complete(&events);
    let shown = output(&events);
    assert!(contains(&shown, b"before-rotation\r\n") && contains(&shown, b"after-rotation\r\n"));
}

#[test]
fn unusable_certificates_are_refused_at_start_naming_the_file() {
    let deployment = Deployment::new(&[]);
    let pki = deployment.pki();
    let expired = PkiDir::new(&pki);
    let past = time_ago(3);
    let (expired_cert, expired_key) = issue::issue(
        &expired,
        Role::Agent,
        "expired-host",
        Validity {
            not_before: past - time::Duration::days(1),
            not_after: past,
        },
        None,
        false,
    )
    .expect("issue");
    let agent_cert = pki.join(format!("issued/agent-{}.pem", deployment.host));
    let agent_key = pki.join(format!("issued/agent-{}.key", deployment.host));
    let cases = [
        (
            expired_cert.clone(),
            expired_key.clone(),
            expired_cert.clone(),
            "expired",
        ),
        (
            agent_cert.clone(),
            pki.join("collector.key"),
            pki.join("collector.key"),
            "does not match",
        ),
        (
            pki.join("missing.pem"),
            agent_key.clone(),
            pki.join("missing.pem"),
            "cannot read",
        ),
        (
            pki.join("collector.pem"),
            pki.join("collector.key"),
            pki.join("collector.pem"),
            "not for an agent",
        ),
    ];
    for (cert, key, named, reason) in cases {
        let config = format!(
            "[collector]\naddress = \"127.0.0.1:7443\"\nca = \"{}\"\ncertificate = \"{}\"\nkey = \"{}\"\n[spool]\ndir = \"{}\"\n",
            pki.join("ca.pem").display(),
            cert.display(),
            key.display(),
            deployment.path("spool").display()
        );
        let path = deployment.path("agent.toml");
        std::fs::write(&path, config).expect("write");
        let output = std::process::Command::new(bin("custos-agent"))
            .arg("--config")
            .arg(&path)
            .arg("--check-config")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.starts_with("custos-agent: "))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(
            line.contains(&named.display().to_string()) && line.contains(reason),
            "expected {} and {reason:?} in: {line}",
            named.display()
        );
    }
}
