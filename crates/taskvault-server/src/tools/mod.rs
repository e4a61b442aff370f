//! The cache protocols of the build tools teams already run, each a thin mapping onto the
//! vault: (namespace, tool, the client's own key) is a task key (`docs/keys.md`), and the
//! artifact the client sends is that key's one output, stored and verified like any other.
//!
//! Every protocol goes through the same four calls here: [`fetch`] (a read-scoped lookup and
//! the verified bytes), [`respond`] (200 with the bytes, or a stream whose last chunk is held
//! until the blob verified), [`store`] (a write-scoped upload, hashed as it arrives, refused
//! before it is visible if it does not match the digest the protocol promises) and [`remove`].
//! So tokens, namespaces, the cap, the upload limits and corruption checks are the native
//! API's, whatever the client. The wire formats are in `docs/protocols/<tool>.md`.

pub mod bazel;
pub mod ccache;
pub mod gradle;
pub mod nx;
pub mod sccache;
pub mod turbo;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use taskvault::{Digest, Entry, Output, SaveOptions, TaskKey};

use crate::AppState;
use crate::api::{UploadSlot, receive, send_stream, upload_slot};
use crate::error::ApiError;
use crate::tokens::{Caller, Scope};

/// The label of the client's key among a tool entry's key ingredients.
pub const KEY_LABEL: &str = "tool.key";
/// The tag every tool entry carries (`taskvault log --tool NAME`).
pub const TOOL_TAG: &str = "tool";
/// Artifacts up to this size are read (and verified) whole before the answer starts, so one
/// that fails verification is a clean miss; larger ones stream.
const WHOLE_MAX: u64 = 1 << 20;
/// Uploads up to this size are received in memory; larger ones go to a file as they arrive.
const IN_MEMORY_MAX: usize = 1 << 20;

/// What one kind of client stores: its tool name (the `tool` tag, the metrics label) and the
/// task its entries are saved under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    pub tool: &'static str,
    pub task: &'static str,
}

/// One artifact as a request names it: the namespace, the kind of client, the client's key.
#[derive(Debug, Clone, Copy)]
pub struct Artifact<'a> {
    pub ns: &'a str,
    pub kind: Kind,
    pub key: &'a str,
}

/// A tool's key: the namespace, the task of its kind, and the client's key as the one
/// labelled ingredient.
pub fn key(s: &AppState, ns: &str, kind: Kind, client_key: &str) -> Result<TaskKey, ApiError> {
    key_in(s.vault.settings().algorithm, ns, kind, client_key)
}

/// [`key`] with the vault's algorithm given.
pub fn key_in(
    alg: taskvault::Algorithm,
    ns: &str,
    kind: Kind,
    client_key: &str,
) -> Result<TaskKey, ApiError> {
    let extras = vec![(KEY_LABEL.to_owned(), client_key.as_bytes().to_vec())];
    TaskKey::new(alg, ns, kind.task, Vec::new(), extras)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Checks a namespace taken from a path or a query (as the native API does).
pub fn namespace(ns: &str) -> Result<(), ApiError> {
    crate::api::check_ns(ns)
}

/// Checks a client's key: printable ASCII without `/`, 1 to 256 bytes.
pub fn client_key(k: &str) -> Result<(), ApiError> {
    let ok = (1..=256).contains(&k.len())
        && k.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'\\');
    if ok { Ok(()) } else { Err(ApiError::BadRequest(format!("{k:?} is not a cache key"))) }
}

/// An artifact a lookup found.
pub enum Found {
    Miss,
    /// There, for a HEAD (nothing read, no hit counted).
    Present {
        entry: Entry,
    },
    /// Read and verified whole.
    Whole {
        entry: Entry,
        bytes: Bytes,
    },
    /// Verified as it is sent.
    Stream {
        entry: Entry,
        stream: taskvault::BlobStream,
    },
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::Miss => f.write_str("Miss"),
            Found::Present { entry } => write!(f, "Present({})", entry.key),
            Found::Whole { entry, bytes } => {
                write!(f, "Whole({}, {} bytes)", entry.key, bytes.len())
            }
            Found::Stream { entry, .. } => write!(f, "Stream({})", entry.key),
        }
    }
}

impl Found {
    pub fn entry(&self) -> Option<&Entry> {
        match self {
            Found::Miss => None,
            Found::Present { entry } | Found::Whole { entry, .. } | Found::Stream { entry, .. } => {
                Some(entry)
            }
        }
    }
}

fn op(caller: &Caller, kind: Kind) -> String {
    format!("serve:{}:{}", kind.tool, caller.name())
}

/// Looks up the artifact of `client_key` for a reader of `ns`: for a GET, the verified bytes
/// (an artifact that fails verification is a miss), with a hit or a miss counted in the vault
/// and on `/metrics`; for a HEAD (`head`), only whether it is there, nothing counted.
pub async fn fetch(
    s: &Arc<AppState>,
    caller: &Caller,
    a: Artifact<'_>,
    head: bool,
) -> Result<Found, ApiError> {
    let (ns, kind, client_key) = (a.ns, a.kind, a.key);
    caller.check(Scope::Read, ns)?;
    let key = key(s, ns, kind, client_key)?;
    let op = op(caller, kind);
    let state = Arc::clone(s);
    let ns2 = ns.to_owned();
    let found = tokio::task::spawn_blocking(move || -> Result<Found, ApiError> {
        let hex = key.digest().hex();
        if head {
            return Ok(match state.vault.live_entry(&hex)? {
                Some(entry) if entry.namespace == ns2 && entry.outputs.len() == 1 => {
                    Found::Present { entry }
                }
                _ => Found::Miss,
            });
        }
        let Some(x) = state.vault.export_entry(&hex, kind.task, WHOLE_MAX, WHOLE_MAX, &op)? else {
            return Ok(Found::Miss);
        };
        let entry = x.entry;
        if entry.namespace != ns2 || entry.outputs.len() != 1 {
            return Ok(Found::Miss);
        }
        let Some(d) = entry.outputs[0].digest else {
            return Ok(Found::Whole { entry, bytes: Bytes::new() });
        };
        if let Some((_, b)) = x.small.into_iter().find(|(s, _)| *s == d) {
            return Ok(Found::Whole { entry, bytes: Bytes::from(b) });
        }
        match state.vault.open_blob(&d)? {
            Some(stream) => Ok(Found::Stream { entry, stream }),
            None => Ok(Found::Miss),
        }
    })
    .await??;
    if !head {
        match found.entry() {
            None => s.metrics.tool_miss(kind.tool),
            Some(e) => s.metrics.tool_hit(kind.tool, e.size, e.duration_ms),
        }
    }
    Ok(found)
}

/// The answer to a GET (or a HEAD) of what [`fetch`] found, with the protocol's own headers
/// `h`; a miss is a 404 with `miss` as its JSON error.
pub fn respond(
    s: &Arc<AppState>,
    found: Found,
    request: &HeaderMap,
    mut h: HeaderMap,
    miss: &str,
) -> Result<Response, ApiError> {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    match found {
        Found::Miss => Err(ApiError::NotFound(miss.to_owned())),
        Found::Present { entry } => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(entry.size));
            Ok((StatusCode::OK, h).into_response())
        }
        Found::Whole { bytes, .. } => {
            s.metrics.bytes_out(bytes.len() as u64);
            Ok((StatusCode::OK, h, bytes).into_response())
        }
        Found::Stream { stream, .. } => send_stream(s, stream, request, h),
    }
}

/// How an upload is to be stored.
#[derive(Debug, Default)]
pub struct Store {
    /// The SHA-256 the bytes must have (a content-addressed upload: Bazel's CAS); a body that
    /// does not match is refused and nothing is stored.
    pub sha256: Option<Digest>,
    /// How long the client says the work took (each hit adds it to "time saved").
    pub duration_ms: Option<i64>,
    /// What the protocol keeps beside the bytes and returns untouched (Turborepo's signature).
    pub details: serde_json::Value,
    /// Refuse (409) a key that already has an artifact, instead of replacing it (Nx).
    pub never_replace: bool,
    /// Keep the artifact stored already under this key, if any, instead of replacing it (a
    /// content-addressed key: the bytes cannot differ).
    pub keep_existing: bool,
}

/// What [`store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    /// The key had an artifact already and it was kept.
    Kept,
}

/// An upload arriving: in memory while small, then in a file of the vault's temporary
/// directory; hashed with the vault's algorithm (and SHA-256 when the protocol promises one)
/// as it comes.
struct Incoming {
    memory: Vec<u8>,
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    hasher: taskvault::digest::Hasher,
    sha256: Option<taskvault::digest::Hasher>,
    staging: PathBuf,
}

impl Incoming {
    fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.hasher.update(chunk);
        if let Some(h) = &mut self.sha256 {
            h.update(chunk);
        }
        if self.file.is_none() && self.memory.len() + chunk.len() > IN_MEMORY_MAX {
            let f = std::fs::File::create(&self.staging).map_err(crate::uploads::io_error)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            w.write_all(&self.memory).map_err(crate::uploads::io_error)?;
            self.memory = Vec::new();
            self.file = Some((self.staging.clone(), w));
        }
        match &mut self.file {
            Some((_, w)) => w.write_all(chunk).map_err(crate::uploads::io_error),
            None => {
                self.memory.extend_from_slice(chunk);
                Ok(())
            }
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Some((p, _)) = self.file.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Stores the body of a PUT as the artifact of `client_key` in `ns`, for a writer of `ns`.
pub async fn store(
    s: &Arc<AppState>,
    caller: &Caller,
    a: Artifact<'_>,
    headers: &HeaderMap,
    body: Body,
    how: Store,
) -> Result<Stored, ApiError> {
    let (ns, kind, client_key) = (a.ns, a.kind, a.key);
    caller.check(Scope::Write, ns)?;
    let key = key(s, ns, kind, client_key)?;
    if how.never_replace || how.keep_existing {
        let (state, hex) = (Arc::clone(s), key.digest().hex());
        let live = tokio::task::spawn_blocking(move || state.vault.live_entry(&hex)).await??;
        if live.is_some_and(|e| e.namespace == ns) {
            if how.never_replace {
                return Err(ApiError::Conflict(format!(
                    "{client_key} is stored already and is never overwritten"
                )));
            }
            // Drain the body: the client expects its upload to be read.
            let slot = upload_slot(s, headers).await?;
            receive(s, &slot, body, |_| Ok(())).await?;
            return Ok(Stored::Kept);
        }
    }
    let slot: UploadSlot = upload_slot(s, headers).await?;
    let mut incoming = Incoming {
        memory: Vec::new(),
        file: None,
        hasher: s.vault.settings().algorithm.hasher(),
        sha256: how.sha256.map(|_| taskvault::Algorithm::Sha256.hasher()),
        staging: s.vault.staging_path("tool-"),
    };
    let len = receive(s, &slot, body, |chunk| incoming.write(chunk)).await?;
    if let Some(n) = slot.announced.filter(|n| *n != len) {
        return Err(ApiError::BadRequest(format!(
            "the body is {len} bytes, the request announced {n}; nothing stored"
        )));
    }
    if let (Some(want), Some(h)) = (how.sha256, incoming.sha256.take()) {
        let got = h.finish();
        if got != want {
            return Err(ApiError::BadRequest(format!(
                "the body hashes to {got}, not {want}: refused, nothing stored"
            )));
        }
    }
    let opts = SaveOptions {
        duration_ms: how.duration_ms,
        details: how.details,
        tags: [(TOOL_TAG.to_owned(), kind.tool.to_owned())].into(),
        extras_display: vec![(KEY_LABEL.to_owned(), client_key.to_owned())],
        audit_op: Some(op(caller, kind)),
        ..SaveOptions::default()
    };
    let alg = s.vault.settings().algorithm;
    let digest = std::mem::replace(&mut incoming.hasher, alg.hasher()).finish();
    // A body small enough to live in the database is staged right here (memory only); a
    // larger one is written and synced on the blocking pool. A received file is either moved in
    // by the commit or copied while staged: it is removed after the commit either way.
    let small = incoming.file.is_none()
        && incoming.memory.len() as u64 <= s.vault.settings().inline_max_bytes;
    let (prepared, received) = if small {
        (s.vault.prepare_save(&key, Output::Bytes(&incoming.memory), &opts)?, None)
    } else {
        let state = Arc::clone(s);
        tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
            match incoming.file.take() {
                None => {
                    let out = Output::Bytes(&incoming.memory);
                    Ok((state.vault.prepare_save(&key, out, &opts)?, None))
                }
                Some((path, w)) => {
                    let f = w.into_inner().map_err(|e| crate::uploads::io_error(e.into_error()))?;
                    drop(f);
                    let out = Output::Received { path: &path, digest };
                    match state.vault.prepare_save(&key, out, &opts) {
                        Ok(p) => Ok((p, Some(path))),
                        Err(e) => {
                            let _ = std::fs::remove_file(&path);
                            Err(e.into())
                        }
                    }
                }
            }
        })
        .await??
    };
    let saved = s.group.save(prepared).await;
    if let Some(path) = received {
        let _ = std::fs::remove_file(path);
    }
    saved?;
    s.metrics.bytes_in(len);
    s.metrics.tool_saved(kind.tool, len);
    Ok(Stored::Created)
}

/// Removes the artifact of `client_key` (a writer of `ns` only); `false` if there was none.
pub async fn remove(s: &Arc<AppState>, caller: &Caller, a: Artifact<'_>) -> Result<bool, ApiError> {
    let (ns, kind, client_key) = (a.ns, a.kind, a.key);
    caller.check(Scope::Write, ns)?;
    let key = key(s, ns, kind, client_key)?;
    let op = op(caller, kind);
    let state = Arc::clone(s);
    let ns = ns.to_owned();
    tokio::task::spawn_blocking(move || -> Result<bool, ApiError> {
        let hex = key.digest().hex();
        match state.vault.live_entry(&hex)? {
            Some(e) if e.namespace == ns => Ok(state.vault.remove_key(&hex, &op)?),
            _ => Ok(false),
        }
    })
    .await?
}

/// What a plain storage protocol (ccache, sccache) answers to its writes.
#[derive(Debug, Clone, Copy)]
pub struct Storage {
    /// The protocol, for a method it does not have (405).
    pub name: &'static str,
    /// A PUT's answer.
    pub created: StatusCode,
    /// A DELETE's answer.
    pub deleted: StatusCode,
}

/// GET, HEAD, PUT and DELETE of one artifact, the verbs of a plain storage protocol.
pub async fn storage(
    s: &Arc<AppState>,
    caller: &Caller,
    method: &axum::http::Method,
    a: Artifact<'_>,
    (headers, body): (&HeaderMap, Body),
    answers: Storage,
) -> Result<Response, ApiError> {
    use axum::http::Method;
    match *method {
        Method::GET | Method::HEAD => {
            let found = fetch(s, caller, a, method == Method::HEAD).await?;
            respond(s, found, headers, HeaderMap::new(), "not in the cache")
        }
        Method::PUT => {
            store(s, caller, a, headers, body, Store::default()).await?;
            Ok(answers.created.into_response())
        }
        Method::DELETE => match remove(s, caller, a).await? {
            true => Ok(answers.deleted.into_response()),
            false => Err(ApiError::NotFound("not in the cache".into())),
        },
        ref other => Err(ApiError::MethodNotAllowed(format!(
            "{other} is not part of {} (GET, HEAD, PUT, DELETE)",
            answers.name
        ))),
    }
}

/// A route's path parameters by name (one handler serves a protocol's routes with and
/// without a namespace).
pub type Params = std::collections::HashMap<String, String>;

/// A path parameter (the routes that call a handler always have the ones it asks for).
pub fn param<'p>(p: &'p Params, name: &str) -> &'p str {
    p.get(name).map_or("", String::as_str)
}

/// A header value, if it is there and text.
pub fn header_text<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The JSON error of a request no route of the protocol answers.
pub fn not_found(what: &str) -> Response {
    ApiError::NotFound(what.to_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ingredient_of_a_tool_key_counts() {
        let alg = taskvault::Algorithm::Blake3;
        let k = |ns: &str, kind: Kind, key: &str| key_in(alg, ns, kind, key).unwrap().digest();
        let base = k("web", turbo::KIND, "abc");
        assert_eq!(base, k("web", turbo::KIND, "abc"), "stable");
        assert_ne!(base, k("web2", turbo::KIND, "abc"), "namespace");
        assert_ne!(base, k("web", nx::KIND, "abc"), "tool (task)");
        assert_ne!(base, k("web", turbo::KIND, "abd"), "client key");
        assert_ne!(
            k("ccache", ccache::KIND, "ab"),
            k("ccache", ccache::BAZEL_LAYOUT, "ab"),
            "ccache's two spellings"
        );
        assert_ne!(k("b", bazel::AC, "x"), k("b", bazel::CAS, "x"), "Bazel's two stores");
        assert_ne!(
            base,
            key_in(taskvault::Algorithm::Sha256, "web", turbo::KIND, "abc").unwrap().digest()
        );
    }

    #[test]
    fn client_keys_are_printable_and_bounded() {
        assert!(client_key("98f3ad594fc8ed01").is_ok());
        assert!(client_key(".sccache_check").is_ok());
        for bad in ["", "a/b", "a\\b", "sp ace", "nul\0", &"x".repeat(257)] {
            assert!(client_key(bad).is_err(), "{bad:?}");
        }
    }
}
