//! The PostgreSQL server the backend tests run against: the one on loopback
//! (`TASKVAULT_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`). Every vault
//! under test keeps its tables in a schema of its own, dropped (through `psql`) when its
//! [`Schema`] is. A test that finds no server skips with a line saying so (`.ci/run` starts it;
//! `TASKVAULT_REQUIRE_TOOLS` makes a missing one a failure).

use std::process::Command;

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
        let name = crate::unique_name(label);
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

/// A PostgreSQL server of a test's own (initdb in a temporary directory, on a free loopback
/// port), for tests that stop and restart it. Stopped (immediately) when dropped.
#[derive(Debug)]
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl Cluster {
    /// Makes and starts one; `None` (the test skips) if PostgreSQL's server programs are not
    /// installed.
    pub fn start() -> Option<Cluster> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).max())
            .filter(|b| b.join("initdb").is_file());
        let Some(bin) = bin else {
            let msg = "PostgreSQL's server programs (initdb) are not installed";
            assert!(std::env::var_os("TASKVAULT_REQUIRE_TOOLS").is_none(), "{msg}");
            eprintln!("skipped: {msg}");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = Cluster { dir, bin, port };
        // initdb refuses to run as root: then the cluster belongs to the `postgres` user.
        if c.as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(c.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the cluster's directory to postgres");
        }
        let data = c.dir.path().join("data");
        c.run(
            "initdb",
            &["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "--no-sync"],
        );
        c.up();
        Some(c)
    }

    fn as_root(&self) -> bool {
        Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    }

    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn up(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once (`immediate`: as a crash would), dropping every connection.
    pub fn down(&self) {
        let data = self.dir.path().join("data");
        self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = std::panic::catch_unwind(|| {
            self.run("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
        });
    }
}
