//! Small blobs kept in memory once read and verified: a blob is content-addressed, so the bytes
//! of a digest never change, and a popular small output is answered without a trip to the
//! blocking pool or the database. Bounded in bytes; the oldest go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;
use taskvault::Digest;

/// Blobs up to this size are kept.
pub const HOT_BLOB_MAX: usize = 1 << 20;

#[derive(Debug)]
pub struct HotBlobs {
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Debug, Default)]
struct Inner {
    /// The bytes and their response's ETag.
    map: HashMap<Digest, (Bytes, axum::http::HeaderValue)>,
    order: VecDeque<Digest>,
    bytes: usize,
}

impl HotBlobs {
    pub fn new(cap: usize) -> HotBlobs {
        HotBlobs { inner: Mutex::default(), cap }
    }

    /// The bytes of `d` and their ETag.
    pub fn get(&self, d: &Digest) -> Option<(Bytes, axum::http::HeaderValue)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).map.get(d).cloned()
    }

    /// Keeps verified bytes of `d` (ignored when too large for it).
    pub fn put(&self, d: Digest, bytes: Bytes) {
        if bytes.len() > HOT_BLOB_MAX || bytes.len() > self.cap {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.map.contains_key(&d) {
            return;
        }
        while g.bytes + bytes.len() > self.cap {
            let Some(old) = g.order.pop_front() else { break };
            if let Some((b, _)) = g.map.remove(&old) {
                g.bytes -= b.len();
            }
        }
        g.bytes += bytes.len();
        g.order.push_back(d);
        g.map.insert(d, (bytes, etag(&d)));
    }

    /// Forgets `d` (its blob failed verification somewhere: never answer it from here).
    pub fn forget(&self, d: &Digest) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((b, _)) = g.map.remove(d) {
            g.bytes -= b.len();
            g.order.retain(|o| o != d);
        }
    }
}

/// The ETag of a blob's response: its digest, quoted.
pub fn etag(d: &Digest) -> axum::http::HeaderValue {
    axum::http::HeaderValue::from_str(&format!("\"{d}\"")).expect("a digest is a header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_bytes_oldest_first() {
        let h = HotBlobs::new(10);
        let d = |b: &[u8]| taskvault::Algorithm::Blake3.digest(b);
        h.put(d(b"a"), Bytes::from_static(b"aaaa"));
        h.put(d(b"b"), Bytes::from_static(b"bbbb"));
        h.put(d(b"c"), Bytes::from_static(b"cccc"));
        assert!(h.get(&d(b"a")).is_none(), "the oldest went to make room");
        assert_eq!(h.get(&d(b"c")).unwrap().0, Bytes::from_static(b"cccc"));
        h.put(d(b"big"), Bytes::from(vec![0u8; 11]));
        assert!(h.get(&d(b"big")).is_none(), "larger than the cap: not kept");
        h.forget(&d(b"c"));
        assert!(h.get(&d(b"c")).is_none());
    }
}
