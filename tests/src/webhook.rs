//! An HTTPS webhook receiver, as a SIEM would run one: it accepts POSTs over TLS (with a
//! certificate of the test deployment's CA) and keeps each JSON body with the time it arrived.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::Path,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant, SystemTime},
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// A body received, and when.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: SystemTime,
    pub body: serde_json::Value,
}

type Shared = Arc<(Mutex<Vec<Received>>, Condvar)>;

pub struct Receiver {
    pub port: u16,
    received: Shared,
}

impl Receiver {
    /// Listens on a free loopback port with `cert`/`key` (PEM files).
    pub fn start(cert: &Path, key: &Path) -> Receiver {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received: Shared = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let shared = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, shared) = (config.clone(), shared.clone());
                std::thread::spawn(move || {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let tls = rustls::StreamOwned::new(connection, stream);
                    serve(tls, &shared);
                });
            }
        });
        Receiver { port, received }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/custos", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `check` holds for what arrived, at most `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let (lock, changed) = &*self.received;
        let deadline = Instant::now() + timeout;
        let mut received = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if check(&received) {
                return received.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received {:?}",
                    *received
                );
            }
            received = changed
                .wait_timeout(received, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// HTTP/1.1 requests on one connection, one after another.
fn serve(stream: impl Read + Write, shared: &Shared) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = SystemTime::now();
        if let Ok(body) = serde_json::from_slice(&body) {
            let (lock, changed) = &**shared;
            lock.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Received { at, body });
            changed.notify_all();
        }
        let stream = reader.get_mut();
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .and_then(|()| stream.flush())
            .is_err()
        {
            return;
        }
    }
}
