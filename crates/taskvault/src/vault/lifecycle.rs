//! The life of blob files: new ones are placed inside the save's transaction under the shared
//! blob lock; files of dropped rows are unlinked after the commit under the exclusive lock.

use crate::audit::Event;
use crate::digest::Digest;
use crate::entry::Entry;
use crate::error::{IoContext, Result};
use crate::store::{Committed, Removed, StagedBlob};

use super::Vault;

impl Vault {
    /// Commits a save, placing new blob files, under the shared blob lock (see [`Vault::reap`]).
    pub(crate) fn commit(&self, entry: &Entry, blobs: &[StagedBlob]) -> Result<Committed> {
        let lock = self.blob_lock(false)?;
        let committed = self.meta.commit_save(entry, blobs, &mut |b| {
            let staged = b.staged.as_deref().expect("only staged blobs are placed");
            self.blobs.put(&b.info.digest, staged)
        })?;
        drop(lock);
        self.reap(&committed.unreferenced)?;
        Ok(committed)
    }

    /// Opens and locks `blobs.lock`: shared by savers from placing a file to committing its row,
    /// exclusive while deciding which files to unlink. A fresh descriptor each time, because
    /// `flock` on a shared descriptor would convert locks between threads instead of blocking.
    pub(crate) fn blob_lock(&self, exclusive: bool) -> Result<std::fs::File> {
        let path = self.settings.vault_dir.join("blobs.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        if exclusive { f.lock() } else { f.lock_shared() }.at(&path)?;
        Ok(f)
    }

    /// Unlinks the files of blobs whose rows were dropped, unless a save adopted the digest again
    /// in the meantime. Rows are dropped first and files later, so a crash in between leaves only
    /// an orphan file (removed by `gc`), never a row without its file.
    pub(crate) fn reap(&self, candidates: &[Digest]) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let _lock = self.blob_lock(true)?;
        for d in candidates {
            if self.meta.blob(d)?.is_none() {
                self.blobs.remove(d)?;
            }
        }
        Ok(())
    }

    /// Applies a removal's file side and audits it.
    pub(crate) fn removed(&self, r: Removed, event: Event, op: &str) -> Result<Vec<Entry>> {
        self.reap(&r.unreferenced)?;
        for e in &r.entries {
            self.audit_entry(event, op, e);
        }
        Ok(r.entries)
    }
}
