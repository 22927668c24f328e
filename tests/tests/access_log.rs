//! The access log against someone who can write the collector's disk but holds no key: an entry
//! edited (its plain hash chain recomputed), an entry removed, the tail removed; each is named
//! by `custos verify --all` and by `custos access-log`. And what goes in it besides the
//! handlers' own entries: requests refused before a handler ran, holds set and released, the
//! retention setting. A real collector over HTTPS, no agent.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::path::{Path, PathBuf};

use custos_collector::audit::chain::entry_hash;
use custos_proto::{
    Timestamp,
    api::{AccessEntry, AccessLog, VerifyReport},
};
use custos_tests::{
    deployment::{Collector, Deployment},
    free_udp_address, https,
};
use rusqlite::{Connection, params};

struct Setup {
    deployment: Deployment,
    collector: Collector,
    admin: (PathBuf, PathBuf),
    auditor: (PathBuf, PathBuf),
}

fn setup() -> Setup {
    let deployment = Deployment::new(&[]);
    let admin = deployment.auditor("root-admin", "admin");
    let auditor = deployment.auditor("dana", "auditor");
    let collector = deployment.start_collector(&free_udp_address(), None);
    Setup {
        deployment,
        collector,
        admin,
        auditor,
    }
}

impl Setup {
    fn access_log(&self) -> Vec<AccessEntry> {
        let out = self
            .deployment
            .custos(&self.admin, &["access-log", "--json"])
            .ok();
        serde_json::from_str::<AccessLog>(&out)
            .expect("JSON access log")
            .entries
    }

    fn audit_db(&self) -> PathBuf {
        self.deployment.path("store").join("audit.sqlite")
    }

    fn restart(&mut self) {
        self.collector.daemon.stop();
        self.collector = self.deployment.start_collector(&free_udp_address(), None);
    }

    /// `custos verify --all` with the admin's certificate: exit status and output.
    fn verify(&self) -> (Option<i32>, String, VerifyReport) {
        let text = self.deployment.custos(&self.admin, &["verify", "--all"]);
        let json = self
            .deployment
            .custos(&self.admin, &["verify", "--all", "--json"]);
        let report = serde_json::from_str(&json.stdout).expect("JSON report");
        (text.status.code(), text.stdout, report)
    }
}

fn pair(identity: &(PathBuf, PathBuf)) -> (&Path, &Path) {
    (identity.0.as_path(), identity.1.as_path())
}

#[test]
fn requests_refused_before_a_handler_runs_are_in_the_access_log() {
    let setup = setup();
    let ca = setup.deployment.pki().join("ca.pem");
    let port = setup.deployment.api_port;
    let send = |who, method, path, body: &[u8]| {
        https::request(port, &ca, pair(who), method, path, body).expect("a response")
    };
    // A method the endpoint does not take.
    let status = send(&setup.auditor, "DELETE", "/v1/sessions", b"");
    assert!(status.contains(" 405 "), "{status}");
    // A body over the limit (2 MiB).
    let huge = vec![b' '; 3 << 20];
    let status = send(&setup.admin, "POST", "/v1/holds", &huge);
    assert!(status.contains(" 413 "), "{status}");
    // JSON of the wrong shape.
    let status = send(&setup.admin, "POST", "/v1/holds", br#"{"kind": 3}"#);
    assert!(status.contains(" 422 "), "{status}");
    // A query the extractor cannot read.
    let status = send(&setup.admin, "GET", "/v1/access-log?limit=many", b"");
    assert!(status.contains(" 400 "), "{status}");

    let log = setup.access_log();
    let refused = |who: &str, role: &str, target: &str, status: &str| {
        log.iter().any(|e| {
            e.who == who
                && e.role == role
                && e.peer.starts_with("127.0.0.1:")
                && e.action == "refused"
                && e.target == target
                && e.result.starts_with(&format!("refused: {status}"))
        })
    };
    assert!(
        refused(
            "dana",
            "auditor",
            "DELETE /v1/sessions",
            "405 Method Not Allowed"
        ),
        "{log:#?}"
    );
    assert!(refused(
        "root-admin",
        "admin",
        "POST /v1/holds",
        "413 Payload Too Large"
    ));
    assert!(refused(
        "root-admin",
        "admin",
        "POST /v1/holds",
        "422 Unprocessable Entity"
    ));
    assert!(refused(
        "root-admin",
        "admin",
        "GET /v1/access-log?limit=many",
        "400 Bad Request"
    ));
    // An unknown path was logged before, by its handler, and still is, once.
    send(&setup.auditor, "GET", "/v1/nothing", b"");
    let log = setup.access_log();
    assert_eq!(
        log.iter()
            .filter(|e| e.target.contains("/v1/nothing"))
            .count(),
        1,
        "{log:#?}"
    );
}

#[test]
fn holds_set_and_released_and_the_retention_setting_are_in_the_access_log() {
    let setup = setup();
    let custos = |args: &[&str]| setup.deployment.custos(&setup.admin, args).ok();
    custos(&["holds", "add", "--user", "custos-bob", "--reason", "case 7"]);
    let listed = custos(&["holds", "list"]);
    assert!(listed.contains("custos-bob"), "{listed}");
    custos(&["holds", "remove", "1"]);
    let log = setup.access_log();
    assert!(
        log.iter().any(|e| e.who == "root-admin"
            && e.action == "hold"
            && e.target == "set user custos-bob: case 7"
            && e.result == "ok: hold 1"),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|e| e.who == "root-admin"
            && e.action == "hold"
            && e.target == "release 1 (user custos-bob: case 7, set by root-admin)"
            && e.result == "ok"),
        "{log:#?}"
    );
    // The retention period in effect, written by the collector when it started with it.
    assert!(
        log.iter().any(|e| e.who == "collector"
            && e.role == "system"
            && e.action == "retention"
            && e.target == "keep 2192d, check every 1h"
            && e.result == "in effect"),
        "{log:#?}"
    );
}

/// What an attacker without keys does after editing: recompute every plain SHA-256 link.
fn recompute_plain_chain(conn: &Connection) {
    let rows: Vec<(i64, AccessEntry)> = conn
        .prepare(
            "SELECT id, time_ns, who, role, peer, action, target, result FROM access_log
             ORDER BY id",
        )
        .expect("select")
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                AccessEntry {
                    time: Timestamp(r.get(1)?),
                    who: r.get(2)?,
                    role: r.get(3)?,
                    peer: r.get(4)?,
                    action: r.get(5)?,
                    target: r.get(6)?,
                    result: r.get(7)?,
                },
            ))
        })
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut prev = Vec::new();
    for (id, entry) in rows {
        let hash = entry_hash(&prev, &entry).to_vec();
        conn.execute(
            "UPDATE access_log SET hash = ?1 WHERE id = ?2",
            params![hash, id],
        )
        .expect("update");
        prev = hash;
    }
}

/// Some reads by the auditor, to have entries to tamper with.
fn reads(setup: &Setup) {
    for _ in 0..3 {
        setup.deployment.custos(&setup.auditor, &["sessions"]).ok();
    }
}

#[test]
fn verify_names_an_access_log_entry_edited_with_its_chain_recomputed() {
    let mut setup = setup();
    reads(&setup);
    let (status, out, report) = setup.verify();
    assert_eq!(status, Some(0), "{out}");
    assert!(out.contains("OK       access log"), "{out}");
    assert!(report.access_log.expect("the access log checked").ok);

    setup.collector.daemon.stop();
    let conn = Connection::open(setup.audit_db()).expect("audit db");
    conn.execute(
        "UPDATE access_log SET who = 'someone-else' WHERE id = 2",
        [],
    )
    .expect("edit");
    recompute_plain_chain(&conn);
    drop(conn);
    setup.restart();
    let (status, out, report) = setup.verify();
    assert_eq!(status, Some(1), "{out}");
    assert!(
        out.contains(
            "access log: entry 2 was edited (its MAC does not match: the plain chain was \
             recomputed)"
        ),
        "{out}"
    );
    assert!(!report.access_log.expect("checked").ok);
    // `custos access-log` says so too.
    let shown = setup.deployment.custos(&setup.admin, &["access-log"]);
    assert_eq!(shown.status.code(), Some(1));
    assert!(
        shown.stderr.contains("entry 2 was edited"),
        "{}",
        shown.stderr
    );
}

#[test]
fn verify_names_an_access_log_entry_removed_and_a_tail_removed() {
    let mut setup = setup();
    reads(&setup);
    setup.collector.daemon.stop();
    let conn = Connection::open(setup.audit_db()).expect("audit db");
    let last: i64 = conn
        .query_row("SELECT max(id) FROM access_log", [], |r| r.get(0))
        .expect("last id");
    assert!(last >= 4, "{last} entries");
    // The tail: the last two entries, gone without a trace in the chains.
    conn.execute("DELETE FROM access_log WHERE id > ?1", params![last - 2])
        .expect("delete the tail");
    drop(conn);
    setup.restart();
    let (status, out, _) = setup.verify();
    assert_eq!(status, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "access log: entries missing after entry {}",
            last - 2
        )) && out.contains("names more entries than the log's"),
        "{out}"
    );

    // One from the middle, the plain chain recomputed.
    setup.collector.daemon.stop();
    let conn = Connection::open(setup.audit_db()).expect("audit db");
    conn.execute("DELETE FROM access_log WHERE id = 2", [])
        .expect("delete");
    recompute_plain_chain(&conn);
    drop(conn);
    setup.restart();
    let (status, out, _) = setup.verify();
    assert_eq!(status, Some(1), "{out}");
    assert!(
        out.contains("access log: entries missing after entry 1 (the next is entry 3)"),
        "{out}"
    );
}
