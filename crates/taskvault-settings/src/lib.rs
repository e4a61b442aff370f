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
}

/// Where `init` writes and discovery looks: `.taskvault/config.yaml`.
pub const CONFIG_REL: &str = ".taskvault/config.yaml";

/// Resolves the settings for the current directory.
pub fn resolve(o: &Overrides) -> Result<Resolved> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
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
    settings.vault_dir = match o.dir.clone().or_else(|| env_path("TASKVAULT_DIR")) {
        Some(d) => absolute(&cwd, &d),
        None => absolute(&root, &expand_home(&file.cache_dir)?),
    };
    if o.identity {
        settings.host = hostname();
        settings.user =
            std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_default();
    }
    let log_level = match o.verbose {
        0 => std::env::var("TASKVAULT_LOG").unwrap_or_else(|_| file.log_level.clone()),
        1 => "info".into(),
        2 => "debug".into(),
        _ => "trace".into(),
    };
    Ok(Resolved { settings, config_path, log_level })
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
