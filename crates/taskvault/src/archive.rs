//! Export and import of a vault or a selection: a zstd-compressed tar. Format 2 (written now)
//! is a stream: a small header member, then batches of entries, each followed by the blobs it
//! brings (uncompressed, verified), so neither side holds more than a batch in memory. Format 1
//! (one manifest of every entry, then every blob) is still imported. Imports verify every blob
//! and every entry before changing anything, and accept nothing but the exact names the format
//! writes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, hash_file};
use crate::entry::{Entry, Filter};
use crate::error::{Error, IoContext, Result};
use crate::vault::{Vault, unique_name};

const MANIFEST: &str = "taskvault-export.json";
const FORMAT: u32 = 2;
/// The largest manifest (format 1) or batch (format 2) an import reads.
const MANIFEST_MAX: u64 = 64 << 20;
/// Entries per batch of a format 2 archive.
const BATCH: usize = 1000;
/// Digests remembered as already written, so that a blob shared by entries of different
/// batches is written once; past this many the memory starts over (a blob may then appear
/// again, which an import accepts).
const WRITTEN_MAX: usize = 200_000;

/// Format 1: every entry, then every blob.
#[derive(Debug, serde::Deserialize)]
struct Manifest {
    entries: Vec<Entry>,
    /// digest -> uncompressed size.
    blobs: BTreeMap<Digest, u64>,
}

/// Format 2: a batch of entries and the blobs that follow it (those its entries use that no
/// earlier batch brought).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Batch {
    entries: Vec<Entry>,
    /// digest -> uncompressed size.
    blobs: BTreeMap<Digest, u64>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Header {
    format: u32,
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

/// Deletes a set of temporary files (and directories) on drop.
struct TempFiles(Vec<PathBuf>);
impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn batch_name(n: u64) -> String {
    format!("entries/{n:010}.json")
}

fn parse_batch_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix("entries/")?.strip_suffix(".json")?;
    (n.len() == 10 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok())?
}

/// A format 2 archive being written, atomically: a temporary file renamed into place.
struct Writer<'v> {
    vault: &'v Vault,
    archive: PathBuf,
    tmp_archive: PathBuf,
    temps: TempFiles,
    /// Taken by `finish`.
    tar: Option<tar::Builder<zstd::stream::Encoder<'static, std::fs::File>>>,
    report: ExportReport,
    written: HashSet<Digest>,
    batches: u64,
}

impl<'v> Writer<'v> {
    fn create(vault: &'v Vault, archive: &Path) -> Result<Writer<'v>> {
        let parent =
            archive.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(Error::BadDestination {
                path: parent.to_owned(),
                message: "directory does not exist".into(),
            });
        }
        vault.outside_vault(parent, archive)?;
        if let Ok(m) = std::fs::symlink_metadata(archive) {
            crate::vault::check_replaceable(archive, m.file_type(), crate::vault::Want::File)?;
        }
        let tmp_archive = parent.join(format!(".{}", unique_name("taskvault-export-")));
        let temps = TempFiles(vec![tmp_archive.clone()]);
        let file = std::fs::File::create(&tmp_archive).at(&tmp_archive)?;
        let enc = zstd::stream::Encoder::new(file, 3).at(&tmp_archive)?;
        let mut tar = tar::Builder::new(enc);
        let json = serde_json::to_vec(&Header { format: FORMAT }).expect("headers serialize");
        append(&mut tar, MANIFEST, json.len() as u64, &mut &json[..]).at(&tmp_archive)?;
        Ok(Writer {
            vault,
            archive: archive.to_owned(),
            tmp_archive,
            temps,
            tar: Some(tar),
            report: ExportReport::default(),
            written: HashSet::new(),
            batches: 0,
        })
    }

    /// Writes a batch of live entries and the blobs they use that are not written yet.
    fn batch(&mut self, entries: Vec<Entry>) -> Result<()> {
        let (entries, unverifiable): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.recomputed_key().is_some_and(|k| k.hex() == e.key));
        self.report.unverifiable += unverifiable.len() as u64;
        if entries.is_empty() {
            return Ok(());
        }
        let mut blobs = BTreeMap::new();
        // Small outputs held by their entries' own rows (`Entry::embedded`).
        let embedded: std::collections::HashMap<Digest, crate::entry::BlobInfo> =
            entries.iter().filter_map(|e| e.embedded.clone()).map(|b| (b.digest, b)).collect();
        for e in &entries {
            // The recorded console log too: an import needs every blob an entry uses.
            for n in e.outputs.iter().chain(&e.console) {
                if let Some(d) = n.digest
                    && !self.written.contains(&d)
                {
                    blobs.insert(d, n.size);
                }
            }
        }
        self.report.entries += entries.len() as u64;
        let batch = Batch { entries, blobs };
        let json = serde_json::to_vec(&batch).expect("batches serialize");
        let name = batch_name(self.batches);
        self.batches += 1;
        let at = self.tmp_archive.clone();
        append(self.tar(), &name, json.len() as u64, &mut &json[..]).at(&at)?;
        if self.written.len() + batch.blobs.len() > WRITTEN_MAX {
            self.written.clear();
        }
        for (d, size) in &batch.blobs {
            let row = match embedded.get(d) {
                Some(b) => Some(b.clone()),
                None => self.vault.blob_info(d)?,
            };
            if row.as_ref().is_some_and(|i| i.inline.is_some()) {
                // Small blobs live in the database: verified in memory, no file in between.
                let mut buf = Vec::with_capacity(*size as usize);
                let sink = &mut crate::vault::Sink::Buf(&mut buf);
                let verified = self.vault.read_blob_row(d, row, *size, sink)?;
                self.put_blob(d, *size, verified, &mut &buf[..])?;
                continue;
            }
            let tmp = self.vault.tmp_dir().join(unique_name("export-"));
            self.temps.0.push(tmp.clone());
            let mut f = std::fs::File::create(&tmp).at(&tmp)?;
            let sink = &mut crate::vault::Sink::File(&mut f, &tmp);
            let verified = self.vault.read_blob_row(d, row, *size, sink)?;
            self.put_blob(d, *size, verified, &mut std::fs::File::open(&tmp).at(&tmp)?)?;
            let _ = std::fs::remove_file(&tmp);
            self.temps.0.pop();
        }
        Ok(())
    }

    /// Appends blob `d`, read and `verified` into `data`; a blob that failed verification is
    /// reported corrupt and fails the export.
    fn put_blob(
        &mut self,
        d: &Digest,
        size: u64,
        verified: crate::vault::Verified,
        data: &mut dyn Read,
    ) -> Result<()> {
        if let Err(msg) = verified {
            self.vault.corrupt(d, &msg, "export")?;
            return Err(Error::Corrupt { digest: d.to_string(), message: msg });
        }
        let at = self.tmp_archive.clone();
        append(self.tar(), &blob_name(d), size, data).at(&at)?;
        self.written.insert(*d);
        self.report.blobs += 1;
        self.report.bytes += size;
        Ok(())
    }

    fn tar(&mut self) -> &mut tar::Builder<zstd::stream::Encoder<'static, std::fs::File>> {
        self.tar.as_mut().expect("the archive is open until finished")
    }

    fn finish(mut self) -> Result<ExportReport> {
        let tar = self.tar.take().expect("finished once");
        let enc = tar.into_inner().at(&self.tmp_archive)?;
        let file = enc.finish().at(&self.tmp_archive)?;
        file.sync_all().at(&self.tmp_archive)?;
        std::fs::rename(&self.tmp_archive, &self.archive).at(&self.archive)?;
        self.temps.0.clear();
        Ok(std::mem::take(&mut self.report))
    }
}

impl Vault {
    /// Writes `entries` (live runs) and their blobs to `archive`, atomically.
    /// Entries saved before entries recorded their key's ingredients are left out (counted in
    /// the report): an importer could not check the key they claim.
    pub fn export(&self, entries: &[Entry], archive: &Path) -> Result<ExportReport> {
        let mut w = Writer::create(self, archive)?;
        for (i, chunk) in entries.chunks(BATCH).enumerate() {
            w.batch(chunk.to_vec())?;
            self.report_items(((i + 1) * BATCH).min(entries.len()) as u64, entries.len() as u64);
        }
        w.finish()
    }

    /// Like [`Vault::export`], of the live entries `filter` selects (`limit` aside), read a
    /// batch at a time: memory stays bounded whatever the size of the vault.
    pub fn export_where(&self, filter: &Filter, archive: &Path) -> Result<ExportReport> {
        self.fold_accesses()?;
        let filter = Filter { all: false, status: None, ..filter.clone() };
        let total = self.meta().live_entries()?.max(0) as u64;
        let mut w = Writer::create(self, archive)?;
        let mut after = 0;
        let mut seen = 0u64;
        loop {
            let page = self.meta().live_keys_after(after, BATCH)?;
            let Some(&(last, _)) = page.last() else { break };
            after = last;
            seen += page.len() as u64;
            let keys: Vec<String> = page.into_iter().map(|(_, k)| k).collect();
            let found = self.meta().lookup_many(&keys)?;
            let batch: Vec<Entry> =
                found.into_iter().flatten().map(|(e, _)| e).filter(|e| filter.admits(e)).collect();
            w.batch(batch)?;
            self.report_items(seen.min(total), total);
        }
        w.finish()
    }

    /// Imports an archive made by [`Vault::export`] (format 2, or format 1 of earlier
    /// releases). Every blob is verified against its digest and every entry checked before
    /// anything is committed; entries whose key is already live here are skipped. On any error
    /// nothing is imported.
    pub fn import(&self, archive: &Path) -> Result<ImportReport> {
        let bad = |message: String| Error::BadArchive { path: archive.to_owned(), message };
        // Opened without blocking: a FIFO or a device is refused, never waited on or read.
        let file = match crate::store::local::open_regular(archive).at(archive)? {
            Ok(f) => f,
            Err(why) => return Err(bad(format!("{why}; save the archive to a file first"))),
        };
        let dec = zstd::stream::Decoder::new(file).at(archive)?;
        let mut tar = tar::Archive::new(dec);
        let mut members = tar.entries().map_err(|e| bad(e.to_string()))?;
        let first = match members.next() {
            Some(item) => item.map_err(|e| bad(e.to_string()))?,
            None => return Err(bad("no manifest".into())),
        };
        let (name, text) = read_small_member(first, &bad)?;
        if name != MANIFEST {
            return Err(bad("the manifest must come first".into()));
        }
        let header: Header =
            serde_json::from_slice(&text).map_err(|e| bad(format!("manifest: {e}")))?;
        match header.format {
            1 => {
                let m: Manifest =
                    serde_json::from_slice(&text).map_err(|e| bad(format!("manifest: {e}")))?;
                self.import_v1(m, &mut members, &bad)
            }
            FORMAT => self.import_v2(&mut members, &bad),
            other => Err(bad(format!("unsupported export format {other}"))),
        }
    }

    fn import_v1<R: Read>(
        &self,
        mut m: Manifest,
        members: &mut tar::Entries<'_, R>,
        bad: &dyn Fn(String) -> Error,
    ) -> Result<ImportReport> {
        let total = m.blobs.values().try_fold(0u64, |t, s| t.checked_add(*s));
        let total = total.ok_or_else(|| bad("blob sizes overflow".into()))?;
        check_room(self.tmp_dir(), total).map_err(bad)?;
        let mut staged: BTreeMap<Digest, PathBuf> = BTreeMap::new();
        let mut temps = TempFiles(Vec::new());
        for item in members {
            let mut item = item.map_err(|e| bad(e.to_string()))?;
            let name = member_name(&item, bad)?;
            if name == MANIFEST {
                return Err(bad("two manifests".into()));
            }
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
            stage_member(&mut item, digest, size, &tmp, bad)?;
            staged.insert(digest, tmp);
        }
        for e in &mut m.entries {
            let have =
                |d: &Digest| staged.contains_key(d).then(|| m.blobs.get(d).copied()).flatten();
            check_entry(e, &have).map_err(|msg| bad(format!("entry {}: {msg}", e.id)))?;
        }
        let mut report = ImportReport::default();
        let mut committed_blobs = BTreeSet::new();
        for e in &m.entries {
            if self.import_one(e, |d| staged[d].clone(), &mut report)? {
                committed_blobs.extend(e.blob_digests());
            }
        }
        report.blobs = committed_blobs.len() as u64;
        Ok(report)
    }

    /// Format 2: each batch is checked once its blobs are in (staged, verified, in a directory
    /// of their own) and spooled to a file there; only once the whole archive has been read is
    /// anything committed, from the spool.
    fn import_v2<R: Read>(
        &self,
        members: &mut tar::Entries<'_, R>,
        bad: &dyn Fn(String) -> Error,
    ) -> Result<ImportReport> {
        let stage = self.tmp_dir().join(unique_name("import-"));
        std::fs::create_dir(&stage).at(&stage)?;
        let _cleanup = TempFiles(vec![stage.clone()]);
        let staged_path = |d: &Digest| stage.join(format!("{}-{}", d.algorithm().name(), d.hex()));
        let spool_path = stage.join("entries.jsonl");
        let mut spool =
            std::io::BufWriter::new(std::fs::File::create(&spool_path).at(&spool_path)?);
        let mut current: Option<Batch> = None;
        let mut batches = 0u64;
        let mut total = 0u64;
        let mut arrived: HashSet<Digest> = HashSet::new();
        let mut spooled = 0u64;
        // Checks the entries of the batch whose blobs are all in, and spools them.
        let mut close = |batch: Option<Batch>, arrived: &mut HashSet<Digest>| -> Result<()> {
            let Some(mut b) = batch else { return Ok(()) };
            if let Some(d) = b.blobs.keys().find(|d| !arrived.contains(d)) {
                return Err(bad(format!("blob {d} is listed in a batch but missing")));
            }
            arrived.clear();
            for e in &mut b.entries {
                let have = |d: &Digest| {
                    b.blobs
                        .get(d)
                        .copied()
                        .or_else(|| std::fs::metadata(staged_path(d)).ok().map(|m| m.len()))
                };
                check_entry(e, &have).map_err(|msg| bad(format!("entry {}: {msg}", e.id)))?;
                serde_json::to_writer(&mut spool, e).map_err(|e| bad(e.to_string()))?;
                spool.write_all(b"\n").at(&spool_path)?;
                spooled += 1;
            }
            Ok(())
        };
        for item in members {
            let mut item = item.map_err(|e| bad(e.to_string()))?;
            let name = member_name(&item, bad)?;
            if name == MANIFEST {
                return Err(bad("two manifests".into()));
            }
            if let Some(n) = parse_batch_name(&name) {
                if n != batches {
                    return Err(bad(format!("batch {n} where batch {batches} was due")));
                }
                batches += 1;
                close(current.take(), &mut arrived)?;
                let (_, text) = read_small_member(item, bad)?;
                let b: Batch =
                    serde_json::from_slice(&text).map_err(|e| bad(format!("{name}: {e}")))?;
                for s in b.blobs.values() {
                    total =
                        total.checked_add(*s).ok_or_else(|| bad("blob sizes overflow".into()))?;
                }
                check_room(self.tmp_dir(), total).map_err(bad)?;
                current = Some(b);
                continue;
            }
            let digest =
                parse_blob_name(&name).ok_or_else(|| bad(format!("unexpected member {name:?}")))?;
            let b = current.as_ref().ok_or_else(|| bad("a blob before any batch".into()))?;
            let size = *b
                .blobs
                .get(&digest)
                .ok_or_else(|| bad(format!("blob {digest} is not in its batch")))?;
            if !arrived.insert(digest) {
                return Err(bad(format!("blob {digest} appears twice")));
            }
            let dest = staged_path(&digest);
            if dest.exists() {
                // Brought by an earlier batch already (an exporter may write it again).
                let member = item.header().size().map_err(|e| bad(e.to_string()))?;
                if member != size {
                    return Err(bad(format!(
                        "blob {digest} is {member} bytes in the archive, {size} in its batch"
                    )));
                }
                continue;
            }
            let part = stage.join(unique_name("part-"));
            stage_member(&mut item, digest, size, &part, bad)?;
            std::fs::rename(&part, &dest).at(&dest)?;
        }
        if batches == 0 {
            return Err(bad("no batch of entries".into()));
        }
        close(current.take(), &mut arrived)?;
        spool.flush().at(&spool_path)?;
        drop(spool);

        let mut report = ImportReport::default();
        let reader = std::io::BufReader::new(std::fs::File::open(&spool_path).at(&spool_path)?);
        let mut committed_blobs = 0u64;
        for (done, line) in (1u64..).zip(reader.lines()) {
            let line = line.at(&spool_path)?;
            let e: Entry = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
            if self.import_one(&e, staged_path, &mut report)? {
                committed_blobs += e.blob_digests().len() as u64;
            }
            if done % 256 == 0 || done == spooled {
                self.report_items(done, spooled);
            }
        }
        report.blobs = committed_blobs;
        Ok(report)
    }

    /// Commits one checked entry as the live run of its key, unless its key has one here
    /// already (counted as skipped); its blobs come from `staged`. Returns whether it was
    /// imported.
    fn import_one(
        &self,
        e: &Entry,
        staged: impl Fn(&Digest) -> PathBuf,
        report: &mut ImportReport,
    ) -> Result<bool> {
        // A damaged live row is replaced by the imported run.
        if matches!(self.meta().lookup(&e.key), Ok(Some(_))) {
            report.skipped += 1;
            return Ok(false);
        }
        let mut staging = crate::vault::StagingHandle::new(self);
        for d in e.blob_digests() {
            staging.file_expecting(&staged(&d), d)?;
        }
        self.commit(e, staging.blobs())?;
        report.imported += 1;
        Ok(true)
    }
}

/// The name of a member, which must be a regular file named in UTF-8.
fn member_name<R: Read>(item: &tar::Entry<'_, R>, bad: &dyn Fn(String) -> Error) -> Result<String> {
    let kind = item.header().entry_type();
    let name = String::from_utf8(item.path_bytes().into_owned())
        .map_err(|_| bad("a member name is not UTF-8".into()))?;
    if !kind.is_file() {
        return Err(bad(format!("member {name:?} is not a regular file ({kind:?})")));
    }
    Ok(name)
}

/// A manifest or batch member: its name and text, refused over `MANIFEST_MAX`.
fn read_small_member<R: Read>(
    mut item: tar::Entry<'_, R>,
    bad: &dyn Fn(String) -> Error,
) -> Result<(String, Vec<u8>)> {
    let name = member_name(&item, bad)?;
    let declared = item.header().size().map_err(|e| bad(e.to_string()))?;
    if declared > MANIFEST_MAX {
        return Err(bad(format!(
            "{name} is {declared} bytes, over the {MANIFEST_MAX} this format allows"
        )));
    }
    let mut text = Vec::new();
    item.by_ref().take(MANIFEST_MAX).read_to_end(&mut text).map_err(|e| bad(e.to_string()))?;
    Ok((name, text))
}

/// Writes blob member `item` to `tmp` and verifies it against `digest` and `size`. A member
/// larger than declared is refused before a byte of it is written, and a decompression never
/// runs past the declared size.
fn stage_member<R: Read>(
    item: &mut tar::Entry<'_, R>,
    digest: Digest,
    size: u64,
    tmp: &Path,
    bad: &dyn Fn(String) -> Error,
) -> Result<()> {
    let member = item.header().size().map_err(|e| bad(e.to_string()))?;
    if member != size {
        return Err(bad(format!(
            "blob {digest} is {member} bytes in the archive, {size} in the manifest"
        )));
    }
    let mut out = std::fs::File::create(tmp).at(tmp)?;
    std::io::copy(&mut item.by_ref().take(size + 1), &mut out).map_err(|e| bad(e.to_string()))?;
    out.flush().at(tmp)?;
    let (got, n) = hash_file(digest.algorithm(), tmp)?;
    if got != digest || n != size {
        return Err(bad(format!("blob {digest} does not match its content (tampered or damaged)")));
    }
    Ok(())
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
pub(crate) fn check_entry(
    e: &mut Entry,
    have: &dyn Fn(&Digest) -> Option<u64>,
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
        match have(&d) {
            None => return Err(format!("it needs blob {d}, which is missing")),
            Some(size) if size != n.size => {
                return Err(format!("node {:?} expects blob {d} to be {} bytes", n.path, n.size));
            }
            Some(_) => {}
        }
    }
    // Sizes come from the archive: summed with a check, never with an overflow.
    let total = e.outputs.iter().try_fold(0u64, |t, n| t.checked_add(n.size));
    if total != Some(e.size) {
        let total = total.map_or("more than 2^64".into(), |t| t.to_string());
        return Err(format!("its outputs add up to {total} bytes, not {}", e.size));
    }
    // What the archive says of the run's standing here is not trusted: it becomes the live
    // run of its key, with fresh counters.
    e.status = crate::entry::Status::Live;
    e.parent = None;
    e.access_count = 0;
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
