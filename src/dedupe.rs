//! Duplicate detection over a bounded window of recent `(source_type, id_str)` pairs.
//!
//! The window stores a keyed 64-bit hash of each pair, not the strings, so one entry costs
//! about 40 bytes. The key is random per process, so no one can craft colliding ids; two
//! distinct pairs collide with a probability of about n²/2⁶⁵ for n entries.
//!
//! A pair whose message is not yet written is pending, not in the window: it becomes a
//! duplicate only once its write succeeded, and new again when the write failed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

/// The oldest pair is forgotten when a new one arrives in a full window. `P` is what a
/// pending pair carries, for example a way to wait for the outcome of its write.
pub struct DedupeWindow<P = ()> {
    capacity: usize,
    keyed: RandomState,
    seen: HashSet<u64, BuildHasherDefault<PassThroughHasher>>,
    order: VecDeque<u64>,
    pending: HashMap<u64, P, BuildHasherDefault<PassThroughHasher>>,
}

/// What the window knows about a pair.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen<'a, P> {
    New,
    /// The pair's message was written.
    Duplicate,
    /// The pair's message is being written; its outcome decides.
    Pending(&'a P),
}

impl<P> DedupeWindow<P> {
    /// Creates a window of `capacity` pairs; 0 turns detection off.
    pub fn new(capacity: usize) -> Self {
        DedupeWindow {
            capacity,
            keyed: RandomState::new(),
            seen: HashSet::default(),
            order: VecDeque::new(),
            pending: HashMap::default(),
        }
    }

    /// Looks the pair up without changing the window.
    pub fn check(&self, source: &str, id: &str) -> Seen<'_, P> {
        if self.capacity == 0 {
            return Seen::New;
        }
        let key = self.key(source, id);
        if self.seen.contains(&key) {
            return Seen::Duplicate;
        }
        match self.pending.get(&key) {
            Some(pending) => Seen::Pending(pending),
            None => Seen::New,
        }
    }

    /// Marks a new pair as pending; returns false when it is already pending or written.
    pub fn begin(&mut self, source: &str, id: &str, pending: P) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let key = self.key(source, id);
        if self.seen.contains(&key) || self.pending.contains_key(&key) {
            return false;
        }
        self.pending.insert(key, pending);
        true
    }

    /// Ends a pending pair: with `written` it enters the window, otherwise it is new again.
    pub fn finish(&mut self, source: &str, id: &str, written: bool) {
        if self.capacity == 0 {
            return;
        }
        let key = self.key(source, id);
        self.pending.remove(&key);
        if written {
            self.insert_key(key);
        }
    }

    /// Records the pair and returns true when it was not in the window.
    pub fn insert(&mut self, source: &str, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }

        let key = self.key(source, id);
        self.insert_key(key)
    }

    fn insert_key(&mut self, key: u64) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }

    fn key(&self, source: &str, id: &str) -> u64 {
        let mut hasher = self.keyed.build_hasher();
        hasher.write(source.as_bytes());
        hasher.write_u8(0xff);
        hasher.write(id.as_bytes());
        hasher.finish()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The keys are already SipHash outputs, so hashing them again would only cost time.
#[derive(Default)]
struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_duplicate() {
        let mut window: DedupeWindow = DedupeWindow::new(10);
        assert!(window.insert("twitter", "1"));
        assert!(!window.insert("twitter", "1"));
    }

    #[test]
    fn same_id_from_another_source_is_new() {
        let mut window: DedupeWindow = DedupeWindow::new(10);
        assert!(window.insert("twitter", "1"));
        assert!(window.insert("mastodon", "1"));
    }

    #[test]
    fn source_and_id_boundary_is_kept() {
        let mut window: DedupeWindow = DedupeWindow::new(10);
        assert!(window.insert("ab", "c"));
        assert!(window.insert("a", "bc"));
    }

    #[test]
    fn oldest_pair_is_forgotten_when_full() {
        let mut window: DedupeWindow = DedupeWindow::new(2);
        window.insert("s", "1");
        window.insert("s", "2");
        window.insert("s", "3");
        assert_eq!(window.len(), 2);
        assert!(window.insert("s", "1"), "pair 1 should have left the window");
        assert!(!window.insert("s", "3"));
    }

    #[test]
    fn pending_pair_is_duplicate_after_write() {
        let mut window = DedupeWindow::new(10);
        assert!(window.begin("s", "1", 7));
        assert_eq!(window.check("s", "1"), Seen::Pending(&7));
        assert!(!window.begin("s", "1", 8), "a pending pair was begun twice");

        window.finish("s", "1", true);
        assert_eq!(window.check("s", "1"), Seen::Duplicate);
    }

    #[test]
    fn pending_pair_is_new_after_failed_write() {
        let mut window = DedupeWindow::new(10);
        window.begin("s", "1", ());
        window.finish("s", "1", false);
        assert_eq!(window.check("s", "1"), Seen::New);
        assert!(window.begin("s", "1", ()));
    }

    #[test]
    fn zero_capacity_never_reports_duplicates() {
        let mut window: DedupeWindow = DedupeWindow::new(0);
        assert!(window.insert("s", "1"));
        assert!(window.insert("s", "1"));
    }
}
