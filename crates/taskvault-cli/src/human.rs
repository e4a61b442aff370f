//! Formatting for people: sizes, times, durations, check marks (coloured only on a terminal
//! without NO_COLOR), and writing to stdout without panicking on a closed pipe.

use std::io::{IsTerminal, Write};

pub fn color_enabled() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

fn paint(code: &str, s: &str) -> String {
    if color_enabled() { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_owned() }
}

pub fn check(s: &str) -> String {
    paint("32", &format!("✓ {s}"))
}

pub fn cross(s: &str) -> String {
    paint("31", &format!("✗ {s}"))
}

/// Bytes in binary units: `5.00 MiB`.
pub fn size(bytes: i64) -> String {
    let b = bytes as f64;
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b.abs() < 1024.0 {
        return format!("{bytes} B");
    }
    let mut v = b / 1024.0;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

pub fn time(ms: i64) -> String {
    taskvault::clock::rfc3339(ms)
}

pub fn duration_ms(ms: i64) -> String {
    let d = std::time::Duration::from_millis(ms.max(0) as u64);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string()
}

/// Writes a line of data to stdout; a closed pipe surfaces as an error `main` treats as success.
pub fn out(line: impl AsRef<str>) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(line.as_ref().as_bytes())?;
    o.write_all(b"\n")
}

pub fn json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    out(serde_json::to_string_pretty(v)?)?;
    Ok(())
}

/// A status line for people, on stderr.
pub fn note(line: impl AsRef<str>) {
    eprintln!("{}", line.as_ref());
}

/// A warning for people, on stderr: something was left out or degraded, and the command went on.
pub fn warn(line: &str) {
    eprintln!("{} {line}", paint("33", "warning:"));
}

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
