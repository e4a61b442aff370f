use super::*;

#[test]
fn safe_relative_paths() {
    assert!(is_safe_relative("a/b.txt"));
    for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/."] {
        assert!(!is_safe_relative(bad), "{bad}");
    }
}

#[test]
fn walk_sorts_and_records_symlinks_without_following() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir(r.join("b")).unwrap();
    std::fs::write(r.join("b/x"), b"1").unwrap();
    std::fs::write(r.join("a"), b"22").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", r.join("l")).unwrap();
    let w = walk(r).unwrap();
    let names: Vec<_> = w.iter().map(|w| w.rel.as_str()).collect();
    assert_eq!(names, ["a", "b", "b/x", "l"]);
    assert_eq!(w[3].kind, NodeKind::Symlink);
    assert_eq!(w[3].target.as_deref(), Some("/etc/hostname"));
    assert_eq!(w[0].size, 2);
}
