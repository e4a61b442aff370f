//! `taskvault run`: replay, keys, failures, signals, missing outputs and concurrency.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::Project;

/// A build script that writes to both streams in an interleaved order, produces outputs (one
/// executable), counts its runs, and exits with $EXIT.
const SCRIPT: &str = r#"#!/bin/sh
printf 'out 1\n'; printf 'err 1\n' >&2; printf 'out 2 no newline'; printf '\377binary\n' >&2
mkdir -p dist build/nested
printf 'app %s\n' "$(cat src/a.py)" > dist/app.txt
printf '#!/bin/sh\necho hi\n' > dist/run.sh; chmod 755 dist/run.sh
ln -sf app.txt dist/link
printf '<xml/>' > build/nested/report.xml
echo run >> counter
sleep "${SLEEP:-0}"
exit "${EXIT:-0}"
"#;

fn setup() -> Project {
    let p = Project::new();
    p.write("src/a.py", "print(1)\n");
    p.write("src/pkg/b.py", "print(2)\n");
    let s = p.write("build.sh", SCRIPT);
    std::fs::set_permissions(s, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn run_cmd(p: &Project, extra: &[&str]) -> Command {
    run_cmd_with(p, &[], extra)
}

/// `taskvault GLOBAL... run <the build's inputs and outputs> EXTRA... -- ./build.sh`
fn run_cmd_with(p: &Project, global: &[&str], extra: &[&str]) -> Command {
    let mut c = p.cmd();
    c.args(global);
    c.args([
        "run",
        "-i",
        "src/**/*.py",
        "-i",
        "build.sh",
        "-o",
        "dist",
        "-o",
        "build/nested/report.xml",
        "--env",
        "MODE",
    ]);
    c.args(extra);
    c.args(["--", "./build.sh"]);
    c
}

fn runs(p: &Project) -> usize {
    std::fs::read_to_string(p.path("counter")).map(|s| s.lines().count()).unwrap_or(0)
}

fn snapshot(p: &Project) -> Vec<(String, Vec<u8>, u32)> {
    let mut out = Vec::new();
    for root in ["dist", "build"] {
        for w in taskvault::tree::walk(&p.path(root)).unwrap() {
            let meta = std::fs::symlink_metadata(&w.abs).unwrap();
            let data = if meta.file_type().is_symlink() {
                std::fs::read_link(&w.abs).unwrap().to_string_lossy().into_owned().into_bytes()
            } else if meta.is_file() {
                std::fs::read(&w.abs).unwrap()
            } else {
                vec![]
            };
            out.push((format!("{root}/{}", w.rel), data, meta.permissions().mode() & 0o777));
        }
    }
    out
}

#[test]
fn hit_replays_streams_outputs_and_exit_code() {
    let p = setup();
    let first = run_cmd(&p, &[]).output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert_eq!(runs(&p), 1);
    let original = snapshot(&p);
    std::fs::remove_dir_all(p.path("dist")).unwrap();
    std::fs::remove_dir_all(p.path("build")).unwrap();

    let second = run_cmd(&p, &["--quiet"]).output().unwrap();
    assert_eq!(runs(&p), 1, "the command did not run again");
    assert!(second.status.success());
    assert_eq!(second.stdout, b"out 1\nout 2 no newline");
    assert_eq!(second.stderr, b"err 1\n\xffbinary\n", "stderr replayed byte-exactly, alone");
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(snapshot(&p), original, "outputs restored byte-exactly with modes and links");

    // Failures cached on request replay their exit code.
    let failing =
        run_cmd(&p, &["--cache-failures", "--task", "f"]).env("EXIT", "3").output().unwrap();
    assert_eq!(failing.status.code(), Some(3));
    let replayed =
        run_cmd(&p, &["--cache-failures", "--task", "f"]).env("EXIT", "3").output().unwrap();
    assert_eq!(replayed.status.code(), Some(3));
    assert_eq!(runs(&p), 2);
    assert_eq!(replayed.stdout, failing.stdout);
}

#[test]
fn each_ingredient_change_misses_and_mtime_alone_does_not() {
    let p = setup();
    let hit = |p: &Project, env: Option<&str>, extra: &[&str]| {
        let before = runs(p);
        let mut c = run_cmd(p, extra);
        if let Some(v) = env {
            c.env("MODE", v);
        } else {
            c.env_remove("MODE");
        }
        assert!(c.output().unwrap().status.success());
        runs(p) == before
    };
    assert!(!hit(&p, None, &[]), "first run");
    assert!(hit(&p, None, &[]), "same again");
    // mtime changes, content does not: still a hit.
    let f = std::fs::File::options().append(true).open(p.path("src/a.py")).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).unwrap();
    assert!(hit(&p, None, &[]), "an mtime change alone hits");
    // Input content.
    p.write("src/a.py", "print(10)\n");
    assert!(!hit(&p, None, &[]), "changed input");
    // Glob membership: a new matching file, then an unmatched one.
    p.write("src/new.py", "x = 1\n");
    assert!(!hit(&p, None, &[]), "new file matched by the glob");
    p.write("src/notes.txt", "not matched\n");
    assert!(hit(&p, None, &[]), "a file the glob does not match");
    // Environment: set, changed, set to empty are all different from unset.
    assert!(!hit(&p, Some("release"), &[]));
    assert!(hit(&p, Some("release"), &[]));
    assert!(!hit(&p, Some(""), &[]));
    // Command line, salt and working-directory opt-in.
    assert!(!hit(&p, None, &["--key", "v2"]));
    assert!(!hit(&p, None, &["--output", "build"]), "the declared outputs are part of the key");
    assert!(!hit(&p, None, &["--task", "renamed"]));
    let mut c = p.cmd();
    c.args(["run", "-i", "src/**/*.py", "-o", "dist", "--", "./build.sh", "extra-arg"]);
    let before = runs(&p);
    assert!(c.output().unwrap().status.success());
    assert_eq!(runs(&p), before + 1, "argv is part of the key");
}

#[test]
fn failures_are_not_cached_and_missing_outputs_save_nothing() {
    let p = setup();
    for _ in 0..2 {
        let r = run_cmd(&p, &[]).env("EXIT", "5").output().unwrap();
        assert_eq!(r.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&r.stderr).contains("not cached"));
    }
    assert_eq!(runs(&p), 2, "a failure is not cached by default");

    let mut c = p.cmd();
    c.args(["run", "-o", "never/made.txt", "--", "sh", "-c", "echo ran >> counter"]);
    let r = c.output().unwrap();
    assert_eq!(r.status.code(), Some(0), "the command's own exit code wins");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("never/made.txt") && err.contains("was not produced"), "{err}");
    let stats = p.stats();
    assert_eq!(stats["entries"], 0, "nothing saved");

    let r = p.run(&["run", "-i", "nothing/*.c", "--", "true"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("matched nothing"), "{}", r.stderr());
    p.run(&["run", "-i", "nothing/*.c", "--allow-empty", "--", "true"]).ok();
}

#[test]
fn a_command_killed_by_a_signal_is_never_cached() {
    let p = setup();
    for _ in 0..2 {
        let mut c = p.cmd();
        c.args(["run", "--cache-failures", "--", "sh", "-c", "echo ran >> counter; kill -KILL $$"]);
        let r = c.output().unwrap();
        assert_eq!(r.status.code(), Some(128 + 9), "exits as the shell would");
    }
    assert_eq!(runs(&p), 2);
    assert_eq!(p.stats()["entries"], 0);
}

#[test]
fn eight_identical_runs_execute_once_and_all_replay() {
    let p = setup();
    for o in eight_at_once(&p, &["--cache-failures"], "4") {
        assert_eq!(o.status.code(), Some(4), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, b"out 1\nout 2 no newline");
    }
    assert_eq!(runs(&p), 1, "exactly one execution");
}

/// Starts eight identical runs of the build (sleeping 1 s, exiting with `exit`) at once and
/// collects their outputs.
fn eight_at_once(p: &Project, extra: &[&str], exit: &str) -> Vec<std::process::Output> {
    let children: Vec<_> = (0..8)
        .map(|_| run_cmd(p, extra).env("SLEEP", "1").env("EXIT", exit).spawn_output())
        .collect();
    children.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn a_failure_reaches_every_concurrent_run_without_a_second_execution() {
    let p = setup();
    for o in eight_at_once(&p, &[], "6") {
        assert_eq!(o.status.code(), Some(6), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, b"out 1\nout 2 no newline");
    }
    assert_eq!(runs(&p), 1, "the failure was shared, not re-run");
    assert_eq!(p.stats()["entries"], 0, "and still not cached");
}

#[test]
fn json_summary_no_save_and_force() {
    let p = setup();
    let summary = p.path("summary.json");
    let r = run_cmd(&p, &["--no-save", "--summary", summary.to_str().unwrap()]).output().unwrap();
    assert!(r.status.success());
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
    assert_eq!((s["hit"].as_bool(), s["exit_code"].as_i64()), (Some(false), Some(0)));
    assert!(!p.vault().join("cache.db").exists(), "--no-save saves nothing, not even a vault");
    run_cmd(&p, &[]).output().unwrap();
    let r = run_cmd_with(&p, &["--json"], &[]).output().unwrap();
    let last = String::from_utf8_lossy(&r.stderr).lines().last().unwrap().to_owned();
    let s: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(s["hit"], true);
    let before = runs(&p);
    assert!(run_cmd(&p, &["--force"]).output().unwrap().status.success());
    assert_eq!(runs(&p), before + 1, "--force runs even when cached");
    let log = p.run(&["--json", "log", "--all"]).ok().json();
    assert_eq!(log.as_array().unwrap().len(), 2, "and keeps the replaced run as history");
    let stats = p.stats();
    assert!(stats["hits"].as_i64().unwrap() >= 1);
    assert!(stats["time_saved_ms"].as_i64().unwrap() >= 0);
}

/// Spawns a command and collects its output on a thread.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<std::process::Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

#[test]
fn link_restores_read_only_hard_links_and_a_write_through_them_is_caught() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::new();
    let big = crate::noise(200_000, 7);
    p.write("big.src", &big);
    let cmd = |p: &Project| {
        let mut c = p.cmd();
        c.args(["run", "--link", "-i", "big.src", "-o", "out", "--", "sh", "-c"]);
        c.arg("mkdir -p out && cp big.src out/big.bin && printf small > out/small.txt && echo ran >> counter");
        c.output().unwrap()
    };
    assert!(cmd(&p).status.success());
    std::fs::remove_dir_all(p.path("out")).unwrap();
    assert!(cmd(&p).status.success());
    assert_eq!(runs(&p), 1, "a hit");
    let linked = std::fs::metadata(p.path("out/big.bin")).unwrap();
    assert!(linked.nlink() >= 2, "a hard link to the vault's copy");
    assert_eq!(linked.permissions().mode() & 0o777, 0o444, "read-only");
    assert_eq!(std::fs::read(p.path("out/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::metadata(p.path("out/small.txt")).unwrap().nlink(),
        1,
        "inline blobs are copied"
    );

    // Root ignores the read-only mode: a write through the link changes the vault's copy. The
    // next hit must notice, quarantine it and run the command again rather than serve it.
    let mut f = std::fs::OpenOptions::new().write(true).open(p.path("out/big.bin")).unwrap();
    std::io::Write::write_all(&mut f, b"tampered").unwrap();
    drop(f);
    std::fs::remove_dir_all(p.path("out")).unwrap();
    assert!(cmd(&p).status.success());
    assert_eq!(runs(&p), 2, "the damaged entry was recomputed");
    assert_eq!(std::fs::read(p.path("out/big.bin")).unwrap(), big);
    assert_eq!(p.stats()["corrupt"], 1);
}

#[test]
fn explain_names_the_ingredients_and_what_changed() {
    let p = setup();
    let first = run_cmd(&p, &["--explain"]).output().unwrap();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(err.contains("made of:") && err.contains("argv") && err.contains("env:MODE"), "{err}");
    assert!(err.contains("has never been cached"), "{err}");
    p.write("src/pkg/b.py", "print(20)\n");
    p.write("src/extra.py", "x = 2\n");
    let second = run_cmd(&p, &["--explain"]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("inputs differs"), "{err}");
    assert!(err.contains("changed: src/pkg/b.py"), "{err}");
    assert!(err.contains("added: src/extra.py"), "{err}");
    assert!(!err.contains("argv differs"), "{err}");
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    use std::io::BufRead;
    let p = Project::new();
    let mut child = p
        .cmd()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "trap 'kill $!; echo got TERM; exit 7' TERM; echo ready; sleep 30 & wait",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(status.code(), Some(7), "taskvault waited and exited with the command's code");
    assert_eq!(rest, "got TERM\n");
    assert_eq!(p.stats()["entries"], 0);
}

#[test]
fn a_trailing_double_star_takes_every_file_of_the_directory() {
    // `--input 'src/**'` (the README's form) on a flat directory: its files are the inputs,
    // so a change to one of them is a miss.
    let p = Project::new();
    p.write("src/a.js", "1");
    let run = |p: &Project| p.run(&["run", "-i", "src/**", "--", "true"]);
    run(&p).ok();
    assert!(run(&p).ok().stderr().contains("taskvault: hit"));
    p.write("src/a.js", "2");
    assert!(!run(&p).ok().stderr().contains("taskvault: hit"));
    p.write("src/sub/b.js", "3");
    assert!(!run(&p).ok().stderr().contains("taskvault: hit"), "files below count too");
}
