//! Content digests: BLAKE3 by default, SHA-256 on request; every digest knows its algorithm.

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use sha2::Digest as _;

use crate::error::{Error, Result};

/// A hash algorithm a vault can be configured with.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    #[default]
    Blake3,
    Sha256,
}

impl Algorithm {
    /// The stable name used in keys, the database and digest strings.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Blake3 => "blake3",
            Algorithm::Sha256 => "sha256",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Digest of an in-memory byte string.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        if self == Algorithm::Blake3 && bytes.len() as u64 >= PARALLEL_HASH_MIN {
            let mut h = blake3::Hasher::new();
            h.update_rayon(bytes);
            return Digest::new(Algorithm::Blake3, *h.finalize().as_bytes());
        }
        let mut h = self.hasher();
        h.update(bytes);
        h.finish()
    }
}

impl FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "blake3" => Ok(Algorithm::Blake3),
            "sha256" => Ok(Algorithm::Sha256),
            other => Err(Error::Other(format!(
                "unknown hash algorithm {other:?} (expected blake3 or sha256)"
            ))),
        }
    }
}

/// A 32-byte digest tagged with the algorithm that produced it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    bytes: [u8; 32],
}

impl PartialOrd for Algorithm {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Algorithm {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl Digest {
    pub fn new(algorithm: Algorithm, bytes: [u8; 32]) -> Self {
        Digest { algorithm, bytes }
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
    /// Lower-case hex of the 32 bytes, without the algorithm.
    pub fn hex(&self) -> String {
        hex::encode(self.bytes)
    }
    /// Parses `hex` (64 characters) as a digest of `algorithm`.
    pub fn from_hex(algorithm: Algorithm, s: &str) -> Result<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| Error::BadDigest(s.to_owned()))?;
        Ok(Digest { algorithm, bytes })
    }
}

impl fmt::Display for Digest {
    /// `algorithm:hex`, the form used in archives and `--json` output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (alg, hex) = s.split_once(':').ok_or_else(|| Error::BadDigest(s.to_owned()))?;
        Digest::from_hex(alg.parse().map_err(|_| Error::BadDigest(s.to_owned()))?, hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A streaming hasher for either algorithm.
pub enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

/// Inputs at least this large are hashed with all cores (and files with memory mapping; BLAKE3
/// only).
const PARALLEL_HASH_MIN: u64 = 8 << 20;

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
            Hasher::Sha256(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            Hasher::Blake3(h) => Digest::new(Algorithm::Blake3, *h.finalize().as_bytes()),
            Hasher::Sha256(h) => Digest::new(Algorithm::Sha256, h.finalize().into()),
        }
    }
}

/// Hashes everything `reader` yields through a buffer of `buf_len` bytes; returns the digest and
/// the byte count.
pub(crate) fn hash_reader_sized(
    algorithm: Algorithm,
    reader: &mut dyn Read,
    buf_len: usize,
) -> std::io::Result<(Digest, u64)> {
    let mut h = algorithm.hasher();
    let mut buf = vec![0u8; buf_len];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((h.finish(), total))
}

/// Hashes a whole file without loading it in memory. Large files use BLAKE3's memory-mapped,
/// multi-threaded mode.
pub fn hash_file(algorithm: Algorithm, path: &std::path::Path) -> Result<(Digest, u64)> {
    let mut file = fs_err::File::open(path)?;
    let len = file.metadata()?.len();
    if algorithm == Algorithm::Blake3 && len >= PARALLEL_HASH_MIN {
        let mut h = blake3::Hasher::new();
        h.update_mmap_rayon(path).map_err(|e| Error::IoAt { path: path.into(), source: e })?;
        return Ok((Digest::new(Algorithm::Blake3, *h.finalize().as_bytes()), h.count()));
    }
    // Small files (most inputs) get a buffer of their size, not a 256 KiB allocation.
    let buf_len = (len as usize).clamp(64, 256 * 1024) + 1;
    Ok(hash_reader_sized(algorithm, &mut file, buf_len)?)
}

#[cfg(test)]
mod tests;
