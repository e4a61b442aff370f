//! A parser for the common shapes of `taskvault run` and `taskvault cache get`, taken before
//! clap's.
//!
//! A cache hit is a whole process, and building clap's command tree for the whole CLI costs
//! about a third of one. This parser understands only the plain spellings of the global flags,
//! the `run` flags and `cache get TASK INPUT OUTPUT [--input P]...`, and returns `None` for
//! anything else (help, version, clusters of short flags, a repeated single flag, an empty or
//! hyphen-led value, any other subcommand), so that clap parses it and reports errors as usual. clap stays the definition: the tests parse generated
//! command lines with both and require the same [`Cli`] wherever this one answers.

use std::ffi::OsString;
use std::path::PathBuf;

use super::{CacheCommand, Cli, Command, GetArgs, RunArgs, parse_duration, parse_tag};

/// `args` as from `std::env::args_os()` (program name first).
pub fn parse(args: &[OsString]) -> Option<Cli> {
    let mut cli = Cli {
        dir: None,
        config: None,
        json: false,
        verbose: 0,
        no_progress: false,
        command: Command::Stats(crate::cli::StatsArgs::default()),
    };
    let mut run = RunArgs {
        task: None,
        inputs: Vec::new(),
        allow_empty: false,
        env: Vec::new(),
        cwd_in_key: false,
        salt: None,
        outputs: Vec::new(),
        cache_failures: false,
        link: false,
        ttl: None,
        tags: Vec::new(),
        quiet: false,
        summary: None,
        no_save: false,
        force: false,
        explain: false,
        command: Vec::new(),
    };
    let mut seen_run = false;
    let mut i = 1;
    while i < args.len() {
        let arg = args[i].to_str()?;
        i += 1;
        if arg == "--" {
            // Only `run` takes a command, and it must have one.
            if !seen_run || i == args.len() {
                return None;
            }
            run.command = args[i..].to_vec();
            cli.command = Command::Run(run);
            return Some(cli);
        }
        if !seen_run {
            if arg == "run" {
                seen_run = true;
                continue;
            }
            if arg == "cache" {
                return cache_get(cli, args, i);
            }
            // Global flags may come before the subcommand; anything else is clap's.
            if !global(&mut cli, arg, args, &mut i)? {
                return None;
            }
            continue;
        }
        if !global(&mut cli, arg, args, &mut i)? && !run_flag(&mut run, arg, args, &mut i)? {
            return None;
        }
    }
    // No `--`: clap requires the command after it (or this is `run --help` and the like).
    None
}

/// The rest of `cache get TASK INPUT OUTPUT [--input P]...` (from `args[i]`, after `cache`):
/// three plain positionals, global flags and `--input`, anything else clap's.
fn cache_get(mut cli: Cli, args: &[OsString], mut i: usize) -> Option<Cli> {
    if args.get(i)?.to_str()? != "get" {
        return None;
    }
    i += 1;
    let mut positionals: Vec<&str> = Vec::with_capacity(3);
    let mut more_inputs = Vec::new();
    while i < args.len() {
        let arg = args[i].to_str()?;
        i += 1;
        if global(&mut cli, arg, args, &mut i)? {
            continue;
        }
        if let Some(v) = value("--input", None, arg, args, &mut i)? {
            more_inputs.push(PathBuf::from(v));
            continue;
        }
        // `-` (stdin), `--` and every other hyphen-led or empty word are clap's to read.
        if arg.is_empty() || arg.starts_with('-') || positionals.len() == 3 {
            return None;
        }
        positionals.push(arg);
    }
    let [task, input, output] = positionals.as_slice() else { return None };
    cli.command = Command::Cache(CacheCommand::Get(GetArgs {
        task: (*task).to_owned(),
        input: PathBuf::from(input),
        output: PathBuf::from(output),
        more_inputs,
    }));
    Some(cli)
}

/// Splits `--name=value` / `--name value` / `-x value`. `Some(None)` when `arg` is not `flag`.
fn value<'a>(
    flag: &str,
    short: Option<&str>,
    arg: &'a str,
    args: &'a [OsString],
    i: &mut usize,
) -> Option<Option<&'a str>> {
    let v = if arg == flag || short == Some(arg) {
        let v = args.get(*i)?.to_str()?;
        *i += 1;
        v
    } else if let Some(v) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
        v
    } else {
        return Some(None);
    };
    // clap rejects some empty values and reads hyphen-led ones as flags: leave both to it.
    if v.is_empty() || v.starts_with('-') {
        return None;
    }
    Some(Some(v))
}

/// Sets a flag that clap rejects when given twice.
fn once(slot: &mut bool) -> Option<bool> {
    if *slot {
        return None;
    }
    *slot = true;
    Some(true)
}

/// Sets an option that clap rejects when given twice.
fn once_value<T>(slot: &mut Option<T>, v: T) -> Option<bool> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(true)
}

/// `Some(true)` if `arg` was a global flag and was applied, `Some(false)` if it is not one,
/// `None` if clap must decide.
fn global(cli: &mut Cli, arg: &str, args: &[OsString], i: &mut usize) -> Option<bool> {
    match arg {
        "--json" => return once(&mut cli.json),
        "--no-progress" => return once(&mut cli.no_progress),
        "-v" | "--verbose" => {
            cli.verbose = cli.verbose.checked_add(1)?;
            return Some(true);
        }
        _ => {}
    }
    if let Some(v) = value("--dir", None, arg, args, i)? {
        return once_value(&mut cli.dir, PathBuf::from(v));
    }
    if let Some(v) = value("--config", None, arg, args, i)? {
        return once_value(&mut cli.config, PathBuf::from(v));
    }
    Some(false)
}

/// Like [`global`], for the flags of `run`.
fn run_flag(run: &mut RunArgs, arg: &str, args: &[OsString], i: &mut usize) -> Option<bool> {
    match arg {
        "--allow-empty" => return once(&mut run.allow_empty),
        "--cwd-in-key" => return once(&mut run.cwd_in_key),
        "--cache-failures" => return once(&mut run.cache_failures),
        "--link" => return once(&mut run.link),
        "-q" | "--quiet" => return once(&mut run.quiet),
        "--no-save" => return once(&mut run.no_save),
        "--force" => return once(&mut run.force),
        "--explain" => return once(&mut run.explain),
        _ => {}
    }
    if let Some(v) = value("--input", Some("-i"), arg, args, i)? {
        run.inputs.push(v.to_owned());
    } else if let Some(v) = value("--output", Some("-o"), arg, args, i)? {
        run.outputs.push(v.to_owned());
    } else if let Some(v) = value("--env", Some("-e"), arg, args, i)? {
        run.env.push(v.to_owned());
    } else if let Some(v) = value("--tag", None, arg, args, i)? {
        run.tags.push(parse_tag(v).ok()?);
    } else if let Some(v) = value("--task", None, arg, args, i)? {
        return once_value(&mut run.task, v.to_owned());
    } else if let Some(v) = value("--key", None, arg, args, i)? {
        return once_value(&mut run.salt, v.to_owned());
    } else if let Some(v) = value("--ttl", None, arg, args, i)? {
        return once_value(&mut run.ttl, parse_duration(v).ok()?);
    } else if let Some(v) = value("--summary", None, arg, args, i)? {
        return once_value(&mut run.summary, PathBuf::from(v));
    } else {
        return Some(false);
    }
    Some(true)
}

#[cfg(test)]
mod tests;
