//! Running the wrapped command: its stdout and stderr stream through live while being recorded;
//! its exit status is reported as a shell would (128 + signal for a killed command). SIGTERM and
//! SIGHUP sent to taskvault are forwarded; Ctrl-C reaches the command directly, since it shares
//! taskvault's process group, and taskvault waits for it instead of dying first.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

use super::console;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Ended {
    /// The exit code a shell would report.
    pub fn shell_code(self) -> u8 {
        match self {
            Ended::Exited(c) => (c & 0xff) as u8,
            Ended::Signaled(s) => (128 + s).min(255) as u8,
        }
    }
}

#[derive(Debug)]
pub struct Captured {
    pub ended: Ended,
    /// The console log (see `console`).
    pub console: Vec<u8>,
    pub duration: Duration,
}

/// Why the command could not be started, with the exit code a shell would use (127: not found,
/// 126: not executable).
#[derive(Debug)]
pub struct SpawnError {
    pub code: u8,
    pub message: String,
}

pub fn run(argv: &[OsString]) -> Result<std::result::Result<Captured, SpawnError>> {
    let started = Instant::now();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            return Ok(Err(SpawnError {
                code,
                message: format!("cannot run {}: {e}", argv[0].to_string_lossy()),
            }));
        }
    };
    let pid = child.id() as i32;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            let sig = match sig {
                SIGTERM => rustix::process::Signal::TERM,
                SIGHUP => rustix::process::Signal::HUP,
                // The terminal already delivered Ctrl-C and Ctrl-\ to the whole process group.
                _ => continue,
            };
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });

    let log = Arc::new(Mutex::new(Vec::new()));
    let out = tee(child.stdout.take().expect("piped"), console::STDOUT, Arc::clone(&log));
    let err = tee(child.stderr.take().expect("piped"), console::STDERR, Arc::clone(&log));
    let status = child.wait().context("waiting for the command")?;
    let out = out.join().expect("reader threads do not panic");
    let err = err.join().expect("reader threads do not panic");
    handle.close();
    let _ = forwarder.join();
    out.context("reading the command's stdout")?;
    err.context("reading the command's stderr")?;

    let ended = match (status.code(), status.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(s)) => Ended::Signaled(s),
        (None, None) => Ended::Exited(1),
    };
    let console = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Ok(Captured { ended, console, duration: started.elapsed() }))
}

/// Copies a pipe to our own stream as it arrives and records each chunk.
fn tee(
    mut pipe: impl Read + Send + 'static,
    stream: u8,
    log: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut ours_open = true;
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let chunk = &buf[..n];
            // The chunk is logged under the lock so that the order across both streams is kept.
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            console::push(&mut log, stream, chunk);
            if ours_open {
                let r = if stream == console::STDERR {
                    std::io::stderr().write_all(chunk)
                } else {
                    let mut o = std::io::stdout().lock();
                    o.write_all(chunk).and_then(|()| o.flush())
                };
                // If our own stdout was closed, keep recording: the command must not be killed
                // by a pipe we no longer read.
                if r.is_err() {
                    ours_open = false;
                }
            }
        }
    })
}
