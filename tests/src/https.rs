//! A bare HTTPS request with a chosen client certificate, to see the collector's API accept or
//! refuse it in the handshake.
use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};

type Stream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the API on `port` with `identity` (certificate and key files).
fn connect(port: u16, ca: &Path, identity: (&Path, &Path)) -> Result<Stream, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(identity.0)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(identity.1).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let connection =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let socket = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    Ok(rustls::StreamOwned::new(connection, socket))
}

/// Sends `GET path` with `identity`; returns the response's status line, or the error.
pub fn get(port: u16, ca: &Path, identity: (&Path, &Path), path: &str) -> Result<String, String> {
    let mut stream = connect(port, ca, identity)?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    status_line(&mut stream)
}

/// Sends `METHOD path` with a JSON `body` and `identity`; returns the response's status line.
/// The body is sent whole even if the server answers early (a 413 before the end): a write
/// the server no longer reads is not an error here.
pub fn request(
    port: u16,
    ca: &Path,
    identity: (&Path, &Path),
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<String, String> {
    let mut stream = connect(port, ca, identity)?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let _ = stream.write_all(body).and_then(|()| stream.flush());
    status_line(&mut stream)
}

/// Reads the response to its end (a close cut short after some bytes still counts) and returns
/// its status line.
fn status_line(stream: &mut Stream) -> Result<String, String> {
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(err) if response.is_empty() => return Err(err.to_string()),
        Err(_) => {}
    }
    let text = String::from_utf8_lossy(&response);
    text.lines()
        .next()
        .filter(|line| line.starts_with("HTTP/"))
        .map(str::to_owned)
        .ok_or_else(|| format!("no HTTP response: {text:?}"))
}

/// An API connection kept open (HTTP/1.1 keep-alive) between requests.
pub struct Held {
    stream: Stream,
}

impl Held {
    /// Connects with `identity` and makes one request on the connection.
    pub fn open(port: u16, ca: &Path, identity: (&Path, &Path)) -> Result<Held, String> {
        let mut held = Held {
            stream: connect(port, ca, identity)?,
        };
        held.get("/v1/agents")?;
        Ok(held)
    }

    /// `GET path` on this connection; returns the status line.
    pub fn get(&mut self, path: &str) -> Result<String, String> {
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err("connection closed".into()),
                Err(err) => return Err(err.to_string()),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| format!("no content-length in {head:?}"))?;
        let mut body = vec![0u8; length];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| e.to_string())?;
        Ok(head.lines().next().unwrap_or_default().to_owned())
    }

    /// Waits up to `timeout` for the server to end the connection; whether it did.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.stream.sock.set_read_timeout(Some(left)).is_err() {
                return true;
            }
            let mut byte = [0u8; 1];
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(_) => return true,
            }
        }
    }
}
