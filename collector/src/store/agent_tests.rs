//! What agents vouch for, against an attacker who can write the store and holds its keys but not
//! the agents': an event altered and re-encrypted with the store key is named by recording and
//! chunk; a whole recording removed from the middle of a host's stream is a break in that host's
//! chain naming the missing numbers; a removal the collector made on purpose (a signed tombstone)
//! verifies clean, a forged tombstone does not.
use std::{fs, path::Path, sync::Arc};

use custos_pki::{
    Role,
    batch_signature::BatchSigner,
    issue::{self, PkiDir, Validity},
};
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Timestamp, Tty,
    event::Output,
    wire::{Batch, BatchHash, BatchLink, BatchSeq, BatchSignature, Packer, SpoolId, make_batch},
};

use super::{tests::fixture, *};
use crate::trust::{chain::ChainReader, chunk};

/// An agent as the real one signs: its spool, the chain's head, its certificate key.
struct Agent {
    spool: SpoolId,
    next: u64,
    prev: BatchHash,
    signer: BatchSigner,
    certificate: Arc<Vec<u8>>,
}

impl Agent {
    /// The agent `db1`'s certificate from a new CA in `dir` (whose certificate is returned).
    fn new(dir: &Path) -> (Agent, std::path::PathBuf) {
        let pki = PkiDir::new(dir.join("pki"));
        issue::init(&pki, &["collector".into()], 10).unwrap();
        let (cert, key) =
            issue::issue(&pki, Role::Agent, "db1", Validity::days(1), None, false).unwrap();
        let certificate = custos_pki::files::read_certificates(&cert).unwrap()[0].to_vec();
        let agent = Agent {
            spool: SpoolId("spool-a".into()),
            next: 1,
            prev: BatchHash::default(),
            signer: BatchSigner::load(&key).unwrap(),
            certificate: Arc::new(certificate),
        };
        (agent, pki.ca_cert())
    }

    /// The next batch, of `events`, signed as the next link of the chain.
    fn batch(&mut self, events: &[Event]) -> Batch {
        let seq = BatchSeq(self.next);
        self.next += 1;
        let mut batch = make_batch(&self.spool, seq, events).unwrap();
        let link = BatchLink {
            spool: &self.spool,
            seq,
            content: BatchHash::of_content(&batch.events),
            prev: self.prev,
        };
        batch.header.signed = Some(BatchSignature {
            content: link.content,
            prev: link.prev,
            signature: self.signer.sign(&link.message()).unwrap(),
        });
        self.prev = link.hash();
        batch
    }

    /// Stores the agent's next batch as ingest does (with the certificate of its connection);
    /// the recording's id.
    fn send(&mut self, store: &mut Store, events: &[Event]) -> String {
        let receipt = Receipt {
            agent_certificate: Some(self.certificate.clone()),
            ..Receipt::now()
        };
        let prepared = Prepared::new(std::sync::Arc::new(self.batch(events)), receipt).unwrap();
        match store.append_group(std::slice::from_ref(&prepared)).pop() {
            Some(Ok(Appended::Stored { recording, .. })) => recording,
            other => panic!("not stored: {other:?}"),
        }
    }
}

fn output(session: u32, seq: u64, text: &str) -> Event {
    Event {
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
        host: "db1".into(),
        boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
        session: AuditSessionId(session),
        seq: Seq(seq),
        process: None,
        event: EventBody::Output(Output {
            tty: Tty::from_parts(136, 1),
            data: ByteString::from(text),
            uncaptured: 0,
            redacted: Default::default(),
        }),
    }
}

fn store_with_agent() -> (tempfile::TempDir, Store, Agent, StoreConfig) {
    let (dir, mut config) = fixture();
    let (agent, ca) = Agent::new(dir.path());
    config.agent_ca = Some(ca);
    let store = Store::open(&config).unwrap();
    (dir, store, agent, config)
}

fn all_ok(store: &Store) {
    for id in store.index().recording_ids().unwrap() {
        let result = store.verify(&id).unwrap();
        assert!(result.ok, "{result:?}");
        assert_eq!(result.unsigned_chunks, 0);
    }
    let agents = store.verify_agents().unwrap();
    assert!(agents.iter().all(|a| a.ok), "{agents:?}");
}

#[test]
fn an_event_altered_and_reencrypted_with_the_store_key_is_named_by_chunk() {
    let (_dir, mut store, mut agent, config) = store_with_agent();
    let id = agent.send(&mut store, &[output(7, 1, "ls")]);
    agent.send(
        &mut store,
        &[output(7, 2, "rm -rf /srv/data"), output(7, 3, "ok")],
    );
    agent.send(&mut store, &[output(7, 4, "exit")]);
    all_ok(&store);
    assert!(
        fs::read_dir(store.dir().join(certificates::DIR))
            .unwrap()
            .any(|f| f.unwrap().path().extension().is_some_and(|e| e == "der")),
        "the agent's certificate is kept in the store"
    );

    // The attacker rewrites the recording with the store key: chunk 1's first event changed,
    // every chunk re-encrypted and re-chained, and the index's length and hash set to match.
    let row = store.index().recording(&id).unwrap().unwrap();
    let path = store.dir().join(&row.path);
    let bytes = fs::read(&path).unwrap();
    let (key_id, key) = store.keys.current();
    let (mut forged, mut prev) = (Vec::new(), chunk::ChunkHash::default());
    for item in ChainReader::new(&bytes[..], &store.keys) {
        let found = item.unwrap();
        let mut header = found.raw.header.clone();
        let mut plaintext = found.plaintext.clone().unwrap();
        if header.index == 1 {
            let mut events = found.events().unwrap();
            events[0] = output(7, 2, "ls /srv/data");
            let (packed, raw_len) = Packer::new().pack(&events);
            (plaintext, header.raw_len) = (packed, raw_len);
        }
        header.prev_hash = prev;
        header.key_id = key_id.to_owned();
        let (encoded, hash) = chunk::encode(&header, &plaintext, key);
        forged.extend_from_slice(&encoded);
        prev = hash;
    }
    fs::write(&path, &forged).unwrap();
    let index = crate::index::sqlite::crypt::connection(
        &super::index_path(&config.dir),
        &crate::index::IndexKeys::new(&store.keys),
    )
    .unwrap();
    index
        .execute(
            "UPDATE recordings SET stored_len = ?1, last_hash = ?2 WHERE id = ?3",
            rusqlite::params![forged.len() as i64, prev.0.to_vec(), id],
        )
        .unwrap();
    drop(index);

    let result = store.verify(&id).unwrap();
    assert!(!result.ok);
    assert_eq!(
        result.problems,
        vec![
            "chunk 1: batch 2 of spool spool-a from db1: its events are not what the agent \
             signed (their hash differs from the signed content hash): altered"
                .to_owned()
        ],
        "{result:?}"
    );

    // Claiming the altered content in the stored signature instead: the signature fails.
    let mut chunks = Vec::new();
    let mut prev = chunk::ChunkHash::default();
    for item in ChainReader::new(&forged[..], &store.keys) {
        let found = item.unwrap();
        let mut header = found.raw.header.clone();
        if header.index == 1
            && let Some(signed) = &mut header.signed
        {
            signed.content = BatchHash::of_content(found.plaintext.as_deref().unwrap());
        }
        header.prev_hash = prev;
        let (encoded, hash) = chunk::encode(&header, found.plaintext.as_deref().unwrap(), key);
        chunks.extend_from_slice(&encoded);
        prev = hash;
    }
    fs::write(&path, &chunks).unwrap();
    let index = crate::index::sqlite::crypt::connection(
        &super::index_path(&config.dir),
        &crate::index::IndexKeys::new(&store.keys),
    )
    .unwrap();
    index
        .execute(
            "UPDATE recordings SET stored_len = ?1, last_hash = ?2 WHERE id = ?3",
            rusqlite::params![chunks.len() as i64, prev.0.to_vec(), id],
        )
        .unwrap();
    drop(index);
    let result = store.verify(&id).unwrap();
    assert_eq!(
        result.problems,
        vec![
            "chunk 1: batch 2 of spool spool-a from db1: the agent's signature does not verify \
             (the stored hashes or numbers were altered)"
                .to_owned()
        ],
        "{result:?}"
    );
    // The agent's chain does not count the altered batch, also were the recording missing from
    // the index (the chain check reads the files).
    let index = crate::index::sqlite::crypt::connection(
        &super::index_path(&config.dir),
        &crate::index::IndexKeys::new(&store.keys),
    )
    .unwrap();
    index
        .execute("DELETE FROM recordings WHERE id = ?1", [&id])
        .unwrap();
    drop(index);
    let agents = store.verify_agents().unwrap();
    assert!(!agents[0].ok, "{agents:?}");
    assert!(
        agents[0].problems[0]
            .starts_with("seq 2 (recording db1-3ceb1d62-7 chunk 1) is not counted"),
        "{agents:?}"
    );
    assert!(
        agents[0].problems[1].starts_with("batches after seq 1 and before seq 3 are missing"),
        "{agents:?}"
    );
}

#[test]
fn a_recording_removed_from_the_middle_of_a_hosts_stream_is_a_named_break() {
    let (_dir, mut store, mut agent, _config) = store_with_agent();
    agent.send(&mut store, &[output(1, 1, "first session")]);
    let middle = agent.send(&mut store, &[output(2, 1, "second session")]);
    agent.send(&mut store, &[output(2, 2, "second session, more")]);
    agent.send(&mut store, &[output(3, 1, "third session")]);
    all_ok(&store);

    // Files and index row gone, as someone who can write the store would do it.
    let row = store.index().recording(&middle).unwrap().unwrap();
    fs::remove_file(store.dir().join(&row.path)).unwrap();
    let writer = store.index.writer().unwrap();
    writer.delete_recording(&middle).unwrap();
    writer.commit().unwrap();
    for id in store.index().recording_ids().unwrap() {
        assert!(
            store.verify(&id).unwrap().ok,
            "each remaining recording is whole"
        );
    }
    let agents = store.verify_agents().unwrap();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let chain = &agents[0];
    assert_eq!(
        (chain.agent.as_str(), chain.spool.as_str()),
        ("db1", "spool-a")
    );
    assert!(!chain.ok);
    assert_eq!(chain.problems.len(), 1, "{chain:?}");
    assert!(
        chain.problems[0].starts_with(
            "batches after seq 1 and before seq 4 are missing: seq 4 (recording db1-3ceb1d62-3 \
             chunk 0) names a previous batch that is not stored"
        ),
        "{chain:?}"
    );
}

#[test]
fn a_purge_with_its_tombstone_verifies_and_a_forged_tombstone_does_not() {
    let (_dir, mut store, mut agent, _config) = store_with_agent();
    agent.send(&mut store, &[output(1, 1, "first session")]);
    let middle = agent.send(&mut store, &[output(2, 1, "second session")]);
    agent.send(&mut store, &[output(3, 1, "third session")]);
    store
        .purge(&middle, "retention period passed", "retention: test")
        .unwrap();
    assert!(store.index().recording(&middle).unwrap().is_none());
    let agents = store.verify_agents().unwrap();
    assert!(agents.iter().all(|a| a.ok), "{agents:?}");
    assert_eq!((agents[0].batches, agents[0].removed), (2, 1));

    // A tombstone made up by someone without the seal key counts for nothing.
    let path = fs::read_dir(store.dir().join(tombstones::DIR))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains(&middle))
        .expect("the purged recording's tombstone");
    let mut tombstone: crate::trust::tombstone::Tombstone =
        serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    tombstone.body = tombstone.body.replace("retention period passed", "routine");
    fs::write(&path, serde_json::to_vec(&tombstone).unwrap()).unwrap();
    let agents = store.verify_agents().unwrap();
    let broken: Vec<&String> = agents.iter().flat_map(|a| &a.problems).collect();
    assert_eq!(broken.len(), 2, "{agents:?}");
    assert!(broken[0].starts_with("batches after seq 1 and before seq 3 are missing"));
    assert!(broken[1].contains("does not verify with the collector's seal key"));
}
