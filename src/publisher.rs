//! The publisher: the one path every message takes, from MQTT ingest and from HTTP push.
//!
//! It validates a payload, drops duplicates, stamps each message with a stream id, appends
//! the lines to the dump and publishes one copy per channel. Stamping, the dump append and
//! the broker hand-off happen under one lock, so stream ids increase in the dump file and
//! on every channel.
//!
//! A message id counts as seen only after its line is written (flushed, and fsynced under
//! `dump.fsync = batch`). Until then it is pending: a second message with that id waits
//! for the first one's write, and is stored when that write failed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::broker::{Broker, BrokerError, Publication};
use crate::channels::{self, ChannelOptions};
use crate::dedupe::{DedupeWindow, Seen};
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
    /// Sent by the task that waits for the dump write, which runs on even when this
    /// outcome is dropped.
    written: oneshot::Receiver<Result<(), DumpError>>,
}

impl Outcome {
    /// Waits until the accepted lines are written to the dump, or the write failed.
    pub async fn wait_written(self) -> Result<(), DumpError> {
        match self.written.await {
            Ok(result) => result,
            // The waiting task ends without sending only when the runtime shuts down.
            Err(_closed) => Err(DumpError::Stopped),
        }
    }
}

/// The write outcome of a pending id: `None` while the write runs, then whether it succeeded.
type WriteSettled = watch::Receiver<Option<bool>>;

type Dedupe = Arc<Mutex<DedupeWindow<WriteSettled>>>;

pub struct Publisher {
    limits: Limits,
    channel_options: ChannelOptions,
    /// Held only for short, synchronous steps, so a drop guard can take it.
    dedupe: Dedupe,
    /// Held from stamping through the dump append and the broker hand-off.
    ids: tokio::sync::Mutex<IdGenerator>,
    dump: DumpWriter,
    broker: Arc<dyn Broker>,
    stats: Arc<Stats>,
    rejection_log: LogLimiter,
    /// The ingest filter: a channel under it would come back through ingest as a new
    /// message, again and again, so such channels are never published.
    excluded: Option<String>,
}

/// The ids one payload marked pending. Settling it moves them into the window (written) or
/// makes them new again (failed). Dropping it unsettled counts as failed, which is right
/// because that happens only before its lines were queued, for example on cancellation.
struct Claim {
    dedupe: Dedupe,
    /// `(source, id_str)` of the claimed messages.
    ids: Vec<(String, String)>,
    settled: watch::Sender<Option<bool>>,
    done: bool,
}

impl Claim {
    fn settle(mut self, written: bool) {
        self.finish(written);
    }

    fn finish(&mut self, written: bool) {
        self.done = true;
        let mut window = lock_dedupe(&self.dedupe);
        for (source, id) in &self.ids {
            window.finish(source, id, written);
        }
        drop(window);
        self.settled.send_replace(Some(written));
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.done {
            self.finish(false);
        }
    }
}

/// Duplicate flags of a payload's messages, and the claim on the others.
struct Claimed {
    claim: Claim,
    /// One flag per prepared message.
    duplicate: Vec<bool>,
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
            dedupe: Arc::new(Mutex::new(DedupeWindow::new(dedupe_entries))),
            ids: tokio::sync::Mutex::new(IdGenerator::new()),
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

    /// Returns `stream.message.max_bytes`, the size above which a message is rejected.
    pub fn message_max_bytes(&self) -> usize {
        self.limits.message_max_bytes
    }

    /// Publishes every message of `payload`, or rejects the payload whole.
    pub async fn publish(&self, payload: &[u8], origin: Origin<'_>) -> Result<Outcome, PublishError> {
        let messages = self.parse(payload, origin)?;
        let outcome = self.publish_messages(messages).await?;
        tracing::trace!(accepted = outcome.accepted, duplicates = outcome.duplicates, ?origin, "payload published");
        Ok(outcome)
    }

    /// Publishes the messages of several payloads with one dump append and one broker
    /// hand-off, in the order given. Each payload is accepted or rejected whole, on its own:
    /// a rejected payload is counted and logged here, and the others go on. The outcome
    /// covers the accepted payloads together.
    pub async fn publish_batch(&self, payloads: &[(&[u8], Origin<'_>)]) -> Result<Outcome, PublishError> {
        let mut messages = Vec::with_capacity(payloads.len());
        for &(payload, origin) in payloads {
            if let Ok(parsed) = self.parse(payload, origin) {
                messages.extend(parsed);
            }
        }
        let outcome = self.publish_messages(messages).await?;
        tracing::trace!(
            payloads = payloads.len(),
            accepted = outcome.accepted,
            duplicates = outcome.duplicates,
            "batch published"
        );
        Ok(outcome)
    }

    /// Splits `payload` into messages, or counts, logs and returns its rejection.
    fn parse<'a>(&self, payload: &'a [u8], origin: Origin<'_>) -> Result<Vec<Message<'a>>, Rejection> {
        message::parse_payload(payload, &self.limits).inspect_err(|rejection| self.record_rejection(rejection, origin))
    }

    /// Dedupes, stamps, appends and publishes parsed messages. Everything that needs no
    /// stream id runs before the id lock is taken.
    async fn publish_messages(&self, messages: Vec<Message<'_>>) -> Result<Outcome, PublishError> {
        let prepared: Vec<Prepared<'_>> = messages.into_iter().map(|m| self.prepare(m)).collect();
        let Claimed { claim, duplicate } = self.claim_ids(&prepared).await;
        let received = prepared.len();

        let ids = self.ids.lock().await;
        let mut lines = Vec::with_capacity(received);
        let mut publications = Vec::new();
        for (item, _) in prepared.into_iter().zip(duplicate).filter(|(_, duplicate)| !*duplicate) {
            let line = item.message.to_line(ids.next_id());
            for topic in item.channels {
                publications.push(Publication {
                    topic,
                    payload: line.clone(),
                });
            }
            lines.push(line);
        }

        let accepted = lines.len();
        let duplicates = received - accepted;
        let channel_publishes = publications.len() as u64;
        self.stats.channel_activity.record(publications.iter().map(|publication| publication.topic.as_str()));
        // An error or a cancelled append drops the claim, which makes the ids new again.
        // No line was queued then, because a cancelled send queues nothing.
        let written = self.dump.append(lines).await?;
        let written = settle_when_written(claim, written);
        if !publications.is_empty() {
            self.broker.publish(publications).await?;
        }
        drop(ids);

        Stats::add(&self.stats.messages_accepted, accepted as u64);
        Stats::add(&self.stats.messages_duplicate, duplicates as u64);
        Stats::add(&self.stats.channel_publishes, channel_publishes);
        Ok(Outcome {
            accepted,
            duplicates,
            written,
        })
    }

    /// Marks the ids of `prepared` pending and flags the duplicates. An id whose write is
    /// still running is decided after that write: it is a duplicate when the write
    /// succeeded and new when it failed.
    async fn claim_ids(&self, prepared: &[Prepared<'_>]) -> Claimed {
        loop {
            let running = match self.try_claim(prepared) {
                Ok(claimed) => return claimed,
                Err(running) => running,
            };
            for mut settled in running {
                // A closed channel means the claim was settled and dropped; the next
                // pass reads the window.
                let _ = settled.wait_for(Option::is_some).await;
            }
        }
    }

    /// Claims the ids of `prepared`, or returns the outcomes of the running writes that
    /// must be waited for first.
    fn try_claim(&self, prepared: &[Prepared<'_>]) -> Result<Claimed, Vec<WriteSettled>> {
        let mut window = lock_dedupe(&self.dedupe);
        let running: Vec<WriteSettled> = prepared
            .iter()
            .filter_map(|item| match window.check(&item.dedupe_source, item.message.id_str.as_deref()?) {
                Seen::Pending(settled) => Some(settled.clone()),
                Seen::New | Seen::Duplicate => None,
            })
            .collect();
        if !running.is_empty() {
            return Err(running);
        }
        Ok(self.claim_new(&mut window, prepared))
    }

    fn claim_new(&self, window: &mut DedupeWindow<WriteSettled>, prepared: &[Prepared<'_>]) -> Claimed {
        let (settled, receiver) = watch::channel(None);
        let mut claimed_ids = Vec::new();
        let mut duplicate = Vec::with_capacity(prepared.len());

        for item in prepared {
            let Some(id) = item.message.id_str.as_deref() else {
                duplicate.push(false);
                continue;
            };
            // `begin` also returns false for a repeat inside this payload, which is pending
            // by now.
            let is_new = window.begin(&item.dedupe_source, id, receiver.clone());
            if is_new {
                claimed_ids.push((item.dedupe_source.clone(), id.to_owned()));
            }
            duplicate.push(!is_new);
        }

        let claim = Claim {
            dedupe: Arc::clone(&self.dedupe),
            ids: claimed_ids,
            settled,
            done: false,
        };
        Claimed { claim, duplicate }
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

/// Settles `claim` with the outcome of `written` on a task of its own, so that the ids are
/// settled even when the caller stops waiting, as an HTTP handler does when its client
/// disconnects.
fn settle_when_written(claim: Claim, written: Written) -> oneshot::Receiver<Result<(), DumpError>> {
    let (sender, receiver) = oneshot::channel();
    tokio::spawn(async move {
        let result = written.wait().await;
        claim.settle(result.is_ok());
        // A caller that dropped its `Outcome` does not read the result.
        let _ = sender.send(result);
    });
    receiver
}

// The window is changed by single calls that leave it valid, so a poisoned lock still
// holds a usable window.
fn lock_dedupe(dedupe: &Mutex<DedupeWindow<WriteSettled>>) -> MutexGuard<'_, DedupeWindow<WriteSettled>> {
    dedupe.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "publisher_tests.rs"]
mod tests;
