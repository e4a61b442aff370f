//! Claims across machines: for each (namespace, key) at most one client holds a lease to
//! compute it; it renews the lease while it works. The others wait on a long poll and are woken
//! by the outcome: the entry committed, the failure reported, or the lease released or expired
//! (then one of them is granted it).
//!
//! Where the leases live depends on the vault's metadata store. With one that every replica of
//! the server shares (PostgreSQL), the leases are rows of it, and ends reach the waiters of
//! every replica through the store's notifications; the waiters' channels stay in each
//! replica's memory. Otherwise the leases live in this server's memory: a restarted server has
//! none, and clients that were waiting compute or wait again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskvault::{LeaseAsked, LeaseEnded, LeaseEvent, Vault};
use tokio::sync::watch;

use crate::error::ApiError;

/// How a claim ended, as its waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still held.
    Pending,
    /// The entry was committed.
    Ready,
    /// The claimant reported a failure (its message, for the waiters to replay).
    Failed(String),
    /// Released or expired without a result: the next waiter may take it.
    Vacant,
}

impl From<LeaseEnded> for Outcome {
    fn from(e: LeaseEnded) -> Outcome {
        match e {
            LeaseEnded::Ready => Outcome::Ready,
            LeaseEnded::Failed(m) => Outcome::Failed(m),
            LeaseEnded::Vacant => Outcome::Vacant,
        }
    }
}

#[derive(Debug)]
struct Held {
    lease: String,
    holder: String,
    expires: Instant,
    tx: watch::Sender<Outcome>,
}

/// What a request for a claim got.
#[derive(Debug)]
pub enum Asked {
    /// The lease is the caller's until it expires.
    Granted { lease: String },
    /// Someone else holds it: wait on the receiver, until the lease's expiry.
    Held { rx: watch::Receiver<Outcome>, expires: Instant, holder: String },
}

type Id = (String, String);

/// The waiters of this replica on leases its store keeps, by claim: told when a lease ends.
type Waiting = Mutex<HashMap<Id, watch::Sender<Outcome>>>;

#[derive(Debug, Default)]
pub struct Claims {
    /// The leases, when this server keeps them.
    held: Mutex<HashMap<Id, Held>>,
    /// The waiters' channels, when the vault's store keeps the leases.
    waiting: Option<Arc<Waiting>>,
}

fn lease_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Random bits too: replicas share the leases, and their process ids may coincide.
    format!("{:016x}{:08x}{:08x}{n:x}", t as u64, std::process::id(), rand_u32())
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u32
}

fn id(ns: &str, key: &str) -> Id {
    (ns.to_owned(), key.to_owned())
}

fn store_error(what: &str, e: taskvault::Error) -> ApiError {
    tracing::warn!("{what}: {e}");
    ApiError::Busy(format!("{what}: {e}"))
}

impl Claims {
    /// The claims of a server on `vault`: in its metadata store when the store keeps leases
    /// (then this replica starts listening for their ends), else in memory.
    pub fn new(vault: &Vault) -> anyhow::Result<Claims> {
        let waiting: Arc<Waiting> = Arc::default();
        let told = Arc::clone(&waiting);
        let on = move |event: LeaseEvent| {
            let mut waiting = told.lock().unwrap_or_else(|p| p.into_inner());
            match event {
                LeaseEvent::Ended { ns, key, how } => {
                    if let Some(tx) = waiting.remove(&(ns, key)) {
                        let _ = tx.send(how.into());
                    }
                }
                // Every waiter asks again (and waits again if the claim is still held).
                LeaseEvent::Missed => {
                    for (_, tx) in waiting.drain() {
                        let _ = tx.send(Outcome::Vacant);
                    }
                }
            }
        };
        let shared = vault.watch_leases(Arc::new(on))?;
        Ok(Claims { held: Mutex::default(), waiting: shared.then_some(waiting) })
    }

    /// Whether the leases live in the vault's metadata store (shared by replicas).
    pub fn shared(&self) -> bool {
        self.waiting.is_some()
    }

    /// Takes the claim of `key` in `ns` for `ttl` unless a live lease holds it.
    pub fn ask(
        &self,
        vault: &Vault,
        ns: &str,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Asked, ApiError> {
        let Some(waiting) = &self.waiting else { return Ok(self.ask_here(ns, key, holder, ttl)) };
        // Listening before asking: an end that comes between the two is not missed.
        let rx = {
            let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
            w.entry(id(ns, key)).or_insert_with(|| watch::channel(Outcome::Pending).0).subscribe()
        };
        let lease = lease_id();
        let asked = vault.lease_ask(ns, key, &lease, holder, ttl);
        match asked {
            Ok(Some(LeaseAsked::Held { holder, remaining })) => {
                Ok(Asked::Held { rx, expires: Instant::now() + remaining, holder })
            }
            Ok(Some(LeaseAsked::Granted)) => {
                drop(rx);
                self.forget_idle(ns, key);
                Ok(Asked::Granted { lease })
            }
            Ok(None) => {
                drop(rx);
                self.forget_idle(ns, key);
                Err(ApiError::Internal("the metadata store keeps no leases".into()))
            }
            Err(e) => {
                drop(rx);
                self.forget_idle(ns, key);
                Err(store_error("asking for the claim", e))
            }
        }
    }

    /// A waiter is done with the claim of `key`: its channel goes once nobody listens.
    pub fn forget_idle(&self, ns: &str, key: &str) {
        if let Some(waiting) = &self.waiting {
            let mut w = waiting.lock().unwrap_or_else(|p| p.into_inner());
            if w.get(&id(ns, key)).is_some_and(|tx| tx.receiver_count() == 0) {
                w.remove(&id(ns, key));
            }
        }
    }

    fn ask_here(&self, ns: &str, key: &str, holder: &str, ttl: Duration) -> Asked {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let id = id(ns, key);
        let now = Instant::now();
        if let Some(h) = held.get(&id)
            && h.expires > now
        {
            return Asked::Held {
                rx: h.tx.subscribe(),
                expires: h.expires,
                holder: h.holder.clone(),
            };
        }
        if let Some(old) = held.remove(&id) {
            // Expired: its waiters learn that the claim is free.
            let _ = old.tx.send(Outcome::Vacant);
        }
        let lease = lease_id();
        let (tx, _) = watch::channel(Outcome::Pending);
        held.insert(
            id,
            Held { lease: lease.clone(), holder: holder.to_owned(), expires: now + ttl, tx },
        );
        Asked::Granted { lease }
    }

    /// Extends a lease; `false` if it is not the current lease (expired and taken, or ended).
    pub fn renew(
        &self,
        vault: &Vault,
        ns: &str,
        key: &str,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, ApiError> {
        if self.shared() {
            let renewed = vault.lease_renew(ns, key, lease, ttl);
            return renewed
                .map(|r| r.unwrap_or(false))
                .map_err(|e| store_error("renewing the lease", e));
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match held.get_mut(&id(ns, key)) {
            Some(h) if h.lease == lease => {
                h.expires = Instant::now() + ttl;
                true
            }
            _ => false,
        })
    }

    /// Ends a lease with `outcome` (a failure, or vacant for a plain release); `false` if it
    /// was not the current lease.
    pub fn end(
        &self,
        vault: &Vault,
        ns: &str,
        key: &str,
        lease: &str,
        outcome: Outcome,
    ) -> Result<bool, ApiError> {
        if self.shared() {
            let how = match outcome {
                Outcome::Failed(m) => LeaseEnded::Failed(m),
                _ => LeaseEnded::Vacant,
            };
            let ended = vault.lease_end(ns, key, Some(lease), &how);
            return ended
                .map(|r| r.unwrap_or(false))
                .map_err(|e| store_error("ending the lease", e));
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let id = id(ns, key);
        Ok(match held.get(&id) {
            Some(h) if h.lease == lease => {
                let h = held.remove(&id).expect("just seen");
                let _ = h.tx.send(outcome);
                true
            }
            _ => false,
        })
    }

    /// The entry of `key` was committed: whoever holds the claim is done, waiters are told.
    /// (A store that cannot be told now lets the lease run out; the entry is there.)
    pub fn resolved(&self, vault: &Vault, ns: &str, key: &str) {
        if self.shared() {
            if let Err(e) = vault.lease_end(ns, key, None, &LeaseEnded::Ready) {
                tracing::warn!("ending the claim of {key} after its commit: {e}");
            }
            return;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.remove(&id(ns, key)) {
            let _ = h.tx.send(Outcome::Ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> (tempfile::TempDir, Vault) {
        let dir = tempfile::tempdir().unwrap();
        let v = Vault::open(taskvault::config::Settings::for_dir(dir.path().join("v"))).unwrap();
        (dir, v)
    }

    #[test]
    fn one_lease_at_a_time_and_expiry_frees_it() {
        let (_dir, v) = vault();
        let c = Claims::new(&v).unwrap();
        assert!(!c.shared(), "a vault on SQLite keeps no leases");
        let Asked::Granted { lease } =
            c.ask(&v, "ns", "k", "a", Duration::from_millis(50)).unwrap()
        else {
            panic!("the first asker is granted")
        };
        let Asked::Held { mut rx, .. } = c.ask(&v, "ns", "k", "b", Duration::from_secs(5)).unwrap()
        else {
            panic!("a second asker waits")
        };
        assert!(matches!(
            c.ask(&v, "other", "k", "b", Duration::from_secs(5)).unwrap(),
            Asked::Granted { .. }
        ));
        assert!(c.renew(&v, "ns", "k", &lease, Duration::from_millis(10)).unwrap());
        assert!(!c.renew(&v, "ns", "k", "not-it", Duration::from_secs(1)).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        // Expired: the next asker takes it, and the old lease is no longer the current one.
        assert!(matches!(
            c.ask(&v, "ns", "k", "b", Duration::from_secs(5)).unwrap(),
            Asked::Granted { .. }
        ));
        assert_eq!(*rx.borrow_and_update(), Outcome::Vacant);
        assert!(!c.end(&v, "ns", "k", &lease, Outcome::Vacant).unwrap());
    }

    #[test]
    fn waiters_learn_the_outcome() {
        let (_dir, v) = vault();
        let c = Claims::new(&v).unwrap();
        assert!(!c.shared(), "a vault on SQLite keeps no leases");
        let Asked::Granted { lease } = c.ask(&v, "ns", "k", "a", Duration::from_secs(5)).unwrap()
        else {
            panic!()
        };
        let Asked::Held { rx, .. } = c.ask(&v, "ns", "k", "b", Duration::from_secs(5)).unwrap()
        else {
            panic!()
        };
        assert!(c.end(&v, "ns", "k", &lease, Outcome::Failed("boom".into())).unwrap());
        assert_eq!(*rx.borrow(), Outcome::Failed("boom".into()));
        let Asked::Granted { .. } = c.ask(&v, "ns", "k", "a", Duration::from_secs(5)).unwrap()
        else {
            panic!()
        };
        let Asked::Held { rx, .. } = c.ask(&v, "ns", "k", "b", Duration::from_secs(5)).unwrap()
        else {
            panic!()
        };
        c.resolved(&v, "ns", "k");
        assert_eq!(*rx.borrow(), Outcome::Ready);
    }
}
