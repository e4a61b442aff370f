//! Entries: what a task key maps to (an output manifest plus provenance), and the blobs they use.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::key::InputRecord;
use crate::tree::NodeKind;

/// The shape of an entry's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// One file; restored to a file path.
    File,
    /// A directory tree; restored to a directory path.
    Dir,
    /// In-memory bytes (SDK); restorable to a file too.
    Bytes,
}

/// One node of an output. For `File` and `Bytes` outputs there is a single node with an empty path.
pub type OutputNode = crate::tree::Node;

/// Why an entry is no longer the live one for its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Served for its key.
    Live,
    /// Replaced by a later save of the same key; kept as history.
    Superseded,
    /// One of its blobs failed verification; kept as history, never served.
    Corrupt,
    /// The computation failed: recorded with its error (in `details.error`) as history, no
    /// outputs, never served.
    Failed,
}

impl Status {
    /// The status as every front end spells it (`live`, `superseded`, `corrupt`, `failed`).
    pub fn name(self) -> &'static str {
        match self {
            Status::Live => "live",
            Status::Superseded => "superseded",
            Status::Corrupt => "corrupt",
            Status::Failed => "failed",
        }
    }

    /// The status named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Status> {
        [Status::Live, Status::Superseded, Status::Corrupt, Status::Failed]
            .into_iter()
            .find(|st| st.name() == s)
    }
}

/// A saved run: a key's output manifest and provenance.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The run id: unique per save.
    pub id: String,
    /// The key digest (hex) this run was saved under.
    pub key: String,
    pub namespace: String,
    pub task: String,
    pub status: Status,
    // Fields with `serde(default)` may be left out of a stored document when empty (see
    // `store::sqlite::entry_doc`); every document written before reads as it did.
    #[serde(default)]
    pub inputs: Vec<InputRecord>,
    /// Further key ingredients as (label, value) with values shown as UTF-8 where possible.
    #[serde(default)]
    pub extras: Vec<(String, String)>,
    pub output_kind: OutputKind,
    pub outputs: Vec<OutputNode>,
    /// Uncompressed bytes of all output files.
    pub size: u64,
    pub created_ms: i64,
    #[serde(default)]
    pub last_access_ms: i64,
    #[serde(default)]
    pub access_count: i64,
    /// When the entry stops being served; `None` means never.
    pub expires_ms: Option<i64>,
    /// The TTL was given for this entry (`--ttl`), so the task policy's TTL does not apply.
    #[serde(default)]
    pub ttl_explicit: bool,
    /// How long the original work took, when the saver said so; counted as time saved per hit.
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The run this one replaced, for history.
    pub parent: Option<String>,
    /// Free-form provenance supplied by front ends (command line, source code, arguments).
    #[serde(default)]
    pub details: serde_json::Value,
    /// A recorded console log (a file node whose blob holds it), for wrapped commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<OutputNode>,
    /// The exit code of a wrapped command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What the key was built from beyond the fields above, so that the key can be recomputed
    /// from the entry alone (an import does, before it trusts `key`). `None` in entries saved
    /// before TaskVault recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingredients: Option<Ingredients>,
    /// The output blob the run's own metadata row holds (a tiny output, see `docs/format.md`),
    /// verified against its digest when the row was read; `None` when the blob has a row of its
    /// own. Never part of a document.
    #[serde(skip)]
    pub embedded: Option<BlobInfo>,
}

/// The key ingredients an entry does not otherwise hold: the algorithm and the raw labelled
/// extras (`namespace`, `task` and `inputs` are fields of the entry itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ingredients {
    pub algorithm: crate::digest::Algorithm,
    /// (label, value) in key order; values base64 in the document.
    #[serde(with = "b64_pairs")]
    pub extras: Vec<(String, Vec<u8>)>,
}

mod b64_pairs {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[(String, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let pairs: Vec<(&str, String)> =
            v.iter().map(|(l, b)| (l.as_str(), STANDARD.encode(b))).collect();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let pairs: Vec<(String, String)> = Vec::deserialize(d)?;
        pairs
            .into_iter()
            .map(|(l, b)| STANDARD.decode(b).map(|b| (l, b)).map_err(serde::de::Error::custom))
            .collect()
    }
}

impl Entry {
    /// The one output node of an entry whose only blob is that node's (a file or bytes output,
    /// no console log): what a small output kept in the run's own row belongs to.
    pub fn sole_output(&self) -> Option<&OutputNode> {
        match (self.blob_digests().as_slice(), self.outputs.as_slice(), &self.console) {
            ([d], [node], None) if node.digest == Some(*d) => Some(node),
            _ => None,
        }
    }

    /// The blob `digest` if this run's own row holds it ([`Entry::embedded`]).
    pub fn embedded_blob(&self, digest: &Digest) -> Option<&BlobInfo> {
        self.embedded.as_ref().filter(|b| b.digest == *digest)
    }

    /// Distinct digests of the blobs this entry needs.
    pub fn blob_digests(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self
            .outputs
            .iter()
            .chain(&self.console)
            .filter(|n| n.kind == NodeKind::File)
            .filter_map(|n| n.digest)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The key digest recomputed from the entry's own ingredients (`None` if it lacks them, or
    /// they do not form a key). An entry whose `key` differs from this answers another key.
    pub fn recomputed_key(&self) -> Option<Digest> {
        let ing = self.ingredients.as_ref()?;
        let key = crate::key::TaskKey::new(
            ing.algorithm,
            &self.namespace,
            &self.task,
            self.inputs.clone(),
            ing.extras.clone(),
        )
        .ok()?;
        Some(key.digest())
    }

    /// Whether this entry was saved for `key`: the same key digest, and, where the entry records
    /// them, the same ingredients. A row or hot record that fails this is never served.
    pub fn answers(&self, key: &crate::key::TaskKey) -> bool {
        let same_inputs = || {
            self.inputs.len() == key.inputs.len()
                && self
                    .inputs
                    .iter()
                    .zip(&key.inputs)
                    .all(|(a, b)| a.kind == b.kind && a.digest == b.digest)
        };
        self.key == key.digest().hex()
            && self.task == key.task
            && self.namespace == key.namespace
            && same_inputs()
            && self
                .ingredients
                .as_ref()
                .is_none_or(|i| i.algorithm == key.algorithm && i.extras == key.extras)
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// How a blob's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    Raw,
    Zstd,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::Zstd => "zstd",
        }
    }
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "raw" => Some(Codec::Raw),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A blob's metadata row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Digest,
    /// Uncompressed size.
    pub size: u64,
    /// Bytes as stored (after compression).
    pub stored_size: u64,
    pub codec: Codec,
    /// Stored bytes when the blob lives inside the metadata database.
    pub inline: Option<Vec<u8>>,
}

/// Counters kept by the metadata store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub hits: i64,
    pub misses: i64,
    pub saves: i64,
    pub evictions: i64,
    pub corrupt: i64,
    pub expired: i64,
    pub time_saved_ms: i64,
    /// Stored bytes of all blobs (what the size cap limits).
    pub stored_bytes: i64,
    /// Local misses answered by the remote tier's server (each also a local hit once fetched).
    pub remote_hits: i64,
}

impl Counters {
    /// Sets the counter a metadata store names `name` (its row name); other names are ignored.
    pub fn set(&mut self, name: &str, v: i64) {
        match name {
            "hits" => self.hits = v,
            "misses" => self.misses = v,
            "saves" => self.saves = v,
            "evictions" => self.evictions = v,
            "corrupt" => self.corrupt = v,
            "expired" => self.expired = v,
            "time_saved_ms" => self.time_saved_ms = v,
            "stored_bytes" => self.stored_bytes = v,
            "remote_hits" => self.remote_hits = v,
            _ => {}
        }
    }
}

/// What the metadata store holds, counted: runs of every status and blob rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Every recorded run: live entries, their history, failed runs.
    pub runs: i64,
    pub failed_runs: i64,
    /// Distinct stored blobs (outputs are deduplicated by digest).
    pub blobs: i64,
    /// Blobs small enough to live in the database, and their stored bytes.
    pub inline_blobs: i64,
    pub inline_bytes: i64,
    /// Outputs small enough to live in their run's own row (one per run, not deduplicated),
    /// and their bytes.
    pub small_outputs: i64,
    pub small_bytes: i64,
}

impl Census {
    /// Sets the count a store keeps under `name` (its census row or field); other names are
    /// not counts of the census.
    pub fn set(&mut self, name: &str, value: i64) {
        match name {
            "runs" => self.runs = value,
            "failed_runs" => self.failed_runs = value,
            "blobs" => self.blobs = value,
            "inline_blobs" => self.inline_blobs = value,
            "inline_bytes" => self.inline_bytes = value,
            "small_outputs" => self.small_outputs = value,
            "small_bytes" => self.small_bytes = value,
            _ => {}
        }
    }
}

/// One task's share of the vault: its live entries and their bytes (uncompressed), and the
/// lookups counted for it since the counters were last reset.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskStats {
    pub task: String,
    pub entries: i64,
    pub bytes: i64,
    pub hits: i64,
    pub misses: i64,
    pub time_saved_ms: i64,
}

/// A selection of entries for `log`, `export`, `invalidate`.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub task: Option<String>,
    /// (key, value); a `None` value matches any value of the key.
    pub tag: Option<(String, Option<String>)>,
    pub status: Option<Status>,
    pub since_ms: Option<i64>,
    /// Include superseded and corrupt runs as well as live entries.
    pub all: bool,
    pub limit: Option<usize>,
}

impl Filter {
    /// A tag selection as written on a command line or a query: `k` (any value) or `k=v`.
    pub fn tag_selector(t: &str) -> (String, Option<String>) {
        match t.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (t.to_owned(), None),
        }
    }

    /// Whether `e` is selected by the task, tag, status and time conditions (`limit` aside).
    pub fn admits(&self, e: &Entry) -> bool {
        let status_ok = match self.status {
            Some(s) => e.status == s,
            None => self.all || e.status == Status::Live,
        };
        let tag_ok = self.tag.as_ref().is_none_or(|(k, v)| match (e.tags.get(k), v) {
            (Some(have), Some(want)) => have == want,
            (Some(_), None) => true,
            (None, _) => false,
        });
        status_ok
            && tag_ok
            && self.task.as_ref().is_none_or(|t| &e.task == t)
            && self.since_ms.is_none_or(|s| e.created_ms >= s)
    }
}
