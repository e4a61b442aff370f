//! `taskvault._native`: the engine for the Python SDK. A thin layer: every method converts its
//! arguments, releases the GIL around the engine call, and converts the answer (entries travel
//! as JSON text). The Python package (`python/taskvault`) builds keys and does everything else.

mod error;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use taskvault::{DetachedClaim, Fetched, Filter, Output, SaveOptions, Status, TaskKey};

use error::{from_anyhow, to_py};

/// An open vault (shareable between threads), in the engine's resident mode: results it served
/// are kept in memory while they are current, hits are counted in batches (`flush`).
#[pyclass(frozen, weakref, module = "taskvault._native")]
struct Vault {
    inner: Arc<taskvault::Vault>,
    /// The remote tier's server, when the configuration names one.
    remote: Option<Arc<taskvault_remote::Remote>>,
}

/// A task key: its digest and ingredients, built by [`Vault::key`].
#[pyclass(frozen, module = "taskvault._native")]
struct Key {
    inner: TaskKey,
}

#[pymethods]
impl Key {
    /// The key digest (hex).
    #[getter]
    fn hex(&self) -> String {
        self.inner.digest().hex()
    }
    #[getter]
    fn task(&self) -> &str {
        &self.inner.task
    }
}

/// The right to compute a key, from [`Vault::claim`]. Exactly one of `fail` or `release` (or
/// garbage collection) ends it; a process that dies releases it too.
#[pyclass(frozen, module = "taskvault._native")]
struct ClaimHandle {
    vault: Arc<taskvault::Vault>,
    claim: Mutex<Option<DetachedClaim>>,
    /// The server's claim, held alongside the local one when there is a remote.
    lease: Mutex<Option<taskvault_remote::Lease>>,
}

#[pymethods]
impl ClaimHandle {
    /// Records `message` as the failure every waiter receives, then releases the claim.
    fn fail(&self, py: Python<'_>, message: &str) -> PyResult<()> {
        let claim = self.claim.lock().map_err(|_| poisoned())?.take();
        if let Some(l) = self.lease.lock().map_err(|_| poisoned())?.take() {
            py.detach(|| l.fail(message));
        }
        match claim {
            Some(c) => py.detach(|| self.vault.fail_claim(c, message)).map_err(to_py),
            None => Ok(()),
        }
    }

    /// Releases the claim (after a save, waiters then find the entry).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        self.claim.lock().map_err(|_| poisoned())?.take();
        let lease = self.lease.lock().map_err(|_| poisoned())?.take();
        py.detach(|| drop(lease));
        Ok(())
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        // The commit thread may hold the engine vault a little longer: write what waits now.
        if let Err(e) = self.inner.commit_deferred().and_then(|()| self.inner.flush()) {
            eprintln!("taskvault: deferred saves were not committed: {e}");
        }
    }
}

/// Commits deferred saves as they fall due, until the vault is dropped.
fn spawn_committer(vault: &Arc<taskvault::Vault>) -> PyResult<()> {
    let weak = Arc::downgrade(vault);
    std::thread::Builder::new()
        .name("taskvault-commit".into())
        .spawn(move || {
            while let Some(v) = weak.upgrade() {
                if let Err(e) = v.commit_deferred_when_due(std::time::Duration::from_millis(100)) {
                    // The claims went with the batch; the results will be computed again.
                    eprintln!("taskvault: deferred saves were not committed: {e}");
                }
            }
        })
        .map(drop)
        .map_err(|e| error::TaskVaultError::new_err(format!("starting the commit thread: {e}")))
}

fn poisoned() -> PyErr {
    error::TaskVaultError::new_err("a claim's lock was poisoned by a panic")
}

/// A served result: `(run id, output digest, size, bytes, raw)`; `raw` when the bytes are the
/// result itself (a `bytes` result stored as it is), not its serialization.
type Hit<'py> = (String, String, u64, Bound<'py, PyBytes>, bool);

fn hit<'py>(e: &taskvault::Entry, bytes: Bound<'py, PyBytes>) -> Hit<'py> {
    (e.id.clone(), output_digest(e), e.size, bytes, is_raw(e))
}

/// Whether the client stored the result as it is (see `_client.py`, `details.result`).
fn is_raw(e: &taskvault::Entry) -> bool {
    e.details.get("result").and_then(|v| v.as_str()) == Some("bytes")
}

/// A new Python `bytes` that the engine writes a large result into, so the result is copied
/// once, from the vault into the object Python gets.
#[derive(Default)]
struct NewBytes {
    obj: Option<Py<PyBytes>>,
}

/// Buffers at least this large ask the kernel for huge pages: a fresh 100 MiB buffer costs
/// about 25,000 page faults otherwise, more than decoding and hashing it.
const HUGE_PAGES_MIN: usize = 4 << 20;

impl taskvault::Destination for NewBytes {
    fn buffer(&mut self, len: usize) -> taskvault::Result<&mut [u8]> {
        let n = ffi::Py_ssize_t::try_from(len).map_err(|_| {
            taskvault::Error::Other(format!("a result of {len} bytes is too large"))
        })?;
        let obj = Python::attach(|py| -> PyResult<Py<PyBytes>> {
            // SAFETY: a NULL source asks for an uninitialized `bytes` of `n` bytes; the new
            // reference (or NULL and a Python error) is taken over by `from_owned_ptr_or_err`.
            #[allow(unsafe_code)]
            let any = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyBytes_FromStringAndSize(std::ptr::null(), n),
                )
            }?;
            Ok(any.cast_into::<PyBytes>()?.unbind())
        })
        .map_err(|e| taskvault::Error::Other(format!("allocating {len} bytes: {e}")))?;
        // SAFETY: `PyBytes_AsString` of a `bytes` object is its data (`len` bytes, plus a
        // trailing NUL), valid for as long as the object lives, which `self` ensures for the
        // borrow returned. CPython allows writing it only into an object just created by
        // `PyBytes_FromStringAndSize(NULL, size)`, as this one was; nobody else has seen it (we
        // hold its only reference), so this is the only access, with or without the GIL. The
        // bytes are zeroed before the slice is made, so it is initialized.
        #[allow(unsafe_code)]
        let buf = unsafe {
            let data = ffi::PyBytes_AsString(obj.as_ptr()).cast::<u8>();
            if len >= HUGE_PAGES_MIN {
                advise_huge_pages(data as usize, len);
            }
            std::ptr::write_bytes(data, 0, len);
            std::slice::from_raw_parts_mut(data, len)
        };
        self.obj = Some(obj);
        Ok(buf)
    }
}

/// Asks for transparent huge pages over the whole 2 MiB pages inside `[addr, addr + len)`.
/// Only a hint: where the kernel does not give them, nothing changes.
fn advise_huge_pages(addr: usize, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = addr.next_multiple_of(HUGE);
    let end = (addr + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: madvise only changes how the kernel backs pages of this process's own
        // mapping (the range lies inside the buffer); MADV_HUGEPAGE never changes contents.
        #[allow(unsafe_code)]
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// The digest of a bytes entry's one output (hex), what `ResultRef.hash` shows.
fn output_digest(e: &taskvault::Entry) -> String {
    e.outputs.first().and_then(|n| n.digest).map(|d| d.hex()).unwrap_or_default()
}

fn json<T: serde::Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string(v).map_err(|e| error::TaskVaultError::new_err(e.to_string()))
}

#[pymethods]
impl Vault {
    /// Opens the vault the `taskvault` command would use here (`dir` beats TASKVAULT_DIR,
    /// which beats `.taskvault/config.yaml`, which beats the default `.taskvault/cache`).
    #[new]
    #[pyo3(signature = (dir=None, config=None, store=None))]
    fn new(
        py: Python<'_>,
        dir: Option<PathBuf>,
        config: Option<PathBuf>,
        store: Option<String>,
    ) -> PyResult<Vault> {
        if let Some(url) = &store
            && !taskvault::store::postgres::is_postgres_url(url)
            && !taskvault::store::redis::is_redis_url(url)
        {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "store must be a PostgreSQL URL (postgres://...), a Redis URL (redis://...) or \
                 None, got {:?}",
                taskvault::store::postgres::shown(url)
            )));
        }
        let o = taskvault_settings::Overrides { dir, config, verbose: 0, identity: true };
        let mut resolved = py
            .detach(|| {
                taskvault_settings::resolve(&o).and_then(|r| r.check_creatable().map(|()| r))
            })
            .map_err(from_anyhow)?;
        if store.is_some() {
            resolved.settings.metadata_url = store;
        }
        let inner = py
            .detach(|| taskvault::Vault::open(resolved.settings).and_then(|v| v.resident()))
            .map_err(to_py)?;
        let inner = Arc::new(inner);
        spawn_committer(&inner)?;
        let remote = match &resolved.remote {
            Some(r) => {
                let config = taskvault_remote::Config::from(r);
                let remote = taskvault_remote::Remote::new(config, &inner.settings().namespace)
                    .map_err(|e| error::TaskVaultError::new_err(e.to_string()))?;
                Some(Arc::new(remote))
            }
            None => None,
        };
        Ok(Vault { inner, remote })
    }

    /// The remote tier's server URL, if one is configured.
    #[getter]
    fn remote_url(&self) -> Option<String> {
        self.remote.as_ref().map(|r| r.url().to_owned())
    }

    /// The shared metadata store (PostgreSQL, Redis) as messages show it, if the vault uses one.
    #[getter]
    fn store_url(&self) -> Option<String> {
        self.inner.settings().metadata_url.as_deref().map(taskvault::store::postgres::shown)
    }

    /// The vault directory.
    #[getter]
    fn dir(&self) -> PathBuf {
        self.inner.settings().vault_dir.clone()
    }

    /// Builds the key of `task` from labelled ingredients (label, bytes), in order.
    fn key(&self, task: &str, ingredients: Vec<(String, Vec<u8>)>) -> PyResult<Key> {
        let inner = self.inner.key_with(task, &[], ingredients).map_err(to_py)?;
        Ok(Key { inner })
    }

    /// Commits deferred saves and writes the hits and audit lines buffered so far (also done
    /// when the vault is dropped).
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.commit_deferred().and_then(|()| self.inner.flush())).map_err(to_py)
    }

    /// The hits among `keys`, in order, in one call: a hit as `get_or_claim` gives it, `None`
    /// where there is none yet (not counted as a miss: ask `get_or_claim` for those).
    fn fetch_present<'py>(
        &self,
        py: Python<'py>,
        keys: Vec<PyRef<'py, Key>>,
    ) -> PyResult<Vec<Option<Hit<'py>>>> {
        let inner: Vec<&taskvault::TaskKey> = keys.iter().map(|k| &k.inner).collect();
        let got = py.detach(|| self.inner.fetch_present(&inner)).map_err(to_py)?;
        Ok(got.into_iter().map(|s| s.map(|s| hit(&s.entry, PyBytes::new(py, &s.bytes)))).collect())
    }

    /// The result of `key`, else the claim to compute it: `("hit", hit)` when the result is
    /// there (kept in memory, in the vault, or just saved by the worker waited for);
    /// `("compute", handle)` for the one caller that must compute it; `("failed", message)`
    /// when the worker waited for failed. Waiting blocks in the kernel.
    fn get_or_claim<'py>(&self, py: Python<'py>, key: &Key) -> PyResult<(&'static str, Py<PyAny>)> {
        let vault = Arc::clone(&self.inner);
        enum Got {
            Hit(taskvault::Served),
            Written(Arc<taskvault::Entry>),
            Compute(DetachedClaim, Option<taskvault_remote::Lease>),
            Failed(String),
        }
        let mut large = NewBytes::default();
        let remote = self.remote.as_deref();
        let got = py
            .detach(|| -> taskvault::Result<Got> {
                Ok(match vault.fetch_or_claim(&key.inner, Some(&mut large))? {
                    Fetched::Hit(s) => Got::Hit(s),
                    Fetched::Written(e) => Got::Written(e),
                    Fetched::Compute(g) => {
                        let g = g.detach();
                        match remote {
                            Some(r) => from_remote(r, &vault, &key.inner, g)?,
                            None => Got::Compute(g, None),
                        }
                    }
                    Fetched::Failed(m) => Got::Failed(m),
                })
            })
            .map_err(to_py)?;
        /// After a local miss (holding the local claim, so local waiters wait for this): the
        /// server's result, its claim, or what its claimant reported.
        fn from_remote(
            r: &taskvault_remote::Remote,
            vault: &taskvault::Vault,
            key: &TaskKey,
            g: DetachedClaim,
        ) -> taskvault::Result<Got> {
            use taskvault_remote::Claimed;
            if let Some(s) = pull_and_fetch(r, vault, key)? {
                drop(g);
                return Ok(Got::Hit(s));
            }
            if r.read_only() {
                return Ok(Got::Compute(g, None));
            }
            match degrade(r, r.claim(key), "this call")? {
                Some(Claimed::Granted(lease)) => Ok(Got::Compute(g, Some(lease))),
                Some(Claimed::Ready) => match pull_and_fetch(r, vault, key)? {
                    Some(s) => {
                        drop(g);
                        Ok(Got::Hit(s))
                    }
                    None => Ok(Got::Compute(g, None)),
                },
                Some(Claimed::Failed(m)) => {
                    vault.fail_claim(g, &m)?;
                    Ok(Got::Failed(m))
                }
                None => Ok(Got::Compute(g, None)),
            }
        }
        Ok(match got {
            Got::Hit(s) => {
                let h = hit(&s.entry, PyBytes::new(py, &s.bytes));
                ("hit", h.into_pyobject(py)?.into_any().unbind())
            }
            Got::Written(e) => {
                let bytes = large.obj.take().ok_or_else(|| {
                    error::TaskVaultError::new_err(
                        "the engine wrote a result it never asked for a buffer for",
                    )
                })?;
                let h = hit(&e, bytes.into_bound(py));
                ("hit", h.into_pyobject(py)?.into_any().unbind())
            }
            Got::Compute(c, lease) => {
                let h = ClaimHandle { vault, claim: Mutex::new(Some(c)), lease: Mutex::new(lease) };
                ("compute", Py::new(py, h)?.into_any())
            }
            Got::Failed(m) => ("failed", m.into_pyobject(py)?.into_any().unbind()),
        })
    }

    /// Stores `data` as the result of `key`; returns the new run as `(id, digest, size)`.
    /// With `claim`, the save may be committed shortly after it returns (small results, in a
    /// batch); the claim is released after the commit.
    #[pyo3(signature = (key, data, ttl=None, tags=None, details=None, duration_ms=None, claim=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn save(
        &self,
        py: Python<'_>,
        key: &Key,
        data: &[u8],
        ttl: Option<f64>,
        tags: Option<BTreeMap<String, String>>,
        details: Option<&str>,
        duration_ms: Option<i64>,
        claim: Option<&ClaimHandle>,
    ) -> PyResult<(String, String, u64)> {
        let details = parse_details(details)?;
        let opts = SaveOptions {
            ttl: ttl.map(ttl_duration).transpose()?,
            duration_ms,
            tags: tags.unwrap_or_default(),
            details,
            ..SaveOptions::default()
        };
        let remote = self.remote.as_deref();
        let e = match claim {
            // With a remote the save commits at once: its blobs are read back to be shared.
            Some(h) if remote.is_none() => {
                let c = h.claim.lock().map_err(|_| poisoned())?.take();
                py.detach(|| self.inner.save_deferred(&key.inner, data, &opts, c))
            }
            Some(h) => {
                let c = h.claim.lock().map_err(|_| poisoned())?.take();
                let lease = h.lease.lock().map_err(|_| poisoned())?.take();
                py.detach(|| -> taskvault::Result<Arc<taskvault::Entry>> {
                    let e = self.inner.save(&key.inner, Output::Bytes(data), &opts)?;
                    drop(c);
                    if push(remote, &self.inner, &e)?
                        && let Some(l) = lease
                    {
                        l.done();
                    }
                    Ok(Arc::new(e))
                })
            }
            None => py.detach(|| -> taskvault::Result<Arc<taskvault::Entry>> {
                let e = self.inner.save(&key.inner, Output::Bytes(data), &opts)?;
                push(remote, &self.inner, &e)?;
                Ok(Arc::new(e))
            }),
        }
        .map_err(to_py)?;
        Ok((e.id.clone(), output_digest(&e), e.size))
    }

    /// Records a failed run of `key` with `message` as its error (history, never served) and
    /// hands the failure to the waiters of `claim`, then releases it. Returns the run as JSON.
    #[pyo3(signature = (key, message, tags=None, details=None, duration_ms=None, claim=None))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn record_failure(
        &self,
        py: Python<'_>,
        key: &Key,
        message: &str,
        tags: Option<BTreeMap<String, String>>,
        details: Option<&str>,
        duration_ms: Option<i64>,
        claim: Option<&ClaimHandle>,
    ) -> PyResult<String> {
        let opts = SaveOptions {
            duration_ms,
            tags: tags.unwrap_or_default(),
            details: parse_details(details)?,
            ..SaveOptions::default()
        };
        let claim = match claim {
            Some(h) => {
                if let Some(l) = h.lease.lock().map_err(|_| poisoned())?.take() {
                    py.detach(|| l.fail(message));
                }
                h.claim.lock().map_err(|_| poisoned())?.take()
            }
            None => None,
        };
        let e = py
            .detach(|| self.inner.record_failed_run(&key.inner, message, &opts, claim))
            .map_err(to_py)?;
        json(&e)
    }

    /// Entries as JSON text (newest first).
    #[pyo3(signature = (task=None, tag=None, status=None, since_ms=None, limit=None, all=false))]
    #[allow(clippy::too_many_arguments)] // mirrors the Python keyword arguments
    fn list(
        &self,
        py: Python<'_>,
        task: Option<String>,
        tag: Option<(String, Option<String>)>,
        status: Option<&str>,
        since_ms: Option<i64>,
        limit: Option<usize>,
        all: bool,
    ) -> PyResult<String> {
        let status = status.map(parse_status).transpose()?;
        let filter = Filter { task, tag, status, since_ms, limit, all: all || status.is_some() };
        json(&py.detach(|| self.inner.list(&filter)).map_err(to_py)?)
    }

    /// The run a hash (prefix of a run id or key) names, as JSON text.
    fn show(&self, py: Python<'_>, hash: &str) -> PyResult<String> {
        json(&py.detach(|| self.inner.resolve(hash)).map_err(to_py)?)
    }

    /// All runs of the key of `hash`, oldest first, as JSON text.
    fn history(&self, py: Python<'_>, hash: &str) -> PyResult<String> {
        let runs = py
            .detach(|| self.inner.resolve(hash).and_then(|e| self.inner.history(&e)))
            .map_err(to_py)?;
        json(&runs)
    }

    /// The bytes of the run `hash` names and whether they are the result itself (see `Hit`);
    /// `None` if they failed verification.
    fn run_bytes<'py>(
        &self,
        py: Python<'py>,
        hash: &str,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, bool)>> {
        let (e, b) = py
            .detach(|| {
                let e = self.inner.resolve(hash)?;
                let b = self.inner.run_bytes(&e)?;
                Ok((e, b))
            })
            .map_err(to_py)?;
        Ok(b.map(|b| (PyBytes::new(py, &b), is_raw(&e))))
    }

    /// Removes exactly the runs named (a live one takes its key's entry with it); returns how
    /// many runs there were.
    fn remove_runs(&self, py: Python<'_>, hashes: Vec<String>) -> PyResult<usize> {
        py.detach(|| {
            let runs = hashes
                .iter()
                .map(|h| self.inner.resolve(h))
                .collect::<taskvault::Result<Vec<_>>>()?;
            self.inner.remove_runs(&runs).map(|_| runs.len())
        })
        .map_err(to_py)
    }

    /// Removes every live entry tagged `key` (with `value`, if not `None`).
    fn invalidate(&self, py: Python<'_>, key: &str, value: Option<&str>) -> PyResult<usize> {
        py.detach(|| self.inner.invalidate(key, value)).map(|r| r.len()).map_err(to_py)
    }

    /// Removes expired entries, and entries unused for `older_than_s` / beyond `max_size`.
    #[pyo3(signature = (older_than_s=None, max_size=None))]
    fn gc(
        &self,
        py: Python<'_>,
        older_than_s: Option<f64>,
        max_size: Option<u64>,
    ) -> PyResult<String> {
        let older = older_than_s.map(std::time::Duration::from_secs_f64);
        json(&py.detach(|| self.inner.gc(older, max_size)).map_err(to_py)?)
    }

    /// Removes every entry; returns how many there were.
    fn clear(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.clear()).map_err(to_py)
    }

    fn stats(&self, py: Python<'_>) -> PyResult<String> {
        json(&py.detach(|| self.inner.stats()).map_err(to_py)?)
    }

    fn verify(&self, py: Python<'_>) -> PyResult<String> {
        json(&py.detach(|| self.inner.verify()).map_err(to_py)?)
    }

    /// Writes the live entries (of `task`, if given) to a `.tar.zst` archive.
    #[pyo3(signature = (path, task=None))]
    fn export(&self, py: Python<'_>, path: PathBuf, task: Option<String>) -> PyResult<String> {
        let report = py
            .detach(|| self.inner.export_where(&Filter { task, ..Filter::default() }, &path))
            .map_err(to_py)?;
        json(&report)
    }

    fn import_archive(&self, py: Python<'_>, path: PathBuf) -> PyResult<String> {
        json(&py.detach(|| self.inner.import(&path)).map_err(to_py)?)
    }

    /// The first seed's SDK: stores `output` as the result of `task` on `input`.
    fn cache_result(
        &self,
        py: Python<'_>,
        task: &str,
        input: &[u8],
        output: &[u8],
    ) -> PyResult<String> {
        py.detach(|| self.inner.cache_result(task, input, output)).map(|e| e.id).map_err(to_py)
    }

    /// The first seed's SDK: `(bytes, True)` on a hit, `(None, False)` on a miss.
    fn get_cached_result<'py>(
        &self,
        py: Python<'py>,
        task: &str,
        input: &[u8],
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
        let (b, hit) = py.detach(|| self.inner.get_cached_result(task, input)).map_err(to_py)?;
        Ok((b.map(|b| PyBytes::new(py, &b)), hit))
    }
}

/// The remote tier's rule for a result: an unavailable server is a warning and `None`.
fn degrade<T>(
    r: &taskvault_remote::Remote,
    res: Result<T, taskvault_remote::RemoteError>,
    what: &str,
) -> taskvault::Result<Option<T>> {
    r.degrade(res, what).map_err(|e| match e {
        taskvault_remote::RemoteError::Local(e) => e,
        other => taskvault::Error::Other(format!("remote: {other}")),
    })
}

/// Fetches `key` from the server into the local vault and reads it back; `None` on a miss.
fn pull_and_fetch(
    r: &taskvault_remote::Remote,
    vault: &taskvault::Vault,
    key: &TaskKey,
) -> taskvault::Result<Option<taskvault::Served>> {
    if let Some(Some(_)) = degrade(r, r.pull(vault, key), "this lookup")? {
        vault.count_remote_hit()?;
        return vault.fetch(key);
    }
    Ok(None)
}

/// Shares a run just saved with the server, if there is one and it may be written.
fn push(
    remote: Option<&taskvault_remote::Remote>,
    vault: &taskvault::Vault,
    e: &taskvault::Entry,
) -> taskvault::Result<bool> {
    match remote {
        Some(r) if !r.read_only() => Ok(degrade(r, r.push(vault, e), "this save")?.is_some()),
        _ => Ok(false),
    }
}

fn parse_details(details: Option<&str>) -> PyResult<serde_json::Value> {
    match details {
        Some(d) => serde_json::from_str(d)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string())),
        None => Ok(serde_json::Value::Null),
    }
}

/// A TTL in seconds (fractions kept); `0` means never expires.
fn ttl_duration(secs: f64) -> PyResult<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "ttl must be a finite number of seconds, 0 or more; got {secs}"
        ))
    })
}

fn parse_status(s: &str) -> PyResult<Status> {
    Status::parse(s).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!(
            "unknown status {s:?} (live, superseded, corrupt, failed)"
        ))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Vault>()?;
    m.add_class::<Key>()?;
    m.add_class::<ClaimHandle>()?;
    let py = m.py();
    m.add("TaskVaultError", py.get_type::<error::TaskVaultError>())?;
    m.add("NotFoundError", py.get_type::<error::NotFoundError>())?;
    m.add("AmbiguousError", py.get_type::<error::AmbiguousError>())?;
    m.add("ConfigError", py.get_type::<error::ConfigError>())?;
    m.add("TooLargeError", py.get_type::<error::TooLargeError>())?;
    m.add("KEY_VERSION", taskvault::key::KEY_VERSION)?;
    Ok(())
}
