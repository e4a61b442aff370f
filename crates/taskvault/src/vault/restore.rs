//! Serving outputs: every blob is verified against its digest while it is written to a temporary
//! file beside the destination, which is renamed into place only when the whole output checked
//! out. A blob that fails is quarantined and the entry becomes a miss.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{Vault, unique_name};
use crate::digest::Digest;
use crate::entry::{BlobInfo, Codec, Entry, OutputKind};
use crate::error::{Error, IoContext, Result};
use crate::store::BlobReader;
use crate::tree::{Node, NodeKind, is_safe_relative};

/// Raw file blobs at least this large are copied by the kernel and then hashed, instead of being
/// streamed through a buffer.
const KERNEL_COPY_MIN: u64 = 1 << 20;

/// The mode bits a restore sets: permissions only. Setuid, setgid and sticky bits are recorded
/// but never restored (a restored file must not gain privileges).
const PERMISSION_BITS: u32 = 0o777;

/// Where verified bytes go.
pub(crate) enum Sink<'a> {
    File(&'a mut File, &'a Path),
    Buf(&'a mut Vec<u8>),
    /// Memory the caller owns, exactly the blob's size: stored blobs are decoded straight into
    /// it and then hashed with all cores, instead of going through a buffer.
    Memory(&'a mut [u8]),
    /// Verification only.
    Discard,
}

impl Sink<'_> {
    fn write_all(&mut self, b: &[u8]) -> Result<()> {
        match self {
            Sink::File(f, p) => f.write_all(b).at(*p),
            Sink::Buf(v) => {
                v.extend_from_slice(b);
                Ok(())
            }
            // Only whole inline blobs come here, already checked against the blob's size.
            Sink::Memory(m) => {
                m.copy_from_slice(b);
                Ok(())
            }
            Sink::Discard => Ok(()),
        }
    }
}

/// A verification failure (the blob is bad), as opposed to an I/O error at the destination.
pub(crate) type Verified = std::result::Result<(), String>;

impl Vault {
    /// Writes the verified bytes of blob `digest` (expected `size` bytes) to `sink`, reading
    /// its row unless the caller has it (`known`).
    pub(crate) fn read_blob(
        &self,
        digest: &Digest,
        known: Option<BlobInfo>,
        size: u64,
        sink: &mut Sink<'_>,
    ) -> Result<Verified> {
        let row = match known {
            Some(row) => Some(row),
            None => self.blob_info(digest)?,
        };
        self.read_blob_row(digest, row, size, sink)
    }

    /// [`Vault::read_blob`] with the blob's row already read (`None`: there is none).
    pub(crate) fn read_blob_row(
        &self,
        digest: &Digest,
        row: Option<BlobInfo>,
        size: u64,
        sink: &mut Sink<'_>,
    ) -> Result<Verified> {
        let Some(info) = row else {
            return Ok(Err("no metadata row for the blob".into()));
        };
        if info.size != size {
            return Ok(Err(format!("blob is {} bytes, the entry expects {size}", info.size)));
        }
        if let Some(data) = &info.inline {
            let plain = match verify_inline(&info, data) {
                Ok(p) => p,
                Err(msg) => return Ok(Err(msg)),
            };
            sink.write_all(plain.as_deref().unwrap_or(data))?;
            return Ok(Ok(()));
        }
        let reader = match self.blob_store().open_sized(digest, info.stored_size)? {
            Some(BlobReader::Unusable(why)) => return Ok(Err(format!("blob file {why}"))),
            Some(r) => r,
            None => return Ok(Err("blob file is missing".into())),
        };
        if let BlobReader::File(f) = &reader {
            let len = f.metadata()?.len();
            if len != info.stored_size {
                return Ok(Err(format!(
                    "blob file is {len} bytes, expected {} (truncated?)",
                    info.stored_size
                )));
            }
        }
        match (reader, info.codec) {
            (BlobReader::File(f), _) if matches!(sink, Sink::Memory(_)) => {
                self.read_stream(Box::new(f), &info, sink)
            }
            (BlobReader::File(f), Codec::Raw) => self.read_raw_file(f, &info, sink),
            (BlobReader::File(f), Codec::Zstd) => self.read_stream(Box::new(f), &info, sink),
            (BlobReader::Stream(s), _) => self.read_stream(s, &info, sink),
            (BlobReader::Unusable(why), _) => Ok(Err(why)),
        }
    }

    /// A raw blob file (its length checked): large ones copied by the kernel into a file sink.
    fn read_raw_file(&self, mut f: File, info: &BlobInfo, sink: &mut Sink<'_>) -> Result<Verified> {
        let len = info.stored_size;
        match sink {
            Sink::File(out, out_path) if len >= KERNEL_COPY_MIN => {
                // The kernel copies (copy_file_range, a reflink where the filesystem can), then
                // the copy itself is hashed with all cores from the page cache: what is verified
                // is exactly what will be renamed into place. (Hashing the source while copying
                // halves the copy's speed: the two compete for the same pages.)
                let copied = std::io::copy(&mut f, *out).at(*out_path)?;
                self.report_progress(copied);
                let (digest, n) = crate::digest::hash_file(info.digest.algorithm(), out_path)?;
                Ok(check(info, &digest, n).and_then(|()| {
                    if copied == n { Ok(()) } else { Err("blob changed while being read".into()) }
                }))
            }
            _ => self.read_stream(Box::new(f), info, sink),
        }
    }

    fn read_stream(
        &self,
        src: Box<dyn Read + Send + '_>,
        info: &BlobInfo,
        sink: &mut Sink<'_>,
    ) -> Result<Verified> {
        let mut src: Box<dyn Read + Send> = match info.codec {
            Codec::Raw => src,
            Codec::Zstd => match zstd::stream::Decoder::new(src) {
                Ok(d) => Box::new(d),
                Err(e) => return Ok(Err(format!("zstd: {e}"))),
            },
        };
        if let Sink::Memory(dest) = sink {
            return Ok(self.fill(&mut *src, info, dest));
        }
        let mut hasher = info.digest.algorithm().hasher();
        // As large as the blob, up to 1 MiB: a server answering many small GETs would otherwise
        // zero (and fault in) a whole mebibyte for each.
        let len = usize::try_from(info.size).unwrap_or(usize::MAX).clamp(8 << 10, 1 << 20);
        let mut buf = vec![0u8; len];
        let mut total = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A decoding error or a short read is the blob's fault, not the caller's.
                Err(e) => return Ok(Err(format!("reading blob: {e}"))),
            };
            total += n as u64;
            if total > info.size {
                return Ok(Err(format!("blob holds more than the {} bytes recorded", info.size)));
            }
            hasher.update(&buf[..n]);
            sink.write_all(&buf[..n])?;
            self.report_progress(total);
        }
        Ok(check(info, &hasher.finish(), total))
    }

    /// Decodes all of `src` straight into `dest` (the blob's size), then hashes `dest` with all
    /// cores: one pass over the caller's memory, instead of a buffer and a copy.
    fn fill(&self, src: &mut dyn Read, info: &BlobInfo, dest: &mut [u8]) -> Verified {
        let mut filled = 0;
        while filled < dest.len() {
            match src.read(&mut dest[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading blob: {e}")),
            }
            self.report_progress(filled as u64);
        }
        if filled == dest.len() {
            let mut probe = [0u8; 1];
            if matches!(src.read(&mut probe), Ok(n) if n > 0) {
                return Err(format!("blob holds more than the {} bytes recorded", info.size));
            }
        }
        check(info, &info.digest.algorithm().digest(&dest[..filled]), filled as u64)
    }

    /// Restores an entry's output to `dest`; `None` if a blob failed verification (it has been
    /// quarantined and the entry retired; nothing is left at `dest`).
    pub fn restore(&self, e: &Entry, dest: &Path) -> Result<Option<()>> {
        match e.output_kind {
            OutputKind::File | OutputKind::Bytes => {
                let node =
                    e.outputs.first().ok_or_else(|| bad_dest(dest, "entry has no output"))?;
                let mode = if e.output_kind == OutputKind::Bytes { Some(0o644) } else { None };
                self.restore_node(e, node, mode, dest, false)
            }
            OutputKind::Dir => self.restore_tree(e, &e.outputs, dest, false),
        }
    }

    /// Restores one part of a directory entry (a file, symlink or directory at relative path
    /// `part`, such as one declared output of a wrapped command) to `dest`.
    pub fn restore_part(&self, e: &Entry, part: &str, dest: &Path) -> Result<Option<()>> {
        self.restore_part_with(e, part, dest, false)
    }

    /// Like [`Vault::restore_part`], but files whose blobs are stored raw on the same filesystem
    /// become hard links to the vault's copy, made read-only (their inode is shared with the
    /// vault). Verified like copies; anything that cannot be linked is copied.
    pub fn restore_part_linked(&self, e: &Entry, part: &str, dest: &Path) -> Result<Option<()>> {
        self.restore_part_with(e, part, dest, true)
    }

    fn restore_part_with(
        &self,
        e: &Entry,
        part: &str,
        dest: &Path,
        link: bool,
    ) -> Result<Option<()>> {
        let node = e
            .outputs
            .iter()
            .find(|n| n.path == part)
            .ok_or_else(|| Error::NotFound(format!("{part} in entry {}", e.id)))?;
        match node.kind {
            NodeKind::Dir => {
                let prefix = format!("{part}/");
                let nodes: Vec<Node> = e
                    .outputs
                    .iter()
                    .filter_map(|n| {
                        let rel = n.path.strip_prefix(&prefix)?;
                        Some(Node { path: rel.to_owned(), ..n.clone() })
                    })
                    .collect();
                self.restore_tree(e, &nodes, dest, link)
            }
            _ => self.restore_node(e, node, None, dest, link),
        }
    }

    /// Restores a file or symlink node to `dest`.
    fn restore_node(
        &self,
        e: &Entry,
        node: &Node,
        mode: Option<u32>,
        dest: &Path,
        link: bool,
    ) -> Result<Option<()>> {
        let want = if node.kind == NodeKind::Symlink { Want::Symlink } else { Want::File };
        let (tmp, existing) = self.prepare_dest(dest, want)?;
        if node.kind == NodeKind::Symlink {
            let target = node.target.as_deref().unwrap_or_default();
            std::os::unix::fs::symlink(target, &tmp).at(&tmp)?;
            replace(&tmp, dest, existing.is_some())?;
            return Ok(Some(()));
        }
        let digest =
            node.digest.ok_or_else(|| Error::Other(format!("entry {} has no output", e.id)))?;
        let guard = Cleanup(Some(tmp.clone()));
        let known = embedded_for(e, node);
        let built =
            self.materialize(&digest, node, mode, &tmp, link, known)?.map_err(|m| (digest, m));
        self.put_in_place(guard, built, dest, existing.is_some())
    }

    /// Swaps a built temporary output into place, or, if a blob failed verification, deletes it
    /// and handles the corrupt blob (the caller sees a miss).
    fn put_in_place(
        &self,
        tmp: Cleanup,
        built: std::result::Result<(), (Digest, String)>,
        dest: &Path,
        existed: bool,
    ) -> Result<Option<()>> {
        if let Err((digest, msg)) = built {
            drop(tmp);
            self.corrupt(&digest, &msg, "get")?;
            return Ok(None);
        }
        let path = tmp.0.clone().expect("a cleanup guard holds its path");
        replace(&path, dest, existed)?;
        std::mem::forget(tmp);
        Ok(Some(()))
    }

    /// Builds `nodes` (relative to `dest`) in a temporary sibling and swaps it in.
    fn restore_tree(
        &self,
        e: &Entry,
        nodes: &[Node],
        dest: &Path,
        link: bool,
    ) -> Result<Option<()>> {
        let (tmp, existing) = self.prepare_dest(dest, Want::Dir)?;
        validate_tree(nodes).map_err(|m| Error::Other(format!("entry {}: {m}", e.id)))?;
        let guard = Cleanup(Some(tmp.clone()));
        std::fs::create_dir(&tmp).at(&tmp)?;
        let built = self.build_tree(nodes, &tmp, link)?;
        self.put_in_place(guard, built, dest, existing.is_some())
    }

    /// Materializes validated `nodes` under `root` (which exists and is empty).
    fn build_tree(
        &self,
        nodes: &[Node],
        root: &Path,
        link: bool,
    ) -> Result<std::result::Result<(), (Digest, String)>> {
        let mut dirs = Vec::new();
        for n in nodes {
            let p = root.join(&n.path);
            match n.kind {
                NodeKind::Dir => {
                    std::fs::create_dir(&p).at(&p)?;
                    dirs.push((p, n.mode));
                }
                NodeKind::Symlink => {
                    std::os::unix::fs::symlink(n.target.as_deref().unwrap_or_default(), &p)
                        .at(&p)?
                }
                NodeKind::File => {
                    let digest =
                        n.digest.ok_or_else(|| Error::Other("file node without digest".into()))?;
                    if let Err(msg) = self.materialize(&digest, n, None, &p, link, None)? {
                        return Ok(Err((digest, msg)));
                    }
                }
            }
        }
        // Directory modes last, deepest first, so read-only directories could still be filled.
        for (p, mode) in dirs.into_iter().rev() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & PERMISSION_BITS))
                .at(&p)?;
        }
        Ok(Ok(()))
    }

    /// Writes a file node's verified content at `path` (which does not exist yet): a hard link to
    /// the vault's copy when `link` is set and possible, else a copy; then its mode. `known` is
    /// the blob's row if the caller has it (the entry's own, see [`Entry::embedded`]).
    fn materialize(
        &self,
        digest: &Digest,
        node: &Node,
        mode: Option<u32>,
        path: &Path,
        link: bool,
        known: Option<BlobInfo>,
    ) -> Result<Verified> {
        let mode = mode.unwrap_or(node.mode) & PERMISSION_BITS;
        if link
            && known.is_none()
            && self.linkable(digest)?
            && self.blob_store().link(digest, path)?
        {
            // The link's inode is the vault's: verify it, and keep it read-only so that writing
            // to the restored file cannot silently change what the vault serves.
            let (got, n) = crate::digest::hash_file(digest.algorithm(), path)?;
            if n != node.size || got != *digest {
                std::fs::remove_file(path).at(path)?;
                return Ok(Err(format!("linked blob hashes to {got}, expected {digest}")));
            }
            let ro = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(ro)).at(path)?;
            return Ok(Ok(()));
        }
        let mut f = File::create(path).at(path)?;
        if let Err(msg) = self.read_blob(digest, known, node.size, &mut Sink::File(&mut f, path))? {
            return Ok(Err(msg));
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode)).at(path)?;
        Ok(Ok(()))
    }

    /// Whether a blob is stored as raw bytes in its own file (so a hard link yields the content).
    fn linkable(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blob_info(digest)?.is_some_and(|b| b.inline.is_none() && b.codec == Codec::Raw))
    }

    /// The verified bytes of a file or bytes entry; `None` if its blob failed verification.
    pub(crate) fn read_bytes(&self, e: &Entry) -> Result<Option<Vec<u8>>> {
        self.read_bytes_with(e, Vec::new())
    }

    /// Like [`Vault::read_bytes`], into `dest`, which must be exactly the output's size. What
    /// `dest` holds after `None` (the blob failed verification, was quarantined and its entries
    /// retired) must not be used.
    pub(crate) fn read_bytes_into(&self, e: &Entry, dest: &mut [u8]) -> Result<Option<()>> {
        let node = bytes_node(e)?;
        if node.size != dest.len() as u64 {
            return Err(Error::Other(format!(
                "entry {} holds {} bytes, not {}",
                e.id,
                node.size,
                dest.len()
            )));
        }
        self.node_to(node, embedded_for(e, node), &mut Sink::Memory(dest))
    }

    /// The verified bytes of a file node; `None` if its blob failed verification (it has been
    /// quarantined and its entries retired).
    pub(crate) fn node_bytes(&self, node: &Node) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(node.size as usize);
        Ok(self.node_to(node, None, &mut Sink::Buf(&mut buf))?.map(|()| buf))
    }

    /// The verified bytes of the one output of `e`, a file or bytes entry, read with the row of
    /// its blob among `rows` (from the database otherwise); `None` if the blob failed
    /// verification (quarantined, its entries retired).
    pub(crate) fn read_bytes_with(
        &self,
        e: &Entry,
        rows: Vec<BlobInfo>,
    ) -> Result<Option<Vec<u8>>> {
        let node = bytes_node(e)?;
        let known = rows
            .into_iter()
            .find(|i| Some(i.digest) == node.digest)
            .or_else(|| embedded_for(e, node));
        let mut buf = Vec::with_capacity(node.size as usize);
        Ok(self.node_to(node, known, &mut Sink::Buf(&mut buf))?.map(|()| buf))
    }

    /// Writes the verified bytes of a file node to `sink`; `None` if its blob failed
    /// verification (it has been quarantined and its entries retired).
    /// `known` is the blob's row if the caller read it already.
    fn node_to(
        &self,
        node: &Node,
        known: Option<BlobInfo>,
        sink: &mut Sink<'_>,
    ) -> Result<Option<()>> {
        let digest = node.digest.ok_or_else(|| Error::Other("file node without digest".into()))?;
        match self.read_blob(&digest, known, node.size, sink)? {
            Ok(()) => Ok(Some(())),
            Err(msg) => {
                self.corrupt(&digest, &msg, "get")?;
                Ok(None)
            }
        }
    }
}

/// The blob of `node` that `e`'s own row holds, if it is that one (see [`Entry::embedded`]).
fn embedded_for(e: &Entry, node: &Node) -> Option<BlobInfo> {
    e.embedded_blob(&node.digest?).cloned()
}

/// The one output node of a file or bytes entry.
fn bytes_node(e: &Entry) -> Result<&Node> {
    if e.output_kind == OutputKind::Dir {
        return Err(Error::Other(format!("entry {} holds a directory, not bytes", e.id)));
    }
    e.outputs.first().ok_or_else(|| Error::Other("entry has no output".into()))
}

/// Puts the verified `tmp` in place of `dest` atomically. An existing destination is swapped out
/// with `renameat2(RENAME_EXCHANGE)` and then deleted: readers see the old or the new output,
/// never a mix or nothing, and ext4 does not force the new file's blocks out as it does when a
/// rename replaces a file. Filesystems without the exchange fall back to rename (files) or to
/// moving the old directory aside first.
pub(crate) fn replace(tmp: &Path, dest: &Path, existed: bool) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    if !existed {
        return std::fs::rename(tmp, dest).at(dest);
    }
    let is_dir = std::fs::symlink_metadata(tmp).at(tmp)?.is_dir();
    match renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE) {
        // `tmp` now holds the old output.
        Ok(()) if is_dir => std::fs::remove_dir_all(tmp).at(tmp),
        Ok(()) => std::fs::remove_file(tmp).at(tmp),
        Err(rustix::io::Errno::NOENT) => std::fs::rename(tmp, dest).at(dest),
        Err(_) if !is_dir => std::fs::rename(tmp, dest).at(dest),
        Err(_) => {
            let old = tmp.with_extension("old");
            std::fs::rename(dest, &old).at(dest)?;
            std::fs::rename(tmp, dest).at(dest)?;
            std::fs::remove_dir_all(&old).at(&old)
        }
    }
}

/// A directory manifest must be safe to materialize: relative paths without `..`, no duplicates,
/// every parent a directory node listed before its children.
pub(crate) fn validate_tree(nodes: &[Node]) -> std::result::Result<(), String> {
    let mut dirs = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    for n in nodes {
        if !is_safe_relative(&n.path) {
            return Err(format!("unsafe path {:?} in manifest", n.path));
        }
        if !seen.insert(n.path.as_str()) {
            return Err(format!("duplicate path {:?} in manifest", n.path));
        }
        if let Some((parent, _)) = n.path.rsplit_once('/')
            && !dirs.contains(parent)
        {
            return Err(format!("{:?} appears before its directory", n.path));
        }
        match n.kind {
            NodeKind::Dir => {
                dirs.insert(n.path.as_str());
            }
            // A symlink is recreated as it was and never followed: nothing is written through
            // it, because every node's parent must be a directory node created here.
            NodeKind::Symlink if n.target.as_deref().is_none_or(str::is_empty) => {
                return Err(format!("symlink {:?} has no target", n.path));
            }
            NodeKind::Symlink => {}
            NodeKind::File => {}
        }
    }
    Ok(())
}

/// Checks an inline blob; returns the decompressed bytes when it was compressed.
fn verify_inline(info: &BlobInfo, data: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    let plain = match info.codec {
        Codec::Raw => None,
        Codec::Zstd => Some(
            zstd::bulk::decompress(data, info.size as usize).map_err(|e| format!("zstd: {e}"))?,
        ),
    };
    let bytes = plain.as_deref().unwrap_or(data);
    check(info, &info.digest.algorithm().digest(bytes), bytes.len() as u64)?;
    Ok(plain)
}

fn check(info: &BlobInfo, digest: &Digest, n: u64) -> Verified {
    if n != info.size {
        return Err(format!("blob yields {n} bytes, expected {}", info.size));
    }
    if *digest != info.digest {
        return Err(format!("content hashes to {digest}, expected {}", info.digest));
    }
    Ok(())
}

/// What a restore puts at its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    File,
    Dir,
    Symlink,
}

impl Vault {
    /// Checks a destination and picks the temporary sibling to build in. Only a missing path,
    /// a regular file (for a file or symlink), a directory (for a directory) or a symlink (for
    /// a symlink) is ever replaced: never a device, a FIFO or a socket, and nothing inside the
    /// vault's own directory.
    pub(crate) fn prepare_dest(
        &self,
        dest: &Path,
        want: Want,
    ) -> Result<(PathBuf, Option<std::fs::Metadata>)> {
        let parent = match dest.parent() {
            Some(p) if p.as_os_str().is_empty() => Path::new("."),
            Some(p) => p,
            None => return Err(bad_dest(dest, "is not a file path")),
        };
        let name = dest.file_name().ok_or_else(|| bad_dest(dest, "is not a file path"))?;
        match std::fs::metadata(parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad_dest(parent, "is not a directory")),
            Err(_) => return Err(bad_dest(parent, "directory does not exist")),
        }
        self.outside_vault(parent, dest)?;
        let existing = std::fs::symlink_metadata(dest).ok();
        if let Some(m) = &existing {
            check_replaceable(dest, m.file_type(), want)?;
        }
        let tmp = parent.join(format!(".{}.{}", name.to_string_lossy(), unique_name("taskvault-")));
        Ok((tmp, existing))
    }

    /// Refuses a destination that is one of the vault's own files or lies inside one of its
    /// directories (a vault directory may also hold other files: those are ordinary paths).
    pub(crate) fn outside_vault(&self, parent: &Path, dest: &Path) -> Result<()> {
        let vault =
            self.canonical_dir.get_or_init(|| std::fs::canonicalize(&self.settings.vault_dir).ok());
        let parent = std::fs::canonicalize(parent).ok();
        let (Some(v), Some(p)) = (vault, parent) else { return Ok(()) };
        let Ok(rel) = p.strip_prefix(v) else { return Ok(()) };
        let first = match rel.components().next() {
            Some(c) => c.as_os_str().to_owned(),
            None => dest.file_name().unwrap_or_default().to_owned(),
        };
        if is_vault_name(&first.to_string_lossy()) {
            return Err(bad_dest(dest, "is one of the vault's own files; choose another path"));
        }
        Ok(())
    }
}

/// Whether `name`, directly in a vault directory, is the vault's own (see `docs/format.md`).
fn is_vault_name(name: &str) -> bool {
    const OWN: &[&str] =
        &["blobs", "blobs.lock", "tmp", "locks", "generation", "quarantine", "access.log", "hot"];
    OWN.contains(&name) || ["cache.db", "stat.db", "audit.log"].iter().any(|p| name.starts_with(p))
}

/// Whether an existing path of type `t` may be replaced by a `want`.
pub(crate) fn check_replaceable(dest: &Path, t: std::fs::FileType, want: Want) -> Result<()> {
    let what = crate::tree::describe(t);
    let ok = match want {
        Want::File => t.is_file(),
        Want::Dir => t.is_dir(),
        Want::Symlink => t.is_file() || t.is_symlink(),
    };
    if ok {
        return Ok(());
    }
    let message = match want {
        Want::File if t.is_dir() => "is a directory; the cached output is not".to_owned(),
        Want::Dir if t.is_file() => {
            "exists and is not a directory; the cached output is a directory".to_owned()
        }
        Want::Dir => format!("is {what}; only a directory or a missing path is replaced"),
        Want::File | Want::Symlink => {
            format!("is {what}; only a regular file or a missing path is replaced")
        }
    };
    Err(bad_dest(dest, &message))
}

fn bad_dest(path: &Path, message: &str) -> Error {
    Error::BadDestination { path: path.to_owned(), message: message.into() }
}

/// Removes a temporary file or directory unless forgotten.
struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p).or_else(|_| std::fs::remove_dir_all(&p));
        }
    }
}
