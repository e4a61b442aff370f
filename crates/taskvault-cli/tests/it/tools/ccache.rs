//! ccache (Debian's 4.7 and PyPI's 4.14, the two key spellings) against `taskvault serve` as its
//! HTTP remote storage, in the three layouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{Server, client, corrupt_every_blob, succeeded, system, text};

/// A C file with 64 KiB of random constant data: its object (and so ccache's result) is too
/// large to live inside the server's database, and differs from any other such file.
pub fn source(dir: &Path, seed: u64) -> PathBuf {
    let data = super::super::noise(64 << 10, seed);
    let mut c = String::from("const unsigned char blob[] = {");
    for b in data {
        c.push_str(&format!("{b},"));
    }
    c.push_str("};\nint f(int x) { return x * 42 + blob[x]; }\n");
    let p = dir.join("x.c");
    std::fs::write(&p, c).unwrap();
    p
}

pub fn compile(ccache: &Path, dir: &Path, local: &Path, storage: &str) -> Output {
    Command::new(ccache)
        .args(["gcc", "-c", "x.c", "-o", "x.o"])
        .current_dir(dir)
        .env("CCACHE_DIR", local)
        .env("CCACHE_REMOTE_STORAGE", storage)
        .env_remove("CCACHE_DISABLE")
        .output()
        .unwrap()
}

/// ccache's counters for a cache directory.
pub fn stat(ccache: &Path, local: &Path, name: &str) -> u64 {
    let o = Command::new(ccache).arg("--print-stats").env("CCACHE_DIR", local).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let n = super::number_after(&out, name).unwrap_or_else(|| panic!("no {name} in:\n{out}"));
    n as u64
}

fn check(ccache: &Path) {
    let Some(_) = system("gcc") else { return };
    let server = Server::start();
    let writer = server.token(&["create", "--scope", "write", "--namespace", "ccache"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "ccache"]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut n = 0;
    let mut fresh = || {
        n += 1;
        dir.join(format!("local-{n}"))
    };
    let url = |token: &str, layout: &str| {
        format!("{}/ccache|layout={layout}|bearer-token={token}", server.url)
    };
    let mut stored = 0;
    for (i, layout) in ["subdirs", "flat", "bazel"].into_iter().enumerate() {
        source(dir, i as u64);
        let first = fresh();
        succeeded(&compile(ccache, dir, &first, &url(&writer, layout)));
        assert_eq!(stat(ccache, &first, "remote_storage_miss"), 1, "{layout}");
        let object = std::fs::read(dir.join("x.o")).unwrap();
        assert!(server.entries() > stored, "{layout}: stored on the server");
        stored = server.entries();

        // A fresh local cache: the result comes from the server.
        let second = fresh();
        std::fs::remove_file(dir.join("x.o")).unwrap();
        succeeded(&compile(ccache, dir, &second, &url(&writer, layout)));
        assert_eq!(stat(ccache, &second, "remote_storage_hit"), 1, "{layout}");
        assert_eq!(std::fs::read(dir.join("x.o")).unwrap(), object, "{layout}");
    }

    // subdirs and flat spell the same entry: a result stored through one is a hit through the
    // other.
    source(dir, 10);
    succeeded(&compile(ccache, dir, &fresh(), &url(&writer, "subdirs")));
    let other = fresh();
    succeeded(&compile(ccache, dir, &other, &url(&writer, "flat")));
    assert_eq!(stat(ccache, &other, "remote_storage_hit"), 1);
    stored = server.entries();

    // A read-only token: compiles, and stores nothing.
    source(dir, 20);
    let local = fresh();
    succeeded(&compile(ccache, dir, &local, &url(&reader, "subdirs")));
    assert_eq!(server.entries(), stored, "a read-only token stored nothing");

    // A wrong token: compiles, ccache counts the error its own way.
    source(dir, 21);
    let local = fresh();
    succeeded(&compile(ccache, dir, &local, &url("not-a-token", "subdirs")));
    assert!(stat(ccache, &local, "remote_storage_error") >= 1, "the refusal is an error");
    assert_eq!(server.entries(), stored);

    // Corrupt results on the server: ccache compiles again, correctly.
    source(dir, 10);
    assert!(corrupt_every_blob(&server) >= 1, "results are blob files");
    let local = fresh();
    let o = compile(ccache, dir, &local, &url(&writer, "subdirs"));
    succeeded(&o);
    assert_eq!(stat(ccache, &local, "remote_storage_hit"), 0, "{}", text(&o));
    let _ = stored;
}

#[test]
fn ccache_4_14_uses_the_server_in_every_layout() {
    if let Some(ccache) = client("venv/bin/ccache") {
        check(&ccache);
    }
}

#[test]
fn ccache_4_7_uses_the_server_in_every_layout() {
    if let Some(ccache) = system("ccache") {
        check(&ccache);
    }
}
