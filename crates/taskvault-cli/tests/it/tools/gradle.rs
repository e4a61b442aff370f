//! Gradle (Debian's 4.4.1) against `taskvault serve` as its HTTP build cache.

use std::path::Path;
use std::process::{Command, Output};

use super::{Server, corrupt_every_blob, succeeded, system};

/// A Java project whose one class holds 48 KB of random text (its cached output is too large
/// to live in the server's database); the local build cache is off, so every hit is remote.
fn project(dir: &Path, seed: u64) {
    std::fs::create_dir_all(dir.join("src/main/java")).unwrap();
    std::fs::write(
        dir.join("settings.gradle"),
        "rootProject.name = 'demo'\nbuildCache {\n    local { enabled = false }\n    \
         remote(HttpBuildCache) {\n        url = System.getenv('TV_CACHE_URL')\n        \
         push = true\n        credentials {\n            username = 'ci'\n            \
         password = System.getenv('TV_TOKEN')\n        }\n    }\n}\n",
    )
    .unwrap();
    std::fs::write(dir.join("build.gradle"), "apply plugin: 'java'\n").unwrap();
    source(dir, seed);
}

fn source(dir: &Path, seed: u64) {
    use base64::Engine as _;
    let text =
        base64::engine::general_purpose::STANDARD.encode(super::super::noise(36 << 10, seed));
    std::fs::write(
        dir.join("src/main/java/Hello.java"),
        format!("public class Hello {{ public static String s() {{ return \"{text}\"; }} }}\n"),
    )
    .unwrap();
}

fn gradle(bin: &Path, dir: &Path, url: &str, token: &str) -> Output {
    Command::new(bin)
        .args(["--no-daemon", "--console=plain", "--build-cache", "-g"])
        .arg(dir.join(".gradle-home"))
        .args(["clean", "compileJava"])
        .current_dir(dir)
        .env("TV_CACHE_URL", url)
        .env("TV_TOKEN", token)
        .output()
        .unwrap()
}

fn class(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("build/classes/java/main/Hello.class")).unwrap()
}

#[test]
fn gradle_builds_share_the_http_build_cache() {
    let Some(bin) = system("gradle") else { return };
    let server = Server::start();
    let writer = server.token(&["create", "--scope", "write", "--namespace", "gradle"]);
    let reader = server.token(&["create", "--scope", "read", "--namespace", "gradle"]);
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    project(dir, 1);
    let url = format!("{}/gradle/", server.url);

    let out = succeeded(&gradle(&bin, dir, &url, &writer));
    assert!(out.contains("1 executed"), "{out}");
    assert_eq!(server.entries(), 1, "compileJava's output stored");
    let built = class(dir);

    // A clean build: compileJava comes from the server.
    let out = succeeded(&gradle(&bin, dir, &url, &writer));
    assert!(out.contains("1 from cache"), "{out}");
    assert_eq!(class(dir), built);

    // A namespace of its own under /gradle/{ns}/: the token for `gradle` may not use it, and
    // the build still succeeds.
    let out = succeeded(&gradle(&bin, dir, &format!("{}/gradle/other/", server.url), &writer));
    assert!(out.contains("403"), "{out}");

    // A read-only token: a changed class builds, succeeds, and nothing is written.
    source(dir, 2);
    let out = succeeded(&gradle(&bin, dir, &url, &reader));
    assert!(!out.contains("from cache"), "{out}");
    assert_eq!(server.entries(), 1, "a read-only token stored nothing");

    // A wrong token: the build succeeds, Gradle names the 401.
    let out = succeeded(&gradle(&bin, dir, &url, "not-a-token"));
    assert!(out.contains("401"), "{out}");
    assert_eq!(server.entries(), 1);

    // A corrupt stored output: Gradle compiles again, and succeeds.
    source(dir, 1);
    assert!(corrupt_every_blob(&server) >= 1, "the output is a blob file");
    let out = succeeded(&gradle(&bin, dir, &url, &writer));
    assert!(!out.contains("from cache"), "a corrupt output was served:\n{out}");
    assert_eq!(class(dir), built, "compiled again, the same");
}
