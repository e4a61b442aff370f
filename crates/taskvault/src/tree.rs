//! Directory trees: a sorted manifest of relative paths, kinds, modes and content digests, used
//! both to fingerprint input directories and to record directory outputs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, IoContext, Result};

/// What a tree node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    File,
    Dir,
    Symlink,
}

/// One node of a tree, relative to its root. Paths use `/` and never contain `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub path: String,
    pub kind: NodeKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Content size for files.
    #[serde(default)]
    pub size: u64,
    /// Content digest for files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Link target for symlinks, as stored (never followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A scanned tree. `files` keeps the absolute path of every file node, in node order.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub nodes: Vec<Node>,
}

/// A file found by [`walk`], not yet hashed.
#[derive(Debug, Clone)]
pub struct Walked {
    pub rel: String,
    pub abs: PathBuf,
    pub kind: NodeKind,
    pub mode: u32,
    pub size: u64,
    pub target: Option<String>,
}

/// Lists a directory recursively without following symlinks, sorted by relative path bytes.
/// Sockets, FIFOs and devices are refused; so are names that are not UTF-8.
pub fn walk(root: &Path) -> Result<Vec<Walked>> {
    let mut out = Vec::new();
    walk_into(root, root, &mut out)?;
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

fn walk_into(root: &Path, dir: &Path, out: &mut Vec<Walked>) -> Result<()> {
    for item in std::fs::read_dir(dir).at(dir)? {
        let item = item.at(dir)?;
        let abs = item.path();
        let meta = std::fs::symlink_metadata(&abs).at(&abs)?;
        let rel_path = abs.strip_prefix(root).expect("walked path is under its root");
        let rel = rel_path.to_str().ok_or_else(|| Error::BadInput {
            path: abs.clone(),
            message: "file name is not valid UTF-8".into(),
        })?;
        let mode = meta.permissions().mode() & 0o7777;
        let (kind, target) = classify(&abs, &meta)?;
        out.push(Walked {
            rel: rel.to_owned(),
            abs: abs.clone(),
            kind,
            mode,
            size: if kind == NodeKind::File { meta.len() } else { 0 },
            target,
        });
        if kind == NodeKind::Dir {
            walk_into(root, &abs, out)?;
        }
    }
    Ok(())
}

/// A file type in words, for messages: "a regular file", "a FIFO", "a character device", ...
pub fn describe(t: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

/// What a path is, from its `symlink_metadata`: a file, a directory, or a symlink with its target
/// (read, never followed). Sockets, FIFOs, devices and non-UTF-8 link targets are refused.
pub fn classify(abs: &Path, meta: &std::fs::Metadata) -> Result<(NodeKind, Option<String>)> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(abs).at(abs)?;
        let t = t.to_str().ok_or_else(|| Error::BadInput {
            path: abs.to_owned(),
            message: "symlink target is not valid UTF-8".into(),
        })?;
        Ok((NodeKind::Symlink, Some(t.to_owned())))
    } else if ft.is_dir() {
        Ok((NodeKind::Dir, None))
    } else if ft.is_file() {
        Ok((NodeKind::File, None))
    } else {
        Err(Error::BadInput {
            path: abs.to_owned(),
            message: "special files (devices, sockets, FIFOs) cannot be cached".into(),
        })
    }
}

impl Manifest {
    /// Walks and hashes a directory.
    pub fn scan(algorithm: Algorithm, root: &Path) -> Result<Manifest> {
        let nodes = walk(root)?
            .into_iter()
            .map(|w| {
                let digest = match w.kind {
                    NodeKind::File => Some(crate::digest::hash_file(algorithm, &w.abs)?.0),
                    _ => None,
                };
                Ok(Node {
                    path: w.rel,
                    kind: w.kind,
                    mode: w.mode,
                    size: w.size,
                    digest,
                    target: w.target,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Manifest { nodes })
    }

    /// Sum of file sizes.
    pub fn content_size(&self) -> u64 {
        self.nodes.iter().map(|n| n.size).sum()
    }

    /// The canonical tree digest: nodes in path order, each as length-prefixed fields
    /// (path, kind, mode, then the content digest or the link target).
    pub fn digest(&self, algorithm: Algorithm) -> Digest {
        let mut enc = Vec::with_capacity(64 + self.nodes.len() * 80);
        enc.extend_from_slice(b"taskvault/tree\x01");
        enc.extend_from_slice(&(self.nodes.len() as u64).to_le_bytes());
        for n in &self.nodes {
            crate::key::put(&mut enc, n.path.as_bytes());
            enc.push(match n.kind {
                NodeKind::File => b'f',
                NodeKind::Dir => b'd',
                NodeKind::Symlink => b'l',
            });
            enc.extend_from_slice(&n.mode.to_le_bytes());
            match n.kind {
                NodeKind::File => {
                    crate::key::put(&mut enc, n.digest.as_ref().map_or(&[][..], |d| d.as_bytes()))
                }
                NodeKind::Symlink => {
                    crate::key::put(&mut enc, n.target.as_deref().unwrap_or_default().as_bytes())
                }
                NodeKind::Dir => {}
            }
        }
        algorithm.digest(&enc)
    }
}

/// Checks that a relative path from a manifest or archive is safe to join under a root: not
/// empty, not absolute, and without `.` or `..` components.
pub fn is_safe_relative(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.as_bytes().contains(&0)
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests;
