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

/// The paths a glob matches, as the `glob` crate matches them (`*`, `?` and `[...]` within a
/// component, dot files included; `**` as a whole component is any number of directories, and
/// at the end means the directory itself and every directory below, so `src/**` is everything
/// in `src`), sorted. Symlinked directories are followed,
/// except into a directory already on the way down, so a link to `.` or a parent never loops.
fn expand(pattern: &Path) -> Result<Vec<PathBuf>> {
    let mut base = PathBuf::new();
    let mut comps: Vec<String> = Vec::new();
    for c in pattern.components() {
        let text = c.as_os_str().to_str().context("not UTF-8")?;
        if comps.is_empty() && !has_glob(text) {
            base.push(c);
        } else {
            comps.push(text.to_owned());
        }
    }
    comps.dedup_by(|a, b| a == "**" && b == "**");
    let comps = comps
        .iter()
        .map(|c| match c.as_str() {
            "**" => Ok(Comp::Any),
            c if has_glob(c) => glob::Pattern::new(c).map(Comp::Glob).context("bad glob"),
            c => Ok(Comp::Literal(c.to_owned())),
        })
        .collect::<Result<Vec<_>>>()?;
    let mut out = std::collections::BTreeSet::new();
    let mut ancestors = Vec::new();
    if std::fs::metadata(&base).is_ok_and(|m| m.is_dir()) {
        expand_in(&base, &comps, &mut ancestors, &mut out)?;
    }
    Ok(out.into_iter().collect())
}

enum Comp {
    Literal(String),
    Glob(glob::Pattern),
    /// `**`
    Any,
}

/// Matches `comps` below the directory `dir`; `ancestors` holds (device, inode) of every
/// directory on the way down to it, itself included once entered.
fn expand_in(
    dir: &Path,
    comps: &[Comp],
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<()> {
    let Some((first, rest)) = comps.split_first() else {
        out.insert(dir.to_owned());
        return Ok(());
    };
    // The caller checked that `dir` is not among the ancestors (a `**` descends only then).
    let Some(id) = dir_id(dir) else { return Ok(()) };
    ancestors.push(id);
    let result = match first {
        Comp::Literal(name) => matched(dir.join(name), rest, ancestors, out),
        Comp::Glob(g) => names(dir).and_then(|names| {
            names
                .into_iter()
                .filter(|n| n.to_str().is_some_and(|n| g.matches(n)))
                .try_for_each(|n| matched(dir.join(n), rest, ancestors, out))
        }),
        Comp::Any => {
            // Zero directories, then one or more: `**` stays for the levels below. A trailing
            // `**` matches the directory itself (whose files are then all inputs).
            let zero = if rest.is_empty() {
                out.insert(dir.to_owned());
                Ok(())
            } else {
                expand_in(dir, rest, ancestors, out)
            };
            zero.and_then(|()| names(dir)).and_then(|names| {
                names.into_iter().try_for_each(|n| {
                    let p = dir.join(n);
                    match dir_id(&p) {
                        Some(id) if !ancestors.contains(&id) => {
                            if rest.is_empty() {
                                out.insert(p.clone());
                            }
                            expand_in(&p, comps, ancestors, out)
                        }
                        _ => Ok(()),
                    }
                })
            })
        }
    };
    ancestors.pop();
    result
}

/// A path that matched one component: the result if it was the last, else a directory to
/// match the rest in.
fn matched(
    p: PathBuf,
    rest: &[Comp],
    ancestors: &mut Vec<(u64, u64)>,
    out: &mut std::collections::BTreeSet<PathBuf>,
) -> Result<()> {
    if rest.is_empty() {
        if std::fs::symlink_metadata(&p).is_ok() {
            out.insert(p);
        }
        Ok(())
    } else if dir_id(&p).is_some() {
        expand_in(&p, rest, ancestors, out)
    } else {
        Ok(())
    }
}

/// (device, inode) of `p` if it is a directory (through symlinks).
fn dir_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().filter(|m| m.is_dir()).map(|m| (m.dev(), m.ino()))
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Result<Vec<std::ffi::OsString>> {
    let mut names = Vec::new();
    for item in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        names.push(item.with_context(|| dir.display().to_string())?.file_name());
    }
    names.sort();
    Ok(names)
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
            full.to_str().with_context(|| format!("--input {p}: not UTF-8"))?;
            let mut matched = 0;
            for path in expand(&full).with_context(|| format!("--input {p}"))? {
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
