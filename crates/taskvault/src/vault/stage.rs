//! Staging outputs for a save: each file is hashed and, when it pays, compressed into a staging
//! file (or kept in memory when small) before the metadata commit moves it into the blob store.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::{Output, Vault, unique_name};
use crate::digest::{Algorithm, Digest, hash_file};
use crate::entry::{BlobInfo, Codec, OutputKind};
use crate::error::{Error, IoContext, Result};
use crate::store::StagedBlob;
use crate::tree::{NodeKind, Walked, walk};

/// zstd level: fast to compress (hundreds of MB/s) with most of the gain.
const ZSTD_LEVEL: i32 = 3;
/// Bytes sampled to decide whether compressing a large file pays.
const SAMPLE: usize = 128 * 1024;
/// Compression is kept only when it saves at least this fraction.
const MIN_SAVING: f64 = 0.10;

/// Checks what is being saved and lists its files (sorted) without reading them.
pub(super) fn inspect(output: Output<'_>) -> Result<(OutputKind, Vec<Walked>)> {
    let path = match output {
        Output::Bytes(_) | Output::Received { .. } => return Ok((OutputKind::Bytes, Vec::new())),
        Output::Tree { root, parts } => return Ok((OutputKind::Dir, inspect_parts(root, parts)?)),
        Output::Path(p) => p,
    };
    let bad =
        |message: &str| Error::BadDestination { path: path.to_owned(), message: message.into() };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad("output does not exist"),
        _ => Error::IoAt { path: path.to_owned(), source: e },
    })?;
    if meta.is_dir() {
        Ok((OutputKind::Dir, walk(path)?))
    } else if meta.is_file() {
        use std::os::unix::fs::PermissionsExt;
        Ok((
            OutputKind::File,
            vec![Walked {
                rel: String::new(),
                abs: path.to_owned(),
                kind: NodeKind::File,
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
                target: None,
            }],
        ))
    } else {
        Err(bad("output is not a regular file or directory"))
    }
}

/// Lists declared parts under `root` and the directories leading to them, sorted. A symlink part
/// is recorded as a symlink, never followed.
fn inspect_parts(root: &Path, parts: &[String]) -> Result<Vec<Walked>> {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    let mut nodes: BTreeMap<String, Walked> = BTreeMap::new();
    let node = |rel: &str, abs: PathBuf, meta: &std::fs::Metadata| -> Result<Walked> {
        let (kind, target) = crate::tree::classify(&abs, meta)?;
        Ok(Walked {
            rel: rel.to_owned(),
            size: if kind == NodeKind::File { meta.len() } else { 0 },
            abs,
            kind,
            mode: meta.permissions().mode() & 0o7777,
            target,
        })
    };
    for part in parts {
        if !crate::tree::is_safe_relative(part) {
            return Err(Error::BadInput {
                path: part.into(),
                message: "outputs must be relative paths inside the working directory, without .."
                    .into(),
            });
        }
        let abs = root.join(part);
        let meta = std::fs::symlink_metadata(&abs).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BadInput {
                path: abs.clone(),
                message: "declared output was not produced".into(),
            },
            _ => Error::IoAt { path: abs.clone(), source: e },
        })?;
        let mut prefix = String::new();
        for comp in part.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, p)| p) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(comp);
            if !nodes.contains_key(&prefix) {
                let p = root.join(&prefix);
                let m = std::fs::metadata(&p).at(&p)?;
                nodes.insert(prefix.clone(), node(&prefix, p, &m)?);
            }
        }
        let top = node(part, abs.clone(), &meta)?;
        let is_dir = top.kind == NodeKind::Dir;
        nodes.insert(part.clone(), top);
        if is_dir {
            for w in walk(&abs)? {
                let rel = format!("{part}/{}", w.rel);
                nodes.insert(rel.clone(), Walked { rel, ..w });
            }
        }
    }
    Ok(nodes.into_values().collect())
}

/// Blobs staged for one save. Staging files still present on drop (blobs that turned out to be
/// stored already, or a failed save) are deleted.
pub(crate) struct Staging<'v> {
    vault: &'v Vault,
    blobs: Vec<StagedBlob>,
    /// Reference blobs already stored instead of copying them again.
    reuse_stored: bool,
}

impl<'v> Staging<'v> {
    pub(crate) fn new(vault: &'v Vault) -> Self {
        Staging { vault, blobs: Vec::new(), reuse_stored: false }
    }

    /// A staging that first hashes each large file and, when a blob with that digest is already
    /// stored, references it without copying. The digest of a file read while it changes can
    /// only match a stored blob if it equals content that was stored (and verified) before.
    pub(crate) fn reusing_stored(vault: &'v Vault) -> Self {
        Staging { vault, blobs: Vec::new(), reuse_stored: true }
    }

    pub(crate) fn blobs(&self) -> &[StagedBlob] {
        &self.blobs
    }

    /// The staged blobs, kept: their files are the caller's to place or delete.
    pub(crate) fn into_blobs(mut self) -> Vec<StagedBlob> {
        std::mem::take(&mut self.blobs)
    }

    /// The staged blobs, if all of them live in the database (no staging files to keep).
    pub(crate) fn take_if_inline(&mut self) -> Option<Vec<StagedBlob>> {
        if self.blobs.iter().all(|b| b.staged.is_none() && b.info.inline.is_some()) {
            Some(std::mem::take(&mut self.blobs))
        } else {
            None
        }
    }

    fn alg(&self) -> Algorithm {
        self.vault.settings.algorithm
    }

    fn push(&mut self, blob: StagedBlob) -> &StagedBlob {
        if let Some(i) = self.blobs.iter().position(|b| b.info.digest == blob.info.digest) {
            if let Some(p) = &blob.staged {
                let _ = std::fs::remove_file(p);
            }
            return &self.blobs[i];
        }
        self.blobs.push(blob);
        self.blobs.last().expect("just pushed")
    }

    pub(super) fn bytes(&mut self, data: &[u8]) -> Result<&StagedBlob> {
        let digest = self.alg().digest(data);
        if data.len() as u64 <= self.vault.settings.inline_max_bytes {
            let blob = inline_blob(digest, data);
            return Ok(self.push(blob));
        }
        let blob = self.stage_stream(
            &mut std::io::Cursor::new(data),
            data.len() as u64,
            Path::new("<bytes>"),
        )?;
        Ok(self.push(blob))
    }

    pub(super) fn file(&mut self, path: &Path) -> Result<&StagedBlob> {
        let mut src = std::fs::File::open(path).at(path)?;
        let len = src.metadata().at(path)?.len();
        if len <= self.vault.settings.inline_max_bytes {
            let mut data = Vec::with_capacity(len as usize);
            src.read_to_end(&mut data).at(path)?;
            let blob = inline_blob(self.alg().digest(&data), &data);
            return Ok(self.push(blob));
        }
        if self.reuse_stored {
            let (digest, _) = hash_file(self.alg(), path)?;
            if let Some(info) = self.vault.meta().blob(&digest)? {
                return Ok(self.push(StagedBlob { info, staged: None, unsynced: false }));
            }
        }
        let blob = self.stage_stream(&mut src, len, path)?;
        Ok(self.push(blob))
    }

    /// References a blob stored already (its row as read).
    pub(crate) fn stored(&mut self, info: BlobInfo) {
        self.push(StagedBlob { info, staged: None, unsynced: false });
    }

    /// Stages bytes whose digest is already known; fails if they do not make it.
    pub(crate) fn bytes_expecting(&mut self, data: &[u8], digest: Digest) -> Result<()> {
        let got = self.bytes(data)?.info.digest;
        if got != digest {
            return Err(Error::Corrupt {
                digest: digest.to_string(),
                message: format!("the bytes given make {got}"),
            });
        }
        Ok(())
    }

    /// Stages a file whose digest is already known (an import); fails if it changed meanwhile.
    pub(crate) fn file_expecting(&mut self, path: &Path, digest: Digest) -> Result<&StagedBlob> {
        let got = self.file(path)?.info.digest;
        if got != digest {
            return Err(Error::Corrupt {
                digest: digest.to_string(),
                message: format!("{} changed while being staged", path.display()),
            });
        }
        Ok(self.staged(&digest))
    }

    /// The blob staged as `digest` (it must be).
    fn staged(&self, digest: &Digest) -> &StagedBlob {
        self.blobs.iter().find(|b| b.info.digest == *digest).expect("staged just now")
    }

    /// Stages a file of the vault's own temporary directory whose bytes the caller has just
    /// hashed to `digest` (a verified download): small ones go inline, large ones that would
    /// not compress are taken as they are (synced, then moved in by the commit, never
    /// copied); compressible ones are staged as any file is (re-hashed on the way).
    pub(crate) fn verified_file(&mut self, path: &Path, digest: Digest) -> Result<&StagedBlob> {
        let mut src = std::fs::File::open(path).at(path)?;
        let len = src.metadata().at(path)?.len();
        if len <= self.vault.settings.inline_max_bytes || digest.algorithm() != self.alg() {
            return self.file_expecting(path, digest);
        }
        if let Some(info) = self.vault.meta().blob(&digest)?.filter(|i| i.inline.is_none()) {
            // Stored already (a client uploading the same artifact again): the commit will
            // most likely find the blob's row and leave this copy unused, so it is not synced
            // now. Should the blob be evicted meanwhile, the commit syncs it as it moves it in.
            return Ok(self.push(StagedBlob {
                info: BlobInfo { digest, size: len, stored_size: len, codec: Codec::Raw, ..info },
                staged: Some(path.to_owned()),
                unsynced: true,
            }));
        }
        let mut sample = vec![0u8; SAMPLE.min(len as usize)];
        src.read_exact(&mut sample).at(path)?;
        let compressed = zstd::bulk::compress(&sample, ZSTD_LEVEL)
            .map_err(|e| Error::IoAt { path: path.to_owned(), source: e })?;
        if (compressed.len() as f64) < sample.len() as f64 * (1.0 - MIN_SAVING) {
            return self.file_expecting(path, digest);
        }
        src.sync_all().at(path)?;
        Ok(self.push(StagedBlob {
            info: BlobInfo { digest, size: len, stored_size: len, codec: Codec::Raw, inline: None },
            staged: Some(path.to_owned()),
            unsynced: false,
        }))
    }

    /// Stages a large stream: compressed if a sample compresses well, else copied raw (for a
    /// file, by the kernel) and hashed from the staging file, so the digest always describes
    /// exactly the bytes stored.
    fn stage_stream<R: Read + Seek + ?Sized>(
        &mut self,
        src: &mut R,
        len: u64,
        origin: &Path,
    ) -> Result<StagedBlob> {
        let mut sample = vec![0u8; SAMPLE.min(len as usize)];
        src.read_exact(&mut sample).at(origin)?;
        src.rewind().at(origin)?;
        let compressed = zstd::bulk::compress(&sample, ZSTD_LEVEL)
            .map_err(|e| Error::IoAt { path: origin.to_owned(), source: e })?;
        let pays = (compressed.len() as f64) < sample.len() as f64 * (1.0 - MIN_SAVING);

        let tmp = self.vault.tmp_dir().join(unique_name("stage-"));
        let guard = TmpFile(Some(tmp.clone()));
        let mut out = std::fs::File::create(&tmp).at(&tmp)?;
        let (digest, size, codec) = if pays {
            let mut hasher = self.alg().hasher();
            let mut enc = zstd::stream::Encoder::new(&mut out, ZSTD_LEVEL).at(&tmp)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).at(origin),
                };
                hasher.update(&buf[..n]);
                enc.write_all(&buf[..n]).at(&tmp)?;
                total += n as u64;
                self.vault.report_progress(total);
            }
            enc.finish().at(&tmp)?;
            (hasher.finish(), total, Codec::Zstd)
        } else {
            let copied = std::io::copy(src, &mut out).at(&tmp)?;
            self.vault.report_progress(copied);
            let (digest, hashed) = hash_file(self.alg(), &tmp)?;
            debug_assert_eq!(copied, hashed);
            (digest, hashed, Codec::Raw)
        };
        out.sync_all().at(&tmp)?;
        let stored_size = out.metadata().at(&tmp)?.len();
        Ok(StagedBlob {
            info: BlobInfo { digest, size, stored_size, codec, inline: None },
            staged: guard.keep(),
            unsynced: false,
        })
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        for b in &self.blobs {
            if let Some(p) = &b.staged {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Deletes a temporary file unless kept.
struct TmpFile(Option<PathBuf>);

impl TmpFile {
    fn keep(mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Inline blobs shorter than this are stored raw without trying zstd.
const INLINE_COMPRESS_MIN: usize = 256;

thread_local! {
    /// One compression context per thread: creating one costs more than compressing a small blob.
    static INLINE_ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress_small(data: &[u8]) -> Option<Vec<u8>> {
    INLINE_ZSTD.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        c.as_mut()?.compress(data).ok()
    })
}

fn inline_blob(digest: Digest, data: &[u8]) -> StagedBlob {
    let compressed = if data.len() >= INLINE_COMPRESS_MIN { compress_small(data) } else { None };
    let (codec, stored) = match compressed {
        Some(c) if (c.len() as f64) < data.len() as f64 * (1.0 - MIN_SAVING) => (Codec::Zstd, c),
        _ => (Codec::Raw, data.to_vec()),
    };
    StagedBlob {
        info: BlobInfo {
            digest,
            size: data.len() as u64,
            stored_size: stored.len() as u64,
            codec,
            inline: Some(stored),
        },
        staged: None,
        unsynced: false,
    }
}
