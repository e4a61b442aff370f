//! Claims: among concurrent workers that miss the same key, one computes while the others block
//! (in the kernel, not in a polling loop) until it saves or fails. A claim is an
//! open-file-description lock (`F_OFD_SETLKW`) on one byte of one of `CLAIM_SHARDS` files
//! `locks/claims-XX`, file and offset taken from the key digest: the kernel releases it when the
//! claimant unlocks it, closes the file or dies, nothing is created or deleted per claim, and
//! each held claim has a description of its own (opened, or reused from an earlier claim of this
//! process that released it), so threads of one process exclude each other as processes do.
//! The kernel keeps one list of the locks held on a file and walks it on every lock and unlock:
//! spread over the shards, a process holding a thousand claims (a batch of saves waiting for its
//! commit) makes each of them cheap.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::entry::{Entry, Status};
use crate::error::{IoContext, Result};
use crate::key::TaskKey;
use crate::vault::{Served, Vault};

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

/// Outcome of [`Vault::fetch_or_claim`].
#[derive(Debug)]
pub enum Fetched<'v> {
    /// The verified result (counted as a hit).
    Hit(Served),
    /// The verified result, written into the caller's [`Destination`] (counted as a hit).
    Written(Arc<Entry>),
    /// Nobody has the result: compute it, as for [`Claim::Compute`] (counted as a miss).
    Compute(ClaimGuard<'v>),
    /// The worker waited for failed with this message.
    Failed(String),
}

/// Where [`Vault::fetch_or_claim`] writes results too large to keep in memory, so that they
/// land in memory the caller owns (a Python `bytes`, say) without a copy.
pub trait Destination {
    /// A buffer of exactly `len` bytes to write a result into; what it held is overwritten.
    /// Called again if the result failed verification and another was found.
    fn buffer(&mut self, len: usize) -> Result<&mut [u8]>;
}

/// The right to compute a key. Dropping it wakes the next waiter.
#[derive(Debug)]
pub struct ClaimGuard<'v> {
    vault: &'v Vault,
    key: String,
    _lock: Held,
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
    _lock: Held,
}

/// A held claim: a lock in the claims files, or the metadata store's own (a database server,
/// which machines share). Released when dropped.
#[derive(Debug)]
enum Held {
    File(#[allow(dead_code)] ClaimLock),
    Store(#[allow(dead_code)] crate::store::StoreClaim),
}

impl Vault {
    /// Records the failure of a detached claim for every waiter, then releases it.
    pub fn fail_claim(&self, claim: DetachedClaim, message: &str) -> Result<()> {
        self.meta().record_failure(&claim.key, message, now_ms())
    }

    /// Records a failed run of `key`: history with `message` as its error (`details.error`,
    /// beside `opts.details`), no outputs, never served; waiters on `claim` receive the
    /// failure, then the claim is released. Returns the recorded run.
    pub fn record_failed_run(
        &self,
        key: &TaskKey,
        message: &str,
        opts: &crate::SaveOptions,
        claim: Option<DetachedClaim>,
    ) -> Result<Entry> {
        let now = now_ms();
        let mut details = match &opts.details {
            serde_json::Value::Object(m) => m.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            other => serde_json::Map::from_iter([("details".to_owned(), other.clone())]),
        };
        details.insert("error".to_owned(), serde_json::Value::String(message.to_owned()));
        let entry = Entry {
            id: self.run_id(key, now),
            key: key.digest().hex(),
            namespace: key.namespace.clone(),
            task: key.task.clone(),
            status: Status::Failed,
            inputs: key.inputs.clone(),
            extras: opts.extras_display.clone(),
            output_kind: crate::entry::OutputKind::Bytes,
            outputs: Vec::new(),
            size: 0,
            created_ms: now,
            last_access_ms: now,
            access_count: 0,
            expires_ms: None,
            ttl_explicit: false,
            duration_ms: opts.duration_ms,
            host: self.settings().host.clone(),
            user: self.settings().user.clone(),
            tags: opts.tags.clone(),
            parent: None,
            details: serde_json::Value::Object(details),
            console: None,
            exit_code: opts.exit_code,
            ingredients: Some(crate::entry::Ingredients {
                algorithm: key.algorithm,
                extras: key.extras.clone(),
            }),
            embedded: None,
        };
        let recorded = self.meta().record_failed_run(&entry, message);
        drop(claim);
        recorded
    }
}

impl Vault {
    /// Claims `key`: exactly one concurrent claimant gets [`Claim::Compute`]; the others block
    /// until it saves ([`Claim::Ready`]) or fails ([`Claim::Failed`]). If it dies, the next
    /// waiter is handed the claim.
    pub fn claim(&self, key: &TaskKey) -> Result<Claim<'_>> {
        let hex = key.digest().hex();
        // Our own deferred save of this key holds its claim until it commits.
        self.commit_deferred_of(&hex)?;
        let started = now_ms();
        let (lock, waited) = match self.meta().claim(&hex)? {
            Some((held, waited)) => (Held::Store(held), waited),
            None => match ClaimLock::acquire(
                self.claims_dir(),
                key.digest().as_bytes(),
                self.claim_files(),
            )? {
                Acquired::Immediately(l) => (Held::File(l), false),
                Acquired::AfterWaiting(l) => (Held::File(l), true),
            },
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
/// The lock lasts as long as the returned guard. Each call opens a new descriptor: `flock` on a
/// shared descriptor would convert the lock instead of blocking.
pub(crate) fn lock_file(path: &Path, exclusive: bool) -> Result<FileLock> {
    let f =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).at(path)?;
    FileLock::take(f, exclusive).at(path)
}

/// An `flock` held on an open file, released explicitly when the guard drops. Closing the
/// descriptor is not enough: a process forked while the lock was held has a copy of the
/// descriptor, and an `flock` belongs to the open file description, so it would stay held until
/// the child exits (and every other locker would wait for it).
#[derive(Debug)]
pub(crate) struct FileLock(File);

impl FileLock {
    pub(crate) fn take(f: File, exclusive: bool) -> std::io::Result<FileLock> {
        if exclusive { f.lock() } else { f.lock_shared() }?;
        Ok(FileLock(f))
    }
}

impl std::ops::Deref for FileLock {
    type Target = File;
    fn deref(&self) -> &File {
        &self.0
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// A held claim on a key. Dropping it releases the claim and wakes one waiter.
#[derive(Debug)]
pub struct ClaimLock {
    file: Option<File>,
    shard: usize,
    offset: i64,
    files: Arc<ClaimFiles>,
}

impl Drop for ClaimLock {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            // Unlocked, the description can serve the next claim; if unlocking fails, closing
            // it (the last descriptor of its description) releases the lock.
            if ofd_unlock(&f, self.offset).is_ok() {
                self.files.put(self.shard, f);
            }
        }
    }
}

/// Open descriptions of the claims files holding no lock: a claim takes one of its shard's
/// instead of opening the file (and closing it after). Each claim still uses a description no
/// other held claim uses, so threads of one process exclude each other. A forked child inherits
/// the descriptions, which its parent shares, and so never uses them.
#[derive(Debug, Default)]
pub(crate) struct ClaimFiles {
    free: std::sync::Mutex<Free>,
}

#[derive(Debug)]
struct Free {
    /// The process the descriptions belong to.
    pid: u32,
    /// Per shard.
    files: [Vec<File>; CLAIM_SHARDS],
    /// How many `files` holds in all.
    count: usize,
}

impl Default for Free {
    fn default() -> Free {
        Free { pid: 0, files: std::array::from_fn(|_| Vec::new()), count: 0 }
    }
}

/// How many files claims are spread over (`locks/claims-00` .. `locks/claims-3f`).
pub(crate) const CLAIM_SHARDS: usize = 64;

/// How many claims a process holds at most while their saves wait for a batch, and how many
/// unlocked descriptions it keeps: each is an open descriptor, so together at most a quarter
/// of the process's descriptor limit (and between 16 and 1024 each).
pub(crate) fn claims_held_max() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        (limit.unwrap_or(u64::MAX) / 8).clamp(16, 1024) as usize
    })
}

impl ClaimFiles {
    fn take(&self, shard: usize) -> Option<File> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        Self::own(&mut free);
        let f = free.files[shard].pop()?;
        free.count -= 1;
        Some(f)
    }

    fn put(&self, shard: usize, f: File) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        Self::own(&mut free);
        if free.count < claims_held_max() {
            free.files[shard].push(f);
            free.count += 1;
        }
    }

    /// Drops descriptions inherited through fork.
    fn own(free: &mut Free) {
        let pid = crate::fork::pid();
        if free.pid != pid {
            *free = Free { pid, ..Free::default() };
        }
    }
}

/// How a claim attempt went.
pub(crate) enum Acquired {
    /// We hold the lock without having waited.
    Immediately(ClaimLock),
    /// We hold the lock after waiting for another holder.
    AfterWaiting(ClaimLock),
}

impl ClaimLock {
    /// Locks the byte of a claims file in `dir` that `digest` names, blocking while another
    /// claimant (a process, or another claim of this process) holds it.
    pub(crate) fn acquire(dir: &Path, digest: &[u8], files: &Arc<ClaimFiles>) -> Result<Acquired> {
        // The shard comes from a byte the offset does not use.
        let shard = usize::from(digest[8]) % CLAIM_SHARDS;
        let path = &dir.join(format!("claims-{shard:02x}"));
        let file = match files.take(shard) {
            Some(f) => f,
            None => open_or_create(path)?,
        };
        let offset = claim_offset(digest);
        let held = |file| ClaimLock { file: Some(file), shard, offset, files: Arc::clone(files) };
        if ofd_lock(&file, offset, false).at(path)? {
            return Ok(Acquired::Immediately(held(file)));
        }
        ofd_lock(&file, offset, true).at(path)?;
        Ok(Acquired::AfterWaiting(held(file)))
    }
}

/// Opens `path` for reading and writing, creating it empty if needed (never truncating).
pub(crate) fn open_or_create(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .at(path)
}

/// The byte a key's claim locks: 62 bits of its digest (distinct keys collide with probability
/// 2^-62, and a collision only makes one wait for the other).
fn claim_offset(digest: &[u8]) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    (u64::from_le_bytes(b) >> 2) as i64
}

/// A lock request (`F_WRLCK`, `F_UNLCK`) for the byte at `offset`.
fn one_byte(l_type: libc::c_int, offset: i64) -> libc::flock {
    libc::flock {
        l_type: l_type as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: offset,
        l_len: 1,
        l_pid: 0,
    }
}

/// Releases the lock `f`'s description holds on the byte at `offset`.
fn ofd_unlock(f: &File, offset: i64) -> std::io::Result<()> {
    let fl = one_byte(libc::F_UNLCK, offset);
    // SAFETY: as in `ofd_lock`.
    #[allow(unsafe_code)]
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl as *const libc::flock) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Takes a write lock on one byte of `f` for its open file description: `Ok(false)` if another
/// description holds it and `wait` is false.
fn ofd_lock(f: &File, offset: i64, wait: bool) -> std::io::Result<bool> {
    let fl = one_byte(libc::F_WRLCK, offset);
    let cmd = if wait { libc::F_OFD_SETLKW } else { libc::F_OFD_SETLK };
    loop {
        // SAFETY: `fl` is a valid, initialized `struct flock` that outlives the call, and the
        // descriptor is open for as long as `f` is borrowed.
        #[allow(unsafe_code)]
        let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &fl as *const libc::flock) };
        if r == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN | libc::EACCES) if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hang a Python worker pool hit: a lock held by one thread while another forked stayed
    /// held, after it was dropped, for as long as the child lived.
    #[test]
    fn a_dropped_lock_is_free_while_a_forked_child_still_has_the_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let held = lock_file(&path, true).unwrap();
        // SAFETY: the child only sleeps and exits, calling nothing that a fork of a
        // multi-threaded process could have left locked.
        #[allow(unsafe_code)]
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            #[allow(unsafe_code)]
            // SAFETY: async-signal-safe calls only.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        drop(held);
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let free = other.try_lock().is_ok();
        #[allow(unsafe_code)]
        // SAFETY: `pid` is our child; reaping it with a valid status pointer.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        assert!(free, "the lock outlived its guard in the forked child");
    }
}
