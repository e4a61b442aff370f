//! The stat cache: remembers the digest of an input file together with its size, mtime, ctime,
//! inode and device, so that an unchanged multi-GB input is not hashed again. Like git's index,
//! a file whose mtime is too close to the moment it was recorded ("racily clean") is hashed
//! again, because a write within the same timestamp tick would not have changed its stat.
//! It lives in its own database (`stat.db`), so plain cache hits never open it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{OptionalExtension, params};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};

/// Files modified less than this before they were recorded are not trusted from the cache.
/// Two seconds covers filesystems with coarse timestamps (FAT: 2 s; ext4: a clock tick).
const RACY_NS: i64 = 2_000_000_000;

#[derive(Debug)]
pub(crate) struct StatCache {
    path: PathBuf,
    conn: Mutex<crate::store::sqlite::Db>,
}

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    size: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: i64,
    dev: i64,
}

impl Stamp {
    pub(crate) fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: m.len() as i64,
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino() as i64,
            dev: m.dev() as i64,
        }
    }
}

impl StatCache {
    pub(crate) fn open(path: &Path) -> Result<StatCache> {
        let conn = crate::store::sqlite::open_database(path, 1, |c| {
            c.execute_batch(
                "BEGIN IMMEDIATE;
                 CREATE TABLE IF NOT EXISTS stat(
                    path TEXT NOT NULL,
                    algorithm TEXT NOT NULL,
                    size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL,
                    ctime_ns INTEGER NOT NULL,
                    ino INTEGER NOT NULL,
                    dev INTEGER NOT NULL,
                    digest TEXT NOT NULL,
                    recorded_ns INTEGER NOT NULL,
                    PRIMARY KEY(path, algorithm)
                 ) WITHOUT ROWID;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
        })?;
        Ok(StatCache { path: path.to_owned(), conn: Mutex::new(conn) })
    }

    /// The recorded digest of `path` if its stamp is unchanged and it was not racily clean.
    pub(crate) fn get(&self, path: &str, alg: Algorithm, stamp: &Stamp) -> Result<Option<Digest>> {
        let _busy = crate::fork::busy();
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let row = conn
            .prepare_cached(
                "SELECT size, mtime_ns, ctime_ns, ino, dev, digest, recorded_ns FROM stat
                 WHERE path = ?1 AND algorithm = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![path, alg.name()], |r| {
                    Ok((
                        Stamp {
                            size: r.get(0)?,
                            mtime_ns: r.get(1)?,
                            ctime_ns: r.get(2)?,
                            ino: r.get(3)?,
                            dev: r.get(4)?,
                        },
                        r.get::<_, String>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .optional()
            })
            .map_err(|source| Error::Db { path: self.path.clone(), source })?;
        Ok(match row {
            Some((recorded, digest, at))
                if recorded == *stamp && stamp.mtime_ns.saturating_add(RACY_NS) < at =>
            {
                Digest::from_hex(alg, &digest).ok()
            }
            _ => None,
        })
    }

    /// Records freshly computed digests, all in one transaction.
    pub(crate) fn put(&self, alg: Algorithm, rows: &[(String, Stamp, Digest)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let _busy = crate::fork::busy();
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx =
            conn.transaction().map_err(|source| Error::Db { path: self.path.clone(), source })?;
        for (path, s, d) in rows {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO stat(path, algorithm, size, mtime_ns, ctime_ns, ino, dev,
                    digest, recorded_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    path,
                    alg.name(),
                    s.size,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.ino,
                    s.dev,
                    d.hex(),
                    now
                ])
            })
            .map_err(|source| Error::Db { path: self.path.clone(), source })?;
        }
        tx.commit().map_err(|source| Error::Db { path: self.path.clone(), source })?;
        crate::store::sqlite::truncate_wal(&conn);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_files_hit_and_racy_or_changed_ones_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatCache::open(&dir.path().join("stat.db")).unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        let alg = Algorithm::Blake3;
        let stamp = Stamp::of(&std::fs::metadata(&f).unwrap());
        let d = alg.digest(b"abc");
        cache.put(alg, &[("f".into(), stamp, d)]).unwrap();
        // Just written: racily clean, so not trusted.
        assert_eq!(cache.get("f", alg, &stamp).unwrap(), None);
        // Pretend it was written long before it was recorded.
        let mut old = stamp;
        old.mtime_ns -= 10 * RACY_NS;
        cache.put(alg, &[("f".into(), old, d)]).unwrap();
        assert_eq!(cache.get("f", alg, &old).unwrap(), Some(d));
        // Any change of the stamp misses, and so does another algorithm.
        for change in [
            Stamp { size: old.size + 1, ..old },
            Stamp { mtime_ns: old.mtime_ns + 1, ..old },
            Stamp { ctime_ns: old.ctime_ns + 1, ..old },
            Stamp { ino: old.ino + 1, ..old },
        ] {
            assert_eq!(cache.get("f", alg, &change).unwrap(), None);
        }
        assert_eq!(cache.get("f", Algorithm::Sha256, &old).unwrap(), None);
    }
}
