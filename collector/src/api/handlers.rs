//! The API's endpoints. Each checks the caller's role, does its work on a blocking thread with
//! its own read-only view of the store, and writes one access log entry.
use std::sync::Arc;

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use custos_pki::Role;
use custos_proto::{
    Timestamp,
    api::{
        AccessEntry, AccessLog, ApiError, HoldKind, Holds, NewHold, RetentionInfo, SearchResults,
        SessionList, VerifyLine, VerifyResult,
    },
};
use serde::Deserialize;

use super::{ApiState, Caller, export, stream};
use crate::{index::Filter, retention, store::Store};

/// An error response: a status and a message for the auditor.
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

fn internal(err: impl std::fmt::Display) -> Failure {
    Failure(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
}

const DEFAULT_LIMIT: usize = 200;
const MAX_LIMIT: usize = 10_000;

fn time(name: &str, value: &Option<String>) -> Result<Option<Timestamp>, Failure> {
    value
        .as_deref()
        .map(|text| {
            text.parse::<Timestamp>().map_err(|err| {
                Failure(
                    StatusCode::BAD_REQUEST,
                    format!("{name}: {text:?} is not an RFC 3339 time: {err}"),
                )
            })
        })
        .transpose()
}

/// Runs `work` on a blocking thread with a read-only store.
async fn with_store<T: Send + 'static>(
    state: &Arc<ApiState>,
    work: impl FnOnce(&Store) -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    let config = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let store = Store::open_read_only(&config).map_err(internal)?;
        work(&store)
    })
    .await
    .map_err(internal)?
}

impl ApiState {
    fn log(&self, caller: &Caller, action: &str, target: &str, result: &str) {
        tokio::task::block_in_place(|| self.log_blocking(caller, action, target, result));
    }

    /// Writes one access log entry (and counts it), from a thread that may block.
    pub(super) fn log_blocking(&self, caller: &Caller, action: &str, target: &str, result: &str) {
        caller
            .logged
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let entry = AccessEntry {
            time: Timestamp::now(),
            who: caller.identity.name.clone(),
            role: caller.identity.role.name().to_owned(),
            peer: caller.peer.to_string(),
            action: action.to_owned(),
            target: target.to_owned(),
            result: result.to_owned(),
        };
        self.metrics.query(action, result);
        tracing::info!(
            who = entry.who,
            role = entry.role,
            action,
            target,
            result,
            "access"
        );
        let logged = self
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .log(&entry);
        if let Err(err) = logged {
            tracing::error!(error = %err, "could not write the access log");
        }
    }

    /// Logs the outcome of a request and passes it on.
    fn logged<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        outcome: Result<T, Failure>,
    ) -> Result<T, Failure> {
        self.logged_as(caller, action, target, outcome, "ok")
    }

    /// As [`ApiState::logged`], with `ok` as the result of a success.
    fn logged_as<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        outcome: Result<T, Failure>,
        ok: &str,
    ) -> Result<T, Failure> {
        let result = match &outcome {
            Ok(_) => ok.to_owned(),
            Err(Failure(StatusCode::NOT_FOUND, _)) => "not found".to_owned(),
            Err(Failure(StatusCode::FORBIDDEN, _)) => "denied".to_owned(),
            Err(Failure(StatusCode::BAD_REQUEST, message)) => format!("bad request: {message}"),
            Err(Failure(_, message)) => format!("error: {message}"),
        };
        self.log(caller, action, target, &result);
        outcome
    }

    fn require_admin(&self, caller: &Caller, action: &str) -> Result<(), Failure> {
        if caller.identity.role == Role::Admin {
            return Ok(());
        }
        Err(Failure(
            StatusCode::FORBIDDEN,
            format!(
                "{action} needs the admin role; {} has the {} role",
                caller.identity.name, caller.identity.role
            ),
        ))
    }

    /// Every hold in place.
    fn holds(&self) -> Result<Vec<custos_proto::api::Hold>, Failure> {
        self.retention.holds().map_err(internal)
    }

    fn mark_held(
        &self,
        summaries: &mut [&mut custos_proto::api::SessionSummary],
    ) -> Result<(), Failure> {
        let holds = self.holds()?;
        for summary in summaries {
            summary.held = holds
                .iter()
                .any(|hold| hold.covers(&summary.id, summary.login_user.as_deref()));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub struct SessionsQuery {
    user: Option<String>,
    host: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Text rather than a number: `SearchQuery` flattens this struct, and serde's flatten hands
    /// every query value over as a string.
    limit: Option<String>,
}

impl SessionsQuery {
    fn filter(&self) -> Result<Filter, Failure> {
        Ok(Filter {
            user: self.user.clone(),
            host: self.host.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            limit: match &self.limit {
                None => DEFAULT_LIMIT,
                Some(text) => text.parse::<usize>().map_err(|_| {
                    Failure(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {text:?} is not a whole number"),
                    )
                })?,
            }
            .clamp(1, MAX_LIMIT),
        })
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, value) in [
            ("user", &self.user),
            ("host", &self.host),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        parts.join(" ")
    }
}

pub async fn sessions(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SessionsQuery>,
) -> Result<Json<SessionList>, Failure> {
    let outcome = async {
        let filter = q.filter()?;
        let (mut sessions, truncated) = with_store(&state, move |store| {
            store.index().sessions(&filter).map_err(internal)
        })
        .await?;
        state.mark_held(&mut sessions.iter_mut().collect::<Vec<_>>())?;
        Ok(Json(SessionList {
            sessions,
            truncated,
        }))
    }
    .await;
    state.logged(&caller, "sessions", &q.describe(), outcome)
}

fn unknown(id: &str) -> Failure {
    Failure(
        StatusCode::NOT_FOUND,
        format!("no recorded session {id:?} (custos sessions lists them)"),
    )
}

pub async fn show(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<custos_proto::api::SessionDetail>, Failure> {
    let key = id.clone();
    let outcome = async {
        let mut detail = with_store(&state, move |store| {
            store
                .index()
                .detail(&key)
                .map_err(internal)?
                .ok_or_else(|| unknown(&key))
        })
        .await?;
        state.mark_held(&mut [&mut detail.summary])?;
        Ok(Json(detail))
    }
    .await;
    state.logged(&caller, "show", &id, outcome)
}

/// Streams lines made from a recording's events by `render`, after a first `header` line,
/// then the end line ([`stream`]).
fn stream_events(
    state: &Arc<ApiState>,
    id: String,
    header: Option<String>,
    mut render: impl FnMut(&custos_proto::Event) -> Vec<String> + Send + 'static,
) -> Body {
    let config = state.store.clone();
    stream::body(format!("recording {id}"), move |lines| {
        let store = Store::open_read_only(&config).map_err(|err| err.to_string())?;
        stream::recording(&store, &id, header, &mut render, lines)
    })
}

async fn existing(
    state: &Arc<ApiState>,
    id: &str,
) -> Result<custos_proto::api::SessionSummary, Failure> {
    let key = id.to_owned();
    with_store(state, move |store| {
        store
            .index()
            .session(&key)
            .map_err(internal)?
            .ok_or_else(|| unknown(&key))
    })
    .await
}

/// Every event of a recording, JSON lines (what `custos replay` plays).
pub async fn events(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let outcome = existing(&state, &id).await;
    state.logged(&caller, "replay", &id, outcome)?;
    let body = stream_events(&state, id, None, |event| vec![export::json_line(event)]);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct ExportQuery {
    format: String,
}

pub async fn export(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Result<Response, Failure> {
    let outcome = async {
        if !matches!(q.format.as_str(), "asciicast" | "jsonl") {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("format {:?}: use asciicast or jsonl", q.format),
            ));
        }
        existing(&state, &id).await
    }
    .await;
    let summary = state.logged(
        &caller,
        "export",
        &format!("{id} format={}", q.format),
        outcome,
    )?;
    let body = if q.format == "asciicast" {
        let (header, mut cast) = export::Asciicast::start(&summary);
        stream_events(&state, id, Some(header), move |event| cast.event(event))
    } else {
        stream_events(&state, id, None, |event| vec![export::json_line(event)])
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    command: Option<String>,
    file: Option<String>,
    #[serde(flatten)]
    sessions: SessionsQuery,
}

pub async fn search(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<SearchQuery>,
) -> Result<Json<SearchResults>, Failure> {
    let target = format!(
        "{}{} {}",
        q.command
            .as_deref()
            .map(|c| format!("command={c}"))
            .unwrap_or_default(),
        q.file
            .as_deref()
            .map(|f| format!("file={f}"))
            .unwrap_or_default(),
        q.sessions.describe()
    );
    let outcome = async {
        let filter = q.sessions.filter()?;
        let (mut hits, truncated) = match (&q.command, &q.file) {
            (Some(pattern), None) => {
                let regex = regex::Regex::new(pattern).map_err(|err| {
                    Failure(
                        StatusCode::BAD_REQUEST,
                        format!("command: not a valid regex: {err}"),
                    )
                })?;
                with_store(&state, move |store| {
                    store
                        .index()
                        .search_commands(&regex, &filter)
                        .map_err(internal)
                })
                .await?
            }
            (None, Some(prefix)) => {
                let prefix = prefix.clone();
                with_store(&state, move |store| {
                    store
                        .index()
                        .search_files(&prefix, &filter)
                        .map_err(internal)
                })
                .await?
            }
            _ => {
                return Err(Failure(
                    StatusCode::BAD_REQUEST,
                    "give one of command or file".into(),
                ));
            }
        };
        state.mark_held(&mut hits.iter_mut().map(|h| &mut h.session).collect::<Vec<_>>())?;
        Ok(Json(SearchResults { hits, truncated }))
    }
    .await;
    state.logged(&caller, "search", target.trim(), outcome)
}

#[derive(Debug, Deserialize)]
pub struct VerifyQuery {
    id: Option<String>,
}

/// Checks one recording or all of them (and then the agents' chains and the access log),
/// streaming one line per result as it is found ([`VerifyLine`]), then the end line.
pub async fn verify(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<VerifyQuery>,
) -> Result<Response, Failure> {
    let target = q.id.clone().unwrap_or_else(|| "all".into());
    let outcome = match q.id.clone() {
        Some(id) => {
            with_store(&state, move |store| {
                store
                    .index()
                    .recording(&id)
                    .map_err(internal)?
                    .map(|_| ())
                    .ok_or_else(|| unknown(&id))
            })
            .await
        }
        None => Ok(()),
    };
    // Every check covers the access log: who looked at what is part of the record. It is
    // checked as it was before this request's own entry, which is logged next.
    let checker = state
        .audit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .checker();
    let access_log = tokio::task::spawn_blocking(move || checker.check())
        .await
        .map_err(internal)?
        .map_err(|err| err.to_string());
    state.logged(&caller, "verify", &target, outcome)?;
    let config = state.store.clone();
    // One line per result, as each is checked (a recording read one chunk at a time).
    let body = stream::body(format!("verify {target}"), move |lines| {
        let store = Store::open_read_only(&config).map_err(|err| err.to_string())?;
        let line = |line: VerifyLine| serde_json::to_string(&line).unwrap_or_default();
        let ids = match &q.id {
            Some(id) => vec![id.clone()],
            None => store
                .index()
                .recording_ids()
                .map_err(|err| err.to_string())?,
        };
        for id in &ids {
            let result = store.verify(id).map_err(|err| err.to_string())?;
            if !lines.send(line(VerifyLine::Result(result))) {
                return Ok(());
            }
        }
        if !lines.send(line(VerifyLine::AccessLog(access_log?))) {
            return Ok(());
        }
        if q.id.is_some() {
            return Ok(());
        }
        // The agents' chains span recordings: checked when the whole store is, from the
        // recording files found (a file the index does not list is reported too).
        let (files, agents) = store.verify_files().map_err(|err| err.to_string())?;
        // Asked again: a recording that began while the files were read is listed by now.
        let listed = |id: &str| !matches!(store.index().recording(id), Ok(None));
        let results = unindexed(&ids, files, listed).map(VerifyLine::Result);
        for item in results.chain(agents.into_iter().map(VerifyLine::Agent)) {
            if !lines.send(line(item)) {
                return Ok(());
            }
        }
        Ok(())
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The recordings found on disk that the index does not list, each with that as a problem.
fn unindexed(
    indexed: &[String],
    files: Vec<VerifyResult>,
    listed: impl Fn(&str) -> bool,
) -> impl Iterator<Item = VerifyResult> {
    files
        .into_iter()
        .filter(move |file| !indexed.contains(&file.id) && !listed(&file.id))
        .map(|mut file| {
            file.ok = false;
            file.problems.insert(
                0,
                "its recording file is in the store but the index does not list it".into(),
            );
            file
        })
}

#[derive(Debug, Deserialize)]
pub struct AccessLogQuery {
    since: Option<String>,
    limit: Option<usize>,
}

pub async fn access_log(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AccessLogQuery>,
) -> Result<Response, Failure> {
    let outcome = (|| {
        state.require_admin(&caller, "reading the access log")?;
        let since = time("since", &q.since)?;
        let limit = q.limit.unwrap_or(10_000).clamp(1, 1_000_000);
        let (entries, truncated, checker) = {
            let audit = state.audit.lock().unwrap_or_else(|e| e.into_inner());
            let (entries, truncated) = audit.entries(since, limit).map_err(internal)?;
            (entries, truncated, audit.checker())
        };
        // The whole log's check, on its own connection: logging goes on meanwhile.
        let check = tokio::task::block_in_place(|| checker.check()).map_err(internal)?;
        Ok((AccessLog { entries, truncated }, check.problems))
    })();
    let (log, problems) = state.logged(
        &caller,
        "access-log",
        q.since.as_deref().unwrap_or("all"),
        outcome,
    )?;
    let mut response = Json(log).into_response();
    // Every problem, on one line (a header value is one line of visible ASCII).
    let problems: String = problems
        .join("; ")
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
        .collect();
    if !problems.is_empty()
        && let Ok(value) = problems.parse()
    {
        response.headers_mut().insert("x-custos-chain", value);
    }
    Ok(response)
}

pub async fn holds(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Holds>, Failure> {
    let outcome = (|| {
        state.require_admin(&caller, "listing holds")?;
        Ok(Json(Holds {
            holds: state.holds()?,
        }))
    })();
    state.logged(&caller, "holds", "list", outcome)
}

pub async fn add_hold(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Json(new): Json<NewHold>,
) -> Result<Json<custos_proto::api::Hold>, Failure> {
    let target = format!("set {} {}: {}", new.kind, new.target, new.reason);
    let outcome = async {
        state.require_admin(&caller, "placing a hold")?;
        let kind = match new.kind.parse::<HoldKind>() {
            Ok(kind) if !new.target.is_empty() => kind,
            _ => {
                return Err(Failure(
                    StatusCode::BAD_REQUEST,
                    "a hold is on a session id or a user".into(),
                ));
            }
        };
        if new.reason.trim().is_empty() {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                "a hold needs a reason".into(),
            ));
        }
        if kind == HoldKind::Session {
            existing(&state, &new.target).await?;
        }
        let hold = state
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add_hold(kind, &new.target, &new.reason, &caller.identity.name)
            .map_err(internal)?;
        Ok(Json(hold))
    }
    .await;
    let result = match &outcome {
        Ok(Json(hold)) => format!("ok: hold {}", hold.id),
        Err(_) => String::new(),
    };
    state.logged_as(&caller, "hold", &target, outcome, &result)
}

pub async fn remove_hold(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
) -> Result<StatusCode, Failure> {
    let outcome = (|| {
        state.require_admin(&caller, "lifting a hold")?;
        state
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove_hold(id)
            .map_err(internal)?
            .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no hold {id}")))
    })();
    let target = match &outcome {
        Ok(hold) => format!(
            "release {id} ({} {}: {}, set by {})",
            hold.kind, hold.target, hold.reason, hold.created_by
        ),
        Err(_) => format!("release {id}"),
    };
    state
        .logged(&caller, "hold", &target, outcome)
        .map(|_| StatusCode::NO_CONTENT)
}

pub async fn retention(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<RetentionInfo>, Failure> {
    let keep = state.retention.keep;
    let outcome = async {
        state.require_admin(&caller, "reading retention")?;
        let holds = state.holds()?;
        let (sessions, held) = with_store(&state, move |store| {
            retention::count_held(store.index(), &holds).map_err(internal)
        })
        .await?;
        Ok(Json(RetentionInfo {
            keep_days: keep.as_secs_f64() / 86_400.0,
            sessions,
            held_sessions: held,
        }))
    }
    .await;
    state.logged(&caller, "retention", "show", outcome)
}

pub async fn purge(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<custos_proto::api::PurgeReport>, Failure> {
    let outcome = async {
        state.require_admin(&caller, "purging")?;
        let report = state
            .retention
            .run(&format!("retention run by {}", caller.identity.name))
            .await
            .map_err(internal)?;
        Ok(Json(report))
    }
    .await;
    state.logged(&caller, "purge", "expired recordings", outcome)
}

pub async fn agents(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<custos_proto::api::Agents>, Failure> {
    let outcome = async {
        state.require_admin(&caller, "listing agents")?;
        with_store(&state, |store| {
            let agents = store.index().agents().map_err(internal)?;
            Ok(Json(custos_proto::api::Agents { agents }))
        })
        .await
    }
    .await;
    state.logged(&caller, "agents", "list", outcome)
}

pub async fn not_found(
    Extension(caller): Extension<Caller>,
    State(state): State<Arc<ApiState>>,
    uri: axum::http::Uri,
) -> Failure {
    let failure = Failure(StatusCode::NOT_FOUND, format!("no endpoint {}", uri.path()));
    let _ = state.logged::<()>(
        &caller,
        "unknown",
        uri.path(),
        Err(Failure(StatusCode::NOT_FOUND, String::new())),
    );
    failure
}
