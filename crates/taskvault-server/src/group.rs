//! Group commit: saves that arrive together commit in one transaction.
//!
//! Each save is staged by its own request (hashing, compressing, staging files: a small one on
//! the async worker, a large one on the blocking pool), then queued here for the committing
//! thread, which commits everything queued when it wakes in one transaction and answers each
//! request. No save waits for a timer: a lone save commits at once, and under load one
//! transaction carries many.

use std::sync::Arc;
use std::sync::mpsc;

use taskvault::{Entry, PreparedSave, Vault};

use crate::error::ApiError;

/// The most saves one transaction takes (more wait for the next).
const BATCH_MAX: usize = 1024;

struct Job {
    save: PreparedSave,
    done: tokio::sync::oneshot::Sender<Result<Entry, String>>,
}

/// Commits queued saves on a thread of its own (`taskvault-commit`): it takes everything
/// queued when it wakes, commits it in one transaction, answers each, and sleeps until the
/// next save. Requests wait on their answer without holding a thread.
#[derive(Debug)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl GroupCommit {
    /// Starts the committing thread for `vault`; it ends once this is dropped.
    pub fn start(vault: Arc<Vault>) -> std::io::Result<GroupCommit> {
        let (queue, jobs) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("taskvault-commit".into()).spawn(move || {
            while let Ok(first) = jobs.recv() {
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX {
                    match jobs.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                commit(&vault, batch);
            }
        })?;
        Ok(GroupCommit { queue })
    }

    /// Commits `save` (with whatever else is queued), returning its entry as committed. A
    /// failed transaction fails every save in it (each is then a miss for its client).
    pub async fn save(&self, save: PreparedSave) -> Result<Entry, ApiError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send(Job { save, done })
            .map_err(|_| ApiError::Busy("the server is stopping".into()))?;
        match answer.await {
            Ok(r) => r.map_err(ApiError::Internal),
            Err(_) => Err(ApiError::Internal("the committing thread stopped".into())),
        }
    }
}

fn commit(vault: &Vault, batch: Vec<Job>) {
    let (saves, answers): (Vec<PreparedSave>, Vec<_>) =
        batch.into_iter().map(|j| (j.save, j.done)).unzip();
    match vault.commit_prepared(saves) {
        Ok(entries) => {
            for (a, e) in answers.into_iter().zip(entries) {
                let _ = a.send(Ok(e));
            }
        }
        Err(e) => {
            tracing::error!("group commit of {} saves: {e}", answers.len());
            for a in answers {
                let _ = a.send(Err(format!("the commit failed: {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_saves_all_commit_and_each_gets_its_own_entry() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(taskvault::config::Settings::for_dir(dir.path().join("v")));
        let vault = Arc::new(vault.unwrap());
        let group = GroupCommit::start(Arc::clone(&vault)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let alg = vault.settings().algorithm;
        std::thread::scope(|s| {
            for i in 0..16u32 {
                let (vault, group, rt) = (&vault, &group, &rt);
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
                    let e = rt.block_on(group.save(p)).unwrap();
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
