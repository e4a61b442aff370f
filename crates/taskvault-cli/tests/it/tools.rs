//! The build tools' own cache protocols, driven by the real clients (installed by
//! `scripts/install-tools.sh`; a test whose client is missing says which and skips).

mod bazel;
pub(crate) mod ccache;
mod gradle;
mod nx;
mod protocols;
mod sccache;
mod turbo;

use std::path::{Path, PathBuf};
use std::process::Output;

pub use super::remote::Server;

/// Where `scripts/install-tools.sh` put the clients.
fn tools_dir() -> PathBuf {
    match std::env::var_os("TASKVAULT_TOOLS") {
        Some(d) => PathBuf::from(d),
        None => {
            // The workspace's target directory: the test binary lives in target/<profile>/deps.
            let exe = std::env::current_exe().unwrap();
            let target = exe.ancestors().nth(3).unwrap().to_owned();
            target.join("tools")
        }
    }
}

/// A client's executable, or `None` (and a line naming it) when it is not installed.
pub fn client(rel: &str) -> Option<PathBuf> {
    let p = if rel.starts_with('/') { PathBuf::from(rel) } else { tools_dir().join(rel) };
    if p.is_file() { Some(p) } else { missing(&p.display().to_string()) }
}

/// A program on the PATH, or `None` with a line naming it.
pub fn system(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())
    });
    found.or_else(|| missing(name))
}

/// Skips a test whose client is missing, saying which; CI (`TASKVAULT_REQUIRE_TOOLS`) fails.
fn missing(what: &str) -> Option<PathBuf> {
    let line = format!("{what} is not installed (bash scripts/install-tools.sh)");
    if std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_some() {
        panic!("{line}, and TASKVAULT_REQUIRE_TOOLS is set");
    }
    eprintln!("SKIP: {line}");
    None
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[track_caller]
pub fn succeeded(o: &Output) -> String {
    let t = text(o);
    assert!(o.status.success(), "the client failed ({:?}):\n{t}", o.status);
    t
}

/// Every blob file of the server's vault, each with one byte flipped in the middle: what is
/// stored no longer matches its digest.
pub fn corrupt_every_blob(server: &Server) -> usize {
    let root = server.dir.path().join("vault/blobs");
    let mut n = 0;
    for w in taskvault::tree::walk(&root).unwrap_or_default() {
        if w.kind == taskvault::tree::NodeKind::File {
            let len = std::fs::metadata(&w.abs).unwrap().len() as usize;
            super::flip_byte(&w.abs, len / 2);
            n += 1;
        }
    }
    n
}

/// Copies a directory tree (a project's outputs, to compare after a rebuild).
pub fn read_tree(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = taskvault::tree::walk(root)
        .unwrap()
        .into_iter()
        .filter(|w| w.kind == taskvault::tree::NodeKind::File)
        .map(|w| (w.rel.clone(), std::fs::read(&w.abs).unwrap()))
        .collect();
    out.sort();
    out
}

/// `/metrics` of the server, as text.
pub fn metrics(server: &Server) -> String {
    let url = format!("{}/metrics", server.url);
    ureq::get(&url).call().unwrap().into_body().read_to_string().unwrap()
}

/// The value of one metric series (0 if absent).
pub fn metric(text: &str, series: &str) -> f64 {
    number_after(text, series).unwrap_or(0.0)
}

/// The number that follows `name` on the first line starting with it (a metric series, a
/// ccache or sccache counter).
pub fn number_after(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}
