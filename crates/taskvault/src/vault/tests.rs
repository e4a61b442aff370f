use super::*;
use crate::OutputKind;
use crate::entry::Filter;
use crate::{Admitted, Arrived, Claim, Destination, Fetched};
use base64::Engine as _;
use std::os::unix::fs::PermissionsExt;
use taskvault_testkit::noise;

struct Fx {
    dir: tempfile::TempDir,
    vault: Vault,
}

fn fx_with(f: impl FnOnce(&mut Settings)) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Settings::for_dir(dir.path().join("vault"));
    s.host = "testhost".into();
    f(&mut s);
    let vault = Vault::open(s).unwrap();
    Fx { dir, vault }
}

fn fx() -> Fx {
    fx_with(|_| {})
}

impl Fx {
    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        p
    }
    fn key(&self, task: &str, input: &[u8]) -> TaskKey {
        self.vault.key(task, &[Input::Bytes(input.to_vec())]).unwrap()
    }
    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn blob_files(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        let root = self.vault.settings.vault_dir.join("blobs");
        if root.exists() {
            for w in crate::tree::walk(&root).unwrap() {
                if w.kind == NodeKind::File {
                    v.push(w.abs);
                }
            }
        }
        v
    }
}

/// Deterministic data that compresses.
fn text(n: usize) -> Vec<u8> {
    (0..n).map(|i| b"the quick brown fox "[i % 20]).collect()
}

#[test]
fn save_then_get_round_trips_small_large_compressible_and_not() {
    let f = fx();
    for (i, data) in
        [b"".to_vec(), b"tiny".to_vec(), text(3 << 20), noise(2 << 20, 1), noise(20_000, 2)]
            .into_iter()
            .enumerate()
    {
        let src = f.file(&format!("out{i}"), &data);
        let key = f.key("t", format!("in{i}").as_bytes());
        let saved = f.vault.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap();
        assert_eq!(saved.size, data.len() as u64);
        let dest = f.out(&format!("restored{i}"));
        let got = f.vault.get(&key, &dest).unwrap().expect("hit");
        assert_eq!(got.id, saved.id);
        assert_eq!(std::fs::read(&dest).unwrap(), data, "case {i}");
    }
    let blobs = f.vault.meta().blobs().unwrap();
    let by_size = |n: u64| blobs.iter().find(|b| b.size == n).unwrap().clone();
    assert_eq!(by_size(3 << 20).codec, crate::entry::Codec::Zstd, "text compresses");
    assert!(by_size(3 << 20).stored_size < (3 << 20) / 10);
    assert_eq!(by_size(2 << 20).codec, crate::entry::Codec::Raw, "noise is stored raw");
    assert!(by_size(20_000).inline.is_none(), "20,000 bytes are a file");
    assert!(!blobs.iter().any(|b| b.size == 4), "4 bytes live in their run's own row");
}

#[test]
fn restore_preserves_mode() {
    let f = fx();
    let src = f.file("script.sh", &text(100_000));
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let key = f.key("t", b"i");
    f.vault.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap();
    let dest = f.out("restored.sh");
    f.vault.get(&key, &dest).unwrap().unwrap();
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o750);
}

#[test]
fn task_name_is_part_of_the_key_and_miss_writes_nothing() {
    let f = fx();
    let src = f.file("model.pkl", b"model");
    let input = f.file("data.csv", b"1,2,3");
    let k = f.vault.key("train_model", &[Input::Path(input.clone())]).unwrap();
    f.vault.save(&k, Output::Path(&src), &SaveOptions::default()).unwrap();
    let other = f.vault.key("other_task", &[Input::Path(input)]).unwrap();
    let dest = f.out("x.pkl");
    assert!(f.vault.get(&other, &dest).unwrap().is_none());
    assert!(!dest.exists());
    let s = f.vault.stats().unwrap();
    assert_eq!((s.counters.hits, s.counters.misses), (0, 1));
}

#[test]
fn same_content_under_another_file_name_hits() {
    let f = fx();
    let a = f.file("data.csv", b"same");
    let b = f.file("elsewhere/renamed.csv", b"same");
    let out = f.file("o", b"result");
    let ka = f.vault.key("t", &[Input::Path(a)]).unwrap();
    f.vault.save(&ka, Output::Path(&out), &SaveOptions::default()).unwrap();
    let kb = f.vault.key("t", &[Input::Path(b)]).unwrap();
    assert!(f.vault.get(&kb, &f.out("r")).unwrap().is_some());
}

#[test]
fn identical_outputs_are_stored_once() {
    let f = fx();
    let data = noise(1 << 20, 7);
    let a = f.file("a", &data);
    let b = f.file("b", &data);
    f.vault.save(&f.key("t1", b"1"), Output::Path(&a), &SaveOptions::default()).unwrap();
    f.vault.save(&f.key("t2", b"2"), Output::Path(&b), &SaveOptions::default()).unwrap();
    assert_eq!(f.blob_files().len(), 1);
    assert_eq!(f.vault.stats().unwrap().total_bytes, 1 << 20);
    // Removing one entry keeps the blob for the other.
    let e1 = f.vault.resolve(&f.key("t1", b"1").digest().hex()).unwrap();
    f.vault.remove(&[e1]).unwrap();
    assert_eq!(f.blob_files().len(), 1);
    assert!(f.vault.get(&f.key("t2", b"2"), &f.out("r")).unwrap().is_some());
    let e2 = f.vault.resolve(&f.key("t2", b"2").digest().hex()).unwrap();
    f.vault.remove(&[e2]).unwrap();
    assert_eq!(f.blob_files().len(), 0);
    assert_eq!(f.vault.stats().unwrap().total_bytes, 0);
}

#[test]
fn a_blob_counts_its_users_through_resaves_and_a_corrupt_one_retires_them_all() {
    let f = fx();
    let data = noise(1 << 20, 8);
    let src = f.file("a", &data);
    let (k1, k2) = (f.key("t1", b"1"), f.key("t2", b"2"));
    for k in [&k1, &k1, &k2] {
        // The second save of k1 replaces its live run with the same bytes.
        f.vault.save(k, Output::Path(&src), &SaveOptions::default()).unwrap();
    }
    assert_eq!(f.blob_files().len(), 1);
    let e1 = f.vault.peek(&k1).unwrap().unwrap();
    f.vault.remove(&[e1]).unwrap();
    assert_eq!(f.blob_files().len(), 1, "k2 still uses it, however often k1 was saved");
    f.vault.save(&k1, Output::Path(&src), &SaveOptions::default()).unwrap();
    // Corrupt: the first lookup retires every live entry using the blob, not only its own.
    let blob = f.blob_files().pop().unwrap();
    make_writable(&blob);
    std::fs::write(&blob, noise(1 << 20, 9)).unwrap();
    assert!(f.vault.get(&k1, &f.out("r1")).unwrap().is_none());
    assert!(f.vault.peek(&k2).unwrap().is_none(), "k2's entry was retired with k1's");
    let s = f.vault.stats().unwrap();
    assert_eq!((s.entries, s.total_bytes), (0, 0));
    // Saved again, the content is stored afresh and counted from one.
    f.vault.save(&k2, Output::Path(&src), &SaveOptions::default()).unwrap();
    assert!(f.vault.get(&k2, &f.out("r2")).unwrap().is_some());
    assert_eq!(std::fs::read(f.out("r2")).unwrap(), data);
}

#[test]
fn directory_outputs_round_trip_with_modes_and_internal_symlinks() {
    let f = fx();
    let root = f.out("dist");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::write(root.join("a.txt"), b"A").unwrap();
    std::fs::write(root.join("sub/big.bin"), noise(200_000, 3)).unwrap();
    std::fs::write(root.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("sub/run.sh"), std::fs::Permissions::from_mode(0o755))
        .unwrap();
    std::os::unix::fs::symlink("sub/run.sh", root.join("link")).unwrap();
    let key = f.key("build", b"src");
    let saved = f.vault.save(&key, Output::Path(&root), &SaveOptions::default()).unwrap();
    assert_eq!(saved.output_kind, OutputKind::Dir);

    let dest = f.out("restored");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("stale"), b"old").unwrap();
    f.vault.get(&key, &dest).unwrap().unwrap();
    assert!(!dest.join("stale").exists(), "the directory is replaced, not merged");
    assert_eq!(std::fs::read(dest.join("sub/big.bin")).unwrap(), noise(200_000, 3));
    assert_eq!(
        std::fs::metadata(dest.join("sub/run.sh")).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(std::fs::read_link(dest.join("link")).unwrap(), Path::new("sub/run.sh"));
    assert!(dest.join("sub/deeper").is_dir());
}

#[test]
fn bytes_api_matches_seed_sdk() {
    let f = fx();
    assert_eq!(f.vault.get_cached_result("aggregate", b"csv").unwrap(), (None, false));
    f.vault.cache_result("aggregate", b"csv", b"{\"a\":1}").unwrap();
    assert_eq!(
        f.vault.get_cached_result("aggregate", b"csv").unwrap(),
        (Some(b"{\"a\":1}".to_vec()), true)
    );
    assert_eq!(f.vault.get_cached_result("other", b"csv").unwrap(), (None, false));
}

#[test]
fn entry_over_its_size_limit_is_refused_and_nothing_changes() {
    let f = fx_with(|s| s.default_policy.max_size_bytes = Some(100));
    let src = f.file("big", &[0u8; 101]);
    let err =
        f.vault.save(&f.key("t", b"i"), Output::Path(&src), &SaveOptions::default()).unwrap_err();
    assert!(matches!(err, Error::TooLarge { size: 101, limit: 100, .. }), "{err}");
    assert_eq!(f.vault.stats().unwrap().entries, 0);
    assert_eq!(f.vault.stats().unwrap().total_bytes, 0);
}

#[test]
fn resave_keeps_history_with_parent() {
    let f = fx();
    let key = f.key("t", b"i");
    let a = f.vault.save(&key, Output::Bytes(b"v1"), &SaveOptions::default()).unwrap();
    let b = f.vault.save(&key, Output::Bytes(b"v2"), &SaveOptions::default()).unwrap();
    assert_eq!(b.parent.as_deref(), Some(a.id.as_str()));
    let hist = f.vault.history(&b).unwrap();
    assert_eq!(
        hist.iter().map(|e| e.status).collect::<Vec<_>>(),
        [Status::Superseded, Status::Live]
    );
    assert_eq!(f.vault.get_bytes(&key).unwrap().unwrap().1, b"v2");
    assert_eq!(f.vault.stats().unwrap().entries, 1);
}

#[test]
fn ttl_is_respected_on_lookup() {
    let f = fx();
    let key = f.key("t", b"i");
    let opts = SaveOptions { ttl: Some(std::time::Duration::from_secs(1)), ..Default::default() };
    let e = f.vault.save(&key, Output::Bytes(b"v"), &opts).unwrap();
    assert!(f.vault.get_bytes(&key).unwrap().is_some());
    // Pretend time passed by checking expiry at a later instant.
    assert!(f.vault.expired(&e, e.created_ms + 1000));
    assert!(!f.vault.expired(&e, e.created_ms + 999));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(f.vault.get_bytes(&key).unwrap().is_none());
    let s = f.vault.stats().unwrap();
    assert_eq!((s.entries, s.counters.expired), (0, 1));
}

#[test]
fn fractional_ttls_are_kept_to_the_millisecond() {
    let f = fx();
    let key = f.key("t", b"ms");
    let ttl = |d| SaveOptions { ttl: Some(d), ..Default::default() };
    let e = f
        .vault
        .save(&key, Output::Bytes(b"v"), &ttl(std::time::Duration::from_millis(50)))
        .unwrap();
    assert_eq!(e.expires_ms, Some(e.created_ms + 50));
    assert!(e.ttl_explicit);
    // Under a millisecond still expires (rounded up), and zero never does.
    let e = f
        .vault
        .save(&key, Output::Bytes(b"v"), &ttl(std::time::Duration::from_micros(10)))
        .unwrap();
    assert_eq!(e.expires_ms, Some(e.created_ms + 1));
    let e = f.vault.save(&key, Output::Bytes(b"v"), &ttl(std::time::Duration::ZERO)).unwrap();
    assert_eq!(e.expires_ms, None);
    let e = f
        .vault
        .save(&key, Output::Bytes(b"v"), &ttl(std::time::Duration::from_millis(30)))
        .unwrap();
    assert!(f.vault.get_bytes(&key).unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert!(f.vault.get_bytes(&key).unwrap().is_none(), "{e:?} should have expired");
}

#[test]
fn failed_runs_are_history_with_their_error_and_never_served() {
    let f = fx();
    let key = f.key("t", b"fails");
    let opts = SaveOptions { details: serde_json::json!({"kind": "python"}), ..Default::default() };
    let failed = f.vault.record_failed_run(&key, "boom", &opts, None).unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.details["error"], "boom");
    assert_eq!(failed.details["kind"], "python");
    assert!(failed.outputs.is_empty());
    assert!(f.vault.get_bytes(&key).unwrap().is_none(), "a failure is never a result");
    assert_eq!(f.vault.stats().unwrap().entries, 0);
    let listed =
        f.vault.list(&Filter { status: Some(Status::Failed), ..Filter::default() }).unwrap();
    assert_eq!(listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [failed.id.as_str()]);
    assert!(f.vault.list(&Filter::default()).unwrap().is_empty(), "only live entries by default");
    // A later success is live; the failure stays in the key's history, and the success's
    // own failure record for waiters is cleared.
    let ok = f.vault.save(&key, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    let history = f.vault.history(&ok).unwrap();
    let statuses: Vec<Status> = history.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [Status::Failed, Status::Live]);
    assert_eq!(f.vault.resolve(&failed.id).unwrap().status, Status::Failed);
    // Failing again after a success leaves the success live, with the failure after it.
    let again = f.vault.record_failed_run(&key, "boom again", &opts, None).unwrap();
    assert_eq!(again.parent.as_deref(), Some(ok.id.as_str()));
    assert_eq!(f.vault.get_bytes(&key).unwrap().unwrap().1, b"v");
}

#[test]
fn removing_one_run_removes_exactly_that_run() {
    let f = fx();
    let key = f.key("t", b"runs");
    let first = f.vault.save(&key, Output::Bytes(b"one"), &SaveOptions::default()).unwrap();
    let second = f.vault.save(&key, Output::Bytes(b"two"), &SaveOptions::default()).unwrap();
    let third = f.vault.save(&key, Output::Bytes(b"three"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.stats().unwrap().census.runs, 3);
    // A history run: only its row goes; the run that named it as parent has none now.
    assert!(f.vault.remove_runs(std::slice::from_ref(&first)).unwrap().is_empty());
    assert!(f.vault.resolve(&first.id).is_err());
    assert_eq!(f.vault.resolve(&second.id).unwrap().parent, None);
    assert_eq!(f.vault.get_bytes(&key).unwrap().unwrap().1, b"three");
    // The live run: the key is a miss, and its history stays.
    let gone = f.vault.remove_runs(std::slice::from_ref(&third)).unwrap();
    assert_eq!(gone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [third.id.as_str()]);
    assert!(f.vault.get_bytes(&key).unwrap().is_none());
    assert_eq!(f.vault.resolve(&second.id).unwrap().status, Status::Superseded);
    let s = f.vault.stats().unwrap();
    assert_eq!((s.entries, s.census.runs, s.census.blobs), (0, 1, 0));
}

#[test]
fn the_census_counts_runs_failures_and_deduplicated_blobs() {
    let f = fx();
    let (a, b) = (f.key("t", b"a"), f.key("t", b"b"));
    let same = vec![b's'; 100];
    f.vault.save(&a, Output::Bytes(&same), &SaveOptions::default()).unwrap();
    f.vault.save(&b, Output::Bytes(&same), &SaveOptions::default()).unwrap();
    f.vault.record_failed_run(&f.key("t", b"c"), "no", &SaveOptions::default(), None).unwrap();
    let c = f.vault.stats().unwrap().census;
    assert_eq!((c.runs, c.failed_runs, c.blobs), (3, 1, 1));
    assert_eq!((c.inline_blobs, c.inline_bytes), (1, 100));
}

#[test]
fn hits_misses_and_time_saved_are_counted_per_task_and_can_be_reset() {
    let f = fx();
    let (a, b) = (f.key("build", b"x"), f.key("test", b"y"));
    let opts = SaveOptions { duration_ms: Some(250), ..Default::default() };
    assert!(f.vault.get_bytes(&a).unwrap().is_none());
    f.vault.save(&a, Output::Bytes(b"built"), &opts).unwrap();
    for _ in 0..3 {
        f.vault.get_bytes(&a).unwrap().unwrap();
    }
    assert!(f.vault.get_bytes(&b).unwrap().is_none());
    assert!(f.vault.get_bytes(&b).unwrap().is_none());
    let by_task = f.vault.task_stats().unwrap();
    let row = |t: &str| by_task.iter().find(|s| s.task == t).cloned().unwrap();
    assert_eq!(
        row("build"),
        crate::entry::TaskStats {
            task: "build".into(),
            entries: 1,
            bytes: 5,
            hits: 3,
            misses: 1,
            time_saved_ms: 750
        }
    );
    assert_eq!((row("test").entries, row("test").hits, row("test").misses), (0, 0, 2));
    let s = f.vault.stats().unwrap();
    assert_eq!((s.counters.hits, s.counters.misses, s.counters.time_saved_ms), (3, 3, 750));
    f.vault.reset_counters().unwrap();
    let s = f.vault.stats().unwrap();
    assert_eq!((s.counters.hits, s.counters.misses, s.counters.saves), (0, 0, 0));
    assert_eq!((s.entries, s.counters.stored_bytes > 0), (1, true), "state stays");
    assert_eq!(
        f.vault.task_stats().unwrap(),
        [crate::entry::TaskStats {
            task: "build".into(),
            entries: 1,
            bytes: 5,
            ..Default::default()
        }]
    );
}

#[test]
fn a_version_1_database_is_migrated_to_per_task_counters() {
    let dir = tempfile::tempdir().unwrap();
    let vault_dir = dir.path().join("vault");
    std::fs::create_dir_all(&vault_dir).unwrap();
    {
        let c = rusqlite::Connection::open(vault_dir.join("cache.db")).unwrap();
        c.execute_batch(crate::store::sqlite::SCHEMA_V1_FOR_TESTS).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
    }
    let v = Vault::open(Settings::for_dir(vault_dir.clone())).unwrap();
    let key = v.key("t", &[Input::Bytes(b"i".to_vec())]).unwrap();
    assert!(v.get_bytes(&key).unwrap().is_none());
    assert_eq!(v.task_stats().unwrap()[0].misses, 1);
    let c = rusqlite::Connection::open(vault_dir.join("cache.db")).unwrap();
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, crate::store::sqlite::SCHEMA_VERSION);
}

/// The census as counted from the rows themselves.
fn recount(f: &Fx) -> crate::entry::Census {
    let c = rusqlite::Connection::open(f.vault.settings().vault_dir.join("cache.db")).unwrap();
    let one = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    crate::entry::Census {
        runs: one("SELECT count(*) FROM entries"),
        failed_runs: one("SELECT count(*) FROM entries WHERE status = 'failed'"),
        blobs: one("SELECT count(*) FROM blobs"),
        inline_blobs: one("SELECT count(*) FROM blobs WHERE data IS NOT NULL"),
        inline_bytes: one("SELECT coalesce(sum(stored_size), 0) FROM blobs WHERE data IS NOT NULL"),
        small_outputs: one("SELECT count(*) FROM entries WHERE small IS NOT NULL"),
        small_bytes: one("SELECT coalesce(sum(length(small)), 0) FROM entries"),
    }
}

#[test]
fn the_census_stays_equal_to_a_recount_through_every_kind_of_write() {
    let f = fx_with(|s| s.inline_max_bytes = 64);
    let check = |f: &Fx, when: &str| {
        f.vault.commit_deferred().unwrap();
        let s = f.vault.stats().unwrap();
        assert_eq!(s.census, recount(f), "after {when}");
        let c = rusqlite::Connection::open(f.vault.settings().vault_dir.join("cache.db")).unwrap();
        let live: i64 =
            c.query_row("SELECT count(*) FROM entries WHERE live = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(s.entries, live, "after {when}");
    };
    let big = vec![7u8; 10_000];
    let keys: Vec<TaskKey> = (0..6).map(|i| f.key("t", format!("k{i}").as_bytes())).collect();
    for (i, k) in keys.iter().enumerate() {
        let out: &[u8] = if i % 2 == 0 { b"small" } else { &big };
        f.vault.save(k, Output::Bytes(out), &SaveOptions::default()).unwrap();
    }
    check(&f, "saves, inline and on disk, deduplicated");
    let e = f.vault.save(&keys[0], Output::Bytes(b"replaced"), &SaveOptions::default()).unwrap();
    check(&f, "a save that supersedes");
    f.vault.record_failed_run(&keys[1], "boom", &SaveOptions::default(), None).unwrap();
    check(&f, "a failed run");
    f.vault.remove_runs(std::slice::from_ref(&e)).unwrap();
    check(&f, "rm of a live run");
    let live = f.vault.list(&Filter::default()).unwrap();
    f.vault.remove(&live[..1]).unwrap();
    check(&f, "rm of a key");
    f.vault.gc(None, Some(1)).unwrap();
    check(&f, "eviction");
    for k in &keys {
        f.vault.save(k, Output::Bytes(&big), &SaveOptions::default()).unwrap();
    }
    let path = f.blob_files().pop().unwrap();
    std::fs::write(&path, b"corrupted").unwrap();
    let _ = f.vault.verify().unwrap();
    check(&f, "verify quarantining a blob");
    f.vault.clear().unwrap();
    check(&f, "clear");
    assert_eq!(recount(&f), crate::entry::Census::default());
}

#[test]
fn runs_of_one_shape_are_stored_packed_and_a_damaged_packed_row_is_never_served() {
    let f = fx();
    let keys: Vec<TaskKey> = (0..4).map(|i| f.key("t", format!("in{i}").as_bytes())).collect();
    for (i, k) in keys.iter().enumerate() {
        f.vault
            .save(k, Output::Bytes(format!("out{i}").as_bytes()), &SaveOptions::default())
            .unwrap();
    }
    // Another shape (tags and a TTL of its own): stored as JSON text, read back the same.
    let tagged = f.key("t", b"tagged");
    let opts = SaveOptions {
        tags: [("k".to_owned(), "v".to_owned())].into(),
        ttl: Some(std::time::Duration::from_secs(60)),
        ..SaveOptions::default()
    };
    f.vault.save(&tagged, Output::Bytes(b"tagged"), &opts).unwrap();
    f.vault.commit_deferred().unwrap();
    let db = f.vault.settings.vault_dir.join("cache.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, i64, i64, String)> = c
        .prepare(
            "SELECT typeof(doc), length(id), length(key), hex(key) FROM entries ORDER BY rowid",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 5);
    for (i, (kind, id_len, key_len, key)) in rows.iter().enumerate() {
        assert_eq!((*id_len, *key_len), (32, 32), "ids and keys as their bytes");
        if i < 4 {
            assert_eq!(kind, "blob", "run {i} is packed");
            assert_eq!(key.to_lowercase(), keys[i].digest().hex());
        }
    }
    for (i, k) in keys.iter().enumerate() {
        let (e, bytes) = f.vault.get_bytes(k).unwrap().unwrap();
        assert_eq!(bytes, format!("out{i}").as_bytes());
        assert_eq!(e.size, 4);
        assert!(!e.ttl_explicit);
    }
    let (e, _) = f.vault.get_bytes(&tagged).unwrap().unwrap();
    assert_eq!(e.tags.get("k").map(String::as_str), Some("v"));
    assert!(e.ttl_explicit);
    // A packed document cut short: the run is damaged, never served, and verify drops it.
    c.execute("UPDATE entries SET doc = substr(doc, 1, length(doc) - 5) WHERE rowid = 2", [])
        .unwrap();
    drop(c);
    let _ = std::fs::remove_dir_all(f.vault.settings.vault_dir.join("hot"));
    let report = f.vault.verify().unwrap();
    assert_eq!(report.damaged_rows.len(), 1, "{:?}", report.damaged_rows);
    assert!(f.vault.get_bytes(&keys[1]).unwrap().is_none());
    assert!(f.vault.get_bytes(&keys[0]).unwrap().is_some());
    f.vault.save(&keys[1], Output::Bytes(b"again"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.get_bytes(&keys[1]).unwrap().unwrap().1, b"again");
}

#[test]
fn eviction_goes_a_bounded_batch_at_a_time_and_a_batch_loop_finishes_it() {
    let f = fx();
    for i in 0..5u8 {
        f.vault.save(&f.key("t", &[i]), Output::Bytes(&[i; 100]), &SaveOptions::default()).unwrap();
    }
    // Two per call, least recently used first, down to the target.
    let first = f.vault.meta().evict(now_ms(), Some(0), 2).unwrap();
    assert_eq!(first.entries.len(), 2);
    assert_eq!(f.vault.stats().unwrap().entries, 3);
    assert_eq!(
        f.vault.evict_in_batches(crate::audit::Event::Evict, "gc", now_ms(), Some(0)).unwrap(),
        3
    );
    let s = f.vault.stats().unwrap();
    assert_eq!((s.entries, s.counters.evictions, s.counters.stored_bytes), (0, 5, 0));
}

#[test]
fn verify_reports_its_progress_through_every_blob() {
    let mut f = fx();
    for i in 0..2500u16 {
        let key = f.key("t", &i.to_le_bytes());
        // Over the size kept in a run's row: each its own blob row.
        let out = [i.to_le_bytes().as_slice(), &[0u8; 100]].concat();
        f.vault.save(&key, Output::Bytes(&out), &SaveOptions::default()).unwrap();
    }
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    f.vault.set_item_progress(Box::new(move |done, total| s.lock().unwrap().push((done, total))));
    assert_eq!(f.vault.verify().unwrap().blobs_checked, 2500);
    assert_eq!(*seen.lock().unwrap(), [(1000, 2500), (2000, 2500), (2500, 2500)]);
}

#[test]
fn policy_ttl_applies_to_existing_entries_unless_explicit() {
    let f = fx_with(|s| s.default_policy.ttl_seconds = Some(60));
    let key = f.key("t", b"i");
    let mut e = f.vault.save(&key, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    e.expires_ms = None; // as if saved before the policy existed
    assert!(f.vault.expired(&e, e.created_ms + 60_000));
    e.ttl_explicit = true;
    assert!(!f.vault.expired(&e, e.created_ms + 60_000));
}

#[test]
fn gc_removes_what_a_shortened_policy_ttl_expired_policy_by_policy() {
    // Saved under a long TTL, then the config shortens it: gc applies the TTL in force now,
    // each task under its own policy, and never to an entry whose TTL was given explicitly.
    let dir = tempfile::tempdir().unwrap();
    let settings = |default: u64, fast: u64| {
        let mut s = Settings::for_dir(dir.path().join("vault"));
        s.default_policy.ttl_seconds = Some(default);
        s.policies.insert(
            "fast".into(),
            crate::config::Policy { ttl_seconds: Some(fast), max_size_bytes: None },
        );
        s
    };
    let v = Vault::open(settings(3600, 3600)).unwrap();
    let key = |t: &str, i: &[u8]| v.key(t, &[Input::Bytes(i.to_vec())]).unwrap();
    v.save(&key("slow", b"a"), Output::Bytes(b"a"), &SaveOptions::default()).unwrap();
    v.save(&key("fast", b"b"), Output::Bytes(b"b"), &SaveOptions::default()).unwrap();
    let keep = SaveOptions { ttl: Some(std::time::Duration::ZERO), ..Default::default() };
    v.save(&key("slow", b"c"), Output::Bytes(b"c"), &keep).unwrap();
    drop(v);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Only `fast` is now past its TTL.
    let v = Vault::open(settings(3600, 1)).unwrap();
    assert_eq!(v.gc(None, None).unwrap().expired, 1);
    let tasks: Vec<String> =
        v.list(&Filter::default()).unwrap().into_iter().map(|e| e.task).collect();
    assert_eq!(tasks, ["slow", "slow"]);
    drop(v);
    // Then the default: the entry saved with an explicit TTL stays.
    let v = Vault::open(settings(1, 1)).unwrap();
    assert_eq!(v.gc(None, None).unwrap().expired, 1);
    let left = v.list(&Filter::default()).unwrap();
    assert_eq!((left.len(), left[0].ttl_explicit), (1, true));
    // And --older-than takes the rest.
    assert_eq!(v.gc(Some(std::time::Duration::ZERO), None).unwrap().old, 1);
    assert!(v.list(&Filter::default()).unwrap().is_empty());
}

fn corrupt_case(damage: impl Fn(&Path)) {
    let f = fx();
    let data = noise(1 << 20, 11);
    let src = f.file("out", &data);
    let key = f.key("t", b"i");
    f.vault.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap();
    let blob = f.blob_files().pop().unwrap();
    damage(&blob);

    let dest = f.out("dest");
    assert!(f.vault.get(&key, &dest).unwrap().is_none(), "never served");
    assert!(!dest.exists(), "nothing written at the destination");
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("taskvault"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
    let s = f.vault.stats().unwrap();
    assert_eq!(s.counters.corrupt, 1);
    assert_eq!(s.counters.misses, 1);
    assert_eq!(s.entries, 0);
    let audit = std::fs::read_to_string(f.vault.audit_path()).unwrap();
    assert!(audit.contains("CORRUPT get task=t"), "{audit}");
    // A second get is a plain miss, not an error.
    assert!(f.vault.get(&key, &dest).unwrap().is_none());
    // A new save restores service.
    f.vault.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap();
    assert!(f.vault.get(&key, &dest).unwrap().is_some());
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

fn make_writable(p: &Path) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn flipped_byte_is_never_served() {
    corrupt_case(|p| {
        make_writable(p);
        let mut b = std::fs::read(p).unwrap();
        b[512 * 1024] ^= 1;
        std::fs::write(p, b).unwrap();
    });
}

#[test]
fn truncated_blob_is_never_served() {
    corrupt_case(|p| {
        make_writable(p);
        let b = std::fs::read(p).unwrap();
        std::fs::write(p, &b[..b.len() / 2]).unwrap();
    });
}

#[test]
fn deleted_blob_is_a_miss() {
    corrupt_case(|p| std::fs::remove_file(p).unwrap());
}

#[test]
fn corrupt_inline_and_compressed_blobs_are_detected_by_verify() {
    let f = fx();
    let k1 = f.key("small", b"1");
    // Over the size kept in a run's own row: an inline row of `blobs`.
    let small = [b"small output".as_slice(), &[b'.'; 100]].concat();
    f.vault.save(&k1, Output::Bytes(&small), &SaveOptions::default()).unwrap();
    let k2 = f.key("zst", b"2");
    f.vault.save(&k2, Output::Bytes(&text(1 << 20)), &SaveOptions::default()).unwrap();
    assert!(f.vault.verify().unwrap().corrupt.is_empty());
    // Damage the inline row and the compressed file.
    let conn = rusqlite::Connection::open(f.vault.settings.vault_dir.join("cache.db")).unwrap();
    conn.execute(
        "UPDATE blobs SET data = CAST(X'00' || substr(data, 2) AS BLOB) WHERE data IS NOT NULL",
        [],
    )
    .unwrap();
    let blob = f.blob_files().pop().unwrap();
    make_writable(&blob);
    let mut b = std::fs::read(&blob).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&blob, b).unwrap();
    let report = f.vault.verify().unwrap();
    assert_eq!(report.corrupt.len(), 2, "{report:?}");
    assert_eq!(f.vault.stats().unwrap().entries, 0);
    assert!(f.vault.get_bytes(&k1).unwrap().is_none());
    let q = std::fs::read_dir(f.vault.settings.vault_dir.join("quarantine")).unwrap().count();
    assert_eq!(q, 1, "the file blob is kept in quarantine");
}

#[test]
fn cap_evicts_lru_first_and_stays_under_cap() {
    let f = fx_with(|s| {
        s.max_size_bytes = Some(10 * 100_000);
        s.low_water_percent = 80;
        s.inline_max_bytes = 0;
    });
    let keys: Vec<TaskKey> = (0..10).map(|i| f.key("t", format!("{i}").as_bytes())).collect();
    for (i, k) in keys.iter().enumerate() {
        f.vault.save(k, Output::Bytes(&noise(100_000, i as u64)), &SaveOptions::default()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(f.vault.stats().unwrap().entries, 10, "exactly at the cap: nothing evicted");
    // Touch the oldest so it becomes recently used.
    assert!(f.vault.get_bytes(&keys[0]).unwrap().is_some());
    std::thread::sleep(std::time::Duration::from_millis(2));
    let k10 = f.key("t", b"10");
    f.vault.save(&k10, Output::Bytes(&noise(100_000, 10)), &SaveOptions::default()).unwrap();
    let s = f.vault.stats().unwrap();
    assert!(s.total_bytes <= 800_000, "down to the low-water mark: {}", s.total_bytes);
    assert_eq!(s.entries, 8);
    assert!(f.vault.peek(&keys[0]).unwrap().is_some(), "recently used survives");
    assert!(f.vault.peek(&keys[1]).unwrap().is_none(), "least recently used goes first");
    assert!(f.vault.peek(&keys[2]).unwrap().is_none());
    assert!(f.vault.peek(&keys[3]).unwrap().is_none());
    assert!(f.vault.peek(&k10).unwrap().is_some(), "the new entry stays");
    assert_eq!(f.blob_files().len(), 8);
}

#[test]
fn expired_entries_are_evicted_before_live_ones() {
    let f = fx_with(|s| {
        s.max_size_bytes = Some(3 * 100_000);
        s.low_water_percent = 100;
        s.inline_max_bytes = 0;
    });
    let live = f.key("t", b"old-live");
    f.vault.save(&live, Output::Bytes(&noise(100_000, 1)), &SaveOptions::default()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let short = f.key("t", b"expiring");
    let opts = SaveOptions { ttl: Some(std::time::Duration::from_secs(1)), ..Default::default() };
    f.vault.save(&short, Output::Bytes(&noise(100_000, 2)), &opts).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    f.vault
        .save(&f.key("t", b"3"), Output::Bytes(&noise(100_000, 3)), &SaveOptions::default())
        .unwrap();
    f.vault
        .save(&f.key("t", b"4"), Output::Bytes(&noise(100_000, 4)), &SaveOptions::default())
        .unwrap();
    assert!(
        f.vault.peek(&live).unwrap().is_some(),
        "the older live entry outlives the expired one"
    );
    assert_eq!(f.vault.stats().unwrap().counters.expired, 1);
}

#[test]
fn gc_by_age_and_size_and_clear() {
    let f = fx_with(|s| s.inline_max_bytes = 0);
    for i in 0..5u64 {
        f.vault
            .save(
                &f.key("t", &[i as u8]),
                Output::Bytes(&noise(50_000, i)),
                &SaveOptions::default(),
            )
            .unwrap();
    }
    let r = f.vault.gc(None, Some(120_000)).unwrap();
    assert_eq!(r.evicted, 3);
    assert!(f.vault.stats().unwrap().total_bytes <= 120_000);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = f.vault.gc(Some(std::time::Duration::from_millis(10)), None).unwrap();
    assert_eq!(r.old, 2);
    f.vault.save(&f.key("t", b"x"), Output::Bytes(b"x"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.clear().unwrap(), 1);
    assert_eq!(f.vault.stats().unwrap().entries, 0);
    assert!(f.blob_files().is_empty());
}

#[test]
fn invalidate_by_tag() {
    let f = fx();
    let tags = |v: &str| SaveOptions {
        tags: BTreeMap::from([("team".to_owned(), v.to_owned())]),
        ..Default::default()
    };
    f.vault.save(&f.key("a", b""), Output::Bytes(b"1"), &tags("ml")).unwrap();
    f.vault.save(&f.key("b", b""), Output::Bytes(b"2"), &tags("web")).unwrap();
    f.vault.save(&f.key("c", b""), Output::Bytes(b"3"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.invalidate("team", Some("ml")).unwrap().len(), 1);
    assert_eq!(f.vault.list(&Filter::default()).unwrap().len(), 2);
    assert_eq!(f.vault.invalidate("team", None).unwrap().len(), 1);
    assert_eq!(f.vault.list(&Filter::default()).unwrap()[0].task, "c");
}

#[test]
fn tags_go_with_their_run_and_never_attach_to_a_later_one() {
    let f = fx();
    let tags = SaveOptions {
        tags: BTreeMap::from([
            ("team".to_owned(), "ml".to_owned()),
            ("v".to_owned(), "2".to_owned()),
        ]),
        ..Default::default()
    };
    let k = f.key("a", b"");
    let e = f.vault.save(&k, Output::Bytes(b"1"), &tags).unwrap();
    assert_eq!(f.vault.peek(&k).unwrap().unwrap().tags, tags.tags, "read back whole");
    f.vault.remove(&[e]).unwrap();
    // The removed run's row id is free again: the next run may get it, never its tags.
    let e = f.vault.save(&k, Output::Bytes(b"2"), &SaveOptions::default()).unwrap();
    assert!(f.vault.peek(&k).unwrap().unwrap().tags.is_empty());
    let tagged = Filter { tag: Some(("team".into(), None)), ..Filter::default() };
    assert!(f.vault.list(&tagged).unwrap().is_empty());
    // A resave keeps the old run's tags on the old run only.
    f.vault.save(&k, Output::Bytes(b"3"), &tags).unwrap();
    let all = Filter { all: true, tag: Some(("v".into(), Some("2".into()))), ..Filter::default() };
    let listed = f.vault.list(&all).unwrap();
    assert_eq!(listed.len(), 1);
    assert_ne!(listed[0].id, e.id);
}

#[test]
fn prefixes_resolve_runs_and_keys_and_report_ambiguity() {
    let f = fx();
    let k = f.key("t", b"i");
    let e = f.vault.save(&k, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.resolve(&e.id[..12]).unwrap().id, e.id);
    assert_eq!(f.vault.resolve(&e.key[..12]).unwrap().id, e.id);
    assert!(matches!(f.vault.resolve("zz"), Err(Error::Other(_))));
    for i in 0..40 {
        f.vault.save(&f.key("t", &[i]), Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    }
    let err = f.vault.resolve("a").unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    assert!(matches!(f.vault.resolve(&"0".repeat(64)), Err(Error::NotFound(_))));
}

#[test]
fn bad_destinations_are_clear_errors_and_change_nothing() {
    let f = fx();
    let k = f.key("t", b"i");
    f.vault.save(&k, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    let err = f.vault.get(&k, &f.out("missing-dir/x")).unwrap_err();
    assert!(err.to_string().contains("directory does not exist"), "{err}");
    let d = f.out("adir");
    std::fs::create_dir(&d).unwrap();
    let err = f.vault.get(&k, &d).unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");
    assert_eq!(f.vault.stats().unwrap().entries, 1);
}

#[test]
fn missing_output_is_a_clear_error() {
    let f = fx();
    let err = f
        .vault
        .save(&f.key("t", b"i"), Output::Path(&f.out("nope")), &SaveOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("output does not exist"), "{err}");
}

#[test]
fn export_import_round_trip_serves_the_same_hits() {
    let a = fx();
    let big = noise(300_000, 5);
    let k1 = a.key("t1", b"1");
    let k2 = a.key("t2", b"2");
    a.vault.save(&k1, Output::Bytes(&big), &SaveOptions::default()).unwrap();
    let dir_out = a.out("tree");
    std::fs::create_dir(&dir_out).unwrap();
    std::fs::write(dir_out.join("f"), b"file").unwrap();
    a.vault.save(&k2, Output::Path(&dir_out), &SaveOptions::default()).unwrap();
    let archive = a.out("vault.tar.zst");
    let entries = a.vault.list(&Filter::default()).unwrap();
    let rep = a.vault.export(&entries, &archive).unwrap();
    assert_eq!((rep.entries, rep.blobs), (2, 2));

    let b = fx();
    let rep = b.vault.import(&archive).unwrap();
    assert_eq!((rep.imported, rep.skipped), (2, 0));
    assert_eq!(b.vault.get_bytes(&k1).unwrap().unwrap().1, big);
    let dest = b.out("restored");
    assert!(b.vault.get(&k2, &dest).unwrap().is_some());
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"file");
    // Importing again skips what is there.
    let rep = b.vault.import(&archive).unwrap();
    assert_eq!((rep.imported, rep.skipped), (0, 2));
}

#[test]
fn an_export_of_many_batches_streams_and_imports_whole_with_each_blob_once() {
    let a = fx();
    let shared = noise(100_000, 6);
    let mut keys = Vec::new();
    for i in 0..2500u32 {
        let k = a.key("t", &i.to_le_bytes());
        // Every tenth entry holds the same large blob (on disk); the rest small ones of their own.
        let out = if i % 10 == 0 { shared.clone() } else { i.to_le_bytes().to_vec() };
        let tags = if i % 2 == 0 {
            [("half".to_owned(), "even".to_owned())].into()
        } else {
            Default::default()
        };
        a.vault
            .save(&k, Output::Bytes(&out), &SaveOptions { tags, ..SaveOptions::default() })
            .unwrap();
        keys.push((k, out));
    }
    let archive = a.out("all.tar.zst");
    let rep = a.vault.export_where(&Filter::default(), &archive).unwrap();
    assert_eq!(rep.entries, 2500);
    assert_eq!(rep.blobs, 2251, "the shared blob is written once, across batches");
    let names = {
        let mut t = tar::Archive::new(
            zstd::stream::Decoder::new(std::fs::File::open(&archive).unwrap()).unwrap(),
        );
        t.entries()
            .unwrap()
            .map(|m| m.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names.iter().filter(|n| n.starts_with("entries/")).count(), 3);
    let b = fx();
    let rep = b.vault.import(&archive).unwrap();
    assert_eq!((rep.imported, rep.skipped), (2500, 0));
    for (k, out) in keys.iter().step_by(7) {
        assert_eq!(&b.vault.get_bytes(k).unwrap().unwrap().1, out);
    }
    assert_eq!(std::fs::read_dir(b.vault.tmp_dir()).unwrap().count(), 0, "staging cleaned up");
    // A selection streams too.
    let even = a.out("even.tar.zst");
    let filter = Filter { tag: Some(("half".into(), Some("even".into()))), ..Filter::default() };
    assert_eq!(a.vault.export_where(&filter, &even).unwrap().entries, 1250);
}

/// Builds a tar.zst by hand, for hostile archives.
/// (name, type, data, link target) of one tar member.
type Member<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a str>);

fn raw_archive(path: &Path, members: &[Member<'_>]) {
    let file = std::fs::File::create(path).unwrap();
    let enc = zstd::stream::Encoder::new(file, 1).unwrap();
    let mut t = tar::Builder::new(enc);
    for (name, kind, data, link) in members {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        // set_path refuses `..`; write the raw name bytes like an attacker would.
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        t.append(&h, *data).unwrap();
    }
    t.into_inner().unwrap().finish().unwrap();
}

#[test]
fn tampered_and_hostile_archives_change_nothing() {
    let a = fx();
    let k = a.key("t", b"1");
    a.vault.save(&k, Output::Bytes(&noise(50_000, 1)), &SaveOptions::default()).unwrap();
    let good = a.out("good.tar.zst");
    a.vault.export(&a.vault.list(&Filter::default()).unwrap(), &good).unwrap();

    // Tamper: rewrite the archive with one blob byte flipped.
    let mut members = Vec::new();
    let mut t =
        tar::Archive::new(zstd::stream::Decoder::new(std::fs::File::open(&good).unwrap()).unwrap());
    for m in t.entries().unwrap() {
        let mut m = m.unwrap();
        let name = m.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut m, &mut data).unwrap();
        members.push((name, data));
    }
    let blob = members.iter().position(|(n, _)| n.starts_with("blobs/")).unwrap();
    members[blob].1[100] ^= 1;
    let tampered = a.out("tampered.tar.zst");
    let m: Vec<Member<'_>> =
        members.iter().map(|(n, d)| (n.as_str(), tar::EntryType::Regular, &d[..], None)).collect();
    raw_archive(&tampered, &m);

    let manifest = members[0].1.clone();
    let outside = a.out("outside");
    let hostile: Vec<(&str, Vec<Member<'_>>)> = vec![
        (
            "dotdot",
            vec![
                (MANIFEST_NAME, tar::EntryType::Regular, &manifest, None),
                ("../outside", tar::EntryType::Regular, b"pwned", None),
            ],
        ),
        (
            "absolute",
            vec![
                (MANIFEST_NAME, tar::EntryType::Regular, &manifest, None),
                ("/tmp/taskvault-pwned", tar::EntryType::Regular, b"pwned", None),
            ],
        ),
        (
            "symlink",
            vec![
                (MANIFEST_NAME, tar::EntryType::Regular, &manifest, None),
                ("blobs/link", tar::EntryType::Symlink, b"", Some("/etc")),
            ],
        ),
        (
            "hardlink",
            vec![
                (MANIFEST_NAME, tar::EntryType::Regular, &manifest, None),
                ("blobs/hl", tar::EntryType::Link, b"", Some("/etc/passwd")),
            ],
        ),
        (
            "device",
            vec![
                (MANIFEST_NAME, tar::EntryType::Regular, &manifest, None),
                ("dev", tar::EntryType::Char, b"", None),
            ],
        ),
    ];

    let b = fx();
    let before = b.vault.stats().unwrap();
    let err = b.vault.import(&tampered).unwrap_err();
    assert!(matches!(err, Error::BadArchive { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");
    for (name, members) in hostile {
        let p = a.out(&format!("{name}.tar.zst"));
        raw_archive(&p, &members);
        let err = b.vault.import(&p).unwrap_err();
        assert!(matches!(err, Error::BadArchive { .. }), "{name}: {err}");
    }
    assert!(!outside.exists());
    assert!(!Path::new("/tmp/taskvault-pwned").exists());
    let after = b.vault.stats().unwrap();
    assert_eq!((after.entries, after.total_bytes), (before.entries, before.total_bytes));
    assert_eq!(std::fs::read_dir(b.vault.tmp_dir()).unwrap().count(), 0, "staging cleaned up");
    assert!(b.vault.import(&good).is_ok());
}

const MANIFEST_NAME: &str = "taskvault-export.json";

#[test]
fn claim_lets_one_thread_compute_and_others_wait_for_the_entry() {
    let f = fx();
    let key = f.key("slow", b"x");
    let computed = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let v = Vault::open(f.vault.settings.clone()).unwrap();
                match v.claim(&key).unwrap() {
                    Claim::Compute(guard) => {
                        computed.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        v.save(&key, Output::Bytes(b"result"), &SaveOptions::default()).unwrap();
                        drop(guard);
                    }
                    Claim::Ready(e) => assert_eq!(e.task, "slow"),
                    Claim::Failed(m) => panic!("unexpected failure {m}"),
                }
            });
        }
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    let files: Vec<_> = std::fs::read_dir(&f.vault.locks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files.iter().all(|f| f.starts_with("claims-") && f.len() == "claims-00".len()),
        "claims lock bytes of the shard files; nothing piles up per key: {files:?}"
    );
    assert!(files.len() <= crate::claim::CLAIM_SHARDS);
}

#[test]
fn claim_waiters_receive_the_failure() {
    let f = fx();
    let key = f.key("fails", b"x");
    let computed = std::sync::atomic::AtomicU32::new(0);
    let failed = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let v = Vault::open(f.vault.settings.clone()).unwrap();
                match v.claim(&key).unwrap() {
                    Claim::Compute(guard) => {
                        computed.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        guard.fail("boom").unwrap();
                    }
                    Claim::Failed(m) => {
                        assert_eq!(m, "boom");
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Claim::Ready(_) => panic!("nothing was saved"),
                }
            });
        }
    });
    assert_eq!((computed.into_inner(), failed.into_inner()), (1, 3));
    // A later claimant is not handed the stale failure: it computes.
    assert!(matches!(f.vault.claim(&key).unwrap(), Claim::Compute(_)));
}

#[test]
fn a_dropped_claim_without_result_hands_over_the_claim() {
    let f = fx();
    let key = f.key("crashy", b"x");
    let Claim::Compute(g) = f.vault.claim(&key).unwrap() else { panic!("first claim computes") };
    let handle = std::thread::spawn({
        let settings = f.vault.settings.clone();
        let key = key.clone();
        move || {
            let v = Vault::open(settings).unwrap();
            matches!(v.claim(&key).unwrap(), Claim::Compute(_))
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(100));
    drop(g); // as if the claimant died without saving or failing
    assert!(handle.join().unwrap(), "the waiter takes over the computation");
}

#[test]
fn restore_over_an_existing_file_replaces_it_and_leaves_no_temporaries() {
    let f = fx();
    for (i, data) in [b"small".to_vec(), noise(3 << 20, 8)].into_iter().enumerate() {
        let key = f.key("t", &[i as u8]);
        f.vault.save(&key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
        let dest = f.out(&format!("existing{i}"));
        std::fs::write(&dest, b"old content that is longer than the new one?").unwrap();
        f.vault.get(&key, &dest).unwrap().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
    let stray: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn hits_are_journaled_and_folded_into_stats_and_lru_order() {
    let f = fx();
    let key = f.key("t", b"i");
    let opts = SaveOptions { duration_ms: Some(1500), ..Default::default() };
    let e = f.vault.save(&key, Output::Bytes(b"v"), &opts).unwrap();
    for _ in 0..3 {
        f.vault.get_bytes(&key).unwrap().unwrap();
    }
    f.vault.get_bytes(&f.key("t", b"other")).unwrap();
    // The hit path did not touch the database: the run still shows no access...
    assert_eq!(f.vault.meta().run(&e.id).unwrap().unwrap().access_count, 0);
    // ...until something reads access data.
    let s = f.vault.stats().unwrap();
    assert_eq!((s.counters.hits, s.counters.misses, s.counters.time_saved_ms), (3, 1, 4500));
    let run = f.vault.meta().run(&e.id).unwrap().unwrap();
    assert_eq!(run.access_count, 3);
    assert!(run.last_access_ms >= e.created_ms);
    assert_eq!(f.vault.stats().unwrap().counters.hits, 3, "folded once");
}

#[test]
fn resaving_stored_content_reuses_the_blob_without_staging() {
    let f = fx();
    let data = noise(2 << 20, 21);
    let src = f.file("out", &data);
    f.vault.save(&f.key("a", b"1"), Output::Path(&src), &SaveOptions::default()).unwrap();
    let before = f.blob_files();
    let e = f.vault.save(&f.key("b", b"2"), Output::Path(&src), &SaveOptions::default()).unwrap();
    assert_eq!(f.blob_files(), before, "no second copy");
    assert_eq!(std::fs::read_dir(f.vault.tmp_dir()).unwrap().count(), 0);
    assert_eq!(f.vault.get_bytes(&f.key("b", b"2")).unwrap().unwrap().1, data);
    assert_eq!(e.size, data.len() as u64);
}

#[test]
fn a_reused_blob_that_vanishes_before_commit_is_stored_again() {
    let f = fx();
    let data = noise(1 << 20, 22);
    let src = f.file("out", &data);
    f.vault.save(&f.key("a", b"1"), Output::Path(&src), &SaveOptions::default()).unwrap();
    // Stage as a reuse, then remove the only entry (and so the blob) before committing.
    let mut staging = stage::Staging::reusing_stored(&f.vault);
    staging.file(&src).unwrap();
    let a = f.vault.resolve(&f.key("a", b"1").digest().hex()).unwrap();
    f.vault.remove(&[a]).unwrap();
    assert!(f.blob_files().is_empty());
    let key = f.key("b", b"2");
    let e = Entry {
        id: "f".repeat(64),
        key: key.digest().hex(),
        namespace: key.namespace.clone(),
        task: key.task.clone(),
        status: Status::Live,
        inputs: key.inputs.clone(),
        extras: vec![],
        output_kind: OutputKind::File,
        outputs: vec![file_node(String::new(), 0o644, &staging.blobs()[0])],
        size: data.len() as u64,
        created_ms: 1,
        last_access_ms: 1,
        access_count: 0,
        expires_ms: None,
        ttl_explicit: false,
        duration_ms: None,
        host: String::new(),
        user: String::new(),
        tags: BTreeMap::new(),
        parent: None,
        details: serde_json::Value::Null,
        console: None,
        exit_code: None,
        ingredients: None,
        embedded: None,
    };
    let err = f.vault.commit(&e, staging.blobs()).unwrap_err();
    assert!(matches!(err, Error::BlobVanished(_)), "{err}");
    // The public save path recovers by staging the bytes.
    f.vault.save(&f.key("b", b"2"), Output::Path(&src), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.get_bytes(&f.key("b", b"2")).unwrap().unwrap().1, data);
}

#[test]
fn a_thousand_entries_over_a_cap_evict_in_lru_order() {
    let f = fx_with(|s| {
        s.max_size_bytes = Some(1000 * 1000);
        s.low_water_percent = 90;
    });
    for i in 0..1000u32 {
        let k = f.key("t", &i.to_le_bytes());
        f.vault.save(&k, Output::Bytes(&noise(1000, i as u64)), &SaveOptions::default()).unwrap();
    }
    assert_eq!(f.vault.stats().unwrap().entries, 1000);
    // Use the first 50 so that they are the most recently used.
    for i in 0..50u32 {
        assert!(f.vault.get_bytes(&f.key("t", &i.to_le_bytes())).unwrap().is_some());
    }
    f.vault
        .save(&f.key("t", b"over"), Output::Bytes(&noise(1000, 99_999)), &SaveOptions::default())
        .unwrap();
    let s = f.vault.stats().unwrap();
    assert!(s.total_bytes <= 900_000, "{}", s.total_bytes);
    assert_eq!(s.counters.evictions, 101);
    for i in 0..50u32 {
        assert!(f.vault.peek(&f.key("t", &i.to_le_bytes())).unwrap().is_some(), "{i} was used");
    }
    assert!(f.vault.peek(&f.key("t", &50u32.to_le_bytes())).unwrap().is_none());
}

#[test]
fn a_newer_schema_is_refused_not_guessed_at() {
    let f = fx();
    let db = f.vault.settings.vault_dir.join("cache.db");
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 99).unwrap();
    // The database is opened on first use; that use is refused.
    let v = Vault::open(f.vault.settings.clone()).unwrap();
    let err = v.stats().unwrap_err();
    assert!(matches!(err, Error::SchemaTooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade taskvault"));
}

fn reopen(f: &Fx) -> Vault {
    Vault::open(f.vault.settings.clone()).unwrap()
}

#[test]
fn hits_are_served_from_hot_records_without_the_database() {
    let f = fx();
    let small = f.key("small", b"1");
    let big = f.key("big", b"2");
    f.vault.save(&small, Output::Bytes(b"tiny output"), &SaveOptions::default()).unwrap();
    f.vault.save(&big, Output::Bytes(&noise(2 << 20, 3)), &SaveOptions::default()).unwrap();
    // Make the database unreadable: a hit must not need it.
    let db = f.vault.settings.vault_dir.join("cache.db");
    let saved = std::fs::read(&db).unwrap();
    std::fs::write(&db, b"not a database").unwrap();
    let v = reopen(&f);
    assert_eq!(v.get_bytes(&small).unwrap().unwrap().1, b"tiny output");
    let dest = f.out("big.out");
    assert!(v.get(&big, &dest).unwrap().is_some());
    assert_eq!(std::fs::read(&dest).unwrap(), noise(2 << 20, 3));
    assert!(v.stats().is_err(), "the database really is unreadable");
    std::fs::write(&db, saved).unwrap();
    let s = reopen(&f).stats().unwrap();
    assert_eq!(s.counters.hits, 2, "hot hits are counted once the journal is folded");
}

#[test]
fn every_removal_forgets_its_hot_record() {
    let f = fx_with(|s| s.inline_max_bytes = 0);
    let save = |k: &TaskKey, seed: u64, opts: &SaveOptions| {
        f.vault.save(k, Output::Bytes(&noise(10_000, seed)), opts).unwrap();
    };
    let tagged =
        SaveOptions { tags: BTreeMap::from([("t".into(), "x".into())]), ..Default::default() };
    let (k1, k2, k3, k4) = (f.key("a", b"1"), f.key("a", b"2"), f.key("a", b"3"), f.key("a", b"4"));
    save(&k1, 1, &SaveOptions::default());
    save(&k2, 2, &tagged);
    save(
        &k3,
        3,
        &SaveOptions { ttl: Some(std::time::Duration::from_secs(1)), ..Default::default() },
    );
    save(&k4, 4, &SaveOptions::default());
    let e1 = f.vault.resolve(&k1.digest().hex()).unwrap();
    f.vault.remove(&[e1]).unwrap();
    assert!(reopen(&f).get_bytes(&k1).unwrap().is_none(), "rm");
    f.vault.invalidate("t", Some("x")).unwrap();
    assert!(reopen(&f).get_bytes(&k2).unwrap().is_none(), "invalidate");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(reopen(&f).get_bytes(&k3).unwrap().is_none(), "expired");
    f.vault.gc(None, Some(0)).unwrap();
    assert!(reopen(&f).get_bytes(&k4).unwrap().is_none(), "evicted");
    save(&k1, 1, &SaveOptions::default());
    f.vault.clear().unwrap();
    assert!(reopen(&f).get_bytes(&k1).unwrap().is_none(), "clear");
    let hot = f.vault.settings.vault_dir.join("hot");
    let left: Vec<_> =
        std::fs::read_dir(&hot).unwrap().flatten().filter(|e| e.path().is_file()).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_crashed_removal_turns_the_hot_path_off_until_repaired() {
    let f = fx();
    let k = f.key("t", b"1");
    f.vault.save(&k, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    // Simulate a removal that committed and then died before forgetting the hot record.
    let conn = rusqlite::Connection::open(f.vault.settings.vault_dir.join("cache.db")).unwrap();
    conn.execute("DELETE FROM entries", []).unwrap();
    let marker = f.vault.settings.vault_dir.join("hot/.pending/999999999-0-0");
    std::fs::create_dir_all(&marker).unwrap();
    assert!(reopen(&f).get_bytes(&k).unwrap().is_none(), "the stale record is not served");
    assert!(!marker.exists(), "the dead removal's mark is cleared");
    assert!(!f.vault.settings.vault_dir.join("hot").join(k.digest().hex()).exists());
    // A mark of a live process keeps the hot path off, without wiping anything.
    f.vault.save(&k, Output::Bytes(b"v2"), &SaveOptions::default()).unwrap();
    let live = f.vault.settings.vault_dir.join(format!("hot/.pending/{}-9-9", std::process::id()));
    std::fs::create_dir(&live).unwrap();
    assert_eq!(reopen(&f).get_bytes(&k).unwrap().unwrap().1, b"v2", "served by the database");
    assert!(live.exists());
}

#[test]
fn a_damaged_hot_record_falls_back_to_the_database() {
    let f = fx();
    let k = f.key("t", b"1");
    f.vault.save(&k, Output::Bytes(b"the real output"), &SaveOptions::default()).unwrap();
    let record = f.vault.settings.vault_dir.join("hot").join(k.digest().hex());
    // Unparseable.
    std::fs::write(&record, b"{garbage").unwrap();
    assert_eq!(reopen(&f).get_bytes(&k).unwrap().unwrap().1, b"the real output");
    // Parseable, but its inline bytes are wrong: verification fails, the database answers, and
    // the good blob is not quarantined.
    f.vault.save(&k, Output::Bytes(b"the real output"), &SaveOptions::default()).unwrap();
    let text = std::fs::read_to_string(&record).unwrap();
    let forged = base64::engine::general_purpose::STANDARD.encode(b"the fake output");
    let real = base64::engine::general_purpose::STANDARD.encode(b"the real output");
    assert!(text.contains(&real));
    std::fs::write(&record, text.replace(&real, &forged)).unwrap();
    let v = reopen(&f);
    assert_eq!(v.get_bytes(&k).unwrap().unwrap().1, b"the real output");
    assert_eq!(v.stats().unwrap().counters.corrupt, 0);
    assert!(!record.exists() || !std::fs::read_to_string(&record).unwrap().contains(&forged));
}

#[test]
fn a_long_lived_vault_keeps_only_the_served_entrys_blob_rows() {
    let f = fx();
    let keys: Vec<TaskKey> = (0..20u8).map(|i| f.key("t", &[i])).collect();
    for (i, k) in keys.iter().enumerate() {
        f.vault.save(k, Output::Bytes(&noise(1000, i as u64)), &SaveOptions::default()).unwrap();
    }
    let v = reopen(&f);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(v.get_bytes(k).unwrap().unwrap().1, noise(1000, i as u64));
    }
    assert_eq!(v.overlay.lock().unwrap().len(), 1);
}

#[test]
fn gc_clears_a_stale_removal_mark_even_if_its_pid_is_in_use() {
    let f = fx();
    let k = f.key("t", b"1");
    f.vault.save(&k, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    // A mark named after a live process (ours), but two hours old.
    let mark = f.vault.settings.vault_dir.join(format!("hot/.pending/{}-1-1", std::process::id()));
    std::fs::create_dir_all(&mark).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::open(&mark).unwrap().set_modified(two_hours_ago).unwrap();
    assert!(f.vault.hot.removal_pending());
    f.vault.gc(None, None).unwrap();
    assert!(!mark.exists());
    assert!(!f.vault.hot.removal_pending(), "the hot path is back on");
    // Every record was dropped with it (one might have been stale); the next save writes anew.
    assert!(f.vault.hot.read(&k.digest().hex()).is_none());
    f.vault.save(&k, Output::Bytes(b"v"), &SaveOptions::default()).unwrap();
    assert!(f.vault.hot.read(&k.digest().hex()).is_some());
}

fn resident(f: &Fx) -> Vault {
    Vault::open(f.vault.settings.clone()).unwrap().resident().unwrap()
}

#[test]
fn a_resident_vault_serves_from_memory_until_another_vault_removes_or_replaces() {
    let f = fx();
    let r = resident(&f);
    let key = f.key("t", b"in");
    f.vault.save(&key, Output::Bytes(b"v1"), &SaveOptions::default()).unwrap();
    assert_eq!(&r.fetch(&key).unwrap().unwrap().bytes[..], b"v1");
    // Served from memory from now on: the database is not asked (its row is gone behind its
    // back here, which no real writer does, to tell the two apart).
    f.vault.meta().remove_keys(&[key.digest().hex()], None).unwrap();
    assert!(r.fetch(&key).unwrap().is_some(), "kept in memory while the generation holds");
    // A real removal in another vault moves the generation on.
    f.vault.save(&key, Output::Bytes(b"v1"), &SaveOptions::default()).unwrap();
    let runs = [f.vault.peek(&key).unwrap().unwrap()];
    f.vault.remove(&runs).unwrap();
    assert!(r.fetch(&key).unwrap().is_none(), "a removal elsewhere is seen at once");
    // So does a save that replaces the live run.
    f.vault.save(&key, Output::Bytes(b"v2"), &SaveOptions::default()).unwrap();
    assert_eq!(&r.fetch(&key).unwrap().unwrap().bytes[..], b"v2");
    f.vault.save(&key, Output::Bytes(b"v3"), &SaveOptions::default()).unwrap();
    assert_eq!(&r.fetch(&key).unwrap().unwrap().bytes[..], b"v3");
}

#[test]
fn a_resident_vault_counts_hits_in_batches_and_writes_them_before_they_are_read() {
    let f = fx();
    let r = resident(&f);
    let key = f.key("t", b"in");
    r.save(&key, Output::Bytes(b"out"), &SaveOptions::default()).unwrap();
    for _ in 0..5 {
        r.fetch(&key).unwrap().unwrap();
    }
    assert_eq!(f.vault.stats().unwrap().counters.hits, 0, "still buffered in the resident vault");
    assert_eq!(r.stats().unwrap().counters.hits, 5, "reading flushes first");
    let key2 = f.key("t", b"other");
    r.fetch(&key2).unwrap();
    drop(r);
    let s = f.vault.stats().unwrap().counters;
    assert_eq!((s.hits, s.misses), (5, 1), "dropping the vault writes what was buffered");
    let audit = std::fs::read_to_string(f.vault.audit_path()).unwrap();
    assert_eq!(audit.matches(" HIT ").count(), 5);
    assert_eq!(audit.matches(" MISS ").count(), 1);
}

#[test]
fn deferred_saves_hold_their_claim_until_committed() {
    let f = fx();
    let r = resident(&f);
    let key = f.key("t", b"in");
    let Claim::Compute(g) = r.claim(&key).unwrap() else { panic!("nobody else holds it") };
    let e = r.save_deferred(&key, b"out", &SaveOptions::default(), Some(g.detach())).unwrap();
    assert_eq!(&r.fetch(&key).unwrap().unwrap().bytes[..], b"out", "served here at once");
    assert!(f.vault.peek(&key).unwrap().is_none(), "not committed yet");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| match f.vault.claim(&key).unwrap() {
            Claim::Ready(got) => got.id,
            other => panic!("the waiter must get the saved entry, got {other:?}"),
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the claim is held until the commit");
        r.commit_deferred_when_due(std::time::Duration::from_secs(5)).unwrap();
        assert_eq!(waiter.join().unwrap(), e.id);
    });
    // Dropping a resident vault commits what waits.
    let key2 = f.key("t", b"in2");
    r.save_deferred(&key2, b"out2", &SaveOptions::default(), None).unwrap();
    drop(r);
    assert!(f.vault.peek(&key2).unwrap().is_some());
}

#[test]
fn a_resident_vault_never_leaves_a_stale_hot_record() {
    let f = fx();
    let key = f.key("t", b"in");
    f.vault.save(&key, Output::Bytes(b"old"), &SaveOptions::default()).unwrap();
    assert!(f.vault.hot.read(&key.digest().hex()).is_some());
    let r = resident(&f);
    r.save(&key, Output::Bytes(b"new"), &SaveOptions::default()).unwrap();
    assert!(f.vault.hot.read(&key.digest().hex()).is_none(), "the old record went");
    assert_eq!(f.vault.get_bytes(&key).unwrap().unwrap().1, b"new");
    // Deferred saves, committed in a batch, too.
    f.vault.save(&key, Output::Bytes(b"old"), &SaveOptions::default()).unwrap();
    assert!(f.vault.hot.read(&key.digest().hex()).is_some());
    r.save_deferred(&key, b"newer", &SaveOptions::default(), None).unwrap();
    r.commit_deferred().unwrap();
    assert!(f.vault.hot.read(&key.digest().hex()).is_none(), "the old record went");
    assert_eq!(f.vault.get_bytes(&key).unwrap().unwrap().1, b"newer");
}

#[test]
fn fetch_or_claim_serves_claims_and_recomputes_what_fails_verification() {
    let f = fx();
    let r = resident(&f);
    let key = f.key("t", b"in");
    // Nothing there: the claim, and a miss counted.
    let Fetched::Compute(g) = r.fetch_or_claim(&key, None).unwrap() else {
        panic!("nothing is stored")
    };
    // Another caller waits for it, then gets the result saved under it.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| match f.vault.fetch_or_claim(&key, None).unwrap() {
            Fetched::Hit(got) => got.bytes.to_vec(),
            other => panic!("the waiter must get the saved result, got {other:?}"),
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "the claim is held");
        r.save(&key, Output::Bytes(&noise(5 << 20, 3)), &SaveOptions::default()).unwrap();
        drop(g);
        assert_eq!(waiter.join().unwrap(), noise(5 << 20, 3));
    });
    // Too large to keep in memory: read straight into the caller's buffer when it gives one.
    struct Buf(Vec<u8>);
    impl Destination for Buf {
        fn buffer(&mut self, len: usize) -> Result<&mut [u8]> {
            self.0 = vec![0xAA; len];
            Ok(&mut self.0)
        }
    }
    let fresh = resident(&f);
    let mut buf = Buf(Vec::new());
    let Fetched::Written(e) = fresh.fetch_or_claim(&key, Some(&mut buf)).unwrap() else {
        panic!("stored, and over the memory limit")
    };
    assert_eq!((e.size, &buf.0), (5 << 20, &noise(5 << 20, 3)));
    let Fetched::Hit(s) = fresh.fetch_or_claim(&key, None).unwrap() else { panic!("stored") };
    assert_eq!(&s.bytes[..], &noise(5 << 20, 3)[..]);
    // A blob that fails verification is never served: the caller gets the claim instead.
    let blob = f.blob_files().pop().unwrap();
    make_writable(&blob);
    let mut b = std::fs::read(&blob).unwrap();
    b[1000] ^= 1;
    std::fs::write(&blob, b).unwrap();
    let other = resident(&f);
    let got = other.fetch_or_claim(&key, Some(&mut buf)).unwrap();
    assert!(matches!(got, Fetched::Compute(_)), "never served: {got:?}");
    drop((r, fresh, other)); // they write the hits and misses they buffered
    let c = f.vault.stats().unwrap().counters;
    assert_eq!((c.misses, c.corrupt), (2, 1));
}

#[test]
fn reused_claim_descriptions_still_exclude_threads_and_are_unlocked_when_released() {
    let f = fx();
    // Claims taken and released leave their descriptions for the next claims.
    for i in 0..4u8 {
        let Claim::Compute(g) = f.vault.claim(&f.key("warm", &[i])).unwrap() else { panic!() };
        drop(g);
    }
    let key = f.key("t", b"in");
    let Claim::Compute(first) = f.vault.claim(&key).unwrap() else { panic!("nobody holds it") };
    std::thread::scope(|s| {
        let waiter = s.spawn(|| matches!(f.vault.claim(&key).unwrap(), Claim::Compute(_)));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!waiter.is_finished(), "a second claim of the same key waits");
        drop(first);
        assert!(waiter.join().unwrap(), "handed over once released");
    });
    // Another vault (as another process would) can claim it: the released byte is unlocked
    // although its description stays open for reuse.
    let other = Vault::open(f.vault.settings.clone()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(matches!(other.claim(&key).unwrap(), Claim::Compute(_))).unwrap());
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got, Ok(true), "the claim was not left locked");
    });
}

#[test]
fn waiting_saves_never_hold_more_claims_than_the_descriptor_limit_allows() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    // Lowers this process's limit to a few dozen more descriptors than are open now, before
    // anything sizes itself on it: only where the test has the process to itself (nextest).
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
        eprintln!("skipped: changes a process-wide limit; run it with cargo nextest");
        return;
    }
    let open_now = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = Some(open_now + 48);
    setrlimit(Resource::Nofile, limit).unwrap();
    let f = fx();
    let r = resident(&f);
    for i in 0..300u32 {
        let key = f.key("t", &i.to_le_bytes());
        let Claim::Compute(g) = r.claim(&key).unwrap() else { panic!("nobody else claims") };
        r.save_deferred(&key, b"out", &SaveOptions::default(), Some(g.detach())).unwrap();
    }
    r.commit_deferred().unwrap();
    assert_eq!(f.vault.stats().unwrap().entries, 300);
}

#[test]
fn a_process_forked_while_another_thread_is_in_sqlite_can_use_the_vault() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // A process pool's workers are forked while the parent's threads commit: the child must
    // not inherit SQLite's global locks held (it would hang at its first allocation). Forking
    // is only sound where the test has the process to itself (nextest).
    if std::env::var("NEXTEST_EXECUTION_MODE").as_deref() != Ok("process-per-test") {
        eprintln!("skipped: forks the test process; run it with cargo nextest");
        return;
    }
    let f = fx();
    let r = resident(&f);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = f.key("busy", &i.to_le_bytes());
                r.save_deferred(&k, &i.to_le_bytes(), &SaveOptions::default(), None).unwrap();
                r.commit_deferred().unwrap();
                i += 1;
            }
        });
        for n in 0..60u32 {
            let key = f.key("child", &n.to_le_bytes());
            // SAFETY: the child opens a vault, saves and leaves with `_exit`, never returning
            // into the test harness; the parent only waits for it.
            #[allow(unsafe_code)]
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let ok = std::panic::catch_unwind(|| {
                    let v = Vault::open(f.vault.settings.clone()).unwrap();
                    v.save(&key, Output::Bytes(b"from the child"), &SaveOptions::default())
                        .unwrap();
                })
                .is_ok();
                #[allow(unsafe_code)]
                // SAFETY: ends the child without running the parent's destructors or harness.
                unsafe {
                    libc::_exit(if ok { 0 } else { 1 })
                };
            }
            assert!(pid > 0, "fork failed");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let status = loop {
                let mut status = 0;
                #[allow(unsafe_code)]
                // SAFETY: waits for our own child, with a valid pointer to `status`.
                let w = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
                if w == pid {
                    break Some(status);
                }
                if std::time::Instant::now() > deadline {
                    #[allow(unsafe_code)]
                    // SAFETY: kills and reaps our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, &mut status, 0);
                    }
                    break None;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            };
            if status != Some(0) {
                stop.store(true, Ordering::Relaxed);
                panic!("child {n} {}", if status.is_none() { "hung" } else { "failed" });
            }
            assert!(f.vault.peek(&key).unwrap().is_some(), "the child's save is there");
        }
        stop.store(true, Ordering::Relaxed);
    });
}

#[test]
fn fetch_present_answers_a_batch_in_order_counting_hits_only() {
    let f = fx();
    let r = resident(&f);
    let keys: Vec<_> = (0..6u8).map(|i| f.key("t", &[i])).collect();
    for k in keys.iter().step_by(2) {
        f.vault.save(k, Output::Bytes(k.digest().as_bytes()), &SaveOptions::default()).unwrap();
    }
    // A directory output is left to the per-key path.
    let dir = f.file("d/x", b"x").parent().unwrap().to_owned();
    let dir_key = f.key("t", b"dir");
    f.vault.save(&dir_key, Output::Path(&dir), &SaveOptions::default()).unwrap();
    let asked: Vec<&TaskKey> = keys.iter().chain([&dir_key]).collect();
    let got = r.fetch_present(&asked).unwrap();
    let found: Vec<bool> = got.iter().map(Option::is_some).collect();
    assert_eq!(found, [true, false, true, false, true, false, false]);
    for (k, s) in keys.iter().zip(&got) {
        if let Some(s) = s {
            assert_eq!(&s.bytes[..], k.digest().as_bytes(), "each answer is its own key's");
        }
    }
    // Served again from memory, the same.
    assert_eq!(r.fetch_present(&asked).unwrap().iter().filter(|s| s.is_some()).count(), 3);
    let c = r.stats().unwrap().counters;
    assert_eq!((c.hits, c.misses), (6, 0), "misses are left to the claim that follows");
}

#[test]
fn small_outputs_live_in_their_run_rows_and_a_damaged_one_is_never_served() {
    let f = fx();
    let k = f.key("t", b"small");
    let first = f.vault.save(&k, Output::Bytes(b"tiny"), &SaveOptions::default()).unwrap();
    let src = f.file("tiny.txt", b"tiny file");
    let kf = f.key("f", b"small");
    f.vault.save(&kf, Output::Path(&src), &SaveOptions::default()).unwrap();
    // Just over the limit: a row of `blobs` as before.
    let limit = crate::store::sqlite::SMALL_MAX as usize;
    let kb = f.key("b", b"over");
    f.vault.save(&kb, Output::Bytes(&vec![5u8; limit + 1]), &SaveOptions::default()).unwrap();
    let s = f.vault.stats().unwrap();
    assert_eq!(s.census.blobs, 1, "only the output over {limit} bytes has a blob row");
    assert_eq!((s.census.small_outputs, s.census.small_bytes), (2, 4 + 9));
    assert_eq!(s.counters.stored_bytes, (4 + 9 + limit + 1) as i64);
    assert_eq!(f.vault.get_bytes(&k).unwrap().unwrap().1, b"tiny");
    let dest = f.out("got");
    f.vault.get(&kf, &dest).unwrap().expect("hit");
    assert_eq!(std::fs::read(&dest).unwrap(), b"tiny file");

    // A save that supersedes: the history run keeps its output in its row.
    f.vault.save(&k, Output::Bytes(b"tiny 2"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.stats().unwrap().counters.stored_bytes, (4 + 6 + 9 + limit + 1) as i64);
    let old = f.vault.resolve(&first.id).unwrap();
    assert_eq!(old.status, Status::Superseded);
    assert!(f.vault.restore_run(&old, &f.out("old")).unwrap());
    assert_eq!(std::fs::read(f.out("old")).unwrap(), b"tiny");
    // Export and import carry small outputs like any other.
    let archive = f.out("x.tar.zst");
    f.vault.export_where(&Filter::default(), &archive).unwrap();
    let g = fx();
    assert_eq!(g.vault.import(&archive).unwrap().imported, 3);
    assert_eq!(g.vault.get_bytes(&k).unwrap().unwrap().1, b"tiny 2");

    // Bytes changed in the row: the run is damaged, never served, removed and counted.
    let conn = rusqlite::Connection::open(f.vault.settings.vault_dir.join("cache.db")).unwrap();
    let changed = conn
        .execute("UPDATE entries SET small = CAST('tinx 2' AS BLOB) WHERE small = CAST('tiny 2' AS BLOB)", [])
        .unwrap();
    assert_eq!(changed, 1);
    // (Its hot record holds a verified copy of its own: the database is asked without it.)
    std::fs::remove_dir_all(f.vault.settings.vault_dir.join("hot")).unwrap();
    assert!(f.vault.get_bytes(&k).unwrap().is_none());
    let s = f.vault.stats().unwrap();
    assert_eq!((s.counters.corrupt, s.census.runs), (1, 3));
    // The file output damaged too: verify finds and removes it.
    conn.execute(
        "UPDATE entries SET small = CAST('tiny filE' AS BLOB) WHERE small = CAST('tiny file' AS BLOB)",
        [],
    )
    .unwrap();
    let report = f.vault.verify().unwrap();
    assert_eq!(report.damaged_rows.len(), 1, "{report:?}");
    assert!(f.vault.get(&kf, &f.out("got2")).unwrap().is_none());
    assert!(!f.out("got2").exists());
    // Removing everything frees every byte, small or not.
    f.vault.clear().unwrap();
    assert_eq!(f.vault.stats().unwrap().counters.stored_bytes, 0);
    // The next save of a damaged key restores it.
    f.vault.save(&k, Output::Bytes(b"tiny 3"), &SaveOptions::default()).unwrap();
    assert_eq!(f.vault.get_bytes(&k).unwrap().unwrap().1, b"tiny 3");
}

#[test]
fn evicting_small_outputs_frees_their_bytes() {
    let f = fx();
    for i in 0..10u8 {
        let k = f.key("t", &[i]);
        f.vault.save(&k, Output::Bytes(&[i; 40]), &SaveOptions::default()).unwrap();
    }
    assert_eq!(f.vault.stats().unwrap().counters.stored_bytes, 400);
    f.vault.gc(None, Some(200)).unwrap();
    let s = f.vault.stats().unwrap();
    assert!(s.counters.stored_bytes <= 200, "{:?}", s.counters);
    assert_eq!(s.counters.stored_bytes, s.entries * 40, "{s:?}");
}

#[test]
fn an_admitted_entry_takes_small_blobs_from_memory_and_refuses_bytes_that_do_not_match() {
    let a = fx();
    let b = fx();
    let key = a.key("t", b"in");
    let data = b"a small result".to_vec();
    a.vault.save(&key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
    let x = a.vault.export_entry(&key.digest().hex(), "t", 1 << 16, 1 << 20, "test").unwrap();
    let x = x.expect("exported");
    let (d, bytes) = x.small[0].clone();
    assert_eq!(bytes, data);

    // Bytes that do not make the digest: refused, nothing stored.
    let wrong = b"another result".to_vec();
    let staged = |g: &Digest| (*g == d).then_some(Arrived::Bytes(&wrong));
    let err = b.vault.admit(x.entry.clone(), &staged, true, "test").unwrap_err();
    assert!(matches!(err, Error::BadInput { .. }), "{err}");
    assert!(b.vault.get_bytes(&key).unwrap().is_none());

    // The right bytes: the run is live and served.
    let staged = |g: &Digest| (*g == d).then_some(Arrived::Bytes(&bytes));
    assert_eq!(b.vault.admit(x.entry.clone(), &staged, true, "test").unwrap(), Admitted::Committed);
    assert_eq!(b.vault.get_bytes(&key).unwrap().map(|(_, b)| b), Some(data.clone()));
    assert_eq!(b.vault.admit(x.entry, &staged, true, "test").unwrap(), Admitted::AlreadyLive);
}

#[test]
fn a_received_file_is_stored_as_bytes_and_one_that_does_not_match_its_digest_is_refused() {
    let f = fx();
    let alg = f.vault.settings.algorithm;
    for (n, data) in [(1usize, noise(100, 3)), (2, noise(300_000, 4)), (3, text(300_000))] {
        let key = f.key("tool", format!("{n}").as_bytes());
        let path = f.vault.staging_path("test-");
        std::fs::write(&path, &data).unwrap();
        let digest = alg.digest(&data);
        let e =
            f.vault.save(&key, Output::Received { path: &path, digest }, &SaveOptions::default());
        let e = e.unwrap();
        assert_eq!(e.output_kind, OutputKind::Bytes);
        assert_eq!(e.size, data.len() as u64);
        assert_eq!(f.vault.get_bytes(&key).unwrap().map(|(_, b)| b), Some(data.clone()));
        let _ = std::fs::remove_file(&path);

        // The same bytes under a digest they do not make.
        let key = f.key("tool", format!("wrong {n}").as_bytes());
        std::fs::write(&path, &data).unwrap();
        let digest = alg.digest(format!("something else {n}").as_bytes());
        let out = Output::Received { path: &path, digest };
        let saved = f.vault.save(&key, out, &SaveOptions::default());
        // Small and compressible files are hashed again as they are staged; a large
        // incompressible one is taken on the caller's word (it hashed the bytes as they came).
        if data.len() <= f.vault.settings.inline_max_bytes as usize || n == 3 {
            assert!(saved.is_err(), "{n}: a mismatched digest was accepted");
            assert!(f.vault.get_bytes(&key).unwrap().is_none());
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// `data` as a server receives an upload: a file of the vault's temporary directory.
fn received(f: &Fx, data: &[u8]) -> PathBuf {
    let path = f.vault.staging_path("test-");
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn a_received_file_whose_blob_is_stored_already_is_referenced_not_kept_again() {
    let f = fx();
    let alg = f.vault.settings.algorithm;
    // Large and incompressible: the kind taken as it is (synced and moved in) when new.
    let data = noise(300_000, 5);
    let digest = alg.digest(&data);
    let receive = || received(&f, &data);
    let first = receive();
    let a = f.key("tool", b"first");
    f.vault.save(&a, Output::Received { path: &first, digest }, &SaveOptions::default()).unwrap();
    let blobs_before = f.vault.meta().blobs().unwrap().len();

    // The same artifact uploaded again under another key: one blob, both keys served, and
    // the second upload's file is gone from the vault's temporary directory.
    let second = receive();
    let b = f.key("tool", b"again");
    f.vault.save(&b, Output::Received { path: &second, digest }, &SaveOptions::default()).unwrap();
    assert!(!second.exists(), "the duplicate upload was left behind");
    assert_eq!(f.vault.meta().blobs().unwrap().len(), blobs_before);
    for k in [&a, &b] {
        assert_eq!(f.vault.get_bytes(k).unwrap().map(|(_, b)| b), Some(data.clone()));
    }
    let report = f.vault.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.orphans_removed == 0, "{report:?}");
}

#[test]
fn a_duplicate_upload_whose_blob_goes_before_its_commit_is_stored_from_its_own_bytes() {
    let f = fx();
    let alg = f.vault.settings.algorithm;
    let data = noise(300_000, 6);
    let digest = alg.digest(&data);
    let receive = || received(&f, &data);
    let a = f.key("tool", b"first");
    let first = receive();
    f.vault.save(&a, Output::Received { path: &first, digest }, &SaveOptions::default()).unwrap();

    // Staged against the stored blob, which then goes with the only run using it.
    let b = f.key("tool", b"again");
    let second = receive();
    let out = Output::Received { path: &second, digest };
    let prepared = f.vault.prepare_save(&b, out, &SaveOptions::default()).unwrap();
    assert!(f.vault.remove_key(&a.digest().hex(), "test").unwrap());
    assert!(f.vault.meta().blob(&digest).unwrap().is_none(), "the blob should be gone");

    f.vault.commit_prepared(vec![prepared]).unwrap();
    assert_eq!(f.vault.get_bytes(&b).unwrap().map(|(_, b)| b), Some(data.clone()));
    let report = f.vault.verify().unwrap();
    assert!(report.corrupt.is_empty(), "{report:?}");
}
