//! Deterministic data for tests and benchmarks: a tiny PRNG and incompressible bytes, so that
//! test inputs are reproducible and never accidentally compress or deduplicate away. And
//! `seaweed`, the real S3 server the object-store tests start, and `postgres` and `redis`, the
//! schemas and key prefixes of the servers the metadata tests use.

pub mod postgres;
pub mod redis;
pub mod seaweed;

/// A name no other test of any process uses: `tv<pid>_<n>_<label>`, the label in lowercase
/// letters, digits and `_` (at most 32), for a schema or a key prefix of a test's own.
pub fn unique_name(label: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
        .take(32)
        .collect();
    format!("tv{}_{}_{label}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

/// xorshift64*: small, fast, and good enough to make bytes that zstd cannot shrink.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn step(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}

/// `n` incompressible bytes, the same for the same `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        out.extend_from_slice(&r.step().to_le_bytes());
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn noise_is_deterministic_distinct_and_sized() {
        assert_eq!(super::noise(1000, 1), super::noise(1000, 1));
        assert_ne!(super::noise(1000, 1), super::noise(1000, 2));
        assert_eq!(super::noise(13, 3).len(), 13);
    }
}
