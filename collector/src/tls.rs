//! The collector's TLS material and its reloading.
//!
//! Owns the server configurations of ingest (QUIC, agents) and the query API (HTTPS, auditors),
//! built from the CA, the CA's revocation list (`tls.crl`) and the collector's certificate. They
//! are rebuilt on SIGHUP and whenever the revocation list's file changes (looked at every
//! `tls.crl_check_every`); a list or certificate that cannot be used is logged, naming the file,
//! and the previous configuration stays in force. Open connections watch a [`Revocation`] and
//! close themselves once their peer's certificate is revoked.
use std::sync::{Arc, Mutex};

use custos_pki::{
    Identity, Role,
    tls::{self as pki_tls, TlsFiles},
};
use custos_proto::wire;
use rustls::{pki_types::CertificateDer, server::danger::ClientCertVerifier};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{api, config::Config, ingest};

/// Every TLS configuration of the collector, built at once from the files.
pub struct Loaded {
    pub quic: quinn::ServerConfig,
    pub api: Arc<rustls::ServerConfig>,
    /// The collector's own identity (its certificate).
    pub identity: Identity,
    agents: Arc<dyn ClientCertVerifier>,
    auditors: Arc<dyn ClientCertVerifier>,
    /// The revocation list's file as read.
    crl: Vec<u8>,
}

/// Builds every configuration from the files `config` names; each error names its file.
pub fn load(config: &Config) -> anyhow::Result<Loaded> {
    let tls = &config.tls;
    // Read first, so that the list compared later is the one in force.
    let crl = std::fs::read(&tls.crl).unwrap_or_default();
    let files = TlsFiles {
        ca: &tls.ca,
        certificate: &tls.certificate,
        key: &tls.key,
    };
    // The collector's own pair first: its errors come before the revocation list's.
    custos_pki::files::load_pair(&tls.certificate, &tls.key, &[Role::Collector])?;
    let agents = pki_tls::client_verifier(&tls.ca, &tls.crl, &[Role::Agent])?;
    let auditors = pki_tls::client_verifier(&tls.ca, &tls.crl, &api::ROLES)?;
    let (quic_tls, identity) = pki_tls::server_config(&files, agents.clone(), &[wire::ALPN])?;
    let (api_tls, _) = pki_tls::server_config(&files, auditors.clone(), &[b"http/1.1"])?;
    Ok(Loaded {
        quic: ingest::quic_config(config, quic_tls)?,
        api: Arc::new(api_tls),
        identity,
        agents,
        auditors,
        crl,
    })
}

/// The client verifier in force, for an open connection to check its peer against again
/// whenever it changes.
#[derive(Clone)]
pub struct Revocation(watch::Receiver<Arc<dyn ClientCertVerifier>>);

impl Revocation {
    /// Resolves once the verifier in force refuses `chain` as revoked; never otherwise.
    pub async fn revoked(&mut self, chain: &[CertificateDer<'_>]) {
        loop {
            let revoked = pki_tls::is_revoked(self.0.borrow_and_update().as_ref(), chain);
            if revoked {
                return;
            }
            if self.0.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Applies newly loaded configurations to the running servers.
pub struct Reloader {
    config: Config,
    endpoint: quinn::Endpoint,
    api: watch::Sender<Arc<rustls::ServerConfig>>,
    agents: watch::Sender<Arc<dyn ClientCertVerifier>>,
    auditors: watch::Sender<Arc<dyn ClientCertVerifier>>,
    /// The revocation list's contents last looked at (used or refused).
    crl_seen: Mutex<Vec<u8>>,
}

/// What the servers take from a [`Reloader`].
pub struct Receivers {
    pub api: watch::Receiver<Arc<rustls::ServerConfig>>,
    pub agents: Revocation,
    pub auditors: Revocation,
}

impl Reloader {
    /// For `endpoint` (already serving `loaded.quic`) and the API.
    pub fn new(
        config: &Config,
        endpoint: quinn::Endpoint,
        loaded: Loaded,
    ) -> (Arc<Self>, Receivers) {
        let (api, api_rx) = watch::channel(loaded.api);
        let (agents, agents_rx) = watch::channel(loaded.agents);
        let (auditors, auditors_rx) = watch::channel(loaded.auditors);
        let reloader = Arc::new(Reloader {
            config: config.clone(),
            endpoint,
            api,
            agents,
            auditors,
            crl_seen: Mutex::new(loaded.crl),
        });
        let receivers = Receivers {
            api: api_rx,
            agents: Revocation(agents_rx),
            auditors: Revocation(auditors_rx),
        };
        (reloader, receivers)
    }

    /// Reloads the CA, the revocation list and the collector's certificate (SIGHUP). On an
    /// error the running configuration stays.
    pub fn reload(&self) -> anyhow::Result<Identity> {
        let loaded = load(&self.config);
        if let Ok(mut seen) = self.crl_seen.lock() {
            // The list in force, or the refused one (not to be tried again until it changes).
            *seen = match &loaded {
                Ok(loaded) => loaded.crl.clone(),
                Err(_) => std::fs::read(&self.config.tls.crl).unwrap_or_default(),
            };
        }
        let loaded = loaded?;
        self.endpoint.set_server_config(Some(loaded.quic));
        self.api.send_replace(loaded.api);
        self.agents.send_replace(loaded.agents);
        self.auditors.send_replace(loaded.auditors);
        Ok(loaded.identity)
    }

    /// Reloads whenever the revocation list's file changes, until `stop`.
    pub async fn watch_crl(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let path = self.config.tls.crl.clone();
        let mut tick = tokio::time::interval(self.config.tls.crl_check_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let current = std::fs::read(&path).unwrap_or_default();
            let changed = self
                .crl_seen
                .lock()
                .map(|seen| *seen != current)
                .unwrap_or(false);
            if !changed {
                continue;
            }
            match self.reload() {
                Ok(_) => info!(crl = %path.display(), "revocation list changed: reloaded"),
                Err(err) => warn!(
                    error = %format!("{err:#}"),
                    "revocation list changed but cannot be used; keeping the previous one"
                ),
            }
        }
    }
}
