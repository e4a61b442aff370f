//! Fork safety for SQLite. A process forked while one of its threads is inside SQLite gives the
//! child SQLite's global mutexes (its allocator's, its file-list's) locked by a thread the child
//! does not have: the child hangs at its first allocation in SQLite. That happens to a Python
//! worker forked (a process pool) while the parent's commit or checkpoint thread is committing.
//!
//! So every call into SQLite holds a [`Busy`] token (closing a connection too: [`Guarded`]), and `fork()` (through `pthread_atfork`)
//! waits until no token is held and lets no new one be taken until it is done. Tokens nest within
//! a thread; a thread already holding one is never made to wait.

use std::cell::Cell;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// Tokens held, in all threads.
static HELD: AtomicUsize = AtomicUsize::new(0);
/// Set while a fork is under way.
static FORKING: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
/// This process's id once asked for (0: not yet, or forked since), so that the checks of
/// "was this made by another process" on every hit and save cost no system call.
static PID: AtomicU32 = AtomicU32::new(0);
/// The fork handlers are in place (so `PID` is reset in every child).
static HANDLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Tokens held by this thread.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Held while a thread is inside SQLite.
#[derive(Debug)]
pub(crate) struct Busy(());

/// Takes a token; waits while a fork is under way (unless this thread already holds one).
pub(crate) fn busy() -> Busy {
    INSTALL.call_once(install);
    if DEPTH.get() == 0 {
        loop {
            while FORKING.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            HELD.fetch_add(1, Ordering::AcqRel);
            if !FORKING.load(Ordering::Acquire) {
                break;
            }
            // A fork started meanwhile: let it go first.
            HELD.fetch_sub(1, Ordering::AcqRel);
        }
    } else {
        HELD.fetch_add(1, Ordering::AcqRel);
    }
    DEPTH.set(DEPTH.get() + 1);
    Busy(())
}

impl Drop for Busy {
    fn drop(&mut self) {
        DEPTH.set(DEPTH.get() - 1);
        HELD.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A value whose drop calls into SQLite (a connection: closing one takes SQLite's global
/// mutexes), dropped holding a [`Busy`] token. A connection is often closed by a background
/// thread (a checkpoint thread ending, a commit thread letting go of the last handle on a
/// vault), at any moment, so its close must hold off a fork like any other call.
#[derive(Debug)]
pub(crate) struct Guarded<T>(Option<T>);

impl<T> Guarded<T> {
    pub(crate) fn new(value: T) -> Guarded<T> {
        Guarded(Some(value))
    }
}

impl<T> std::ops::Deref for Guarded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("a guarded value is only taken by its drop")
    }
}

impl<T> std::ops::DerefMut for Guarded<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("a guarded value is only taken by its drop")
    }
}

impl<T> Drop for Guarded<T> {
    fn drop(&mut self) {
        let _busy = busy();
        drop(self.0.take());
    }
}

/// This process's id, as `std::process::id()`, without a system call after the first (a
/// forked child asks again).
pub(crate) fn pid() -> u32 {
    INSTALL.call_once(install);
    if !HANDLED.load(Ordering::Relaxed) {
        return std::process::id();
    }
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

extern "C" fn before_fork() {
    FORKING.store(true, Ordering::SeqCst);
    // The forking thread's own tokens (if it forks from inside a call, which nothing here does)
    // must not be waited for.
    let own = DEPTH.get();
    while HELD.load(Ordering::SeqCst) > own {
        std::thread::yield_now();
    }
}

extern "C" fn after_fork_in_parent() {
    FORKING.store(false, Ordering::SeqCst);
}

extern "C" fn after_fork_in_child() {
    // Only the forking thread lives on in the child: only its tokens are held.
    HELD.store(DEPTH.get(), Ordering::SeqCst);
    PID.store(0, Ordering::SeqCst);
    FORKING.store(false, Ordering::SeqCst);
}

fn install() {
    // SAFETY: the three handlers are `extern "C"` functions with no arguments that live for the
    // whole program; they only touch atomics and a thread-local counter, which is allowed
    // between fork and exec.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::pthread_atfork(
            Some(before_fork),
            Some(after_fork_in_parent),
            Some(after_fork_in_child),
        )
    };
    if r == 0 {
        HANDLED.store(true, Ordering::SeqCst);
    } else {
        tracing::warn!("pthread_atfork failed ({r}): a process forked mid-commit may hang");
    }
}
