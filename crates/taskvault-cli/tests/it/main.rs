//! Integration tests of the `taskvault` binary, run as whole processes.

mod errors;
mod fuzz;
mod hostile;
mod inspect;
mod migration;
mod readme;
mod remote;
mod replicas;
mod run;
mod seed;
mod snapshots;
mod tools;
mod ux;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A project directory with its own vault.
#[derive(Debug)]
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Default for Project {
    fn default() -> Self {
        Project { dir: tempfile::tempdir().unwrap() }
    }
}

impl Project {
    pub fn new() -> Project {
        Project::default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, data).unwrap();
        p
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_taskvault"));
        c.current_dir(self.dir.path())
            .env_remove("TASKVAULT_DIR")
            .env_remove("TASKVAULT_CONFIG")
            .env_remove("TASKVAULT_LOG")
            .env_remove("TASKVAULT_REMOTE")
            .env_remove("TASKVAULT_TOKEN")
            .env("NO_COLOR", "1");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.cmd().args(args).output().unwrap())
    }

    pub fn vault(&self) -> PathBuf {
        self.path(".taskvault/cache")
    }

    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let root = self.vault().join("blobs");
        for w in taskvault::tree::walk(&root).unwrap_or_default() {
            if w.kind == taskvault::tree::NodeKind::File {
                out.push(w.abs);
            }
        }
        out
    }

    pub fn stats(&self) -> serde_json::Value {
        self.run(&["stats", "--json"]).ok().json()
    }

    /// Live entries; 0 where nothing was ever saved (no vault: `stats` says so, and fails).
    pub fn entries(&self) -> i64 {
        if !self.vault().join("cache.db").exists() {
            return 0;
        }
        self.stats()["entries"].as_i64().unwrap()
    }
}

#[derive(Debug)]
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code(), 0, "stdout: {}\nstderr: {}", self.stdout(), self.stderr());
        self
    }
    #[track_caller]
    pub fn code_is(self, code: i32) -> Run {
        assert_eq!(self.code(), code, "stdout: {}\nstderr: {}", self.stdout(), self.stderr());
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout()))
    }
}

pub use taskvault_testkit::noise;

pub fn flip_byte(p: &Path, at: usize) {
    let mut b = std::fs::read(p).unwrap();
    b[at] ^= 0x01;
    std::fs::write(p, b).unwrap();
}
