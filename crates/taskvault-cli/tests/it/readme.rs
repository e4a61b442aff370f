//! The README's shell examples, run as written: every fenced block is either executed here
//! (in a scratch project, with stub `python`, `npm` and `pytest` that count their calls) or
//! listed below with the test that covers it, so an example that stops doing what it says
//! fails the suite.

use std::path::Path;
use std::process::{Command, Output};

use crate::Project;

struct Block {
    lang: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    for line in readme.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some(Block { lang: lang.into(), text: String::new() }),
            (Some(_), Some("")) => out.push(current.take().unwrap()),
            (Some(b), _) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in README.md");
    out
}

/// Blocks run elsewhere, by what they start with.
const COVERED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "bash scripts/quickstart.sh",
        "the README's set-up commands: CI runs scripts/test.sh, quickstart.sh is run by hand",
    ),
    ("cargo install", "installs the binary these tests build"),
    (
        "cp \"$(bash scripts/build-release.sh)\"",
        "build-release.sh, checked by hand with CARGO_TARGET_DIR set",
    ),
    (
        "use taskvault::",
        "compiled by `cargo test --doc -p taskvault` (crates/taskvault/src/lib.rs)",
    ),
    ("python3 -m venv", "the Python install: scripts/test-python.sh builds the same wheel"),
    ("from taskvault import", "run by crates/taskvault-py/tests/test_readme.py"),
    (
        "client = Client(store=\"postgres://",
        "Client(store=...) on a real PostgreSQL: crates/taskvault-py/tests/test_postgres.py",
    ),
    (
        "client = Client(store=\"redis://",
        "Client(store=...) on a real Redis: crates/taskvault-py/tests/test_redis.py",
    ),
    (
        "taskvault --dir /srv/taskvault serve",
        "serving and tokens: tests/it/remote.rs runs real servers with the same commands",
    ),
    ("namespace: ci", "the remote block: tests/it/remote.rs writes it for each machine"),
    (
        "export TASKVAULT_TOKEN",
        "run on two machines through a server: tests/it/remote.rs (run_replays_a_command_...)",
    ),
    ("# /etc/systemd/system/taskvault.service", "a deployment example (no systemd here)"),
    ("FROM debian:bookworm-slim", "a deployment example (no Docker engine here)"),
    (
        "bazel build //... --remote_cache=",
        "each tool's setting: tests/it/tools/*.rs drive the real clients with the same settings",
    ),
    ("// Gradle, settings.gradle", "Gradle's setting: tests/it/tools/gradle.rs writes it"),
    (
        "storage:",
        "blobs in an object store: crates/taskvault/tests/it/conformance.rs runs vaults on a real S3 server",
    ),
    (
        "kubectl create secret",
        "a deployment example: scripts/test-deploy.sh checks the manifests (no cluster here)",
    ),
    (
        "TASKVAULT_TOKENS_FILE=",
        "a token file outside the vault: tests/it/remote.rs (a_token_file_kept_outside_...); no kubectl here",
    ),
];

const STUBS: &[(&str, &str)] = &[
    (
        "python",
        "#!/bin/sh\necho \"python $*\" >> \"$CALLS\"\nprintf 'model weights for %s\\n' \"$*\"\n",
    ),
    ("npm", "#!/bin/sh\necho \"npm $*\" >> \"$CALLS\"\necho '12 passing'\n"),
    (
        "pytest",
        "#!/bin/sh\necho \"pytest $*\" >> \"$CALLS\"\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = --junitxml ]; then mkdir -p \"$(dirname \"$2\")\"; echo '<testsuite tests=\"3\"/>' > \"$2\"; fi\n  shift\ndone\necho '3 passed'\n",
    ),
];

struct Sandbox {
    p: Project,
}

impl Sandbox {
    fn new() -> Sandbox {
        let p = Project::new();
        for (name, body) in STUBS {
            let path = p.write(&format!("stubs/{name}"), body);
            let exec =
                <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
            std::fs::set_permissions(&path, exec).unwrap();
        }
        for (f, body) in [
            ("data.csv", "x,y\n1,2\n"),
            ("package.json", "{\"name\": \"app\"}\n"),
            ("package-lock.json", "{}\n"),
            ("requirements.txt", "pytest\n"),
            ("src/app.py", "print('app')\n"),
            ("src/index.js", "module.exports = 1\n"),
            ("tests/test_app.py", "def test_app():\n    pass\n"),
        ] {
            p.write(f, body);
        }
        Sandbox { p }
    }

    fn run(&self, script: &str) -> Output {
        let bin = Path::new(env!("CARGO_BIN_EXE_taskvault")).parent().unwrap();
        let path = format!("{}:{}:/usr/bin:/bin", bin.display(), self.p.path("stubs").display());
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(self.p.dir.path())
            .env("PATH", path)
            .env("CALLS", self.p.path("calls"))
            .env_remove("TASKVAULT_DIR")
            .env_remove("TASKVAULT_CONFIG")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    fn calls(&self) -> usize {
        std::fs::read_to_string(self.p.path("calls")).map_or(0, |s| s.lines().count())
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The script of a GitHub Actions step: the indented lines after `run: |`.
fn yaml_run(block: &str) -> String {
    let mut lines = block.lines().skip_while(|l| !l.trim_start().starts_with("run: |")).skip(1);
    let first = lines.next().expect("a run: | step");
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(lines.take_while(|l| l.len() > indent && l[..indent].trim().is_empty()))
        .map(|l| format!("{}\n", &l[indent..]))
        .collect()
}

/// A block that must run its tool once, then replay it, then run it again after a source change.
fn runs_then_hits_then_reruns(script: &str, what: &str) {
    let s = Sandbox::new();
    let first = s.run(script);
    assert!(first.status.success(), "{what}, first run: {}", text(&first));
    assert_eq!(s.calls(), 1, "{what}: the first run runs it: {}", text(&first));
    let second = s.run(script);
    assert!(second.status.success(), "{what}, second run: {}", text(&second));
    assert_eq!(s.calls(), 1, "{what}: the second run is a hit: {}", text(&second));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("taskvault: hit"),
        "{}",
        text(&second)
    );
    s.p.write("src/app.py", "print('changed')\n");
    s.p.write("src/index.js", "module.exports = 2\n");
    let third = s.run(script);
    assert!(third.status.success(), "{what}, after a change: {}", text(&third));
    assert_eq!(s.calls(), 2, "{what}: a changed source runs it again: {}", text(&third));
}

#[test]
fn every_readme_example_does_what_it_says() {
    let mut executed = 0;
    for b in blocks() {
        let first = b.text.lines().next().unwrap_or_default().trim_start().to_owned();
        if COVERED_ELSEWHERE.iter().any(|(start, _)| first.starts_with(start)) {
            continue;
        }
        executed += 1;
        match b.lang.as_str() {
            "yaml" => runs_then_hits_then_reruns(&yaml_run(&b.text), "the GitHub Actions step"),
            "sh" | "bash" if first.starts_with("taskvault init") => quick_start(&b.text),
            "sh" | "bash" if first.starts_with("taskvault run") => {
                runs_then_hits_then_reruns(&b.text, &first)
            }
            "sh" | "bash" if first.starts_with("if taskvault cache get") => seed_recipe(&b.text),
            _ => panic!(
                "README block in {:?} starting {first:?} is neither run by this test nor listed in COVERED_ELSEWHERE",
                b.lang
            ),
        }
    }
    assert_eq!(
        executed, 5,
        "the quick start, two `run` examples, the seed recipe, the Actions step"
    );
}

/// The quick start: a save, a hit that restores the same bytes, a miss that writes nothing.
fn quick_start(script: &str) {
    let s = Sandbox::new();
    let o = s.run(script);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    for line in [
        "✓ Created .taskvault/config.yaml",
        "✓ Cached train_model",
        "✓ Cache hit for train_model",
        "✗ Cache miss for other_task",
    ] {
        assert!(err.contains(line), "{line:?} missing: {}", text(&o));
    }
    assert_eq!(
        std::fs::read(s.p.path("model.pkl")).unwrap(),
        std::fs::read(s.p.path("model2.pkl")).unwrap()
    );
    assert!(!s.p.path("x.pkl").exists());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Entries:        1"), "{}", text(&o));
}

/// The seed's recipe does what the README says of it: it runs the tests on a miss, replays on a
/// hit, and, its key being only package.json, still hits after a source file changed.
fn seed_recipe(script: &str) {
    let s = Sandbox::new();
    let first = s.run(script);
    assert!(first.status.success(), "{}", text(&first));
    assert_eq!(s.calls(), 1, "a miss runs the tests: {}", text(&first));
    let second = s.run(script);
    assert_eq!(s.calls(), 1);
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("✓ Tests passed (from cache)"),
        "{}",
        text(&second)
    );
    s.p.write("src/index.js", "module.exports = 'untested'\n");
    let third = s.run(script);
    assert_eq!(s.calls(), 1, "the key is only package.json: the README says so");
    assert!(String::from_utf8_lossy(&third.stdout).contains("from cache"), "{}", text(&third));
}
