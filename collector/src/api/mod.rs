//! The query API: HTTPS (rustls) for auditors, who authenticate with a certificate of the
//! deployment CA carrying the auditor or admin role; agent certificates and unknown roles are
//! refused in the handshake. Every request, allowed or not, goes to the access log. Endpoints
//! are listed in docs/api.md; the store knows nothing of this module.
mod export;
mod handlers;
mod stream;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    body::Body,
    extract::{Request, State},
    middleware::{self, Next},
    response::Response,
    routing::{delete, get, post},
};
use custos_pki::{Identity, Role};
use custos_proto::api::path;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{retention::Retention, store::StoreConfig, tls::Revocation};

pub use export::Asciicast;

/// Who is asking.
#[derive(Clone, Debug)]
pub struct Caller {
    pub identity: Identity,
    pub peer: SocketAddr,
    /// Set once the request is in the access log (one flag per request, see [`log_refusals`]).
    pub logged: Arc<AtomicBool>,
}

impl Caller {
    pub fn new(identity: Identity, peer: SocketAddr) -> Self {
        Self {
            identity,
            peer,
            logged: Arc::default(),
        }
    }
}

/// The longest request target (path and query) an access log entry of a refused request keeps.
const MAX_LOGGED_TARGET: usize = 512;
/// The most of a refusal's message read back for the access log.
const MAX_LOGGED_MESSAGE: usize = 1024;

/// Logs a request that no handler logged: one refused before its handler ran (a query, path
/// or body its extractor rejected: 400, 413, 415, 422; a method the endpoint does not take:
/// 405). The entry says who, the role, the peer, action `refused`, the method and target, and
/// the status with the refusal's message.
async fn log_refusals(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return next.run(request).await;
    };
    let caller = Caller {
        logged: Arc::default(),
        ..caller
    };
    request.extensions_mut().insert(caller.clone());
    let mut target = format!("{} {}", request.method(), request.uri());
    if target.len() > MAX_LOGGED_TARGET {
        let mut end = MAX_LOGGED_TARGET;
        while !target.is_char_boundary(end) {
            end -= 1;
        }
        target.truncate(end);
        target.push_str("...");
    }
    let response = next.run(request).await;
    if caller.logged.load(Ordering::Relaxed) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A refusal's body is a short message; a response no handler logged is not a stream.
    let message = axum::body::to_bytes(body, MAX_LOGGED_MESSAGE)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&message);
    let status = parts.status;
    let result = format!(
        "refused: {} {}{}{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        if text.is_empty() { "" } else { ": " },
        text.trim()
    );
    let state = state.clone();
    let logging = caller.clone();
    let _ = tokio::task::spawn_blocking(move || {
        state.log_blocking(&logging, "refused", &target, &result)
    })
    .await;
    Response::from_parts(parts, Body::from(message))
}

pub struct ApiState {
    pub store: StoreConfig,
    pub audit: Arc<std::sync::Mutex<crate::audit::Audit>>,
    /// Retention: its period, the holds, and purging.
    pub retention: Arc<Retention>,
    pub metrics: Arc<crate::metrics::CollectorMetrics>,
}

/// Roles that may connect at all.
pub const ROLES: [Role; 2] = [Role::Auditor, Role::Admin];

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route(path::SESSIONS, get(handlers::sessions))
        .route(path::SESSION, get(handlers::show))
        .route(path::SESSION_EVENTS, get(handlers::events))
        .route(path::SESSION_EXPORT, get(handlers::export))
        .route(path::SEARCH, get(handlers::search))
        .route(path::VERIFY, get(handlers::verify))
        .route(path::ACCESS_LOG, get(handlers::access_log))
        .route(path::HOLDS, get(handlers::holds).post(handlers::add_hold))
        .route(path::HOLD, delete(handlers::remove_hold))
        .route(path::RETENTION, get(handlers::retention))
        .route(path::RETENTION_PURGE, post(handlers::purge))
        .route(path::AGENTS, get(handlers::agents))
        .fallback(handlers::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), log_refusals))
        .with_state(state)
}

/// Serves HTTPS on `listener` until `stop`; `tls` may be replaced (SIGHUP, a new revocation
/// list) while running, and a connection whose certificate `revocation` revokes is aborted.
pub async fn serve(
    listener: TcpListener,
    tls: watch::Receiver<Arc<rustls::ServerConfig>>,
    revocation: Revocation,
    state: Arc<ApiState>,
    mut stop: watch::Receiver<bool>,
) {
    let app = router(state);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        // Small request/response exchanges: without this, Nagle's algorithm and the client's
        // delayed ACK can hold the last piece of a response for tens of milliseconds.
        if let Err(err) = stream.set_nodelay(true) {
            warn!(error = %err, "cannot set TCP_NODELAY on an API connection");
        }
        let acceptor = TlsAcceptor::from(tls.borrow().clone());
        let app = app.clone();
        let mut revocation = revocation.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(20), acceptor.accept(stream))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    warn!(peer = %peer, reason = %err, "refused an API connection");
                    return;
                }
                Err(_) => {
                    warn!(peer = %peer, "API handshake timed out");
                    return;
                }
            };
            let chain: Vec<_> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default();
            let identity = match chain.is_empty() {
                true => Err("no client certificate".to_owned()),
                false => custos_pki::tls::peer_identity(&chain).map_err(|e| e.to_string()),
            };
            let identity = match identity {
                Ok(identity) => identity,
                Err(reason) => {
                    warn!(peer = %peer, reason, "refused an API connection");
                    return;
                }
            };
            debug!(peer = %peer, caller = %identity, "API connection");
            let caller = identity.to_string();
            let service =
                TowerToHyperService::new(app.layer(axum::Extension(Caller::new(identity, peer))));
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::select! {
                ended = connection => if let Err(err) = ended {
                    debug!(peer = %peer, error = %err, "API connection ended");
                },
                () = revocation.revoked(&chain) => {
                    warn!(peer = %peer, caller, "certificate revoked: API connection aborted");
                }
            }
        });
    }
}

/// Binds the API's TCP listener.
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on TCP {address} (api.listen)"))?;
    info!(address = %listener.local_addr()?, "query API listening");
    Ok(listener)
}
