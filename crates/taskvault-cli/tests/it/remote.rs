//! The remote tier against a real `taskvault serve` process: two project directories stand for
//! two machines, each with its own vault, sharing one server.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use super::{Project, noise};

/// A `taskvault serve` on a free loopback port, stopped (SIGTERM, then wait) when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), &[])
    }

    /// A server whose vault runs with the config file `config` (YAML), and `args` to `serve`.
    pub fn start_with_config(config: &str, args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.yaml");
        std::fs::write(&path, config).unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        Server::start_in(dir, &all)
    }

    pub fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        // Into a file, never a pipe nobody drains: a server that logs more than a pipe holds
        // would block on its next warning.
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--dir")
            .arg(dir.path().join("vault"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("TASKVAULT_LOG", "warn")
            .env_remove("TASKVAULT_REMOTE")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(url) = line.trim().strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.wait();
            let err = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("serve did not start: {line:?} {err}")
        };
        Server { child, url, dir }
    }

    /// What the server logged so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `taskvault token ...` against the server's directory; returns stdout.
    pub fn token(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--dir")
            .arg(self.dir.path().join("vault"))
            .arg("token")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A `taskvault` command on the server's own vault; its stdout (it must succeed).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--dir")
            .arg(self.dir.path().join("vault"))
            .args(args)
            .env_remove("TASKVAULT_REMOTE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Stops with SIGTERM and returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        self.child.wait().unwrap().code()
    }

    /// Starts again on the same directory (a new port).
    pub fn restart(mut self) -> Server {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Server::start_in(dir, &[])
    }

    /// Live entries in the server's vault.
    pub fn entries(&self) -> i64 {
        if !self.dir.path().join("vault/cache.db").exists() {
            return 0;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--dir")
            .arg(self.dir.path().join("vault"))
            .args(["stats", "--json"])
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["entries"]
            .as_i64()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A project whose commands use `server` as their remote (with `token`, if any).
pub(crate) fn machine(server: &Server, token: Option<&str>) -> Project {
    let p = Project::new();
    let mut config = format!("remote:\n  url: {}\n", server.url);
    if token.is_some() {
        config.push_str("  token_env: TEST_TOKEN\n");
    }
    p.write(".taskvault/config.yaml", config);
    if let Some(t) = token {
        p.write(".token", t);
    }
    p
}

pub(crate) fn run(p: &Project, args: &[&str]) -> super::Run {
    let mut c = p.cmd();
    if let Ok(t) = std::fs::read_to_string(p.path(".token")) {
        c.env("TEST_TOKEN", t);
    }
    super::Run(c.args(args).output().unwrap())
}

pub(crate) fn http() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
}

#[test]
fn a_save_on_one_machine_is_a_hit_on_another_and_then_local() {
    let server = Server::start();
    let (a, b) = (machine(&server, None), machine(&server, None));
    let data = noise(3 << 20, 7);
    for p in [&a, &b] {
        p.write("in.txt", "inputs");
    }
    a.write("out.bin", &data);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(a.path("out.bin"), std::fs::Permissions::from_mode(0o750)).unwrap();
    run(&a, &["cache", "save", "build", "in.txt", "out.bin"]).ok();
    assert_eq!(server.entries(), 1);

    let hit = run(&b, &["cache", "get", "build", "in.txt", "got.bin"]).ok();
    assert!(hit.stderr().contains("from the remote"), "{}", hit.stderr());
    assert_eq!(std::fs::read(b.path("got.bin")).unwrap(), data);
    let mode = std::fs::metadata(b.path("got.bin")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750, "the output's permission bits come with it");
    let again = run(&b, &["cache", "get", "build", "in.txt", "again.bin"]).ok();
    assert!(!again.stderr().contains("remote"), "the second hit is local: {}", again.stderr());
    assert_eq!(b.stats()["remote_hits"], 1);
    assert_eq!(std::fs::read(b.path("again.bin")).unwrap(), data);

    // A tiny output (kept in its run's row) travels too.
    a.write("tiny.txt", "ok\n");
    run(&a, &["cache", "save", "tiny", "in.txt", "tiny.txt"]).ok();
    run(&b, &["cache", "get", "tiny", "in.txt", "tiny.txt"]).ok();
    assert_eq!(std::fs::read_to_string(b.path("tiny.txt")).unwrap(), "ok\n");
}

#[test]
fn run_replays_a_command_computed_on_another_machine() {
    let server = Server::start();
    let (a, b) = (machine(&server, None), machine(&server, None));
    let cmd = [
        "run",
        "-i",
        "src",
        "-o",
        "dist",
        "--",
        "sh",
        "-c",
        "mkdir -p dist && cat src/* > dist/all && echo built",
    ];
    for p in [&a, &b] {
        p.write("src/x.c", "int x;");
        p.write("src/y.c", "int y;");
    }
    let first = run(&a, &cmd).ok();
    assert!(first.stderr().contains("shared with the remote"), "{}", first.stderr());
    let second = run(&b, &cmd).ok();
    assert!(second.stderr().contains("from the remote"), "{}", second.stderr());
    assert_eq!(second.stdout(), "built\n", "the console is replayed");
    assert_eq!(std::fs::read_to_string(b.path("dist/all")).unwrap(), "int x;int y;");
}

#[test]
fn an_unreachable_server_is_one_warning_and_the_local_vault() {
    let p = Project::new();
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    p.write(".taskvault/config.yaml", format!("remote:\n  url: http://127.0.0.1:{port}\n"));
    p.write("in.txt", "x");
    let miss = p.run(&["cache", "get", "t", "in.txt", "out"]).code_is(1);
    assert_eq!(miss.stderr().matches("warning").count(), 1, "{}", miss.stderr());
    assert!(!p.path("out").exists());
    let ran = p.run(&["run", "-i", "in.txt", "--", "sh", "-c", "echo hi; exit 3"]).code_is(3);
    assert_eq!(ran.stdout(), "hi\n");
    assert_eq!(ran.stderr().matches("warning").count(), 1, "{}", ran.stderr());
    // Saves still land locally.
    p.write("o", "result");
    p.run(&["cache", "save", "t", "in.txt", "o"]).ok();
    p.run(&["cache", "get", "t", "in.txt", "o2"]).ok();

    // Unless the remote is required.
    p.write(
        ".taskvault/config.yaml",
        format!("remote:\n  url: http://127.0.0.1:{port}\n  required: true\n"),
    );
    let err = p.run(&["cache", "get", "t2", "in.txt", "out"]);
    assert_eq!(err.code(), 2, "{}", err.stderr());
}

#[test]
fn tokens_scopes_namespaces_and_revocation() {
    let server = Server::start();
    let writer =
        server.token(&["create", "--scope", "write", "--namespace", "default", "--name", "ci"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "default"]);
    let other = server.token(&["create", "--scope", "write", "--namespace", "b"]);
    assert!(writer.starts_with("tvk_"));
    let list = server.token(&["list"]);
    assert!(list.contains("ci") && !list.contains(&writer), "{list}");

    // A read-only token cannot write: the save warns, lands locally, and nothing reaches the
    // server.
    let r = machine(&server, Some(&reader));
    r.write("in.txt", "i");
    r.write("o", "output");
    let saved = run(&r, &["cache", "save", "t", "in.txt", "o"]).ok();
    assert!(saved.stderr().contains("403"), "{}", saved.stderr());
    assert_eq!(server.entries(), 0);

    let w = machine(&server, Some(&writer));
    w.write("in.txt", "i");
    w.write("o", "output");
    run(&w, &["cache", "save", "t", "in.txt", "o"]).ok();
    assert_eq!(server.entries(), 1);
    // The reader can read it.
    let r2 = machine(&server, Some(&reader));
    r2.write("in.txt", "i");
    run(&r2, &["cache", "get", "t", "in.txt", "got"]).ok();

    // A token for namespace b can neither read default's entries nor its blobs.
    let key = run(&w, &["--json", "cache", "get", "t", "in.txt", "x"]).json()["entry"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let h = http();
    let url = format!("{}/v1/ns/default/entries/{key}", server.url);
    let resp = h.get(&url).header("Authorization", format!("Bearer {other}")).call().unwrap();
    assert_eq!(resp.status(), 403);
    let resp = h.get(&url).call().unwrap();
    assert_eq!(resp.status(), 401, "no token");
    let in_b = format!("{}/v1/ns/b/entries/{key}", server.url);
    let resp = h.get(&in_b).header("Authorization", format!("Bearer {other}")).call().unwrap();
    assert_eq!(resp.status(), 404, "a key of namespace default is not served in b");
    let digest = taskvault::Algorithm::Blake3.digest(b"output").to_string();
    let blob_b = format!("{}/v1/ns/b/blobs/{digest}", server.url);
    let resp = h.get(&blob_b).header("Authorization", format!("Bearer {other}")).call().unwrap();
    assert_eq!(resp.status(), 404, "a blob sent in namespace default is not served in b");

    // A revoked token fails from the next request on.
    server.token(&["revoke", "ci"]);
    let resp = h.get(&url).header("Authorization", format!("Bearer {writer}")).call().unwrap();
    assert_eq!(resp.status(), 401);
}

#[test]
fn a_tampered_upload_is_refused_and_nothing_is_stored() {
    let server = Server::start();
    let h = http();
    let claimed = taskvault::Algorithm::Blake3.digest(b"the real bytes");
    let url = format!("{}/v1/ns/default/blobs/{claimed}", server.url);
    let mut resp = h.put(&url).send(&b"other bytes"[..]).unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("hashes to"), "{body}");
    assert_eq!(h.head(&url).call().unwrap().status(), 404);
    let uploads = server.dir.path().join("vault/server/uploads");
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
    let tmp = server.dir.path().join("vault/server/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the partial upload is gone");

    // A malformed digest or key is a 400 with a JSON body, never a 5xx.
    for bad in ["blobs/zz", "blobs/blake3:12", "entries/xyz", "entries/../../etc"] {
        let resp = h.get(format!("{}/v1/ns/default/{bad}", server.url)).call().unwrap();
        assert!(matches!(resp.status().as_u16(), 400 | 404), "{bad}: {}", resp.status());
    }
    let resp = h
        .get(format!("{}/v1/ns/..%2F..%2Fx/entries/{}", server.url, "0".repeat(64)))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 400);

    // An entry whose blobs were never sent is refused with the list of what is missing.
    let a = machine(&server, None);
    a.write("in.txt", "i");
    a.write("o", noise(100_000, 3));
    let e = a.run(&["--json", "cache", "save", "t", "in.txt", "o"]).ok().json();
    let stray = Server::start();
    let url = format!("{}/v1/ns/default/entries/{}", stray.url, e["key"].as_str().unwrap());
    let mut entry = e.clone();
    entry.as_object_mut().unwrap().remove("remote");
    let mut resp = h.put(&url).send_json(&entry).unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.body_mut().read_json().unwrap();
    assert_eq!(body["missing"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(stray.entries(), 0);
}

#[test]
fn a_server_stopped_mid_download_leaves_nothing_at_the_destination() {
    let mut server = Server::start();
    let (a, b) = (machine(&server, None), machine(&server, None));
    for p in [&a, &b] {
        p.write("in.txt", "i");
    }
    // Incompressible, large enough that the download takes a while.
    a.write("big.bin", noise(200 << 20, 11));
    for p in [&a, &b] {
        let mut config = std::fs::read_to_string(p.path(".taskvault/config.yaml")).unwrap();
        config.push_str("policies:\n  default:\n    max_size_bytes: 0\n");
        p.write(".taskvault/config.yaml", config);
    }
    run(&a, &["cache", "save", "big", "in.txt", "big.bin"]).ok();
    let mut c = b.cmd();
    let mut getter = c
        .args(["cache", "get", "big", "in.txt", "got.bin"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stop the server as soon as the client has started receiving.
    let tmp = b.vault().join("tmp");
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(20) {
        let receiving = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0)))
            .unwrap_or(false);
        if receiving {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    let status = getter.wait().unwrap();
    let mut err = String::new();
    getter.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(1), "a miss: {err}");
    assert!(err.contains("warning"), "{err}");
    assert!(!b.path("got.bin").exists());
    let beside: Vec<_> = std::fs::read_dir(b.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".got.bin"))
        .collect();
    assert!(beside.is_empty(), "no temporary file beside the destination: {beside:?}");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "partial downloads are removed: {leftovers:?}");
}

#[test]
fn acknowledged_uploads_survive_sigterm_during_32_concurrent_uploads() {
    let server = Server::start();
    let url = server.url.clone();
    let blobs: Vec<Vec<u8>> = (0..32).map(|i| noise(2 << 20, 100 + i)).collect();
    let handles: Vec<_> = blobs
        .iter()
        .cloned()
        .map(|data| {
            let url = url.clone();
            std::thread::spawn(move || {
                let d = taskvault::Algorithm::Blake3.digest(&data);
                let resp = http().put(format!("{url}/v1/ns/default/blobs/{d}")).send(&data[..]);
                (d, resp.map(|r| r.status().as_u16()).ok())
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(30));
    let mut server = server;
    assert_eq!(server.stop(), Some(0), "a graceful stop exits 0");
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let server = server.restart();
    let h = http();
    let mut acknowledged = 0;
    for (d, status) in results {
        if matches!(status, Some(200 | 201)) {
            acknowledged += 1;
            let resp = h.head(format!("{}/v1/ns/default/blobs/{d}", server.url)).call().unwrap();
            assert_eq!(resp.status(), 200, "acknowledged upload {d} is readable after a restart");
        }
    }
    assert!(acknowledged > 0, "some uploads finished before the stop");
}

/// The runs a command recorded in `counter` (one line per run).
pub(crate) fn runs(counter: &std::path::Path) -> usize {
    std::fs::read_to_string(counter).map(|s| s.lines().count()).unwrap_or(0)
}

pub(crate) fn spawn_run(p: &Project, args: &[&str]) -> Child {
    let mut c = p.cmd();
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().unwrap()
}

#[test]
fn sixteen_processes_on_two_machines_run_an_uncached_task_once() {
    let server = Server::start();
    let machines = [machine(&server, None), machine(&server, None)];
    sixteen_processes_run_it_once(&machines);
}

/// 16 processes, spread over `machines` in turn, start the same uncached command: it runs
/// exactly once, and every process replays its output.
pub(crate) fn sixteen_processes_run_it_once(machines: &[Project]) {
    let shared = tempfile::tempdir().unwrap();
    let counter = shared.path().join("counter");
    let script =
        format!("echo run >> {}; sleep 1; echo result > out.txt; echo done", counter.display());
    let args = ["run", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", &script];
    for m in machines {
        m.write("in.txt", "same inputs");
    }
    let children: Vec<(usize, Child)> =
        (0..16).map(|i| (i, spawn_run(&machines[i % machines.len()], &args))).collect();
    for (i, c) in children {
        let out = c.wait_with_output().unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "process {i}: {stderr}");
        assert_eq!(stdout, "done\n", "process {i} ran or replayed the command: {stderr}");
    }
    assert_eq!(runs(&counter), 1, "the task ran exactly once across the machines");
    for m in machines {
        assert_eq!(std::fs::read_to_string(m.path("out.txt")).unwrap(), "result\n");
    }
}

#[test]
fn when_the_claimant_is_killed_exactly_one_other_runs_it() {
    let server = Server::start();
    let shared = tempfile::tempdir().unwrap();
    let counter = shared.path().join("counter");
    let script =
        format!("echo run >> {}; sleep 2; echo result > out.txt; echo done", counter.display());
    let args = ["run", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", &script];
    let (a, b) = (machine(&server, None), machine(&server, None));
    for p in [&a, &b] {
        p.write("in.txt", "same inputs");
        // A short lease, so the test does not wait long for the dead claimant's to run out.
        let config = std::fs::read_to_string(p.path(".taskvault/config.yaml")).unwrap();
        p.write(".taskvault/config.yaml", format!("{config}  lease_seconds: 2\n"));
    }
    let mut claimant = spawn_run(&a, &args);
    let started = std::time::Instant::now();
    while runs(&counter) == 0 {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the claimant never ran");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let waiters: Vec<Child> =
        (0..6).map(|i| spawn_run(if i % 2 == 0 { &a } else { &b }, &args)).collect();
    std::thread::sleep(std::time::Duration::from_millis(300));
    claimant.kill().unwrap();
    claimant.wait().unwrap();
    for (i, w) in waiters.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "waiter {i}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n", "waiter {i}: {stderr}");
    }
    assert_eq!(runs(&counter), 2, "the killed claimant's run and exactly one other");
}

#[test]
fn a_corrupt_blob_on_the_server_is_never_served() {
    let server = Server::start();
    let (a, b) = (machine(&server, None), machine(&server, None));
    for p in [&a, &b] {
        p.write("in.txt", "i");
    }
    // One blob small enough to be read whole before the response, one streamed.
    a.write("small.bin", noise(100 << 10, 5));
    a.write("large.bin", noise(3 << 20, 6));
    run(&a, &["cache", "save", "small", "in.txt", "small.bin"]).ok();
    run(&a, &["cache", "save", "large", "in.txt", "large.bin"]).ok();
    let blobs = server.dir.path().join("vault/blobs");
    let mut files: Vec<_> = taskvault::tree::walk(&blobs)
        .unwrap()
        .into_iter()
        .filter(|w| w.kind == taskvault::tree::NodeKind::File)
        .collect();
    assert_eq!(files.len(), 2, "both blobs are files on the server");
    for f in &mut files {
        // Stored raw (incompressible): flip a byte in the middle.
        let len = std::fs::metadata(&f.abs).unwrap().len() as usize;
        super::flip_byte(&f.abs, len / 2);
    }
    for task in ["small", "large"] {
        let out = run(&b, &["cache", "get", task, "in.txt", "got.bin"]).code_is(1);
        assert!(out.stderr().contains("warning"), "{task}: {}", out.stderr());
        assert!(!b.path("got.bin").exists(), "{task}: nothing at the destination");
    }
    let quarantined =
        std::fs::read_dir(server.dir.path().join("vault/quarantine")).unwrap().count();
    assert_eq!(quarantined, 2, "the server quarantined both");
}

#[test]
fn log_show_stats_and_gc_of_the_server() {
    let server = Server::start();
    let admin = server.token(&["create", "--scope", "admin", "--namespace", "*", "--name", "ops"]);
    let writer = server.token(&["create", "--scope", "write", "--namespace", "default"]);
    let other = server.token(&["create", "--scope", "write", "--namespace", "b"]);
    let a = machine(&server, Some(&writer));
    a.write("in.txt", "i");
    a.write("o", "output one");
    let e = run(&a, &["--json", "cache", "save", "build", "in.txt", "o"]).ok().json();
    let id = e["id"].as_str().unwrap();

    let log = run(&a, &["--json", "log", "--remote"]).ok().json();
    assert_eq!(log.as_array().unwrap().len(), 1);
    assert_eq!(log[0]["id"], id);
    let text = run(&a, &["log", "--remote"]).ok();
    assert!(text.stdout().contains("build"), "{}", text.stdout());
    let shown = run(&a, &["--json", "show", "--remote", &id[..12]]).ok().json();
    assert_eq!(shown["id"], id);

    // Namespace b sees none of it.
    let b = machine(&server, Some(&other));
    b.write(
        ".taskvault/config.yaml",
        format!("namespace: b\nremote:\n  url: {}\n  token_env: TEST_TOKEN\n", server.url),
    );
    assert_eq!(run(&b, &["--json", "log", "--remote"]).ok().json().as_array().unwrap().len(), 0);
    let hidden = run(&b, &["show", "--remote", &id[..12]]);
    assert_eq!(hidden.code(), 2, "{}", hidden.stderr());
    assert!(hidden.stderr().contains("404"), "{}", hidden.stderr());

    // Stats and gc need an admin token for every namespace.
    let denied = run(&a, &["stats", "--remote"]);
    assert_eq!(denied.code(), 2);
    assert!(denied.stderr().contains("403"), "{}", denied.stderr());
    let ops = machine(&server, Some(&admin));
    let stats = run(&ops, &["--json", "stats", "--remote"]).ok().json();
    assert_eq!(stats["entries"], 1);
    assert_eq!(stats["saves"], 1);
    run(&ops, &["--json", "gc", "--remote"]).ok();

    // A remote hit says where it came from.
    let c = machine(&server, Some(&writer));
    c.write("in.txt", "i");
    run(&c, &["cache", "get", "build", "in.txt", "got"]).ok();
    let shown = run(&c, &["show", &id[..12]]).ok();
    assert!(shown.stdout().contains(&format!("fetched from {}", server.url)), "{}", shown.stdout());
}

#[test]
fn a_server_without_tokens_refuses_to_serve_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
        .arg("--dir")
        .arg(dir.path().join("vault"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without tokens") && err.contains("token create"), "{err}");
    // Told to, it serves.
    let mut open = Command::new(env!("CARGO_BIN_EXE_taskvault"))
        .arg("--dir")
        .arg(dir.path().join("vault"))
        .args(["serve", "--listen", "0.0.0.0:0", "--insecure-no-auth"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(open.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = open.kill();
    let _ = open.wait();
    assert!(line.starts_with("listening on http://0.0.0.0:"), "{line}");
}

/// The status a server answers to an upload that announces `len` bytes, read before any byte
/// of the body is sent (a server refuses what it can never take at once).
fn announced_upload_status(url: &str, digest: &taskvault::Digest, len: u64) -> u16 {
    use std::io::Write;
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "PUT /v1/ns/default/blobs/{digest} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut status = String::new();
    BufReader::new(s).read_line(&mut status).unwrap();
    status.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn limits_metrics_audit_and_only_missing_blobs_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    // A vault capped at about 1 MiB, taking uploads of at most 4 MiB.
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    let config = dir.path().join("server.yaml");
    std::fs::write(&config, "max_size_gb: 0.001\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_taskvault"))
        .arg("--dir")
        .arg(dir.path().join("vault"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen", "127.0.0.1:0", "--max-upload-size", "4MiB"])
        .env("TASKVAULT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().trim_start_matches("listening on ").to_owned();
    let mut cap_server = Server { child, url, dir };
    let h = http();
    let base = cap_server.url.clone();
    let put = |data: &[u8]| {
        let d = taskvault::Algorithm::Blake3.digest(data);
        h.put(format!("{base}/v1/ns/default/blobs/{d}")).send(data).unwrap().status().as_u16()
    };
    let d = taskvault::Algorithm::Blake3.digest(b"x");
    assert_eq!(announced_upload_status(&base, &d, 5 << 20), 413, "over --max-upload-size");
    assert_eq!(announced_upload_status(&base, &d, 2 << 20), 507, "never fits under the cap");
    assert_eq!(put(&noise(500 << 10, 4)), 201, "fits");

    let token =
        cap_server.token(&["create", "--scope", "write", "--namespace", "default", "--name", "ci"]);
    let a = machine(&cap_server, Some(&token));
    a.write("in.txt", "i");
    a.write("o", noise(200 << 10, 3));
    let first = run(&a, &["--json", "cache", "save", "t", "in.txt", "o"]).ok().json();
    assert_eq!(first["remote"]["blobs_sent"], 1);
    // The same bytes under another task: the server has them, nothing is sent again.
    let again = run(&a, &["--json", "cache", "save", "t2", "in.txt", "o"]).ok().json();
    assert_eq!(again["remote"]["blobs_sent"], 0, "{again}");
    assert_eq!(again["remote"]["blobs_present"], 1);

    // --explain says where a run looked (then runs, saves and shares: a third entry).
    let b = machine(&cap_server, Some(&token));
    b.write("in.txt", "i");
    let explained = run(&b, &["run", "--explain", "-i", "in.txt", "--", "true"]).ok();
    assert!(
        explained.stderr().contains(&format!("remote {}: miss", cap_server.url)),
        "{}",
        explained.stderr()
    );

    let c = machine(&cap_server, Some(&token));
    c.write("in.txt", "i");
    run(&c, &["cache", "get", "t", "in.txt", "got"]).ok();
    let metrics = h
        .get(format!("{}/metrics", cap_server.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for series in [
        "taskvault_hits_total 1",
        "taskvault_misses_total 1",
        "taskvault_saves_total 3",
        "taskvault_entries 3",
        "taskvault_http_requests_total{",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    let audit = std::fs::read_to_string(cap_server.dir.path().join("vault/audit.log")).unwrap();
    assert!(audit.contains("serve:ci"), "the audit trail names the token: {audit}");
    assert_eq!(cap_server.stop(), Some(0));
}

#[test]
fn a_token_file_kept_outside_the_vault_is_only_read_and_its_changes_apply() {
    // Made where a deployment keeps secrets (a Kubernetes Secret mounted read-only, say), with
    // the same `taskvault token` commands.
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("tokens.json");
    let token = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--dir")
            .arg(secrets.path().join("scratch"))
            .arg("token")
            .args(args)
            .env("TASKVAULT_TOKENS_FILE", &file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let writer = token(&["create", "--scope", "write", "--namespace", "default", "--name", "ci"]);
    assert!(file.is_file());
    let before: Vec<_> =
        std::fs::read_dir(secrets.path()).unwrap().map(|e| e.unwrap().path()).collect();

    let server =
        Server::start_in(tempfile::tempdir().unwrap(), &["--tokens-file", file.to_str().unwrap()]);
    let h = http();
    let key = "0".repeat(64);
    let url = format!("{}/v1/ns/default/entries/{key}", server.url);
    assert_eq!(h.get(&url).call().unwrap().status(), 401, "the file's tokens are required");
    let auth = format!("Bearer {writer}");
    assert_eq!(h.get(&url).header("Authorization", &auth).call().unwrap().status(), 404);
    assert!(
        !server.dir.path().join("vault/server/tokens.json").exists(),
        "the vault's own token file was used or made"
    );

    // Revoked in the file: refused from the next request on, without a restart.
    std::thread::sleep(std::time::Duration::from_millis(20));
    token(&["revoke", "ci"]);
    assert_eq!(h.get(&url).header("Authorization", &auth).call().unwrap().status(), 401);
    let after: Vec<_> =
        std::fs::read_dir(secrets.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before.len(), after.len(), "the server wrote beside the token file");
}

#[test]
fn a_server_whose_blobs_live_in_s3_shares_results_between_machines() {
    let Some(s3) = taskvault_testkit::seaweed::Seaweed::start() else { return };
    let config = format!("storage:\n  blobs: {}\n", s3.url("shared", "vault"));
    let server = Server::start_with_config(&config, &[]);
    let (a, b) = (machine(&server, None), machine(&server, None));
    let data = noise(300_000, 21);
    for p in [&a, &b] {
        p.write("in.txt", "inputs");
    }
    a.write("out.bin", &data);
    run(&a, &["cache", "save", "model", "in.txt", "out.bin"]).ok();
    let got = run(&b, &["cache", "get", "model", "in.txt", "out.bin"]);
    assert_eq!(got.code(), 0, "{}", got.stderr());
    assert!(got.stderr().contains("from the remote"), "{}", got.stderr());
    assert!(std::fs::read(b.path("out.bin")).unwrap() == data, "b restored other bytes");
    // The server kept the bytes in the bucket, not on its disk.
    let blobs = server.dir.path().join("vault/blobs");
    let local = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
    assert_eq!(local, 0, "the server wrote blobs under {}", blobs.display());
    let stats: serde_json::Value = serde_json::from_str(&server.cli(&["stats", "--json"])).unwrap();
    assert_eq!(stats["entries"], 1);
}
