//! Keys, corruption, listing, history, diff, removal, gc, verify and export/import through the CLI.

use crate::{Project, flip_byte, noise};

fn save(p: &Project, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["--json", "cache", "save"];
    a.extend_from_slice(args);
    p.run(&a).ok().json()
}

#[test]
fn key_ingredients_through_the_cli() {
    let p = Project::new();
    p.write("data.csv", "1,2,3\n");
    p.write("out", "result");
    save(&p, &["train", "data.csv", "out"]);
    // Same content, another name: hit.
    p.write("elsewhere/renamed.csv", "1,2,3\n");
    p.run(&["cache", "get", "train", "elsewhere/renamed.csv", "r1"]).ok();
    // Another task name: miss.
    p.run(&["cache", "get", "other", "data.csv", "r2"]).code_is(1);
    // Other content: miss.
    p.write("data2.csv", "1,2,4\n");
    p.run(&["cache", "get", "train", "data2.csv", "r3"]).code_is(1);
    // Directory trees: same tree elsewhere hits; a changed file misses.
    p.write("src/a.py", "print(1)\n");
    p.write("src/pkg/b.py", "print(2)\n");
    save(&p, &["build", "src", "out"]);
    p.write("copy/a.py", "print(1)\n");
    p.write("copy/pkg/b.py", "print(2)\n");
    p.run(&["cache", "get", "build", "copy", "r4"]).ok();
    p.write("copy/pkg/b.py", "print(3)\n");
    p.run(&["cache", "get", "build", "copy", "r5"]).code_is(1);
    // Algorithm: a SHA-256 vault does not answer for BLAKE3 keys.
    p.write(".taskvault/config.yaml", "hash_algorithm: sha256\n");
    p.run(&["cache", "get", "train", "data.csv", "r6"]).code_is(1);
    save(&p, &["train", "data.csv", "out"]);
    p.run(&["cache", "get", "train", "data.csv", "r7"]).ok();
    // Namespace.
    p.write(".taskvault/config.yaml", "hash_algorithm: sha256\nnamespace: team-b\n");
    p.run(&["cache", "get", "train", "data.csv", "r8"]).code_is(1);
}

fn corruption_flow(damage: impl Fn(&std::path::Path)) {
    let p = Project::new();
    let data = noise(2 << 20, 9);
    p.write("in", "i");
    p.write("out", &data);
    save(&p, &["t", "in", "out"]);
    let blob = p.blob_files().pop().unwrap();
    damage(&blob);
    let r = p.run(&["cache", "get", "t", "in", "dest"]).code_is(1);
    assert!(r.stderr().contains("Cache miss"), "{}", r.stderr());
    assert!(!p.path("dest").exists());
    let s = p.stats();
    assert_eq!((s["corrupt"].as_i64(), s["entries"].as_i64()), (Some(1), Some(0)));
    let audit = std::fs::read_to_string(p.vault().join("audit.log")).unwrap();
    assert!(audit.lines().any(|l| l.contains("CORRUPT get task=t")), "{audit}");
    let corrupt_runs = p.run(&["--json", "log", "--status", "corrupt"]).ok().json();
    assert_eq!(corrupt_runs.as_array().unwrap().len(), 1);
    save(&p, &["t", "in", "out"]);
    p.run(&["cache", "get", "t", "in", "dest"]).ok();
    assert_eq!(std::fs::read(p.path("dest")).unwrap(), data);
}

#[test]
fn corrupt_flipped_byte() {
    corruption_flow(|b| flip_byte(b, 1 << 20));
}

#[test]
fn corrupt_truncated() {
    corruption_flow(|b| {
        let d = std::fs::read(b).unwrap();
        std::fs::write(b, &d[..d.len() - 1]).unwrap();
    });
}

#[test]
fn corrupt_deleted() {
    corruption_flow(|b| std::fs::remove_file(b).unwrap());
}

#[test]
fn verify_reports_and_quarantines() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", noise(300_000, 1));
    save(&p, &["t", "in", "out"]);
    let r = p.run(&["--json", "verify"]).ok().json();
    assert_eq!(r["blobs_checked"], 1);
    flip_byte(&p.blob_files()[0], 10);
    let r = p.run(&["verify"]).code_is(1);
    assert!(r.stdout().contains("corrupt 1"), "{}", r.stdout());
    assert_eq!(std::fs::read_dir(p.vault().join("quarantine")).unwrap().count(), 1);
    p.run(&["verify"]).ok();
}

#[test]
fn log_show_get_history_diff() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "v1");
    let a = save(&p, &["t", "in", "out", "--tag", "team=ml", "--duration", "90"]);
    p.write("out", "v2 longer");
    let b = save(&p, &["t", "in", "out", "--tag", "team=ml", "--duration", "2m"]);
    p.write("other", "o");
    save(&p, &["u", "in", "other", "--tag", "team=web"]);
    let id_a = a["id"].as_str().unwrap();
    let id_b = b["id"].as_str().unwrap();
    assert_eq!(b["parent"].as_str(), Some(id_a));

    let log = p.run(&["--json", "log"]).ok().json();
    assert_eq!(log.as_array().unwrap().len(), 2, "live entries only by default");
    let all = p.run(&["--json", "log", "--all"]).ok().json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let ml = p.run(&["--json", "log", "--tag", "team=ml"]).ok().json();
    assert_eq!(ml[0]["id"].as_str(), Some(id_b));
    let by_task = p.run(&["--json", "log", "--task", "u", "--since", "1h", "-n", "5"]).ok().json();
    assert_eq!(by_task.as_array().unwrap().len(), 1);
    let text = p.run(&["log"]).ok().stdout();
    assert!(text.starts_with("HASH"), "{text}");
    assert!(text.contains("team=web"));

    let show = p.run(&["show", &id_b[..10]]).ok().stdout();
    assert!(show.contains(&format!("parent:     {id_a}")), "{show}");
    assert!(show.contains("duration:   2m"), "{show}");
    // Key prefixes resolve to the live run.
    let key = b["key"].as_str().unwrap();
    assert_eq!(p.run(&["--json", "show", &key[..12]]).ok().json()["id"].as_str(), Some(id_b));

    assert_eq!(p.run(&["get", &id_b[..10]]).ok().stdout(), "v2 longer");
    p.run(&["get", id_b, "-o", "copy"]).ok();
    assert_eq!(std::fs::read(p.path("copy")).unwrap(), b"v2 longer");
    // A superseded run's small output stays in its row; a larger one goes with its blob row.
    assert_eq!(p.run(&["get", id_a]).ok().stdout(), "v1");
    p.write("big", "b".repeat(100));
    let big1 = save(&p, &["big", "in", "big"]);
    p.write("big", "c".repeat(100));
    save(&p, &["big", "in", "big"]);
    let old = p.run(&["get", big1["id"].as_str().unwrap()]);
    assert_eq!(old.code(), 2, "a superseded run's output is gone: {}", old.stderr());
    assert!(old.stderr().contains("no longer stored"));

    let hist = p.run(&["--json", "history", &id_b[..10]]).ok().json();
    let ids: Vec<_> = hist.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id_a, id_b]);

    let d = p.run(&["--json", "diff", id_a, id_b]).ok().json();
    let fields: Vec<_> = d["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["field"].as_str().unwrap().to_owned())
        .collect();
    assert!(fields.contains(&"output".to_owned()), "{fields:?}");
    assert!(fields.contains(&"size".to_owned()));
    assert!(fields.contains(&"duration".to_owned()));
    assert!(!fields.contains(&"inputs[0]".to_owned()), "same input");
    let text = p.run(&["diff", id_a, id_b]).ok().stdout();
    assert!(text.contains("duration:\n  - 1m 30s\n  + 2m"), "{text}");

    let s = p.stats();
    assert_eq!(s["time_saved_ms"], 0);
    p.run(&["cache", "get", "t", "in", "r"]).ok();
    assert_eq!(p.stats()["time_saved_ms"], 120_000);
}

#[test]
fn rm_invalidate_gc_clear() {
    let p = Project::new();
    p.write("in", "i");
    for i in 0..4 {
        p.write(&format!("o{i}"), noise(50_000, i));
        save(
            &p,
            &[
                &format!("t{i}"),
                "in",
                &format!("o{i}"),
                "--tag",
                if i % 2 == 0 { "k=even" } else { "k=odd" },
            ],
        );
    }
    let first =
        p.run(&["--json", "log", "--task", "t0"]).ok().json()[0]["id"].as_str().unwrap().to_owned();
    p.run(&["rm", &first[..8]]).ok();
    assert_eq!(p.stats()["entries"], 3);
    let r = p.run(&["--json", "invalidate", "--tag", "k=odd"]).ok().json();
    assert_eq!(r.as_array().unwrap().len(), 2);
    assert_eq!(p.stats()["entries"], 1);
    let r = p.run(&["--json", "gc", "--max-size", "1"]).ok().json();
    assert_eq!(r["evicted"], 1);
    assert!(p.blob_files().is_empty());
    save(&p, &["x", "in", "o1"]);
    p.run(&["clear"]).code_is(2);
    p.run(&["clear", "--yes"]).ok();
    assert_eq!(p.stats()["entries"], 0);
    let audit = std::fs::read_to_string(p.vault().join("audit.log")).unwrap();
    for ev in ["SAVE save", "REMOVE rm", "EVICT gc", "REMOVE clear"] {
        assert!(audit.contains(ev), "{ev} missing:\n{audit}");
    }
    // `audit` reads the same trail back, newest first, filtered.
    let all = p.run(&["--json", "audit", "-n", "1000"]).ok().json();
    let events: Vec<String> =
        all.as_array().unwrap().iter().map(|r| format!("{} {}", r["event"], r["op"])).collect();
    assert_eq!(events.first().map(String::as_str), Some(r#""REMOVE" "clear""#), "{events:?}");
    assert_eq!(events.len(), audit.lines().count(), "every line is a record");
    let evicted = p.run(&["--json", "audit", "--event", "evict"]).ok().json();
    assert_eq!(evicted.as_array().unwrap().len(), 1);
    assert_eq!(evicted[0]["op"], "gc");
    let text = p.run(&["audit", "-n", "2"]).ok().stdout();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].contains("REMOVE clear") && audit.ends_with(&format!("{}\n", lines[0])));
    p.run(&["audit", "--event", "nope"]).code_is(2);
}

#[test]
fn export_import_through_the_cli() {
    let a = Project::new();
    a.write("in", "i");
    a.write("out", noise(100_000, 5));
    a.write("dist/app.js", "console.log(1)");
    save(&a, &["t", "in", "out", "--tag", "ship=yes"]);
    save(&a, &["d", "in", "dist"]);
    let archive = a.path("vault.tar.zst");
    let r =
        a.run(&["--json", "export", archive.to_str().unwrap(), "--tag", "ship=yes"]).ok().json();
    assert_eq!(r["entries"], 1);
    a.run(&["export", a.path("all.tar.zst").to_str().unwrap()]).ok();

    let b = Project::new();
    b.write("in", "i");
    let r = b.run(&["--json", "import", a.path("all.tar.zst").to_str().unwrap()]).ok().json();
    assert_eq!(r["imported"], 2);
    b.run(&["cache", "get", "t", "in", "restored"]).ok();
    assert_eq!(std::fs::read(b.path("restored")).unwrap(), noise(100_000, 5));
    b.run(&["cache", "get", "d", "in", "dist2"]).ok();
    assert_eq!(std::fs::read_to_string(b.path("dist2/app.js")).unwrap(), "console.log(1)");
    let r = b.run(&["--json", "import", archive.to_str().unwrap()]).ok().json();
    assert_eq!((r["imported"].as_i64(), r["skipped"].as_i64()), (Some(0), Some(1)));
}

#[test]
fn an_exported_wrapped_command_imports_with_its_console_log_and_replays_it() {
    let a = Project::new();
    a.write("src.txt", "s");
    let cmd =
        ["run", "-i", "src.txt", "-o", "out.txt", "--", "sh", "-c", "echo said; echo o > out.txt"];
    a.run(&cmd).ok();
    let archive = a.path("run.tar.zst");
    a.run(&["export", archive.to_str().unwrap()]).ok();
    let b = Project::new();
    b.write("src.txt", "s");
    let r = b.run(&["--json", "import", archive.to_str().unwrap()]).ok().json();
    assert_eq!(r["imported"], 1, "{r}");
    let hit = b.run(&cmd).ok();
    assert_eq!(hit.stdout(), "said\n", "the console log came along: {}", hit.stderr());
    assert_eq!(std::fs::read_to_string(b.path("out.txt")).unwrap(), "o\n");
}

#[test]
fn environment_and_flags_choose_the_vault() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "o");
    let elsewhere = p.path("elsewhere");
    let mut c = p.cmd();
    c.env("TASKVAULT_DIR", &elsewhere).args(["cache", "save", "t", "in", "out"]);
    assert!(c.status().unwrap().success());
    assert!(elsewhere.join("cache.db").exists());
    // A flag beats the environment.
    let flag_dir = p.path("flagdir");
    let mut c = p.cmd();
    c.env("TASKVAULT_DIR", &elsewhere)
        .arg("--dir")
        .arg(&flag_dir)
        .args(["cache", "get", "t", "in", "x"]);
    assert_eq!(c.status().unwrap().code(), Some(1));
    // TASKVAULT_CONFIG picks a config file; relative cache_dir is relative to its directory.
    p.write("conf/tv.yaml", "cache_dir: store\n");
    let mut c = p.cmd();
    c.env("TASKVAULT_CONFIG", p.path("conf/tv.yaml")).args(["cache", "save", "t", "in", "out"]);
    assert!(c.status().unwrap().success());
    assert!(p.path("conf/store/cache.db").exists());
    // Discovery from a subdirectory finds the project's config.
    p.write(".taskvault/config.yaml", "cache_dir: .taskvault/cache\n");
    std::fs::create_dir_all(p.path("sub/deeper")).unwrap();
    let mut c = p.cmd();
    c.current_dir(p.path("sub/deeper")).args(["cache", "save", "t", "../../in", "../../out"]);
    assert!(c.status().unwrap().success());
    assert!(p.path(".taskvault/cache/cache.db").exists());
}

#[test]
fn version_help_and_broken_pipe() {
    let p = Project::new();
    let v = p.run(&["--version"]).ok();
    assert!(v.stdout().starts_with("taskvault "));
    p.run(&["--help"]).ok();
    p.run(&["no-such-command"]).code_is(2);
    p.write("in", "i");
    for i in 0..30 {
        p.write("o", format!("{i}"));
        save(&p, &[&format!("task{i}"), "in", "o"]);
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{} log | head -1; echo \"${{PIPESTATUS[0]}}\"",
            env!("CARGO_BIN_EXE_taskvault")
        ))
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("0\n"), "exit code of log into a closed pipe: {text}");
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}
