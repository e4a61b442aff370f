//! The Redis server the backend tests run against: the one on loopback (`TASKVAULT_TEST_REDIS`,
//! default `redis://127.0.0.1:6379/0`), every vault under test under a key prefix of its own,
//! deleted (through `redis-cli`) when its [`Prefix`] is; and, for tests that change a server's
//! settings (`maxmemory`), a `redis-server` of the test's own ([`Own`]). A test that finds no
//! server skips with a line saying so (`.ci/run` starts it; `TASKVAULT_REQUIRE_TOOLS` makes a
//! missing one a failure).

use std::process::{Child, Command, Stdio};

fn answers(addr: &str) -> bool {
    std::net::ToSocketAddrs::to_socket_addrs(addr).ok().and_then(|mut a| a.next()).is_some_and(
        |a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok(),
    )
}

fn skip(msg: String) {
    assert!(std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_none(), "{msg}");
    eprintln!("skipped: {msg}; .ci/run starts it");
}

/// The server's URL, if it answers.
pub fn server() -> Option<String> {
    let url =
        std::env::var("TASKVAULT_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let addr = url
        .split("://")
        .nth(1)
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let addr = if addr.contains(':') { addr } else { format!("{addr}:6379") };
    if !answers(&addr) {
        skip(format!("Redis does not answer at {addr}"));
        return None;
    }
    Some(url)
}

/// A key prefix of its own on the server, its keys deleted when this is dropped.
#[derive(Debug)]
pub struct Prefix {
    server: String,
    name: String,
}

impl Prefix {
    pub fn new(server: &str, label: &str) -> Prefix {
        let name = crate::unique_name(label);
        let p = Prefix { server: server.to_owned(), name };
        // Keys left by an earlier run of the same process id go first.
        p.delete();
        p
    }

    /// The store URL of a vault under this prefix.
    pub fn url(&self) -> String {
        format!("{}?prefix={}", self.server, self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn delete(&self) {
        let _ = Command::new("redis-cli")
            .args(["-u", &self.server, "--no-auth-warning", "EVAL"])
            .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('UNLINK', k) end")
            .args(["0", &format!("{}:*", self.name)])
            .output();
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        self.delete();
    }
}

/// A `redis-server` of the test's own on a free loopback port, with `args` (such as
/// `--maxmemory 4mb`), nothing saved to disk; killed (by its PID) when dropped.
#[derive(Debug)]
pub struct Own {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Own {
    pub fn start(args: &[&str]) -> Option<Own> {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
        if !found {
            skip("redis-server is not installed".into());
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let own = Own { child, port, _dir: dir };
        let start = std::time::Instant::now();
        while !answers(&format!("127.0.0.1:{port}")) {
            assert!(start.elapsed().as_secs() < 20, "redis-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(own)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
