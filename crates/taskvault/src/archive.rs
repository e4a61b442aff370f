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
    pub fn export(&self, entries: &[Entry], archive: &Path) -> Result<ExportReport> {
        let mut blobs = BTreeMap::new();
        for e in entries {
            for n in &e.outputs {
                if let Some(d) = n.digest {
                    blobs.insert(d, n.size);
                }
            }
        }
        let manifest = Manifest { format: FORMAT, entries: entries.to_vec(), blobs };
        let parent =
            archive.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(Error::BadDestination {
                path: parent.to_owned(),
                message: "directory does not exist".into(),
            });
        }
        let tmp_archive = parent.join(format!(".{}", unique_name("taskvault-export-")));
        let mut temps = TempFiles(vec![tmp_archive.clone()]);
        let file = std::fs::File::create(&tmp_archive).at(&tmp_archive)?;
        let enc = zstd::stream::Encoder::new(file, 3).at(&tmp_archive)?;
        let mut tar = tar::Builder::new(enc);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        append(&mut tar, MANIFEST, json.len() as u64, &mut &json[..]).at(&tmp_archive)?;
        let mut report = ExportReport { entries: entries.len() as u64, ..Default::default() };
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
        let file = std::fs::File::open(archive).at(archive)?;
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
                let mut text = Vec::new();
                item.by_ref()
                    .take(256 << 20)
                    .read_to_end(&mut text)
                    .map_err(|e| bad(e.to_string()))?;
                let m: Manifest =
                    serde_json::from_slice(&text).map_err(|e| bad(format!("manifest: {e}")))?;
                if m.format != FORMAT {
                    return Err(bad(format!("unsupported export format {}", m.format)));
                }
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
        let m = manifest.ok_or_else(|| bad("no manifest".into()))?;
        for e in &m.entries {
            if e.output_kind == crate::entry::OutputKind::Dir {
                crate::vault::validate_tree(&e.outputs)
                    .map_err(|msg| bad(format!("entry {}: {msg}", e.id)))?;
            }
            for d in e.blob_digests() {
                if !staged.contains_key(&d) {
                    return Err(bad(format!("entry {} needs blob {d}, which is missing", e.id)));
                }
            }
            if e.key.len() != 64 || !e.key.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("entry {} has an invalid key", e.id)));
            }
        }

        let mut report = ImportReport::default();
        let mut committed_blobs = BTreeSet::new();
        for e in &m.entries {
            if self.meta().lookup(&e.key)?.is_some() {
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
