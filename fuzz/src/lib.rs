//! What the fuzz targets (`fuzz_targets/`) and the seed generator (`examples/seeds.rs`) share:
//! the agent's spool record reader, the fixed keys the targets read with, the walks over a
//! spool segment and a recording the daemons do (with their invariants asserted), and valid
//! encoded values to seed the corpora with.
//!
//! Two readers are compiled here from their own sources, included by path: the agent's spool
//! record framing and spool key (the agent is a binary crate whose build compiles its eBPF
//! programs), and the store's chunk format, chain reader and key ring (custos-trust's other
//! modules bring SQLite and the PKI, which would double the time CI spends building this).
use custos_proto::{
    AuditSessionId, BootId, ByteString, Event, EventBody, Gid, Pid, Seq, Timestamp, Tty, Uid,
    event::{Exec, Exit, Gap, GapReason, Input, Open, Output, Process, SessionEnd, SessionStart},
    wire::{self, Batch, BatchHash, BatchSeq, BatchSignature, SpoolId},
};

/// The store's chunk reader (`trust/src/chain.rs`).
#[allow(dead_code)]
#[path = "../../trust/src/chain.rs"]
pub mod chain;
/// The store's chunk format (`trust/src/chunk.rs`).
#[allow(dead_code)]
#[path = "../../trust/src/chunk.rs"]
pub mod chunk;
/// The store's key ring (`trust/src/keys.rs`).
#[allow(dead_code)]
#[path = "../../trust/src/keys.rs"]
pub mod keys;

use chain::{ChainBreak, ChainReader};
use chunk::{BatchRef, ChunkHash, ChunkHeader, RecordingKey};
use keys::KeyRing;

/// The agent's spool record format (`agent/src/spool/record.rs`).
#[allow(dead_code)]
#[path = "../../agent/src/spool/record.rs"]
pub mod record;
/// The agent's spool key (`agent/src/spool/seal.rs`).
#[allow(dead_code)]
#[path = "../../agent/src/spool/seal.rs"]
pub mod seal;

use record::{Found, Place};
use seal::SpoolKey;

/// The spool key the spool target reads with (and its seeds are sealed with).
pub const SPOOL_KEY: [u8; 32] = [0x5a; 32];
/// The segment id the spool target's bytes lie in (part of what a record's seal is bound to).
pub const SEGMENT_ID: u64 = 1;
/// The store key the chunk target decrypts with (and its seeds are encrypted with).
pub const STORE_KEY: [u8; 32] = [7; 32];
pub const STORE_KEY_ID: &str = "k1";

pub fn spool_key() -> SpoolKey {
    SpoolKey::from_bytes(&SPOOL_KEY).expect("32 bytes are a spool key")
}

pub fn key_ring() -> KeyRing {
    KeyRing::single(STORE_KEY_ID, STORE_KEY)
}

/// Walks a spool segment's bytes as the agent's recovery does (`Spool::read_segments`): past a
/// record (opened or not) by its length, past unreadable bytes to the next magic, stopping at a
/// torn end. Returns what was found at each offset. Panics when the reader breaks an invariant
/// the recovery relies on: each step moves forward and stays inside `bytes`.
pub fn walk_segment(bytes: &[u8], key: &SpoolKey) -> Vec<(usize, Found)> {
    let mut found = Vec::new();
    let mut offset = 0usize;
    while offset < bytes.len() {
        let place = Place::Segment {
            id: SEGMENT_ID,
            offset: offset as u64,
        };
        let here = record::read(&bytes[offset..], key, place);
        let next = match &here {
            Found::Record { len, .. }
            | Found::DamagedPayload { len, .. }
            | Found::Unopened { len, .. } => offset + len,
            Found::Damaged => record::resync(bytes, offset).unwrap_or(bytes.len()),
            Found::Truncated => bytes.len(),
        };
        assert!(
            next > offset && next <= bytes.len(),
            "spool reader stepped from {offset} to {next} of {}: {here:?}",
            bytes.len()
        );
        found.push((offset, here));
        offset = next;
    }
    found
}

/// Reads a recording's bytes as the store does (with the store key, or public material only),
/// decoding the events of each chunk that passes. Panics when the reader breaks an invariant:
/// a chunk's span is inside `bytes`, chunks are yielded in order, and after a break that ends
/// the chain nothing more is yielded.
pub fn walk_recording(bytes: &[u8], keys: Option<&KeyRing>) -> (usize, Vec<ChainBreak>) {
    let mut chunks = 0;
    let mut breaks = Vec::new();
    let mut last_end = 0;
    let mut ended = false;
    for item in ChainReader::with_keys(bytes, keys) {
        assert!(
            !ended,
            "chain reader went on after a break that ends the chain"
        );
        match item {
            Ok(chunk) => {
                assert!(
                    chunk.start >= last_end && chunk.start < chunk.end && chunk.end <= bytes.len(),
                    "chunk span {}..{} after {last_end} in {} bytes",
                    chunk.start,
                    chunk.end,
                    bytes.len()
                );
                last_end = chunk.end;
                chunks += 1;
                if keys.is_some() {
                    // The store decodes what it decrypted; errors are fine, panics are not.
                    let _ = chunk.events();
                }
            }
            Err(broken) => {
                ended = broken.ends_chain();
                breaks.push(broken);
            }
        }
    }
    (chunks, breaks)
}

// ---------------------------------------------------------------------------------------------
// Seeds: valid values of every kind the targets decode.

fn envelope(seq: u64, process: bool, event: EventBody) -> Event {
    Event {
        time: Timestamp(1_700_000_000_000_000_000 + seq as i64 * 1_000_000),
        host: "db1".into(),
        boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
        session: AuditSessionId(7),
        seq: Seq(seq),
        process: process.then(|| Process {
            pid: Pid(4242),
            tgid: Pid(4242),
            ppid: Pid(4200),
            uid: Uid(1000),
            euid: Uid(0),
            gid: Gid(1000),
            loginuid: Some(Uid(1000)),
            login_user: Some("alice".into()),
            user: Some("root".into()),
            tty: Some(Tty::from_parts(136, 3)),
            comm: ByteString::from("bash"),
        }),
        event,
    }
}

/// One session's events, of every common kind, numbered from `first`.
pub fn sample_events(first: u64) -> Vec<Event> {
    let tty = Tty::from_parts(136, 3);
    let bodies = vec![
        EventBody::SessionStart(SessionStart {
            login_uid: Some(Uid(1000)),
            login_user: Some("alice".into()),
            tty: Some(tty),
            tty_name: Some("pts/3".into()),
            leader: Pid(4200),
            leader_command: ByteString::from("sshd: alice@pts/3"),
            remote: Some("192.0.2.7".into()),
            found_running: false,
        }),
        EventBody::Exec(Exec {
            filename: ByteString::from("/usr/bin/cat"),
            argv: vec![
                ByteString::from("cat"),
                ByteString::from(&b"/etc/\xffpasswd"[..]),
            ],
            argv_len: 16,
            argv_truncated: false,
            cwd: ByteString::from("/home/alice"),
            cwd_truncated: false,
            redacted: [("ssn".to_string(), 1)].into(),
        }),
        EventBody::Open(Open {
            path: ByteString::from("/etc/passwd"),
            requested: Some(ByteString::from("../../etc/passwd")),
            syscall: "openat".into(),
            flags: 0,
            access: custos_proto::event::Access::Read,
            mode: 0,
            fd: Some(3),
            errno: None,
            error: None,
            path_incomplete: false,
        }),
        EventBody::Output(Output {
            tty,
            data: ByteString::from(&b"root:x:0:0:root:/root:/bin/bash\r\n\x1b[1m$ \x1b[0m"[..]),
            uncaptured: 0,
            redacted: Default::default(),
        }),
        EventBody::Input(Input {
            tty,
            data: ByteString::from("exit\r"),
            echoed: true,
            uncaptured: 3,
            redacted: Default::default(),
        }),
        EventBody::Gap(Gap {
            reason: GapReason::RingBufferFull,
            records: 2,
            bytes: 300,
            from: Timestamp(1),
            to: Timestamp(2),
            detail: Some("pts/3".into()),
        }),
        EventBody::Exit(Exit::from_status(256)),
        EventBody::SessionEnd(SessionEnd {
            duration_secs: 12.5,
            filtered: [("noise".to_string(), 4)].into(),
            redacted: Default::default(),
        }),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let process = !matches!(body, EventBody::Gap(_));
            envelope(first + i as u64, process, body)
        })
        .collect()
}

/// Batches of the sample session: unsigned, signed, and of a single event.
pub fn sample_batches() -> Vec<Batch> {
    let spool = SpoolId("0c6f2b1e".into());
    let events = sample_events(1);
    let mut batches = vec![
        wire::make_batch(&spool, BatchSeq(1), &events[..4]).expect("events"),
        wire::make_batch(&spool, BatchSeq(2), &events[4..]).expect("events"),
        wire::make_batch(&spool, BatchSeq(3), &events[7..]).expect("events"),
    ];
    batches[1].header.signed = Some(BatchSignature {
        content: BatchHash::of_content(&batches[1].events),
        prev: BatchHash([3; 32]),
        signature: vec![0x30, 0x44, 0x02, 0x20, 9, 9, 9, 9],
    });
    batches
}

/// Frame bodies (without their length prefix) of every kind, for the frame target.
pub fn sample_frames() -> Vec<Vec<u8>> {
    use wire::{Ack, ErrorCode, ErrorFrame, Frame, Hello, Welcome};
    let mut frames = vec![
        Frame::Hello(Hello {
            protocol: wire::PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            host: "db1".into(),
            boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
            spool: SpoolId("0c6f2b1e".into()),
            time: Some(Timestamp(1_700_000_000_000_000_000)),
        }),
        Frame::Welcome(Welcome {
            protocol: wire::PROTOCOL_VERSION,
            collector_version: "0.1.0".into(),
        }),
        Frame::Ack(Ack {
            spool: SpoolId("0c6f2b1e".into()),
            seq: BatchSeq(2),
            duplicate: true,
        }),
        Frame::Error(ErrorFrame {
            code: ErrorCode::TooLarge,
            message: "batch of 70000000 bytes".into(),
        }),
    ];
    frames.extend(sample_batches().into_iter().map(Frame::Batch));
    frames
        .iter()
        .map(|frame| wire::encode_frame(frame)[4..].to_vec())
        .collect()
}

/// Inputs of the batch target: the MessagePack of each sample batch's events (the target
/// compresses them itself, so that mutations reach the event decoder rather than zstd).
pub fn sample_event_arrays() -> Vec<Vec<u8>> {
    let events = sample_events(1);
    let mut arrays: Vec<Vec<u8>> = [&events[..4], &events[4..], &events[7..], &events[..]]
        .iter()
        .map(|events| rmp_serde::to_vec_named(events).expect("events serialize"))
        .collect();
    // One event of each kind alone.
    arrays.extend(
        events
            .chunks(1)
            .map(|one| rmp_serde::to_vec_named(one).expect("events serialize")),
    );
    arrays
}

/// Spool segments: sealed records at their offsets in segment [`SEGMENT_ID`], a record of the
/// clear version 1, and a segment with a torn record at its end.
pub fn sample_segments() -> Vec<Vec<u8>> {
    let key = spool_key();
    let batches = sample_batches();
    let sealed_segment = |batches: &[Batch]| {
        let mut bytes = Vec::new();
        for batch in batches {
            let place = Place::Segment {
                id: SEGMENT_ID,
                offset: bytes.len() as u64,
            };
            bytes.extend(record::encode(&key, batch, place));
        }
        bytes
    };
    let whole = sealed_segment(&batches);
    let mut torn = whole.clone();
    torn.truncate(whole.len() - 7);
    vec![
        sealed_segment(&batches[..1]),
        whole,
        torn,
        encode_clear(&batches[2]),
    ]
}

/// A record of spool version 1 (`CSP1`, clear), as agents before sealing wrote them.
fn encode_clear(batch: &Batch) -> Vec<u8> {
    let header = rmp_serde::to_vec_named(&batch.header).expect("header serializes");
    let mut out = Vec::new();
    out.extend_from_slice(&record::MAGIC_CLEAR);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&(batch.events.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&batch.events).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&batch.events);
    out
}

/// Recordings: chains of chunks encrypted under [`STORE_KEY`] as the store writes them, one of
/// them with a torn chunk at its end. The chunk target's first byte picks how it reads (with
/// the key or public material only): 0 here.
pub fn sample_recordings() -> Vec<Vec<u8>> {
    let recording = RecordingKey {
        host: "db1".into(),
        boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
        session: AuditSessionId(7),
    };
    let mut bytes = Vec::new();
    let mut prev = ChunkHash::default();
    for (index, batch) in sample_batches().into_iter().enumerate() {
        let header = ChunkHeader {
            version: chunk::VERSION,
            recording: recording.clone(),
            index: index as u64,
            prev_hash: prev,
            key_id: STORE_KEY_ID.into(),
            nonce: [index as u8 + 1; 24],
            batch: BatchRef {
                spool: batch.header.spool.clone(),
                seq: batch.header.seq,
            },
            events: batch.header.events,
            first_seq: batch.header.first_seq,
            last_seq: batch.header.last_seq,
            first_time: batch.header.first_time,
            last_time: batch.header.last_time,
            raw_len: batch.header.raw_len,
            received: Some(Timestamp(1_700_000_000_000_000_000)),
            host_clock_skewed: index == 1,
            signed: batch
                .header
                .signed
                .as_ref()
                .map(|signed| chunk::AgentSignature {
                    content: signed.content,
                    prev: signed.prev,
                    signature: signed.signature.clone(),
                    certificate: [4; 32],
                }),
        };
        let (encoded, hash) = chunk::encode(&header, &batch.events, &STORE_KEY);
        bytes.extend(encoded);
        prev = hash;
    }
    let first_len = chunk::parse(&bytes)
        .ok()
        .flatten()
        .map_or(bytes.len(), |raw| raw.encoded_len());
    let mut torn = bytes.clone();
    torn.truncate(bytes.len() - 5);
    [&bytes[..first_len], &bytes[..], &torn[..]]
        .iter()
        .map(|recording| [&[0u8][..], recording].concat())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_frames_decode() {
        for body in sample_frames() {
            let frame = wire::decode_frame(&body).expect("a seed frame decodes");
            if let wire::Frame::Batch(batch) = frame {
                wire::unpack_events(&batch.header, &batch.events, 1 << 20).expect("its events");
            }
        }
    }

    #[test]
    fn seed_segments_open_with_the_fixed_key() {
        let segments = sample_segments();
        let kinds = |bytes: &[u8]| -> Vec<&'static str> {
            walk_segment(bytes, &spool_key())
                .iter()
                .map(|(_, found)| match found {
                    Found::Record { .. } => "record",
                    Found::Truncated => "torn",
                    _ => "other",
                })
                .collect()
        };
        assert_eq!(kinds(&segments[1]), ["record"; 3]);
        assert_eq!(kinds(&segments[2]), ["record", "record", "torn"]);
        assert_eq!(kinds(&segments[3]), ["record"]);
    }

    #[test]
    fn seed_recordings_verify_and_decode() {
        let recordings = sample_recordings();
        let keys = key_ring();
        let (chunks, breaks) = walk_recording(&recordings[1][1..], Some(&keys));
        assert_eq!((chunks, breaks.len()), (3, 0), "{breaks:?}");
        for chunk in ChainReader::new(&recordings[1][1..], &keys) {
            chunk.expect("chunk").events().expect("events");
        }
        let (chunks, breaks) = walk_recording(&recordings[2][1..], None);
        assert_eq!(chunks, 2);
        assert!(breaks[0].ends_chain());
    }
}
