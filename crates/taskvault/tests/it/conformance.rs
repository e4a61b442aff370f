//! The backend conformance suite: the same cases run against every pair of metadata and blob
//! store the vault can be opened on. Each pair is one test (one server started for it); its
//! cases run in order and name themselves on stderr, and a failing case panics with its name.
//!
//! Pairs today: SQLite + the local disk, SQLite + S3 (SeaweedFS), PostgreSQL + the local disk,
//! PostgreSQL + S3, and Redis (metadata and blobs in one Redis). A new backend adds a test here that builds its [`Backend`] and calls
//! [`suite`].

use std::path::PathBuf;
use std::time::Duration;

use taskvault::store::BlobStore;
use taskvault::{Input, Output, SaveOptions, Settings, TaskKey, Vault};
use taskvault_testkit::noise;

use crate::procs::{key, mixed_worker, saver};
use crate::{check_content, role, spawn_worker_on};
use taskvault_testkit::postgres::Schema;
use taskvault_testkit::seaweed::Seaweed;

/// A case's name -> the blob store URL for it; `None`: the local disk.
type BlobsFor = Box<dyn Fn(&str) -> Option<String>>;

/// A case's name -> its metadata store (a PostgreSQL schema or a Redis key prefix of its own);
/// `None`: SQLite.
type MetadataFor = Box<dyn Fn(&str) -> Option<Metadata>>;

/// A metadata store on a server, removed when dropped.
enum Metadata {
    Postgres(Schema),
    Redis(taskvault_testkit::redis::Prefix),
}

impl Metadata {
    fn url(&self) -> String {
        match self {
            Metadata::Postgres(s) => s.url(),
            Metadata::Redis(p) => p.url(),
        }
    }
}

/// One pair of stores under test. Every case gets a vault of its own (a fresh directory and,
/// for an object store, a prefix of its own).
struct Backend {
    /// The test function, which the cases' worker processes run again.
    test: &'static str,
    /// The blob store URL for a case's prefix; `None`: the local disk.
    blobs: BlobsFor,
    metadata: MetadataFor,
}

/// A case's vault: its directory, its blob store URL, and handles on both.
struct Case {
    dir: tempfile::TempDir,
    blobs: Option<String>,
    metadata: Option<Metadata>,
}

impl Case {
    fn vault_dir(&self) -> PathBuf {
        self.dir.path().join("vault")
    }

    fn open_with(&self, f: impl FnOnce(&mut Settings)) -> Vault {
        let mut s = Settings::for_dir(self.vault_dir());
        s.blobs_url = self.blobs.clone();
        s.metadata_url = self.metadata_url();
        s.host = "conformance".into();
        f(&mut s);
        Vault::open(s).unwrap()
    }

    fn metadata_url(&self) -> Option<String> {
        self.metadata.as_ref().map(Metadata::url)
    }

    fn open(&self) -> Vault {
        self.open_with(|_| {})
    }

    /// The blob store as a second, independent handle (to tamper with it, or list it): with
    /// Redis metadata, the same Redis.
    fn store(&self) -> Box<dyn BlobStore> {
        let redis = match &self.metadata {
            Some(m @ Metadata::Redis(_)) => Some(m.url()),
            _ => None,
        };
        let url = self.blobs.clone().or(redis);
        taskvault::store::blob_store(&self.vault_dir(), url.as_deref()).unwrap()
    }

    /// The files of the vault's local copies of object-store blobs (`blob-cache`).
    fn local_copies(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(self.vault_dir().join("blob-cache")).into_iter().flatten() {
            let fan = fan.unwrap().path();
            if fan.is_dir() {
                out.extend(std::fs::read_dir(fan).unwrap().map(|f| f.unwrap().path()));
            }
        }
        out
    }

    fn stored(&self) -> usize {
        self.store().list().unwrap().len()
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Backend {
    fn case(&self, name: &str) -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            blobs: (self.blobs)(name),
            metadata: (self.metadata)(name),
        }
    }
}

fn k(v: &Vault, name: &str) -> TaskKey {
    v.key("conformance", &[Input::Bytes(name.as_bytes().to_vec())]).unwrap()
}

fn text(n: usize) -> Vec<u8> {
    (0..).flat_map(|i: u64| format!("line {i}\n").into_bytes()).take(n).collect()
}

/// Runs every case against `b`.
fn suite(b: &Backend) {
    type CaseFn = fn(&Backend, &str);
    let cases: &[(&str, CaseFn)] = &[
        ("saves-and-hits", saves_and_hits),
        ("history", history),
        ("eviction-order", eviction_order),
        ("corruption", corruption),
        ("concurrent-writers", concurrent_writers),
        ("crash-during-a-commit", crash_during_a_commit),
        ("removal", removal),
        ("claims", claims),
        ("audit", audit),
    ];
    for (name, case) in cases {
        eprintln!("{}: {name}", b.test);
        case(b, name);
    }
}

/// Every kind of output comes back byte for byte: inline, large raw, large compressed, a
/// directory tree; from the handle that saved it and from a vault opened afresh.
fn saves_and_hits(b: &Backend, name: &str) {
    let c = b.case(name);
    let v = c.open();
    let outputs: Vec<(&str, Vec<u8>)> = vec![
        ("inline", b"a small result".to_vec()),
        ("raw", noise(300_000, 1)),
        ("compressible", text(500_000)),
        ("empty", Vec::new()),
    ];
    for (n, data) in &outputs {
        let src = c.file(&format!("src/{n}"), data);
        v.save(&k(&v, n), Output::Path(&src), &SaveOptions::default()).unwrap();
    }
    let tree = c.dir.path().join("tree");
    for (rel, data) in [("a.txt", text(1000)), ("sub/b.bin", noise(70_000, 2))] {
        std::fs::create_dir_all(tree.join(rel).parent().unwrap()).unwrap();
        std::fs::write(tree.join(rel), data).unwrap();
    }
    v.save(&k(&v, "tree"), Output::Path(&tree), &SaveOptions::default()).unwrap();
    for v in [v, c.open()] {
        for (n, data) in &outputs {
            let dest = c.dir.path().join(format!("out/{n}"));
            let _ = std::fs::remove_file(&dest);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            assert!(v.get(&k(&v, n), &dest).unwrap().is_some(), "{name}: {n} missed");
            assert!(std::fs::read(&dest).unwrap() == *data, "{name}: {n} restored wrong");
            assert_eq!(v.get_bytes(&k(&v, n)).unwrap().map(|(_, b)| b).as_ref(), Some(data));
        }
        let dest = c.dir.path().join("out/tree");
        let _ = std::fs::remove_dir_all(&dest);
        assert!(v.get(&k(&v, "tree"), &dest).unwrap().is_some());
        for rel in ["a.txt", "sub/b.bin"] {
            assert_eq!(
                std::fs::read(dest.join(rel)).unwrap(),
                std::fs::read(tree.join(rel)).unwrap()
            );
        }
    }
    let report = c.open().verify().unwrap();
    assert!(report.corrupt.is_empty() && report.orphans_removed == 0, "{name}: {report:?}");
    // The metadata is where the backend keeps it: no SQLite file beside a database server's.
    assert_eq!(c.vault_dir().join("cache.db").exists(), c.metadata.is_none(), "{name}");
}

/// A new save of a key supersedes the live run and keeps the old one as history.
fn history(b: &Backend, name: &str) {
    let c = b.case(name);
    let v = c.open();
    let key = k(&v, "h");
    for i in 0..3u64 {
        v.save(&key, Output::Bytes(&noise(50_000, 10 + i)), &SaveOptions::default()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let live = v.live_entry(&key.digest().hex()).unwrap().unwrap();
    let runs = v.history(&live).unwrap();
    assert_eq!(runs.len(), 3, "{name}: {runs:?}");
    assert_eq!(v.get_bytes(&key).unwrap().map(|(_, b)| b), Some(noise(50_000, 12)));
    let v = c.open();
    assert_eq!(v.history(&live).unwrap().len(), 3);
    assert_eq!(runs.last().map(|r| &r.id), Some(&live.id), "{name}: history is oldest first");
}

/// Over the cap, the least recently used entries go first, down to the low-water mark, and
/// their blobs with them.
fn eviction_order(b: &Backend, name: &str) {
    let c = b.case(name);
    let v = c.open_with(|s| {
        s.max_size_bytes = Some(10 * 100_000);
        s.low_water_percent = 80;
        s.inline_max_bytes = 0;
    });
    let keys: Vec<TaskKey> = (0..10).map(|i| k(&v, &format!("e{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        v.save(key, Output::Bytes(&noise(100_000, 100 + i as u64)), &SaveOptions::default())
            .unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(v.get_bytes(&keys[0]).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(2));
    let last = k(&v, "e10");
    v.save(&last, Output::Bytes(&noise(100_000, 110)), &SaveOptions::default()).unwrap();
    let s = v.stats().unwrap();
    assert!(s.total_bytes <= 800_000, "{name}: {}", s.total_bytes);
    assert_eq!(s.entries, 8, "{name}");
    assert!(v.peek(&keys[0]).unwrap().is_some(), "{name}: the recently used one went");
    for gone in &keys[1..4] {
        assert!(v.peek(gone).unwrap().is_none(), "{name}: not least recently used first");
    }
    assert!(v.peek(&last).unwrap().is_some());
    assert_eq!(c.stored(), 8, "{name}: evicted blobs are still stored");
}

/// A blob changed behind the vault's back is never served: the hit is a miss, the blob leaves
/// its digest, the key can be saved again.
fn corruption(b: &Backend, name: &str) {
    let c = b.case(name);
    let v = c.open();
    let key = k(&v, "c");
    let data = noise(200_000, 20);
    let e = v.save(&key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
    let digest = e.outputs[0].digest.unwrap();
    let mut bad = data.clone();
    bad[123_456] ^= 0x40;
    let tampered = c.file("tampered", &bad);
    c.store().put(&digest, &tampered).unwrap();
    // The vault's local copy of an object-store blob, changed the same way.
    for copy in c.local_copies() {
        std::fs::write(copy, &bad).unwrap();
    }
    let dest = c.dir.path().join("restored");
    let got = v.get(&key, &dest);
    assert!(!matches!(got, Ok(Some(_))), "{name}: a corrupt blob was served");
    assert!(std::fs::read(&dest).map_or(true, |b| b != bad), "{name}: corrupt bytes written");
    assert!(v.get_bytes(&key).unwrap().is_none(), "{name}: still served after");
    assert!(v.stats().unwrap().counters.corrupt >= 1);
    v.save(&key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
    assert_eq!(v.get_bytes(&key).unwrap().map(|(_, b)| b), Some(data));
}

/// Four processes saving and reading 16 overlapping keys at once: every hit is a version that
/// was saved, and the vault verifies clean afterwards.
fn concurrent_writers(b: &Backend, name: &str) {
    let c = b.case(name);
    let dir = c.vault_dir();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            spawn_worker_on(
                b.test,
                "mixed",
                &dir,
                c.blobs.as_deref(),
                c.metadata_url().as_deref(),
                w,
            )
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: a worker failed\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v = c.open();
    for i in 0..16 {
        if let Some((_, bytes)) = v.get_bytes(&key(&v, i)).unwrap() {
            check_content(i, &bytes).unwrap();
        }
    }
    let report = v.verify().unwrap();
    assert!(report.corrupt.is_empty(), "{name}: {report:?}");
}

/// A saving process SIGKILLed at random moments, again and again: nothing it left is served
/// wrong, and the vault verifies clean.
fn crash_during_a_commit(b: &Backend, name: &str) {
    let c = b.case(name);
    let dir = c.vault_dir();
    let mut rng = crate::Rng::new(77);
    let mut served = 0;
    for round in 0..12 {
        let mut child = spawn_worker_on(
            b.test,
            "saver",
            &dir,
            c.blobs.as_deref(),
            c.metadata_url().as_deref(),
            round,
        );
        std::thread::sleep(Duration::from_millis(60 + rng.below(200)));
        child.kill().unwrap();
        assert!(!child.wait().unwrap().success());
        let v = c.open();
        for i in 0..16 {
            let dest = c.dir.path().join("restored");
            if v.get(&key(&v, i), &dest).unwrap().is_some() {
                let bytes = std::fs::read(&dest).unwrap();
                check_content(i, &bytes).unwrap_or_else(|e| panic!("{name} round {round}: {e}"));
                served += 1;
            }
        }
    }
    assert!(served > 0, "{name}: nothing survived the crashes");
    let report = c.open().verify().unwrap();
    assert!(report.corrupt.is_empty(), "{name}: {report:?}");
}

/// Removing entries and collecting garbage leaves no blob behind.
fn removal(b: &Backend, name: &str) {
    let c = b.case(name);
    let v = c.open();
    let keys: Vec<TaskKey> = (0..3).map(|i| k(&v, &format!("r{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        v.save(key, Output::Bytes(&noise(80_000, 30 + i as u64)), &SaveOptions::default()).unwrap();
    }
    assert_eq!(c.stored(), 3);
    assert!(v.remove_key(&keys[0].digest().hex(), "test").unwrap());
    assert_eq!(c.stored(), 2, "{name}: a removed entry's blob is still stored");
    assert_eq!(v.clear().unwrap(), 2);
    v.gc(None, None).unwrap();
    assert_eq!(c.stored(), 0, "{name}: blobs outlived their entries");
}

/// The audit trail reads back newest first and filtered; with a metadata store machines share,
/// a vault in another directory (another machine) reads this one's records, naming where they
/// came from, and the store keeps at most `audit_max_records`.
fn audit(b: &Backend, name: &str) {
    use taskvault::audit::{AuditQuery, Event};
    let c = b.case(name);
    let v = c.open_with(|s| s.audit_max_records = 6);
    let (saved, missing) = (k(&v, "audited"), k(&v, "never saved"));
    v.save(&saved, Output::Bytes(b"audited result"), &SaveOptions::default()).unwrap();
    assert!(v.get_bytes(&saved).unwrap().is_some());
    assert!(v.get_bytes(&missing).unwrap().is_none());
    let q = AuditQuery { limit: 3, ..Default::default() };
    let rows = v.audit(&q).unwrap();
    let seen: Vec<(Event, &str)> = rows.iter().map(|r| (r.event, r.hash.as_str())).collect();
    let (s, m) = (saved.digest().hex(), missing.digest().hex());
    assert_eq!(
        seen,
        [(Event::Miss, m.as_str()), (Event::Hit, s.as_str()), (Event::Save, s.as_str())],
        "{name}"
    );
    let hits = AuditQuery { limit: 10, event: Some(Event::Hit), ..Default::default() };
    assert_eq!(v.audit(&hits).unwrap().len(), 1, "{name}");
    if c.metadata.is_none() {
        assert!(rows.iter().all(|r| r.origin.is_empty()), "{name}: a local trail names no origin");
        return;
    }
    let origin = format!("conformance:{}", std::process::id());
    assert!(rows.iter().all(|r| r.origin == origin), "{name}: {rows:?}");
    let mut s = Settings::for_dir(c.dir.path().join("machine-b"));
    s.blobs_url = c.blobs.clone();
    s.metadata_url = c.metadata_url();
    s.audit_max_records = 6;
    let other = Vault::open(s).unwrap();
    assert_eq!(other.audit(&q).unwrap(), rows, "{name}: another machine reads the same trail");
    // The other machine's records join the same trail, after this one's.
    assert!(other.get_bytes(&saved).unwrap().is_some());
    let newest = other.audit(&AuditQuery { limit: 1, ..Default::default() }).unwrap();
    assert_eq!((newest[0].event, newest[0].origin != origin), (Event::Hit, true), "{name}");
    // At most `audit_max_records` are kept, the newest.
    for _ in 0..10 {
        assert!(v.get_bytes(&missing).unwrap().is_none());
    }
    drop(v); // its last batch goes to the store
    let all = other.audit(&AuditQuery { limit: 100, ..Default::default() }).unwrap();
    assert!(!all.is_empty() && all.len() <= 6, "{name}: {} records kept", all.len());
    assert!(all.iter().all(|r| r.event == Event::Miss), "{name}: the oldest were dropped first");
}

/// For stores every machine shares (a database server and an object store): vaults in
/// different directories, standing for different machines, are one vault. A save through one
/// is a hit through the other; four processes on four directories saving, superseding and
/// reading 16 overlapping keys at once (each reaping the blobs it unreferences, under the
/// store's blob lock) only ever serve versions that were saved, and the vault verifies clean.
fn machines(b: &Backend, name: &str) {
    let c = b.case(name);
    let elsewhere = |label: &str| {
        let dir = c.dir.path().join(label);
        let mut s = Settings::for_dir(&dir);
        s.blobs_url = c.blobs.clone();
        s.metadata_url = c.metadata_url();
        (dir, Vault::open(s).unwrap())
    };
    let (_, a) = elsewhere("machine-a");
    let (_, other) = elsewhere("machine-b");
    let shared = k(&a, "shared");
    a.save(&shared, Output::Bytes(&noise(120_000, 40)), &SaveOptions::default()).unwrap();
    assert_eq!(other.get_bytes(&shared).unwrap().map(|(_, b)| b), Some(noise(120_000, 40)));
    assert!(other.remove_key(&shared.digest().hex(), "test").unwrap());
    assert!(
        a.get_bytes(&shared).unwrap().is_none(),
        "{name}: served after another machine removed it"
    );

    // A resident vault (the Python SDK's) keeps what it served in memory; a removal on another
    // machine reaches it by notification, and it is no longer served from memory.
    let (_, resident) = elsewhere("machine-r");
    let resident = resident.resident().unwrap();
    // Time for it to start listening (before, it keeps nothing).
    std::thread::sleep(Duration::from_millis(500));
    let served = || match resident.fetch_or_claim(&shared, None).unwrap() {
        taskvault::Fetched::Hit(s) => Some(s.bytes.to_vec()),
        _ => None,
    };
    a.save(&shared, Output::Bytes(b"kept in memory"), &SaveOptions::default()).unwrap();
    assert_eq!(served().as_deref(), Some(&b"kept in memory"[..]), "{name}");
    assert!(other.remove_key(&shared.digest().hex(), "test").unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while served().is_some() {
        assert!(std::time::Instant::now() < deadline, "{name}: served from memory after removal");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(resident);
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let dir = c.dir.path().join(format!("worker-{w}"));
            let meta = c.metadata_url();
            spawn_worker_on(b.test, "mixed", &dir, c.blobs.as_deref(), meta.as_deref(), w)
        })
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: a worker failed\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (_, v) = elsewhere("machine-c");
    let mut served = 0;
    for i in 0..16 {
        if let Some((_, bytes)) = v.get_bytes(&key(&v, i)).unwrap() {
            check_content(i, &bytes).unwrap();
            served += 1;
        }
    }
    assert!(served > 0, "{name}: nothing the workers saved is served");
    let report = v.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.orphans_removed == 0, "{name}: {report:?}");
}

/// Claims: of six processes that miss one key at once, exactly one computes it and the others
/// are handed its result; a claimant killed while it computes frees its claim, and a waiter
/// takes over. With stores every machine shares (metadata and blobs), each process has a vault
/// directory of its own (a machine of its own); otherwise they share one.
fn claims(b: &Backend, name: &str) {
    let c = b.case(name);
    let dir_of = |w: usize| match (&c.metadata, &c.blobs) {
        (Some(_), Some(_)) | (Some(Metadata::Redis(_)), None) => {
            c.dir.path().join(format!("machine-{w}"))
        }
        _ => c.vault_dir(),
    };
    let meta = c.metadata_url();
    let spawn = |role: &str, w: usize| {
        spawn_worker_on(b.test, role, &dir_of(w), c.blobs.as_deref(), meta.as_deref(), w)
    };
    let computed = || claims_computed(c.dir.path());
    let finish = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
            .lines()
            .find_map(|l| l.split_once("OUTCOME ").map(|(_, o)| o.to_owned()))
            .unwrap_or_else(|| panic!("{name}: no outcome in {stdout}"))
    };
    let children: Vec<_> = (0..6).map(|w| spawn("claim", w)).collect();
    let mut outcomes: Vec<String> = children.into_iter().map(finish).collect();
    outcomes.sort();
    assert_eq!(computed(), 1, "{name}: {outcomes:?}");
    assert_eq!(outcomes, ["computed", "ready", "ready", "ready", "ready", "ready"], "{name}");

    let mut hang = spawn("claim-hang", 6);
    while computed() < 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let waiter = spawn("claim-again", 7);
    std::thread::sleep(Duration::from_millis(300));
    hang.kill().unwrap();
    hang.wait().unwrap();
    assert_eq!(finish(waiter), "computed", "{name}: the waiter did not take over");
    assert_eq!(computed(), 3, "{name}");
}

/// How many times a claims worker computed (lines of `computed` beside the vaults).
fn claims_computed(case_dir: &std::path::Path) -> usize {
    std::fs::read_to_string(case_dir.join("computed")).map_or(0, |s| s.lines().count())
}

/// Worker of [`claims`]: claims key 1 (`claim`) or 2 (`claim-hang`, `claim-again`); computing
/// appends a line to `computed` in the case directory, then saves after a while, or hangs until
/// killed.
fn claimer(role: &str, dir: &std::path::Path) {
    use std::io::Write as _;
    let v = crate::open(dir);
    let k = key(&v, if role == "claim" { 1 } else { 2 });
    match v.claim(&k).unwrap() {
        taskvault::Claim::Compute(guard) => {
            let case_dir = dir.parent().unwrap();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(case_dir.join("computed"))
                .unwrap();
            writeln!(f, "{}", std::process::id()).unwrap();
            if role == "claim-hang" {
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
            std::thread::sleep(Duration::from_millis(400));
            v.save(&k, Output::Bytes(b"answer"), &SaveOptions::default()).unwrap();
            drop(guard);
            println!("OUTCOME computed");
        }
        taskvault::Claim::Ready(_) => {
            assert_eq!(v.get_bytes(&k).unwrap().unwrap().1, b"answer");
            println!("OUTCOME ready");
        }
        taskvault::Claim::Failed(m) => println!("OUTCOME failed {m}"),
    }
}

/// Runs a worker role if this process is one.
fn worker() -> bool {
    let Some((role, dir, w)) = role() else { return false };
    match role.as_str() {
        "mixed" => mixed_worker(&dir, w),
        "saver" => saver(&dir, w),
        "claim" | "claim-hang" | "claim-again" => claimer(&role, &dir),
        other => panic!("unknown role {other}"),
    }
    true
}

#[test]
fn sqlite_and_local_disk() {
    if worker() {
        return;
    }
    suite(&Backend {
        test: "conformance::sqlite_and_local_disk",
        blobs: Box::new(|_| None),
        metadata: Box::new(|_| None),
    });
}

#[test]
fn sqlite_and_s3() {
    if worker() {
        return;
    }
    let Some(s3) = Seaweed::start() else { return };
    let endpoint = s3.endpoint().to_owned();
    let url =
        move |case: &str| Some(taskvault_testkit::seaweed::url(&endpoint, "conformance", case));
    suite(&Backend {
        test: "conformance::sqlite_and_s3",
        blobs: Box::new(url),
        metadata: Box::new(|_| None),
    });
    eprintln!("conformance::sqlite_and_s3: object-store specifics");
    crate::object::blobs_in_s3_are_uploaded_served_verified_and_deleted(&s3);
    eprintln!("conformance::sqlite_and_s3: local copies");
    crate::object::local_copies_are_served_checked_and_bounded(&s3);
    eprintln!("conformance::sqlite_and_s3: migration to S3 and back");
    crate::object::blobs_migrate_between_the_local_disk_and_s3(&s3);
}

#[test]
fn postgres_and_local_disk() {
    if worker() {
        return;
    }
    let Some(server) = taskvault_testkit::postgres::server() else { return };
    let cases = server.clone();
    suite(&Backend {
        test: "conformance::postgres_and_local_disk",
        blobs: Box::new(|_| None),
        metadata: Box::new(move |case| Some(Metadata::Postgres(Schema::new(&cases, case)))),
    });
    eprintln!("conformance::postgres_and_local_disk: metadata migration");
    metadata_migrates_between_sqlite_and_postgres(&server);
}

#[test]
fn postgres_and_s3() {
    if worker() {
        return;
    }
    let Some(server) = taskvault_testkit::postgres::server() else { return };
    let Some(s3) = Seaweed::start() else { return };
    let endpoint = s3.endpoint().to_owned();
    let url =
        move |case: &str| Some(taskvault_testkit::seaweed::url(&endpoint, "conformance-pg", case));
    let b = Backend {
        test: "conformance::postgres_and_s3",
        blobs: Box::new(url),
        metadata: Box::new(move |case| Some(Metadata::Postgres(Schema::new(&server, case)))),
    };
    suite(&b);
    eprintln!("conformance::postgres_and_s3: machines");
    machines(&b, "machines");
}

#[test]
fn redis() {
    if worker() {
        return;
    }
    let Some(server) = taskvault_testkit::redis::server() else { return };
    let b = Backend {
        test: "conformance::redis",
        blobs: Box::new(|_| None),
        metadata: Box::new(move |case| {
            Some(Metadata::Redis(taskvault_testkit::redis::Prefix::new(&server, case)))
        }),
    };
    suite(&b);
    eprintln!("conformance::redis: machines");
    machines(&b, "machines");
}

/// `migrate --to redis://`: a SQLite vault on the local disk copied into Redis, runs and bytes.
/// Every output kind is a hit there with the same bytes and history; a replaced run whose
/// outputs were dropped stays behind; a live run whose blob is damaged here is quarantined and
/// not copied (its key a miss there, not an older run); a rerun copies nothing twice.
#[test]
fn a_vault_migrates_into_redis() {
    let Some(server) = taskvault_testkit::redis::server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("vault");
    let v = Vault::open(Settings::for_dir(&vdir)).unwrap();
    let outputs = [
        ("small", b"tiny".to_vec()),
        ("inline", text(5_000)),
        ("raw", noise(200_000, 50)),
        ("zstd", text(300_000)),
    ];
    let mut keys = Vec::new();
    for (name, data) in &outputs {
        let key = k(&v, name);
        // Replaced: its own blob (too large to be inline) is dropped with it.
        v.save(&key, Output::Bytes(&noise(30_000, 7)), &SaveOptions::default()).unwrap();
        v.save(&key, Output::Bytes(data), &SaveOptions::default()).unwrap();
        keys.push(key);
    }
    let damaged = k(&v, "damaged");
    v.save(&damaged, Output::Bytes(&noise(20_000, 8)), &SaveOptions::default()).unwrap();
    let e = v.save(&damaged, Output::Bytes(&noise(90_000, 9)), &SaveOptions::default()).unwrap();
    let digest = e.outputs[0].digest.unwrap();
    let file = vdir
        .join("blobs")
        .join(digest.algorithm().name())
        .join(&digest.hex()[..2])
        .join(digest.hex());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[4_000] ^= 1;
    std::fs::write(&file, bytes).unwrap();

    let prefix = taskvault_testkit::redis::Prefix::new(&server, "migrate");
    let meta = taskvault::store::redis::RedisMeta::open(&prefix.url()).unwrap();
    let to = taskvault::store::blob_store(&vdir, Some(&prefix.url())).unwrap();
    let r = v.copy_to_store(&meta, to.as_ref()).unwrap();
    // The four live runs are copied; the five replaced runs (their outputs were blobs, dropped
    // with them) stay behind, as does the damaged live run.
    assert_eq!((r.entries, r.runs, r.skipped), (4, 4, 5), "{r:?}");
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert_eq!(r.corrupt[0].0, digest.to_string());
    assert_eq!(r.blobs, 2, "raw and zstd: the others are inline: {r:?}");
    let again = v.copy_to_store(&meta, to.as_ref()).unwrap();
    assert_eq!((again.runs, again.blobs, again.present), (0, 0, 4), "{again:?}");
    assert!(again.corrupt.is_empty(), "{again:?}");
    drop((meta, to));

    let mut s = Settings::for_dir(dir.path().join("elsewhere"));
    s.metadata_url = Some(prefix.url());
    let on_redis = Vault::open(s).unwrap();
    for (key, (name, data)) in keys.iter().zip(&outputs) {
        let got = on_redis.get_bytes(key).unwrap().map(|(_, b)| b);
        assert_eq!(got.as_ref(), Some(data), "{name}");
    }
    assert!(on_redis.get_bytes(&damaged).unwrap().is_none(), "the damaged key is a miss there");
    assert!(v.get_bytes(&damaged).unwrap().is_none(), "and here, quarantined");
    let report = on_redis.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.damaged_rows.is_empty(), "{report:?}");

    // And out again, as `migrate --to local` then `--to sqlite` do: blobs, then runs.
    let out = dir.path().join("out");
    let local = taskvault::store::blob_store(&out, None).unwrap();
    assert_eq!(on_redis.copy_blobs_to(local.as_ref()).unwrap().copied, 2);
    let sqlite = taskvault::store::sqlite::SqliteMeta::open(&out.join("cache.db")).unwrap();
    assert_eq!(on_redis.copy_metadata_to(&sqlite).unwrap().entries, 4);
    drop((local, sqlite));
    let back = Vault::open(Settings::for_dir(&out)).unwrap();
    for (key, (name, data)) in keys.iter().zip(&outputs) {
        assert_eq!(back.get_bytes(key).unwrap().map(|(_, b)| b).as_ref(), Some(data), "{name}");
    }
}

/// A run as the migration test compares it: id, status, parent, tags.
type RunSummary = (String, String, Option<String>, Vec<(String, String)>);

/// `migrate` of metadata: a SQLite vault (live entries of every output kind, a key with history,
/// a failed run, tags) copied to PostgreSQL serves the same hits with the same history and tags;
/// a rerun copies nothing twice; copied back to a new SQLite database, it serves them again.
fn metadata_migrates_between_sqlite_and_postgres(server: &str) {
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("vault");
    let sqlite = Vault::open(Settings::for_dir(&vdir)).unwrap();
    let outputs = [
        ("small", b"tiny".to_vec()),
        ("inline", text(5_000)),
        ("raw", noise(200_000, 50)),
        ("zstd", text(300_000)),
    ];
    let tags = |v: &str| SaveOptions {
        tags: [("team".to_owned(), v.to_owned())].into_iter().collect(),
        ..SaveOptions::default()
    };
    let mut keys = Vec::new();
    for (name, data) in &outputs {
        let key = k(&sqlite, name);
        sqlite.save(&key, Output::Bytes(&noise(100, 1)), &tags("old")).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        sqlite.save(&key, Output::Bytes(data), &tags(name)).unwrap();
        keys.push(key);
    }
    let failed = k(&sqlite, "failed");
    sqlite.save(&failed, Output::Bytes(b"ok once"), &SaveOptions::default()).unwrap();
    sqlite.record_failed_run(&failed, "boom", &SaveOptions::default(), None).unwrap();
    keys.push(failed);
    let snapshot = |v: &Vault| -> Vec<Vec<RunSummary>> {
        keys.iter()
            .map(|key| {
                let live = v.live_entry(&key.digest().hex()).unwrap().unwrap();
                v.history(&live)
                    .unwrap()
                    .into_iter()
                    .map(|e| {
                        (e.id, e.status.name().to_owned(), e.parent, e.tags.into_iter().collect())
                    })
                    .collect()
            })
            .collect()
    };
    let before = snapshot(&sqlite);
    assert_eq!(before[4].len(), 2, "the failed run is history");

    let schema = Schema::new(server, "migrate");
    let pg = taskvault::store::postgres::PgMeta::open(&schema.url()).unwrap();
    let r = sqlite.copy_metadata_to(&pg).unwrap();
    assert_eq!((r.entries, r.runs, r.present), (5, 10, 0), "{r:?}");
    let again = sqlite.copy_metadata_to(&pg).unwrap();
    assert_eq!((again.runs, again.present), (0, 10), "a rerun copies nothing twice: {again:?}");
    drop(pg);
    drop(sqlite);

    let mut s = Settings::for_dir(&vdir);
    s.metadata_url = Some(schema.url());
    let on_pg = Vault::open(s).unwrap();
    for (key, (name, data)) in keys.iter().zip(&outputs) {
        assert_eq!(on_pg.get_bytes(key).unwrap().map(|(_, b)| b).as_ref(), Some(data), "{name}");
    }
    assert_eq!(snapshot(&on_pg), before, "history, parents and tags came along");
    let tagged = on_pg
        .list(&taskvault::Filter {
            tag: Some(("team".into(), Some("raw".into()))),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(on_pg.stats().unwrap().entries, 5);

    // And back, into a new SQLite database beside the same blobs.
    std::fs::rename(vdir.join("cache.db"), dir.path().join("old.db")).unwrap();
    let back = taskvault::store::sqlite::SqliteMeta::open(&vdir.join("cache.db")).unwrap();
    let r = on_pg.copy_metadata_to(&back).unwrap();
    assert_eq!((r.entries, r.runs), (5, 10), "{r:?}");
    drop(back);
    drop(on_pg);
    let sqlite = Vault::open(Settings::for_dir(&vdir)).unwrap();
    for (key, (name, data)) in keys.iter().zip(&outputs) {
        assert_eq!(sqlite.get_bytes(key).unwrap().map(|(_, b)| b).as_ref(), Some(data), "{name}");
    }
    assert_eq!(snapshot(&sqlite), before);
    assert!(sqlite.verify().unwrap().corrupt.is_empty());
}

/// A PostgreSQL server (one of this test's own) stopped as a crash would and started again
/// under load: while it is down, lookups and saves fail with an error naming the store (a
/// server answers 5xx, a client then misses); no lookup ever serves a wrong result; once it is
/// back, the same vault handles serve, save, claim and keep results in memory again, with no
/// reopening.
#[test]
fn postgres_restarts() {
    if worker() {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let Some(pg) = taskvault_testkit::postgres::Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::for_dir(dir.path().join("vault"));
    s.metadata_url = Some(pg.url());
    let v = Vault::open(s.clone()).unwrap();
    let resident = Vault::open(s).unwrap().resident().unwrap();
    for i in 0..8 {
        v.save(&key(&v, i), Output::Bytes(&crate::content(i, 0)), &SaveOptions::default()).unwrap();
    }
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|scope| {
        for t in 0..3u64 {
            let (v, stop, served, failed) = (&v, &stop, &served, &failed);
            scope.spawn(move || {
                let mut r = crate::Rng::new(t + 1);
                while !stop.load(Ordering::SeqCst) {
                    let i = r.below(8);
                    let outcome = if r.below(4) == 0 {
                        v.save(
                            &key(v, i),
                            Output::Bytes(&crate::content(i, r.below(3))),
                            &SaveOptions::default(),
                        )
                        .map(|_| ())
                    } else {
                        v.get_bytes(&key(v, i)).map(|got| {
                            if let Some((_, bytes)) = got {
                                check_content(i, &bytes).unwrap();
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                        })
                    };
                    if let Err(e) = outcome {
                        let msg = e.to_string();
                        assert!(
                            msg.contains("metadata store postgres://postgres@127.0.0.1"),
                            "{msg}"
                        );
                        failed.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(500));
        pg.down();
        std::thread::sleep(Duration::from_millis(700));
        let served_before_restart = served.load(Ordering::SeqCst);
        pg.up();
        // Service resumes: lookups are served again by the same handles.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while served.load(Ordering::SeqCst) < served_before_restart + 50 {
            assert!(std::time::Instant::now() < deadline, "service did not resume");
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(failed.load(Ordering::SeqCst) > 0, "the outage was never seen");
    // Everything works on the same handles: saves, hits, claims, the resident vault's memory.
    let fresh = key(&v, 100);
    v.save(&fresh, Output::Bytes(b"after the restart"), &SaveOptions::default()).unwrap();
    assert_eq!(v.get_bytes(&fresh).unwrap().unwrap().1, b"after the restart");
    let claimed = key(&v, 101);
    assert!(matches!(v.claim(&claimed).unwrap(), taskvault::Claim::Compute(_)));
    // The resident vault keeps results again once it listens; a removal by the other handle
    // still reaches it.
    match resident.fetch_or_claim(&fresh, None).unwrap() {
        taskvault::Fetched::Hit(s) => assert_eq!(&*s.bytes, b"after the restart"),
        other => panic!("a miss after the restart: {other:?}"),
    }
    assert!(v.remove_key(&fresh.digest().hex(), "test").unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while matches!(resident.fetch_or_claim(&fresh, None).unwrap(), taskvault::Fetched::Hit(_)) {
        assert!(std::time::Instant::now() < deadline, "a removed result is served from memory");
        std::thread::sleep(Duration::from_millis(5));
    }
}
