//! A command's console output as recorded by `run`: the chunks it wrote, in order, each tagged
//! with its stream, so that a replay writes the same bytes to the same streams in the same order.
//! Encoding: repeated `[stream: u8 (1 stdout, 2 stderr)][length: u32 LE][bytes]`.

use std::io::Write;

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;

pub fn push(log: &mut Vec<u8>, stream: u8, bytes: &[u8]) {
    log.push(stream);
    log.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    log.extend_from_slice(bytes);
}

/// The recorded chunks; `None` if the log is malformed.
pub fn chunks(log: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    let mut rest = log;
    while !rest.is_empty() {
        let (&stream, tail) = rest.split_first()?;
        let len = u32::from_le_bytes(tail.get(..4)?.try_into().ok()?) as usize;
        let bytes = tail.get(4..4 + len)?;
        out.push((stream, bytes));
        rest = &tail[4 + len..];
    }
    Some(out)
}

/// Writes the recorded output to this process's stdout and stderr. A closed stdout is not an
/// error (the caller may pipe into `head`).
pub fn replay(log: &[u8]) -> anyhow::Result<()> {
    let chunks =
        chunks(log).ok_or_else(|| anyhow::anyhow!("the recorded console log is malformed"))?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for (stream, bytes) in chunks {
        let r = if stream == STDERR {
            out.flush().and_then(|()| err.write_all(bytes))
        } else {
            err.flush().and_then(|()| out.write_all(bytes))
        };
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            other => other?,
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_malformed_logs() {
        let mut log = Vec::new();
        push(&mut log, STDOUT, b"out 1\n");
        push(&mut log, STDERR, b"");
        push(&mut log, STDERR, b"err\n");
        assert_eq!(
            chunks(&log).unwrap(),
            [(STDOUT, &b"out 1\n"[..]), (STDERR, b""), (STDERR, b"err\n")]
        );
        assert!(chunks(&log[..log.len() - 1]).is_none());
        assert!(chunks(&[1, 9, 0, 0, 0]).is_none());
        assert!(chunks(&[]).unwrap().is_empty());
    }
}
