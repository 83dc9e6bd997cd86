//! Shared, lock-protected status (`DumpStatus`, `ImportStatus`) that background threads and
//! tasks update and handles copy out. Every update is a few field assignments, so a panic
//! while the lock is held cannot leave the counters half-changed.

use std::sync::{Mutex, MutexGuard, PoisonError};

pub(super) struct StatusCell<T> {
    status: Mutex<T>,
}

impl<T: Clone> StatusCell<T> {
    pub(super) fn new(initial: T) -> Self {
        Self {
            status: Mutex::new(initial),
        }
    }

    pub(super) fn snapshot(&self) -> T {
        self.lock().clone()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut T)) {
        change(&mut self.lock());
    }

    // A poisoned lock still holds consistent counters (see the module comment), so the
    // status stays readable after a panic on another thread.
    fn lock(&self) -> MutexGuard<'_, T> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
