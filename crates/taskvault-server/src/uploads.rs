//! Blobs arriving from clients, and which namespace may see which blob.
//!
//! An upload streams into `server/tmp`, hashed as it arrives; only when the whole body matches
//! its digest (and size) is it made durable and renamed to `server/uploads/<alg>-<hex>`, where
//! the commit of an entry takes it into the vault. A namespace may use a blob only once a
//! client of that namespace has sent its bytes: the proof is an empty file
//! `server/proofs/<namespace>/<alg>-<hex>`, or a row of the metadata store when replicas share
//! it (PostgreSQL). Content is stored once underneath, but knowing a
//! digest never lets another namespace read it or reference it.
//!
//! Replicas of a server on a shared metadata store and an object store also put each verified
//! upload in the object store's `uploads/` area (see `Vault::upload_area`), so that an entry
//! may be committed, or the blob read, through any replica: a replica that lacks the upload
//! fetches it from there, verifying it again against its digest.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use taskvault::store::{BlobReader, BlobStore};
use taskvault::{Digest, Vault};

use crate::error::ApiError;

/// Uploads older than this whose blob is in the vault are removed; ones whose entry never came,
/// after a day.
const COMMITTED_UPLOAD_AGE: Duration = Duration::from_secs(600);
const ABANDONED_UPLOAD_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct Uploads {
    tmp: PathBuf,
    uploads: PathBuf,
    proofs: PathBuf,
    /// Proofs seen on disk (they are never removed, so a remembered one stays true).
    known: std::sync::RwLock<std::collections::HashMap<String, std::collections::HashSet<Digest>>>,
    /// Verified uploads every replica sees, beside this server's own (`None`: not a replica).
    shared: Option<Box<dyn BlobStore>>,
}

/// Proofs remembered in memory at most; past it the set starts again (the disk still knows).
const KNOWN_PROOFS_MAX: usize = 200_000;

fn blob_file_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().name(), d.hex())
}

/// Parses a digest as the API spells it: `<algorithm>:<64 hex>`.
pub fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "{s:?} is not a digest (`blake3:<64 hex>` or `sha256:<64 hex>`)"
        ))
    };
    let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
    let alg: taskvault::Algorithm = alg.parse().map_err(|_| bad())?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad());
    }
    Digest::from_hex(alg, hex).map_err(|_| bad())
}

impl Uploads {
    /// The uploads of a server with its directory at `server_dir`; `shared`: the area that
    /// replicas share (see `Vault::upload_area`).
    pub fn new(server_dir: &Path, shared: Option<Box<dyn BlobStore>>) -> std::io::Result<Uploads> {
        let u = Uploads {
            tmp: server_dir.join("tmp"),
            uploads: server_dir.join("uploads"),
            proofs: server_dir.join("proofs"),
            known: Default::default(),
            shared,
        };
        for d in [&u.tmp, &u.uploads, &u.proofs] {
            std::fs::create_dir_all(d)?;
        }
        // Partial uploads of an earlier run are never used.
        for e in std::fs::read_dir(&u.tmp)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(u)
    }

    fn proof(&self, ns: &str, d: &Digest) -> PathBuf {
        self.proofs.join(ns).join(blob_file_name(d))
    }

    /// The verified upload of `d` on this server's disk, if one waits for its commit.
    pub fn upload(&self, d: &Digest) -> Option<PathBuf> {
        let p = self.uploads.join(blob_file_name(d));
        p.is_file().then_some(p)
    }

    /// The verified upload of `d` on this server's disk, fetched first from the replicas'
    /// shared area if another replica received it. Bytes there that do not match their digest
    /// are removed and never used.
    fn upload_here(&self, d: &Digest) -> Result<Option<PathBuf>, ApiError> {
        if let Some(p) = self.upload(d) {
            return Ok(Some(p));
        }
        let Some(area) = &self.shared else { return Ok(None) };
        let mut reader: Box<dyn std::io::Read + Send> = match area.open(d)? {
            None => return Ok(None),
            Some(BlobReader::File(f)) => Box::new(f),
            Some(BlobReader::Stream(s)) => Box::new(s),
            Some(BlobReader::Unusable(why)) => {
                tracing::warn!("the shared upload of {d} is unusable ({why}): removed");
                area.remove(d)?;
                return Ok(None);
            }
        };
        let mut receiver = self.receiver(d, u64::MAX).map_err(io_error)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(ApiError::Busy(format!("reading the shared upload of {d}: {e}")));
                }
            };
            receiver.write(&buf[..n])?;
        }
        let received = match receiver.finish(None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("the shared upload of {d} does not match its digest ({e}): removed");
                area.remove(d)?;
                return Ok(None);
            }
        };
        self.settle(received).map(Some)
    }

    /// Moves a verified upload in under its digest, durably; its path.
    fn settle(&self, mut received: Received) -> Result<PathBuf, ApiError> {
        let tmp = received.path.take().expect("a received upload has its file");
        let dest = self.uploads.join(blob_file_name(&received.digest));
        std::fs::rename(&tmp, &dest).map_err(io_error)?;
        std::fs::File::open(&self.uploads).and_then(|d| d.sync_all()).map_err(io_error)?;
        Ok(dest)
    }

    /// Whether namespace `ns` may use blob `d` and its bytes are here (in the vault or waiting).
    pub fn present(&self, vault: &Vault, ns: &str, d: &Digest) -> Result<bool, ApiError> {
        if !self.visible(vault, ns, d) {
            return Ok(false);
        }
        if self.upload(d).is_some() || vault.has_blob(d)? {
            return Ok(true);
        }
        match &self.shared {
            Some(area) => Ok(area.contains(d)?),
            None => Ok(false),
        }
    }

    /// The bytes of `d` for a reader of namespace `ns`: from the vault, else from an upload
    /// waiting for its entry; `None` if the namespace may not see it or it is not here.
    pub fn open(
        &self,
        vault: &Vault,
        ns: &str,
        d: &Digest,
    ) -> Result<Option<taskvault::BlobStream>, ApiError> {
        if !self.visible(vault, ns, d) {
            return Ok(None);
        }
        if let Some(s) = vault.open_blob(d)? {
            return Ok(Some(s));
        }
        let Some(p) = self.upload_here(d)? else { return Ok(None) };
        match std::fs::File::open(&p) {
            Ok(f) => Ok(Some(taskvault::BlobStream::from_file(f, *d).map_err(io_error)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(e)),
        }
    }

    /// Whether namespace `ns` may read blob `d`: a proof in the vault's metadata store when it
    /// keeps them (a store every replica shares), else in this server's directory. A store that
    /// cannot answer answers no.
    pub fn visible(&self, vault: &Vault, ns: &str, d: &Digest) -> bool {
        {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            if known.get(ns).is_some_and(|set| set.contains(d)) {
                return true;
            }
        }
        let seen = match vault.has_proof(ns, d) {
            Ok(Some(seen)) => seen,
            Ok(None) => self.proof(ns, d).exists(),
            Err(e) => {
                tracing::warn!("reading the proof of {d} in namespace {ns}: {e}");
                false
            }
        };
        if seen {
            let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
            if known.values().map(|s| s.len()).sum::<usize>() >= KNOWN_PROOFS_MAX {
                known.clear();
            }
            known.entry(ns.to_owned()).or_default().insert(*d);
        }
        seen
    }

    /// Records that a client of `ns` has sent the bytes of `d` (in the vault's metadata store
    /// when it keeps proofs, else in this server's directory).
    pub fn prove(&self, vault: &Vault, ns: &str, d: &Digest) -> Result<(), ApiError> {
        if vault.add_proof(ns, d)? {
            return Ok(());
        }
        self.prove_here(ns, d).map_err(io_error)
    }

    fn prove_here(&self, ns: &str, d: &Digest) -> std::io::Result<()> {
        let p = self.proof(ns, d);
        if p.exists() {
            return Ok(());
        }
        let dir = p.parent().expect("proofs live in a directory");
        std::fs::create_dir_all(dir)?;
        std::fs::File::create(&p)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// A fresh name in the temporary directory for bytes of `d`.
    fn scratch(&self, d: &Digest) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.tmp.join(format!("{}-{n}", blob_file_name(d)))
    }

    /// A fresh file to receive an upload into.
    pub fn receiver(&self, d: &Digest, max: u64) -> std::io::Result<Receiver> {
        let path = self.scratch(d);
        let file = std::fs::File::create(&path)?;
        Ok(Receiver {
            hasher: d.algorithm().hasher(),
            digest: *d,
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            path: Some(path),
            len: 0,
            max,
        })
    }

    /// Makes a verified upload durable and visible under its digest. `false` when the vault
    /// holds the blob already (the bytes are dropped; the proof still counts).
    /// With replicas, it is in their shared area before it is acknowledged.
    pub fn keep(&self, vault: &Vault, received: Received) -> Result<bool, ApiError> {
        let d = received.digest;
        if vault.has_blob(&d)? || self.upload(&d).is_some() {
            return Ok(false);
        }
        if let Some(area) = &self.shared
            && !area.contains(&d)?
        {
            // The store moves in (and removes) what it is given: a link, so the file stays.
            let tmp = received.path.as_ref().expect("a received upload has its file");
            let link = self.scratch(&d);
            std::fs::hard_link(tmp, &link).map_err(io_error)?;
            let put = area.put(&d, &link);
            let _ = std::fs::remove_file(&link);
            put?;
        }
        self.settle(received)?;
        Ok(true)
    }

    /// Hard links of the waiting uploads among `digests` in the vault's temporary directory,
    /// for a commit to move in (the uploads themselves stay until reaped).
    pub fn link_for_commit(
        &self,
        vault: &Vault,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, PathBuf)>, ApiError> {
        let mut out = Vec::new();
        for d in digests {
            let src = match self.upload(d) {
                Some(p) => p,
                None if self.shared.is_some() && !vault.has_blob(d)? => {
                    let Some(p) = self.upload_here(d)? else { continue };
                    p
                }
                None => continue,
            };
            let dest = vault.staging_path("commit-");
            match std::fs::hard_link(&src, &dest) {
                Ok(()) => out.push((*d, dest)),
                // Reaped meanwhile: the commit finds it missing and says so.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(out)
    }

    /// Removes uploads that have been committed (or abandoned) for a while.
    pub fn reap(&self, vault: &Vault) {
        let Ok(dir) = std::fs::read_dir(&self.uploads) else { return };
        let now = SystemTime::now();
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| n.split_once('-'))
                .and_then(|(a, h)| parse_digest(&format!("{a}:{h}")).ok())
            else {
                continue;
            };
            let age = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            let committed = age > COMMITTED_UPLOAD_AGE && vault.has_blob(&d).unwrap_or(false);
            if committed || age > ABANDONED_UPLOAD_AGE {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let Some(area) = &self.shared else { return };
        let reaped = area.visit(&mut |d, written| {
            let age = written.and_then(|w| now.duration_since(w).ok()).unwrap_or_default();
            let committed = age > COMMITTED_UPLOAD_AGE && vault.has_blob(&d).unwrap_or(false);
            if committed || age > ABANDONED_UPLOAD_AGE {
                area.remove(&d)?;
            }
            Ok(())
        });
        if let Err(e) = reaped {
            tracing::warn!("reaping the replicas' shared uploads: {e}");
        }
    }
}

pub fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        return ApiError::InsufficientStorage("the server's disk is full".into());
    }
    tracing::error!("upload: {e}");
    ApiError::Internal(format!("storing the upload: {e}"))
}

/// An upload being received: written and hashed chunk by chunk.
#[derive(Debug)]
pub struct Receiver {
    hasher: taskvault::digest::Hasher,
    digest: Digest,
    out: std::io::BufWriter<std::fs::File>,
    path: Option<PathBuf>,
    len: u64,
    max: u64,
}

/// A fully received upload that matched its digest, synced to disk.
#[derive(Debug)]
pub struct Received {
    digest: Digest,
    path: Option<PathBuf>,
    pub len: u64,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Receiver {
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.len += chunk.len() as u64;
        if self.len > self.max {
            return Err(ApiError::TooLarge(format!(
                "the upload is larger than the {} bytes this server accepts",
                self.max
            )));
        }
        self.hasher.update(chunk);
        self.out.write_all(chunk).map_err(io_error)
    }

    /// Checks the whole body against the digest (and the size the client announced), and
    /// syncs it.
    pub fn finish(mut self, expected_len: Option<u64>) -> Result<Received, ApiError> {
        let got = std::mem::replace(&mut self.hasher, self.digest.algorithm().hasher()).finish();
        if let Some(n) = expected_len.filter(|n| *n != self.len) {
            return Err(ApiError::BadRequest(format!(
                "the body is {} bytes, the request announced {n}",
                self.len
            )));
        }
        if got != self.digest {
            return Err(ApiError::BadRequest(format!(
                "the body hashes to {got}, not {}: refused, nothing stored",
                self.digest
            )));
        }
        self.out.flush().map_err(io_error)?;
        self.out.get_ref().sync_all().map_err(io_error)?;
        Ok(Received { digest: self.digest, path: self.path.take(), len: self.len })
    }
}
