//! The HTTPS client of the collector's query API, authenticated with the auditor's
//! certificate. Errors say what went wrong in the auditor's terms: the collector cannot be
//! reached, the certificate was refused, the role is not allowed, the session does not exist.
use std::{io::Read, time::Duration};

use anyhow::{Context as _, anyhow, bail};
use custos_pki::{Role, tls::TlsFiles};
use custos_proto::api::ApiError;
use serde::{Serialize, de::DeserializeOwned};

use crate::settings::Settings;

pub struct Client {
    base: url::Url,
    http: reqwest::blocking::Client,
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
        let (tls, identity) =
            custos_pki::tls::client_config(&files, &[Role::Auditor, Role::Admin], &[b"http/1.1"])?;
        let http = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .build()
            .context("setting up HTTPS")?;
        Ok(Client {
            base: settings.collector.clone(),
            http,
            identity,
        })
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<url::Url> {
        let mut url = self
            .base
            .join(path)
            .with_context(|| format!("building the URL for {path}"))?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        Ok(url)
    }

    fn send(
        &self,
        request: reqwest::blocking::RequestBuilder,
    ) -> anyhow::Result<reqwest::blocking::Response> {
        let response = request.send().map_err(|err| self.transport_error(err))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().unwrap_or_default();
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

    fn transport_error(&self, err: reqwest::Error) -> anyhow::Error {
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(&err);
        while let Some(cause) = source {
            chain.push(cause.to_string());
            source = cause.source();
        }
        let detail = chain.join(": ");
        if err.is_connect()
            && !detail.to_lowercase().contains("certificate")
            && !detail.contains("alert")
        {
            anyhow!("cannot reach the collector at {}: {detail}", self.base)
        } else if err.is_timeout() {
            anyhow!("the collector at {} did not answer in time", self.base)
        } else {
            anyhow!(
                "the collector at {} refused the connection (is {} a certificate it accepts?): {detail}",
                self.base,
                self.identity
            )
        }
    }

    pub fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let response = self.send(self.http.get(self.url(path, query)?))?;
        response
            .json()
            .with_context(|| format!("unreadable answer from {path}"))
    }

    /// A GET whose body is read as it comes, with the response's headers.
    pub fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::blocking::Response> {
        self.send(self.http.get(self.url(path, query)?))
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let response = self.send(self.http.post(self.url(path, &[])?).json(body))?;
        response
            .json()
            .with_context(|| format!("unreadable answer from {path}"))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        let mut response = self.send(self.http.delete(self.url(path, &[])?))?;
        let mut sink = Vec::new();
        let _ = response.read_to_end(&mut sink);
        Ok(())
    }
}
