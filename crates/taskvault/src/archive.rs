//! Export and import of a vault or a selection: a zstd-compressed tar holding a JSON manifest
//! followed by the (uncompressed, verified) blobs. Imports verify every blob before changing
//! anything and accept nothing but the exact names this format writes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, hash_file};
use crate::entry::Entry;
use crate::error::{Error, IoContext, Result};
use crate::vault::{Vault, unique_name};

const MANIFEST: &str = "taskvault-export.json";
const FORMAT: u32 = 1;
/// The largest manifest an import reads (about 100,000 entries' worth).
const MANIFEST_MAX: u64 = 64 << 20;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Manifest {
    format: u32,
    entries: Vec<Entry>,
    /// digest -> uncompressed size.
    blobs: BTreeMap<Digest, u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    pub entries: u64,
    /// Entries left out because they were saved before entries recorded their key's
    /// ingredients: no importer could check the key they claim.
    pub unverifiable: u64,
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    pub imported: u64,
    /// Entries whose key already had a live entry here.
    pub skipped: u64,
    pub blobs: u64,
}

/// Deletes a set of temporary files on drop.
struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Vault {
    /// Writes `entries` (live runs) and their blobs to `archive`, atomically.
    /// Entries saved before entries recorded their key's ingredients are left out (counted in
    /// the report): an importer could not check the key they claim.
    pub fn export(&self, entries: &[Entry], archive: &Path) -> Result<ExportReport> {
        let (entries, unverifiable): (Vec<&Entry>, Vec<&Entry>) =
            entries.iter().partition(|e| e.recomputed_key().is_some_and(|k| k.hex() == e.key));
        let entries: Vec<Entry> = entries.into_iter().cloned().collect();
        let mut blobs = BTreeMap::new();
        for e in &entries {
            // The recorded console log too: an import needs every blob an entry uses.
            for n in e.outputs.iter().chain(&e.console) {
                if let Some(d) = n.digest {
                    blobs.insert(d, n.size);
                }
            }
        }
        let manifest = Manifest { format: FORMAT, entries, blobs };
        let parent =
            archive.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(Error::BadDestination {
                path: parent.to_owned(),
                message: "directory does not exist".into(),
            });
        }
        self.outside_vault(parent, archive)?;
        if let Ok(m) = std::fs::symlink_metadata(archive) {
            crate::vault::check_replaceable(archive, m.file_type(), crate::vault::Want::File)?;
        }
        let tmp_archive = parent.join(format!(".{}", unique_name("taskvault-export-")));
        let mut temps = TempFiles(vec![tmp_archive.clone()]);
        let file = std::fs::File::create(&tmp_archive).at(&tmp_archive)?;
        let enc = zstd::stream::Encoder::new(file, 3).at(&tmp_archive)?;
        let mut tar = tar::Builder::new(enc);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        append(&mut tar, MANIFEST, json.len() as u64, &mut &json[..]).at(&tmp_archive)?;
        let mut report = ExportReport {
            entries: manifest.entries.len() as u64,
            unverifiable: unverifiable.len() as u64,
            ..Default::default()
        };
        for (d, size) in &manifest.blobs {
            let tmp = self.tmp_dir().join(unique_name("export-"));
            temps.0.push(tmp.clone());
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            let verified = self.read_blob(d, *size, &mut crate::vault::Sink::File(&mut f, &tmp))?;
            if let Err(msg) = verified {
                self.corrupt(d, &msg, "export")?;
                return Err(Error::Corrupt { digest: d.to_string(), message: msg });
            }
            let mut f = std::fs::File::open(&tmp).at(&tmp)?;
            append(&mut tar, &blob_name(d), *size, &mut f).at(&tmp_archive)?;
            let _ = std::fs::remove_file(&tmp);
            report.blobs += 1;
            report.bytes += size;
        }
        let enc = tar.into_inner().at(&tmp_archive)?;
        let file = enc.finish().at(&tmp_archive)?;
        file.sync_all().at(&tmp_archive)?;
        std::fs::rename(&tmp_archive, archive).at(archive)?;
        temps.0.clear();
        Ok(report)
    }

    /// Imports an archive made by [`Vault::export`]. Every blob is verified against its digest
    /// before anything is committed; entries whose key is already live here are skipped. On any
    /// error nothing is imported.
    pub fn import(&self, archive: &Path) -> Result<ImportReport> {
        let bad = |message: String| Error::BadArchive { path: archive.to_owned(), message };
        // Opened without blocking: a FIFO or a device is refused, never waited on or read.
        let file = match crate::store::local::open_regular(archive).at(archive)? {
            Ok(f) => f,
            Err(why) => return Err(bad(format!("{why}; save the archive to a file first"))),
        };
        let dec = zstd::stream::Decoder::new(file).at(archive)?;
        let mut tar = tar::Archive::new(dec);
        let mut manifest: Option<Manifest> = None;
        let mut staged: BTreeMap<Digest, PathBuf> = BTreeMap::new();
        let mut temps = TempFiles(Vec::new());
        for item in tar.entries().map_err(|e| bad(e.to_string()))? {
            let mut item = item.map_err(|e| bad(e.to_string()))?;
            let kind = item.header().entry_type();
            let name = item.path_bytes().into_owned();
            let name =
                String::from_utf8(name).map_err(|_| bad("a member name is not UTF-8".into()))?;
            if !kind.is_file() {
                return Err(bad(format!("member {name:?} is not a regular file ({kind:?})")));
            }
            if name == MANIFEST {
                if manifest.is_some() {
                    return Err(bad("two manifests".into()));
                }
                let declared = item.header().size().map_err(|e| bad(e.to_string()))?;
                if declared > MANIFEST_MAX {
                    return Err(bad(format!(
                        "the manifest is {declared} bytes, over the {MANIFEST_MAX} this format allows"
                    )));
                }
                let mut text = Vec::new();
                item.by_ref()
                    .take(MANIFEST_MAX)
                    .read_to_end(&mut text)
                    .map_err(|e| bad(e.to_string()))?;
                let m: Manifest =
                    serde_json::from_slice(&text).map_err(|e| bad(format!("manifest: {e}")))?;
                if m.format != FORMAT {
                    return Err(bad(format!("unsupported export format {}", m.format)));
                }
                let total = m.blobs.values().try_fold(0u64, |t, s| t.checked_add(*s));
                let total = total.ok_or_else(|| bad("blob sizes overflow".into()))?;
                check_room(self.tmp_dir(), total).map_err(bad)?;
                manifest = Some(m);
                continue;
            }
            let m = manifest.as_ref().ok_or_else(|| bad("the manifest must come first".into()))?;
            let digest =
                parse_blob_name(&name).ok_or_else(|| bad(format!("unexpected member {name:?}")))?;
            let size = *m
                .blobs
                .get(&digest)
                .ok_or_else(|| bad(format!("blob {digest} is not in the manifest")))?;
            if staged.contains_key(&digest) {
                return Err(bad(format!("blob {digest} appears twice")));
            }
            // A member larger than the manifest says is refused before a byte of it is
            // written, and a decompression never runs past the declared size.
            let member = item.header().size().map_err(|e| bad(e.to_string()))?;
            if member != size {
                return Err(bad(format!(
                    "blob {digest} is {member} bytes in the archive, {size} in the manifest"
                )));
            }
            let tmp = self.tmp_dir().join(unique_name("import-"));
            temps.0.push(tmp.clone());
            let mut out = std::fs::File::create(&tmp).at(&tmp)?;
            std::io::copy(&mut item.by_ref().take(size + 1), &mut out)
                .map_err(|e| bad(e.to_string()))?;
            out.flush().at(&tmp)?;
            let (got, n) = hash_file(digest.algorithm(), &tmp)?;
            if got != digest || n != size {
                return Err(bad(format!(
                    "blob {digest} does not match its content (tampered or damaged)"
                )));
            }
            staged.insert(digest, tmp);
        }
        let mut m = manifest.ok_or_else(|| bad("no manifest".into()))?;
        for e in &mut m.entries {
            check_entry(e, &m.blobs, &staged)
                .map_err(|msg| bad(format!("entry {}: {msg}", e.id)))?;
            // What the archive says of the run's standing here is not trusted: it becomes the
            // live run of its key, with fresh counters.
            e.status = crate::entry::Status::Live;
            e.parent = None;
            e.access_count = 0;
        }

        let mut report = ImportReport::default();
        let mut committed_blobs = BTreeSet::new();
        for e in &m.entries {
            // A damaged live row is replaced by the imported run.
            if matches!(self.meta().lookup(&e.key), Ok(Some(_))) {
                report.skipped += 1;
                continue;
            }
            let mut staging = crate::vault::StagingHandle::new(self);
            for d in e.blob_digests() {
                staging.file_expecting(&staged[&d], d)?;
            }
            self.commit(e, staging.blobs())?;
            committed_blobs.extend(e.blob_digests());
            report.imported += 1;
        }
        report.blobs = committed_blobs.len() as u64;
        Ok(report)
    }
}

/// Refuses an import whose blobs would not fit on the filesystem of `dir` (with 64 MiB to
/// spare), before anything is staged.
fn check_room(dir: &Path, bytes: u64) -> std::result::Result<(), String> {
    let Ok(fs) = rustix::fs::statvfs(dir) else { return Ok(()) };
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if bytes.saturating_add(64 << 20) > free {
        return Err(format!(
            "its blobs need {bytes} bytes and {} has {free} bytes free",
            dir.display()
        ));
    }
    Ok(())
}

/// Whether an archived entry may be imported: it answers exactly the key it claims (recomputed
/// from its recorded ingredients), its outputs form a valid manifest of the right shape, and
/// every blob it needs is in the archive at the size it expects.
fn check_entry(
    e: &mut Entry,
    sizes: &BTreeMap<Digest, u64>,
    staged: &BTreeMap<Digest, PathBuf>,
) -> std::result::Result<(), String> {
    use crate::entry::OutputKind;
    use crate::tree::NodeKind;
    if e.key.len() != 64 || !e.key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err("invalid key".into());
    }
    if e.ingredients.is_none() {
        return Err("it does not record its key's ingredients (exported by an older taskvault), \
                    so the key it claims cannot be checked"
            .into());
    }
    match e.recomputed_key() {
        Some(k) if k.hex() == e.key => {}
        Some(k) => {
            return Err(format!(
                "it claims key {} but its ingredients make key {} (tampered)",
                e.key,
                k.hex()
            ));
        }
        None => return Err("its recorded key ingredients do not form a key".into()),
    }
    match e.output_kind {
        OutputKind::Dir => crate::vault::validate_tree(&e.outputs)?,
        OutputKind::File | OutputKind::Bytes => {
            if !matches!(&e.outputs[..], [n] if n.kind == NodeKind::File && n.path.is_empty()) {
                return Err("a file output must be exactly one file node".into());
            }
        }
    }
    let nodes = e.outputs.iter_mut().chain(e.console.as_mut());
    for n in nodes {
        // Permission bits only: never setuid, setgid or sticky from an archive.
        n.mode &= 0o777;
        if n.kind != NodeKind::File {
            continue;
        }
        let d = n.digest.ok_or_else(|| format!("file node {:?} has no digest", n.path))?;
        if !staged.contains_key(&d) {
            return Err(format!("it needs blob {d}, which is missing"));
        }
        if sizes.get(&d) != Some(&n.size) {
            return Err(format!("node {:?} expects blob {d} to be {} bytes", n.path, n.size));
        }
    }
    // Sizes come from the archive: summed with a check, never with an overflow.
    let total = e.outputs.iter().try_fold(0u64, |t, n| t.checked_add(n.size));
    if total != Some(e.size) {
        let total = total.map_or("more than 2^64".into(), |t| t.to_string());
        return Err(format!("its outputs add up to {total} bytes, not {}", e.size));
    }
    Ok(())
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().name(), d.hex())
}

fn parse_blob_name(name: &str) -> Option<Digest> {
    let rest = name.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Digest::from_hex(alg.parse().ok()?, hex).ok()
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: &mut dyn Read,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_are_exact() {
        let d = crate::Algorithm::Blake3.digest(b"x");
        assert_eq!(parse_blob_name(&blob_name(&d)), Some(d));
        for bad in [
            "blobs/blake3/../../etc/passwd".to_owned(),
            format!("/blobs/blake3/{}", d.hex()),
            format!("blobs/blake3/{}/x", d.hex()),
            format!("blobs/md5/{}", d.hex()),
            format!("blobs/blake3/{}", d.hex().to_uppercase()),
        ] {
            assert_eq!(parse_blob_name(&bad), None, "{bad}");
        }
    }
}
