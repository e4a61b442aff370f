//! Claims: among concurrent workers that miss the same key, one computes while the others block
//! (in the kernel, not in a polling loop) until it saves or fails. Built on `flock` of a per-key
//! lock file, so a crashed claimant's claim is released by the kernel.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::clock::now_ms;
use crate::entry::Entry;
use crate::error::{IoContext, Result};
use crate::key::TaskKey;
use crate::vault::Vault;

/// Outcome of [`Vault::claim`].
#[derive(Debug)]
pub enum Claim<'v> {
    /// Nobody has the result: compute it, save it, then drop the guard (or call `fail`).
    Compute(ClaimGuard<'v>),
    /// The result is there (possibly just saved by the worker we waited for).
    Ready(Box<Entry>),
    /// The worker we waited for failed with this message; its failure is the answer.
    Failed(String),
}

/// The right to compute a key. Dropping it wakes the next waiter.
#[derive(Debug)]
pub struct ClaimGuard<'v> {
    vault: &'v Vault,
    key: String,
    _lock: ClaimLock,
}

impl ClaimGuard<'_> {
    /// Records the failure for every waiter, then releases the claim.
    pub fn fail(self, message: &str) -> Result<()> {
        self.vault.meta().record_failure(&self.key, message, now_ms())
    }

    /// The claim without the borrow of its vault, for front ends that keep the vault behind
    /// a shared pointer (the Python SDK). Finish it with [`Vault::fail_claim`] or by dropping it.
    pub fn detach(self) -> DetachedClaim {
        DetachedClaim { key: self.key, _lock: self._lock }
    }
}

/// A held claim detached from its vault's borrow (see [`ClaimGuard::detach`]). Dropping it
/// releases the claim and wakes one waiter.
#[derive(Debug)]
pub struct DetachedClaim {
    key: String,
    _lock: ClaimLock,
}

impl Vault {
    /// Records the failure of a detached claim for every waiter, then releases it.
    pub fn fail_claim(&self, claim: DetachedClaim, message: &str) -> Result<()> {
        self.meta().record_failure(&claim.key, message, now_ms())
    }
}

impl Vault {
    /// Claims `key`: exactly one concurrent claimant gets [`Claim::Compute`]; the others block
    /// until it saves ([`Claim::Ready`]) or fails ([`Claim::Failed`]). If it dies, the next
    /// waiter is handed the claim.
    pub fn claim(&self, key: &TaskKey) -> Result<Claim<'_>> {
        let hex = key.digest().hex();
        let started = now_ms();
        let (lock, waited) = match ClaimLock::acquire(&self.lock_path(&hex))? {
            Acquired::Immediately(l) => (l, false),
            Acquired::AfterWaiting(l) => (l, true),
        };
        if let Some(e) = self.peek(key)? {
            return Ok(Claim::Ready(Box::new(e)));
        }
        if waited
            && let Some((message, at)) = self.meta().failure(&hex)?
            && at >= started
        {
            return Ok(Claim::Failed(message));
        }
        Ok(Claim::Compute(ClaimGuard { vault: self, key: hex, _lock: lock }))
    }
}

/// Opens (creating) `path` and takes an `flock` on it, blocking in the kernel until it is free.
/// The lock lasts as long as the returned file. Each call opens a new descriptor: `flock` on a
/// shared descriptor would convert the lock instead of blocking.
pub(crate) fn lock_file(path: &Path, exclusive: bool) -> Result<File> {
    let f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).at(path)?;
    if exclusive { f.lock() } else { f.lock_shared() }.at(path)?;
    Ok(f)
}

/// A held claim on a key. Dropping it releases the claim and wakes one waiter.
#[derive(Debug)]
pub struct ClaimLock {
    path: PathBuf,
    file: Option<File>,
}

/// How a claim attempt went.
pub(crate) enum Acquired {
    /// We hold the lock without having waited.
    Immediately(ClaimLock),
    /// We hold the lock after waiting for another holder.
    AfterWaiting(ClaimLock),
}

impl ClaimLock {
    /// Takes the lock file at `path`, blocking while another process or thread holds it.
    pub(crate) fn acquire(path: &Path) -> Result<Acquired> {
        let mut waited = false;
        loop {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .at(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    waited = true;
                    file.lock().at(path)?;
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e).at(path),
            }
            // The previous holder unlinks the file before unlocking; if it did, our lock is on a
            // dead inode and we must start again on the new file.
            let held = file.metadata().at(path)?;
            match std::fs::metadata(path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    let lock = ClaimLock { path: path.to_owned(), file: Some(file) };
                    return Ok(if waited {
                        Acquired::AfterWaiting(lock)
                    } else {
                        Acquired::Immediately(lock)
                    });
                }
                _ => continue,
            }
        }
    }
}

impl Drop for ClaimLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, then unlock by closing: lock files never pile up,
        // and a waiter that locked the old inode notices and retries.
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}
