//! Stream ids: unique, time-ordered 64-bit ids for accepted messages and SSE events.
//!
//! An id is the Unix time in milliseconds shifted left by 16 bits, plus a counter for ids
//! issued within the same millisecond. Ids from one generator strictly increase, even when
//! the wall clock steps back; then they run ahead of the clock until it catches up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Bits below the millisecond timestamp.
const COUNTER_BITS: u32 = 16;

#[derive(Debug, Default)]
pub struct IdGenerator {
    last: AtomicU64,
}

impl IdGenerator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues the next id from the system clock.
    pub fn next_id(&self) -> u64 {
        self.next_at(unix_millis())
    }

    /// Issues the next id for the given Unix time in milliseconds.
    pub fn next_at(&self, millis: u64) -> u64 {
        let floor = millis << COUNTER_BITS;
        let mut current = self.last.load(Ordering::Relaxed);
        loop {
            let next = floor.max(current + 1);
            match self
                .last
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => current = actual,
            }
        }
    }
}

/// The Unix time in milliseconds an id was issued at (or, after a burst, slightly later).
pub fn millis_of(id: u64) -> u64 {
    id >> COUNTER_BITS
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_within_one_millisecond() {
        let ids = IdGenerator::new();
        let first = ids.next_at(1_000);
        let second = ids.next_at(1_000);
        assert!(second > first);
        assert_eq!(millis_of(first), 1_000);
    }

    #[test]
    fn ids_increase_when_clock_steps_back() {
        let ids = IdGenerator::new();
        let first = ids.next_at(2_000);
        let second = ids.next_at(1_000);
        assert!(second > first);
    }

    #[test]
    fn ids_from_a_later_millisecond_carry_its_time() {
        let ids = IdGenerator::new();
        ids.next_at(1_000);
        assert_eq!(millis_of(ids.next_at(5_000)), 5_000);
    }
}
