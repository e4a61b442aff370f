//! Bazel (from npm `@bazel/bazel-linux_x64`) against `taskvault serve` as its HTTP remote cache.

use std::path::Path;
use std::process::{Command, Output};

use super::{Server, client, corrupt_every_blob, metric, metrics, succeeded, text};

/// A workspace of three genrules; each output starts with the source and ends with 100 KB of
/// fresh random bytes, so an output equal to an earlier one came from the cache.
fn workspace(dir: &Path) {
    std::fs::write(dir.join("WORKSPACE"), "").unwrap();
    std::fs::write(
        dir.join("BUILD"),
        r#"[genrule(
    name = "g%d" % i,
    srcs = ["src.txt"],
    outs = ["out%d.bin" % i],
    cmd = "cat $(location src.txt) > $@ && head -c 100000 /dev/urandom >> $@",
) for i in range(3)]
"#,
    )
    .unwrap();
    std::fs::write(dir.join("src.txt"), "one\n").unwrap();
}

/// A build in a fresh output root (nothing local to reuse) against `cache`, with `flags`.
fn bazel(bin: &Path, dir: &Path, root: &Path, cache: &str, flags: &[&str]) -> Output {
    Command::new(bin)
        .arg("--batch")
        .arg(format!("--output_user_root={}", root.display()))
        .args(["build", "//:all", "--symlink_prefix=out-"])
        .arg(format!("--remote_cache={cache}"))
        .args(flags)
        .current_dir(dir)
        .env_remove("BAZELISK_HOME")
        .output()
        .unwrap()
}

fn outputs(dir: &Path) -> Vec<Vec<u8>> {
    (0..3).map(|i| std::fs::read(dir.join(format!("out-bin/out{i}.bin"))).unwrap()).collect()
}

fn processes(out: &str) -> &str {
    out.lines().find(|l| l.contains(" processes")).unwrap_or_else(|| panic!("no summary:\n{out}"))
}

#[test]
fn bazel_builds_share_the_http_cache_with_tokens_instances_and_integrity() {
    let Some(bin) = client("bazel/bazel") else { return };
    let server = Server::start();
    let writer = server.token(&[
        "create",
        "--scope",
        "write",
        "--namespace",
        "bazel",
        "--namespace",
        "team-a",
    ]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "bazel"]);
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("ws");
    std::fs::create_dir_all(&dir).unwrap();
    workspace(&dir);
    let roots = project.path().join("roots");
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        roots.join(n.to_string())
    };
    let cache = format!("{}/bazel", server.url);
    let bearer = format!("--remote_header=Authorization=Bearer {writer}");

    let out = succeeded(&bazel(&bin, &dir, &fresh(), &cache, &[&bearer]));
    assert!(!processes(&out).contains("remote cache hit"), "{out}");
    let built = outputs(&dir);
    let stored = server.entries();
    assert!(stored >= 6, "three actions and their outputs: {stored}");

    // A clean build in a fresh output root: every action is a remote cache hit.
    let out = succeeded(&bazel(&bin, &dir, &fresh(), &cache, &[&bearer]));
    assert!(processes(&out).contains("3 remote cache hit"), "{out}");
    assert_eq!(outputs(&dir), built);

    // Basic auth (the token as the password in the URL) works the same.
    let basic = cache.replacen("http://", &format!("http://ci:{writer}@"), 1);
    let out = succeeded(&bazel(&bin, &dir, &fresh(), &basic, &[]));
    assert!(processes(&out).contains("3 remote cache hit"), "{out}");

    // An instance prefix is a namespace of its own: nothing of `bazel` is seen there.
    let out = succeeded(&bazel(&bin, &dir, &fresh(), &format!("{cache}/team-a"), &[&bearer]));
    assert!(!processes(&out).contains("remote cache hit"), "{out}");
    assert_eq!(server.entries(), stored * 2, "team-a got its own copy");

    // A read-only token: a changed source builds, succeeds, and nothing is written.
    std::fs::write(dir.join("src.txt"), "two\n").unwrap();
    let read = format!("--remote_header=Authorization=Bearer {reader}");
    let out = succeeded(&bazel(&bin, &dir, &fresh(), &cache, &[&read]));
    assert!(!processes(&out).contains("remote cache hit"), "{out}");
    assert_eq!(server.entries(), stored * 2, "a read-only token stored nothing");

    // A wrong token: Bazel warns, builds locally, succeeds.
    let out = bazel(&bin, &dir, &fresh(), &cache, &["--remote_header=Authorization=Bearer nope"]);
    let out = succeeded(&out);
    assert!(out.contains("401") || out.contains("Unauthorized"), "{out}");
    assert_eq!(server.entries(), stored * 2);

    // Corrupt stored blobs: Bazel runs the actions again and the build succeeds.
    std::fs::write(dir.join("src.txt"), "one\n").unwrap();
    assert!(corrupt_every_blob(&server) >= 3, "the outputs are blob files");
    let out = succeeded(&bazel(&bin, &dir, &fresh(), &cache, &[&bearer]));
    assert!(!processes(&out).contains("3 remote cache hit"), "{out}");
    assert_ne!(outputs(&dir), built, "rebuilt");
    assert!(metric(&metrics(&server), "taskvault_corrupt_blobs") >= 1.0);
    let _ = text;
}
