//! The engine's tests: queue bounds, cloned agents, clock steps, networks.
use std::sync::Mutex;

use super::*;

/// A sink that keeps what it is sent.
struct Kept(Arc<Mutex<Vec<Alert>>>);

impl Sink for Kept {
    fn send(&mut self, alert: &Alert) {
        self.0.lock().unwrap().push(alert.clone());
    }
}

fn engine(config: &AlertsConfig) -> (Engine, Arc<Mutex<Vec<Alert>>>) {
    let (rules, builtins) = config.compile().unwrap();
    let kept = Arc::new(Mutex::new(Vec::new()));
    let engine = Engine {
        queue: Arc::new(QueueBytes {
            queued: AtomicUsize::new(0),
            limit: usize::MAX,
        }),
        rules,
        builtins,
        sinks: vec![Box::new(Kept(kept.clone()))],
        sessions: HashMap::new(),
        windows: HashMap::new(),
        limit: config.rate_limit,
        window: config.rate_window,
        silent: HashMap::new(),
        clock_sets: HashMap::new(),
        store: StoreConfig::default(),
        metrics: Arc::new(CollectorMetrics::default()),
    };
    (engine, kept)
}

#[test]
fn the_alert_queue_is_bounded_in_bytes_and_given_back_once_evaluated() {
    let batch = |bytes: usize| {
        let mut batch = wire::make_batch(
            &wire::SpoolId("s".into()),
            wire::BatchSeq(1),
            &[Event {
                time: Timestamp(1),
                host: "web1".into(),
                boot_id: BootId("b".into()),
                session: custos_proto::AuditSessionId(1),
                seq: custos_proto::Seq(1),
                process: None,
                event: EventBody::SessionEnd(Default::default()),
            }],
        )
        .expect("a batch");
        batch.events = vec![0; bytes];
        Arc::new(batch)
    };
    let one = batch(1000);
    let (sender, receiver) = sync_channel(FEED_DEPTH);
    let metrics = Arc::new(CollectorMetrics::default());
    let feed = AlertFeed {
        sender,
        active: Arc::new(AtomicBool::new(true)),
        queue: Arc::new(QueueBytes {
            queued: AtomicUsize::new(0),
            limit: 2 * queued_size(&one),
        }),
        metrics: metrics.clone(),
    };
    for _ in 0..3 {
        feed.offer(one.clone());
    }
    assert_eq!(metrics.alert_events_skipped.get(), 1, "the third is over");
    assert_eq!(Arc::strong_count(&one), 3, "shared, not copied");
    // The engine evaluates one: its bytes are given back.
    let (mut engine, _) = engine(&AlertsConfig::default());
    engine.queue = feed.queue.clone();
    let Ok(Message::Batch(first)) = receiver.try_recv() else {
        panic!("a batch queued");
    };
    engine.batch(&first);
    engine.queue.release(queued_size(&first));
    feed.offer(one.clone());
    assert_eq!(metrics.alert_events_skipped.get(), 1, "room again");
}

fn cloned() -> ClonedSpool {
    ClonedSpool {
        agent: "web2".into(),
        spool: "6a1f".into(),
        others: vec!["web1".into()],
        recording: "web2-0b5e7c2a-3".into(),
    }
}

/// On by default, with no rule configured, naming both hosts and the spool; off when
/// configured off.
#[test]
fn cloned_agent_state_is_raised_by_default_and_can_be_turned_off() {
    let (mut on, kept) = engine(&AlertsConfig::default());
    on.cloned(cloned());
    let alerts = kept.lock().unwrap().clone();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert.rule, "cloned_agent_state");
    assert_eq!(alert.host, "web2");
    assert_eq!(alert.session, "web2-0b5e7c2a-3");
    for named in ["web1", "web2", "6a1f"] {
        assert!(alert.summary.contains(named), "{named}: {}", alert.summary);
    }

    let mut config = AlertsConfig::default();
    config.builtin.cloned_agent = false;
    let (mut off, kept) = engine(&config);
    off.cloned(cloned());
    assert!(kept.lock().unwrap().is_empty());
}

fn clock_set(session: u32, time: i64, step_ns: i64) -> Event {
    Event {
        time: Timestamp(time),
        host: "db1".into(),
        boot_id: BootId("5d9a0c3e-0000-4000-8000-000000000001".into()),
        session: custos_proto::AuditSessionId(session),
        seq: custos_proto::Seq(9),
        process: None,
        event: EventBody::ClockSet(custos_proto::event::ClockSet { step_ns }),
    }
}

/// A clock step raises clock_set by default, once for all the sessions open on the host
/// that recorded it, again for the next step; off when configured off.
#[test]
fn a_clock_step_alerts_once_per_host_and_step() {
    let (mut on, kept) = engine(&AlertsConfig::default());
    let now = 1_764_900_000_000_000_000;
    let back = -3_600_000_000_000;
    on.event(&clock_set(1, now, back));
    on.event(&clock_set(2, now + 1_000, back));
    on.event(&clock_set(1, now + 60_000_000_000, 5_000_000_000));
    let alerts = kept.lock().unwrap().clone();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].rule, "clock_set");
    assert_eq!(alerts[0].host, "db1");
    assert!(
        alerts[0].summary.contains("3600.000 s back"),
        "{}",
        alerts[0].summary
    );
    assert!(alerts[1].summary.contains("5.000 s forward"));

    let mut config = AlertsConfig::default();
    config.builtin.clock_set = false;
    let (mut off, kept) = engine(&config);
    off.event(&clock_set(1, now, back));
    assert!(kept.lock().unwrap().is_empty());
}

fn session_start(session: u32, remote: Option<&str>) -> Event {
    Event {
        time: Timestamp(1_764_900_000_000_000_000),
        host: "db1".into(),
        boot_id: BootId("5d9a0c3e-0000-4000-8000-000000000001".into()),
        session: custos_proto::AuditSessionId(session),
        seq: custos_proto::Seq(1),
        process: None,
        event: EventBody::SessionStart(custos_proto::event::SessionStart {
            login_uid: Some(custos_proto::Uid(1000)),
            login_user: Some("alice".into()),
            tty: None,
            tty_name: None,
            leader: custos_proto::Pid(100),
            leader_command: custos_proto::ByteString(b"sshd: alice [priv]".to_vec()),
            remote: remote.map(str::to_owned),
            found_running: false,
        }),
    }
}

fn fired(config: &AlertsConfig, events: &[Event]) -> Vec<(String, u32)> {
    let (mut engine, kept) = engine(config);
    for event in events {
        engine.event(event);
    }
    let alerts = kept.lock().unwrap().clone();
    alerts
        .iter()
        .map(|a| {
            let session = a.session.rsplit('-').next().unwrap().parse().unwrap();
            (a.rule.clone(), session)
        })
        .collect()
}

/// login_from_unknown_network fires for a session from outside alerts.known_networks, not for
/// one from inside or one without a remote address (a console); rules take CIDR lists with
/// `known`, and negation by remote_not_in.
#[test]
fn logins_from_unknown_networks_and_cidr_rules() {
    let starts = [
        session_start(1, Some("10.20.30.40:51234")),
        session_start(2, Some("203.0.113.9:40000")),
        session_start(3, None),
        session_start(4, Some("[2001:db8::7]:2222")),
    ];
    let mut config = AlertsConfig {
        known_networks: vec!["10.0.0.0/8".into(), "2001:db8::/32".into()],
        ..AlertsConfig::default()
    };
    config.builtin.login_from_unknown_network = true;
    assert_eq!(
        fired(&config, &starts),
        [("login_from_unknown_network".to_owned(), 2)]
    );

    let mut config = AlertsConfig {
        known_networks: vec!["10.0.0.0/8".into()],
        rules: vec![
            RuleConfig {
                name: "from_outside".into(),
                kind: Some("session_start".into()),
                remote_not_in: Some(vec!["known".into(), "2001:db8::/32".into()]),
                ..RuleConfig::default()
            },
            RuleConfig {
                name: "from_the_lab".into(),
                remote_in: Some(vec!["10.20.0.0/16".into()]),
                ..RuleConfig::default()
            },
        ],
        ..AlertsConfig::default()
    };
    assert_eq!(
        fired(&config, &starts),
        [
            ("from_the_lab".to_owned(), 1),
            ("from_outside".to_owned(), 2)
        ]
    );

    // Misconfigurations are named.
    config.known_networks.clear();
    let err = config.compile().err().unwrap();
    assert!(
        err.contains("alerts.rules[0].remote_not_in") && err.contains("known_networks"),
        "{err}"
    );
    let mut config = AlertsConfig::default();
    config.builtin.login_from_unknown_network = true;
    let err = config.compile().err().unwrap();
    assert!(
        err.contains("login_from_unknown_network: needs alerts.known_networks"),
        "{err}"
    );
    config.known_networks = vec!["10.0.0/8".into()];
    let err = config.compile().err().unwrap();
    assert!(
        err.contains("alerts.known_networks: \"10.0.0/8\" is not a network"),
        "{err}"
    );
}

fn of_session(seq: u64, event: EventBody) -> Event {
    Event {
        time: Timestamp(1_764_900_000_000_000_000),
        host: "db1".into(),
        boot_id: BootId("5d9a0c3e-0000-4000-8000-000000000001".into()),
        session: custos_proto::AuditSessionId(4),
        seq: custos_proto::Seq(seq),
        process: None,
        event,
    }
}

const MARK: &str = "MRN-4417-0042";

/// Alerts carry ids, user, host, rule and which field matched, never the event: the
/// command line, path or terminal data reach no sink (nor the collector's log line) unless
/// the rule sets `include_match`, and then only that field.
#[test]
fn alerts_name_the_matched_field_and_carry_its_value_only_when_the_rule_says() {
    let mut config = AlertsConfig::default();
    config.builtin.phi_paths = vec!["/srv/phi/**".into()];
    config.builtin.phi_write = true;
    config.rules = vec![
        RuleConfig {
            name: "grep-mrn".into(),
            kind: Some("exec".into()),
            argv: Some("MRN".into()),
            ..RuleConfig::default()
        },
        RuleConfig {
            name: "shown-mrn".into(),
            kind: Some("output".into()),
            data: Some("MRN".into()),
            include_match: true,
            ..RuleConfig::default()
        },
    ];
    let (mut engine, kept) = engine(&config);
    engine.event(&of_session(
        1,
        EventBody::SessionStart(
            serde_json::from_value(serde_json::json!({
                "login_uid": 1000, "login_user": "alice", "tty": 34816, "remote": "10.0.0.7",
                "leader": 1, "leader_command": "sshd: alice",
            }))
            .unwrap(),
        ),
    ));
    let exec: custos_proto::event::Exec = serde_json::from_value(serde_json::json!({
        "filename": "/usr/bin/grep", "argv": ["grep", MARK, "/srv/phi/list.txt"],
        "argv_len": 40, "cwd": "/srv/phi",
    }))
    .unwrap();
    engine.event(&of_session(2, EventBody::Exec(exec)));
    let open: custos_proto::event::Open = serde_json::from_value(serde_json::json!({
        "path": format!("/srv/phi/{MARK}.txt"), "syscall": "openat", "flags": 1,
        "access": "write", "mode": 0o644, "fd": 3,
    }))
    .unwrap();
    engine.event(&of_session(3, EventBody::Open(open)));
    let output: custos_proto::event::Output = serde_json::from_value(serde_json::json!({
        "tty": 34816, "data": format!("patient {MARK}\r\n"),
    }))
    .unwrap();
    engine.event(&of_session(4, EventBody::Output(output)));

    let alerts = kept.lock().unwrap().clone();
    let rules: Vec<&str> = alerts.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(rules, ["grep-mrn", "phi_write", "shown-mrn"], "{alerts:?}");
    for alert in &alerts {
        assert_eq!(alert.host, "db1");
        assert_eq!(alert.user.as_deref(), Some("alice"));
        assert_eq!(alert.session, "db1-5d9a0c3e-4");
    }
    let line = |alert: &Alert| serde_json::to_string(alert).unwrap();
    // Redacted: the exec's argv and the open's path, named only.
    for (alert, field, kind, seq) in [
        (&alerts[0], "argv", "exec", 2),
        (&alerts[1], "path", "open", 3),
    ] {
        assert!(!line(alert).contains(MARK), "{}", line(alert));
        assert!(!line(alert).contains("/srv/phi"), "{}", line(alert));
        let about = alert.event.as_ref().unwrap();
        assert_eq!((about.kind.as_str(), about.seq), (kind, seq));
        let matched = about.field.as_ref().unwrap();
        assert_eq!(matched.name, field);
        assert_eq!(matched.value, None);
        assert!(matched.redacted);
        assert!(
            alert.summary.contains(&format!("({field} redacted)")),
            "{}",
            alert.summary
        );
        let syslog = Syslog::new("udp:127.0.0.1:9", std::path::Path::new("/nonexistent"))
            .unwrap()
            .format(alert);
        assert!(!syslog.contains(MARK), "{syslog}");
    }
    // Included, as the rule asked: the matched data only.
    let shown = &alerts[2];
    let matched = shown.event.as_ref().unwrap().field.as_ref().unwrap();
    assert_eq!(matched.name, "data");
    assert_eq!(
        matched.value.as_deref(),
        Some(format!("patient {MARK}\r\n").as_str())
    );
    assert!(!matched.redacted);
    assert!(
        shown.summary.contains(&format!("(data: patient {MARK})")),
        "{}",
        shown.summary
    );
}
