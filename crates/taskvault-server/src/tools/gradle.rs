//! Gradle's HTTP build cache (`buildCache { remote(HttpBuildCache) { url = 'http://cache:9999/gradle/' } }`):
//! `GET` and `PUT` of `{prefix}/{key}`, the artifact in either content type Gradle sends
//! (`application/vnd.gradle.build-cache-artifact.v1`, or `application/octet-stream`), the
//! token as the Basic password (what Gradle's `credentials` send). `/gradle/{key}` is namespace
//! `gradle`; `/gradle/{ns}/{key}` names another. See `docs/protocols/gradle.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;

use super::{Artifact, Kind, Params, Store, param};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const KIND: Kind = Kind { tool: "gradle", task: "gradle" };
const DEFAULT_NAMESPACE: &str = "gradle";
const CONTENT_TYPE: &str = "application/vnd.gradle.build-cache-artifact.v1";

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/gradle/{key}", get(download).put(upload))
        .route("/gradle/{ns}/{key}", get(download).put(upload))
}

async fn get_in(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    a: Artifact<'_>,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    super::namespace(a.ns)?;
    super::client_key(a.key)?;
    let found = super::fetch(&s, &caller, a, head).await?;
    let mut response = super::respond(&s, found, headers, HeaderMap::new(), "not in the cache")?;
    if response.status() == StatusCode::OK {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    }
    Ok(response)
}

async fn put_in(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    a: Artifact<'_>,
    headers: &HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    super::namespace(a.ns)?;
    super::client_key(a.key)?;
    super::store(&s, &caller, a, headers, body, Store::default()).await?;
    Ok(StatusCode::CREATED)
}

/// GET (and HEAD: axum answers it with this handler; nothing is counted for it).
async fn download(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    get_in(s, caller, artifact(&p), &headers, method == Method::HEAD).await
}

async fn upload(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    put_in(s, caller, artifact(&p), &headers, body).await
}

/// The artifact a path names: `{key}` in `gradle`, or `{ns}/{key}`.
fn artifact(p: &Params) -> Artifact<'_> {
    let ns = p.get("ns").map_or(DEFAULT_NAMESPACE, String::as_str);
    Artifact { ns, kind: KIND, key: param(p, "key") }
}
