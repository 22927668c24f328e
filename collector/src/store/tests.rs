//! The store end to end: storing once, reading back, sealing, group commit, crash recovery.
use custos_proto::{
    AuditSessionId, BootId, ByteString, Pid, Seq, Tty,
    event::{Output, SessionEnd},
    wire::{BatchSeq, SpoolId, make_batch},
};

use std::{fs, io::Write};

use custos_proto::{Event, EventBody, Timestamp, wire::Batch};

use super::*;
use crate::trust::{
    chunk::{self, BatchRef, ChunkHeader},
    seal::Seal,
};

fn event(seq: u64, body: EventBody) -> Event {
    Event {
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64),
        host: "db1".into(),
        boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
        session: AuditSessionId(7),
        seq: Seq(seq),
        process: None,
        event: body,
    }
}

pub(crate) fn output(seq: u64, text: &str) -> Event {
    event(
        seq,
        EventBody::Output(Output {
            tty: Tty::from_parts(136, 1),
            data: ByteString::from(text),
            uncaptured: 0,
            redacted: Default::default(),
        }),
    )
}

/// A store configuration in a temporary directory, with fresh keys.
pub(crate) fn fixture() -> (tempfile::TempDir, StoreConfig) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        dir: dir.path().join("store"),
        key_file: dir.path().join("store.key"),
        seal_key: dir.path().join("seal.key"),
        agent_ca: None,
    };
    generate_keys(
        &config.key_file,
        &config.seal_key,
        &dir.path().join("seal.pub"),
    )
    .unwrap();
    (dir, config)
}

pub(crate) fn batch(seq: u64, events: &[Event]) -> Batch {
    make_batch(&SpoolId("spool-a".into()), BatchSeq(seq), events).unwrap()
}

#[test]
fn stores_once_reads_back_and_seals() {
    let (_dir, config) = fixture();
    let mut store = Store::open(&config).unwrap();
    let first = batch(1, &[output(1, "hello"), output(2, " world")]);
    let id = match store.append(first.clone()).unwrap() {
        Appended::Stored {
            recording, chunk, ..
        } => {
            assert_eq!(chunk, 0);
            recording
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        store.append(first.clone()).unwrap(),
        Appended::Duplicate {
            recording: id.clone()
        }
    );
    let end = event(
        3,
        EventBody::SessionEnd(SessionEnd {
            duration_secs: 2.0,
            ..Default::default()
        }),
    );
    store.append(batch(2, std::slice::from_ref(&end))).unwrap();
    let events = store.read_events(&id).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let row = store.index().recording(&id).unwrap().unwrap();
    assert!(row.sealed);
    let seal: Seal =
        serde_json::from_slice(&fs::read(store.dir().join(seal_path(&row.path))).unwrap()).unwrap();
    assert_eq!(seal.chunks, 2);
    assert_eq!(seal.final_hash, row.last_hash.hex());
    let public: [u8; 32] = hex::decode(&seal.public_key).unwrap().try_into().unwrap();
    assert!(keys::verify_seal(
        &public,
        &Seal::message(&row.key, seal.chunks, &seal.final_hash),
        &hex::decode(&seal.signature).unwrap()
    ));
    let _ = Pid(0);
}

#[test]
fn a_group_chains_its_chunks_skips_repeats_and_isolates_a_bad_batch() {
    let (_dir, config) = fixture();
    let mut store = Store::open(&config).unwrap();
    let prepare = |batch: Batch| Prepared::new(std::sync::Arc::new(batch), Receipt::now()).unwrap();
    let mut other_session = output(1, "elsewhere");
    other_session.session = AuditSessionId(8);
    let mut bad_host = output(1, "x");
    bad_host.host = "../etc".into();
    let group = [
        prepare(batch(1, &[output(1, "a")])),
        prepare(batch(2, &[output(2, "b")])),
        prepare(batch(1, &[output(1, "a")])),
        prepare(make_batch(&SpoolId("spool-b".into()), BatchSeq(1), &[bad_host]).unwrap()),
        prepare(make_batch(&SpoolId("spool-c".into()), BatchSeq(1), &[other_session]).unwrap()),
    ];
    let stored = store.append_group(&group);
    let Ok(Appended::Stored {
        recording,
        chunk: 0,
        ..
    }) = &stored[0]
    else {
        panic!("{:?}", stored[0])
    };
    assert!(
        matches!(&stored[1], Ok(Appended::Stored { recording: r, chunk: 1, .. }) if r == recording),
        "{:?}",
        stored[1]
    );
    assert!(
        matches!(&stored[2], Ok(Appended::Duplicate { recording: r }) if r == recording),
        "{:?}",
        stored[2]
    );
    assert!(
        matches!(&stored[3], Err(StoreError::Refused(_))),
        "{:?}",
        stored[3]
    );
    let Ok(Appended::Stored {
        recording: other,
        chunk: 0,
        ..
    }) = &stored[4]
    else {
        panic!("{:?}", stored[4])
    };
    // Committed: a store opened afterwards sees both recordings whole and chained.
    drop(store);
    let store = Store::open(&config).unwrap();
    let verified = store.verify(recording).unwrap();
    assert!(verified.ok && verified.chunks == 2, "{verified:?}");
    assert!(store.verify(other).unwrap().ok);
    let events = store.read_events(recording).unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn a_crash_between_write_and_commit_is_replayed_and_a_torn_tail_cut() {
    let (_dir, config) = fixture();
    let (id, path) = {
        let mut store = Store::open(&config).unwrap();
        let Appended::Stored { recording, .. } = store.append(batch(1, &[output(1, "a")])).unwrap()
        else {
            panic!()
        };
        let row = store.index().recording(&recording).unwrap().unwrap();
        // Simulate a crash after the chunk of batch 2 reached the disk, before its commit:
        // write it with the store's own encoder, then "lose" the index update.
        let b2 = batch(2, &[output(2, "b")]);
        let (key_id, key) = store.keys.current();
        let header = ChunkHeader {
            version: chunk::VERSION,
            recording: row.key.clone(),
            index: 1,
            prev_hash: row.last_hash,
            key_id: key_id.to_owned(),
            nonce: [9; 24],
            batch: BatchRef {
                spool: b2.header.spool.clone(),
                seq: b2.header.seq,
            },
            events: 1,
            first_seq: Seq(2),
            last_seq: Seq(2),
            first_time: b2.header.first_time,
            last_time: b2.header.last_time,
            raw_len: b2.header.raw_len,
            received: Some(Timestamp::now()),
            host_clock_skewed: false,
            signed: None,
        };
        let (bytes, _) = chunk::encode(&header, &b2.events, key);
        let path = store.dir().join(&row.path);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(&bytes).unwrap();
        // And a torn third chunk after it.
        file.write_all(&bytes[..bytes.len() / 2]).unwrap();
        (recording, path)
    };
    let before = fs::metadata(&path).unwrap().len();
    let mut store = Store::open(&config).unwrap();
    assert!(fs::metadata(&path).unwrap().len() < before, "torn tail cut");
    let events = store.read_events(&id).unwrap();
    assert_eq!(
        events.len(),
        2,
        "the written but uncommitted chunk was replayed"
    );
    // The agent resends batch 2 (it never got the ack): stored once.
    assert!(matches!(
        store.append(batch(2, &[output(2, "b")])).unwrap(),
        Appended::Duplicate { .. }
    ));
    assert!(matches!(
        store.append(batch(3, &[output(3, "c")])).unwrap(),
        Appended::Stored { chunk: 2, .. }
    ));
    assert_eq!(store.read_events(&id).unwrap().len(), 3);
}

/// `events` as host `host` recorded them.
fn on_host(host: &str, events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.host = host.into();
            e
        })
        .collect()
}

/// Two hosts cloned from one image share a spool id: the same (spool, seq) from each is a
/// batch of each, stored for both; only a resend from the same agent is a duplicate.
#[test]
fn the_same_spool_and_seq_from_two_agents_is_stored_for_both() {
    let (_dir, config) = fixture();
    let mut store = Store::open(&config).unwrap();
    let from = |host: &str| batch(1, &on_host(host, &[output(1, "same")]));
    let Appended::Stored {
        recording: a,
        spool_shared_with,
        ..
    } = store.append(from("host-a")).unwrap()
    else {
        panic!("host-a's batch not stored")
    };
    assert!(spool_shared_with.is_empty(), "{spool_shared_with:?}");
    let stored_b = store.append(from("host-b")).unwrap();
    let Appended::Stored {
        recording: b,
        spool_shared_with,
        ..
    } = stored_b
    else {
        panic!("host-b's batch was taken for host-a's: {stored_b:?}")
    };
    assert_ne!(a, b);
    assert_eq!(spool_shared_with, vec!["host-a".to_owned()]);
    // Each agent's resend is its own duplicate; the spool is reported once per new agent.
    assert_eq!(
        store.append(from("host-a")).unwrap(),
        Appended::Duplicate {
            recording: a.clone()
        }
    );
    assert_eq!(
        store.append(from("host-b")).unwrap(),
        Appended::Duplicate {
            recording: b.clone()
        }
    );
    let Appended::Stored {
        spool_shared_with, ..
    } = store
        .append(batch(2, &on_host("host-b", &[output(2, "more")])))
        .unwrap()
    else {
        panic!("host-b's second batch not stored")
    };
    assert!(spool_shared_with.is_empty(), "{spool_shared_with:?}");
    assert_eq!(store.read_events(&a).unwrap()[0].host, "host-a");
    assert_eq!(store.read_events(&b).unwrap().len(), 2);

    // The rebuilt index keys the batches the same way: resends are still duplicates.
    drop(store);
    rebuild_index(&config).unwrap();
    let mut store = Store::open(&config).unwrap();
    assert_eq!(
        store.append(from("host-b")).unwrap(),
        Appended::Duplicate { recording: b }
    );
    let Appended::Stored {
        spool_shared_with, ..
    } = store.append(from("host-c")).unwrap()
    else {
        panic!("host-c's batch not stored")
    };
    assert_eq!(
        spool_shared_with,
        vec!["host-a".to_owned(), "host-b".to_owned()]
    );
}
