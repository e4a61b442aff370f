//! Claims across machines: for each (namespace, key) at most one client holds a lease to
//! compute it; it renews the lease while it works. The others wait on a long poll and are woken
//! by the outcome: the entry committed, the failure reported, or the lease released or expired
//! (then one of them is granted it). Claims live in the server's memory: a restarted server
//! has none, and clients that were waiting compute or wait again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

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

#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashMap<(String, String), Held>>,
}

fn lease_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{:016x}{:08x}{n:x}", t as u64, std::process::id())
}

impl Claims {
    /// Takes the claim of `key` in `ns` for `ttl` unless a live lease holds it.
    pub fn ask(&self, ns: &str, key: &str, holder: &str, ttl: Duration) -> Asked {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let id = (ns.to_owned(), key.to_owned());
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
    pub fn renew(&self, ns: &str, key: &str, lease: &str, ttl: Duration) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.get_mut(&(ns.to_owned(), key.to_owned())) {
            Some(h) if h.lease == lease => {
                h.expires = Instant::now() + ttl;
                true
            }
            _ => false,
        }
    }

    /// Ends a lease with `outcome` (a failure, or vacant for a plain release); `false` if it
    /// was not the current lease.
    pub fn end(&self, ns: &str, key: &str, lease: &str, outcome: Outcome) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let id = (ns.to_owned(), key.to_owned());
        match held.get(&id) {
            Some(h) if h.lease == lease => {
                let h = held.remove(&id).expect("just seen");
                let _ = h.tx.send(outcome);
                true
            }
            _ => false,
        }
    }

    /// The entry of `key` was committed: whoever holds the claim is done, waiters are told.
    pub fn resolved(&self, ns: &str, key: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = held.remove(&(ns.to_owned(), key.to_owned())) {
            let _ = h.tx.send(Outcome::Ready);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lease_at_a_time_and_expiry_frees_it() {
        let c = Claims::default();
        let Asked::Granted { lease } = c.ask("ns", "k", "a", Duration::from_millis(50)) else {
            panic!("the first asker is granted")
        };
        let Asked::Held { mut rx, .. } = c.ask("ns", "k", "b", Duration::from_secs(5)) else {
            panic!("a second asker waits")
        };
        assert!(matches!(c.ask("other", "k", "b", Duration::from_secs(5)), Asked::Granted { .. }));
        assert!(c.renew("ns", "k", &lease, Duration::from_millis(10)));
        assert!(!c.renew("ns", "k", "not-it", Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(20));
        // Expired: the next asker takes it, and the old lease is no longer the current one.
        assert!(matches!(c.ask("ns", "k", "b", Duration::from_secs(5)), Asked::Granted { .. }));
        assert_eq!(*rx.borrow_and_update(), Outcome::Vacant);
        assert!(!c.end("ns", "k", &lease, Outcome::Vacant));
    }

    #[test]
    fn waiters_learn_the_outcome() {
        let c = Claims::default();
        let Asked::Granted { lease } = c.ask("ns", "k", "a", Duration::from_secs(5)) else {
            panic!()
        };
        let Asked::Held { rx, .. } = c.ask("ns", "k", "b", Duration::from_secs(5)) else {
            panic!()
        };
        assert!(c.end("ns", "k", &lease, Outcome::Failed("boom".into())));
        assert_eq!(*rx.borrow(), Outcome::Failed("boom".into()));
        let Asked::Granted { .. } = c.ask("ns", "k", "a", Duration::from_secs(5)) else { panic!() };
        let Asked::Held { rx, .. } = c.ask("ns", "k", "b", Duration::from_secs(5)) else {
            panic!()
        };
        c.resolved("ns", "k");
        assert_eq!(*rx.borrow(), Outcome::Ready);
    }
}
