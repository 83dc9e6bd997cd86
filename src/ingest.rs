//! The ingest loop: takes every publish on the ingest filter and hands it to the publisher.
//!
//! A bad payload is counted and logged by the publisher and never stops this loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use crate::broker::{Broker, BrokerError, Delivery, Publication, Session};
use crate::publisher::{Origin, PublishError, Publisher};
use crate::stats::{LogLimiter, RejectReason, Stats};
use crate::topic;

/// Subscribes the session to `filter`; returns once the broker confirmed it.
pub async fn subscribe(session: &Session, filter: &str) -> Result<(), BrokerError> {
    session.subscribe(filter).await.map(drop)
}

/// Maximum deliveries in one batch. Only deliveries already queued join a batch, so batching
/// adds no wait. Under load, the messages of a batch share one dump append, one broker
/// hand-off and one dedupe settlement.
const MAX_BATCH_DELIVERIES: usize = 256;

/// Payload bytes after which a batch takes no further delivery, so that a batch of large
/// payloads stays near this size plus its last payload.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// The broker and filter the ingest loop needs at shutdown to take every publish the broker
/// acknowledged.
pub struct Drain {
    pub broker: Arc<dyn Broker>,
    /// The filter the ingest session subscribed to.
    pub filter: String,
    /// How long to wait at shutdown for the broker's acknowledged publishes.
    pub timeout: Duration,
}

/// Runs until `shutdown` fires or the session ends. On shutdown it publishes what the broker
/// already acknowledged: it closes the MQTT clients, then reads up to a marker published
/// after that, or, where the broker cannot place one, what the session already delivered.
pub async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    drain: Drain,
) {
    let ingest = Ingest {
        publisher,
        stats,
        topic_log: LogLimiter::new(Duration::from_secs(1)),
        failure_log: LogLimiter::new(Duration::from_secs(1)),
        lost_log: LogLimiter::new(Duration::from_secs(1)),
    };

    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                ingest.drain(&mut deliveries, &drain).await;
                break;
            }
            delivery = deliveries.recv() => match delivery {
                Some(delivery) => delivery,
                None => {
                    tracing::error!("ingest session ended; MQTT ingest stopped");
                    break;
                }
            },
        };
        let batch = take_batch(Some(first), &mut deliveries);
        ingest
            .stats
            .ingest_queue
            .store(deliveries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ingest.handle(batch).await;
    }
    tracing::info!("ingest loop stopped");
}

/// The drain marker: a topic under the ingest filter and a payload no client sends. The
/// topic alone cannot tell it apart when the filter has no wildcard.
struct Marker {
    topic: String,
    payload: Bytes,
}

impl Marker {
    fn new(topic: String) -> Marker {
        let payload = format!("lokstream-drain-{:032x}", rand::random::<u128>());
        Marker {
            topic,
            payload: Bytes::from(payload),
        }
    }

    fn is(&self, delivery: &Delivery) -> bool {
        matches!(delivery, Delivery::Message { topic, payload, .. }
            if topic.as_ref() == self.topic.as_bytes() && *payload == self.payload)
    }
}

/// Returns `first` and the deliveries queued behind it, up to the batch limits.
fn take_batch(first: Option<Delivery>, deliveries: &mut mpsc::Receiver<Delivery>) -> Vec<Delivery> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    let mut next = first;
    loop {
        let Some(delivery) = next.take().or_else(|| deliveries.try_recv().ok()) else {
            break;
        };
        if let Delivery::Message { payload, .. } = &delivery {
            bytes += payload.len();
        }
        batch.push(delivery);
        if batch.len() >= MAX_BATCH_DELIVERIES || bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    batch
}

struct Ingest {
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    topic_log: LogLimiter,
    failure_log: LogLimiter,
    lost_log: LogLimiter,
}

impl Ingest {
    /// Publishes every delivery up to the drain marker, or only those already queued when
    /// the broker gives no marker.
    async fn drain(&self, deliveries: &mut mpsc::Receiver<Delivery>, drain: &Drain) {
        let mut drained = 0;
        let Some(topic) = drain.broker.close_clients(&drain.filter).await else {
            loop {
                let batch = take_batch(None, deliveries);
                if batch.is_empty() {
                    break;
                }
                drained += batch.len();
                self.handle(batch).await;
            }
            tracing::info!(drained, "ingest drained at shutdown");
            return;
        };

        let marker = Marker::new(topic);
        let publication = Publication {
            topic: marker.topic.clone(),
            payload: marker.payload.clone(),
        };
        if let Err(error) = drain.broker.publish(vec![publication]).await {
            tracing::error!(%error, "publishing the ingest drain marker failed; only queued messages were drained");
            return;
        }
        let reached = tokio::time::timeout(drain.timeout, async {
            while let Some(first) = deliveries.recv().await {
                let mut batch = take_batch(Some(first), deliveries);
                let at_marker = batch.iter().position(|delivery| marker.is(delivery));
                if let Some(position) = at_marker {
                    batch.truncate(position);
                }
                drained += batch.len();
                self.handle(batch).await;
                if at_marker.is_some() {
                    return true;
                }
            }
            false
        })
        .await;
        match reached {
            Ok(true) => tracing::info!(drained, "ingest drained at shutdown"),
            _ => tracing::warn!(drained, timeout_secs = drain.timeout.as_secs(), "ingest drain ended before the marker; some acknowledged MQTT messages may be missing"),
        }
    }

    /// Publishes the messages of `batch` together. Rejections and losses are counted per
    /// delivery.
    async fn handle(&self, batch: Vec<Delivery>) {
        let mut messages = Vec::with_capacity(batch.len());
        for delivery in &batch {
            match delivery {
                Delivery::Message { topic, payload, .. } => {
                    let topic = String::from_utf8_lossy(topic);
                    if self.accepts_topic(&topic) {
                        messages.push((topic, payload));
                    }
                }
                Delivery::Lost { count, .. } => {
                    Stats::add(&self.stats.broker_messages_lost, *count);
                    if let Some(suppressed) = self.lost_log.check() {
                        tracing::error!(lost = count, suppressed, "ingest fell behind and the broker dropped messages");
                    }
                }
            }
        }
        if messages.is_empty() {
            return;
        }

        let payloads: Vec<(&[u8], Origin<'_>)> = messages
            .iter()
            .map(|(topic, payload)| (payload.as_ref(), Origin::Mqtt { topic }))
            .collect();
        match self.publisher.publish_batch(&payloads).await {
            // Rejections are counted and logged by the publisher.
            Ok(_) | Err(PublishError::Rejected(_)) => {}
            Err(error) => {
                if let Some(suppressed) = self.failure_log.check() {
                    let payloads = payloads.len();
                    tracing::error!(%error, payloads, suppressed, "ingest publish failed");
                }
            }
        }
    }

    /// Checks that `topic` is a valid topic name, and counts and logs it when not.
    fn accepts_topic(&self, topic: &str) -> bool {
        let Err(error) = topic::validate_topic(topic) else {
            return true;
        };
        self.stats.reject(RejectReason::InvalidTopic);
        if let Some(suppressed) = self.topic_log.check() {
            tracing::warn!(%topic, %error, suppressed, "ingest publish rejected");
        }
        false
    }
}
