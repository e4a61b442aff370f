//! The remote tier: a blocking client of `taskvault serve` for the CLI and the Python SDK.
//!
//! The local vault is always asked first; [`Remote::pull`] fetches a key's entry from the
//! server, downloads its blobs (each verified against its digest while it streams to a file in
//! the vault's own temporary directory, resumed with `Range` if the connection drops) and
//! admits the entry into the local vault, so the next hit is local. [`Remote::push`] uploads
//! only the blobs the server lacks, then the entry.
//!
//! A server that cannot be used never breaks the user's work: [`Remote::degrade`] turns a
//! network failure, a timeout or a 5xx into one warning on stderr per process and a miss
//! (unless the configuration says `required: true`); a 401 or 403 is reported every time.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use taskvault::{Digest, Entry, TaskKey, Vault};

/// Digests per missing-blobs query.
const MISSING_BATCH: usize = 10_000;
/// A download hands what it wrote to the disk this often.
const WRITEBACK_EVERY: u64 = 64 << 20;
/// Attempts to finish one download, resuming where the last one stopped.
const DOWNLOAD_ATTEMPTS: usize = 3;
/// After a failure, the server is not asked again for this long (a build with many lookups
/// pays one timeout, not one per lookup).
const BACKOFF: Duration = Duration::from_secs(30);

/// How the remote tier is configured (resolved by `taskvault-settings`).
#[derive(Clone)]
pub struct Config {
    pub url: String,
    pub token: Option<String>,
    /// The variable the token came from, for messages.
    pub token_env: String,
    pub read_only: bool,
    pub required: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// How long a claim on the server lasts unless renewed.
    pub lease: Duration,
}

impl From<&taskvault_settings::Remote> for Config {
    fn from(r: &taskvault_settings::Remote) -> Config {
        Config {
            url: r.url.clone(),
            token: r.token.clone(),
            token_env: r.token_env.clone(),
            read_only: r.read_only,
            required: r.required,
            connect_timeout: r.connect_timeout,
            timeout: r.timeout,
            lease: r.lease,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config").field("url", &self.url).finish_non_exhaustive()
    }
}

/// Why the server could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Unreachable, timed out, 5xx, or an answer that is not the protocol.
    #[error("{0}")]
    Unavailable(String),
    /// 401 or 403: the token is missing, wrong, revoked, or lacks the scope or namespace.
    #[error("{0}")]
    Denied(String),
    /// Another refusal (4xx): the request itself was wrong.
    #[error("{0}")]
    Refused(String),
    /// The server sent bytes that do not match their digest; nothing was kept.
    #[error("{0}")]
    Corrupt(String),
    /// The local vault failed.
    #[error(transparent)]
    Local(#[from] taskvault::Error),
}

type Result<T> = std::result::Result<T, RemoteError>;

/// Blobs that came with an entry: (digest, verified bytes).
type SmallBlobs = Vec<(Digest, Vec<u8>)>;

/// The server's answer to a lookup made ahead of need ([`Remote::prefetch`]).
#[derive(Debug)]
pub struct Prefetched(Result<Option<(Entry, SmallBlobs)>>);

/// A lookup under way on a thread of its own ([`Remote::prefetch`]).
#[derive(Debug)]
pub struct Prefetching(std::thread::JoinHandle<Result<Option<(Entry, SmallBlobs)>>>);

impl Prefetching {
    /// The server's answer, once it has come.
    pub fn wait(self) -> Prefetched {
        Prefetched(self.0.join().unwrap_or_else(|_| {
            Err(RemoteError::Unavailable("the lookup's thread panicked".into()))
        }))
    }
}

/// What [`Remote::push`] sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub blobs: usize,
    pub bytes: u64,
    /// Blobs the server had already.
    pub skipped: usize,
}

#[derive(Debug, serde::Deserialize)]
struct EntryResponse {
    entry: Entry,
    #[serde(default)]
    blobs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: String,
}

#[derive(Debug, serde::Deserialize)]
struct MissingResponse {
    missing: Vec<String>,
}

/// A client of one server, for one namespace (the vault's `namespace` setting).
pub struct Remote {
    config: Config,
    namespace: String,
    agent: ureq::Agent,
    bulk: OnceLock<ureq::Agent>,
    bulk_config: ureq::config::Config,
    warned: AtomicBool,
    down_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.config.url)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Remote {
    /// A client; fails only if the namespace cannot be a server namespace.
    pub fn new(config: Config, namespace: &str) -> Result<Remote> {
        let valid = (1..=64).contains(&namespace.len())
            && !namespace.starts_with('.')
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(RemoteError::Refused(format!(
                "namespace {namespace:?} cannot be used with a remote: 1 to 64 letters, digits, \
                 '.', '_' or '-'"
            )));
        }
        let agent_config = |input_buffer: usize| {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(config.connect_timeout))
                .timeout_recv_response(Some(config.timeout))
                .timeout_recv_body(Some(config.timeout))
                .timeout_send_body(Some(config.timeout))
                .user_agent(concat!("taskvault/", env!("CARGO_PKG_VERSION")))
                // Requests are small: a 16 KiB output buffer instead of 128 KiB (a hit pays
                // for zeroing it, and for the pages it touches).
                .output_buffer_size(16 << 10)
                .input_buffer_size(input_buffer)
                .build()
        };
        Ok(Remote {
            // Answers are small (an entry with its small blobs is read through the buffer in
            // pieces): 16 KiB. Blob downloads come through 256 KiB, in fewer reads (each also
            // sets the socket's timeout), on an agent made when the first one starts.
            agent: ureq::Agent::new_with_config(agent_config(16 << 10)),
            bulk: OnceLock::new(),
            bulk_config: agent_config(256 << 10),
            config,
            namespace: namespace.to_owned(),
            warned: AtomicBool::new(false),
            down_until: Mutex::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    pub fn read_only(&self) -> bool {
        self.config.read_only
    }

    fn ns_url(&self, rest: &str) -> String {
        format!("{}/v1/ns/{}/{rest}", self.config.url, self.namespace)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.config.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// Whether an earlier failure says not to ask the server for now.
    fn resting(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        down.is_some_and(|until| Instant::now() < until)
    }

    /// Applies the "never break the user's work" rule to a result: an unavailable server is a
    /// warning (once per process) and `None`, unless the remote is required; a refusal of the
    /// token is reported every time. Local errors pass through.
    pub fn degrade<T>(&self, r: Result<T>, what: &str) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(RemoteError::Local(e)) => Err(RemoteError::Local(e)),
            Err(e) if self.config.required => Err(e),
            Err(RemoteError::Unavailable(why)) => {
                *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + BACKOFF);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    warn(&format!(
                        "remote {} cannot be used ({why}); {what} uses the local vault only",
                        self.config.url
                    ));
                }
                Ok(None)
            }
            Err(RemoteError::Denied(why)) => {
                let hint = match &self.config.token {
                    None => format!(" (no token: {} is not set)", self.config.token_env),
                    Some(_) => String::new(),
                };
                warn(&format!(
                    "remote {} refused the token: {why}{hint}; {what} uses the local vault only",
                    self.config.url
                ));
                Ok(None)
            }
            Err(e) => {
                warn(&format!("remote {}: {e}; {what} uses the local vault only", self.config.url));
                Ok(None)
            }
        }
    }

    fn check(&self, resp: &mut ureq::http::Response<ureq::Body>, what: &str) -> Result<()> {
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let detail = resp
            .body_mut()
            .with_config()
            .limit(64 << 10)
            .read_json::<ErrorBody>()
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {status}"));
        let msg = format!("{what}: {detail} (HTTP {status})");
        Err(match status {
            401 | 403 => RemoteError::Denied(msg),
            500.. => RemoteError::Unavailable(msg),
            _ => RemoteError::Refused(msg),
        })
    }

    fn unavailable(e: ureq::Error) -> RemoteError {
        RemoteError::Unavailable(match e {
            ureq::Error::Timeout(t) => format!("timed out ({t})"),
            ureq::Error::Io(io) => io.to_string(),
            ureq::Error::ConnectionFailed => "connection failed".into(),
            other => other.to_string(),
        })
    }

    /// The server's live entry for `key` (checked to answer exactly `key`) and the small blobs
    /// that came with it; `None` on a miss.
    fn lookup(&self, key: &TaskKey) -> Result<Option<(Entry, SmallBlobs)>> {
        if self.resting() {
            return Err(RemoteError::Unavailable("it failed a moment ago".into()));
        }
        let hex = key.digest().hex();
        let url = self.ns_url(&format!("entries/{hex}"));
        let mut resp = self
            .auth(self.agent.get(&url))
            .query("task", &key.task)
            .call()
            .map_err(Self::unavailable)?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        self.check(&mut resp, "entry lookup")?;
        let body: EntryResponse = resp
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_json()
            .map_err(|e| RemoteError::Unavailable(format!("the entry is not readable: {e}")))?;
        if !body.entry.answers(key) {
            return Err(RemoteError::Corrupt(format!(
                "the server answered key {hex} with an entry for another key"
            )));
        }
        let mut small = Vec::with_capacity(body.blobs.len());
        for (d, b64) in body.blobs {
            let d: Digest =
                d.parse().map_err(|_| RemoteError::Unavailable(format!("bad digest {d:?}")))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| RemoteError::Unavailable(format!("blob {d}: {e}")))?;
            if d.algorithm().digest(&bytes) != d {
                return Err(RemoteError::Corrupt(format!(
                    "blob {d} sent with the entry does not match its digest"
                )));
            }
            small.push((d, bytes));
        }
        Ok(Some((body.entry, small)))
    }

    /// Fetches the result of `key` from the server into the local vault (verified), returning
    /// the entry as stored; `None` on a miss. Nothing is written outside the vault's temporary
    /// directory until every blob has been verified.
    pub fn pull(&self, vault: &Vault, key: &TaskKey) -> Result<Option<Entry>> {
        Ok(self.pull_to(vault, key, None, None)?.map(|(e, _)| e))
    }

    /// Starts asking the server for `key` on a thread of its own, while the caller searches the
    /// local vault: [`Prefetching::wait`] gives the answer for [`Remote::pull_to`]; dropping
    /// it (the local vault had the result) leaves the thread to finish or die with the process.
    pub fn prefetch(&self, key: &TaskKey) -> Prefetching {
        let asker = Remote {
            config: self.config.clone(),
            namespace: self.namespace.clone(),
            agent: self.agent.clone(),
            bulk: OnceLock::new(),
            bulk_config: self.bulk_config.clone(),
            warned: AtomicBool::new(true),
            down_until: Mutex::new(*self.down_until.lock().unwrap_or_else(|p| p.into_inner())),
        };
        let key = key.clone();
        Prefetching(std::thread::spawn(move || asker.lookup(&key)))
    }

    /// [`Remote::pull`], and for a file output whose blob has to be downloaded, written to
    /// `dest` at the same time (the bytes pass once, verified once): `true` when `dest` holds
    /// the output (the caller counts the hit), `false` when the caller restores it from the
    /// vault as usual. A small file output that came with the entry is written to `dest` from
    /// memory too. `ahead` is the answer of a [`Remote::prefetch`] of `key`, if one was made.
    pub fn pull_to(
        &self,
        vault: &Vault,
        key: &TaskKey,
        dest: Option<&Path>,
        ahead: Option<Prefetched>,
    ) -> Result<Option<(Entry, bool)>> {
        let found = match ahead {
            Some(Prefetched(found)) => found,
            None => self.lookup(key),
        };
        let Some((mut entry, small)) = found? else { return Ok(None) };
        // Where it came from, for `show` (details are provenance, never part of the key).
        let origin =
            serde_json::json!({"url": self.config.url, "at_ms": taskvault::clock::now_ms()});
        match &mut entry.details {
            serde_json::Value::Object(m) => {
                m.insert("fetched_from".into(), origin);
            }
            serde_json::Value::Null => entry.details = serde_json::json!({"fetched_from": origin}),
            _ => {}
        }
        let mut staging = Staging { files: Vec::new() };
        let sizes: std::collections::HashMap<Digest, u64> = entry
            .outputs
            .iter()
            .chain(&entry.console)
            .filter_map(|n| n.digest.map(|d| (d, n.size)))
            .collect();
        // A file output downloaded anyway goes to its destination on the way.
        let sole = match (entry.output_kind, entry.outputs.as_slice(), &entry.console) {
            (taskvault::OutputKind::File | taskvault::OutputKind::Bytes, [n], None) => {
                n.digest.map(|d| (d, n.mode))
            }
            _ => None,
        };
        let mut teed: Option<(taskvault::DestinationFile, u32)> = None;
        for d in entry.blob_digests() {
            if vault.has_blob(&d)? {
                continue;
            }
            if small.iter().any(|(s, _)| *s == d) {
                continue; // admitted from memory
            }
            let path = vault.staging_path("pull-");
            staging.files.push((d, path.clone()));
            let mut tee = match (dest, sole) {
                (Some(dest), Some((sd, mode))) if sd == d => {
                    let mode = if entry.output_kind == taskvault::OutputKind::Bytes {
                        0o644
                    } else {
                        mode
                    };
                    Some((vault.destination_file(dest)?, mode))
                }
                _ => None,
            };
            let size = sizes.get(&d).copied().unwrap_or_default();
            self.download(&d, size, &path, tee.as_mut().map(|(f, _)| f.file()))?;
            teed = tee;
        }
        let files = &staging.files;
        // Every file was hashed to its digest as it arrived: the vault may move them in.
        let staged = |d: &Digest| match files.iter().find(|(f, _)| f == d) {
            Some((_, p)) => Some(taskvault::Arrived::File(p.clone())),
            None => small.iter().find(|(s, _)| s == d).map(|(_, b)| taskvault::Arrived::Bytes(b)),
        };
        vault.admit(entry.clone(), &staged, true, "remote")?;
        drop(staging);
        let restored = match (teed, dest, sole) {
            (Some((file, mode)), _, _) => {
                file.finish(mode)?;
                true
            }
            (None, Some(dest), Some((d, mode))) => match small.iter().find(|(s, _)| *s == d) {
                Some((_, bytes)) => {
                    let mode = if entry.output_kind == taskvault::OutputKind::Bytes {
                        0o644
                    } else {
                        mode
                    };
                    let mut file = vault.destination_file(dest)?;
                    file.file().write_all(bytes).map_err(local(dest))?;
                    file.finish(mode)?;
                    true
                }
                None => false,
            },
            _ => false,
        };
        Ok(Some((entry, restored)))
    }

    /// Downloads blob `d` (`size` bytes) to `dest`, hashing as it arrives; resumes with `Range`
    /// after a broken connection. `dest` holds exactly the blob when this returns `Ok`.
    fn download(
        &self,
        d: &Digest,
        size: u64,
        dest: &Path,
        mut tee: Option<&mut std::fs::File>,
    ) -> Result<()> {
        let url = self.ns_url(&format!("blobs/{d}"));
        let mut file = std::fs::File::create(dest).map_err(local(dest))?;
        // The vault's copy will be synced before it is recorded: its pages are handed to the
        // disk as they come (every 64 MiB), so little is left to wait for at the end.
        let mut flushed = 0u64;
        let mut hasher = d.algorithm().hasher();
        let mut have = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        let mut broke = String::new();
        for _ in 0..DOWNLOAD_ATTEMPTS {
            let bulk =
                self.bulk.get_or_init(|| ureq::Agent::new_with_config(self.bulk_config.clone()));
            let mut req = self.auth(bulk.get(&url));
            if have > 0 {
                req = req.header("Range", format!("bytes={have}-"));
            }
            let mut resp = match req.call() {
                Ok(r) => r,
                Err(e) => {
                    broke = Self::unavailable(e).to_string();
                    continue;
                }
            };
            self.check(&mut resp, &format!("blob {d}"))?;
            if have > 0 && resp.status().as_u16() != 206 {
                // The server ignored the range: start over.
                file.set_len(0).map_err(local(dest))?;
                std::io::Seek::rewind(&mut file).map_err(local(dest))?;
                if let Some(t) = tee.as_deref_mut() {
                    t.set_len(0).map_err(local(dest))?;
                    std::io::Seek::rewind(t).map_err(local(dest))?;
                }
                hasher = d.algorithm().hasher();
                have = 0;
                flushed = 0;
            }
            let mut body = resp.into_body().into_reader();
            broke.clear();
            loop {
                match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        have += n as u64;
                        if have > size {
                            return Err(RemoteError::Corrupt(format!(
                                "blob {d} is longer than the {size} bytes its entry says"
                            )));
                        }
                        hasher.update(&buf[..n]);
                        file.write_all(&buf[..n]).map_err(local(dest))?;
                        if let Some(t) = tee.as_deref_mut() {
                            t.write_all(&buf[..n]).map_err(local(dest))?;
                        }
                        if tee.is_some() && have - flushed >= WRITEBACK_EVERY {
                            // Starts writeback of what was written (and drops the pages
                            // once written: the destination keeps its own).
                            let len = std::num::NonZeroU64::new(have - flushed);
                            let _ = rustix::fs::fadvise(
                                &file,
                                flushed,
                                len,
                                rustix::fs::Advice::DontNeed,
                            );
                            flushed = have;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        broke = format!("the download of blob {d} broke off: {e}");
                        break;
                    }
                }
            }
            if have == size {
                break;
            }
            if broke.is_empty() {
                broke = format!("blob {d}: the server sent {have} of {size} bytes");
            }
        }
        if have != size {
            return Err(RemoteError::Unavailable(broke));
        }
        let got = hasher.finish();
        if got != *d {
            return Err(RemoteError::Corrupt(format!("blob {d} arrived as {got}: refused")));
        }
        file.flush().map_err(local(dest))?;
        Ok(())
    }

    /// Uploads `entry` (a run of the local vault) with the blobs the server lacks. Read-only
    /// remotes push nothing.
    pub fn push(&self, vault: &Vault, entry: &Entry) -> Result<Pushed> {
        let mut pushed = Pushed::default();
        if self.config.read_only {
            return Ok(pushed);
        }
        if self.resting() {
            return Err(RemoteError::Unavailable("it failed a moment ago".into()));
        }
        let digests = entry.blob_digests();
        let mut missing: Vec<Digest> = Vec::new();
        for chunk in digests.chunks(MISSING_BATCH) {
            let body = serde_json::json!({"digests": chunk.iter().map(Digest::to_string).collect::<Vec<_>>()});
            let mut resp = self
                .auth(self.agent.post(self.ns_url("blobs/missing")))
                .send_json(&body)
                .map_err(Self::unavailable)?;
            self.check(&mut resp, "missing-blobs query")?;
            let m: MissingResponse = resp
                .body_mut()
                .read_json()
                .map_err(|e| RemoteError::Unavailable(format!("the missing-blobs answer: {e}")))?;
            for d in m.missing {
                missing.push(
                    d.parse().map_err(|_| RemoteError::Unavailable(format!("bad digest {d:?}")))?,
                );
            }
        }
        pushed.skipped = digests.len() - missing.len();
        for d in &missing {
            let size = self.upload(vault, entry, d)?;
            pushed.blobs += 1;
            pushed.bytes += size;
        }
        let mut resp = self
            .auth(self.agent.put(self.ns_url(&format!("entries/{}", entry.key))))
            .send_json(entry)
            .map_err(Self::unavailable)?;
        self.check(&mut resp, "entry commit")?;
        Ok(pushed)
    }

    /// Streams one blob from the local vault (verified as it is read; a blob that fails is not
    /// completed, so the server refuses it).
    fn upload(&self, vault: &Vault, entry: &Entry, d: &Digest) -> Result<u64> {
        let url = self.ns_url(&format!("blobs/{d}"));
        if let Some(mut stream) = vault.open_blob(d)? {
            let size = stream.size();
            let mut resp = self
                .auth(self.agent.put(&url))
                .header("Content-Type", "application/octet-stream")
                .header("Content-Length", size.to_string())
                .send(ureq::SendBody::from_reader(&mut stream))
                .map_err(|e| match stream.failure() {
                    Some(why) => {
                        RemoteError::Corrupt(format!("local blob {d} failed verification: {why}"))
                    }
                    None => Self::unavailable(e),
                })?;
            if let Some(why) = stream.failure() {
                let _ = vault.blob_failed(d, why, "push");
                return Err(RemoteError::Corrupt(format!(
                    "local blob {d} failed verification: {why}"
                )));
            }
            self.check(&mut resp, &format!("upload of blob {d}"))?;
            return Ok(size);
        }
        // A tiny output kept in its run's row: its bytes come from the entry's own read.
        let node = entry.outputs.iter().chain(&entry.console).find(|n| n.digest == Some(*d));
        let bytes = match node {
            Some(n) => vault.node_bytes_of(entry, n)?,
            None => None,
        };
        let Some(bytes) = bytes else {
            return Err(RemoteError::Local(taskvault::Error::BlobVanished(d.to_string())));
        };
        let mut resp = self
            .auth(self.agent.put(&url))
            .header("Content-Type", "application/octet-stream")
            .send(&bytes[..])
            .map_err(Self::unavailable)?;
        self.check(&mut resp, &format!("upload of blob {d}"))?;
        Ok(bytes.len() as u64)
    }
}

/// Seconds the server holds one long poll of a claim.
const CLAIM_POLL: Duration = Duration::from_secs(20);

#[derive(Debug, serde::Deserialize)]
struct ClaimResponse {
    state: String,
    lease: Option<String>,
    message: Option<String>,
}

/// Where a claim across machines stands.
#[derive(Debug)]
pub enum Claimed {
    /// The caller computes it; the lease is renewed until it is dropped or finished.
    Granted(Lease),
    /// Another machine computed it: pull it.
    Ready,
    /// Another machine's computation failed: its message.
    Failed(String),
}

/// A claim held on the server: renewed by a thread of its own while the work runs. Dropping it
/// releases the claim (waiters then take it); [`Lease::fail`] hands them a failure instead;
/// once the entry has been pushed, the server has ended it already ([`Lease::done`]).
pub struct Lease {
    agent: ureq::Agent,
    url: String,
    token: Option<String>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
    ended: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Lease {
    fn stop_renewing(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
    }

    fn release(&mut self, body: Option<serde_json::Value>) {
        self.stop_renewing();
        if self.ended {
            return;
        }
        self.ended = true;
        let mut req = self.agent.delete(&self.url).force_send_body();
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let _ = match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        };
    }

    /// The computation failed: waiters on other machines receive `message` and do not run it.
    pub fn fail(mut self, message: &str) {
        self.release(Some(serde_json::json!({"failure": message})));
    }

    /// The entry has been committed on the server (which ended the claim).
    pub fn done(mut self) {
        self.stop_renewing();
        self.ended = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release(None);
    }
}

impl Remote {
    /// Takes the server's claim of `key`, or waits (long polls, never a client-side polling
    /// loop) until whoever holds it commits the entry, fails, or lets it go.
    pub fn claim(&self, key: &TaskKey) -> Result<Claimed> {
        if self.resting() {
            return Err(RemoteError::Unavailable("it failed a moment ago".into()));
        }
        let hex = key.digest().hex();
        let url = self.ns_url(&format!("claims/{hex}"));
        loop {
            let mut resp = self
                .auth(self.agent.post(&url))
                .query("wait", CLAIM_POLL.as_secs().to_string())
                .query("ttl", self.config.lease.as_secs_f64().to_string())
                .config()
                .timeout_recv_response(Some(CLAIM_POLL + self.config.timeout))
                .build()
                .send_empty()
                .map_err(Self::unavailable)?;
            self.check(&mut resp, "claim")?;
            let r: ClaimResponse = resp
                .body_mut()
                .read_json()
                .map_err(|e| RemoteError::Unavailable(format!("the claim answer: {e}")))?;
            match r.state.as_str() {
                "waiting" => continue,
                "ready" => return Ok(Claimed::Ready),
                "failed" => return Ok(Claimed::Failed(r.message.unwrap_or_default())),
                "granted" => {
                    let lease = r.lease.ok_or_else(|| {
                        RemoteError::Unavailable("a grant without a lease".into())
                    })?;
                    return Ok(Claimed::Granted(self.hold(format!("{url}/{lease}"))));
                }
                other => {
                    return Err(RemoteError::Unavailable(format!("unknown claim state {other:?}")));
                }
            }
        }
    }

    fn hold(&self, url: String) -> Lease {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (agent, token, renew_url) =
            (self.agent.clone(), self.config.token.clone(), url.clone());
        let ttl = self.config.lease;
        let renewer = std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(ttl / 3)
            {
                let mut req = agent.put(&renew_url).query("ttl", ttl.as_secs_f64().to_string());
                if let Some(t) = &token {
                    req = req.header("Authorization", format!("Bearer {t}"));
                }
                match req.send_empty() {
                    Ok(r) if r.status().as_u16() == 409 => {
                        tracing::warn!("the claim's lease on the server was lost (expired?)");
                        return;
                    }
                    _ => {}
                }
            }
        });
        Lease {
            agent: self.agent.clone(),
            url,
            token: self.config.token.clone(),
            stop: Some(stop),
            renewer: Some(renewer),
            ended: false,
        }
    }
}

/// What `log --remote` asks for.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    pub task: Option<String>,
    pub tag: Option<String>,
    pub status: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: Option<usize>,
    pub all: bool,
}

#[derive(Debug, serde::Deserialize)]
struct LogResponse {
    entries: Vec<Entry>,
}

/// The server's own views, for `log`, `show`, `stats` and `gc` with `--remote`: errors are
/// errors here (the user asked the server), never degraded to warnings.
impl Remote {
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        req: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        what: &str,
    ) -> Result<T> {
        let mut resp = self.auth(req).call().map_err(Self::unavailable)?;
        self.check(&mut resp, what)?;
        resp.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_json()
            .map_err(|e| RemoteError::Unavailable(format!("{what}: {e}")))
    }

    /// The namespace's runs on the server, newest first.
    pub fn log(&self, q: &LogQuery) -> Result<Vec<Entry>> {
        let mut req = self.agent.get(self.ns_url("log"));
        for (k, v) in [("task", &q.task), ("tag", &q.tag), ("status", &q.status)] {
            if let Some(v) = v {
                req = req.query(k, v);
            }
        }
        if let Some(s) = q.since_ms {
            req = req.query("since_ms", s.to_string());
        }
        if let Some(l) = q.limit {
            req = req.query("limit", l.to_string());
        }
        if q.all {
            req = req.query("all", "true");
        }
        Ok(self.get_json::<LogResponse>(req, "log")?.entries)
    }

    /// One run on the server, by id or key (or a prefix).
    pub fn show(&self, hash: &str) -> Result<Entry> {
        self.get_json(self.agent.get(self.ns_url(&format!("runs/{hash}"))), "show")
    }

    /// The server vault's statistics (an admin token).
    pub fn stats(&self) -> Result<serde_json::Value> {
        self.get_json(self.agent.get(format!("{}/v1/stats", self.config.url)), "stats")
    }

    /// Runs `gc` on the server (an admin token).
    pub fn gc(&self) -> Result<serde_json::Value> {
        let mut resp = self
            .auth(self.agent.post(format!("{}/v1/gc", self.config.url)))
            .send_empty()
            .map_err(Self::unavailable)?;
        self.check(&mut resp, "gc")?;
        resp.body_mut().read_json().map_err(|e| RemoteError::Unavailable(format!("gc: {e}")))
    }
}

/// Downloaded files not (or not yet) taken into the vault are removed.
struct Staging {
    files: Vec<(Digest, PathBuf)>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        for (_, p) in &self.files {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn local(path: &Path) -> impl Fn(std::io::Error) -> RemoteError + '_ {
    move |e| RemoteError::Local(taskvault::Error::IoAt { path: path.to_owned(), source: e })
}

fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "taskvault: warning: {msg}");
}
