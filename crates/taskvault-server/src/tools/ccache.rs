//! ccache's HTTP remote storage (`CCACHE_REMOTE_STORAGE=http://cache:9999/ccache`), in its three
//! layouts: `subdirs` (the default: `/ccache/ab/cdef...`), `flat` (`/ccache/abcdef...`) and
//! `bazel` (`/ccache/ac/<64 hex>`). A key is opaque here, so both of ccache's spellings (up to
//! 4.12: two hex digits and base32hex, 4.13 on: hex) work; `subdirs` and `flat` name the same
//! entry. Namespace `ccache`, or another through `/ns/{ns}/ccache/...`. GET, HEAD, PUT and
//! DELETE. See `docs/protocols/ccache.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::routing::any;

use super::{Artifact, Kind, Params, Storage, param};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

/// Entries under the `subdirs` and `flat` layouts (the same key spelling).
pub const KIND: Kind = Kind { tool: "ccache", task: "ccache" };
/// Entries under the `bazel` layout (the key padded to 64 hex digits: another spelling).
pub const BAZEL_LAYOUT: Kind = Kind { tool: "ccache", task: "ccache-bazel" };
const DEFAULT_NAMESPACE: &str = "ccache";

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/ccache/{key}", any(flat))
        .route("/ccache/{dir}/{rest}", any(nested))
        .route("/ns/{ns}/ccache/{key}", any(flat))
        .route("/ns/{ns}/ccache/{dir}/{rest}", any(nested))
}

/// The entry a two-segment path names: `ac/<64 hex>` under the bazel layout, else a subdirs
/// key split after its first two characters.
fn nested_key(dir: &str, rest: &str) -> Result<(Kind, String), ApiError> {
    let hex64 = rest.len() == 64 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if dir == "ac" && hex64 {
        return Ok((BAZEL_LAYOUT, rest.to_owned()));
    }
    if dir.len() == 2 {
        return Ok((KIND, format!("{dir}{rest}")));
    }
    Err(ApiError::NotFound(format!("{dir}/{rest} is not a ccache storage path")))
}

const ANSWERS: Storage = Storage {
    name: "ccache's HTTP storage",
    created: StatusCode::CREATED,
    deleted: StatusCode::OK,
};

async fn serve(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    method: Method,
    a: Artifact<'_>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::namespace(a.ns)?;
    super::client_key(a.key)?;
    super::storage(&s, &caller, &method, a, (&headers, body), ANSWERS).await
}

async fn flat(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let a = Artifact { ns: namespace_of(&p), kind: KIND, key: param(&p, "key") };
    serve(s, caller, method, a, headers, body).await
}

async fn nested(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (kind, key) = nested_key(param(&p, "dir"), param(&p, "rest"))?;
    let a = Artifact { ns: namespace_of(&p), kind, key: &key };
    serve(s, caller, method, a, headers, body).await
}

/// The namespace a path names: `/ns/{ns}/ccache/...`, else `ccache`.
fn namespace_of(p: &Params) -> &str {
    p.get("ns").map_or(DEFAULT_NAMESPACE, String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_spellings_name_their_entries() {
        // subdirs, both spellings: the key is the two parts joined (what flat names).
        assert_eq!(
            nested_key("85", "f421erj70qc68mt1rkl20b80446c8to").unwrap(),
            (KIND, "85f421erj70qc68mt1rkl20b80446c8to".into())
        );
        assert_eq!(
            nested_key("64", "c86485a0e254c204bc2cfe334e853988b618d4").unwrap(),
            (KIND, "64c86485a0e254c204bc2cfe334e853988b618d4".into())
        );
        // bazel: ac/ and 64 hex digits, a spelling of its own.
        let padded = "64c86485a0e254c204bc2cfe334e853988b618d464c86485a0e254c204bc2cfe";
        assert_eq!(nested_key("ac", padded).unwrap(), (BAZEL_LAYOUT, padded.into()));
        // A subdirs key that happens to start with "ac" stays a subdirs key.
        assert_eq!(nested_key("ac", "f421erj70qc68mt1rkl20b80446c8to").unwrap().0, KIND);
        assert!(nested_key("abc", "def").is_err());
    }
}
