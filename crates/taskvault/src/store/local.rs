//! Blobs as files on the local disk: `blobs/<algorithm>/<2 hex>/<64 hex>`, placed by rename from
//! a staging directory on the same filesystem and made durable with fsyncs.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{IoContext, Result};
use crate::store::{BlobReader, BlobStore};

#[derive(Debug)]
pub struct LocalBlobs {
    root: PathBuf,
    quarantine: PathBuf,
}

impl LocalBlobs {
    /// `root` holds the blob tree; `quarantine` receives blobs that failed verification.
    pub fn new(root: PathBuf, quarantine: PathBuf) -> LocalBlobs {
        LocalBlobs { root, quarantine }
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join(d.algorithm().name()).join(&hex[..2]).join(hex)
    }
}

/// Opens a file of the vault for reading, without blocking and without following a symlink:
/// `Ok(Err(why))` when it is not a regular file (a FIFO, a device or a link planted there),
/// which is never read.
pub(crate) fn open_regular(
    p: &Path,
) -> std::io::Result<std::result::Result<std::fs::File, String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(p);
    let f = match f {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err("is a symbolic link, not a regular file".into()));
        }
        Err(e) => return Err(e),
    };
    let t = f.metadata()?.file_type();
    if t.is_file() {
        return Ok(Ok(f));
    }
    Ok(Err(format!("is {}, not a regular file", crate::tree::describe(t))))
}

/// Makes a directory entry (a rename or create) durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

impl BlobStore for LocalBlobs {
    fn put(&self, digest: &Digest, staged: &Path) -> Result<()> {
        let dest = self.path(digest);
        let dir = dest.parent().expect("blob paths have a parent");
        match std::fs::rename(staged, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound && !dir.exists() => {
                std::fs::create_dir_all(dir).at(dir)?;
                // The new fan-out directory (and perhaps the algorithm directory) must be durable.
                let alg_dir = dir.parent().expect("fan-out dirs have a parent");
                fsync_dir(alg_dir)?;
                fsync_dir(alg_dir.parent().expect("algorithm dirs have a parent"))?;
                std::fs::rename(staged, &dest).at(&dest)?;
            }
            Err(e) => return Err(e).at(&dest),
        }
        fsync_dir(dir)
    }

    fn open(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let p = self.path(digest);
        match open_regular(&p) {
            Ok(Ok(f)) => Ok(Some(BlobReader::File(f))),
            Ok(Err(why)) => Ok(Some(BlobReader::Unusable(why))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(p),
        }
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(p),
        }
    }

    fn quarantine(&self, digest: &Digest) -> Result<()> {
        let p = self.path(digest);
        std::fs::create_dir_all(&self.quarantine).at(&self.quarantine)?;
        let dest = self.quarantine.join(format!("{}-{}", digest.hex(), crate::clock::now_ms()));
        match std::fs::rename(&p, &dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(p),
        }
    }

    fn link(&self, digest: &Digest, dest: &Path) -> Result<bool> {
        let p = self.path(digest);
        // Only a regular file is linked; anything else is left to the copy, which refuses it.
        if !std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file()) {
            return Ok(false);
        }
        match std::fs::hard_link(&p, dest) {
            Ok(()) => Ok(true),
            // Another filesystem, or one without hard links: copy instead.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK)
                ) =>
            {
                Ok(false)
            }
            Err(e) if e.kind() == ErrorKind::NotFound && !p.exists() => Ok(false),
            Err(e) => Err(e).at(dest),
        }
    }

    fn visit(
        &self,
        f: &mut dyn FnMut(Digest, Option<std::time::SystemTime>) -> Result<()>,
    ) -> Result<()> {
        for alg in [Algorithm::Blake3, Algorithm::Sha256] {
            let top = self.root.join(alg.name());
            let fans = match std::fs::read_dir(&top) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at(top),
            };
            for fan in fans {
                let fan = fan.at(&top)?.path();
                for item in std::fs::read_dir(&fan).at(&fan)? {
                    let item = item.at(&fan)?;
                    let name = item.file_name();
                    if let Some(d) = name.to_str().and_then(|n| Digest::from_hex(alg, n).ok()) {
                        f(d, item.metadata().and_then(|m| m.modified()).ok())?;
                    }
                }
            }
        }
        Ok(())
    }
}
