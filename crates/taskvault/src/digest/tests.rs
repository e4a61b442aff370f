use super::*;

#[test]
fn known_vectors() {
    assert_eq!(
        Algorithm::Blake3.digest(b"abc").hex(),
        "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
    );
    assert_eq!(
        Algorithm::Sha256.digest(b"abc").hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn string_form_round_trips_and_keeps_algorithm() {
    let d = Algorithm::Sha256.digest(b"x");
    let s = d.to_string();
    assert!(s.starts_with("sha256:"));
    let back: Digest = s.parse().unwrap();
    assert_eq!(back, d);
    assert_eq!(back.algorithm(), Algorithm::Sha256);
    assert!("md5:00".parse::<Digest>().is_err());
    assert!("blake3:zz".parse::<Digest>().is_err());
}

#[test]
fn streaming_equals_one_shot_for_both_algorithms_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    for alg in [Algorithm::Blake3, Algorithm::Sha256] {
        for len in [0usize, 1, 300_000, (PARALLEL_HASH_MIN as usize) + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let p = dir.path().join(format!("f{len}"));
            std::fs::write(&p, &data).unwrap();
            let (d, n) = hash_file(alg, &p).unwrap();
            assert_eq!(n, len as u64);
            assert_eq!(d, alg.digest(&data), "{alg:?} {len}");
        }
    }
}
