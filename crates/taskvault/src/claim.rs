//! Claims: among concurrent workers that miss the same key, one computes while the others block
//! (in the kernel, not in a polling loop) until it saves or fails. Built on `flock` of a per-key
//! lock file, so a crashed claimant's claim is released by the kernel.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

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
