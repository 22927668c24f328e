//! One request stream: read one frame (within the limits and the connection's memory share),
//! answer it, close. The frame's reservation is held until the request is answered: a batch's
//! bytes count against the budget until the store has them.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use custos_daemon::quic::{ReadFrameError, read_body, read_prefix};
use custos_pki::Identity;
use custos_proto::{
    Timestamp,
    wire::{self, Ack, ErrorCode, ErrorFrame, Frame, Welcome},
};
use quinn::{RecvStream, SendStream};
use tracing::{debug, warn};

use super::{
    Ingest,
    budget::{ConnectionShare, Reservation, ReserveError},
    clock::{self, HostClock},
};
use crate::{
    alerts::ClonedSpool,
    store::{Appended, Receipt, StoreError},
    writer::Contact,
};

/// Who is on the other end of a connection.
pub struct Peer {
    pub identity: Identity,
    /// The agent's certificate (DER) on this connection: its key signs the agent's batches.
    pub certificate: Arc<Vec<u8>>,
    pub address: SocketAddr,
    /// The agent's clock against the collector's, from its hello on this connection.
    pub clock: std::sync::Mutex<Option<HostClock>>,
    /// The connection's share of the memory budget, and its identity's conduct.
    pub share: ConnectionShare,
}

/// How long a request may wait for its memory budget.
const BUDGET_WAIT: Duration = Duration::from_secs(60);

/// Why a request was not read.
enum Unread {
    /// The stream ended or was reset by the agent: nothing to answer.
    Gone(ReadFrameError),
    /// Over the limit or not a frame: reset, a strike.
    Garbage(wire::WireError),
    /// No prefix, or a body not advancing, within the stall timeout: reset, a strike.
    Stalled(String),
    /// Waited for budget longer than [`BUDGET_WAIT`]: reset as unavailable (the agent resends).
    NoBudget,
}

/// Reads the request frame within the limits and the peer's memory share; the frame and the
/// reservation that covers it (held until the request is answered).
async fn read_request(
    recv: &mut RecvStream,
    peer: &Peer,
    limits: super::Limits,
) -> Result<(Frame, Reservation), Unread> {
    let stall = limits.stall_timeout;
    let len = match tokio::time::timeout(stall, read_prefix(recv, limits.max_frame)).await {
        Err(_) => return Err(Unread::Stalled(format!("no frame within {stall:?}"))),
        Ok(Err(ReadFrameError::Wire(err))) => return Err(Unread::Garbage(err)),
        Ok(Err(err)) => return Err(Unread::Gone(err)),
        Ok(Ok(len)) => len,
    };
    let reservation = match tokio::time::timeout(BUDGET_WAIT, peer.share.reserve(len as u64)).await
    {
        Ok(Ok(reservation)) => reservation,
        Ok(Err(ReserveError::OverShare { bytes, share })) => {
            return Err(Unread::Garbage(wire::WireError::FrameTooLarge {
                len: usize::try_from(bytes).unwrap_or(usize::MAX),
                limit: usize::try_from(share).unwrap_or(usize::MAX),
            }));
        }
        Ok(Err(ReserveError::Closed)) | Err(_) => return Err(Unread::NoBudget),
    };
    let body = match read_body(recv, len, Some(stall)).await {
        Ok(body) => body,
        Err(err @ ReadFrameError::Stalled { .. }) => {
            return Err(Unread::Stalled(format!(
                "{err} (ingest.stall_timeout {stall:?})"
            )));
        }
        Err(ReadFrameError::Wire(err)) => return Err(Unread::Garbage(err)),
        Err(err) => return Err(Unread::Gone(err)),
    };
    let frame = wire::decode_frame(&body).map_err(Unread::Garbage)?;
    Ok((frame, reservation))
}

/// Counts a strike against the peer's identity; logs when it cut the identity off.
fn strike(peer: &Peer, ingest: &Ingest) {
    if peer.share.strike() {
        ingest.metrics.agents_cut_off.inc();
        warn!(
            agent = %peer.identity.name,
            peer = %peer.address,
            "agent cut off: too many garbage frames or stalled requests"
        );
    }
}

pub async fn handle(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: Arc<Peer>,
    ingest: Arc<Ingest>,
) {
    let (metrics, limits) = (&ingest.metrics, ingest.limits);
    let agent = peer.identity.name.as_str();
    let (frame, reservation) = match read_request(&mut recv, &peer, limits).await {
        Ok(read) => read,
        Err(Unread::Garbage(err)) => {
            let code = err.code();
            if code == ErrorCode::TooLarge {
                metrics.frames_too_large.inc();
            } else {
                metrics.frames_malformed.inc();
            }
            warn!(agent, peer = %peer.address, error = %err, "bad frame: stream reset");
            let _ = recv.stop(code.stream_code().into());
            let _ = send.reset(code.stream_code().into());
            strike(&peer, &ingest);
            return;
        }
        Err(Unread::Stalled(why)) => {
            metrics.requests_stalled.inc();
            warn!(agent, peer = %peer.address, why, "request stalled: stream reset");
            let code = ErrorCode::Unavailable.stream_code();
            let _ = recv.stop(code.into());
            let _ = send.reset(code.into());
            strike(&peer, &ingest);
            return;
        }
        Err(Unread::NoBudget) => {
            metrics.requests_without_memory.inc();
            warn!(
                agent,
                peer = %peer.address,
                "request waited {BUDGET_WAIT:?} for memory (ingest.memory_budget and its shares): stream reset"
            );
            let code = ErrorCode::Unavailable.stream_code();
            let _ = recv.stop(code.into());
            let _ = send.reset(code.into());
            return;
        }
        Err(Unread::Gone(err)) => {
            debug!(agent, error = %err, "stream ended before a full frame");
            return;
        }
    };
    let response = match frame {
        Frame::Hello(hello) => {
            if hello.host != peer.identity.name {
                metrics.identity_mismatches.inc();
                warn!(
                    agent,
                    claimed = hello.host,
                    "hello names another host than the certificate"
                );
            }
            let host_clock = hello
                .time
                .map(|time| clock::judge(time, Timestamp::now(), limits.max_clock_skew));
            if let Some(clock) = host_clock.filter(|clock| clock.skewed) {
                warn!(
                    agent,
                    offset_secs = clock.offset_ns / 1_000_000_000,
                    "the agent's clock is off from the collector's by more than ingest.max_clock_skew"
                );
            }
            *peer.clock.lock().unwrap_or_else(|e| e.into_inner()) = host_clock;
            ingest.store.contact(Contact {
                host: peer.identity.name.clone(),
                version: Some(hello.agent_version),
                boot_id: Some(hello.boot_id.0),
                spool: Some(hello.spool.0),
                address: peer.address.to_string(),
                clock: host_clock,
            });
            if !(wire::MIN_PROTOCOL_VERSION..=wire::PROTOCOL_VERSION).contains(&hello.protocol) {
                error_frame(
                    ErrorCode::Unsupported,
                    format!("protocol {} is not supported", hello.protocol),
                )
            } else {
                Frame::Welcome(Welcome {
                    protocol: wire::PROTOCOL_VERSION,
                    collector_version: env!("CARGO_PKG_VERSION").to_owned(),
                })
            }
        }
        Frame::Batch(batch) => batch_response(batch, &peer, &ingest).await,
        other => {
            metrics.frames_malformed.inc();
            warn!(agent, kind = other.kind(), "unexpected frame");
            strike(&peer, &ingest);
            error_frame(
                ErrorCode::Malformed,
                format!("a {} frame is not a request", other.kind()),
            )
        }
    };
    // The request is stored (or refused) and dropped: its memory goes back to the budget before
    // the answer's delivery is waited for.
    drop(reservation);
    if let Err(err) = send.write_all(&wire::encode_frame(&response)).await {
        debug!(agent, error = %err, "could not answer (the agent will resend)");
        return;
    }
    let _ = send.finish();
    // Wait until the answer is delivered or the peer goes away.
    let _ = send.stopped().await;
}

/// Checks a signed batch (protocol 2): its content hash is its body's, and its signature verifies
/// with the key of the certificate it came with. An unsigned batch (protocol 1) passes, and is
/// stored as unsigned.
fn check_signature(batch: &wire::Batch, certificate: &[u8]) -> Result<(), String> {
    let Some(link) = batch.header.link() else {
        return Ok(());
    };
    if wire::BatchHash::of_content(&batch.events) != link.content {
        return Err(format!(
            "batch {} of spool {}: its content hash is not its events' hash",
            link.seq, link.spool
        ));
    }
    let signature = batch
        .header
        .signed
        .as_ref()
        .map(|signed| signed.signature.as_slice())
        .unwrap_or_default();
    custos_pki::batch_signature::verify(certificate, &link.message(), signature).map_err(|err| {
        format!(
            "batch {} of spool {}: {err} (the agent's certificate of this connection)",
            link.seq, link.spool
        )
    })
}

fn error_frame(code: ErrorCode, message: String) -> Frame {
    Frame::Error(ErrorFrame { code, message })
}

async fn batch_response(batch: wire::Batch, peer: &Peer, ingest: &Ingest) -> Frame {
    let (store, metrics) = (&ingest.store, &ingest.metrics);
    let agent = peer.identity.name.as_str();
    let header = &batch.header;
    if header.host != peer.identity.name {
        metrics.identity_mismatches.inc();
        warn!(
            agent,
            claimed = header.host,
            "batch names another host than the certificate"
        );
        return error_frame(
            ErrorCode::IdentityMismatch,
            format!(
                "batch of host {} sent with the certificate of {agent}",
                header.host
            ),
        );
    }
    let (spool, seq) = (header.spool.clone(), header.seq);
    let limit = ingest.limits.max_batch_raw;
    if header.raw_len > limit as u64 {
        metrics.frames_too_large.inc();
        warn!(
            agent,
            %spool,
            %seq,
            raw_len = header.raw_len,
            limit,
            "batch refused: over ingest.max_batch_size decompressed (lower the agent's shipping.batch_max_bytes)"
        );
        return error_frame(
            ErrorCode::TooLarge,
            format!(
                "batch of {} bytes decompressed is over the collector's ingest.max_batch_size of {limit} bytes",
                header.raw_len
            ),
        );
    }
    if let Err(why) = check_signature(&batch, &peer.certificate) {
        metrics.bad_signatures.inc();
        warn!(agent, %spool, %seq, why, "batch refused: its signature does not verify");
        return error_frame(ErrorCode::BadSignature, why);
    }
    let (events, raw_len) = (u64::from(header.events), header.raw_len);
    let arrived = std::time::Instant::now();
    let receipt = Receipt {
        received: Timestamp::now(),
        host_clock_skewed: peer
            .clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|clock| clock.skewed),
        agent_certificate: Some(peer.certificate.clone()),
    };
    store.contact(Contact {
        host: peer.identity.name.clone(),
        version: None,
        boot_id: Some(header.boot_id.0.clone()),
        spool: Some(spool.0.clone()),
        address: peer.address.to_string(),
        clock: None,
    });
    let batch = Arc::new(batch);
    let for_alerts = ingest.alerts.wants().then(|| batch.clone());
    match store.append(batch, receipt).await {
        Ok(Appended::Stored {
            recording,
            chunk,
            spool_shared_with,
        }) => {
            if let Some(batch) = for_alerts {
                ingest.alerts.offer(batch);
            }
            if !spool_shared_with.is_empty() {
                warn!(agent, %spool, others = ?spool_shared_with, "a spool id arrives from more than one agent: cloned agent state");
                ingest.alerts.cloned_spool(ClonedSpool {
                    agent: agent.to_owned(),
                    spool: spool.0.clone(),
                    others: spool_shared_with,
                    recording: recording.clone(),
                });
            }
            metrics.batches_stored.inc();
            metrics.events_stored.inc_by(events);
            metrics.bytes_stored.inc_by(raw_len);
            metrics
                .store_latency
                .observe(arrived.elapsed().as_secs_f64());
            debug!(agent, %spool, %seq, recording, chunk, "batch stored");
            Frame::Ack(Ack {
                spool,
                seq,
                duplicate: false,
            })
        }
        Ok(Appended::Duplicate { recording }) => {
            metrics.batches_duplicate.inc();
            debug!(agent, %spool, %seq, recording, "batch already stored");
            Frame::Ack(Ack {
                spool,
                seq,
                duplicate: true,
            })
        }
        Err(StoreError::Refused(why)) => {
            metrics.frames_malformed.inc();
            warn!(agent, %spool, %seq, why, "batch refused");
            error_frame(ErrorCode::Malformed, why)
        }
        Err(err) => {
            metrics.batches_failed.inc();
            warn!(agent, %spool, %seq, error = %err, "batch not stored");
            error_frame(
                ErrorCode::Unavailable,
                "the collector could not store the batch".into(),
            )
        }
    }
}
