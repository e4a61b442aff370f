//! The inputs of a wrapped command: files, directories and globs expanded into one sorted
//! manifest of (relative path, kind, mode, content digest or link target). Its digest is the
//! key's input ingredient, so content, modes, and which files a glob matched all count.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use taskvault::tree::{Manifest, Node, NodeKind, walk};
use taskvault::{InputKind, InputRecord, Vault};

/// One path found among the inputs, not yet hashed.
struct Found {
    abs: PathBuf,
    kind: NodeKind,
    mode: u32,
    target: Option<String>,
}

/// The hashed inputs: the key's ingredient, and each file's digest for `--explain`.
pub struct Inputs {
    pub record: InputRecord,
    pub files: BTreeMap<String, String>,
}

fn has_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

/// The name a path has in the manifest: relative to the working directory when it is inside it,
/// else as the user wrote it.
fn label(cwd: &Path, abs: &Path, given: &Path) -> String {
    match abs.strip_prefix(cwd) {
        Ok(rel) => rel.to_string_lossy().into_owned(),
        Err(_) => given.to_string_lossy().into_owned(),
    }
}

fn found(abs: &Path) -> Result<Found> {
    let meta =
        std::fs::symlink_metadata(abs).with_context(|| format!("input {}", abs.display()))?;
    let ft = meta.file_type();
    let (kind, target) = if ft.is_symlink() {
        // A symlink given directly is followed (its content is the input); inside a directory
        // it is recorded as a link.
        let m = std::fs::metadata(abs).with_context(|| format!("input {}", abs.display()))?;
        if m.is_dir() { (NodeKind::Dir, None) } else { (NodeKind::File, None) }
    } else if ft.is_dir() {
        (NodeKind::Dir, None)
    } else if ft.is_file() {
        (NodeKind::File, None)
    } else {
        bail!("input {}: not a regular file or directory", abs.display());
    };
    Ok(Found { abs: abs.to_owned(), kind, mode: meta.permissions().mode() & 0o7777, target })
}

/// Expands `--input` values and hashes every file (unchanged files come from the stat cache).
pub fn collect(v: &Vault, cwd: &Path, patterns: &[String], allow_empty: bool) -> Result<Inputs> {
    let mut all: BTreeMap<String, Found> = BTreeMap::new();
    let mut add = |given: &Path, abs: &Path| -> Result<()> {
        let top = found(abs)?;
        let name = label(cwd, abs, given);
        if top.kind == NodeKind::Dir {
            for w in walk(abs)? {
                let rel = format!("{name}/{}", w.rel);
                all.insert(rel, Found { abs: w.abs, kind: w.kind, mode: w.mode, target: w.target });
            }
        }
        all.insert(name, top);
        Ok(())
    };
    for p in patterns {
        if has_glob(p) {
            let full = cwd.join(p);
            let pattern = full.to_str().with_context(|| format!("--input {p}: not UTF-8"))?;
            let mut matched = 0;
            for m in glob::glob(pattern).with_context(|| format!("--input {p}: bad glob"))? {
                let path = m.with_context(|| format!("--input {p}"))?;
                let given = path.strip_prefix(cwd).map(Path::to_path_buf).unwrap_or(path.clone());
                add(&given, &path)?;
                matched += 1;
            }
            if matched == 0 && !allow_empty {
                bail!(
                    "--input {p}: the glob matched nothing (pass --allow-empty if that is expected)"
                );
            }
        } else {
            let given = Path::new(p);
            let abs = cwd.join(given);
            if std::fs::symlink_metadata(&abs).is_err() {
                bail!("--input {p}: no such file or directory");
            }
            add(given, &abs)?;
        }
    }

    let files: Vec<PathBuf> =
        all.values().filter(|f| f.kind == NodeKind::File).map(|f| f.abs.clone()).collect();
    let mut digests = v.hash_files(&files)?.into_iter();
    let mut listing = BTreeMap::new();
    let nodes: Vec<Node> = all
        .into_iter()
        .map(|(path, f)| {
            let (digest, size) = match f.kind {
                NodeKind::File => {
                    let (d, n) = digests.next().expect("one digest per file");
                    listing.insert(path.clone(), d.hex());
                    (Some(d), n)
                }
                _ => (None, 0),
            };
            Node { path, kind: f.kind, mode: f.mode, size, digest, target: f.target }
        })
        .collect();
    let manifest = Manifest { nodes };
    let alg = v.settings().algorithm;
    Ok(Inputs {
        record: InputRecord {
            kind: InputKind::Tree,
            digest: manifest.digest(alg),
            size: manifest.content_size(),
            origin: Some(patterns.join(" ")),
        },
        files: listing,
    })
}
