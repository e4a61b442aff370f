//! The two storage traits the vault is built on, so that metadata and blob backends can be
//! swapped (SQLite and the local disk here; PostgreSQL, Redis and object stores later).

pub(crate) mod cache;
pub mod local;
pub mod object;
pub(crate) mod packed;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::digest::Digest;
use crate::entry::{BlobInfo, Counters, Entry, Filter};
use crate::error::Result;

/// A blob about to be committed: hashed, optionally compressed, waiting in a staging file or in
/// memory.
#[derive(Debug)]
pub struct StagedBlob {
    pub info: BlobInfo,
    /// The staging file when the blob is not inline.
    pub staged: Option<std::path::PathBuf>,
    /// The staging file's bytes are not yet durable (a duplicate upload, expected to go
    /// unused): whoever moves it in syncs it first.
    pub unsynced: bool,
}

/// A claim held in a metadata store (see [`MetaStore::claim`]); released when dropped.
pub struct StoreClaim(pub Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for StoreClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreClaim")
    }
}

/// What asking for a server claim's shared lease got (see [`MetaStore::lease_ask`]).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAsked {
    /// The lease asked for is now the claim's.
    Granted,
    /// Another lease holds the claim, held by `holder`, for `remaining` unless renewed.
    Held { holder: String, remaining: std::time::Duration },
}

/// How a shared lease ended, as every replica's waiters are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEnded {
    /// The key's entry was committed.
    Ready,
    /// The claimant failed, with this message.
    Failed(String),
    /// Released without a result: the next asker may take it.
    Vacant,
}

/// What [`MetaStore::watch_leases`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// The lease of (namespace, key) ended.
    Ended { ns: String, key: String, how: LeaseEnded },
    /// Ends may have been missed (the connection that listens was lost): every waiter should
    /// ask again.
    Missed,
}

/// A live entry found by [`MetaStore::lookup_many`], with the rows of its blobs.
pub type Found = (Entry, Vec<BlobInfo>);

/// What a commit of a save changed.
#[derive(Debug, Default)]
pub struct Committed {
    /// The live run that was replaced and kept as history.
    pub superseded: Option<String>,
    /// Blob files whose rows were dropped; the caller unlinks them after the commit.
    pub unreferenced: Vec<Digest>,
}

/// What a removal changed.
#[derive(Debug, Default)]
pub struct Removed {
    /// Live entries that were removed or retired.
    pub entries: Vec<Entry>,
    /// Blob files whose rows were dropped; the caller unlinks them after the commit.
    pub unreferenced: Vec<Digest>,
}

/// Which live entries [`MetaStore::stale_keys`] selects.
#[derive(Debug, Clone)]
pub enum Stale {
    /// Not used since this instant.
    AccessedBefore(i64),
    /// Saved before this instant without an explicit TTL, in `task` (or, with `None`, in any
    /// task not in `except`): a policy TTL that has run out.
    CreatedBefore { before_ms: i64, task: Option<String>, except: Vec<String> },
}

/// Rows of the metadata store that cannot be read back.
#[derive(Debug, Default)]
pub struct Damaged {
    /// (run id, key, whether it is the key's live run, why) of entry rows.
    pub entries: Vec<(String, String, bool, String)>,
    /// (digest as stored, why) of blob rows.
    pub blobs: Vec<(String, String)>,
}

/// One served lookup, as recorded in the access journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Hit {
        id: String,
        at_ms: i64,
        duration_ms: Option<i64>,
    },
    /// A lookup of `task` that found nothing (`""` in journals written before tasks were).
    Miss {
        task: String,
    },
    /// A local miss that the remote tier answered (counted as `remote_hits`).
    RemoteHit,
}

/// Reading a stored blob: a local file (which allows in-kernel copies) or any stream.
#[derive(Debug)]
pub enum BlobReader {
    File(File),
    Stream(Box<dyn ReadDebug>),
    /// Something is stored under the digest that cannot be a blob (a FIFO, a device, a link):
    /// why. It is never read, and is treated as corrupt.
    Unusable(String),
}

pub trait ReadDebug: Read + Send + std::fmt::Debug {}
impl<T: Read + Send + std::fmt::Debug> ReadDebug for T {}

/// The blob store of the vault at `vault_dir`: the object store at `url`, or (`None`) files
/// under the vault directory.
pub fn blob_store(vault_dir: &Path, url: Option<&str>) -> Result<Box<dyn BlobStore>> {
    Ok(match url {
        Some(url) if redis::is_redis_url(url) => Box::new(redis::RedisBlobs::open(url)?),
        Some(url) => Box::new(object::ObjectBlobs::open(url)?),
        None => {
            Box::new(local::LocalBlobs::new(vault_dir.join("blobs"), vault_dir.join("quarantine")))
        }
    })
}

/// The blob store of a vault, as [`blob_store`], with an object store's blobs also kept on the
/// local disk up to `cache_bytes` (see `store::cache`).
pub fn blob_store_cached(
    vault_dir: &Path,
    url: Option<&str>,
    cache_bytes: u64,
) -> Result<Box<dyn BlobStore>> {
    match url {
        Some(url) if object::is_object_url(url) && cache_bytes > 0 => Ok(Box::new(
            object::ObjectBlobs::open(url)?
                .with_cache(cache::BlobCache::new(vault_dir.join("blob-cache"), cache_bytes)),
        )),
        _ => blob_store(vault_dir, url),
    }
}

/// Content-addressed storage of blob bytes (as stored: raw or compressed).
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Moves a staged file in under `digest`, atomically and durably. Called while the metadata
    /// store holds its write lock, so it never races with `remove` of the same digest.
    fn put(&self, digest: &Digest, staged: &Path) -> Result<()>;
    /// Opens a blob, or `None` if it is missing.
    fn open(&self, digest: &Digest) -> Result<Option<BlobReader>>;
    /// Whether a blob is stored under `digest` (without reading it).
    fn contains(&self, digest: &Digest) -> Result<bool> {
        Ok(self.open(digest)?.is_some())
    }
    /// [`BlobStore::open`] when the metadata says how many bytes are stored: a store that
    /// would otherwise ask (an object store) saves that request. A blob of another length is
    /// `Unusable`, or fails as it is read.
    fn open_sized(&self, digest: &Digest, _stored_size: u64) -> Result<Option<BlobReader>> {
        self.open(digest)
    }
    /// Whether `put` is slow (an upload over the network): then the vault puts new blobs
    /// before its metadata transaction (under the shared blob lock, so no removal races with
    /// them) rather than inside it, where every other writer would wait on the upload.
    fn puts_before_commit(&self) -> bool {
        false
    }
    /// A store of the same kind beside this one, under `name` (`uploads`), that every machine
    /// using this one sees, for bytes that are not yet blobs of the vault. `None`: this store is
    /// on one machine's disk.
    fn sibling(&self, _name: &str) -> Result<Option<Box<dyn BlobStore>>> {
        Ok(None)
    }
    /// Drops any copy of `digest` kept on this machine, so that the next read asks the store
    /// itself (a copy failed verification).
    fn forget_local(&self, _digest: &Digest) {}
    /// Deletes a blob; a missing blob is not an error.
    fn remove(&self, digest: &Digest) -> Result<()>;
    /// Moves a blob that failed verification out of the way (kept for inspection where possible).
    fn quarantine(&self, digest: &Digest) -> Result<()>;
    /// Makes `dest` a hard link to the stored bytes of a raw blob. `false` when this store or
    /// this filesystem cannot (the caller copies instead).
    fn link(&self, digest: &Digest, dest: &Path) -> Result<bool>;
    /// Calls `f` with every blob present and when it was written (if the store knows), as the
    /// store lists them: memory stays bounded however many there are. `f` may remove the blob
    /// it is given.
    fn visit(
        &self,
        f: &mut dyn FnMut(Digest, Option<std::time::SystemTime>) -> Result<()>,
    ) -> Result<()>;
    /// Every blob present (a whole listing in memory: for small stores and tests).
    fn list(&self) -> Result<Vec<(Digest, Option<std::time::SystemTime>)>> {
        let mut out = Vec::new();
        self.visit(&mut |d, t| {
            out.push((d, t));
            Ok(())
        })?;
        Ok(out)
    }
}

/// Metadata: entries, blob rows, the references of live entries to blobs, counters and claim
/// failures. Every method is one transaction. A new blob file is placed by the `place` callback
/// inside the save's transaction; files of dropped blob rows are returned, never deleted here,
/// so that a crash can only leave an orphan file, never a row without its file.
pub trait MetaStore: Send + Sync + std::fmt::Debug {
    /// The store will serve a long-lived process: it may move maintenance (checkpoints) off
    /// the writers' path.
    fn long_lived(&self) -> Result<()> {
        Ok(())
    }
    /// Whether processes on other machines change this store (a database server): then what a
    /// process keeps of it on its own disk (hot records) would go stale, and is not kept.
    fn shared(&self) -> bool {
        false
    }
    /// For a store other machines change: calls `changed` after every commit, by any process,
    /// that removed or replaced a live run (and whenever such a commit may have been missed),
    /// for as long as the store lives. Returns a flag that says whether changes are being
    /// watched right now; `None`: this store is not shared, nothing to watch.
    fn watch_changes(
        &self,
        _changed: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>> {
        Ok(None)
    }
    /// Records that namespace `ns` has sent the bytes of blob `digest` (a server's proof that a
    /// namespace may read a blob), where every replica sees it. `false`: this store keeps no
    /// proofs, and the server keeps them in its own directory.
    fn add_proof(&self, _ns: &str, _digest: &Digest) -> Result<bool> {
        Ok(false)
    }
    /// Whether namespace `ns` has sent blob `digest`; `None`: this store keeps no proofs.
    fn has_proof(&self, _ns: &str, _digest: &Digest) -> Result<Option<bool>> {
        Ok(None)
    }
    /// Takes the vault's blob lock (shared by savers from placing a blob to their commit,
    /// exclusive while a removal commits and unlinks files) for every process that uses this
    /// store; `None`: the store has none, and the lock file in the vault directory serves (every
    /// user is on one machine).
    fn blob_lock(&self, _exclusive: bool) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        Ok(None)
    }
    /// Claims `key` for every process that uses this store (see [`crate::Vault::claim`]):
    /// blocks while another claimant holds it; the held claim and whether it waited. `None`:
    /// the store has no claims of its own, and the claims files in the vault directory serve.
    fn claim(&self, _key: &str) -> Result<Option<(StoreClaim, bool)>> {
        Ok(None)
    }
    /// Takes the lease of a server's claim of `key` in `ns` (see the server's claims) for
    /// `ttl`, unless an unexpired lease holds it, where every replica of the server sees it.
    /// `None`: this store keeps no leases, and the server keeps them in its memory.
    fn lease_ask(
        &self,
        _ns: &str,
        _key: &str,
        _lease: &str,
        _holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<LeaseAsked>> {
        Ok(None)
    }
    /// Extends `lease` by `ttl` from now; `Some(false)` if it is no longer the claim's.
    fn lease_renew(
        &self,
        _ns: &str,
        _key: &str,
        _lease: &str,
        _ttl: std::time::Duration,
    ) -> Result<Option<bool>> {
        Ok(None)
    }
    /// Ends the claim's lease (`lease`, or whichever holds it with `None`) and tells every
    /// replica `how`; `Some(false)` if there was no such lease.
    fn lease_end(
        &self,
        _ns: &str,
        _key: &str,
        _lease: Option<&str>,
        _how: &LeaseEnded,
    ) -> Result<Option<bool>> {
        Ok(None)
    }
    /// Calls `on` with every lease that ends, on any replica, for as long as the store lives;
    /// `false`: this store keeps no leases.
    fn watch_leases(&self, _on: std::sync::Arc<dyn Fn(LeaseEvent) + Send + Sync>) -> Result<bool> {
        Ok(false)
    }
    /// Appends audit records to the trail the store keeps for every machine that shares it,
    /// keeping at most `keep` (the oldest go). A store only one machine uses keeps none (its
    /// vault's `audit.log` is the trail).
    fn audit_append(&self, _rows: &[crate::audit::AuditRow], _keep: u64) -> Result<()> {
        Ok(())
    }
    /// The newest records of the store's audit trail that `q` matches, newest first; `None`:
    /// the store keeps no trail.
    fn audit_rows(
        &self,
        _q: &crate::audit::AuditQuery,
    ) -> Result<Option<Vec<crate::audit::AuditRow>>> {
        Ok(None)
    }
    /// The live entry of a key, if any (expiry is the caller's business).
    fn lookup(&self, key: &str) -> Result<Option<Entry>>;
    /// The live entries of `keys`, in order, each with the rows of its blobs, read together:
    /// a batch of lookups pays for one transaction. A damaged row reads as `None` here (a
    /// lookup of its key alone reports it).
    fn lookup_many(&self, keys: &[String]) -> Result<Vec<Option<Found>>> {
        keys.iter()
            .map(|k| {
                let e = match self.lookup(k) {
                    Ok(Some(e)) => e,
                    Ok(None) | Err(crate::error::Error::DamagedRow { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let rows = e
                    .blob_digests()
                    .iter()
                    .filter_map(|d| self.blob(d).transpose())
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some((e, rows)))
            })
            .collect()
    }
    /// Blob rows for a digest.
    fn blob(&self, digest: &Digest) -> Result<Option<BlobInfo>>;
    /// Records a new run as the live entry of its key (the old one becomes its parent), adding
    /// blob rows for blobs not yet known (calling `place` for each that has a staging file).
    fn commit_save(
        &self,
        entry: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Committed>;
    /// Several saves in one transaction, in order (as if by `commit_save` one after another).
    fn commit_saves(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Vec<Committed>> {
        saves.iter().map(|(e, b)| self.commit_save(e, b, place)).collect()
    }
    /// Applies a batch of recorded hits (access time, access count, hits, time saved) and misses.
    fn apply_accesses(&self, accesses: &[Access]) -> Result<()>;
    /// Removes entries (all runs of their keys), dropping blobs nobody references any more.
    /// `count_as` names a counter to bump per live entry removed.
    fn remove_keys(&self, keys: &[String], count_as: Option<&str>) -> Result<Removed>;
    /// Removes exactly the run `id`: a live run takes its key's entry (and the references to
    /// its blobs) with it, a history or failed run only its row. Runs naming it as their
    /// parent then have none. `Removed::entries` holds the run if it was live.
    fn remove_run(&self, id: &str) -> Result<Removed>;
    /// Per-task entries, bytes, hits, misses and time saved, by task name.
    fn task_stats(&self) -> Result<Vec<crate::entry::TaskStats>>;
    /// Zeroes the hit, miss, save, eviction, expiry, corruption and time-saved counters
    /// (global and per task); stored bytes are state, not a counter, and stay.
    fn reset_counters(&self) -> Result<()>;
    /// Counts of runs and blobs.
    fn census(&self) -> Result<crate::entry::Census>;
    /// Marks every live entry that uses `digest` as corrupt and forgets the blob.
    fn forget_corrupt_blob(&self, digest: &Digest) -> Result<Removed>;
    /// Entries matching a filter, newest first.
    fn list(&self, filter: &Filter) -> Result<Vec<Entry>>;
    /// Runs whose id or key starts with `prefix`: (run ids matched, keys matched).
    fn resolve_prefix(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)>;
    /// One run by id, live or not.
    fn run(&self, id: &str) -> Result<Option<Entry>>;
    /// All runs of a key, oldest first.
    fn history(&self, key: &str) -> Result<Vec<Entry>>;
    /// Evicts live entries (all runs of their keys): with a target, expired entries first and
    /// then least recently used ones until stored bytes are at most `target_bytes`; without one,
    /// every expired entry; at most `limit` entries per call (call again while it returns
    /// `limit`). Returns the live entries removed.
    fn evict(&self, now_ms: i64, target_bytes: Option<u64>, limit: usize) -> Result<Removed>;
    fn counters(&self) -> Result<Counters>;
    fn live_entries(&self) -> Result<i64>;
    /// Every blob row that can be read (for verification); by default a walk of
    /// [`MetaStore::blobs_after`].
    fn blobs(&self) -> Result<Vec<BlobInfo>> {
        let mut out: Vec<BlobInfo> = Vec::new();
        loop {
            let after = out.last().map(|b| b.digest.to_string());
            let page = self.blobs_after(after.as_deref(), 1024)?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }
    /// Up to `limit` sound blob rows whose digests sort after `after`, in digest order: a walk
    /// over every blob in bounded memory.
    fn blobs_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>>;
    /// Up to `limit` keys with a live entry stored after position `after` (0: from the start),
    /// each with its position, in the order they are stored: a walk over every live entry in
    /// bounded memory (with [`MetaStore::lookup_many`]).
    fn live_keys_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>>;
    /// Whether a blob row exists for `digest`.
    fn has_blob(&self, digest: &Digest) -> Result<bool>;
    /// Up to `limit` keys of live entries to remove as old: last used at or before
    /// `accessed_before_ms`, or (with a task selection and a TTL) saved without an explicit TTL
    /// at or before `created_before_ms`. Each call after a removal finds the next ones.
    fn stale_keys(&self, stale: &Stale, limit: usize) -> Result<Vec<String>>;
    /// Rows that cannot be read back, for `verify`.
    fn damaged(&self) -> Result<Damaged>;
    /// Deletes a run whose row is damaged (dropping its key's references if it was live,
    /// counted as corrupt).
    fn drop_damaged_run(&self, id: &str) -> Result<Removed>;
    /// Deletes a blob row that cannot be read, retiring the live entries that use it.
    fn drop_damaged_blob(&self, digest: &str) -> Result<Removed>;
    /// Removes every entry and blob row; returns how many live entries there were. The blob
    /// files are all orphans afterwards (the caller removes them, a file at a time).
    fn clear(&self) -> Result<u64>;
    /// Records that the computation for `key` failed (for claim waiters).
    fn record_failure(&self, key: &str, message: &str, at_ms: i64) -> Result<()>;
    /// Records the failed run `entry` (status [`Status::Failed`], no outputs) as history of
    /// its key, and its failure for claim waiters, in one transaction. Its `parent` is set to
    /// the key's latest run. The key's live entry, if any, stays live.
    fn record_failed_run(&self, entry: &Entry, message: &str) -> Result<Entry>;
    /// The last recorded failure of `key`: (message, at_ms).
    fn failure(&self, key: &str) -> Result<Option<(String, i64)>>;
}
