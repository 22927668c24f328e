//! A bare QUIC client for tests that present odd certificates or send broken frames, to see
//! the collector refuse them.
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use custos_proto::wire;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("usable CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut tls = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .expect("certificate file")
                .collect::<Result<_, _>>()
                .expect("certificate");
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).expect("QUIC TLS")))
}

/// Connects with `identity` (certificate and key files) or none; the endpoint and the
/// connection once the collector accepted the certificate.
pub async fn connect(
    address: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("address"))
        .map_err(|e| e.to_string())?;
    let connecting = endpoint
        .connect_with(client_config(ca, identity), address, "localhost")
        .map_err(|e| e.to_string())?;
    let connection = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    // The server verifies the client's certificate after the client finished its part; a
    // refusal arrives as the connection closing.
    match tokio::time::timeout(Duration::from_millis(500), connection.closed()).await {
        Ok(reason) => Err(reason.to_string()),
        Err(_) => Ok((endpoint, connection)),
    }
}

/// Tries a handshake with `identity` (certificate and key files) or none.
pub fn handshake(
    address: SocketAddr,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<(), String> {
    runtime().block_on(async {
        let (endpoint, connection) = connect(address, ca, identity).await?;
        connection.close(0u32.into(), b"test done");
        endpoint.wait_idle().await;
        Ok(())
    })
}

/// What the collector did with a request sent on its own stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// An ack, with whether the collector had stored the batch before.
    Ack {
        duplicate: bool,
    },
    /// An error frame: the collector refused the request.
    Error {
        code: wire::ErrorCode,
        message: String,
    },
    /// Another frame, by kind.
    Frame(String),
    /// The stream was reset with this application error code.
    Reset(u64),
    Other(String),
}

/// Sends `bytes` (a request frame) on a new stream of `connection`; the collector's answer.
pub async fn exchange(connection: &quinn::Connection, bytes: &[u8]) -> Answer {
    let Ok((mut send, mut recv)) = connection.open_bi().await else {
        return Answer::Other("cannot open a stream".into());
    };
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            return Answer::Reset(code.into_inner());
        }
        Err(err) => return Answer::Other(err.to_string()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    let mut body = vec![0u8; len];
    if let Err(err) = recv.read_exact(&mut body).await {
        return Answer::Other(err.to_string());
    }
    match wire::decode_frame(&body) {
        Ok(wire::Frame::Ack(ack)) => Answer::Ack {
            duplicate: ack.duplicate,
        },
        Ok(wire::Frame::Error(error)) => Answer::Error {
            code: error.code,
            message: error.message,
        },
        Ok(frame) => Answer::Frame(frame.kind().to_owned()),
        Err(err) => Answer::Other(err.to_string()),
    }
}

/// On one authenticated connection, sends each request on its own stream, one after another,
/// and
/// returns the answers in order.
pub fn requests(
    address: SocketAddr,
    ca: &Path,
    identity: (&Path, &Path),
    requests: &[Vec<u8>],
) -> Result<Vec<Answer>, String> {
    runtime().block_on(async {
        let (endpoint, connection) = connect(address, ca, Some(identity)).await?;
        let mut answers = Vec::new();
        let futures: Vec<_> = requests.iter().map(|r| exchange(&connection, r)).collect();
        for future in futures {
            answers.push(
                tokio::time::timeout(Duration::from_secs(20), future)
                    .await
                    .unwrap_or(Answer::Other("no answer".into())),
            );
        }
        connection.close(0u32.into(), b"test done");
        endpoint.wait_idle().await;
        Ok(answers)
    })
}

/// A QUIC connection kept open, driven by its own runtime while the test does other things.
pub struct Held {
    runtime: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

impl Held {
    /// Connects with `identity` (certificate and key files).
    pub fn open(address: SocketAddr, ca: &Path, identity: (&Path, &Path)) -> Result<Held, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (endpoint, connection) = runtime.block_on(connect(address, ca, Some(identity)))?;
        Ok(Held {
            runtime,
            endpoint,
            connection,
        })
    }

    /// Sends one request on its own stream and waits (at most 60 s) for the collector's answer.
    pub fn request(&self, bytes: &[u8]) -> Answer {
        self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), exchange(&self.connection, bytes))
                .await
                .unwrap_or(Answer::Other("no answer".into()))
        })
    }

    /// Waits up to `timeout` for the connection to close; why it closed, if it did.
    pub fn closed_within(&self, timeout: Duration) -> Option<quinn::ConnectionError> {
        // The timer is made inside the runtime (it needs its time driver).
        self.runtime
            .block_on(async { tokio::time::timeout(timeout, self.connection.closed()).await })
            .ok()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Closing wakes the connection's driver, which lives in this runtime.
        let _inside = self.runtime.enter();
        self.connection.close(0u32.into(), b"test done");
        if std::thread::panicking() {
            return;
        }
        let endpoint = self.endpoint.clone();
        let _ = self.runtime.block_on(tokio::time::timeout(
            Duration::from_secs(2),
            endpoint.wait_idle(),
        ));
    }
}
