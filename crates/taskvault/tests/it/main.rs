//! Multi-process tests of the engine. A test re-runs its own test binary as worker processes
//! (selected by `TASKVAULT_IT_ROLE`), so workers use the real engine with no extra binary.

mod conformance;
mod fuzz;
mod object;
mod procs;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use taskvault::{Settings, Vault};

pub const ROLE: &str = "TASKVAULT_IT_ROLE";

/// The environment variable that hands a worker the blob store URL of the vault under test.
pub const BLOBS: &str = "TASKVAULT_IT_BLOBS";

/// The environment variable that hands a worker the metadata URL (PostgreSQL) of the vault.
pub const METADATA: &str = "TASKVAULT_IT_METADATA";

/// Starts this test binary as a worker running `test` with `role`.
pub fn spawn_worker(test: &str, role: &str, vault: &Path, worker: usize) -> Child {
    spawn_worker_on(test, role, vault, None, None, worker)
}

/// [`spawn_worker`] for a vault whose blobs live at `blobs` (an object store URL) and whose
/// metadata at `metadata` (a PostgreSQL URL).
pub fn spawn_worker_on(
    test: &str,
    role: &str,
    vault: &Path,
    blobs: Option<&str>,
    metadata: Option<&str>,
    worker: usize,
) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for (var, url) in [(BLOBS, blobs), (METADATA, metadata)] {
        match url {
            Some(url) => cmd.env(var, url),
            None => cmd.env_remove(var),
        };
    }
    cmd.args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ROLE, role)
        .env("TASKVAULT_IT_VAULT", vault)
        .env("TASKVAULT_IT_WORKER", worker.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The role this process was started with, if it is a worker.
pub fn role() -> Option<(String, std::path::PathBuf, u64)> {
    let role = std::env::var(ROLE).ok()?;
    let vault = std::env::var("TASKVAULT_IT_VAULT").unwrap().into();
    let worker = std::env::var("TASKVAULT_IT_WORKER").unwrap().parse().unwrap();
    Some((role, vault, worker))
}

/// Opens the vault at `dir`, its blobs and metadata where this worker was told ([`BLOBS`],
/// [`METADATA`]) or local.
pub fn open(dir: &Path) -> Vault {
    let mut s = Settings::for_dir(dir);
    s.blobs_url = std::env::var(BLOBS).ok();
    s.metadata_url = std::env::var(METADATA).ok();
    Vault::open(s).unwrap()
}

pub use taskvault_testkit::Rng;

/// The content saved for key `k`, version `v`: a header naming both, then a body whose size and
/// compressibility depend on them (inline, small file, large raw and large compressed blobs).
pub fn content(k: u64, v: u64) -> Vec<u8> {
    let size = match (k + v) % 4 {
        0 => 100,
        1 => 40_000,
        2 => 300_000,
        _ => 1_500_000,
    };
    let mut out = format!("k={k} v={v}\n").into_bytes();
    let mut r = Rng::new(k * 1000 + v + 1);
    let compressible = (k + v).is_multiple_of(2);
    while out.len() < size {
        let x = r.step();
        if compressible {
            out.extend_from_slice(format!("line {} of key {k}\n", x % 10).as_bytes());
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out
}

/// Checks that bytes served for key `k` are exactly one of the versions saved for it.
pub fn check_content(k: u64, bytes: &[u8]) -> Result<(), String> {
    let header = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8".to_owned())?;
    let v: u64 = header
        .strip_prefix(&format!("k={k} v="))
        .ok_or_else(|| format!("key {k} served {header:?}"))?
        .parse()
        .map_err(|_| format!("bad header {header:?}"))?;
    if content(k, v) != bytes {
        return Err(format!("key {k} v{v}: bytes differ from what was saved"));
    }
    Ok(())
}
