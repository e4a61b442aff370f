//! The native API, `/v1/...`: entries by key, blobs by digest, the missing-blobs query. Each
//! handler is annotated for the OpenAPI document the server serves at `/v1/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use taskvault::{Admitted, Digest, Entry};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::tokens::{Caller, Scope, valid_namespace};
use crate::uploads::parse_digest;

/// Blobs up to this size come with the entry that needs them (one round trip for a small hit).
const SMALL_BLOB_MAX: u64 = 64 << 10;
/// ... up to this many bytes of them per entry.
const SMALL_BLOBS_TOTAL: u64 = 1 << 20;
/// A download is sent in chunks of this size, read ahead by at most `DOWNLOAD_AHEAD` chunks
/// (what bounds a download's memory).
const DOWNLOAD_CHUNK: usize = 256 << 10;
const DOWNLOAD_AHEAD: usize = 4;
/// Upload chunks are written to disk in batches of about this many bytes.
const UPLOAD_BATCH: usize = 1 << 20;
/// A batch this small is written on the async worker itself.
const SMALL_WRITE: usize = 64 << 10;
/// The most digests one missing-blobs query may ask about.
pub const MISSING_MAX: usize = 100_000;

/// The caller, authenticated from the `Authorization` header (every `/v1` handler takes it).
#[derive(Debug)]
pub struct Auth(pub Caller);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Auth, ApiError> {
        let value = match parts.headers.get(header::AUTHORIZATION) {
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::Unauthorized("the Authorization header is not text".into())
            })?),
            None => None,
        };
        Ok(Auth(state.tokens.authenticate(value)?))
    }
}

pub(crate) fn check_ns(ns: &str) -> Result<(), ApiError> {
    if valid_namespace(ns) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "{ns:?} is not a namespace: 1 to 64 letters, digits, '.', '_' or '-', not starting \
             with '.'"
        )))
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key.len() == 64 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("{key:?} is not a key digest (64 lowercase hex)")))
    }
}

/// Runs blocking engine work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await?
}

/// A live entry and the bytes of its small blobs.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EntryResponse {
    /// The run, as `taskvault show --json` prints it.
    #[schema(value_type = Object)]
    pub entry: Entry,
    /// Digest -> base64 of the blob's bytes, for the entry's blobs of at most 64 KiB (up to
    /// 1 MiB in all); fetch the others from `/blobs/{digest}`.
    pub blobs: BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupQuery {
    /// The task the key belongs to, so that a miss is counted for it.
    pub task: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/ns/{ns}/entries/{key}", tag = "entries",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("key" = String, Path, description = "Key digest, 64 lowercase hex", pattern = r"^[0-9a-f]{64}$"),
        LookupQuery,
    ),
    responses(
        (status = 200, description = "The live entry of the key", body = EntryResponse),
        (status = 400, description = "Malformed namespace or key", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not read this namespace", body = ErrorBody),
        (status = 404, description = "A miss", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_entry(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<LookupQuery>, QueryRejection>,
) -> Result<axum::Json<EntryResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_ns(&ns)?;
    check_key(&key)?;
    caller.check(Scope::Read, &ns)?;
    let op = format!("serve:{}", caller.name());
    let task = q.task.unwrap_or_default();
    let state = Arc::clone(&s);
    let found = blocking(move || {
        Ok(state.vault.export_entry(&key, &task, SMALL_BLOB_MAX, SMALL_BLOBS_TOTAL, &op)?)
    })
    .await?;
    match found {
        Some(x) if x.entry.namespace == ns => {
            use base64::Engine as _;
            s.metrics.hit();
            let blobs = x
                .small
                .iter()
                .map(|(d, b)| (d.to_string(), base64::engine::general_purpose::STANDARD.encode(b)))
                .collect();
            Ok(axum::Json(EntryResponse { entry: x.entry, blobs }))
        }
        _ => {
            s.metrics.miss();
            Err(ApiError::NotFound("no entry for this key in this namespace".into()))
        }
    }
}

#[utoipa::path(
    put, path = "/v1/ns/{ns}/entries/{key}", tag = "entries",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("key" = String, Path, description = "Key digest, 64 lowercase hex", pattern = r"^[0-9a-f]{64}$"),
    ),
    request_body(content = Object, description = "The run (an entry document as `show --json` prints it); its blobs must be present in the namespace", content_type = "application/json"),
    responses(
        (status = 201, description = "Committed as the key's live run"),
        (status = 200, description = "This run was live already"),
        (status = 400, description = "Malformed, or the entry does not answer the key", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
        (status = 409, description = "Blobs the namespace lacks (listed); upload them first", body = ErrorBody),
        (status = 413, description = "Larger than the task's size limit", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_entry(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_ns(&ns)?;
    check_key(&key)?;
    caller.check(Scope::Write, &ns)?;
    let entry: Entry = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not an entry: {e}")))?;
    if entry.key != key {
        return Err(ApiError::BadRequest(format!("the entry is for key {}, not {key}", entry.key)));
    }
    if entry.namespace != ns {
        return Err(ApiError::BadRequest(format!(
            "the entry belongs to namespace {:?}, not {ns:?}",
            entry.namespace
        )));
    }
    let op = format!("serve:{}", caller.name());
    let state = Arc::clone(&s);
    let ns2 = ns.clone();
    let admitted = blocking(move || {
        let missing: Vec<String> = entry
            .blob_digests()
            .iter()
            .map(|d| Ok((d, state.uploads.present(&state.vault, &ns, d)?)))
            .collect::<Result<Vec<_>, ApiError>>()?
            .into_iter()
            .filter(|(_, present)| !present)
            .map(|(d, _)| d.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(ApiError::MissingBlobs {
                message: format!(
                    "{} blob(s) of the entry are not in namespace {ns:?}",
                    missing.len()
                ),
                missing,
            });
        }
        // Uploads were hashed as they arrived; each is linked into the vault's temporary
        // directory so that the commit moves the link, and the upload stays for other commits.
        let linked = state.uploads.link_for_commit(&state.vault, &entry.blob_digests())?;
        let staged = |d: &Digest| {
            linked.iter().find(|(f, _)| f == d).map(|(_, p)| taskvault::Arrived::File(p.clone()))
        };
        let admitted = state.vault.admit(entry, &staged, true, &op);
        for (_, p) in &linked {
            let _ = std::fs::remove_file(p);
        }
        Ok(admitted?)
    })
    .await?;
    s.metrics.saved();
    let state = Arc::clone(&s);
    blocking(move || {
        state.claims.resolved(&state.vault, &ns2, &key);
        Ok(())
    })
    .await?;
    Ok(match admitted {
        Admitted::Committed => StatusCode::CREATED,
        Admitted::AlreadyLive => StatusCode::OK,
    })
}

/// A blob digest as the API spells it.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = r"^(blake3|sha256):[0-9a-f]{64}$")]
pub struct DigestText(pub String);

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MissingRequest {
    /// Digests, at most 100,000.
    #[schema(max_items = 100_000)]
    pub digests: Vec<DigestText>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MissingResponse {
    /// The digests asked about that the namespace lacks, in the order asked.
    pub missing: Vec<String>,
}

#[utoipa::path(
    post, path = "/v1/ns/{ns}/blobs/missing", tag = "blobs",
    params(("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")),
    request_body = MissingRequest,
    responses(
        (status = 200, description = "Which of the digests must be uploaded", body = MissingResponse),
        (status = 400, description = "A malformed digest, or too many", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn missing_blobs(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(ns): Path<String>,
    body: Bytes,
) -> Result<axum::Json<MissingResponse>, ApiError> {
    check_ns(&ns)?;
    caller.check(Scope::Write, &ns)?;
    let req: MissingRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a digest list: {e}")))?;
    if req.digests.len() > MISSING_MAX {
        return Err(ApiError::BadRequest(format!(
            "{} digests in one query; at most {MISSING_MAX}",
            req.digests.len()
        )));
    }
    let digests =
        req.digests.iter().map(|d| parse_digest(&d.0)).collect::<Result<Vec<Digest>, _>>()?;
    let missing = blocking(move || {
        let mut missing = Vec::new();
        for d in &digests {
            if !s.uploads.present(&s.vault, &ns, d)? {
                missing.push(d.to_string());
            }
        }
        Ok(missing)
    })
    .await?;
    Ok(axum::Json(MissingResponse { missing }))
}

/// A whole blob's response.
fn whole(s: &AppState, bytes: Bytes, etag: HeaderValue) -> Response {
    s.metrics.bytes_out(bytes.len() as u64);
    let h = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
        (header::ETAG, etag),
    ];
    (StatusCode::OK, h, bytes).into_response()
}

/// Blobs up to this size are read whole before the response starts (one buffer, no copy).
const SMALL_READ: u64 = 1 << 20;

/// A blob as a GET found it.
enum Opened {
    Missing,
    Whole(Bytes),
    Stream(taskvault::BlobStream),
}

/// An inclusive byte range of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
}

/// One range of a `Range: bytes=...` header, against a blob of `size` bytes. `Ok(None)` means
/// the header is ignored (absent, or several ranges: the whole blob is sent).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<Span>, ApiError> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let unsatisfiable =
        || ApiError::RangeNotSatisfiable(format!("range {spec:?} is outside the {size} bytes"));
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let span = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| unsatisfiable())?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable());
        }
        Span { start: size.saturating_sub(n), end: size - 1 }
    } else {
        let start: u64 = a.parse().map_err(|_| unsatisfiable())?;
        let end: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().map_err(|_| unsatisfiable())?
        };
        if start >= size || end < start {
            return Err(unsatisfiable());
        }
        Span { start, end: end.min(size - 1) }
    };
    Ok(Some(span))
}

#[utoipa::path(
    get, path = "/v1/ns/{ns}/blobs/{digest}", tag = "blobs",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("digest" = String, Path, description = "`blake3:<hex>` or `sha256:<hex>`", pattern = r"^(blake3|sha256):[0-9a-f]{64}$"),
        ("Range" = Option<String>, Header, description = "One `bytes=` range, to resume"),
    ),
    responses(
        (status = 200, description = "The blob's bytes (verified while sent: a blob that fails verification is cut short, never completed)", content_type = "application/octet-stream"),
        (status = 206, description = "The requested range", content_type = "application/octet-stream"),
        (status = 400, description = "Malformed namespace or digest", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not read this namespace", body = ErrorBody),
        (status = 404, description = "Not in this namespace", body = ErrorBody),
        (status = 416, description = "The range is outside the blob", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_blob(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, digest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_ns(&ns)?;
    let d = parse_digest(&digest)?;
    caller.check(Scope::Read, &ns)?;
    let ranged = headers.contains_key(header::RANGE);
    if !ranged
        && let Some((bytes, etag)) = s.hot.get(&d)
        && s.uploads.visible(&s.vault, &ns, &d)
    {
        return Ok(whole(&s, bytes, etag));
    }
    let state = Arc::clone(&s);
    let ns2 = ns.clone();
    let opened = blocking(move || {
        let Some(mut stream) = state.uploads.open(&state.vault, &ns2, &d)? else {
            return Ok(Opened::Missing);
        };
        if ranged || stream.size() > SMALL_READ {
            return Ok(Opened::Stream(stream));
        }
        // A small blob is read (and verified) whole: one trip to the blocking pool, and a
        // blob that fails is a 404, never a response cut short.
        let mut buf = Vec::with_capacity(stream.size() as usize);
        match std::io::Read::read_to_end(&mut stream, &mut buf) {
            Ok(_) => {
                let bytes = Bytes::from(buf);
                state.hot.put(d, bytes.clone());
                Ok(Opened::Whole(bytes))
            }
            Err(e) => {
                if let Some(why) = stream.failure() {
                    state.vault.blob_failed(&d, why, "serve")?;
                    return Ok(Opened::Missing);
                }
                Err(crate::uploads::io_error(e))
            }
        }
    })
    .await?;
    let stream = match opened {
        Opened::Missing => {
            return Err(ApiError::NotFound(format!("no blob {d} in namespace {ns:?}")));
        }
        Opened::Whole(bytes) => return Ok(whole(&s, bytes, crate::hot::etag(&d))),
        Opened::Stream(stream) => stream,
    };
    send_stream(&s, stream, &headers, HeaderMap::new())
}

/// The response that sends `stream` (the whole blob, or the one range `headers` ask for) with
/// `h` added: read on the blocking pool in bounded chunks, the last one held back until the
/// blob has verified, so a blob that fails is cut short, never completed (and is reported).
pub(crate) fn send_stream(
    s: &Arc<AppState>,
    mut stream: taskvault::BlobStream,
    headers: &HeaderMap,
    mut h: HeaderMap,
) -> Result<Response, ApiError> {
    let d = stream.digest();
    let size = stream.size();
    let span = parse_range(headers, size)?;
    let (status, sent) = match span {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r),
        None => (StatusCode::OK, Span { start: 0, end: size.wrapping_sub(1) }),
    };
    let len = if size == 0 { 0 } else { sent.end - sent.start + 1 };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, crate::hot::etag(&d));
    if span.is_some() {
        let v = format!("bytes {}-{}/{size}", sent.start, sent.end);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&v).expect("numbers"));
    }
    s.metrics.bytes_out(len);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(DOWNLOAD_AHEAD);
    let state = Arc::clone(s);
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let fail = |stream: &taskvault::BlobStream, e: std::io::Error| {
            if let Some(why) = stream.failure() {
                state.hot.forget(&stream.digest());
                let _ = state.vault.blob_failed(&stream.digest(), why, "serve");
            }
            let _ = tx.blocking_send(Err(e));
        };
        if let Err(e) = stream.skip(sent.start) {
            return fail(&stream, e);
        }
        // The last chunk of what is sent is held back until the whole blob has been read and
        // verified: a blob that fails verification never reaches a client complete.
        let mut left = len;
        let mut held: Option<Bytes> = None;
        loop {
            // Each chunk is read into a buffer of its own that becomes the body's chunk as it
            // is (no copy).
            let want =
                if left > 0 { left.min(DOWNLOAD_CHUNK as u64) } else { DOWNLOAD_CHUNK as u64 };
            let mut chunk = Vec::with_capacity(want as usize);
            let n = match (&mut stream).take(want).read_to_end(&mut chunk) {
                Ok(n) => n,
                Err(e) => return fail(&stream, e),
            };
            if n == 0 {
                // The stream said it ended, and a stream ends only once its bytes checked out.
                break;
            }
            if left == 0 {
                continue; // the tail after the range: verified, not sent
            }
            left -= n as u64;
            if let Some(prev) = held.replace(Bytes::from(chunk))
                && tx.blocking_send(Ok(prev)).is_err()
            {
                return; // the client went away
            }
        }
        if let Some(last) = held {
            let _ = tx.blocking_send(Ok(last));
        }
    });
    let body =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        );
    Ok((status, h, Body::from_stream(body)).into_response())
}

#[utoipa::path(
    head, path = "/v1/ns/{ns}/blobs/{digest}", tag = "blobs",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("digest" = String, Path, description = "`blake3:<hex>` or `sha256:<hex>`", pattern = r"^(blake3|sha256):[0-9a-f]{64}$"),
    ),
    responses(
        (status = 200, description = "Present in the namespace; Content-Length is its size"),
        (status = 400, description = "Malformed namespace or digest"),
        (status = 401, description = "No valid token"),
        (status = 403, description = "The token may not read this namespace"),
        (status = 404, description = "Not in this namespace"),
    ),
    security(("bearer" = []))
)]
pub async fn head_blob(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, digest)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_ns(&ns)?;
    let d = parse_digest(&digest)?;
    caller.check(Scope::Read, &ns)?;
    let size = blocking(move || Ok(s.uploads.open(&s.vault, &ns, &d)?.map(|b| b.size()))).await?;
    match size {
        Some(n) => Ok((
            StatusCode::OK,
            [
                (header::CONTENT_LENGTH, HeaderValue::from(n)),
                (header::ACCEPT_RANGES, HeaderValue::from_static("bytes")),
            ],
        )
            .into_response()),
        None => Err(ApiError::NotFound(format!("no blob {digest} in this namespace"))),
    }
}

#[utoipa::path(
    put, path = "/v1/ns/{ns}/blobs/{digest}", tag = "blobs",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("digest" = String, Path, description = "`blake3:<hex>` or `sha256:<hex>`: what the body must hash to", pattern = r"^(blake3|sha256):[0-9a-f]{64}$"),
    ),
    request_body(content = Vec<u8>, description = "The blob's bytes", content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored (verified and durable)"),
        (status = 200, description = "The server had these bytes already; the namespace may now use them"),
        (status = 400, description = "The body does not match the digest (nothing stored), or a malformed digest", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
        (status = 413, description = "Larger than the server accepts", body = ErrorBody),
        (status = 503, description = "Too many uploads at once; retry", body = ErrorBody),
        (status = 507, description = "It cannot fit in the vault even after eviction", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn put_blob(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, digest)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    check_ns(&ns)?;
    let d = parse_digest(&digest)?;
    caller.check(Scope::Write, &ns)?;
    let slot = upload_slot(&s, &headers).await?;
    let mut receiver = s.uploads.receiver(&d, slot.limit).map_err(crate::uploads::io_error)?;
    receive(&s, &slot, body, |chunk| receiver.write(chunk)).await?;
    let announced = slot.announced;
    let state = Arc::clone(&s);
    let (fresh, len) = blocking(move || {
        let received = receiver.finish(announced)?;
        let len = received.len;
        let fresh = state.uploads.keep(&state.vault, received)?;
        state.uploads.prove(&state.vault, &ns, &d)?;
        Ok((fresh, len))
    })
    .await?;
    s.metrics.bytes_in(len);
    Ok(if fresh { StatusCode::CREATED } else { StatusCode::OK })
}

/// An upload's place among those received at once, and what it may weigh.
pub(crate) struct UploadSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    /// The most bytes the body may have.
    pub limit: u64,
    /// What `Content-Length` announced.
    pub announced: Option<u64>,
}

/// Refuses an upload its announced length rules out (413 over the server's maximum, 507 over
/// the vault's cap), then waits for an upload slot (503 after the request timeout).
pub(crate) async fn upload_slot(s: &AppState, headers: &HeaderMap) -> Result<UploadSlot, ApiError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = s.options.max_upload_bytes;
    if let Some(n) = announced {
        if n > max {
            return Err(ApiError::TooLarge(format!(
                "{n} bytes; this server accepts uploads of at most {max}"
            )));
        }
        if let Some(cap) = s.cap_bytes.filter(|c| n > *c) {
            return Err(ApiError::InsufficientStorage(format!(
                "{n} bytes cannot fit under the vault's cap of {cap} bytes even after eviction"
            )));
        }
    }
    let permit = tokio::time::timeout(
        s.options.request_timeout,
        Arc::clone(&s.upload_slots).acquire_owned(),
    )
    .await
    .map_err(|_| ApiError::Busy("too many uploads at once; retry later".into()))?
    .map_err(|_| ApiError::Busy("the server is stopping".into()))?;
    let limit = s.cap_bytes.map_or(max, |c| c.min(max));
    Ok(UploadSlot { _permit: permit, limit, announced })
}

/// Reads a request body to its end, handing it to `write` in batches of about a megabyte (on
/// the blocking side); a stalled or broken body is a 400, a body over the slot's limit a 413
/// (507 when the vault's cap is what limits it).
pub(crate) async fn receive(
    s: &AppState,
    slot: &UploadSlot,
    body: Body,
    mut write: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<u64, ApiError> {
    let max = s.options.max_upload_bytes;
    let mut chunks = body.into_data_stream();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    let mut total = 0u64;
    let idle = s.options.request_timeout;
    loop {
        let next = tokio::time::timeout(idle, chunks.next())
            .await
            .map_err(|_| ApiError::BadRequest("the upload stalled; nothing stored".into()))?;
        let done = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(|e| {
                ApiError::BadRequest(format!("the upload was cut off ({e}); nothing stored"))
            })?;
            batched += chunk.len();
            total += chunk.len() as u64;
            if total > slot.limit {
                let m = format!("the upload is larger than the {} bytes accepted", slot.limit);
                return Err(if s.cap_bytes.is_some_and(|c| c < max) {
                    ApiError::InsufficientStorage(m)
                } else {
                    ApiError::TooLarge(m)
                });
            }
            batch.push(chunk);
        }
        if batched >= UPLOAD_BATCH || (done && !batch.is_empty()) {
            let chunks = std::mem::take(&mut batch);
            // A small body is written as it is (into memory, or a few pages of a file): moving
            // the worker's other tasks away would cost more than the write.
            if batched <= SMALL_WRITE {
                chunks.iter().try_for_each(|c| write(c))?;
            } else {
                tokio::task::block_in_place(|| chunks.iter().try_for_each(|c| write(c)))?;
            }
            batched = 0;
        }
        if done {
            return Ok(total);
        }
    }
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

#[utoipa::path(
    get, path = "/healthz", tag = "service",
    responses((status = 200, description = "The server is up and its vault answers", body = Health),
              (status = 503, description = "The vault does not answer", body = ErrorBody))
)]
pub async fn healthz(State(s): State<Arc<AppState>>) -> Result<axum::Json<Health>, ApiError> {
    blocking(move || Ok(s.vault.has_blob(&taskvault::Algorithm::Blake3.digest(b""))?))
        .await
        .map_err(|e| ApiError::Busy(format!("the vault does not answer: {e}")))?;
    Ok(axum::Json(Health { status: "ok", version: env!("CARGO_PKG_VERSION") }))
}

/// Longest long poll a client may ask for, and the default.
const WAIT_MAX: Duration = Duration::from_secs(60);
const WAIT_DEFAULT: Duration = Duration::from_secs(30);
/// Lease length bounds and default: a claimant renews well within it.
const TTL_MIN: Duration = Duration::from_secs(2);
const TTL_MAX: Duration = Duration::from_secs(600);
const TTL_DEFAULT: Duration = Duration::from_secs(15);

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimQuery {
    /// Seconds to wait while another client holds the claim (default 30, at most 60).
    #[param(minimum = 0.0)]
    pub wait: Option<f64>,
    /// Seconds the lease lasts unless renewed (default 15, 2 to 600).
    #[param(minimum = 0.0)]
    pub ttl: Option<f64>,
}

/// Where a claim stands for the asker.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ClaimResponse {
    /// `granted` (compute it, renew the lease, commit the entry), `ready` (fetch the entry),
    /// `failed` (the claimant's failure is in `message`), `waiting` (ask again).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who holds the claim (a token name), while waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl ClaimResponse {
    fn state(state: &str) -> ClaimResponse {
        ClaimResponse {
            state: state.into(),
            lease: None,
            ttl_seconds: None,
            message: None,
            holder: None,
        }
    }
}

fn seconds(
    v: Option<f64>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s >= 0.0 && !s.is_sign_negative() => {
            Ok(Duration::from_secs_f64(s.min(max.as_secs_f64())).max(min))
        }
        Some(s) => Err(ApiError::BadRequest(format!("{s} is not a number of seconds"))),
    }
}

#[utoipa::path(
    post, path = "/v1/ns/{ns}/claims/{key}", tag = "claims",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("key" = String, Path, description = "Key digest, 64 lowercase hex", pattern = r"^[0-9a-f]{64}$"),
        ClaimQuery,
    ),
    responses(
        (status = 201, description = "Granted: the caller computes it and holds the lease", body = ClaimResponse),
        (status = 200, description = "`ready` (the entry exists) or `failed` (the claimant failed)", body = ClaimResponse),
        (status = 202, description = "Still held by another client after the wait: ask again", body = ClaimResponse),
        (status = 400, description = "Malformed namespace, key or parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn claim(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, key)): Path<(String, String)>,
    q: Result<Query<ClaimQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_ns(&ns)?;
    check_key(&key)?;
    caller.check(Scope::Write, &ns)?;
    let wait = seconds(q.wait, WAIT_DEFAULT, Duration::ZERO, WAIT_MAX)?;
    let ttl = seconds(q.ttl, TTL_DEFAULT, TTL_MIN, TTL_MAX)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (state, k, n) = (Arc::clone(&s), key.clone(), ns.clone());
        let live =
            blocking(move || Ok(state.vault.live_entry(&k)?.is_some_and(|e| e.namespace == n)))
                .await?;
        if live {
            return Ok((StatusCode::OK, axum::Json(ClaimResponse::state("ready"))).into_response());
        }
        let (state, k, n, name) =
            (Arc::clone(&s), key.clone(), ns.clone(), caller.name().to_owned());
        let asked = blocking(move || {
            let asked = state.claims.ask(&state.vault, &n, &k, &name, ttl)?;
            let crate::claims::Asked::Granted { lease } = &asked else { return Ok(Some(asked)) };
            // Committed between the check above and the grant: the claim is not needed.
            if state.vault.live_entry(&k)?.is_some_and(|e| e.namespace == n) {
                state.claims.end(&state.vault, &n, &k, lease, crate::claims::Outcome::Vacant)?;
                return Ok(None);
            }
            Ok(Some(asked))
        })
        .await?;
        let (mut rx, expires, holder) = match asked {
            None => {
                return Ok(
                    (StatusCode::OK, axum::Json(ClaimResponse::state("ready"))).into_response()
                );
            }
            Some(crate::claims::Asked::Granted { lease }) => {
                let r = ClaimResponse {
                    lease: Some(lease),
                    ttl_seconds: Some(ttl.as_secs_f64()),
                    ..ClaimResponse::state("granted")
                };
                return Ok((StatusCode::CREATED, axum::Json(r)).into_response());
            }
            Some(crate::claims::Asked::Held { rx, expires, holder }) => (rx, expires, holder),
        };
        s.metrics.claims_waiting.inc();
        let until = deadline.min(tokio::time::Instant::from_std(expires));
        let woke = tokio::select! {
            changed = rx.changed() => changed.is_ok(),
            () = tokio::time::sleep_until(until) => false,
        };
        s.metrics.claims_waiting.dec();
        let outcome = rx.borrow().clone();
        drop(rx);
        s.claims.forget_idle(&ns, &key);
        match outcome {
            crate::claims::Outcome::Ready => {
                return Ok(
                    (StatusCode::OK, axum::Json(ClaimResponse::state("ready"))).into_response()
                );
            }
            crate::claims::Outcome::Failed(m) => {
                let r = ClaimResponse { message: Some(m), ..ClaimResponse::state("failed") };
                return Ok((StatusCode::OK, axum::Json(r)).into_response());
            }
            // Released, or its lease ran out: try to take it.
            crate::claims::Outcome::Vacant => continue,
            crate::claims::Outcome::Pending if !woke && tokio::time::Instant::now() < deadline => {
                continue;
            }
            crate::claims::Outcome::Pending => {
                let r = ClaimResponse { holder: Some(holder), ..ClaimResponse::state("waiting") };
                return Ok((StatusCode::ACCEPTED, axum::Json(r)).into_response());
            }
        }
    }
}

#[utoipa::path(
    put, path = "/v1/ns/{ns}/claims/{key}/{lease}", tag = "claims",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("key" = String, Path, description = "Key digest, 64 lowercase hex", pattern = r"^[0-9a-f]{64}$"),
        ("lease" = String, Path, description = "The lease a grant returned", pattern = r"^[0-9a-f]{1,64}$"),
        ClaimQuery,
    ),
    responses(
        (status = 200, description = "Renewed", body = ClaimResponse),
        (status = 400, description = "Malformed namespace, key or parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
        (status = 409, description = "The lease is no longer the claim's (it expired, or ended)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn renew_claim(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, key, lease)): Path<(String, String, String)>,
    q: Result<Query<ClaimQuery>, QueryRejection>,
) -> Result<axum::Json<ClaimResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_ns(&ns)?;
    check_key(&key)?;
    caller.check(Scope::Write, &ns)?;
    let ttl = seconds(q.ttl, TTL_DEFAULT, TTL_MIN, TTL_MAX)?;
    let (state, l) = (Arc::clone(&s), lease.clone());
    let renewed = blocking(move || state.claims.renew(&state.vault, &ns, &key, &l, ttl)).await?;
    if renewed {
        Ok(axum::Json(ClaimResponse {
            lease: Some(lease),
            ttl_seconds: Some(ttl.as_secs_f64()),
            ..ClaimResponse::state("granted")
        }))
    } else {
        Err(ApiError::Conflict("the lease is no longer this claim's".into()))
    }
}

/// How a claimant ends its claim without an entry.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Release {
    /// The computation failed: waiters receive this message (and do not compute).
    pub failure: Option<String>,
}

#[utoipa::path(
    delete, path = "/v1/ns/{ns}/claims/{key}/{lease}", tag = "claims",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("key" = String, Path, description = "Key digest, 64 lowercase hex", pattern = r"^[0-9a-f]{64}$"),
        ("lease" = String, Path, description = "The lease a grant returned", pattern = r"^[0-9a-f]{1,64}$"),
    ),
    request_body(content = Option<Release>, description = "Optional: the failure to hand the waiters", content_type = "application/json"),
    responses(
        (status = 204, description = "Released (waiters told)"),
        (status = 400, description = "Malformed namespace, key or body", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not write this namespace", body = ErrorBody),
        (status = 409, description = "The lease is no longer the claim's", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn release_claim(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, key, lease)): Path<(String, String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_ns(&ns)?;
    check_key(&key)?;
    caller.check(Scope::Write, &ns)?;
    let release: Release = if body.is_empty() {
        Release::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("the body is not a release: {e}")))?
    };
    let outcome = match release.failure {
        Some(m) => crate::claims::Outcome::Failed(m),
        None => crate::claims::Outcome::Vacant,
    };
    let ended = blocking(move || s.claims.end(&s.vault, &ns, &key, &lease, outcome)).await?;
    if ended {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict("the lease is no longer this claim's".into()))
    }
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Only this task.
    pub task: Option<String>,
    /// Only runs with this tag: `k` or `k=v`.
    pub tag: Option<String>,
    /// Only runs with this status (`live`, `superseded`, `corrupt`, `failed`); implies `all`.
    pub status: Option<String>,
    /// Only runs created at or after this time (milliseconds since the epoch).
    pub since_ms: Option<i64>,
    /// At most this many (default 100, at most 10,000).
    #[param(minimum = 0)]
    pub limit: Option<usize>,
    /// Include superseded, corrupt and failed runs.
    pub all: Option<bool>,
}

/// Runs, newest first.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LogResponse {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Entry>,
}

/// The most runs one log request returns, and how many it reads looking for them.
const LOG_MAX: usize = 10_000;
const LOG_SCAN_MAX: usize = 200_000;

#[utoipa::path(
    get, path = "/v1/ns/{ns}/log", tag = "inspect",
    params(("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"), LogQuery),
    responses(
        (status = 200, description = "The namespace's runs, newest first (`taskvault log --remote`)", body = LogResponse),
        (status = 400, description = "Malformed namespace or parameter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not read this namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn log(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path(ns): Path<String>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<axum::Json<LogResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    check_ns(&ns)?;
    caller.check(Scope::Read, &ns)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(name) => Some(taskvault::Status::parse(name).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown status {name:?} (live, superseded, corrupt or failed)"
            ))
        })?),
    };
    let want = q.limit.unwrap_or(100).min(LOG_MAX);
    let tag = q.tag.as_deref().map(taskvault::Filter::tag_selector);
    let filter = taskvault::Filter {
        task: q.task,
        tag,
        status,
        since_ms: q.since_ms,
        all: q.all.unwrap_or(false),
        limit: None,
    };
    let entries = blocking(move || {
        // The vault holds every namespace: read more runs than asked for until enough are
        // this namespace's (or there are no more).
        let mut scan = (want * 2).max(64);
        loop {
            let page = s.vault.list(&taskvault::Filter { limit: Some(scan), ..filter.clone() })?;
            let exhausted = page.len() < scan;
            let mine: Vec<Entry> =
                page.into_iter().filter(|e| e.namespace == ns).take(want).collect();
            if mine.len() == want || exhausted || scan >= LOG_SCAN_MAX {
                return Ok(mine);
            }
            scan = (scan * 4).min(LOG_SCAN_MAX);
        }
    })
    .await?;
    Ok(axum::Json(LogResponse { entries }))
}

#[utoipa::path(
    get, path = "/v1/ns/{ns}/runs/{hash}", tag = "inspect",
    params(
        ("ns" = String, Path, description = "Namespace", pattern = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"),
        ("hash" = String, Path, description = "A run id or key, or a prefix of one", pattern = r"^[0-9a-fA-F]{1,64}$"),
    ),
    responses(
        (status = 200, description = "The run (`taskvault show --remote`)", body = Object),
        (status = 400, description = "Malformed, or an ambiguous prefix", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "The token may not read this namespace", body = ErrorBody),
        (status = 404, description = "No such run in this namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn show(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
    Path((ns, hash)): Path<(String, String)>,
) -> Result<axum::Json<Entry>, ApiError> {
    check_ns(&ns)?;
    caller.check(Scope::Read, &ns)?;
    if hash.is_empty() || hash.len() > 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::BadRequest(format!("{hash:?} is not a run id or key prefix")));
    }
    let found = blocking(move || match s.vault.resolve(&hash) {
        Ok(e) => Ok(Some(e)),
        Err(taskvault::Error::NotFound(_)) => Ok(None),
        Err(taskvault::Error::Ambiguous { prefix, count }) => Err(ApiError::BadRequest(format!(
            "{prefix} is ambiguous: it starts {count} runs or keys; give more of it"
        ))),
        Err(e) => Err(e.into()),
    })
    .await?;
    match found {
        Some(e) if e.namespace == ns => Ok(axum::Json(e)),
        _ => Err(ApiError::NotFound("no such run in this namespace".into())),
    }
}

#[utoipa::path(
    get, path = "/v1/stats", tag = "admin",
    responses(
        (status = 200, description = "The server vault's statistics, as `taskvault stats --json` (all namespaces)", body = Object),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin token for every namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stats(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    caller.check_global(Scope::Admin)?;
    let stats = blocking(move || Ok(s.vault.stats()?)).await?;
    serde_json::to_value(stats).map(axum::Json).map_err(|e| ApiError::Internal(e.to_string()))
}

#[utoipa::path(
    post, path = "/v1/gc", tag = "admin",
    responses(
        (status = 200, description = "What `gc` removed (expired entries, orphans, crash leftovers)", body = Object),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin token for every namespace", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn gc(
    State(s): State<Arc<AppState>>,
    Auth(caller): Auth,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    caller.check_global(Scope::Admin)?;
    let report = blocking(move || {
        let r = s.vault.gc(None, None)?;
        s.uploads.reap(&s.vault);
        Ok(r)
    })
    .await?;
    serde_json::to_value(report).map(axum::Json).map_err(|e| ApiError::Internal(e.to_string()))
}
