//! The vault generation: a counter in shared memory (`generation`, 8 bytes, mapped by every
//! process that uses it) that is bumped before and after any removal commits and after any save
//! that replaced a live run. A resident process (the Python SDK) keeps served results in memory and
//! serves them again only while the generation is the one it saw before reading them, so a
//! result removed or replaced by any process is never served from memory afterwards. Reading it
//! is one atomic load: no system call.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

#[derive(Debug)]
pub(crate) struct Generation {
    map: memmap2::MmapRaw,
}

impl Generation {
    /// Maps `path`, creating it (zero) if needed.
    pub(crate) fn open(path: &Path) -> Result<Generation> {
        let f = crate::claim::open_or_create(path)?;
        // Growing from 0 to 8 bytes zero-fills; two processes doing it at once agree.
        if f.metadata().at(path)?.len() < 8 {
            f.set_len(8).at(path)?;
        }
        let map = memmap2::MmapOptions::new().len(8).map_raw(&f).at(path)?;
        Ok(Generation { map })
    }

    fn counter(&self) -> &AtomicU64 {
        let ptr = self.map.as_mut_ptr();
        assert!(self.map.len() >= 8 && (ptr as usize).is_multiple_of(8));
        // SAFETY: the mapping is 8 bytes long, page-aligned (so 8-aligned, checked above), shared
        // with other processes and lives as long as `self`. It is only ever accessed through
        // this atomic, in this process and in others, so there are no non-atomic accesses to
        // race with.
        #[allow(unsafe_code)]
        unsafe {
            AtomicU64::from_ptr(ptr.cast::<u64>())
        }
    }

    pub(crate) fn current(&self) -> u64 {
        self.counter().load(Ordering::SeqCst)
    }

    pub(crate) fn bump(&self) {
        self.counter().fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bumps_are_seen_through_every_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("generation");
        let a = Generation::open(&p).unwrap();
        let b = Generation::open(&p).unwrap();
        assert_eq!(a.current(), 0);
        b.bump();
        b.bump();
        assert_eq!(a.current(), 2, "a bump through one mapping is visible through another");
        drop(a);
        assert_eq!(Generation::open(&p).unwrap().current(), 2, "the count persists");
    }
}
