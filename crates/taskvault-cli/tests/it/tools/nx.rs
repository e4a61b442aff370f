//! Nx (`nx`, from npm) against `taskvault serve` through its self-hosted remote cache.

use std::path::Path;
use std::process::{Command, Output};

use super::{Server, client, corrupt_every_blob, read_tree, succeeded, text};

/// A one-project Nx workspace whose build writes 200 KB of fresh random bytes; `nx` comes from
/// the installed tools (a `node_modules` link).
fn workspace(dir: &Path, node_modules: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w("package.json", r#"{"name":"nxdemo","private":true}"#);
    w(
        "nx.json",
        r#"{"targetDefaults":{"build":{"cache":true,"outputs":["{projectRoot}/dist"],"inputs":["{projectRoot}/**/*"]}}}"#,
    );
    w(
        "apps/app/project.json",
        r#"{"name":"app","targets":{"build":{"executor":"nx:run-commands","options":{"command":"mkdir -p apps/app/dist && head -c 200000 /dev/urandom > apps/app/dist/big.bin && cat apps/app/src.txt > apps/app/dist/out.txt"}}}}"#,
    );
    w("apps/app/src.txt", "one\n");
    w(".gitignore", "node_modules\ndist\n.nx\n");
    std::os::unix::fs::symlink(node_modules, dir.join("node_modules")).unwrap();
    for args in [&["init", "-q", "."][..], &["add", "-A"]] {
        let o = Command::new("git").args(args).current_dir(dir).output().unwrap();
        assert!(o.status.success(), "git {args:?}: {}", text(&o));
    }
}

fn clean(dir: &Path) {
    for rel in [".nx", "apps/app/dist"] {
        let _ = std::fs::remove_dir_all(dir.join(rel));
    }
}

fn nx(bin: &Path, dir: &Path, server: &Server, token: &str) -> Output {
    Command::new(bin)
        .args(["run", "app:build"])
        .current_dir(dir)
        .env("NX_DAEMON", "false")
        .env("NX_NO_CLOUD", "true")
        .env("NX_TUI", "false")
        .env("NX_SKIP_NX_CACHE", "false")
        .env("NX_CACHE_DIRECTORY", dir.join(".nx/cache"))
        .env("NX_WORKSPACE_DATA_DIRECTORY", dir.join(".nx/workspace-data"))
        .env("NX_SELF_HOSTED_REMOTE_CACHE_SERVER", &server.url)
        .env("NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN", token)
        .output()
        .unwrap()
}

#[test]
fn nx_builds_share_a_remote_cache_that_is_never_overwritten() {
    let Some(bin) = client("npm/node_modules/.bin/nx") else { return };
    let node_modules = bin.parent().unwrap().parent().unwrap().to_owned();
    let server = Server::start();
    let writer = server.token(&["create", "--scope", "write", "--namespace", "nx"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "nx"]);
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    workspace(dir, &node_modules);

    let out = succeeded(&nx(&bin, dir, &server, &writer));
    assert!(out.contains("0/1 hit"), "{out}");
    assert_eq!(server.entries(), 1, "the task's archive was stored");
    let built = read_tree(&dir.join("apps/app/dist"));

    // A clean rebuild, local cache gone: a remote hit, the same outputs.
    clean(dir);
    let out = succeeded(&nx(&bin, dir, &server, &writer));
    assert!(out.contains("1/1 hit"), "{out}");
    assert_eq!(read_tree(&dir.join("apps/app/dist")), built);

    // An artifact is never overwritten, whatever the token (the poisoning Nx's own cache had).
    let audit = std::fs::read_to_string(server.dir.path().join("vault/audit.log")).unwrap();
    assert!(audit.contains("serve:nx:write:nx"), "saves audited with tool and token:\n{audit}");
    let listed: serde_json::Value =
        serde_json::from_str(&server.cli(&["log", "--json", "--tool", "nx"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let key = listed[0]["extras"][0][1].as_str().unwrap().to_owned();
    let put = ureq::put(format!("{}/v1/cache/{key}", server.url))
        .header("Authorization", format!("Bearer {writer}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&b"poison"[..])
        .unwrap();
    assert_eq!(put.status().as_u16(), 409, "an existing hash is never overwritten");
    clean(dir);
    let out = succeeded(&nx(&bin, dir, &server, &writer));
    assert!(out.contains("1/1 hit"), "{out}");
    assert_eq!(read_tree(&dir.join("apps/app/dist")), built, "the first artifact still serves");

    // A read-only token: a changed input builds, succeeds, and nothing is written.
    std::fs::write(dir.join("apps/app/src.txt"), "two\n").unwrap();
    clean(dir);
    let out = succeeded(&nx(&bin, dir, &server, &reader));
    assert!(out.contains("0/1 hit"), "{out}");
    assert_eq!(server.entries(), 1, "a read-only token stored nothing");

    // A wrong token: Nx stops on a 401 by design, naming it; nothing is stored.
    clean(dir);
    let o = nx(&bin, dir, &server, "not-a-token");
    assert!(text(&o).contains("Unauthorized"), "{}", text(&o));
    assert_eq!(server.entries(), 1);

    // A corrupt stored archive: Nx runs the task again, and the build succeeds.
    std::fs::write(dir.join("apps/app/src.txt"), "one\n").unwrap();
    clean(dir);
    assert!(corrupt_every_blob(&server) >= 1);
    let out = succeeded(&nx(&bin, dir, &server, &writer));
    assert!(out.contains("0/1 hit"), "a corrupt archive was served:\n{out}");
    assert_ne!(read_tree(&dir.join("apps/app/dist")), built, "rebuilt");
}
