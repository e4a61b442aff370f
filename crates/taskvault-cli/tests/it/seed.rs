//! The seed's quick start and its bash CI recipe, verbatim.

use crate::{Project, noise};

#[test]
fn seed_quick_start_word_for_word() {
    let p = Project::new();
    let init = p.run(&["init"]).ok();
    assert!(init.stderr().contains("Created .taskvault/config.yaml"));
    let cfg = std::fs::read_to_string(p.path(".taskvault/config.yaml")).unwrap();
    for line in [
        "cache_dir: .taskvault/cache",
        "max_size_gb: 10",
        "hash_algorithm: blake3",
        "ttl_seconds: 604800",
        "strategy: lru",
    ] {
        assert!(cfg.contains(line), "{line} missing from\n{cfg}");
    }
    let model = noise(5_242_880, 1);
    p.write("model.pkl", &model);
    p.write("data.csv", "x,y\n1,2\n");

    let save = p.run(&["cache", "save", "train_model", "data.csv", "model.pkl"]).ok();
    let line = save.stderr();
    assert!(line.starts_with("✓ Cached train_model (hash: "), "{line}");
    assert!(line.contains("size: 5242880 bytes)"), "{line}");

    let get = p.run(&["cache", "get", "train_model", "data.csv", "model2.pkl"]).ok();
    assert_eq!(get.stderr().trim(), "✓ Cache hit for train_model (size: 5242880 bytes)");
    assert_eq!(std::fs::read(p.path("model2.pkl")).unwrap(), model);

    let miss = p.run(&["cache", "get", "other_task", "data.csv", "x.pkl"]).code_is(1);
    assert!(miss.stderr().contains("Cache miss for other_task"));
    assert!(!p.path("x.pkl").exists());

    let stats = p.run(&["cache", "stats"]).ok().stdout();
    for field in [
        "Entries:        1",
        "Total Size:     5.00 MiB",
        "Cache Limit:    10.00 GiB",
        "Usage:",
        "Hits:           1",
        "Misses:         1",
        "Time Saved:",
    ] {
        assert!(stats.contains(field), "{field} missing from\n{stats}");
    }
}

/// The seed's "Example 1" script, unchanged, with a stand-in `npm` on PATH that counts runs.
const RECIPE: &str = r#"#!/bin/bash
# cicd-test.sh - Cache test results

TASKVAULT=./taskvault
CACHE_KEY="$1"
TEST_INPUT="$2"
TEST_OUTPUT="$3"

# Check if result is cached
if $TASKVAULT cache get "$CACHE_KEY" "$TEST_INPUT" "$TEST_OUTPUT" 2>/dev/null; then
    echo "✓ Tests passed (from cache)"
    exit 0
fi

# Cache miss: run tests
if npm test > "$TEST_OUTPUT" 2>&1; then
    # Save result
    $TASKVAULT cache save "$CACHE_KEY" "$TEST_INPUT" "$TEST_OUTPUT"
    exit 0
else
    exit 1
fi
"#;

#[test]
fn seed_ci_recipe_runs_tests_on_a_miss_and_skips_them_on_a_hit() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    p.write("cicd-test.sh", RECIPE);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_taskvault"), p.path("taskvault")).unwrap();
    let bin = p.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let npm = p.write(
        "bin/npm",
        "#!/bin/sh\necho run >> \"$NPM_RUNS\"\necho 'all 12 tests passed'\nexit \"${NPM_EXIT:-0}\"\n",
    );
    std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.write("package.json", r#"{"name": "app", "version": "1.0.0"}"#);
    let runs = p.path("npm-runs");
    let recipe = |exit: &str| {
        let mut c = std::process::Command::new("bash");
        c.arg("cicd-test.sh")
            .args(["unit_tests", "package.json", "test-results.txt"])
            .current_dir(p.dir.path())
            .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()))
            .env("NPM_RUNS", &runs)
            .env("NPM_EXIT", exit)
            .env_remove("TASKVAULT_DIR");
        c.output().unwrap()
    };
    let count = || std::fs::read_to_string(&runs).map(|s| s.lines().count()).unwrap_or(0);

    let first = recipe("0");
    assert!(first.status.success());
    assert_eq!(count(), 1, "a miss runs the tests");
    let second = recipe("0");
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("Tests passed (from cache)"));
    assert_eq!(count(), 1, "a hit skips them");
    assert_eq!(
        std::fs::read_to_string(p.path("test-results.txt")).unwrap(),
        "all 12 tests passed\n"
    );

    // A changed input misses again, and failing tests fail the step (and are not cached).
    p.write("package.json", r#"{"name": "app", "version": "1.0.1"}"#);
    assert!(!recipe("1").status.success());
    assert_eq!(count(), 2);
    assert!(!recipe("1").status.success());
    assert_eq!(count(), 3, "a failure was not cached");
}
