//! Turborepo's remote cache API, version 8 (`TURBO_API=http://cache:9999`): artifacts by hash,
//! in the namespace of the team (`?slug=` or `?teamId=`; `turbo` without either). The
//! duration the client reports is the run's duration (so hits count "time saved"), and the
//! signature tag is kept and returned untouched. See `docs/protocols/turbo.md`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::{Artifact, Kind, Store, Stored};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const KIND: Kind = Kind { tool: "turbo", task: "turbo" };
const DEFAULT_NAMESPACE: &str = "turbo";
/// The signature tag's longest form (the API's limit).
const TAG_MAX: usize = 600;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/v8/artifacts/status", get(status).options(preflight))
        .route("/v8/artifacts/events", post(events).options(preflight))
        .route("/v8/artifacts", post(query).options(preflight))
        .route("/v8/artifacts/{hash}", get(download).put(upload).options(preflight))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Team {
    team_id: Option<String>,
    slug: Option<String>,
}

impl Team {
    /// The namespace: the slug, else the team id, else `turbo`.
    fn namespace(&self) -> Result<String, ApiError> {
        let ns = self
            .slug
            .as_deref()
            .or(self.team_id.as_deref())
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE);
        super::namespace(ns)?;
        Ok(ns.to_owned())
    }
}

fn team(
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
) -> Result<String, ApiError> {
    let Query(t) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    t.namespace()
}

/// What Turborepo keeps beside an artifact.
fn artifact_headers(e: &taskvault::Entry) -> HeaderMap {
    headers_of(e.duration_ms, &e.details)
}

fn headers_of(duration_ms: Option<i64>, details: &serde_json::Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(ms) = duration_ms
        && let Ok(v) = HeaderValue::from_str(&ms.to_string())
    {
        h.insert("x-artifact-duration", v);
    }
    if let Some(tag) = details.pointer("/turbo/tag").and_then(|t| t.as_str())
        && let Ok(v) = HeaderValue::from_str(tag)
    {
        h.insert("x-artifact-tag", v);
    }
    h
}

/// GET (and HEAD: axum answers it with this handler; nothing is counted for it).
async fn download(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(hash): Path<String>,
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let ns = team(q)?;
    super::client_key(&hash)?;
    let a = Artifact { ns: &ns, kind: KIND, key: &hash };
    let found = super::fetch(&s, &caller, a, method == Method::HEAD).await?;
    let h = found.entry().map(artifact_headers).unwrap_or_default();
    super::respond(&s, found, &headers, h, "no artifact with this hash")
}

async fn upload(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(hash): Path<String>,
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ns = team(q)?;
    super::client_key(&hash)?;
    let duration_ms = match super::header_text(&headers, "x-artifact-duration") {
        Some(v) => Some(v.trim().parse::<i64>().ok().filter(|ms| *ms >= 0).ok_or_else(|| {
            ApiError::BadRequest(format!("x-artifact-duration {v:?} is not milliseconds"))
        })?),
        None => None,
    };
    let tag = super::header_text(&headers, "x-artifact-tag");
    if tag.is_some_and(|t| t.len() > TAG_MAX) {
        return Err(ApiError::BadRequest(format!("x-artifact-tag is over {TAG_MAX} bytes")));
    }
    let details = match tag {
        Some(t) => serde_json::json!({"turbo": {"tag": t}}),
        None => serde_json::Value::Null,
    };
    let how = Store { duration_ms, details, ..Store::default() };
    match super::store(
        &s,
        &caller,
        Artifact { ns: &ns, kind: KIND, key: &hash },
        &headers,
        body,
        how,
    )
    .await?
    {
        Stored::Created | Stored::Kept => {
            Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"urls": [format!("{ns}/{hash}")]})))
                .into_response())
        }
    }
}

async fn status(
    Auth(caller): Auth,
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ns = team(q)?;
    caller.check(crate::tokens::Scope::Read, &ns)?;
    Ok(Json(serde_json::json!({"status": "enabled"})))
}

#[derive(Debug, serde::Deserialize)]
struct QueryBody {
    hashes: Vec<String>,
}

/// The most hashes one batch query may ask about.
const QUERY_MAX: usize = 1000;

/// `POST /v8/artifacts`: for each hash, its size, duration and tag, or an error if absent. It
/// only reads the index: no hit or miss is counted.
async fn query(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<BTreeMap<String, serde_json::Value>>, ApiError> {
    let ns = team(q)?;
    caller.check(crate::tokens::Scope::Read, &ns)?;
    let req: QueryBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a hash list: {e}")))?;
    if req.hashes.len() > QUERY_MAX {
        return Err(ApiError::BadRequest(format!("at most {QUERY_MAX} hashes per query")));
    }
    let mut keys = Vec::with_capacity(req.hashes.len());
    for h in &req.hashes {
        super::client_key(h)?;
        keys.push((h.clone(), super::key(&s, &ns, KIND, h)?.digest().hex()));
    }
    let state = Arc::clone(&s);
    let out = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let mut out = BTreeMap::new();
        for (hash, hex) in keys {
            let v = match state.vault.live_entry(&hex)? {
                Some(e) if e.namespace == ns => serde_json::json!({
                    "size": e.size,
                    "taskDurationMs": e.duration_ms.unwrap_or(0),
                    "tag": e.details.pointer("/turbo/tag").and_then(|t| t.as_str()),
                }),
                _ => serde_json::json!({"error": {"message": "Artifact not found"}}),
            };
            out.insert(hash, v);
        }
        Ok(out)
    })
    .await??;
    Ok(Json(out))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read for validation; the counts come from the cache's own lookups
struct Event {
    session_id: Option<String>,
    source: String,
    event: String,
    hash: String,
    duration: Option<i64>,
}

/// `POST /v8/artifacts/events`: the client's own hit and miss reports. Checked, then
/// acknowledged (the server counts its own lookups; local-cache events are the client's).
async fn events(
    Auth(caller): Auth,
    q: Result<Query<Team>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let ns = team(q)?;
    caller.check(crate::tokens::Scope::Read, &ns)?;
    let _: Vec<Event> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a list of events: {e}")))?;
    Ok(StatusCode::OK)
}

/// CORS preflight: the methods and headers the API takes.
async fn preflight() -> impl IntoResponse {
    (
        StatusCode::OK,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, HEAD, PUT, POST, OPTIONS"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type, Content-Length, User-Agent, x-artifact-duration, \
                 x-artifact-tag, x-artifact-client-ci, x-artifact-client-interactive",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_team_names_the_namespace() {
        let t = |team_id: Option<&str>, slug: Option<&str>| {
            Team { team_id: team_id.map(Into::into), slug: slug.map(Into::into) }.namespace()
        };
        assert_eq!(t(None, None).unwrap(), "turbo");
        assert_eq!(t(Some("team_abc"), None).unwrap(), "team_abc");
        assert_eq!(t(Some("team_abc"), Some("web")).unwrap(), "web");
        assert_eq!(t(None, Some("")).unwrap(), "turbo");
        assert!(t(None, Some("../etc")).is_err());
        assert!(t(None, Some(".hidden")).is_err());
    }

    #[test]
    fn found_headers_carry_duration_and_tag() {
        let h = headers_of(Some(1234), &serde_json::json!({"turbo": {"tag": "sig=="}}));
        assert_eq!(h["x-artifact-duration"], "1234");
        assert_eq!(h["x-artifact-tag"], "sig==");
        assert!(headers_of(None, &serde_json::Value::Null).is_empty());
    }
}
