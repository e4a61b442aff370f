//! Hot records: for each live key, a small file holding its entry and the rows of its blobs
//! (inline bytes included), so that a hit is served without opening SQLite. They are a cache of
//! the metadata store, never the truth, and are kept from going stale by this protocol:
//!
//! - A save writes its key's record after its commit, under the shared blob lock.
//! - A removal first creates a marker directory in `hot/.pending/`, then takes the exclusive blob
//!   lock, commits, deletes the records of the keys it removed, and drops the marker. While any
//!   marker exists, the hot path is off (one `stat`: the marker directory's link count).
//! - A crash mid-removal leaves its marker; the next slow-path lookup sees that its process is
//!   gone, deletes every record and the marker.
//! - Anything wrong with a record (unreadable, expired, a blob that fails verification) sends the
//!   lookup down the slow path, which is always correct.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use base64::Engine as _;

use crate::digest::Digest;
use crate::entry::{BlobInfo, Codec, Entry};
use crate::error::{IoContext, Result};

const FORMAT: u32 = 1;
/// A larger record is not read (the lookup falls back to the database).
const RECORD_MAX: u64 = 16 << 20;

#[derive(Debug)]
pub(crate) struct HotRecords {
    dir: PathBuf,
    pending: PathBuf,
    /// No record is read or written: the metadata store is shared with other machines, whose
    /// removals this protocol cannot see.
    off: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    format: u32,
    entry: Entry,
    blobs: Vec<Blob>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Blob {
    digest: Digest,
    size: u64,
    stored_size: u64,
    codec: Codec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inline: Option<String>,
}

/// Marks a removal in progress; dropping it ends the mark.
#[derive(Debug)]
pub(crate) struct Pending(PathBuf);

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

impl HotRecords {
    pub(crate) fn new(vault_dir: &std::path::Path) -> HotRecords {
        let dir = vault_dir.join("hot");
        HotRecords { pending: dir.join(".pending"), dir, off: false }
    }

    /// Hot records that are never used (for a metadata store other machines change).
    pub(crate) fn off(vault_dir: &std::path::Path) -> HotRecords {
        HotRecords { off: true, ..HotRecords::new(vault_dir) }
    }

    /// Whether any record may exist (a listing, so that a batch of saves by a resident vault,
    /// which writes none, deletes none when there is none; errors answer yes).
    pub(crate) fn any_record(&self) -> bool {
        match std::fs::read_dir(&self.dir) {
            Ok(mut items) => items.any(|i| i.map_or(true, |i| i.file_name() != ".pending")),
            Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        }
    }

    /// Whether a removal is (or was, before a crash) in progress.
    pub(crate) fn removal_pending(&self) -> bool {
        std::fs::metadata(&self.pending).is_ok_and(|m| m.nlink() > 2)
    }

    /// Whether a record for the key exists (one stat; it may still turn out unusable).
    pub(crate) fn exists(&self, key_hex: &str) -> bool {
        !self.off && std::fs::symlink_metadata(self.dir.join(key_hex)).is_ok_and(|m| m.is_file())
    }

    /// The entry and blob rows recorded for a key, if the hot path may be used.
    pub(crate) fn read(&self, key_hex: &str) -> Option<(Entry, Vec<BlobInfo>)> {
        if self.off || self.removal_pending() {
            return None;
        }
        // Never blocks on a FIFO or reads a device planted here; a record is small.
        let f = crate::store::local::open_regular(&self.dir.join(key_hex)).ok()?.ok()?;
        let mut bytes = Vec::new();
        f.take(RECORD_MAX).read_to_end(&mut bytes).ok()?;
        let r: Record = serde_json::from_slice(&bytes).ok()?;
        if r.format != FORMAT || r.entry.key != key_hex {
            return None;
        }
        let mut infos = Vec::with_capacity(r.blobs.len());
        for b in r.blobs {
            let inline = match b.inline {
                Some(s) => Some(base64::engine::general_purpose::STANDARD.decode(s).ok()?),
                None => None,
            };
            infos.push(BlobInfo {
                digest: b.digest,
                size: b.size,
                stored_size: b.stored_size,
                codec: b.codec,
                inline,
            });
        }
        Some((r.entry, infos))
    }

    /// Writes (or replaces) a key's record atomically. It is a cache: no fsync.
    pub(crate) fn write(&self, entry: &Entry, infos: &[BlobInfo]) -> Result<()> {
        if self.off {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).at(&self.dir)?;
        let record = Record {
            format: FORMAT,
            entry: entry.clone(),
            blobs: infos
                .iter()
                .map(|i| Blob {
                    digest: i.digest,
                    size: i.size,
                    stored_size: i.stored_size,
                    codec: i.codec,
                    inline: i
                        .inline
                        .as_ref()
                        .map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
                })
                .collect(),
        };
        let tmp = self.dir.join(format!(".{}", crate::vault::unique_name("tmp-")));
        std::fs::write(&tmp, serde_json::to_vec(&record).expect("records serialize")).at(&tmp)?;
        let dest = self.dir.join(&entry.key);
        std::fs::rename(&tmp, &dest).at(&dest)
    }

    pub(crate) fn remove(&self, key_hex: &str) -> Result<()> {
        let p = self.dir.join(key_hex);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).at(p),
            _ => Ok(()),
        }
    }

    /// Deletes every record (after a crash, or `clear`).
    pub(crate) fn remove_all(&self) -> Result<()> {
        let items = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).at(&self.dir),
        };
        for item in items {
            let item = item.at(&self.dir)?;
            if item.file_type().at(item.path())?.is_file() {
                let _ = std::fs::remove_file(item.path());
            }
        }
        Ok(())
    }

    /// Marks a removal: the hot path is off until the returned guard drops.
    pub(crate) fn begin_removal(&self) -> Result<Pending> {
        std::fs::create_dir_all(&self.pending).at(&self.pending)?;
        let p = self.pending.join(crate::vault::unique_name(""));
        std::fs::create_dir(&p).at(&p)?;
        Ok(Pending(p))
    }

    /// Clears the marks of removals whose process died (and every record, since one of them may
    /// be stale). Marks of live processes are left alone.
    pub(crate) fn repair(&self) -> Result<()> {
        self.repair_with(None)
    }

    /// Like [`HotRecords::repair`], and also clears marks older than `max_age` whatever their
    /// process id says (a crashed removal's id can be reused by an unrelated process; removals
    /// take milliseconds to seconds).
    pub(crate) fn repair_older_than(&self, max_age: std::time::Duration) -> Result<()> {
        self.repair_with(Some(max_age))
    }

    fn repair_with(&self, max_age: Option<std::time::Duration>) -> Result<()> {
        let Ok(items) = std::fs::read_dir(&self.pending) else { return Ok(()) };
        let mut dead = Vec::new();
        for item in items.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().unwrap_or_default();
            let too_old = max_age.is_some_and(|max| {
                item.metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > max)
            });
            if too_old || !std::path::Path::new("/proc").join(pid).exists() {
                dead.push(item.path());
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        self.remove_all()?;
        for d in dead {
            let _ = std::fs::remove_dir(d);
        }
        Ok(())
    }
}
