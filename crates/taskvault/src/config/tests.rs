use super::*;

fn parse(text: &str) -> Result<ConfigFile> {
    ConfigFile::parse(text, Path::new("config.yaml"))
}

#[test]
fn init_template_is_the_seed_schema_and_parses_to_defaults() {
    let cfg = parse(INIT_TEMPLATE).unwrap();
    let s = cfg.settings(Path::new("/proj"));
    assert_eq!(s.vault_dir, Path::new("/proj/.taskvault/cache"));
    assert_eq!(s.max_size_bytes, Some(10 * (1 << 30)));
    assert_eq!(s.algorithm, Algorithm::Blake3);
    assert_eq!(s.default_policy.ttl_seconds, Some(604_800));
    assert_eq!(s.default_policy.max_size_bytes, Some(104_857_600));
}

#[test]
fn seed_example_with_per_task_policies_and_fallback() {
    let cfg = parse(
        "cache_dir: /abs/cache\nmax_size_gb: 50\nhash_algorithm: sha256\nlog_level: info\nservice_port: 9999\npolicies:\n  default:\n    ttl_seconds: 604800\n    max_size_bytes: 104857600\n    strategy: lru\n  ml_training:\n    ttl_seconds: 2592000\n  unit_tests:\n    ttl_seconds: 0\n    max_size_bytes: 52428800\n",
    )
    .unwrap();
    let s = cfg.settings(Path::new("/proj"));
    assert_eq!(s.vault_dir, Path::new("/abs/cache"));
    assert_eq!(s.algorithm, Algorithm::Sha256);
    let ml = s.policy("ml_training");
    assert_eq!(ml.ttl_seconds, Some(2_592_000));
    assert_eq!(ml.max_size_bytes, Some(104_857_600), "falls back to default");
    assert_eq!(s.policy("unit_tests").ttl_seconds, None, "0 means never expires");
    assert_eq!(s.policy("unknown").ttl_seconds, Some(604_800));
}

#[test]
fn a_namespace_policy_applies_to_its_tasks_without_their_own() {
    let cfg = parse(
        "policies:\n  default:\n    ttl_seconds: 100\n  ns:web:\n    ttl_seconds: 200\n    max_size_bytes: 10\n  turbo:\n    ttl_seconds: 300\n",
    )
    .unwrap();
    let s = cfg.settings(Path::new("/proj"));
    assert_eq!(s.policy_for("web", "nx").ttl_seconds, Some(200), "the namespace's block");
    assert_eq!(s.policy_for("web", "nx").max_size_bytes, Some(10));
    assert_eq!(s.policy_for("web", "turbo").ttl_seconds, Some(300), "the task's own first");
    assert_eq!(s.policy_for("other", "nx").ttl_seconds, Some(100), "else the default");
}

#[test]
fn malformed_yaml_reports_line_and_column() {
    let err = parse("max_size_gb: 10\npolicies:\n  default: [\n").unwrap_err().to_string();
    assert!(err.contains("line"), "{err}");
    assert!(err.contains("column"), "{err}");
}

#[test]
fn unknown_keys_negative_sizes_and_bad_values_are_refused() {
    for (text, needle) in [
        ("max_sise_gb: 10\n", "unknown field"),
        ("max_size_gb: -1\n", "max_size_gb"),
        ("policies:\n  default:\n    max_size_bytes: -5\n", "max_size_bytes"),
        ("policies:\n  t:\n    ttl_seconds: -5\n", "ttl_seconds"),
        ("policies:\n  t:\n    strategy: mru\n", "strategy"),
        ("policies:\n  t:\n    colour: red\n", "unknown field"),
        ("hash_algorithm: md5\n", "hash_algorithm"),
        ("log_level: loud\n", "log_level"),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?} -> {err}");
    }
}

#[test]
fn zero_cap_means_unbounded() {
    let s = parse("max_size_gb: 0\n").unwrap().settings(Path::new("/"));
    assert_eq!(s.max_size_bytes, None);
}
