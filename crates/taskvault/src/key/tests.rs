//! One test per key ingredient listed in docs/keys.md.

use super::*;
use std::os::unix::fs::PermissionsExt;

fn content(alg: Algorithm, bytes: &[u8]) -> InputRecord {
    InputRecord::hash(alg, &Input::Bytes(bytes.to_vec())).unwrap()
}

fn key(alg: Algorithm, ns: &str, task: &str, input: &[u8]) -> Digest {
    TaskKey::new(alg, ns, task, vec![content(alg, input)], vec![]).unwrap().digest()
}

#[test]
fn ingredient_task_name() {
    let a = key(Algorithm::Blake3, "default", "train_model", b"data");
    let b = key(Algorithm::Blake3, "default", "other_task", b"data");
    assert_ne!(a, b);
    assert_eq!(a, key(Algorithm::Blake3, "default", "train_model", b"data"));
}

#[test]
fn ingredient_input_content() {
    let a = key(Algorithm::Blake3, "default", "t", b"data-1");
    let b = key(Algorithm::Blake3, "default", "t", b"data-2");
    assert_ne!(a, b);
}

#[test]
fn ingredient_namespace() {
    assert_ne!(
        key(Algorithm::Blake3, "team-a", "t", b"x"),
        key(Algorithm::Blake3, "team-b", "t", b"x")
    );
}

#[test]
fn ingredient_algorithm() {
    let a = key(Algorithm::Blake3, "default", "t", b"x");
    let b = key(Algorithm::Sha256, "default", "t", b"x");
    assert_ne!(a.as_bytes(), b.as_bytes());
    assert_eq!(b.algorithm(), Algorithm::Sha256);
}

#[test]
fn ingredient_extras_label_and_value() {
    let alg = Algorithm::Blake3;
    let mk = |extras: Vec<(String, Vec<u8>)>| {
        TaskKey::new(alg, "d", "t", vec![content(alg, b"x")], extras).unwrap().digest()
    };
    let base = mk(vec![("argv".into(), b"a".to_vec())]);
    assert_ne!(base, mk(vec![("argv".into(), b"b".to_vec())]));
    assert_ne!(base, mk(vec![("env".into(), b"a".to_vec())]));
    assert_ne!(base, mk(vec![]));
}

#[test]
fn length_prefixing_prevents_field_shifting() {
    // "ab" + "c" and "a" + "bc" must not collide in namespace/task.
    assert_ne!(key(Algorithm::Blake3, "ab", "c", b""), key(Algorithm::Blake3, "a", "bc", b""));
    let alg = Algorithm::Blake3;
    let two = TaskKey::new(alg, "d", "t", vec![content(alg, b"a"), content(alg, b"b")], vec![]);
    let swapped = TaskKey::new(alg, "d", "t", vec![content(alg, b"b"), content(alg, b"a")], vec![]);
    assert_ne!(two.unwrap().digest(), swapped.unwrap().digest());
}

#[test]
fn file_and_bytes_with_same_content_are_the_same_input_and_name_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("data.csv");
    let b = dir.path().join("renamed.csv");
    std::fs::write(&a, b"1,2,3\n").unwrap();
    std::fs::write(&b, b"1,2,3\n").unwrap();
    let alg = Algorithm::Blake3;
    let ra = InputRecord::hash(alg, &Input::Path(a)).unwrap();
    let rb = InputRecord::hash(alg, &Input::Path(b)).unwrap();
    let rc = content(alg, b"1,2,3\n");
    assert_eq!((ra.kind, ra.digest), (rb.kind, rb.digest));
    assert_eq!((ra.kind, ra.digest), (rc.kind, rc.digest));
}

#[test]
fn ingredient_directory_tree() {
    let alg = Algorithm::Blake3;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("a.txt"), b"A").unwrap();
    std::fs::write(root.join("sub/b.txt"), b"B").unwrap();
    let d = |p: &std::path::Path| InputRecord::hash(alg, &Input::Path(p.to_owned())).unwrap();
    let base = d(&root);
    assert_eq!(base.kind, InputKind::Tree);
    assert_eq!(base.size, 2);

    // The same tree elsewhere under another root name is the same input.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(copy.join("sub")).unwrap();
    std::fs::write(copy.join("a.txt"), b"A").unwrap();
    std::fs::write(copy.join("sub/b.txt"), b"B").unwrap();
    assert_eq!(d(&copy).digest, base.digest);

    // Content, relative path, mode and an added empty directory each change it.
    std::fs::write(copy.join("sub/b.txt"), b"b").unwrap();
    assert_ne!(d(&copy).digest, base.digest);
    std::fs::write(copy.join("sub/b.txt"), b"B").unwrap();
    std::fs::rename(copy.join("a.txt"), copy.join("z.txt")).unwrap();
    assert_ne!(d(&copy).digest, base.digest);
    std::fs::rename(copy.join("z.txt"), copy.join("a.txt")).unwrap();
    assert_eq!(d(&copy).digest, base.digest);
    std::fs::set_permissions(copy.join("a.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_ne!(d(&copy).digest, base.digest);
    std::fs::set_permissions(
        copy.join("a.txt"),
        std::fs::metadata(root.join("a.txt")).unwrap().permissions(),
    )
    .unwrap();
    assert_eq!(d(&copy).digest, base.digest);
    std::fs::create_dir(copy.join("empty")).unwrap();
    assert_ne!(d(&copy).digest, base.digest);

    // A file and a directory never share a key even with the same bytes hashed.
    assert_ne!(d(&root.join("a.txt")).kind, base.kind);
}

#[test]
fn missing_input_is_a_clear_error() {
    let err =
        InputRecord::hash(Algorithm::Blake3, &Input::Path("/nonexistent/x".into())).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/x"), "{err}");
    assert!(err.to_string().contains("no such file"), "{err}");
}

#[test]
fn encoding_is_stable() {
    // Pinned: if this changes, KEY_VERSION must be bumped and docs/keys.md updated.
    let alg = Algorithm::Blake3;
    let k =
        TaskKey::new(alg, "default", "train_model", vec![content(alg, b"data")], vec![]).unwrap();
    assert_eq!(k.encode()[..14], *b"taskvault/key\x01");
    assert_eq!(k.digest().hex(), alg.digest(&k.encode()).hex(),);
    assert_eq!(k.digest().hex().len(), 64);
}
