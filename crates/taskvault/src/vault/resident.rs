//! Resident mode, for a vault opened once by a long-lived process (the Python SDK) and asked
//! again and again:
//!
//! - Results it served or saved (up to `MEMO_MAX_BYTES` each) are kept in memory with the vault
//!   generation seen before they were read (see `generation`). They are served again only while
//!   the generation is unchanged and the entry has not expired; any removal, and any save that
//!   replaces a live run, in any process, moves the generation on. What is kept was verified
//!   when it was read, so it is never worse than the blob on disk.
//! - Hits, misses and saves are counted and audited in batches: at most `FLUSH_AT` records or
//!   `FLUSH_AFTER` old, and always before anything reads access data (folding), on
//!   [`Vault::flush`] and when the vault is dropped. A process killed meanwhile loses those
//!   counts and audit lines, never an entry.
//! - Saves of results small enough to live in the database ([`Vault::save_deferred`]) are
//!   staged at once and committed in batches: by the saver when `claims_held_max` are waiting, and by
//!   [`Vault::commit_deferred_when_due`] (the front end's thread) once the oldest has waited
//!   `DEFER_FOR`. The claim of each key is held until its commit, so other processes wait for
//!   it and then find the result; this process serves it from memory meanwhile. A process
//!   killed in between loses those saves (the results are computed again), never more.
//! - Hot records are neither read (the database connection is open anyway) nor written (a save
//!   deletes its key's record instead, so no record can go stale).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::audit::AuditRow;
use crate::claim::DetachedClaim;
use crate::entry::Entry;
use crate::generation::Generation;
use crate::store::{Access, StagedBlob};

/// A batch of deferred saves is committed once the oldest has waited this long, or by the saver
/// once as many wait as the process may hold claims (`claim::claims_held_max`): each holds its
/// claim, an open descriptor.
pub(crate) const DEFER_FOR: Duration = Duration::from_millis(20);

/// A save staged and waiting for its commit.
#[derive(Debug)]
pub(crate) struct Deferred {
    /// Shared with the copy kept in memory.
    pub(crate) entry: Arc<Entry>,
    pub(crate) blobs: Vec<StagedBlob>,
    /// Held until the commit (released when the batch is dropped after it).
    pub(crate) _claim: Option<DetachedClaim>,
}

#[derive(Debug)]
pub(crate) struct Queue {
    /// The process that staged these saves: a forked child inherits them but must not commit
    /// them a second time (closing its copies of the claims' descriptors releases nothing).
    pid: u32,
    pub(crate) saves: Vec<Deferred>,
    /// The keys of `saves`: every claim asks whether its key waits here, and a batch holds up
    /// to a thousand saves.
    keys: std::collections::HashSet<String>,
    oldest: Option<Instant>,
    /// Buffered records are due and a front-end thread writes them (see `Resident::buffer`).
    records_due: bool,
}

/// Results larger than this are not kept in memory (and are read into the caller's
/// `Destination`, when it gives one).
pub(crate) const MEMO_MAX_BYTES: usize = 4 << 20;
/// The memory kept results may take, in total.
const MEMO_BUDGET: usize = 64 << 20;
/// Buffered records are written once there are this many...
const FLUSH_AT: usize = 256;
/// ...or once the oldest is this old (checked when the next one is added).
const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// With a front-end thread writing due records, the caller writes them itself only once this
/// many are waiting (the thread is behind).
const FLUSH_BEHIND: usize = 64 * FLUSH_AT;

/// A served result: its entry and its verified bytes, shared with the in-memory copy.
#[derive(Debug, Clone)]
pub struct Served {
    pub entry: Arc<Entry>,
    pub bytes: Arc<[u8]>,
}

#[derive(Debug)]
struct Kept {
    served: Served,
    generation: u64,
}

#[derive(Debug, Default)]
struct Memo {
    kept: HashMap<String, Kept>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct Buffer {
    /// The process that buffered these records: a forked child inherits them but must not
    /// write them a second time.
    pid: u32,
    pub(crate) accesses: Vec<Access>,
    pub(crate) audit: Vec<AuditRow>,
    oldest: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Resident {
    pub(crate) generation: Generation,
    /// For a metadata store other machines change: whether their changes reach the generation
    /// right now (see `MetaStore::watch_changes`). While they do not, nothing is kept or
    /// served from memory.
    pub(crate) watching: Option<Arc<std::sync::atomic::AtomicBool>>,
    memo: Mutex<Memo>,
    buffer: Mutex<Buffer>,
    queue: Mutex<Queue>,
    queued: Condvar,
    /// Serializes batch commits, so that saves of one key commit in the order they were made.
    pub(crate) committing: Mutex<()>,
    /// A front-end thread calls `Vault::commit_deferred_when_due` in a loop: due records are
    /// left to it, off the callers' path.
    pub(crate) background: std::sync::atomic::AtomicBool,
}

impl Resident {
    pub(crate) fn new(
        generation: Generation,
        watching: Option<Arc<std::sync::atomic::AtomicBool>>,
    ) -> Resident {
        Resident {
            generation,
            watching,
            memo: Mutex::default(),
            buffer: Mutex::new(Buffer {
                pid: crate::fork::pid(),
                accesses: Vec::new(),
                audit: Vec::new(),
                oldest: None,
            }),
            queue: Mutex::new(Queue {
                pid: crate::fork::pid(),
                saves: Vec::new(),
                keys: Default::default(),
                oldest: None,
                records_due: false,
            }),
            queued: Condvar::new(),
            committing: Mutex::new(()),
            background: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Queues a save; returns whether the batch is full (to be committed now).
    pub(crate) fn defer(&self, d: Deferred) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.pid != crate::fork::pid() {
            // Forked: what the parent staged is the parent's to commit.
            take_queue(&mut q);
        }
        q.keys.insert(d.entry.key.clone());
        q.saves.push(d);
        q.oldest.get_or_insert_with(Instant::now);
        self.queued.notify_one();
        q.saves.len() >= crate::claim::claims_held_max()
    }

    /// Whether a save of `key` is waiting.
    pub(crate) fn is_deferred(&self, key: &str) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.keys.contains(key)
    }

    /// Everything waiting.
    pub(crate) fn take_deferred(&self) -> Vec<Deferred> {
        take_queue(&mut self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits up to `max_wait` for the oldest waiting save to be `DEFER_FOR` old, or for
    /// buffered records to be due; returns whether something is.
    pub(crate) fn wait_due(&self, max_wait: Duration) -> bool {
        let deadline = Instant::now() + max_wait;
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            if std::mem::take(&mut q.records_due) {
                return true;
            }
            if let Some(oldest) = q.oldest
                && now >= oldest + DEFER_FOR
            {
                return true;
            }
            if now >= deadline {
                return false;
            }
            let until = match q.oldest {
                Some(oldest) => (oldest + DEFER_FOR).min(deadline),
                None => deadline,
            };
            q = self.queued.wait_timeout(q, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Whether every change that could make a kept result stale moves the generation on.
    fn sees_changes(&self) -> bool {
        self.watching.as_ref().is_none_or(|w| w.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// The kept result of `key`, if it was kept under generation `now_generation`.
    pub(crate) fn recall(&self, key: &str, now_generation: u64) -> Option<Served> {
        if !self.sees_changes() {
            return None;
        }
        let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        let k = memo.kept.get(key)?;
        (k.generation == now_generation).then(|| k.served.clone())
    }

    /// Keeps a result read (or saved) after the generation was `generation`.
    pub(crate) fn keep(&self, served: &Served, generation: u64) {
        let n = served.bytes.len();
        if n > MEMO_MAX_BYTES || !self.sees_changes() {
            return;
        }
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if memo.bytes + n > MEMO_BUDGET || memo.kept.len() >= 1 << 16 {
            // Rarely reached; starting over is simpler than tracking recency, and each result
            // costs one database read to keep again.
            memo.kept.clear();
            memo.bytes = 0;
        }
        let old =
            memo.kept.insert(served.entry.key.clone(), Kept { served: served.clone(), generation });
        memo.bytes += n;
        if let Some(old) = old {
            memo.bytes -= old.served.bytes.len();
        }
    }

    pub(crate) fn forget_all(&self) {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        memo.kept.clear();
        memo.bytes = 0;
    }

    pub(crate) fn forget(&self, key: &str) {
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = memo.kept.remove(key) {
            memo.bytes -= old.served.bytes.len();
        }
    }

    /// Buffers records; returns the batch to write now, if one is due.
    pub(crate) fn buffer(
        &self,
        access: Option<Access>,
        audit_line: Option<AuditRow>,
    ) -> Option<(Vec<Access>, Vec<AuditRow>)> {
        let mut b = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        if b.pid != crate::fork::pid() {
            // Forked: what the parent buffered is the parent's to write.
            take(&mut b);
        }
        b.accesses.extend(access);
        if let Some(l) = audit_line {
            b.audit.push(l);
        }
        let oldest = *b.oldest.get_or_insert_with(Instant::now);
        let due = b.accesses.len() >= FLUSH_AT || oldest.elapsed() >= FLUSH_AFTER;
        if !due {
            return None;
        }
        if self.background.load(std::sync::atomic::Ordering::Relaxed)
            && b.accesses.len() < FLUSH_BEHIND
        {
            // The front end's thread writes them (lock order: buffer, then queue).
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if !q.records_due {
                q.records_due = true;
                self.queued.notify_one();
            }
            return None;
        }
        take(&mut b)
    }

    /// Everything buffered (by this process).
    pub(crate) fn drain(&self) -> Option<(Vec<Access>, Vec<AuditRow>)> {
        take(&mut self.buffer.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn take_queue(q: &mut Queue) -> Vec<Deferred> {
    q.oldest = None;
    q.keys.clear();
    let saves = std::mem::take(&mut q.saves);
    if q.pid != crate::fork::pid() {
        q.pid = crate::fork::pid();
        return Vec::new();
    }
    saves
}

fn take(b: &mut Buffer) -> Option<(Vec<Access>, Vec<AuditRow>)> {
    b.oldest = None;
    let accesses = std::mem::take(&mut b.accesses);
    let audit = std::mem::take(&mut b.audit);
    if b.pid != crate::fork::pid() {
        // Inherited through fork: the parent writes these.
        b.pid = crate::fork::pid();
        return None;
    }
    (!accesses.is_empty() || !audit.is_empty()).then_some((accesses, audit))
}
