//! Blobs in an object store (S3 and compatibles, GCS, Azure Blob: any service Apache OpenDAL
//! serves, chosen by the URL's scheme), under `blobs/<algorithm>/<2 hex>/<64 hex>` of the URL's
//! root.
//!
//! The engine is synchronous; this store owns a small tokio runtime and runs each request on
//! it, so it can be called from any thread, inside another runtime or not. An upload is one
//! object write: the object store makes it visible under its name only once complete, so a
//! half-written blob is never seen. Reads stream in ranges, and the vault verifies every byte
//! against the digest as it reads, as it does for local blobs.

use std::future::Future;
use std::io::Read;
use std::path::Path;

use opendal::{ErrorKind, Operator};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, IoContext, Result};
use crate::store::{BlobReader, BlobStore};

/// Bytes fetched per ranged read while streaming a blob.
const READ_CHUNK: u64 = 8 << 20;
/// Part size and parts in flight of an upload (multipart where the service has it).
const WRITE_CHUNK: usize = 16 << 20;
const WRITE_CONCURRENCY: usize = 4;
/// Entries fetched from the runtime per step of a listing.
const LIST_PAGE: usize = 1000;

/// The URL schemes this build serves (OpenDAL services compiled in).
pub const SCHEMES: &[&str] = &["s3", "gcs", "azblob"];

/// Whether `location` (a config's `storage.blobs`) names an object store rather than the local
/// disk.
pub fn is_object_url(location: &str) -> bool {
    location.split_once("://").is_some_and(|(scheme, _)| SCHEMES.contains(&scheme))
}

pub struct ObjectBlobs {
    op: Operator,
    /// The directory of the root the blobs are under: `blobs`, or a sibling's name (see
    /// [`BlobStore::sibling`]).
    area: String,
    /// The URL it was opened with, for siblings.
    url: String,
    /// Blobs kept on the local disk too (see `store::cache`).
    cache: Option<crate::store::cache::BlobCache>,
    /// Where, for messages: the URL without its query (which may carry settings).
    shown: String,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBlobs").field("at", &self.shown).finish()
    }
}

impl Drop for ObjectBlobs {
    fn drop(&mut self) {
        // Never blocks, so a vault may be dropped anywhere (inside an async task too).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl ObjectBlobs {
    /// Opens the store at `url` (`s3://bucket/prefix?region=...&endpoint=...`; credentials
    /// from the service's usual environment variables, such as `AWS_ACCESS_KEY_ID`). Makes no
    /// request: an unreachable store shows on first use.
    pub fn open(url: &str) -> Result<ObjectBlobs> {
        let shown = shown(url).to_owned();
        let bad = |message: String| Error::Store { store: shown.clone(), message };
        if !is_object_url(url) {
            return Err(bad(format!("unknown scheme; this build serves {}", SCHEMES.join(", "))));
        }
        opendal::install_default();
        // TLS through rustls with `ring` (an error means a provider is already installed, which
        // serves as well), and OpenDAL's reqwest transport over it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        opendal_http_transport_reqwest::install_default();
        let op = Operator::from_uri(url).map_err(|e| bad(e.to_string()))?;
        let op = op.layer(opendal::layers::TimeoutLayer::new()).layer(
            opendal::layers::RetryLayer::new()
                .with_max_times(3)
                .with_min_delay(std::time::Duration::from_millis(100))
                .with_max_delay(std::time::Duration::from_secs(2))
                .with_jitter(),
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("taskvault-objects")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start its runtime: {e}")))?;
        Ok(ObjectBlobs {
            op,
            area: "blobs".into(),
            url: url.to_owned(),
            cache: None,
            shown,
            rt: Some(rt),
        })
    }

    /// Keeps blobs written and read on the local disk too, in `cache`.
    pub(crate) fn with_cache(mut self, cache: crate::store::cache::BlobCache) -> ObjectBlobs {
        self.cache = Some(cache);
        self
    }

    fn path(&self, d: &Digest) -> String {
        let hex = d.hex();
        format!("{}/{}/{}/{}", self.area, d.algorithm().name(), &hex[..2], hex)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("the runtime lives as long as the store").handle()
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = opendal::Result<T>> + Send + 'static,
    ) -> opendal::Result<T> {
        run_on(self.handle(), f)
    }

    fn err(&self, what: &str, d: &Digest, e: opendal::Error) -> Error {
        Error::Store { store: self.shown.clone(), message: format!("{what} blob {d}: {e}") }
    }
}

impl BlobStore for ObjectBlobs {
    fn sibling(&self, name: &str) -> Result<Option<Box<dyn BlobStore>>> {
        let mut s = ObjectBlobs::open(&self.url)?;
        s.area = name.to_owned();
        Ok(Some(Box::new(s)))
    }

    fn put(&self, digest: &Digest, staged: &Path) -> Result<()> {
        let mut file = std::fs::File::open(staged).at(staged)?;
        let (op, path) = (self.op.clone(), self.path(digest));
        let mut writer = self
            .run(async move {
                op.writer_with(&path).chunk(WRITE_CHUNK).concurrent(WRITE_CONCURRENCY).await
            })
            .map_err(|e| self.err("cannot upload", digest, e))?;
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = read_full(&mut file, &mut buf).at(staged)?;
            if n == 0 {
                break;
            }
            let chunk = buf[..n].to_vec();
            let (w, written) = self
                .run(async move {
                    let r = writer.write(chunk).await;
                    Ok((writer, r))
                })
                .map_err(|e| self.err("cannot upload", digest, e))?;
            writer = w;
            if let Err(e) = written {
                let _ = self.run(async move { writer.abort().await });
                return Err(self.err("cannot upload", digest, e));
            }
        }
        self.run(async move { writer.close().await })
            .map_err(|e| self.err("cannot finish uploading", digest, e))?;
        // Moved in: the staging file is done with, or kept as the local copy.
        match &self.cache {
            Some(c) => c.adopt(digest, staged),
            None => {
                let _ = std::fs::remove_file(staged);
            }
        }
        Ok(())
    }

    fn open(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let (op, path) = (self.op.clone(), self.path(digest));
        match self.run(async move { op.stat(&path).await }) {
            Ok(meta) => self.open_sized(digest, meta.content_length()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("cannot read", digest, e)),
        }
    }

    fn contains(&self, digest: &Digest) -> Result<bool> {
        let (op, path) = (self.op.clone(), self.path(digest));
        match self.run(async move { op.stat(&path).await }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("cannot read", digest, e)),
        }
    }

    fn open_sized(&self, digest: &Digest, stored_size: u64) -> Result<Option<BlobReader>> {
        let cache = self.cache.as_ref().filter(|c| c.takes(stored_size));
        if let Some(f) = cache.and_then(|c| c.get(digest, stored_size)) {
            return Ok(Some(BlobReader::File(f)));
        }
        let mut reader = ObjectReader {
            op: self.op.clone(),
            path: self.path(digest),
            handle: self.handle().clone(),
            shown: self.shown.clone(),
            pos: 0,
            len: stored_size,
            buf: Vec::new(),
            at: 0,
        };
        // The first range is read now: one request says whether the blob is there and brings
        // all of it when it fits one range.
        match reader.fetch() {
            Ok(()) => match cache {
                // Read whole onto the local disk, then served from there.
                Some(c) => match c.insert(digest, &mut reader, stored_size) {
                    Ok(Some(f)) => Ok(Some(BlobReader::File(f))),
                    Ok(None) => Ok(Some(BlobReader::Unusable(format!(
                        "object is shorter than the {stored_size} bytes expected"
                    )))),
                    Err(e) => Err(Error::Store {
                        store: self.shown.clone(),
                        message: format!("reading blob {digest} to the local disk: {e}"),
                    }),
                },
                None => Ok(Some(BlobReader::Stream(Box::new(reader)))),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => {
                // Perhaps not the length the metadata says (truncated, replaced): then it is
                // no blob of that digest. Otherwise the store failed.
                let (op, path) = (self.op.clone(), self.path(digest));
                match self.run(async move { op.stat(&path).await }) {
                    Ok(m) if m.content_length() != stored_size => Ok(Some(BlobReader::Unusable(
                        format!("object is {} bytes, expected {stored_size}", m.content_length()),
                    ))),
                    Err(s) if s.kind() == ErrorKind::NotFound => Ok(None),
                    _ => Err(self.err("cannot read", digest, e)),
                }
            }
        }
    }

    fn puts_before_commit(&self) -> bool {
        true
    }

    fn forget_local(&self, digest: &Digest) {
        if let Some(c) = &self.cache {
            c.forget(digest);
        }
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.forget_local(digest);
        let (op, path) = (self.op.clone(), self.path(digest));
        match self.run(async move { op.delete(&path).await }) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("cannot delete", digest, e)),
        }
    }

    fn quarantine(&self, digest: &Digest) -> Result<()> {
        self.forget_local(digest);
        let (op, path) = (self.op.clone(), self.path(digest));
        let to = format!("quarantine/{}-{}", digest.hex(), crate::clock::now_ms());
        // Kept for inspection where the service can copy; gone from under its digest either way.
        let copied = self.run({
            let (op, path) = (op.clone(), path.clone());
            async move { op.copy(&path, &to).await }
        });
        if let Err(e) = copied {
            tracing::warn!("{}: blob {digest} not kept in quarantine: {e}", self.shown);
        }
        match self.run(async move { op.delete(&path).await }) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("cannot quarantine", digest, e)),
        }
    }

    fn link(&self, _digest: &Digest, _dest: &Path) -> Result<bool> {
        Ok(false) // not on this filesystem: the caller copies
    }

    fn visit(
        &self,
        f: &mut dyn FnMut(Digest, Option<std::time::SystemTime>) -> Result<()>,
    ) -> Result<()> {
        let failed = |e: opendal::Error| Error::Store {
            store: self.shown.clone(),
            message: format!("cannot list blobs: {e}"),
        };
        let op = self.op.clone();
        let dir = format!("{}/", self.area);
        let mut lister =
            self.run(async move { op.lister_with(&dir).recursive(true).await }).map_err(failed)?;
        loop {
            // A page of entries at a time from the runtime; `f` runs here, between pages.
            let (l, page, error) = self
                .run(async move {
                    use futures_util::StreamExt as _;
                    let mut page = Vec::with_capacity(LIST_PAGE);
                    let mut error = None;
                    while page.len() < LIST_PAGE {
                        match lister.next().await {
                            Some(Ok(e)) => page.push(e),
                            Some(Err(e)) => {
                                error = Some(e);
                                break;
                            }
                            None => break,
                        }
                    }
                    Ok((lister, page, error))
                })
                .map_err(failed)?;
            lister = l;
            let done = page.len() < LIST_PAGE;
            for e in page {
                if let Some(d) = blob_digest(&self.area, e.path()) {
                    f(d, e.metadata().last_modified().map(std::time::SystemTime::from))?;
                }
            }
            if let Some(e) = error {
                return Err(failed(e));
            }
            if done {
                return Ok(());
            }
        }
    }
}

/// The digest an object path `<area>/<algorithm>/<2 hex>/<hex>` names, if it is one.
fn blob_digest(area: &str, path: &str) -> Option<Digest> {
    let mut parts = path.split('/');
    let (Some(a), Some(alg), Some(_fan), Some(hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if a != area {
        return None;
    }
    Digest::from_hex(alg.parse::<Algorithm>().ok()?, hex).ok()
}

/// Runs one request on the store's runtime and waits for it, from any thread. A request that
/// never answers (its task panicked) is an error, never a panic here.
fn run_on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    f: impl Future<Output = opendal::Result<T>> + Send + 'static,
) -> opendal::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(opendal::Error::new(ErrorKind::Unexpected, "the object store's runtime stopped"))
    })
}

/// A store URL as messages show it: without its query, which may carry credentials.
pub fn shown(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// Reads into `buf` until it is full or the file ends; the bytes read.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A stored object read in ranges of [`READ_CHUNK`] bytes as the caller consumes it.
struct ObjectReader {
    op: Operator,
    path: String,
    handle: tokio::runtime::Handle,
    shown: String,
    pos: u64,
    len: u64,
    buf: Vec<u8>,
    at: usize,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").field("path", &self.path).field("pos", &self.pos).finish()
    }
}

impl ObjectReader {
    /// Fetches the next range into the buffer.
    fn fetch(&mut self) -> std::result::Result<(), opendal::Error> {
        let end = (self.pos + READ_CHUNK).min(self.len);
        if end == self.pos {
            self.buf.clear();
            self.at = 0;
            return Ok(()); // an empty blob: nothing to fetch
        }
        let (op, path, range) = (self.op.clone(), self.path.clone(), self.pos..end);
        let got = run_on(&self.handle, async move { op.read_with(&path).range(range).await })?;
        self.buf = got.to_vec();
        self.at = 0;
        if self.buf.is_empty() {
            // Shorter than the metadata says: the caller's verification reports it.
            self.len = self.pos;
        }
        self.pos += self.buf.len() as u64;
        Ok(())
    }
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.len {
                return Ok(0);
            }
            self.fetch().map_err(|e| {
                std::io::Error::other(format!("{}: reading {}: {e}", self.shown, self.path))
            })?;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
