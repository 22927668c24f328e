//! Policy, end to end: redaction before anything leaves the host, scope pushed into the kernel,
//! real-time alerts from the collector to a webhook, syslog and a JSON log, and reloads on
//! SIGHUP that keep the running policy when the new one does not load.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    collections::BTreeMap,
    io::Write as _,
    net::UdpSocket,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use custos_collector::alerts::sinks::AlertEvent;
use custos_proto::{AuditSessionId, Event, EventBody};
use custos_tests::{
    agent::{self, Agent},
    bpf,
    deployment::{Collector, Deployment},
    free_udp_address, login_shell,
    metrics::{sample_or_zero, scrape},
    users, wait_until,
    webhook::{Received, Receiver},
};

const DELIVERY: Duration = Duration::from_secs(60);
const SHIPPING: &str = "[shipping]\nbatch_interval = \"100ms\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\nkeep_alive = \"1s\"\n";
/// A US social security number and a medical record number, as a clinician would see them.
const SSN: &str = "123-45-6789";
const MRN: &str = "A12345678";

/// A deployment's pseudonym key: 32 random bytes, mode 0600.
fn pseudonym_key(deployment: &Deployment) -> PathBuf {
    let path = deployment.path("pseudonym.key");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .expect("creating the pseudonym key");
    let random = std::fs::read("/proc/sys/kernel/random/uuid").expect("random bytes");
    file.write_all(&random[..32]).expect("writing the key");
    path
}

fn redaction(key: &Path, extra_rules: &str) -> String {
    format!(
        "[redaction]\nkey_file = \"{}\"\n\
         [[redaction.rules]]\nbuiltin = \"ssn\"\naction = \"pseudonymise\"\n\
         [[redaction.rules]]\nbuiltin = \"mrn\"\naction = \"mask\"\n{extra_rules}",
        key.display()
    )
}

/// Terminal output and input of a recording, with every argv, as one text.
fn recorded_text(events: &[Event]) -> String {
    let mut text = String::new();
    for event in events {
        match &event.event {
            EventBody::Output(o) => text.push_str(&o.data.to_string()),
            EventBody::Input(i) => text.push_str(&i.data.to_string()),
            EventBody::Exec(e) => {
                for arg in &e.argv {
                    text.push_str(&arg.to_string());
                    text.push(' ');
                }
            }
            _ => {}
        }
    }
    text
}

/// The pseudonym `[ssn:...]` in `text`.
fn ssn_token(text: &str) -> String {
    let start = text
        .find("[ssn:")
        .unwrap_or_else(|| panic!("no SSN pseudonym in: {text}"));
    let end = text[start..].find(']').expect("the pseudonym's end") + start + 1;
    text[start..end].to_owned()
}

fn session_end_redacted(events: &[Event]) -> BTreeMap<String, u64> {
    events
        .iter()
        .find_map(|e| match &e.event {
            EventBody::SessionEnd(end) => Some(end.redacted.clone()),
            _ => None,
        })
        .expect("the session's end record")
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&path)
                            .is_ok_and(|b| custos_tests::contains(&b, needle)) =>
                {
                    found.push(path)
                }
                _ => {}
            }
        }
    }
    found
}

/// An SSN and an MRN typed, printed, passed in argv and printed in two writes are replaced
/// before the events leave the host: pseudonymised (the same token in two sessions of two
/// users) or masked, in the stored recording and in both export formats, with the rules that
/// fired counted; the raw values are nowhere in the agent's spool or the collector's files.
#[test]
fn identifiers_are_replaced_before_they_leave_the_host() {
    users::ensure("custos-alice");
    users::ensure("custos-bob");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let _collector = deployment.start_collector(&listen, None);
    let key = pseudonym_key(&deployment);
    let config = deployment.agent_config(&listen, &format!("{SHIPPING}{}", redaction(&key, "")));
    let agent = Agent::start_shipping(&config);

    let (mut alice, alice_session) = login_shell("custos-alice");
    // Typed (input), echoed by readline (output, often one byte per write), passed to a
    // program (argv) and printed by it (output).
    alice.line(&format!("/bin/echo \"patient SSN {SSN} MRN: {MRN}\""));
    alice.expect(&format!("patient SSN {SSN} MRN: {MRN}\r\n"));
    alice.expect("custos$ ");
    // One value printed by two writes; the typed line does not hold it whole.
    alice.line("printf '123-45-'; printf '6789 split\\n'");
    alice.expect(&format!("{SSN} split"));
    alice.expect("custos$ ");
    alice.line("exit 0");
    alice.wait_exit();

    let (mut bob, bob_session) = login_shell("custos-bob");
    bob.line(&format!("/bin/echo \"seen again: {SSN}\""));
    bob.expect(&format!("seen again: {SSN}\r\n"));
    bob.expect("custos$ ");
    bob.line("exit 0");
    bob.wait_exit();

    for session in [alice_session, bob_session] {
        deployment.wait_sealed(session, DELIVERY);
    }
    let alice_events = deployment.recording(alice_session);
    let bob_events = deployment.recording(bob_session);
    let alice_text = recorded_text(&alice_events);
    let bob_text = recorded_text(&bob_events);
    for text in [&alice_text, &bob_text] {
        assert!(!text.contains(SSN), "raw SSN recorded: {text}");
        assert!(!text.contains(MRN), "raw MRN recorded: {text}");
    }
    let token = ssn_token(&alice_text);
    assert_eq!(
        token,
        ssn_token(&bob_text),
        "the same value pseudonymised alike in two sessions"
    );
    assert!(
        alice_text.contains(&format!("patient SSN {token} MRN: *****5678")),
        "program output pseudonymised and masked: {alice_text}"
    );
    assert!(
        alice_text.contains(&format!("{token} split")),
        "a value split across two writes is caught: {alice_text}"
    );
    let echo = alice_events
        .iter()
        .find_map(|e| match &e.event {
            EventBody::Exec(exec) if exec.filename.to_string() == "/bin/echo" => Some(exec),
            _ => None,
        })
        .expect("the exec of /bin/echo");
    assert_eq!(
        echo.argv.get(1).map(|a| a.to_string()),
        Some(format!("patient SSN {token} MRN: *****5678"))
    );
    assert_eq!(echo.redacted.get("ssn"), Some(&1));
    assert_eq!(echo.redacted.get("mrn"), Some(&1));
    assert!(alice_events.iter().any(|e| matches!(&e.event,
        EventBody::Input(input) if input.redacted.contains_key("ssn"))));
    // Typed, echoed, argv, printed, and split: five at least.
    let counts = session_end_redacted(&alice_events);
    assert!(counts.get("ssn").is_some_and(|n| *n >= 5), "{counts:?}");
    assert!(counts.get("mrn").is_some_and(|n| *n >= 3), "{counts:?}");

    // The exports an auditor hands on.
    let auditor = deployment.auditor("dana", "auditor");
    let id = deployment.recording_id(alice_session);
    for format in ["jsonl", "asciicast"] {
        let export = deployment
            .custos(&auditor, &["export", &id, "--format", format])
            .ok();
        assert!(!export.contains(SSN) && !export.contains(MRN), "{format}");
        assert!(export.contains(&token), "{format} export: {export}");
    }

    // Nothing on disk holds the values: the agent's spool, the collector's store and index.
    agent.stop();
    for needle in [SSN, MRN] {
        let found = files_containing(deployment.dir.path(), needle.as_bytes());
        assert!(found.is_empty(), "{needle} found in {found:?}");
    }
}

/// The ids of the per-CPU counters of records the kernel submitted (per kind) and of program
/// runs it ended early for an out-of-scope login uid.
struct KernelCounters {
    submitted: u32,
    skipped: u32,
}

impl KernelCounters {
    fn of(agent: &Agent) -> KernelCounters {
        KernelCounters {
            submitted: bpf::map_id(agent.pid(), "SUBMITTED"),
            skipped: bpf::map_id(agent.pid(), "SCOPE_SKIPPED"),
        }
    }

    fn submitted(&self) -> u64 {
        (0..16)
            .map(|kind| bpf::per_cpu_u64_sum(self.submitted, kind, 0))
            .sum()
    }

    fn skipped(&self) -> u64 {
        bpf::per_cpu_u64_sum(self.skipped, 0, 0)
    }
}

/// Audit sessions of processes other than `except` (login sessions that the kernel records).
fn other_sessions(except: &[AuditSessionId]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("sessionid")) else {
            continue;
        };
        let Ok(id) = text.trim().parse::<u32>() else {
            continue;
        };
        if id != u32::MAX && !except.iter().any(|s| s.0 == id) {
            found.push(id);
        }
    }
    found
}

/// A user excluded by `[scope]` is skipped by the kernel itself: its session's programs leave
/// at the scope check (counted), submit no record, and the agent prints nothing of it; another
/// user's session is recorded as usual.
#[test]
fn an_out_of_scope_session_produces_no_kernel_events() {
    users::ensure("custos-alice");
    users::ensure("custos-bob");
    let agent = Agent::start("[scope]\nexclude_users = [\"custos-bob\"]\n");
    let counters = KernelCounters::of(&agent);

    let submitted_before = counters.submitted();
    let skipped_before = counters.skipped();
    let (mut bob, bob_session) = login_shell("custos-bob");
    bob.line("for i in $(seq 200); do /bin/true; done; cat /etc/hostname > /dev/null");
    bob.expect("custos$ ");
    // Other login sessions on the machine (someone logged in while the suite runs) would
    // submit records of their own; with none, the count must not move at all.
    let quiet = other_sessions(&[bob_session]).is_empty();
    bob.line("exit 0");
    bob.wait_exit();
    let submitted_during_bob = counters.submitted() - submitted_before;
    let skipped = counters.skipped() - skipped_before;
    assert!(
        skipped >= 200,
        "the kernel skipped bob's 200 execs and more at the scope check, not {skipped}"
    );
    if quiet {
        assert_eq!(
            submitted_during_bob, 0,
            "the kernel submitted records while only an out-of-scope session ran"
        );
    } else {
        eprintln!(
            "other login sessions exist on this machine: the exact kernel count is not checked \
             ({submitted_during_bob} records from them)"
        );
    }

    // The control: alice is recorded, and the kernel submits her records.
    let (mut alice, alice_session) = login_shell("custos-alice");
    alice.line("/bin/true");
    alice.expect("custos$ ");
    alice.line("exit 0");
    alice.wait_exit();
    agent.wait_for("alice's session end", DELIVERY, |events| {
        agent::ended(events, alice_session).then_some(())
    });
    assert!(counters.submitted() > submitted_before + submitted_during_bob);
    let events = agent.events();
    assert!(
        agent::session(&events, bob_session).is_empty(),
        "bob is out of scope, yet his session has events"
    );
    assert!(agent.stop().success);
}

/// What a collector with alerts needs: a webhook receiver with a certificate of the
/// deployment's CA, a syslog listener, a JSON log.
struct Sinks {
    webhook: Receiver,
    syslog: UdpSocket,
    json_log: PathBuf,
}

impl Sinks {
    fn start(deployment: &Deployment) -> Sinks {
        let pki = deployment.pki();
        let syslog = UdpSocket::bind("127.0.0.1:0").expect("syslog socket");
        syslog
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Sinks {
            webhook: Receiver::start(&pki.join("collector.pem"), &pki.join("collector.key")),
            syslog,
            json_log: deployment.path("alerts.jsonl"),
        }
    }

    fn config(&self, deployment: &Deployment, rate_limit: u32, rules: &str) -> String {
        format!(
            "[alerts]\njson_log = \"{json}\"\nsyslog = \"udp:{syslog}\"\n\
             webhook = {{ url = \"{url}\", ca = \"{ca}\", retries = 3 }}\n\
             rate_limit = {rate_limit}\nrate_window = \"3s\"\n{rules}",
            json = self.json_log.display(),
            syslog = self.syslog.local_addr().expect("addr"),
            url = self.webhook.url(),
            ca = deployment.pki().join("ca.pem").display(),
        )
    }
}

fn is_rule(received: &Received, rule: &str) -> bool {
    received.body["rule"].as_str() == Some(rule) && received.body["suppressed"].is_null()
}

fn metric(collector: &Collector, series: &str) -> f64 {
    sample_or_zero(&scrape(&collector.daemon.log_text()), series)
}

/// A write under a PHI path reaches the webhook within 2 s of the event on the host, naming
/// the rule, the session, the user and the host, and the syslog and JSON log sinks too; a storm
/// of 10,000 more stays within the rate limit, every one is counted (sent or suppressed), a
/// notice says how many were not sent, and ingestion keeps every event.
#[test]
fn a_phi_write_alerts_within_two_seconds_and_a_storm_stays_bounded() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let phi = tempfile::Builder::new()
        .prefix("custos-phi-")
        .tempdir()
        .expect("phi dir");
    std::fs::set_permissions(phi.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sinks = Sinks::start(&deployment);
    let alerts = sinks.config(
        &deployment,
        5,
        &format!(
            "[alerts.builtin]\nphi_paths = [\"{}/**\"]\nphi_write = true\n",
            phi.path().display()
        ),
    );
    let listen = free_udp_address();
    let collector = deployment.start_collector_with(&listen, None, &alerts);
    let agent = Agent::start_shipping(&deployment.agent_config(&listen, SHIPPING));

    let (mut shell, session) = login_shell("custos-alice");
    let id = deployment.recording_id(session);
    let notes = phi.path().join("notes.txt");
    shell.line(&format!("echo first >> {}", notes.display()));
    shell.expect("custos$ ");
    let first = sinks
        .webhook
        .wait_for("the phi_write alert", Duration::from_secs(30), |r| {
            r.iter().any(|r| is_rule(r, "phi_write"))
        })
        .into_iter()
        .find(|r| is_rule(r, "phi_write"))
        .expect("the alert");
    let body = &first.body;
    assert_eq!(body["session"].as_str(), Some(id.as_str()));
    assert_eq!(
        body["show"].as_str(),
        Some(format!("custos show {id}").as_str())
    );
    assert_eq!(body["user"].as_str(), Some("custos-alice"));
    assert_eq!(body["host"].as_str(), Some(deployment.host.as_str()));
    // Which event and field, not the path itself (the rule does not include the match).
    let event: AlertEvent = serde_json::from_value(body["event"].clone()).expect("the event");
    assert_eq!(event.kind, "open", "{body}");
    let field = event.field.as_ref().expect("the matched field");
    assert!(
        field.name == "path" && field.redacted && field.value.is_none(),
        "{body}"
    );
    assert!(!body.to_string().contains("notes.txt"), "{body}");
    let happened = SystemTime::UNIX_EPOCH + Duration::from_nanos(event.time.as_nanos() as u64);
    let latency = first.at.duration_since(happened).unwrap_or(Duration::ZERO);
    assert!(
        latency < Duration::from_secs(2),
        "the alert arrived {latency:?} after the event on the host"
    );
    let mut datagram = vec![0u8; 65536];
    let n = sinks.syslog.recv(&mut datagram).expect("a syslog message");
    let message = String::from_utf8_lossy(&datagram[..n]);
    assert!(
        message.starts_with("<84>1 "),
        "RFC 5424, authpriv.warning: {message}"
    );
    assert!(
        message.contains("phi_write") && message.contains(&id),
        "{message}"
    );

    // The storm: 10,000 more writes, as fast as bash makes them.
    let storm = phi.path().join("storm.txt");
    shell.line(&format!(
        "for i in $(seq 10000); do echo $i >> {}; done",
        storm.display()
    ));
    shell.expect_within("custos$ ", Duration::from_secs(120));
    shell.line("exit 0");
    shell.wait_exit();
    let (fired, suppressed) = wait_until("all 10,001 alerts counted", DELIVERY, || {
        let fired = metric(
            &collector,
            "custos_collector_alerts_fired_total{rule=\"phi_write\"}",
        );
        let suppressed = metric(
            &collector,
            "custos_collector_alerts_suppressed_total{rule=\"phi_write\"}",
        );
        (fired + suppressed >= 10_001.0).then_some((fired, suppressed))
    });
    assert_eq!(fired + suppressed, 10_001.0);
    assert!(
        fired <= 5.0 * 20.0,
        "{fired} alerts sent: the rate limit (5 per 3 s) did not hold"
    );
    assert_eq!(
        metric(&collector, "custos_collector_alert_events_skipped_total"),
        0.0
    );
    // Every suppressed alert is reported in a notice once its window ends.
    let received = sinks.webhook.wait_for(
        "notices for every suppressed alert",
        Duration::from_secs(30),
        |r| {
            r.iter()
                .filter_map(|r| r.body["suppressed"].as_f64())
                .sum::<f64>()
                >= suppressed
        },
    );
    let sent = received.iter().filter(|r| is_rule(r, "phi_write")).count();
    assert_eq!(
        sent as f64, fired,
        "every alert counted as sent reached the webhook"
    );
    let notice = received
        .iter()
        .find(|r| !r.body["suppressed"].is_null())
        .expect("a notice");
    assert!(
        notice.body["summary"]
            .as_str()
            .is_some_and(|s| s.contains("were not sent")),
        "{}",
        notice.body
    );
    // The JSON log has every alert and notice the webhook got, and only the collector reads it.
    let log = std::fs::read_to_string(&sinks.json_log).expect("the JSON log");
    assert_eq!(log.lines().count(), received.len());
    let mode = std::fs::metadata(&sinks.json_log)
        .expect("log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Ingestion did not stall: every write is stored.
    deployment.wait_sealed(session, DELIVERY);
    let writes = deployment
        .recording(session)
        .iter()
        .filter(|e| matches!(&e.event, EventBody::Open(o) if o.path.to_string().starts_with(&*phi.path().to_string_lossy())))
        .count();
    assert_eq!(writes, 10_001);
    drop(agent);
}

/// SIGHUP with a regex that does not compile leaves the agent's redaction and the collector's
/// alert rules as they were, saying why; a valid configuration then takes effect.
#[test]
fn a_reload_with_an_invalid_regex_keeps_the_running_policy() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let key = pseudonym_key(&deployment);
    let sinks = Sinks::start(&deployment);
    let rule = |name: &str, command: &str| {
        format!("[[alerts.rules]]\nname = \"{name}\"\nkind = \"exec\"\ncommand = \"{command}\"\n")
    };
    let listen = free_udp_address();
    let collector = deployment.start_collector_with(
        &listen,
        None,
        &sinks.config(&deployment, 100, &rule("true-run", "/usr/bin/true")),
    );
    let agent_config = |extra_rules: &str| {
        deployment.agent_config(
            &listen,
            &format!("{SHIPPING}{}", redaction(&key, extra_rules)),
        )
    };
    let agent = Agent::start_shipping(&agent_config(""));

    // Broken configurations on both sides, then SIGHUP.
    let bad_rule =
        "[[redaction.rules]]\nname = \"account\"\npattern = 'ACCT-(['\naction = \"mask\"\n";
    std::fs::write(agent.config_path(), agent_config(bad_rule)).expect("agent config");
    let from = agent.daemon.log_len();
    agent.daemon.signal(libc::SIGHUP);
    let (_, line) = agent.daemon.wait_log_from(
        from,
        &["keeping the running policy"],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("redaction.rules[2].pattern: not a valid regex"),
        "the log names the rule and the problem: {line}"
    );
    let collector_config = deployment.path("collector.toml");
    let good = std::fs::read_to_string(&collector_config).expect("collector config");
    let broken = good.replace(
        "command = \"/usr/bin/true\"\n",
        "command = \"/usr/bin/true\"\nargv = \"([\"\n",
    );
    assert_ne!(broken, good);
    std::fs::write(&collector_config, &broken).expect("collector config");
    let from = collector.daemon.log_len();
    collector.daemon.signal(libc::SIGHUP);
    let (_, line) = collector.daemon.wait_log_from(
        from,
        &["keeping the running alert rules"],
        Duration::from_secs(10),
    );
    assert!(
        line.contains("alerts.rules[0].argv"),
        "the log names the rule and the field: {line}"
    );

    // The old policies still run.
    let (mut shell, session) = login_shell("custos-alice");
    let id = deployment.recording_id(session);
    shell.line(&format!("/usr/bin/true; echo \"{SSN} ACCT-12345678\""));
    shell.expect("custos$ ");
    sinks
        .webhook
        .wait_for("the old rule's alert", Duration::from_secs(30), |r| {
            r.iter()
                .any(|r| is_rule(r, "true-run") && r.body["session"].as_str() == Some(&id))
        });

    // Valid configurations take effect.
    std::fs::write(
        agent.config_path(),
        agent_config(
            "[[redaction.rules]]\nname = \"account\"\npattern = 'ACCT-[0-9]{8}'\naction = \"mask\"\nkeep_last = 2\n",
        ),
    )
    .expect("agent config");
    let from = agent.daemon.log_len();
    agent.daemon.signal(libc::SIGHUP);
    agent.daemon.wait_log_from(
        from,
        &["the new rules are in force"],
        Duration::from_secs(10),
    );
    std::fs::write(
        &collector_config,
        good.replace("/usr/bin/true", "/usr/bin/touch")
            .replace("true-run", "touch-run"),
    )
    .expect("collector config");
    let from = collector.daemon.log_len();
    collector.daemon.signal(libc::SIGHUP);
    collector
        .daemon
        .wait_log_from(from, &["alert rules reloaded"], Duration::from_secs(10));
    let touched = deployment.path("touched");
    shell.line(&format!(
        "/usr/bin/touch {}; echo \"{SSN} ACCT-87654321\"",
        touched.display()
    ));
    shell.expect("custos$ ");
    sinks
        .webhook
        .wait_for("the new rule's alert", Duration::from_secs(30), |r| {
            r.iter().any(|r| is_rule(r, "touch-run"))
        });
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, DELIVERY);
    let text = recorded_text(&deployment.recording(session));
    assert!(!text.contains(SSN), "the SSN rule kept running: {text}");
    assert!(
        text.contains("ACCT-12345678"),
        "the broken rule never ran: {text}"
    );
    assert!(
        text.contains("****-******21") && !text.contains("ACCT-87654321"),
        "the reloaded rule masks: {text}"
    );
    drop(agent);
}

/// The customer's noise filters: opens under /proc are left out, a command excluded by path
/// leaves no exec, and a process reading the same file three times is reported once with the
/// repeat count; each filtered event is counted per rule in the session's end record. Opens
/// under a PHI path are recorded every time whatever the other rules say.
#[test]
fn filters_leave_out_noise_and_count_what_they_left_out() {
    users::ensure("custos-alice");
    let phi = tempfile::Builder::new()
        .prefix("custos-phi-")
        .tempdir()
        .expect("phi dir");
    let record = phi.path().join("chart.txt");
    std::fs::write(&record, "chart\n").expect("phi file");
    std::fs::set_permissions(phi.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let agent = Agent::start(&format!(
        "[files]\nphi_paths = [\"{}/**\"]\n[commands]\nexclude = [\"/usr/bin/true\"]\n",
        phi.path().display()
    ));
    let (mut shell, session) = login_shell("custos-alice");
    // Builtins, so that one process (the shell) opens each file several times.
    shell.line(&format!(
        "read v < /proc/version; for i in 1 2 3; do read h < /etc/hostname; read c < {}; done; /usr/bin/true",
        record.display()
    ));
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    let events = agent.wait_for("the session's end", DELIVERY, |events| {
        agent::ended(events, session).then(|| events.to_vec())
    });
    let events = agent::session(&events, session);
    let opens = |path: &str| {
        events
            .iter()
            .filter(|e| matches!(&e.event, EventBody::Open(o) if o.path.to_string() == path))
            .count()
    };
    assert_eq!(opens("/proc/version"), 0, "/proc is excluded by default");
    assert_eq!(opens("/etc/hostname"), 1, "read-only repeats are folded");
    assert_eq!(
        opens(&record.to_string_lossy()),
        3,
        "PHI opens are all kept"
    );
    let repeated: Vec<u64> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventBody::OpenRepeated(r) if r.path.to_string() == "/etc/hostname" => Some(r.count),
            _ => None,
        })
        .collect();
    assert_eq!(
        repeated,
        vec![2],
        "the two repeats are reported with their count"
    );
    assert!(
        !events.iter().any(|e| matches!(&e.event,
            EventBody::Exec(x) if x.filename.to_string() == "/usr/bin/true")),
        "an excluded command leaves no exec"
    );
    let filtered = events
        .iter()
        .find_map(|e| match &e.event {
            EventBody::SessionEnd(end) => Some(end.filtered.clone()),
            _ => None,
        })
        .expect("the end record");
    assert!(
        filtered
            .get("files.exclude /proc/**")
            .is_some_and(|n| *n >= 1),
        "{filtered:?}"
    );
    assert!(
        filtered
            .get("commands.exclude /usr/bin/true")
            .is_some_and(|n| *n >= 1),
        "{filtered:?}"
    );
    assert!(agent.stop().success);
}
