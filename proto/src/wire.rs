//! The agent-collector protocol, `custos/1` (specified for implementers in docs/protocol.md).
//!
//! Over QUIC with mutual TLS 1.3, every exchange is one bidirectional stream carrying one request
//! frame and one response frame. A frame is a 4-byte big-endian length and a MessagePack map
//! ([`Frame`]). A batch carries the events of one session, compressed with zstd; it is identified
//! by the agent's spool id and a sequence number, so that a batch sent twice is stored once.
//!
//! From protocol 2 every batch carries its agent's signature ([`BatchSignature`]): over the hash
//! of its body and the hash of the agent's previous batch in that spool, so a spool's batches form
//! a chain the agent vouches for ([`BatchLink`]). The message signed is built here; signing and
//! checking with the agent's certificate key are `custos_pki::batch_signature`'s.
//!
//! Everything here is pure: encoding, decoding, limits. The I/O lives in the agent's `ship`
//! and the collector's `ingest` modules.
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{AuditSessionId, BootId, Event, Seq, Timestamp};

/// ALPN protocol id; a new incompatible protocol gets a new id.
pub const ALPN: &[u8] = b"custos/1";
/// Version carried in hello and welcome frames: 2 since agents sign their batches.
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest version a collector still accepts (agents that send unsigned batches).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Default largest frame either side accepts.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;
/// Default largest decompressed batch.
pub const DEFAULT_MAX_BATCH_RAW: usize = 64 * 1024 * 1024;

/// Connection close code: a normal close.
pub const CLOSE_NORMAL: u32 = 0;
/// Connection close code: the peer presented no usable identity.
pub const CLOSE_NO_IDENTITY: u32 = 1;
/// Connection close code: the agent's certificate was revoked while it was connected.
pub const CLOSE_CERTIFICATE_REVOKED: u32 = 2;
/// Connection close code: the agent misbehaved (garbage frames, stalled streams) and is cut off
/// for a while; its new connections are refused with the same code until then.
pub const CLOSE_MISBEHAVING: u32 = 3;
/// Connection close code: the agent's certificate already has as many connections open as
/// `ingest.max_connections_per_identity` allows.
pub const CLOSE_TOO_MANY_CONNECTIONS: u32 = 4;

/// Identifies an agent's spool: created once with the spool, so that a new spool (a reinstall)
/// starts a new sequence space.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpoolId(pub String);

impl fmt::Display for SpoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Position of a batch in its spool, from 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BatchSeq(pub u64);

impl fmt::Display for BatchSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Batch(Batch),
    Ack(Ack),
    Error(ErrorFrame),
}

impl Frame {
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Batch(_) => "batch",
            Frame::Ack(_) => "ack",
            Frame::Error(_) => "error",
        }
    }
}

/// The agent introduces itself (first stream of a connection).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub agent_version: String,
    pub host: String,
    pub boot_id: BootId,
    pub spool: SpoolId,
    /// The agent's clock when it sent the hello: the collector compares it with its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

/// The collector's answer to a hello.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub collector_version: String,
}

/// What a batch holds, readable without decompressing it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchHeader {
    pub spool: SpoolId,
    pub seq: BatchSeq,
    pub host: String,
    pub boot_id: BootId,
    pub session: AuditSessionId,
    /// Event sequence numbers of the first and last event (of `session`).
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub events: u32,
    pub first_time: Timestamp,
    pub last_time: Timestamp,
    /// Size of the decompressed events.
    pub raw_len: u64,
    /// The agent's signature (protocol 2); absent in batches of protocol 1 agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<BatchSignature>,
}

impl BatchHeader {
    /// What this batch's signature vouches for, when it is signed.
    pub fn link(&self) -> Option<BatchLink<'_>> {
        let signed = self.signed.as_ref()?;
        Some(BatchLink {
            spool: &self.spool,
            seq: self.seq,
            content: signed.content,
            prev: signed.prev,
        })
    }
}

/// A SHA-256 hash of a batch's body, or of a batch's link (see [`BatchLink::hash`]).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchHash(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl BatchHash {
    /// The hash of a batch body: SHA-256 of the exact `events` bytes sent (compressed).
    pub fn of_content(body: &[u8]) -> BatchHash {
        BatchHash(sha2::Sha256::digest(body).into())
    }

    /// All zeros: the `prev` of a spool's first signed batch.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 32]
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for BatchHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex()[..16])
    }
}

use sha2::Digest as _;

/// An agent's signature on a batch (docs/protocol.md, "Batch signatures").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSignature {
    /// [`BatchHash::of_content`] of the batch's `events`.
    pub content: BatchHash,
    /// [`BatchLink::hash`] of the agent's previous batch in this spool; zeros for the first.
    pub prev: BatchHash,
    /// ECDSA P-256 with SHA-256 (ASN.1 DER) by the agent's certificate key over
    /// [`BatchLink::message`].
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// One link of an agent's chain of batches: what its signature covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLink<'a> {
    pub spool: &'a SpoolId,
    pub seq: BatchSeq,
    pub content: BatchHash,
    pub prev: BatchHash,
}

/// Starts every signed batch message (domain separation: no other signature of the agent's key
/// can be taken for a batch's).
pub const BATCH_SIGNATURE_CONTEXT: &[u8] = b"custos batch v1\0";

impl BatchLink<'_> {
    /// The bytes signed: [`BATCH_SIGNATURE_CONTEXT`], the spool id's length (u32 big-endian)
    /// and UTF-8 bytes, `seq` (u64 big-endian), `content` (32 bytes), `prev` (32 bytes).
    pub fn message(&self) -> Vec<u8> {
        let spool = self.spool.0.as_bytes();
        let mut out = Vec::with_capacity(BATCH_SIGNATURE_CONTEXT.len() + 4 + spool.len() + 72);
        out.extend_from_slice(BATCH_SIGNATURE_CONTEXT);
        out.extend_from_slice(&(spool.len() as u32).to_be_bytes());
        out.extend_from_slice(spool);
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(&self.content.0);
        out.extend_from_slice(&self.prev.0);
        out
    }

    /// The link's hash, which the next batch of the spool names as its `prev`: SHA-256 of
    /// [`BatchLink::message`].
    pub fn hash(&self) -> BatchHash {
        BatchHash(sha2::Sha256::digest(self.message()).into())
    }
}

/// Events of one session: `events` is zstd(MessagePack array of [`Event`] maps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub header: BatchHeader,
    #[serde(with = "serde_bytes")]
    pub events: Vec<u8>,
}

/// The batch is durable at the collector (stored now, or `duplicate`: stored before).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub spool: SpoolId,
    pub seq: BatchSeq,
    pub duplicate: bool,
}

/// A request the collector refused; `code` says whether sending it again can help.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a valid frame or batch. Permanent.
    Malformed,
    /// Over a size limit. Permanent.
    TooLarge,
    /// The batch names another host than the certificate. Permanent.
    IdentityMismatch,
    /// Unsupported protocol version. Permanent.
    Unsupported,
    /// The collector could not store it now. Retry later.
    Unavailable,
    /// The batch's signature does not verify with the sender's certificate key, or its
    /// content hash is not its body's. Permanent.
    BadSignature,
}

impl ErrorCode {
    /// Every code, for mappings derived from [`ErrorCode::stream_code`].
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::Malformed,
        ErrorCode::TooLarge,
        ErrorCode::IdentityMismatch,
        ErrorCode::Unsupported,
        ErrorCode::Unavailable,
        ErrorCode::BadSignature,
    ];

    /// Retrying the same request can succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }

    /// QUIC application error code used when a stream is reset for this reason.
    pub fn stream_code(self) -> u32 {
        match self {
            ErrorCode::Malformed => 0x11,
            ErrorCode::TooLarge => 0x12,
            ErrorCode::IdentityMismatch => 0x13,
            ErrorCode::Unsupported => 0x14,
            ErrorCode::Unavailable => 0x15,
            ErrorCode::BadSignature => 0x16,
        }
    }

    /// The reason of a stream reset with `code` (the inverse of [`ErrorCode::stream_code`]);
    /// `None` for a code of no known reason.
    pub fn from_stream_code(code: u64) -> Option<ErrorCode> {
        Self::ALL
            .into_iter()
            .find(|c| u64::from(c.stream_code()) == code)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("frame of {len} bytes is over the limit of {limit}")]
    FrameTooLarge { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("batch of {len} bytes decompressed is over the limit of {limit}")]
    BatchTooLarge { len: u64, limit: usize },
    #[error("malformed batch: {0}")]
    BadBatch(String),
}

impl WireError {
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } | WireError::BatchTooLarge { .. } => {
                ErrorCode::TooLarge
            }
            WireError::Malformed(_) | WireError::BadBatch(_) => ErrorCode::Malformed,
        }
    }
}

/// A frame with its length prefix.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let body = rmp_serde::to_vec_named(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The length announced by a frame's 4-byte prefix, checked against `limit`.
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(WireError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame body (without its prefix).
pub fn decode_frame(body: &[u8]) -> Result<Frame, WireError> {
    rmp_serde::from_slice(body).map_err(|err| WireError::Malformed(err.to_string()))
}

/// The zstd level batch bodies are compressed at.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Packs batch bodies, keeping what each one needs between calls: the zstd context (its
/// tables are about a MiB at [`COMPRESSION_LEVEL`]; made afresh per batch, allocating and
/// zeroing them cost more than compressing highly repetitive terminal output) and the
/// MessagePack buffer. An agent keeps one for its spool.
pub struct Packer {
    compressor: zstd::bulk::Compressor<'static>,
    raw: Vec<u8>,
    packed: Vec<u8>,
}

/// Buffers above this size are not kept between batches (a rare huge batch does not stay
/// resident).
const KEEP_BUFFER: usize = 4 * 1024 * 1024;

impl Packer {
    pub fn new() -> Packer {
        Packer {
            compressor: zstd::bulk::Compressor::new(COMPRESSION_LEVEL)
                .expect("zstd accepts its own default level"),
            raw: Vec::new(),
            packed: Vec::new(),
        }
    }

    /// Packs the events of one session into a batch body: zstd(MessagePack). Returns the body
    /// and the uncompressed size.
    pub fn pack(&mut self, events: &[Event]) -> (Vec<u8>, u64) {
        self.raw.clear();
        if rmp_serde::encode::write_named(&mut self.raw, events).is_err() {
            self.raw.clear();
        }
        self.packed.clear();
        self.packed
            .reserve(zstd::zstd_safe::compress_bound(self.raw.len()));
        let body = match self
            .compressor
            .compress_to_buffer(self.raw.as_slice(), &mut self.packed)
        {
            Ok(_) => self.packed.as_slice().to_vec(),
            Err(_) => Vec::new(),
        };
        let raw_len = self.raw.len() as u64;
        for buffer in [&mut self.raw, &mut self.packed] {
            if buffer.capacity() > KEEP_BUFFER {
                *buffer = Vec::new();
            }
        }
        (body, raw_len)
    }

    /// A batch of the events of one session (in order), or `None` for no events.
    pub fn make_batch(
        &mut self,
        spool: &SpoolId,
        seq: BatchSeq,
        events: &[Event],
    ) -> Option<Batch> {
        let first = events.first()?;
        let last = events.last()?;
        let (body, raw_len) = self.pack(events);
        Some(Batch {
            header: BatchHeader {
                spool: spool.clone(),
                seq,
                host: first.host.clone(),
                boot_id: first.boot_id.clone(),
                session: first.session,
                first_seq: first.seq,
                last_seq: last.seq,
                events: events.len() as u32,
                first_time: first.time,
                last_time: last.time,
                raw_len,
                signed: None,
            },
            events: body,
        })
    }
}

impl Default for Packer {
    fn default() -> Self {
        Packer::new()
    }
}

thread_local! {
    /// The packer of [`pack_events`] and [`make_batch`], one per thread that uses them.
    static PACKER: std::cell::RefCell<Packer> = std::cell::RefCell::new(Packer::new());
    /// The zstd context and buffer of [`decode_events`], one per thread that uses it.
    static UNPACKER: std::cell::RefCell<Unpacker> = std::cell::RefCell::new(Unpacker::new());
}

/// Packs the events of one session into a batch body with this thread's [`Packer`].
pub fn pack_events(events: &[Event]) -> (Vec<u8>, u64) {
    PACKER.with(|packer| packer.borrow_mut().pack(events))
}

/// A decompression context and buffer kept between batches.
struct Unpacker {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    raw: Vec<u8>,
}

impl Unpacker {
    fn new() -> Unpacker {
        Unpacker {
            decompressor: None,
            raw: Vec::new(),
        }
    }

    fn decode(&mut self, body: &[u8], raw_len: u64) -> Result<Vec<Event>, WireError> {
        let decompressor = match &mut self.decompressor {
            Some(decompressor) => decompressor,
            empty => empty.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|err| WireError::BadBatch(format!("zstd: {err}")))?,
            ),
        };
        self.raw.clear();
        self.raw.reserve(raw_len as usize);
        let decoded = decompressor
            .decompress_to_buffer(body, &mut self.raw)
            .map_err(|err| WireError::BadBatch(format!("zstd: {err}")))
            .and_then(|len| {
                if len as u64 != raw_len {
                    return Err(WireError::BadBatch(format!(
                        "decompressed to {len} bytes, header says {raw_len}"
                    )));
                }
                rmp_serde::from_slice(&self.raw).map_err(|err| WireError::BadBatch(err.to_string()))
            });
        if self.raw.capacity() > KEEP_BUFFER {
            self.raw = Vec::new();
        }
        decoded
    }
}

/// Unpacks a batch body, refusing to decompress past `limit` bytes, and checks the events
/// against the header.
pub fn unpack_events(
    header: &BatchHeader,
    body: &[u8],
    limit: usize,
) -> Result<Vec<Event>, WireError> {
    let events = decode_events(body, header.raw_len, limit)?;
    check_batch(header, &events)?;
    Ok(events)
}

/// zstd(MessagePack array of events) of `raw_len` bytes decompressed, to events.
pub fn decode_events(body: &[u8], raw_len: u64, limit: usize) -> Result<Vec<Event>, WireError> {
    if raw_len > limit as u64 {
        return Err(WireError::BatchTooLarge {
            len: raw_len,
            limit,
        });
    }
    UNPACKER.with(|unpacker| unpacker.borrow_mut().decode(body, raw_len))
}

/// Checks that the events are what the header says: one session, the counts and sequence
/// numbers announced, in order.
pub fn check_batch(header: &BatchHeader, events: &[Event]) -> Result<(), WireError> {
    let bad = |what: String| Err(WireError::BadBatch(what));
    if events.len() != header.events as usize || events.is_empty() {
        return bad(format!(
            "{} events, header says {}",
            events.len(),
            header.events
        ));
    }
    for pair in events.windows(2) {
        if pair[1].seq <= pair[0].seq {
            return bad(format!(
                "event seq {} follows {}",
                pair[1].seq.0, pair[0].seq.0
            ));
        }
    }
    for event in events {
        if event.session != header.session
            || event.boot_id != header.boot_id
            || event.host != header.host
        {
            return bad(format!(
                "an event of session {} on {}/{} in a batch of session {}",
                event.session, event.host, event.boot_id, header.session
            ));
        }
    }
    if events[0].seq != header.first_seq || events[events.len() - 1].seq != header.last_seq {
        return bad("first or last event seq differs from the header".into());
    }
    Ok(())
}

/// Builds the batch for `events` (all of one session, in order).
pub fn make_batch(spool: &SpoolId, seq: BatchSeq, events: &[Event]) -> Option<Batch> {
    PACKER.with(|packer| packer.borrow_mut().make_batch(spool, seq, events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_codes_map_back_to_their_reason() {
        for code in ErrorCode::ALL {
            assert_eq!(
                ErrorCode::from_stream_code(code.stream_code().into()),
                Some(code)
            );
        }
        assert_eq!(ErrorCode::from_stream_code(0), None);
    }
    use crate::{EventBody, event::SessionEnd};

    fn event(seq: u64) -> Event {
        Event {
            time: Timestamp(seq as i64),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(4),
            seq: Seq(seq),
            process: None,
            event: EventBody::SessionEnd(SessionEnd {
                duration_secs: 1.0,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_length_announced_inside_a_batch_is_not_reserved_up_front() {
        // The input the batch fuzz target's harness reported out of memory with: a process's
        // `comm` announcing 2^32 - 1 bytes (array32 header, then one byte) made decoding the
        // batch reserve 4 GiB. Now: a malformed batch.
        let mut one = event(1);
        one.process = Some(crate::event::Process {
            pid: crate::Pid(1),
            tgid: crate::Pid(1),
            ppid: crate::Pid(0),
            uid: crate::Uid(0),
            euid: crate::Uid(0),
            gid: crate::Gid(0),
            loginuid: None,
            login_user: None,
            user: None,
            tty: None,
            comm: "bash".into(),
        });
        let raw = rmp_serde::to_vec_named(&vec![one]).unwrap();
        let comm = b"\xa4comm\xc4\x04bash";
        let at = raw.windows(comm.len()).position(|w| w == comm).unwrap() + 5;
        let raw = [&raw[..at], b"\xdd\xff\xff\xff\xff\x01", &raw[at + 6..]].concat();
        let body = zstd::bulk::compress(&raw, COMPRESSION_LEVEL).unwrap();
        let err = decode_events(&body, raw.len() as u64, 1 << 20).unwrap_err();
        assert!(matches!(err, WireError::BadBatch(_)), "{err}");
    }

    #[test]
    fn batches_round_trip_through_frames() {
        let events = vec![event(1), event(2), event(3)];
        let batch = make_batch(&SpoolId("s".into()), BatchSeq(9), &events).unwrap();
        let bytes = encode_frame(&Frame::Batch(batch.clone()));
        let len = frame_len(bytes[..4].try_into().unwrap(), DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(len, bytes.len() - 4);
        let Frame::Batch(decoded) = decode_frame(&bytes[4..]).unwrap() else {
            panic!()
        };
        assert_eq!(decoded, batch);
        assert_eq!(
            unpack_events(&decoded.header, &decoded.events, 1 << 20).unwrap(),
            events
        );
    }

    #[test]
    fn the_signed_message_is_the_documented_bytes_and_covers_every_field() {
        let spool = SpoolId("ab".into());
        let link = BatchLink {
            spool: &spool,
            seq: BatchSeq(258),
            content: BatchHash([1; 32]),
            prev: BatchHash([2; 32]),
        };
        let mut expected = b"custos batch v1\0\0\0\0\x02ab\0\0\0\0\0\0\x01\x02".to_vec();
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&[2; 32]);
        assert_eq!(link.message(), expected);
        assert_eq!(
            link.hash(),
            BatchHash(sha2::Sha256::digest(&expected).into())
        );
        // Each field changes the message (and so the link's hash).
        let other_spool = SpoolId("a".into());
        let variants = [
            BatchLink {
                spool: &other_spool,
                ..link
            },
            BatchLink {
                seq: BatchSeq(259),
                ..link
            },
            BatchLink {
                content: BatchHash([3; 32]),
                ..link
            },
            BatchLink {
                prev: BatchHash([0; 32]),
                ..link
            },
        ];
        for variant in variants {
            assert_ne!(variant.message(), link.message(), "{variant:?}");
            assert_ne!(variant.hash(), link.hash());
        }
        // The length prefix keeps spool and seq apart ("ab" + seq never reads as "a" + ...).
        assert_eq!(
            BatchHash::of_content(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_signed_header_round_trips_and_an_unsigned_one_reads_as_protocol_1() {
        let events = vec![event(1)];
        let mut batch = make_batch(&SpoolId("s".into()), BatchSeq(1), &events).unwrap();
        assert!(batch.header.link().is_none());
        let unsigned = encode_frame(&Frame::Batch(batch.clone()));
        assert!(
            !unsigned.windows(6).any(|w| w == b"signed"),
            "an unsigned header has no signed field"
        );
        batch.header.signed = Some(BatchSignature {
            content: BatchHash::of_content(&batch.events),
            prev: BatchHash::default(),
            signature: vec![9; 70],
        });
        let bytes = encode_frame(&Frame::Batch(batch.clone()));
        let Frame::Batch(decoded) = decode_frame(&bytes[4..]).unwrap() else {
            panic!()
        };
        assert_eq!(decoded, batch);
        let link = decoded.header.link().unwrap();
        assert_eq!((link.seq, link.prev), (BatchSeq(1), BatchHash::default()));
    }

    #[test]
    fn limits_and_lies_are_refused() {
        assert_eq!(
            frame_len((17u32 << 20).to_be_bytes(), DEFAULT_MAX_FRAME),
            Err(WireError::FrameTooLarge {
                len: 17 << 20,
                limit: DEFAULT_MAX_FRAME
            })
        );
        assert!(matches!(
            decode_frame(b"\xc1garbage"),
            Err(WireError::Malformed(_))
        ));
        let events = vec![event(1), event(2)];
        let batch = make_batch(&SpoolId("s".into()), BatchSeq(1), &events).unwrap();
        let mut header = batch.header.clone();
        header.raw_len = 1 << 30;
        assert!(matches!(
            unpack_events(&header, &batch.events, 1 << 20),
            Err(WireError::BatchTooLarge { .. })
        ));
        let mut header = batch.header.clone();
        header.events = 3;
        assert!(matches!(
            unpack_events(&header, &batch.events, 1 << 20),
            Err(WireError::BadBatch(_))
        ));
        let mut header = batch.header.clone();
        header.session = AuditSessionId(5);
        assert!(matches!(
            unpack_events(&header, &batch.events, 1 << 20),
            Err(WireError::BadBatch(_))
        ));
        assert!(matches!(
            unpack_events(&batch.header, b"not zstd", 1 << 20),
            Err(WireError::BadBatch(_))
        ));
    }
}
