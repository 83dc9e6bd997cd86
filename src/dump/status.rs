//! Shared, lock-protected `DumpStatus` that the writer and compression threads update and
//! `DumpWriter::status` copies out. Every update is a few field assignments, so a panic
//! while the lock is held cannot leave the counters half-changed.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::DumpStatus;

pub(super) struct StatusCell {
    status: Mutex<DumpStatus>,
}

impl StatusCell {
    pub(super) fn new(initial: DumpStatus) -> Self {
        Self {
            status: Mutex::new(initial),
        }
    }

    pub(super) fn snapshot(&self) -> DumpStatus {
        self.lock().clone()
    }

    pub(super) fn update(&self, change: impl FnOnce(&mut DumpStatus)) {
        change(&mut self.lock());
    }

    // A poisoned lock still holds consistent counters (see the module comment), so the
    // status stays readable after a panic on another thread.
    fn lock(&self) -> MutexGuard<'_, DumpStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
