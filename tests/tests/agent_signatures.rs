//! The host vouches for its own data, through real QUIC and mutual TLS to a real collector: a
//! batch signed with the agent's certificate key is stored with its signature and `custos
//! verify --all` checks it and the agent's chain; a batch whose signature was made with another
//! key, or whose events were changed after signing, is refused for good (`bad_signature`),
//! logged, and not stored; a resend of a stored batch is still a duplicate.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use custos_pki::batch_signature::BatchSigner;
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    api::VerifyReport,
    event::Output,
    wire::{
        self, Batch, BatchHash, BatchLink, BatchSeq, BatchSignature, ErrorCode, Frame, SpoolId,
        make_batch,
    },
};
use custos_tests::{
    deployment::{Deployment, collector_command},
    free_udp_address,
    quic::{self, Answer},
};

const DELIVERY: Duration = Duration::from_secs(20);

fn output(host: &str, seq: u64, text: &str) -> Event {
    Event {
        time: Timestamp::now(),
        host: host.into(),
        boot_id: BootId("0b5e7c2a-51f4-4c39-9f0e-2d6f1c3a8b90".into()),
        session: AuditSessionId(77),
        seq: Seq(seq),
        process: None,
        event: EventBody::Output(Output {
            tty: Tty::from_parts(136, 3),
            data: ByteString::from(text),
            uncaptured: 0,
            redacted: Default::default(),
        }),
    }
}

/// Batch `seq` of spool `spool`, signed by `signer` as the link after `prev`.
fn signed(signer: &BatchSigner, seq: u64, prev: BatchHash, events: &[Event]) -> Batch {
    let spool = SpoolId("spool".into());
    let mut batch = make_batch(&spool, BatchSeq(seq), events).expect("a batch");
    let link = BatchLink {
        spool: &spool,
        seq: BatchSeq(seq),
        content: BatchHash::of_content(&batch.events),
        prev,
    };
    batch.header.signed = Some(BatchSignature {
        content: link.content,
        prev,
        signature: signer.sign(&link.message()).expect("signed"),
    });
    batch
}

fn frame(batch: &Batch) -> Vec<u8> {
    wire::encode_frame(&Frame::Batch(batch.clone()))
}

fn link_hash(batch: &Batch) -> BatchHash {
    batch.header.link().expect("signed").hash()
}

#[test]
fn a_forged_batch_signature_is_refused_and_a_genuine_one_verifies() {
    let deployment = Deployment::new(&[]);
    let pki = deployment.pki();
    let ca = pki.join("ca.pem");
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    let address: SocketAddr = listen.parse().expect("address");
    let host = deployment.host.clone();
    let agent: (PathBuf, PathBuf) = (
        pki.join(format!("issued/agent-{host}.pem")),
        pki.join(format!("issued/agent-{host}.key")),
    );
    collector_command(&[
        "pki",
        "issue",
        "agent",
        "another-host",
        "--dir",
        pki.to_str().expect("a UTF-8 path"),
    ]);
    let own_key = BatchSigner::load(&agent.1).expect("the agent's key");
    let other_key =
        BatchSigner::load(&pki.join("issued/agent-another-host.key")).expect("another key");

    let first = signed(
        &own_key,
        1,
        BatchHash::default(),
        &[output(&host, 1, "id\r\n")],
    );
    let second = signed(
        &own_key,
        2,
        link_hash(&first),
        &[output(&host, 2, "ls\r\n")],
    );
    // Signed with another agent's key, sent on this agent's connection.
    let forged = signed(
        &other_key,
        3,
        link_hash(&second),
        &[output(&host, 3, "x\r\n")],
    );
    // Signed by the agent, then its events swapped for others (the signed hash kept).
    let mut swapped = signed(
        &own_key,
        3,
        link_hash(&second),
        &[output(&host, 3, "rm\r\n")],
    );
    swapped.events = make_batch(
        &SpoolId("spool".into()),
        BatchSeq(3),
        &[output(&host, 3, "ok\r\n")],
    )
    .expect("a batch")
    .events;

    let answers = quic::requests(
        address,
        &ca,
        (&agent.0, &agent.1),
        &[
            frame(&first),
            frame(&second),
            frame(&forged),
            frame(&swapped),
            frame(&first),
        ],
    )
    .expect("the agent certificate connects");
    assert_eq!(answers[0], Answer::Ack { duplicate: false });
    assert_eq!(answers[1], Answer::Ack { duplicate: false });
    for (what, answer) in [("forged", &answers[2]), ("swapped", &answers[3])] {
        assert!(
            matches!(
                answer,
                Answer::Error {
                    code: ErrorCode::BadSignature,
                    ..
                }
            ),
            "{what}: {answer:?}"
        );
        assert!(!ErrorCode::BadSignature.is_transient());
    }
    assert_eq!(
        answers[4],
        Answer::Ack { duplicate: true },
        "a resend is a duplicate"
    );
    collector
        .daemon
        .wait_log(&["signature does not verify", &host], DELIVERY);
    let mut batches = deployment.stored_batches();
    batches.sort();
    assert_eq!(
        batches,
        vec![
            (host.clone(), "spool".to_owned(), 1),
            (host.clone(), "spool".to_owned(), 2)
        ],
        "nothing of the refused batches is stored"
    );

    // The stored batches carry the agent's signature, and the store the agent's certificate.
    let auditor = deployment.auditor("carol", "auditor");
    let out = deployment.custos(&auditor, &["verify", "--all", "--json"]);
    let report: VerifyReport = serde_json::from_str(&out.stdout).expect("JSON report");
    assert!(out.status.success(), "{report:?}");
    assert_eq!(report.results.len(), 1);
    assert_eq!(report.results[0].unsigned_chunks, 0, "{report:?}");
    assert_eq!(report.agents.len(), 1, "{report:?}");
    assert_eq!(
        (report.agents[0].agent.as_str(), report.agents[0].batches),
        (host.as_str(), 2)
    );
    assert!(report.agents[0].ok, "{report:?}");
    assert!(
        std::fs::read_dir(deployment.path("store").join("agents"))
            .expect("the store keeps agents' certificates")
            .count()
            == 1
    );
}
