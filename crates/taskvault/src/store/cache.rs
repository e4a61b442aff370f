//! A bounded local copy of blobs kept in an object store (`<cache_dir>/blob-cache`), so that a
//! blob read again is read from the local disk (and sent with the kernel's copy) rather than
//! fetched again over the network. Blobs are content-addressed and never change under their
//! digest, so a copy is never stale; the vault verifies every byte it serves against its digest,
//! and a copy that fails verification is dropped before the object store is asked again
//! (`BlobStore::forget_local`). A copy is made when a blob is written (the staged file is moved
//! in) or read whole; the least recently used go once the copies pass their limit.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::digest::Digest;

#[derive(Debug)]
pub(crate) struct BlobCache {
    dir: PathBuf,
    max_bytes: u64,
    /// Bytes the copies hold (counted on first use).
    used: Mutex<Option<u64>>,
}

fn unique(dir: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(".tmp-{}-{n}", std::process::id()))
}

impl BlobCache {
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> BlobCache {
        BlobCache { dir, max_bytes, used: Mutex::new(None) }
    }

    fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir.join(&hex[..2]).join(format!("{}-{hex}", d.algorithm().name()))
    }

    /// Whether a blob of `stored_size` bytes is worth a copy (an eighth of the limit at most).
    pub(crate) fn takes(&self, stored_size: u64) -> bool {
        stored_size <= self.max_bytes / 8
    }

    /// The local copy of `d`, if there is one of `stored_size` bytes (a copy of another length
    /// is dropped).
    pub(crate) fn get(&self, d: &Digest, stored_size: u64) -> Option<std::fs::File> {
        let p = self.path(d);
        let f = crate::store::local::open_regular(&p).ok()?.ok()?;
        match f.metadata() {
            Ok(m) if m.len() == stored_size => {
                // Its last use, for the eviction order.
                let _ = f.set_modified(std::time::SystemTime::now());
                Some(f)
            }
            _ => {
                self.forget(d);
                None
            }
        }
    }

    /// Copies `stored_size` bytes of `d` from `from` in (written aside, then renamed) and opens
    /// the copy; `None` if the bytes were not that many or the disk refused (the caller reads
    /// from the object store instead).
    pub(crate) fn insert(
        &self,
        d: &Digest,
        from: &mut dyn Read,
        stored_size: u64,
    ) -> std::io::Result<Option<std::fs::File>> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = unique(&self.dir);
        let copied = (|| {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            let n = std::io::copy(from, &mut out)?;
            out.flush()?;
            Ok::<u64, std::io::Error>(n)
        })();
        match copied {
            Ok(n) if n == stored_size => {}
            Ok(_) => {
                let _ = std::fs::remove_file(&tmp);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        self.settle(d, &tmp, stored_size)
    }

    /// Moves a staged file of `d` in (the blob was just written to the object store).
    pub(crate) fn adopt(&self, d: &Digest, staged: &Path) {
        let Ok(len) = std::fs::metadata(staged).map(|m| m.len()) else { return };
        if !self.takes(len) || std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let tmp = unique(&self.dir);
        if std::fs::rename(staged, &tmp).is_ok() {
            let _ = self.settle(d, &tmp, len);
        }
    }

    fn settle(&self, d: &Digest, tmp: &Path, len: u64) -> std::io::Result<Option<std::fs::File>> {
        let dest = self.path(d);
        let placed = dest
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::rename(tmp, &dest));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
        self.count(len as i64);
        Ok(crate::store::local::open_regular(&dest).ok().and_then(|f| f.ok()))
    }

    /// Drops the local copy of `d`, if any.
    pub(crate) fn forget(&self, d: &Digest) {
        let p = self.path(d);
        if let Ok(m) = std::fs::metadata(&p)
            && std::fs::remove_file(&p).is_ok()
        {
            self.count(-(m.len() as i64));
        }
    }

    /// The copies: (path, size, last use).
    fn copies(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut out = Vec::new();
        let Ok(fans) = std::fs::read_dir(&self.dir) else { return out };
        for fan in fans.flatten() {
            let Ok(files) = std::fs::read_dir(fan.path()) else { continue };
            for f in files.flatten() {
                if let Ok(m) = f.metadata()
                    && m.is_file()
                {
                    out.push((f.path(), m.len(), m.modified().unwrap_or(std::time::UNIX_EPOCH)));
                }
            }
        }
        out
    }

    /// Counts `delta` bytes in or out; past the limit, the least recently used copies go until
    /// four fifths of it are left.
    fn count(&self, delta: i64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        let now = match *used {
            Some(u) => u.saturating_add_signed(delta),
            None => self.copies().iter().map(|c| c.1).sum(),
        };
        *used = Some(now);
        if now <= self.max_bytes {
            return;
        }
        let mut copies = self.copies();
        copies.sort_by_key(|c| c.2);
        let mut left: u64 = copies.iter().map(|c| c.1).sum();
        for (path, len, _) in copies {
            if left <= self.max_bytes / 5 * 4 {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                left -= len;
            }
        }
        *used = Some(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        crate::digest::Algorithm::Blake3.digest(&[n])
    }

    #[test]
    fn copies_are_served_dropped_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlobCache::new(dir.path().join("c"), 1000);
        assert!(c.get(&d(1), 100).is_none());
        let mut f = c.insert(&d(1), &mut &[7u8; 100][..], 100).unwrap().unwrap();
        let mut back = Vec::new();
        f.read_to_end(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 100]);
        assert!(c.get(&d(1), 100).is_some());
        // Another length than the metadata says: no copy.
        assert!(c.get(&d(1), 99).is_none());
        assert!(c.get(&d(1), 100).is_none(), "the wrong-sized copy was dropped");
        // Fewer bytes than announced: nothing kept.
        assert!(c.insert(&d(2), &mut &[1u8; 10][..], 100).unwrap().is_none());
        assert!(c.get(&d(2), 100).is_none());
        // Past the limit the least recently used go.
        for n in 10..25u8 {
            c.insert(&d(n), &mut &[n; 100][..], 100).unwrap().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert!(c.get(&d(10), 100).is_some(), "the one in use stays");
        }
        let kept: u64 = c.copies().iter().map(|c| c.1).sum();
        assert!(kept <= 1000, "{kept}");
        assert!(c.get(&d(10), 100).is_some());
        assert!(c.get(&d(11), 100).is_none(), "the least recently used went first");
        c.forget(&d(10));
        assert!(c.get(&d(10), 100).is_none());
    }
}
