//! Counters shared by every part of the server, read by `/api/status.json`.
//!
//! Counters only grow; gauges go up and down. All are relaxed atomics: a snapshot is a set
//! of recent values, not one consistent instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Why a payload or message was rejected; the names appear in status output and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    InvalidUtf8,
    InvalidJson,
    NotObject,
    MessageTooLarge,
    PayloadTooLarge,
    InvalidField,
    InvalidTopic,
    InvalidFilter,
    InvalidForm,
}

impl RejectReason {
    pub const ALL: [RejectReason; 9] = [
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotObject,
        RejectReason::MessageTooLarge,
        RejectReason::PayloadTooLarge,
        RejectReason::InvalidField,
        RejectReason::InvalidTopic,
        RejectReason::InvalidFilter,
        RejectReason::InvalidForm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotObject => "not_object",
            RejectReason::MessageTooLarge => "message_too_large",
            RejectReason::PayloadTooLarge => "payload_too_large",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::InvalidTopic => "invalid_topic",
            RejectReason::InvalidFilter => "invalid_filter",
            RejectReason::InvalidForm => "invalid_form",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    pub messages_accepted: AtomicU64,
    pub messages_duplicate: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    pub channel_publishes: AtomicU64,
    pub channels_dropped: AtomicU64,
    pub broker_messages_lost: AtomicU64,
    pub sse_connections_open: AtomicU64,
    pub sse_connections_total: AtomicU64,
    pub sse_events_sent: AtomicU64,
    pub sse_slow_disconnects: AtomicU64,
    /// Stream requests answered 503 because `stream.connections.max` streams were open.
    pub sse_connections_rejected: AtomicU64,
    pub channel_activity: crate::activity::ChannelActivity,
}

impl Stats {
    pub fn reject(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Lets one log line through per interval and counts the ones it held back, so a flood of
/// bad input cannot flood the log.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            state: Mutex::new(LimiterState {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Returns `Some(suppressed)` when a line may be logged now, with the number of lines
    /// held back since the last one; `None` when this line must be dropped.
    pub fn check(&self) -> Option<u64> {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let now = Instant::now();
        let due = state
            .last
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if !due {
            state.suppressed += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_lets_first_line_through_and_counts_the_rest() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.check(), Some(0));
        assert_eq!(limiter.check(), None);
        assert_eq!(limiter.check(), None);
    }

    #[test]
    fn reject_counts_by_reason() {
        let stats = Stats::default();
        stats.reject(RejectReason::InvalidJson);
        stats.reject(RejectReason::InvalidJson);
        assert_eq!(stats.rejected(RejectReason::InvalidJson), 2);
        assert_eq!(stats.rejected(RejectReason::NotObject), 0);
    }
}
