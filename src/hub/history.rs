//! The hub's history: recent events in dispatch order, bounded by bytes.
//!
//! Events enter in increasing id order, so the events after an id are a suffix found by
//! binary search. The oldest events leave first, and the caller learns which left, so it
//! can tell a resuming stream whether its part of the history is still complete.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Event;

/// Bytes counted for an event beside its frame and topic: the `Arc` header, the `Event`
/// fields and the deque slot. An estimate of the allocations, not a measurement.
const EVENT_OVERHEAD_BYTES: usize = 96;

pub(super) struct History {
    max_bytes: usize,
    bytes: usize,
    events: VecDeque<Arc<Event>>,
}

impl History {
    pub(super) fn new(max_bytes: usize) -> Self {
        History {
            max_bytes,
            bytes: 0,
            events: VecDeque::new(),
        }
    }

    /// Appends `event`, whose id must exceed every id already stored. Each event that no
    /// longer fits goes to `evicted`, oldest first, and that is `event` itself when it
    /// alone exceeds the bound.
    pub(super) fn push(&mut self, event: Arc<Event>, mut evicted: impl FnMut(&Event)) {
        let cost = cost_of(&event);
        if cost > self.max_bytes {
            evicted(&event);
            return;
        }
        self.bytes += cost;
        self.events.push_back(event);
        while self.bytes > self.max_bytes {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= cost_of(&oldest);
            evicted(&oldest);
        }
    }

    /// Events with an id greater than `id`, oldest first.
    pub(super) fn after(&self, id: u64) -> impl Iterator<Item = &Arc<Event>> {
        let start = self.events.partition_point(|event| event.id <= id);
        self.events.range(start..)
    }

    pub(super) fn len(&self) -> usize {
        self.events.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

fn cost_of(event: &Event) -> usize {
    event.frame.len() + event.topic.as_ref().map_or(0, |topic| topic.len()) + EVENT_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(id: u64, frame_bytes: usize) -> Arc<Event> {
        Arc::new(Event {
            id,
            subscription: 1,
            topic: None,
            frame: Bytes::from(vec![b'x'; frame_bytes]),
        })
    }

    #[test]
    fn oldest_events_leave_first() {
        let mut history = History::new(3 * (100 + EVENT_OVERHEAD_BYTES));
        let mut evicted = Vec::new();
        for id in 1..=5 {
            history.push(event(id, 100), |event| evicted.push(event.id));
        }
        assert_eq!(evicted, [1, 2]);
        let held: Vec<u64> = history.after(0).map(|event| event.id).collect();
        assert_eq!(held, [3, 4, 5]);
        assert_eq!(history.bytes(), 3 * (100 + EVENT_OVERHEAD_BYTES));
    }

    #[test]
    fn after_returns_the_suffix_past_an_id() {
        let mut history = History::new(1 << 20);
        for id in [10, 20, 30] {
            history.push(event(id, 1), |_| {});
        }
        let ids = |after| history.after(after).map(|event| event.id).collect::<Vec<_>>();
        assert_eq!(ids(0), [10, 20, 30]);
        assert_eq!(ids(20), [30]);
        assert_eq!(ids(25), [30]);
        assert!(ids(30).is_empty());
    }

    #[test]
    fn zero_bytes_keeps_nothing() {
        let mut history = History::new(0);
        let mut evicted = Vec::new();
        history.push(event(1, 1), |event| evicted.push(event.id));
        assert_eq!(evicted, [1]);
        assert_eq!(history.len(), 0);
    }
}
