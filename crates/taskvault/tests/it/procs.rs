//! Many processes on one vault: mixed saves and gets, SIGKILL mid-write, and claims.

use std::io::Write;
use std::time::Duration;

use taskvault::{Claim, Input, Output, SaveOptions, TaskKey, Vault};

use crate::{Rng, check_content, content, open, role, spawn_worker};

pub(crate) fn key(v: &Vault, k: u64) -> TaskKey {
    v.key("stress", &[Input::Bytes(format!("input-{k}").into_bytes())]).unwrap()
}

fn wait_ok(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "worker failed: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .collect()
}

/// Worker: 500 mixed operations on 16 overlapping keys; every hit must be byte-identical to a
/// saved version of its key.
pub(crate) fn mixed_worker(dir: &std::path::Path, worker: u64) {
    let v = open(dir);
    let mut r = Rng::new(worker * 7919 + 17);
    let (mut hits, mut misses, mut saves) = (0, 0, 0);
    let scratch = tempfile::tempdir().unwrap();
    for i in 0..500 {
        let k = r.below(16);
        match r.below(3) {
            0 => {
                let data = content(k, r.below(4));
                v.save(&key(&v, k), Output::Bytes(&data), &SaveOptions::default()).unwrap();
                saves += 1;
            }
            1 => match v.get_bytes(&key(&v, k)).unwrap() {
                Some((_, bytes)) => {
                    check_content(k, &bytes).unwrap();
                    hits += 1;
                }
                None => misses += 1,
            },
            _ => {
                let dest = scratch.path().join(format!("out{i}"));
                match v.get(&key(&v, k), &dest).unwrap() {
                    Some(_) => {
                        check_content(k, &std::fs::read(&dest).unwrap()).unwrap();
                        hits += 1;
                    }
                    None => {
                        assert!(!dest.exists(), "a miss wrote the destination");
                        misses += 1;
                    }
                }
            }
        }
    }
    println!("RESULT saves={saves} hits={hits} misses={misses}");
}

#[test]
fn eight_processes_mixed_saves_and_gets() {
    if let Some((_, dir, worker)) = role() {
        return mixed_worker(&dir, worker);
    }
    let dir = tempfile::tempdir().unwrap();
    let children = (0..8)
        .map(|w| {
            spawn_worker("procs::eight_processes_mixed_saves_and_gets", "mixed", dir.path(), w)
        })
        .collect();
    let outs = wait_ok(children);
    let hits: u64 = outs
        .iter()
        .filter_map(|o| o.lines().find_map(|l| l.split_once("RESULT ").map(|(_, r)| r)))
        .map(|l| {
            l.split("hits=").nth(1).unwrap().split(' ').next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert!(hits > 500, "the workers did hit each other's entries ({hits} hits)");
    let v = open(dir.path());
    let report = v.verify().unwrap();
    assert!(report.corrupt.is_empty(), "{report:?}");
    for k in 0..16 {
        if let Some((_, b)) = v.get_bytes(&key(&v, k)).unwrap() {
            check_content(k, &b).unwrap();
        }
    }
}

/// Worker: saves forever, until killed.
pub(crate) fn saver(dir: &std::path::Path, worker: u64) {
    let v = open(dir);
    let mut r = Rng::new(worker + 1);
    loop {
        let k = r.below(16);
        let data = content(k, r.below(4));
        v.save(&key(&v, k), Output::Bytes(&data), &SaveOptions::default()).unwrap();
        if r.below(4) == 0 {
            let _ = v.get_bytes(&key(&v, r.below(16))).unwrap();
        }
    }
}

/// SIGKILL at random moments while saving. The default tier kills 40 times; CI sets
/// TASKVAULT_CRASH_KILLS=200 for the slow tier.
#[test]
fn sigkill_while_saving_never_serves_a_wrong_or_partial_output() {
    if let Some((_, dir, worker)) = role() {
        return saver(&dir, worker);
    }
    let kills: u64 =
        std::env::var("TASKVAULT_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(40);
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rng::new(4242);
    let mut served = 0;
    for round in 0..kills {
        let mut child = spawn_worker(
            "procs::sigkill_while_saving_never_serves_a_wrong_or_partial_output",
            "saver",
            dir.path(),
            round as usize,
        );
        std::thread::sleep(Duration::from_millis(15 + r.below(60)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the saver only stops when killed");
        let v = open(dir.path());
        for k in 0..16 {
            let dest = dir.path().join("restored");
            if v.get(&key(&v, k), &dest).unwrap().is_some() {
                let bytes = std::fs::read(&dest).unwrap();
                check_content(k, &bytes).unwrap_or_else(|e| panic!("round {round}: {e}"));
                served += 1;
            }
        }
    }
    assert!(served > 0, "some entries survived the crashes");
    let v = open(dir.path());
    let report = v.verify().unwrap();
    assert!(report.corrupt.is_empty(), "a crash left a corrupt blob: {report:?}");
    let stats = v.stats().unwrap();
    assert_eq!(stats.counters.corrupt, 0);
}

/// Worker: claims one key; the computing worker appends to a counter file, sleeps, then saves
/// (role `claim`) or fails (role `claim-fail`), or hangs until killed (role `claim-hang`).
fn claimer(role: &str, dir: &std::path::Path) {
    let v = open(dir);
    let k = key(&v, 99);
    match v.claim(&k).unwrap() {
        Claim::Compute(guard) => {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("computed"))
                .unwrap();
            writeln!(f, "{}", std::process::id()).unwrap();
            match role {
                "claim-hang" => loop {
                    std::thread::sleep(Duration::from_secs(60));
                },
                "claim-fail" => {
                    std::thread::sleep(Duration::from_millis(500));
                    guard.fail("boom: exit 3").unwrap();
                    println!("OUTCOME computed-and-failed");
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(500));
                    v.save(&k, Output::Bytes(b"answer"), &SaveOptions::default()).unwrap();
                    drop(guard);
                    println!("OUTCOME computed");
                }
            }
        }
        Claim::Ready(e) => {
            assert_eq!(v.get_bytes(&k).unwrap().unwrap().1, b"answer", "{}", e.id);
            println!("OUTCOME ready");
        }
        Claim::Failed(m) => println!("OUTCOME failed {m}"),
    }
}

fn outcomes(outs: &[String]) -> Vec<String> {
    let mut v: Vec<String> = outs
        .iter()
        .map(|o| {
            o.lines().find_map(|l| l.split_once("OUTCOME ").map(|(_, r)| r.to_owned())).unwrap()
        })
        .collect();
    v.sort();
    v
}

fn computed_count(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("computed")).map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn claim_exactly_one_of_eight_processes_computes() {
    if let Some((role, dir, _)) = role() {
        return claimer(&role, &dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "procs::claim_exactly_one_of_eight_processes_computes";
    let outs = wait_ok((0..8).map(|w| spawn_worker(test, "claim", dir.path(), w)).collect());
    assert_eq!(computed_count(dir.path()), 1);
    let o = outcomes(&outs);
    assert_eq!(o.iter().filter(|x| *x == "computed").count(), 1, "{o:?}");
    assert_eq!(o.iter().filter(|x| *x == "ready").count(), 7, "{o:?}");
}

#[test]
fn claim_failure_reaches_every_waiting_process() {
    if let Some((role, dir, _)) = role() {
        return claimer(&role, &dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "procs::claim_failure_reaches_every_waiting_process";
    let mut children = vec![spawn_worker(test, "claim-fail", dir.path(), 0)];
    std::thread::sleep(Duration::from_millis(150));
    children.extend((1..8).map(|w| spawn_worker(test, "claim-fail", dir.path(), w)));
    let o = outcomes(&wait_ok(children));
    assert_eq!(computed_count(dir.path()), 1);
    assert_eq!(o.iter().filter(|x| *x == "failed boom: exit 3").count(), 7, "{o:?}");
}

#[test]
fn a_killed_claimant_releases_its_claim() {
    if let Some((role, dir, _)) = role() {
        return claimer(&role, &dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "procs::a_killed_claimant_releases_its_claim";
    let mut hang = spawn_worker(test, "claim-hang", dir.path(), 0);
    while computed_count(dir.path()) == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let waiter = spawn_worker(test, "claim", dir.path(), 1);
    std::thread::sleep(Duration::from_millis(200));
    hang.kill().unwrap();
    hang.wait().unwrap();
    let o = outcomes(&wait_ok(vec![waiter]));
    assert_eq!(o, ["computed"], "the waiter took over after the crash");
    assert_eq!(computed_count(dir.path()), 2);
}
