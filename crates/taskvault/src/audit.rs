//! The audit trail: one appended line per hit, miss, save, eviction, corruption or error, in the
//! seed's text form or as JSON lines, rotated by size. Writing it never fails an operation.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::AuditFormat;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Hit,
    Miss,
    Save,
    Evict,
    Expire,
    Remove,
    Corrupt,
    Error,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Hit => "HIT",
            Event::Miss => "MISS",
            Event::Save => "SAVE",
            Event::Evict => "EVICT",
            Event::Expire => "EXPIRE",
            Event::Remove => "REMOVE",
            Event::Corrupt => "CORRUPT",
            Event::Error => "ERROR",
        }
    }
}

/// One audit line.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub event: Event,
    /// The operation that produced it (`get`, `save`, `gc`, `verify`, ...).
    pub op: &'a str,
    pub task: &'a str,
    /// Key digest (hex) or blob digest, whichever the event is about.
    pub hash: &'a str,
    pub size: Option<u64>,
    pub detail: Option<&'a str>,
}

/// Old files kept after rotation: `audit.log.1` (newest) to `audit.log.3`.
const KEEP: u32 = 3;

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    format: AuditFormat,
    max_bytes: u64,
}

impl AuditLog {
    pub fn new(path: PathBuf, format: AuditFormat, max_bytes: u64) -> AuditLog {
        AuditLog { path, format, max_bytes }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. The line is written with a single `write` on an `O_APPEND` file, so
    /// concurrent writers never interleave within a line.
    pub fn record(&self, r: &Record<'_>) {
        if let Err(e) = self.append(&self.format(r, crate::clock::now_ms())) {
            tracing::warn!("audit trail {}: {e}", self.path.display());
        }
    }

    /// The line `r` is recorded as, stamped now (to be written later with `append_lines`).
    pub(crate) fn line(&self, r: &Record<'_>) -> String {
        self.format(r, crate::clock::now_ms())
    }

    /// Appends lines made by [`AuditLog::line`], in one write.
    pub(crate) fn append_lines(&self, lines: &str) {
        if lines.is_empty() {
            return;
        }
        if let Err(e) = self.append(lines) {
            tracing::warn!("audit trail {}: {e}", self.path.display());
        }
    }

    fn format(&self, r: &Record<'_>, now_ms: i64) -> String {
        match self.format {
            AuditFormat::Text => {
                let mut line = format!(
                    "[{}] {} {} task={} hash={}",
                    crate::clock::rfc3339(now_ms),
                    r.event.name(),
                    r.op,
                    quote(r.task),
                    r.hash
                );
                if let Some(s) = r.size {
                    line.push_str(&format!(" size={s}"));
                }
                if let Some(d) = r.detail {
                    line.push_str(&format!(" error={}", quote(d)));
                }
                line.push('\n');
                line
            }
            AuditFormat::Jsonl => {
                let mut v = serde_json::json!({
                    "ts": crate::clock::rfc3339(now_ms),
                    "ts_ms": now_ms,
                    "event": r.event.name(),
                    "op": r.op,
                    "task": r.task,
                    "hash": r.hash,
                });
                if let Some(s) = r.size {
                    v["size"] = s.into();
                }
                if let Some(d) = r.detail {
                    v["error"] = d.into();
                }
                format!("{v}\n")
            }
        }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        f.write_all(line.as_bytes())?;
        if self.max_bytes > 0 && f.metadata()?.len() > self.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Shifts `audit.log` to `audit.log.1` and so on. Only one process rotates at a time; others
    /// skip (the file is merely a little over its size for a moment).
    fn rotate(&self) -> std::io::Result<()> {
        let lock_path = self.path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)?;
        if lock.try_lock().is_err() {
            return Ok(());
        }
        // Released explicitly (see `claim::FileLock`): a forked child may hold a copy.
        struct Unlock<'a>(&'a std::fs::File);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                let _ = self.0.unlock();
            }
        }
        let _unlock = Unlock(&lock);
        // Another process may have rotated between our write and the lock.
        if std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) <= self.max_bytes {
            return Ok(());
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..KEEP).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))
    }
}

fn quote(s: &str) -> String {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '=') {
        format!("{s:?}")
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_line_format_and_jsonl() {
        let dir = tempfile::tempdir().unwrap();
        let r = Record {
            event: Event::Hit,
            op: "get",
            task: "model_training",
            hash: "a3f2b1",
            size: Some(5),
            detail: None,
        };
        let text = AuditLog::new(dir.path().join("a"), AuditFormat::Text, 0);
        assert_eq!(
            text.format(&r, 1_738_506_645_000),
            "[2025-02-02T14:30:45Z] HIT get task=model_training hash=a3f2b1 size=5\n"
        );
        let json = AuditLog::new(dir.path().join("b"), AuditFormat::Jsonl, 0);
        let v: serde_json::Value =
            serde_json::from_str(json.format(&r, 1_738_506_645_000).trim()).unwrap();
        assert_eq!(v["event"], "HIT");
        assert_eq!(v["task"], "model_training");
        assert_eq!(v["size"], 5);
    }

    #[test]
    fn rotates_by_size_and_keeps_three() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path().join("audit.log"), AuditFormat::Text, 200);
        let r = Record {
            event: Event::Miss,
            op: "get",
            task: "t",
            hash: "h",
            size: None,
            detail: None,
        };
        for _ in 0..100 {
            log.record(&r);
        }
        assert!(std::fs::metadata(dir.path().join("audit.log.1")).is_ok());
        assert!(std::fs::metadata(dir.path().join("audit.log.3")).is_ok());
        assert!(std::fs::metadata(dir.path().join("audit.log.4")).is_err());
        let len = |n: &str| std::fs::metadata(dir.path().join(n)).map(|m| m.len()).unwrap_or(0);
        assert!(len("audit.log") <= 200 && len("audit.log.1") <= 300, "rotated near the limit");
    }
}
