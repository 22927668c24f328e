//! One request stream: read one frame (within the limits), answer it, close.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use custos_daemon::quic::{ReadFrameError, read_frame};
use custos_pki::Identity;
use custos_proto::{
    Timestamp,
    wire::{self, Ack, ErrorCode, ErrorFrame, Frame, Welcome},
};
use quinn::{RecvStream, SendStream};
use tracing::{debug, warn};

use super::{
    Ingest,
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
}

/// How long a client may take to send its request frame.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn handle(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: Arc<Peer>,
    ingest: Arc<Ingest>,
) {
    let (metrics, limits) = (&ingest.metrics, ingest.limits);
    let agent = peer.identity.name.as_str();
    let read = read_frame(&mut recv, limits.max_frame);
    let frame = match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Ok(Ok(frame)) => frame,
        Ok(Err(ReadFrameError::Wire(err))) => {
            let code = err.code();
            if code == ErrorCode::TooLarge {
                metrics.frames_too_large.inc();
            } else {
                metrics.frames_malformed.inc();
            }
            warn!(agent, peer = %peer.address, error = %err, "bad frame: stream reset");
            let _ = recv.stop(code.stream_code().into());
            let _ = send.reset(code.stream_code().into());
            return;
        }
        Ok(Err(err @ (ReadFrameError::Stream(_) | ReadFrameError::Reset(_)))) => {
            debug!(agent, error = %err, "stream ended before a full frame");
            return;
        }
        Err(_) => {
            warn!(agent, peer = %peer.address, "no request within {REQUEST_TIMEOUT:?}: stream reset");
            let _ = send.reset(ErrorCode::Malformed.stream_code().into());
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
            error_frame(
                ErrorCode::Malformed,
                format!("a {} frame is not a request", other.kind()),
            )
        }
    };
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
