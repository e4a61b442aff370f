//! sccache's WebDAV storage (`SCCACHE_WEBDAV_ENDPOINT=http://cache:9999/sccache`, token in
//! `SCCACHE_WEBDAV_TOKEN`), as sccache's OpenDAL client speaks it: objects by path (the last
//! segment is sccache's key; the directories above it are derived from it), `.sccache_check`
//! (the probe that decides whether the cache may be written), and collections that always
//! exist: `PROPFIND` of any directory answers 207, so a write is one `PROPFIND` and the `PUT`,
//! never a chain of `MKCOL`s; `MKCOL` answers 201. Namespace `sccache`, or another through
//! `/ns/{ns}/sccache/...`. See `docs/protocols/sccache.md`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::{Artifact, Kind, Params, Storage, param};
use crate::AppState;
use crate::api::Auth;
use crate::error::ApiError;

pub const KIND: Kind = Kind { tool: "sccache", task: "sccache" };
const DEFAULT_NAMESPACE: &str = "sccache";
/// The longest object path taken (sccache's are about 70 bytes).
const PATH_MAX: usize = 1024;

pub fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/sccache", any(root))
        .route("/sccache/", any(root))
        .route("/sccache/{*path}", any(handle))
        .route("/ns/{ns}/sccache", any(handle))
        .route("/ns/{ns}/sccache/", any(handle))
        .route("/ns/{ns}/sccache/{*path}", any(handle))
}

/// What a path under the root names: a collection (it ends with `/`), or an object whose key
/// is its last segment.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Collection,
    Object(&'a str),
}

fn target(path: &str) -> Result<Target<'_>, ApiError> {
    if path.len() > PATH_MAX {
        return Err(ApiError::BadRequest("the path is too long".into()));
    }
    let bad = || ApiError::BadRequest(format!("{path:?} is not a cache path"));
    let segments: Vec<&str> = path.split('/').collect();
    let (last, dirs) = segments.split_last().ok_or_else(bad)?;
    if dirs.iter().any(|d| d.is_empty() || *d == "." || *d == "..") {
        return Err(bad());
    }
    if last.is_empty() {
        return Ok(Target::Collection);
    }
    super::client_key(last)?;
    Ok(Target::Object(last))
}

/// A `207 Multi-Status` describing one resource: a collection, or an object of `size` bytes.
fn multistatus(href: &str, size: Option<u64>) -> Response {
    let modified = httpdate::fmt_http_date(std::time::SystemTime::now());
    let (kind, length) = match size {
        None => ("<D:resourcetype><D:collection/></D:resourcetype>".to_owned(), String::new()),
        Some(n) => (
            "<D:resourcetype/>".to_owned(),
            format!("<D:getcontentlength>{n}</D:getcontentlength>"),
        ),
    };
    let href = href.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<D:multistatus xmlns:D=\"DAV:\"><D:response>\
         <D:href>{href}</D:href><D:propstat><D:prop><D:displayname></D:displayname>\
         <D:getlastmodified>{modified}</D:getlastmodified>{length}{kind}</D:prop>\
         <D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>\n"
    );
    (StatusCode::MULTI_STATUS, [(header::CONTENT_TYPE, "application/xml; charset=utf-8")], xml)
        .into_response()
}

fn propfind() -> Method {
    Method::from_bytes(b"PROPFIND").expect("a valid method")
}

fn mkcol() -> Method {
    Method::from_bytes(b"MKCOL").expect("a valid method")
}

#[allow(clippy::too_many_arguments)] // the request, taken apart by the routes above
async fn serve(
    s: Arc<AppState>,
    caller: crate::tokens::Caller,
    method: Method,
    ns: &str,
    path: &str,
    href: &str,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    super::namespace(ns)?;
    let target = target(path)?;
    if method == propfind() {
        caller.check(crate::tokens::Scope::Read, ns)?;
        return match target {
            Target::Collection => Ok(multistatus(href, None)),
            Target::Object(key) => {
                let a = Artifact { ns, kind: KIND, key };
                match super::fetch(&s, &caller, a, true).await? {
                    super::Found::Present { entry } => Ok(multistatus(href, Some(entry.size))),
                    _ => Err(ApiError::NotFound("not in the cache".into())),
                }
            }
        };
    }
    if method == mkcol() {
        // Collections exist already: they are the paths of keys.
        caller.check(crate::tokens::Scope::Write, ns)?;
        return Ok(StatusCode::CREATED.into_response());
    }
    let Target::Object(key) = target else {
        return Err(ApiError::MethodNotAllowed(format!("{method} of a collection")));
    };
    let a = Artifact { ns, kind: KIND, key };
    super::storage(&s, &caller, &method, a, (&headers, body), ANSWERS).await
}

const ANSWERS: Storage = Storage {
    name: "sccache's WebDAV storage",
    created: StatusCode::CREATED,
    deleted: StatusCode::NO_CONTENT,
};

/// Every route: the namespace and the path under the root come from the route's parameters.
async fn handle(
    State(s): State<Arc<AppState>>,
    method: Method,
    Auth(caller): Auth,
    Path(p): Path<Params>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = param(&p, "path");
    let (ns, href) = match p.get("ns") {
        Some(ns) => (ns.as_str(), format!("/ns/{ns}/sccache/{path}")),
        None => (DEFAULT_NAMESPACE, format!("/sccache/{path}")),
    };
    serve(s, caller, method, ns, path, &href, headers, body).await
}

/// The root collection (a route without parameters).
async fn root(
    s: State<Arc<AppState>>,
    method: Method,
    auth: Auth,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    handle(s, method, auth, Path(Params::new()), headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        assert_eq!(target("").unwrap(), Target::Collection);
        assert_eq!(target("9/8/f/").unwrap(), Target::Collection);
        assert_eq!(target("9/8/f/98f3ad").unwrap(), Target::Object("98f3ad"));
        assert_eq!(target(".sccache_check").unwrap(), Target::Object(".sccache_check"));
        assert!(target("9//x").is_err());
        assert!(target("../x").is_err());
        assert!(target("a/../x").is_err());
        assert!(target(&"a/".repeat(600)).is_err());
    }
}
