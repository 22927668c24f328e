//! The spool's tests: sealing, recovery, chains across restarts, refusals and limits.
use custos_proto::{
    AuditSessionId, BootId, Event, EventBody, Seq, Timestamp, Tty,
    event::{Output, SessionEnd},
    wire::make_batch,
};

use super::*;

fn signer() -> BatchSigner {
    let key = rcgen::KeyPair::generate().unwrap();
    BatchSigner::from_key(&rustls_pki_types::PrivateKeyDer::Pkcs8(
        key.serialize_der().into(),
    ))
    .unwrap()
}

#[test]
fn signed_batches_chain_across_restarts_and_collected_segments() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let first = batch(&mut spool, 1, 10);
    spool.append_signed(first, &signer).unwrap();
    let head = spool.chain_head().unwrap();
    let signed = spool.read(head.seq).unwrap().header;
    assert_eq!(
        signed.link().unwrap().prev,
        BatchHash::default(),
        "the first names none"
    );
    assert_eq!(signed.link().unwrap().hash(), head.hash);
    let second = batch(&mut spool, 1, 10);
    spool.append_signed(second, &signer).unwrap();
    let second = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
    assert_eq!(second.link().unwrap().prev, head.hash);
    let head = spool.chain_head().unwrap();
    drop(spool);
    // Restarted with the batch still in its segment: the head is found there.
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert_eq!(spool.chain_head(), Some(head));
    // Every batch acknowledged and its segment deleted: the head is in spool.state.
    for (seq, _, _) in spool.pending_batches(10) {
        spool.ack(seq);
    }
    spool.collect().unwrap();
    assert_eq!(spool.pending(), 0);
    drop(spool);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert_eq!(spool.chain_head(), Some(head));
    let third = batch(&mut spool, 1, 10);
    spool.append_signed(third, &signer).unwrap();
    let third = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
    // (A restart skips to the next reserved block of numbers: the chain, not the numbers,
    // says which batch came before.)
    assert_eq!(third.link().unwrap().prev, head.hash);
    assert!(third.seq > head.seq);
}

/// A signed batch whose record no longer opens (here: the spool key replaced) is lost, but
/// its clear header still moves the chain: it may have reached the collector, and if not the
/// collector sees a break where the gap event explains it, never a fork.
#[test]
fn a_signed_batch_lost_in_the_spool_still_moves_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let signer = signer();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let first = batch(&mut spool, 1, 10);
    spool.append_signed(first, &signer).unwrap();
    let before = spool.chain_head().unwrap();
    let second = batch(&mut spool, 1, 10);
    spool.append_signed(second, &signer).unwrap();
    let lost = spool.chain_head().unwrap();
    // The state holds no head yet (written at open, before any batch): the segment has it.
    drop(spool);
    let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
    assert_eq!(seqs(&recovered.damaged), [before.seq, lost.seq]);
    assert_eq!(spool.chain_head(), Some(lost));
    let next = batch(&mut spool, 1, 10);
    spool.append_signed(next, &signer).unwrap();
    let next = spool.read(spool.chain_head().unwrap().seq).unwrap().header;
    assert_eq!(next.link().unwrap().prev, lost.hash);
    // Restarted again: the new batch opens and is the head, the two before stay lost.
    drop(spool);
    let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
    let (spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
    assert!(recovered.damaged.len() == 2 && spool.pending() == 1);
    assert_eq!(spool.chain_head().unwrap().seq, next.seq);
}

fn key() -> SpoolKey {
    SpoolKey::from_bytes(&[9; seal::KEY_LEN]).unwrap()
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(paths.len(), 1, "{paths:?}");
    paths.remove(0)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A batch of one terminal write printing `text`.
fn output_batch(spool: &mut Spool, text: &str) -> Batch {
    let seq = spool.allocate().unwrap();
    let event = Event {
        time: Timestamp(seq.0 as i64),
        host: "h".into(),
        boot_id: BootId("b".into()),
        session: AuditSessionId(7),
        seq: Seq(seq.0),
        process: None,
        event: EventBody::Output(Output {
            tty: Tty(34816),
            data: text.into(),
            uncaptured: 0,
            redacted: Default::default(),
        }),
    };
    make_batch(spool.id(), seq, &[event]).unwrap()
}

#[test]
fn what_a_session_printed_is_sealed_on_disk_and_reads_back() {
    const MARKER: &str = "MARKER-7f3a-patient-record";
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let b = output_batch(&mut spool, &format!("{MARKER}\r\n"));
    // The control: the batch's compressed events hold the marker as it was typed, so a
    // clear record would show it.
    assert!(contains(&b.events, MARKER.as_bytes()));
    assert!(contains(&record::encode_clear(&b), MARKER.as_bytes()));
    spool.append(&b).unwrap();
    let raw = fs::read(only_segment(dir.path())).unwrap();
    assert!(
        !contains(&raw, MARKER.as_bytes()),
        "the marker is on disk in clear"
    );
    assert_eq!(spool.read(b.header.seq).unwrap(), b);
    // Read back after a restart too.
    drop(spool);
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
    assert_eq!(spool.read(b.header.seq).unwrap(), b);
    // Refused for good: kept in rejected/, sealed as well, and readable with the key.
    let kept = spool.set_aside(b.header.seq).unwrap();
    assert!(!contains(&fs::read(&kept).unwrap(), MARKER.as_bytes()));
    assert_eq!(read_rejected(&key(), &kept).unwrap(), b);
    let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
    let err = read_rejected(&other, &kept).unwrap_err().to_string();
    assert!(err.contains("does not open with the spool key"), "{err}");
}

/// Writes `count` batches to a new spool and returns them with the spool's directory.
fn spooled(count: usize) -> (tempfile::TempDir, Vec<Batch>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let batches: Vec<Batch> = (0..count)
        .map(|i| output_batch(&mut spool, &format!("line {i}")))
        .collect();
    for b in &batches {
        spool.append(b).unwrap();
    }
    (dir, batches)
}

fn seqs(headers: &[BatchHeader]) -> Vec<BatchSeq> {
    headers.iter().map(|h| h.seq).collect()
}

#[test]
fn with_another_key_every_record_is_reported_lost() {
    let (dir, batches) = spooled(3);
    let other = SpoolKey::from_bytes(&[1; seal::KEY_LEN]).unwrap();
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, other).unwrap();
    assert_eq!(
        seqs(&recovered.damaged),
        seqs(&batches.iter().map(|b| b.header.clone()).collect::<Vec<_>>())
    );
    assert_eq!(spool.pending(), 0, "nothing unreadable is sent");
    // Numbers continue after them, and new batches are sealed with the new key.
    assert!(spool.allocate().unwrap() > batches[2].header.seq);
}

#[test]
fn an_altered_or_moved_record_is_reported_lost_and_the_rest_kept() {
    let (dir, batches) = spooled(4);
    let segment = only_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    let len = record::sealed_len(&batches[0]);
    assert_eq!(bytes.len(), 4 * len);
    // Records 0 and 1 swapped; in record 2 a byte of the sealed events flipped and the CRC
    // made to match (what a deliberate change would do); record 3 untouched.
    let (first, second) = (bytes[..len].to_vec(), bytes[len..2 * len].to_vec());
    bytes[..len].copy_from_slice(&second);
    bytes[len..2 * len].copy_from_slice(&first);
    let third = &mut bytes[2 * len..3 * len];
    let hlen = u32::from_le_bytes(third[4..8].try_into().unwrap()) as usize;
    third[len - 3] ^= 0x01;
    let crc = crc32c::crc32c(&third[record::PREFIX_LEN + hlen..]);
    third[16..20].copy_from_slice(&crc.to_le_bytes());
    fs::write(&segment, &bytes).unwrap();
    let (spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let mut lost = seqs(&recovered.damaged);
    lost.sort();
    assert_eq!(
        lost,
        [
            batches[0].header.seq,
            batches[1].header.seq,
            batches[2].header.seq
        ]
    );
    assert_eq!(recovered.skipped_bytes, 0);
    assert_eq!(spool.pending(), 1);
    assert_eq!(spool.read(batches[3].header.seq).unwrap(), batches[3]);
}

#[test]
fn a_record_altered_after_start_is_unreadable_when_sent() {
    let (dir, batches) = spooled(2);
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let segment = only_segment(dir.path());
    let mut bytes = fs::read(&segment).unwrap();
    // A byte of the first record's nonce: no CRC covers it, the seal does.
    bytes[record::PREFIX_LEN - 1] ^= 0x01;
    fs::write(&segment, &bytes).unwrap();
    assert!(matches!(
        spool.read(batches[0].header.seq),
        Err(SpoolError::Damaged(seq)) if seq == batches[0].header.seq
    ));
    // What the sender does with it: out of the queue, reported lost.
    spool.skip_unreadable(batches[0].header.seq);
    assert_eq!(
        spool.take_lost(),
        [(batches[0].header.clone(), GapReason::SpoolCorrupt)]
    );
    assert_eq!(spool.read(batches[1].header.seq).unwrap(), batches[1]);
    // Appended after: sealed at its own place, fine.
    let b = output_batch(&mut spool, "after");
    spool.append(&b).unwrap();
    assert_eq!(spool.read(b.header.seq).unwrap(), b);
}

#[test]
fn a_clear_segment_of_an_older_agent_still_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let old: Vec<Batch> = (0..2)
        .map(|i| output_batch(&mut spool, &format!("old {i}")))
        .collect();
    drop(spool);
    let clear: Vec<u8> = old.iter().flat_map(record::encode_clear).collect();
    let path = dir
        .path()
        .join("segments")
        .join(format!("{:020}.seg", old[0].header.seq.0));
    fs::write(&path, clear).unwrap();
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
    assert_eq!(spool.pending(), 2);
    for b in &old {
        assert_eq!(&spool.read(b.header.seq).unwrap(), b);
    }
    // New batches go to a new, sealed segment; the clear one goes once shipped.
    let new = output_batch(&mut spool, "new");
    spool.append(&new).unwrap();
    assert_eq!(spool.read(new.header.seq).unwrap(), new);
    for b in &old {
        spool.ack(b.header.seq);
    }
    spool.collect().unwrap();
    assert!(!path.exists());
    let sealed = fs::read(only_segment(dir.path())).unwrap();
    assert_eq!(sealed[..4], record::MAGIC);
}

fn batch(spool: &mut Spool, session: u32, padding: usize) -> Batch {
    let seq = spool.allocate().unwrap();
    let event = Event {
        time: Timestamp(seq.0 as i64),
        host: "h".into(),
        boot_id: BootId("b".into()),
        session: AuditSessionId(session),
        seq: Seq(seq.0),
        process: None,
        event: EventBody::SessionEnd(SessionEnd {
            duration_secs: padding as f64,
            ..Default::default()
        }),
    };
    let mut batch = make_batch(spool.id(), seq, &[event]).unwrap();
    // Incompressible padding to control sizes.
    batch
        .events
        .extend((0..padding).map(|i| (i * 7919 % 251) as u8));
    batch
}

#[test]
fn the_oldest_pending_batch_is_the_oldest_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert_eq!(spool.oldest_pending(), None);
    let b1 = batch(&mut spool, 1, 10);
    spool.append(&b1).unwrap();
    let first = spool.oldest_pending().expect("one pending");
    // Appended later, so told apart.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b2 = batch(&mut spool, 2, 10);
    spool.append(&b2).unwrap();
    assert_eq!(spool.oldest_pending(), Some(first));
    spool.ack(b1.header.seq);
    let second = spool.oldest_pending().expect("one pending");
    assert!(second > first);
    spool.ack(b2.header.seq);
    assert_eq!(spool.oldest_pending(), None);
}

#[test]
fn batches_survive_a_restart_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let id = spool.id().clone();
    let b1 = batch(&mut spool, 1, 10);
    let b2 = batch(&mut spool, 1, 10);
    spool.append(&b1).unwrap();
    spool.append(&b2).unwrap();
    assert_eq!(spool.read(b2.header.seq).unwrap(), b2);
    spool.ack(b1.header.seq);
    drop(spool);
    let (mut spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert_eq!(spool.id(), &id);
    assert!(recovered.damaged.is_empty() && recovered.skipped_bytes == 0);
    // Acks live in memory only: both come back (the collector recognises the resend).
    assert_eq!(spool.pending_batches(10)[0].0, b1.header.seq);
    spool.ack(b1.header.seq);
    spool.ack(b2.header.seq);
    spool.collect().unwrap();
    assert_eq!(spool.size(), 0);
    drop(spool);
    // Sequence numbers are never reused, even after every segment is gone.
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert!(spool.allocate().unwrap() > b2.header.seq);
}

#[test]
fn a_refused_batch_is_kept_private_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let b = batch(&mut spool, 1, 100);
    spool.append(&b).unwrap();
    let kept = spool.set_aside(b.header.seq).unwrap();
    assert_eq!(
        fs::metadata(&kept).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(spool.pending(), 0, "set aside, not sent again");
    assert_eq!(
        spool.take_lost(),
        [(b.header.clone(), GapReason::RefusedByCollector)],
        "its events are reported lost"
    );
    assert!(spool.take_lost().is_empty());
    // Younger than the period: kept; older: deleted.
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(spool.expire_rejected(hour).unwrap(), 0);
    let old = std::time::SystemTime::now() - 2 * hour;
    File::options()
        .write(true)
        .open(&kept)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert_eq!(spool.expire_rejected(hour).unwrap(), 1);
    assert!(!kept.exists());
}

#[test]
fn a_full_spool_drops_the_oldest_and_says_what() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 256 * 1024, key()).unwrap();
    let mut dropped = Vec::new();
    let mut seqs = Vec::new();
    for i in 0..40 {
        let b = batch(&mut spool, 1 + i % 2, 20_000);
        seqs.push(b.header.seq);
        dropped.extend(spool.append(&b).unwrap());
    }
    assert!(spool.size() <= 256 * 1024, "{}", spool.size());
    assert!(!dropped.is_empty());
    // The oldest went first, and nothing that is still there was reported dropped.
    assert_eq!(dropped[0].seq, seqs[0]);
    for header in &dropped {
        assert!(spool.read(header.seq).is_err());
    }
    assert!(spool.read(*seqs.last().unwrap()).is_ok());
}

#[test]
fn damaged_records_are_skipped_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (mut spool, _) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    let batches: Vec<Batch> = (0..4).map(|_| batch(&mut spool, 3, 100)).collect();
    for b in &batches {
        spool.append(b).unwrap();
    }
    drop(spool);
    let segment = fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&segment).unwrap();
    let len = record::sealed_len(&batches[0]);
    // Flip a payload byte of the second record, a header byte of the third, tear the fourth.
    bytes[len + len - 5] ^= 0xff;
    bytes[2 * len + record::PREFIX_LEN + 3] ^= 0xff;
    bytes.truncate(4 * len - 10);
    fs::write(&segment, &bytes).unwrap();
    let (spool, recovered) = Spool::open(dir.path(), 1 << 20, key()).unwrap();
    assert_eq!(spool.read(batches[0].header.seq).unwrap(), batches[0]);
    assert_eq!(recovered.damaged.len(), 1);
    assert_eq!(recovered.damaged[0].seq, batches[1].header.seq);
    assert!(recovered.skipped_bytes > 0);
    assert!(recovered.torn_bytes > 0);
    assert_eq!(spool.pending(), 1);
    // Sequence numbers continue after the highest seen, damaged ones included.
    let mut spool = spool;
    assert!(spool.allocate().unwrap() > batches[3].header.seq);
}
