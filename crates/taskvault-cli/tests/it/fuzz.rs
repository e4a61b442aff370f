//! The fuzz tier of the CLI (issue 11): random command lines built from the real commands,
//! flags and hostile values, run as whole processes against one vault with a per-case
//! deadline. Every case exits 0, 1 or 2 (or a wrapped command's own code), never by a panic or
//! a signal, and never hangs; the vault still verifies afterwards.

use std::process::Stdio;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::Project;

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        // Commands and subcommands.
        prop_oneof![
            Just("cache"),
            Just("save"),
            Just("get"),
            Just("stats"),
            Just("run"),
            Just("log"),
            Just("show"),
            Just("history"),
            Just("diff"),
            Just("rm"),
            Just("invalidate"),
            Just("gc"),
            Just("clear"),
            Just("verify"),
            Just("export"),
            Just("import"),
            Just("init"),
            Just("--"),
        ],
        // Flags.
        prop_oneof![
            Just("--ttl"),
            Just("--duration"),
            Just("--tag"),
            Just("--json"),
            Just("--input"),
            Just("--output"),
            Just("-o"),
            Just("--max-size"),
            Just("--older-than"),
            Just("--since"),
            Just("-n"),
            Just("--all"),
            Just("--task"),
            Just("--yes"),
            Just("--env"),
            Just("--salt"),
            Just("--explain"),
            Just("--no-save"),
            Just("--link"),
            Just("--dir"),
            Just("--config"),
            Just("-v"),
            Just("--force"),
        ],
        // Values.
        prop_oneof![
            Just("18446744073709551615"),
            Just("-1"),
            Just("0"),
            Just("1e400"),
            Just("NaN"),
            Just("inf"),
            Just("99999999999y"),
            Just("5MB"),
            Just("k="),
            Just("=v"),
            Just("in"),
            Just("out"),
            Just("-"),
            Just("/dev/full"),
            Just("dev"),
            Just("fifo"),
            Just("e/**"),
            Just("**/*"),
            Just("[unclosed"),
            Just("."),
            Just(".."),
            Just(""),
            Just(".taskvault/cache/cache.db"),
            Just("true"),
            Just("false"),
            Just("t"),
        ],
    ]
    .prop_map(str::to_owned)
}

fn project() -> Project {
    let p = Project::new();
    p.write("in", "input");
    p.write("out", "output");
    p.write("e/a", "a");
    std::os::unix::fs::symlink(".", p.path("e/self")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(p.path("fifo")).status().unwrap().success());
    let ok = std::process::Command::new("mknod")
        .arg(p.path("dev"))
        .args(["c", "1", "3"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mknod needs root");
    p.run(&["cache", "save", "t", "in", "out"]).ok();
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_command_lines_never_panic_or_hang(args in proptest::collection::vec(token(), 1..7)) {
        let p = project();
        let mut child = p
            .cmd()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                prop_assert!(false, "{args:?} hung");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        prop_assert!(status.code().is_some(), "{args:?} died by a signal: {err}");
        prop_assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        let wrapped = args.iter().any(|a| a == "run");
        prop_assert!(wrapped || status.code().unwrap() <= 2, "{args:?}: exit {status}: {err}");
        // The special files were left as they were.
        use std::os::unix::fs::FileTypeExt;
        prop_assert!(std::fs::symlink_metadata(p.path("dev")).unwrap().file_type().is_char_device());
        prop_assert!(std::fs::symlink_metadata(p.path("fifo")).unwrap().file_type().is_fifo());
        let v = p.run(&["verify"]);
        prop_assert!(v.code() == 0, "{args:?} left a vault that does not verify: {}", v.stdout());
    }
}
