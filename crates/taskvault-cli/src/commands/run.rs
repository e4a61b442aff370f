//! `taskvault run`: cache any command's outputs, console output and exit code, keyed on the
//! content of its declared inputs, its command line and chosen environment. A hit restores the
//! outputs, replays the console output on the same streams and exits with the recorded code.

mod console;
mod exec;
mod inputs;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use taskvault::{Claim, Entry, Filter, Output, SaveOptions, TaskKey, Vault};

use crate::Outcome;
use crate::cli::{Cli, RunArgs};
use crate::human;

/// Everything the key is made of, by name, for `--explain` and provenance.
struct Plan {
    key: TaskKey,
    ingredients: BTreeMap<String, String>,
    input_files: BTreeMap<String, String>,
    outputs: Vec<String>,
}

/// Length-prefixed list of byte strings: an unambiguous encoding of argv and output lists.
fn encode_list<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(&(i.len() as u64).to_le_bytes());
        out.extend_from_slice(i);
    }
    out
}

/// `./a/b/` -> `a/b`; absolute paths and `..` are refused (outputs live under the working
/// directory, where a replay puts them back).
fn normalize_output(p: &str) -> Result<String> {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let rel = parts.join("/");
    if p.starts_with('/') || rel.is_empty() || parts.contains(&"..") {
        bail!(
            "--output {p}: outputs must be paths inside the working directory (no absolute paths, no ..)"
        );
    }
    Ok(rel)
}

/// The task name `run` uses without `--task`: the command's file name.
fn default_task(command: &[OsString]) -> String {
    let program = Path::new(&command[0]);
    program.file_name().unwrap_or(program.as_os_str()).to_string_lossy().into_owned()
}

fn plan(v: &Vault, a: &RunArgs, cwd: &Path) -> Result<Plan> {
    let task = a.task.clone().unwrap_or_else(|| default_task(&a.command));
    let mut outputs = a.outputs.iter().map(|o| normalize_output(o)).collect::<Result<Vec<_>>>()?;
    outputs.sort();
    outputs.dedup();
    let inputs = inputs::collect(v, cwd, &a.inputs, a.allow_empty)?;

    let mut extras: Vec<(String, Vec<u8>)> = vec![
        ("argv".into(), encode_list(a.command.iter().map(|s| s.as_bytes()))),
        ("outputs".into(), encode_list(outputs.iter().map(|s| s.as_bytes()))),
    ];
    let mut env_names = a.env.clone();
    env_names.sort();
    env_names.dedup();
    for name in env_names {
        // Unset and set-to-empty are different values.
        let value = match std::env::var_os(&name) {
            Some(v) => [&[1u8][..], v.as_bytes()].concat(),
            None => vec![0u8],
        };
        extras.push((format!("env:{name}"), value));
    }
    if a.cwd_in_key {
        extras.push(("cwd".into(), cwd.as_os_str().as_bytes().to_vec()));
    }
    if let Some(salt) = &a.salt {
        extras.push(("salt".into(), salt.as_bytes().to_vec()));
    }
    let alg = v.settings().algorithm;
    let mut ingredients: BTreeMap<String, String> = extras
        .iter()
        .map(|(label, value)| (label.clone(), alg.digest(value).hex()[..16].to_owned()))
        .collect();
    ingredients.insert("task".into(), task.clone());
    ingredients.insert("namespace".into(), v.settings().namespace.clone());
    ingredients.insert("inputs".into(), inputs.record.digest.hex()[..16].to_owned());
    let key =
        TaskKey::new(alg, &v.settings().namespace, &task, vec![inputs.record.clone()], extras)?;
    Ok(Plan { key, ingredients, input_files: inputs.files, outputs })
}

pub fn run(
    cli: &Cli,
    v: &Vault,
    a: &RunArgs,
    remote: Option<&taskvault_remote::Remote>,
) -> Result<Outcome> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let plan = plan(v, a, &cwd)?;
    // One status line per run, on stderr (stdout is the command's); `--json` replaces it with
    // the JSON summary, `--quiet` drops it.
    let say = |line: String| {
        if !a.quiet && !cli.json {
            human::note(format!("taskvault: {line}"));
        }
    };
    if a.explain {
        explain_key(&plan);
    }

    if !a.force {
        let mut found = v.lookup(&plan.key, "run")?.map(|e| (e, ""));
        if found.is_none() {
            if a.explain {
                explain_miss(v, &plan)?;
            }
            if let Some(r) = remote {
                let pulled = super::remote::pull(r, v, &plan.key)?;
                if a.explain {
                    explain_remote(r, &pulled);
                }
                if let super::remote::Pulled::Hit = pulled {
                    found = v.lookup(&plan.key, "run")?.map(|e| (e, ", from the remote"));
                }
            }
        }
        if let Some((e, tier)) = found
            && let Some(outcome) = replay(v, &plan, &e, &cwd, a.link)?
        {
            let saved = e
                .duration_ms
                .map_or(String::new(), |d| format!(", saved {}", human::duration_ms(d)));
            say(format!("hit {} (exit {}{saved}{tier})", plan.key.task, e.exit_code.unwrap_or(0)));
            summary(cli, a, &plan, true, outcome, e.duration_ms, Some(&e.id))?;
            return Ok(outcome);
        }
    }

    if a.no_save {
        let (outcome, captured) = execute(&a.command)?;
        if let Some(c) = &captured {
            say(format!(
                "miss {} (ran, {}, {}; not saved: --no-save)",
                plan.key.task,
                exit_text(&c.ended),
                human::duration_ms(c.duration.as_millis() as i64)
            ));
        }
        summary(
            cli,
            a,
            &plan,
            false,
            outcome,
            captured.map(|c| c.duration.as_millis() as i64),
            None,
        )?;
        return Ok(outcome);
    }

    // Forced runs skip the claim: they always run, and replace whatever is there.
    let guard = if a.force {
        None
    } else {
        match v.claim(&plan.key)? {
            Claim::Ready(e) => {
                if let Some(outcome) = replay(v, &plan, &e, &cwd, a.link)? {
                    say(format!("hit {} (computed meanwhile by another run)", plan.key.task));
                    summary(cli, a, &plan, true, outcome, e.duration_ms, Some(&e.id))?;
                    return Ok(outcome);
                }
                // The entry failed verification: compute it ourselves, claiming again.
                match v.claim(&plan.key)? {
                    Claim::Compute(g) => Some(g),
                    _ => None,
                }
            }
            Claim::Failed(payload) => {
                let outcome = replay_failure(&payload)?;
                say(format!("{} failed in a concurrent run; replayed its failure", plan.key.task));
                summary(cli, a, &plan, false, outcome, None, None)?;
                return Ok(outcome);
            }
            Claim::Compute(g) => Some(g),
        }
    };

    // Exactly once across machines: with a remote, the server's claim too.
    let mut lease = None;
    if guard.is_some()
        && let Some(r) = remote
    {
        use taskvault_remote::Claimed;
        match super::remote::claim(r, &plan.key)? {
            Some(Claimed::Granted(l)) => lease = Some(l),
            Some(Claimed::Ready) => {
                if let super::remote::Pulled::Hit = super::remote::pull(r, v, &plan.key)?
                    && let Some(e) = v.lookup(&plan.key, "run")?
                    && let Some(outcome) = replay(v, &plan, &e, &cwd, a.link)?
                {
                    say(format!("hit {} (computed meanwhile on another machine)", plan.key.task));
                    summary(cli, a, &plan, true, outcome, e.duration_ms, Some(&e.id))?;
                    return Ok(outcome);
                }
            }
            Some(Claimed::Failed(payload)) => {
                let outcome = replay_failure(&payload)?;
                if let Some(g) = guard {
                    g.fail(&payload)?;
                }
                say(format!(
                    "{} failed in a run on another machine; replayed its failure",
                    plan.key.task
                ));
                summary(cli, a, &plan, false, outcome, None, None)?;
                return Ok(outcome);
            }
            None => {}
        }
    }

    let (outcome, captured) = execute(&a.command)?;
    let Some(captured) = captured else {
        // Could not start: nothing to record, and a waiter will try for itself.
        return Ok(outcome);
    };
    let duration_ms = captured.duration.as_millis() as i64;
    let code = match captured.ended {
        exec::Ended::Signaled(sig) => {
            // Never cached; dropping the claim lets exactly one waiter try again.
            say(format!("{} was killed by signal {sig}; not cached", plan.key.task));
            summary(cli, a, &plan, false, outcome, Some(duration_ms), None)?;
            return Ok(outcome);
        }
        exec::Ended::Exited(c) => c,
    };
    if code != 0 && !a.cache_failures {
        let payload = serde_json::json!({
            "exit_code": code,
            "console": base64::engine::general_purpose::STANDARD.encode(&captured.console),
        })
        .to_string();
        if let Some(g) = guard {
            g.fail(&payload)?;
        }
        if let Some(l) = lease {
            l.fail(&payload);
        }
        say(format!(
            "{} exited with {code}; not cached (--cache-failures caches failures)",
            plan.key.task
        ));
        summary(cli, a, &plan, false, outcome, Some(duration_ms), None)?;
        return Ok(outcome);
    }
    let opts = SaveOptions {
        ttl: a.ttl,
        duration_ms: Some(duration_ms),
        tags: a.tags.iter().cloned().collect(),
        details: serde_json::json!({
            "source": "run",
            "argv": a.command.iter().map(|s| s.to_string_lossy()).collect::<Vec<_>>(),
            "cwd": cwd.display().to_string(),
            "outputs": plan.outputs,
            "ingredients": plan.ingredients,
            "input_files": plan.input_files,
        }),
        extras_display: plan
            .ingredients
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "task" | "namespace" | "inputs"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        console: Some(captured.console),
        exit_code: Some(code),
        audit_op: None,
    };
    match v.save(&plan.key, Output::Tree { root: &cwd, parts: &plan.outputs }, &opts) {
        Ok(e) => {
            let shared = match remote.map(|r| super::remote::push(r, v, &e)).transpose()? {
                Some(Some(_)) => {
                    // Committing the entry ended the server's claim.
                    if let Some(l) = lease.take() {
                        l.done();
                    }
                    ", shared with the remote"
                }
                _ => "",
            };
            say(format!(
                "cached {} (exit {code}, {}{shared})",
                plan.key.task,
                human::duration_ms(duration_ms)
            ));
            summary(cli, a, &plan, false, outcome, Some(duration_ms), Some(&e.id))?;
        }
        Err(err) => {
            // The command's own exit code still wins; only the caching step failed.
            human::note(human::cross(&format!("taskvault: not cached: {err}")));
            summary(cli, a, &plan, false, outcome, Some(duration_ms), None)?;
        }
    }
    drop(lease);
    drop(guard);
    Ok(outcome)
}

/// `run --no-save` where there is no vault: nothing to replay and nothing to save, so the
/// command runs and the status line says so.
pub fn run_without_vault(
    cli: &Cli,
    a: &RunArgs,
    resolved: &taskvault_settings::Resolved,
) -> Result<Outcome> {
    let (outcome, captured) = execute(&a.command)?;
    let task = a.task.clone().unwrap_or_else(|| default_task(&a.command));
    let where_ = format!("no vault at {}", resolved.settings.vault_dir.display());
    if let Some(c) = &captured {
        let ms = c.duration.as_millis() as i64;
        emit_summary(
            cli,
            a,
            &summary_json(&task, None, false, outcome, Some(ms), None, &a.outputs),
        )?;
        if !cli.json && !a.quiet {
            human::note(format!(
                "taskvault: miss {task} (ran, {}, {}; not saved: --no-save, {where_})",
                exit_text(&c.ended),
                human::duration_ms(ms)
            ));
        }
    }
    Ok(outcome)
}

fn exit_code(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::Exit(c) => c as i64,
        Outcome::Ok => 0,
        Outcome::Miss => 1,
    }
}

fn exit_text(ended: &exec::Ended) -> String {
    match ended {
        exec::Ended::Exited(c) => format!("exit {c}"),
        exec::Ended::Signaled(s) => format!("killed by signal {s}"),
    }
}

/// Runs the command; `None` if it could not even start (the outcome says how to exit).
fn execute(argv: &[OsString]) -> Result<(Outcome, Option<exec::Captured>)> {
    match exec::run(argv)? {
        Ok(c) => Ok((Outcome::Exit(c.ended.shell_code()), Some(c))),
        Err(e) => {
            human::note(human::cross(&format!("taskvault: {}", e.message)));
            Ok((Outcome::Exit(e.code), None))
        }
    }
}

/// Restores every declared output and replays the console; `None` if something failed
/// verification (counted as a miss; the caller computes instead).
fn replay(v: &Vault, plan: &Plan, e: &Entry, cwd: &Path, link: bool) -> Result<Option<Outcome>> {
    for part in &plan.outputs {
        let dest = cwd.join(part);
        if let Some(parent) = dest.parent() {
            fs_err::create_dir_all(parent)?;
        }
        let restored = if link {
            v.restore_part_linked(e, part, &dest)?
        } else {
            v.restore_part(e, part, &dest)?
        };
        if restored.is_none() {
            v.missed(&plan.key, "run")?;
            return Ok(None);
        }
    }
    let Some(log) = v.console(e)? else {
        v.missed(&plan.key, "run")?;
        return Ok(None);
    };
    v.served(e, "run")?;
    console::replay(&log)?;
    Ok(Some(Outcome::Exit((e.exit_code.unwrap_or(0) & 0xff) as u8)))
}

/// `--explain`: what the remote tier answered after the local miss.
fn explain_remote(r: &taskvault_remote::Remote, pulled: &super::remote::Pulled) {
    let what = match pulled {
        super::remote::Pulled::Hit => "hit (fetched and verified into the local vault)",
        super::remote::Pulled::Miss => "miss",
        super::remote::Pulled::Unavailable => "not asked or not answering (see the warning)",
    };
    human::note(format!("  remote {}: {what}", r.url()));
}

fn replay_failure(payload: &str) -> Result<Outcome> {
    let v: serde_json::Value = serde_json::from_str(payload)
        .context("the concurrent run's failure record is malformed")?;
    let log = base64::engine::general_purpose::STANDARD
        .decode(v["console"].as_str().unwrap_or_default())
        .context("the concurrent run's console log is malformed")?;
    console::replay(&log)?;
    Ok(Outcome::Exit((v["exit_code"].as_i64().unwrap_or(1) & 0xff) as u8))
}

fn explain_key(plan: &Plan) {
    human::note(format!("taskvault: key {} made of:", &plan.key.digest().hex()[..16]));
    for (name, value) in &plan.ingredients {
        human::note(format!("  {name:<16} {value}"));
    }
    human::note(format!("  {} input files", plan.input_files.len()));
}

/// After a miss: which ingredients differ from the last run of the same task.
fn explain_miss(v: &Vault, plan: &Plan) -> Result<()> {
    let filter = Filter {
        task: Some(plan.key.task.clone()),
        all: true,
        limit: Some(1),
        ..Filter::default()
    };
    let Some(last) = v.list(&filter)?.into_iter().next() else {
        human::note(format!("taskvault: miss: {} has never been cached", plan.key.task));
        return Ok(());
    };
    let map = |key: &str| -> BTreeMap<String, String> {
        serde_json::from_value(last.details[key].clone()).unwrap_or_default()
    };
    let (before, files_before) = (map("ingredients"), map("input_files"));
    human::note(format!("taskvault: miss; compared with run {}:", human::short(&last.id)));
    let names: std::collections::BTreeSet<&String> =
        before.keys().chain(plan.ingredients.keys()).collect();
    for name in names {
        let (a, b) = (before.get(name), plan.ingredients.get(name));
        if a != b {
            human::note(format!(
                "  {name} differs: {} -> {}",
                a.map_or("(absent)", String::as_str),
                b.map_or("(absent)", String::as_str)
            ));
        }
    }
    let files: std::collections::BTreeSet<&String> =
        files_before.keys().chain(plan.input_files.keys()).collect();
    let mut shown = 0;
    for f in files {
        let what = match (files_before.get(f), plan.input_files.get(f)) {
            (Some(a), Some(b)) if a != b => "changed",
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ => continue,
        };
        if shown < 20 {
            human::note(format!("    {what}: {f}"));
        }
        shown += 1;
    }
    if shown > 20 {
        human::note(format!("    ... and {} more", shown - 20));
    }
    Ok(())
}

/// The machine-readable summary: on stderr with `--json`, to a file with `--summary`.
fn summary(
    cli: &Cli,
    a: &RunArgs,
    plan: &Plan,
    hit: bool,
    outcome: Outcome,
    duration_ms: Option<i64>,
    run_id: Option<&str>,
) -> Result<()> {
    if !cli.json && a.summary.is_none() {
        return Ok(());
    }
    let key = Some(plan.key.digest().hex());
    let s = summary_json(&plan.key.task, key, hit, outcome, duration_ms, run_id, &plan.outputs);
    emit_summary(cli, a, &s)
}

fn summary_json(
    task: &str,
    key: Option<String>,
    hit: bool,
    outcome: Outcome,
    duration_ms: Option<i64>,
    run_id: Option<&str>,
    outputs: &[String],
) -> serde_json::Value {
    serde_json::json!({
        "task": task,
        "key": key,
        "hit": hit,
        "exit_code": exit_code(outcome),
        "duration_ms": duration_ms,
        "run_id": run_id,
        "outputs": outputs,
    })
}

/// The summary on stderr with `--json`, and to the `--summary` file.
fn emit_summary(cli: &Cli, a: &RunArgs, s: &serde_json::Value) -> Result<()> {
    if cli.json {
        human::note(s.to_string());
    }
    if let Some(path) = &a.summary {
        fs_err::write(path, format!("{s}\n"))?;
    }
    Ok(())
}
