//! `std::sync` locks that ignore poisoning, behind one name instead of
//! `.lock().unwrap_or_else(PoisonError::into_inner)` at every call site.
//!
//! - [`LockExt::locked`] for [`Mutex`];
//! - [`RwLockExt::read_locked`] and [`RwLockExt::write_locked`] for [`RwLock`].
//!
//! # Why poisoning is ignored
//!
//! A lock is poisoned when a thread panics while holding its guard. Poisoning does not mean the
//! data is unsound to touch (safe Rust keeps it memory-safe either way); it means a critical
//! section may have stopped half-way, so a multi-step invariant between fields may be broken.
//!
//! Every lock these helpers are used on in Ringside guards state whose updates inside the
//! critical section are single operations on one value (insert into or remove from a map or
//! set, push or pop on a queue, replace a snapshot, bump a count), so a holder that panics
//! leaves the update either made or not made, never half-made: what the next holder reads is
//! a state the data could have been in anyway, and it can carry on with it. Propagating the
//! poison instead would turn one panicked task into a panic in every later task that touches
//! the same lock (every session of a gateway, say), which is worse than the state it guards.
//!
//! So: use these only on a lock whose critical sections keep that property. A lock that
//! guards an invariant across several steps must handle [`std::sync::PoisonError`] itself.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// [`Mutex::lock`], going on past poisoning (see the [crate] docs for why that is sound here).
pub trait LockExt<T: ?Sized> {
    /// Locks the mutex, blocking until it is free; a poisoned mutex is locked all the same.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// [`RwLock::read`] and [`RwLock::write`], going on past poisoning (see the [crate] docs).
pub trait RwLockExt<T: ?Sized> {
    /// Takes a shared read guard; a poisoned lock is read all the same.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// Takes the exclusive write guard; a poisoned lock is written all the same.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_poisoned_mutex_is_still_locked() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }

    #[test]
    fn a_poisoned_rwlock_is_still_read_and_written() {
        let l = Arc::new(RwLock::new(1));
        let l2 = Arc::clone(&l);
        let _ = std::thread::spawn(move || {
            let _guard = l2.write();
            panic!("poison it");
        })
        .join();
        assert!(l.is_poisoned());
        *l.write_locked() += 1;
        assert_eq!(*l.read_locked(), 2);
    }
}
