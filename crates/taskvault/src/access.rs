//! The access journal: hits and misses are appended here (one short line, no fsync, no database
//! write) and folded into the metadata store in batches, so the hit path is a read-only lookup.
//! Folding happens before anything that reads access data (stats, listings, eviction) and
//! whenever the journal passes `FOLD_AT` bytes.

use std::fs::File;
use std::io::{BufRead, Seek, Write};
use std::path::PathBuf;

use crate::error::{IoContext, Result};
use crate::store::Access;

/// The journal is folded by the appender that takes it past this size.
const FOLD_AT: u64 = 64 * 1024;

/// How often a [`Folder`] folds the journal.
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Folds a journal into a metadata store every [`FOLD_EVERY`] on a thread of its own, and once
/// more when dropped: a long-lived process on a store other machines share (a server replica)
/// thus writes hits (and its audit records) in batches, off its requests' path, and the other
/// machines see them within a second.
#[derive(Debug)]
pub(crate) struct Folder {
    stop: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Folder {
    pub(crate) fn start(
        journal: AccessJournal,
        meta: std::sync::Arc<dyn crate::store::MetaStore>,
        trail: Option<std::sync::Arc<crate::audit::SharedTrail>>,
    ) -> Result<Folder> {
        let stop = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let s = std::sync::Arc::clone(&stop);
        if let Some(t) = &trail {
            t.flushed_in_background();
        }
        let thread = std::thread::Builder::new()
            .name("taskvault-fold".into())
            .spawn(move || {
                loop {
                    let (lock, cv) = &*s;
                    let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let (stopped, _) =
                        cv.wait_timeout(stopped, FOLD_EVERY).unwrap_or_else(|p| p.into_inner());
                    let last = *stopped;
                    drop(stopped);
                    if let Err(e) = journal.fold(|batch| meta.apply_accesses(batch)) {
                        tracing::warn!("writing hits to the metadata store: {e}");
                    }
                    if let Some(t) = &trail {
                        t.flush();
                    }
                    if last {
                        return;
                    }
                }
            })
            .map_err(|e| crate::error::Error::Other(format!("starting the fold thread: {e}")))?;
        Ok(Folder { stop, thread: Some(thread) })
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug)]
pub(crate) struct AccessJournal {
    path: PathBuf,
}

impl AccessJournal {
    pub(crate) fn new(path: PathBuf) -> AccessJournal {
        AccessJournal { path }
    }

    fn open(&self) -> Result<File> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&self.path)
            .at(&self.path)
    }

    /// Appends accesses in one write. Appenders share the lock; the folder takes it
    /// exclusively, so no line is written between its read and its truncate. Returns true when
    /// the journal should be folded.
    pub(crate) fn record_many(&self, accesses: &[Access]) -> Result<bool> {
        if accesses.is_empty() {
            return Ok(false);
        }
        let mut line = String::new();
        for a in accesses {
            match a {
                Access::Hit { id, at_ms, duration_ms } => {
                    line.push_str(&format!("h {id} {at_ms} {}\n", duration_ms.map_or(-1, |d| d)))
                }
                // The task hex-encoded: a task name may hold spaces or newlines.
                Access::Miss { task } => line.push_str(&format!("m {}\n", hex(task.as_bytes()))),
                Access::RemoteHit => line.push_str("r\n"),
            }
        }
        let f = crate::claim::FileLock::take(self.open()?, false).at(&self.path)?;
        (&*f).write_all(line.as_bytes()).at(&self.path)?;
        Ok(f.metadata().at(&self.path)?.len() >= FOLD_AT)
    }

    /// Hands every recorded access to `apply` and empties the journal once `apply` succeeded.
    /// A crash between the two can count a batch twice; it can never lose an entry.
    pub(crate) fn fold(&self, apply: impl FnOnce(&[Access]) -> Result<()>) -> Result<()> {
        let f = match std::fs::metadata(&self.path) {
            Ok(m) if m.len() == 0 => return Ok(()),
            Ok(_) => self.open()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).at(&self.path),
        };
        let f = crate::claim::FileLock::take(f, true).at(&self.path)?;
        (&*f).rewind().at(&self.path)?;
        // Line by line, as bytes: a damaged line (torn by a crash, or not UTF-8) is skipped and
        // counted, and never stops the fold.
        let mut accesses = Vec::new();
        let mut damaged = 0u64;
        for line in std::io::BufReader::new(&*f).split(b'\n') {
            let line = line.at(&self.path)?;
            match std::str::from_utf8(&line).ok().and_then(parse) {
                Some(a) => accesses.push(a),
                None if line.is_empty() => {}
                None => damaged += 1,
            }
        }
        if damaged > 0 {
            tracing::warn!("{}: skipped {damaged} damaged lines", self.path.display());
        }
        apply(&accesses)?;
        f.set_len(0).at(&self.path)?;
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect()
}

/// Parses one journal line; a torn last line (a crash mid-append) is skipped.
fn parse(line: &str) -> Option<Access> {
    let mut it = line.split(' ');
    match it.next()? {
        "m" => {
            let task = match it.next() {
                Some(h) => String::from_utf8(unhex(h)?).ok()?,
                None => String::new(), // a journal written before misses named their task
            };
            Some(Access::Miss { task })
        }
        "h" => {
            let id = it.next()?;
            if id.len() != 64 {
                return None;
            }
            let at_ms = it.next()?.parse().ok()?;
            let d: i64 = it.next()?.parse().ok()?;
            Some(Access::Hit { id: id.to_owned(), at_ms, duration_ms: (d >= 0).then_some(d) })
        }
        "r" => Some(Access::RemoteHit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_fold_once_and_skip_torn_and_non_utf8_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = AccessJournal::new(dir.path().join("access.log"));
        let id = "a".repeat(64);
        j.record_many(&[Access::Hit { id: id.clone(), at_ms: 5, duration_ms: Some(7) }]).unwrap();
        j.record_many(&[Access::Miss { task: "t".into() }]).unwrap();
        j.record_many(&[Access::Hit { id: id.clone(), at_ms: 6, duration_ms: None }]).unwrap();
        j.record_many(&[Access::RemoteHit]).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("access.log"))
            .unwrap()
            .write_all(b"h \xff\xfe 1 2\nm\nh abc")
            .unwrap();
        let mut seen = Vec::new();
        j.fold(|a| {
            seen = a.to_vec();
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                Access::Hit { id: id.clone(), at_ms: 5, duration_ms: Some(7) },
                Access::Miss { task: "t".into() },
                Access::Hit { id, at_ms: 6, duration_ms: None },
                Access::RemoteHit,
                Access::Miss { task: String::new() }, // the old format
            ]
        );
        j.fold(|a| {
            assert!(a.is_empty(), "folded accesses are not applied twice");
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_failed_apply_keeps_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let j = AccessJournal::new(dir.path().join("access.log"));
        j.record_many(&[Access::Miss { task: "t".into() }]).unwrap();
        let err = j.fold(|_| Err(crate::Error::Other("db down".into())));
        assert!(err.is_err());
        let mut n = 0;
        j.fold(|a| {
            n = a.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
