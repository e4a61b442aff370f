//! Tending the vault: `init`, `rm`, `invalidate`, `gc`, `clear`, `verify`, `export`, `import`,
//! `stats`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use taskvault::Vault;

use crate::Outcome;
use crate::cli::{Cli, Select};
use crate::human;
use taskvault_settings::CONFIG_REL;

pub fn init(cli: &Cli, force: bool) -> Result<Outcome> {
    let path = cli
        .config
        .clone()
        .or_else(|| {
            std::env::var_os("TASKVAULT_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(CONFIG_REL));
    if path.exists() && !force {
        bail!("{} already exists; use --force to overwrite it", path.display());
    }
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs_err::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("yaml.tmp");
    fs_err::write(&tmp, taskvault::config::INIT_TEMPLATE)?;
    fs_err::rename(&tmp, &path)?;
    // `git add .` never commits the vault: the default one lives in .taskvault/cache (a vault
    // elsewhere gets a .gitignore of its own when it is made).
    let ignore = path.with_file_name(".gitignore");
    if !ignore.exists() {
        fs_err::write(
            &ignore,
            "# Made by `taskvault init`: the vault is a cache, not source.\ncache/\n",
        )?;
    }
    if cli.json {
        human::json(&serde_json::json!({"config": path}))?;
    } else {
        human::note(human::check(&format!("Created {}", path.display())));
    }
    Ok(Outcome::Ok)
}

pub fn rm(cli: &Cli, v: &Vault, hashes: &[String], whole_keys: bool) -> Result<Outcome> {
    // Resolve everything first: one bad hash removes nothing.
    let runs = hashes.iter().map(|h| v.resolve(h)).collect::<Result<Vec<_>, _>>()?;
    if whole_keys {
        let removed = v.remove(&runs)?;
        return report_removed(cli, &removed, "Removed (with all their history)");
    }
    v.remove_runs(&runs)?;
    if cli.json {
        human::json(&runs)?;
        return Ok(Outcome::Ok);
    }
    for r in &runs {
        let what = match r.status {
            taskvault::Status::Live => "its live entry: the key is now a miss; its history stays",
            _ => "history; the key's live entry, if any, stays",
        };
        human::note(human::check(&format!(
            "Removed run {} of {} ({what})",
            human::short(&r.id),
            r.task
        )));
    }
    Ok(Outcome::Ok)
}

fn report_removed(cli: &Cli, removed: &[taskvault::Entry], verb: &str) -> Result<Outcome> {
    if cli.json {
        human::json(&removed)?;
    } else {
        human::note(human::check(&format!("{verb}: {} entries", removed.len())));
        for e in removed {
            human::note(format!("  {} {}", human::short(&e.id), e.task));
        }
    }
    Ok(Outcome::Ok)
}

pub fn invalidate(cli: &Cli, v: &Vault, tag: &str) -> Result<Outcome> {
    let (k, val) = taskvault::Filter::tag_selector(tag);
    if k.is_empty() {
        bail!("--tag needs a key: --tag key or --tag key=value");
    }
    let removed = v.invalidate(&k, val.as_deref())?;
    report_removed(cli, &removed, "Invalidated")
}

pub fn gc(
    cli: &Cli,
    v: &Vault,
    older_than: Option<std::time::Duration>,
    max_size: Option<u64>,
) -> Result<Outcome> {
    let r = v.gc(older_than, max_size)?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::out(format!(
            "expired {}, unused {}, evicted {}, orphan blobs {}, temp files {}; {} -> {}",
            r.expired,
            r.old,
            r.evicted,
            r.orphans_removed,
            r.temp_removed,
            human::size(r.bytes_before),
            human::size(r.bytes_after)
        ))?;
    }
    Ok(Outcome::Ok)
}

pub fn clear(cli: &Cli, v: &Vault, yes: bool) -> Result<Outcome> {
    if !yes {
        bail!(
            "clear removes every entry of {}; run it again with --yes",
            v.settings().vault_dir.display()
        );
    }
    let n = v.clear()?;
    if cli.json {
        human::json(&serde_json::json!({"removed": n}))?;
    } else {
        human::note(human::check(&format!("Cleared {n} entries")));
    }
    Ok(Outcome::Ok)
}

pub fn verify(cli: &Cli, v: &Vault) -> Result<Outcome> {
    let r = v.verify()?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::out(format!(
            "checked {} blobs ({}); corrupt {}; orphan files removed {}",
            r.blobs_checked,
            human::size(r.bytes_checked as i64),
            r.corrupt.len(),
            r.orphans_removed
        ))?;
        for (d, why) in &r.corrupt {
            human::out(format!("corrupt {d}: {why} (quarantined)"))?;
        }
        for (what, why) in &r.damaged_rows {
            human::out(format!("damaged row {what}: {why} (removed)"))?;
        }
    }
    Ok(if r.corrupt.is_empty() && r.damaged_rows.is_empty() { Outcome::Ok } else { Outcome::Miss })
}

/// `taskvault migrate --to STORAGE`: the vault's blobs copied to another blob store, or its
/// metadata to another metadata store (`sqlite`, `postgres://...`).
pub fn migrate(cli: &Cli, v: &Vault, to: &str) -> Result<Outcome> {
    use taskvault::store::object::{SCHEMES, is_object_url, shown};
    let settings = v.settings();
    // A Redis vault keeps its blobs' bytes in the same Redis.
    let redis_here =
        settings.metadata_url.as_deref().filter(|u| taskvault::store::redis::is_redis_url(u));
    let here = settings.blobs_url.as_deref().or(redis_here).unwrap_or("local");
    if to == here {
        anyhow::bail!("the vault's blobs are in {} already", shown(to));
    }
    let target = if to == "local" || is_object_url(to) {
        let url = (to != "local").then_some(to);
        taskvault::store::blob_store(&settings.vault_dir, url)?
    } else if to == "sqlite" || taskvault::store::postgres::is_postgres_url(to) {
        return migrate_metadata(cli, v, to);
    } else if taskvault::store::redis::is_redis_url(to) {
        return migrate_to_redis(cli, v, to);
    } else {
        anyhow::bail!(
            "--to {}: not a blob store (local, or {}://...)",
            shown(to),
            SCHEMES.join("://, ")
        );
    };
    let r = v.copy_blobs_to(target.as_ref())?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::out(format!(
            "copied {} blobs ({}) to {}, each verified there; {} were there already",
            r.copied,
            human::size(r.bytes as i64),
            shown(to),
            r.present
        ))?;
        for (d, why) in &r.corrupt {
            human::out(format!("corrupt {d}: {why} (quarantined, not copied)"))?;
        }
        let left = if here == "local" {
            format!(
                " The copies under {} can go afterwards.",
                settings.vault_dir.join("blobs").display()
            )
        } else {
            String::new()
        };
        let what = if to == "local" { "`local`" } else { "the URL given to --to" };
        human::note(format!(
            "Now set storage.blobs to {what} in the config, with no saves meanwhile (or run \
             migrate again just before).{left}"
        ));
    }
    Ok(if r.corrupt.is_empty() { Outcome::Ok } else { Outcome::Miss })
}

/// `taskvault migrate --to redis://...`: the vault's metadata and the bytes of its blobs copied
/// into Redis, which keeps both.
fn migrate_to_redis(cli: &Cli, v: &Vault, to: &str) -> Result<Outcome> {
    use taskvault::store::redis::shown;
    let settings = v.settings();
    if settings.metadata_url.as_deref() == Some(to) {
        anyhow::bail!("the vault is in {} already", shown(to));
    }
    let meta = taskvault::store::redis::RedisMeta::open(to)?;
    let bytes = taskvault::store::blob_store(&settings.vault_dir, Some(to))?;
    let r = v.copy_to_store(&meta, bytes.as_ref())?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::out(format!(
            "copied {} runs of {} live entries and {} blobs ({}) to {}, each entry checked \
             there and each blob verified; {} runs were there already{}",
            r.runs,
            r.entries,
            r.blobs,
            human::size(r.bytes as i64),
            shown(to),
            r.present,
            if r.skipped > 0 {
                format!(
                    "; {} runs left behind (corrupt, or replaced ones whose outputs are gone)",
                    r.skipped
                )
            } else {
                String::new()
            }
        ))?;
        for (d, why) in &r.corrupt {
            human::out(format!("corrupt {d}: {why} (quarantined, its entry not copied)"))?;
        }
        human::note(
            "Now set storage.metadata to the URL given to --to (and no storage.blobs) in the \
             config, with no saves meanwhile (or run migrate again just before). Hit and miss \
             counters start again from zero there.",
        );
    }
    Ok(if r.corrupt.is_empty() { Outcome::Ok } else { Outcome::Miss })
}

/// `taskvault migrate --to sqlite|postgres://...`: the vault's metadata copied to another
/// metadata store; the blobs stay where they are.
fn migrate_metadata(cli: &Cli, v: &Vault, to: &str) -> Result<Outcome> {
    use taskvault::store::postgres::{PgMeta, shown};
    let settings = v.settings();
    let here = settings.metadata_url.as_deref().unwrap_or("sqlite");
    if to == here {
        anyhow::bail!("the vault's metadata is in {} already", shown(to));
    }
    let target: Box<dyn taskvault::store::MetaStore> = if to == "sqlite" {
        Box::new(taskvault::store::sqlite::SqliteMeta::open(&settings.vault_dir.join("cache.db"))?)
    } else {
        Box::new(PgMeta::open(to)?)
    };
    let r = v.copy_metadata_to(target.as_ref())?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::out(format!(
            "copied {} runs of {} live entries to {}, each entry checked there; {} were there \
             already{}",
            r.runs,
            r.entries,
            shown(to),
            r.present,
            if r.skipped > 0 {
                format!("; {} corrupt runs left behind", r.skipped)
            } else {
                String::new()
            }
        ))?;
        let what =
            if to == "sqlite" { "`sqlite`".to_owned() } else { "the URL given to --to".to_owned() };
        if settings.metadata_url.as_deref().is_some_and(taskvault::store::redis::is_redis_url) {
            human::note(
                "The blobs' bytes are still in Redis: copy them too (`taskvault migrate --to \
                 local`, or an object store URL) and set storage.blobs to match.",
            );
        }
        human::note(format!(
            "Now set storage.metadata to {what} in the config, with no saves meanwhile (or run \
             migrate again just before). Hit and miss counters start again from zero there."
        ));
    }
    Ok(Outcome::Ok)
}

pub fn export(cli: &Cli, v: &Vault, archive: &Path, select: &Select) -> Result<Outcome> {
    // Only live entries carry their outputs; read a batch at a time.
    let r = v.export_where(&super::filter(select)?, archive)?;
    if r.unverifiable > 0 {
        human::warn(&format!(
            "left out {} entries saved by an older taskvault: they do not record their key's \
             ingredients, so no import could check them (run them again to re-save them)",
            r.unverifiable
        ));
    }
    if cli.json {
        human::json(&r)?;
    } else {
        human::note(human::check(&format!(
            "Exported {} entries ({} blobs, {}) to {}",
            r.entries,
            r.blobs,
            human::size(r.bytes as i64),
            archive.display()
        )));
    }
    Ok(Outcome::Ok)
}

pub fn import(cli: &Cli, v: &Vault, archive: &Path) -> Result<Outcome> {
    let r = v.import(archive)?;
    if cli.json {
        human::json(&r)?;
    } else {
        human::note(human::check(&format!(
            "Imported {} entries ({} blobs); {} already present",
            r.imported, r.blobs, r.skipped
        )));
    }
    Ok(Outcome::Ok)
}

fn stats_by_task(cli: &Cli, v: &Vault) -> Result<Outcome> {
    let rows = v.task_stats()?;
    if cli.json {
        human::json(&rows)?;
        return Ok(Outcome::Ok);
    }
    human::out(format!(
        "{:<24}  {:>7}  {:>10}  {:>7}  {:>7}  {:>8}  {:>10}",
        "TASK", "ENTRIES", "SIZE", "HITS", "MISSES", "HIT RATE", "TIME SAVED"
    ))?;
    for r in &rows {
        let lookups = r.hits + r.misses;
        let rate = if lookups > 0 {
            format!("{:.1}%", r.hits as f64 * 100.0 / lookups as f64)
        } else {
            "-".into()
        };
        let task = if r.task.is_empty() { "(unknown)" } else { &r.task };
        human::out(format!(
            "{:<24}  {:>7}  {:>10}  {:>7}  {:>7}  {:>8}  {:>10}",
            task,
            r.entries,
            human::size(r.bytes),
            r.hits,
            r.misses,
            rate,
            human::duration_ms(r.time_saved_ms)
        ))?;
    }
    Ok(Outcome::Ok)
}

pub fn stats(cli: &Cli, v: &Vault, a: &crate::cli::StatsArgs) -> Result<Outcome> {
    if a.reset {
        v.reset_counters()?;
        if cli.json {
            human::json(&v.stats()?)?;
        } else {
            human::note(human::check(
                "Counters reset: hits, misses, saves, evictions, expired, corrupt and time saved start from 0",
            ));
        }
        return Ok(Outcome::Ok);
    }
    if a.by_task {
        return stats_by_task(cli, v);
    }
    let s = v.stats()?;
    if cli.json {
        human::json(&s)?;
        return Ok(Outcome::Ok);
    }
    let c = &s.counters;
    let lines = [
        "TaskVault Cache Statistics".to_owned(),
        "==========================".to_owned(),
        format!("Entries:        {}", s.entries),
        format!("Total Size:     {}", human::size(s.total_bytes)),
        format!(
            "Cache Limit:    {}",
            s.limit_bytes.map_or("none".into(), |l| human::size(l as i64))
        ),
        format!("Usage:          {}", s.usage_percent.map_or("-".into(), |u| format!("{u:.1}%"))),
        format!("Hits:           {}", c.hits),
        format!("Misses:         {}", c.misses),
        format!(
            "Hit Rate:       {}",
            s.hit_rate_percent.map_or("-".into(), |h| format!("{h:.1}%"))
        ),
        format!("Time Saved:     {}", human::duration_ms(c.time_saved_ms)),
        format!("Saves:          {}", c.saves),
        format!("Evictions:      {}", c.evictions),
        format!("Expired:        {}", c.expired),
        format!("Corrupt:        {}", c.corrupt),
    ];
    for l in lines {
        human::out(l)?;
    }
    Ok(Outcome::Ok)
}
