//! The PostgreSQL server the backend tests run against: the one on loopback
//! (`TASKVAULT_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`). Every vault
//! under test keeps its tables in a schema of its own, dropped (through `psql`) when its
//! [`Schema`] is. A test that finds no server skips with a line saying so (`.ci/run` starts it;
//! `TASKVAULT_REQUIRE_TOOLS` makes a missing one a failure).

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's URL, if it answers.
pub fn server() -> Option<String> {
    let url = std::env::var("TASKVAULT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let host_port = url
        .split("://")
        .nth(1)
        .and_then(|r| r.rsplit('@').next())
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let addr = if host_port.contains(':') { host_port } else { format!("{host_port}:5432") };
    let up = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| {
            std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok()
        });
    if !up {
        let msg = format!("PostgreSQL does not answer at {addr}");
        assert!(std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_none(), "{msg}");
        eprintln!("skipped: {msg}; .ci/run starts it");
        return None;
    }
    Some(url)
}

/// A schema of its own on the server, dropped with everything in it when this is.
#[derive(Debug)]
pub struct Schema {
    server: String,
    name: String,
}

impl Schema {
    /// A new schema name for `label` (made by the store on first use).
    pub fn new(server: &str, label: &str) -> Schema {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let label: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .take(32)
            .collect();
        let name =
            format!("tv{}_{}_{label}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let schema = Schema { server: server.to_owned(), name };
        // A schema left by an earlier run of the same process id goes first.
        schema.drop_now();
        schema
    }

    /// The metadata URL of a vault in this schema.
    pub fn url(&self) -> String {
        format!("{}?schema={}", self.server, self.name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn drop_now(&self) {
        let _ = Command::new("psql")
            .args([
                &self.server,
                "-q",
                "-c",
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name),
            ])
            .env("PGOPTIONS", "-c client_min_messages=warning")
            .output();
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.drop_now();
    }
}
