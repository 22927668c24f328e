//! The Prometheus endpoint both daemons serve: `GET /metrics` in the OpenMetrics text format on a
//! local address (`[metrics] listen`), without TLS, so keep it on loopback or a management
//! network. Each daemon registers its own metrics in a [`Registry`].
use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
pub use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

/// The label of a count kept per policy or alert rule (`rule="files.exclude /tmp/**"`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

/// `[metrics]` in a daemon's configuration; by default on loopback port `PORT`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig<const PORT: u16> {
    /// TCP address of the endpoint; `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
}

/// `[metrics]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetricsConfig {
    #[serde(default, deserialize_with = "listen_or_off")]
    listen: Option<Option<SocketAddr>>,
}

impl<'de, const PORT: u16> Deserialize<'de> for MetricsConfig<PORT> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawMetricsConfig::deserialize(deserializer)?;
        Ok(match raw.listen {
            Some(listen) => Self { listen },
            None => Self::default(),
        })
    }
}

impl<const PORT: u16> Default for MetricsConfig<PORT> {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], PORT))),
        }
    }
}

fn listen_or_off<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<SocketAddr>>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text == "off" {
        return Ok(Some(None));
    }
    text.parse().map(|a| Some(Some(a))).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address (like \"127.0.0.1:9464\") or \"off\""
        ))
    })
}

/// Binds the endpoint now (so a taken port fails the start, not later) and serves it until
/// `stop` turns true.
pub async fn serve<const PORT: u16>(
    config: &MetricsConfig<PORT>,
    registry: Registry,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(listen) = config.listen else {
        return Ok(None);
    };
    let listener = TcpListener::bind(listen).await.map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!("metrics.listen: cannot listen on {listen}: {err}"),
        )
    })?;
    let bound = listener.local_addr()?;
    info!(address = %bound, "metrics at http://{bound}/metrics");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry));
    Ok(Some(tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        };
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(error = %err, "metrics endpoint failed");
        }
    })))
}

async fn metrics(State(registry): State<Arc<Registry>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(err) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {err}"),
        )
            .into_response(),
    }
}

/// Tells systemd (Type=notify) that the daemon is ready; nothing when not under systemd.
pub fn notify_ready() {
    if let Err(err) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        warn!(error = %err, "cannot notify systemd");
    }
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Wrapper {
        #[serde(default)]
        metrics: MetricsConfig<9>,
    }

    #[test]
    fn listen_is_an_address_or_off() {
        let on: Wrapper = toml::from_str("[metrics]\nlisten = \"127.0.0.1:9\"").expect("address");
        assert_eq!(
            on.metrics.listen,
            Some("127.0.0.1:9".parse().expect("addr"))
        );
        let off: Wrapper = toml::from_str("[metrics]\nlisten = \"off\"").expect("off");
        assert_eq!(off.metrics.listen, None);
        let bad = toml::from_str::<Wrapper>("[metrics]\nlisten = \"localhost\"")
            .err()
            .expect("refused");
        assert!(bad.to_string().contains("not an address"), "{bad}");
        let default: Wrapper = toml::from_str("").expect("default");
        assert_eq!(
            default.metrics.listen,
            Some("127.0.0.1:9".parse().expect("addr"))
        );
    }
}
