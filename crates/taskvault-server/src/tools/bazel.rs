//! Bazel's HTTP remote cache (`--remote_cache=http://cache:9999/bazel`): the action cache
//! (`/ac/{sha256}`, an `ActionResult` per action digest) and the content-addressed store
//! (`/cas/{sha256}`, verified against its SHA-256 before it is stored, whatever the vault's own
//! algorithm). `/bazel/ac/...` is namespace `bazel`; an instance prefix
//! (`/bazel/{instance}/ac/...`) names the namespace. See `docs/protocols/bazel.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;

use super::{Artifact, Kind, Params, Store, param};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const AC: Kind = Kind { tool: "bazel", task: "bazel-ac" };
pub const CAS: Kind = Kind { tool: "bazel", task: "bazel-cas" };
const DEFAULT_NAMESPACE: &str = "bazel";

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/bazel/{store}/{hash}", get(download).put(upload))
        .route("/bazel/{instance}/{store}/{hash}", get(download).put(upload))
}

/// The kind of store a path names, and its SHA-256 (64 lowercase hex).
fn parse(store: &str, hash: &str) -> Result<(Kind, taskvault::Digest), ApiError> {
    let kind = match store {
        "ac" => AC,
        "cas" => CAS,
        other => {
            return Err(ApiError::NotFound(format!(
                "{other:?} is not a Bazel cache store (ac or cas)"
            )));
        }
    };
    let bad = || ApiError::BadRequest(format!("{hash:?} is not a SHA-256 (64 lowercase hex)"));
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    let d = taskvault::Digest::from_hex(taskvault::Algorithm::Sha256, hash).map_err(|_| bad())?;
    Ok((kind, d))
}

async fn get_in(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    ns: &str,
    store: &str,
    hash: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, ApiError> {
    super::namespace(ns)?;
    let (kind, _) = parse(store, hash)?;
    let found = super::fetch(&s, &caller, Artifact { ns, kind, key: hash }, head).await?;
    super::respond(&s, found, headers, HeaderMap::new(), "not in the cache")
}

async fn put_in(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    ns: &str,
    store: &str,
    hash: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    super::namespace(ns)?;
    let (kind, d) = parse(store, hash)?;
    let how = if kind == CAS {
        // Content-addressed: the bytes are checked against the name, and stored once.
        Store { sha256: Some(d), keep_existing: true, ..Store::default() }
    } else {
        Store::default()
    };
    super::store(&s, &caller, Artifact { ns, kind, key: hash }, headers, body, how).await?;
    Ok(StatusCode::OK)
}

/// GET (and HEAD: axum answers it with this handler; nothing is counted for it).
async fn download(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let head = method == Method::HEAD;
    get_in(s, caller, namespace_of(&p), param(&p, "store"), param(&p, "hash"), &headers, head).await
}

async fn upload(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    put_in(s, caller, namespace_of(&p), param(&p, "store"), param(&p, "hash"), &headers, body).await
}

/// The namespace a path names: its instance prefix, else `bazel`.
fn namespace_of(p: &Params) -> &str {
    p.get("instance").map_or(DEFAULT_NAMESPACE, String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_a_store_and_a_sha256() {
        let h = "a".repeat(64);
        assert_eq!(parse("ac", &h).unwrap().0, AC);
        assert_eq!(parse("cas", &h).unwrap().0, CAS);
        assert_eq!(parse("cas", &h).unwrap().1.algorithm(), taskvault::Algorithm::Sha256);
        assert!(matches!(parse("xyz", &h), Err(ApiError::NotFound(_))));
        assert!(matches!(parse("ac", &"A".repeat(64)), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse("ac", "abc"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse("ac", &"g".repeat(64)), Err(ApiError::BadRequest(_))));
    }
}
