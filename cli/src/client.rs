//! The HTTPS client of the collector's query API, authenticated with the auditor's
//! certificate. Errors say what went wrong in the auditor's terms: the collector cannot be
//! reached, the certificate was refused, the role is not allowed, the session does not exist.
use std::{io::Read, sync::Arc, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use custos_pki::{Role, tls::TlsFiles};
use custos_proto::api::{ApiError, StreamEnd};
use serde::{Serialize, de::DeserializeOwned};
use ureq::{
    http::Response,
    tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig},
};

use crate::settings::Settings;

/// A response whose body is read as it comes.
pub type Streamed = Response<ureq::Body>;

pub struct Client {
    base: ureq::http::Uri,
    http: ureq::Agent,
    /// The certificate's name and role, for messages.
    pub identity: custos_pki::Identity,
}

impl Client {
    pub fn new(settings: &Settings) -> anyhow::Result<Client> {
        let files = TlsFiles {
            ca: &settings.ca,
            certificate: &settings.certificate,
            key: &settings.key,
        };
        // Checks the files as the daemons do (readable, the key matches, an auditor's or an
        // admin's certificate) and names the identity for messages.
        let (_, identity) =
            custos_pki::tls::client_config(&files, &[Role::Auditor, Role::Admin], &[b"http/1.1"])?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls_config(&files)?)
            .timeout_connect(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: settings.collector.clone(),
            http,
            identity,
        })
    }

    /// The collector's scheme and authority, `path` (already encoded) and the query.
    fn url(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<String> {
        let authority = self
            .base
            .authority()
            .with_context(|| format!("{} names no host", self.base))?;
        let mut url = format!("https://{authority}{path}");
        for (i, (key, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode(key));
            url.push('=');
            url.push_str(&encode(value));
        }
        Ok(url)
    }

    fn check(&self, sent: Result<Streamed, ureq::Error>) -> anyhow::Result<Streamed> {
        let mut response = sent.map_err(|err| self.transport_error(err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<ApiError>(&text)
            .map(|e| e.error)
            .unwrap_or(text);
        match status.as_u16() {
            403 => bail!("denied: {message}"),
            404 => bail!("{message}"),
            400 => bail!("refused: {message}"),
            code => bail!("the collector failed ({code}): {message}"),
        }
    }

    fn transport_error(&self, err: ureq::Error) -> anyhow::Error {
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(&err);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        let detail = chain.join(": ");
        let tls = matches!(err, ureq::Error::Rustls(_) | ureq::Error::Tls(_))
            || detail.to_lowercase().contains("certificate")
            || detail.contains("alert");
        match err {
            ureq::Error::Timeout(_) => {
                anyhow!("the collector at {} did not answer in time", self.base)
            }
            ureq::Error::Io(_) | ureq::Error::ConnectionFailed | ureq::Error::HostNotFound
                if !tls =>
            {
                anyhow!("cannot reach the collector at {}: {detail}", self.base)
            }
            _ => anyhow!(
                "the collector at {} refused the connection (is {} a certificate it accepts?): {detail}",
                self.base,
                self.identity
            ),
        }
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        json(path, self.stream(path, query)?)
    }

    /// A GET whose body is read as it comes, with the response's headers.
    pub fn stream(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Streamed> {
        self.check(self.http.get(self.url(path, query)?).call())
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body).context("encoding the request")?;
        let response = self.check(
            self.http
                .post(self.url(path, &[])?)
                .content_type("application/json")
                .send(&body[..]),
        )?;
        json(path, response)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        let response = self.check(self.http.delete(self.url(path, &[])?).call())?;
        let mut sink = Vec::new();
        let _ = response.into_body().into_reader().read_to_end(&mut sink);
        Ok(())
    }
}

/// Percent-encodes everything but unreserved characters, for a path segment or a query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Reads a JSON body as it comes (no size limit: a long session list is the auditor's ask).
pub fn json<T: DeserializeOwned>(path: &str, response: Streamed) -> anyhow::Result<T> {
    serde_json::from_reader(response.into_body().into_reader())
        .with_context(|| format!("unreadable answer from {path}"))
}

/// The deployment's CA as the only root, the auditor's certificate as the client's, TLS from
/// the same crypto provider as the daemons'.
fn tls_config(files: &TlsFiles<'_>) -> anyhow::Result<TlsConfig> {
    let roots: Vec<Certificate<'static>> = custos_pki::files::read_certificates(files.ca)?
        .iter()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    let chain: Vec<Certificate<'static>> = custos_pki::files::read_certificates(files.certificate)?
        .iter()
        .map(|der| Certificate::from_der(der).to_owned())
        .collect();
    // Read (and checked) by custos_pki first, for its messages.
    custos_pki::files::read_private_key(files.key)?;
    let pem =
        std::fs::read(files.key).with_context(|| format!("reading {}", files.key.display()))?;
    let key = PrivateKey::from_pem(&pem)
        .with_context(|| format!("{}: no private key in it", files.key.display()))?;
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&roots))
        .client_cert(Some(ClientCert::new_with_certs(&chain, key)))
        .unversioned_rustls_crypto_provider(Arc::new(custos_pki::tls::provider()))
        .build())
}

/// The lines of a streamed answer (`/events`, `/export`, `/verify`), read as they come, up to
/// its end line ([`StreamEnd`]). An end line saying the collector failed midway, or no end line
/// at all (the connection was cut), is an error after the lines read so far: what was read is
/// never taken for the whole answer.
pub struct StreamLines<R> {
    reader: R,
    what: String,
    read: u64,
    ended: bool,
}

impl<R: std::io::BufRead> StreamLines<R> {
    pub fn new(reader: R, what: &str) -> Self {
        StreamLines {
            reader,
            what: what.to_owned(),
            read: 0,
            ended: false,
        }
    }
}

impl StreamLines<std::io::BufReader<Box<dyn std::io::Read + Send + Sync + 'static>>> {
    /// The lines of a streamed response.
    pub fn of(response: Streamed, what: &str) -> Self {
        let reader: Box<dyn std::io::Read + Send + Sync> =
            Box::new(response.into_body().into_reader());
        StreamLines::new(std::io::BufReader::new(reader), what)
    }
}

impl<R: std::io::BufRead> Iterator for StreamLines<R> {
    type Item = anyhow::Result<String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let mut line = String::new();
        let got = match self.reader.read_line(&mut line) {
            Ok(got) => got,
            Err(err) => {
                self.ended = true;
                return Some(Err(anyhow!(
                    "{}: reading the answer failed after {} lines: {err}",
                    self.what,
                    self.read
                )));
            }
        };
        if got == 0 || !line.ends_with('\n') {
            self.ended = true;
            return Some(Err(anyhow!(
                "{}: the answer was cut off after {} lines (no end line from the collector): incomplete",
                self.what,
                self.read
            )));
        }
        line.pop();
        match StreamEnd::parse(&line) {
            None => {
                self.read += 1;
                Some(Ok(line))
            }
            Some(end) => {
                self.ended = true;
                match end {
                    Err(err) => Some(Err(anyhow!("{}: {err}", self.what))),
                    Ok(StreamEnd {
                        ok: true, lines, ..
                    }) if lines == self.read => None,
                    Ok(StreamEnd {
                        ok: true, lines, ..
                    }) => Some(Err(anyhow!(
                        "{}: the collector sent {lines} lines, {} arrived: incomplete",
                        self.what,
                        self.read
                    ))),
                    Ok(StreamEnd { error, .. }) => Some(Err(anyhow!(
                        "{}: the collector failed after {} lines: {}: incomplete",
                        self.what,
                        self.read,
                        error.unwrap_or_default()
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(body: &str) -> (Vec<String>, Option<String>) {
        let mut ok = Vec::new();
        for line in StreamLines::new(body.as_bytes(), "export") {
            match line {
                Ok(line) => ok.push(line),
                Err(err) => return (ok, Some(err.to_string())),
            }
        }
        (ok, None)
    }

    #[test]
    fn only_an_ok_end_line_ends_a_stream_well() {
        assert_eq!(
            lines("a\nb\n{\"custos_end\":{\"ok\":true,\"lines\":2}}\n"),
            (vec!["a".to_owned(), "b".to_owned()], None)
        );
        let (read, error) = lines(
            "a\n{\"custos_end\":{\"ok\":false,\"lines\":1,\"error\":\"chunk 1: fails authentication\"}}\n",
        );
        assert_eq!(read, ["a"]);
        let error = error.expect("a failure midway is an error");
        assert!(
            error.contains("failed after 1 lines: chunk 1: fails authentication"),
            "{error}"
        );
        for cut in ["a\nb\n", "a\nb", ""] {
            let (_, error) = lines(cut);
            assert!(error.expect("cut").contains("cut off"), "{cut:?}");
        }
        let (_, error) = lines("a\n{\"custos_end\":{\"ok\":true,\"lines\":2}}\n");
        assert!(error.expect("a line lost").contains("2 lines, 1 arrived"));
    }
}
