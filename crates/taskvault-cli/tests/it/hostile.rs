//! Hostile and unusual input (issue 11): forged archives and rows, destinations that are not
//! files, concurrent verification, damaged journals and rows, huge numbers, loops, FIFOs,
//! privileged modes, unbounded input. Each test names the item it covers.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Project, noise};

fn db(p: &Project) -> rusqlite::Connection {
    rusqlite::Connection::open(p.vault().join("cache.db")).unwrap()
}

/// The key a `cache get` of (task, input) looks up (from its JSON miss or hit).
fn key_of(p: &Project, task: &str, input: &str) -> String {
    let probe = p.path(".key-probe");
    let r = p.run(&["--json", "cache", "get", task, input, ".key-probe"]);
    let _ = std::fs::remove_file(probe);
    let v: serde_json::Value = serde_json::from_slice(&r.0.stdout).unwrap_or_default();
    match v["key"].as_str().or(v["entry"]["key"].as_str()) {
        Some(k) => k.to_owned(),
        None => panic!("no key in {}: {}", r.stdout(), r.stderr()),
    }
}

/// Reads an export archive into (manifest, other members).
fn unpack(archive: &Path) -> (serde_json::Value, Vec<(String, Vec<u8>)>) {
    let dec = zstd::stream::Decoder::new(std::fs::File::open(archive).unwrap()).unwrap();
    let mut tar = tar::Archive::new(dec);
    let mut batch = None;
    let mut rest = Vec::new();
    for item in tar.entries().unwrap() {
        let mut item = item.unwrap();
        let name = item.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        item.read_to_end(&mut data).unwrap();
        match name.as_str() {
            "taskvault-export.json" => {
                assert_eq!(serde_json::from_slice::<serde_json::Value>(&data).unwrap()["format"], 2)
            }
            BATCH => batch = Some(serde_json::from_slice(&data).unwrap()),
            _ => rest.push((name, data)),
        }
    }
    (batch.unwrap(), rest)
}

/// The one batch of entries of a small format 2 archive.
const BATCH: &str = "entries/0000000000.json";

/// Writes a format 2 archive: its header, `batch` (entries and the blobs listed), then
/// `members`.
pub fn pack(archive: &Path, batch: &serde_json::Value, members: &[(String, Vec<u8>)]) {
    let enc = zstd::stream::Encoder::new(std::fs::File::create(archive).unwrap(), 3).unwrap();
    let mut tar = tar::Builder::new(enc);
    let json = serde_json::to_vec(batch).unwrap();
    let mut all = vec![
        ("taskvault-export.json".to_owned(), br#"{"format":2}"#.to_vec()),
        (BATCH.to_owned(), json),
    ];
    all.extend(members.iter().cloned());
    for (name, data) in &all {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap();
}

/// Item 1: an archive whose entry claims another task's key is refused, and the other task
/// still misses.
#[test]
fn an_archive_entry_claiming_another_key_is_refused() {
    let src = Project::new();
    src.write("in", "same input");
    src.write("out", "the output of task a");
    src.run(&["cache", "save", "a", "in", "out"]).ok();
    src.run(&["export", "a.tar.zst"]).ok();
    let (mut manifest, members) = unpack(&src.path("a.tar.zst"));

    let dst = Project::new();
    dst.write("in", "same input");
    let key_b = key_of(&dst, "b", "in");
    // The seed's forgery: only the key changes.
    manifest["entries"][0]["key"] = key_b.clone().into();
    pack(&dst.path("forged.tar.zst"), &manifest, &members);
    let r = dst.run(&["import", "forged.tar.zst"]).code_is(2);
    assert!(r.stderr().contains("tampered"), "{}", r.stderr());
    dst.run(&["cache", "get", "b", "in", "got"]).code_is(1);
    assert!(!dst.path("got").exists());

    // Ingredients edited to match the claimed key's, but not the key's digest itself.
    manifest["entries"][0]["ingredients"]["extras"] = serde_json::json!([["salt", "eA=="]]);
    manifest["entries"][0]["task"] = "b".into();
    pack(&dst.path("forged2.tar.zst"), &manifest, &members);
    dst.run(&["import", "forged2.tar.zst"]).code_is(2);
    dst.run(&["cache", "get", "b", "in", "got"]).code_is(1);

    // Without the recorded ingredients the key cannot be checked: refused too.
    let (mut manifest, _) = unpack(&src.path("a.tar.zst"));
    manifest["entries"][0].as_object_mut().unwrap().remove("ingredients");
    pack(&dst.path("old.tar.zst"), &manifest, &members);
    let r = dst.run(&["import", "old.tar.zst"]).code_is(2);
    assert!(r.stderr().contains("ingredients"), "{}", r.stderr());
    assert_eq!(dst.entries(), 0);

    // The untouched archive imports and serves task a only.
    dst.run(&["import", &src.path("a.tar.zst").display().to_string()]).ok();
    dst.run(&["cache", "get", "a", "in", "got"]).ok();
    assert_eq!(std::fs::read(dst.path("got")).unwrap(), b"the output of task a");
    dst.run(&["cache", "get", "b", "in", "got2"]).code_is(1);
}

/// Item 1: a metadata row or a hot record that describes another key is never served.
#[test]
fn forged_rows_and_hot_records_never_serve_another_key() {
    let p = Project::new();
    p.write("in", "i");
    p.write("outa", "bytes of a");
    p.write("outb", "bytes of b");
    p.run(&["cache", "save", "a", "in", "outa"]).ok();
    let key_a = key_of(&p, "a", "in");
    let key_b = key_of(&p, "b", "in");
    // A hot record of a copied under b's name.
    std::fs::copy(p.vault().join("hot").join(&key_a), p.vault().join("hot").join(&key_b)).unwrap();
    p.run(&["cache", "get", "b", "in", "got"]).code_is(1);
    // A row of a relabelled as b's: its key column (the key's 32 bytes; the document no longer
    // names the key, and its key ingredients are a's).
    let c = db(&p);
    let stored: Vec<u8> = c.query_row("SELECT key FROM entries", [], |r| r.get(0)).unwrap();
    assert_eq!(stored.iter().map(|b| format!("{b:02x}")).collect::<String>(), key_a);
    c.execute("UPDATE entries SET key = unhex(?1)", [&key_b]).unwrap();
    drop(c);
    std::fs::remove_dir_all(p.vault().join("hot")).unwrap();
    p.run(&["cache", "get", "b", "in", "got"]).code_is(1);
    assert!(!p.path("got").exists());
    // A re-save of b restores service with b's own bytes.
    p.run(&["cache", "save", "b", "in", "outb"]).ok();
    p.run(&["cache", "get", "b", "in", "got"]).ok();
    assert_eq!(std::fs::read(p.path("got")).unwrap(), b"bytes of b");
}

fn mknod_char(path: &Path) {
    // /dev/null's numbers, in a private temporary directory.
    let ok = Command::new("mknod").arg(path).args(["c", "1", "3"]).status().unwrap().success();
    assert!(ok, "mknod needs root");
}

fn is_char_device(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// Item 2: a device node as destination is refused and left as it was, by `cache get`,
/// `get -o` and `export`; a destination inside the vault is refused.
#[test]
fn devices_and_vault_files_are_never_replaced() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", noise(5000, 3));
    let saved = p.run(&["--json", "cache", "save", "t", "in", "out"]).ok().json();
    let id = saved["id"].as_str().unwrap().to_owned();
    let dev = p.path("dev");
    mknod_char(&dev);
    let fifo = p.path("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for (args, target) in [
        (vec!["cache", "get", "t", "in", "dev"], &dev),
        (vec!["get", &id, "-o", "dev"], &dev),
        (vec!["export", "dev"], &dev),
        (vec!["cache", "get", "t", "in", "fifo"], &fifo),
    ] {
        let r = p.run(&args).code_is(2);
        assert!(r.stderr().contains("only a regular file"), "{args:?}: {}", r.stderr());
        assert_eq!(r.stderr().trim_end().lines().count(), 1, "{}", r.stderr());
        let t = std::fs::symlink_metadata(target).unwrap().file_type();
        assert!(t.is_char_device() || t.is_fifo(), "{args:?} replaced {target:?}");
    }
    assert!(is_char_device(&dev));
    let before = std::fs::read(p.vault().join("cache.db")).unwrap();
    for dest in [
        ".taskvault/cache/cache.db",
        ".taskvault/cache/cache.db-wal",
        ".taskvault/cache/tmp/x",
        ".taskvault/cache/hot/x",
        ".taskvault/cache/generation",
    ] {
        let r = p.run(&["cache", "get", "t", "in", dest]);
        assert_eq!(r.code(), 2, "{dest}: {}", r.stderr());
        assert!(r.stderr().contains("the vault's own files"), "{}", r.stderr());
    }
    p.run(&["export", ".taskvault/cache/audit.log"]).code_is(2);
    // Nor is a FIFO read as an archive (it would block until a writer came).
    let mut c = p.cmd();
    c.args(["import", "fifo"]);
    let out = finishes_within(c, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a FIFO"));
    assert_eq!(std::fs::read(p.vault().join("cache.db")).unwrap(), before);
    p.run(&["cache", "get", "t", "in", "fine"]).ok();
}

/// Item 3: `verify` run while another process saves, replaces and removes reports no
/// corruption (there is none).
#[test]
fn verify_during_saves_reports_no_false_corruption() {
    let p = Project::new();
    p.write("in", "i");
    for k in 0..4 {
        p.write(&format!("o{k}"), noise(20_000 + k * 1000, k as u64));
        p.run(&["cache", "save", &format!("t{k}"), "in", &format!("o{k}")]).ok();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dir = p.dir.path().to_owned();
        std::thread::spawn(move || {
            let p = Project { dir: tempfile::TempDir::new_in("/tmp").unwrap() };
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = n % 4;
                let out = p.write(&format!("o{n}"), noise(20_000 + (n % 7) as usize * 999, n));
                let mut c = p.cmd();
                c.current_dir(&dir);
                let task = format!("t{k}");
                let st = c
                    .args(["cache", "save", &task, "in", &out.display().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(st.success());
                n += 1;
            }
            n
        })
    };
    let mut runs = 0;
    let start = Instant::now();
    while runs < 40 || start.elapsed() < Duration::from_secs(3) {
        let r = p.run(&["--json", "verify"]);
        assert_eq!(r.code(), 0, "verify found problems that are not there: {}", r.stdout());
        runs += 1;
        if runs >= 200 {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
}

/// Item 4: a non-UTF-8 line in the access journal is skipped; every command goes on.
#[test]
fn a_damaged_access_journal_line_stops_nothing() {
    let p = Project::new();
    p.write(".taskvault/config.yaml", "max_size_gb: 0.0001\n");
    p.write("in", "i");
    p.write("out", "o");
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p.run(&["cache", "get", "t", "in", "got"]).ok();
    let mut f =
        std::fs::OpenOptions::new().append(true).open(p.vault().join("access.log")).unwrap();
    f.write_all(b"h \xff\xfe\xfd 12 3\n\xc3\x28 garbage\n").unwrap();
    drop(f);
    p.run(&["stats"]).ok();
    p.run(&["log"]).ok();
    p.run(&["gc"]).ok();
    p.write("big", noise(60_000, 9));
    p.run(&["cache", "save", "big", "in", "big"]).ok();
    let s = p.stats();
    assert_eq!(s["hits"], 1, "{s}");
    p.run(&["rm", &key_of(&p, "t", "in")]).ok();
}

/// Item 5: numbers past what fits are refused with one line, never a panic; a TTL of 95 years
/// does not store an entry that is already expired.
#[test]
fn huge_numbers_are_range_checked() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", "o");
    for flag in ["--ttl", "--duration"] {
        for v in ["18446744073709551615", "1e300", "inf", "NaN", "-1", "99999999999999999999y"] {
            let r = p.run(&["cache", "save", "t", "in", "out", flag, v]);
            assert_eq!(r.code(), 2, "{flag} {v}: {}", r.stderr());
            assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
        }
    }
    for args in [
        vec!["gc", "--older-than", "18446744073709551615"],
        vec!["log", "--since", "18446744073709551615"],
        vec!["gc", "--max-size", "1e400"],
        vec!["run", "--ttl", "18446744073709551615", "--", "true"],
    ] {
        let r = p.run(&args);
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
        assert!(!r.stderr().contains("panicked"), "{}", r.stderr());
    }
    p.run(&["cache", "save", "t", "in", "out", "--ttl", "95y"]).ok();
    p.run(&["cache", "get", "t", "in", "got"]).ok();
}

/// Runs `c` and kills it if it takes longer than `limit` (a hang fails the test, never the
/// suite).
fn finishes_within(mut c: Command, limit: Duration) -> std::process::Output {
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("hung: {:?}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Item 6: a glob over a directory holding links to itself finishes.
#[test]
fn globs_over_symlink_loops_finish() {
    let p = Project::new();
    p.write("e/a.txt", "a");
    p.write("e/sub/b.txt", "b");
    std::os::unix::fs::symlink(".", p.path("e/self1")).unwrap();
    std::os::unix::fs::symlink(".", p.path("e/self2")).unwrap();
    std::os::unix::fs::symlink("..", p.path("e/sub/up")).unwrap();
    let mut c = p.cmd();
    c.args(["run", "--input", "e/**", "--input", "e/**/*.txt", "--", "true"]);
    let out = finishes_within(c, Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = p.cmd();
    c.args(["run", "--input", "e/**", "--input", "e/**/*.txt", "--", "true"]);
    let out = finishes_within(c, Duration::from_secs(60));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hit"), "the glob is stable");
}

fn only_blob(p: &Project) -> PathBuf {
    let files = p.blob_files();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

/// Item 6: FIFOs and device links planted in `hot/` and `blobs/` are never read.
#[test]
fn fifos_and_device_links_in_the_vault_never_hang() {
    for plant in ["fifo", "zero"] {
        let p = Project::new();
        p.write("in", "i");
        p.write("out", noise(300_000, 4)); // a blob file, not inline
        p.run(&["cache", "save", "t", "in", "out"]).ok();
        let key = key_of(&p, "t", "in");
        let hot = p.vault().join("hot").join(&key);
        let blob = only_blob(&p);
        let planted = |path: &Path| {
            std::fs::remove_file(path).unwrap();
            match plant {
                "fifo" => assert!(Command::new("mkfifo").arg(path).status().unwrap().success()),
                _ => std::os::unix::fs::symlink("/dev/zero", path).unwrap(),
            }
        };
        planted(&hot);
        let mut c = p.cmd();
        c.args(["cache", "get", "t", "in", "got"]);
        let out = finishes_within(c, Duration::from_secs(60));
        assert!(out.status.success(), "{plant} hot record: served from the database");
        planted(&blob);
        let mut c = p.cmd();
        c.args(["cache", "get", "t", "in", "got2"]);
        let out = finishes_within(c, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1), "{plant} blob: a miss");
        // Planted again (the miss quarantined it): verify reports it and goes on.
        p.run(&["cache", "save", "t", "in", "out"]).ok();
        planted(&only_blob(&p));
        let mut c = p.cmd();
        c.args(["--json", "verify"]);
        let out = finishes_within(c, Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(1));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["corrupt"].as_array().unwrap().len(), 1, "{r}");
    }
}

/// Item 7: setuid, setgid and sticky bits are never restored, from a save or an archive.
#[test]
fn privileged_mode_bits_are_not_restored() {
    let p = Project::new();
    p.write("in", "i");
    let out = p.write("out", "#!/bin/sh\n");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o6755)).unwrap();
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p.run(&["cache", "get", "t", "in", "got"]).ok();
    let mode = std::fs::metadata(p.path("got")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);

    p.run(&["export", "a.tar.zst"]).ok();
    let (mut manifest, members) = unpack(&p.path("a.tar.zst"));
    manifest["entries"][0]["outputs"][0]["mode"] = 0o7777.into();
    let q = Project::new();
    q.write("in", "i");
    pack(&q.path("m.tar.zst"), &manifest, &members);
    q.run(&["import", "m.tar.zst"]).ok();
    q.run(&["cache", "get", "t", "in", "got"]).ok();
    let mode = std::fs::metadata(q.path("got")).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777);
}

/// The peak resident memory of this test's largest child process so far, in KiB.
#[allow(unsafe_code)] // getrusage has no safe wrapper in the crates used here
fn max_child_rss_kib() -> i64 {
    // SAFETY: rusage is plain old data (all zeros is a valid value), and `u` is a valid,
    // writable rusage for getrusage to fill.
    let (rc, u) = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_CHILDREN, &mut u), u)
    };
    assert_eq!(rc, 0);
    u.ru_maxrss
}

/// Item 8: `cache save` of stdin streams it (a 512 MiB input, memory stays small).
#[test]
fn stdin_input_is_streamed() {
    let p = Project::new();
    p.write("out", "o");
    let mut child = p
        .cmd()
        .args(["cache", "save", "t", "-", "out"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..512 {
        stdin.write_all(&chunk).unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let rss = max_child_rss_kib();
    assert!(rss < 128 * 1024, "peak RSS {rss} KiB for a 512 MiB stdin");
    // Streamed input keys like the same bytes in a file.
    let big = p.write("big", vec![7u8; 512 << 20]);
    p.run(&["cache", "get", "t", &big.display().to_string(), "got"]).ok();
}

/// Item 8: an archive member larger than its manifest says is refused before it is written.
#[test]
fn an_archive_bomb_is_refused_before_it_is_written() {
    let p = Project::new();
    p.write("in", "i");
    p.write("out", noise(1000, 1));
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p.run(&["export", "a.tar.zst"]).ok();
    let (manifest, members) = unpack(&p.path("a.tar.zst"));
    let q = Project::new();
    // 256 MiB of zeros compresses to almost nothing. Streamed: a child forked while this
    // process held it would count it in its own peak memory.
    let enc = zstd::stream::Encoder::new(std::fs::File::create(q.path("bomb.tar.zst")).unwrap(), 3)
        .unwrap();
    let mut tar = tar::Builder::new(enc);
    for (name, data) in [
        ("taskvault-export.json", br#"{"format":2}"#.to_vec()),
        (BATCH, serde_json::to_vec(&manifest).unwrap()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        tar.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut h = tar::Header::new_gnu();
    h.set_size(256 << 20);
    h.set_mode(0o644);
    tar.append_data(&mut h, &members[0].0, std::io::repeat(0).take(256 << 20)).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
    assert!(std::fs::metadata(q.path("bomb.tar.zst")).unwrap().len() < 1 << 20);
    q.run(&["init"]).ok();
    let r = q.run(&["import", "bomb.tar.zst"]).code_is(2);
    assert!(r.stderr().contains("in the manifest"), "{}", r.stderr());
    let tmp: Vec<_> = std::fs::read_dir(q.vault().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "{tmp:?}");
    let rss = max_child_rss_kib();
    assert!(rss < 128 * 1024, "peak RSS {rss} KiB");
}

/// Item 9: a damaged row is reported by `verify`, which goes on; a re-save restores service.
#[test]
fn damaged_rows_are_reported_and_a_resave_repairs_them() {
    let p = Project::new();
    p.write("in", "i");
    p.write("in2", "i2");
    p.write("out", "o");
    p.write("out2", noise(100_000, 2));
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p.run(&["cache", "save", "u", "in2", "out2"]).ok();
    let c = db(&p);
    c.execute("UPDATE entries SET doc = '{not json' WHERE task = 't'", []).unwrap();
    c.execute("UPDATE blobs SET size = 'many' WHERE data IS NULL", []).unwrap();
    drop(c);
    std::fs::remove_dir_all(p.vault().join("hot")).unwrap();
    p.run(&["log"]).ok();
    p.run(&["stats"]).ok();
    let r = p.run(&["--json", "verify"]).code_is(1);
    let report = r.json();
    assert_eq!(report["damaged_rows"].as_array().unwrap().len(), 2, "{report}");
    // Reported once: verify removed them.
    p.run(&["--json", "verify"]).ok();
    p.run(&["cache", "get", "t", "in", "got"]).code_is(1);
    // A damaged live row met by a lookup is a miss, never an error.
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    db(&p).execute("UPDATE entries SET doc = 'null' WHERE task = 't'", []).unwrap();
    std::fs::remove_dir_all(p.vault().join("hot")).unwrap();
    p.run(&["cache", "get", "t", "in", "got"]).code_is(1);
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p.run(&["cache", "get", "t", "in", "got"]).ok();
    p.run(&["cache", "get", "u", "in2", "got2"]).code_is(1);
    p.run(&["cache", "save", "u", "in2", "out2"]).ok();
    p.run(&["cache", "get", "u", "in2", "got2"]).ok();
    assert_eq!(std::fs::read(p.path("got2")).unwrap(), std::fs::read(p.path("out2")).unwrap());
    p.run(&["verify"]).ok();
}

/// Item 10: `~` without HOME is an error, not a directory named `~`; `gc --max-size 0` is
/// refused instead of evicting everything.
#[test]
fn home_without_home_and_a_zero_cap() {
    let p = Project::new();
    p.write(".taskvault/config.yaml", "cache_dir: ~/tv-cache\n");
    let r = Run(p.cmd().env_remove("HOME").args(["stats"]).output().unwrap());
    assert_eq!(r.code(), 2, "{}", r.stderr());
    assert!(r.stderr().contains("HOME is not set"), "{}", r.stderr());
    assert!(!p.path("~").exists());
    let q = Project::new();
    q.write("in", "i");
    q.write("out", "o");
    q.run(&["cache", "save", "t", "in", "out"]).ok();
    let r = q.run(&["gc", "--max-size", "0"]).code_is(2);
    assert!(r.stderr().contains("clear"), "{}", r.stderr());
    q.run(&["cache", "get", "t", "in", "got"]).ok();
}

use crate::Run;
