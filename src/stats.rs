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
    Unauthorized,
}

impl RejectReason {
    pub const ALL: [RejectReason; 10] = [
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotObject,
        RejectReason::MessageTooLarge,
        RejectReason::PayloadTooLarge,
        RejectReason::InvalidField,
        RejectReason::InvalidTopic,
        RejectReason::InvalidFilter,
        RejectReason::InvalidForm,
        RejectReason::Unauthorized,
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
            RejectReason::Unauthorized => "unauthorized",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Reason the MQTT front closed a new connection before handing it to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectRejectReason {
    /// No complete CONNECT packet within `mqtt.connect.timeout_ms`.
    Timeout,
    /// The client closed the connection before its CONNECT packet was complete.
    ClosedEarly,
    /// The first packet is not a valid CONNECT packet.
    Malformed,
    TooLarge,
    /// A protocol level other than 4 (MQTT 3.1.1) or 5 (MQTT 5), such as MQTT 3.1.
    UnsupportedProtocol,
    /// A login that is not the configured publisher login.
    BadCredentials,
    /// No login while `mqtt.auth.subscribe` requires one.
    NotAuthorized,
    /// A will message from a client without the publisher login; the broker would publish it.
    WillNotAuthorized,
    /// More open connections than `mqtt.connections.max`.
    ConnectionLimit,
    /// The internal broker listener could not be reached.
    BrokerUnavailable,
}

impl ConnectRejectReason {
    pub const ALL: [ConnectRejectReason; 10] = [
        ConnectRejectReason::Timeout,
        ConnectRejectReason::ClosedEarly,
        ConnectRejectReason::Malformed,
        ConnectRejectReason::TooLarge,
        ConnectRejectReason::UnsupportedProtocol,
        ConnectRejectReason::BadCredentials,
        ConnectRejectReason::NotAuthorized,
        ConnectRejectReason::WillNotAuthorized,
        ConnectRejectReason::ConnectionLimit,
        ConnectRejectReason::BrokerUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectRejectReason::Timeout => "timeout",
            ConnectRejectReason::ClosedEarly => "closed_early",
            ConnectRejectReason::Malformed => "malformed",
            ConnectRejectReason::TooLarge => "too_large",
            ConnectRejectReason::UnsupportedProtocol => "unsupported_protocol",
            ConnectRejectReason::BadCredentials => "bad_credentials",
            ConnectRejectReason::NotAuthorized => "not_authorized",
            ConnectRejectReason::WillNotAuthorized => "will_not_authorized",
            ConnectRejectReason::ConnectionLimit => "connection_limit",
            ConnectRejectReason::BrokerUnavailable => "broker_unavailable",
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
    /// Gauge: ingest payloads received and not yet taken by the publisher.
    pub ingest_queue: AtomicU64,
    /// Connections the MQTT front handed to the broker, by protocol version.
    pub mqtt_connections_v311: AtomicU64,
    pub mqtt_connections_v5: AtomicU64,
    mqtt_connects_rejected: [AtomicU64; ConnectRejectReason::ALL.len()],
    /// Clients without the publisher login disconnected for sending a PUBLISH.
    pub mqtt_unauthorized_publishes: AtomicU64,
    /// Stream requests rejected with 503 because `stream.connections.max` streams were open.
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

    pub fn reject_connect(&self, reason: ConnectRejectReason) {
        self.mqtt_connects_rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connects_rejected(&self, reason: ConnectRejectReason) -> u64 {
        self.mqtt_connects_rejected[reason.index()].load(Ordering::Relaxed)
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

    #[test]
    fn connect_reject_reasons_are_listed_in_index_order() {
        for (index, reason) in ConnectRejectReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index, "{}", reason.as_str());
        }
        let stats = Stats::default();
        stats.reject_connect(ConnectRejectReason::Timeout);
        assert_eq!(stats.connects_rejected(ConnectRejectReason::Timeout), 1);
        assert_eq!(stats.connects_rejected(ConnectRejectReason::BrokerUnavailable), 0);
    }
}
