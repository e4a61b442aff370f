//! Turborepo (`turbo`, from npm) against `taskvault serve` through `TURBO_API`.

use std::path::Path;
use std::process::Command;

use super::{Server, client, corrupt_every_blob, metric, metrics, read_tree, succeeded, system};

/// A two-package npm workspace: `app` depends on `lib`; `app`'s build writes 200 KB of fresh
/// random bytes, so an output equal to an earlier one can only have come from the cache.
fn workspace(dir: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "package.json",
        r#"{"name":"tvdemo","private":true,"packageManager":"npm@10.8.2","workspaces":["packages/*"]}"#,
    );
    w("turbo.json", r#"{"tasks":{"build":{"dependsOn":["^build"],"outputs":["dist/**"]}}}"#);
    w(".gitignore", "node_modules\n.turbo\ndist\n");
    w(
        "packages/lib/package.json",
        r#"{"name":"lib","version":"1.0.0","scripts":{"build":"mkdir -p dist && echo lib-$(cat src.txt) > dist/out.txt"}}"#,
    );
    w("packages/lib/src.txt", "one\n");
    w(
        "packages/app/package.json",
        r#"{"name":"app","version":"1.0.0","dependencies":{"lib":"*"},"scripts":{"build":"mkdir -p dist && head -c 200000 /dev/urandom > dist/big.bin && cat ../lib/dist/out.txt > dist/out.txt"}}"#,
    );
    for args in [&["init", "-q", "."][..], &["add", "-A"]] {
        let o = Command::new("git").args(args).current_dir(dir).output().unwrap();
        assert!(o.status.success(), "git {args:?}: {}", super::text(&o));
    }
    let o = Command::new("npm")
        .args(["install", "--offline", "--no-audit", "--no-fund", "--silent"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "npm install: {}", super::text(&o));
}

/// Removes every local trace of earlier builds: outputs and turbo's own local cache.
fn clean(dir: &Path) {
    for rel in [
        ".turbo",
        "packages/lib/dist",
        "packages/app/dist",
        "packages/lib/.turbo",
        "packages/app/.turbo",
    ] {
        let _ = std::fs::remove_dir_all(dir.join(rel));
    }
}

fn turbo(bin: &Path, dir: &Path, server: &Server, token: &str) -> String {
    let o = Command::new(bin)
        .args(["run", "build", "--no-daemon", "--output-logs=hash-only"])
        .current_dir(dir)
        .env("TURBO_TELEMETRY_DISABLED", "1")
        .env("TURBO_API", &server.url)
        .env("TURBO_TOKEN", token)
        .env("TURBO_TEAM", "web")
        .env("DO_NOT_TRACK", "1")
        .output()
        .unwrap();
    succeeded(&o)
}

fn cached(out: &str) -> &str {
    out.lines().find(|l| l.contains("Cached:")).unwrap_or_else(|| panic!("no summary:\n{out}"))
}

#[test]
fn turbo_builds_share_a_remote_cache_with_tokens_namespaces_and_integrity() {
    let (Some(bin), Some(_)) = (client("npm/node_modules/.bin/turbo"), system("npm")) else {
        return;
    };
    let server = Server::start();
    let writer = server.token(&["create", "--scope", "write", "--namespace", "web"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "web"]);
    let other = server.token(&["create", "--scope", "write", "--namespace", "other-team"]);
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    workspace(dir);

    // A first build: both tasks miss and are uploaded.
    let out = turbo(&bin, dir, &server, &writer);
    assert!(cached(&out).contains("0 cached, 2 total"), "{out}");
    assert_eq!(server.entries(), 2, "both artifacts stored");
    let built = read_tree(&dir.join("packages/app/dist"));

    // A clean rebuild, local cache gone: every task is a remote hit, outputs the same.
    clean(dir);
    let out = turbo(&bin, dir, &server, &writer);
    assert!(cached(&out).contains("2 cached, 2 total"), "{out}");
    assert_eq!(read_tree(&dir.join("packages/app/dist")), built);
    let m = metrics(&server);
    assert_eq!(metric(&m, r#"taskvault_tool_hits_total{tool="turbo"}"#), 2.0, "{m}");
    assert!(metric(&m, r#"taskvault_tool_time_saved_milliseconds_total{tool="turbo"}"#) > 0.0);

    // A team's token cannot see another team's artifacts: a clean build with it misses.
    clean(dir);
    let o = Command::new(&bin)
        .args(["run", "build", "--no-daemon", "--output-logs=hash-only"])
        .current_dir(dir)
        .env("TURBO_TELEMETRY_DISABLED", "1")
        .env("TURBO_API", &server.url)
        .env("TURBO_TOKEN", &other)
        .env("TURBO_TEAM", "web")
        .output()
        .unwrap();
    let out = succeeded(&o);
    assert!(cached(&out).contains("0 cached"), "{out}");

    // A read-only token: a changed input builds, succeeds, and nothing is written.
    std::fs::write(dir.join("packages/lib/src.txt"), "two\n").unwrap();
    clean(dir);
    let out = turbo(&bin, dir, &server, &reader);
    assert!(cached(&out).contains("0 cached, 2 total"), "{out}");
    assert_eq!(server.entries(), 2, "a read-only token stored nothing");

    // A wrong token: the build succeeds uncached, and turbo says why its own way.
    clean(dir);
    let out = turbo(&bin, dir, &server, "not-a-token");
    assert!(cached(&out).contains("0 cached, 2 total"), "{out}");
    assert_eq!(server.entries(), 2);

    // Corrupt stored artifacts: turbo rebuilds what cannot be served, and the build succeeds.
    std::fs::write(dir.join("packages/lib/src.txt"), "one\n").unwrap();
    clean(dir);
    assert!(corrupt_every_blob(&server) >= 1, "app's artifact is a blob file");
    let out = turbo(&bin, dir, &server, &writer);
    assert!(!cached(&out).contains("2 cached"), "a corrupt artifact was served:\n{out}");
    assert_ne!(read_tree(&dir.join("packages/app/dist")), built, "app was rebuilt");
    let m = metrics(&server);
    assert!(metric(&m, "taskvault_corrupt_blobs") >= 1.0, "{m}");
}
