//! Syslog over TLS (RFC 5425): one TCP connection to the receiver, TLS checked against a CA
//! bundle, each message framed by its length in octets (`LEN SP MSG`). The connection is kept
//! between alerts and made again when it fails.
use std::{
    io::Write as _,
    net::{TcpStream, ToSocketAddrs as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, StreamOwned, pki_types::ServerName};

/// How long connecting, the handshake and a write may take before the alert is given up.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A syslog receiver at `HOST:PORT` over TLS.
pub struct TlsSyslog {
    address: String,
    server: ServerName<'static>,
    tls: Arc<ClientConfig>,
    stream: Option<StreamOwned<ClientConnection, TcpStream>>,
}

impl TlsSyslog {
    /// A receiver at `address` (`HOST:PORT`) whose certificate chains to a CA in `ca` (PEM) and
    /// names HOST.
    pub fn new(address: &str, ca: &Path) -> Result<Self, String> {
        let host = address
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| format!("alerts.syslog: tls:{address} is not tls:HOST:PORT"))?;
        let server = ServerName::try_from(host.to_owned())
            .map_err(|err| format!("alerts.syslog: {host:?} is not a host name: {err}"))?;
        let roots = custos_pki::files::read_ca(ca)
            .map_err(|err| format!("alerts.syslog_ca: {}: {err}", ca.display()))?;
        let tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|err| format!("alerts.syslog: TLS: {err}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            address: address.to_owned(),
            server,
            tls: Arc::new(tls),
            stream: None,
        })
    }

    fn connect(&self) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let addr = self
            .address
            .to_socket_addrs()
            .map_err(|err| format!("resolving {}: {err}", self.address))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", self.address))?;
        let socket = TcpStream::connect_timeout(&addr, TIMEOUT)
            .map_err(|err| format!("connecting to {}: {err}", self.address))?;
        let set = |socket: &TcpStream| {
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.set_write_timeout(Some(TIMEOUT))
        };
        set(&socket).map_err(|err| err.to_string())?;
        let connection = ClientConnection::new(self.tls.clone(), self.server.clone())
            .map_err(|err| format!("TLS: {err}"))?;
        let mut stream = StreamOwned::new(connection, socket);
        // The handshake now, so that a receiver we do not trust is named as such.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|err| format!("TLS handshake with {}: {err}", self.address))?;
        }
        Ok(stream)
    }

    /// Sends one message, connecting (again) if needed; a failed write on a kept connection is
    /// tried once more on a new one.
    pub fn send(&mut self, message: &str) -> Result<(), String> {
        let framed = format!("{} {message}", message.len());
        for attempt in 0..2 {
            if self.stream.is_none() {
                self.stream = Some(self.connect()?);
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream
                .write_all(framed.as_bytes())
                .and_then(|()| stream.flush())
            {
                Ok(()) => return Ok(()),
                Err(err) => {
                    self.stream = None;
                    if attempt == 1 {
                        return Err(format!("writing to {}: {err}", self.address));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read as _, net::TcpListener};

    use custos_pki::issue::{PkiDir, init};

    use super::*;

    /// A TLS syslog receiver on localhost with the certificate of `pki`'s collector (named
    /// localhost); returns its port and what it read from the first connection.
    fn receiver(pki: &PkiDir) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let certs = custos_pki::files::read_certificates(&pki.collector_cert()).unwrap();
        let key = custos_pki::files::read_private_key(&pki.collector_key()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            socket.set_read_timeout(Some(TIMEOUT)).unwrap();
            let connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut stream = StreamOwned::new(connection, socket);
            let mut read = Vec::new();
            let _ = stream.read_to_end(&mut read);
            read
        });
        (port, handle)
    }

    fn pki(dir: &Path) -> PkiDir {
        let pki = PkiDir::new(dir.join("pki"));
        init(&pki, &["localhost".into()], 1).unwrap();
        pki
    }

    #[test]
    fn messages_reach_a_trusted_receiver_framed_by_length() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let (port, received) = receiver(&pki);
        let mut syslog = TlsSyslog::new(&format!("localhost:{port}"), &pki.ca_cert()).unwrap();
        syslog.send("<84>1 first").unwrap();
        syslog.send("<84>1 second alert").unwrap();
        drop(syslog);
        let received = String::from_utf8(received.join().unwrap()).unwrap();
        assert_eq!(received, "11 <84>1 first18 <84>1 second alert");
    }

    #[test]
    fn a_receiver_of_another_ca_gets_nothing_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = pki(&dir.path().join("theirs"));
        let ours = pki(&dir.path().join("ours"));
        let (port, received) = receiver(&theirs);
        let mut syslog = TlsSyslog::new(&format!("localhost:{port}"), &ours.ca_cert()).unwrap();
        let err = syslog.send("<84>1 secret").unwrap_err();
        assert!(err.contains("TLS handshake with localhost"), "{err}");
        assert!(received.join().unwrap().is_empty());
    }

    #[test]
    fn a_bad_target_or_ca_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let err = TlsSyslog::new("localhost", &pki.ca_cert()).err().unwrap();
        assert!(err.contains("tls:HOST:PORT"), "{err}");
        let err = TlsSyslog::new("localhost:6514", &dir.path().join("none.pem"))
            .err()
            .unwrap();
        assert!(
            err.contains("alerts.syslog_ca") && err.contains("none.pem"),
            "{err}"
        );
    }
}
