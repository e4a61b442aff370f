//! Benchmark (not a test): how long a save takes when it pushes a vault of N entries over its
//! cap, so that eviction runs inside the save. `cargo bench -p taskvault --bench evict`.

use std::time::Instant;

use taskvault::{Input, Output, SaveOptions, Settings, Vault};

/// 1000 incompressible bytes, distinct per `i` (so nothing deduplicates or compresses away).
fn payload(i: u32) -> Vec<u8> {
    taskvault_testkit::noise(1000, u64::from(i))
}

fn main() {
    for n in [1_000u32, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings::for_dir(dir.path().join("vault"));
        s.max_size_bytes = Some(u64::from(n) * 1000);
        s.low_water_percent = 80;
        let v = Vault::open(s).unwrap();
        let key = |i: u32| v.key("bench", &[Input::Bytes(i.to_le_bytes().to_vec())]).unwrap();
        let t = Instant::now();
        for i in 0..n {
            v.save(&key(i), Output::Bytes(&payload(i)), &SaveOptions::default()).unwrap();
        }
        let fill = t.elapsed();
        let t = Instant::now();
        v.save(&key(n), Output::Bytes(&payload(n)), &SaveOptions::default()).unwrap();
        let over = t.elapsed();
        let t = Instant::now();
        v.save(&key(n + 1), Output::Bytes(&payload(n + 1)), &SaveOptions::default()).unwrap();
        let under = t.elapsed();
        println!(
            "{n} entries: fill {:.1} ms/save; save over the cap (evicts {}) {:.1} ms; next save {:.1} ms",
            fill.as_secs_f64() * 1000.0 / f64::from(n),
            v.stats().unwrap().counters.evictions,
            over.as_secs_f64() * 1000.0,
            under.as_secs_f64() * 1000.0
        );
    }
}
