//! The audit trail: one appended line per hit, miss, save, eviction, corruption or error, in the
//! seed's text form or as JSON lines, rotated by size. Writing it never fails an operation.
//!
//! On a metadata store other machines share (PostgreSQL, Redis) every record also goes to the
//! store with the process that wrote it (`host:pid`): `taskvault audit` on any machine or
//! replica reads the whole team's trail. A long-lived process (a server replica) sends its
//! records in batches from a thread, every second (see `access::Folder`); a resident vault (the Python SDK)
//! in the batches it writes its hits in; any other process with each write to the file. The
//! local file stays as it was.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::AuditFormat;
use crate::store::MetaStore;

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
    pub const ALL: [Event; 8] = [
        Event::Hit,
        Event::Miss,
        Event::Save,
        Event::Evict,
        Event::Expire,
        Event::Remove,
        Event::Corrupt,
        Event::Error,
    ];

    /// The event named `name` (as [`Event::name`] spells it, any case).
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|e| e.name().eq_ignore_ascii_case(name))
    }

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

/// One audit record, stamped: what [`AuditLog::line`] makes now and writes later, and what
/// [`read`] gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at_ms: i64,
    pub event: Event,
    pub op: String,
    pub task: String,
    pub hash: String,
    pub size: Option<u64>,
    pub detail: Option<String>,
    /// The machine that wrote it (empty in a local file: it is this machine's).
    pub origin: String,
}

impl AuditRow {
    /// As a JSON object (the `jsonl` line form, plus `origin` when known).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "ts": crate::clock::rfc3339(self.at_ms),
            "ts_ms": self.at_ms,
            "event": self.event.name(),
            "op": self.op,
            "task": self.task,
            "hash": self.hash,
        });
        if let Some(s) = self.size {
            v["size"] = s.into();
        }
        if let Some(d) = &self.detail {
            v["error"] = d.as_str().into();
        }
        if !self.origin.is_empty() {
            v["origin"] = self.origin.as_str().into();
        }
        v
    }

    /// As the seed's text line (without its newline).
    pub fn to_text(&self) -> String {
        let mut line = format!(
            "[{}] {} {} task={} hash={}",
            crate::clock::rfc3339(self.at_ms),
            self.event.name(),
            self.op,
            quote(&self.task),
            self.hash
        );
        if let Some(s) = self.size {
            line.push_str(&format!(" size={s}"));
        }
        if let Some(d) = &self.detail {
            line.push_str(&format!(" error={}", quote(d)));
        }
        line
    }
}

/// Which records [`read`] gives: the newest `limit` that match, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub limit: usize,
    pub event: Option<Event>,
    pub task: Option<String>,
    /// Only records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
}

impl AuditQuery {
    pub fn matches(&self, r: &AuditRow) -> bool {
        self.event.is_none_or(|e| e == r.event)
            && self.task.as_ref().is_none_or(|t| *t == r.task)
            && self.since_ms.is_none_or(|s| r.at_ms >= s)
    }
}

/// Old files kept after rotation: `audit.log.1` (newest) to `audit.log.3`.
const KEEP: u32 = 3;

/// Records a shared store's trail gets in one write, at most; a process that flushes from a
/// thread flushes at once past 16 times that.
const FLUSH_AT: usize = 256;
/// Records kept in memory for a shared store that does not answer; older ones are dropped
/// (they are still in the local file).
const KEPT_WHILE_DOWN: usize = 16_384;

#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    format: AuditFormat,
    max_bytes: u64,
    shared: Option<Arc<SharedTrail>>,
}

/// The batch of records on their way to a shared store's trail.
#[derive(Debug)]
pub(crate) struct SharedTrail {
    meta: Arc<dyn MetaStore>,
    origin: String,
    /// Records the store keeps, at most (older ones are dropped as new ones come).
    keep: u64,
    pending: Mutex<Vec<AuditRow>>,
    /// One writer at a time, so batches reach the store in the order they were made.
    writing: Mutex<()>,
    /// A thread flushes every second (see `access::Folder`): records are written off
    /// the path of the operation that made them, unless very many pile up.
    background: std::sync::atomic::AtomicBool,
}

impl SharedTrail {
    fn push(&self, rows: &[AuditRow]) {
        let due = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.extend(rows.iter().cloned().map(|mut r| {
                r.origin.clone_from(&self.origin);
                r
            }));
            // Without a thread that flushes, at once: a command's process may end without
            // dropping its vault. (A resident vault already hands over batches.)
            !self.background.load(std::sync::atomic::Ordering::Relaxed) || p.len() >= FLUSH_AT * 16
        };
        if due {
            self.flush();
        }
    }

    /// From now on a thread calls [`SharedTrail::flush`] every second.
    pub(crate) fn flushed_in_background(&self) {
        self.background.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes what is pending to the store; a store that fails keeps the batch for the next
    /// try (up to a bound: a store down for long loses its oldest records, never the file's).
    pub(crate) fn flush(&self) {
        let _one = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let batch =
            { std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner())) };
        if batch.is_empty() {
            return;
        }
        let mut done = 0;
        while done < batch.len() {
            let end = batch.len().min(done + FLUSH_AT * 4);
            if let Err(e) = self.meta.audit_append(&batch[done..end], self.keep) {
                tracing::warn!("audit trail in the metadata store: {e}");
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let mut again = batch[done..].to_vec();
                again.append(&mut p);
                let over = again.len().saturating_sub(KEPT_WHILE_DOWN);
                again.drain(..over);
                *p = again;
                return;
            }
            done = end;
        }
    }
}

impl AuditLog {
    pub fn new(path: PathBuf, format: AuditFormat, max_bytes: u64) -> AuditLog {
        AuditLog { path, format, max_bytes, shared: None }
    }

    /// Also sends every record to `meta`'s trail (a store other machines share), naming
    /// `origin` as the machine, the store keeping at most `keep` records.
    pub(crate) fn shared_with(mut self, meta: Arc<dyn MetaStore>, origin: &str, keep: u64) -> Self {
        self.shared = Some(Arc::new(SharedTrail {
            meta,
            origin: origin.to_owned(),
            keep,
            pending: Default::default(),
            writing: Default::default(),
            background: Default::default(),
        }));
        self
    }

    /// The batch on its way to a shared store, if any (for a thread that flushes it).
    pub(crate) fn shared_trail(&self) -> Option<Arc<SharedTrail>> {
        self.shared.clone()
    }

    /// Writes the batch on its way to a shared store now.
    pub(crate) fn flush(&self) {
        if let Some(s) = &self.shared {
            s.flush();
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line. The line is written with a single `write` on an `O_APPEND` file, so
    /// concurrent writers never interleave within a line.
    pub fn record(&self, r: &Record<'_>) {
        self.append_rows(&[self.line(r)]);
    }

    /// The record `r`, stamped now (to be written later with `append_rows`).
    pub(crate) fn line(&self, r: &Record<'_>) -> AuditRow {
        AuditRow {
            at_ms: crate::clock::now_ms(),
            event: r.event,
            op: r.op.to_owned(),
            task: r.task.to_owned(),
            hash: r.hash.to_owned(),
            size: r.size,
            detail: r.detail.map(str::to_owned),
            origin: String::new(),
        }
    }

    /// Appends records made by [`AuditLog::line`], in one write.
    pub(crate) fn append_rows(&self, rows: &[AuditRow]) {
        if rows.is_empty() {
            return;
        }
        let text: String = rows.iter().map(|r| self.format_row(r)).collect();
        if let Err(e) = self.append(&text) {
            tracing::warn!("audit trail {}: {e}", self.path.display());
        }
        if let Some(s) = &self.shared {
            s.push(rows);
        }
    }

    #[cfg(test)]
    fn format(&self, r: &Record<'_>, now_ms: i64) -> String {
        let mut row = self.line(r);
        row.at_ms = now_ms;
        self.format_row(&row)
    }

    fn format_row(&self, r: &AuditRow) -> String {
        match self.format {
            AuditFormat::Text => format!("{}\n", r.to_text()),
            AuditFormat::Jsonl => format!("{}\n", r.to_json()),
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

/// How a shared store's trail names this process: `host:pid` (`host` as the settings give it,
/// or the kernel's host name).
pub(crate) fn origin(host: &str) -> String {
    let host = if host.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    } else {
        host.to_owned()
    };
    format!("{host}:{}", std::process::id())
}

/// The newest records of the trail whose current file is `path` (then its rotations, `.1` to
/// `.3`) that `q` matches, newest first. Each file is read line by line, keeping at most
/// `q.limit` records. Lines that are not records (cut short by a crash) are skipped.
pub fn read(path: &Path, q: &AuditQuery) -> std::io::Result<Vec<AuditRow>> {
    let mut out = Vec::new();
    for n in 0..=KEEP {
        if out.len() >= q.limit {
            break;
        }
        let p =
            if n == 0 { path.to_owned() } else { PathBuf::from(format!("{}.{n}", path.display())) };
        let f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let want = q.limit - out.len();
        let mut last = std::collections::VecDeque::with_capacity(want.min(4096));
        for line in std::io::BufReader::new(f).lines() {
            let Some(r) = parse_line(&line?) else { continue };
            if q.matches(&r) {
                if last.len() == want {
                    last.pop_front();
                }
                last.push_back(r);
            }
        }
        out.extend(last.into_iter().rev());
    }
    Ok(out)
}

/// A line of the trail back as its record: either form, as [`AuditLog`] writes them.
fn parse_line(line: &str) -> Option<AuditRow> {
    let line = line.trim_end();
    if line.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let text = |k: &str| v[k].as_str().map(str::to_owned);
        return Some(AuditRow {
            at_ms: v["ts_ms"].as_i64()?,
            event: Event::parse(v["event"].as_str()?)?,
            op: text("op")?,
            task: text("task")?,
            hash: text("hash")?,
            size: v["size"].as_u64(),
            detail: text("error"),
            origin: text("origin").unwrap_or_default(),
        });
    }
    let rest = line.strip_prefix('[')?;
    let (ts, rest) = rest.split_once("] ")?;
    let at = humantime::parse_rfc3339(ts).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
    let (event, rest) = rest.split_once(' ')?;
    let (op, mut rest) = rest.split_once(' ')?;
    let mut row = AuditRow {
        at_ms,
        event: Event::parse(event)?,
        op: op.to_owned(),
        task: String::new(),
        hash: String::new(),
        size: None,
        detail: None,
        origin: String::new(),
    };
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let (value, after) = unquote(after)?;
        match name {
            "task" => row.task = value,
            "hash" => row.hash = value,
            "size" => row.size = Some(value.parse().ok()?),
            "error" => row.detail = Some(value),
            _ => {}
        }
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    Some(row)
}

/// The value at the start of `s` as [`quote`] wrote it (bare up to a space, or a quoted Rust
/// string), and what follows it.
fn unquote(s: &str) -> Option<(String, &str)> {
    let Some(body) = s.strip_prefix('"') else {
        let end = s.find(' ').unwrap_or(s.len());
        return Some((s[..end].to_owned(), &s[end..]));
    };
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                '0' => out.push('\0'),
                'u' => {
                    let rest = &body[chars.next()?.0 + 1..];
                    let (hex, _) = rest.split_once('}')?;
                    out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
                    for _ in 0..=hex.len() {
                        chars.next();
                    }
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
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
    fn lines_read_back_as_their_records_in_both_forms() {
        let dir = tempfile::tempdir().unwrap();
        let odd = "a \"quoted\" = task\twith\nlines and \u{7f} and é";
        let records = [
            Record {
                event: Event::Save,
                op: "save",
                task: odd,
                hash: "h1",
                size: Some(7),
                detail: None,
            },
            Record {
                event: Event::Corrupt,
                op: "get",
                task: "",
                hash: "h2",
                size: None,
                detail: Some("blob x: \"bad\" bytes"),
            },
            Record {
                event: Event::Hit,
                op: "serve:ci",
                task: "t",
                hash: "h3",
                size: Some(1),
                detail: None,
            },
        ];
        for format in [AuditFormat::Text, AuditFormat::Jsonl] {
            let path = dir.path().join(format!("{format:?}.log"));
            let log = AuditLog::new(path.clone(), format, 0);
            let mut rows: Vec<AuditRow> = records.iter().map(|r| log.line(r)).collect();
            for r in &mut rows {
                r.at_ms = r.at_ms / 1000 * 1000; // the text form keeps seconds
            }
            log.append_rows(&rows);
            // A line a crash cut short is skipped.
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap()
                .write_all(b"[2025-")
                .unwrap();
            let all = read(&path, &AuditQuery { limit: 10, ..Default::default() }).unwrap();
            let newest_first: Vec<AuditRow> = rows.iter().rev().cloned().collect();
            assert_eq!(all, newest_first, "{format:?}");
            let q = AuditQuery { limit: 10, event: Some(Event::Corrupt), ..Default::default() };
            assert_eq!(read(&path, &q).unwrap(), vec![rows[1].clone()], "{format:?}");
            let q = AuditQuery { limit: 10, task: Some(odd.into()), ..Default::default() };
            assert_eq!(read(&path, &q).unwrap(), vec![rows[0].clone()], "{format:?}");
            let q = AuditQuery { limit: 2, ..Default::default() };
            assert_eq!(read(&path, &q).unwrap(), newest_first[..2].to_vec(), "{format:?}");
        }
    }

    #[test]
    fn reads_across_rotations_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::new(path.clone(), AuditFormat::Jsonl, 300);
        let names: Vec<String> = (0..20).map(|i| format!("task{i}")).collect();
        for n in &names {
            log.record(&Record {
                event: Event::Miss,
                op: "get",
                task: n,
                hash: "h",
                size: None,
                detail: None,
            });
        }
        assert!(std::fs::metadata(dir.path().join("audit.log.2")).is_ok());
        let got = read(&path, &AuditQuery { limit: 5, ..Default::default() }).unwrap();
        let tasks: Vec<&str> = got.iter().map(|r| r.task.as_str()).collect();
        assert_eq!(tasks, ["task19", "task18", "task17", "task16", "task15"]);
        let all = read(&path, &AuditQuery { limit: 1000, ..Default::default() }).unwrap();
        let numbers: Vec<u32> = all.iter().map(|r| r.task[4..].parse().unwrap()).collect();
        assert!(numbers.len() > 5 && numbers.windows(2).all(|w| w[0] == w[1] + 1), "{numbers:?}");
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
