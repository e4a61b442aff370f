//! The configuration file (the seed's `.taskvault/config.yaml` schema) and the resolved settings
//! the engine runs with. Parsing is strict: unknown keys and impossible values are errors.
//! Every key, with its default, is documented in `docs/config.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::digest::Algorithm;
use crate::error::{Error, Result};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// The config file as written by users. Field docs give the defaults.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Where the vault lives. Relative paths are resolved against the project root (the directory
    /// holding `.taskvault/`). Default `.taskvault/cache`.
    #[serde(default = "default_cache_dir")]
    pub cache_dir: String,
    /// Global size cap in GiB (1024^3 bytes) of stored blob bytes; 0 means no cap. Default 10.
    #[serde(default = "default_max_size_gb")]
    pub max_size_gb: f64,
    /// `blake3` (default) or `sha256`.
    #[serde(default)]
    pub hash_algorithm: Algorithm,
    /// `debug`, `info` (default), `warn` or `error`: what the CLI logs to stderr with `-v`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Port of the HTTP server (`taskvault serve`, a later release). Default 9999.
    #[serde(default = "default_port")]
    pub service_port: u16,
    /// Namespace that prefixes every key, so teams sharing a vault do not collide. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// After the cap is exceeded, eviction frees space down to this percentage of the cap.
    /// Default 80.
    #[serde(default = "default_low_water")]
    pub low_water_percent: u8,
    /// Outputs up to this many bytes are stored inside the metadata database. Default 16384.
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
    /// `text` (the seed's line format, default) or `jsonl`.
    #[serde(default)]
    pub audit_format: AuditFormat,
    /// The audit log is rotated when it passes this size. Default 10 MiB. Three old files are kept.
    #[serde(default = "default_audit_max")]
    pub audit_max_bytes: u64,
    /// With a metadata store several machines share (PostgreSQL, Redis), the audit trail it
    /// keeps for all of them holds at most this many records; older ones go. Default 1000000.
    #[serde(default = "default_audit_max_records")]
    pub audit_max_records: u64,
    /// Per-task policies; `default` applies to tasks without their own entry.
    #[serde(default = "default_policies")]
    pub policies: BTreeMap<String, PolicyFile>,
    /// A `taskvault serve` to share results with (the remote tier). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteFile>,
    /// Where metadata and blob bytes are kept. Default: SQLite and the local disk, inside
    /// `cache_dir`.
    #[serde(default, skip_serializing_if = "StorageFile::is_default")]
    pub storage: StorageFile,
}

/// The `storage:` block.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    /// `sqlite` (default): the database in `cache_dir`. Or a PostgreSQL URL,
    /// `postgres://user@host:port/database?schema=NAME` (any libpq parameter; `schema` keeps the
    /// tables in a schema of their own).
    #[serde(default = "default_metadata")]
    pub metadata: String,
    /// `local` (default): files under `cache_dir`. Or an object store URL, one of the OpenDAL
    /// services this build serves: `s3://bucket/prefix?region=R&endpoint=URL`, `gcs://...`,
    /// `azblob://...`; credentials come from the service's usual environment variables.
    #[serde(default = "default_blobs")]
    pub blobs: String,
    /// MiB of blobs read from (or written to) an object store kept on the local disk, in
    /// `cache_dir/blob-cache`, so a blob read again is not fetched again; 0: none.
    #[serde(default = "default_cache_mb")]
    pub cache_mb: u64,
}

impl Default for StorageFile {
    fn default() -> Self {
        StorageFile {
            metadata: default_metadata(),
            blobs: default_blobs(),
            cache_mb: default_cache_mb(),
        }
    }
}

impl StorageFile {
    fn is_default(&self) -> bool {
        *self == StorageFile::default()
    }
}

fn default_metadata() -> String {
    "sqlite".into()
}
fn default_blobs() -> String {
    "local".into()
}
fn default_cache_mb() -> u64 {
    1024
}

/// The `remote:` block: the server, how to authenticate, and how to behave when it fails. The
/// engine does not use it; front ends resolve it (see `taskvault-settings`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    /// `http://host:port` (or https) of the server.
    pub url: String,
    /// The environment variable holding the token (never the token itself). Default
    /// `TASKVAULT_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
    /// Look results up on the server but never upload.
    #[serde(default)]
    pub read_only: bool,
    /// Fail instead of carrying on with the local vault when the server cannot be used.
    #[serde(default)]
    pub required: bool,
    /// Seconds to wait for a connection. Default 2.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: f64,
    /// Seconds a request may wait for the server's next bytes. Default 30.
    #[serde(default = "default_remote_timeout")]
    pub timeout_seconds: f64,
    /// Seconds a claim on the server lasts unless renewed (renewed every third of it while the
    /// work runs): how long other machines wait for a claimant that died. Default 15.
    #[serde(default = "default_lease")]
    pub lease_seconds: f64,
}

fn default_token_env() -> String {
    "TASKVAULT_TOKEN".into()
}
fn default_connect_timeout() -> f64 {
    2.0
}
fn default_remote_timeout() -> f64 {
    30.0
}
fn default_lease() -> f64 {
    15.0
}

/// One `policies.<task>` block. A field left out falls back to the `default` policy.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Entries expire this many seconds after they are saved; 0 means never.
    pub ttl_seconds: Option<i64>,
    /// Largest output (all files together, uncompressed) an entry may hold; 0 means no limit.
    pub max_size_bytes: Option<i64>,
    /// Eviction order; only `lru` is supported.
    pub strategy: Option<String>,
}

/// Audit trail line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFormat {
    #[default]
    Text,
    Jsonl,
}

fn default_cache_dir() -> String {
    ".taskvault/cache".into()
}
fn default_max_size_gb() -> f64 {
    10.0
}
fn default_log_level() -> String {
    "info".into()
}
fn default_port() -> u16 {
    9999
}
fn default_namespace() -> String {
    "default".into()
}
fn default_low_water() -> u8 {
    80
}
fn default_inline_max() -> u64 {
    16 * 1024
}
fn default_audit_max() -> u64 {
    10 << 20
}
fn default_audit_max_records() -> u64 {
    1_000_000
}
fn default_policies() -> BTreeMap<String, PolicyFile> {
    BTreeMap::from([(
        "default".to_owned(),
        PolicyFile {
            ttl_seconds: Some(604_800),
            max_size_bytes: Some(104_857_600),
            strategy: Some("lru".into()),
        },
    )])
}

impl Default for ConfigFile {
    fn default() -> Self {
        yaml_serde::from_str("{}").expect("the empty config is valid")
    }
}

/// The file `taskvault init` writes: the seed's schema, values and comments.
pub const INIT_TEMPLATE: &str = "\
# TaskVault configuration. Every key and its default: docs/config.md
cache_dir: .taskvault/cache
max_size_gb: 10
hash_algorithm: blake3
log_level: info
policies:
  default:
    ttl_seconds: 604800      # 7 days
    max_size_bytes: 104857600 # 100 MB
    strategy: lru
";

impl ConfigFile {
    /// Parses YAML text; errors carry the line and column.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile> {
        let cfg: ConfigFile = if text.trim().is_empty() {
            ConfigFile::default()
        } else {
            yaml_serde::from_str(text)
                .map_err(|e| Error::Config { path: path.to_owned(), message: e.to_string() })?
        };
        cfg.validate(path, text)?;
        Ok(cfg)
    }

    /// The dotted names of the keys a config text sets (`max_size_gb`, `policies.t.ttl_seconds`):
    /// what `taskvault config` reports as coming from the file rather than from the defaults.
    pub fn keys_set(text: &str) -> BTreeSet<String> {
        fn walk(v: &yaml_serde::Value, prefix: &str, out: &mut BTreeSet<String>) {
            if let yaml_serde::Value::Mapping(m) = v {
                for (k, v) in m {
                    let Some(k) = k.as_str() else { continue };
                    let name =
                        if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
                    walk(v, &name, out);
                    out.insert(name);
                }
            }
        }
        let mut out = BTreeSet::new();
        if let Ok(v) = yaml_serde::from_str::<yaml_serde::Value>(text) {
            walk(&v, "", &mut out);
        }
        out
    }

    pub fn load(path: &Path) -> Result<ConfigFile> {
        let text = fs_err::read_to_string(path)
            .map_err(|e| Error::Config { path: path.to_owned(), message: e.to_string() })?;
        ConfigFile::parse(&text, path)
    }

    /// Checks values serde accepted; an error names the line and column of the value.
    fn validate(&self, path: &Path, text: &str) -> Result<()> {
        let bad = |keys: &[&str], message: String| {
            let at = locate(text, keys)
                .map_or(String::new(), |(l, c)| format!(" at line {l} column {c}"));
            Err(Error::Config { path: path.to_owned(), message: format!("{message}{at}") })
        };
        if !self.max_size_gb.is_finite() || self.max_size_gb < 0.0 {
            return bad(
                &["max_size_gb"],
                format!("max_size_gb must be 0 or more, got {}", self.max_size_gb),
            );
        }
        if !(1..=100).contains(&self.low_water_percent) {
            return bad(
                &["low_water_percent"],
                format!(
                    "low_water_percent must be between 1 and 100, got {}",
                    self.low_water_percent
                ),
            );
        }
        if let Err(why) = check_log_level(&self.log_level) {
            return bad(&["log_level"], format!("log_level {why}"));
        }
        if let Some(r) = &self.remote {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return bad(
                    &["remote", "url"],
                    format!("remote.url must start with http:// or https://, got {:?}", r.url),
                );
            }
            for (key, v) in [
                ("timeout_seconds", r.timeout_seconds),
                ("connect_timeout_seconds", r.connect_timeout_seconds),
            ] {
                if !v.is_finite() || v <= 0.0 {
                    return bad(
                        &["remote", key],
                        format!("remote.{key} must be more than 0, got {v}"),
                    );
                }
            }
        }
        let metadata = &self.storage.metadata;
        let redis = crate::store::redis::is_redis_url(metadata);
        if metadata != "sqlite" && !crate::store::postgres::is_postgres_url(metadata) && !redis {
            return bad(
                &["storage", "metadata"],
                format!(
                    "storage.metadata must be sqlite, a PostgreSQL URL (postgres://...) or a \
                     Redis URL (redis://...), got {:?}",
                    crate::store::postgres::shown(metadata)
                ),
            );
        }
        let blobs = &self.storage.blobs;
        if redis && blobs != "local" && blobs != metadata {
            return bad(
                &["storage", "blobs"],
                "with Redis metadata the blobs live in the same Redis: leave storage.blobs out \
                 (or give the same URL)"
                    .into(),
            );
        }
        if blobs != "local" && !crate::store::object::is_object_url(blobs) && blobs != metadata {
            return bad(
                &["storage", "blobs"],
                format!(
                    "storage.blobs must be local or an object store URL ({}://...), got {:?}",
                    crate::store::object::SCHEMES.join("://, "),
                    blobs.split('?').next().unwrap_or(blobs)
                ),
            );
        }
        if self.namespace.is_empty() {
            return bad(&["namespace"], "namespace must not be empty".into());
        }
        for (task, p) in &self.policies {
            let at = |key| ["policies", task.as_str(), key];
            if let Some(t) = p.ttl_seconds.filter(|t| *t < 0) {
                return bad(
                    &at("ttl_seconds"),
                    format!("policies.{task}.ttl_seconds must be 0 or more, got {t}"),
                );
            }
            if let Some(s) = p.max_size_bytes.filter(|s| *s < 0) {
                return bad(
                    &at("max_size_bytes"),
                    format!("policies.{task}.max_size_bytes must be 0 or more, got {s}"),
                );
            }
            if let Some(s) = p.strategy.as_deref().filter(|s| *s != "lru") {
                return bad(
                    &at("strategy"),
                    format!("policies.{task}.strategy {s:?} is not supported (supported: lru)"),
                );
            }
        }
        Ok(())
    }

    /// Resolves the file into engine settings. `root` is the directory relative `cache_dir`
    /// values are resolved against.
    pub fn settings(&self, root: &Path) -> Settings {
        let default = self.policies.get("default").cloned().unwrap_or_default();
        let resolve = |p: &PolicyFile| Policy {
            ttl_seconds: p.ttl_seconds.or(default.ttl_seconds).filter(|t| *t > 0).map(|t| t as u64),
            max_size_bytes: p
                .max_size_bytes
                .or(default.max_size_bytes)
                .filter(|s| *s > 0)
                .map(|s| s as u64),
        };
        let cache_dir = Path::new(&self.cache_dir);
        Settings {
            vault_dir: if cache_dir.is_absolute() {
                cache_dir.to_owned()
            } else {
                root.join(cache_dir)
            },
            algorithm: self.hash_algorithm,
            namespace: self.namespace.clone(),
            max_size_bytes: (self.max_size_gb > 0.0)
                .then(|| ((self.max_size_gb * GIB).round() as u64).max(1)),
            low_water_percent: self.low_water_percent,
            inline_max_bytes: self.inline_max_bytes,
            audit_format: self.audit_format,
            audit_max_bytes: self.audit_max_bytes,
            audit_max_records: self.audit_max_records,
            default_policy: resolve(&default),
            policies: self
                .policies
                .iter()
                .filter(|(k, _)| k.as_str() != "default")
                .map(|(k, v)| (k.clone(), resolve(v)))
                .collect(),
            blobs_url: (self.storage.blobs != "local").then(|| self.storage.blobs.clone()),
            metadata_url: (self.storage.metadata != "sqlite")
                .then(|| self.storage.metadata.clone()),
            blob_cache_bytes: self.storage.cache_mb.saturating_mul(1 << 20),
            metadata_password: None,
            host: String::new(),
            user: String::new(),
        }
    }
}

/// A task's resolved policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `None`: entries never expire.
    pub ttl_seconds: Option<u64>,
    /// `None`: no per-entry limit.
    pub max_size_bytes: Option<u64>,
}

/// Everything the engine needs, resolved by the caller (flags over environment over file over
/// defaults). The engine never reads the environment or guesses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub vault_dir: PathBuf,
    pub algorithm: Algorithm,
    pub namespace: String,
    /// Global cap on stored bytes; `None` means unbounded.
    pub max_size_bytes: Option<u64>,
    pub low_water_percent: u8,
    pub inline_max_bytes: u64,
    pub audit_format: AuditFormat,
    pub audit_max_bytes: u64,
    /// Records a shared metadata store's audit trail keeps, at most.
    pub audit_max_records: u64,
    pub default_policy: Policy,
    pub policies: BTreeMap<String, Policy>,
    /// Blobs in this object store (an OpenDAL URL) instead of under `vault_dir`.
    pub blobs_url: Option<String>,
    /// Metadata in this PostgreSQL database instead of SQLite under `vault_dir`.
    pub metadata_url: Option<String>,
    /// Bytes of object-store blobs kept on the local disk (`vault_dir/blob-cache`); 0: none.
    pub blob_cache_bytes: u64,
    /// The password for a `postgres://` metadata URL that names none (the CLI and SDK take
    /// `PGPASSWORD`, as `psql` does), so a config file needs no secret.
    pub metadata_password: Option<Password>,
    /// Recorded in provenance; the caller fills them in.
    pub host: String,
    pub user: String,
}

impl Settings {
    /// Defaults for a vault at `dir`, as if the config file were empty.
    pub fn for_dir(dir: impl Into<PathBuf>) -> Settings {
        let mut s = ConfigFile::default().settings(Path::new("/"));
        s.vault_dir = dir.into();
        s
    }

    pub fn policy(&self, task: &str) -> &Policy {
        self.policies.get(task).unwrap_or(&self.default_policy)
    }

    /// The policy of `task` in `namespace`: the task's own block, else the namespace's
    /// (`policies: {"ns:NAME": ...}`, how a server sets a team's or a build tool's TTL and
    /// size limit), else the default.
    pub fn policy_for(&self, namespace: &str, task: &str) -> &Policy {
        self.policies
            .get(task)
            .or_else(|| self.policies.get(&format!("ns:{namespace}")))
            .unwrap_or(&self.default_policy)
    }
}

#[cfg(test)]
mod tests;

/// The log levels a config file and `TASKVAULT_LOG` accept: `Ok(level)`, or why not.
pub fn check_log_level(level: &str) -> std::result::Result<&str, String> {
    match level {
        "debug" | "info" | "warn" | "error" | "trace" => Ok(level),
        other => Err(format!("must be debug, info, warn, error or trace, got {other:?}")),
    }
}

/// The (line, column) of the value of a nested mapping key (`["policies", "t", "ttl_seconds"]`)
/// in block-style YAML text, 1-based; `None` if it cannot be found.
fn locate(text: &str, keys: &[&str]) -> Option<(usize, usize)> {
    let mut lines = text.lines().enumerate();
    let mut min_indent = 0;
    let mut found = None;
    for key in keys {
        let (n, line) = lines.by_ref().find(|(_, l)| {
            let body = l.trim_start();
            let indent = l.len() - body.len();
            indent >= min_indent
                && body.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':'))
        })?;
        let indent = line.len() - line.trim_start().len();
        let colon = line[indent..].find(':')? + indent;
        let value = line[colon + 1..].len() - line[colon + 1..].trim_start().len();
        found = Some((n + 1, colon + 2 + value));
        min_indent = indent + 1;
    }
    found
}

/// A secret: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}
