//! `taskvault cache save|get|stats`: the seed's commands, with its output lines and honest exit
//! codes (a miss exits 1).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use taskvault::{Input, InputRecord, Output, SaveOptions, Vault};

use crate::Outcome;
use crate::cli::{CacheCommand, Cli};
use crate::human;

pub fn run(
    cli: &Cli,
    v: &Vault,
    c: &CacheCommand,
    remote: Option<&taskvault_remote::Remote>,
) -> Result<Outcome> {
    match c {
        CacheCommand::Save(a) => {
            let key = v.key(&a.task, &inputs(v.settings(), &a.input, &a.more_inputs)?)?;
            let opts = SaveOptions {
                ttl: a.ttl,
                duration_ms: a.duration.map(|d| d.as_millis() as i64),
                tags: a.tags.iter().cloned().collect(),
                details: serde_json::json!({
                    "source": "cli",
                    "output_path": a.output.display().to_string(),
                }),
                ..SaveOptions::default()
            };
            let e = v.save(&key, Output::Path(&a.output), &opts)?;
            let pushed = match remote {
                Some(r) => super::remote::push(r, v, &e)?,
                None => None,
            };
            if cli.json {
                let mut value = serde_json::to_value(&e)?;
                if let (Some(p), Some(r)) = (pushed, remote) {
                    value["remote"] = serde_json::json!({
                        "url": r.url(), "blobs_sent": p.blobs, "bytes_sent": p.bytes,
                        "blobs_present": p.skipped,
                    });
                }
                human::json(&value)?;
            } else {
                human::note(human::check(&format!(
                    "Cached {} (hash: {}…, size: {} bytes)",
                    e.task,
                    &e.id[..8],
                    e.size
                )));
            }
            Ok(Outcome::Ok)
        }
        CacheCommand::Get(a) => {
            let key = v.key(&a.task, &inputs(v.settings(), &a.input, &a.more_inputs)?)?;
            let found = match remote {
                None => v.get(&key, &a.output)?.map(|e| (e, "local")),
                Some(r) => match local_or_prefetch(v, r, &key, &a.output)? {
                    (Some(e), _) => Some((e, "local")),
                    (None, ahead) => {
                        let (pulled, restored) =
                            super::remote::pull_to(r, v, &key, Some(&a.output), ahead)?;
                        let got = match (pulled, restored) {
                            (_, Some(e)) => Some(e),
                            (super::remote::Pulled::Hit, None) => v.get(&key, &a.output)?,
                            _ => None,
                        };
                        if got.is_none() && !matches!(pulled, super::remote::Pulled::Hit) {
                            v.missed(&key, "get")?;
                        }
                        got.map(|e| (e, "remote"))
                    }
                },
            };
            match found {
                Some((e, tier)) => {
                    if cli.json {
                        human::json(&serde_json::json!({"hit": true, "from": tier, "entry": e}))?;
                    } else {
                        let from = if tier == "remote" { ", from the remote" } else { "" };
                        human::note(human::check(&format!(
                            "Cache hit for {} (size: {} bytes{from})",
                            e.task, e.size
                        )));
                    }
                    Ok(Outcome::Ok)
                }
                None => {
                    if cli.json {
                        human::json(&serde_json::json!({
                            "hit": false, "task": a.task, "key": key.digest().hex(),
                        }))?;
                    } else {
                        human::note(human::cross(&format!("Cache miss for {}", a.task)));
                    }
                    Ok(Outcome::Miss)
                }
            }
        }
        CacheCommand::Stats => super::admin::stats(cli, v, &crate::cli::StatsArgs::default()),
    }
}

/// The local vault's answer for `key`; when it is likely to need the database (no hot record),
/// the server is asked at the same time, on a thread, and its answer comes back for the pull.
fn local_or_prefetch(
    v: &Vault,
    r: &taskvault_remote::Remote,
    key: &taskvault::TaskKey,
    dest: &std::path::Path,
) -> Result<(Option<taskvault::Entry>, Option<taskvault_remote::Prefetched>)> {
    if v.likely_hot(key) {
        return Ok((v.get_or_ask_elsewhere(key, dest)?, None));
    }
    let ahead = r.prefetch(key);
    match v.get_or_ask_elsewhere(key, dest)? {
        // The server's answer is dropped (its lookup counted there as a hit).
        Some(e) => Ok((Some(e), None)),
        None => Ok((None, Some(ahead.wait()))),
    }
}

/// `cache get` where there is no vault: a miss (after the inputs are hashed, so bad input is
/// still an error and `--json` still names the key).
pub fn get_without_vault(
    cli: &Cli,
    a: &crate::cli::GetArgs,
    resolved: &taskvault_settings::Resolved,
) -> Result<Outcome> {
    let settings = &resolved.settings;
    let key =
        Vault::key_in(settings, &a.task, &inputs(settings, &a.input, &a.more_inputs)?, Vec::new())?;
    if cli.json {
        human::json(&serde_json::json!({
            "hit": false, "task": a.task, "key": key.digest().hex(), "vault": null,
        }))?;
    } else {
        human::note(human::cross(&format!(
            "Cache miss for {} (no vault at {}, {})",
            a.task,
            settings.vault_dir.display(),
            resolved.vault_source
        )));
    }
    Ok(Outcome::Miss)
}

/// The positional input followed by `--input` ones; `-` reads standard input (streamed through
/// the hasher, never held in memory).
fn inputs(settings: &taskvault::Settings, first: &Path, more: &[PathBuf]) -> Result<Vec<Input>> {
    let alg = settings.algorithm;
    std::iter::once(first)
        .chain(more.iter().map(PathBuf::as_path))
        .map(|p| {
            if p == Path::new("-") {
                let mut stdin = std::io::stdin().lock();
                let record = InputRecord::hash_reader(alg, &mut stdin, "-")
                    .context("reading the input from stdin")?;
                Ok(Input::Hashed(record))
            } else {
                Ok(Input::Path(p.to_owned()))
            }
        })
        .collect()
}
