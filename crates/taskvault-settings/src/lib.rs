//! Configuration of a TaskVault front end (the CLI, the Python SDK) is resolved here and only
//! here: explicit arguments, then TASKVAULT_DIR / TASKVAULT_CONFIG / TASKVAULT_LOG, then the
//! config file (`.taskvault/config.yaml` here or above), then defaults. Both front ends call
//! [`resolve`], so a Python `Client()` and the `taskvault` command in the same directory use the
//! same vault.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use taskvault::{ConfigFile, Settings};

/// What the caller was told explicitly (flags, constructor arguments); each beats the
/// environment and the config file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The vault directory (`--dir`, `Client(store_dir=)`).
    pub dir: Option<PathBuf>,
    /// The config file (`--config`).
    pub config: Option<PathBuf>,
    /// More logging: 1 info, 2 debug, 3 or more trace; 0 keeps TASKVAULT_LOG or the file's level.
    pub verbose: u8,
    /// Fill in host and user, for front ends that record provenance.
    pub identity: bool,
}

/// The resolved configuration of one invocation.
#[derive(Debug)]
pub struct Resolved {
    pub settings: Settings,
    /// The config file used, if any.
    pub config_path: Option<PathBuf>,
    pub log_level: String,
    /// Where the vault directory came from.
    pub vault_source: VaultSource,
    /// How the config file was found: `--config`, `TASKVAULT_CONFIG`, or discovered.
    pub config_origin: &'static str,
    /// Where the log level came from.
    pub log_origin: &'static str,
    /// The project root: the directory holding `.taskvault/` (or the config file's own
    /// directory), else the current directory.
    pub root: PathBuf,
    /// `service_port` of the config: where `taskvault serve` listens by default.
    pub service_port: u16,
    /// The server of the remote tier, if one is configured.
    pub remote: Option<Remote>,
    /// `TASKVAULT_TOKENS_FILE`: the server's token file instead of `server/tokens.json` of the
    /// vault (a Kubernetes Secret, say), for `taskvault serve` and `taskvault token`.
    pub tokens_file: Option<PathBuf>,
}

/// The remote tier's server, resolved: the `remote:` block of the config file, with
/// `TASKVAULT_REMOTE` (a URL, or `off`) over its `url`, and the token read from the variable
/// `token_env` names (default `TASKVAULT_TOKEN`).
#[derive(Clone)]
pub struct Remote {
    pub url: String,
    /// The token, if the variable is set (never from the file).
    pub token: Option<String>,
    /// The variable the token comes from.
    pub token_env: String,
    pub read_only: bool,
    pub required: bool,
    pub connect_timeout: std::time::Duration,
    pub timeout: std::time::Duration,
    pub lease: std::time::Duration,
    /// `TASKVAULT_REMOTE` or the config file.
    pub source: &'static str,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("token_env", &self.token_env)
            .field("read_only", &self.read_only)
            .field("required", &self.required)
            .finish_non_exhaustive()
    }
}

/// Resolves the remote tier from the file's block and the environment.
fn remote(file: Option<&taskvault::RemoteFile>) -> Result<Option<Remote>> {
    let env_url = std::env::var("TASKVAULT_REMOTE").ok();
    let (block, source) = match (env_url.as_deref().map(str::trim), file) {
        (Some("" | "off" | "none"), _) => return Ok(None),
        (Some(url), f) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "TASKVAULT_REMOTE must be an http:// or https:// URL (or `off`), got {url:?}"
                );
            }
            let mut b = f.cloned().unwrap_or_else(|| {
                yaml_serde::from_str(&format!("url: {url:?}")).expect("a URL makes a remote block")
            });
            b.url = url.to_owned();
            (b, "TASKVAULT_REMOTE")
        }
        (None, Some(f)) => (f.clone(), "config"),
        (None, None) => return Ok(None),
    };
    let token = std::env::var(&block.token_env).ok().filter(|t| !t.trim().is_empty());
    Ok(Some(Remote {
        url: block.url.trim_end_matches('/').to_owned(),
        token: token.map(|t| t.trim().to_owned()),
        token_env: block.token_env,
        read_only: block.read_only,
        required: block.required,
        connect_timeout: std::time::Duration::from_secs_f64(block.connect_timeout_seconds),
        timeout: std::time::Duration::from_secs_f64(block.timeout_seconds),
        lease: std::time::Duration::from_secs_f64(block.lease_seconds.max(2.0)),
        source,
    }))
}

/// Where the vault directory of an invocation was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultSource {
    /// `--dir` (or `Client(store_dir=)`).
    Flag,
    /// `TASKVAULT_DIR`.
    Env,
    /// `cache_dir` in this config file.
    Config(PathBuf),
    /// The default `cache_dir`, with no config file found.
    Default,
}

impl VaultSource {
    /// Whether the user named the vault directory themselves (its parents may then be made).
    pub fn explicit(&self) -> bool {
        matches!(self, VaultSource::Flag | VaultSource::Env)
    }
}

impl std::fmt::Display for VaultSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultSource::Flag => f.write_str("from --dir"),
            VaultSource::Env => f.write_str("from TASKVAULT_DIR"),
            VaultSource::Config(p) => write!(f, "cache_dir in {}", p.display()),
            VaultSource::Default => {
                write!(f, "the default cache_dir; no {CONFIG_REL} here or above")
            }
        }
    }
}

impl Resolved {
    /// Whether a vault exists at the resolved directory (commands that only read never make
    /// one).
    pub fn vault_exists(&self) -> bool {
        // A vault whose metadata is in a database server is there as soon as it is configured.
        self.settings.metadata_url.is_some() || taskvault::Vault::exists(&self.settings.vault_dir)
    }

    /// The error of a command that only reads, run where there is no vault.
    pub fn no_vault(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "no vault at {} ({}): nothing has been saved here yet",
            self.settings.vault_dir.display(),
            self.vault_source
        )
    }

    /// Checks that a save may make the vault directory: it may when the directory was named
    /// explicitly or lies inside the project; elsewhere (a `cache_dir` in a config file) its
    /// parent must exist, so a mistyped path is an error, not a new tree.
    pub fn check_creatable(&self) -> Result<()> {
        let dir = &self.settings.vault_dir;
        if self.vault_exists() || self.vault_source.explicit() || dir.starts_with(&self.root) {
            return Ok(());
        }
        match dir.parent() {
            Some(parent) if !parent.is_dir() => anyhow::bail!(
                "no vault at {} ({}), and its parent {} does not exist: create it first, or \
                 fix cache_dir",
                dir.display(),
                self.vault_source,
                parent.display()
            ),
            _ => Ok(()),
        }
    }
}

/// Where `init` writes and discovery looks: `.taskvault/config.yaml`.
pub const CONFIG_REL: &str = ".taskvault/config.yaml";

/// Resolves the settings for the current directory.
pub fn resolve(o: &Overrides) -> Result<Resolved> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let config_origin = match (&o.config, env_path("TASKVAULT_CONFIG")) {
        (Some(_), _) => "--config",
        (None, Some(_)) => "TASKVAULT_CONFIG",
        (None, None) => "found here or above",
    };
    let explicit = o.config.clone().or_else(|| env_path("TASKVAULT_CONFIG"));
    let config_path = match explicit {
        Some(p) => {
            let p = absolute(&cwd, &p);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() => {}
                Ok(_) => anyhow::bail!("config file {} is not a regular file", p.display()),
                Err(_) => anyhow::bail!("config file {} does not exist", p.display()),
            }
            Some(p)
        }
        None => discover(&cwd),
    };
    let file = match &config_path {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let root = config_path.as_deref().map_or(cwd.clone(), project_root);
    let mut settings = file.settings(&root);
    let (vault_dir, vault_source) = match (o.dir.clone(), env_path("TASKVAULT_DIR")) {
        (Some(d), _) => (absolute(&cwd, &d), VaultSource::Flag),
        (None, Some(d)) => (absolute(&cwd, &d), VaultSource::Env),
        (None, None) => (
            absolute(&root, &expand_home(&file.cache_dir)?),
            config_path.clone().map_or(VaultSource::Default, VaultSource::Config),
        ),
    };
    settings.vault_dir = vault_dir;
    settings.metadata_password =
        std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()).map(taskvault::config::Password);
    if o.identity {
        settings.host = hostname();
        settings.user =
            std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
    }
    let log_origin = match (o.verbose, std::env::var_os("TASKVAULT_LOG")) {
        (1.., _) => "-v",
        (0, Some(_)) => "TASKVAULT_LOG",
        (0, None) => "config",
    };
    let log_level = match o.verbose {
        0 => match std::env::var("TASKVAULT_LOG") {
            // The same values as the file's `log_level`, checked the same way.
            Ok(v) => taskvault::config::check_log_level(&v)
                .map(str::to_owned)
                .map_err(|why| anyhow::anyhow!("TASKVAULT_LOG {why}"))?,
            Err(_) => file.log_level.clone(),
        },
        1 => "info".into(),
        2 => "debug".into(),
        _ => "trace".into(),
    };
    let remote = remote(file.remote.as_ref())?;
    Ok(Resolved {
        settings,
        config_path,
        log_level,
        vault_source,
        root,
        config_origin,
        log_origin,
        service_port: file.service_port,
        remote,
        tokens_file: env_path("TASKVAULT_TOKENS_FILE"),
    })
}

/// One setting as `taskvault config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
    /// Where the value came from: a flag, a variable, the config file (with its path), or the
    /// default.
    pub source: String,
}

/// Every setting in effect for `resolved`, with where each came from.
pub fn explain(resolved: &Resolved) -> Result<Vec<Setting>> {
    let (file, set) = match &resolved.config_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            (ConfigFile::parse(&text, p)?, ConfigFile::keys_set(&text))
        }
        None => (ConfigFile::default(), Default::default()),
    };
    let from_file = |key: &str| match &resolved.config_path {
        Some(p) if set.contains(key) => format!("{}", p.display()),
        _ => "default".to_owned(),
    };
    let mut rows = vec![Setting {
        name: "config".into(),
        value: resolved.config_path.as_ref().map_or("none".into(), |p| p.display().to_string()),
        source: match &resolved.config_path {
            Some(_) => resolved.config_origin.into(),
            None => format!("no {CONFIG_REL} here or above"),
        },
    }];
    rows.push(Setting {
        name: "cache_dir".into(),
        value: resolved.settings.vault_dir.display().to_string(),
        source: match &resolved.vault_source {
            VaultSource::Flag => "--dir".into(),
            VaultSource::Env => "TASKVAULT_DIR".into(),
            VaultSource::Config(_) if set.contains("cache_dir") => from_file("cache_dir"),
            _ => "default".into(),
        },
    });
    let value = serde_json::to_value(&file).context("the config does not serialize")?;
    for (key, v) in value.as_object().into_iter().flatten() {
        match key.as_str() {
            "cache_dir" | "policies" | "remote" | "storage" => continue,
            "log_level" => rows.push(Setting {
                name: key.clone(),
                value: resolved.log_level.clone(),
                source: match resolved.log_origin {
                    "config" => from_file("log_level"),
                    other => other.into(),
                },
            }),
            _ => rows.push(Setting { name: key.clone(), value: show(v), source: from_file(key) }),
        }
    }
    for (name, value) in
        [("metadata", file.storage.metadata.clone()), ("blobs", redact_url(&file.storage.blobs))]
    {
        let name = format!("storage.{name}");
        rows.push(Setting { value, source: from_file(&name), name });
    }
    if let Some(r) = &resolved.remote {
        let from = |key: &str| match r.source {
            "TASKVAULT_REMOTE" if key == "url" => "TASKVAULT_REMOTE".to_owned(),
            _ if set.contains(&format!("remote.{key}")) => from_file(&format!("remote.{key}")),
            _ => "default".to_owned(),
        };
        let token = match &r.token {
            Some(_) => format!("set (from {})", r.token_env),
            None => format!("not set ({} is empty)", r.token_env),
        };
        for (name, value) in [
            ("url", r.url.clone()),
            ("token_env", token),
            ("read_only", r.read_only.to_string()),
            ("required", r.required.to_string()),
            ("connect_timeout_seconds", r.connect_timeout.as_secs_f64().to_string()),
            ("timeout_seconds", r.timeout.as_secs_f64().to_string()),
            ("lease_seconds", r.lease.as_secs_f64().to_string()),
        ] {
            rows.push(Setting { name: format!("remote.{name}"), value, source: from(name) });
        }
    }
    for (task, policy) in value["policies"].as_object().into_iter().flatten() {
        for (field, v) in policy.as_object().into_iter().flatten() {
            if v.is_null() {
                continue;
            }
            let name = format!("policies.{task}.{field}");
            rows.push(Setting { value: show(v), source: from_file(&name), name });
        }
    }
    Ok(rows)
}

/// A store URL as `taskvault config` shows it: the values of query parameters that may hold a
/// secret (`secret_access_key=`, `session_token=`, `account_key=`, ...) replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else { return url.to_owned() };
    let secret = |k: &str| {
        let k = k.to_ascii_lowercase();
        ["secret", "token", "password", "account_key", "credential", "sas"]
            .iter()
            .any(|s| k.contains(s))
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if secret(k) => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn show(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_owned() } else { base.join(p) }
}

/// `.taskvault/config.yaml` in the current directory or the nearest ancestor that has one.
fn discover(cwd: &Path) -> Option<PathBuf> {
    cwd.ancestors().map(|d| d.join(CONFIG_REL)).find(|p| p.is_file())
}

/// Relative `cache_dir` values are resolved against the project root: the directory that holds
/// `.taskvault/`, or the config file's own directory for a config stored elsewhere.
fn project_root(config: &Path) -> PathBuf {
    let dir = config.parent().unwrap_or(Path::new("/"));
    if dir.file_name().is_some_and(|n| n == ".taskvault") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

/// `~` or `~/x` in a config value means the user's home directory (the seed's example uses
/// it); without `HOME` that is an error, never a directory named `~`.
fn expand_home(p: &str) -> Result<PathBuf> {
    let rest = match p.strip_prefix("~/") {
        Some(rest) => rest,
        None if p == "~" => "",
        None => return Ok(PathBuf::from(p)),
    };
    match env_path("HOME") {
        Some(h) => Ok(h.join(rest)),
        None => anyhow::bail!(
            "cache_dir {p:?} starts with ~ but HOME is not set; set HOME, TASKVAULT_DIR or --dir"
        ),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
