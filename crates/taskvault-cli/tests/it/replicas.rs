//! `taskvault serve` replicas on one PostgreSQL (a schema of the test's own) and one S3 bucket
//! (SeaweedFS), as a team runs them behind a load balancer: whatever a client does through one
//! replica, it may continue through any other.

use std::process::Command;

use super::remote::{Server, http, machine, run};
use super::{Project, noise};

/// The replicas and the servers they share (dropped last: the replicas stop first).
struct Replicas {
    servers: Vec<Server>,
    /// The object store, unless the replicas are on Redis alone.
    s3: Option<taskvault_testkit::seaweed::Seaweed>,
    _redis: Option<taskvault_testkit::redis::Prefix>,
    /// A PostgreSQL cluster of the test's own, for tests that stop it.
    pg: Option<taskvault_testkit::postgres::Cluster>,
    _schema: Option<taskvault_testkit::postgres::Schema>,
}

impl Replicas {
    /// `n` replicas on a schema of the machine's PostgreSQL, or `None` (the test skips, saying
    /// why) without PostgreSQL or SeaweedFS.
    fn start(label: &str, n: usize) -> Option<Replicas> {
        let pg = taskvault_testkit::postgres::server()?;
        let s3 = taskvault_testkit::seaweed::Seaweed::start()?;
        let schema = taskvault_testkit::postgres::Schema::new(&pg, label);
        let servers = Self::launch(&schema.url(), Some(&s3.url("replicas", label)), n);
        Some(Replicas { servers, s3: Some(s3), _redis: None, pg: None, _schema: Some(schema) })
    }

    /// `n` replicas on Redis alone (metadata and blobs), under a key prefix of their own.
    fn start_on_redis(label: &str, n: usize) -> Option<Replicas> {
        let server = taskvault_testkit::redis::server()?;
        let prefix = taskvault_testkit::redis::Prefix::new(&server, label);
        let servers = Self::launch(&prefix.url(), None, n);
        Some(Replicas { servers, s3: None, _redis: Some(prefix), pg: None, _schema: None })
    }

    /// `n` replicas on a PostgreSQL cluster of their own (which the test may stop).
    fn start_with_own_postgres(label: &str, n: usize) -> Option<Replicas> {
        let pg = taskvault_testkit::postgres::Cluster::start()?;
        let s3 = taskvault_testkit::seaweed::Seaweed::start()?;
        let servers = Self::launch(&pg.url(), Some(&s3.url("replicas", label)), n);
        Some(Replicas { servers, s3: Some(s3), _redis: None, pg: Some(pg), _schema: None })
    }

    fn launch(metadata: &str, blobs: Option<&str>, n: usize) -> Vec<Server> {
        let mut config = format!("storage:\n  metadata: {metadata}\n");
        if let Some(b) = blobs {
            config.push_str(&format!("  blobs: {b}\n"));
        }
        (0..n)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("server.yaml");
                std::fs::write(&path, &config).unwrap();
                let path = path.to_str().unwrap().to_owned();
                Server::start_in(dir, &["--config", &path])
            })
            .collect()
    }

    /// A CLI command on replica `i`'s vault (its config); its stdout (it must succeed).
    fn admin(&self, i: usize, args: &[&str]) -> String {
        let r = &self.servers[i];
        let out = Command::new(env!("CARGO_BIN_EXE_taskvault"))
            .arg("--config")
            .arg(r.dir.path().join("server.yaml"))
            .arg("--dir")
            .arg(r.dir.path().join("vault"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A result saved through one replica is a remote hit through each of the others (the entry,
/// the namespace's proof and the blob are where every replica reads them), and a removal
/// through one is seen by all.
#[test]
fn replicas_serve_what_any_of_them_saved() {
    let Some(replicas) = Replicas::start("served", 3) else { return };
    let data = noise(2 << 20, 17);
    let saver = machine(&replicas.servers[0], None);
    saver.write("in.txt", "inputs");
    saver.write("out.bin", &data);
    run(&saver, &["cache", "save", "build", "in.txt", "out.bin"]).ok();
    for (i, replica) in replicas.servers.iter().enumerate().skip(1) {
        let m = machine(replica, None);
        m.write("in.txt", "inputs");
        let hit = run(&m, &["cache", "get", "build", "in.txt", "got.bin"]).ok();
        assert!(hit.stderr().contains("from the remote"), "replica {i}: {}", hit.stderr());
        assert_eq!(std::fs::read(m.path("got.bin")).unwrap(), data, "replica {i}");
    }
    // Removed on one replica's machine: a miss through every replica.
    let log = replicas.admin(2, &["--json", "log", "-n", "1"]);
    let key = serde_json::from_str::<serde_json::Value>(&log).unwrap()[0]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    replicas.admin(2, &["rm", &key]);
    for replica in &replicas.servers {
        let m = machine(replica, None);
        m.write("in.txt", "inputs");
        run(&m, &["cache", "get", "build", "in.txt", "got.bin"]).code_is(1);
    }
    // The audit trail, read with any replica's config, is every replica's: the save through
    // replica 0, the hits through 1 and 2, the misses through all three, each naming the
    // process that served it, and the removal. (Replicas write their records within a second.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let read = |i: usize| -> Vec<serde_json::Value> {
            let out = replicas.admin(i, &["--json", "audit", "-n", "100"]);
            serde_json::from_str(&out).unwrap()
        };
        let trail = read(1);
        let of = |event: &str| -> Vec<&serde_json::Value> {
            trail
                .iter()
                .filter(|r| r["event"] == event && r["hash"] == key.as_str())
                .filter(|r| r["op"].as_str().unwrap().starts_with("serve:") || event == "REMOVE")
                .collect()
        };
        let origins = |rows: Vec<&serde_json::Value>| -> std::collections::HashSet<String> {
            rows.iter().map(|r| r["origin"].as_str().unwrap().to_owned()).collect()
        };
        let complete = of("SAVE").len() == 1
            && origins(of("HIT")).len() == 2
            && origins(of("MISS")).len() == 3
            && of("REMOVE").len() == 1;
        if complete {
            assert_eq!(read(0), trail, "replicas 0 and 1 read one trail");
            let saver = origins(of("SAVE"));
            assert!(origins(of("HIT")).is_disjoint(&saver), "hits came through other replicas");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the audit trail lacks records: {trail:#?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// 16 processes on three machines, each machine behind another replica, start the same
/// uncached command: the claim's lease is in PostgreSQL, so one runs it and the 15 others wait
/// (woken through the store when it commits) and replay its result.
#[test]
fn sixteen_processes_on_three_replicas_run_an_uncached_task_once() {
    let Some(replicas) = Replicas::start("once", 3) else { return };
    sixteen_processes_run_it_once(&replicas);
}

/// The same on three replicas whose store is Redis alone (leases, uploads and all).
#[test]
fn sixteen_processes_on_three_redis_replicas_run_an_uncached_task_once() {
    let Some(replicas) = Replicas::start_on_redis("once", 3) else { return };
    sixteen_processes_run_it_once(&replicas);
}

fn sixteen_processes_run_it_once(replicas: &Replicas) {
    let machines: Vec<Project> = replicas.servers.iter().map(|r| machine(r, None)).collect();
    super::remote::sixteen_processes_run_it_once(&machines);
}

/// A load balancer without sticky sessions: a blob uploaded through one replica is read back
/// through a second and committed, in an entry, through a third.
#[test]
fn an_upload_through_one_replica_is_committed_through_another() {
    let Some(replicas) = Replicas::start("uploads", 3) else { return };
    upload_here_commit_there(&replicas);
}

#[test]
fn an_upload_through_one_redis_replica_is_committed_through_another() {
    let Some(replicas) = Replicas::start_on_redis("uploads", 3) else { return };
    upload_here_commit_there(&replicas);
}

fn upload_here_commit_there(replicas: &Replicas) {
    let [a, b, c] = [0, 1, 2].map(|i| replicas.servers[i].url.clone());
    // An entry as a client sends it: saved on a machine without a remote, then sent by hand.
    let bytes = noise(1 << 20, 4);
    let local = Project::new();
    local.write("in.txt", "inputs");
    local.write("out.bin", &bytes);
    run(&local, &["cache", "save", "build", "in.txt", "out.bin"]).ok();
    let log = run(&local, &["--json", "log", "-n", "1"]).json();
    let key = log[0]["key"].as_str().unwrap().to_owned();
    let entry = run(&local, &["--json", "show", &key]).stdout();
    let d = taskvault::Algorithm::Blake3.digest(&bytes).to_string();
    assert!(entry.contains(&d), "the entry names its blob: {entry}");
    let h = http();

    let put = h.put(format!("{b}/v1/ns/default/blobs/{d}")).send(&bytes[..]).unwrap();
    assert_eq!(put.status().as_u16(), 201, "the upload through b");
    // Read back through c, which never received it: fetched from the shared area, verified.
    let mut got = h.get(format!("{c}/v1/ns/default/blobs/{d}")).call().unwrap();
    assert_eq!(got.status(), 200);
    let served = got.body_mut().with_config().limit(4 << 20).read_to_vec().unwrap();
    assert!(served == bytes, "c served other bytes");
    // Committed through a, which did not receive it either.
    let mut commit = h
        .put(format!("{a}/v1/ns/default/entries/{key}"))
        .header("Content-Type", "application/json")
        .send(entry.as_bytes())
        .unwrap();
    let status = commit.status().as_u16();
    assert_eq!(status, 201, "{}", commit.body_mut().read_to_string().unwrap());
    for url in [&a, &b, &c] {
        let r = h.get(format!("{url}/v1/ns/default/entries/{key}")).call().unwrap();
        assert_eq!(r.status(), 200, "the entry through {url}");
        let mut blob = h.get(format!("{url}/v1/ns/default/blobs/{d}")).call().unwrap();
        let served = blob.body_mut().with_config().limit(4 << 20).read_to_vec().unwrap();
        assert!(served == bytes, "{url} served other bytes");
    }
}

/// Entries a client would send, each with the bytes of its one blob: saved on a machine
/// without a remote (`n` keys of task `load`, outputs of `size` bytes).
fn entries(n: usize, size: usize) -> Vec<(String, String, Vec<u8>)> {
    let local = Project::new();
    (0..n)
        .map(|i| {
            let bytes = noise(size, 1000 + i as u64);
            local.write("in.txt", format!("input {i}"));
            local.write("out.bin", &bytes);
            run(&local, &["cache", "save", "load", "in.txt", "out.bin"]).ok();
            let key = run(&local, &["--json", "log", "-n", "1"]).json()[0]["key"]
                .as_str()
                .unwrap()
                .to_owned();
            let entry = run(&local, &["--json", "show", &key]).stdout();
            (key, entry, bytes)
        })
        .collect()
}

/// One replica of three is SIGKILLed while 64 connections upload, read and commit through all
/// three (a client whose replica fails goes on with the next, as behind a load balancer):
/// every upload and commit a replica acknowledged is served by the others afterwards, no
/// read ever returns other bytes, and ccache, which stored its result through the killed
/// replica, gets it from another.
#[test]
fn a_replica_killed_under_64_connections_loses_no_acknowledged_write() {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    let (Some(ccache), Some(_)) =
        (super::tools::client("venv/bin/ccache"), super::tools::system("gcc"))
    else {
        return;
    };
    let Some(mut replicas) = Replicas::start("killed", 3) else { return };
    let urls: Vec<String> = replicas.servers.iter().map(|s| s.url.clone()).collect();
    let victim = 1;

    // ccache stores a result through the replica that will die.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    super::tools::ccache::source(dir, 77);
    let storage = |i: usize| format!("{}/ccache|layout=subdirs", urls[i]);
    let o = super::tools::ccache::compile(&ccache, dir, &dir.join("local-1"), &storage(victim));
    super::tools::succeeded(&o);
    let object = std::fs::read(dir.join("x.o")).unwrap();

    let entries = entries(64, 64 << 10);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    let stop = Instant::now() + Duration::from_secs(4);
    // (digest, bytes) of acknowledged uploads; keys of acknowledged commits.
    let blobs = Mutex::new(Vec::<(String, Vec<u8>)>::new());
    let commits = Mutex::new(Vec::<String>::new());
    let (wrong, refused) = (Mutex::new(Vec::<String>::new()), Mutex::new(0usize));
    std::thread::scope(|s| {
        for (t, (key, entry, bytes)) in entries.iter().enumerate() {
            let (agent, urls, blobs, commits, wrong, refused) =
                (&agent, &urls, &blobs, &commits, &wrong, &refused);
            s.spawn(move || {
                let mut turn = t;
                // Sends `req` to the next replica in turn until one answers.
                let mut call = |send: &dyn Fn(
                    &str,
                ) -> Result<
                    ureq::http::Response<ureq::Body>,
                    ureq::Error,
                >| {
                    for _ in 0..3 {
                        turn += 1;
                        match send(&urls[turn % 3]) {
                            Ok(r) => return Some(r),
                            Err(_) => *refused.lock().unwrap() += 1,
                        }
                    }
                    None
                };
                let digest = taskvault::Algorithm::Blake3.digest(bytes).to_string();
                let put = |u: &str| {
                    agent.put(format!("{u}/v1/ns/default/blobs/{digest}")).send(&bytes[..])
                };
                let mut committed = false;
                let mut n = 0u64;
                while Instant::now() < stop {
                    if !committed {
                        // The entry's blob, then the entry, each through whichever replica.
                        if call(&put).is_some_and(|r| r.status().is_success()) {
                            let commit = |u: &str| {
                                agent
                                    .put(format!("{u}/v1/ns/default/entries/{key}"))
                                    .header("Content-Type", "application/json")
                                    .send(entry.as_bytes())
                            };
                            if let Some(r) = call(&commit)
                                && r.status().is_success()
                            {
                                commits.lock().unwrap().push(key.clone());
                                committed = true;
                            }
                        }
                    }
                    // A fresh blob, then one of the acknowledged ones read back.
                    n += 1;
                    let fresh = noise(16 << 10, (t as u64) << 32 | n);
                    let d = taskvault::Algorithm::Blake3.digest(&fresh).to_string();
                    let up = |u: &str| {
                        agent.put(format!("{u}/v1/ns/default/blobs/{d}")).send(&fresh[..])
                    };
                    if call(&up).is_some_and(|r| r.status().is_success()) {
                        blobs.lock().unwrap().push((d, fresh));
                    }
                    let pick = {
                        let b = blobs.lock().unwrap();
                        b.get((n as usize * 7919 + t) % b.len().max(1)).cloned()
                    };
                    if let Some((d, want)) = pick {
                        let get =
                            |u: &str| agent.get(format!("{u}/v1/ns/default/blobs/{d}")).call();
                        if let Some(mut r) = call(&get)
                            && r.status() == 200
                        {
                            let got = r.body_mut().with_config().limit(1 << 20).read_to_vec();
                            if got.is_ok_and(|g| g != want) {
                                wrong.lock().unwrap().push(d);
                            }
                        }
                    }
                }
            });
        }
        // The kill, a second into the load.
        std::thread::sleep(Duration::from_secs(1));
        replicas.servers[victim].child.kill().unwrap();
        replicas.servers[victim].child.wait().unwrap();
    });
    assert!(wrong.lock().unwrap().is_empty(), "reads returned other bytes: {:?}", wrong.lock());
    assert!(
        *refused.lock().unwrap() > 0,
        "no request met the dead replica: the test killed nothing"
    );
    let (blobs, commits) = (blobs.into_inner().unwrap(), commits.into_inner().unwrap());
    eprintln!(
        "load: {} uploads and {} commits acknowledged, {} requests met the dead replica",
        blobs.len(),
        commits.len(),
        refused.lock().unwrap()
    );
    assert_eq!(commits.len(), 64, "every client committed its entry through some replica");
    assert!(blobs.len() > 64, "the load acknowledged {} uploads", blobs.len());
    // Every acknowledged write, through each surviving replica.
    for u in [&urls[0], &urls[2]] {
        for key in &commits {
            let r = agent.get(format!("{u}/v1/ns/default/entries/{key}")).call().unwrap();
            assert_eq!(r.status(), 200, "acknowledged entry {key} through {u}");
        }
        for (d, want) in &blobs {
            let mut r = agent.get(format!("{u}/v1/ns/default/blobs/{d}")).call().unwrap();
            assert_eq!(r.status(), 200, "acknowledged upload {d} through {u}");
            let got = r.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap();
            assert!(&got == want, "{d} through {u}: other bytes");
        }
    }
    // ccache, in a fresh local cache, through a surviving replica: a remote hit.
    std::fs::remove_file(dir.join("x.o")).unwrap();
    let local = dir.join("local-2");
    super::tools::succeeded(&super::tools::ccache::compile(&ccache, dir, &local, &storage(2)));
    assert_eq!(super::tools::ccache::stat(&ccache, &local, "remote_storage_hit"), 1);
    assert!(std::fs::read(dir.join("x.o")).unwrap() == object, "ccache restored another object");
}

/// PostgreSQL stopped as a crash would and started again, then SeaweedFS killed and started
/// again, while 8 clients read entries and blobs and upload through two replicas: what they
/// get meanwhile is a miss or an error to retry, never other bytes; afterwards both replicas
/// serve, save and claim again without being restarted, and every upload they acknowledged is
/// there.
#[test]
fn replicas_ride_out_restarts_of_postgresql_and_seaweedfs() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    let Some(mut replicas) = Replicas::start_with_own_postgres("restarts", 2) else { return };
    let urls: Vec<String> = replicas.servers.iter().map(|s| s.url.clone()).collect();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build(),
    );
    // Too large to come inline with the entry: every read also reads the object store.
    let entries = entries(8, 200 << 10);
    for (i, (key, entry, bytes)) in entries.iter().enumerate() {
        let u = &urls[i % 2];
        let d = taskvault::Algorithm::Blake3.digest(bytes);
        let put = agent.put(format!("{u}/v1/ns/default/blobs/{d}")).send(&bytes[..]).unwrap();
        assert!(put.status().is_success(), "upload {i}: {}", put.status());
        let commit = agent
            .put(format!("{u}/v1/ns/default/entries/{key}"))
            .header("Content-Type", "application/json")
            .send(entry.as_bytes())
            .unwrap();
        assert!(commit.status().is_success(), "commit {i}: {}", commit.status());
    }

    // Reads an entry and its blob through replica `u`: Ok(true) served right, Ok(false) other
    // bytes, Err(what was answered) a miss or an error (to retry).
    let read = |u: &str, key: &str, want: &[u8]| -> Result<bool, String> {
        let answer = |what: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>| match r
        {
            Ok(r) if r.status() == 200 => Ok(r),
            Ok(mut r) => {
                let body = r.body_mut().read_to_string().unwrap_or_default();
                Err(format!("{what}: {} {}", r.status(), body.trim()))
            }
            Err(e) => Err(format!("{what}: {e}")),
        };
        let mut r = answer("entry", agent.get(format!("{u}/v1/ns/default/entries/{key}")).call())?;
        let v: serde_json::Value = r.body_mut().read_json().map_err(|e| format!("entry: {e}"))?;
        let d = v["entry"]["outputs"].to_string();
        let want_d = taskvault::Algorithm::Blake3.digest(want).to_string();
        if !d.contains(&want_d) {
            return Ok(false);
        }
        let mut b = answer("blob", agent.get(format!("{u}/v1/ns/default/blobs/{want_d}")).call())?;
        let got = b.body_mut().with_config().limit(1 << 20).read_to_vec();
        Ok(got.map_err(|e| format!("blob: {e}"))? == want)
    };

    let stop = AtomicBool::new(false);
    let (served, missed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let wrong = Mutex::new(Vec::<String>::new());
    let uploads = Mutex::new(Vec::<(String, Vec<u8>)>::new());
    std::thread::scope(|s| {
        for (t, (key, _, bytes)) in entries.iter().enumerate() {
            let (agent, urls, read, stop) = (&agent, &urls, &read, &stop);
            let (served, missed, wrong, uploads) = (&served, &missed, &wrong, &uploads);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let u = &urls[(t + n as usize) % 2];
                    match read(u, key, bytes) {
                        Ok(true) => served.fetch_add(1, Ordering::SeqCst),
                        Ok(false) => {
                            wrong.lock().unwrap().push(key.clone());
                            0
                        }
                        Err(_) => missed.fetch_add(1, Ordering::SeqCst),
                    };
                    let fresh = noise(8 << 10, (t as u64) << 32 | n);
                    let d = taskvault::Algorithm::Blake3.digest(&fresh).to_string();
                    let put = agent.put(format!("{u}/v1/ns/default/blobs/{d}")).send(&fresh[..]);
                    if put.is_ok_and(|r| r.status().is_success()) {
                        uploads.lock().unwrap().push((d, fresh));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let pg = replicas.pg.as_ref().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        pg.down();
        std::thread::sleep(Duration::from_secs(2));
        pg.up();
        std::thread::sleep(Duration::from_secs(2));
        let s3 = replicas.s3.as_mut().unwrap();
        s3.stop();
        std::thread::sleep(Duration::from_secs(2));
        s3.start_again();
        // Until every replica serves every entry again (a liveness deadline, not a timing).
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let failing: Vec<String> = urls
                .iter()
                .flat_map(|u| entries.iter().map(move |e| (u, e)))
                .filter_map(|(u, (key, _, bytes))| match read(u, key, bytes) {
                    Ok(true) => None,
                    Ok(false) => Some(format!("{u} {key}: other bytes")),
                    Err(e) => Some(format!("{u} {key}: {e}")),
                })
                .collect();
            if failing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                // The clients stop first, so the test fails rather than waits for them.
                stop.store(true, Ordering::SeqCst);
                let tail = |l: String| l.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                let logs: Vec<String> = replicas.servers.iter().map(|r| tail(r.log())).collect();
                panic!(
                    "the replicas did not serve again after 2 minutes:\n{}\nlast log lines, \
                     newest first:\n{}",
                    failing.join("\n"),
                    logs.join("\n--\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::SeqCst);
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(wrong.is_empty(), "other bytes served for {wrong:?}");
    let (served, missed) = (served.into_inner(), missed.into_inner());
    eprintln!("restarts: {served} reads served, {missed} misses or errors meanwhile");
    assert!(missed > 0, "no read met an outage: nothing was restarted");
    assert!(served > 0);
    // Every upload acknowledged, before, during or after the restarts, is there.
    for (d, want) in uploads.into_inner().unwrap() {
        for u in &urls {
            let mut r = agent.get(format!("{u}/v1/ns/default/blobs/{d}")).call().unwrap();
            assert_eq!(r.status(), 200, "acknowledged upload {d} through {u}");
            let got = r.body_mut().with_config().limit(1 << 20).read_to_vec().unwrap();
            assert!(got == want, "{d} through {u}: other bytes");
        }
    }
    // Saves, claims and hits work again through both replicas, never restarted.
    let (a, b) = (machine(&replicas.servers[0], None), machine(&replicas.servers[1], None));
    for m in [&a, &b] {
        m.write("in.txt", "after the restarts");
    }
    let args = ["run", "-i", "in.txt", "-o", "out.txt", "--", "sh", "-c", "echo new > out.txt"];
    run(&a, &args).ok();
    let hit = run(&b, &args).ok();
    assert!(hit.stderr().contains("hit"), "{}", hit.stderr());
    assert_eq!(std::fs::read_to_string(b.path("out.txt")).unwrap(), "new\n");
}
