//! Copying a vault's metadata to another metadata store (`Vault::copy_metadata_to`), both to a
//! store that keeps them together (`Vault::copy_to_store`, Redis), and its blobs to another
//! blob store (`taskvault migrate --to s3://...`): every blob
//! is verified against its digest as it is read from this vault, written to the target in its
//! stored form (compressed or not, so its row stays true), then read back from the target and
//! compared. Blobs the target already holds are skipped, so an interrupted run resumes where it
//! stopped. Outputs kept inline in the metadata are not blobs of the store and stay where they
//! are.

use std::io::{Read, Write};

use crate::digest::Digest;
use crate::entry::Status;
use crate::entry::{BlobInfo, Codec};
use crate::error::{Error, IoContext, Result};
use crate::store::{BlobReader, BlobStore, MetaStore, StagedBlob};

use super::{Vault, unique_name};

/// Blob rows read per batch of the walk.
const BATCH: usize = 512;

/// What [`Vault::copy_blobs_to`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MigrateReport {
    /// Blobs copied and verified on the target.
    pub copied: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Blobs the target held already (an earlier, interrupted run).
    pub present: u64,
    /// Blobs that failed verification here: not copied, quarantined (as `verify` would).
    pub corrupt: Vec<(String, String)>,
}

impl Vault {
    /// Copies every blob of this vault's blob store to `target` (see the module docs).
    pub fn copy_blobs_to(&self, target: &dyn BlobStore) -> Result<MigrateReport> {
        let mut report = MigrateReport::default();
        let present: std::collections::HashSet<Digest> =
            target.list()?.into_iter().map(|(d, _)| d).collect();
        let mut after: Option<String> = None;
        loop {
            let rows = self.meta.blobs_after(after.as_deref(), BATCH)?;
            let Some(last) = rows.last() else { break };
            after = Some(last.digest.to_string());
            for info in rows.iter().filter(|i| i.inline.is_none()) {
                if present.contains(&info.digest) {
                    report.present += 1;
                    continue;
                }
                match self.copy_blob(info, target)? {
                    Ok(()) => {
                        report.copied += 1;
                        report.bytes += info.stored_size;
                    }
                    Err(why) => {
                        self.corrupt(&info.digest, &why, "migrate")?;
                        report.corrupt.push((info.digest.to_string(), why));
                    }
                }
                self.report_progress(report.bytes);
            }
        }
        Ok(report)
    }

    /// One blob: `Ok(Err(why))` when this vault's copy fails verification.
    fn copy_blob(&self, info: &BlobInfo, target: &dyn BlobStore) -> Result<Result<(), String>> {
        let d = info.digest;
        let tmp = self.tmp_dir().join(unique_name("migrate-"));
        let guard = TmpFile(&tmp);
        let stored = match readable(self.blobs.open_sized(&d, info.stored_size)?) {
            Ok(r) => r,
            Err(why) => return Ok(Err(format!("blob file {why}"))),
        };
        // The stored bytes go to a staging file as they are; their plain form is hashed on the
        // way (through the decoder for a compressed blob).
        let stored_hash = {
            let mut out = std::fs::File::create(&tmp).at(&tmp)?;
            let mut tee = Tee { inner: stored, out: &mut out, hasher: blake3::Hasher::new(), n: 0 };
            let plain = match info.codec {
                Codec::Raw => hash_plain(&d, &mut tee),
                Codec::Zstd => match zstd::stream::Decoder::new(&mut tee) {
                    Ok(mut dec) => hash_plain(&d, &mut dec),
                    Err(e) => Err(format!("zstd: {e}")),
                },
            };
            let (hash, n) = (tee.hasher.finalize(), tee.n);
            match plain {
                Ok(size) if size != info.size => {
                    return Ok(Err(format!("{size} bytes, the row says {}", info.size)));
                }
                Ok(_) if n != info.stored_size => {
                    return Ok(Err(format!("{n} stored bytes, the row says {}", info.stored_size)));
                }
                Ok(_) => {}
                Err(why) => return Ok(Err(why)),
            }
            out.sync_all().at(&tmp)?;
            hash
        };
        target.put(&d, &tmp)?;
        drop(guard);
        // Read back from the target: the bytes it will serve are the bytes written.
        let back = readable(target.open_sized(&d, info.stored_size)?)
            .map_err(|why| target_err(&d, &format!("{why}, after it was written")))?;
        let mut hasher = blake3::Hasher::new();
        let n = std::io::copy(&mut { back }, &mut HashWriter(&mut hasher)).map_err(Error::Io)?;
        if n != info.stored_size || hasher.finalize() != stored_hash {
            let _ = target.remove(&d);
            return Err(target_err(&d, "the copy read back differs from what was written"));
        }
        Ok(Ok(()))
    }
}

/// The bytes of an opened blob, or why there are none to read.
fn readable(opened: Option<BlobReader>) -> std::result::Result<Box<dyn Read>, String> {
    match opened {
        Some(BlobReader::File(f)) => Ok(Box::new(f)),
        Some(BlobReader::Stream(s)) => Ok(Box::new(s)),
        Some(BlobReader::Unusable(why)) => Err(why),
        None => Err("is missing".into()),
    }
}

fn target_err(d: &Digest, why: &str) -> Error {
    Error::Store { store: "the migration's target".into(), message: format!("blob {d}: {why}") }
}

/// Reads `r` to its end, hashing with `d`'s algorithm; the length, or why it is not `d`.
fn hash_plain(d: &Digest, r: &mut dyn Read) -> std::result::Result<u64, String> {
    let mut h = d.algorithm().hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                h.update(&buf[..k]);
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let got = h.finish();
    if got == *d { Ok(n) } else { Err(format!("hashes to {got}")) }
}

/// Copies what is read into a file and a hash of the stored bytes.
struct Tee<'a> {
    inner: Box<dyn Read>,
    out: &'a mut std::fs::File,
    hasher: blake3::Hasher,
    n: u64,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.out.write_all(&buf[..k])?;
        self.hasher.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
}

struct HashWriter<'a>(&'a mut blake3::Hasher);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Removes a staging file on every way out (the target's `put` may have moved it already).
struct TmpFile<'a>(&'a std::path::Path);

impl Drop for TmpFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// What [`Vault::copy_metadata_to`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MetadataReport {
    /// Live entries whose runs were copied (and checked on the target).
    pub entries: u64,
    /// Runs copied: live ones, the runs they replaced and failed runs, oldest first per key.
    pub runs: u64,
    /// Runs the target held already (an earlier, interrupted run).
    pub present: u64,
    /// Runs left behind: corrupt ones (never served anyway) and, when the bytes are copied too,
    /// replaced runs whose outputs were dropped already (a store that keeps the bytes with the
    /// rows holds no run without them).
    pub skipped: u64,
    /// Blobs copied with the runs (and verified there), when the target keeps the bytes too.
    pub blobs: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// Blobs that failed verification here: their entries not copied, quarantined (as `verify`
    /// would).
    pub corrupt: Vec<(String, String)>,
}

/// Live keys read per batch of the walk.
const KEYS: usize = 256;

impl Vault {
    /// Copies this vault's metadata (every live entry with its history and failed runs, blob
    /// rows, tags) to the metadata store `target` (`taskvault migrate --to postgres://...`). The
    /// blob bytes stay where they are: both stores describe the same blob store. Each key's runs
    /// are replayed oldest first, as the saves that made them (the same run ids, times, tags and
    /// parents), then the target's live run is checked against this vault's. Runs the target
    /// holds are skipped, so an interrupted copy resumes; hit and miss counters start again from
    /// zero on the target.
    pub fn copy_metadata_to(&self, target: &dyn MetaStore) -> Result<MetadataReport> {
        self.copy_runs(target, None)
    }

    /// Copies this vault's metadata, as [`Vault::copy_metadata_to`] does, and the bytes of
    /// every blob its runs use, as [`Vault::copy_blobs_to`] does (verified here, read back
    /// there), to a store that keeps both (`taskvault migrate --to redis://...`). A live run
    /// whose blob fails verification here is quarantined and not copied; a replaced run whose
    /// outputs were dropped already is left behind.
    pub fn copy_to_store(
        &self,
        meta: &dyn MetaStore,
        bytes: &dyn BlobStore,
    ) -> Result<MetadataReport> {
        self.copy_runs(meta, Some(bytes))
    }

    fn copy_runs(
        &self,
        target: &dyn MetaStore,
        bytes: Option<&dyn BlobStore>,
    ) -> Result<MetadataReport> {
        self.fold_accesses()?;
        let mut report = MetadataReport::default();
        let mut after = 0;
        loop {
            let keys = self.meta.live_keys_after(after, KEYS)?;
            let Some((last, _)) = keys.last() else { return Ok(report) };
            after = *last;
            for (_, key) in &keys {
                self.copy_key(key, target, bytes, &mut report)?;
                self.report_items(report.entries, 0);
            }
        }
    }

    fn copy_key(
        &self,
        key: &str,
        target: &dyn MetaStore,
        bytes: Option<&dyn BlobStore>,
        r: &mut MetadataReport,
    ) -> Result<()> {
        let there: std::collections::HashSet<String> =
            target.history(key)?.into_iter().map(|e| e.id).collect();
        let runs = self.meta.history(key)?;
        let Some(live) = runs.iter().find(|e| e.status == Status::Live).map(|e| e.id.clone())
        else {
            return Ok(());
        };
        for run in runs {
            if there.contains(&run.id) {
                r.present += 1;
                continue;
            }
            match run.status {
                Status::Live | Status::Superseded => {
                    let blobs = self.blobs_of(&run)?;
                    let Some(to) = bytes else {
                        // The bytes are in the blob store already: nothing to place.
                        target.commit_save(&run, &blobs, &mut |_| Ok(()))?;
                        r.runs += 1;
                        continue;
                    };
                    // The target asks for the bytes it lacks, each copied and verified.
                    let mut bad: Option<(Digest, String)> = None;
                    let mut copied = (0, 0);
                    let mut place = |b: &StagedBlob| match self.copy_blob(&b.info, to)? {
                        Ok(()) => {
                            copied = (copied.0 + 1, copied.1 + b.info.stored_size);
                            Ok(())
                        }
                        Err(why) => {
                            bad = Some((b.info.digest, why));
                            Err(Error::Other("not copied".into()))
                        }
                    };
                    let committed = target.commit_save(&run, &blobs, &mut place);
                    r.blobs += copied.0;
                    r.bytes += copied.1;
                    self.report_progress(r.bytes);
                    match (committed, bad) {
                        (Ok(_), _) => {}
                        (Err(_), Some((_, _))) if run.status == Status::Superseded => {
                            // Its outputs were dropped when it was replaced: history only.
                            r.skipped += 1;
                            continue;
                        }
                        (Err(_), Some((d, why))) => {
                            // The live run's bytes are damaged here: never copied, and not
                            // served here either from now on. The runs it replaced, copied
                            // already, are not served there in its place.
                            target.remove_keys(&[key.to_owned()], None)?;
                            self.corrupt(&d, &why, "migrate")?;
                            r.corrupt.push((d.to_string(), why));
                            return Ok(());
                        }
                        (Err(e), None) => return Err(e),
                    }
                }
                Status::Failed => {
                    let message = run.details.get("error").and_then(|m| m.as_str()).unwrap_or("");
                    target.record_failed_run(&run, message)?;
                }
                Status::Corrupt => {
                    r.skipped += 1;
                    continue;
                }
            }
            r.runs += 1;
        }
        match target.lookup(key)? {
            Some(e) if e.id == live => {}
            other => {
                return Err(Error::Other(format!(
                    "copying the metadata of key {key}: the target's live run is {}, not {live}",
                    other.map_or_else(|| "missing".to_owned(), |e| e.id)
                )));
            }
        }
        r.entries += 1;
        Ok(())
    }

    /// The blob rows of `run` as a save brings them: inline bytes as they are, others as rows
    /// whose bytes the blob store holds (a placeholder staging path that is never read). A run
    /// that was replaced may have lost its blobs (dropped when no live entry used them): its rows
    /// are then made from its output nodes, and dropped again when the next run replaces it.
    fn blobs_of(&self, run: &crate::entry::Entry) -> Result<Vec<StagedBlob>> {
        run.blob_digests()
            .into_iter()
            .map(|d| {
                let info = match (run.embedded_blob(&d), self.meta.blob(&d)?) {
                    (Some(b), _) => b.clone(),
                    (None, Some(row)) => row,
                    (None, None) if run.status == Status::Superseded => {
                        let size = run
                            .outputs
                            .iter()
                            .chain(&run.console)
                            .find(|n| n.digest == Some(d))
                            .map_or(0, |n| n.size);
                        BlobInfo {
                            digest: d,
                            size,
                            stored_size: size,
                            codec: Codec::Raw,
                            inline: None,
                        }
                    }
                    (None, None) => {
                        return Err(Error::Other(format!("run {}: blob {d} has no row", run.id)));
                    }
                };
                let staged =
                    info.inline.is_none().then(|| std::path::PathBuf::from("(in the blob store)"));
                Ok(StagedBlob { info, staged, unsynced: false })
            })
            .collect()
    }
}
