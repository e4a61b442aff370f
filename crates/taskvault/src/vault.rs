//! The vault: the engine's public face. Keys in, entries and verified outputs out, with
//! policies, the audit trail and claims applied in one place.

mod admin;
pub mod exchange;
mod lifecycle;
pub mod migrate;
mod resident;
mod restore;
mod stage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use admin::{GcReport, Stats, VerifyReport};
pub use resident::Served;
pub(crate) use restore::{Sink, Verified, Want, check_replaceable, validate_tree};
pub(crate) use stage::Staging as StagingHandle;

use crate::access::AccessJournal;
use crate::audit::{AuditLog, Event, Record};
use crate::claim::{Claim, Destination, DetachedClaim, Fetched};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::digest::Digest;
use crate::entry::{Entry, Status};
use crate::error::{Error, IoContext, Result};
use crate::key::{Input, InputRecord, TaskKey};
use crate::store::sqlite::SqliteMeta;
use crate::store::{BlobStore, MetaStore};
use crate::tree::{Node, NodeKind};

/// What to cache: a path (file or directory), bytes held in memory, or several paths under one
/// root (a wrapped command's declared outputs).
#[derive(Debug, Clone, Copy)]
pub enum Output<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
    /// The entry is a directory manifest holding `parts` (relative to `root`, files, directories
    /// or symlinks) and the directories leading to them; restore them with
    /// [`Vault::restore_part`].
    Tree {
        root: &'a Path,
        parts: &'a [String],
    },
    /// Bytes received into a file of this vault's temporary directory
    /// ([`Vault::staging_path`]) and hashed to `digest` by the caller as they arrived (a
    /// build tool's upload to the server): stored as bytes, and a large incompressible file is
    /// moved in rather than copied. The file is consumed.
    Received {
        path: &'a Path,
        digest: Digest,
    },
}

/// What a new vault's `.gitignore` says: ignore everything here.
const VAULT_GITIGNORE: &str = "# Made by TaskVault: this directory is a cache, not source.\n*\n";

/// A save staged and not yet committed ([`Vault::prepare_save`]).
#[derive(Debug)]
pub struct PreparedSave {
    entry: Entry,
    blobs: Vec<crate::store::StagedBlob>,
    op: String,
}

impl PreparedSave {
    /// The entry it will commit.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for PreparedSave {
    fn drop(&mut self) {
        // Files a commit placed were renamed away; the others are leftovers.
        for b in &self.blobs {
            if let Some(p) = &b.staged {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Options of one save. `Default` is a plain save under the task's policy.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Overrides the policy TTL for this entry (kept to the millisecond, rounded up);
    /// `Some(Duration::ZERO)` means it never expires.
    pub ttl: Option<std::time::Duration>,
    /// How long the work took; each later hit adds it to "time saved".
    pub duration_ms: Option<i64>,
    pub tags: BTreeMap<String, String>,
    /// Front-end provenance stored with the run (command line, code, arguments).
    pub details: serde_json::Value,
    /// A console log to store with the entry (a wrapped command's output).
    pub console: Option<Vec<u8>>,
    /// A wrapped command's exit code.
    pub exit_code: Option<i32>,
    /// Extra key ingredients shown by `show` (label, printable value).
    pub extras_display: Vec<(String, String)>,
    /// How the audit trail names this save (`save` when `None`; the server names the token).
    pub audit_op: Option<String>,
}

/// Called with the number of bytes processed so far while large files are hashed or copied.
pub type Progress = dyn Fn(u64) + Send + Sync;

/// Called with (items done, items in all) while a command walks every blob (`verify`).
pub type ItemProgress = dyn Fn(u64, u64) + Send + Sync;

/// A local vault: SQLite metadata and blobs on disk, under one directory.
pub struct Vault {
    settings: Settings,
    meta: Arc<dyn MetaStore>,
    blobs: Box<dyn BlobStore>,
    audit: AuditLog,
    accesses: AccessJournal,
    hot: crate::hot::HotRecords,
    /// Blob rows of the hot record being served, so that restoring it needs no database.
    overlay: std::sync::Mutex<std::collections::HashMap<Digest, crate::entry::BlobInfo>>,
    /// Opened on first use (only wrapped commands hash inputs through it).
    stat_cache: std::sync::OnceLock<crate::statcache::StatCache>,
    tmp: PathBuf,
    locks: PathBuf,
    /// Set once `tmp` and `locks` are known to exist (see `ensure_dir`).
    tmp_ready: std::sync::OnceLock<()>,
    locks_ready: std::sync::OnceLock<()>,
    progress: Option<Box<Progress>>,
    item_progress: Option<Box<ItemProgress>>,
    /// Set by [`Vault::resident`].
    resident: Option<resident::Resident>,
    /// The generation counter, mapped on first use by a vault that is not resident.
    generation: std::sync::OnceLock<crate::generation::Generation>,
    /// Descriptions of the claims file that hold no lock, for the next claims.
    claim_files: Arc<crate::claim::ClaimFiles>,
    /// For a long-lived process on a shared metadata store: the thread that folds the access
    /// journal into the store every second.
    folder: Option<crate::access::Folder>,
    /// The vault directory with symlinks resolved, found on the first restore (destinations
    /// must not be the vault's own files).
    canonical_dir: std::sync::OnceLock<Option<PathBuf>>,
}

impl Drop for Vault {
    fn drop(&mut self) {
        // Its last fold, before the rest is written.
        drop(self.folder.take());
        if let Err(e) = self.commit_deferred() {
            tracing::warn!("committing deferred saves: {e}");
        }
        if let Err(e) = self.flush() {
            tracing::warn!("writing buffered hits: {e}");
        }
        self.audit.flush();
    }
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("dir", &self.settings.vault_dir).finish_non_exhaustive()
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name for a temporary file that no other thread or process will pick.
/// Makes `dir` again if it is missing (a vault copied without its empty directories); where it
/// cannot be made (a read-only vault), what needs it reports the error.
fn ensure_dir(dir: &Path) {
    if !dir.is_dir() {
        let _ = std::fs::create_dir_all(dir);
    }
}

pub(crate) fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}-{}-{nanos}", crate::fork::pid(), SEQ.fetch_add(1, Ordering::Relaxed))
}

impl Vault {
    /// Opens (creating if needed) the vault at `settings.vault_dir`.
    /// Whether `dir` holds a vault (its database); a command that only reads checks this
    /// first, so that it never makes one.
    pub fn exists(dir: &Path) -> bool {
        dir.join("cache.db").is_file()
    }

    pub fn open(settings: Settings) -> Result<Vault> {
        let dir = &settings.vault_dir;
        let tmp = dir.join("tmp");
        let locks = dir.join("locks");
        // The directories are created with the database. A vault copied without its empty
        // directories (git keeps none) gets them back on first use (`tmp_dir`, `claims_dir`).
        if !Vault::exists(dir) {
            for d in [dir, &tmp, &locks] {
                std::fs::create_dir_all(d).at(d)?;
            }
            // A vault inside a repository is never committed by `git add .`.
            let ignore = dir.join(".gitignore");
            if !ignore.exists() {
                let tmp = tmp.join(unique_name("gitignore-"));
                std::fs::write(&tmp, VAULT_GITIGNORE).at(&tmp)?;
                std::fs::rename(&tmp, &ignore).at(&ignore)?;
            }
        }
        let redis =
            settings.metadata_url.as_deref().filter(|u| crate::store::redis::is_redis_url(u));
        let meta: Arc<dyn crate::store::MetaStore> = match &settings.metadata_url {
            Some(url) if redis.is_some() => Arc::new(crate::store::redis::RedisMeta::open(url)?),
            Some(url) => {
                let password = settings.metadata_password.as_ref().map(|p| p.0.as_str());
                Arc::new(crate::store::postgres::PgMeta::open_with_password(url, password)?)
            }
            None => Arc::new(SqliteMeta::open(&dir.join("cache.db"))?),
        };
        // With Redis metadata the blob bytes are values of the same Redis, where its scripts
        // drop them with their rows.
        let blobs_url = match (redis, settings.blobs_url.as_deref()) {
            (Some(r), None) => Some(r),
            (Some(r), Some(b)) if b != r => {
                return Err(Error::Meta {
                    store: crate::store::redis::shown(r),
                    message: "the blobs live in the same Redis: give no other blob store".into(),
                });
            }
            (_, b) => b,
        };
        let blobs = crate::store::blob_store_cached(dir, blobs_url, settings.blob_cache_bytes)?;
        let mut audit =
            AuditLog::new(dir.join("audit.log"), settings.audit_format, settings.audit_max_bytes);
        if meta.shared() {
            let origin = crate::audit::origin(&settings.host);
            audit = audit.shared_with(Arc::clone(&meta), &origin, settings.audit_max_records);
        }
        let accesses = AccessJournal::new(dir.join("access.log"));
        let hot = if meta.shared() {
            crate::hot::HotRecords::off(dir)
        } else {
            crate::hot::HotRecords::new(dir)
        };
        Ok(Vault {
            settings,
            meta,
            blobs,
            audit,
            accesses,
            hot,
            overlay: Default::default(),
            stat_cache: std::sync::OnceLock::new(),
            tmp,
            locks,
            tmp_ready: std::sync::OnceLock::new(),
            locks_ready: std::sync::OnceLock::new(),
            progress: None,
            item_progress: None,
            resident: None,
            generation: std::sync::OnceLock::new(),
            claim_files: Arc::default(),
            folder: None,
            canonical_dir: std::sync::OnceLock::new(),
        })
    }

    /// Resident mode, for a long-lived process that asks the same vault again and again (see
    /// `vault::resident`): served results are kept in memory while the vault generation says
    /// they are current, hits and misses are counted and audited in batches, hot records are
    /// not used. Call [`Vault::flush`] before the process exits (dropping the vault does).
    pub fn resident(mut self) -> Result<Vault> {
        let path = self.settings.vault_dir.join("generation");
        let g = crate::generation::Generation::open(&path)?;
        self.meta.long_lived()?;
        // Removals and replacements on other machines move this machine's generation on.
        let watching = if self.meta.shared() {
            let mine = crate::generation::Generation::open(&path)?;
            self.meta.watch_changes(Arc::new(move || mine.bump()))?
        } else {
            None
        };
        self.resident = Some(resident::Resident::new(g, watching));
        Ok(self)
    }

    /// For a long-lived process that is not resident (a server, where many clients save and
    /// look up at once): the metadata store checkpoints on a thread of its own instead of in
    /// the committing writer, lookups read on a connection of their own (through a memory map,
    /// never waiting for a writer), and batches of saves get a larger page cache. Hits are
    /// still counted as they happen, and hot records still written.
    pub fn long_lived(mut self) -> Result<Vault> {
        self.meta.long_lived()?;
        if self.meta.shared() {
            let journal = AccessJournal::new(self.settings.vault_dir.join("access.log"));
            let trail = self.audit.shared_trail();
            self.folder =
                Some(crate::access::Folder::start(journal, Arc::clone(&self.meta), trail)?);
        }
        Ok(self)
    }

    pub(crate) fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// Writes the hits, misses and audit lines a resident vault has buffered.
    pub fn flush(&self) -> Result<()> {
        if let Some(r) = &self.resident
            && let Some(batch) = r.drain()
        {
            self.write_buffered(batch)?;
        }
        Ok(())
    }

    /// Records accesses in the local journal (folded into the store later; true when it is due),
    /// or, with a metadata store other machines share, in the store at once (another machine's
    /// `stats` and eviction never read this machine's journal) unless a folder thread folds the
    /// journal within a second.
    pub(crate) fn journal(&self, accesses: &[crate::store::Access]) -> Result<bool> {
        // A long-lived process on a shared store folds its journal every second on a thread of
        // its own (`access::Folder`): hits cost no database write on the request's path.
        if self.meta.shared() && self.folder.is_none() {
            self.meta.apply_accesses(accesses)?;
            return Ok(false);
        }
        self.accesses.record_many(accesses)
    }

    fn write_buffered(
        &self,
        (accesses, audit): (Vec<crate::store::Access>, Vec<crate::audit::AuditRow>),
    ) -> Result<()> {
        self.audit.append_rows(&audit);
        if self.journal(&accesses)? {
            self.accesses.fold(|batch| self.meta.apply_accesses(batch))?;
        }
        Ok(())
    }

    fn generation(&self) -> Result<&crate::generation::Generation> {
        if let Some(r) = &self.resident {
            return Ok(&r.generation);
        }
        if let Some(g) = self.generation.get() {
            return Ok(g);
        }
        let g = crate::generation::Generation::open(&self.settings.vault_dir.join("generation"))?;
        Ok(self.generation.get_or_init(|| g))
    }

    /// Moves the generation on: results kept in memory by resident processes are stale.
    pub(crate) fn bump_generation(&self) -> Result<()> {
        self.generation()?.bump();
        if let Some(r) = &self.resident {
            r.forget_all();
        }
        Ok(())
    }

    /// Audits `r` now, or in the next batch if resident.
    fn audit_record(&self, r: &Record<'_>) {
        match &self.resident {
            Some(res) => {
                let line = self.audit.line(r);
                if let Some(batch) = res.buffer(None, Some(line))
                    && let Err(e) = self.write_buffered(batch)
                {
                    tracing::warn!("access journal: {e}");
                }
            }
            None => self.audit.record(r),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn audit_path(&self) -> &Path {
        self.audit.path()
    }

    /// Reports bytes processed during long hashing and copying.
    pub fn set_progress(&mut self, progress: Box<Progress>) {
        self.progress = Some(progress);
    }

    /// Reports items done while a command walks every blob (`verify`).
    pub fn set_item_progress(&mut self, progress: Box<ItemProgress>) {
        self.item_progress = Some(progress);
    }

    /// Hashes the inputs and builds the key of `task` in this vault's namespace.
    pub fn key(&self, task: &str, inputs: &[Input]) -> Result<TaskKey> {
        self.key_with(task, inputs, Vec::new())
    }

    /// Like [`Vault::key`], with further labelled ingredients.
    pub fn key_with(
        &self,
        task: &str,
        inputs: &[Input],
        extras: Vec<(String, Vec<u8>)>,
    ) -> Result<TaskKey> {
        Vault::key_in(&self.settings, task, inputs, extras)
    }

    /// The key [`Vault::key_with`] builds, from settings alone: a lookup where there is no
    /// vault still knows what it would have looked for.
    pub fn key_in(
        settings: &Settings,
        task: &str,
        inputs: &[Input],
        extras: Vec<(String, Vec<u8>)>,
    ) -> Result<TaskKey> {
        let alg = settings.algorithm;
        let records =
            inputs.iter().map(|i| InputRecord::hash(alg, i)).collect::<Result<Vec<_>>>()?;
        TaskKey::new(alg, &settings.namespace, task, records, extras)
    }

    /// Stores `output` as the result of `key`. The previous entry of the key, if any, becomes
    /// history. Refused with [`Error::TooLarge`] if over the task's `max_size_bytes`.
    pub fn save(&self, key: &TaskKey, output: Output<'_>, opts: &SaveOptions) -> Result<Entry> {
        let saved = match self.save_staged(key, output, opts, true, &mut None) {
            // A stored blob we meant to reuse was evicted meanwhile: store the bytes after all.
            Err(Error::BlobVanished(_)) => self.save_staged(key, output, opts, false, &mut None),
            other => other,
        };
        saved.map(Arc::unwrap_or_clone)
    }

    /// Stages a save ([`Vault::save`]'s checks, its blobs hashed and stored in staging files)
    /// without committing it: [`Vault::commit_prepared`] commits many such saves in one
    /// transaction (a server's concurrent uploads). Dropped uncommitted, its staging files go.
    pub fn prepare_save(
        &self,
        key: &TaskKey,
        output: Output<'_>,
        opts: &SaveOptions,
    ) -> Result<PreparedSave> {
        let (entry, staging) = self.stage_save(key, output, opts, false)?;
        let op = opts.audit_op.clone().unwrap_or_else(|| "save".into());
        Ok(PreparedSave { entry, blobs: staging.into_blobs(), op })
    }

    /// Commits prepared saves in one transaction (in their order: a later save of a key
    /// supersedes an earlier one), then audits each and enforces the cap once. Either all
    /// commit or none does. Returns the entries as committed.
    pub fn commit_prepared(&self, saves: Vec<PreparedSave>) -> Result<Vec<Entry>> {
        if saves.is_empty() {
            return Ok(Vec::new());
        }
        for s in &saves {
            self.commit_deferred_of(&s.entry.key)?;
        }
        let refs: Vec<(&Entry, &[crate::store::StagedBlob])> =
            saves.iter().map(|s| (&s.entry, s.blobs.as_slice())).collect();
        let superseded = self.commit_many(&refs)?;
        let mut entries = Vec::with_capacity(saves.len());
        let mut lines = Vec::new();
        for (s, parent) in saves.iter().zip(superseded) {
            let mut e = s.entry.clone();
            e.parent = parent;
            let r = Record {
                event: Event::Save,
                op: &s.op,
                task: &e.task,
                hash: &e.key,
                size: Some(e.size),
                detail: None,
            };
            match &self.resident {
                Some(_) => self.audit_record(&r),
                None => lines.push(self.audit.line(&r)),
            }
            entries.push(e);
        }
        // One write for the batch's lines.
        self.audit.append_rows(&lines);
        drop(saves);
        self.enforce_cap()?;
        Ok(entries)
    }

    /// Saves `data` as the result of `key`, whose claim is `claim`. In a resident vault a result
    /// small enough to live in the database is staged now and committed with others shortly
    /// after (see `vault::resident`): the entry returned is what will be committed, this
    /// process serves it at once, and the claim is released after the commit. Otherwise this
    /// is [`Vault::save`] followed by releasing the claim.
    pub fn save_deferred(
        &self,
        key: &TaskKey,
        data: &[u8],
        opts: &SaveOptions,
        claim: Option<DetachedClaim>,
    ) -> Result<Arc<Entry>> {
        let mut claim = Some(claim);
        // Not deferred: the claim (still in `claim`) is released when it drops, after the save.
        self.save_staged(key, Output::Bytes(data), opts, false, &mut claim)
    }

    /// Commits every deferred save now (see [`Vault::save_deferred`]).
    pub fn commit_deferred(&self) -> Result<()> {
        let Some(r) = &self.resident else { return Ok(()) };
        let order = r.committing.lock().unwrap_or_else(|p| p.into_inner());
        let batch = r.take_deferred();
        if batch.is_empty() {
            return Ok(());
        }
        self.commit_batch(batch)?;
        // Eviction is a removal, which commits deferred saves first: not under our lock.
        drop(order);
        self.enforce_cap()
    }

    /// Waits up to `max_wait` for deferred saves to fall due, and commits them if they did. A
    /// front end calls this in a loop on a thread of its own.
    ///
    /// Once it does, the hits, misses and audit lines a resident vault buffers are written
    /// here too, when due, instead of by the lookup that found them due.
    pub fn commit_deferred_when_due(&self, max_wait: std::time::Duration) -> Result<()> {
        match &self.resident {
            Some(r) => {
                r.background.store(true, std::sync::atomic::Ordering::Relaxed);
                if !r.wait_due(max_wait) {
                    return Ok(());
                }
                self.commit_deferred()?;
                self.flush()
            }
            None => {
                std::thread::sleep(max_wait);
                Ok(())
            }
        }
    }

    /// Commits the saves of `key` waiting in this process, so that its claim can be taken.
    pub(crate) fn commit_deferred_of(&self, key_hex: &str) -> Result<()> {
        match &self.resident {
            Some(r) if r.is_deferred(key_hex) => self.commit_deferred(),
            _ => Ok(()),
        }
    }

    /// `defer` is `None` for a plain save, or holds the claim to release after a deferred one
    /// (it is taken when the save is deferred).
    fn save_staged(
        &self,
        key: &TaskKey,
        output: Output<'_>,
        opts: &SaveOptions,
        reuse_stored: bool,
        defer: &mut Option<Option<DetachedClaim>>,
    ) -> Result<Arc<Entry>> {
        let (entry, mut staging) = self.stage_save(key, output, opts, reuse_stored)?;
        self.commit_staged(entry, &mut staging, output, opts, defer)
    }

    /// Stages a save's blobs and builds its entry (checked against the policy), committing
    /// nothing.
    fn stage_save(
        &self,
        key: &TaskKey,
        output: Output<'_>,
        opts: &SaveOptions,
        reuse_stored: bool,
    ) -> Result<(Entry, stage::Staging<'_>)> {
        let policy = self.settings.policy_for(&key.namespace, &key.task);
        let (kind, walked) = stage::inspect(output)?;
        let size: u64 = match output {
            Output::Bytes(b) => b.len() as u64,
            Output::Received { path, .. } => std::fs::metadata(path).at(path)?.len(),
            Output::Path(_) | Output::Tree { .. } => walked.iter().map(|w| w.size).sum(),
        };
        if let Some(limit) = policy.max_size_bytes.filter(|l| size > *l) {
            return Err(Error::TooLarge { task: key.task.clone(), size, limit });
        }

        let mut staging = if reuse_stored {
            stage::Staging::reusing_stored(self)
        } else {
            stage::Staging::new(self)
        };
        let mut outputs = Vec::with_capacity(walked.len().max(1));
        match output {
            Output::Bytes(b) => {
                let blob = staging.bytes(b)?;
                outputs.push(file_node(String::new(), 0o644, blob));
            }
            Output::Received { path, digest } => {
                let blob = staging.verified_file(path, digest)?;
                outputs.push(file_node(String::new(), 0o644, blob));
            }
            Output::Path(_) | Output::Tree { .. } => {
                for w in &walked {
                    outputs.push(match w.kind {
                        NodeKind::File => {
                            let blob = staging.file(&w.abs)?;
                            file_node(w.rel.clone(), w.mode, blob)
                        }
                        _ => Node {
                            path: w.rel.clone(),
                            kind: w.kind,
                            mode: w.mode,
                            size: 0,
                            digest: None,
                            target: w.target.clone(),
                        },
                    });
                }
            }
        }
        let console = match &opts.console {
            Some(log) => Some(file_node(String::new(), 0o644, staging.bytes(log)?)),
            None => None,
        };
        // The bytes actually stored can differ from the first look if a file grew meanwhile.
        let size: u64 = outputs.iter().map(|n| n.size).sum();
        if let Some(limit) = policy.max_size_bytes.filter(|l| size > *l) {
            return Err(Error::TooLarge { task: key.task.clone(), size, limit });
        }

        let now = now_ms();
        let ttl_ms = match opts.ttl {
            Some(t) => Some(ttl_to_ms(t)),
            None => policy.ttl_seconds.map(secs_to_ms),
        }
        .filter(|t| *t > 0);
        let entry = Entry {
            id: self.run_id(key, now),
            key: key.digest().hex(),
            namespace: key.namespace.clone(),
            task: key.task.clone(),
            status: Status::Live,
            inputs: key.inputs.clone(),
            extras: opts.extras_display.clone(),
            output_kind: kind,
            outputs,
            size,
            created_ms: now,
            last_access_ms: now,
            access_count: 0,
            expires_ms: ttl_ms.map(|t| now.saturating_add(t)),
            ttl_explicit: opts.ttl.is_some(),
            duration_ms: opts.duration_ms,
            host: self.settings.host.clone(),
            user: self.settings.user.clone(),
            tags: opts.tags.clone(),
            parent: None,
            details: opts.details.clone(),
            console,
            exit_code: opts.exit_code,
            ingredients: Some(crate::entry::Ingredients {
                algorithm: key.algorithm,
                extras: key.extras.clone(),
            }),
            embedded: None,
        };
        Ok((entry, staging))
    }

    fn commit_staged(
        &self,
        mut entry: Entry,
        staging: &mut stage::Staging<'_>,
        output: Output<'_>,
        opts: &SaveOptions,
        defer: &mut Option<Option<DetachedClaim>>,
    ) -> Result<Arc<Entry>> {
        if let (Some(r), Output::Bytes(b), Some(claim)) = (&self.resident, output, defer.as_mut())
            && let Some(blobs) = staging.take_if_inline()
        {
            // Read before the entry can be seen: see `keep_mark`.
            let generation = r.generation.current();
            let entry = Arc::new(entry);
            r.keep(&Served { entry: Arc::clone(&entry), bytes: b.into() }, generation);
            let queued =
                resident::Deferred { entry: Arc::clone(&entry), blobs, _claim: claim.take() };
            *defer = None;
            if r.defer(queued) {
                self.commit_deferred()?;
            }
            return Ok(entry);
        }
        // Saves of one key commit in the order they were made.
        self.commit_deferred_of(&entry.key)?;
        // Read before the commit: see `keep_mark`.
        let kept_at = match (&self.resident, output) {
            (Some(r), Output::Bytes(b)) if b.len() <= resident::MEMO_MAX_BYTES => {
                Some(r.generation.current())
            }
            _ => None,
        };
        let committed = self.commit(&entry, staging.blobs())?;
        entry.parent = committed.superseded;
        let entry = Arc::new(entry);
        if let (Some(r), Some(generation), Output::Bytes(b)) = (&self.resident, kept_at, output)
            && entry.parent.is_none()
        {
            r.keep(&Served { entry: Arc::clone(&entry), bytes: b.into() }, generation);
        }
        self.audit_save(&entry, opts.audit_op.as_deref().unwrap_or("save"));
        self.enforce_cap()?;
        Ok(entry)
    }

    pub(crate) fn audit_save(&self, entry: &Entry, op: &str) {
        self.audit_record(&Record {
            event: Event::Save,
            op,
            task: &entry.task,
            hash: &entry.key,
            size: Some(entry.size),
            detail: None,
        });
    }

    pub(crate) fn run_id(&self, key: &TaskKey, now: i64) -> String {
        let mut seed = key.digest().as_bytes().to_vec();
        seed.extend_from_slice(unique_name("").as_bytes());
        seed.extend_from_slice(&now.to_le_bytes());
        seed.extend_from_slice(self.settings.host.as_bytes());
        blake3::hash(&seed).to_hex().to_string()
    }

    /// Journals a hit or miss (with its audit line); folds the journal when it has grown.
    fn record_access(&self, a: crate::store::Access, audit: &Record<'_>) -> Result<()> {
        if let Some(res) = &self.resident {
            if let Some(batch) = res.buffer(Some(a), Some(self.audit.line(audit))) {
                self.write_buffered(batch)?;
            }
            return Ok(());
        }
        if self.journal(std::slice::from_ref(&a))? {
            self.fold_accesses()?;
        }
        self.audit.record(audit);
        Ok(())
    }

    /// Brings access times, hit counts and counters in the metadata store up to date (and
    /// commits deferred saves, so that what follows sees them).
    pub(crate) fn fold_accesses(&self) -> Result<()> {
        self.commit_deferred()?;
        self.flush()?;
        self.accesses.fold(|batch| self.meta.apply_accesses(batch))
    }

    /// Evicts down to the low-water mark when stored bytes exceed the cap.
    pub(crate) fn enforce_cap(&self) -> Result<()> {
        let Some(cap) = self.settings.max_size_bytes else { return Ok(()) };
        if self.meta.counters()?.stored_bytes as u64 <= cap {
            return Ok(());
        }
        // Eviction order must see the latest access times.
        self.fold_accesses()?;
        let target = cap / 100 * self.settings.low_water_percent as u64
            + cap % 100 * self.settings.low_water_percent as u64 / 100;
        self.evict_in_batches(Event::Evict, "evict", now_ms(), Some(target))?;
        Ok(())
    }

    /// `MetaStore::evict` a batch at a time until it is done, so the entries removed (kept for
    /// the audit trail and the hot records) never fill memory; returns how many went.
    pub(crate) fn evict_in_batches(
        &self,
        event: Event,
        op: &str,
        now: i64,
        target: Option<u64>,
    ) -> Result<u64> {
        const BATCH: usize = 10_000;
        let mut removed = 0;
        // Down to a size: a bar of the bytes to free.
        let start = match target {
            Some(t) => Some((self.meta.counters()?.stored_bytes.max(0) as u64, t)),
            None => None,
        };
        let to_free = start.map_or(0, |(s, t)| s.saturating_sub(t));
        loop {
            let went = self.removed(Some(event), op, |m| m.evict(now, target, BATCH))?.len();
            removed += went as u64;
            if let Some((s, _)) = start
                && to_free > 0
            {
                let now_stored = self.meta.counters()?.stored_bytes.max(0) as u64;
                let freed = s.saturating_sub(now_stored);
                self.report_items(if went == 0 { to_free } else { freed.min(to_free) }, to_free);
            }
            if went == 0 {
                return Ok(removed);
            }
        }
    }

    fn audit_entry(&self, event: Event, op: &str, e: &Entry) {
        self.audit.record(&Record {
            event,
            op,
            task: &e.task,
            hash: &e.key,
            size: Some(e.size),
            detail: None,
        });
    }

    /// Whether an entry may no longer be served: its own expiry, or the task's current TTL
    /// (unless the entry was saved with an explicit TTL).
    fn expired(&self, e: &Entry, now: i64) -> bool {
        if e.is_expired(now) {
            return true;
        }
        if e.ttl_explicit {
            return false;
        }
        self.settings
            .policy_for(&e.namespace, &e.task)
            .ttl_seconds
            .is_some_and(|t| now >= e.created_ms.saturating_add(secs_to_ms(t)))
    }

    /// The live, unexpired entry of a key, without counting a hit or a miss.
    pub fn peek(&self, key: &TaskKey) -> Result<Option<Entry>> {
        let now = now_ms();
        Ok(self.stored_entry(key, "get")?.filter(|e| !self.expired(e, now)))
    }

    /// Looks `key` up, handling expiry: from its hot record when `hot` allows and one is usable
    /// (the flag returned says so), else from the database. Counts a miss if there is nothing.
    fn lookup_for_get(&self, key: &TaskKey, op: &str, hot: bool) -> Result<Option<(Entry, bool)>> {
        self.lookup_for_get_counting(key, op, hot, true)
    }

    /// [`Vault::lookup_for_get`], counting a miss only if `count_miss` (a caller that asks
    /// another tier next counts the miss itself, if that misses too).
    fn lookup_for_get_counting(
        &self,
        key: &TaskKey,
        op: &str,
        hot: bool,
        count_miss: bool,
    ) -> Result<Option<(Entry, bool)>> {
        let miss = |v: &Vault| if count_miss { v.miss(key, op) } else { v.forget_lookup(key) };
        let hex = key.digest().hex();
        let now = now_ms();
        if hot
            && self.resident.is_none()
            && let Some((e, infos)) = self.hot.read(&hex)
            && e.answers(key)
            && !self.expired(&e, now)
        {
            // Only the entry being served: a long-lived vault must not accumulate blob rows.
            let mut overlay = self.overlay.lock().unwrap_or_else(|p| p.into_inner());
            *overlay = infos.into_iter().map(|i| (i.digest, i)).collect();
            return Ok(Some((e, true)));
        }
        self.clear_overlay();
        if self.hot.removal_pending() {
            self.hot.repair()?;
        }
        match self.stored_entry(key, op)? {
            Some(e) if self.expired(&e, now) => {
                let keys = [hex];
                self.removed(Some(Event::Expire), op, |m| m.remove_keys(&keys, Some("expired")))?;
                miss(self)?;
                Ok(None)
            }
            Some(e) => Ok(Some((e, false))),
            None => {
                miss(self)?;
                Ok(None)
            }
        }
    }

    /// The live run of `key` in the metadata store, if it is sound and answers `key` (one that
    /// is not has its row removed, and reads as none).
    fn stored_entry(&self, key: &TaskKey, op: &str) -> Result<Option<Entry>> {
        let hex = key.digest().hex();
        match self.meta.lookup(&hex) {
            Err(Error::DamagedRow { run, message }) => {
                self.drop_damaged_run(&run, &hex, &key.task, &message, op)?;
                Ok(None)
            }
            Ok(Some(e)) if !e.answers(key) => {
                let why = format!("it does not answer key {hex}");
                self.drop_damaged_run(&e.id, &hex, &key.task, &why, op)?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Deletes run `id` of key `key_hex`, whose row is damaged or answers another key: it is
    /// never served; if it was live, its key is a miss until the next save, and it is counted
    /// as corrupt. Audited.
    pub(crate) fn drop_damaged_run(
        &self,
        id: &str,
        key_hex: &str,
        task: &str,
        why: &str,
        op: &str,
    ) -> Result<()> {
        tracing::warn!("run {id}: {why}; its row is removed (a new save of its key restores it)");
        self.removed(None, op, |m| m.drop_damaged_run(id))?;
        self.hot.remove(key_hex)?;
        self.audit.record(&Record {
            event: Event::Corrupt,
            op,
            task,
            hash: key_hex,
            size: None,
            detail: Some(&format!("damaged metadata row of run {id}: {why}")),
        });
        Ok(())
    }

    /// A blob's row: from the hot record being served, else from the database.
    pub(crate) fn blob_info(&self, digest: &Digest) -> Result<Option<crate::entry::BlobInfo>> {
        let hot = self.overlay.lock().unwrap_or_else(|p| p.into_inner()).get(digest).cloned();
        match hot {
            Some(i) => Ok(Some(i)),
            None => self.meta.blob(digest),
        }
    }

    /// Forgets blob rows taken from hot records, so that what follows asks the database.
    pub(crate) fn clear_overlay(&self) {
        self.overlay.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// What a miss leaves behind besides its count: no hot record of the key (a miss after a
    /// lookup may come from a hot record that could not be served; the next lookup asks the
    /// database), no blob rows from one.
    fn forget_lookup(&self, key: &TaskKey) -> Result<()> {
        if self.resident.is_none() {
            self.hot.remove(&key.digest().hex())?;
        }
        self.clear_overlay();
        Ok(())
    }

    fn miss(&self, key: &TaskKey, op: &str) -> Result<()> {
        let hex = key.digest().hex();
        self.forget_lookup(key)?;
        let audit = Record {
            event: Event::Miss,
            op,
            task: &key.task,
            hash: &hex,
            size: None,
            detail: None,
        };
        self.record_access(crate::store::Access::Miss { task: key.task.clone() }, &audit)
    }

    fn hit(&self, e: &Entry, op: &str) -> Result<()> {
        let access = crate::store::Access::Hit {
            id: e.id.clone(),
            at_ms: now_ms(),
            duration_ms: e.duration_ms,
        };
        let audit = Record {
            event: Event::Hit,
            op,
            task: &e.task,
            hash: &e.key,
            size: Some(e.size),
            detail: None,
        };
        self.record_access(access, &audit)
    }

    /// Restores the result of `key` to `dest` (a file path, or a directory path for directory
    /// outputs). `None` is a miss: nothing was written at `dest`.
    pub fn get(&self, key: &TaskKey, dest: &Path) -> Result<Option<Entry>> {
        self.get_counting(key, dest, true)
    }

    /// [`Vault::get`] for a front end with another tier to ask (the remote): a miss here is
    /// not counted (count it with [`Vault::missed`] if the other tier misses too).
    /// Whether a lookup of `key` is likely answered without the database (its hot record
    /// exists). A front end with a slower tier behind the vault (the remote) starts asking
    /// that tier at once when it is not, while the database is opened and read.
    pub fn likely_hot(&self, key: &TaskKey) -> bool {
        self.resident.is_none() && self.hot.exists(&key.digest().hex())
    }

    pub fn get_or_ask_elsewhere(&self, key: &TaskKey, dest: &Path) -> Result<Option<Entry>> {
        self.get_counting(key, dest, false)
    }

    fn get_counting(&self, key: &TaskKey, dest: &Path, count_miss: bool) -> Result<Option<Entry>> {
        let mut hot = true;
        loop {
            let Some((e, from_hot)) = self.lookup_for_get_counting(key, "get", hot, count_miss)?
            else {
                return Ok(None);
            };
            if self.restore(&e, dest)?.is_some() {
                self.hit(&e, "get")?;
                return Ok(Some(e));
            }
            if from_hot {
                // The hot record could not be served: ask the database, which knows.
                self.drop_hot(&e.key)?;
                hot = false;
                continue;
            }
            if count_miss {
                self.miss(key, "get")?;
            } else {
                self.forget_lookup(key)?;
            }
            return Ok(None);
        }
    }

    fn drop_hot(&self, key_hex: &str) -> Result<()> {
        self.hot.remove(key_hex)?;
        self.clear_overlay();
        Ok(())
    }

    /// Looks `key` up for a front end that restores outputs itself (with [`Vault::restore_part`]):
    /// counts a miss if there is nothing to serve. Call [`Vault::served`] once it has been
    /// restored, or [`Vault::missed`] if restoring failed verification.
    pub fn lookup(&self, key: &TaskKey, op: &str) -> Result<Option<Entry>> {
        Ok(self.lookup_for_get(key, op, true)?.map(|(e, _)| e))
    }

    /// Counts a hit on `e` (access time, hit count, time saved) and audits it.
    pub fn served(&self, e: &Entry, op: &str) -> Result<()> {
        self.hit(e, op)
    }

    /// Counts a miss for `key` after a lookup found an entry that could not be served.
    pub fn missed(&self, key: &TaskKey, op: &str) -> Result<()> {
        self.miss(key, op)
    }

    /// The verified console log stored with `e`; `None` if it failed verification (it has been
    /// quarantined and the entry retired) or `e` has none.
    pub fn console(&self, e: &Entry) -> Result<Option<Vec<u8>>> {
        match &e.console {
            Some(node) => self.node_bytes(node),
            None => Ok(Some(Vec::new())),
        }
    }

    /// Content digests and sizes of `files`, in order. Files whose size, mtime, ctime, inode and
    /// device are unchanged since they were last hashed (and were not racily clean then) are not
    /// read again.
    pub fn hash_files(&self, files: &[PathBuf]) -> Result<Vec<(Digest, u64)>> {
        use crate::statcache::{Stamp, StatCache};
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let cache = match self.stat_cache.get() {
            Some(c) => c,
            None => {
                let c = StatCache::open(&self.settings.vault_dir.join("stat.db"))?;
                self.stat_cache.get_or_init(|| c)
            }
        };
        let alg = self.settings.algorithm;
        let mut out = Vec::with_capacity(files.len());
        let mut fresh = Vec::new();
        for f in files {
            let meta = std::fs::metadata(f).at(f)?;
            let stamp = Stamp::of(&meta);
            let key = f.to_string_lossy();
            if let Some(d) = cache.get(&key, alg, &stamp)? {
                out.push((d, meta.len()));
                continue;
            }
            let (d, n) = crate::digest::hash_file(alg, f)?;
            // Record the stamp seen before reading: if the file changed while it was read, the
            // stamp differs next time and the file is hashed again.
            fresh.push((key.into_owned(), stamp, d));
            out.push((d, n));
        }
        cache.put(alg, &fresh)?;
        Ok(out)
    }

    /// The result of `key` as bytes (file and bytes outputs only). `None` is a miss.
    pub fn get_bytes(&self, key: &TaskKey) -> Result<Option<(Entry, Vec<u8>)>> {
        Ok(self.fetch(key)?.map(|s| (Arc::unwrap_or_clone(s.entry), s.bytes.to_vec())))
    }

    /// Like [`Vault::get_bytes`], sharing the answer: a resident vault serves results it has
    /// kept in memory from there (see [`Vault::resident`]).
    pub fn fetch(&self, key: &TaskKey) -> Result<Option<Served>> {
        if let Some(s) = self.recall(key)? {
            return Ok(Some(s));
        }
        self.commit_deferred_of(&key.digest().hex())?;
        let mark = self.keep_mark();
        let Some((e, b)) = self.fetch_stored(key)? else { return Ok(None) };
        Ok(Some(self.kept(e, b, mark)))
    }

    /// The results of `keys` that are there, in order, each counted as a hit; `None` for the
    /// others, which are not counted as misses: the caller goes on to claim them (with
    /// [`Vault::fetch_or_claim`], which counts the miss). Results larger than a resident vault
    /// keeps in memory, directory outputs and expired entries are `None` too, for the same path.
    /// A batch of warm lookups pays one call instead of one per key.
    pub fn fetch_present(&self, keys: &[&TaskKey]) -> Result<Vec<Option<Served>>> {
        let mut out: Vec<Option<Served>> = Vec::with_capacity(keys.len());
        let mut ask = Vec::new();
        for key in keys {
            let kept = self.recall(key)?;
            if kept.is_none() {
                let hex = key.digest().hex();
                self.commit_deferred_of(&hex)?;
                ask.push(hex);
            }
            out.push(kept);
        }
        if ask.is_empty() {
            return Ok(out);
        }
        let mark = self.keep_mark();
        // One snapshot of the store for all of them.
        let mut stored = self.meta.lookup_many(&ask)?.into_iter();
        let now = now_ms();
        for (slot, key) in out.iter_mut().zip(keys) {
            if slot.is_some() {
                continue;
            }
            let Some((e, rows)) = stored.next().flatten() else { continue };
            let servable = e.answers(key)
                && !self.expired(&e, now)
                && e.output_kind != crate::entry::OutputKind::Dir
                && e.outputs.first().is_some_and(|n| n.size <= resident::MEMO_MAX_BYTES as u64);
            if !servable {
                continue;
            }
            // A blob that fails verification is quarantined and its entry retired: `None`.
            let Some(bytes) = self.read_bytes_with(&e, rows)? else { continue };
            self.hit(&e, "get")?;
            *slot = Some(self.kept(e, bytes, mark));
        }
        Ok(out)
    }

    /// [`Vault::fetch`] and [`Vault::claim`] in one: the result of `key` if it is there (kept
    /// in memory, or in the vault once the claim is taken), else the claim to compute it (a
    /// miss is counted), or the failure of the worker waited for.
    ///
    /// A result too large to keep in memory is written into a buffer from `large`, if given
    /// ([`Fetched::Written`]), instead of one of the vault's own.
    pub fn fetch_or_claim(
        &self,
        key: &TaskKey,
        mut large: Option<&mut dyn Destination>,
    ) -> Result<Fetched<'_>> {
        if let Some(s) = self.recall(key)? {
            return Ok(Fetched::Hit(s));
        }
        loop {
            let mark = self.keep_mark();
            match self.claim(key)? {
                Claim::Ready(e) => {
                    let size = e.outputs.first().map_or(0, |n| n.size);
                    if size > resident::MEMO_MAX_BYTES as u64
                        && e.output_kind != crate::entry::OutputKind::Dir
                        && let Some(d) = large.as_deref_mut()
                    {
                        if self.read_bytes_into(&e, d.buffer(size as usize)?)?.is_none() {
                            continue;
                        }
                        self.hit(&e, "get")?;
                        return Ok(Fetched::Written(Arc::new(*e)));
                    }
                    // A blob that fails verification is quarantined and its entry retired:
                    // claim again, to compute it.
                    let Some(bytes) = self.read_bytes(&e)? else { continue };
                    self.hit(&e, "get")?;
                    return Ok(Fetched::Hit(self.kept(*e, bytes, mark)));
                }
                Claim::Compute(g) => {
                    self.miss(key, "get")?;
                    return Ok(Fetched::Compute(g));
                }
                Claim::Failed(m) => return Ok(Fetched::Failed(m)),
            }
        }
    }

    /// The result of `key` kept in memory by a resident vault, if it is still current (counted
    /// as a hit).
    fn recall(&self, key: &TaskKey) -> Result<Option<Served>> {
        let Some(r) = &self.resident else { return Ok(None) };
        let hex = key.digest().hex();
        let Some(s) = r.recall(&hex, r.generation.current()) else { return Ok(None) };
        if self.expired(&s.entry, now_ms()) {
            r.forget(&hex);
            return Ok(None);
        }
        self.hit(&s.entry, "get")?;
        Ok(Some(s))
    }

    /// Taken before a read: the generation a resident vault may keep what it reads under
    /// (`None` if it is not resident). A removal bumps the generation before and after its
    /// commit, so what is read in between is never served under the generation after it.
    fn keep_mark(&self) -> Option<u64> {
        Some(self.resident.as_ref()?.generation.current())
    }

    /// `e` and its verified bytes as served, kept in memory under `mark` (see `keep_mark`).
    fn kept(&self, e: Entry, bytes: Vec<u8>, mark: Option<u64>) -> Served {
        let s = Served { entry: Arc::new(e), bytes: bytes.into() };
        if let (Some(r), Some(generation)) = (&self.resident, mark) {
            r.keep(&s, generation);
        }
        s
    }

    fn fetch_stored(&self, key: &TaskKey) -> Result<Option<(Entry, Vec<u8>)>> {
        let mut hot = true;
        loop {
            let Some((e, from_hot)) = self.lookup_for_get(key, "get", hot)? else {
                return Ok(None);
            };
            if let Some(bytes) = self.read_bytes(&e)? {
                self.hit(&e, "get")?;
                return Ok(Some((e, bytes)));
            }
            if from_hot {
                self.drop_hot(&e.key)?;
                hot = false;
                continue;
            }
            self.miss(key, "get")?;
            return Ok(None);
        }
    }

    /// The seed SDK's save: `output` is the result of `task` on `input`.
    pub fn cache_result(&self, task: &str, input: &[u8], output: &[u8]) -> Result<Entry> {
        let key = self.key(task, &[Input::Bytes(input.to_vec())])?;
        self.save(&key, Output::Bytes(output), &SaveOptions::default())
    }

    /// The seed SDK's lookup: `(Some(bytes), true)` on a hit, `(None, false)` on a miss.
    pub fn get_cached_result(&self, task: &str, input: &[u8]) -> Result<(Option<Vec<u8>>, bool)> {
        let key = self.key(task, &[Input::Bytes(input.to_vec())])?;
        Ok(match self.get_bytes(&key)? {
            Some((_, b)) => (Some(b), true),
            None => (None, false),
        })
    }

    /// The directory of the files claims lock bytes of (see `claim`).
    pub(crate) fn claims_dir(&self) -> &Path {
        self.locks_ready.get_or_init(|| ensure_dir(&self.locks));
        &self.locks
    }

    pub(crate) fn claim_files(&self) -> &Arc<crate::claim::ClaimFiles> {
        &self.claim_files
    }

    pub(crate) fn blob_store(&self) -> &dyn BlobStore {
        &*self.blobs
    }

    pub(crate) fn meta(&self) -> &dyn MetaStore {
        &*self.meta
    }

    pub(crate) fn tmp_dir(&self) -> &Path {
        self.tmp_ready.get_or_init(|| ensure_dir(&self.tmp));
        &self.tmp
    }

    pub(crate) fn report_items(&self, done: u64, total: u64) {
        if let Some(p) = &self.item_progress {
            p(done, total);
        }
    }

    pub(crate) fn report_progress(&self, bytes: u64) {
        if let Some(p) = &self.progress {
            p(bytes);
        }
    }

    /// Quarantines a blob that failed verification and retires every entry using it. `false`
    /// when a second look finds nothing wrong: a reader can lose a race with a removal (the row
    /// is dropped first, then the file), or a save may have put the blob back meanwhile. The
    /// second look holds the shared blob lock, so no removal runs under it.
    pub(crate) fn corrupt(&self, digest: &Digest, message: &str, op: &str) -> Result<bool> {
        self.clear_overlay();
        // The second look reads the store itself, not a local copy of it.
        self.blobs.forget_local(digest);
        {
            let _lock = self.blob_lock(false)?;
            let Some(info) = self.meta.blob(digest)? else { return Ok(false) };
            let size = info.size;
            if self.read_blob_row(digest, Some(info), size, &mut Sink::Discard)?.is_ok() {
                return Ok(false);
            }
        }
        tracing::warn!("blob {digest} failed verification ({message}); quarantined, entry dropped");
        self.blobs.quarantine(digest)?;
        let retired = self.removed(None, op, |m| m.forget_corrupt_blob(digest))?;
        let hash = digest.hex();
        if retired.is_empty() {
            self.audit.record(&Record {
                event: Event::Corrupt,
                op,
                task: "",
                hash: &hash,
                size: None,
                detail: Some(message),
            });
        }
        for e in &retired {
            self.audit.record(&Record {
                event: Event::Corrupt,
                op,
                task: &e.task,
                hash: &e.key,
                size: Some(e.size),
                detail: Some(&format!("blob {hash}: {message}")),
            });
        }
        Ok(true)
    }
}

/// Seconds as milliseconds, saturating: a huge TTL means "far in the future", never a wrap
/// into the past.
pub(crate) fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn file_node(path: String, mode: u32, blob: &crate::store::StagedBlob) -> Node {
    Node {
        path,
        kind: NodeKind::File,
        mode,
        size: blob.info.size,
        digest: Some(blob.info.digest),
        target: None,
    }
}

#[cfg(test)]
mod tests;

/// A TTL in whole milliseconds, rounded up: a TTL shorter than a millisecond still expires.
fn ttl_to_ms(t: std::time::Duration) -> i64 {
    i64::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}
