//! Shipping: the QUIC client that sends spooled batches to the collector (protocol in
//! docs/protocol.md).
//!
//! One connection at a time. A lost connection is made again at once, failed attempts are
//! retried with the [`backoff`]; the agent's certificate and the CA are read again at every
//! connection, so rotated files take effect at the next reconnect. A collector that crashed
//! sends no close, so a connection does not wait for its idle timeout: a restarted collector
//! ends it with a stateless reset, a silent one is given up (see [`liveness`]), and every answer
//! has a deadline (`shipping.ack_timeout`: a batch's acknowledgement, a handshake, the hello).
//!
//! Up to `in_flight` batches are outstanding, each on its own stream, but never two of one
//! session: a session's batches are stored in the order they were made; the [`window`] decides
//! what goes and what each result means, this module does the I/O. A batch leaves the spool only
//! when the collector acknowledged it (durably stored). A batch refused for good (malformed, too
//! large) is set aside by the spool in `rejected/` and logged: resending it could never succeed,
//! and it must not block the rest.
mod backoff;
mod liveness;
mod window;

use custos_pki::batch_signature::BatchSigner;
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use custos_daemon::quic::{ReadFrameError, read_frame};
use custos_pki::{Role, tls::TlsFiles};
use custos_proto::{
    BootId,
    wire::{self, Batch, BatchSeq, ErrorCode, Frame, Hello},
};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::{
    sync::{Notify, watch},
    task::JoinSet,
};
use tracing::{debug, error, info, warn};

use self::{
    backoff::Backoff,
    liveness::{Liveness, Verdict},
    window::{Outcome, SendError, Window},
};
use crate::{
    config::{CollectorConfig, ShippingConfig},
    metrics::{AgentMetrics, ShipMetrics},
    spool::{Spool, SpoolError},
};

/// Largest response frame accepted from the collector.
const MAX_RESPONSE: usize = 1024 * 1024;
/// The round trip a new connection assumes until it has measured one.
const INITIAL_RTT: Duration = Duration::from_millis(100);
/// How often the backlog gauges are brought up to date, and how often a connection looks at
/// what it has heard from the collector ([`liveness`]).
const OBSERVE_EVERY: Duration = Duration::from_millis(100);

pub struct Shipping {
    pub collector: CollectorConfig,
    pub options: ShippingConfig,
    pub host: String,
    pub boot_id: BootId,
    /// How long batches the collector refused for good stay in the spool's `rejected/`.
    pub keep_rejected: Duration,
    /// The agent's certificate key, signing batches as they are spooled.
    pub signer: Arc<custos_pki::batch_signature::BatchSigner>,
}

/// How often refused batches are checked for expiry.
const EXPIRE_REJECTED_EVERY: Duration = Duration::from_secs(3600);

/// Sends until `stop` turns true, then for at most `shutdown_grace` while batches are pending.
pub async fn run(
    shipping: Shipping,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    reconnect: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let observer = tokio::spawn(observe(
        spool.clone(),
        metrics.clone(),
        shipping.keep_rejected,
    ));
    let metrics = &metrics.ship;
    let mut endpoint = quinn::Endpoint::client("[::]:0".parse().expect("valid address"))
        .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid address")))
        .context("opening a UDP socket")?;
    let mut backoff = Backoff::new(
        shipping.options.reconnect_min,
        shipping.options.reconnect_max,
    );
    let mut deadline: Option<tokio::time::Instant> = None;
    // The round trip of the last connection, for the next handshake's deadline.
    let mut last_rtt = None;
    loop {
        if *stop.borrow() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + shipping.options.shutdown_grace);
        }
        if deadline.is_some() && lock(&spool).pending() == 0 {
            break;
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            let pending = lock(&spool).pending();
            warn!(
                pending,
                "stopping with batches not yet acknowledged (they stay spooled)"
            );
            break;
        }
        let handshake =
            liveness::handshake_deadline(last_rtt, backoff.step(), shipping.options.ack_timeout);
        let connection = tokio::select! {
            connection = connect(&mut endpoint, &shipping, &spool, handshake) => connection,
            _ = sleep_until(deadline) => continue,
        };
        match connection {
            Ok((connection, signer)) => {
                metrics.connects.inc();
                metrics.connected.set(1);
                backoff.reset();
                let reason = send_loop(
                    (&connection, &signer),
                    &shipping,
                    &spool,
                    (&wake, &reconnect),
                    &mut stop,
                    &mut deadline,
                    metrics,
                )
                .await;
                connection.close(0u32.into(), b"agent reconnecting or stopping");
                metrics.connected.set(0);
                last_rtt = Some(connection.rtt());
                match reason {
                    Ok(()) => {}
                    Err(err) => {
                        warn!(error = %format!("{err:#}"), "connection to the collector lost")
                    }
                }
            }
            Err(err) => {
                metrics.connect_failures.inc();
                let wait = backoff.next_random_wait();
                warn!(
                    collector = %shipping.collector.address,
                    error = %format!("{err:#}"),
                    retry_in = ?wait,
                    "cannot reach the collector; recordings stay spooled"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed(), if deadline.is_none() => {}
                    _ = sleep_until(deadline) => {}
                }
            }
        }
    }
    endpoint.close(0u32.into(), b"agent stopping");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    observer.abort();
    Ok(())
}

/// Keeps the backlog gauges current: batches not acknowledged, and how long the oldest of them
/// has waited. Once an hour (and at start) deletes refused batches kept past `keep_rejected`.
async fn observe(spool: Arc<Mutex<Spool>>, metrics: Arc<AgentMetrics>, keep_rejected: Duration) {
    let mut tick = tokio::time::interval(OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expired_at: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        if expired_at.is_none_or(|at| at.elapsed() >= EXPIRE_REJECTED_EVERY) {
            expired_at = Some(std::time::Instant::now());
            match lock(&spool).expire_rejected(keep_rejected) {
                Ok(0) => {}
                Ok(deleted) => info!(deleted, "refused batches past spool.keep_rejected deleted"),
                Err(err) => warn!(error = %err, "cannot expire refused batches"),
            }
        }
        let (pending, oldest) = {
            let spool = lock(&spool);
            (spool.pending(), spool.oldest_pending())
        };
        let ship = &metrics.ship;
        ship.pending_batches
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        ship.oldest_unacked_seconds
            .set(oldest.map_or(0.0, |at| at.elapsed().as_secs_f64()));
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resolves the collector, builds the TLS configuration from the files as they are now,
/// connects (the handshake done within `handshake`) and says hello.
async fn connect(
    endpoint: &mut quinn::Endpoint,
    shipping: &Shipping,
    spool: &Mutex<Spool>,
    handshake: Duration,
) -> anyhow::Result<(quinn::Connection, BatchSigner)> {
    let collector = &shipping.collector;
    let files = TlsFiles {
        ca: &collector.ca,
        certificate: &collector.certificate,
        key: &collector.key,
    };
    let (tls, _, key) =
        custos_pki::tls::client_config_and_key(&files, &[Role::Agent], &[wire::ALPN])?;
    // Batches go out signed with this connection's key (a renewed certificate comes with a new
    // key; batches spooled before are signed again with it, their chain links unchanged).
    let signer = BatchSigner::from_key(&key).context("the agent's key cannot sign batches")?;
    let crypto = QuicClientConfig::try_from(tls).context("TLS configuration unusable for QUIC")?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        // Until the first measurement: a first packet lost to a collector that is not back yet
        // goes again after 300 ms rather than a second (RFC 9002's 333 ms guess), within the
        // short deadline of a handshake (liveness::handshake_deadline).
        .initial_rtt(INITIAL_RTT)
        .keep_alive_interval(Some(shipping.options.keep_alive))
        .max_idle_timeout(Some(
            (shipping.options.keep_alive * 4)
                .try_into()
                .context("shipping.keep_alive too large")?,
        ));
    client.transport_config(Arc::new(transport));
    let address: SocketAddr = tokio::net::lookup_host(&collector.address)
        .await
        .with_context(|| format!("resolving {}", collector.address))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", collector.address))?;
    let connection = tokio::time::timeout(
        handshake,
        endpoint.connect_with(client, address, collector.server_name())?,
    )
    .await
    .map_err(|_| anyhow!("no handshake with {address} within {handshake:?}"))??;
    let answer = shipping.options.ack_timeout;
    let spool_id = lock(spool).id().clone();
    let hello = Frame::Hello(Hello {
        protocol: wire::PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: shipping.host.clone(),
        boot_id: shipping.boot_id.clone(),
        spool: spool_id,
        time: Some(custos_proto::Timestamp::now()),
    });
    match request(&connection, &hello, answer).await {
        Ok(Frame::Welcome(welcome)) => {
            info!(
                collector = %collector.address,
                version = welcome.collector_version,
                "connected to the collector"
            );
            Ok((connection, signer))
        }
        Ok(Frame::Error(err)) => bail!(
            "the collector refused the hello: {:?}: {}",
            err.code,
            err.message
        ),
        Ok(other) => bail!(
            "the collector answered the hello with a {} frame",
            other.kind()
        ),
        Err(SendError::Connection(err) | SendError::Retry(err) | SendError::Rejected(_, err)) => {
            bail!("hello failed: {err}")
        }
    }
}

/// One request on its own stream: the frame out, the answer back within `deadline`.
async fn request(
    connection: &quinn::Connection,
    frame: &Frame,
    deadline: Duration,
) -> Result<Frame, SendError> {
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| SendError::Connection(e.to_string()))?;
        send.write_all(&wire::encode_frame(frame))
            .await
            .map_err(|e| SendError::Connection(e.to_string()))?;
        let _ = send.finish();
        match read_frame(&mut recv, MAX_RESPONSE).await {
            Ok(frame) => Ok(frame),
            // A stream reset by the collector carries the reason as its code.
            Err(err @ ReadFrameError::Reset(code)) => Err(SendError::Rejected(
                ErrorCode::from_stream_code(code).unwrap_or(ErrorCode::Unavailable),
                err.to_string(),
            )),
            Err(err) => Err(SendError::Connection(err.to_string())),
        }
    };
    tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(SendError::Connection(format!(
                "no answer within {deadline:?} (shipping.ack_timeout)"
            )))
        })
}

/// How many pending batches one window fill looks at.
const PENDING_SCAN: usize = 10_000;

/// Sends one batch; its acknowledgement must come within `deadline`, else the connection is
/// given up (the batch stays spooled and goes again on the next one).
async fn send_batch(
    connection: quinn::Connection,
    batch: Batch,
    deadline: Duration,
) -> (BatchSeq, Result<(), SendError>) {
    let seq = batch.header.seq;
    let result = match request(&connection, &Frame::Batch(batch), deadline).await {
        Ok(Frame::Ack(ack)) if ack.seq == seq => Ok(()),
        Ok(Frame::Ack(ack)) => Err(SendError::Connection(format!(
            "ack of batch {} for batch {seq}",
            ack.seq
        ))),
        Ok(Frame::Error(err)) if err.code.is_transient() => Err(SendError::Retry(err.message)),
        Ok(Frame::Error(err)) => Err(SendError::Rejected(err.code, err.message)),
        Ok(other) => Err(SendError::Connection(format!(
            "unexpected {} frame",
            other.kind()
        ))),
        Err(err) => Err(err),
    };
    (seq, result)
}

/// Keeps up to `in_flight` batches outstanding on `connection` until it fails or shutdown's
/// grace ends: the I/O around the [`Window`], which decides what goes and what each result means.
/// Batches go out signed with `signer`, the key of the connection's certificate.
async fn send_loop(
    (connection, signer): (&quinn::Connection, &BatchSigner),
    shipping: &Shipping,
    spool: &Arc<Mutex<Spool>>,
    (wake, reconnect): (&Notify, &Notify),
    stop: &mut watch::Receiver<bool>,
    deadline: &mut Option<tokio::time::Instant>,
    metrics: &ShipMetrics,
) -> anyhow::Result<()> {
    let mut in_flight: JoinSet<(BatchSeq, Result<(), SendError>)> = JoinSet::new();
    let mut window = Window::new(shipping.options.in_flight);
    let mut liveness = Liveness::new(connection.stats().udp_rx.datagrams, Instant::now());
    let mut look = tokio::time::interval(OBSERVE_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        window.release(Instant::now());
        if window.len() < shipping.options.in_flight {
            let pending = lock(spool).pending_batches(PENDING_SCAN);
            let batches = window.fill(pending, Instant::now(), |seq| read(spool, seq, signer));
            for batch in batches {
                liveness.asked(Instant::now());
                in_flight.spawn(send_batch(
                    connection.clone(),
                    batch,
                    shipping.options.ack_timeout,
                ));
            }
        }
        if deadline.is_some() && window.is_idle() && lock(spool).pending() == 0 {
            return Ok(());
        }
        let retry = window.next_retry().map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(done) = in_flight.join_next() => {
                let (seq, result) = done.map_err(|e| anyhow!("send task failed: {e}"))?;
                match window.complete(seq, result, Instant::now()) {
                    Outcome::Acked(sent) => {
                        lock(spool).ack(seq);
                        metrics.batches_acked.inc();
                        if let Some(batch) = sent {
                            metrics.ack_latency.observe(batch.at.elapsed().as_secs_f64());
                            debug!(
                                seq = seq.0,
                                session = batch.session.1,
                                last_event = batch.last_seq,
                                events = batch.events,
                                "batch acknowledged"
                            );
                        }
                    }
                    Outcome::Rejected(code, message) => {
                        metrics.batches_rejected.inc();
                        reject(spool, seq, code, &message);
                    }
                    Outcome::Retry(message) => {
                        // It stays pending and goes again once the window's wait is over.
                        warn!(seq = seq.0, message, "the collector could not store a batch; retrying");
                    }
                    Outcome::ConnectionLost(message) => {
                        bail!("batch {seq}: {message}");
                    }
                }
            }
            _ = wake.notified() => {}
            _ = look.tick() => look_at(&mut liveness, connection, window.len() > 0)?,
            _ = sleep_until(retry) => {}
            _ = reconnect.notified() => {
                info!("reconnecting to use the certificates as they are now");
                return Ok(());
            }
            _ = stop.changed(), if deadline.is_none() => {
                *deadline = Some(tokio::time::Instant::now() + shipping.options.shutdown_grace);
            }
            _ = sleep_until(*deadline) => return Ok(()),
            reason = connection.closed() => bail!("{}", closed_because(&reason)),
        }
    }
}

/// Why the collector closed the connection, in words an operator can act on.
fn closed_because(reason: &quinn::ConnectionError) -> String {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == wire::CLOSE_CERTIFICATE_REVOKED.into() =>
        {
            "the collector closed the connection: this agent's certificate is revoked \
             (issue a new one with `custos-collector pki issue agent HOSTNAME`)"
                .to_owned()
        }
        other => other.to_string(),
    }
}

/// Probes a quiet collector, gives up a silent one (see [`liveness`]).
fn look_at(
    liveness: &mut Liveness,
    connection: &quinn::Connection,
    waiting: bool,
) -> anyhow::Result<()> {
    let now = Instant::now();
    let received = connection.stats().udp_rx.datagrams;
    match liveness.look(received, connection.rtt(), waiting, now) {
        Verdict::Fine => {}
        Verdict::Probe => match connection.send_datagram((&b"?"[..]).into()) {
            Ok(()) => liveness.probed(now),
            // Then only the acknowledgement deadline applies.
            Err(err) => debug!(error = %err, "cannot probe the collector"),
        },
        Verdict::Silent(silence) => bail!("the collector has not answered for {silence:?}"),
    }
    Ok(())
}

/// A pending batch read back for sending; `None` when it is gone, or unreadable (then it is
/// dropped from the spool: it could never be sent).
fn read(spool: &Mutex<Spool>, seq: BatchSeq, signer: &BatchSigner) -> Option<Batch> {
    let mut spool = lock(spool);
    match spool.read(seq).and_then(|batch| resign(batch, signer)) {
        Ok(batch) => Some(batch),
        Err(SpoolError::Gone(_)) => None,
        Err(err) => {
            error!(error = %err, "unreadable spooled batch skipped (a gap record says so)");
            spool.skip_unreadable(seq);
            None
        }
    }
}

/// Signs a signed batch again with `signer` (the key of the connection that will carry it): the
/// same message, so the same link of the chain.
fn resign(mut batch: Batch, signer: &BatchSigner) -> Result<Batch, SpoolError> {
    let message = batch.header.link().map(|link| link.message());
    if let (Some(message), Some(signed)) = (message, batch.header.signed.as_mut()) {
        signed.signature = signer
            .sign(&message)
            .map_err(|err| SpoolError::Sign(batch.header.seq, err.to_string()))?;
    }
    Ok(batch)
}

/// A batch the collector refused for good: the spool sets it aside; the log says where.
fn reject(spool: &Mutex<Spool>, seq: BatchSeq, code: ErrorCode, message: &str) {
    match lock(spool).set_aside(seq) {
        Ok(path) => error!(
            seq = seq.0,
            ?code,
            message,
            kept = %path.display(),
            "the collector refused a batch for good; it is kept aside, not sent again, and a gap record says so"
        ),
        Err(err) => error!(
            seq = seq.0,
            ?code,
            message,
            error = %err,
            "the collector refused a batch for good"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key pair as `pki issue` makes it: the certificate (DER) and a signer of its key.
    fn identity() -> (Vec<u8>, BatchSigner) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let signer = BatchSigner::from_key(&rustls_pki_types::PrivateKeyDer::Pkcs8(
            key.serialize_der().into(),
        ))
        .unwrap();
        (cert.der().to_vec(), signer)
    }

    /// A batch spooled before a certificate renewal goes out signed with the new key, the same
    /// link of the chain.
    #[test]
    fn a_spooled_batch_is_signed_again_with_the_connections_key() {
        let ((old_cert, old_key), (new_cert, new_key)) = (identity(), identity());
        let dir = tempfile::tempdir().unwrap();
        let spool_key =
            crate::spool::seal::SpoolKey::from_bytes(&[7; crate::spool::seal::KEY_LEN]).unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 20, spool_key).unwrap();
        let seq = spool.allocate().unwrap();
        let event = custos_proto::Event {
            time: custos_proto::Timestamp(1),
            host: "h".into(),
            boot_id: custos_proto::BootId("b".into()),
            session: custos_proto::AuditSessionId(1),
            seq: custos_proto::Seq(1),
            process: None,
            event: custos_proto::EventBody::SessionEnd(Default::default()),
        };
        let batch = wire::make_batch(spool.id(), seq, &[event]).unwrap();
        spool.append_signed(batch, &old_key).unwrap();
        let spooled = spool.read(seq).unwrap();
        let verifies = |batch: &Batch, cert: &[u8]| {
            let message = batch.header.link().unwrap().message();
            let signature = &batch.header.signed.as_ref().unwrap().signature;
            custos_pki::batch_signature::verify(cert, &message, signature).is_ok()
        };
        assert!(verifies(&spooled, &old_cert) && !verifies(&spooled, &new_cert));
        let sent = resign(spooled.clone(), &new_key).unwrap();
        assert!(verifies(&sent, &new_cert));
        assert_eq!(
            sent.header.link().unwrap().hash(),
            spooled.header.link().unwrap().hash()
        );
    }

    #[test]
    fn a_revoked_certificate_is_named_as_the_reason_the_connection_closed() {
        let closed = |code: u32| {
            closed_because(&quinn::ConnectionError::ApplicationClosed(
                quinn::ApplicationClose {
                    error_code: code.into(),
                    reason: Default::default(),
                },
            ))
        };
        let revoked = closed(wire::CLOSE_CERTIFICATE_REVOKED);
        assert!(revoked.contains("certificate is revoked"), "{revoked}");
        assert!(!closed(wire::CLOSE_NORMAL).contains("revoked"));
    }
}
