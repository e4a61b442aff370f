//! The `taskvault` binary: parses arguments, resolves settings, runs one command and maps the
//! outcome to the documented exit codes (0 hit or success, 1 miss, 2 error).

mod cli;
mod commands;
mod human;

use std::io::IsTerminal;
use std::process::ExitCode;

/// What a command reports back to `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success or a hit: exit 0.
    Ok,
    /// A miss (or, for `verify`, problems found): exit 1.
    Miss,
    /// A wrapped command's own exit code (`run`), passed through.
    Exit(u8),
}

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    // The usual `run` line skips building clap's command tree (a third of a cache hit); clap
    // parses everything else, and reports every error.
    let cli = match cli::fast::parse(&args) {
        Some(c) => c,
        None => match parse_with_clap(args) {
            Ok(c) => c,
            Err(code) => return code,
        },
    };
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Miss) => ExitCode::from(1),
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} {}", human::cross("error:"), error_text(&e));
            ExitCode::from(2)
        }
    }
}

fn parse_with_clap(args: Vec<std::ffi::OsString>) -> Result<cli::Cli, ExitCode> {
    // The command tree is leaked, not dropped: freeing it costs more than all the parsing of a
    // cache hit, and the process is about to exit anyway.
    let command = Box::leak(Box::new(<cli::Cli as clap::CommandFactory>::command()));
    command
        .try_get_matches_from_mut(args)
        .and_then(|m| <cli::Cli as clap::FromArgMatches>::from_arg_matches(&m))
        .map_err(|e| {
            if !e.use_stderr() {
                // --help and --version: clap's text, on stdout.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            eprint!("{}", one_line_error(&e.render().to_string()));
            ExitCode::from(2)
        })
}

/// An error and its causes on one line, each cause once: an error whose message already
/// quotes its source (an I/O error's) does not repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// A clap error as one line, plus the usage line where clap gives one: clap's own rendering
/// spreads one message over four to six lines.
fn one_line_error(rendered: &str) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_owned());
        } else if line.starts_with("For more information") || line.is_empty() {
            continue;
        } else if line.starts_with("tip: ") {
            message.push(format!("({line})"));
        } else {
            message.push(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        }
    }
    let mut out = format!("{} {}\n", human::cross("error:"), message.join(" "));
    if let Some(u) = usage {
        out.push_str(&format!("usage: {u} (--help for more)\n"));
    }
    out
}

fn run(cli: cli::Cli) -> anyhow::Result<Outcome> {
    // `init` must work where the existing config is broken, so it resolves nothing else; nor
    // do the commands that print what the command line itself is.
    match &cli.command {
        cli::Command::Init { force } => return commands::init(&cli, *force),
        cli::Command::Completions { shell } => return commands::completions(*shell),
        cli::Command::Man => return commands::man(),
        _ => {}
    }
    // Only saves record who and where (imports keep the exporter's); lookups skip it.
    let identity = matches!(
        &cli.command,
        cli::Command::Cache(cli::CacheCommand::Save(_)) | cli::Command::Run(_)
    );
    let resolved = taskvault_settings::resolve(&taskvault_settings::Overrides {
        dir: cli.dir.clone(),
        config: cli.config.clone(),
        verbose: cli.verbose,
        identity,
    })?;
    init_logging(&resolved.log_level);
    tracing::debug!(vault = %resolved.settings.vault_dir.display(), config = ?resolved.config_path);
    match &cli.command {
        cli::Command::Config => return commands::config(&cli, &resolved),
        cli::Command::Token(t) => return commands::serve::token(&cli, &resolved, t),
        cli::Command::Serve(a) => {
            resolved.check_creatable()?;
            return commands::serve::serve(&cli, resolved, a);
        }
        _ => {}
    }
    if let Some(outcome) = commands::remote_view(&cli, &resolved)? {
        return Ok(outcome);
    }
    if !resolved.vault_exists() {
        // A command that only reads never makes a vault; one that saves may, where allowed.
        match commands::without_vault(&cli, &resolved)? {
            Some(outcome) => return Ok(outcome),
            None => resolved.check_creatable()?,
        }
    }
    let progress = !cli.no_progress && std::io::stderr().is_terminal();
    commands::dispatch(&cli, resolved, progress)
}

fn init_logging(level: &str) {
    // Only our crates log; a plain level is all the filtering needed.
    let level = level.parse().unwrap_or(tracing::level_filters::LevelFilter::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(human::color_enabled())
        .without_time()
        .with_target(false)
        .try_init();
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
