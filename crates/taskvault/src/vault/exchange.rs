//! Entries and blobs crossing between vaults: what a server answers for a key, streams of
//! verified blob bytes, and admitting an entry that was made elsewhere (a server receiving a
//! client's save, a client storing a remote hit). The engine knows nothing of the transport;
//! `taskvault-server` and `taskvault-remote` carry these over HTTP.

use std::io::Read;
use std::path::PathBuf;

use super::Vault;
use super::restore::Sink;
use crate::audit::{Event, Record};
use crate::clock::now_ms;
use crate::digest::{Digest, Hasher};
use crate::entry::{BlobInfo, Codec, Entry, Status};
use crate::error::{Error, IoContext, Result};
use crate::key::TaskKey;
use std::sync::Arc;

use crate::store::{BlobReader, LeaseAsked, LeaseEnded, LeaseEvent};

/// A live entry as a server hands it out, with the verified bytes of its blobs of at most the
/// size asked for (so that a small result costs one round trip).
#[derive(Debug)]
pub struct Exported {
    pub entry: Entry,
    pub small: Vec<(Digest, Vec<u8>)>,
}

/// A blob handed to [`Vault::admit`]: a file in this vault's temporary directory, or bytes in
/// memory (a small blob that came with its entry).
#[derive(Debug, Clone)]
pub enum Arrived<'a> {
    File(PathBuf),
    Bytes(&'a [u8]),
}

/// What [`Vault::admit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The entry is now the live run of its key.
    Committed,
    /// The same run was already live (a retried commit).
    AlreadyLive,
}

/// The bytes of one stored blob, decoded and hashed as they are read. The read that reaches the
/// end fails (`InvalidData`) unless the bytes match the blob's digest and size, so a consumer
/// that reads to the end never takes a corrupt blob for a sound one; [`BlobStream::failure`]
/// then says why (report it with [`Vault::blob_failed`]).
pub struct BlobStream {
    inner: Box<dyn Read + Send>,
    hasher: Option<Hasher>,
    digest: Digest,
    size: u64,
    read: u64,
    failure: Option<String>,
}

impl std::fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStream")
            .field("digest", &self.digest)
            .field("read", &self.read)
            .finish()
    }
}

impl BlobStream {
    /// A stream over raw bytes kept outside the vault (a server's verified upload waiting for
    /// its entry), verified the same way.
    pub fn from_file(file: std::fs::File, digest: Digest) -> std::io::Result<BlobStream> {
        let size = file.metadata()?.len();
        Ok(BlobStream {
            inner: Box::new(file),
            hasher: Some(digest.algorithm().hasher()),
            digest,
            size,
            read: 0,
            failure: None,
        })
    }

    /// The blob's size (what a reader to the end receives).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Why the blob failed verification, once it has.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Reads and hashes the first `n` bytes without handing them out (a resumed download still
    /// verifies the whole blob).
    pub fn skip(&mut self, n: u64) -> std::io::Result<()> {
        let mut left = n.min(self.size);
        let mut buf = vec![0u8; 256 << 10];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let got = self.read(&mut buf[..want])?;
            if got == 0 {
                break;
            }
            left -= got as u64;
        }
        Ok(())
    }

    fn fail(&mut self, why: String) -> std::io::Error {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("blob {}: {why}", self.digest),
        );
        self.failure = Some(why);
        e
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(why) = &self.failure {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why.clone()));
        }
        let Some(hasher) = self.hasher.as_mut() else { return Ok(0) };
        if buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.fail(format!("reading: {e}"))),
            }
        };
        if n == 0 {
            let got = self.hasher.take().expect("checked above").finish();
            if self.read != self.size {
                return Err(
                    self.fail(format!("yields {} bytes, expected {}", self.read, self.size))
                );
            }
            if got != self.digest {
                return Err(self.fail(format!("content hashes to {got}")));
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.size {
            return Err(self.fail(format!("holds more than the {} bytes recorded", self.size)));
        }
        hasher.update(&buf[..n]);
        Ok(n)
    }
}

impl Vault {
    /// The live, unexpired run of the key whose digest is `key_hex`, for a server answering a
    /// client that computed the key itself. A run whose recorded ingredients make another key is
    /// damaged and never served; one saved before runs recorded them is not served either. Counts a hit (or a miss, of `task` when the caller knows it)
    /// as [`Vault::lookup`] does. Blobs of at most `small_max` bytes (up to `small_total` in
    /// all) come with it, verified; a blob that fails makes the lookup a miss.
    pub fn export_entry(
        &self,
        key_hex: &str,
        task: &str,
        small_max: u64,
        small_total: u64,
        op: &str,
    ) -> Result<Option<Exported>> {
        let limits = (small_max, small_total);
        let stored = match self.meta.lookup(key_hex) {
            Err(Error::DamagedRow { run, message }) => {
                self.drop_damaged_run(&run, key_hex, task, &message, op)?;
                None
            }
            other => other?,
        };
        let Some(e) = stored else {
            self.miss_hex(key_hex, task, op)?;
            return Ok(None);
        };
        // Only a run whose recorded ingredients make exactly this key is served; one saved
        // before runs recorded them cannot be checked here, and is not served remotely.
        let key = match key_of(&e) {
            Some(k) if k.digest().hex() == key_hex => k,
            Some(_) => {
                let why = format!("its ingredients do not make key {key_hex}");
                self.drop_damaged_run(&e.id, key_hex, &e.task, &why, op)?;
                self.miss_hex(key_hex, task, op)?;
                return Ok(None);
            }
            None => {
                self.miss_hex(key_hex, task, op)?;
                return Ok(None);
            }
        };
        if self.expired(&e, now_ms()) {
            // The local path removes it and counts the miss.
            return Ok(self.lookup(&key, op)?.map(|e| Exported { entry: e, small: Vec::new() }));
        }
        self.export_checked(e, limits, op, &key)
    }

    fn export_checked(
        &self,
        e: Entry,
        (small_max, small_total): (u64, u64),
        op: &str,
        key: &TaskKey,
    ) -> Result<Option<Exported>> {
        let mut small = Vec::new();
        let mut total = 0u64;
        let nodes = e.outputs.iter().chain(&e.console);
        for node in nodes.filter(|n| n.size <= small_max) {
            let Some(d) = node.digest else { continue };
            if small.iter().any(|(have, _)| *have == d) {
                continue;
            }
            total += node.size;
            if total > small_total {
                break;
            }
            let mut buf = Vec::with_capacity(node.size as usize);
            let known = e.embedded_blob(&d).cloned();
            if let Err(why) = self.read_blob(&d, known, node.size, &mut Sink::Buf(&mut buf))? {
                self.corrupt(&d, &why, op)?;
                self.miss(key, op)?;
                return Ok(None);
            }
            small.push((d, buf));
        }
        self.hit(&e, op)?;
        Ok(Some(Exported { entry: e, small }))
    }

    fn miss_hex(&self, key_hex: &str, task: &str, op: &str) -> Result<()> {
        let audit =
            Record { event: Event::Miss, op, task, hash: key_hex, size: None, detail: None };
        self.record_access(crate::store::Access::Miss { task: task.to_owned() }, &audit)
    }

    /// The bytes of blob `digest` as a verifying stream, or `None` if the vault holds no such
    /// blob (a tiny output kept in its run's row is not a blob of its own).
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<BlobStream>> {
        let Some(info) = self.meta.blob(digest)? else { return Ok(None) };
        let stream = |inner: Box<dyn Read + Send>| BlobStream {
            inner,
            hasher: Some(digest.algorithm().hasher()),
            digest: *digest,
            size: info.size,
            read: 0,
            failure: None,
        };
        if let Some(data) = &info.inline {
            let plain = match info.codec {
                Codec::Raw => Ok(data.clone()),
                Codec::Zstd => zstd::bulk::decompress(data, info.size as usize),
            };
            return Ok(Some(match plain {
                Ok(plain) => stream(Box::new(std::io::Cursor::new(plain))),
                Err(e) => {
                    let mut s = stream(Box::new(std::io::empty()));
                    s.failure = Some(format!("zstd: {e}"));
                    s
                }
            }));
        }
        let reader: Box<dyn Read + Send> = match self.blobs.open_sized(digest, info.stored_size)? {
            None => return Ok(None),
            Some(BlobReader::Unusable(why)) => {
                let mut s = stream(Box::new(std::io::empty()));
                s.failure = Some(format!("blob file {why}"));
                return Ok(Some(s));
            }
            Some(BlobReader::File(f)) => Box::new(f),
            Some(BlobReader::Stream(s)) => Box::new(s),
        };
        let reader: Box<dyn Read + Send> = match info.codec {
            Codec::Raw => reader,
            Codec::Zstd => Box::new(zstd::stream::Decoder::new(reader).map_err(Error::Io)?),
        };
        Ok(Some(stream(reader)))
    }

    /// Reports a blob that failed verification while it was streamed out: quarantined and its
    /// entries retired (if a second look agrees), as a failed restore would.
    pub fn blob_failed(&self, digest: &Digest, why: &str, op: &str) -> Result<()> {
        self.corrupt(digest, why, op).map(|_| ())
    }

    /// Whether the vault holds blob `digest` with a row of its own (what [`Vault::open_blob`]
    /// can stream).
    pub fn has_blob(&self, digest: &Digest) -> Result<bool> {
        self.meta.has_blob(digest)
    }

    /// Makes `entry`, made in another vault, the live run of its key here. It is checked as an
    /// import is: its key must be the one its recorded ingredients make, its manifest sound, and
    /// every blob it needs either stored here already or given by `staged`. A staged blob is
    /// re-hashed as it is staged (one that does not match is refused), unless it is a file and
    /// `verified`: then the caller has just hashed it to its digest itself, it lies in this
    /// vault's temporary directory ([`Vault::staging_path`]), and a large incompressible one is
    /// moved in as it is. What the other vault said of the run's standing is not trusted: it
    /// becomes live here with fresh counters. Refusals are [`Error::BadInput`] with the reason.
    pub fn admit<'a>(
        &self,
        mut entry: Entry,
        staged: &dyn Fn(&Digest) -> Option<Arrived<'a>>,
        verified: bool,
        op: &str,
    ) -> Result<Admitted> {
        let refuse = |message: String| Error::BadInput { path: "<entry>".into(), message };
        let mut present: Vec<BlobInfo> = Vec::new();
        let mut arrived: Vec<(Digest, Arrived<'a>)> = Vec::new();
        for d in entry.blob_digests() {
            if let Some(info) = self.meta.blob(&d)? {
                present.push(info);
            } else if let Some(a) = staged(&d) {
                arrived.push((d, a));
            }
        }
        let have = |d: &Digest| {
            present.iter().find(|i| i.digest == *d).map(|i| i.size).or_else(|| {
                match &arrived.iter().find(|(f, _)| f == d)?.1 {
                    Arrived::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
                    Arrived::Bytes(b) => Some(b.len() as u64),
                }
            })
        };
        crate::archive::check_entry(&mut entry, &have).map_err(refuse)?;
        entry.last_access_ms = 0;
        entry.embedded = None;
        if let Ok(Some(live)) = self.meta.lookup(&entry.key)
            && live.id == entry.id
        {
            return Ok(Admitted::AlreadyLive);
        }
        let mut staging = super::StagingHandle::new(self);
        for info in present {
            staging.stored(info);
        }
        for (d, a) in &arrived {
            let staged = match a {
                Arrived::File(p) if verified => staging.verified_file(p, *d).map(|_| ()),
                Arrived::File(p) => staging.file_expecting(p, *d).map(|_| ()),
                Arrived::Bytes(b) => staging.bytes_expecting(b, *d),
            };
            staged.map_err(|e| match e {
                Error::Corrupt { message, .. } => refuse(format!("blob {d}: {message}")),
                other => other,
            })?;
        }
        self.commit_deferred_of(&entry.key)?;
        let committed = self.commit(&entry, staging.blobs())?;
        drop(staging);
        entry.parent = committed.superseded;
        entry.status = Status::Live;
        self.audit.record(&Record {
            event: Event::Save,
            op,
            task: &entry.task,
            hash: &entry.key,
            size: Some(entry.size),
            detail: Some(&format!("run {} from {}", entry.id, display_origin(&entry))),
        });
        self.enforce_cap()?;
        Ok(Admitted::Committed)
    }
}

impl Vault {
    /// Records that namespace `ns` has sent blob `d` (see `MetaStore::add_proof`); `false`
    /// when the metadata store keeps no proofs.
    pub fn add_proof(&self, ns: &str, d: &Digest) -> Result<bool> {
        self.meta.add_proof(ns, d)
    }

    /// Whether namespace `ns` has sent blob `d`; `None` when the metadata store keeps no
    /// proofs.
    pub fn has_proof(&self, ns: &str, d: &Digest) -> Result<Option<bool>> {
        self.meta.has_proof(ns, d)
    }

    /// Where a server keeps verified uploads that are not yet blobs of the vault so that every
    /// replica sees them: beside the blobs, when the metadata store is shared (replicas) and
    /// the blob store is too (an object store). `None`: each server keeps its own uploads.
    pub fn upload_area(&self) -> Result<Option<Box<dyn crate::store::BlobStore>>> {
        if !self.meta.shared() {
            return Ok(None);
        }
        self.blobs.sibling("uploads")
    }

    /// Asks the metadata store for the lease of a server claim (see
    /// `MetaStore::lease_ask`); `None` when it keeps no leases.
    pub fn lease_ask(
        &self,
        ns: &str,
        key: &str,
        lease: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseAsked>> {
        self.meta.lease_ask(ns, key, lease, holder, ttl)
    }

    /// Renews a lease of the metadata store (see `MetaStore::lease_renew`).
    pub fn lease_renew(
        &self,
        ns: &str,
        key: &str,
        lease: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<bool>> {
        self.meta.lease_renew(ns, key, lease, ttl)
    }

    /// Ends a lease of the metadata store and tells every replica (see
    /// `MetaStore::lease_end`).
    pub fn lease_end(
        &self,
        ns: &str,
        key: &str,
        lease: Option<&str>,
        how: &LeaseEnded,
    ) -> Result<Option<bool>> {
        self.meta.lease_end(ns, key, lease, how)
    }

    /// Calls `on` with every lease of the metadata store that ends, on any replica; `false`
    /// when it keeps no leases (see `MetaStore::watch_leases`).
    pub fn watch_leases(&self, on: Arc<dyn Fn(LeaseEvent) + Send + Sync>) -> Result<bool> {
        self.meta.watch_leases(on)
    }

    /// The live, unexpired run of `key_hex`, read without counting anything (a server checks
    /// whether a claim is still needed).
    pub fn live_entry(&self, key_hex: &str) -> Result<Option<Entry>> {
        let now = now_ms();
        match self.meta.lookup(key_hex) {
            Ok(e) => Ok(e.filter(|e| !self.expired(e, now))),
            Err(Error::DamagedRow { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Counts a local miss that the remote tier answered (`stats` shows it).
    /// Appended to the access journal like a hit (no database write on the hit path); the
    /// admit that stored the entry was audited already.
    pub fn count_remote_hit(&self) -> Result<()> {
        let a = crate::store::Access::RemoteHit;
        if let Some(res) = &self.resident {
            if let Some(batch) = res.buffer(Some(a), None) {
                self.write_buffered(batch)?;
            }
            return Ok(());
        }
        if self.journal(std::slice::from_ref(&a))? {
            self.fold_accesses()?;
        }
        Ok(())
    }

    /// A fresh path in the vault's temporary directory (on the vault's filesystem, so a file
    /// made there can be moved in), for a transport receiving blobs.
    pub fn staging_path(&self, prefix: &str) -> PathBuf {
        self.tmp_dir().join(super::unique_name(prefix))
    }

    /// The verified bytes of output `node` of run `e`, wherever they are kept (a blob of its
    /// own, or the run's own row); `None` if they failed verification (reported) or are gone.
    pub fn node_bytes_of(&self, e: &Entry, node: &crate::tree::Node) -> Result<Option<Vec<u8>>> {
        let Some(d) = node.digest else { return Ok(Some(Vec::new())) };
        let mut known = e.embedded_blob(&d).cloned();
        if known.is_none() && !self.meta.has_blob(&d)? {
            // A run just saved does not carry its row's small output: read the row.
            known = self.meta.run(&e.id)?.and_then(|r| r.embedded_blob(&d).cloned());
        }
        let mut buf = Vec::with_capacity(node.size as usize);
        match self.read_blob(&d, known, node.size, &mut Sink::Buf(&mut buf))? {
            Ok(()) => Ok(Some(buf)),
            Err(why) => {
                self.corrupt(&d, &why, "read")?;
                Ok(None)
            }
        }
    }
}

/// A file output being written straight to its destination by a transport (a remote hit teed
/// to the vault and the destination at once): a temporary file beside `dest`, checked as a
/// restore checks its destination, renamed into place by [`DestinationFile::finish`] once the
/// caller has verified every byte it wrote; removed if dropped unfinished.
#[derive(Debug)]
pub struct DestinationFile {
    tmp: PathBuf,
    dest: PathBuf,
    existed: bool,
    file: Option<std::fs::File>,
}

impl DestinationFile {
    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("open until finished")
    }

    /// Puts the verified file in place with the output's permission bits (never setuid,
    /// setgid or sticky).
    pub fn finish(mut self, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let file = self.file.take().expect("open until finished");
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777)).at(&self.tmp)?;
        drop(file);
        super::restore::replace(&self.tmp, &self.dest, self.existed)?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for DestinationFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Vault {
    /// A [`DestinationFile`] for a file output to be written at `dest`.
    pub fn destination_file(&self, dest: &std::path::Path) -> Result<DestinationFile> {
        let (tmp, existing) = self.prepare_dest(dest, super::restore::Want::File)?;
        let file = std::fs::File::create(&tmp).at(&tmp)?;
        Ok(DestinationFile {
            tmp,
            dest: dest.to_owned(),
            existed: existing.is_some(),
            file: Some(file),
        })
    }
}

/// The key an entry's recorded ingredients make (`None` for a run saved before they were kept).
fn key_of(e: &Entry) -> Option<TaskKey> {
    let ing = e.ingredients.as_ref()?;
    TaskKey::new(ing.algorithm, &e.namespace, &e.task, e.inputs.clone(), ing.extras.clone()).ok()
}

fn display_origin(e: &Entry) -> String {
    match (e.host.as_str(), e.user.as_str()) {
        ("", _) => "another vault".into(),
        (h, "") => h.to_owned(),
        (h, u) => format!("{u}@{h}"),
    }
}
