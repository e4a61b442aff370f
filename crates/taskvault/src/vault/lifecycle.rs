//! The life of blob files and hot records: new files are placed inside the save's transaction,
//! and the key's hot record written after it, under the shared blob lock; removals commit,
//! forget hot records and unlink files of dropped rows under the exclusive lock (see `hot`).

use crate::audit::Event;
use crate::digest::Digest;
use crate::entry::Entry;
use crate::error::{IoContext, Result};
use crate::store::{Committed, MetaStore, Removed, StagedBlob};

use super::Vault;

impl Vault {
    /// Moves a staged blob file into the blob store (inside a commit, which found its row new),
    /// making its bytes durable first if staging left them unsynced.
    fn place(&self, b: &StagedBlob) -> Result<()> {
        let staged = b.staged.as_deref().expect("only staged blobs are placed");
        if b.unsynced && !self.blobs.puts_before_commit() {
            std::fs::File::open(staged).and_then(|f| f.sync_all()).at(staged)?;
        }
        self.blobs.put(&b.info.digest, staged)
    }

    /// For a blob store whose `put` is slow: puts the staged blobs no row describes yet, before
    /// the metadata transaction (the caller holds the shared blob lock). Returns their digests;
    /// the commit skips placing those. A row that appears meanwhile only makes an upload
    /// redundant; one that goes meanwhile is placed inside the commit as usual.
    fn put_early<'b>(
        &self,
        blobs: impl IntoIterator<Item = &'b StagedBlob>,
    ) -> Result<std::collections::HashSet<Digest>> {
        let mut done = std::collections::HashSet::new();
        if !self.blobs.puts_before_commit() {
            return Ok(done);
        }
        for b in blobs {
            let Some(staged) = b.staged.as_deref() else { continue };
            if done.contains(&b.info.digest) || self.meta.blob(&b.info.digest)?.is_some() {
                continue;
            }
            self.blobs.put(&b.info.digest, staged)?;
            done.insert(b.info.digest);
        }
        Ok(done)
    }

    /// Commits a save, placing new blob files, under the shared blob lock (see [`Vault::reap`]).
    pub(crate) fn commit(&self, entry: &Entry, blobs: &[StagedBlob]) -> Result<Committed> {
        let lock = self.blob_lock(false)?;
        let early = self.put_early(blobs)?;
        let committed = self.meta.commit_save(entry, blobs, &mut |b| {
            if early.contains(&b.info.digest) { Ok(()) } else { self.place(b) }
        })?;
        if self.is_resident() {
            // A resident vault does not use hot records; an older record of the key must not
            // outlive this commit.
            self.hot.remove(&entry.key)?;
        } else {
            self.write_hot(entry, blobs, &committed);
        }
        drop(lock);
        if committed.superseded.is_some() {
            self.bump_generation()?;
        }
        self.reap(&committed.unreferenced)?;
        Ok(committed)
    }

    /// Commits deferred saves in one transaction, then releases their claims.
    pub(crate) fn commit_batch(&self, batch: Vec<super::resident::Deferred>) -> Result<()> {
        let saves: Vec<(&Entry, &[StagedBlob])> =
            batch.iter().map(|d| (&*d.entry, d.blobs.as_slice())).collect();
        // On an error the claims go with the batch: waiters find no entry and compute
        // themselves; the caller reports the error.
        self.commit_many(&saves)?;
        for d in &batch {
            self.audit_save(&d.entry, "save");
        }
        drop(batch);
        Ok(())
    }

    /// Commits saves in one transaction: their blob files placed, the hot records of their
    /// keys removed, the generation moved on if one replaced a live run, blobs no run uses any
    /// more reaped. Returns, in order, the run each replaced. Auditing is the caller's.
    pub(crate) fn commit_many(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
    ) -> Result<Vec<Option<String>>> {
        let lock = self.blob_lock(false)?;
        let early = self.put_early(saves.iter().flat_map(|(_, b)| b.iter()))?;
        let committed = self.meta.commit_saves(saves, &mut |b| {
            if early.contains(&b.info.digest) { Ok(()) } else { self.place(b) }
        })?;
        // Listed after the commit: a record written later comes from a later commit.
        if self.hot.any_record() {
            for (e, _) in saves {
                self.hot.remove(&e.key)?;
            }
        }
        drop(lock);
        if committed.iter().any(|c| c.superseded.is_some()) {
            self.bump_generation()?;
        }
        let mut superseded = Vec::with_capacity(committed.len());
        let mut unreferenced: Vec<Digest> = Vec::new();
        for c in committed {
            superseded.push(c.superseded);
            unreferenced.extend(c.unreferenced);
        }
        self.reap(&unreferenced)?;
        Ok(superseded)
    }

    /// Writes the key's hot record after its commit (under the shared lock, so no removal of the
    /// key can slip in between). A failure only costs speed: the record is removed instead.
    fn write_hot(&self, entry: &Entry, blobs: &[StagedBlob], committed: &Committed) {
        let mut e = entry.clone();
        e.parent = committed.superseded.clone();
        // A small output kept in the entry's own row has no row of `blobs`: the staged blob is
        // what was stored.
        let staged = |d: &Digest| {
            blobs
                .iter()
                .find(|b| b.info.digest == *d && b.info.inline.is_some())
                .map(|b| b.info.clone())
        };
        let infos = e
            .blob_digests()
            .iter()
            .map(|d| {
                self.meta
                    .blob(d)?
                    .or_else(|| staged(d))
                    .ok_or_else(|| crate::Error::BlobVanished(d.to_string()))
            })
            .collect::<Result<Vec<_>>>();
        if let Err(err) = infos.and_then(|i| self.hot.write(&e, &i)) {
            tracing::warn!("hot record of {}: {err}", e.key);
            let _ = self.hot.remove(&e.key);
        }
    }

    /// Takes the blob lock: shared by savers from placing a file to writing its hot record,
    /// exclusive while a removal commits, forgets hot records and unlinks files. The metadata
    /// store's own when it has one (a database server: every machine's processes), else
    /// `blobs.lock` in the vault directory.
    pub(crate) fn blob_lock(&self, exclusive: bool) -> Result<BlobLock> {
        if let Some(held) = self.meta.blob_lock(exclusive)? {
            return Ok(BlobLock::Store(held));
        }
        let file = crate::claim::lock_file(&self.settings.vault_dir.join("blobs.lock"), exclusive)?;
        Ok(BlobLock::File(file))
    }

    /// Unlinks the files of blobs whose rows were dropped, unless a save adopted the digest again
    /// in the meantime. Rows are dropped first and files later, so a crash in between leaves only
    /// an orphan file (removed by `gc`), never a row without its file.
    pub(crate) fn reap(&self, candidates: &[Digest]) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let _lock = self.blob_lock(true)?;
        self.reap_locked(candidates)
    }

    fn reap_locked(&self, candidates: &[Digest]) -> Result<()> {
        for d in candidates {
            if self.meta.blob(d)?.is_none() {
                self.blobs.remove(d)?;
            }
        }
        Ok(())
    }

    /// Runs a removal `f` under the hot-record protocol: mark the removal (the hot path is off),
    /// take the exclusive lock, commit, forget the removed keys' hot records, unlink unreferenced
    /// files. Audits each removed live entry as `event` (none for `None`).
    pub(crate) fn removed(
        &self,
        event: Option<Event>,
        op: &str,
        f: impl FnOnce(&dyn MetaStore) -> Result<Removed>,
    ) -> Result<Vec<Entry>> {
        // Deferred saves commit first: a removal must see (and may remove) them.
        self.commit_deferred()?;
        let pending = self.hot.begin_removal()?;
        // After the mark and before the commit: see `vault::resident`.
        self.bump_generation()?;
        let lock = self.blob_lock(true)?;
        let r = f(&*self.meta)?;
        // And after the commit: a resident process that read the generation between the first
        // bump and the commit may have read what was just removed (see `vault::resident`).
        self.bump_generation()?;
        for e in &r.entries {
            self.hot.remove(&e.key)?;
        }
        self.reap_locked(&r.unreferenced)?;
        drop(lock);
        drop(pending);
        if let Some(event) = event {
            for e in &r.entries {
                self.audit_entry(event, op, e);
            }
        }
        Ok(r.entries)
    }
}

/// A held blob lock (see [`Vault::blob_lock`]); released when dropped.
#[allow(dead_code)] // held for its drop
pub(crate) enum BlobLock {
    File(crate::claim::FileLock),
    Store(Box<dyn std::any::Any + Send>),
}
