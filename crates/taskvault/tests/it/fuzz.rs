//! The fuzz tier (issue 11): property tests over archives and config files, with 0 panics and
//! 0 hangs (every case runs on a thread with a deadline), and the checked-in corpora of hostile
//! archives, each of which import must refuse whole: `tests/fixtures/hostile-archives/format-2`
//! (today's format, made by the recipes below) and `tests/fixtures/hostile-archives` (format 1,
//! made by the recipes of earlier releases, kept as they were).
//!
//! `TASKVAULT_WRITE_FIXTURES=1` rewrites the format 2 corpus from the recipes (see
//! `every_hostile_archive_in_the_corpus_is_refused`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use taskvault::{Input, Output, SaveOptions};

use crate::open;

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs `f` on a thread of its own; a case that does not finish by the deadline is a hang.
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(v)) => v,
        Ok(Err(_)) => panic!("{what}: panicked"),
        Err(_) => panic!("{what}: hung for {DEADLINE:?}"),
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile-archives")
}

/// An archive's one batch of entries (format 2) and its blob members (name, bytes), in order.
type Unpacked = (Value, Vec<(String, Vec<u8>)>);

const HEADER: &str = "taskvault-export.json";
const BATCH: &str = "entries/0000000000.json";

/// A valid archive of three entries (inline, file-sized, and a directory tree) as
/// (its batch, blob members in order).
fn valid_archive() -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let v = open(&dir.path().join("v"));
    let key = |t: &str| v.key(t, &[Input::Bytes(b"in".to_vec())]).unwrap();
    v.save(&key("small"), Output::Bytes(b"small output"), &SaveOptions::default()).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    v.save(&key("big"), Output::Bytes(&big), &SaveOptions::default()).unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a"), "a").unwrap();
    std::fs::write(tree.join("sub/b"), "b").unwrap();
    v.save(&key("tree"), Output::Path(&tree), &SaveOptions::default()).unwrap();
    let entries = v.list(&taskvault::Filter::default()).unwrap();
    let archive = dir.path().join("a.tar.zst");
    v.export(&entries, &archive).unwrap();
    unpack(&std::fs::read(&archive).unwrap()).expect("a valid archive unpacks")
}

fn unpack(bytes: &[u8]) -> Option<Unpacked> {
    let dec = zstd::stream::Decoder::new(bytes).ok()?;
    let mut tar = tar::Archive::new(dec);
    let mut batch = None;
    let mut rest = Vec::new();
    for item in tar.entries().ok()? {
        let mut item = item.ok()?;
        let name = item.path().ok()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        item.read_to_end(&mut data).ok()?;
        match name.as_str() {
            HEADER => {
                assert_eq!(serde_json::from_slice::<Value>(&data).ok()?, json!({"format": 2}))
            }
            BATCH => batch = serde_json::from_slice(&data).ok(),
            _ => rest.push((name, data)),
        }
    }
    Some((batch?, rest))
}

/// A tar member as a hostile archive may hold it.
struct Member {
    name: String,
    data: Vec<u8>,
    kind: tar::EntryType,
    /// The size the header claims, if not the data's.
    claimed: Option<u64>,
    link: Option<String>,
}

fn regular(name: &str, data: Vec<u8>) -> Member {
    Member { name: name.into(), data, kind: tar::EntryType::Regular, claimed: None, link: None }
}

fn pack(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let enc = zstd::stream::Encoder::new(&mut out, 3).unwrap();
        let mut tar = tar::Builder::new(enc);
        for m in members {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(m.kind);
            h.set_mode(0o644);
            h.set_size(m.claimed.unwrap_or(m.data.len() as u64));
            if let Some(l) = &m.link {
                h.set_link_name(l).unwrap();
            }
            // Names are written raw, so that `..` and absolute names reach the importer.
            let name = m.name.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            tar.append(&h, &m.data[..]).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    out
}

/// A format 2 archive's members: the header, `batch`, then `members`.
fn with_manifest(batch: &Value, members: &[(String, Vec<u8>)]) -> Vec<Member> {
    with_header(&json!({"format": 2}), batch, members)
}

fn with_header(header: &Value, batch: &Value, members: &[(String, Vec<u8>)]) -> Vec<Member> {
    let mut out = vec![
        regular(HEADER, serde_json::to_vec(header).unwrap()),
        regular(BATCH, serde_json::to_vec(batch).unwrap()),
    ];
    out.extend(members.iter().map(|(n, d)| regular(n, d.clone())));
    out
}

/// The corpus: each recipe makes one archive that import must refuse whole.
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let (m, members) = valid_archive();
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut m = m.clone();
        f(&mut m);
        pack(&with_manifest(&m, &members))
    };
    let other_key = "ab".repeat(32);
    let mut out: Vec<(&'static str, Vec<u8>)> = vec![
        ("forged-key", edit(&|m| m["entries"][0]["key"] = other_key.clone().into())),
        ("forged-task", edit(&|m| m["entries"][0]["task"] = "another task".into())),
        ("forged-namespace", edit(&|m| m["entries"][0]["namespace"] = "team-b".into())),
        (
            "forged-input",
            edit(&|m| {
                m["entries"][0]["inputs"][0]["digest"] = format!("blake3:{other_key}").into()
            }),
        ),
        (
            "no-ingredients",
            edit(&|m| {
                m["entries"][0].as_object_mut().unwrap().remove("ingredients");
            }),
        ),
        (
            "unsafe-tree-path",
            edit(&|m| {
                for e in m["entries"].as_array_mut().unwrap() {
                    if e["output_kind"] == "dir" {
                        e["outputs"][0]["path"] = "../escape".into();
                    }
                }
            }),
        ),
        (
            "absolute-tree-path",
            edit(&|m| {
                for e in m["entries"].as_array_mut().unwrap() {
                    if e["output_kind"] == "dir" {
                        e["outputs"][0]["path"] = "/etc".into();
                    }
                }
            }),
        ),
        (
            "two-file-nodes",
            edit(&|m| {
                let n = m["entries"][0]["outputs"][0].clone();
                m["entries"][0]["outputs"].as_array_mut().unwrap().push(n);
            }),
        ),
        ("node-size-mismatch", edit(&|m| m["entries"][0]["outputs"][0]["size"] = 3.into())),
        ("format-9", pack(&with_header(&json!({"format": 9}), &m, &members))),
        (
            "manifest-blob-size-lies",
            edit(&|m| {
                for v in m["blobs"].as_object_mut().unwrap().values_mut() {
                    *v = 1.into();
                }
            }),
        ),
        (
            "blob-size-overflow",
            edit(&|m| {
                for v in m["blobs"].as_object_mut().unwrap().values_mut() {
                    *v = u64::MAX.into();
                }
            }),
        ),
    ];
    let named = |name: &str, data: Vec<u8>| {
        let mut all = with_manifest(&m, &members);
        all.push(regular(name, data));
        pack(&all)
    };
    out.push(("traversal-member", named("blobs/blake3/../../../../tmp/x", b"x".to_vec())));
    out.push(("absolute-member", named("/tmp/taskvault-fuzz-x", b"x".to_vec())));
    out.push(("unknown-member", named("README", b"x".to_vec())));
    let linked = |name: &str, kind: tar::EntryType| {
        let mut all = with_manifest(&m, &members);
        let link = Some("/etc/passwd".into());
        all.push(Member { name: name.into(), data: vec![], kind, claimed: Some(0), link });
        pack(&all)
    };
    out.push(("symlink-member", linked("blobs/link", tar::EntryType::Symlink)));
    out.push(("hardlink-member", linked("hard", tar::EntryType::Link)));
    let mut all = with_manifest(&m, &members);
    all[2].data = vec![0u8; 8 << 20]; // a bomb: compresses to almost nothing
    out.push(("bomb-member", pack(&all)));
    let mut all = with_manifest(&m, &members);
    all[2].data[0] ^= 1;
    out.push(("tampered-blob", pack(&all)));
    let mut all = with_manifest(&m, &members);
    all.remove(2);
    out.push(("missing-blob", pack(&all)));
    let mut all = with_manifest(&m, &members);
    let dup = regular(&all[2].name, all[2].data.clone());
    all.push(dup);
    out.push(("duplicate-blob", pack(&all)));
    let mut all = with_manifest(&m, &members);
    all.rotate_left(1);
    out.push(("manifest-last", pack(&all)));
    let mut all = with_manifest(&m, &members);
    let again = regular("taskvault-export.json", all[0].data.clone());
    all.insert(1, again);
    out.push(("two-manifests", pack(&all)));
    out.push((
        "manifest-not-json",
        pack(&[regular("taskvault-export.json", b"{\"format\":".to_vec())]),
    ));
    let mut all = with_manifest(&m, &members);
    all[1].data.truncate(10);
    out.push(("batch-not-json", pack(&all)));
    let mut all = with_manifest(&m, &members);
    all[1].name = "entries/0000000001.json".into();
    out.push(("batch-out-of-order", pack(&all)));
    let mut all = with_manifest(&m, &members);
    all.swap(1, 2);
    out.push(("blob-before-its-batch", pack(&all)));
    out.push(("no-batch", pack(&with_manifest(&m, &members)[..1])));
    let mut all = with_manifest(&m, &members);
    all[0].claimed = Some(1 << 40);
    let mut bytes = pack(&all[..1]);
    bytes.truncate(bytes.len() / 2);
    out.push(("manifest-huge-claim-truncated", bytes));
    let good = pack(&with_manifest(&m, &members));
    out.push(("truncated", good[..good.len() * 2 / 3].to_vec()));
    out.push(("not-zstd", b"this is not an archive at all".to_vec()));
    out
}

/// Every archive of the corpus, checked in and made afresh from the recipes, is refused with a
/// one-line error: nothing is imported, nothing is left in `tmp/`, nothing is written outside
/// the vault. `TASKVAULT_WRITE_FIXTURES=1` writes the fresh ones over the checked-in corpus.
#[test]
fn every_hostile_archive_in_the_corpus_is_refused() {
    let dir = fixtures().join("format-2");
    let fresh = hostile();
    if std::env::var_os("TASKVAULT_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &fresh {
            std::fs::write(dir.join(format!("{name}.tar.zst")), bytes).unwrap();
        }
    }
    let read = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.strip_suffix(".tar.zst")?.to_owned();
                Some((name, std::fs::read(&p).unwrap()))
            })
            .collect();
        v.sort();
        v
    };
    let checked_in = read(&dir);
    let format_1 = read(&fixtures());
    assert_eq!(format_1.len(), 27, "the format 1 corpus is kept whole");
    let names: Vec<&str> = checked_in.iter().map(|(n, _)| n.as_str()).collect();
    let mut recipes: Vec<&str> = fresh.iter().map(|(n, _)| *n).collect();
    recipes.sort();
    assert_eq!(names, recipes, "the checked-in corpus matches the recipes");
    let all = checked_in
        .iter()
        .map(|(n, b)| (format!("checked-in {n}"), b.clone()))
        .chain(format_1.iter().map(|(n, b)| (format!("format 1 {n}"), b.clone())))
        .chain(fresh.into_iter().map(|(n, b)| (format!("fresh {n}"), b)));
    for (shown, bytes) in all {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("v");
        let archive = dir.path().join("a.tar.zst");
        std::fs::write(&archive, bytes).unwrap();
        let vd = vault.clone();
        let result =
            within_deadline(&shown, move || open(&vd).import(&archive).map(|r| r.imported));
        match result {
            Err(taskvault::Error::BadArchive { message, .. }) => {
                assert!(!message.contains('\n'), "{shown}: one line: {message}");
            }
            other => panic!("{shown}: expected a refusal, got {other:?}"),
        }
        let v = open(&vault);
        assert_eq!(v.stats().unwrap().entries, 0, "{shown}");
        let tmp: Vec<_> = std::fs::read_dir(vault.join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "{shown}: {tmp:?}");
        assert!(!Path::new("/tmp/taskvault-fuzz-x").exists());
    }
}

#[test]
fn the_untouched_corpus_source_imports() {
    let (m, members) = valid_archive();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("ok.tar.zst");
    std::fs::write(&archive, pack(&with_manifest(&m, &members))).unwrap();
    let r = open(&dir.path().join("v")).import(&archive).unwrap();
    assert_eq!(r.imported, 3);
}

/// What a mutated archive may do: be refused, or import entries that each answer the key they
/// claim and whose bytes verify.
fn import_checked(bytes: Vec<u8>) -> Result<(), TestCaseError> {
    let outcome = within_deadline("mutated archive", move || {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("m.tar.zst");
        std::fs::write(&archive, bytes).unwrap();
        let v = open(&dir.path().join("v"));
        let imported = v.import(&archive);
        let entries = v.list(&taskvault::Filter::default()).unwrap();
        let report = v.verify().unwrap();
        (imported.is_ok(), entries, report)
    });
    let (ok, entries, report) = outcome;
    if !ok {
        prop_assert!(entries.is_empty(), "a refused import imported {} entries", entries.len());
    }
    for e in &entries {
        prop_assert_eq!(e.recomputed_key().map(|k| k.hex()), Some(e.key.clone()));
        prop_assert!(e.outputs.iter().all(|n| n.mode & 0o7000 == 0), "privileged mode imported");
    }
    prop_assert!(report.corrupt.is_empty() && report.damaged_rows.is_empty());
    Ok(())
}

/// A JSON value with one leaf replaced, chosen by `pick` among all leaves.
fn mutate_json(v: &mut Value, pick: &mut usize, with: &Value) -> bool {
    match v {
        Value::Object(m) => m.values_mut().any(|x| mutate_json(x, pick, with)),
        Value::Array(a) => a.iter_mut().any(|x| mutate_json(x, pick, with)),
        leaf => {
            if *pick == 0 {
                *leaf = with.clone();
                return true;
            }
            *pick -= 1;
            false
        }
    }
}

fn hostile_values() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(0o7777)),
        Just(json!("../../etc/passwd")),
        Just(json!("/")),
        Just(json!("")),
        Just(json!("ab".repeat(32))),
        Just(json!("blake3:".to_owned() + &"cd".repeat(32))),
        Just(json!([])),
        Just(json!({})),
        any::<i64>().prop_map(|n| json!(n)),
        "[ -~]{0,40}".prop_map(|s| json!(s)),
    ]
}

/// The case the fuzzer found: an output size of 2^64 - 1 made the sizes' sum overflow (a
/// panic in a debug build) instead of refusing the archive.
#[test]
fn an_archive_whose_output_sizes_overflow_is_refused() {
    for pick in 0..400 {
        let (mut m, members) = valid_archive();
        let mut at = pick;
        mutate_json(&mut m, &mut at, &json!(u64::MAX));
        import_checked(pack(&with_manifest(&m, &members))).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any one field of a valid manifest replaced by a hostile value.
    #[test]
    fn archives_with_a_mutated_manifest_field(pick in 0usize..400, with in hostile_values()) {
        let (mut m, members) = valid_archive();
        let mut at = pick;
        mutate_json(&mut m, &mut at, &with);
        import_checked(pack(&with_manifest(&m, &members)))?;
    }

    /// Random bytes flipped in the compressed archive.
    #[test]
    fn archives_with_flipped_bytes(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let (m, members) = valid_archive();
        let mut bytes = pack(&with_manifest(&m, &members));
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x | 1;
        }
        import_checked(bytes)?;
    }

    /// Random bytes flipped inside the tar stream (headers, sizes, names), recompressed.
    #[test]
    fn archives_with_a_damaged_tar_stream(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let (m, members) = valid_archive();
        let packed = pack(&with_manifest(&m, &members));
        let mut raw = zstd::decode_all(&packed[..]).unwrap();
        for (at, x) in flips {
            let n = raw.len();
            raw[at % n] ^= x | 1;
        }
        import_checked(zstd::encode_all(&raw[..], 1).unwrap())?;
    }

    /// Config files: random lines of known keys and hostile values, and raw noise. Parsing
    /// answers Ok or a clear error; never a panic.
    #[test]
    fn config_files_never_panic(
        lines in proptest::collection::vec(
            (prop_oneof![
                Just("cache_dir"), Just("max_size_gb"), Just("hash_algorithm"), Just("namespace"),
                Just("log_level"), Just("audit_format"), Just("inline_max_bytes"),
                Just("policies"), Just("  default"), Just("    ttl_seconds"),
                Just("    max_size_bytes"), Just("    strategy"), Just("- x"), Just("&a"),
            ],
            prop_oneof![
                Just("".to_owned()), Just("-1".to_owned()), Just("1e309".to_owned()),
                Just("18446744073709551616".to_owned()), Just(".nan".to_owned()),
                Just("*a".to_owned()), Just("[1, {a: b}]".to_owned()), Just("~".to_owned()),
                Just("!!binary aGk=".to_owned()), "[ -~]{0,20}",
            ]),
            0..12,
        ),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut text: String = lines.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
        text.push_str(&String::from_utf8_lossy(&noise));
        let parsed = within_deadline("config", move || {
            taskvault::ConfigFile::parse(&text, Path::new("fuzz.yaml")).map(|c| {
                let _ = c.settings(Path::new("/tmp"));
            })
        });
        if let Err(e) = parsed {
            let shown = e.to_string();
            prop_assert!(!shown.is_empty() && !shown.contains('\n'), "one line: {shown:?}");
        }
    }
}
