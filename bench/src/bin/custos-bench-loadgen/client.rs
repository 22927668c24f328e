//! The QUIC client: connections, hellos, batches on their own streams, acknowledgements.
use quinn::crypto::rustls::QuicClientConfig;
use tokio::task::JoinSet;

use super::*;

/// Largest answer accepted from the collector.
const MAX_RESPONSE: usize = 1024 * 1024;
/// Agents sharing one UDP socket.
const AGENTS_PER_ENDPOINT: usize = 50;
/// Handshakes under way at once (like agents reconnecting after a collector restart).
const CONCURRENT_HANDSHAKES: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// What one simulated agent sends: per session, its encoded batch frames in order.
pub struct AgentPlan {
    pub name: String,
    pub spool: SpoolId,
    pub sessions: Vec<Vec<Vec<u8>>>,
}

/// What the collector acknowledged.
#[derive(Default)]
pub struct Outcome {
    pub agents: usize,
    pub connect_secs: f64,
    pub secs: f64,
    pub batches: u64,
    pub events: u64,
    pub raw_bytes: u64,
    pub wire_bytes: u64,
    pub retries: u64,
    /// Batches acknowledged as stored before.
    pub duplicates: u64,
    /// Acknowledgement latencies in seconds.
    pub latencies: Vec<f64>,
}

impl Outcome {
    pub fn print(&self) {
        let mut lat = self.latencies.clone();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
            }
        };
        println!("agents={}", self.agents);
        println!("connect_secs={:.4}", self.connect_secs);
        println!("secs={:.4}", self.secs);
        println!("batches={}", self.batches);
        println!("events={}", self.events);
        println!("raw_bytes={}", self.raw_bytes);
        println!("wire_bytes={}", self.wire_bytes);
        println!("retries={}", self.retries);
        println!("duplicates={}", self.duplicates);
        println!("ack_p50_ms={:.3}", pct(0.50) * 1000.0);
        println!("ack_p99_ms={:.3}", pct(0.99) * 1000.0);
    }
}

fn config(target: &Target, name: &str) -> anyhow::Result<quinn::ClientConfig> {
    let issued = target.pki.join("issued");
    let certificate = issued.join(format!("agent-{name}.pem"));
    let key = issued.join(format!("agent-{name}.key"));
    let ca = target.pki.join("ca.pem");
    let files = TlsFiles {
        ca: &ca,
        certificate: &certificate,
        key: &key,
    };
    let (tls, _) = custos_pki::tls::client_config(&files, &[Role::Agent], &[wire::ALPN])
        .with_context(|| format!("TLS configuration of {name}"))?;
    let crypto = QuicClientConfig::try_from(tls).context("TLS configuration unusable for QUIC")?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_idle_timeout(Some(
            Duration::from_secs(40).try_into().context("idle timeout")?,
        ));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// One request on its own stream: the frame out, the answer back.
async fn request(connection: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Frame> {
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await.context("opening a stream")?;
        send.write_all(bytes).await.context("sending")?;
        let _ = send.finish();
        custos_daemon::quic::read_frame(&mut recv, MAX_RESPONSE)
            .await
            .context("reading the answer")
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
}

async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    target: &Target,
    plan: &AgentPlan,
) -> anyhow::Result<quinn::Connection> {
    let connection = endpoint
        .connect_with(config, target.collector, "localhost")?
        .await
        .with_context(|| format!("handshake of {}", plan.name))?;
    let hello = Frame::Hello(Hello {
        protocol: wire::PROTOCOL_VERSION,
        agent_version: "bench".into(),
        host: plan.name.clone(),
        boot_id: BootId("6f1c2a9e-8d3b-4c7a-9e21-0b5d4f3a7c18".into()),
        spool: plan.spool.clone(),
        time: Some(custos_proto::Timestamp::now()),
    });
    match request(&connection, &wire::encode_frame(&hello)).await? {
        Frame::Welcome(_) => Ok(connection),
        other => bail!("{}: hello answered with {other:?}", plan.name),
    }
}

/// Sends one session's batches in order, each after the previous one's ack.
async fn session(connection: quinn::Connection, batches: Vec<Vec<u8>>) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    for bytes in batches {
        let header = match wire::decode_frame(&bytes[4..])? {
            Frame::Batch(batch) => batch.header,
            _ => bail!("not a batch frame"),
        };
        loop {
            let sent = Instant::now();
            match request(&connection, &bytes).await? {
                Frame::Ack(ack) if ack.seq == header.seq && ack.duplicate => {
                    // Stored before (a rerun on a kept store): not counted.
                    outcome.duplicates += 1;
                    break;
                }
                Frame::Ack(ack) if ack.seq == header.seq => {
                    outcome.latencies.push(sent.elapsed().as_secs_f64());
                    outcome.batches += 1;
                    outcome.events += u64::from(header.events);
                    outcome.raw_bytes += header.raw_len;
                    outcome.wire_bytes += bytes.len() as u64;
                    break;
                }
                Frame::Error(err) if err.code.is_transient() => {
                    outcome.retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => bail!("batch {}: answered with {other:?}", header.seq),
            }
        }
    }
    Ok(outcome)
}

/// Connects every agent, then (all connected) sends everything; times the second part.
pub async fn run_all(target: &Target, plans: Vec<AgentPlan>) -> anyhow::Result<Outcome> {
    let agents = plans.len();
    let endpoints: Vec<quinn::Endpoint> = (0..agents.div_ceil(AGENTS_PER_ENDPOINT))
        .map(|_| {
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("valid address"))
                .context("opening a UDP socket")
        })
        .collect::<anyhow::Result<_>>()?;
    let connecting = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    let mut handshakes = JoinSet::new();
    let target = Arc::new(target.clone());
    for (i, plan) in plans.into_iter().enumerate() {
        let endpoint = endpoints[i / AGENTS_PER_ENDPOINT].clone();
        let config = config(&target, &plan.name)?;
        let (limit, target) = (limit.clone(), target.clone());
        handshakes.spawn(async move {
            let _permit = limit.acquire().await.context("semaphore")?;
            let connection = connect(&endpoint, config, &target, &plan).await?;
            anyhow::Ok((connection, plan))
        });
    }
    let mut connected = Vec::with_capacity(agents);
    while let Some(done) = handshakes.join_next().await {
        connected.push(done.context("handshake task")??);
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let start = Instant::now();
    let mut sends = JoinSet::new();
    for (connection, plan) in &mut connected {
        for batches in std::mem::take(&mut plan.sessions) {
            sends.spawn(session(connection.clone(), batches));
        }
    }
    let mut total = Outcome {
        agents,
        connect_secs,
        ..Outcome::default()
    };
    while let Some(done) = sends.join_next().await {
        let part = done.context("session task")??;
        total.batches += part.batches;
        total.events += part.events;
        total.raw_bytes += part.raw_bytes;
        total.wire_bytes += part.wire_bytes;
        total.retries += part.retries;
        total.duplicates += part.duplicates;
        total.latencies.extend(part.latencies);
    }
    total.secs = start.elapsed().as_secs_f64();
    for (connection, _) in &connected {
        connection.close(0u32.into(), b"bench done");
    }
    for endpoint in endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    Ok(total)
}
