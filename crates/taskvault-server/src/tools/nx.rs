//! Nx's self-hosted remote cache, version 1 (`NX_SELF_HOSTED_REMOTE_CACHE_SERVER`): a task's
//! output archive by hash, in namespace `nx`. An artifact is never overwritten (409): a token
//! that can read can never replace what another build will restore (the cache poisoning of
//! CVE-2025-36852 needed exactly that). See `docs/protocols/nx.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Artifact, Kind, Store};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const KIND: Kind = Kind { tool: "nx", task: "nx" };
const NAMESPACE: &str = "nx";

/// The routes; mounted outside the JSON error layer: Nx expects its errors as text.
pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new().route("/v1/cache/{hash}", get(download).put(upload))
}

/// An error as Nx's specification wants it: its status, and the message as `text/plain`.
#[derive(Debug)]
pub struct NxError(ApiError);

impl From<ApiError> for NxError {
    fn from(e: ApiError) -> NxError {
        NxError(e)
    }
}

impl IntoResponse for NxError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let mut text = self.0.to_string();
        text.push('\n');
        (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
    }
}

async fn download(
    State(s): State<Arc<AppState>>,
    auth: Result<Auth, ApiError>,
    Path(hash): Path<String>,
    headers: HeaderMap,
) -> Result<Response, NxError> {
    let Auth(caller) = auth?;
    super::client_key(&hash)?;
    let found =
        super::fetch(&s, &caller, Artifact { ns: NAMESPACE, kind: KIND, key: &hash }, false)
            .await?;
    Ok(super::respond(&s, found, &headers, HeaderMap::new(), "no artifact with this hash")?)
}

async fn upload(
    State(s): State<Arc<AppState>>,
    auth: Result<Auth, ApiError>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, NxError> {
    let Auth(caller) = auth?;
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
