//! Metadata and blobs in Redis (`storage.metadata: redis://host:port/db`), as the second seed's
//! shared Redis store keeps them: every process on every machine that names the same Redis (and
//! key prefix, `?prefix=NAME`, `taskvault` by default) uses one vault, with no server between.
//!
//! Every write is one call of a Lua script (`redis.lua`), which Redis runs atomically: it checks
//! what it depends on, then writes, so a crash or a concurrent writer never leaves half an
//! operation. The blob bytes are values of the same Redis (see [`RedisBlobs`]): a script that
//! drops a blob's row drops its bytes with it, and one that adds a row checks that its bytes are
//! there, so savers and removers need no blob lock between them. Reads that must see one state
//! (a lookup: the live run and its blob rows) are script calls too.
//!
//! Claims are keys set with `NX` and a lease (`PX`) that a thread of the holding process renews;
//! a release deletes the key and publishes it, and waiters are subscribed before they try, so
//! they wake at the release, or when the lease of a holder that died runs out: never a polling
//! interval. Removals and replacements publish on a channel that resident clients listen on.
//!
//! Under a `maxmemory` limit Redis may evict any key; the store then reads what is left as
//! misses (a run without its row, a blob without its bytes), and the vault verifies every byte
//! it serves against its digest, so a partial value is never served.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;

use crate::audit::{AuditQuery, AuditRow};
use crate::digest::Digest;
use crate::entry::{BlobInfo, Codec, Counters, Entry, Filter, Status};
use crate::error::{Error, IoContext, Result};
use crate::store::{
    Access, BlobReader, BlobStore, Committed, Damaged, LeaseAsked, LeaseEnded, LeaseEvent,
    MetaStore, Removed, StagedBlob, Stale,
};

/// How long a claim lasts unless its holder renews it (every third of it): a holder that dies
/// frees its claims within this.
const CLAIM_LEASE: Duration = Duration::from_secs(5);
/// Connections kept for reuse.
const POOL_SIZE: usize = 16;
/// Runs or keys read per step of a walk.
const PAGE: usize = 512;
/// How often a save whose blob vanished meanwhile (a concurrent removal) is tried again.
const RETRIES: usize = 4;

/// Whether `url` names a Redis store.
pub fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://")
}

/// `url` as messages show it: no password, no query.
pub fn shown(url: &str) -> String {
    super::postgres::shown(url)
}

/// A Redis server and a key prefix: the connections to it, shared by the metadata and the blob
/// store of one vault.
struct Server {
    client: redis::Client,
    prefix: String,
    shown: String,
    pool: Mutex<Vec<redis::Connection>>,
}

/// A pooled connection, returned to the pool when dropped unless it failed.
struct Conn<'a> {
    server: &'a Server,
    con: Option<redis::Connection>,
    broken: bool,
}

impl std::ops::Deref for Conn<'_> {
    type Target = redis::Connection;
    fn deref(&self) -> &redis::Connection {
        self.con.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut redis::Connection {
        self.con.as_mut().expect("held until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.con.take()
            && !self.broken
        {
            let mut pool = self.server.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push(c);
            }
        }
    }
}

impl Server {
    fn open(url: &str, bad: impl Fn(String) -> Error) -> Result<Server> {
        let shown = shown(url);
        if !is_redis_url(url) {
            return Err(bad("not a redis:// URL".into()));
        }
        // `prefix` is ours; the rest of the URL is the client's.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut prefix = "taskvault".to_owned();
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", p)) => prefix = p.to_owned(),
                _ => rest.push(pair),
            }
        }
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(bad(format!(
                "prefix {prefix:?}: use letters, digits, _ and -, at most 64"
            )));
        }
        let url =
            if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
        let client = redis::Client::open(url.as_str()).map_err(|e| bad(e.to_string()))?;
        Ok(Server { client, prefix, shown, pool: Mutex::new(Vec::new()) })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut k = self.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let c = self.client.get_connection_with_timeout(Duration::from_secs(5))?;
        c.set_read_timeout(Some(Duration::from_secs(60)))?;
        c.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok(c)
    }

    fn conn(&self) -> redis::RedisResult<Conn<'_>> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let con = match pooled {
            Some(c) => c,
            None => self.connect()?,
        };
        Ok(Conn { server: self, con: Some(con), broken: false })
    }

    /// Runs `f` on a pooled connection; a connection that failed is not reused.
    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> redis::RedisResult<T> {
        let mut c = self.conn()?;
        let out = f(&mut c);
        if let Err(e) = &out
            && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout())
        {
            c.broken = true;
        }
        out
    }
}

/// The Redis metadata store.
pub struct RedisMeta {
    server: Arc<Server>,
    script: redis::Script,
    /// Claims this process holds (lease key -> token), renewed by `renewer`.
    held: Arc<Mutex<HashMap<String, String>>>,
    renewer: std::sync::OnceLock<()>,
    /// Set when the store is dropped: its threads stop.
    stopped: Arc<AtomicBool>,
    id: u64,
}

impl std::fmt::Debug for RedisMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMeta").field("store", &self.server.shown).finish_non_exhaustive()
    }
}

impl Drop for RedisMeta {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
    }
}

/// A run read back: its entry, or (its run id, why it is damaged).
type Decoded = std::result::Result<Entry, (String, String)>;

thread_local! {
    /// The blob rows a lookup on this thread read with its run (store id, when, rows): the
    /// vault asks for them next (see `postgres::RECENT_BLOBS`).
    static RECENT_BLOBS: std::cell::RefCell<Option<(u64, Instant, Vec<BlobInfo>)>> =
        const { std::cell::RefCell::new(None) };
}

const RECENT_BLOBS_FOR: Duration = Duration::from_millis(100);

/// A hash's fields by name.
type Fields = HashMap<String, Vec<u8>>;

/// A reply's fields (a flat array of names and values, as HGETALL answers).
fn fields(v: &Value) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    if let Value::Array(items) = v {
        for pair in items.chunks(2) {
            if let [Value::BulkString(k), Value::BulkString(v)] = pair {
                out.insert(String::from_utf8_lossy(k).into_owned(), v.clone());
            }
        }
    }
    out
}

/// A record of the audit stream (see [`RedisMeta::audit_append`]).
fn audit_row(f: &HashMap<String, Vec<u8>>) -> Option<AuditRow> {
    Some(AuditRow {
        at_ms: text(f, "t")?.parse().ok()?,
        event: crate::audit::Event::parse(&text(f, "e")?)?,
        op: text(f, "o")?,
        task: text(f, "k")?,
        hash: text(f, "h")?,
        size: text(f, "s").and_then(|s| s.parse().ok()),
        detail: text(f, "d"),
        origin: text(f, "g").unwrap_or_default(),
    })
}

fn text(f: &HashMap<String, Vec<u8>>, name: &str) -> Option<String> {
    f.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

fn int(f: &HashMap<String, Vec<u8>>, name: &str) -> Option<i64> {
    text(f, name).and_then(|t| t.parse().ok())
}

/// A run's fields: its document, with what the fields beside it hold put over it. A document
/// that does not decode, or names another run or key than its fields, is damaged.
fn entry_from_fields(f: &HashMap<String, Vec<u8>>) -> Option<Decoded> {
    if f.is_empty() {
        return None;
    }
    let id = text(f, "id").unwrap_or_else(|| "(unreadable)".into());
    let damaged = |why: String| Some(Err((id.clone(), why)));
    let (Some(key), Some(doc)) = (text(f, "key"), f.get("doc")) else {
        return damaged("its key or document is missing".into());
    };
    let mut e: Entry = match serde_json::from_slice(doc) {
        Ok(e) => e,
        Err(err) => return damaged(format!("its document does not decode: {err}")),
    };
    if e.id != id || e.key != key {
        return damaged(format!("its document describes run {} of key {}", e.id, e.key));
    }
    e.status = match text(f, "status").as_deref().and_then(Status::parse) {
        Some(Status::Live) if text(f, "live").as_deref() == Some("1") => Status::Live,
        Some(Status::Live) | None => Status::Corrupt,
        Some(s) => s,
    };
    let Some(task) = text(f, "task") else { return damaged("its task is missing".into()) };
    e.task = task;
    let Some(created) = int(f, "created") else {
        return damaged("its creation time is not a number".into());
    };
    e.created_ms = created;
    e.last_access_ms = int(f, "last").unwrap_or(0).max(created);
    e.access_count = int(f, "count").unwrap_or(0);
    e.expires_ms = int(f, "expires");
    e.size = int(f, "size").unwrap_or(0).max(0) as u64;
    e.ttl_explicit = text(f, "ttlx").as_deref() == Some("1");
    e.parent = text(f, "parent").filter(|p| !p.is_empty());
    Some(Ok(e))
}

/// A blob's row (with its digest among the fields, as the lookup script adds it).
fn blob_from_fields(
    digest: &str,
    f: &HashMap<String, Vec<u8>>,
) -> std::result::Result<BlobInfo, (String, String)> {
    let bad = |why: &str| (digest.to_owned(), why.to_owned());
    let parsed: Digest = digest.parse().map_err(|_| bad("the digest does not parse"))?;
    let count = |n: &str| int(f, n).filter(|v| *v >= 0).map(|v| v as u64);
    let size = count("size").ok_or_else(|| bad("the size is not a count of bytes"))?;
    let stored_size =
        count("stored").ok_or_else(|| bad("the stored size is not a count of bytes"))?;
    let codec =
        text(f, "codec").and_then(|c| Codec::parse(&c)).ok_or_else(|| bad("unknown codec"))?;
    Ok(BlobInfo { digest: parsed, size, stored_size, codec, inline: f.get("data").cloned() })
}

fn sound(rows: impl IntoIterator<Item = Decoded>) -> Vec<Entry> {
    rows.into_iter()
        .filter_map(|r| {
            r.map_err(|(id, why)| tracing::warn!("damaged metadata run {id} skipped: {why}")).ok()
        })
        .collect()
}

fn decoded(row: Option<Decoded>) -> Result<Option<Entry>> {
    row.transpose().map_err(|(run, message)| Error::DamagedRow { run, message })
}

/// The entries of a reply that lists runs' fields (removal scripts answer so).
fn entries_of(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => sound(items.iter().filter_map(|i| entry_from_fields(&fields(i)))),
        _ => Vec::new(),
    }
}

fn strings(v: Value) -> Vec<String> {
    match v {
        Value::Array(items) => items
            .into_iter()
            .filter_map(|i| match i {
                Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                Value::SimpleString(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// What a lookup script answered for one key: the run and the rows of its blobs.
fn found(v: &Value) -> Option<(Decoded, Vec<BlobInfo>)> {
    let Value::Array(parts) = v else { return None };
    let (run, blobs) = parts.split_first()?;
    let run = entry_from_fields(&fields(run))?;
    let blobs = blobs
        .iter()
        .filter_map(|b| {
            let f = fields(b);
            blob_from_fields(&text(&f, "digest")?, &f).ok()
        })
        .collect();
    Some((run, blobs))
}

impl RedisMeta {
    /// Prepares the store at `url` (`redis://[user:password@]host[:port][/db]`, and
    /// `prefix=NAME` for the keys, `taskvault` by default). Connects on first use.
    pub fn open(url: &str) -> Result<RedisMeta> {
        let shown = shown(url);
        let server = Server::open(url, |message| Error::Meta { store: shown.clone(), message })?;
        Ok(RedisMeta {
            server: Arc::new(server),
            script: redis::Script::new(include_str!("redis.lua")),
            held: Arc::default(),
            renewer: std::sync::OnceLock::new(),
            stopped: Arc::new(AtomicBool::new(false)),
            id: {
                static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                STORES.fetch_add(1, Ordering::Relaxed)
            },
        })
    }

    fn bad(&self, e: impl std::fmt::Display) -> Error {
        Error::Meta { store: self.server.shown.clone(), message: e.to_string() }
    }

    fn key(&self, parts: &[&str]) -> String {
        self.server.key(parts)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        self.server.with(f).map_err(|e| self.bad(e))
    }

    /// Calls operation `op` of the script with `args`.
    fn call<A: AsRef<[u8]>>(&self, op: &str, args: &[A]) -> Result<Value> {
        self.with(|c| {
            let mut inv = self.script.prepare_invoke();
            inv.arg(&self.server.prefix).arg(op);
            for a in args {
                inv.arg(a.as_ref());
            }
            inv.invoke(c)
        })
    }

    fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        self.with(|c| cmd.query(c))
    }

    /// The runs with these ids (missing ones left out).
    fn runs(&self, ids: &[String]) -> Result<Vec<Decoded>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(self.key(&["r", id]));
        }
        let rows: Vec<Value> = self.with(|c| pipe.query(c))?;
        Ok(rows.iter().filter_map(|r| entry_from_fields(&fields(r))).collect())
    }

    /// The ids of index members (`<position>:<id>`).
    fn ids(members: Vec<String>) -> Vec<String> {
        members.into_iter().filter_map(|m| m.get(21..).map(str::to_owned)).collect()
    }

    /// The arguments that describe one save (see `read_entry` in the script); `place` is
    /// called for staged blobs no row describes yet.
    fn save_args(
        &self,
        e: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let digests: Vec<String> = e.blob_digests().iter().map(Digest::to_string).collect();
        let last = if e.last_access_ms > e.created_ms { e.last_access_ms } else { 0 };
        let doc = serde_json::to_vec(e).expect("entries serialize");
        out.extend([
            e.key.clone().into_bytes(),
            e.id.clone().into_bytes(),
            doc,
            e.task.clone().into_bytes(),
            e.created_ms.to_string().into_bytes(),
            e.expires_ms.map(|x| x.to_string()).unwrap_or_default().into_bytes(),
            e.size.to_string().into_bytes(),
            (if e.ttl_explicit { "1" } else { "0" }).into(),
            digests.join(" ").into_bytes(),
            last.to_string().into_bytes(),
            e.access_count.to_string().into_bytes(),
            blobs.len().to_string().into_bytes(),
        ]);
        for b in blobs {
            let d = b.info.digest.to_string();
            let (mode, data): (&str, Vec<u8>) = match (&b.info.inline, &b.staged) {
                (Some(data), _) => ("inline", data.clone()),
                (None, Some(_)) => {
                    let stored: bool = self.cmd(redis::cmd("EXISTS").arg(self.key(&["b", &d])))?;
                    if stored {
                        ("ref", Vec::new())
                    } else {
                        place(b)?;
                        ("staged", Vec::new())
                    }
                }
                (None, None) => ("ref", Vec::new()),
            };
            out.extend([
                d.into_bytes(),
                b.info.size.to_string().into_bytes(),
                b.info.stored_size.to_string().into_bytes(),
                b.info.codec.name().into(),
                mode.into(),
                data,
            ]);
        }
        Ok(())
    }

    fn saves(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Vec<Committed>> {
        let mut attempt = 0;
        loop {
            let mut args: Vec<Vec<u8>> = vec![saves.len().to_string().into_bytes()];
            for (e, b) in saves {
                self.save_args(e, b, place, &mut args)?;
            }
            let reply = strings(self.call("save", &args)?);
            match reply.first().map(String::as_str) {
                Some("ok") => {
                    return Ok(reply[1..]
                        .iter()
                        .map(|old| Committed {
                            superseded: Some(old.clone()).filter(|o| !o.is_empty()),
                            unreferenced: Vec::new(),
                        })
                        .collect());
                }
                Some("vanished") if attempt + 1 < RETRIES => attempt += 1,
                Some("vanished") => {
                    return Err(Error::BlobVanished(reply.get(1).cloned().unwrap_or_default()));
                }
                _ => return Err(self.bad(format!("the save script answered {reply:?}"))),
            }
        }
    }

    fn removed(&self, v: &Value) -> Removed {
        // Blob bytes are dropped by the script with their rows: nothing to unlink.
        Removed { entries: entries_of(v), unreferenced: Vec::new() }
    }

    /// Walks the time index `index` from the newest run (or the oldest, `oldest_first`), a page
    /// at a time, scores from `min`, calling `f` with each sound run until it says stop.
    fn walk(
        &self,
        index: &str,
        min: Option<i64>,
        max: Option<i64>,
        oldest_first: bool,
        f: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<()> {
        let lo = min.map_or("-inf".to_owned(), |m| m.to_string());
        let hi = max.map_or("+inf".to_owned(), |m| m.to_string());
        let mut offset = 0usize;
        loop {
            let mut cmd = if oldest_first {
                let mut c = redis::cmd("ZRANGEBYSCORE");
                c.arg(index).arg(&lo).arg(&hi);
                c
            } else {
                let mut c = redis::cmd("ZREVRANGEBYSCORE");
                c.arg(index).arg(&hi).arg(&lo);
                c
            };
            cmd.arg("LIMIT").arg(offset).arg(PAGE);
            let members: Vec<String> = self.cmd(&cmd)?;
            let n = members.len();
            for e in sound(self.runs(&Self::ids(members))?) {
                if !f(e) {
                    return Ok(());
                }
            }
            if n < PAGE {
                return Ok(());
            }
            offset += n;
        }
    }

    /// Walks the members of the lexicographic index `index` a page at a time, calling `f` with
    /// each and the fields of its hash `<kind>:<member>`.
    fn lex_pages(&self, index: &str, kind: &str, f: &mut dyn FnMut(&str, &Fields)) -> Result<()> {
        let mut after = "-".to_owned();
        loop {
            let members: Vec<String> = self.cmd(
                redis::cmd("ZRANGEBYLEX")
                    .arg(self.key(&[index]))
                    .arg(&after)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(PAGE),
            )?;
            let Some(last) = members.last() else { return Ok(()) };
            after = format!("({last}");
            let mut pipe = redis::pipe();
            for m in &members {
                pipe.cmd("HGETALL").arg(self.key(&[kind, m]));
            }
            let rows: Vec<Value> = self.with(|c| pipe.query(c))?;
            for (m, row) in members.iter().zip(&rows) {
                f(m, &fields(row));
            }
        }
    }

    /// Listens on the channel `<prefix>:<name>` on a thread of its own for as long as the store
    /// lives, subscribing again (a second later) whenever the connection is lost: `on` is
    /// called with each message's payload, and with `None` whenever messages may have been
    /// missed (once listening starts, and when it stops). `watching` says whether it listens.
    fn subscribe(
        &self,
        name: &str,
        what: &'static str,
        watching: Arc<AtomicBool>,
        on: super::postgres::OnNotification,
    ) -> Result<()> {
        let (server, stopped) = (Arc::clone(&self.server), Arc::clone(&self.stopped));
        let channel = self.key(&[name]);
        std::thread::Builder::new()
            .name(format!("taskvault-redis-{name}"))
            .spawn(move || {
                let mut complained = false;
                while !stopped.load(Ordering::SeqCst) {
                    let listened = (|| -> redis::RedisResult<()> {
                        let mut con = server.connect()?;
                        let mut ps = con.as_pubsub();
                        ps.subscribe(&channel)?;
                        ps.set_read_timeout(Some(Duration::from_secs(1)))?;
                        watching.store(true, Ordering::SeqCst);
                        on(None);
                        while !stopped.load(Ordering::SeqCst) {
                            match ps.get_message() {
                                Ok(m) => on(Some(&m.get_payload::<String>().unwrap_or_default())),
                                Err(e) if e.is_timeout() => {}
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(())
                    })();
                    watching.store(false, Ordering::SeqCst);
                    on(None);
                    if let Err(e) = listened {
                        if !complained {
                            tracing::warn!(
                                "{}: not told of {what} ({e}) until it reconnects",
                                server.shown
                            );
                            complained = true;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    } else {
                        complained = false;
                    }
                }
            })
            .map_err(|e| self.bad(format!("cannot start its listener: {e}")))?;
        Ok(())
    }

    /// Starts the thread that renews this process's claims (once).
    fn renew_claims(&self) {
        self.renewer.get_or_init(|| {
            let (server, held, stopped) =
                (Arc::clone(&self.server), Arc::clone(&self.held), Arc::clone(&self.stopped));
            let script = redis::Script::new(include_str!("redis.lua"));
            let ms = CLAIM_LEASE.as_millis() as u64;
            let _ = std::thread::Builder::new().name("taskvault-redis-claims".into()).spawn(
                move || {
                    while !stopped.load(Ordering::SeqCst) {
                        std::thread::sleep(CLAIM_LEASE / 3);
                        let claims: Vec<(String, String)> = held
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .map(|(k, t)| (k.clone(), t.clone()))
                            .collect();
                        for (key, token) in claims {
                            let renewed: redis::RedisResult<i64> = server.with(|c| {
                                script
                                    .prepare_invoke()
                                    .arg(&server.prefix)
                                    .arg("renew")
                                    .arg(&key)
                                    .arg(&token)
                                    .arg(ms)
                                    .invoke(c)
                            });
                            if let Err(e) = renewed {
                                tracing::warn!("{}: renewing claim {key}: {e}", server.shown);
                            }
                        }
                    }
                },
            );
        });
    }
}

/// A claim held in Redis: released (deleted and published) when dropped.
struct RedisClaim {
    server: Arc<Server>,
    held: Arc<Mutex<HashMap<String, String>>>,
    key: String,
    token: String,
}

impl Drop for RedisClaim {
    fn drop(&mut self) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
        let script = redis::Script::new(include_str!("redis.lua"));
        let released: redis::RedisResult<i64> = self.server.with(|c| {
            script
                .prepare_invoke()
                .arg(&self.server.prefix)
                .arg("release")
                .arg(&self.key)
                .arg(&self.token)
                .invoke(c)
        });
        if let Err(e) = released {
            // Its lease runs out instead.
            tracing::warn!("{}: releasing claim {}: {e}", self.server.shown, self.key);
        }
    }
}

fn token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}{:08x}", h.finish(), std::process::id())
}

impl MetaStore for RedisMeta {
    fn shared(&self) -> bool {
        true
    }

    fn watch_changes(
        &self,
        changed: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Option<Arc<AtomicBool>>> {
        let watching = Arc::new(AtomicBool::new(false));
        self.subscribe(
            "changes",
            "other machines' changes; results are not kept in memory",
            Arc::clone(&watching),
            Arc::new(move |_| changed()),
        )?;
        Ok(Some(watching))
    }

    fn lease_ask(
        &self,
        ns: &str,
        key: &str,
        lease: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseAsked>> {
        let ms = ttl.as_millis().max(1).to_string();
        let reply = self.call("lease_ask", &[ns, key, lease, holder, &ms])?;
        let Value::Array(parts) = reply else { return Err(self.bad("lease_ask answered no list")) };
        let text = |v: Option<&Value>| match v {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        Ok(Some(match text(parts.first()).as_str() {
            "granted" => LeaseAsked::Granted,
            _ => {
                let left = match parts.get(2) {
                    Some(Value::Int(n)) => (*n).max(1) as u64,
                    _ => 1,
                };
                LeaseAsked::Held {
                    holder: text(parts.get(1)),
                    remaining: Duration::from_millis(left),
                }
            }
        }))
    }

    fn lease_renew(&self, ns: &str, key: &str, lease: &str, ttl: Duration) -> Result<Option<bool>> {
        let ms = ttl.as_millis().max(1).to_string();
        let v = self.call("lease_renew", &[ns, key, lease, &ms])?;
        Ok(Some(matches!(v, Value::Int(1))))
    }

    fn lease_end(
        &self,
        ns: &str,
        key: &str,
        lease: Option<&str>,
        how: &LeaseEnded,
    ) -> Result<Option<bool>> {
        let payload = super::postgres::lease_payload(ns, key, how);
        let v = self.call("lease_end", &[ns, key, lease.unwrap_or(""), &payload])?;
        Ok(Some(matches!(v, Value::Int(1))))
    }

    fn audit_append(&self, rows: &[AuditRow], keep: u64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let stream = self.key(&["audit"]);
        let mut pipe = redis::pipe();
        for r in rows {
            let c = pipe.cmd("XADD").arg(&stream).arg("MAXLEN").arg(keep).arg("*");
            c.arg("t").arg(r.at_ms).arg("e").arg(r.event.name()).arg("o").arg(&r.op);
            c.arg("k").arg(&r.task).arg("h").arg(&r.hash).arg("g").arg(&r.origin);
            if let Some(size) = r.size {
                c.arg("s").arg(size);
            }
            if let Some(d) = &r.detail {
                c.arg("d").arg(d);
            }
            c.ignore();
        }
        // One round trip, in order; a stream entry is added whole or not at all.
        self.with(|c| pipe.query::<()>(c))
    }

    fn audit_rows(&self, q: &AuditQuery) -> Result<Option<Vec<AuditRow>>> {
        let stream = self.key(&["audit"]);
        let mut out = Vec::new();
        // Newest first, a page at a time, until `limit` match or the stream (or `since`) ends.
        let mut end = "+".to_owned();
        while out.len() < q.limit {
            let page: Vec<(String, HashMap<String, Vec<u8>>)> = self.cmd(
                redis::cmd("XREVRANGE").arg(&stream).arg(&end).arg("-").arg("COUNT").arg(512),
            )?;
            let Some((last, _)) = page.last() else { break };
            end = format!("({last}");
            let mut older = false;
            for (_, f) in &page {
                let Some(r) = audit_row(f) else { continue };
                older = q.since_ms.is_some_and(|s| r.at_ms < s);
                if older {
                    break;
                }
                if q.matches(&r) && out.len() < q.limit {
                    out.push(r);
                }
            }
            if older || page.len() < 512 {
                break;
            }
        }
        Ok(Some(out))
    }

    fn watch_leases(&self, on: Arc<dyn Fn(LeaseEvent) + Send + Sync>) -> Result<bool> {
        let on_payload = move |payload: Option<&str>| {
            // `None`: what ended meanwhile was not heard; every waiter asks again.
            on(payload.and_then(super::postgres::lease_event).unwrap_or(LeaseEvent::Missed))
        };
        self.subscribe(
            "leases",
            "claims ended on other replicas",
            Arc::new(AtomicBool::new(false)),
            Arc::new(on_payload),
        )?;
        Ok(true)
    }

    fn add_proof(&self, ns: &str, digest: &Digest) -> Result<bool> {
        let _: i64 =
            self.cmd(redis::cmd("SADD").arg(self.key(&["proofs", ns])).arg(digest.to_string()))?;
        Ok(true)
    }

    fn has_proof(&self, ns: &str, digest: &Digest) -> Result<Option<bool>> {
        let seen: bool = self
            .cmd(redis::cmd("SISMEMBER").arg(self.key(&["proofs", ns])).arg(digest.to_string()))?;
        Ok(Some(seen))
    }

    fn claim(&self, key: &str) -> Result<Option<(crate::store::StoreClaim, bool)>> {
        let lease = self.key(&["claim", key]);
        let channel = self.key(&["claims"]);
        let token = token();
        let ms = CLAIM_LEASE.as_millis() as u64;
        let mut waited = false;
        // Subscribed before trying, so a release between the try and the wait is heard.
        let mut con = self.server.connect().map_err(|e| self.bad(e))?;
        let mut ps = con.as_pubsub();
        ps.subscribe(&channel).map_err(|e| self.bad(e))?;
        loop {
            let took: Option<String> =
                self.cmd(redis::cmd("SET").arg(&lease).arg(&token).arg("NX").arg("PX").arg(ms))?;
            if took.is_some() {
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(lease.clone(), token.clone());
                self.renew_claims();
                let held = RedisClaim {
                    server: Arc::clone(&self.server),
                    held: Arc::clone(&self.held),
                    key: lease,
                    token,
                };
                return Ok(Some((crate::store::StoreClaim(Box::new(held)), waited)));
            }
            waited = true;
            // Until its release is published, or its lease runs out (a holder that died).
            let left: i64 = self.cmd(redis::cmd("PTTL").arg(&lease))?;
            if left <= 0 {
                continue;
            }
            let until = Instant::now() + Duration::from_millis(left as u64 + 10);
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                ps.set_read_timeout(Some(until - now)).map_err(|e| self.bad(e))?;
                match ps.get_message() {
                    Ok(m) => {
                        if m.get_payload::<String>().is_ok_and(|p| p == lease) {
                            break;
                        }
                    }
                    Err(e) if e.is_timeout() => break,
                    Err(e) => return Err(self.bad(format!("waiting for a claim: {e}"))),
                }
            }
        }
    }

    fn blob_lock(&self, _exclusive: bool) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        // Not needed: a save's script checks that the bytes of each new blob are there, and a
        // removal's script drops the bytes with the row (see the module's documentation).
        Ok(Some(Box::new(())))
    }

    fn lookup(&self, key: &str) -> Result<Option<Entry>> {
        let reply = self.call("lookup", &[key])?;
        let Value::Array(mut items) = reply else { return Ok(None) };
        let Some((run, blobs)) = items.pop().as_ref().and_then(found) else { return Ok(None) };
        RECENT_BLOBS.with(|r| *r.borrow_mut() = Some((self.id, Instant::now(), blobs)));
        decoded(Some(run))
    }

    fn lookup_many(&self, keys: &[String]) -> Result<Vec<Option<crate::store::Found>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Value::Array(items) = self.call("lookup", keys)? else {
            return Err(self.bad("the lookup script answered no list"));
        };
        Ok(items
            .iter()
            .map(|i| found(i).and_then(|(run, blobs)| run.ok().map(|e| (e, blobs))))
            .collect())
    }

    fn blob(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        let recent = RECENT_BLOBS.with(|r| match &mut *r.borrow_mut() {
            Some((store, at, rows)) if *store == self.id && at.elapsed() < RECENT_BLOBS_FOR => {
                let i = rows.iter().position(|b| b.digest == *digest)?;
                Some(rows.swap_remove(i))
            }
            _ => None,
        });
        if recent.is_some() {
            return Ok(recent);
        }
        let d = digest.to_string();
        let row: Value = self.cmd(redis::cmd("HGETALL").arg(self.key(&["b", &d])))?;
        let f = fields(&row);
        if f.is_empty() {
            return Ok(None);
        }
        Ok(blob_from_fields(&d, &f).ok())
    }

    fn commit_save(
        &self,
        entry: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Committed> {
        let mut out = self.saves(&[(entry, blobs)], place)?;
        Ok(out.pop().unwrap_or_default())
    }

    fn commit_saves(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Vec<Committed>> {
        if saves.is_empty() {
            return Ok(Vec::new());
        }
        self.saves(saves, place)
    }

    fn apply_accesses(&self, accesses: &[Access]) -> Result<()> {
        if accesses.is_empty() {
            return Ok(());
        }
        let mut hits: Vec<String> = Vec::new();
        let mut misses: std::collections::BTreeMap<&str, i64> = Default::default();
        let mut remote = 0i64;
        let mut n = 0usize;
        for a in accesses {
            match a {
                Access::Hit { id, at_ms, duration_ms } => {
                    n += 1;
                    hits.extend([
                        id.clone(),
                        at_ms.to_string(),
                        duration_ms.unwrap_or(0).to_string(),
                    ]);
                }
                Access::Miss { task } => *misses.entry(task).or_default() += 1,
                Access::RemoteHit => remote += 1,
            }
        }
        let mut args: Vec<String> = vec![n.to_string()];
        args.extend(hits);
        args.push(misses.len().to_string());
        for (task, c) in misses {
            args.extend([task.to_owned(), c.to_string()]);
        }
        args.push(remote.to_string());
        self.call("accesses", &args)?;
        Ok(())
    }

    fn remove_keys(&self, keys: &[String], count_as: Option<&str>) -> Result<Removed> {
        let mut args: Vec<&str> = vec![count_as.unwrap_or("")];
        args.extend(keys.iter().map(String::as_str));
        let v = self.call("remove_keys", &args)?;
        Ok(self.removed(&v))
    }

    fn remove_run(&self, id: &str) -> Result<Removed> {
        let v = self.call("remove_run", &[id])?;
        Ok(self.removed(&v))
    }

    fn task_stats(&self) -> Result<Vec<crate::entry::TaskStats>> {
        let mut tasks: Vec<String> = self.cmd(redis::cmd("SMEMBERS").arg(self.key(&["tasks"])))?;
        tasks.sort();
        let mut pipe = redis::pipe();
        for t in &tasks {
            pipe.cmd("HGETALL").arg(self.key(&["tc", t]));
        }
        let rows: Vec<Value> =
            if tasks.is_empty() { Vec::new() } else { self.with(|c| pipe.query(c))? };
        Ok(tasks
            .into_iter()
            .zip(rows.iter().map(fields))
            .map(|(task, f)| crate::entry::TaskStats {
                task,
                entries: int(&f, "entries").unwrap_or(0),
                bytes: int(&f, "bytes").unwrap_or(0),
                hits: int(&f, "hits").unwrap_or(0),
                misses: int(&f, "misses").unwrap_or(0),
                time_saved_ms: int(&f, "saved").unwrap_or(0),
            })
            .filter(|t| t.entries != 0 || t.hits != 0 || t.misses != 0 || t.time_saved_ms != 0)
            .collect())
    }

    fn reset_counters(&self) -> Result<()> {
        self.call::<&str>("reset_counters", &[])?;
        Ok(())
    }

    fn census(&self) -> Result<crate::entry::Census> {
        let v: Value = self.cmd(redis::cmd("HGETALL").arg(self.key(&["census"])))?;
        let f = fields(&v);
        let mut out = crate::entry::Census::default();
        for name in f.keys() {
            out.set(name, int(&f, name).unwrap_or(0));
        }
        Ok(out)
    }

    fn forget_corrupt_blob(&self, digest: &Digest) -> Result<Removed> {
        let d = digest.to_string();
        let v = self.call("forget_corrupt", &[d])?;
        Ok(self.removed(&v))
    }

    fn list(&self, f: &Filter) -> Result<Vec<Entry>> {
        let index = match &f.task {
            Some(t) => self.key(&["task", t]),
            None => self.key(&["all"]),
        };
        let mut out = Vec::new();
        let limit = f.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(out);
        }
        self.walk(&index, f.since_ms, None, false, &mut |e| {
            if f.admits(&e) {
                out.push(e);
            }
            out.len() < limit
        })?;
        Ok(out)
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
        let (lo, hi) = (format!("[{prefix}"), format!("({prefix}\u{10FFFF}"));
        let range = |index: &str| {
            redis::cmd("ZRANGEBYLEX")
                .arg(self.key(&[index]))
                .arg(&lo)
                .arg(&hi)
                .arg("LIMIT")
                .arg(0)
                .arg(5)
                .clone()
        };
        Ok((self.cmd(&range("ids"))?, self.cmd(&range("keys"))?))
    }

    fn run(&self, id: &str) -> Result<Option<Entry>> {
        let v: Value = self.cmd(redis::cmd("HGETALL").arg(self.key(&["r", id])))?;
        decoded(entry_from_fields(&fields(&v)))
    }

    fn history(&self, key: &str) -> Result<Vec<Entry>> {
        let members: Vec<(String, f64)> = self.cmd(
            redis::cmd("ZRANGE").arg(self.key(&["runs", key])).arg(0).arg(-1).arg("WITHSCORES"),
        )?;
        let mut with_pos: Vec<(i64, String)> = members
            .into_iter()
            .filter_map(|(m, _)| Some((m.get(..20)?.parse().ok()?, m.get(21..)?.to_owned())))
            .collect();
        with_pos.sort();
        let ids: Vec<String> = with_pos.iter().map(|(_, id)| id.clone()).collect();
        let pos: HashMap<String, i64> = with_pos.into_iter().map(|(p, id)| (id, p)).collect();
        let mut runs = sound(self.runs(&ids)?);
        runs.sort_by_key(|e| (e.created_ms, pos.get(&e.id).copied().unwrap_or(0)));
        Ok(runs)
    }

    fn evict(&self, now_ms: i64, target_bytes: Option<u64>, limit: usize) -> Result<Removed> {
        let target = target_bytes.map(|t| t.to_string()).unwrap_or_default();
        let v = self.call("evict", &[now_ms.to_string(), target, limit.to_string()])?;
        Ok(self.removed(&v))
    }

    fn counters(&self) -> Result<Counters> {
        let v: Value = self.cmd(redis::cmd("HGETALL").arg(self.key(&["counters"])))?;
        let mut out = Counters::default();
        for (name, value) in fields(&v) {
            out.set(&name, String::from_utf8_lossy(&value).parse().unwrap_or(0));
        }
        Ok(out)
    }

    fn live_entries(&self) -> Result<i64> {
        let n: Option<i64> = self.cmd(redis::cmd("HGET").arg(self.key(&["census"])).arg("live"))?;
        Ok(n.unwrap_or(0))
    }

    fn blobs_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>> {
        let lo = after.map_or("-".to_owned(), |a| format!("({a}"));
        let digests: Vec<String> = self.cmd(
            redis::cmd("ZRANGEBYLEX")
                .arg(self.key(&["blobs"]))
                .arg(lo)
                .arg("+")
                .arg("LIMIT")
                .arg(0)
                .arg(limit),
        )?;
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for d in &digests {
            pipe.cmd("HGETALL").arg(self.key(&["b", d]));
        }
        let rows: Vec<Value> = self.with(|c| pipe.query(c))?;
        Ok(digests
            .iter()
            .zip(&rows)
            .filter_map(|(d, r)| blob_from_fields(d, &fields(r)).ok())
            .collect())
    }

    fn live_keys_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        let rows: Vec<(String, f64)> = self.cmd(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.key(&["liveseq"]))
                .arg(format!("({after}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit),
        )?;
        Ok(rows.into_iter().map(|(k, s)| (s as i64, k)).collect())
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        self.cmd(redis::cmd("EXISTS").arg(self.key(&["b", &digest.to_string()])))
    }

    fn stale_keys(&self, stale: &Stale, limit: usize) -> Result<Vec<String>> {
        match stale {
            Stale::AccessedBefore(ms) => self.cmd(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.key(&["lru"]))
                    .arg("-inf")
                    .arg(*ms)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit),
            ),
            Stale::CreatedBefore { before_ms, task, except } => {
                let index = match task {
                    Some(t) => self.key(&["task", t]),
                    None => self.key(&["all"]),
                };
                let mut out = Vec::new();
                if limit == 0 {
                    return Ok(out);
                }
                self.walk(&index, None, Some(*before_ms), true, &mut |e| {
                    if e.status == Status::Live && !e.ttl_explicit && !except.contains(&e.task) {
                        out.push(e.key);
                    }
                    out.len() < limit
                })?;
                Ok(out)
            }
        }
    }

    fn damaged(&self) -> Result<Damaged> {
        let mut out = Damaged::default();
        self.lex_pages("ids", "r", &mut |id, f| {
            if let Some(Err((_, why))) = entry_from_fields(f) {
                out.entries.push((
                    id.to_owned(),
                    text(f, "key").unwrap_or_default(),
                    text(f, "live").as_deref() == Some("1"),
                    why,
                ));
            }
        })?;
        self.lex_pages("blobs", "b", &mut |d, f| {
            if !f.is_empty()
                && let Err(bad) = blob_from_fields(d, f)
            {
                out.blobs.push(bad);
            }
        })?;
        Ok(out)
    }

    fn drop_damaged_run(&self, id: &str) -> Result<Removed> {
        self.call("drop_damaged_run", &[id])?;
        Ok(Removed::default())
    }

    fn drop_damaged_blob(&self, digest: &str) -> Result<Removed> {
        self.call("drop_damaged_blob", &[digest])?;
        Ok(Removed::default())
    }

    fn clear(&self) -> Result<u64> {
        let live = self.live_entries()?;
        // Every key of the prefix, a batch at a time; the blob bytes with them.
        // The audit trail stays: it records the clear.
        let pattern = format!("{}:*", self.server.prefix);
        let audit = self.key(&["audit"]);
        let mut cursor: u64 = 0;
        loop {
            let (next, mut keys): (u64, Vec<String>) = self.cmd(
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000),
            )?;
            keys.retain(|k| *k != audit);
            if !keys.is_empty() {
                let _: i64 = self.cmd(redis::cmd("UNLINK").arg(&keys))?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: i64 = self.cmd(redis::cmd("PUBLISH").arg(self.key(&["changes"])).arg(""))?;
        Ok(live.max(0) as u64)
    }

    fn record_failure(&self, key: &str, message: &str, at_ms: i64) -> Result<()> {
        let _: i64 = self.cmd(
            redis::cmd("HSET")
                .arg(self.key(&["f", key]))
                .arg("message")
                .arg(message)
                .arg("at")
                .arg(at_ms),
        )?;
        Ok(())
    }

    fn record_failed_run(&self, entry: &Entry, message: &str) -> Result<Entry> {
        // A failed run is never served: it has no expiry and no use.
        let row = Entry {
            last_access_ms: 0,
            access_count: 0,
            expires_ms: None,
            status: Status::Failed,
            ..entry.clone()
        };
        let mut args: Vec<Vec<u8>> = Vec::new();
        self.save_args(&row, &[], &mut |_| Ok(()), &mut args)?;
        args.push(message.as_bytes().to_vec());
        let parent = match self.call("failed", &args)? {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            _ => String::new(),
        };
        let mut entry = entry.clone();
        entry.parent = Some(parent).filter(|p| !p.is_empty());
        entry.status = Status::Failed;
        Ok(entry)
    }

    fn failure(&self, key: &str) -> Result<Option<(String, i64)>> {
        let (message, at): (Option<String>, Option<i64>) =
            self.cmd(redis::cmd("HMGET").arg(self.key(&["f", key])).arg("message").arg("at"))?;
        Ok(message.map(|m| (m, at.unwrap_or(0))))
    }
}

/// Blob bytes in Redis, beside the metadata of [`RedisMeta`] on the same server and prefix:
/// `<prefix>:data:<algorithm>:<hex>`, one value per blob (up to Redis's 512 MiB).
pub struct RedisBlobs {
    server: Server,
    /// `data` (the vault's blobs), or a sibling's name (see [`BlobStore::sibling`]).
    area: String,
    /// The URL it was opened with, for siblings.
    url: String,
}

/// How long a server replica's upload waits in a sibling area (`uploads`) for its entry.
const SIBLING_TTL_SECONDS: u64 = 3600;

impl std::fmt::Debug for RedisBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBlobs").field("at", &self.server.shown).finish()
    }
}

impl RedisBlobs {
    pub fn open(url: &str) -> Result<RedisBlobs> {
        let store = shown(url);
        let server = Server::open(url, |message| Error::Store { store: store.clone(), message })?;
        Ok(RedisBlobs { server, area: "data".into(), url: url.to_owned() })
    }

    fn data(&self, d: &Digest) -> String {
        self.server.key(&[&self.area, &d.to_string()])
    }

    fn err(&self, what: &str, d: &Digest, e: redis::RedisError) -> Error {
        Error::Store { store: self.server.shown.clone(), message: format!("{what} blob {d}: {e}") }
    }
}

impl BlobStore for RedisBlobs {
    fn sibling(&self, name: &str) -> Result<Option<Box<dyn BlobStore>>> {
        let mut s = RedisBlobs::open(&self.url)?;
        s.area = name.to_owned();
        Ok(Some(Box::new(s)))
    }

    fn put(&self, digest: &Digest, staged: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        std::fs::File::open(staged).and_then(|mut f| f.read_to_end(&mut bytes)).at(staged)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.data(digest)).arg(bytes);
        // What waits in a sibling area for a commit goes by itself if none comes.
        if self.area != "data" {
            cmd.arg("EX").arg(SIBLING_TTL_SECONDS);
        }
        self.server.with(|c| cmd.query::<()>(c)).map_err(|e| self.err("cannot store", digest, e))
    }

    fn open(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let bytes: Option<Vec<u8>> = self
            .server
            .with(|c| redis::cmd("GET").arg(self.data(digest)).query(c))
            .map_err(|e| self.err("cannot read", digest, e))?;
        Ok(bytes.map(|b| BlobReader::Stream(Box::new(std::io::Cursor::new(b)))))
    }

    fn contains(&self, digest: &Digest) -> Result<bool> {
        self.server
            .with(|c| redis::cmd("EXISTS").arg(self.data(digest)).query(c))
            .map_err(|e| self.err("cannot read", digest, e))
    }

    fn remove(&self, digest: &Digest) -> Result<()> {
        self.server
            .with(|c| redis::cmd("DEL").arg(self.data(digest)).query::<i64>(c))
            .map(|_| ())
            .map_err(|e| self.err("cannot delete", digest, e))
    }

    fn quarantine(&self, digest: &Digest) -> Result<()> {
        // Kept a week for inspection, out of the way of its digest.
        let to = self.server.key(&[
            "quarantine",
            &digest.to_string(),
            &crate::clock::now_ms().to_string(),
        ]);
        self.server
            .with(|c| {
                // Gone already: nothing to keep.
                if !redis::cmd("EXISTS").arg(self.data(digest)).query::<bool>(c)? {
                    return Ok(());
                }
                redis::pipe()
                    .cmd("RENAME")
                    .arg(self.data(digest))
                    .arg(&to)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&to)
                    .arg(7 * 24 * 3600)
                    .ignore()
                    .query::<()>(c)
            })
            .map_err(|e| self.err("cannot quarantine", digest, e))
    }

    fn link(&self, _digest: &Digest, _dest: &Path) -> Result<bool> {
        Ok(false)
    }

    fn visit(
        &self,
        f: &mut dyn FnMut(Digest, Option<std::time::SystemTime>) -> Result<()>,
    ) -> Result<()> {
        let prefix = self.server.key(&[&self.area, ""]);
        let pattern = format!("{prefix}*");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .server
                .with(|c| {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query(c)
                })
                .map_err(|e| Error::Store {
                    store: self.server.shown.clone(),
                    message: format!("cannot list blobs: {e}"),
                })?;
            for k in keys {
                if let Some(d) = k.strip_prefix(&prefix).and_then(|d| d.parse::<Digest>().ok()) {
                    f(d, None)?;
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskvault_testkit::redis::{Prefix, server};

    fn entry(key: &str, id: &str, created: i64) -> Entry {
        serde_json::from_value(serde_json::json!({
            "id": id, "key": key, "namespace": "default", "task": "t", "status": "live",
            "output_kind": "bytes", "outputs": [], "size": 10, "created_ms": created,
            "expires_ms": null, "duration_ms": null, "parent": null,
        }))
        .unwrap()
    }

    #[test]
    fn a_lost_live_pointer_never_stalls_eviction_and_reads_as_a_miss() {
        let Some(server) = server() else { return };
        let prefix = Prefix::new(&server, "lost");
        let store = RedisMeta::open(&prefix.url()).unwrap();
        for i in 0..3 {
            let key = format!("{i:064}");
            store.commit_save(&entry(&key, &format!("r{i}"), i + 1), &[], &mut |_| Ok(())).unwrap();
        }
        // As a maxmemory policy would: one key's pointer gone.
        let lost = format!("{}:l:{:064}", prefix.name(), 1);
        let _: i64 = store.cmd(redis::cmd("DEL").arg(&lost)).unwrap();
        assert!(store.lookup(&format!("{:064}", 1)).unwrap().is_none());
        // Over the cap (counters, too, may disagree with what is left after evictions).
        let counters = format!("{}:counters", prefix.name());
        let _: i64 =
            store.cmd(redis::cmd("HINCRBY").arg(&counters).arg("stored_bytes").arg(1000)).unwrap();
        let removed = store.evict(0, Some(0), 100).unwrap();
        assert_eq!(removed.entries.len(), 2, "the two whole entries are evicted, and it returns");
        assert!(store.lookup(&format!("{:064}", 0)).unwrap().is_none());
        assert_eq!(store.counters().unwrap().evictions, 3, "each key of the LRU order once");
    }

    #[test]
    fn a_claim_waiter_wakes_at_the_release_not_the_lease() {
        let Some(server) = server() else { return };
        let prefix = Prefix::new(&server, "claims");
        let (a, b) =
            (RedisMeta::open(&prefix.url()).unwrap(), RedisMeta::open(&prefix.url()).unwrap());
        let (held, waited) = a.claim("k").unwrap().unwrap();
        assert!(!waited);
        // Another key is another claim.
        let (_other, waited) = b.claim("j").unwrap().unwrap();
        assert!(!waited);
        let released = std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let (_claim, waited) = b.claim("k").unwrap().unwrap();
                (waited, Instant::now())
            });
            std::thread::sleep(Duration::from_millis(300));
            let released = Instant::now();
            drop(held);
            let (waited, got) = waiter.join().unwrap();
            assert!(waited, "the second claimant waited");
            got.duration_since(released)
        });
        // Woken by the published release: well before the lease (5 s) could have run out.
        assert!(released < CLAIM_LEASE / 2, "woke {released:?} after the release");
    }
}
