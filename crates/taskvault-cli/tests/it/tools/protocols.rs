//! Every protocol's routes spoken directly (no client needed): scopes, namespaces, limits,
//! malformed requests and integrity, the same for all six.

use super::Server;

fn http() -> ureq::Agent {
    ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).build())
}

/// (method, url, token, body) -> (status, body)
fn call(method: &str, url: &str, token: Option<&str>, body: &[u8]) -> (u16, Vec<u8>) {
    let h = http();
    let req = ureq::http::Request::builder().method(method).uri(url);
    let req = match token {
        Some(t) => req.header("Authorization", format!("Bearer {t}")),
        None => req,
    };
    let mut resp = h.run(req.body(body.to_vec()).unwrap()).unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().read_to_vec().unwrap_or_default();
    (status, bytes)
}

/// Each protocol's artifact URL for key `k` in its default namespace.
fn urls(base: &str, k: &str) -> Vec<(&'static str, String)> {
    let sha = taskvault::Algorithm::Sha256.digest(k.as_bytes()).hex();
    vec![
        ("turbo", format!("{base}/v8/artifacts/{k}?slug=turbo")),
        ("nx", format!("{base}/v1/cache/{k}")),
        ("bazel-ac", format!("{base}/bazel/ac/{sha}")),
        ("ccache", format!("{base}/ccache/{}/{}", &k[..2], &k[2..])),
        ("sccache", format!("{base}/sccache/a/b/c/{k}")),
        ("gradle", format!("{base}/gradle/{k}")),
    ]
}

const NAMESPACES: &[&str] = &["turbo", "nx", "bazel", "ccache", "sccache", "gradle"];

fn token(server: &Server, scope: &str, namespaces: &[&str]) -> String {
    let mut args = vec!["create", "--scope", scope];
    for ns in namespaces {
        args.extend(["--namespace", ns]);
    }
    server.token(&args)
}

#[test]
fn every_protocol_stores_serves_and_refuses_alike() {
    let server = Server::start();
    let writer = token(&server, "write", NAMESPACES);
    let reader = token(&server, "read", NAMESPACES);
    let stranger = token(&server, "write", &["elsewhere"]);
    let base = server.url.clone();
    for (tool, url) in urls(&base, "a1b2c3d4e5f6") {
        let body = format!("the artifact of {tool}").into_bytes();
        assert_eq!(call("GET", &url, Some(&reader), b"").0, 404, "{tool}: a miss");
        assert_eq!(call("GET", &url, None, b"").0, 401, "{tool}: no token");
        assert_eq!(call("GET", &url, Some("nope"), b"").0, 401, "{tool}: unknown token");
        assert_eq!(call("GET", &url, Some(&stranger), b"").0, 403, "{tool}: other namespace");
        let (status, _) = call("PUT", &url, Some(&reader), &body);
        assert_eq!(status, 403, "{tool}: a read-only token never writes");
        assert_eq!(call("GET", &url, Some(&reader), b"").0, 404, "{tool}: nothing stored");
        let (status, _) = call("PUT", &url, Some(&writer), &body);
        assert!((200..300).contains(&status), "{tool}: stored ({status})");
        let (status, got) = call("GET", &url, Some(&reader), b"");
        assert_eq!((status, got), (200, body.clone()), "{tool}: served to a reader");
        let (status, got) = call("HEAD", &url, Some(&reader), b"");
        assert_eq!((status, got.len()), (200, 0), "{tool}: HEAD");
    }
    assert_eq!(server.entries(), 6);
}

#[test]
fn one_client_key_is_one_entry_per_tool_and_per_namespace() {
    let server = Server::start();
    let base = server.url.clone();
    // The same key through Turborepo for team `nx` and through Nx: two entries, never mixed.
    let (s, _) = call("PUT", &format!("{base}/v8/artifacts/k1?slug=nx"), None, b"turbo's");
    assert_eq!(s, 202);
    assert_eq!(call("GET", &format!("{base}/v1/cache/k1"), None, b"").0, 404);
    let (s, _) = call("PUT", &format!("{base}/v1/cache/k1"), None, b"nx's");
    assert_eq!(s, 200);
    assert_eq!(call("GET", &format!("{base}/v1/cache/k1"), None, b"").1, b"nx's");
    assert_eq!(call("GET", &format!("{base}/v8/artifacts/k1?slug=nx"), None, b"").1, b"turbo's");
    // Two teams, one hash: isolated.
    assert_eq!(call("GET", &format!("{base}/v8/artifacts/k1?slug=web"), None, b"").0, 404);
    // Bazel's instance prefix, ccache's and sccache's /ns/ and Gradle's prefix: namespaces.
    let sha = taskvault::Algorithm::Sha256.digest(b"x").hex();
    call("PUT", &format!("{base}/bazel/ac/{sha}"), None, b"ac");
    assert_eq!(call("GET", &format!("{base}/bazel/team/ac/{sha}"), None, b"").0, 404);
    call("PUT", &format!("{base}/ccache/ab/cdef"), None, b"cc");
    assert_eq!(call("GET", &format!("{base}/ccache/abcdef"), None, b"").1, b"cc", "flat = subdirs");
    assert_eq!(call("GET", &format!("{base}/ns/team/ccache/abcdef"), None, b"").0, 404);
    call("PUT", &format!("{base}/gradle/0123abcd"), None, b"gr");
    assert_eq!(call("GET", &format!("{base}/gradle/team/0123abcd"), None, b"").0, 404);
    // A Turborepo artifact's signature and duration come back untouched.
    let h = http();
    let r = h
        .put(format!("{base}/v8/artifacts/signed?slug=web"))
        .header("x-artifact-duration", "4321")
        .header("x-artifact-tag", "c2lnbmF0dXJl")
        .send(&b"signed bytes"[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = h.get(format!("{base}/v8/artifacts/signed?slug=web")).call().unwrap();
    assert_eq!(r.headers()["x-artifact-tag"], "c2lnbmF0dXJl");
    assert_eq!(r.headers()["x-artifact-duration"], "4321");
    let q = call(
        "POST",
        &format!("{base}/v8/artifacts?slug=web"),
        None,
        br#"{"hashes":["signed","absent"]}"#,
    );
    let q: serde_json::Value = serde_json::from_slice(&q.1).unwrap();
    assert_eq!(q["signed"]["taskDurationMs"], 4321);
    assert_eq!(q["signed"]["tag"], "c2lnbmF0dXJl");
    assert!(q["absent"]["error"].is_object(), "{q}");
    let events =
        br#"[{"sessionId":"s","source":"REMOTE","event":"HIT","hash":"signed","duration":4321}]"#;
    assert_eq!(call("POST", &format!("{base}/v8/artifacts/events?slug=web"), None, events).0, 200);
    assert_eq!(call("GET", &format!("{base}/v8/artifacts/status?slug=web"), None, b"").0, 200);
    assert_eq!(call("OPTIONS", &format!("{base}/v8/artifacts/x"), None, b"").0, 200);
}

#[test]
fn malformed_requests_are_400_and_integrity_is_checked() {
    let server = Server::start();
    let base = server.url.clone();
    let bad = [
        ("GET", format!("{base}/bazel/ac/abc"), "short hash"),
        ("GET", format!("{base}/bazel/cas/{}", "G".repeat(64)), "not hex"),
        ("GET", format!("{base}/v8/artifacts/abc?slug=..%2Fetc"), "bad team"),
        ("GET", format!("{base}/v1/cache/{}", "x".repeat(300)), "key too long"),
        ("GET", format!("{base}/sccache/a/..%2F/b"), "dot segments"),
        ("PUT", format!("{base}/v8/artifacts/abc?slug=web"), "bad duration"),
    ];
    for (method, url, what) in bad {
        let h = http();
        let req = ureq::http::Request::builder().method(method).uri(&url);
        let req =
            if what == "bad duration" { req.header("x-artifact-duration", "soon") } else { req };
        let resp = h.run(req.body(b"x".to_vec()).unwrap()).unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{what}: {url}");
    }
    // Bazel's CAS: a body that does not hash to its name is refused, and nothing is stored.
    let sha = taskvault::Algorithm::Sha256.digest(b"the right bytes").hex();
    let url = format!("{base}/bazel/cas/{sha}");
    assert_eq!(call("PUT", &url, None, b"the wrong bytes").0, 400);
    assert_eq!(call("GET", &url, None, b"").0, 404);
    assert_eq!(server.entries(), 0);
    assert_eq!(call("PUT", &url, None, b"the right bytes").0, 200);
    assert_eq!(call("GET", &url, None, b"").1, b"the right bytes");
    // Nx never overwrites.
    assert_eq!(call("PUT", &format!("{base}/v1/cache/n1"), None, b"first").0, 200);
    assert_eq!(call("PUT", &format!("{base}/v1/cache/n1"), None, b"second").0, 409);
    assert_eq!(call("GET", &format!("{base}/v1/cache/n1"), None, b"").1, b"first");
    // A large artifact that rots on disk is never served complete.
    let big = super::super::noise(3 << 20, 9);
    assert_eq!(call("PUT", &format!("{base}/gradle/big1"), None, &big).0, 201);
    assert!(super::corrupt_every_blob(&server) >= 1);
    let (status, got) = call("GET", &format!("{base}/gradle/big1"), None, b"");
    assert!(status != 200 || got.len() < big.len(), "a corrupt artifact was served whole");
    assert_eq!(call("GET", &format!("{base}/gradle/big1"), None, b"").0, 404, "then a miss");
}

/// The status of a PUT of `path` announcing `len` bytes and sending none.
fn announced(base: &str, path: &str, len: u64) -> u16 {
    use std::io::{BufRead, Write};
    let path = path.replace("{}", &"a".repeat(64));
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\n\r\n").unwrap();
    let mut status = String::new();
    std::io::BufReader::new(s).read_line(&mut status).unwrap();
    status.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn limits_apply_to_every_protocol() {
    // A namespace policy of 1 KiB for Gradle, a vault capped at about 1 MB, uploads of at most
    // 2 MiB.
    let server = Server::start_with_config(
        "max_size_gb: 0.001\npolicies:\n  ns:gradle:\n    max_size_bytes: 1024\n",
        &["--max-upload-size", "2MiB"],
    );
    let base = server.url.clone();
    let kib = |n: usize| super::super::noise(n << 10, n as u64);
    assert_eq!(call("PUT", &format!("{base}/gradle/small"), None, &kib(1)).0, 201);
    assert_eq!(call("PUT", &format!("{base}/gradle/larger"), None, &kib(2)).0, 413, "policy");
    assert_eq!(call("PUT", &format!("{base}/v1/cache/n"), None, &kib(2)).0, 200, "other ns");
    // Refused on the announced length, before the body is read.
    assert_eq!(announced(&base, "/v1/cache/huge", 3 << 20), 413, "--max-upload-size");
    assert_eq!(announced(&base, "/v8/artifacts/over", 1_500_000), 507, "the cap");
    assert_eq!(announced(&base, "/bazel/ac/{}", 3 << 20), 413);
    assert_eq!(call("GET", &format!("{base}/gradle/larger"), None, b"").0, 404);
}
