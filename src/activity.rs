//! Channel activity: how many messages each channel got recently, so the viewer can
//! suggest channels that are flowing.
//!
//! Counts live in two windows of `WINDOW` each, the current one and the one before it,
//! so a query covers between one and two windows. Memory is bounded: a window counts at
//! most `MAX_CHANNELS` channels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of one counting window.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Channels counted per window; publishes to further channels in the same window are not
/// counted, so a flood of one-off hashtags cannot grow memory.
const MAX_CHANNELS: usize = 10_000;

#[derive(Debug, Default)]
pub struct ChannelActivity {
    windows: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows {
    started: Option<Instant>,
    current: HashMap<String, u64>,
    previous: HashMap<String, u64>,
}

/// One channel and its message count over the last one to two windows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelCount {
    pub channel: String,
    pub messages: u64,
}

impl ChannelActivity {
    /// Counts one message on each of `channels`.
    pub fn record<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        self.record_at(Instant::now(), channels);
    }

    fn record_at<'a>(&self, now: Instant, channels: impl IntoIterator<Item = &'a str>) {
        let mut windows = self.lock();
        windows.roll(now);
        for channel in channels {
            if let Some(count) = windows.current.get_mut(channel) {
                *count += 1;
            } else if windows.current.len() < MAX_CHANNELS {
                windows.current.insert(channel.to_string(), 1);
            }
        }
    }

    /// Returns the `limit` busiest channels, busiest first, ties in name order.
    pub fn top(&self, limit: usize) -> Vec<ChannelCount> {
        self.top_at(Instant::now(), limit)
    }

    fn top_at(&self, now: Instant, limit: usize) -> Vec<ChannelCount> {
        let mut windows = self.lock();
        windows.roll(now);
        let mut totals: HashMap<&str, u64> = HashMap::new();
        for (channel, count) in windows.previous.iter().chain(&windows.current) {
            *totals.entry(channel).or_insert(0) += count;
        }
        let mut counts: Vec<ChannelCount> = totals
            .into_iter()
            .map(|(channel, messages)| ChannelCount {
                channel: channel.to_string(),
                messages,
            })
            .collect();
        counts.sort_by(|a, b| b.messages.cmp(&a.messages).then_with(|| a.channel.cmp(&b.channel)));
        counts.truncate(limit);
        counts
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Windows {
    fn roll(&mut self, now: Instant) {
        let Some(started) = self.started else {
            self.started = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(started);
        if elapsed < WINDOW {
            return;
        }
        self.previous = if elapsed < 2 * WINDOW {
            std::mem::take(&mut self.current)
        } else {
            self.current.clear();
            HashMap::new()
        };
        self.started = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(channel: &str, messages: u64) -> ChannelCount {
        ChannelCount {
            channel: channel.to_string(),
            messages,
        }
    }

    #[test]
    fn busiest_channels_come_first() {
        let activity = ChannelActivity::default();
        let start = Instant::now();
        activity.record_at(start, ["all", "twitter", "twitter/hashtag/a"]);
        activity.record_at(start, ["all", "twitter"]);
        activity.record_at(start, ["all"]);
        assert_eq!(activity.top_at(start, 2), [count("all", 3), count("twitter", 2)]);
    }

    #[test]
    fn counts_cover_the_previous_window_then_expire() {
        let activity = ChannelActivity::default();
        let start = Instant::now();
        activity.record_at(start, ["old"]);
        activity.record_at(start + WINDOW, ["new"]);
        assert_eq!(activity.top_at(start + WINDOW, 5), [count("new", 1), count("old", 1)]);
        assert_eq!(activity.top_at(start + WINDOW * 3, 5), []);
    }

    #[test]
    fn channel_count_per_window_is_bounded() {
        let activity = ChannelActivity::default();
        let start = Instant::now();
        let names: Vec<String> = (0..MAX_CHANNELS + 10).map(|n| format!("c{n}")).collect();
        activity.record_at(start, names.iter().map(String::as_str));
        assert_eq!(activity.top_at(start, usize::MAX).len(), MAX_CHANNELS);
    }
}
