//! Nx's self-hosted remote cache, version 1 (`NX_SELF_HOSTED_REMOTE_CACHE_SERVER`): a task's
//! output archive by hash, in namespace `nx`. An artifact is never overwritten (409): a token
//! that can read can never replace what another build will restore (the cache poisoning of
//! CVE-2025-36852 needed exactly that). See `docs/protocols/nx.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::{Artifact, Kind, Store};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const KIND: Kind = Kind { tool: "nx", task: "nx" };
const NAMESPACE: &str = "nx";

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new().route("/v1/cache/{hash}", get(download).put(upload))
}

async fn download(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    super::client_key(&hash)?;
    let found =
        super::fetch(&s, &caller, Artifact { ns: NAMESPACE, kind: KIND, key: &hash }, false)
            .await?;
    super::respond(&s, found, &headers, HeaderMap::new(), "no artifact with this hash")
}

async fn upload(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    super::client_key(&hash)?;
    let how = Store { never_replace: true, ..Store::default() };
    super::store(
        &s,
        &caller,
        Artifact { ns: NAMESPACE, kind: KIND, key: &hash },
        &headers,
        body,
        how,
    )
    .await?;
    Ok(StatusCode::OK)
}
