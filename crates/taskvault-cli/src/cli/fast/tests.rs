use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};
use taskvault_testkit::Rng;

use super::parse;
use crate::cli::Cli;

fn os(args: &[&str]) -> Vec<OsString> {
    std::iter::once("taskvault").chain(args.iter().copied()).map(OsString::from).collect()
}

fn clap_parse(args: &[OsString]) -> Option<Cli> {
    let m = Cli::command().try_get_matches_from(args).ok()?;
    Cli::from_arg_matches(&m).ok()
}

/// Wherever the fast parser answers, clap must give the same answer.
fn agrees(args: &[OsString]) -> bool {
    match parse(args) {
        None => true,
        Some(fast) => {
            let slow = clap_parse(args);
            assert_eq!(slow.as_ref(), Some(&fast), "fast and clap parses differ for {args:?}");
            true
        }
    }
}

#[test]
fn takes_the_usual_run_lines() {
    let lines: &[&[&str]] = &[
        &["run", "--", "echo", "hello"],
        &["run", "-q", "--", "echo", "hello"],
        &["--json", "run", "-q", "--", "true"],
        &["run", "-i", "src/**/*.py", "--input", "req.txt", "--input=x", "--", "pytest", "-q"],
        &[
            "run",
            "--env",
            "PYTHONHASHSEED",
            "-e",
            "HOME",
            "-o",
            "build/r.xml",
            "--output=dist/",
            "--",
            "make",
        ],
        &[
            "-v",
            "run",
            "--task",
            "t",
            "--key=salt",
            "--ttl",
            "7d",
            "--tag",
            "a=b",
            "--tag=c=",
            "--",
            "x",
        ],
        &[
            "run",
            "--summary",
            "s.json",
            "--no-save",
            "--force",
            "--explain",
            "--link",
            "--",
            "x",
            "--json",
        ],
        &[
            "--dir",
            "/v",
            "--config=/c.yaml",
            "run",
            "--no-progress",
            "--cwd-in-key",
            "--allow-empty",
            "--cache-failures",
            "-v",
            "-v",
            "--json",
            "--",
            "cmd",
            "--",
            "-q",
        ],
    ];
    for line in lines {
        let args = os(line);
        let fast = parse(&args).unwrap_or_else(|| panic!("fast parser declined {line:?}"));
        assert_eq!(clap_parse(&args).as_ref(), Some(&fast), "{line:?}");
    }
}

#[test]
fn takes_the_usual_cache_get_lines() {
    let lines: &[&[&str]] = &[
        &["cache", "get", "t", "i", "o"],
        &["--json", "cache", "get", "train", "data.csv", "model.pkl"],
        &["cache", "get", "t", "i", "o", "--input", "more", "--input=again"],
        &["--dir", "/v", "cache", "get", "t", "--config=c.yaml", "i", "-v", "o", "--no-progress"],
        &["cache", "get", "run", "get", "cache"],
    ];
    for line in lines {
        let args = os(line);
        let fast = parse(&args).unwrap_or_else(|| panic!("fast parser declined {line:?}"));
        assert_eq!(clap_parse(&args).as_ref(), Some(&fast), "{line:?}");
    }
}

#[test]
fn leaves_everything_else_to_clap() {
    let lines: &[&[&str]] = &[
        &["run", "--help"],
        &["run", "-h", "--", "x"],
        &["--version", "run", "--", "x"],
        &["run", "echo", "hi"],
        &["run", "--"],
        &["run", "-qv", "--", "x"],
        &["run", "-ifoo", "--", "x"],
        &["run", "--task", "a", "--task", "b", "--", "x"],
        &["run", "--task", "--", "x"],
        &["run", "--task=", "--", "x"],
        &["run", "--ttl", "-5", "--", "x"],
        &["run", "--ttl", "soon", "--", "x"],
        &["run", "--tag", "novalue", "--", "x"],
        &["run", "--quiet", "--quiet", "--", "x"],
        &["run", "--json=true", "--", "x"],
        &["run", "--frobnicate", "--", "x"],
        &["cache", "get", "t", "-", "o"],
        &["cache", "get", "t", "i"],
        &["cache", "get", "t", "i", "o", "x"],
        &["cache", "get", "--", "t", "i", "o"],
        &["cache", "get", "t", "i", "o", "--input"],
        &["cache", "get", "t", "i", "o", "--help"],
        &["cache", "get", "t", "", "o"],
        &["cache", "--json", "get", "t", "i", "o"],
        &["cache", "save", "t", "i", "o"],
        &["cache", "stats"],
        &["log", "--", "x"],
        &["--", "run"],
        &[],
    ];
    for line in lines {
        assert_eq!(parse(&os(line)), None, "{line:?}");
    }
}

/// Random command lines from the flags' vocabulary, including the spellings the fast parser
/// declines, checked against clap.
#[test]
fn agrees_with_clap_on_generated_lines() {
    const TOKENS: &[&str] = &[
        "run",
        "--",
        "--json",
        "--no-progress",
        "-v",
        "--verbose",
        "--dir",
        "--dir=/v",
        "--config",
        "--config=c.yaml",
        "--task",
        "--task=t",
        "--key",
        "--key=k",
        "-i",
        "--input",
        "--input=a",
        "-o",
        "--output",
        "--output=o",
        "-e",
        "--env",
        "--env=E",
        "--tag",
        "--tag=a=b",
        "--ttl",
        "--ttl=90m",
        "--summary",
        "--summary=s",
        "--allow-empty",
        "--cwd-in-key",
        "--cache-failures",
        "--link",
        "-q",
        "--quiet",
        "--no-save",
        "--force",
        "--explain",
        "x",
        "a=b",
        "5",
        "7d",
        "",
        "-",
        "-x",
        "-qv",
        "--help",
        "cache",
        "get",
        "log",
        "t",
        "in.txt",
    ];
    let mut rng = Rng::new(7);
    let mut answered = 0;
    let mut answered_get = 0;
    for _ in 0..20_000 {
        let len = 1 + rng.below(10) as usize;
        let mut line: Vec<&str> = Vec::with_capacity(len + 3);
        match rng.below(8) {
            0 | 1 => {}
            2 | 3 => line.extend(["cache", "get"]),
            _ => line.push("run"),
        }
        line.extend((0..len).map(|_| TOKENS[rng.below(TOKENS.len() as u64) as usize]));
        if rng.below(3) != 0 {
            line.extend(["--", "cmd"]);
        }
        let args = os(&line);
        agrees(&args);
        let fast = parse(&args);
        answered += usize::from(fast.is_some());
        answered_get += usize::from(matches!(
            fast.map(|c| c.command),
            Some(crate::cli::Command::Cache(crate::cli::CacheCommand::Get(_)))
        ));
    }
    // The generator must reach the fast path often enough for the comparison to mean something.
    assert!(answered > 500, "only {answered} generated lines took the fast path");
    // `cache get` lines from their own vocabulary: words, globals, `--input`, and spellings
    // the fast parser declines.
    const GET_TOKENS: &[&str] = &[
        "t",
        "in.txt",
        "out",
        "run",
        "get",
        "--input",
        "--input=a",
        "--input=",
        "--json",
        "-v",
        "--dir",
        "--dir=/v",
        "--config=c.yaml",
        "--no-progress",
        "-",
        "--",
        "",
        "-i",
        "--help",
        "--json=true",
    ];
    for _ in 0..20_000 {
        let len = 3 + rng.below(4) as usize;
        let mut line = vec!["cache", "get"];
        // Half the words plain positionals, so that many lines are ones the fast path takes.
        line.extend((0..len).map(|_| {
            let n = if rng.below(2) == 0 { 5 } else { GET_TOKENS.len() as u64 };
            GET_TOKENS[rng.below(n) as usize]
        }));
        let args = os(&line);
        agrees(&args);
        answered_get += usize::from(parse(&args).is_some());
    }
    assert!(answered_get > 500, "only {answered_get} generated `cache get` lines took it");
}
