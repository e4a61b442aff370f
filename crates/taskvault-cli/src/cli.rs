//! Every command and flag of `taskvault`, in one table. `docs/cli.md` describes them for users.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod fast;

/// TaskVault: a content-addressed result cache for expensive, repeatable work.
///
/// Exit codes: 0 hit or success, 1 miss (or problems found by `verify`), 2 error.
#[derive(Debug, PartialEq, Parser)]
#[command(name = "taskvault", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// Vault directory (overrides TASKVAULT_DIR and the config's cache_dir).
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Config file (overrides TASKVAULT_CONFIG; default: .taskvault/config.yaml here or above).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON on stdout (`run` writes it on stderr instead of its status
    /// line: stdout is the command's).
    #[arg(long, global = true)]
    pub json: bool,
    /// More logs on stderr (-v info, -vv debug); overrides TASKVAULT_LOG and log_level.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Never show progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, PartialEq, Subcommand)]
pub enum Command {
    /// Write .taskvault/config.yaml with the defaults.
    #[command(
        after_help = "Examples:\n  taskvault init             # .taskvault/config.yaml with the defaults, and a .gitignore"
    )]
    Init {
        /// Overwrite an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// The seed's cache commands: save, get, stats.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// List entries (newest first).
    #[command(
        after_help = "Examples:\n  taskvault log -n 5\n  taskvault log --task build --since 1d\n  taskvault log --all --status failed"
    )]
    Log(LogArgs),
    /// Show one entry: inputs, outputs, provenance.
    #[command(
        after_help = "Examples:\n  taskvault show 3f2a9c      # a prefix of a run id or key\n  taskvault --json show 3f2a9c"
    )]
    Show {
        /// A run id or key, or an unambiguous prefix of one.
        hash: String,
        /// Show the run as the remote tier's server has it.
        #[arg(long)]
        remote: bool,
    },
    /// Write an entry's output to a path (or a file output to stdout).
    Get {
        hash: String,
        /// Destination; required for directory outputs.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// All runs of an entry's key, oldest first.
    History { hash: String },
    /// The audit trail, newest first: hits, misses, saves, removals, corruption.
    ///
    /// From audit.log and its rotations; on a metadata store several machines share (PostgreSQL,
    /// Redis), every machine's and server replica's records, each naming its host:pid.
    #[command(
        after_help = "Examples:\n  taskvault audit\n  taskvault audit --event corrupt --since 7d\n  taskvault --json audit --task build -n 100"
    )]
    Audit {
        /// Only this event (hit, miss, save, evict, expire, remove, corrupt, error).
        #[arg(long, value_parser = parse_event)]
        event: Option<taskvault::audit::Event>,
        /// Only records of this task.
        #[arg(long)]
        task: Option<String>,
        /// Only records within this long (e.g. 2h, 7d).
        #[arg(long, value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// What differs between two runs: inputs, outputs, sizes, durations.
    #[command(after_help = "Examples:\n  taskvault diff 3f2a9c 81b07d")]
    Diff { a: String, b: String },
    /// Remove runs: exactly the runs named (removing a key's live run makes the key a miss and
    /// keeps its history); with --key, every run of the keys named.
    #[command(
        after_help = "Examples:\n  taskvault rm 3f2a9c        # that run only\n  taskvault rm --key 3f2a9c  # the key: its live entry and all its history"
    )]
    Rm {
        /// Run ids or keys, or unambiguous prefixes (a key names its live run).
        #[arg(required = true)]
        hashes: Vec<String>,
        /// Remove every run of each named run's key: its live entry and all its history.
        #[arg(long)]
        key: bool,
    },
    /// Remove every entry carrying a tag.
    Invalidate {
        /// `key` (any value) or `key=value`.
        #[arg(long, value_name = "K[=V]")]
        tag: String,
    },
    /// Remove expired entries, old or excess entries, and crash leftovers.
    #[command(
        after_help = "Examples:\n  taskvault gc\n  taskvault gc --older-than 30d --max-size 5GB"
    )]
    Gc {
        /// Also remove entries not used for this long (e.g. 7d, 12h).
        #[arg(long, value_parser = parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Also evict least recently used entries until stored bytes fit (e.g. 5GB, 500MiB).
        #[arg(long, value_parser = parse_cap)]
        max_size: Option<u64>,
        /// Run gc on the remote tier's server (an admin token) instead of the local vault.
        #[arg(long, conflicts_with_all = ["older_than", "max_size"])]
        remote: bool,
    },
    /// Remove every entry and blob.
    Clear {
        /// Confirm.
        #[arg(long, short)]
        yes: bool,
    },
    /// Check every stored blob against its digest; quarantine the bad ones.
    Verify,
    /// Copy the vault's blobs or metadata to another store (verified, resumable).
    ///
    /// Every blob is verified as it is read here and read back from the target; a rerun skips
    /// what the target holds. Then point `storage.blobs` (or `storage.metadata`) at the target.
    #[command(
        after_help = "Examples:\n  taskvault migrate --to 's3://build-cache/taskvault?region=eu-west-1'\n  taskvault migrate --to local      # back to files under cache_dir\n  taskvault migrate --to 'redis://cache.internal:6379/0'   # runs and bytes"
    )]
    Migrate {
        /// The target: for blobs, an object store URL (s3://, gcs://, azblob://) or `local`;
        /// for metadata, a PostgreSQL URL (postgres://...) or `sqlite`; for both, a Redis URL
        /// (redis://...).
        #[arg(long, value_name = "STORAGE")]
        to: String,
    },
    /// Write entries and their blobs to an archive (.tar.zst).
    Export {
        archive: PathBuf,
        #[command(flatten)]
        select: Select,
    },
    /// Import an archive made by `export`; every blob is verified first.
    Import { archive: PathBuf },
    /// Entries, size, usage, hits and misses, time saved.
    #[command(
        after_help = "Examples:\n  taskvault stats\n  taskvault stats --by-task\n  taskvault stats --reset"
    )]
    Stats(StatsArgs),
    /// Run a command, or replay its cached outputs, console output and exit code.
    #[command(
        after_help = "Examples:\n  taskvault run -i 'src/**' -i package-lock.json -o dist -- npm run build\n  taskvault run -i 'src/**' -i 'tests/**' -- pytest -q\n  taskvault run --explain -i data.csv -o model.pkl -- python train.py"
    )]
    Run(RunArgs),
    /// Serve this vault to other machines over HTTP (the remote tier's server).
    #[command(
        after_help = "Examples:\n  taskvault serve                          # service_port of the config (9999)\n  taskvault serve --listen 0.0.0.0:8080\n  taskvault serve --listen 127.0.0.1:0     # any free port (printed)\n\nWithout tokens it serves loopback only; see `taskvault token create`."
    )]
    Serve(ServeArgs),
    /// Manage the server's access tokens (stored hashed in the vault's server/ directory).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Show the effective configuration and where each value came from.
    Config,
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  taskvault completions bash > ~/.local/share/bash-completion/completions/taskvault\n  taskvault completions zsh > \"${fpath[1]}/_taskvault\"\n  taskvault completions fish > ~/.config/fish/completions/taskvault.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), made from the same definitions as --help.
    #[command(after_help = "Example:\n  taskvault man > ~/.local/share/man/man1/taskvault.1")]
    Man,
}

/// `taskvault serve`
#[derive(Debug, PartialEq, Args)]
pub struct ServeArgs {
    /// Address and port to listen on. Default: 0.0.0.0 on service_port once a token exists,
    /// else 127.0.0.1 (a server without tokens serves this machine only).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Serve a non-loopback address without tokens: anyone who reaches it may read and write.
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// The largest blob one upload may carry (e.g. 16GiB).
    #[arg(long, value_parser = parse_cap, default_value = "16GiB")]
    pub max_upload_size: u64,
    /// Uploads received at once; more wait, then get 503.
    #[arg(long, default_value_t = 64)]
    pub max_uploads: usize,
    /// Longest wait for a request's next bytes (e.g. 60s).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: std::time::Duration,
    /// The token file (read only; re-read when it changes), instead of server/tokens.json in
    /// the vault: a mounted Kubernetes Secret, say. Also TASKVAULT_TOKENS_FILE.
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
}

#[derive(Debug, PartialEq, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, only its hash is kept.
    #[command(
        after_help = "Examples:\n  taskvault token create --scope write --namespace ci\n  taskvault token create --scope read --namespace ci --namespace web --name laptops\n  taskvault token create --scope admin --namespace '*' --name ops"
    )]
    Create {
        /// read, write (implies read) or admin (implies both).
        #[arg(long, value_parser = parse_scope)]
        scope: taskvault_server::tokens::Scope,
        /// A namespace the token may use (repeatable); `*` for all.
        #[arg(long = "namespace", required = true)]
        namespaces: Vec<String>,
        /// A name for the audit trail and `token list` (default: scope and namespaces).
        #[arg(long)]
        name: Option<String>,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token by id or name; a running server refuses it from its next request.
    Revoke { token: String },
}

fn parse_scope(s: &str) -> Result<taskvault_server::tokens::Scope, String> {
    s.parse()
}

#[derive(Debug, PartialEq, Default, Args)]
pub struct StatsArgs {
    /// One row per task: entries, bytes, hits, misses, hit rate and time saved.
    #[arg(long)]
    pub by_task: bool,
    /// Zero the counters (hits, misses, saves, evictions, expired, corrupt, time saved; per
    /// task too) and start counting afresh; entries and stored bytes stay.
    #[arg(long, conflicts_with = "by_task")]
    pub reset: bool,
    /// Show the remote tier's server's statistics (needs an admin token) instead of the local vault's.
    #[arg(long, conflicts_with_all = ["by_task", "reset"])]
    pub remote: bool,
}

/// `taskvault run [OPTIONS] -- COMMAND [ARGS]...`
#[derive(Debug, PartialEq, Args)]
pub struct RunArgs {
    /// Task name (part of the key); default: the command's file name.
    #[arg(long)]
    pub task: Option<String>,
    /// An input file, directory or glob (`src/**/*.py`); repeatable. Its paths, modes and
    /// contents are part of the key.
    #[arg(long = "input", short = 'i', value_name = "PATH|GLOB")]
    pub inputs: Vec<String>,
    /// Let a glob match nothing (otherwise an error).
    #[arg(long)]
    pub allow_empty: bool,
    /// An environment variable whose value is part of the key; repeatable.
    #[arg(long = "env", short = 'e', value_name = "NAME")]
    pub env: Vec<String>,
    /// Make the working directory part of the key.
    #[arg(long)]
    pub cwd_in_key: bool,
    /// A free string mixed into the key (to invalidate by hand).
    #[arg(long = "key", value_name = "SALT")]
    pub salt: Option<String>,
    /// An output file or directory the command produces (relative to the working directory);
    /// repeatable.
    #[arg(long = "output", short = 'o', value_name = "PATH")]
    pub outputs: Vec<String>,
    /// Also cache runs that exit with a non-zero code.
    #[arg(long)]
    pub cache_failures: bool,
    /// On a hit, restore files as read-only hard links to the vault's copy instead of copies
    /// (fast for large outputs; compressed or small outputs are still copied).
    #[arg(long)]
    pub link: bool,
    /// Expire the entry after this long (seconds, or 90m, 7d; 0 = never).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<std::time::Duration>,
    /// A tag k=v (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// No status lines from taskvault (the command's own output is still shown or replayed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Write a JSON summary of the run to this file (`--json` writes it to stderr).
    #[arg(long, value_name = "FILE")]
    pub summary: Option<PathBuf>,
    /// Use the vault read-only: replay hits, run misses without saving.
    #[arg(long)]
    pub no_save: bool,
    /// Run even if cached, and replace the entry.
    #[arg(long)]
    pub force: bool,
    /// Print what the key is made of and, after a miss, what differs from the task's last run.
    #[arg(long)]
    pub explain: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, PartialEq, Subcommand)]
pub enum CacheCommand {
    /// Save OUTPUT as the result of TASK on INPUT.
    #[command(
        after_help = "Examples:\n  taskvault cache save unit_tests package.json test-results.txt --ttl 1d"
    )]
    Save(SaveArgs),
    /// Restore the result of TASK on INPUT to OUTPUT; exit 1 on a miss.
    #[command(
        after_help = "Examples:\n  taskvault cache get unit_tests package.json test-results.txt && echo hit"
    )]
    Get(GetArgs),
    /// Cache statistics.
    Stats,
}

#[derive(Debug, PartialEq, Args)]
pub struct SaveArgs {
    pub task: String,
    /// Input file or directory (`-` for stdin).
    pub input: PathBuf,
    /// Output file or directory to store.
    pub output: PathBuf,
    /// More inputs that are part of the key, in order.
    #[arg(long = "input", value_name = "PATH")]
    pub more_inputs: Vec<PathBuf>,
    /// A tag k=v (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Expire after this long (seconds, or 90m, 7d; 0 = never), instead of the policy's TTL.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<std::time::Duration>,
    /// How long the work took (seconds or 2h, 15m); counted as time saved on every hit.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Debug, PartialEq, Args)]
pub struct GetArgs {
    pub task: String,
    /// Input file or directory (`-` for stdin).
    pub input: PathBuf,
    /// Where to restore the output.
    pub output: PathBuf,
    /// More inputs that are part of the key, in order.
    #[arg(long = "input", value_name = "PATH")]
    pub more_inputs: Vec<PathBuf>,
}

#[derive(Debug, PartialEq, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub select: Select,
    /// List the remote tier's server's runs (of this namespace) instead of the local vault's.
    #[arg(long)]
    pub remote: bool,
}

/// A selection of entries, shared by `log` and `export`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct Select {
    /// Only this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Only entries with this tag (`k` or `k=v`).
    #[arg(long, value_name = "K[=V]")]
    pub tag: Option<String>,
    /// Only what this build tool stored through the server (bazel, ccache, sccache, turbo, nx,
    /// gradle): the entries tagged `tool=NAME`.
    #[arg(long, value_name = "NAME", conflicts_with = "tag")]
    pub tool: Option<String>,
    /// Only runs with this status (live, superseded, corrupt); implies --all.
    #[arg(long)]
    pub status: Option<String>,
    /// Only entries created within this long (e.g. 2h, 7d).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<std::time::Duration>,
    /// At most this many.
    #[arg(long, short = 'n')]
    pub limit: Option<usize>,
    /// Include superseded and corrupt runs.
    #[arg(long)]
    pub all: bool,
}

/// The longest duration accepted anywhere: 100 years, so that every time computed from one
/// fits (a TTL past it would wrap into the past).
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 24 * 3600;

/// An audit event by name, any case.
fn parse_event(s: &str) -> Result<taskvault::audit::Event, String> {
    taskvault::audit::Event::parse(s).ok_or_else(|| {
        let names: Vec<String> =
            taskvault::audit::Event::ALL.iter().map(|e| e.name().to_lowercase()).collect();
        format!("{s:?} is not an audit event; one of {}", names.join(", "))
    })
}

/// Seconds as a bare number, or a humantime duration (`90s`, `15m`, `2h`, `7d`), at most
/// 100 years.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = if let Ok(n) = s.parse::<f64>() {
        if n < 0.0 {
            return Err(format!("{s:?} must not be negative"));
        }
        if !n.is_finite() {
            return Err(format!("{s:?} is not a number of seconds"));
        }
        std::time::Duration::try_from_secs_f64(n.min(MAX_DURATION_SECS as f64 + 1.0))
            .map_err(|e| format!("{s:?}: {e}"))?
    } else {
        humantime::parse_duration(s)
            .map_err(|e| format!("{s:?}: {e} (examples: 30, 90s, 15m, 2h, 7d)"))?
    };
    if d.as_secs() > MAX_DURATION_SECS {
        return Err(format!("{s:?} is longer than the 100 years allowed"));
    }
    Ok(d)
}

/// Bytes as a number or with a unit: KB/MB/GB (powers of 1000) or KiB/MiB/GiB (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 500MB, 2GiB)"))?;
    if !n.is_finite() {
        return Err(format!("{s:?} is not a size (examples: 500MB, 2GiB)"));
    }
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    let bytes = n * mult;
    if bytes >= u64::MAX as f64 {
        return Err(format!("{s:?} is larger than the {} bytes a size can be", u64::MAX));
    }
    Ok(bytes.round() as u64)
}

/// A size cap: like [`parse_size`], but never 0, which in the config means "no cap" and here
/// would mean "evict everything".
pub fn parse_cap(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!(
            "{s:?} would evict every entry; use `taskvault clear --yes` for that \
             (max_size_gb: 0 in the config means no cap)"
        )),
        n => Ok(n),
    }
}

pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("tag {s:?} must look like key=value")),
    }
}
