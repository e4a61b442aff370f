//! Looking at and tending a vault: selection, history, removal, garbage collection,
//! verification and statistics.

use std::time::{Duration, SystemTime};

use super::restore::Sink;
use super::{Vault, secs_to_ms};
use crate::audit::Event;
use crate::clock::now_ms;

use crate::entry::{Counters, Entry, Filter};
use crate::error::{Error, IoContext, Result};

/// A removal's mark in `hot/.pending` older than this is stale even if its process id is alive
/// (the id may have been reused after a crash).
const STALE_MARK: Duration = Duration::from_secs(3600);

/// Staging files younger than this are left alone by `gc`, since a save may be using them.
const LEFTOVER_AGE: Duration = Duration::from_secs(15 * 60);

/// Vault statistics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub entries: i64,
    /// Stored bytes (after compression and deduplication).
    pub total_bytes: i64,
    /// The size cap, if any.
    pub limit_bytes: Option<u64>,
    /// `total_bytes` as a percentage of the cap.
    pub usage_percent: Option<f64>,
    /// Hits over lookups, as a percentage.
    pub hit_rate_percent: Option<f64>,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(flatten)]
    pub census: crate::entry::Census,
}

/// What `verify` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// (digest, reason) of every blob that failed and was quarantined.
    pub corrupt: Vec<(String, String)>,
    /// Blob files that no entry referenced, removed.
    pub orphans_removed: u64,
    /// (key or digest, reason) of metadata rows that could not be read back. They are
    /// deleted: a damaged live run leaves its key a miss (a new save restores it), a damaged
    /// blob row retires the entries using it.
    pub damaged_rows: Vec<(String, String)>,
}

/// What `gc` removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    pub expired: u64,
    pub old: u64,
    pub evicted: u64,
    pub orphans_removed: u64,
    pub temp_removed: u64,
    pub bytes_before: i64,
    pub bytes_after: i64,
}

impl Vault {
    pub fn stats(&self) -> Result<Stats> {
        self.fold_accesses()?;
        let c = self.meta().counters()?;
        let lookups = c.hits + c.misses;
        Ok(Stats {
            entries: self.meta().live_entries()?,
            total_bytes: c.stored_bytes,
            limit_bytes: self.settings.max_size_bytes,
            usage_percent: self
                .settings
                .max_size_bytes
                .map(|l| c.stored_bytes as f64 * 100.0 / l as f64),
            hit_rate_percent: (lookups > 0).then(|| c.hits as f64 * 100.0 / lookups as f64),
            counters: c,
            census: self.meta().census()?,
        })
    }

    /// Per-task entries, bytes, hits, misses and time saved (see [`crate::entry::TaskStats`]).
    pub fn task_stats(&self) -> Result<Vec<crate::entry::TaskStats>> {
        self.fold_accesses()?;
        self.meta().task_stats()
    }

    /// Zeroes the counters `stats` shows (hits, misses, saves, evictions, expired, corrupt,
    /// time saved; per task too). Entries and stored bytes are untouched.
    pub fn reset_counters(&self) -> Result<()> {
        // Accesses journaled before the reset are counted before it.
        self.fold_accesses()?;
        self.meta().reset_counters()
    }

    pub fn list(&self, filter: &Filter) -> Result<Vec<Entry>> {
        self.fold_accesses()?;
        self.meta().list(filter)
    }

    /// Resolves a hash argument: a prefix of a run id, or of a key (which means its live run, or
    /// its latest run if none is live).
    pub fn resolve(&self, prefix: &str) -> Result<Entry> {
        self.fold_accesses()?;
        let prefix = prefix.trim().to_ascii_lowercase();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Other(format!("{prefix:?} is not a hash (hex digits expected)")));
        }
        let (ids, keys) = self.meta().resolve_prefix(&prefix)?;
        let count = ids.len() + keys.len();
        if count > 1 {
            return Err(Error::Ambiguous { prefix, count });
        }
        if let Some(id) = ids.first() {
            return self.meta().run(id)?.ok_or(Error::NotFound(prefix));
        }
        if let Some(k) = keys.first() {
            if let Some(e) = self.meta().lookup(k)? {
                return Ok(e);
            }
            return self.meta().history(k)?.pop().ok_or(Error::NotFound(prefix));
        }
        Err(Error::NotFound(prefix))
    }

    /// All runs of an entry's key, oldest first.
    pub fn history(&self, e: &Entry) -> Result<Vec<Entry>> {
        self.fold_accesses()?;
        self.meta().history(&e.key)
    }

    /// Writes a run's output to `dest`, verified; `false` if it failed verification.
    pub fn restore_run(&self, e: &Entry, dest: &std::path::Path) -> Result<bool> {
        self.ensure_stored(e)?;
        Ok(self.restore(e, dest)?.is_some())
    }

    /// Runs that are no longer live may have lost their blobs; that is not corruption.
    fn ensure_stored(&self, e: &Entry) -> Result<()> {
        if e.status == crate::entry::Status::Live {
            return Ok(());
        }
        for d in e.blob_digests() {
            if e.embedded_blob(&d).is_none() && self.meta().blob(&d)?.is_none() {
                return Err(Error::Other(format!(
                    "the outputs of run {} are no longer stored (it is not the live run of its key)",
                    e.id
                )));
            }
        }
        Ok(())
    }

    /// A run's bytes (file and bytes outputs); `None` if they failed verification.
    pub fn run_bytes(&self, e: &Entry) -> Result<Option<Vec<u8>>> {
        self.ensure_stored(e)?;
        self.read_bytes(e)
    }

    /// Removes the keys of the given runs (every run of each key); returns the live entries removed.
    /// Removes exactly the runs named (see [`MetaStore::remove_run`]); returns the live
    /// entries that went with them.
    pub fn remove_runs(&self, runs: &[Entry]) -> Result<Vec<Entry>> {
        self.removed(Some(Event::Remove), "rm", |m| {
            let mut all = crate::store::Removed::default();
            for run in runs {
                let r = m.remove_run(&run.id)?;
                all.entries.extend(r.entries);
                all.unreferenced.extend(r.unreferenced);
            }
            Ok(all)
        })
    }

    pub fn remove(&self, runs: &[Entry]) -> Result<Vec<Entry>> {
        let mut keys: Vec<String> = runs.iter().map(|e| e.key.clone()).collect();
        keys.dedup();
        self.removed(Some(Event::Remove), "rm", |m| m.remove_keys(&keys, None))
    }

    /// Removes every run of the key with digest `key_hex`, audited as `op`; whether it had a
    /// live entry.
    pub fn remove_key(&self, key_hex: &str, op: &str) -> Result<bool> {
        let keys = [key_hex.to_owned()];
        let removed = self.removed(Some(Event::Remove), op, |m| m.remove_keys(&keys, None))?;
        Ok(!removed.is_empty())
    }

    /// Removes every live entry carrying tag `key` (with `value`, if given).
    pub fn invalidate(&self, key: &str, value: Option<&str>) -> Result<Vec<Entry>> {
        let runs = self.list(&Filter {
            tag: Some((key.to_owned(), value.map(str::to_owned))),
            ..Filter::default()
        })?;
        self.remove(&runs)
    }

    /// The newest audit records `q` matches, newest first: from the metadata store's trail when
    /// machines share it (this process's pending records written first), otherwise from the
    /// vault's `audit.log` and its rotations.
    pub fn audit(&self, q: &crate::audit::AuditQuery) -> Result<Vec<crate::audit::AuditRow>> {
        self.flush()?;
        self.audit.flush();
        if let Some(rows) = self.meta().audit_rows(q)? {
            return Ok(rows);
        }
        crate::audit::read(self.audit.path(), q).at(self.audit.path())
    }

    /// Removes every entry and blob; returns how many entries there were.
    pub fn clear(&self) -> Result<u64> {
        let mut n = 0;
        self.removed(None, "clear", |m| {
            n = m.clear()?;
            Ok(crate::store::Removed::default())
        })?;
        self.hot.remove_all()?;
        // Every blob file is an orphan now; removed a file at a time, in bounded memory.
        self.remove_orphans()?;
        self.audit.record(&crate::audit::Record {
            event: Event::Remove,
            op: "clear",
            task: "*",
            hash: "*",
            size: None,
            detail: None,
        });
        Ok(n)
    }

    /// Removes expired entries, entries not used for `older_than`, entries beyond `max_size`
    /// (least recently used first), orphan blob files and stale staging files.
    pub fn gc(&self, older_than: Option<Duration>, max_size: Option<u64>) -> Result<GcReport> {
        self.fold_accesses()?;
        let mut report =
            GcReport { bytes_before: self.meta().counters()?.stored_bytes, ..GcReport::default() };
        let now = now_ms();
        report.expired += self.evict_in_batches(Event::Expire, "gc", now, None)?;
        // Entries whose task's policy TTL (as configured now) has run out, policy by policy,
        // in bounded batches through the listing indexes.
        let own: Vec<String> = self.settings.policies.keys().cloned().collect();
        let mut policies: Vec<(Option<String>, Vec<String>, u64)> = self
            .settings
            .policies
            .iter()
            .filter_map(|(t, p)| p.ttl_seconds.map(|ttl| (Some(t.clone()), Vec::new(), ttl)))
            .collect();
        if let Some(ttl) = self.settings.default_policy.ttl_seconds {
            policies.push((None, own, ttl));
        }
        for (task, except, ttl) in policies {
            let stale = crate::store::Stale::CreatedBefore {
                before_ms: now.saturating_sub(secs_to_ms(ttl)),
                task,
                except,
            };
            report.expired += self.remove_stale(&stale, Event::Expire, "expired")?;
        }
        if let Some(age) = older_than {
            let cutoff = now - age.as_millis() as i64;
            let stale = crate::store::Stale::AccessedBefore(cutoff);
            report.old = self.remove_stale(&stale, Event::Evict, "evictions")?;
        }
        if let Some(max) = max_size {
            report.evicted = self.evict_in_batches(Event::Evict, "gc", now, Some(max))?;
        }
        report.orphans_removed = self.remove_orphans()?;
        self.hot.repair_older_than(STALE_MARK)?;
        report.temp_removed = self.remove_stale_temp(LEFTOVER_AGE)?;
        report.bytes_after = self.meta().counters()?.stored_bytes;
        Ok(report)
    }

    /// Removes the live entries `stale` selects, a batch at a time (memory stays bounded
    /// whatever the size of the vault); returns how many went.
    fn remove_stale(
        &self,
        stale: &crate::store::Stale,
        event: Event,
        count_as: &str,
    ) -> Result<u64> {
        const BATCH: usize = 10_000;
        let mut removed = 0;
        loop {
            let keys = self.meta().stale_keys(stale, BATCH)?;
            if keys.is_empty() {
                return Ok(removed);
            }
            let went = self.removed(Some(event), "gc", |m| m.remove_keys(&keys, Some(count_as)))?;
            removed += went.len() as u64;
            if keys.len() < BATCH {
                return Ok(removed);
            }
        }
    }

    /// Blob files without a metadata row (left by a crash between placing and committing, or
    /// between committing a removal and unlinking). Under the exclusive blob lock no save is
    /// between placing and committing, so every such file is garbage. Each file is looked up
    /// by its digest: nothing proportional to the vault is held in memory.
    fn remove_orphans(&self) -> Result<u64> {
        let _lock = self.blob_lock(true)?;
        let mut removed = 0;
        self.blob_store().visit(&mut |d, _| {
            if !self.meta().has_blob(&d)? {
                self.blob_store().remove(&d)?;
                removed += 1;
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn remove_stale_temp(&self, min_age: Duration) -> Result<u64> {
        let mut removed = 0;
        for item in std::fs::read_dir(self.tmp_dir()).at(self.tmp_dir())? {
            let p = item.at(self.tmp_dir())?.path();
            let stale = std::fs::metadata(&p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age >= min_age);
            if stale && std::fs::remove_file(&p).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Reads and checks every blob; quarantines the bad ones (their entries become misses),
    /// retires entries whose metadata rows are damaged, drops damaged blob rows, and removes
    /// orphan files. Every problem is reported and the check goes on.
    pub fn verify(&self) -> Result<VerifyReport> {
        self.commit_deferred()?;
        let mut report = VerifyReport::default();
        let damaged = self.meta().damaged()?;
        for (id, key, _live, why) in damaged.entries {
            self.drop_damaged_run(&id, &key, "", &why, "verify")?;
            report.damaged_rows.push((key, why));
        }
        for (digest, why) in damaged.blobs {
            self.removed(None, "verify", |m| m.drop_damaged_blob(&digest))?;
            report.damaged_rows.push((digest, why));
        }
        // A page of blob rows at a time, in digest order.
        let total = self.meta().census()?.blobs.max(0) as u64;
        let mut done = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self.meta().blobs_after(after.as_deref(), 1000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.digest.to_string());
            let in_page = page.len() as u64;
            for b in page {
                match self.read_blob_row(&b.digest, Some(b.clone()), b.size, &mut Sink::Discard)? {
                    Ok(()) => {}
                    // Only what a second look confirms: a blob removed meanwhile is not corrupt.
                    Err(msg) if self.corrupt(&b.digest, &msg, "verify")? => {
                        report.corrupt.push((b.digest.to_string(), msg));
                    }
                    Err(_) => continue,
                }
                report.blobs_checked += 1;
                report.bytes_checked += b.size;
            }
            done += in_page;
            self.report_items(done.min(total), total);
        }
        report.orphans_removed = self.remove_orphans()?;
        Ok(report)
    }
}
