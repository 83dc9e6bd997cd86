//! The publisher: the one path every message takes, from MQTT ingest and from HTTP push.
//!
//! It validates a payload, drops duplicates, stamps each message with a stream id, appends
//! the lines to the dump and publishes one copy per channel. Stamping, the dump append and
//! the broker hand-off happen under one lock, so stream ids increase in the dump file and
//! on every channel.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, BrokerError, Publication};
use crate::channels::{self, ChannelOptions};
use crate::dedupe::DedupeWindow;
use crate::dump::{DumpError, DumpWriter, Written};
use crate::ids::IdGenerator;
use crate::message::{self, Limits, Message, Rejection};
use crate::stats::{LogLimiter, Stats};

/// Where a payload came from, for logs.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    Mqtt { topic: &'a str },
    Http,
    /// A file replayed from the dump's `import/` folder.
    Import { file: &'a str },
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// The result of one accepted payload.
pub struct Outcome {
    pub accepted: usize,
    pub duplicates: usize,
    /// Resolves when the accepted lines are written to the dump.
    pub written: Written,
    /// `(source, id_str)` of the accepted messages, forgotten again when the write fails.
    remembered: Vec<(String, String)>,
}

pub struct Publisher {
    limits: Limits,
    channel_options: ChannelOptions,
    state: tokio::sync::Mutex<State>,
    dump: DumpWriter,
    broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
    rejection_log: LogLimiter,
    /// The ingest filter: a channel under it would come back through ingest as a new
    /// message, again and again, so such channels are never published.
    excluded: Option<String>,
}

struct State {
    dedupe: DedupeWindow,
    ids: IdGenerator,
}

/// A message with what can be computed before taking the lock.
struct Prepared<'a> {
    message: Message<'a>,
    dedupe_source: String,
    channels: Vec<String>,
}

impl Publisher {
    pub fn new(
        limits: Limits,
        channel_options: ChannelOptions,
        dedupe_entries: usize,
        dump: DumpWriter,
        broker: Arc<dyn Broker>,
        stats: Arc<Stats>,
    ) -> Self {
        Publisher {
            limits,
            channel_options,
            state: tokio::sync::Mutex::new(State {
                dedupe: DedupeWindow::new(dedupe_entries),
                ids: IdGenerator::new(),
            }),
            dump,
            broker,
            stats,
            rejection_log: LogLimiter::new(Duration::from_secs(1)),
            excluded: None,
        }
    }

    /// Never publishes channels that `filter` matches; the server passes its ingest filter.
    pub fn excluding_channels(mut self, filter: &str) -> Self {
        self.excluded = Some(filter.to_string());
        self
    }

    /// Publishes every message of `payload`, or rejects the payload whole.
    pub async fn publish(&self, payload: &[u8], origin: Origin<'_>) -> Result<Outcome, PublishError> {
        let messages = match message::parse_payload(payload, &self.limits) {
            Ok(messages) => messages,
            Err(rejection) => {
                self.record_rejection(&rejection, origin);
                return Err(rejection.into());
            }
        };
        let prepared: Vec<Prepared<'_>> = messages.into_iter().map(|m| self.prepare(m)).collect();

        let mut state = self.state.lock().await;
        let mut lines = Vec::with_capacity(prepared.len());
        let mut publications = Vec::new();
        let mut duplicates = 0;
        let mut remembered = Vec::new();

        for item in &prepared {
            if let Some(id) = item.message.id_str.as_deref() {
                if !state.dedupe.insert(&item.dedupe_source, id) {
                    duplicates += 1;
                    continue;
                }
                remembered.push((item.dedupe_source.clone(), id.to_owned()));
            }
            let line = item.message.to_line(state.ids.next_id());
            for topic in &item.channels {
                publications.push(Publication {
                    topic: topic.clone(),
                    payload: line.clone(),
                });
            }
            lines.push(line);
        }

        let accepted = lines.len();
        let channel_publishes = publications.len() as u64;
        self.stats.channel_activity.record(publications.iter().map(|publication| publication.topic.as_str()));
        let written = self.dump.append(lines).await?;
        if !publications.is_empty() {
            self.broker.publish(publications).await?;
        }
        drop(state);

        Stats::add(&self.stats.messages_accepted, accepted as u64);
        Stats::add(&self.stats.messages_duplicate, duplicates as u64);
        Stats::add(&self.stats.channel_publishes, channel_publishes);
        tracing::trace!(accepted, duplicates, ?origin, "payload published");
        Ok(Outcome {
            accepted,
            duplicates,
            written,
            remembered,
        })
    }

    /// Waits until the accepted lines of `outcome` are in the dump. When the write failed,
    /// their ids are forgotten, so that a retry is stored instead of being counted as a
    /// duplicate. The retry then reaches the channels a second time.
    pub async fn wait_written(&self, outcome: Outcome) -> Result<(), DumpError> {
        let result = outcome.written.wait().await;
        if result.is_err() && !outcome.remembered.is_empty() {
            let mut state = self.state.lock().await;
            for (source, id) in &outcome.remembered {
                state.dedupe.remove(source, id);
            }
        }
        result
    }

    fn prepare<'a>(&self, message: Message<'a>) -> Prepared<'a> {
        let mut derived = channels::derive(&message.channel_input(), &self.channel_options);
        if let Some(excluded) = &self.excluded {
            let before = derived.topics.len();
            derived.topics.retain(|channel| !crate::topic::matches(channel, excluded));
            derived.dropped += before - derived.topics.len();
        }
        if derived.dropped > 0 {
            Stats::add(&self.stats.channels_dropped, derived.dropped as u64);
        }
        let dedupe_source = match message.source_type.as_deref() {
            Some(source) if !source.is_empty() => source.to_lowercase(),
            _ => "generic".to_string(),
        };
        Prepared {
            message,
            dedupe_source,
            channels: derived.topics,
        }
    }

    fn record_rejection(&self, rejection: &Rejection, origin: Origin<'_>) {
        self.stats.reject(rejection.reason);
        if let Some(suppressed) = self.rejection_log.check() {
            tracing::warn!(
                reason = rejection.reason.as_str(),
                detail = %rejection.detail,
                ?origin,
                suppressed,
                "payload rejected"
            );
        }
    }
}
