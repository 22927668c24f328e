//! Verifying without trusting the collector: `custos-collector export-bundle` writes the store's
//! files and the public material only, and `custos verify --offline` checks them with no
//! connection to the collector and without its index. Batches signed with the agent's real
//! certificate key go through real QUIC and mutual TLS to a real collector, which stores, seals,
//! reseals (a late batch) and purges (a retention purge, leaving a tombstone). The clean bundle
//! verifies; then each attack by someone who can write the files but holds no key (or only the
//! store key) is detected and named, each on its own copy of the bundle; a one-session bundle
//! names what it leaves out; and the online `verify --all` names the same cuts made in the
//! collector's own store with its index edited to agree, and a recording file the index does not
//! list. `verify ID` checks the access log too.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use custos_collector::trust::{
    chain::ChainReader,
    chunk::{self, ChunkHash},
    keys::KeyRing,
};
use custos_pki::batch_signature::BatchSigner;
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    api::VerifyReport,
    event::{Output, SessionEnd},
    wire::{self, Batch, BatchHash, BatchLink, BatchSeq, BatchSignature, Frame, SpoolId},
};
use custos_tests::{
    bin,
    deployment::{Deployment, collector_command},
    free_udp_address,
    quic::{self, Answer},
    wait_until,
};

const BOOT: &str = "0b5e7c2a-51f4-4c39-9f0e-2d6f1c3a8b90";

fn event(host: &str, session: u32, seq: u64, body: EventBody) -> Event {
    Event {
        time: Timestamp::now(),
        host: host.into(),
        boot_id: BootId(BOOT.into()),
        session: AuditSessionId(session),
        seq: Seq(seq),
        process: None,
        event: body,
    }
}

fn output(text: &str) -> EventBody {
    EventBody::Output(Output {
        tty: Tty::from_parts(136, 3),
        data: ByteString::from(text),
        uncaptured: 0,
        redacted: Default::default(),
    })
}

fn end() -> EventBody {
    EventBody::SessionEnd(SessionEnd {
        duration_secs: 1.0,
        filtered: Default::default(),
        redacted: Default::default(),
    })
}

/// The agent: signs each batch of its spool as the link after the one before.
struct Agent {
    signer: BatchSigner,
    host: String,
    seq: u64,
    prev: BatchHash,
    address: SocketAddr,
    ca: PathBuf,
    identity: (PathBuf, PathBuf),
}

impl Agent {
    /// Ships one batch of `session` holding `events` (event numbers `first..`), acknowledged.
    fn ship(&mut self, session: u32, first: u64, events: Vec<EventBody>) {
        self.seq += 1;
        let spool = SpoolId("spool".into());
        let events: Vec<Event> = events
            .into_iter()
            .enumerate()
            .map(|(i, body)| event(&self.host, session, first + i as u64, body))
            .collect();
        let mut batch: Batch =
            wire::make_batch(&spool, BatchSeq(self.seq), &events).expect("a batch");
        let link = BatchLink {
            spool: &spool,
            seq: BatchSeq(self.seq),
            content: BatchHash::of_content(&batch.events),
            prev: self.prev,
        };
        batch.header.signed = Some(BatchSignature {
            content: link.content,
            prev: self.prev,
            signature: self.signer.sign(&link.message()).expect("signed"),
        });
        self.prev = link.hash();
        let answers = quic::requests(
            self.address,
            &self.ca,
            (&self.identity.0, &self.identity.1),
            &[wire::encode_frame(&Frame::Batch(batch))],
        )
        .expect("the agent connects");
        assert_eq!(answers, vec![Answer::Ack { duplicate: false }]);
    }
}

/// `custos verify --offline DIR ARGS`, with no collector to connect to: (exit code, report).
fn verify_offline(dir: &Path, args: &[&str]) -> (Option<i32>, VerifyReport, String) {
    let output = Command::new(bin("custos"))
        .args(["verify", "--offline"])
        .arg(dir)
        .args(args)
        .arg("--json")
        .env("CUSTOS_CONFIG", "/dev/null")
        .env_remove("CUSTOS_COLLECTOR")
        .output()
        .expect("running custos");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|err| {
        panic!(
            "not a JSON report ({err}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code(), report, stdout)
}

/// Every problem of the report, each prefixed by what it is of.
fn problems(report: &VerifyReport) -> Vec<String> {
    let mut all = Vec::new();
    for r in &report.results {
        all.extend(r.problems.iter().map(|p| format!("{}: {p}", r.id)));
    }
    for a in &report.agents {
        all.extend(a.problems.iter().map(|p| format!("agent {}: {p}", a.agent)));
    }
    if let Some(log) = &report.access_log {
        all.extend(log.problems.iter().map(|p| format!("access log: {p}")));
    }
    all
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

/// The byte offset where chunk `n` of a recording file ends.
fn end_of_chunk(bytes: &[u8], n: usize) -> usize {
    let mut offset = 0;
    for _ in 0..=n {
        let raw = chunk::parse(&bytes[offset..])
            .expect("a chunk")
            .expect("whole");
        offset += raw.encoded_len();
    }
    offset
}

#[test]
fn an_exported_bundle_verifies_offline_and_each_attack_without_keys_is_named() {
    let deployment = Deployment::new(&[]);
    let pki = deployment.pki();
    let listen = free_udp_address();
    let config = deployment.collector_config(
        &listen,
        "[retention]\nkeep = \"2s\"\ncheck_every = \"1h\"\n",
    );
    let mut collector = deployment.start_collector_at(&config, None);
    let host = deployment.host.clone();
    let identity = (
        pki.join(format!("issued/agent-{host}.pem")),
        pki.join(format!("issued/agent-{host}.key")),
    );
    let mut agent = Agent {
        signer: BatchSigner::load(&identity.1).expect("the agent's key"),
        host: host.clone(),
        seq: 0,
        prev: BatchHash::default(),
        address: listen.parse().expect("address"),
        ca: pki.join("ca.pem"),
        identity,
    };
    let id = |session: u32| {
        custos_collector::trust::chunk::RecordingKey {
            host: host.clone(),
            boot_id: BootId(BOOT.into()),
            session: AuditSessionId(session),
        }
        .id()
    };
    let rec = |dir: &Path, session: u32, ext: &str| {
        dir.join("recordings")
            .join(&host)
            .join(BOOT)
            .join(format!("{session}.{ext}"))
    };

    // Session 70, expected to go: a retention purge removes it and leaves a tombstone.
    agent.ship(70, 1, vec![output("old\r\n"), end()]);
    let admin = deployment.auditor("root-admin", "admin");
    wait_until(
        "the retention period to pass",
        Duration::from_secs(30),
        || {
            let out = deployment.custos(&admin, &["retention", "purge"]).ok();
            out.contains(&format!("purged {}", id(70))).then_some(())
        },
    );
    // Session 71: three batches; 72: two; 73: two, sealed, then a late batch resealing it
    // (its first seal kept, as an attacker could); 74: the host's stream goes on after them.
    agent.ship(71, 1, vec![output("id\r\n")]);
    agent.ship(71, 2, vec![output("cat /srv/phi/record\r\n")]);
    agent.ship(71, 3, vec![end()]);
    agent.ship(72, 1, vec![output("scp out\r\n"), end()]);
    agent.ship(73, 1, vec![output("ls\r\n")]);
    agent.ship(73, 2, vec![end()]);
    let store = deployment.path("store");
    let first_seal = fs::read(rec(&store, 73, "seal")).expect("session 73 is sealed");
    agent.ship(73, 3, vec![output("late\r\n")]);
    agent.ship(74, 1, vec![output("whoami\r\n"), end()]);
    wait_until("session 73 to be resealed", Duration::from_secs(20), || {
        (fs::read(rec(&store, 73, "seal")).ok()? != first_seal).then_some(())
    });
    let auditor = deployment.auditor("carol", "auditor");

    // Online, one recording's check covers the access log too.
    let online: VerifyReport = serde_json::from_str(
        &deployment
            .custos(&auditor, &["verify", &id(71), "--json"])
            .ok(),
    )
    .expect("JSON report");
    let log = online
        .access_log
        .as_ref()
        .expect("verify ID checks the access log");
    assert!(log.ok && log.entries > 0, "{online:?}");

    let work = tempfile::tempdir().expect("temp dir");
    let bundle = work.path().join("bundle");
    let config_s = config.to_string_lossy().into_owned();
    let out = collector_command(&[
        "--config",
        &config_s,
        "export-bundle",
        "--out",
        bundle.to_str().expect("UTF-8"),
    ]);
    assert!(out.contains("wrote"), "{out}");
    // One session's bundle: its recording verifies, and the agent's chain names what is not in
    // it (the tombstones come whole: session 70's removal is accounted for).
    let partial = work.path().join("partial");
    let id74 = id(74);
    collector_command(&[
        "--config",
        &config_s,
        "export-bundle",
        "--out",
        partial.to_str().expect("UTF-8"),
        "--session",
        &id74,
    ]);
    collector.daemon.stop();
    let (code, report, text) = verify_offline(&partial, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report.results.len(), 1, "{text}");
    assert!(
        report.results[0].ok && report.results[0].id == id74,
        "{text}"
    );
    assert!(
        problems(&report)
            .iter()
            .any(|p| p.contains("batches after seq 1 and before seq 9 are missing")),
        "{text}"
    );

    // Public material only, private files.
    let mut names = Vec::new();
    for entry in walk(&bundle) {
        let meta = fs::metadata(&entry).expect("metadata");
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        assert_eq!(
            mode,
            if meta.is_dir() { 0o700 } else { 0o600 },
            "{}",
            entry.display()
        );
        let text = fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&text).contains("PRIVATE KEY"),
            "{} holds a private key",
            entry.display()
        );
        names.push(
            entry
                .strip_prefix(&bundle)
                .expect("inside")
                .display()
                .to_string(),
        );
    }
    for needed in [
        "manifest.json",
        "public/ca.pem",
        "public/seal.pub",
        "audit.sqlite",
    ] {
        assert!(names.iter().any(|n| n == needed), "{needed} in {names:?}");
    }
    assert!(names.iter().any(|n| n.starts_with("agents/")), "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("tombstones/")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|n| n.contains("index") || n.ends_with(".key")),
        "{names:?}"
    );
    let store_key = fs::read_to_string(deployment.path("store.key")).expect("store key");
    let store_hex: Vec<&str> = store_key
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    for entry in walk(&bundle) {
        let text = String::from_utf8_lossy(&fs::read(&entry).unwrap_or_default()).into_owned();
        assert!(
            store_hex.iter().all(|k| !text.contains(k)),
            "{}",
            entry.display()
        );
    }

    // Clean: the bundle, the bundle with the store key, and the plain store directory.
    let store_key_path = deployment.path("store.key");
    let store_key_s = store_key_path.to_str().expect("UTF-8");
    for (dir, args) in [
        (bundle.clone(), vec![]),
        (bundle.clone(), vec!["--store-key", store_key_s]),
    ] {
        let (code, report, text) = verify_offline(&dir, &args);
        assert_eq!(code, Some(0), "{:?}\n{text}", problems(&report));
        assert_eq!(report.results.len(), 4, "{text}");
        assert!(report.results.iter().all(|r| r.sealed), "{text}");
        assert_eq!(report.agents.len(), 1, "{text}");
        assert_eq!(
            (report.agents[0].batches, report.agents[0].removed),
            (8, 1),
            "{text}"
        );
    }
    let ca = pki.join("ca.pem");
    let seal_pub = pki.join("seal.pub");
    let (code, report, text) = verify_offline(
        &store,
        &[
            "--ca",
            ca.to_str().expect("UTF-8"),
            "--seal-pub",
            seal_pub.to_str().expect("UTF-8"),
        ],
    );
    assert_eq!(code, Some(0), "{:?}\n{text}", problems(&report));

    let attack = |name: &str, tamper: &dyn Fn(&Path), args: &[&str], expected: &[String]| {
        let copy = work.path().join(name);
        copy_dir(&bundle, &copy);
        tamper(&copy);
        let (code, report, text) = verify_offline(&copy, args);
        assert_eq!(code, Some(1), "{name}: {text}");
        let found = problems(&report);
        for want in expected {
            assert!(
                found.iter().any(|p| p.contains(want.as_str())),
                "{name}: no problem saying {want:?} in {found:#?}"
            );
        }
    };

    // Session 71 cut after its first chunk and its seal deleted (the index, which the verifier
    // never reads, could say anything): the agent's chain misses seq 2 and 3.
    attack(
        "truncated",
        &|dir| {
            let path = rec(dir, 71, "rec");
            let bytes = fs::read(&path).expect("recording");
            fs::write(&path, &bytes[..end_of_chunk(&bytes, 0)]).expect("truncate");
            fs::remove_file(rec(dir, 71, "seal")).expect("seal");
        },
        &[],
        &["batches after seq 2 and before seq 5 are missing".into()],
    );
    // Session 72 gone, recording and seal: the range of its batches is named.
    attack(
        "deleted",
        &|dir| {
            fs::remove_file(rec(dir, 72, "rec")).expect("recording");
            fs::remove_file(rec(dir, 72, "seal")).expect("seal");
        },
        &[],
        &["batches after seq 4 and before seq 6 are missing".into()],
    );
    // Session 73's first seal restored over its second: the seal's count is not the chain's.
    attack(
        "rolled-back",
        &|dir| fs::write(rec(dir, 73, "seal"), &first_seal).expect("old seal"),
        &[],
        &[format!(
            "{}: chunk 3: the recording ends after 3 chunks but its seal says 2",
            id(73)
        )],
    );
    // And with the recording cut to match the old seal: the agent's chain misses the late batch.
    attack(
        "rolled-back-and-cut",
        &|dir| {
            fs::write(rec(dir, 73, "seal"), &first_seal).expect("old seal");
            let path = rec(dir, 73, "rec");
            let bytes = fs::read(&path).expect("recording");
            fs::write(&path, &bytes[..end_of_chunk(&bytes, 1)]).expect("truncate");
        },
        &[],
        &["batches after seq 7 and before seq 9 are missing".into()],
    );
    // One event of session 71 altered with the store key, every chunk re-encrypted and
    // re-chained: the seal (no key for it) no longer matches, and with the store key the
    // agent's signature names the chunk.
    let altered = |dir: &Path| {
        let keys = KeyRing::load(&store_key_path).expect("store key");
        let path = rec(dir, 71, "rec");
        let bytes = fs::read(&path).expect("recording");
        let (key_id, key) = keys.current();
        let (mut forged, mut prev) = (Vec::new(), ChunkHash::default());
        for item in ChainReader::new(&bytes[..], &keys) {
            let found = item.expect("a clean chunk");
            let mut header = found.raw.header.clone();
            let mut plaintext = found.plaintext.clone().expect("decrypted");
            if header.index == 1 {
                let mut events = found.events().expect("events");
                events[0].event = output("cat /etc/motd\r\n");
                let batch = wire::make_batch(&header.batch.spool, header.batch.seq, &events)
                    .expect("a batch");
                (plaintext, header.raw_len) = (batch.events, batch.header.raw_len);
            }
            header.prev_hash = prev;
            header.key_id = key_id.to_owned();
            let (encoded, hash) = chunk::encode(&header, &plaintext, key);
            forged.extend_from_slice(&encoded);
            prev = hash;
        }
        fs::write(&path, &forged).expect("write");
    };
    attack(
        "altered",
        &altered,
        &[],
        &[format!(
            "{}: chunk 2: the last chunk's hash differs from the sealed one",
            id(71)
        )],
    );
    attack(
        "altered-with-key",
        &altered,
        &["--store-key", store_key_s],
        &[format!(
            "{}: chunk 1: batch 3 of spool spool from {host}: its events are not what the agent \
             signed",
            id(71)
        )],
    );
    // The access log: an entry from the middle, and the tail.
    attack(
        "access-entry",
        &|dir| {
            let conn = rusqlite::Connection::open(dir.join("audit.sqlite")).expect("audit");
            conn.execute("DELETE FROM access_log WHERE id = 2", [])
                .expect("delete");
        },
        &[],
        &["access log: entries missing after entry 1 (the next is entry 3)".into()],
    );
    attack(
        "access-tail",
        &|dir| {
            let conn = rusqlite::Connection::open(dir.join("audit.sqlite")).expect("audit");
            let last: i64 = conn
                .query_row("SELECT max(id) FROM access_log", [], |r| r.get(0))
                .expect("last");
            conn.execute("DELETE FROM access_log WHERE id > ?1", [last - 2])
                .expect("delete the tail");
        },
        &[],
        &["names more entries than the log's".into()],
    );

    // The first two attacks on the collector's own store, its index edited to agree (session 71
    // cut to one chunk and marked open; session 72's row deleted): the online `verify --all`
    // names them too, from the files and the agent's chain, whatever the index says.
    let path = rec(&store, 71, "rec");
    let bytes = fs::read(&path).expect("recording");
    let cut = end_of_chunk(&bytes, 0);
    let first = chunk::parse(&bytes).expect("a chunk").expect("whole");
    fs::write(&path, &bytes[..cut]).expect("truncate");
    fs::remove_file(rec(&store, 71, "seal")).expect("seal");
    fs::remove_file(rec(&store, 72, "rec")).expect("recording");
    fs::remove_file(rec(&store, 72, "seal")).expect("seal");
    // The index is encrypted: editing it takes the store key.
    let index = custos_collector::index::sqlite::crypt::connection(
        &store.join("index.sqlite"),
        &custos_collector::index::IndexKeys::new(
            &KeyRing::load(&store_key_path).expect("store key"),
        ),
    )
    .expect("index");
    index
        .execute(
            "UPDATE recordings SET sealed = 0, chunks = 1, stored_len = ?1, last_hash = ?2
             WHERE id = ?3",
            rusqlite::params![cut as i64, first.hash().0.to_vec(), id(71)],
        )
        .expect("edit the index");
    // Session 74's row goes too, its files kept: a recording hidden from the index.
    for removed in [id(72), id(74)] {
        for table in ["recordings WHERE id", "batches WHERE recording"] {
            index
                .execute(&format!("DELETE FROM {table} = ?1"), [&removed])
                .expect("delete from the index");
        }
    }
    drop(index);
    let config = deployment.collector_config(&listen, "");
    let _collector = deployment.start_collector_at(&config, None);
    let out = deployment.custos(&auditor, &["verify", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    let report: VerifyReport = serde_json::from_str(&out.stdout).expect("JSON report");
    let found = problems(&report);
    assert!(
        found
            .iter()
            .any(|p| p.contains("batches after seq 2 and before seq 6 are missing")),
        "{found:#?}"
    );
    assert!(
        found.contains(&format!(
            "{}: its recording file is in the store but the index does not list it",
            id(74)
        )),
        "{found:#?}"
    );
}

/// Every file and folder below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder).expect("listing") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path.clone());
            }
            found.push(path);
        }
    }
    found
}
