//! Command implementations, one module per family; `dispatch` opens the vault and routes.

mod admin;
mod cache;
mod inspect;
mod remote;
mod run;
pub mod serve;

use anyhow::{Context, Result};
use taskvault::{Filter, Status, Vault};

use crate::Outcome;
use crate::cli::{Cli, Command, Select};
use taskvault_settings::Resolved;

pub use admin::init;

/// Large transfers show a byte counter on stderr once they pass this size.
const PROGRESS_MIN: u64 = 64 << 20;
/// Walks over every blob or entry show a bar from this many.
const ITEMS_MIN: u64 = 10_000;

pub fn dispatch(cli: &Cli, resolved: Resolved, progress: bool) -> Result<Outcome> {
    let dir = resolved.settings.vault_dir.clone();
    let remote = match &cli.command {
        Command::Cache(_) | Command::Run(_) => remote::client(&resolved)?,
        _ => None,
    };
    let remote = remote.as_ref();
    let mut vault = Vault::open(resolved.settings)
        .with_context(|| format!("cannot open the vault at {}", dir.display()))?;
    if progress {
        vault.set_progress(progress_bar());
        vault.set_item_progress(item_bar());
    }
    // The vault lives until the process exits. Everything it writes is committed or appended
    // before a command returns; closing SQLite would only free memory (checkpoints on close are
    // off, and the kernel releases the file locks), so it is skipped on the hit path's clock.
    let v: &Vault = Box::leak(Box::new(vault));
    match &cli.command {
        Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Config
        | Command::Serve(_)
        | Command::Token(_) => {
            unreachable!("handled before the vault is opened")
        }
        Command::Cache(c) => cache::run(cli, v, c, remote),
        Command::Log(a) => inspect::log(cli, v, &a.select),
        Command::Show { hash, .. } => inspect::show(cli, v, hash),
        Command::Get { hash, output } => inspect::get(cli, v, hash, output.as_deref()),
        Command::History { hash } => inspect::history(cli, v, hash),
        Command::Audit { event, task, since, limit } => {
            let q = taskvault::audit::AuditQuery {
                limit: *limit,
                event: *event,
                task: task.clone(),
                since_ms: since.map(|d| taskvault::clock::now_ms() - d.as_millis() as i64),
            };
            inspect::audit(cli, v, &q)
        }
        Command::Diff { a, b } => inspect::diff(cli, v, a, b),
        Command::Rm { hashes, key } => admin::rm(cli, v, hashes, *key),
        Command::Invalidate { tag } => admin::invalidate(cli, v, tag),
        Command::Gc { older_than, max_size, .. } => admin::gc(cli, v, *older_than, *max_size),
        Command::Clear { yes } => admin::clear(cli, v, *yes),
        Command::Verify => admin::verify(cli, v),
        Command::Migrate { to } => admin::migrate(cli, v, to),
        Command::Export { archive, select } => admin::export(cli, v, archive, select),
        Command::Import { archive } => admin::import(cli, v, archive),
        Command::Stats(a) => admin::stats(cli, v, a),
        Command::Run(a) => run::run(cli, v, a, remote),
    }
}

/// `log`, `show`, `stats` and `gc` with `--remote`: the server's view, printed as the local
/// one is; `None` for every other command line.
pub fn remote_view(cli: &Cli, resolved: &Resolved) -> Result<Option<Outcome>> {
    let wants = match &cli.command {
        Command::Log(a) => a.remote,
        Command::Show { remote, .. } | Command::Gc { remote, .. } => *remote,
        Command::Stats(a) => a.remote,
        _ => false,
    };
    if !wants {
        return Ok(None);
    }
    let Some(r) = remote::client(resolved)? else {
        anyhow::bail!("--remote: no remote is configured (a remote: block, or TASKVAULT_REMOTE)");
    };
    let failed = |e: taskvault_remote::RemoteError| anyhow::anyhow!("remote {}: {e}", r.url());
    match &cli.command {
        Command::Log(a) => {
            let f = filter(&a.select)?;
            let q = taskvault_remote::LogQuery {
                task: f.task,
                tag: tag_of(&a.select),
                status: a.select.status.clone(),
                since_ms: f.since_ms,
                limit: f.limit,
                all: f.all,
            };
            let entries = r.log(&q).map_err(failed)?;
            if cli.json {
                crate::human::json(&entries)?;
            } else {
                inspect::table(&entries)?;
            }
        }
        Command::Show { hash, .. } => {
            let e = r.show(hash).map_err(failed)?;
            inspect::print_run(cli, &e, None)?;
        }
        Command::Stats(_) => {
            let s = r.stats().map_err(failed)?;
            crate::human::json(&s)?;
        }
        Command::Gc { .. } => {
            let g = r.gc().map_err(failed)?;
            crate::human::json(&g)?;
        }
        _ => unreachable!("checked above"),
    }
    Ok(Some(Outcome::Ok))
}

/// `taskvault completions SHELL`: the completion script, on stdout.
pub fn completions(shell: clap_complete::Shell) -> Result<Outcome> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "taskvault", &mut std::io::stdout().lock());
    Ok(Outcome::Ok)
}

/// `taskvault man`: the man page, on stdout.
pub fn man() -> Result<Outcome> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock())?;
    Ok(Outcome::Ok)
}

/// `taskvault config`: every setting in effect, and where it came from.
pub fn config(cli: &Cli, resolved: &Resolved) -> Result<Outcome> {
    let rows = taskvault_settings::explain(resolved)?;
    if cli.json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|r| (r.name.clone(), serde_json::json!({"value": r.value, "from": r.source})))
            .collect();
        crate::human::json(&map)?;
        return Ok(Outcome::Ok);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &rows {
        crate::human::out(format!("{:<width$}  {}  ({})", r.name, r.value, r.source))?;
    }
    Ok(Outcome::Ok)
}

/// What a command does where there is no vault yet: `None` for the commands that save (they
/// make it), the outcome for those with an answer without one (a lookup is a miss; `run
/// --no-save` runs), and an error for the rest, which only read.
pub fn without_vault(cli: &Cli, resolved: &Resolved) -> Result<Option<Outcome>> {
    match &cli.command {
        Command::Cache(crate::cli::CacheCommand::Save(_)) | Command::Import { .. } => Ok(None),
        Command::Run(a) if !a.no_save => Ok(None),
        Command::Run(a) => run::run_without_vault(cli, a, resolved).map(Some),
        // With a remote, a lookup may fetch into a new local vault.
        Command::Cache(crate::cli::CacheCommand::Get(_)) if resolved.remote.is_some() => Ok(None),
        Command::Cache(crate::cli::CacheCommand::Get(a)) => {
            cache::get_without_vault(cli, a, resolved).map(Some)
        }
        _ => Err(resolved.no_vault()),
    }
}

/// A bar for walks over every blob or entry (`verify`, `export`, `gc`), shown once there are
/// enough of them to take a while.
fn item_bar() -> Box<taskvault::ItemProgress> {
    // One bar per walk: a command may make several in turn (gc expires, then evicts), each
    // with its own total.
    let bar = std::sync::Mutex::new(None::<(u64, indicatif::ProgressBar)>);
    Box::new(move |done, total| {
        if total < ITEMS_MIN {
            return;
        }
        let mut bar = bar.lock().unwrap_or_else(|p| p.into_inner());
        let pb = match &*bar {
            Some((t, pb)) if *t == total && !pb.is_finished() => pb.clone(),
            _ => {
                let pb = indicatif::ProgressBar::new(total);
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {eta}")
                        .expect("valid template"),
                );
                *bar = Some((total, pb.clone()));
                pb
            }
        };
        pb.set_position(done);
        if done >= total {
            pb.finish_and_clear();
        }
    })
}

fn progress_bar() -> Box<taskvault::Progress> {
    let bar = std::sync::OnceLock::<indicatif::ProgressBar>::new();
    Box::new(move |bytes| {
        if bytes < PROGRESS_MIN && bar.get().is_none() {
            return;
        }
        let pb = bar.get_or_init(|| {
            let pb = indicatif::ProgressBar::new_spinner();
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {binary_bytes} {binary_bytes_per_sec}",
                )
                .expect("valid template"),
            );
            pb
        });
        pb.set_position(bytes);
    })
}

/// The tag a selection asks for: `--tag`, or `tool=NAME` for `--tool`.
fn tag_of(s: &Select) -> Option<String> {
    match &s.tool {
        Some(t) => Some(format!("tool={t}")),
        None => s.tag.clone(),
    }
}

/// Turns `--task/--tag/--tool/--status/--since/--limit/--all` into an engine filter.
pub fn filter(s: &Select) -> Result<Filter> {
    let status = match s.status.as_deref() {
        None => None,
        Some(name) => Some(Status::parse(name).ok_or_else(|| {
            anyhow::anyhow!("unknown status {name:?} (live, superseded, corrupt or failed)")
        })?),
    };
    Ok(Filter {
        task: s.task.clone(),
        tag: tag_of(s).as_deref().map(Filter::tag_selector),
        status,
        since_ms: s.since.map(|d| taskvault::clock::now_ms() - d.as_millis() as i64),
        all: s.all,
        limit: s.limit,
    })
}
