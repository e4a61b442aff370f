//! Deterministic data for tests and benchmarks: a tiny PRNG and incompressible bytes, so that
//! test inputs are reproducible and never accidentally compress or deduplicate away. And
//! `seaweed`, the real S3 server the object-store tests start, and `postgres`, the schemas of the
//! PostgreSQL server the metadata tests use.

pub mod postgres;
pub mod redis;
pub mod seaweed;

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
