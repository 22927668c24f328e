//! The auditor's side, end to end: sessions recorded by a real agent through a real collector,
//! found, shown, replayed, exported, verified and purged with `custos`, every access logged.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{process::Command, time::Duration};

use custos_collector::trust::chunk;
use custos_proto::{
    AuditSessionId,
    api::{AccessLog, SessionDetail, SessionList, VerifyReport},
};
use custos_tests::{
    agent::Agent,
    deployment::{Deployment, collector_command},
    free_udp_address, https, login_shell, marker, users, wait_until,
};

const DELIVERY: Duration = Duration::from_secs(60);
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nkeep_alive = \"1s\"\n";

/// A recorded session with a marker, a few commands, a file read, in several chunks.
struct Recorded {
    session: AuditSessionId,
    id: String,
    mark: String,
    transcript: Vec<u8>,
}

/// How many whole chunks the recording file holds now (none while it does not exist).
fn stored_chunks(deployment: &Deployment, session: AuditSessionId) -> usize {
    let Ok(bytes) = std::fs::read(deployment.recording_file(session)) else {
        return 0;
    };
    let mut count = 0;
    let mut at = 0;
    while let Ok(Some(raw)) = chunk::parse(&bytes[at..]) {
        count += 1;
        at += raw.encoded_len();
    }
    count
}

/// Records a session whose commands land in separate chunks: after each command it waits until
/// the collector has stored a new chunk.
fn record_session(deployment: &Deployment, user: &str, mark_prefix: &str) -> Recorded {
    let (mut shell, session) = login_shell(user);
    let mark = marker(mark_prefix);
    let (head, tail) = mark.split_at(4);
    for command in [
        format!("echo \"{head}\"\"{tail}\""),
        "cat /etc/os-release | head -n 2".to_owned(),
        "ls /nonexistent".to_owned(),
        "printf 'three\\n'; printf 'chunks\\n'".to_owned(),
    ] {
        let before = stored_chunks(deployment, session);
        shell.line(&command);
        shell.expect("custos$ ");
        wait_until("a new chunk", DELIVERY, || {
            (stored_chunks(deployment, session) > before).then_some(())
        });
    }
    shell.line("exit 0");
    shell.wait_exit();
    Recorded {
        session,
        id: String::new(),
        mark,
        transcript: shell.transcript(),
    }
}

struct Setup {
    deployment: Deployment,
    _collector: custos_tests::deployment::Collector,
    agent: Option<Agent>,
    auditor: (std::path::PathBuf, std::path::PathBuf),
    admin: (std::path::PathBuf, std::path::PathBuf),
}

fn setup(collector_extra: &str) -> Setup {
    users::ensure("custos-alice");
    users::ensure("custos-bob");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let collector = deployment.start_collector_with(&listen, None, collector_extra);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));
    let auditor = deployment.auditor("dana", "auditor");
    let admin = deployment.auditor("root-admin", "admin");
    Setup {
        deployment,
        _collector: collector,
        agent: Some(agent),
        auditor,
        admin,
    }
}

fn record(setup: &Setup, user: &str, prefix: &str) -> Recorded {
    let mut recorded = record_session(&setup.deployment, user, prefix);
    setup.deployment.wait_sealed(recorded.session, DELIVERY);
    recorded.id = setup.deployment.recording_id(recorded.session);
    recorded
}

fn sessions(setup: &Setup, args: &[&str]) -> Vec<String> {
    let mut all = vec!["sessions", "--json"];
    all.extend_from_slice(args);
    let list: SessionList =
        serde_json::from_str(&setup.deployment.custos(&setup.auditor, &all).ok())
            .expect("JSON session list");
    list.sessions.into_iter().map(|s| s.id).collect()
}

#[test]
fn sessions_are_found_shown_and_replayed_as_the_user_saw_them() {
    let setup = setup("");
    let alice = record(&setup, "custos-alice", "ALICE-");
    let bob = record(&setup, "custos-bob", "BOB-");
    let custos = |args: &[&str]| setup.deployment.custos(&setup.auditor, args);

    // By user.
    let found = sessions(&setup, &["--user", "custos-alice"]);
    assert!(
        found.contains(&alice.id) && !found.contains(&bob.id),
        "{found:?}"
    );
    // By time window: now is inside, a window that ended an hour ago is not.
    let found = sessions(&setup, &["--since", "10 minutes ago", "--until", "now"]);
    assert!(
        found.contains(&alice.id) && found.contains(&bob.id),
        "{found:?}"
    );
    assert!(sessions(&setup, &["--until", "1 hour ago"]).is_empty());
    assert!(sessions(&setup, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    let table = custos(&["sessions", "--user", "custos-alice"]).ok();
    assert!(
        table.contains(&alice.id) && table.contains("custos-alice") && table.contains("sealed"),
        "{table}"
    );

    // Show: its commands (with argv and exit codes) and files, as a process tree.
    let detail: SessionDetail =
        serde_json::from_str(&custos(&["show", &alice.id, "--json"]).ok()).expect("JSON");
    assert!(
        detail
            .commands
            .iter()
            .any(|c| c.argv == ["cat", "/etc/os-release"])
    );
    assert!(
        detail
            .commands
            .iter()
            .any(|c| c.argv == ["ls", "/nonexistent"] && c.exit_code == Some(2))
    );
    assert!(
        detail
            .files
            .iter()
            .any(|f| f.path == "/etc/os-release" && f.result >= 0)
    );
    let shown = custos(&["show", &alice.id]).ok();
    assert!(
        shown.contains("cat /etc/os-release")
            && shown.contains("exit 2")
            && shown.contains("opened /etc/os-release"),
        "{shown}"
    );
    // cat's loader work (libc found through the cache or probed for along the search path)
    // is one counted line per process (a real dynamically linked program), listed with
    // --all-files.
    assert!(
        shown.contains("routine opens (system libraries") && !shown.contains("libc.so.6"),
        "{shown}"
    );
    let all = custos(&["show", &alice.id, "--all-files"]).ok();
    assert!(
        all.contains("libc.so.6") && !all.contains("routine open"),
        "{all}"
    );

    // Replay: the bytes the terminal showed, in order.
    let replay = Command::new(custos_tests::bin("custos"))
        .args(["replay", &alice.id, "--speed", "1000"])
        .env(
            "CUSTOS_COLLECTOR",
            format!("https://localhost:{}", setup.deployment.api_port),
        )
        .env("CUSTOS_CA", setup.deployment.pki().join("ca.pem"))
        .env("CUSTOS_CERT", &setup.auditor.0)
        .env("CUSTOS_KEY", &setup.auditor.1)
        .env("CUSTOS_CONFIG", "/dev/null")
        .output()
        .expect("custos replay");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&alice.transcript)
    );

    // Search: by command and by file.
    let hits = custos(&[
        "search",
        "--command",
        "^ls /nonexist",
        "--user",
        "custos-alice",
    ])
    .ok();
    assert!(
        hits.contains(&alice.id) && !hits.contains(&bob.id),
        "{hits}"
    );
    let hits = custos(&["search", "--file", "/etc/os-rel"]).ok();
    assert!(hits.contains(&alice.id) && hits.contains(&bob.id), "{hits}");

    // Clear errors.
    let unknown = custos(&["show", "nosuch-00000000-1"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        unknown
            .stderr
            .contains("no recorded session \"nosuch-00000000-1\""),
        "{}",
        unknown.stderr
    );
    let bad_time = custos(&["sessions", "--since", "last tuesday"]);
    assert!(
        !bad_time.status.success()
            && bad_time.stderr.contains("--since")
            && bad_time.stderr.contains("is not a time"),
        "{}",
        bad_time.stderr
    );
    let unreachable = Command::new(custos_tests::bin("custos"))
        .args(["sessions", "--collector", "https://127.0.0.1:1"])
        .env("CUSTOS_CA", setup.deployment.pki().join("ca.pem"))
        .env("CUSTOS_CERT", &setup.auditor.0)
        .env("CUSTOS_KEY", &setup.auditor.1)
        .env("CUSTOS_CONFIG", "/dev/null")
        .output()
        .expect("custos");
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("cannot reach the collector at https://127.0.0.1:1")
    );
}

#[test]
fn the_asciicast_export_plays_in_asciinema() {
    let setup = setup("");
    let alice = record(&setup, "custos-alice", "CAST-");
    let file = setup.deployment.path("session.cast");
    setup
        .deployment
        .custos(
            &setup.auditor,
            &[
                "export",
                &alice.id,
                "--format",
                "asciicast",
                "-o",
                &file.to_string_lossy(),
            ],
        )
        .ok();
    // What a session showed is PHI: the file is its owner's alone, whatever the umask.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("the export").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "export file mode {mode:o}");
    // asciinema reads its controls from /dev/tty: give it a terminal (script), with output
    // post-processing off so the terminal passes the recorded bytes through unchanged.
    let cat = Command::new("script")
        .args(["--quiet", "--return", "--command"])
        .arg(format!("stty -opost; asciinema cat {}", file.display()))
        .arg("/dev/null")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script and asciinema (packages bsdutils, asciinema)");
    assert!(
        cat.status.success(),
        "asciinema cat: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        String::from_utf8_lossy(&alice.transcript)
    );

    let jsonl = setup
        .deployment
        .custos(&setup.auditor, &["export", &alice.id, "--format", "jsonl"])
        .ok();
    let events: Vec<custos_proto::Event> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event per line"))
        .collect();
    assert!(events.len() > 10);
    assert!(events.iter().all(|e| e.session == alice.session));
    assert!(jsonl.contains(&alice.mark));
}

/// Where each chunk of a recording file starts and ends.
fn chunk_spans(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let raw = chunk::parse(&bytes[at..])
            .expect("a chunk")
            .expect("a whole chunk");
        spans.push((at, at + raw.encoded_len()));
        at += raw.encoded_len();
    }
    spans
}

fn verify(setup: &Setup, id: &str) -> (bool, Vec<String>) {
    let out = setup
        .deployment
        .custos(&setup.auditor, &["verify", id, "--json"]);
    let report: VerifyReport = serde_json::from_str(&out.stdout).expect("JSON report");
    assert_eq!(
        out.status.success(),
        report.results[0].ok,
        "exit status follows the verdict"
    );
    (report.results[0].ok, report.results[0].problems.clone())
}

#[test]
fn tampering_is_detected_and_named() {
    let setup = setup("");
    let flipped = record(&setup, "custos-alice", "FLIP-");
    let deleted = record(&setup, "custos-alice", "DEL-");
    let truncated = record(&setup, "custos-alice", "CUT-");
    let untouched = record(&setup, "custos-bob", "KEEP-");
    for r in [&flipped, &deleted, &truncated, &untouched] {
        assert_eq!(
            verify(&setup, &r.id),
            (true, vec![]),
            "{} before tampering",
            r.id
        );
    }

    // One flipped bit in the second chunk.
    let path = setup.deployment.recording_file(flipped.session);
    let mut bytes = std::fs::read(&path).expect("recording");
    let spans = chunk_spans(&bytes);
    assert!(
        spans.len() >= 3,
        "recordings of several chunks ({} here)",
        spans.len()
    );
    bytes[spans[1].1 - 7] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let (ok, problems) = verify(&setup, &flipped.id);
    assert!(!ok);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("chunk 1:") && p.contains("fails authentication")),
        "{problems:?}"
    );

    // The second chunk removed.
    let path = setup.deployment.recording_file(deleted.session);
    let mut bytes = std::fs::read(&path).expect("recording");
    let spans = chunk_spans(&bytes);
    bytes.drain(spans[1].0..spans[1].1);
    std::fs::write(&path, &bytes).expect("write");
    let (ok, problems) = verify(&setup, &deleted.id);
    assert!(!ok);
    assert!(
        problems.iter().any(|p| p.starts_with("chunk 1:")),
        "{problems:?}"
    );

    // Cut after its first chunk.
    let path = setup.deployment.recording_file(truncated.session);
    let bytes = std::fs::read(&path).expect("recording");
    let spans = chunk_spans(&bytes);
    std::fs::write(&path, &bytes[..spans[0].1]).expect("write");
    let (ok, problems) = verify(&setup, &truncated.id);
    assert!(!ok);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ends after 1 chunks") && p.contains("seal says")),
        "{problems:?}"
    );

    assert_eq!(verify(&setup, &untouched.id), (true, vec![]));
    // --all names each failing recording, and passes the untouched one.
    let all = setup
        .deployment
        .custos(&setup.auditor, &["verify", "--all"]);
    assert_eq!(all.status.code(), Some(1));
    for r in [&flipped, &deleted, &truncated] {
        assert!(
            all.stdout.contains(&format!("FAILED  {}", r.id)),
            "{}",
            all.stdout
        );
    }
    assert!(
        all.stdout.contains(&format!("OK      {}", untouched.id)),
        "{}",
        all.stdout
    );
    // The host's chain of batches shows the chunks gone or altered as missing batches.
    let host = &setup.deployment.host;
    assert!(
        all.stdout.contains(&format!("FAILED  agent {host} spool"))
            && all.stdout.contains("are missing"),
        "{}",
        all.stdout
    );
}

#[test]
fn roles_decide_access_and_every_read_is_logged() {
    let setup = setup("");
    let alice = record(&setup, "custos-alice", "ROLE-");
    let ca = setup.deployment.pki().join("ca.pem");
    let port = setup.deployment.api_port;

    // An auditor reads.
    assert!(
        https::get(
            port,
            &ca,
            (&setup.auditor.0, &setup.auditor.1),
            "/v1/sessions"
        )
        .expect("auditor")
        .contains(" 200")
    );
    setup
        .deployment
        .custos(&setup.auditor, &["show", &alice.id])
        .ok();
    let export = setup.deployment.path("x.cast");
    setup
        .deployment
        .custos(
            &setup.auditor,
            &[
                "export",
                &alice.id,
                "--format",
                "asciicast",
                "-o",
                &export.to_string_lossy(),
            ],
        )
        .ok();
    setup
        .deployment
        .custos(&setup.auditor, &["replay", &alice.id, "--speed", "1000"])
        .ok();

    // An agent certificate is refused in the handshake...
    let agent_cert = setup
        .deployment
        .pki()
        .join(format!("issued/agent-{}.pem", setup.deployment.host));
    let agent_key = setup
        .deployment
        .pki()
        .join(format!("issued/agent-{}.key", setup.deployment.host));
    let refused = https::get(port, &ca, (&agent_cert, &agent_key), "/v1/sessions");
    assert!(
        refused.is_err(),
        "an agent certificate was served: {refused:?}"
    );
    // ...and so is a certificate of the right CA with a role Custos does not know.
    let (janitor_cert, janitor_key) = unknown_role_certificate(&setup.deployment);
    assert!(https::get(port, &ca, (&janitor_cert, &janitor_key), "/v1/sessions").is_err());

    // The auditor may not read the access log; the admin may, and finds every read there.
    let denied = setup.deployment.custos(&setup.auditor, &["access-log"]);
    assert_eq!(denied.status.code(), Some(2));
    assert!(
        denied.stderr.contains("denied") && denied.stderr.contains("admin role"),
        "{}",
        denied.stderr
    );
    let log: AccessLog = serde_json::from_str(
        &setup
            .deployment
            .custos(&setup.admin, &["access-log", "--json"])
            .ok(),
    )
    .expect("JSON log");
    let did = |action: &str, target: &str, result: &str| {
        log.entries.iter().any(|e| {
            e.who == "dana" && e.action == action && e.target.contains(target) && e.result == result
        })
    };
    assert!(did("sessions", "", "ok"), "{:?}", log.entries);
    assert!(did("show", &alice.id, "ok"));
    assert!(did("export", &alice.id, "ok"));
    assert!(did("replay", &alice.id, "ok"));
    assert!(did("access-log", "all", "denied"));
    // Besides the collector's own entries (the retention setting it started with).
    assert!(log.entries.iter().all(|e| e.role == "auditor"
        || e.role == "admin"
        || (e.who == "collector" && e.role == "system")));
}

/// A certificate signed by the deployment CA whose role (subject OU) Custos does not know.
fn unknown_role_certificate(deployment: &Deployment) -> (std::path::PathBuf, std::path::PathBuf) {
    let pki = deployment.pki();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).expect("ca key"))
            .expect("key");
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.join("ca.pem")).expect("ca"),
        ca_key,
    )
    .expect("issuer");
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["janitor".to_owned()]).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "custos-janitor");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "janitor");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("signed");
    let (cert_path, key_path) = (
        deployment.path("janitor.pem"),
        deployment.path("janitor.key"),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write");
    std::fs::write(&key_path, key.serialize_pem()).expect("write");
    (cert_path, key_path)
}

#[test]
fn a_collector_killed_during_ingest_keeps_index_and_recordings_in_agreement() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let mut collector = deployment.start_collector(&listen, None);
    let agent = Agent::start_shipping(&deployment.agent_config(
        &listen,
        &format!("{SHIPPING}batch_max_bytes = \"64 KiB\"\n"),
    ));
    let auditor = deployment.auditor("dana", "auditor");
    let (mut shell, session) = login_shell("custos-alice");
    shell.line("seq 1 200000; echo ingest-\"\"done");
    collector.daemon.wait_log(&["batch stored"], DELIVERY);
    collector.daemon.kill();
    let collector = deployment.start_collector(&listen, None);
    shell.expect_within("ingest-done\r\n", Duration::from_secs(120));
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);
    agent.stop();
    let id = deployment.recording_id(session);

    // The recording is whole and checks out.
    let events = deployment.recording(session);
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.seq.0,
            i as u64 + 1,
            "nothing acknowledged is missing, nothing twice"
        );
    }
    let report = deployment.custos(&auditor, &["verify", "--all"]);
    assert!(report.status.success(), "{}", report.stdout);
    // The real agent signed every batch, and its chain is unbroken across the crash.
    let report: VerifyReport = serde_json::from_str(
        &deployment
            .custos(&auditor, &["verify", "--all", "--json"])
            .ok(),
    )
    .expect("JSON report");
    assert!(
        report.results.iter().all(|r| r.unsigned_chunks == 0),
        "{report:?}"
    );
    assert!(
        !report.agents.is_empty() && report.agents.iter().all(|a| a.ok && a.batches > 0),
        "{report:?}"
    );
    let before: SessionDetail =
        serde_json::from_str(&deployment.custos(&auditor, &["show", &id, "--json"]).ok())
            .expect("JSON");

    // The index agrees with one rebuilt from the recordings alone.
    let mut collector = collector;
    collector.daemon.stop();
    let config = deployment.path("collector.toml");
    let rebuilt = collector_command(&["--config", &config.to_string_lossy(), "index", "rebuild"]);
    assert!(
        rebuilt.contains("indexed") && !rebuilt.contains("damaged"),
        "{rebuilt}"
    );
    let _collector = deployment.start_collector(&listen, None);
    let after: SessionDetail =
        serde_json::from_str(&deployment.custos(&auditor, &["show", &id, "--json"]).ok())
            .expect("JSON");
    assert_eq!(before, after);
    assert_eq!(after.summary.events as usize, events.len());
}

#[test]
fn retention_purges_expired_sessions_and_keeps_held_ones() {
    let setup = setup("[retention]\nkeep = \"2s\"\ncheck_every = \"1h\"\n");
    let kept = record(&setup, "custos-alice", "HELD-");
    let by_user = record(&setup, "custos-bob", "BOB-");
    let gone = record(&setup, "custos-alice", "GONE-");
    let custos = |who, args: &[&str]| setup.deployment.custos(who, args);
    custos(
        &setup.admin,
        &[
            "holds",
            "add",
            "--session",
            &kept.id,
            "--reason",
            "litigation 2026-17",
        ],
    )
    .ok();
    custos(
        &setup.admin,
        &[
            "holds",
            "add",
            "--user",
            "custos-bob",
            "--reason",
            "investigation",
        ],
    )
    .ok();
    // An auditor cannot purge.
    assert!(
        !custos(&setup.auditor, &["retention", "purge"])
            .status
            .success()
    );
    // Two seconds after the collector received the last session's last batch, every recording is
    // past retention.
    wait_until(
        "the retention period to pass",
        Duration::from_secs(30),
        || {
            let out = custos(&setup.admin, &["retention", "purge"]).ok();
            out.contains(&format!("purged {}", gone.id)).then_some(out)
        },
    );
    let left = sessions(&setup, &[]);
    assert!(
        left.contains(&kept.id) && left.contains(&by_user.id),
        "{left:?}"
    );
    assert!(!left.contains(&gone.id));
    assert!(
        !setup.deployment.recording_file(gone.session).exists(),
        "the recording file is deleted"
    );
    assert!(setup.deployment.recording_file(kept.session).exists());
    // The purge left a tombstone: the agent's chain verifies across the removal.
    let verified = custos(&setup.auditor, &["verify", "--all", "--json"]);
    let report: VerifyReport = serde_json::from_str(&verified.stdout).expect("JSON report");
    assert!(verified.status.success(), "{report:?}");
    assert!(
        report.agents.iter().all(|a| a.ok) && report.agents.iter().any(|a| a.removed > 0),
        "{report:?}"
    );
    let log: AccessLog =
        serde_json::from_str(&custos(&setup.admin, &["access-log", "--json"]).ok())
            .expect("JSON log");
    assert!(
        log.entries
            .iter()
            .any(|e| e.action == "purge" && e.who == "root-admin" && e.result == "ok")
    );
    assert!(
        log.entries
            .iter()
            .any(|e| e.action == "purge" && e.who == "dana" && e.result == "denied")
    );
    // Each recording removed is an entry of its own.
    assert!(
        log.entries.iter().any(|e| e.action == "purge"
            && e.who == "collector"
            && e.target.starts_with(&gone.id)
            && e.result == "purged: retention run by root-admin"),
        "{:#?}",
        log.entries
    );
    drop(setup.agent);
}
