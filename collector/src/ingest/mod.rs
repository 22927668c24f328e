//! Ingest: the QUIC server agents ship to (protocol in docs/protocol.md).
//!
//! Only clients whose certificate chains to the deployment CA and carries the agent role get
//! through the handshake; anything else is refused there and logged with the reason and the
//! peer's address. Each stream carries one request frame; a batch is acknowledged only once the
//! store has made it durable. A malformed or oversized frame resets its stream with an error
//! code, is logged and counted, and disturbs nothing else. What agents' requests may hold in
//! memory is bounded by [`budget`]; an agent that misbehaves is cut off there.
pub mod budget;
pub mod clock;
mod endpoint;
mod stream;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use custos_proto::wire;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::watch;
use tracing::{info, warn};

pub use self::endpoint::bind;
pub use crate::metrics::IngestMetrics;
use crate::{config::Config, tls::Revocation, writer::StoreHandle};

/// What every connection and stream of ingest shares.
pub struct Ingest {
    pub store: StoreHandle,
    pub limits: Limits,
    pub metrics: Arc<IngestMetrics>,
    /// Stored batches go on to the alert engine.
    pub alerts: crate::alerts::AlertFeed,
    /// Closes connections whose agent certificate is revoked.
    pub revocation: Revocation,
    /// Bytes of requests held, per connection, per identity and in total; agents' conduct.
    pub budget: Arc<budget::Budget>,
}

/// Limits applied to every stream.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_frame: usize,
    pub max_batch_raw: usize,
    /// An agent's clock off by more than this from the collector's is flagged.
    pub max_clock_skew: std::time::Duration,
    /// A request that does not advance within this is reset (and counts against its agent).
    pub stall_timeout: std::time::Duration,
}

impl Limits {
    /// The limits in `config`.
    pub fn of(config: &Config) -> Limits {
        let ingest = &config.ingest;
        Limits {
            max_frame: usize::try_from(ingest.max_frame_size.as_u64()).unwrap_or(usize::MAX),
            max_batch_raw: usize::try_from(ingest.max_batch_size.as_u64()).unwrap_or(usize::MAX),
            max_clock_skew: ingest.max_clock_skew,
            stall_timeout: ingest.stall_timeout,
        }
    }
}

/// The budget in `config`.
pub fn budget_limits(config: &Config) -> budget::BudgetLimits {
    let ingest = &config.ingest;
    budget::BudgetLimits {
        total: ingest.memory_budget.as_u64(),
        identity: ingest.identity_memory.as_u64(),
        connection: ingest.connection_memory.as_u64(),
        connections_per_identity: ingest.max_connections_per_identity as usize,
    }
}

/// Each stream's QUIC receive window: what an agent can send on a stream the collector is not
/// reading (one waiting for budget) is held in QUIC's buffers, outside the budget.
const STREAM_WINDOW: u32 = 128 * 1024;

/// Bytes of agents' liveness probes (unread datagrams) a connection keeps.
const PROBE_BUFFER: usize = 64;

/// The QUIC server configuration: `tls` (see [`crate::tls`]) and the limits in `config`.
pub fn quic_config(
    config: &Config,
    tls: rustls::ServerConfig,
) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = QuicServerConfig::try_from(tls).context("TLS configuration unusable for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(config.ingest.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u8.into())
        .stream_receive_window(STREAM_WINDOW.into())
        // Agents probe a quiet connection with one-byte datagrams (docs/protocol.md, Liveness),
        // which nothing reads: a few are kept, older ones dropped.
        .datagram_receive_buffer_size(Some(PROBE_BUFFER))
        .max_idle_timeout(Some(
            config
                .ingest
                .idle_timeout
                .try_into()
                .context("ingest.idle_timeout too large")?,
        ));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Accepts connections until `stop` turns true.
pub async fn serve(
    endpoint: quinn::Endpoint,
    ingest: Arc<Ingest>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
            _ = stop.changed() => break,
        };
        let ingest = ingest.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(connection) => {
                    handle_connection(connection, remote, ingest).await;
                }
                Err(err) => {
                    ingest.metrics.connections_refused.inc();
                    warn!(peer = %remote, reason = %err, "refused a connection");
                }
            }
        });
    }
    endpoint.close(0u32.into(), b"collector stopping");
}

async fn handle_connection(connection: quinn::Connection, remote: SocketAddr, ingest: Arc<Ingest>) {
    let metrics = &ingest.metrics;
    let chain = connection.peer_identity().and_then(|any| {
        any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let identity = match chain
        .as_deref()
        .map(|chain| custos_pki::tls::peer_identity(chain))
    {
        Some(Ok(identity)) => identity,
        other => {
            let reason = match other {
                Some(Err(err)) => err.to_string(),
                _ => "no client certificate".to_owned(),
            };
            metrics.connections_refused.inc();
            warn!(peer = %remote, reason, "refused a connection");
            connection.close(wire::CLOSE_NO_IDENTITY.into(), b"no usable identity");
            return;
        }
    };
    let chain = chain.unwrap_or_default();
    let mut revocation = ingest.revocation.clone();
    let mut revoked = false;
    let share = match ingest.budget.connect(&identity.name) {
        Ok(share) => share,
        Err(refusal) => {
            metrics.connections_refused.inc();
            let code = match refusal {
                budget::Refusal::TooManyConnections { .. } => wire::CLOSE_TOO_MANY_CONNECTIONS,
                budget::Refusal::CutOff { .. } => wire::CLOSE_MISBEHAVING,
            };
            warn!(agent = %identity.name, peer = %remote, reason = %refusal, "refused a connection");
            connection.close(code.into(), refusal.to_string().as_bytes());
            return;
        }
    };
    metrics.connections_accepted.inc();
    metrics.connected_agents.inc();
    info!(agent = %identity.name, peer = %remote, "agent connected");
    let peer = Arc::new(stream::Peer {
        certificate: Arc::new(chain.first().map(|c| c.to_vec()).unwrap_or_default()),
        identity,
        address: remote,
        clock: std::sync::Mutex::new(None),
        share,
    });
    let mut cut_off = false;
    let reason = loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    tokio::spawn(stream::handle(send, recv, peer.clone(), ingest.clone()));
                }
                Err(err) => break err,
            },
            () = revocation.revoked(&chain), if !revoked => {
                revoked = true;
                warn!(agent = %peer.identity.name, peer = %remote, "agent certificate revoked: closing its connection");
                connection.close(wire::CLOSE_CERTIFICATE_REVOKED.into(), b"certificate revoked");
            }
            () = peer.share.cut_off(), if !cut_off => {
                cut_off = true;
                warn!(
                    agent = %peer.identity.name,
                    peer = %remote,
                    "agent cut off for {:?}: {} garbage frames or stalled requests within {:?}; closing its connection",
                    budget::CUT_OFF_FOR,
                    budget::STRIKES,
                    budget::STRIKE_WINDOW,
                );
                connection.close(wire::CLOSE_MISBEHAVING.into(), b"misbehaving: cut off");
            }
        }
    };
    metrics.connected_agents.dec();
    info!(agent = %peer.identity.name, peer = %remote, reason = %reason, "agent disconnected");
}
