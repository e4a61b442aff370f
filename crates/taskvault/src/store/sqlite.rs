//! Metadata in SQLite (WAL): entries, blob rows, blob references of live entries, counters and
//! claim failures. Schema versions live in `PRAGMA user_version`; see `docs/format.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::digest::Digest;
use crate::entry::{BlobInfo, Codec, Counters, Entry, Filter, Status};
use crate::error::{Error, Result};
use crate::store::{Access, Committed, Damaged, MetaStore, Removed, StagedBlob};

/// A connection, closed holding a fork token (see `crate::fork`).
pub(crate) type Db = crate::fork::Guarded<Connection>;

/// The schema version this build writes. Older databases are migrated on open.
pub const SCHEMA_VERSION: i64 = 7;

const SCHEMA_V1: &str = "
CREATE TABLE entries(
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    live INTEGER NOT NULL,
    status TEXT NOT NULL,
    task TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_access_ms INTEGER NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX entries_live_key ON entries(key) WHERE live = 1;
CREATE INDEX entries_key ON entries(key);
CREATE INDEX entries_lru ON entries(last_access_ms) WHERE live = 1;
CREATE INDEX entries_expiry ON entries(expires_ms) WHERE live = 1 AND expires_ms IS NOT NULL;
CREATE TABLE blobs(
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    codec TEXT NOT NULL,
    data BLOB
);
CREATE TABLE refs(
    digest TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY(digest, key)
) WITHOUT ROWID;
CREATE INDEX refs_key ON refs(key);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters(name, value) VALUES
    ('hits', 0), ('misses', 0), ('saves', 0), ('evictions', 0), ('corrupt', 0),
    ('expired', 0), ('time_saved_ms', 0), ('stored_bytes', 0);
CREATE TABLE failures(key TEXT PRIMARY KEY, message TEXT NOT NULL, at_ms INTEGER NOT NULL);
";

/// The version 1 schema, for migration tests.
#[cfg(test)]
pub(crate) const SCHEMA_V1_FOR_TESTS: &str = SCHEMA_V1;

/// Version 2: hits, misses and time saved per task, kept with the global counters.
const SCHEMA_V2: &str = "
CREATE TABLE task_counters(
    task TEXT PRIMARY KEY,
    hits INTEGER NOT NULL DEFAULT 0,
    misses INTEGER NOT NULL DEFAULT 0,
    time_saved_ms INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
";

/// Version 3: an index for every listing (newest first, by task, by status) and a census of
/// runs and blobs kept by triggers in the transaction of every write, so `stats` reads a few
/// rows whatever the size of the vault.
const SCHEMA_V3: &str = "
CREATE TABLE census(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO census(name, value)
    SELECT 'live', count(*) FROM entries WHERE live = 1
    UNION ALL SELECT 'runs', count(*) FROM entries
    UNION ALL SELECT 'failed_runs', count(*) FROM entries WHERE status = 'failed'
    UNION ALL SELECT 'blobs', count(*) FROM blobs
    UNION ALL SELECT 'inline_blobs', count(*) FROM blobs WHERE data IS NOT NULL
    UNION ALL SELECT 'inline_bytes', coalesce(sum(stored_size), 0) FROM blobs WHERE data IS NOT NULL;
";

/// The census triggers of `blobs` (version 3; made again by version 6, which rebuilds it).
const BLOB_TRIGGERS: &str = "
CREATE TRIGGER census_blob_insert AFTER INSERT ON blobs BEGIN
    UPDATE census SET value = value + 1 WHERE name = 'blobs';
    UPDATE census SET value = value + 1 WHERE name = 'inline_blobs' AND NEW.data IS NOT NULL;
    UPDATE census SET value = value + NEW.stored_size
        WHERE name = 'inline_bytes' AND NEW.data IS NOT NULL;
END;
CREATE TRIGGER census_blob_delete AFTER DELETE ON blobs BEGIN
    UPDATE census SET value = value - 1 WHERE name = 'blobs';
    UPDATE census SET value = value - 1 WHERE name = 'inline_blobs' AND OLD.data IS NOT NULL;
    UPDATE census SET value = value - OLD.stored_size
        WHERE name = 'inline_bytes' AND OLD.data IS NOT NULL;
END;
CREATE TRIGGER census_blob_update AFTER UPDATE OF data, stored_size ON blobs BEGIN
    UPDATE census SET value = value + (NEW.data IS NOT NULL) - (OLD.data IS NOT NULL)
        WHERE name = 'inline_blobs';
    UPDATE census SET value = value
        + (CASE WHEN NEW.data IS NOT NULL THEN NEW.stored_size ELSE 0 END)
        - (CASE WHEN OLD.data IS NOT NULL THEN OLD.stored_size ELSE 0 END)
        WHERE name = 'inline_bytes';
END;
";

/// The indexes and triggers of `entries` (made again by each version that rebuilds the table;
/// see `SCHEMA_V6`; version 7 replaces three of them). Runs and keys are found through a prefix of
/// their id or key (the rest is compared in the row): an index of the whole 32 bytes would take
/// several times the room.
/// Runs that are live and runs that are not are listed through indexes of their own.
const ENTRY_INDEXES: &str = "
CREATE INDEX entries_id ON entries(substr(id, 1, 8));
CREATE INDEX entries_key ON entries(substr(key, 1, 8));
CREATE INDEX entries_lru ON entries(last_access_ms) WHERE live = 1;
CREATE INDEX entries_expiry ON entries(expires_ms) WHERE live = 1 AND expires_ms IS NOT NULL;
CREATE INDEX entries_live_created ON entries(created_ms) WHERE live = 1;
CREATE INDEX entries_dead_created ON entries(created_ms) WHERE live = 0;
CREATE INDEX entries_task_created ON entries(task, created_ms);
CREATE INDEX entries_status_created ON entries(status, created_ms) WHERE live = 0;
CREATE TRIGGER census_entry_insert AFTER INSERT ON entries BEGIN
    UPDATE census SET value = value + 1 WHERE name = 'runs';
    UPDATE census SET value = value + 1 WHERE name = 'live' AND NEW.live = 1;
    UPDATE census SET value = value + 1 WHERE name = 'failed_runs' AND NEW.status = 'failed';
END;
CREATE TRIGGER census_entry_delete AFTER DELETE ON entries BEGIN
    UPDATE census SET value = value - 1 WHERE name = 'runs';
    UPDATE census SET value = value - 1 WHERE name = 'live' AND OLD.live = 1;
    UPDATE census SET value = value - 1 WHERE name = 'failed_runs' AND OLD.status = 'failed';
END;
CREATE TRIGGER census_entry_update AFTER UPDATE OF live, status ON entries BEGIN
    UPDATE census SET value = value + (NEW.live = 1) - (OLD.live = 1) WHERE name = 'live';
    UPDATE census SET value = value + (NEW.status = 'failed') - (OLD.status = 'failed')
        WHERE name = 'failed_runs';
END;
CREATE TRIGGER tags_of_removed_runs AFTER DELETE ON entries BEGIN
    DELETE FROM tags WHERE run = OLD.rowid;
END;
";

/// Version 4: provenance that repeats across runs (a function's source and code identity, a
/// command line and its input manifest) is stored once, content-addressed, and referenced by the
/// runs that share it. Rows written before keep it inline and are read as they were.
const SCHEMA_V4: &str = "
CREATE TABLE shared_details(digest TEXT PRIMARY KEY, body TEXT NOT NULL) WITHOUT ROWID;
ALTER TABLE entries ADD COLUMN shared TEXT;
";

/// Version 5: each fact stored once. A run's document no longer repeats its columns (id, key,
/// task, status, times); provenance shared by many runs (code, command, namespace, host, the
/// key ingredients that are the same for every call) lives in `shared_bodies`, referenced by
/// its integer id; tags live in `tags`, indexed by name and value (and by run); a blob's row
/// counts the live entries using it instead of a `refs` row per (blob, key) pair; one index on
/// `key` serves both the live run and history. Bodies written
/// under version 4 are kept as the details they were (`digest` is then `v4:` and the digest of
/// those details).
const SCHEMA_V5: &str = "
CREATE TABLE shared_bodies(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
INSERT INTO shared_bodies(digest, body)
    SELECT 'v4:' || digest, json_object('details', json(body)) FROM shared_details
    WHERE json_valid(body);
CREATE TABLE entries_v5(
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    live INTEGER NOT NULL,
    status TEXT NOT NULL,
    task TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_access_ms INTEGER NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER,
    shared INTEGER,
    doc TEXT NOT NULL
);
INSERT INTO entries_v5(rowid, id, key, live, status, task, created_ms, last_access_ms,
        access_count, expires_ms, shared, doc)
    SELECT e.rowid, e.id, e.key, e.live, e.status, e.task, e.created_ms, e.last_access_ms,
        e.access_count, e.expires_ms,
        (SELECT s.id FROM shared_bodies s WHERE s.digest = 'v4:' || e.shared),
        CASE WHEN json_valid(e.doc) AND json_extract(e.doc, '$.id') IS e.id
                AND json_extract(e.doc, '$.key') IS e.key
            THEN json_remove(e.doc, '$.id', '$.key', '$.task', '$.status', '$.created_ms',
                '$.expires_ms', '$.last_access_ms', '$.access_count')
            ELSE e.doc END
    FROM entries e;
DROP TABLE entries;
ALTER TABLE entries_v5 RENAME TO entries;
CREATE INDEX entries_key ON entries(key);
CREATE INDEX entries_lru ON entries(last_access_ms) WHERE live = 1;
CREATE INDEX entries_expiry ON entries(expires_ms) WHERE live = 1 AND expires_ms IS NOT NULL;
CREATE TABLE tags(
    run INTEGER NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(name, value, run)
) WITHOUT ROWID;
CREATE INDEX tags_run ON tags(run);
INSERT OR IGNORE INTO tags(run, name, value)
    SELECT e.rowid, j.key, j.value FROM entries e, json_each(e.doc, '$.tags') j
    WHERE json_valid(e.doc) AND json_type(e.doc, '$.tags') = 'object';
UPDATE entries SET doc = json_remove(doc, '$.tags')
    WHERE json_valid(doc) AND json_type(doc, '$.tags') IS NOT NULL;
CREATE TRIGGER tags_of_removed_runs AFTER DELETE ON entries BEGIN
    DELETE FROM tags WHERE run = OLD.rowid;
END;
DROP TABLE shared_details;
ALTER TABLE blobs ADD COLUMN refs INTEGER NOT NULL DEFAULT 0;
UPDATE blobs SET refs = (SELECT count(*) FROM refs r WHERE r.digest = blobs.digest);
DROP TABLE refs;
";

/// Runs and keys that are 64 lowercase hex digits, stored as their 32 bytes (anything else as
/// the text it was).
const PACKED_HEX: &str =
    "CASE WHEN typeof(X) = 'text' AND length(X) = 64 AND X NOT GLOB '*[^0-9a-f]*'
    THEN unhex(X) ELSE X END";

/// Version 6: compact rows. Run ids, keys and BLAKE3 blob digests are stored as their 32 bytes
/// (see [`hex_value`], [`digest_value`]) and runs are found through the first 8 bytes of their id
/// or key (`ENTRY_INDEXES`); `blobs` is keyed by its digest alone (no rowid, no second index);
/// a run's size and whether its TTL was explicit are columns (SQL reads them; they leave the
/// document); a shared body keeps the first document written with it as `template`, and later
/// runs of the same shape store their documents packed against it (`packed.rs`). Documents
/// written before stay JSON text and are read as they were.
fn schema_v6() -> String {
    let id = PACKED_HEX.replace('X', "id");
    let key = PACKED_HEX.replace('X', "key");
    format!(
        "
ALTER TABLE shared_bodies ADD COLUMN template TEXT;
CREATE TABLE entries_v6(
    id BLOB NOT NULL,
    key BLOB NOT NULL,
    live INTEGER NOT NULL,
    status TEXT NOT NULL,
    task TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    last_access_ms INTEGER NOT NULL,
    access_count INTEGER NOT NULL DEFAULT 0,
    expires_ms INTEGER,
    size INTEGER NOT NULL DEFAULT 0,
    ttl_explicit INTEGER NOT NULL DEFAULT 0,
    shared INTEGER,
    doc NOT NULL
);
INSERT INTO entries_v6(rowid, id, key, live, status, task, created_ms, last_access_ms,
        access_count, expires_ms, size, ttl_explicit, shared, doc)
    SELECT rowid, {id}, {key}, live, status, task, created_ms, last_access_ms, access_count,
        expires_ms,
        CASE WHEN json_valid(doc) AND json_type(doc, '$.size') = 'integer'
            THEN json_extract(doc, '$.size') ELSE 0 END,
        CASE WHEN json_valid(doc) AND json_extract(doc, '$.ttl_explicit') THEN 1 ELSE 0 END,
        shared,
        CASE WHEN json_valid(doc) THEN json_remove(doc, '$.size', '$.ttl_explicit') ELSE doc END
    FROM entries;
DROP TABLE entries;
ALTER TABLE entries_v6 RENAME TO entries;
CREATE TABLE blobs_v6(
    digest BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    codec TEXT NOT NULL,
    data BLOB,
    refs INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT OR IGNORE INTO blobs_v6(digest, size, stored_size, codec, data, refs)
    SELECT CASE WHEN typeof(digest) = 'text' AND length(digest) = 71
            AND substr(digest, 1, 7) = 'blake3:' AND substr(digest, 8) NOT GLOB '*[^0-9a-f]*'
        THEN unhex(substr(digest, 8)) ELSE digest END,
        size, stored_size, codec, data, refs
    FROM blobs WHERE digest IS NOT NULL;
DROP TABLE blobs;
ALTER TABLE blobs_v6 RENAME TO blobs;
"
    )
}

/// Version 7: a run whose one output is tiny (`SMALL_MAX` bytes, stored raw) keeps it in its own
/// row (`small`) instead of a row of `blobs`, which would cost more than the bytes (its 32-byte
/// digest as key, a random insert into the largest table). Its bytes count towards the stored
/// bytes for as long as the row exists, and the census counts them, kept by triggers in the
/// transaction that writes the row. Two more bytes-per-run savings: runs and keys are found
/// through their first 4 bytes (at ten million runs, one lookup in 400 compares a second row),
/// and `last_access_ms` is 0 (which takes no bytes) until a run is first used: it reads as
/// `created_ms`, and eviction orders by the later of the two.
const SCHEMA_V7: &str = "
ALTER TABLE entries ADD COLUMN small BLOB;
DROP INDEX entries_id;
DROP INDEX entries_key;
DROP INDEX entries_lru;
CREATE INDEX entries_id ON entries(substr(id, 1, 4));
CREATE INDEX entries_key ON entries(substr(key, 1, 4));
CREATE INDEX entries_lru ON entries(max(last_access_ms, created_ms)) WHERE live = 1;
INSERT OR IGNORE INTO census(name, value) VALUES ('small_outputs', 0), ('small_bytes', 0);
CREATE TRIGGER stored_small_insert AFTER INSERT ON entries WHEN NEW.small IS NOT NULL BEGIN
    UPDATE counters SET value = value + length(NEW.small) WHERE name = 'stored_bytes';
    UPDATE census SET value = value + 1 WHERE name = 'small_outputs';
    UPDATE census SET value = value + length(NEW.small) WHERE name = 'small_bytes';
END;
CREATE TRIGGER stored_small_delete AFTER DELETE ON entries WHEN OLD.small IS NOT NULL BEGIN
    UPDATE counters SET value = value - length(OLD.small) WHERE name = 'stored_bytes';
    UPDATE census SET value = value - 1 WHERE name = 'small_outputs';
    UPDATE census SET value = value - length(OLD.small) WHERE name = 'small_bytes';
END;
";

/// Outputs up to this many bytes are kept in their run's row (see `SCHEMA_V7`).
pub const SMALL_MAX: u64 = 64;

/// The `details` keys that describe the code or the command rather than the call: the same
/// for every run of it, so they live in `shared_bodies`.
const SHARED_DETAIL_KEYS: &[&str] = &[
    "kind",
    "function",
    "module",
    "source",
    "serializer",
    "python",
    "options",
    "argv",
    "cwd",
    "outputs",
    "ingredients",
    "input_files",
];

/// Entry fields that repeat across the runs of a task on one machine: in `shared_bodies`.
const SHARED_FIELDS: &[&str] = &["namespace", "host", "user", "output_kind"];

/// Key ingredients (extras) whose value is particular to a call; every other extra (the code,
/// the command line, the serializer) is the same for many runs and lives in `shared_bodies`,
/// its place kept in order.
const PER_RUN_EXTRAS: &[&str] = &["py.args", "tool.key"];

/// Entry fields the columns hold: never in the document.
const COLUMN_FIELDS: &[&str] = &[
    "id",
    "key",
    "task",
    "status",
    "created_ms",
    "expires_ms",
    "last_access_ms",
    "access_count",
    "size",
    "ttl_explicit",
];

/// Document fields left out when empty: each reads back as its default.
const OMITTED_WHEN_EMPTY: &[&str] = &[
    "inputs",
    "extras",
    "parent",
    "duration_ms",
    "console",
    "exit_code",
    "ingredients",
    "ttl_explicit",
];

type Json = serde_json::Map<String, serde_json::Value>;

/// An entry's document, with what it shares with other runs split off into `shared_bodies`
/// (stored once per distinct body, see `SCHEMA_V5`) and packed against the body's template when
/// it has the template's shape (`SCHEMA_V6`); returns the document (bytes, or JSON text) and the
/// id of the body it references.
fn entry_doc(
    tx: &Connection,
    entry: &Entry,
) -> rusqlite::Result<(rusqlite::types::Value, Option<i64>)> {
    use serde_json::Value;
    let Value::Object(mut doc) = serde_json::to_value(entry).expect("entries serialize") else {
        unreachable!("an entry serializes to an object")
    };
    for k in COLUMN_FIELDS {
        doc.remove(*k);
    }
    // In `tags` (see `insert_tags`).
    doc.remove("tags");
    let mut shared = Json::new();
    if let Some(Value::Object(details)) = doc.get_mut("details") {
        // Empty lists a front end recorded say nothing.
        details.retain(|_, v| !matches!(v, Value::Array(a) if a.is_empty()));
        let common: Json = SHARED_DETAIL_KEYS
            .iter()
            .filter_map(|k| details.remove(*k).map(|v| ((*k).to_owned(), v)))
            .collect();
        if !common.is_empty() {
            shared.insert("details".into(), Value::Object(common));
        }
    }
    if matches!(doc.get("details"), Some(Value::Object(d)) if d.is_empty()) {
        doc.remove("details");
    }
    let fields: Json =
        SHARED_FIELDS.iter().filter_map(|k| doc.remove(*k).map(|v| ((*k).to_owned(), v))).collect();
    shared.insert("entry".into(), Value::Object(fields));
    if let Some(Value::Object(mut ing)) = doc.remove("ingredients") {
        let mut own = Vec::new();
        let template: Vec<Value> = match ing.remove("extras") {
            Some(Value::Array(extras)) => extras
                .into_iter()
                .map(|pair| match pair.get(0).and_then(Value::as_str) {
                    Some(label) if PER_RUN_EXTRAS.contains(&label) => {
                        let slot = serde_json::json!([label, null]);
                        own.push(pair);
                        slot
                    }
                    _ => pair,
                })
                .collect(),
            _ => Vec::new(),
        };
        ing.insert("extras".into(), Value::Array(template));
        shared.insert("ingredients".into(), Value::Object(ing));
        doc.insert("ingredients".into(), serde_json::json!({ "extras": own }));
    }
    for k in OMITTED_WHEN_EMPTY {
        let empty = match doc.get(*k) {
            Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => {
                o.is_empty()
                    || matches!(o.get("extras"), Some(Value::Array(a)) if a.is_empty() && o.len() == 1)
            }
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Bool(b)) => !b,
            _ => false,
        };
        if empty {
            doc.remove(*k);
        }
    }
    let body = Value::Object(shared).to_string();
    let digest = blake3::hash(body.as_bytes()).to_hex().to_string();
    let doc = Value::Object(doc);
    let text = doc.to_string();
    // The first document written with a body is its template.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO shared_bodies(digest, body, template) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![digest, body, text])?;
    let (id, template): (i64, Option<String>) = tx
        .prepare_cached("SELECT id, template FROM shared_bodies WHERE digest = ?1")?
        .query_row([&digest], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let template = match template {
        Some(t) => t,
        // A body written before version 6.
        None => {
            tx.prepare_cached("UPDATE shared_bodies SET template = ?2 WHERE id = ?1")?
                .execute(params![id, text])?;
            text.clone()
        }
    };
    let packed = parsed_template(&template)
        .ok()
        .and_then(|t| super::packed::pack(&doc, &t))
        .map(rusqlite::types::Value::Blob);
    Ok((packed.unwrap_or(rusqlite::types::Value::Text(text)), Some(id)))
}

/// The text parsed last on this thread, and what it parsed to.
type LastParsed<T> = std::cell::RefCell<Option<(String, T)>>;

/// `text` parsed as JSON; the text parsed last in `slot` is not parsed again (the rows of a
/// listing or a walk, and the saves of a batch, mostly share one body and one template).
fn parse_cached<T: serde::de::DeserializeOwned + Clone>(
    slot: &'static std::thread::LocalKey<LastParsed<T>>,
    text: &str,
) -> serde_json::Result<T> {
    slot.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((t, parsed)) = &*last
            && t == text
        {
            return Ok(parsed.clone());
        }
        let parsed: T = serde_json::from_str(text)?;
        *last = Some((text.to_owned(), parsed.clone()));
        Ok(parsed)
    })
}

/// A shared body's template, parsed.
fn parsed_template(text: &str) -> std::result::Result<serde_json::Value, String> {
    thread_local! {
        static LAST: LastParsed<serde_json::Value> = const { std::cell::RefCell::new(None) };
    }
    parse_cached(&LAST, text).map_err(|e| format!("its template: {e}"))
}

/// Puts what `body` (a row of `shared_bodies`) holds back into the document `doc`; fields the
/// document holds itself win (rows written before version 5 hold everything).
fn merge_shared(doc: &mut Json, body: &str) -> std::result::Result<(), String> {
    use serde_json::Value;
    thread_local! {
        static LAST: LastParsed<Json> = const { std::cell::RefCell::new(None) };
    }
    let shared = parse_cached(&LAST, body).map_err(|e| format!("its shared body: {e}"))?;
    for (part, value) in shared {
        match (part.as_str(), value) {
            ("details", Value::Object(common)) => {
                let details = doc.entry("details").or_insert_with(|| Value::Object(Json::new()));
                if !details.is_object() {
                    *details = Value::Object(Json::new());
                }
                let Value::Object(details) = details else { unreachable!() };
                for (k, v) in common {
                    details.entry(k).or_insert(v);
                }
            }
            ("entry", Value::Object(fields)) => {
                for (k, v) in fields {
                    doc.entry(k).or_insert(v);
                }
            }
            ("ingredients", Value::Object(mut template)) => {
                let own = match doc.remove("ingredients") {
                    Some(Value::Object(mut o)) if !o.contains_key("algorithm") => {
                        match o.remove("extras") {
                            Some(Value::Array(a)) => a,
                            _ => Vec::new(),
                        }
                    }
                    // A document that holds its ingredients whole.
                    Some(whole) => {
                        doc.insert("ingredients".into(), whole);
                        continue;
                    }
                    None => Vec::new(),
                };
                let mut own = own.into_iter();
                let Some(Value::Array(slots)) = template.get_mut("extras") else {
                    return Err("its shared key ingredients have no extras".into());
                };
                for slot in slots.iter_mut() {
                    if slot.get(1).is_some_and(Value::is_null) {
                        let fill = own.next().filter(|p| p.get(0) == slot.get(0));
                        *slot =
                            fill.ok_or("its key ingredients do not fill their shared template")?;
                    }
                }
                if own.next().is_some() {
                    return Err("its key ingredients do not fill their shared template".into());
                }
                doc.insert("ingredients".into(), Value::Object(template));
            }
            (other, _) => return Err(format!("its shared body holds an unknown part {other:?}")),
        }
    }
    Ok(())
}

/// The SQLite metadata store. One connection behind a mutex (SQLite serializes writers anyway),
/// opened on first use: a hit served from a hot record never opens the database.
#[derive(Debug)]
pub struct SqliteMeta {
    path: PathBuf,
    conn: std::sync::OnceLock<Mutex<Db>>,
    /// Set by `long_lived`: checkpoints run on a thread of their own.
    checkpointer: std::sync::OnceLock<Checkpointer>,
    /// Set by `long_lived`: lookups read on a connection of their own, so that they never wait
    /// for this process's commits (WAL readers see the last commit and do not block writers).
    reader: std::sync::OnceLock<Mutex<Db>>,
    /// Held by this process's write transactions, and by the checkpoint thread when the WAL
    /// must start over (see `Checkpointer`).
    write_gate: Arc<Mutex<()>>,
}

/// Wakes the checkpoint thread; dropping it ends the thread.
#[derive(Debug)]
struct Checkpointer {
    /// (checkpoint due, stop)
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
}

impl Checkpointer {
    /// Checkpoints on a thread of its own, woken after commits, at most once per
    /// `CHECKPOINT_PAUSE`. A PASSIVE checkpoint never takes the writers' lock, so writers never
    /// wait for its fsyncs; but while commits keep coming, the WAL is never entirely copied at
    /// the moment the next one starts, so it never starts over and grows without end. Once it
    /// holds `WAL_RESTART_PAGES`, the thread checkpoints once more holding `gate` (this
    /// process's writers wait, for the few pages committed since): the next commit then starts
    /// the WAL from its beginning.
    fn start(conn: Db, gate: Arc<Mutex<()>>) -> Result<Checkpointer> {
        let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let s = Arc::clone(&state);
        std::thread::Builder::new()
            .name("taskvault-checkpoint".into())
            .spawn(move || {
                loop {
                    let (lock, cv) = &*s;
                    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while !st.0 && !st.1 {
                        st = cv.wait(st).unwrap_or_else(|p| p.into_inner());
                    }
                    if st.1 {
                        return;
                    }
                    st.0 = false;
                    drop(st);
                    let passive = || -> rusqlite::Result<i64> {
                        let _busy = crate::fork::busy();
                        // (busy, pages in the WAL, pages copied)
                        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
                    };
                    if matches!(passive(), Ok(pages) if pages >= WAL_RESTART_PAGES) {
                        let _writers = gate.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = passive();
                    }
                    // At most one checkpoint per pause, however many commits woke us.
                    std::thread::sleep(CHECKPOINT_PAUSE);
                }
            })
            .map_err(|e| Error::Other(format!("starting the checkpoint thread: {e}")))?;
        Ok(Checkpointer { state })
    }

    fn wake(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).0 = true;
        cv.notify_one();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        cv.notify_one();
    }
}

impl SqliteMeta {
    /// Prepares the store; the database is opened (created, migrated) on first use.
    pub fn open(path: &Path) -> Result<SqliteMeta> {
        Ok(SqliteMeta {
            path: path.to_owned(),
            conn: std::sync::OnceLock::new(),
            checkpointer: std::sync::OnceLock::new(),
            reader: std::sync::OnceLock::new(),
            write_gate: Arc::default(),
        })
    }

    /// The writer connection (callers hold a `fork::busy` token while they use it).
    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Db>> {
        let m = match self.conn.get() {
            Some(m) => m,
            None => {
                let c = open_database(&self.path, SCHEMA_VERSION, migrate)?;
                self.conn.get_or_init(|| Mutex::new(c))
            }
        };
        Ok(m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Db { path: self.path.clone(), source }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let _busy = crate::fork::busy();
        let conn = self.conn()?;
        f(&conn).map_err(|e| self.err(e))
    }

    /// Runs the read-only `f` on the reader connection, if there is one.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let _busy = crate::fork::busy();
        match self.reader.get() {
            Some(r) => f(&r.lock().unwrap_or_else(|p| p.into_inner())).map_err(|e| self.err(e)),
            None => self.with(f),
        }
    }

    /// Runs `f` in an IMMEDIATE transaction. `f` returns our error type so that callbacks (blob
    /// placement) can fail it; the transaction rolls back on any error.
    fn write<T>(&self, f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>) -> Result<T> {
        let gate = self.write_gate.lock().unwrap_or_else(|p| p.into_inner());
        let busy = crate::fork::busy();
        let mut conn = self.conn()?;
        let out = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| self.err(e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| self.err(e))?;
            Ok(out)
        })()
        .map_err(|e| match e {
            // Errors raised with `?` inside the closure do not know the database path yet.
            Error::Db { source, .. } => self.err(source),
            other => other,
        });
        drop(conn);
        drop(busy);
        drop(gate);
        if let Some(c) = self.checkpointer.get() {
            c.wake();
        }
        out
    }
}

/// Copies the WAL into the database and empties it, if no reader is using it right now (it never
/// waits: a busy checkpoint is simply left to the next writer). An empty WAL makes every later
/// open cheap, since there is nothing to recover.
pub(crate) fn truncate_wal(conn: &Connection) {
    let _ = conn.busy_timeout(std::time::Duration::ZERO);
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
}

/// How much of the database a long-lived process's reader maps into memory.
const READER_MMAP_BYTES: i64 = 1 << 30;

/// The page cache of a long-lived process's writer, in KiB.
const LONG_LIVED_CACHE_KIB: i64 = 32 * 1024;

/// The WAL size (in 4 KiB pages) at which the checkpoint thread of a long-lived process makes
/// it start over (see `Checkpointer`).
const WAL_RESTART_PAGES: i64 = 4096;

/// How often, at most, the checkpoint thread of a long-lived process checkpoints.
const CHECKPOINT_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The WAL size (in 4 KiB pages) at which the committing writer checkpoints it.
const WAL_PAGES: i64 = 256;

/// How long a writer waits for another writer before giving up.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens a TaskVault SQLite database at schema `version`, creating or migrating it with `migrate`
/// (which runs in a transaction and must set `user_version`). A database from a newer TaskVault
/// is refused. Creation and migration (and the switch to WAL) are done by one process at a time,
/// under an `flock`; concurrent first opens otherwise race into SQLITE_BUSY. Opening a database
/// that is up to date takes no lock.
pub(crate) fn open_database(
    path: &Path,
    version: i64,
    migrate: fn(&Connection) -> rusqlite::Result<()>,
) -> Result<Db> {
    let db = |source| Error::Db { path: path.to_owned(), source };
    let _busy = crate::fork::busy();
    let conn = Db::new(Connection::open(path).map_err(db)?);
    conn.busy_timeout(BUSY_TIMEOUT).map_err(db)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    if found > version {
        return Err(Error::SchemaTooNew { path: path.to_owned(), found, supported: version });
    }
    if found < version {
        let _lock = crate::claim::lock_file(&path.with_extension("init.lock"), true)?;
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
        if found < version {
            // WAL must be chosen outside a transaction; it is persistent, so this runs once.
            conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
            migrate(&conn).map_err(db)?;
            truncate_wal(&conn);
        }
    }
    // Commits are not fsynced (the WAL is, at each checkpoint): a commit survives the process
    // being killed at once, and a power loss only until the last checkpoint. Blob files are
    // fsynced before the commit that adds their rows, so no row can outlive its file.
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(db)?;
    // The committing writer checkpoints once the WAL holds WAL_PAGES pages, so the WAL a later
    // process must read on open stays small.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES).map_err(db)?;
    // The CLI is a short-lived process. Keep the WAL file between processes instead of creating
    // and deleting it on every open and close, and never checkpoint on close: a reader would
    // otherwise pay fsyncs for someone else's writes.
    conn.file_control(Some(rusqlite::MAIN_DB), rusqlite::FileControl::PersistWal(&mut 1))
        .map_err(db)?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(db)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version < 1 {
            conn.execute_batch(SCHEMA_V1)?;
        }
        if version < 2 {
            conn.execute_batch(SCHEMA_V2)?;
        }
        if version < 3 {
            // Its triggers (and the indexes of `entries`) are made by version 6, on the rebuilt
            // tables.
            conn.execute_batch(SCHEMA_V3)?;
        }
        if version < 4 {
            conn.execute_batch(SCHEMA_V4)?;
        }
        if version < 5 {
            conn.execute_batch(SCHEMA_V5)?;
        }
        if version < 6 {
            conn.execute_batch(&schema_v6())?;
            conn.execute_batch(BLOB_TRIGGERS)?;
            conn.execute_batch(ENTRY_INDEXES)?;
        }
        if version < 7 {
            conn.execute_batch(SCHEMA_V7)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The columns `entry_from_row` reads; `rowid` last (a listing orders by it).
const ENTRY_COLS: &str = "doc, status, last_access_ms, access_count, id, key,
    (SELECT body FROM shared_bodies WHERE id = entries.shared), task, created_ms, expires_ms,
    (SELECT json_group_object(name, value) FROM tags WHERE run = entries.rowid),
    (SELECT template FROM shared_bodies WHERE id = entries.shared), size, ttl_explicit, rowid,
    small";

/// The position of `live` when a query selects it after [`ENTRY_COLS`].
const LIVE_AFTER_ENTRY_COLS: usize = 16;

/// How a run id or a key is stored (schema 6): 64 lowercase hex digits as their 32 bytes,
/// anything else as the text it is.
fn hex_value(s: &str) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match super::packed::hex32(s) {
        Some(bytes) => Value::Blob(bytes.to_vec()),
        None => Value::Text(s.to_owned()),
    }
}

/// A run id or key as stored, read back as its text (see [`hex_value`]).
fn hex_text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Blob(b) => Some(hex::encode(b)),
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
        _ => None,
    }
}

/// Column `i` of `row`, a run id or key (see [`hex_value`]).
fn hex_col(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    hex_text(row.get_ref(i)?).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            "a run id or key that is neither bytes nor text".into(),
        )
    })
}

/// How a blob digest is stored (schema 6): a BLAKE3 digest as its 32 bytes, any other as its
/// text (`sha256:` and hex digits).
fn digest_value(d: &Digest) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match d.algorithm() {
        crate::digest::Algorithm::Blake3 => Value::Blob(d.as_bytes().to_vec()),
        _ => Value::Text(d.to_string()),
    }
}

/// A digest as a damaged row shows it, stored the way it was read (see [`digest_text`]).
fn shown_digest_value(shown: &str) -> rusqlite::types::Value {
    match shown.parse::<Digest>() {
        Ok(d) => digest_value(&d),
        Err(_) => rusqlite::types::Value::Text(shown.to_owned()),
    }
}

/// A stored digest as text (see [`digest_value`]); bytes of another length read as hex.
fn digest_text(v: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Blob(b) if b.len() == 32 => Some(format!("blake3:{}", hex::encode(b))),
        ValueRef::Blob(b) => Some(hex::encode(b)),
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
        _ => None,
    }
}

/// Runs (or keys) `?N` names: through the index of their first 4 bytes.
fn is(column: &str, n: usize) -> String {
    format!("substr({column}, 1, 4) = substr(?{n}, 1, 4) AND {column} = ?{n}")
}

/// Records the tags of the run just inserted (`rowid`).
fn insert_tags(tx: &Connection, rowid: i64, entry: &Entry) -> rusqlite::Result<()> {
    for (name, value) in &entry.tags {
        tx.prepare_cached("INSERT OR IGNORE INTO tags(run, name, value) VALUES (?1, ?2, ?3)")?
            .execute(params![rowid, name, value])?;
    }
    Ok(())
}

/// A row read back: its entry, or (its run id, why the row is damaged: its document does not
/// decode, or names another run or key than its columns). A damaged row is never served.
type Decoded = std::result::Result<Entry, (String, String)>;

/// A blob row read back, or (its digest as stored, why it cannot be used).
type BlobRow = std::result::Result<BlobInfo, (String, String)>;

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Decoded> {
    use serde_json::Value;
    // Any column may hold anything in a damaged database: read them all as values.
    let id = hex_text(row.get_ref(4)?).unwrap_or_else(|| "(neither bytes nor text)".into());
    let Some(key) = hex_text(row.get_ref(5)?) else {
        return Ok(Err((id, "its key is neither bytes nor text".into())));
    };
    let doc = match row.get_ref(0)? {
        rusqlite::types::ValueRef::Text(t) => match std::str::from_utf8(t) {
            Ok(doc) => serde_json::from_str::<Json>(doc)
                .map_err(|err| format!("its document does not decode: {err}")),
            Err(_) => Err("its document is not text".to_owned()),
        },
        rusqlite::types::ValueRef::Blob(b) => match row.get::<_, Option<String>>(11) {
            Ok(Some(t)) => {
                parsed_template(&t).and_then(|t| super::packed::unpack(b, &t)).and_then(|v| match v
                {
                    Value::Object(m) => Ok(m),
                    _ => Err("its packed document is not an object".into()),
                })
            }
            _ => Err("its packed document has no template".into()),
        },
        _ => Err("its document is neither text nor bytes".into()),
    };
    let mut m = match doc {
        Ok(m) => m,
        Err(why) => return Ok(Err((id, why))),
    };
    // Documents written before version 5 name their run and key: they must be the columns'.
    let names = |field: &str, column: &str| m.get(field).is_none_or(|v| v.as_str() == Some(column));
    if !names("id", &id) || !names("key", &key) {
        let why = format!("its document describes run {} of key {}", m["id"], m["key"]);
        return Ok(Err((id, why)));
    }
    if let Ok(Some(body)) = row.get::<_, Option<String>>(6)
        && let Err(why) = merge_shared(&mut m, &body)
    {
        return Ok(Err((id, why)));
    }
    let status: Option<String> = row.get(1).ok();
    // Anything else in the column reads as corrupt: never served.
    let status = match status.as_deref() {
        Some("live") => "live",
        Some("superseded") => "superseded",
        Some("failed") => "failed",
        _ => "corrupt",
    };
    let int = |i: usize| match row.get_ref(i) {
        Ok(rusqlite::types::ValueRef::Integer(n)) => Value::from(n),
        _ => Value::Null,
    };
    let task = match row.get_ref(7) {
        Ok(rusqlite::types::ValueRef::Text(t)) => String::from_utf8_lossy(t).into_owned(),
        _ => return Ok(Err((id, "its task is not text".into()))),
    };
    m.insert("id".into(), Value::String(id.clone()));
    m.insert("key".into(), Value::String(key));
    m.insert("task".into(), Value::String(task));
    m.insert("status".into(), Value::from(status));
    m.insert("created_ms".into(), int(8));
    m.insert("expires_ms".into(), int(9));
    // 0 until the run is first used (schema 7): its creation.
    let last_use = match (int(2).as_i64(), int(8).as_i64()) {
        (Some(used), Some(created)) => Value::from(used.max(created)),
        _ => int(2),
    };
    m.insert("last_access_ms".into(), last_use);
    m.insert("access_count".into(), int(3));
    m.insert("size".into(), int(12));
    m.insert("ttl_explicit".into(), Value::Bool(matches!(int(13).as_i64(), Some(n) if n != 0)));
    if let Ok(Some(tags)) = row.get::<_, Option<String>>(10)
        && tags != "{}"
    {
        match serde_json::from_str::<Value>(&tags) {
            Ok(t) => {
                m.insert("tags".into(), t);
            }
            Err(err) => return Ok(Err((id, format!("its tags do not decode: {err}")))),
        }
    }
    let mut e = match serde_json::from_value::<Entry>(Value::Object(m)) {
        Ok(e) => e,
        Err(err) => return Ok(Err((id, format!("its document does not decode: {err}")))),
    };
    match row.get_ref(15)? {
        rusqlite::types::ValueRef::Null => {}
        rusqlite::types::ValueRef::Blob(b) => match small_blob(&e, b) {
            Ok(info) => e.embedded = Some(info),
            Err(why) => return Ok(Err((id, why))),
        },
        _ => return Ok(Err((id, "its small output is not bytes".into()))),
    }
    Ok(Ok(e))
}

/// The blob a row's `small` column holds for `e`, verified against the digest and size of its
/// one output: a row whose bytes do not match is damaged, never served.
fn small_blob(e: &Entry, data: &[u8]) -> std::result::Result<BlobInfo, String> {
    let Some((Some(digest), size)) = e.sole_output().map(|n| (n.digest, n.size)) else {
        return Err("it holds small output bytes but has not exactly one output blob".into());
    };
    let got = digest.algorithm().digest(data);
    if data.len() as u64 != size || got != digest {
        return Err(format!(
            "its small output ({} bytes, {got}) is not its output ({size} bytes, {digest})",
            data.len()
        ));
    }
    Ok(BlobInfo { digest, size, stored_size: size, codec: Codec::Raw, inline: Some(data.to_vec()) })
}

/// The bytes of `entry`'s one output to keep in its row, if they are small enough (see
/// `SCHEMA_V7`): one output node, no console, its blob among `blobs` inline and raw.
fn small_bytes<'b>(entry: &Entry, blobs: &'b [StagedBlob]) -> Option<&'b [u8]> {
    let node = entry.sole_output()?;
    let b = blobs.iter().find(|b| Some(b.info.digest) == node.digest)?;
    let data = b.info.inline.as_deref()?;
    let raw = b.staged.is_none() && b.info.codec == Codec::Raw;
    (raw && data.len() as u64 == node.size && node.size <= SMALL_MAX).then_some(data)
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

/// A decoded row as the trait answers it: a damaged row is an error naming its run.
fn decoded(row: Option<Decoded>) -> Result<Option<Entry>> {
    row.transpose().map_err(|(run, message)| Error::DamagedRow { run, message })
}

fn blob_row(c: &Connection, digest: &Digest) -> rusqlite::Result<Option<BlobRow>> {
    c.prepare_cached("SELECT digest, size, stored_size, codec, data FROM blobs WHERE digest = ?1")?
        .query_row([digest_value(digest)], |r| Ok(blob_from_row(r)))
        .optional()
}

fn blob_from_row(r: &rusqlite::Row<'_>) -> BlobRow {
    use rusqlite::types::ValueRef;
    let text = |i: usize| match r.get_ref(i) {
        Ok(ValueRef::Text(t)) => std::str::from_utf8(t).ok().map(str::to_owned),
        _ => None,
    };
    let int = |i: usize| match r.get_ref(i) {
        Ok(ValueRef::Integer(n)) if n >= 0 => Some(n as u64),
        _ => None,
    };
    let stored = r.get_ref(0).ok().and_then(digest_text);
    let shown = stored.clone().unwrap_or_else(|| "(neither bytes nor text)".into());
    let bad = |why: &str| (shown.clone(), why.to_owned());
    let digest: Digest =
        stored.and_then(|d| d.parse().ok()).ok_or_else(|| bad("the digest does not parse"))?;
    let size = int(1).ok_or_else(|| bad("the size is not a count of bytes"))?;
    let stored_size = int(2).ok_or_else(|| bad("the stored size is not a count of bytes"))?;
    let codec = text(3).and_then(|c| Codec::parse(&c)).ok_or_else(|| bad("unknown codec"))?;
    let inline = match r.get_ref(4) {
        Ok(ValueRef::Null) => None,
        Ok(ValueRef::Blob(b)) => Some(b.to_vec()),
        _ => return Err(bad("the inline data is not a blob")),
    };
    Ok(BlobInfo { digest, size, stored_size, codec, inline })
}

/// The (name, value) rows of a table of counts (`counters`, `census`).
fn named_values(c: &Connection, sql: &str) -> rusqlite::Result<Vec<(String, i64)>> {
    c.prepare_cached(sql)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
}

fn bump(tx: &Connection, name: &str, by: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE counters SET value = value + ?2 WHERE name = ?1")?
        .execute(params![name, by])?;
    Ok(())
}

fn live_entry(tx: &Connection, key: &str) -> rusqlite::Result<Option<Decoded>> {
    tx.prepare_cached(&format!(
        "SELECT {ENTRY_COLS} FROM entries WHERE {} AND live = 1",
        is("key", 1)
    ))?
    .query_row([hex_value(key)], entry_from_row)
    .optional()
}

/// The id of the live run of `key` (read without decoding it, so a damaged row is replaced).
fn live_id(tx: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached(&format!("SELECT id FROM entries WHERE {} AND live = 1", is("key", 1)))?
        .query_row([hex_value(key)], |r| hex_col(r, 0))
        .optional()
}

/// Drops the references of the live run of `key` to its blobs, and every blob left unreferenced
/// (their files are added to `unlink`); returns bytes freed. A live row that cannot be read
/// keeps its blobs (never freed too early; `verify` drops the row).
fn unref_key(tx: &Connection, key: &str, unlink: &mut Vec<Digest>) -> Result<u64> {
    let Some(Ok(live)) = live_entry(tx, key)? else { return Ok(0) };
    if live.embedded.is_some() {
        // Its output is in its own row: no blob row counts it.
        return Ok(0);
    }
    unref_digests(tx, &live.blob_digests(), unlink)
}

/// One reference less to each of `digests` (distinct), dropping those no live entry uses.
fn unref_digests(tx: &Connection, digests: &[Digest], unlink: &mut Vec<Digest>) -> Result<u64> {
    let mut freed = 0;
    for d in digests {
        let left: Option<i64> = tx
            .prepare_cached("UPDATE blobs SET refs = refs - 1 WHERE digest = ?1 RETURNING refs")?
            .query_row([digest_value(d)], |r| r.get(0))
            .optional()?;
        if left.is_some_and(|n| n <= 0) {
            freed += drop_blob_row(tx, d, unlink)?;
        }
    }
    Ok(freed)
}

/// Deletes the row of blob `digest` (its file added to `unlink`); returns its stored bytes.
fn drop_blob_row(tx: &Connection, digest: &Digest, unlink: &mut Vec<Digest>) -> Result<u64> {
    let row: Option<(i64, bool)> = tx
        .prepare_cached(
            "DELETE FROM blobs WHERE digest = ?1 RETURNING stored_size, data IS NOT NULL",
        )?
        .query_row([digest_value(digest)], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((stored, inline)) = row else { return Ok(0) };
    bump(tx, "stored_bytes", -stored)?;
    if !inline {
        unlink.push(*digest);
    }
    Ok(stored as u64)
}

/// Marks the live entries using blob `digest` corrupt and drops their references; returns how
/// many were live. Blobs count their users but do not name them, so this reads the documents
/// of live runs that mention the digest: a scan, paid only when a blob turns out corrupt.
fn retire_users(tx: &Connection, digest: &Digest, r: &mut Removed) -> Result<i64> {
    // JSON documents hold the digest's hex digits, packed ones its bytes (always written out).
    let keys: Vec<String> = tx
        .prepare_cached(
            "SELECT key FROM entries WHERE live = 1 AND small IS NULL
             AND instr(doc, CASE typeof(doc) WHEN 'blob' THEN ?2 ELSE ?1 END) > 0",
        )?
        .query_map(params![digest.hex(), digest.as_bytes().to_vec()], |r| hex_col(r, 0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut retired = 0;
    for k in keys {
        let Some(Ok(e)) = live_entry(tx, &k)? else { continue };
        if !e.blob_digests().contains(digest) {
            continue;
        }
        unref_digests(tx, &e.blob_digests(), &mut r.unreferenced)?;
        tx.prepare_cached(&format!(
            "UPDATE entries SET live = 0, status = 'corrupt' WHERE {} AND live = 1",
            is("key", 1)
        ))?
        .execute([hex_value(&k)])?;
        r.entries.push(e);
        retired += 1;
    }
    Ok(retired)
}

/// Removes every run of `key`; returns the live entry (if any) and bytes freed.
fn remove_key(
    tx: &Connection,
    key: &str,
    unlink: &mut Vec<Digest>,
) -> Result<(Option<Entry>, u64)> {
    let live = sound(live_entry(tx, key)?).pop();
    let mut freed = unref_key(tx, key, unlink)?;
    // Small outputs go with their rows.
    let small: Vec<i64> = tx
        .prepare_cached(&format!(
            "DELETE FROM entries WHERE {} RETURNING coalesce(length(small), 0)",
            is("key", 1)
        ))?
        .query_map([hex_value(key)], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    freed += small.iter().sum::<i64>().max(0) as u64;
    Ok((live, freed))
}

/// Records one save in an open transaction (see [`MetaStore::commit_save`]).
/// What the saves of one transaction add to the counters, written once at its end.
struct Tally {
    saves: i64,
    stored_bytes: i64,
    /// Whether `failures` may hold rows (saves clear their key's).
    failures: bool,
}

impl Tally {
    fn new(tx: &Connection) -> rusqlite::Result<Tally> {
        let failures = tx
            .prepare_cached("SELECT EXISTS(SELECT 1 FROM failures)")?
            .query_row([], |r| r.get(0))?;
        Ok(Tally { saves: 0, stored_bytes: 0, failures })
    }

    fn write(&self, tx: &Connection) -> rusqlite::Result<()> {
        bump(tx, "saves", self.saves)?;
        bump(tx, "stored_bytes", self.stored_bytes)
    }
}

fn save_in(
    tx: &Connection,
    entry: &Entry,
    blobs: &[StagedBlob],
    place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    tally: &mut Tally,
) -> Result<Committed> {
    let mut unreferenced = Vec::new();
    let small = small_bytes(entry, blobs);
    // A small output stays in the run's row: no blob row, no reference.
    let blobs = if small.is_some() { &[] } else { blobs };
    for b in blobs {
        let d = b.info.digest.to_string();
        let dv = digest_value(&b.info.digest);
        if b.staged.is_none() && b.info.inline.is_none() {
            // A reference to a stored blob: it must still be there, and sound.
            if matches!(blob_row(tx, &b.info.digest)?, Some(Ok(_))) {
                continue;
            }
            return Err(Error::BlobVanished(d));
        }
        let insert = |tx: &Connection| -> rusqlite::Result<usize> {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO blobs(digest, size, stored_size, codec, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                dv,
                b.info.size as i64,
                b.info.stored_size as i64,
                b.info.codec.name(),
                b.info.inline
            ])
        };
        let mut added = insert(tx)?;
        if added == 0 && matches!(blob_row(tx, &b.info.digest)?, Some(Err(_))) {
            // A damaged row is replaced by what this save brings.
            tracing::warn!("replacing the damaged metadata row of blob {d}");
            let stored: Option<i64> = tx
                .prepare_cached("DELETE FROM blobs WHERE digest = ?1 RETURNING stored_size")?
                .query_row([&dv], |r| r.get(0))
                .ok();
            bump(tx, "stored_bytes", -stored.unwrap_or(0).max(0))?;
            added = insert(tx)?;
        }
        if added == 0 {
            continue; // stored already
        }
        if b.staged.is_some() {
            place(b)?;
        }
        tally.stored_bytes += b.info.stored_size as i64;
    }

    let old = live_id(tx, &entry.key)?;
    // New references first, so blobs shared by the old and new run are never dropped.
    let digests = if small.is_some() { Vec::new() } else { entry.blob_digests() };
    for d in &digests {
        tx.prepare_cached("UPDATE blobs SET refs = refs + 1 WHERE digest = ?1")?
            .execute([digest_value(d)])?;
    }
    if old.is_some() {
        unref_key(tx, &entry.key, &mut unreferenced)?;
    }
    if let Some(old) = &old {
        tx.prepare_cached(&format!(
            "UPDATE entries SET live = 0, status = 'superseded' WHERE {}",
            is("id", 1)
        ))?
        .execute([hex_value(old)])?;
    }
    let mut entry = entry.clone();
    entry.parent = old.clone();
    entry.status = Status::Live;
    let (doc, shared) = entry_doc(tx, &entry)?;
    tx.prepare_cached(
        "INSERT INTO entries(id, key, live, status, task, created_ms, last_access_ms,
                access_count, expires_ms, doc, shared, size, ttl_explicit, small)
             VALUES (?1, ?2, 1, 'live', ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        hex_value(&entry.id),
        hex_value(&entry.key),
        entry.task,
        entry.created_ms,
        // Not used since it was made: 0, read as its creation.
        if entry.last_access_ms > entry.created_ms { entry.last_access_ms } else { 0 },
        entry.access_count,
        entry.expires_ms,
        doc,
        shared,
        entry.size as i64,
        entry.ttl_explicit,
        small
    ])?;
    insert_tags(tx, tx.last_insert_rowid(), &entry)?;
    if tally.failures {
        tx.prepare_cached("DELETE FROM failures WHERE key = ?1")?.execute([&entry.key])?;
    }
    tally.saves += 1;
    Ok(Committed { superseded: old, unreferenced })
}

impl From<rusqlite::Error> for Error {
    fn from(source: rusqlite::Error) -> Self {
        Error::Db { path: PathBuf::from("metadata"), source }
    }
}

impl MetaStore for SqliteMeta {
    fn long_lived(&self) -> Result<()> {
        if self.checkpointer.get().is_some() {
            return Ok(());
        }
        let c = Checkpointer::start(
            open_database(&self.path, SCHEMA_VERSION, migrate)?,
            Arc::clone(&self.write_gate),
        )?;
        // Writers no longer checkpoint (and wait for its fsyncs) themselves. Batches of saves
        // get a page cache that holds them (2 MiB, the default, spills pages to the WAL in the
        // middle of a batch).
        self.with(|conn| {
            conn.pragma_update(None, "wal_autocheckpoint", 0)?;
            conn.pragma_update(None, "cache_size", -LONG_LIVED_CACHE_KIB)?;
            // The writer reads the pages it changes through the memory map too: at a million
            // entries a batch of saves touches a thousand index pages, each a `pread` otherwise.
            conn.pragma_update(None, "mmap_size", READER_MMAP_BYTES)?;
            // A WAL that grew past this is cut back to it when it starts over.
            conn.pragma_update(None, "journal_size_limit", WAL_RESTART_PAGES * 4096)
        })?;
        let reader = open_database(&self.path, SCHEMA_VERSION, migrate)?;
        // Lookups read the database through a memory map: a page already in the kernel's cache
        // costs no system call (a batch of lookups in a large vault otherwise pays several
        // `pread`s each). Writes still go through the WAL.
        reader.pragma_update(None, "mmap_size", READER_MMAP_BYTES).map_err(|e| self.err(e))?;
        let _ = self.reader.set(Mutex::new(reader));
        let _ = self.checkpointer.set(c);
        Ok(())
    }

    fn lookup(&self, key: &str) -> Result<Option<Entry>> {
        decoded(self.read(|c| live_entry(c, key))?)
    }

    fn lookup_many(&self, keys: &[String]) -> Result<Vec<Option<crate::store::Found>>> {
        self.read(|c| {
            // One read transaction: one snapshot, and the WAL's locks taken once.
            c.execute_batch("BEGIN DEFERRED")?;
            let out = keys
                .iter()
                .map(|k| {
                    let Some(Ok(e)) = live_entry(c, k)? else { return Ok(None) };
                    // A small output's row is the entry's own (`Entry::embedded`).
                    let mut rows = Vec::new();
                    if e.embedded.is_none() {
                        for d in e.blob_digests() {
                            if let Some(Ok(row)) = blob_row(c, &d)? {
                                rows.push(row);
                            }
                        }
                    }
                    Ok(Some((e, rows)))
                })
                .collect::<rusqlite::Result<Vec<_>>>();
            let end = c.execute_batch("COMMIT");
            let out = out?;
            end?;
            Ok(out)
        })
    }

    fn blob(&self, digest: &Digest) -> Result<Option<BlobInfo>> {
        // A damaged row is no row: what used it reads as corrupt, and a save replaces it.
        self.read(|c| Ok(blob_row(c, digest)?.and_then(|r| r.ok())))
    }

    fn commit_save(
        &self,
        entry: &Entry,
        blobs: &[StagedBlob],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Committed> {
        self.write(|tx| {
            let mut tally = Tally::new(tx)?;
            let committed = save_in(tx, entry, blobs, place, &mut tally)?;
            tally.write(tx)?;
            Ok(committed)
        })
    }

    fn commit_saves(
        &self,
        saves: &[(&Entry, &[StagedBlob])],
        place: &mut dyn FnMut(&StagedBlob) -> Result<()>,
    ) -> Result<Vec<Committed>> {
        self.write(|tx| {
            let mut tally = Tally::new(tx)?;
            let committed = saves
                .iter()
                .map(|(e, b)| save_in(tx, e, b, place, &mut tally))
                .collect::<Result<Vec<_>>>()?;
            tally.write(tx)?;
            Ok(committed)
        })
    }

    fn apply_accesses(&self, accesses: &[Access]) -> Result<()> {
        if accesses.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let (mut hits, mut misses, mut saved, mut remote) = (0, 0, 0, 0i64);
            // Per task: (hits, misses, time saved), written once per task below.
            let mut per_task: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
            for a in accesses {
                match a {
                    Access::Hit { id, at_ms, duration_ms } => {
                        let task: Option<String> = tx
                            .prepare_cached(
                                "UPDATE entries SET last_access_ms = max(last_access_ms, created_ms, ?2),
                                    access_count = access_count + 1
                                 WHERE substr(id, 1, 4) = substr(?1, 1, 4) AND id = ?1
                                 RETURNING task",
                            )?
                            .query_row(params![hex_value(id), at_ms], |r| r.get(0))
                            .optional()?;
                        hits += 1;
                        saved += duration_ms.unwrap_or(0);
                        let t = per_task.entry(task.unwrap_or_default()).or_default();
                        t.0 += 1;
                        t.2 += duration_ms.unwrap_or(0);
                    }
                    Access::Miss { task } => {
                        misses += 1;
                        per_task.entry(task.clone()).or_default().1 += 1;
                    }
                    Access::RemoteHit => remote += 1,
                }
            }
            if remote > 0 {
                // A counter newer than the schema's first rows: made on first use.
                tx.prepare_cached(
                    "INSERT INTO counters(name, value) VALUES('remote_hits', ?1)
                     ON CONFLICT(name) DO UPDATE SET value = value + ?1",
                )?
                .execute(params![remote])?;
            }
            bump(tx, "hits", hits)?;
            bump(tx, "misses", misses)?;
            bump(tx, "time_saved_ms", saved)?;
            for (task, (h, m, s)) in per_task {
                tx.prepare_cached(
                    "INSERT INTO task_counters(task, hits, misses, time_saved_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT(task) DO UPDATE SET hits = hits + excluded.hits,
                        misses = misses + excluded.misses,
                        time_saved_ms = time_saved_ms + excluded.time_saved_ms",
                )?
                .execute(params![task, h, m, s])?;
            }
            Ok(())
        })
    }

    fn remove_keys(&self, keys: &[String], count_as: Option<&str>) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            for k in keys {
                if let (Some(e), _) = remove_key(tx, k, &mut r.unreferenced)? {
                    r.entries.push(e);
                }
            }
            if let Some(c) = count_as {
                bump(tx, c, r.entries.len() as i64)?;
            }
            Ok(r)
        })
    }

    fn forget_corrupt_blob(&self, digest: &Digest) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            retire_users(tx, digest, &mut r)?;
            // The corrupt blob itself is quarantined by the caller, not unlinked.
            r.unreferenced.retain(|x| x != digest);
            // The blob row goes even if no entry referenced it any more.
            if let Some(stored) = tx
                .prepare_cached("DELETE FROM blobs WHERE digest = ?1 RETURNING stored_size")?
                .query_row([digest_value(digest)], |r| r.get::<_, i64>(0))
                .optional()?
            {
                bump(tx, "stored_bytes", -stored)?;
            }
            bump(tx, "corrupt", 1)?;
            Ok(r)
        })
    }

    fn list(&self, f: &Filter) -> Result<Vec<Entry>> {
        let mut sql = String::new();
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let every_run = f.all && f.status.is_none();
        if !f.all && f.status.is_none() {
            sql.push_str(" AND live = 1");
        }
        if let Some(s) = f.status {
            args.push(s.name().to_owned().into());
            sql.push_str(&format!(" AND status = ?{}", args.len()));
            // Runs that are not live have an index of their own (live ones are most runs, and
            // are listed through `entries_live_created`).
            sql.push_str(if s == Status::Live { " AND live = 1" } else { " AND live = 0" });
        }
        if let Some(t) = &f.task {
            args.push(t.clone().into());
            sql.push_str(&format!(" AND task = ?{}", args.len()));
        }
        if let Some(since) = f.since_ms {
            args.push(since.into());
            sql.push_str(&format!(" AND created_ms >= ?{}", args.len()));
        }
        if let Some((k, v)) = &f.tag {
            args.push(k.clone().into());
            let kn = args.len();
            match v {
                // Through the tags index: only runs that carry the tag are looked at.
                Some(v) => {
                    args.push(v.clone().into());
                    sql.push_str(&format!(
                        " AND rowid IN (SELECT run FROM tags WHERE name = ?{kn} AND value = ?{})",
                        args.len()
                    ));
                }
                None => sql
                    .push_str(&format!(" AND rowid IN (SELECT run FROM tags WHERE name = ?{kn})")),
            }
        }
        // Runs saved within one millisecond are listed in the order they were committed.
        let limit = f.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
        let order = format!(" ORDER BY created_ms DESC, rowid DESC{limit}");
        let select =
            |cond: &str| format!("SELECT {ENTRY_COLS} FROM entries WHERE 1=1{cond}{order}");
        let sql = if every_run {
            // Live runs and the others each through their own index, merged.
            format!(
                "SELECT * FROM ({}) UNION ALL SELECT * FROM ({}) ORDER BY 9 DESC, 15 DESC{limit}",
                select(&format!("{sql} AND live = 1")),
                select(&format!("{sql} AND live = 0"))
            )
        } else {
            select(&sql)
        };
        let rows: Vec<Decoded> = self.with(|c| {
            c.prepare(&sql)?.query_map(rusqlite::params_from_iter(args), entry_from_row)?.collect()
        })?;
        Ok(sound(rows))
    }

    fn resolve_prefix(&self, prefix: &str) -> Result<(Vec<String>, Vec<String>)> {
        // Ids and keys stored as bytes: through the index of their first 4 bytes, between the
        // prefix filled up with 0s and with fs; those stored as text, as text.
        let hex = prefix.len() <= 64 && super::packed::is_lower_hex(prefix);
        let head = &prefix[..prefix.len().min(8)];
        let bound = |fill: char| {
            let padded: String = head.chars().chain(std::iter::repeat(fill)).take(8).collect();
            hex::decode(padded).unwrap_or_default()
        };
        let (lo, hi) = if hex { (bound('0'), bound('f')) } else { (vec![1], vec![0]) };
        let matching = |column: &str, distinct: &str| {
            format!(
                "SELECT {distinct}{column} FROM entries
                 WHERE substr({column}, 1, 4) BETWEEN ?1 AND ?2
                    AND substr(lower(hex({column})), 1, ?3) = ?4
                 UNION ALL
                 SELECT {distinct}{column} FROM entries
                 WHERE substr({column}, 1, 4) BETWEEN substr(?4, 1, 4) AND substr(?4, 1, 4) || '~'
                    AND typeof({column}) = 'text' AND {column} >= ?4 AND {column} < ?4 || '~'
                 LIMIT 5"
            )
        };
        self.with(|c| {
            let args = params![lo, hi, prefix.len() as i64, prefix];
            let ids = c
                .prepare_cached(&matching("id", ""))?
                .query_map(args, |r| hex_col(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut keys: Vec<String> = c
                .prepare_cached(&matching("key", "DISTINCT "))?
                .query_map(args, |r| hex_col(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
            // One key may match in both arms.
            keys.sort();
            keys.dedup();
            Ok((ids, keys))
        })
    }

    fn run(&self, id: &str) -> Result<Option<Entry>> {
        let row = self.with(|c| {
            c.prepare_cached(&format!("SELECT {ENTRY_COLS} FROM entries WHERE {}", is("id", 1)))?
                .query_row([hex_value(id)], entry_from_row)
                .optional()
        })?;
        decoded(row)
    }

    fn history(&self, key: &str) -> Result<Vec<Entry>> {
        let rows: Vec<Decoded> = self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM entries WHERE {} ORDER BY created_ms, rowid",
                is("key", 1)
            ))?
            .query_map([hex_value(key)], entry_from_row)?
            .collect()
        })?;
        Ok(sound(rows))
    }

    fn evict(&self, now_ms: i64, target_bytes: Option<u64>, limit: usize) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            let mut stored: i64 =
                tx.query_row("SELECT value FROM counters WHERE name = 'stored_bytes'", [], |r| {
                    r.get(0)
                })?;
            let over = |stored: i64| target_bytes.is_none_or(|t| stored > t as i64);
            let mut expired: usize = 0;
            let mut evicted: usize = 0;
            let expired_keys: Vec<String> = tx
                .prepare(
                    "SELECT key FROM entries WHERE live = 1 AND expires_ms IS NOT NULL
                     AND expires_ms <= ?1 ORDER BY expires_ms LIMIT ?2",
                )?
                .query_map(params![now_ms, limit as i64], |r| hex_col(r, 0))?
                .collect::<rusqlite::Result<_>>()?;
            for k in expired_keys {
                if !over(stored) || expired >= limit {
                    break;
                }
                let (e, freed) = remove_key(tx, &k, &mut r.unreferenced)?;
                stored -= freed as i64;
                expired += 1;
                r.entries.extend(e);
            }
            if target_bytes.is_some() {
                while over(stored) && expired + evicted < limit {
                    let batch: Vec<String> = tx
                        .prepare_cached(
                            "SELECT key FROM entries WHERE live = 1
                             ORDER BY max(last_access_ms, created_ms), created_ms LIMIT 64",
                        )?
                        .query_map([], |r| hex_col(r, 0))?
                        .collect::<rusqlite::Result<_>>()?;
                    if batch.is_empty() {
                        break;
                    }
                    for k in batch {
                        if !over(stored) || expired + evicted >= limit {
                            break;
                        }
                        let (e, freed) = remove_key(tx, &k, &mut r.unreferenced)?;
                        stored -= freed as i64;
                        evicted += 1;
                        r.entries.extend(e);
                    }
                }
            }
            bump(tx, "expired", expired as i64)?;
            bump(tx, "evictions", evicted as i64)?;
            Ok(r)
        })
    }

    fn counters(&self) -> Result<Counters> {
        self.with(|c| {
            let mut out = Counters::default();
            for (name, v) in named_values(c, "SELECT name, value FROM counters")? {
                out.set(&name, v)
            }
            Ok(out)
        })
    }

    fn remove_run(&self, id: &str) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            let row: Option<(String, bool)> = tx
                .prepare_cached(&format!("SELECT key, live FROM entries WHERE {}", is("id", 1)))?
                .query_row([hex_value(id)], |r| Ok((hex_col(r, 0)?, r.get(1)?)))
                .optional()?;
            let Some((key, live)) = row else { return Ok(r) };
            if live {
                r.entries.extend(sound(live_entry(tx, &key)?));
                unref_key(tx, &key, &mut r.unreferenced)?;
            }
            tx.prepare_cached(&format!("DELETE FROM entries WHERE {}", is("id", 1)))?
                .execute([hex_value(id)])?;
            // The runs of the key that followed it no longer name it as their parent.
            let children: Vec<(i64, Decoded)> = tx
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLS} FROM entries WHERE {}",
                    is("key", 1)
                ))?
                .query_map([hex_value(&key)], |r| Ok((r.get(14)?, entry_from_row(r)?)))?
                .collect::<rusqlite::Result<_>>()?;
            for (rowid, child) in children {
                let Ok(mut child) = child else { continue };
                if child.parent.as_deref() != Some(id) {
                    continue;
                }
                child.parent = None;
                let (doc, shared) = entry_doc(tx, &child)?;
                tx.prepare_cached("UPDATE entries SET doc = ?2, shared = ?3 WHERE rowid = ?1")?
                    .execute(params![rowid, doc, shared])?;
            }
            Ok(r)
        })
    }

    fn task_stats(&self) -> Result<Vec<crate::entry::TaskStats>> {
        self.with(|c| {
            c.prepare(
                "SELECT task, sum(entries), sum(bytes), sum(hits), sum(misses), sum(saved) FROM (
                    SELECT task, count(*) AS entries,
                           coalesce(sum(size), 0) AS bytes,
                           0 AS hits, 0 AS misses, 0 AS saved
                      FROM entries WHERE live = 1 GROUP BY task
                    UNION ALL
                    SELECT task, 0, 0, hits, misses, time_saved_ms FROM task_counters
                 ) GROUP BY task ORDER BY task",
            )?
            .query_map([], |r| {
                Ok(crate::entry::TaskStats {
                    task: r.get(0)?,
                    entries: r.get(1)?,
                    bytes: r.get(2)?,
                    hits: r.get(3)?,
                    misses: r.get(4)?,
                    time_saved_ms: r.get(5)?,
                })
            })?
            .collect()
        })
    }

    fn reset_counters(&self) -> Result<()> {
        self.write(|tx| {
            tx.execute_batch(
                "UPDATE counters SET value = 0 WHERE name <> 'stored_bytes';
                 DELETE FROM task_counters;",
            )?;
            Ok(())
        })
    }

    fn census(&self) -> Result<crate::entry::Census> {
        self.with(|c| {
            let mut out = crate::entry::Census::default();
            for (name, v) in named_values(c, "SELECT name, value FROM census")? {
                out.set(&name, v);
            }
            Ok(out)
        })
    }

    fn live_entries(&self) -> Result<i64> {
        self.with(|c| c.query_row("SELECT value FROM census WHERE name = 'live'", [], |r| r.get(0)))
    }

    fn blobs(&self) -> Result<Vec<BlobInfo>> {
        let rows: Vec<BlobRow> = self.with(|c| {
            c.prepare("SELECT digest, size, stored_size, codec, data FROM blobs ORDER BY digest")?
                .query_map([], |r| Ok(blob_from_row(r)))?
                .collect()
        })?;
        Ok(rows.into_iter().filter_map(|r| r.ok()).collect())
    }

    fn blobs_after(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>> {
        let rows: Vec<BlobRow> = self.with(|c| {
            c.prepare_cached(
                "SELECT digest, size, stored_size, codec, data FROM blobs WHERE digest > ?1
                 ORDER BY digest LIMIT ?2",
            )?
            .query_map(
                params![
                    // '' sorts before every digest, text or bytes.
                    after.map_or(rusqlite::types::Value::Text(String::new()), shown_digest_value),
                    limit as i64
                ],
                |r| Ok(blob_from_row(r)),
            )?
            .collect()
        })?;
        Ok(rows.into_iter().filter_map(|r| r.ok()).collect())
    }

    fn live_keys_after(&self, after: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT rowid, key FROM entries WHERE rowid > ?1 AND live = 1
                 ORDER BY rowid LIMIT ?2",
            )?
            .query_map(params![after, limit as i64], |r| Ok((r.get(0)?, hex_col(r, 1)?)))?
            .collect()
        })
    }

    fn has_blob(&self, digest: &Digest) -> Result<bool> {
        self.with(|c| {
            c.prepare_cached("SELECT EXISTS(SELECT 1 FROM blobs WHERE digest = ?1)")?
                .query_row([digest_value(digest)], |r| r.get(0))
        })
    }

    fn stale_keys(&self, stale: &crate::store::Stale, limit: usize) -> Result<Vec<String>> {
        use crate::store::Stale;
        self.with(|c| match stale {
            Stale::AccessedBefore(ms) => c
                .prepare_cached(
                    "SELECT key FROM entries WHERE live = 1
                     AND max(last_access_ms, created_ms) <= ?1
                     ORDER BY max(last_access_ms, created_ms) LIMIT ?2",
                )?
                .query_map(params![ms, limit as i64], |r| hex_col(r, 0))?
                .collect(),
            Stale::CreatedBefore { before_ms, task, except } => {
                // Through the listing indexes: only rows old enough are looked at.
                let mut args: Vec<rusqlite::types::Value> = vec![(*before_ms).into()];
                let mut sql = "SELECT key FROM entries WHERE live = 1 AND created_ms <= ?1
                    AND ttl_explicit = 0"
                    .to_owned();
                if let Some(t) = task {
                    args.push(t.clone().into());
                    sql.push_str(&format!(" AND task = ?{}", args.len()));
                }
                for t in except {
                    args.push(t.clone().into());
                    sql.push_str(&format!(" AND task <> ?{}", args.len()));
                }
                sql.push_str(&format!(" ORDER BY created_ms LIMIT {limit}"));
                c.prepare(&sql)?
                    .query_map(rusqlite::params_from_iter(args), |r| hex_col(r, 0))?
                    .collect()
            }
        })
    }

    fn damaged(&self) -> Result<Damaged> {
        self.with(|c| {
            let mut out = Damaged::default();
            let mut stmt = c.prepare(&format!("SELECT {ENTRY_COLS}, live FROM entries"))?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if let Err((id, why)) = entry_from_row(row)? {
                    let key = hex_text(row.get_ref(5)?).unwrap_or_default();
                    let live = row.get::<_, i64>(LIVE_AFTER_ENTRY_COLS).unwrap_or(0) == 1;
                    out.entries.push((id, key, live, why));
                }
            }
            let mut stmt = c.prepare("SELECT digest, size, stored_size, codec, data FROM blobs")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if let Err(bad) = blob_from_row(row) {
                    out.blobs.push(bad);
                }
            }
            Ok(out)
        })
    }

    fn drop_damaged_run(&self, id: &str) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            let row: Option<(String, bool)> = tx
                .prepare_cached(&format!(
                    "DELETE FROM entries WHERE {} RETURNING key, live = 1",
                    is("id", 1)
                ))?
                .query_row([hex_value(id)], |r| Ok((hex_col(r, 0)?, r.get(1)?)))
                .optional()?;
            if let Some((key, true)) = row {
                unref_key(tx, &key, &mut r.unreferenced)?;
                bump(tx, "corrupt", 1)?;
            }
            Ok(r)
        })
    }

    fn drop_damaged_blob(&self, digest: &str) -> Result<Removed> {
        self.write(|tx| {
            let mut r = Removed::default();
            // A digest that does not even parse names no entry's blob.
            if let Ok(d) = digest.parse::<Digest>() {
                let retired = retire_users(tx, &d, &mut r)?;
                bump(tx, "corrupt", retired)?;
            }
            tx.prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
                .execute([shown_digest_value(digest)])?;
            Ok(r)
        })
    }

    fn clear(&self) -> Result<u64> {
        self.write(|tx| {
            let live: i64 =
                tx.query_row("SELECT value FROM census WHERE name = 'live'", [], |r| r.get(0))?;
            tx.execute_batch(
                "DELETE FROM entries; DELETE FROM blobs; DELETE FROM failures;
                 DELETE FROM shared_bodies; DELETE FROM tags;
                 UPDATE counters SET value = 0 WHERE name = 'stored_bytes';",
            )?;
            Ok(live.max(0) as u64)
        })
    }

    fn record_failure(&self, key: &str, message: &str, at_ms: i64) -> Result<()> {
        self.write(|tx| {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO failures(key, message, at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, message, at_ms])?;
            Ok(())
        })
    }

    fn record_failed_run(&self, entry: &Entry, message: &str) -> Result<Entry> {
        self.write(|tx| {
            let latest: Option<String> = tx
                .prepare_cached(&format!(
                    "SELECT id FROM entries WHERE {} ORDER BY created_ms DESC, rowid DESC LIMIT 1",
                    is("key", 1)
                ))?
                .query_row([hex_value(&entry.key)], |r| hex_col(r, 0))
                .optional()?;
            let mut entry = entry.clone();
            entry.parent = latest;
            entry.status = Status::Failed;
            let (doc, shared) = entry_doc(tx, &entry)?;
            tx.prepare_cached(
                "INSERT INTO entries(id, key, live, status, task, created_ms, last_access_ms,
                        access_count, expires_ms, doc, shared, size, ttl_explicit)
                     VALUES (?1, ?2, 0, 'failed', ?3, ?4, 0, 0, NULL, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                hex_value(&entry.id),
                hex_value(&entry.key),
                entry.task,
                entry.created_ms,
                doc,
                shared,
                entry.size as i64,
                entry.ttl_explicit
            ])?;
            insert_tags(tx, tx.last_insert_rowid(), &entry)?;
            tx.prepare_cached(
                "INSERT OR REPLACE INTO failures(key, message, at_ms) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![entry.key, message, entry.created_ms])?;
            Ok(entry)
        })
    }

    fn failure(&self, key: &str) -> Result<Option<(String, i64)>> {
        self.with(|c| {
            c.prepare_cached("SELECT message, at_ms FROM failures WHERE key = ?1")?
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
    }
}
