//! The ingest loop: takes every publish on the ingest filter and hands it to the publisher.
//!
//! A bad payload is counted and logged by the publisher and never stops this loop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Delivery, Session};
use crate::publisher::{Origin, PublishError, Publisher};
use crate::stats::{LogLimiter, RejectReason, Stats};
use crate::topic;

/// Subscribes the session to `filter`; returns once the broker confirmed it.
pub async fn subscribe(session: &Session, filter: &str) -> Result<(), BrokerError> {
    session.subscribe(filter).await.map(drop)
}

/// Runs until `shutdown` fires or the session ends. On shutdown it first publishes what
/// the session already delivered: the broker has acknowledged those messages.
pub async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let ingest = Ingest {
        publisher,
        stats,
        topic_log: LogLimiter::new(Duration::from_secs(1)),
        failure_log: LogLimiter::new(Duration::from_secs(1)),
    };

    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let mut drained = 0u64;
                while let Ok(delivery) = deliveries.try_recv() {
                    ingest.handle(delivery).await;
                    drained += 1;
                }
                tracing::info!(drained, "ingest drained at shutdown");
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
        ingest
            .stats
            .ingest_queue
            .store(deliveries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        ingest.handle(delivery).await;
    }
    tracing::info!("ingest loop stopped");
}

struct Ingest {
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    topic_log: LogLimiter,
    failure_log: LogLimiter,
}

impl Ingest {
    async fn handle(&self, delivery: Delivery) {
        match delivery {
            Delivery::Message { topic, payload, .. } => {
                let topic = String::from_utf8_lossy(&topic);
                if let Err(error) = topic::validate_topic(&topic) {
                    self.stats.reject(RejectReason::InvalidTopic);
                    if let Some(suppressed) = self.topic_log.check() {
                        tracing::warn!(%topic, %error, suppressed, "ingest publish rejected");
                    }
                    return;
                }
                let origin = Origin::Mqtt { topic: &topic };
                match self.publisher.publish(&payload, origin).await {
                    // Rejections are counted and logged by the publisher.
                    Ok(_) | Err(PublishError::Rejected(_)) => {}
                    Err(error) => {
                        if let Some(suppressed) = self.failure_log.check() {
                            tracing::error!(%error, %topic, suppressed, "ingest publish failed");
                        }
                    }
                }
            }
            Delivery::Lost { count, .. } => {
                Stats::add(&self.stats.broker_messages_lost, count);
                tracing::error!(lost = count, "ingest fell behind and the broker dropped messages");
            }
        }
    }
}
