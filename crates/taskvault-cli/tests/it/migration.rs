//! Vaults written by earlier TaskVaults (`tests/fixtures/vault-schema1`, `vault-schema4`,
//! `vault-schema5`, `vault-schema6`) open, migrate, and serve the same hits: files, a directory,
//! a blob on disk, a wrapped command, and (schema 4 to 6) results of the Python SDK with their
//! shared provenance.

use std::path::Path;

use crate::Project;

fn copy_tree(from: &Path, to: &Path) {
    for w in taskvault::tree::walk(from).unwrap() {
        let dest = to.join(&w.rel);
        match w.kind {
            taskvault::tree::NodeKind::Dir => std::fs::create_dir_all(&dest).unwrap(),
            _ => {
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::copy(&w.abs, &dest).unwrap();
            }
        }
    }
}

#[test]
fn a_schema_1_vault_migrates_and_serves_the_same_hits() {
    migrates_and_serves_the_same_hits("vault-schema1", 5);
}

#[test]
fn a_schema_4_vault_migrates_and_serves_the_same_hits_and_provenance() {
    let p = migrates_and_serves_the_same_hits("vault-schema4", 7);
    let squares = p.run(&["--json", "log", "--task", "square"]).ok().json();
    let squares = squares.as_array().unwrap();
    assert_eq!(squares.len(), 2);
    for run in squares {
        let shown = p.run(&["--json", "show", run["id"].as_str().unwrap()]).ok().json();
        assert_eq!(shown["details"]["function"], "square", "{shown}");
        assert!(shown["details"]["source"].as_str().unwrap().contains("return x * x + offset"));
        assert_eq!(shown["ingredients"]["extras"].as_array().unwrap().len(), 4, "{shown}");
        assert_eq!(shown["host"], run["host"]);
    }
    let args: Vec<String> =
        squares.iter().map(|r| r["details"]["args"].to_string()).collect::<Vec<_>>();
    assert!(args.contains(&r#"{"offset":"1","x":"3"}"#.to_owned()), "{args:?}");
    // Every migrated run still recomputes its key from what it recorded: an import checks.
    reimports_whole(&p, 6);
}

#[test]
fn a_schema_5_vault_migrates_and_serves_the_same_hits_tags_and_provenance() {
    let p = migrates_and_serves_the_same_hits("vault-schema5", 10);
    p.run(&["cache", "get", "fresh", "in5", "got5"]).ok();
    assert_eq!(std::fs::read(p.path("got5")).unwrap(), std::fs::read(p.path("out5")).unwrap());
    let fresh = p.run(&["--json", "log", "--tag", "kind=fresh"]).ok().json();
    assert_eq!(fresh.as_array().unwrap().len(), 1, "{fresh}");
    assert_eq!(fresh[0]["task"], "fresh");
    assert_eq!(fresh[0]["expires_ms"], serde_json::Value::Null, "saved with --ttl 0: {fresh}");
    let squares = p.run(&["--json", "log", "--task", "square"]).ok().json();
    let squares = squares.as_array().unwrap();
    assert_eq!(squares.len(), 4);
    let mut args: Vec<String> = Vec::new();
    for run in squares {
        let shown = p.run(&["--json", "show", run["id"].as_str().unwrap()]).ok().json();
        assert_eq!(shown["details"]["function"], "square", "{shown}");
        let extras = shown["ingredients"]["extras"].as_array().unwrap();
        assert_eq!(extras.len(), 4, "{shown}");
        assert_eq!(shown["outputs"][0]["size"].as_u64(), Some(shown["size"].as_u64().unwrap()));
        args.push(shown["details"]["args"].to_string());
    }
    assert!(args.contains(&r#"{"offset":"3","x":"2"}"#.to_owned()), "{args:?}");
    assert!(args.contains(&r#"{"offset":"0","x":"5"}"#.to_owned()), "{args:?}");
    // Every run, migrated or written by schema 5, still recomputes its key: an import checks.
    reimports_whole(&p, 9);
}

#[test]
fn a_schema_6_vault_migrates_and_its_blob_rows_and_small_outputs_coexist() {
    let p = migrates_and_serves_the_same_hits("vault-schema6", 13);
    let read = |rel: &str| std::fs::read(p.path(rel)).unwrap();
    p.run(&["cache", "get", "tiny6", "in6", "got6"]).ok();
    assert_eq!(read("got6"), read("out6"), "a tiny output in a row of blobs (schema 6)");
    let squares = p.run(&["--json", "log", "--task", "square"]).ok().json();
    assert_eq!(squares.as_array().unwrap().len(), 6);
    // Saved now, the same 4 bytes stay in the new run's row: no blob row is added, and the
    // old run's row keeps its count.
    let db = rusqlite::Connection::open(p.vault().join("cache.db")).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let blobs = count("SELECT count(*) FROM blobs");
    p.run(&["cache", "save", "tiny7", "in6", "out6"]).ok();
    assert_eq!(count("SELECT count(*) FROM blobs"), blobs);
    assert_eq!(count("SELECT count(*) FROM entries WHERE small IS NOT NULL"), 1);
    let tiny7 = p.run(&["--json", "log", "--task", "tiny7"]).ok().json();
    p.run(&["rm", tiny7[0]["id"].as_str().unwrap()]).ok();
    p.run(&["cache", "get", "tiny6", "in6", "got6b"]).ok();
    assert_eq!(read("got6b"), read("out6"), "removing the small run took no reference");
    reimports_whole(&p, 12);
}

/// Exports every live run of `p` and imports the archive into a new vault: all `live` of them
/// are imported (an import recomputes each run's key from the ingredients it recorded).
fn reimports_whole(p: &Project, live: u64) {
    let archive = p.path("all.tar.zst");
    p.run(&["export", archive.to_str().unwrap()]).ok();
    let q = Project::new();
    let imported = q.run(&["--json", "import", archive.to_str().unwrap()]).ok().json();
    assert_eq!(imported["imported"].as_u64(), Some(live), "{imported}");
}

fn migrates_and_serves_the_same_hits(fixture: &str, runs: usize) -> Project {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
    let p = Project::new();
    copy_tree(&fixture.join("project"), p.dir.path());
    copy_tree(&fixture.join("vault"), &p.vault());
    let read = |rel: &str| std::fs::read(p.path(rel)).unwrap();

    p.run(&["cache", "get", "small", "in1", "got1"]).ok();
    assert_eq!(read("got1"), read("out1b"), "the newer of the key's two runs");
    p.run(&["cache", "get", "big", "in2", "got2"]).ok();
    assert_eq!(read("got2"), read("out2"), "a blob stored as a file");
    p.run(&["cache", "get", "tree", "in1", "gotdir"]).ok();
    assert_eq!(read("gotdir/sub/b.txt"), read("dirout/sub/b.txt"));
    let r = p
        .run(&[
            "run",
            "--task",
            "build",
            "-i",
            "src/*.py",
            "-o",
            "report.txt",
            "--",
            "sh",
            "-c",
            "echo built; echo report > report.txt",
        ])
        .ok();
    assert!(r.stderr().contains("taskvault: hit build"), "{}", r.stderr());
    assert_eq!((r.stdout(), read("report.txt")), ("built\n".to_owned(), b"report\n".to_vec()));
    p.run(&["cache", "get", "small", "in2", "nope"]).code_is(1);

    // Listings, history and the census are what the old vault held.
    let all = p.run(&["--json", "log", "--all"]).ok().json();
    assert_eq!(all.as_array().unwrap().len(), runs);
    let tags = p.run(&["--json", "log", "--tag", "kind=blob"]).ok().json();
    assert_eq!(tags[0]["task"], "big");
    let small = all.as_array().unwrap().iter().find(|e| e["task"] == "small").unwrap();
    let history = p.run(&["--json", "history", small["id"].as_str().unwrap()]).ok().json();
    assert_eq!(history.as_array().unwrap().len(), 2);
    let s = p.stats();
    let db = rusqlite::Connection::open(p.vault().join("cache.db")).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(s["entries"].as_i64(), Some(runs as i64 - 1));
    assert_eq!(s["runs"].as_i64(), Some(count("SELECT count(*) FROM entries")));
    assert_eq!(s["blobs"].as_i64(), Some(count("SELECT count(*) FROM blobs")));
    assert!(p.run(&["--json", "verify"]).ok().json()["corrupt"].as_array().unwrap().is_empty());
    assert_eq!(count("PRAGMA user_version"), taskvault::store::sqlite::SCHEMA_VERSION);
    drop(db);
    p
}
