//! Metadata in PostgreSQL (`storage.metadata: postgres://...`): the same facts as the SQLite
//! store (entries, blob rows with their reference counts, tags, counters, claim failures), for
//! several processes on several machines at once. Schema versions live in `taskvault_schema`;
//! see `docs/format.md`.
//!
//! The engine is synchronous; this store owns a small tokio runtime that drives its pool of
//! connections, and a caller's thread waits for each statement. Every method is one
//! transaction (READ COMMITTED). Writers that touch a key take a transaction-scoped advisory
//! lock on it first, so two replicas saving one key never both make a live run; a transaction
//! that loses a deadlock or a serialization conflict is run again.

use std::future::Future;
use std::sync::Mutex;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};

use crate::audit::{AuditQuery, AuditRow};
use crate::digest::Digest;
use crate::entry::{BlobInfo, Codec, Counters, Entry, Filter, Status};
use crate::error::{Error, Result};
use crate::store::{
    Access, Committed, Damaged, LeaseAsked, LeaseEnded, LeaseEvent, MetaStore, Removed, StagedBlob,
    Stale,
};

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 5;

/// Version 1. Ids, keys and digests sort byte by byte (`COLLATE "C"`), so a prefix is a range of
/// an index. A run's document is its whole entry as JSON; the columns beside it are what SQL
/// selects, orders and updates by, and win over the document when it is read. Tags are kept in
/// the document and, for `log --tag`, in `tags`. The census is kept by triggers in the
/// transaction of every write.
const SCHEMA_V1: &str = r#"
CREATE TABLE entries(
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT COLLATE "C" NOT NULL UNIQUE,
    key TEXT COLLATE "C" NOT NULL,
    live BOOLEAN NOT NULL,
    status TEXT NOT NULL,
    task TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    last_access_ms BIGINT NOT NULL,
    access_count BIGINT NOT NULL DEFAULT 0,
    expires_ms BIGINT,
    size BIGINT NOT NULL DEFAULT 0,
    ttl_explicit BOOLEAN NOT NULL DEFAULT false,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX entries_live_key ON entries(key) WHERE live;
CREATE INDEX entries_key ON entries(key, created_ms, seq);
CREATE INDEX entries_lru ON entries(greatest(last_access_ms, created_ms), created_ms) WHERE live;
CREATE INDEX entries_expiry ON entries(expires_ms) WHERE live AND expires_ms IS NOT NULL;
CREATE INDEX entries_created ON entries(created_ms, seq);
CREATE INDEX entries_task_created ON entries(task, created_ms, seq);
CREATE INDEX entries_status_created ON entries(status, created_ms, seq) WHERE NOT live;
CREATE TABLE tags(
    seq BIGINT NOT NULL REFERENCES entries(seq) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(name, value, seq)
);
CREATE INDEX tags_seq ON tags(seq);
CREATE TABLE blobs(
    digest TEXT COLLATE "C" PRIMARY KEY,
    size BIGINT NOT NULL,
    stored_size BIGINT NOT NULL,
    codec TEXT NOT NULL,
    data BYTEA,
    refs BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE counters(name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO counters(name, value) VALUES
    ('hits', 0), ('misses', 0), ('saves', 0), ('evictions', 0), ('corrupt', 0),
    ('expired', 0), ('time_saved_ms', 0), ('stored_bytes', 0), ('remote_hits', 0);
CREATE TABLE task_counters(
    task TEXT PRIMARY KEY,
    hits BIGINT NOT NULL DEFAULT 0,
    misses BIGINT NOT NULL DEFAULT 0,
    time_saved_ms BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE failures(key TEXT COLLATE "C" PRIMARY KEY, message TEXT NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE census(name TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO census(name, value) VALUES
    ('live', 0), ('runs', 0), ('failed_runs', 0), ('blobs', 0), ('inline_blobs', 0),
    ('inline_bytes', 0);
CREATE FUNCTION taskvault_census_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        UPDATE census SET value = value + CASE name
            WHEN 'runs' THEN (TG_OP = 'INSERT')::int
            WHEN 'live' THEN NEW.live::int
            ELSE (NEW.status = 'failed')::int END
        WHERE name IN ('runs', 'live', 'failed_runs');
    END IF;
    IF TG_OP <> 'INSERT' THEN
        UPDATE census SET value = value - CASE name
            WHEN 'runs' THEN (TG_OP = 'DELETE')::int
            WHEN 'live' THEN OLD.live::int
            ELSE (OLD.status = 'failed')::int END
        WHERE name IN ('runs', 'live', 'failed_runs');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER census_entries AFTER INSERT OR DELETE OR UPDATE OF live, status ON entries
    FOR EACH ROW EXECUTE FUNCTION taskvault_census_entries();
CREATE FUNCTION taskvault_census_blobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        UPDATE census SET value = value + CASE name
            WHEN 'blobs' THEN (TG_OP = 'INSERT')::int
            WHEN 'inline_blobs' THEN (NEW.data IS NOT NULL)::int
            ELSE CASE WHEN NEW.data IS NOT NULL THEN NEW.stored_size ELSE 0 END END
        WHERE name IN ('blobs', 'inline_blobs', 'inline_bytes');
    END IF;
    IF TG_OP <> 'INSERT' THEN
        UPDATE census SET value = value - CASE name
            WHEN 'blobs' THEN (TG_OP = 'DELETE')::int
            WHEN 'inline_blobs' THEN (OLD.data IS NOT NULL)::int
            ELSE CASE WHEN OLD.data IS NOT NULL THEN OLD.stored_size ELSE 0 END END
        WHERE name IN ('blobs', 'inline_blobs', 'inline_bytes');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER census_blobs AFTER INSERT OR DELETE OR UPDATE OF data, stored_size ON blobs
    FOR EACH ROW EXECUTE FUNCTION taskvault_census_blobs();
"#;

/// Version 2: the proofs of a server's namespaces (a namespace may read a blob once a client
/// of it has sent the bytes), which every replica must see.
const SCHEMA_V2: &str = r#"
CREATE TABLE proofs(
    namespace TEXT NOT NULL,
    digest TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY(namespace, digest)
);
"#;

/// Version 3: the digests of a run's blobs beside its document, so a lookup reads the run and
/// its blob rows in one statement (a join). Runs written before have none listed, and their
/// blob rows are read apart.
const SCHEMA_V3: &str = "ALTER TABLE entries ADD COLUMN digests TEXT[] NOT NULL DEFAULT '{}';";

/// Version 4: the leases of server claims, so that every replica of a server sees who computes
/// a key; expiry by the database's clock.
const SCHEMA_V4: &str = r#"
CREATE TABLE leases(
    namespace TEXT NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    lease TEXT NOT NULL,
    holder TEXT NOT NULL,
    expires TIMESTAMPTZ NOT NULL,
    PRIMARY KEY(namespace, key)
);
"#;

/// The audit trail of every machine sharing the store (see [`MetaStore::audit_append`]).
const SCHEMA_V5: &str = r#"
CREATE TABLE audit(
    seq BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    op TEXT NOT NULL,
    task TEXT NOT NULL,
    hash TEXT NOT NULL,
    size BIGINT,
    detail TEXT,
    origin TEXT NOT NULL
);
CREATE INDEX audit_task ON audit(task, seq);
"#;

/// The longest failure message a lease's end carries to other replicas (a notification's
/// payload is under 8,000 bytes).
const LEASE_MESSAGE_MAX: usize = 6_000;

/// [`ENTRY_COLS`] of `entries e`, then the columns of a row of `blobs b` (see [`PgMeta::lookup`]).
const ENTRY_AND_BLOB_COLS: &str = "e.seq, e.id, e.key, e.live, e.status, e.task, e.created_ms, \
    e.last_access_ms, e.access_count, e.expires_ms, e.size, e.ttl_explicit, e.doc, \
    b.digest, b.size, b.stored_size, b.codec, b.data";

/// How long blob rows read with a lookup answer [`MetaStore::blob`] on the same thread, once
/// each: the vault asks for them right after the lookup.
const RECENT_BLOBS_FOR: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// The blob rows the last lookup on this thread read: (store, when, rows).
    static RECENT_BLOBS: std::cell::RefCell<Option<(u64, std::time::Instant, Vec<BlobInfo>)>> =
        const { std::cell::RefCell::new(None) };
}

/// The columns [`entry_from_row`] reads, in its order.
const ENTRY_COLS: &str = "seq, id, key, live, status, task, created_ms, last_access_ms, \
    access_count, expires_ms, size, ttl_explicit, doc";

/// Connections a store opens at most (each waiting caller holds one for its transaction).
const POOL_SIZE: usize = 16;

/// Connections a store opens at most to wait for other processes' claims.
const WAITERS: usize = 8;

/// How often a transaction that lost a deadlock or a serialization conflict is run again.
const RETRIES: usize = 8;

/// What a listener calls with each notification's payload (`None`: some may have been missed).
pub(crate) type OnNotification = std::sync::Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// A statement's parameter.
type Param<'a> = &'a (dyn ToSql + Sync);

/// The PostgreSQL metadata store.
pub struct PgMeta {
    /// The URL as messages show it (no password, no query).
    shown: String,
    /// The schema its tables live in (`?schema=`), `None` for the connection's default.
    schema: Option<String>,
    pool: Pool,
    /// Whether the schema is known to be created and current (checked on first use).
    ready: Mutex<bool>,
    /// This process's side of the blob lock (see [`MetaStore::blob_lock`]).
    gate: std::sync::Arc<Gate>,
    /// This process's claims (see [`MetaStore::claim`]).
    claims: std::sync::Arc<ClaimState>,
    /// Connections that wait for another process's claim to end (each blocks in the server
    /// until it does): apart from `pool`, so waiters never starve the writers they wait for.
    waiters: Pool,
    /// How to connect (for the connection that listens for changes).
    config: tokio_postgres::Config,
    /// This store among the stores of the process (see `RECENT_BLOBS`).
    id: u64,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for PgMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgMeta").field("store", &self.shown).finish_non_exhaustive()
    }
}

impl Drop for PgMeta {
    fn drop(&mut self) {
        // Connections end with the runtime that drives them; never wait for a server here.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether `url` names a PostgreSQL metadata store.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// `url` as messages show it: no password, no query.
pub fn shown(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    match (base.find("://"), base.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &base[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if user.is_empty() {
                format!("{}{}", &base[..s + 3], &base[at + 1..])
            } else {
                format!("{}{user}{}", &base[..s + 3], &base[at..])
            }
        }
        _ => base.to_owned(),
    }
}

impl PgMeta {
    /// Prepares the store at `url` (`postgres://user[:password]@host[:port]/database`, with any
    /// of libpq's parameters, and `schema=NAME` to keep the tables in a schema of their own).
    /// Connects on first use: an unreachable server shows then.
    pub fn open(url: &str) -> Result<PgMeta> {
        PgMeta::open_with_password(url, None)
    }

    /// As [`PgMeta::open`], with `password` for a URL that names none.
    pub fn open_with_password(url: &str, password: Option<&str>) -> Result<PgMeta> {
        let shown = shown(url);
        let bad = |message: String| Error::Meta { store: shown.clone(), message };
        if !is_postgres_url(url) {
            return Err(bad("not a postgres:// URL".into()));
        }
        // `schema` is ours; every other parameter is libpq's.
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut schema = None;
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("schema", name)) => schema = Some(name.to_owned()),
                _ => rest.push(pair),
            }
        }
        if let Some(s) = &schema
            && (s.is_empty()
                || s.len() > 63
                || !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                || s.as_bytes()[0].is_ascii_digit())
        {
            return Err(bad(format!(
                "schema {s:?}: use lowercase letters, digits and _ (not first), at most 63"
            )));
        }
        let url =
            if rest.is_empty() { base.to_owned() } else { format!("{base}?{}", rest.join("&")) };
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
        if let Some(s) = &schema {
            config.options(format!("-c search_path={s}"));
        }
        if let Some(p) = password.filter(|_| config.get_password().is_none()) {
            config.password(p);
        }
        if config.get_application_name().is_none() {
            config.application_name("taskvault");
        }
        let pool_of = |size: usize, wait: Option<std::time::Duration>| {
            let manager = Manager::from_config(
                config.clone(),
                tokio_postgres::NoTls,
                ManagerConfig { recycling_method: RecyclingMethod::Fast },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(wait)
                .create_timeout(Some(std::time::Duration::from_secs(10)))
                .build()
                .map_err(|e| bad(format!("{e}")))
        };
        let pool = pool_of(POOL_SIZE, Some(std::time::Duration::from_secs(60)))?;
        // A waiter waits as long as the claim it waits for is held.
        let waiters = pool_of(WAITERS, None)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("taskvault-postgres")
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start its runtime: {e}")))?;
        Ok(PgMeta {
            shown,
            schema,
            pool,
            ready: Mutex::new(false),
            gate: Default::default(),
            claims: Default::default(),
            waiters,
            config,
            id: {
                static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                STORES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            rt: Some(rt),
        })
    }

    fn bad(&self, message: impl std::fmt::Display) -> Error {
        Error::Meta { store: self.shown.clone(), message: message.to_string() }
    }

    /// The handle of the runtime that drives the store's connections.
    fn handle(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("the runtime lives as long as the store").handle()
    }

    /// Runs `f` on the store's runtime and waits for it, from any thread: inside another
    /// runtime's worker it steps out of that runtime first, never blocking its other tasks.
    fn wait<F: Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        wait_on(self.handle(), f)
    }

    /// A connection from the pool, the schema made or migrated on first use.
    fn conn(&self) -> Result<Object> {
        let c = self.wait(self.pool.get()).map_err(|e| self.bad(format!("connecting: {e}")))?;
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        if !*ready {
            self.migrate(&c)?;
            *ready = true;
        }
        Ok(c)
    }

    /// Creates or checks the schema, one process at a time (under an advisory lock).
    fn migrate(&self, c: &Object) -> Result<()> {
        let tx = Tx { pg: self, c, retry: Default::default(), changed: Default::default() };
        tx.batch("BEGIN")?;
        let out = (|| {
            tx.one("SELECT pg_advisory_xact_lock($1)", &[&self.lock_id("init", "")])?;
            if let Some(s) = &self.schema {
                // Validated in `open`: letters, digits and _.
                tx.batch(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))?;
            }
            tx.batch("CREATE TABLE IF NOT EXISTS taskvault_schema(version INTEGER NOT NULL)")?;
            let found: Option<i32> =
                tx.opt("SELECT max(version) FROM taskvault_schema", &[])?.and_then(|r| r.get(0));
            let found = found.unwrap_or(0);
            if found > SCHEMA_VERSION {
                return Err(self.bad(format!(
                    "schema version {found} is newer than this taskvault understands \
                     ({SCHEMA_VERSION}); upgrade taskvault"
                )));
            }
            if found < 1 {
                tx.batch(SCHEMA_V1)?;
            }
            if found < 2 {
                tx.batch(SCHEMA_V2)?;
            }
            if found < 3 {
                tx.batch(SCHEMA_V3)?;
            }
            if found < 4 {
                tx.batch(SCHEMA_V4)?;
            }
            if found < 5 {
                tx.batch(SCHEMA_V5)?;
            }
            if found < SCHEMA_VERSION {
                tx.exec("INSERT INTO taskvault_schema(version) VALUES ($1)", &[&SCHEMA_VERSION])?;
            }
            Ok(())
        })();
        match out {
            Ok(()) => tx.batch("COMMIT"),
            Err(e) => {
                let _ = tx.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// An advisory lock id for `what` (`key`, ...) of `name`, particular to this store's schema.
    fn lock_id(&self, what: &str, name: &str) -> i64 {
        let mut h = blake3::Hasher::new();
        for part in [self.schema.as_deref().unwrap_or(""), what, name] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        i64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
    }

    /// The channel commits that remove or replace live runs notify (an identifier particular
    /// to this store's schema).
    fn channel(&self) -> String {
        format!("taskvault_{:016x}", self.lock_id("changes", "") as u64)
    }

    /// The channel ends of server claims' leases notify (see [`MetaStore::watch_leases`]).
    fn lease_channel(&self) -> String {
        format!("taskvault_{:016x}", self.lock_id("leases", "") as u64)
    }

    /// Listens on `channel` on the store's runtime for as long as it lives, connecting again
    /// (a second later) whenever the connection is lost: `on` is called with each
    /// notification's payload, and with `None` whenever notifications may have been missed
    /// (once listening starts, and when it stops). `watching` says whether it listens now.
    fn spawn_listener(
        &self,
        channel: String,
        what: &'static str,
        watching: std::sync::Arc<std::sync::atomic::AtomicBool>,
        on: OnNotification,
    ) {
        use std::sync::atomic::Ordering;
        let (config, shown) = (self.config.clone(), self.shown.clone());
        self.handle().spawn(async move {
            let mut complained = false;
            loop {
                match listen(&config, &channel, &watching, &*on).await {
                    Ok(()) => complained = false,
                    Err(e) if !complained => {
                        tracing::warn!("{shown}: not told of {what} ({e}) until it reconnects");
                        complained = true;
                    }
                    Err(_) => {}
                }
                watching.store(false, Ordering::SeqCst);
                on(None);
                // Before connecting again (not a poll of the data: nothing is kept meanwhile).
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Runs the statements of `f` on one connection, each on its own (no transaction).
    fn with<T>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T>) -> Result<T> {
        let c = self.conn()?;
        f(&Tx { pg: self, c: &c, retry: Default::default(), changed: Default::default() })
    }

    /// Runs `f` in a transaction, again while it loses a deadlock or a serialization conflict;
    /// rolls back on any error.
    fn write<T>(&self, mut f: impl FnMut(&Tx<'_>) -> Result<T>) -> Result<T> {
        let c = self.conn()?;
        let mut attempt = 0;
        loop {
            let tx = Tx { pg: self, c: &c, retry: Default::default(), changed: Default::default() };
            tx.batch("BEGIN")?;
            let out = f(&tx)
                .and_then(|v| {
                    if tx.changed.get() {
                        // Delivered when (and only if) the transaction commits.
                        tx.one("SELECT pg_notify($1, '')", &[&self.channel()])?;
                    }
                    Ok(v)
                })
                .and_then(|v| tx.batch("COMMIT").map(|()| v));
            match out {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let _ = tx.batch("ROLLBACK");
                    attempt += 1;
                    if !tx.retry.get() || attempt >= RETRIES {
                        return Err(e);
                    }
                    tracing::debug!("{}: transaction run again ({e})", self.shown);
                }
            }
        }
    }
}

/// Statements on one connection, waited for.
struct Tx<'a> {
    pg: &'a PgMeta,
    c: &'a Object,
    /// Set when a statement lost a deadlock or a serialization conflict.
    retry: std::cell::Cell<bool>,
    /// Set when the transaction removed or replaced a live run: other machines are told at
    /// its commit (see [`MetaStore::watch_changes`]).
    changed: std::cell::Cell<bool>,
}

impl Tx<'_> {
    fn err(&self, e: tokio_postgres::Error) -> Error {
        if matches!(
            e.code(),
            Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
        ) {
            self.retry.set(true);
        }
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.severity(), db.message()),
            None => e.to_string(),
        };
        self.pg.bad(message)
    }

    fn batch(&self, sql: &str) -> Result<()> {
        self.pg.wait(self.c.batch_execute(sql)).map_err(|e| self.err(e))
    }

    fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>> {
        let c = self.c;
        self.pg
            .wait(async move {
                let st = c.prepare_cached(sql).await?;
                c.query(&st, params).await
            })
            .map_err(|e| self.err(e))
    }

    fn opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    fn one(&self, sql: &str, params: &[Param<'_>]) -> Result<Row> {
        self.opt(sql, params)?.ok_or_else(|| self.pg.bad(format!("no row from {sql:?}")))
    }

    fn exec(&self, sql: &str, params: &[Param<'_>]) -> Result<u64> {
        let c = self.c;
        self.pg
            .wait(async move {
                let st = c.prepare_cached(sql).await?;
                c.execute(&st, params).await
            })
            .map_err(|e| self.err(e))
    }

    /// Column `i` of `row`: a column of another type is an error, never a panic.
    fn col<'r, T: FromSql<'r>>(&self, row: &'r Row, i: usize) -> Result<T> {
        row.try_get(i).map_err(|e| self.err(e))
    }

    fn bump(&self, name: &str, by: i64) -> Result<()> {
        if by != 0 {
            self.exec("UPDATE counters SET value = value + $2 WHERE name = $1", &[&name, &by])?;
        }
        Ok(())
    }

    /// Takes the advisory locks of `keys` (sorted, so two writers never wait on each other
    /// in a cycle), held until the transaction ends.
    fn lock_keys<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Result<()> {
        let mut ids: Vec<i64> = keys.into_iter().map(|k| self.pg.lock_id("key", k)).collect();
        ids.sort_unstable();
        ids.dedup();
        match ids.as_slice() {
            [] => {}
            [one] => {
                self.one("SELECT pg_advisory_xact_lock($1)", &[one])?;
            }
            _ => {
                self.one(
                    "SELECT count(pg_advisory_xact_lock(k)) FROM \
                     (SELECT k FROM unnest($1::BIGINT[]) k ORDER BY k) s",
                    &[&ids],
                )?;
            }
        }
        Ok(())
    }

    /// Takes the lock of `key` if no other transaction holds it.
    fn try_lock_key(&self, key: &str) -> Result<bool> {
        let row =
            self.one("SELECT pg_try_advisory_xact_lock($1)", &[&self.pg.lock_id("key", key)])?;
        self.col(&row, 0)
    }

    fn live_entry(&self, key: &str) -> Result<Option<Decoded>> {
        let row = self
            .opt(&format!("SELECT {ENTRY_COLS} FROM entries WHERE key = $1 AND live"), &[&key])?;
        Ok(row.map(|r| entry_from_row(&r)))
    }

    fn entries(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Decoded>> {
        Ok(self.query(sql, params)?.iter().map(entry_from_row).collect())
    }

    fn blob_row(&self, digest: &Digest) -> Result<Option<BlobRow>> {
        let row = self.opt(
            "SELECT digest, size, stored_size, codec, data FROM blobs WHERE digest = $1",
            &[&digest.to_string()],
        )?;
        Ok(row.map(|r| blob_from_row(&r)))
    }

    /// One reference less to each of `digests` (distinct), dropping those no live entry uses
    /// (their files added to `unlink`); returns bytes freed.
    fn unref_digests(&self, digests: &[Digest], unlink: &mut Vec<Digest>) -> Result<u64> {
        let mut freed = 0;
        for d in digests {
            let row = self.opt(
                "UPDATE blobs SET refs = refs - 1 WHERE digest = $1 RETURNING refs",
                &[&d.to_string()],
            )?;
            if let Some(row) = row
                && self.col::<i64>(&row, 0)? <= 0
            {
                freed += self.drop_blob_row(d, unlink)?;
            }
        }
        Ok(freed)
    }

    /// Deletes the row of blob `digest` (its file added to `unlink`); returns its stored bytes.
    fn drop_blob_row(&self, digest: &Digest, unlink: &mut Vec<Digest>) -> Result<u64> {
        let Some(row) = self.opt(
            "DELETE FROM blobs WHERE digest = $1 RETURNING stored_size, data IS NOT NULL",
            &[&digest.to_string()],
        )?
        else {
            return Ok(0);
        };
        let stored: i64 = self.col(&row, 0)?;
        self.bump("stored_bytes", -stored)?;
        if !self.col::<bool>(&row, 1)? {
            unlink.push(*digest);
        }
        Ok(stored.max(0) as u64)
    }

    /// Drops the references of the live run of `key` to its blobs. A live row that cannot be
    /// read keeps its blobs (never freed too early; `verify` drops the row).
    fn unref_key(&self, key: &str, unlink: &mut Vec<Digest>) -> Result<u64> {
        let Some(Ok(live)) = self.live_entry(key)? else { return Ok(0) };
        self.unref_digests(&live.blob_digests(), unlink)
    }

    /// Removes every run of `key` (whose lock the caller holds); returns the live entry, if
    /// any, and bytes freed.
    fn remove_key(&self, key: &str, unlink: &mut Vec<Digest>) -> Result<(Option<Entry>, u64)> {
        let live = sound(self.live_entry(key)?).pop();
        let freed = self.unref_key(key, unlink)?;
        if self.exec("DELETE FROM entries WHERE key = $1", &[&key])? > 0 {
            self.changed.set(true);
        }
        Ok((live, freed))
    }

    /// Marks the live entries using blob `digest` corrupt and drops their references; returns
    /// how many were live. Blobs count their users but do not name them: this reads the live
    /// documents that mention the digest, a scan paid only when a blob turns out corrupt.
    fn retire_users(&self, digest: &Digest, r: &mut Removed) -> Result<i64> {
        let pattern = format!("%{}%", digest.hex());
        let keys: Vec<String> = self
            .query("SELECT key FROM entries WHERE live AND doc LIKE $1", &[&pattern])?
            .iter()
            .map(|row| self.col(row, 0))
            .collect::<Result<_>>()?;
        let mut retired = 0;
        for k in keys {
            self.lock_keys([k.as_str()])?;
            let Some(Ok(e)) = self.live_entry(&k)? else { continue };
            if !e.blob_digests().contains(digest) {
                continue;
            }
            self.unref_digests(&e.blob_digests(), &mut r.unreferenced)?;
            self.exec(
                "UPDATE entries SET live = false, status = 'corrupt' WHERE key = $1 AND live",
                &[&k],
            )?;
            r.entries.push(e);
            retired += 1;
            self.changed.set(true);
        }
        Ok(retired)
    }

    /// Inserts `entry` as a run of its key; returns its position.
    fn insert_run(&self, entry: &Entry, live: bool) -> Result<i64> {
        let doc = serde_json::to_string(entry).expect("entries serialize");
        let last_access =
            if entry.last_access_ms > entry.created_ms { entry.last_access_ms } else { 0 };
        let row = self.one(
            "INSERT INTO entries(id, key, live, status, task, created_ms, last_access_ms,
                access_count, expires_ms, size, ttl_explicit, doc, digests)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING seq",
            &[
                &entry.id,
                &entry.key,
                &live,
                &entry.status.name(),
                &entry.task,
                &entry.created_ms,
                &last_access,
                &entry.access_count,
                &entry.expires_ms,
                &(entry.size as i64),
                &entry.ttl_explicit,
                &doc,
                &entry.blob_digests().iter().map(Digest::to_string).collect::<Vec<_>>(),
            ],
        )?;
        let seq: i64 = self.col(&row, 0)?;
        for (name, value) in &entry.tags {
            self.exec(
                "INSERT INTO tags(seq, name, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&seq, name, value],
            )?;
        }
        Ok(seq)
    }

    /// Records one save (the caller holds its key's lock); see [`MetaStore::commit_save`].
    fn save(
        &self,
        entry: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
        tally: &mut Tally,
    ) -> Result<Committed> {
        let mut unreferenced = Vec::new();
        for b in blobs {
            let d = b.info.digest.to_string();
            if b.staged.is_none() && b.info.inline.is_none() {
                // A reference to a stored blob: it must still be there, and sound (checked
                // again, holding its row, when the reference is counted below).
                if matches!(self.blob_row(&b.info.digest)?, Some(Ok(_))) {
                    continue;
                }
                return Err(Error::BlobVanished(d));
            }
            let insert = || {
                self.exec(
                    "INSERT INTO blobs(digest, size, stored_size, codec, data)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (digest) DO NOTHING",
                    &[
                        &d,
                        &(b.info.size as i64),
                        &(b.info.stored_size as i64),
                        &b.info.codec.name(),
                        &b.info.inline,
                    ],
                )
            };
            let mut added = insert()?;
            if added == 0 && matches!(self.blob_row(&b.info.digest)?, Some(Err(_))) {
                // A damaged row is replaced by what this save brings.
                tracing::warn!("replacing the damaged metadata row of blob {d}");
                let mut gone = Vec::new();
                self.drop_blob_row(&b.info.digest, &mut gone)?;
                added = insert()?;
            }
            if added == 0 {
                continue; // stored already
            }
            if b.staged.is_some() {
                place(b)?;
            }
            tally.stored_bytes += b.info.stored_size as i64;
        }
        let old = self.opt("SELECT id FROM entries WHERE key = $1 AND live", &[&entry.key])?;
        let old: Option<String> = old.map(|r| self.col(&r, 0)).transpose()?;
        // New references first, so blobs shared by the old and new run are never dropped.
        let digests: Vec<String> = entry.blob_digests().iter().map(Digest::to_string).collect();
        if !digests.is_empty() {
            let counted =
                self.exec("UPDATE blobs SET refs = refs + 1 WHERE digest = ANY($1)", &[&digests])?;
            if counted < digests.len() as u64 {
                // Removed by another writer since it was looked at.
                let missing = digests.first().cloned().unwrap_or_default();
                return Err(Error::BlobVanished(missing));
            }
        }
        if let Some(old) = &old {
            self.changed.set(true);
            self.unref_key(&entry.key, &mut unreferenced)?;
            self.exec(
                "UPDATE entries SET live = false, status = 'superseded' WHERE id = $1",
                &[old],
            )?;
        }
        let mut entry = entry.clone();
        entry.parent = old.clone();
        entry.status = Status::Live;
        self.insert_run(&entry, true)?;
        if tally.failures {
            self.exec("DELETE FROM failures WHERE key = $1", &[&entry.key])?;
        }
        tally.saves += 1;
        Ok(Committed { superseded: old, unreferenced })
    }

    fn tally(&self) -> Result<Tally> {
        let row = self.one("SELECT EXISTS(SELECT 1 FROM failures)", &[])?;
        Ok(Tally { saves: 0, stored_bytes: 0, failures: self.col(&row, 0)? })
    }

    fn write_tally(&self, t: &Tally) -> Result<()> {
        self.bump("saves", t.saves)?;
        self.bump("stored_bytes", t.stored_bytes)
    }

    /// The keys of `rows` (a statement selecting `key` first).
    fn keys(&self, rows: &[Row]) -> Result<Vec<String>> {
        rows.iter().map(|r| self.col(r, 0)).collect()
    }
}

/// What the saves of one transaction add to the counters, written once at its end.
struct Tally {
    saves: i64,
    stored_bytes: i64,
    /// Whether `failures` may hold rows (saves clear their key's).
    failures: bool,
}

/// A row read back: its entry, or (its run id, why it is damaged).
type Decoded = std::result::Result<Entry, (String, String)>;

/// A blob row read back, or (its digest as stored, why it cannot be used).
type BlobRow = std::result::Result<BlobInfo, (String, String)>;

/// A run's row: its document, with what the columns hold put over it. A document that does
/// not decode, or names another run or key than its columns, is damaged and never served.
fn entry_from_row(row: &Row) -> Decoded {
    let id: String = row.try_get(1).unwrap_or_else(|_| "(unreadable)".into());
    let damaged = |why: String| Err((id.clone(), why));
    let (Ok(key), Ok(doc)) = (row.try_get::<_, String>(2), row.try_get::<_, String>(12)) else {
        return damaged("its key or document cannot be read".into());
    };
    let mut e: Entry = match serde_json::from_str(&doc) {
        Ok(e) => e,
        Err(err) => return damaged(format!("its document does not decode: {err}")),
    };
    if e.id != id || e.key != key {
        return damaged(format!("its document describes run {} of key {}", e.id, e.key));
    }
    let int = |i: usize| row.try_get::<_, i64>(i).ok();
    e.status = match row.try_get::<_, String>(4).ok().as_deref().and_then(Status::parse) {
        // A live run's column says so too; anything else reads as corrupt, never served.
        Some(Status::Live) if row.try_get::<_, bool>(3).unwrap_or(false) => Status::Live,
        Some(Status::Live) | None => Status::Corrupt,
        Some(s) => s,
    };
    match row.try_get::<_, String>(5) {
        Ok(t) => e.task = t,
        Err(_) => return damaged("its task is not text".into()),
    }
    let Some(created) = int(6) else { return damaged("its creation time is not a number".into()) };
    e.created_ms = created;
    // 0 until the run is first used: its creation.
    e.last_access_ms = int(7).unwrap_or(0).max(created);
    e.access_count = int(8).unwrap_or(0);
    e.expires_ms = row.try_get::<_, Option<i64>>(9).ok().flatten();
    e.size = int(10).unwrap_or(0).max(0) as u64;
    e.ttl_explicit = row.try_get::<_, bool>(11).unwrap_or(false);
    Ok(e)
}

fn blob_from_row(r: &Row) -> BlobRow {
    blob_from_row_at(r, 0)
}

/// A blob row whose columns (digest, size, stored size, codec, data) start at `at`.
fn blob_from_row_at(r: &Row, at: usize) -> BlobRow {
    let shown: String = r.try_get(at).unwrap_or_else(|_| "(unreadable)".into());
    let bad = |why: &str| (shown.clone(), why.to_owned());
    let digest: Digest = shown.parse().map_err(|_| bad("the digest does not parse"))?;
    let count = |i: usize| r.try_get::<_, i64>(at + i).ok().filter(|n| *n >= 0).map(|n| n as u64);
    let size = count(1).ok_or_else(|| bad("the size is not a count of bytes"))?;
    let stored_size = count(2).ok_or_else(|| bad("the stored size is not a count of bytes"))?;
    let codec = r
        .try_get::<_, String>(at + 3)
        .ok()
        .and_then(|c| Codec::parse(&c))
        .ok_or_else(|| bad("unknown codec"))?;
    let inline: Option<Vec<u8>> =
        r.try_get(at + 4).map_err(|_| bad("the inline data is not bytes"))?;
    Ok(BlobInfo { digest, size, stored_size, codec, inline })
}

/// The entries of decoded rows; damaged ones are left out with a warning (`verify` reports and
/// removes them).
fn sound(rows: impl IntoIterator<Item = Decoded>) -> Vec<Entry> {
    rows.into_iter()
        .filter_map(|r| {
            r.map_err(|(id, why)| tracing::warn!("damaged metadata row of run {id} skipped: {why}"))
                .ok()
        })
        .collect()
}

fn decoded(row: Option<Decoded>) -> Result<Option<Entry>> {
    row.transpose().map_err(|(run, message)| Error::DamagedRow { run, message })
}

/// The greatest text that starts with `prefix` (for a range of an index in byte order).
fn prefix_end(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

/// This process's holders of the blob lock. The lock between processes is a session-level
/// advisory lock on one connection of the process's own; in the process, holders are counted
/// here first, so the session takes the exclusive lock only when no holder of this process
/// shares it (a session never conflicts with its own locks), and a waiting exclusive holder
/// keeps new shared ones out.
#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    cv: std::sync::Condvar,
    /// The connection that holds the advisory locks, made on first use and again after an
    /// error (a closed session has released its locks).
    session: Session,
}

#[derive(Debug, Default)]
struct GateState {
    shared: usize,
    exclusive: bool,
    writers_waiting: usize,
}

impl Gate {
    fn enter(&self, exclusive: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if exclusive {
            st.writers_waiting += 1;
            while st.exclusive || st.shared > 0 {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.writers_waiting -= 1;
            st.exclusive = true;
        } else {
            while st.exclusive || st.writers_waiting > 0 {
                st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.shared += 1;
        }
    }

    fn leave(&self, exclusive: bool) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if exclusive {
            st.exclusive = false;
        } else {
            st.shared -= 1;
        }
        drop(st);
        self.cv.notify_all();
    }
}

/// A held blob lock: released (in the session, then in the process) when dropped. It holds
/// what it needs of its store: the gate, the session, the runtime's handle, and where to say
/// what went wrong.
struct BlobGuard {
    gate: std::sync::Arc<Gate>,
    session: std::sync::Arc<deadpool_postgres::ClientWrapper>,
    handle: tokio::runtime::Handle,
    shown: String,
    exclusive: bool,
    id: i64,
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        let owner = &*self;
        let sql = if self.exclusive {
            "SELECT pg_advisory_unlock($1)"
        } else {
            "SELECT pg_advisory_unlock_shared($1)"
        };
        let session = std::sync::Arc::clone(&owner.session);
        let id = self.id;
        let unlocked = wait_on(&owner.handle, async move { session.query_one(sql, &[&id]).await });
        if let Err(e) = unlocked {
            // The session is unusable; closing it releases whatever it held.
            tracing::warn!("{}: releasing the blob lock: {e}", owner.shown);
            forget_session(&owner.gate.session, &owner.session);
        }
        owner.gate.leave(self.exclusive);
    }
}

/// Listens on `channel` until the connection ends: `watching` is set once notifications are
/// sure to arrive, and `on` called with `None` then (what happened before may have been missed)
/// and with the payload of every notification.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    watching: &std::sync::atomic::AtomicBool,
    on: &(dyn Fn(Option<&str>) + Send + Sync),
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    });
    // The channel is made of hex digits: nothing to quote.
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    watching.store(true, std::sync::atomic::Ordering::SeqCst);
    on(None);
    while let Some(payload) = rx.recv().await {
        on(Some(&payload));
    }
    driver.abort();
    Ok(())
}

/// The notification of a lease's end (see [`lease_event`]); a failure's message is cut to
/// [`LEASE_MESSAGE_MAX`] bytes.
pub(crate) fn lease_payload(ns: &str, key: &str, how: &LeaseEnded) -> String {
    let (end, message) = match how {
        LeaseEnded::Ready => ("ready", None),
        LeaseEnded::Vacant => ("vacant", None),
        LeaseEnded::Failed(m) => {
            let mut cut = m.len().min(LEASE_MESSAGE_MAX);
            while !m.is_char_boundary(cut) {
                cut -= 1;
            }
            ("failed", Some(&m[..cut]))
        }
    };
    serde_json::json!({"ns": ns, "key": key, "end": end, "message": message}).to_string()
}

/// The lease end a notification's payload describes (see [`MetaStore::lease_end`]).
pub(crate) fn lease_event(payload: &str) -> Option<LeaseEvent> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let how = match text("end")?.as_str() {
        "ready" => LeaseEnded::Ready,
        "vacant" => LeaseEnded::Vacant,
        "failed" => LeaseEnded::Failed(text("message").unwrap_or_default()),
        _ => return None,
    };
    Some(LeaseEvent::Ended { ns: text("ns")?, key: text("key")?, how })
}

/// Waits for `f` on the runtime behind `handle`, from any thread (see [`PgMeta::wait`]).
fn wait_on<F: Future + Send>(handle: &tokio::runtime::Handle, f: F) -> F::Output
where
    F::Output: Send,
{
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Err(_) => handle.block_on(f),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| handle.block_on(f))
        }
        Ok(_) => std::thread::scope(|s| {
            s.spawn(|| handle.block_on(f)).join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        }),
    }
}

/// A connection kept out of the pool for session-level advisory locks, and made again after
/// an error (a closed session has released its locks).
type Session = Mutex<Option<std::sync::Arc<deadpool_postgres::ClientWrapper>>>;

/// This process's claims. A claim is a session-level advisory lock on one connection the
/// process keeps for them, which only ever tries locks (`pg_try_advisory_lock`: it never waits
/// in the server, so releases are never stuck behind a wait). In the process, claims are counted
/// here first (a session never conflicts with its own locks), and a thread waits for another's
/// on the condition variable. A claim another process holds is waited for on a connection of
/// `waiters`, blocked in a shared lock of the same id until the holder releases it or its
/// session ends (the holder died): no polling, and a dead claimant frees its claims at once.
#[derive(Debug, Default)]
struct ClaimState {
    held: Mutex<std::collections::HashSet<i64>>,
    cv: std::sync::Condvar,
    session: Session,
}

impl ClaimState {
    fn release_here(&self, id: i64) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        self.cv.notify_all();
    }
}

/// A held claim (see [`ClaimState`]): released in the session, then in the process.
struct PgClaim {
    state: std::sync::Arc<ClaimState>,
    session: std::sync::Arc<deadpool_postgres::ClientWrapper>,
    handle: tokio::runtime::Handle,
    shown: String,
    id: i64,
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        let (session, id) = (std::sync::Arc::clone(&self.session), self.id);
        let unlocked = wait_on(&self.handle, async move {
            session.query_one("SELECT pg_advisory_unlock($1)", &[&id]).await
        });
        if let Err(e) = unlocked {
            tracing::warn!("{}: releasing a claim: {e}", self.shown);
            forget_session(&self.state.session, &self.session);
        }
        self.state.release_here(self.id);
    }
}

/// Drops `slot`'s session if it is `broken` (the next user makes a new one).
fn forget_session(slot: &Session, broken: &std::sync::Arc<deadpool_postgres::ClientWrapper>) {
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    if s.as_ref().is_some_and(|c| std::sync::Arc::ptr_eq(c, broken)) {
        *s = None;
    }
}

impl PgMeta {
    /// Waits until no other process holds the claim `id` (see [`ClaimState`]).
    fn wait_for_claim(&self, id: i64) -> Result<()> {
        let c = self
            .wait(self.waiters.get())
            .map_err(|e| self.bad(format!("connecting to wait for a claim: {e}")))?;
        self.wait(async {
            c.query_one("SELECT pg_advisory_lock_shared($1)", &[&id]).await?;
            c.query_one("SELECT pg_advisory_unlock_shared($1)", &[&id]).await
        })
        .map_err(|e| self.bad(format!("waiting for a claim: {e}")))?;
        Ok(())
    }

    /// The session of `slot`, made (out of the pool) if there is none or it closed.
    fn session(&self, slot: &Session) -> Result<std::sync::Arc<deadpool_postgres::ClientWrapper>> {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = s.as_ref().filter(|c| !c.is_closed()) {
            return Ok(std::sync::Arc::clone(c));
        }
        // Out of the pool for good: its session's locks are this process's.
        let c = std::sync::Arc::new(Object::take(self.conn()?));
        *s = Some(std::sync::Arc::clone(&c));
        Ok(c)
    }
}

impl MetaStore for PgMeta {
    fn shared(&self) -> bool {
        true
    }

    fn watch_changes(
        &self,
        changed: std::sync::Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Option<std::sync::Arc<std::sync::atomic::AtomicBool>>> {
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let what = "other machines' changes; results are not kept in memory";
        self.spawn_listener(
            self.channel(),
            what,
            std::sync::Arc::clone(&watching),
            std::sync::Arc::new(move |_| changed()),
        );
        Ok(Some(watching))
    }

    fn lease_ask(
        &self,
        ns: &str,
        key: &str,
        lease: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<LeaseAsked>> {
        let secs = ttl.as_secs_f64();
        self.with(|t| {
            loop {
                // Taken when free or expired; an unexpired lease is left as it is.
                let took = t.opt(
                    "INSERT INTO leases(namespace, key, lease, holder, expires) \
                     VALUES ($1, $2, $3, $4, clock_timestamp() + make_interval(secs => $5)) \
                     ON CONFLICT (namespace, key) DO UPDATE SET lease = EXCLUDED.lease, \
                     holder = EXCLUDED.holder, expires = EXCLUDED.expires \
                     WHERE leases.expires <= clock_timestamp() RETURNING lease",
                    &[&ns, &key, &lease, &holder, &secs],
                )?;
                if took.is_some() {
                    return Ok(Some(LeaseAsked::Granted));
                }
                let held = t.opt(
                    "SELECT holder, extract(epoch FROM expires - clock_timestamp())::float8 \
                     FROM leases WHERE namespace = $1 AND key = $2",
                    &[&ns, &key],
                )?;
                // Gone (or run out) since: ask again.
                if let Some(r) = held {
                    let left: f64 = t.col(&r, 1)?;
                    if left > 0.0 {
                        return Ok(Some(LeaseAsked::Held {
                            holder: t.col(&r, 0)?,
                            remaining: std::time::Duration::from_secs_f64(left),
                        }));
                    }
                }
            }
        })
    }

    fn lease_renew(
        &self,
        ns: &str,
        key: &str,
        lease: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<bool>> {
        let secs = ttl.as_secs_f64();
        let n = self.with(|t| {
            t.exec(
                "UPDATE leases SET expires = clock_timestamp() + make_interval(secs => $4) \
                 WHERE namespace = $1 AND key = $2 AND lease = $3",
                &[&ns, &key, &lease, &secs],
            )
        })?;
        Ok(Some(n == 1))
    }

    fn lease_end(
        &self,
        ns: &str,
        key: &str,
        lease: Option<&str>,
        how: &LeaseEnded,
    ) -> Result<Option<bool>> {
        let payload = lease_payload(ns, key, how);
        // The notification goes out at the commit of the delete, and only if there was one.
        let rows = self.with(|t| {
            t.query(
                "WITH ended AS (DELETE FROM leases WHERE namespace = $1 AND key = $2 \
                 AND ($3::text IS NULL OR lease = $3) RETURNING 1) \
                 SELECT pg_notify($4, $5) FROM ended",
                &[&ns, &key, &lease, &self.lease_channel(), &payload],
            )
        })?;
        Ok(Some(!rows.is_empty()))
    }

    fn audit_append(&self, rows: &[AuditRow], keep: u64) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let col = |f: fn(&AuditRow) -> &str| rows.iter().map(f).collect::<Vec<&str>>();
        let at: Vec<i64> = rows.iter().map(|r| r.at_ms).collect();
        let size: Vec<Option<i64>> =
            rows.iter().map(|r| r.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX))).collect();
        let detail: Vec<Option<&str>> = rows.iter().map(|r| r.detail.as_deref()).collect();
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        self.with(|t| {
            // One statement for the batch, in its order (the sequence numbers it draws).
            let added = t.query(
                "INSERT INTO audit(at_ms, event, op, task, hash, size, detail, origin)                  SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],                  $5::text[], $6::bigint[], $7::text[], $8::text[]) RETURNING seq",
                &[
                    &at,
                    &col(|r| r.event.name()),
                    &col(|r| &r.op),
                    &col(|r| &r.task),
                    &col(|r| &r.hash),
                    &size,
                    &detail,
                    &col(|r| &r.origin),
                ],
            )?;
            let newest = added.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(0);
            // Keeps the newest `keep`, whoever wrote them (a range of the primary key).
            t.exec("DELETE FROM audit WHERE seq <= $1", &[&newest.saturating_sub(keep)])?;
            Ok(())
        })
    }

    fn audit_rows(&self, q: &AuditQuery) -> Result<Option<Vec<AuditRow>>> {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let rows = self.with(|t| {
            t.query(
                "SELECT at_ms, event, op, task, hash, size, detail, origin FROM audit                  WHERE ($1::text IS NULL OR event = $1) AND ($2::text IS NULL OR task = $2)                  AND ($3::bigint IS NULL OR at_ms >= $3) ORDER BY seq DESC LIMIT $4",
                &[&q.event.map(|e| e.name()), &q.task, &q.since_ms, &limit],
            )
        })?;
        let rows = rows
            .iter()
            .map(|r| {
                let event: String = r.get(1);
                Ok(AuditRow {
                    at_ms: r.get(0),
                    event: crate::audit::Event::parse(&event)
                        .ok_or_else(|| self.bad(format!("audit record of event {event:?}")))?,
                    op: r.get(2),
                    task: r.get(3),
                    hash: r.get(4),
                    size: r.get::<_, Option<i64>>(5).map(|s| s.max(0) as u64),
                    detail: r.get(6),
                    origin: r.get(7),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(rows))
    }

    fn watch_leases(&self, on: std::sync::Arc<dyn Fn(LeaseEvent) + Send + Sync>) -> Result<bool> {
        let shown = self.shown.clone();
        let on_payload = move |payload: Option<&str>| {
            let Some(p) = payload else { return on(LeaseEvent::Missed) };
            match lease_event(p) {
                Some(e) => on(e),
                None => {
                    tracing::warn!("{shown}: a lease notification that is not one: {p:?}");
                    on(LeaseEvent::Missed);
                }
            }
        };
        let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.spawn_listener(
            self.lease_channel(),
            "claims ended on other replicas; their waiters wait for the lease to run out",
            watching,
            std::sync::Arc::new(on_payload),
        );
        Ok(true)
    }

    fn add_proof(&self, ns: &str, digest: &Digest) -> Result<bool> {
        self.with(|t| {
            t.exec(
                "INSERT INTO proofs(namespace, digest) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&ns, &digest.to_string()],
            )
        })?;
        Ok(true)
    }

    fn has_proof(&self, ns: &str, digest: &Digest) -> Result<Option<bool>> {
        self.with(|t| {
            let r = t.one(
                "SELECT EXISTS(SELECT 1 FROM proofs WHERE namespace = $1 AND digest = $2)",
                &[&ns, &digest.to_string()],
            )?;
            Ok(Some(t.col(&r, 0)?))
        })
    }

    fn claim(&self, key: &str) -> Result<Option<(crate::store::StoreClaim, bool)>> {
        let id = self.lock_id("claim", key);
        let st = &self.claims;
        let mut waited = false;
        loop {
            {
                let mut held = st.held.lock().unwrap_or_else(|p| p.into_inner());
                while held.contains(&id) {
                    waited = true;
                    held = st.cv.wait(held).unwrap_or_else(|p| p.into_inner());
                }
                held.insert(id);
            }
            let tried = self.session(&st.session).and_then(|session| {
                let s = std::sync::Arc::clone(&session);
                let row = self.wait(async move {
                    s.query_one("SELECT pg_try_advisory_lock($1)", &[&id]).await
                });
                match row.and_then(|r| r.try_get::<_, bool>(0)) {
                    Ok(took) => Ok((took, session)),
                    Err(e) => {
                        forget_session(&st.session, &session);
                        Err(self.bad(format!("taking a claim: {e}")))
                    }
                }
            });
            match tried {
                Ok((true, session)) => {
                    let held = PgClaim {
                        state: std::sync::Arc::clone(st),
                        session,
                        handle: self.handle().clone(),
                        shown: self.shown.clone(),
                        id,
                    };
                    return Ok(Some((crate::store::StoreClaim(Box::new(held)), waited)));
                }
                Ok((false, _)) => {
                    st.release_here(id);
                    waited = true;
                    self.wait_for_claim(id)?;
                }
                Err(e) => {
                    st.release_here(id);
                    return Err(e);
                }
            }
        }
    }

    fn blob_lock(&self, exclusive: bool) -> Result<Option<Box<dyn std::any::Any + Send>>> {
        self.gate.enter(exclusive);
        let id = self.lock_id("blobs", "");
        let sql = if exclusive {
            "SELECT pg_advisory_lock($1)"
        } else {
            "SELECT pg_advisory_lock_shared($1)"
        };
        let taken = self.session(&self.gate.session).and_then(|session| {
            let s = std::sync::Arc::clone(&session);
            self.wait(async move { s.query_one(sql, &[&id]).await })
                .map(|_| session)
                .map_err(|e| self.bad(format!("taking the blob lock: {e}")))
        });
        let session = match taken {
            Ok(s) => s,
            Err(e) => {
                self.gate.session.lock().unwrap_or_else(|p| p.into_inner()).take();
                self.gate.leave(exclusive);
                return Err(e);
            }
        };
        Ok(Some(Box::new(BlobGuard {
            gate: std::sync::Arc::clone(&self.gate),
            session,
            handle: self.handle().clone(),
            shown: self.shown.clone(),
            exclusive,
            id,
        })))
    }

    fn lookup(&self, key: &str) -> Result<Option<Entry>> {
        // The run and the rows of its blobs in one statement; the rows then answer `blob` on
        // this thread for a moment (the vault reads them next).
        let (run, blobs) = self.with(|t| {
            let rows = t.query(
                &format!(
                    "SELECT {ENTRY_AND_BLOB_COLS} FROM entries e
                     LEFT JOIN blobs b ON b.digest = ANY(e.digests)
                     WHERE e.key = $1 AND e.live"
                ),
                &[&key],
            )?;
            let run = rows.first().map(entry_from_row);
            let blobs: Vec<BlobInfo> = rows
                .iter()
                .filter(|r| r.try_get::<_, Option<String>>(13).ok().flatten().is_some())
                .filter_map(|r| blob_from_row_at(r, 13).ok())
                .collect();
            Ok((run, blobs))
        })?;
        RECENT_BLOBS.with(|r| *r.borrow_mut() = Some((self.id, std::time::Instant::now(), blobs)));
        decoded(run)
    }

    fn lookup_many(&self, keys: &[String]) -> Result<Vec<Option<crate::store::Found>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.write(|t| {
            // One snapshot for both statements.
            t.batch("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
            let rows = t.entries(
                &format!("SELECT {ENTRY_COLS} FROM entries WHERE key = ANY($1) AND live"),
                &[&keys],
            )?;
            let mut by_key: std::collections::HashMap<String, Entry> =
                rows.into_iter().filter_map(|r| r.ok()).map(|e| (e.key.clone(), e)).collect();
            let mut digests: Vec<String> =
                by_key.values().flat_map(|e| e.blob_digests()).map(|d| d.to_string()).collect();
            digests.sort();
            digests.dedup();
            let blobs: std::collections::HashMap<Digest, BlobInfo> = t
                .query(
                    "SELECT digest, size, stored_size, codec, data FROM blobs
                     WHERE digest = ANY($1)",
                    &[&digests],
                )?
                .iter()
                .filter_map(|r| blob_from_row(r).ok())
                .map(|b| (b.digest, b))
                .collect();
            Ok(keys
                .iter()
                .map(|k| {
                    let e = by_key.remove(k)?;
                    let rows =
                        e.blob_digests().iter().filter_map(|d| blobs.get(d).cloned()).collect();
                    Some((e, rows))
                })
                .collect())
        })
    }

    fn blob(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        // Taken, not copied: a second look (as when a blob fails verification) reads the row.
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
        // A damaged row is no row: what used it reads as corrupt, and a save replaces it.
        Ok(self.with(|t| t.blob_row(digest))?.and_then(|r| r.ok()))
    }

    fn commit_save(
        &self,
        entry: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Committed> {
        self.write(|t| {
            t.lock_keys([entry.key.as_str()])?;
            let mut tally = t.tally()?;
            let c = t.save(entry, blobs, place, &mut tally)?;
            t.write_tally(&tally)?;
            Ok(c)
        })
    }

    fn commit_saves(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Vec<Committed>> {
        self.write(|t| {
            t.lock_keys(saves.iter().map(|(e, _)| e.key.as_str()))?;
            let mut tally = t.tally()?;
            let out = saves
                .iter()
                .map(|(e, b)| t.save(e, b, place, &mut tally))
                .collect::<Result<Vec<_>>>()?;
            t.write_tally(&tally)?;
            Ok(out)
        })
    }

    fn apply_accesses(&self, accesses: &[Access]) -> Result<()> {
        if accesses.is_empty() {
            return Ok(());
        }
        // Hits in the order of their runs, so two replicas never lock rows in a cycle.
        let mut hits: Vec<(&str, i64, i64)> = Vec::new();
        let mut per_task: std::collections::BTreeMap<String, (i64, i64, i64)> = Default::default();
        let (mut misses, mut remote) = (0i64, 0i64);
        for a in accesses {
            match a {
                Access::Hit { id, at_ms, duration_ms } => {
                    hits.push((id, *at_ms, duration_ms.unwrap_or(0)))
                }
                Access::Miss { task } => {
                    misses += 1;
                    per_task.entry(task.clone()).or_default().1 += 1;
                }
                Access::RemoteHit => remote += 1,
            }
        }
        hits.sort();
        self.write(|t| {
            // Counts and access times: a crash of the server may lose the last of them, and a
            // commit need not wait for its WAL to reach the disk.
            t.batch("SET LOCAL synchronous_commit TO OFF")?;
            let mut per_task = per_task.clone();
            // Every hit of the batch in one statement: a run's count and last use, and its task.
            let ids: Vec<&str> = hits.iter().map(|h| h.0).collect();
            let ats: Vec<i64> = hits.iter().map(|h| h.1).collect();
            let durations: Vec<i64> = hits.iter().map(|h| h.2).collect();
            let mut matched = 0i64;
            if !hits.is_empty() {
                let rows = t.query(
                    "WITH v AS (
                        SELECT id, max(at) AS at, count(*) AS n, sum(d)::BIGINT AS saved
                        FROM unnest($1::TEXT[], $2::BIGINT[], $3::BIGINT[]) AS u(id, at, d)
                        GROUP BY id
                     )
                     UPDATE entries e
                     SET last_access_ms = greatest(e.last_access_ms, e.created_ms, v.at),
                         access_count = e.access_count + v.n
                     FROM v WHERE e.id = v.id
                     RETURNING e.task, v.n, v.saved",
                    &[&ids, &ats, &durations],
                )?;
                for r in &rows {
                    let (task, n, saved): (String, i64, i64) =
                        (t.col(r, 0)?, t.col(r, 1)?, t.col(r, 2)?);
                    let e = per_task.entry(task).or_default();
                    e.0 += n;
                    e.2 += saved;
                    matched += n;
                }
            }
            let saved: i64 = durations.iter().sum();
            // Hits of runs removed since: counted, under no task (as SQLite counts them).
            let unmatched = hits.len() as i64 - matched;
            if unmatched > 0 {
                let matched_saved: i64 = per_task.values().map(|v| v.2).sum();
                let e = per_task.entry(String::new()).or_default();
                e.0 += unmatched;
                e.2 += saved - matched_saved;
            }
            t.bump("hits", hits.len() as i64)?;
            t.bump("misses", misses)?;
            t.bump("time_saved_ms", saved)?;
            t.bump("remote_hits", remote)?;
            for (task, (h, m, s)) in &per_task {
                t.exec(
                    "INSERT INTO task_counters(task, hits, misses, time_saved_ms)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (task) DO UPDATE SET hits = task_counters.hits + excluded.hits,
                        misses = task_counters.misses + excluded.misses,
                        time_saved_ms = task_counters.time_saved_ms + excluded.time_saved_ms",
                    &[task, h, m, s],
                )?;
            }
            Ok(())
        })
    }

    fn remove_keys(&self, keys: &[String], count_as: Option<&str>) -> Result<Removed> {
        self.write(|t| {
            t.lock_keys(keys.iter().map(String::as_str))?;
            let mut r = Removed::default();
            for k in keys {
                if let (Some(e), _) = t.remove_key(k, &mut r.unreferenced)? {
                    r.entries.push(e);
                }
            }
            if let Some(c) = count_as {
                t.bump(c, r.entries.len() as i64)?;
            }
            Ok(r)
        })
    }

    fn remove_run(&self, id: &str) -> Result<Removed> {
        self.write(|t| {
            let mut r = Removed::default();
            let Some(row) = t.opt("SELECT key FROM entries WHERE id = $1", &[&id])? else {
                return Ok(r);
            };
            let key: String = t.col(&row, 0)?;
            t.lock_keys([key.as_str()])?;
            // Read again holding the key's lock.
            let Some(row) = t.opt("SELECT live FROM entries WHERE id = $1", &[&id])? else {
                return Ok(r);
            };
            if t.col::<bool>(&row, 0)? {
                t.changed.set(true);
                r.entries.extend(sound(t.live_entry(&key)?));
                t.unref_key(&key, &mut r.unreferenced)?;
            }
            t.exec("DELETE FROM entries WHERE id = $1", &[&id])?;
            // The runs of the key that followed it no longer name it as their parent.
            for child in sound(
                t.entries(&format!("SELECT {ENTRY_COLS} FROM entries WHERE key = $1"), &[&key])?,
            ) {
                if child.parent.as_deref() != Some(id) {
                    continue;
                }
                let mut child = child;
                child.parent = None;
                let doc = serde_json::to_string(&child).expect("entries serialize");
                t.exec("UPDATE entries SET doc = $2 WHERE id = $1", &[&child.id, &doc])?;
            }
            Ok(r)
        })
    }

    fn task_stats(&self) -> Result<Vec<crate::entry::TaskStats>> {
        self.with(|t| {
            t.query(
                "SELECT task, sum(entries)::BIGINT, sum(bytes)::BIGINT, sum(hits)::BIGINT,
                        sum(misses)::BIGINT, sum(saved)::BIGINT FROM (
                    SELECT task, count(*) AS entries, coalesce(sum(size), 0) AS bytes,
                           0 AS hits, 0 AS misses, 0 AS saved
                      FROM entries WHERE live GROUP BY task
                    UNION ALL
                    SELECT task, 0, 0, hits, misses, time_saved_ms FROM task_counters
                 ) s GROUP BY task ORDER BY task",
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(crate::entry::TaskStats {
                    task: t.col(r, 0)?,
                    entries: t.col(r, 1)?,
                    bytes: t.col(r, 2)?,
                    hits: t.col(r, 3)?,
                    misses: t.col(r, 4)?,
                    time_saved_ms: t.col(r, 5)?,
                })
            })
            .collect()
        })
    }

    fn reset_counters(&self) -> Result<()> {
        self.write(|t| {
            t.batch(
                "UPDATE counters SET value = 0 WHERE name <> 'stored_bytes';
                 DELETE FROM task_counters;",
            )
        })
    }

    fn census(&self) -> Result<crate::entry::Census> {
        self.with(|t| {
            let mut out = crate::entry::Census::default();
            for r in t.query("SELECT name, value FROM census", &[])? {
                out.set(&t.col::<String>(&r, 0)?, t.col(&r, 1)?);
            }
            Ok(out)
        })
    }

    fn forget_corrupt_blob(&self, digest: &Digest) -> Result<Removed> {
        self.write(|t| {
            let mut r = Removed::default();
            t.retire_users(digest, &mut r)?;
            // The corrupt blob itself is quarantined by the caller, not unlinked.
            r.unreferenced.retain(|x| x != digest);
            // The blob row goes even if no entry referenced it any more.
            let mut gone = Vec::new();
            t.drop_blob_row(digest, &mut gone)?;
            t.bump("corrupt", 1)?;
            Ok(r)
        })
    }

    fn list(&self, f: &Filter) -> Result<Vec<Entry>> {
        let mut cond = String::new();
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        if !f.all && f.status.is_none() {
            cond.push_str(" AND live");
        }
        if let Some(s) = f.status {
            args.push(Box::new(s.name().to_owned()));
            cond.push_str(&format!(" AND status = ${}", args.len()));
            cond.push_str(if s == Status::Live { " AND live" } else { " AND NOT live" });
        }
        if let Some(task) = &f.task {
            args.push(Box::new(task.clone()));
            cond.push_str(&format!(" AND task = ${}", args.len()));
        }
        if let Some(since) = f.since_ms {
            args.push(Box::new(since));
            cond.push_str(&format!(" AND created_ms >= ${}", args.len()));
        }
        if let Some((k, v)) = &f.tag {
            args.push(Box::new(k.clone()));
            let kn = args.len();
            match v {
                Some(v) => {
                    args.push(Box::new(v.clone()));
                    cond.push_str(&format!(
                        " AND seq IN (SELECT seq FROM tags WHERE name = ${kn} AND value = ${})",
                        args.len()
                    ));
                }
                None => {
                    cond.push_str(&format!(" AND seq IN (SELECT seq FROM tags WHERE name = ${kn})"))
                }
            }
        }
        let limit = f.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let sql = format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE true{cond} ORDER BY created_ms DESC, seq DESC{limit}"
        );
        let params: Vec<Param<'_>> = args.iter().map(|a| &**a as Param<'_>).collect();
        Ok(sound(self.with(|t| t.entries(&sql, &params))?))
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
        let end = prefix_end(prefix);
        self.with(|t| {
            let ids = t.keys(&t.query(
                "SELECT id FROM entries WHERE id >= $1 AND id < $2 ORDER BY id LIMIT 5",
                &[&prefix, &end],
            )?)?;
            let keys = t.keys(&t.query(
                "SELECT DISTINCT key FROM entries WHERE key >= $1 AND key < $2 ORDER BY key LIMIT 5",
                &[&prefix, &end],
            )?)?;
            Ok((ids, keys))
        })
    }

    fn run(&self, id: &str) -> Result<Option<Entry>> {
        let row = self.with(|t| {
            Ok(t.entries(&format!("SELECT {ENTRY_COLS} FROM entries WHERE id = $1"), &[&id])?.pop())
        })?;
        decoded(row)
    }

    fn history(&self, key: &str) -> Result<Vec<Entry>> {
        Ok(sound(self.with(|t| {
            t.entries(
                &format!(
                    "SELECT {ENTRY_COLS} FROM entries WHERE key = $1 ORDER BY created_ms, seq"
                ),
                &[&key],
            )
        })?))
    }

    fn evict(&self, now_ms: i64, target_bytes: Option<u64>, limit: usize) -> Result<Removed> {
        self.write(|t| {
            // One evictor at a time, on every replica.
            t.one("SELECT pg_advisory_xact_lock($1)", &[&self.lock_id("evict", "")])?;
            let mut r = Removed::default();
            let row = t.one("SELECT value FROM counters WHERE name = 'stored_bytes'", &[])?;
            let mut stored: i64 = t.col(&row, 0)?;
            let over = |stored: i64| target_bytes.is_none_or(|b| stored > b as i64);
            let (mut expired, mut evicted) = (0usize, 0usize);
            // A key a writer holds is being saved (used right now): passed over.
            let mut passed: std::collections::HashSet<String> = Default::default();
            let expired_keys = t.keys(&t.query(
                "SELECT key FROM entries WHERE live AND expires_ms IS NOT NULL
                 AND expires_ms <= $1 ORDER BY expires_ms LIMIT $2",
                &[&now_ms, &(limit as i64)],
            )?)?;
            for k in expired_keys {
                if !over(stored) || expired >= limit {
                    break;
                }
                if !t.try_lock_key(&k)? {
                    continue;
                }
                let (e, freed) = t.remove_key(&k, &mut r.unreferenced)?;
                stored -= freed as i64;
                expired += 1;
                r.entries.extend(e);
            }
            if target_bytes.is_some() {
                while over(stored) && expired + evicted < limit {
                    let batch = t.keys(&t.query(
                        "SELECT key FROM entries WHERE live
                         ORDER BY greatest(last_access_ms, created_ms), created_ms LIMIT $1",
                        &[&(64 + passed.len() as i64)],
                    )?)?;
                    let batch: Vec<String> =
                        batch.into_iter().filter(|k| !passed.contains(k)).collect();
                    if batch.is_empty() {
                        break;
                    }
                    for k in batch {
                        if !over(stored) || expired + evicted >= limit {
                            break;
                        }
                        if !t.try_lock_key(&k)? {
                            passed.insert(k);
                            continue;
                        }
                        let (e, freed) = t.remove_key(&k, &mut r.unreferenced)?;
                        stored -= freed as i64;
                        evicted += 1;
                        r.entries.extend(e);
                    }
                }
            }
            t.bump("expired", expired as i64)?;
            t.bump("evictions", evicted as i64)?;
            Ok(r)
        })
    }

    fn counters(&self) -> Result<Counters> {
        self.with(|t| {
            let mut out = Counters::default();
            for r in t.query("SELECT name, value FROM counters", &[])? {
                let v: i64 = t.col(&r, 1)?;
                out.set(&t.col::<String>(&r, 0)?, v)
            }
            Ok(out)
        })
    }

    fn live_entries(&self) -> Result<i64> {
        self.with(|t| {
            let r = t.one("SELECT value FROM census WHERE name = 'live'", &[])?;
            t.col(&r, 0)
        })
    }

    fn blobs_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>> {
        self.with(|t| {
            Ok(t.query(
                "SELECT digest, size, stored_size, codec, data FROM blobs WHERE digest > $1
                 ORDER BY digest LIMIT $2",
                &[&after.unwrap_or(""), &(limit as i64)],
            )?
            .iter()
            .filter_map(|r| blob_from_row(r).ok())
            .collect())
        })
    }

    fn live_keys_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        self.with(|t| {
            t.query(
                "SELECT seq, key FROM entries WHERE seq > $1 AND live ORDER BY seq LIMIT $2",
                &[&after, &(limit as i64)],
            )?
            .iter()
            .map(|r| Ok((t.col(r, 0)?, t.col(r, 1)?)))
            .collect()
        })
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        self.with(|t| {
            let r = t.one(
                "SELECT EXISTS(SELECT 1 FROM blobs WHERE digest = $1)",
                &[&digest.to_string()],
            )?;
            t.col(&r, 0)
        })
    }

    fn stale_keys(&self, stale: &Stale, limit: usize) -> Result<Vec<String>> {
        self.with(|t| match stale {
            Stale::AccessedBefore(ms) => t.keys(&t.query(
                "SELECT key FROM entries WHERE live AND greatest(last_access_ms, created_ms) <= $1
                 ORDER BY greatest(last_access_ms, created_ms), created_ms LIMIT $2",
                &[ms, &(limit as i64)],
            )?),
            Stale::CreatedBefore { before_ms, task, except } => {
                let mut sql = "SELECT key FROM entries WHERE live AND created_ms <= $1
                    AND NOT ttl_explicit"
                    .to_owned();
                let mut args: Vec<Param<'_>> = vec![before_ms];
                if let Some(task) = task {
                    args.push(task);
                    sql.push_str(&format!(" AND task = ${}", args.len()));
                }
                for x in except {
                    args.push(x);
                    sql.push_str(&format!(" AND task <> ${}", args.len()));
                }
                sql.push_str(&format!(" ORDER BY created_ms LIMIT {limit}"));
                t.keys(&t.query(&sql, &args)?)
            }
        })
    }

    fn damaged(&self) -> Result<Damaged> {
        self.with(|t| {
            let mut out = Damaged::default();
            // A page of rows at a time, in the order they were written.
            let mut after = 0i64;
            loop {
                let rows = t.query(
                    &format!(
                        "SELECT {ENTRY_COLS} FROM entries WHERE seq > $1 ORDER BY seq LIMIT 1024"
                    ),
                    &[&after],
                )?;
                let Some(last) = rows.last() else { break };
                after = t.col(last, 0)?;
                for row in &rows {
                    if let Err((id, why)) = entry_from_row(row) {
                        let key = row.try_get::<_, String>(2).unwrap_or_default();
                        let live = row.try_get::<_, bool>(3).unwrap_or(false);
                        out.entries.push((id, key, live, why));
                    }
                }
            }
            let mut after = String::new();
            loop {
                let rows = t.query(
                    "SELECT digest, size, stored_size, codec, data FROM blobs WHERE digest > $1
                     ORDER BY digest LIMIT 1024",
                    &[&after],
                )?;
                let Some(last) = rows.last() else { break };
                after = t.col(last, 0)?;
                out.blobs.extend(rows.iter().filter_map(|r| blob_from_row(r).err()));
            }
            Ok(out)
        })
    }

    fn drop_damaged_run(&self, id: &str) -> Result<Removed> {
        self.write(|t| {
            let mut r = Removed::default();
            let Some(row) = t.opt("SELECT key FROM entries WHERE id = $1", &[&id])? else {
                return Ok(r);
            };
            let key: String = t.col(&row, 0)?;
            t.lock_keys([key.as_str()])?;
            let row = t.opt("DELETE FROM entries WHERE id = $1 RETURNING live", &[&id])?;
            if let Some(row) = row
                && t.col::<bool>(&row, 0)?
            {
                t.changed.set(true);
                t.unref_key(&key, &mut r.unreferenced)?;
                t.bump("corrupt", 1)?;
            }
            Ok(r)
        })
    }

    fn drop_damaged_blob(&self, digest: &str) -> Result<Removed> {
        self.write(|t| {
            let mut r = Removed::default();
            // A digest that does not even parse names no entry's blob.
            if let Ok(d) = digest.parse::<Digest>() {
                let retired = t.retire_users(&d, &mut r)?;
                t.bump("corrupt", retired)?;
            }
            if let Some(row) =
                t.opt("DELETE FROM blobs WHERE digest = $1 RETURNING stored_size", &[&digest])?
            {
                let stored: i64 = t.col(&row, 0).unwrap_or(0);
                t.bump("stored_bytes", -stored.max(0))?;
            }
            Ok(r)
        })
    }

    fn clear(&self) -> Result<u64> {
        self.write(|t| {
            let row = t.one("SELECT value FROM census WHERE name = 'live'", &[])?;
            let live: i64 = t.col(&row, 0)?;
            t.changed.set(true);
            // TRUNCATE waits for every other transaction on the tables and fires no row
            // triggers: the census is zeroed with it.
            t.batch(
                "TRUNCATE tags, entries, blobs, failures;
                 UPDATE census SET value = 0;
                 UPDATE counters SET value = 0 WHERE name = 'stored_bytes';",
            )?;
            Ok(live.max(0) as u64)
        })
    }

    fn record_failure(&self, key: &str, message: &str, at_ms: i64) -> Result<()> {
        self.write(|t| {
            t.exec(
                "INSERT INTO failures(key, message, at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET message = excluded.message, at_ms = excluded.at_ms",
                &[&key, &message, &at_ms],
            )?;
            Ok(())
        })
    }

    fn record_failed_run(&self, entry: &Entry, message: &str) -> Result<Entry> {
        self.write(|t| {
            t.lock_keys([entry.key.as_str()])?;
            let latest = t.opt(
                "SELECT id FROM entries WHERE key = $1 ORDER BY created_ms DESC, seq DESC LIMIT 1",
                &[&entry.key],
            )?;
            let mut entry = entry.clone();
            entry.parent = latest.map(|r| t.col(&r, 0)).transpose()?;
            entry.status = Status::Failed;
            // A failed run is never served: it has no expiry and no use.
            let row = Entry { last_access_ms: 0, access_count: 0, expires_ms: None, ..entry.clone() };
            t.insert_run(&row, false)?;
            t.exec(
                "INSERT INTO failures(key, message, at_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET message = excluded.message, at_ms = excluded.at_ms",
                &[&entry.key, &message, &entry.created_ms],
            )?;
            Ok(entry)
        })
    }

    fn failure(&self, key: &str) -> Result<Option<(String, i64)>> {
        self.with(|t| {
            t.opt("SELECT message, at_ms FROM failures WHERE key = $1", &[&key])?
                .map(|r| Ok((t.col(&r, 0)?, t.col(&r, 1)?)))
                .transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use taskvault_testkit::postgres::{Schema, server};

    /// Two stores on one schema: two processes (or machines) sharing a vault.
    fn pair(label: &str) -> Option<(Schema, Arc<PgMeta>, Arc<PgMeta>)> {
        let schema = Schema::new(&server()?, label);
        let a = Arc::new(PgMeta::open(&schema.url()).unwrap());
        let b = Arc::new(PgMeta::open(&schema.url()).unwrap());
        Some((schema, a, b))
    }

    fn entry(key: &str, id: &str) -> Entry {
        serde_json::from_value(serde_json::json!({
            "id": id, "key": key, "namespace": "default", "task": "t", "status": "live",
            "output_kind": "bytes", "outputs": [], "size": 0, "created_ms": 1,
            "expires_ms": null, "duration_ms": null, "parent": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_blob_lock_is_held_across_stores_and_inside_one() {
        let Some((_schema, a, b)) = pair("blob_lock") else { return };
        let held = a.blob_lock(true).unwrap().expect("a database server has its own lock");
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (b, released) = (Arc::clone(&b), Arc::clone(&released));
            std::thread::spawn(move || {
                let _shared = b.blob_lock(false).unwrap();
                assert!(released.load(Ordering::SeqCst), "taken while another store held it");
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        released.store(true, Ordering::SeqCst);
        drop(held);
        waiter.join().unwrap();

        // In one store: shared holders together; an exclusive one waits for them.
        let s1 = a.blob_lock(false).unwrap();
        let s2 = a.blob_lock(false).unwrap();
        let released = Arc::new(AtomicBool::new(false));
        let writer = {
            let (a, released) = (Arc::clone(&a), Arc::clone(&released));
            std::thread::spawn(move || {
                let _x = a.blob_lock(true).unwrap();
                assert!(released.load(Ordering::SeqCst), "exclusive while shared holders held it");
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(s1);
        released.store(true, Ordering::SeqCst);
        drop(s2);
        writer.join().unwrap();
        // And the other store's exclusive lock is free again.
        drop(b.blob_lock(true).unwrap());
    }

    #[test]
    fn stores_saving_one_key_at_once_leave_one_live_run() {
        let Some((_schema, a, b)) = pair("one_live_run") else { return };
        let key = "k".repeat(64);
        let savers: Vec<_> = [a, b]
            .into_iter()
            .enumerate()
            .map(|(n, store)| {
                let key = key.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let e = entry(&key, &format!("{n}-{i:02}"));
                        store.commit_save(&e, &[], &mut |_| Ok(())).unwrap();
                    }
                    store
                })
            })
            .collect();
        let stores: Vec<_> = savers.into_iter().map(|t| t.join().unwrap()).collect();
        let runs = stores[0].history(&key).unwrap();
        assert_eq!(runs.len(), 40);
        assert_eq!(runs.iter().filter(|r| r.status == Status::Live).count(), 1);
        assert_eq!(stores[1].live_entries().unwrap(), 1, "the census agrees");
        assert_eq!(stores[1].counters().unwrap().saves, 40);
        // Each run but the first names the one it replaced.
        let parents = runs.iter().filter(|r| r.parent.is_some()).count();
        assert_eq!(parents, 39, "{runs:?}");
    }

    #[test]
    fn a_newer_schema_is_refused_and_messages_hide_the_password() {
        let Some(server) = server() else { return };
        let schema = Schema::new(&server, "newer");
        let store = PgMeta::open(&schema.url()).unwrap();
        assert_eq!(store.live_entries().unwrap(), 0);
        store.write(|t| t.exec("INSERT INTO taskvault_schema(version) VALUES (99)", &[])).unwrap();
        let again = PgMeta::open(&schema.url()).unwrap();
        let err = again.live_entries().unwrap_err().to_string();
        assert!(err.contains("schema version 99 is newer"), "{err}");

        assert_eq!(
            shown("postgres://user:s3cret@db:5432/x?password=s3cret"),
            "postgres://user@db:5432/x"
        );
        let err = PgMeta::open("postgres://u:s3cret@x/y?schema=Bad-Name").unwrap_err().to_string();
        assert!(err.contains("schema") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn a_password_given_apart_serves_a_url_without_one() {
        let given = |url: &str| {
            let store = PgMeta::open_with_password(url, Some("from-env")).unwrap();
            store.config.get_password().map(<[u8]>::to_vec)
        };
        assert_eq!(given("postgres://u@db/x"), Some(b"from-env".to_vec()));
        assert_eq!(given("postgres://u:in-url@db/x"), Some(b"in-url".to_vec()), "the URL wins");
        let s = crate::config::Password("s3cret".into());
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn an_unreachable_server_is_an_error_naming_it() {
        // A port nothing listens on: connecting fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store = PgMeta::open(&format!(
            "postgres://taskvault:pw@127.0.0.1:{port}/test?connect_timeout=2"
        ))
        .unwrap();
        let err = store.lookup("k").unwrap_err().to_string();
        assert!(err.contains(&format!("postgres://taskvault@127.0.0.1:{port}/test")), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }

    #[test]
    fn a_store_is_used_from_inside_a_runtime() {
        let Some(server) = server() else { return };
        let schema = Schema::new(&server, "in_runtime");
        let store = Arc::new(PgMeta::open(&schema.url()).unwrap());
        // A server's worker thread, and a single-threaded runtime's.
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let s = Arc::clone(&store);
        assert_eq!(
            rt.block_on(async move { tokio::spawn(async move { s.live_entries() }).await })
                .unwrap()
                .unwrap(),
            0
        );
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { store.live_entries() }).unwrap(), 0);
    }

    #[test]
    fn a_long_lived_vault_writes_its_hits_within_a_second_and_others_see_them() {
        let Some(server) = server() else { return };
        let schema = Schema::new(&server, "folder");
        let dir = tempfile::tempdir().unwrap();
        let settings = |name: &str| {
            let mut s = crate::Settings::for_dir(dir.path().join(name));
            s.metadata_url = Some(schema.url());
            s
        };
        let replica = crate::Vault::open(settings("replica")).unwrap().long_lived().unwrap();
        let key = replica.key("t", &[crate::Input::Bytes(b"in".to_vec())]).unwrap();
        replica.save(&key, crate::Output::Bytes(b"out"), &Default::default()).unwrap();
        for _ in 0..3 {
            assert!(replica.get_bytes(&key).unwrap().is_some());
        }
        // Another machine's view: the hits arrive with the next fold, not with each request.
        let other = crate::Vault::open(settings("other")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while other.stats().unwrap().counters.hits < 3 {
            assert!(std::time::Instant::now() < deadline, "the hits never reached the store");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // And what is still in the journal when the replica stops is written as it stops.
        assert!(replica.get_bytes(&key).unwrap().is_some());
        drop(replica);
        assert_eq!(other.stats().unwrap().counters.hits, 4);
    }

    #[test]
    fn a_version_1_schema_is_migrated_and_keeps_its_runs() {
        let Some(server) = server() else { return };
        let schema = Schema::new(&server, "from_v1");
        let store = PgMeta::open(&schema.url()).unwrap();
        let key = "a".repeat(64);
        store.commit_save(&entry(&key, "r1"), &[], &mut |_| Ok(())).unwrap();
        // Back to what version 1 made.
        store
            .write(|t| {
                t.batch(
                    "DROP TABLE proofs; ALTER TABLE entries DROP COLUMN digests;
                     DROP TABLE leases; DROP TABLE audit; UPDATE taskvault_schema SET version = 1",
                )
            })
            .unwrap();
        drop(store);
        let store = PgMeta::open(&schema.url()).unwrap();
        let d: Digest = format!("blake3:{}", "0".repeat(64)).parse().unwrap();
        assert_eq!(store.has_proof("ns", &d).unwrap(), Some(false));
        assert!(store.add_proof("ns", &d).unwrap());
        assert_eq!(store.has_proof("ns", &d).unwrap(), Some(true));
        assert_eq!(store.has_proof("other", &d).unwrap(), Some(false), "proofs are per namespace");
        assert_eq!(store.lookup(&key).unwrap().unwrap().id, "r1");
        let ttl = std::time::Duration::from_secs(5);
        assert_eq!(store.lease_ask("ns", &key, "l", "me", ttl).unwrap(), Some(LeaseAsked::Granted));
        let row = crate::audit::AuditRow {
            at_ms: 1,
            event: crate::audit::Event::Save,
            op: "save".into(),
            task: "t".into(),
            hash: key.clone(),
            size: Some(3),
            detail: None,
            origin: "h:1".into(),
        };
        store.audit_append(std::slice::from_ref(&row), 10).unwrap();
        let q = AuditQuery { limit: 5, ..Default::default() };
        assert_eq!(store.audit_rows(&q).unwrap(), Some(vec![row]));
    }

    #[test]
    fn a_batch_of_hits_counts_per_run_and_per_task() {
        let Some(server) = server() else { return };
        let schema = Schema::new(&server, "hits");
        let store = PgMeta::open(&schema.url()).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        store.commit_save(&entry(&a, "ra"), &[], &mut |_| Ok(())).unwrap();
        let mut other = entry(&b, "rb");
        other.task = "u".into();
        store.commit_save(&other, &[], &mut |_| Ok(())).unwrap();
        let hit = |id: &str, at_ms, d| Access::Hit { id: id.into(), at_ms, duration_ms: Some(d) };
        store
            .apply_accesses(&[
                hit("ra", 50, 10),
                hit("ra", 70, 5),
                hit("rb", 60, 100),
                hit("gone", 80, 1),
                Access::Miss { task: "u".into() },
                Access::RemoteHit,
            ])
            .unwrap();
        let c = store.counters().unwrap();
        assert_eq!((c.hits, c.misses, c.time_saved_ms, c.remote_hits), (4, 1, 116, 1));
        let ra = store.run("ra").unwrap().unwrap();
        assert_eq!((ra.access_count, ra.last_access_ms), (2, 70));
        let tasks: Vec<_> = store
            .task_stats()
            .unwrap()
            .into_iter()
            .map(|t| (t.task, t.hits, t.misses, t.time_saved_ms))
            .collect();
        assert_eq!(tasks, [("".into(), 1, 0, 1), ("t".into(), 2, 0, 15), ("u".into(), 1, 1, 100)]);
    }

    #[test]
    fn a_lease_is_one_replicas_and_its_end_reaches_the_others() {
        use std::time::Duration;
        let Some((_schema, a, b)) = pair("leases") else { return };
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        assert!(
            b.watch_leases(Arc::new(move |e| {
                let _ = tx.lock().unwrap().send(e);
            }))
            .unwrap()
        );
        // Listening starts with a `Missed` (what came before it was not heard).
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), LeaseEvent::Missed);
        let ttl = Duration::from_secs(30);
        assert_eq!(a.lease_ask("ns", "k", "l1", "alice", ttl).unwrap(), Some(LeaseAsked::Granted));
        let Some(LeaseAsked::Held { holder, remaining }) =
            b.lease_ask("ns", "k", "l2", "bob", ttl).unwrap()
        else {
            panic!("a second replica's asker waits")
        };
        assert_eq!(holder, "alice");
        assert!(remaining > Duration::from_secs(20) && remaining <= ttl, "{remaining:?}");
        // Another namespace's claim of the same key is another claim.
        assert_eq!(b.lease_ask("other", "k", "l3", "bob", ttl).unwrap(), Some(LeaseAsked::Granted));
        // Renewed through either replica by its lease; a stranger's lease renews nothing.
        assert_eq!(b.lease_renew("ns", "k", "l1", ttl).unwrap(), Some(true));
        assert_eq!(b.lease_renew("ns", "k", "l2", ttl).unwrap(), Some(false));
        assert_eq!(a.lease_end("ns", "k", Some("l2"), &LeaseEnded::Vacant).unwrap(), Some(false));
        let failure = LeaseEnded::Failed("boom".into());
        assert_eq!(a.lease_end("ns", "k", Some("l1"), &failure).unwrap(), Some(true));
        let told = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(told, LeaseEvent::Ended { ns: "ns".into(), key: "k".into(), how: failure });
        // Ended: the next asker takes it; a commit ends it whoever holds it.
        assert_eq!(b.lease_ask("ns", "k", "l4", "bob", ttl).unwrap(), Some(LeaseAsked::Granted));
        assert_eq!(a.lease_end("ns", "k", None, &LeaseEnded::Ready).unwrap(), Some(true));
        let told = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(
            told,
            LeaseEvent::Ended { ns: "ns".into(), key: "k".into(), how: LeaseEnded::Ready }
        );
        // Nothing held: nothing ends, nobody is told.
        assert_eq!(a.lease_end("ns", "k", None, &LeaseEnded::Ready).unwrap(), Some(false));
        // A lease that ran out is taken by the next asker.
        let short = Duration::from_millis(200);
        assert_eq!(
            a.lease_ask("ns", "j", "l5", "alice", short).unwrap(),
            Some(LeaseAsked::Granted)
        );
        assert!(matches!(
            b.lease_ask("ns", "j", "l6", "bob", ttl).unwrap(),
            Some(LeaseAsked::Held { .. })
        ));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(b.lease_ask("ns", "j", "l6", "bob", ttl).unwrap(), Some(LeaseAsked::Granted));
        assert_eq!(
            a.lease_renew("ns", "j", "l5", ttl).unwrap(),
            Some(false),
            "the old lease is gone"
        );
        assert!(rx.try_recv().is_err(), "told of an end that did not happen");
    }
}
