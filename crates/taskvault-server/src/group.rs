//! Group commit: saves that arrive together commit in one transaction.
//!
//! Each save is staged by its own request (hashing, compressing, staging files: in parallel on
//! the blocking pool), then queued here. The first request to take the commit lock commits
//! everything queued by then, its own save included, and hands every request its result; the
//! ones that queued meanwhile find theirs done when they get the lock. No save waits for a
//! timer: a lone save commits at once, and under load one transaction carries many.

use std::sync::{Arc, Mutex};

use taskvault::{Entry, PreparedSave, Vault};

use crate::error::ApiError;

type Slot = Arc<Mutex<Option<Result<Entry, String>>>>;

#[derive(Debug, Default)]
pub struct GroupCommit {
    queue: Mutex<Vec<(PreparedSave, Slot)>>,
    commit: Mutex<()>,
}

impl GroupCommit {
    /// Commits `save` (with whatever else is queued), returning its entry as committed. A
    /// failed transaction fails every save in it (each is then a miss for its client).
    pub fn save(&self, vault: &Vault, save: PreparedSave) -> Result<Entry, ApiError> {
        let slot: Slot = Arc::new(Mutex::new(None));
        lock(&self.queue).push((save, Arc::clone(&slot)));
        let _committing = lock(&self.commit);
        if let Some(done) = lock(&slot).take() {
            return done.map_err(ApiError::Internal);
        }
        let batch = std::mem::take(&mut *lock(&self.queue));
        let (saves, slots): (Vec<PreparedSave>, Vec<Slot>) = batch.into_iter().unzip();
        match vault.commit_prepared(saves) {
            Ok(entries) => {
                for (s, e) in slots.iter().zip(entries) {
                    *lock(s) = Some(Ok(e));
                }
            }
            Err(e) => {
                tracing::error!("group commit of {} saves: {e}", slots.len());
                for s in &slots {
                    *lock(s) = Some(Err(format!("the commit failed: {e}")));
                }
            }
        }
        let done = lock(&slot).take().expect("this save was in the batch it committed");
        done.map_err(ApiError::Internal)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_saves_all_commit_and_each_gets_its_own_entry() {
        let dir = tempfile::tempdir().unwrap();
        let vault =
            Vault::open(taskvault::config::Settings::for_dir(dir.path().join("v"))).unwrap();
        let group = GroupCommit::default();
        let alg = vault.settings().algorithm;
        std::thread::scope(|s| {
            for i in 0..16u32 {
                let (vault, group) = (&vault, &group);
                s.spawn(move || {
                    let key = taskvault::TaskKey::new(
                        alg,
                        "ns",
                        "t",
                        Vec::new(),
                        vec![("k".into(), i.to_le_bytes().to_vec())],
                    )
                    .unwrap();
                    let data = format!("result {i}");
                    let opts = taskvault::SaveOptions::default();
                    let p = vault
                        .prepare_save(&key, taskvault::Output::Bytes(data.as_bytes()), &opts)
                        .unwrap();
                    let e = group.save(vault, p).unwrap();
                    assert_eq!(e.key, key.digest().hex());
                    let (_, got) = vault.get_bytes(&key).unwrap().expect("committed");
                    assert_eq!(got, data.as_bytes());
                });
            }
        });
        assert_eq!(vault.stats().unwrap().entries, 16);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Not a test: `cargo test --release -p taskvault-server group_commit_timing -- --ignored
    /// --nocapture` prints what preparing and committing 1 KiB saves costs, in batches of 16.
    #[test]
    #[ignore]
    fn group_commit_timing() {
        let dir = tempfile::tempdir().unwrap();
        let vault =
            Vault::open(taskvault::config::Settings::for_dir(dir.path().join("v"))).unwrap();
        let vault = if std::env::var_os("LONG_LIVED").is_some() {
            vault.long_lived().unwrap()
        } else {
            vault
        };
        let alg = vault.settings().algorithm;
        let n: u32 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
        let data = vec![7u8; 1024];
        let (mut prep, mut commit) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        for chunk in (0..n).collect::<Vec<_>>().chunks(16) {
            let t = std::time::Instant::now();
            let saves: Vec<_> = chunk
                .iter()
                .map(|i| {
                    let extras = vec![("tool.key".into(), i.to_le_bytes().to_vec())];
                    let key = taskvault::TaskKey::new(alg, "ns", "t", Vec::new(), extras).unwrap();
                    let opts = taskvault::SaveOptions::default();
                    vault.prepare_save(&key, taskvault::Output::Bytes(&data), &opts).unwrap()
                })
                .collect();
            prep += t.elapsed();
            let t = std::time::Instant::now();
            vault.commit_prepared(saves).unwrap();
            commit += t.elapsed();
        }
        eprintln!("prepare {:?}/save, commit {:?}/save", prep / n, commit / n);
    }
}
