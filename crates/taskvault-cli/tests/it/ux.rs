//! A new user's first hour: what the CLI does where there is no vault yet, how `rm` and `run`
//! report what they did, and how errors read.

use crate::Project;

fn saved(p: &Project, task: &str, input: &str, output: &[u8]) -> String {
    p.write("in", input);
    p.write("out", output);
    p.run(&["--json", "cache", "save", task, "in", "out"]).ok().json()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn rm_removes_exactly_the_run_named_and_rm_key_every_run() {
    let p = Project::new();
    let old = saved(&p, "t", "i", b"first");
    let live = saved(&p, "t", "i", b"second");
    // The older run only: the key still hits, with the newer result.
    let r = p.run(&["rm", &old[..12]]).ok();
    assert!(r.stderr().contains("history; the key's live entry, if any, stays"), "{}", r.stderr());
    p.run(&["cache", "get", "t", "in", "got"]).ok();
    assert_eq!(std::fs::read(p.path("got")).unwrap(), b"second");
    assert!(p.run(&["show", &old]).code_is(2).stderr().contains("no entry matches"));
    let history = p.run(&["--json", "history", &live]).ok().json();
    assert_eq!(history.as_array().unwrap().len(), 1);
    // --key: the live run and all its history.
    let newer = saved(&p, "t", "i", b"third");
    let r = p.run(&["rm", "--key", &newer[..12]]).ok();
    assert!(r.stderr().contains("with all their history"), "{}", r.stderr());
    p.run(&["cache", "get", "t", "in", "got"]).code_is(1);
    assert!(p.run(&["show", &live]).code_is(2).stderr().contains("no entry matches"));
    // Removing a live run: a miss, its history kept and shown.
    let a = saved(&p, "u", "j", b"one");
    let b = saved(&p, "u", "j", b"two");
    let r = p.run(&["rm", &b]).ok();
    assert!(r.stderr().contains("the key is now a miss; its history stays"), "{}", r.stderr());
    p.run(&["cache", "get", "u", "in", "got"]).code_is(1);
    let shown = p.run(&["show", &a]).ok().stdout();
    assert!(shown.contains("status:     superseded"), "{shown}");
}

#[test]
fn commands_that_only_read_never_make_a_vault() {
    let p = Project::new();
    p.write("in", "i");
    let readers: &[&[&str]] = &[
        &["stats"],
        &["cache", "stats"],
        &["log"],
        &["show", "abc"],
        &["history", "abc"],
        &["diff", "abc", "def"],
        &["get", "abc"],
        &["verify"],
        &["gc"],
        &["rm", "abc"],
        &["invalidate", "--tag", "a"],
        &["clear", "--yes"],
        &["export", "x.tar.zst"],
    ];
    for args in readers {
        let r = p.run(args).code_is(2);
        let err = r.stderr();
        assert!(err.contains("no vault at") && err.contains(".taskvault/cache"), "{args:?}: {err}");
        assert!(err.contains("the default cache_dir"), "{args:?} says where it looked: {err}");
    }
    // A lookup is a miss, and says why.
    let r = p.run(&["cache", "get", "t", "in", "got"]).code_is(1);
    assert!(r.stderr().contains("Cache miss for t (no vault at"), "{}", r.stderr());
    assert!(!p.path(".taskvault").exists(), "nothing was made");
    // A save makes the default vault inside the project.
    p.run(&["cache", "save", "t", "in", "in"]).ok();
    assert!(p.path(".taskvault/cache/cache.db").exists());
}

#[test]
fn a_mistyped_cache_dir_outside_the_project_is_an_error_not_a_new_tree() {
    let p = Project::new();
    let elsewhere = tempfile::tempdir().unwrap();
    let typo = elsewhere.path().join("cahce/deep/tree");
    p.write(".taskvault/config.yaml", format!("cache_dir: {}\n", typo.display()));
    p.write("in", "i");
    let r = p.run(&["cache", "save", "t", "in", "in"]).code_is(2);
    assert!(
        r.stderr().contains("does not exist: create it first, or fix cache_dir"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("config.yaml"), "it names the file: {}", r.stderr());
    assert!(!elsewhere.path().join("cahce").exists());
    // Given explicitly, the path is made.
    let dir = typo.display().to_string();
    p.run(&["--dir", &dir, "cache", "save", "t", "in", "in"]).ok();
    assert!(typo.join("cache.db").exists());
}

#[test]
fn init_and_new_vaults_keep_git_from_committing_the_vault() {
    let p = Project::new();
    p.run(&["init"]).ok();
    let ignore = std::fs::read_to_string(p.path(".taskvault/.gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "cache/"), "{ignore}");
    p.write("in", "i");
    p.run(&["cache", "save", "t", "in", "in"]).ok();
    // And a vault anywhere ignores itself.
    let other = p.path("elsewhere/vault");
    p.run(&["--dir", other.to_str().unwrap(), "cache", "save", "t", "in", "in"]).ok();
    assert_eq!(
        std::fs::read_to_string(other.join(".gitignore")).unwrap().lines().last(),
        Some("*")
    );
    let git = |args: &[&str]| {
        std::process::Command::new("git").args(args).current_dir(p.dir.path()).output().unwrap()
    };
    assert!(git(&["init", "-q"]).status.success(), "git is needed for this test");
    assert!(git(&["add", "."]).status.success());
    let staged = String::from_utf8(git(&["ls-files"]).stdout).unwrap();
    assert!(staged.contains(".taskvault/config.yaml"), "{staged}");
    assert!(!staged.contains("cache.db") && !staged.contains("blobs/"), "{staged}");
}

#[test]
fn run_says_what_happened_in_every_mode() {
    let p = Project::new();
    let run = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo out"]);
        p.run(&args)
    };
    let r = run(&["--no-save"]).ok();
    assert_eq!(r.stdout(), "out\n");
    assert!(r.stderr().contains("taskvault: miss sh (ran, exit 0,"), "{}", r.stderr());
    assert!(r.stderr().contains("not saved: --no-save"), "{}", r.stderr());
    run(&[]).ok();
    let r = run(&["--no-save"]).ok();
    assert!(r.stderr().contains("taskvault: hit sh"), "{}", r.stderr());
    // --json: the JSON summary instead of the status line, on stderr (stdout is the command's).
    let r = run(&["--json"]).ok();
    assert_eq!(r.stdout(), "out\n");
    let err = r.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    let s: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(s["hit"], true);
    let help = p.run(&["run", "--help"]).ok().stdout();
    assert!(help.contains("on stderr"), "the help says where --json goes: {help}");
}

#[test]
fn errors_are_one_line_and_say_each_thing_once() {
    let p = Project::new();
    for (args, needle) in [
        (&["lgo"][..], "unrecognized subcommand 'lgo'"),
        (&["show"][..], "the following required arguments were not provided: <HASH>"),
        (&["log", "--limit", "x"][..], "invalid value 'x' for '--limit <LIMIT>'"),
    ] {
        let r = p.run(args).code_is(2);
        let err = r.stderr();
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines[0].starts_with("✗ error: ") && lines[0].contains(needle), "{args:?}: {err}");
        assert!(lines.len() <= 2, "{args:?}: one line and a usage hint at most: {err}");
        if lines.len() == 2 {
            assert!(lines[1].starts_with("usage: taskvault"), "{err}");
        }
    }
    // An OS error is said once.
    let err = p.run(&["import", "/nonexistent/a.tar.zst"]).code_is(2).stderr();
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    // A config value that is wrong names its line and column, and the environment is held to
    // the same rule as the file.
    p.write(".taskvault/config.yaml", "max_size_gb: 1\nlog_level: chatty\n");
    let err = p.run(&["stats"]).code_is(2).stderr();
    assert!(err.contains("log_level must be debug, info, warn, error or trace"), "{err}");
    assert!(err.contains("at line 2 column 12"), "{err}");
    p.write(".taskvault/config.yaml", "policies:\n  t:\n    ttl_seconds: -5\n");
    let err = p.run(&["stats"]).code_is(2).stderr();
    assert!(err.contains("at line 3 column 18"), "{err}");
    std::fs::remove_file(p.path(".taskvault/config.yaml")).unwrap();
    let err = p.cmd().args(["stats"]).env("TASKVAULT_LOG", "chatty").output().unwrap();
    assert_eq!(err.status.code(), Some(2));
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(
        err.contains("TASKVAULT_LOG must be debug, info, warn, error or trace, got \"chatty\""),
        "{err}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions_as_help() {
    let p = Project::new();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let script = p.run(&["completions", shell]).ok().stdout();
        assert!(script.contains("taskvault") && script.contains("invalidate"), "{shell}: {script}");
    }
    p.run(&["completions", "tcsh"]).code_is(2);
    let man = p.run(&["man"]).ok().stdout();
    assert!(man.contains(".TH taskvault 1") && man.contains("invalidate"), "{man}");
    assert!(!p.path(".taskvault").exists(), "neither needs a vault");
}

#[test]
fn config_shows_every_setting_and_where_it_came_from() {
    let p = Project::new();
    p.write(".taskvault/config.yaml", "max_size_gb: 2\npolicies:\n  ml:\n    ttl_seconds: 60\n");
    let file = p.path(".taskvault/config.yaml").display().to_string();
    let c = p.run(&["--json", "config"]).ok().json();
    assert_eq!(c["config"]["from"], "found here or above");
    assert_eq!(
        (c["max_size_gb"]["value"].as_str(), c["max_size_gb"]["from"].as_str()),
        (Some("2.0"), Some(&file[..]))
    );
    assert_eq!(c["policies.ml.ttl_seconds"]["from"], file.as_str());
    assert_eq!(c["hash_algorithm"]["from"], "default");
    assert_eq!(c["cache_dir"]["from"], "default");
    let c = p
        .cmd()
        .args(["--json", "--dir", "elsewhere", "config"])
        .env("TASKVAULT_LOG", "debug")
        .output()
        .unwrap();
    let c: serde_json::Value = serde_json::from_slice(&c.stdout).unwrap();
    assert_eq!(c["cache_dir"]["from"], "--dir");
    assert_eq!(
        (c["log_level"]["value"].as_str(), c["log_level"]["from"].as_str()),
        (Some("debug"), Some("TASKVAULT_LOG"))
    );
    let human = p.run(&["config"]).ok().stdout();
    assert!(
        human.lines().any(|l| l.starts_with("max_size_gb") && l.ends_with(&format!("({file})"))),
        "{human}"
    );
    assert!(!p.path(".taskvault/cache").exists(), "config reads, it makes nothing");
    assert_eq!(
        (c["storage.metadata"]["value"].as_str(), c["storage.blobs"]["value"].as_str()),
        (Some("sqlite"), Some("local"))
    );
}

#[test]
fn config_shows_an_object_store_url_without_its_secrets() {
    let p = Project::new();
    let url = "s3://cache/tv?endpoint=http://minio:9000&region=us-east-1&access_key_id=AKID&secret_access_key=hunter2&session_token=tok";
    p.write(".taskvault/config.yaml", format!("storage:\n  blobs: {url}\n"));
    let file = p.path(".taskvault/config.yaml").display().to_string();
    let out = p.run(&["--json", "config"]).ok();
    assert!(
        !out.stdout().contains("hunter2") && !out.stdout().contains("tok\""),
        "{}",
        out.stdout()
    );
    let c = out.json();
    assert_eq!(
        c["storage.blobs"]["value"],
        "s3://cache/tv?endpoint=http://minio:9000&region=us-east-1&access_key_id=AKID&secret_access_key=***&session_token=***"
    );
    assert_eq!(c["storage.blobs"]["from"], file.as_str());
    assert_eq!(c["storage.metadata"]["from"], "default");
}

#[test]
fn stats_by_task_and_reset() {
    let p = Project::new();
    saved(&p, "build", "i", b"out");
    p.run(&["cache", "get", "build", "in", "got"]).ok();
    p.run(&["cache", "get", "build", "in", "got"]).ok();
    p.write("other", "o");
    p.run(&["cache", "get", "lint", "other", "got"]).code_is(1);
    let rows = p.run(&["--json", "stats", "--by-task"]).ok().json();
    let row = |t: &str| rows.as_array().unwrap().iter().find(|r| r["task"] == t).unwrap().clone();
    assert_eq!(
        (row("build")["hits"].as_i64(), row("build")["entries"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (row("lint")["misses"].as_i64(), row("lint")["entries"].as_i64()),
        (Some(1), Some(0))
    );
    let r = p.run(&["stats", "--reset"]).ok();
    assert!(r.stderr().contains("Counters reset"), "{}", r.stderr());
    let s = p.stats();
    assert_eq!(
        (s["hits"].as_i64(), s["misses"].as_i64(), s["entries"].as_i64()),
        (Some(0), Some(0), Some(1))
    );
    let rows = p.run(&["--json", "stats", "--by-task"]).ok().json();
    assert_eq!(
        rows.as_array().unwrap().iter().map(|r| r["hits"].as_i64().unwrap()).sum::<i64>(),
        0
    );
}
