//! Bad input gets one clear line on stderr, exit 2, and leaves the vault as it was.

use crate::{Project, noise};

fn one_error_line(run: &crate::Run, needle: &str) {
    let err = run.stderr();
    assert_eq!(run.code(), 2, "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected, got:\n{err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn snapshot(p: &Project) -> (serde_json::Value, Vec<std::path::PathBuf>) {
    if !p.vault().join("cache.db").exists() {
        return (serde_json::Value::Null, Vec::new()); // and a failed command must not make one
    }
    let s = p.stats();
    (serde_json::json!([s["entries"], s["total_bytes"], s["saves"]]), p.blob_files())
}

#[test]
fn missing_input_and_output() {
    let p = Project::new();
    p.write("out", "o");
    p.write("in", "i");
    let before = snapshot(&p);
    one_error_line(
        &p.run(&["cache", "save", "t", "nope.csv", "out"]),
        "nope.csv: no such file or directory",
    );
    one_error_line(
        &p.run(&["cache", "save", "t", "in", "nope.pkl"]),
        "nope.pkl: output does not exist",
    );
    one_error_line(&p.run(&["cache", "get", "t", "nope.csv", "x"]), "nope.csv");
    assert_eq!(snapshot(&p), before);
}

#[test]
fn special_file_as_input_is_refused() {
    let p = Project::new();
    p.write("out", "o");
    let fifo = p.path("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    one_error_line(
        &p.run(&["cache", "save", "t", "fifo", "out"]),
        "not a regular file or directory",
    );
}

#[test]
fn destination_problems() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", noise(100_000, 1));
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    let before = p.stats();
    one_error_line(
        &p.run(&["cache", "get", "t", "in", "missing/dir/x"]),
        "directory does not exist",
    );
    std::fs::create_dir(p.path("adir")).unwrap();
    one_error_line(&p.run(&["cache", "get", "t", "in", "adir"]), "is a directory");
    let after = p.stats();
    assert_eq!((&before["hits"], &before["misses"]), (&after["hits"], &after["misses"]));
    assert_eq!(after["entries"], 1);
}

#[test]
fn config_errors_name_the_problem() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "o");
    p.write(".taskvault/config.yaml", "max_size_gb: 10\npolicies:\n  default: [\n");
    let r = p.run(&["cache", "save", "t", "in", "out"]);
    one_error_line(&r, "config");
    assert!(r.stderr().contains("line 4") || r.stderr().contains("line 3"), "{}", r.stderr());
    assert!(r.stderr().contains("column"), "{}", r.stderr());

    p.write(".taskvault/config.yaml", "max_size_gb: 10\nmax_sise: 3\n");
    one_error_line(&p.run(&["stats"]), "unknown field `max_sise`");
    p.write(".taskvault/config.yaml", "max_size_gb: -3\n");
    one_error_line(&p.run(&["stats"]), "max_size_gb must be 0 or more");
    p.write(".taskvault/config.yaml", "policies:\n  default:\n    max_size_bytes: -1\n");
    one_error_line(&p.run(&["stats"]), "max_size_bytes must be 0 or more");
    p.write(".taskvault/config.yaml", "storage:\n  metadata: mysql://u:secret@db/tv\n");
    let r = p.run(&["stats"]);
    one_error_line(&r, "storage.metadata must be sqlite, a PostgreSQL URL");
    assert!(!r.stderr().contains("secret"));
    p.write(
        ".taskvault/config.yaml",
        "storage:\n  metadata: redis://:secret@127.0.0.1:1/0\n  blobs: s3://b/p\n",
    );
    let r = p.run(&["stats"]);
    one_error_line(&r, "with Redis metadata the blobs live in the same Redis");
    assert!(!r.stderr().contains("secret"));
    // A Redis server that does not answer: an error naming it, never its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.write(
        ".taskvault/config.yaml",
        format!("storage:\n  metadata: redis://:secret@127.0.0.1:{port}/0\n"),
    );
    let r = p.run(&["stats"]);
    one_error_line(&r, &format!("metadata store redis://127.0.0.1:{port}/0"));
    assert!(!r.stderr().contains("secret"));
    p.write(".taskvault/config.yaml", "storage:\n  blobs: /mnt/blobs\n");
    one_error_line(&p.run(&["stats"]), "storage.blobs must be local or an object store URL");
    p.write(".taskvault/config.yaml", "storage:\n  blob: s3://b/p\n");
    one_error_line(&p.run(&["stats"]), "unknown field `blob`");
    assert!(!p.vault().join("cache.db").exists(), "nothing was created");
}

#[test]
fn negative_and_malformed_flag_values() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "o");
    let r = p.run(&["cache", "save", "t", "in", "out", "--ttl", "-5"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("must not be negative"), "{}", r.stderr());
    let r = p.run(&["gc", "--max-size", "12 parsecs"]);
    assert_eq!(r.code(), 2);
    let r = p.run(&["cache", "save", "t", "in", "out", "--tag", "novalue"]);
    assert_eq!(r.code(), 2);
    assert!(r.stderr().contains("key=value"));
}

#[test]
fn over_policy_size_limit_is_refused() {
    let p = Project::new();
    p.write(
        ".taskvault/config.yaml",
        "policies:\n  default:\n    max_size_bytes: 1000\n  big:\n    max_size_bytes: 0\n",
    );
    p.write("in", "i");
    p.write("out", noise(5000, 2));
    one_error_line(
        &p.run(&["cache", "save", "t", "in", "out"]),
        "over the policy limit max_size_bytes=1000",
    );
    // Nothing was stored: not even a vault to show.
    assert!(p.run(&["stats"]).code_is(2).stderr().contains("no vault at"));
    p.run(&["cache", "save", "big", "in", "out"]).ok();
    assert_eq!(p.stats()["entries"], 1);
}

#[test]
fn full_disk_fails_cleanly_and_keeps_the_vault() {
    let p = Project::new();
    let mnt = p.path("tiny");
    std::fs::create_dir(&mnt).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount runs");
    assert!(status.success(), "this test needs root to mount a 2 MiB tmpfs");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let vault = mnt.join("vault");
    p.write("in", "i");
    p.write("small", noise(100_000, 3));
    p.write("huge", noise(4 << 20, 4));
    let dir = vault.to_str().unwrap();
    p.run(&["--dir", dir, "cache", "save", "small", "in", "small"]).ok();
    let before = p.run(&["--dir", dir, "stats", "--json"]).ok().json();
    let r = p.run(&["--dir", dir, "cache", "save", "huge", "in", "huge"]);
    one_error_line(&r, "No space left on device");
    let after = p.run(&["--dir", dir, "stats", "--json"]).ok().json();
    assert_eq!(before["entries"], after["entries"]);
    assert_eq!(before["total_bytes"], after["total_bytes"]);
    assert_eq!(std::fs::read_dir(vault.join("tmp")).unwrap().count(), 0, "no staging left behind");
    // The vault still serves what it had.
    p.run(&["--dir", dir, "cache", "get", "small", "in", "restored"]).ok();
    assert_eq!(std::fs::read(p.path("restored")).unwrap(), noise(100_000, 3));
    // Restoring onto the full disk fails without leaving a partial file.
    p.write("in2", "j");
    std::fs::copy(p.path("huge"), mnt.join("filler")).ok();
    let dest = mnt.join("restored");
    let r = p.run(&["--dir", dir, "cache", "get", "small", "in", dest.to_str().unwrap()]);
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(!dest.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&mnt)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".restored"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn explicit_config_that_does_not_exist() {
    let p = Project::new();
    one_error_line(&p.run(&["--config", "nowhere.yaml", "stats"]), "nowhere.yaml does not exist");
}

#[test]
fn unknown_hash_and_ambiguous_prefix() {
    let p = Project::new();
    one_error_line(&p.run(&["show", "abcdef"]), "no vault at");
    p.write("in", "i");
    p.run(&["cache", "save", "t", "in", "in"]).ok();
    one_error_line(&p.run(&["show", "abcdef"]), "no entry matches");
    one_error_line(&p.run(&["show", "xyz"]), "not a hash");
}

#[test]
fn migrate_names_what_it_cannot_do() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "o");
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    one_error_line(&p.run(&["migrate", "--to", "local"]), "blobs are in local already");
    one_error_line(&p.run(&["migrate", "--to", "sqlite"]), "metadata is in sqlite already");
    // A Redis server that does not answer: an error naming it, never its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = p.run(&["migrate", "--to", &format!("redis://:password=x@127.0.0.1:{port}/0")]);
    one_error_line(&r, &format!("127.0.0.1:{port}"));
    assert!(!r.stderr().contains("password=x"), "{}", r.stderr());
    // A PostgreSQL server that does not answer: an error naming it, never its password.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let r = p.run(&["migrate", "--to", &format!("postgres://tv:password=x@127.0.0.1:{port}/tv")]);
    one_error_line(&r, &format!("metadata store postgres://tv@127.0.0.1:{port}/tv"));
    assert!(!r.stderr().contains("password=x"));
    let r = p.run(&["migrate", "--to", "/mnt/elsewhere"]);
    one_error_line(&r, "not a blob store (local, or s3://");
    assert!(!r.stderr().contains("password=x"));
}
