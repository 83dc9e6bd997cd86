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

/// Runs until `shutdown` fires or the session ends.
pub async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    publisher: Arc<Publisher>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    let topic_log = LogLimiter::new(Duration::from_secs(1));
    let failure_log = LogLimiter::new(Duration::from_secs(1));

    loop {
        let delivery = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            delivery = deliveries.recv() => match delivery {
                Some(delivery) => delivery,
                None => {
                    tracing::error!("ingest session ended; MQTT ingest stopped");
                    break;
                }
            },
        };

        stats.ingest_queue.store(deliveries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        match delivery {
            Delivery::Message { topic, payload, .. } => {
                let topic = String::from_utf8_lossy(&topic);
                if let Err(error) = topic::validate_topic(&topic) {
                    stats.reject(RejectReason::InvalidTopic);
                    if let Some(suppressed) = topic_log.check() {
                        tracing::warn!(%topic, %error, suppressed, "ingest publish rejected");
                    }
                    continue;
                }
                let origin = Origin::Mqtt { topic: &topic };
                match publisher.publish(&payload, origin).await {
                    // Rejections are counted and logged by the publisher.
                    Ok(_) | Err(PublishError::Rejected(_)) => {}
                    Err(error) => {
                        if let Some(suppressed) = failure_log.check() {
                            tracing::error!(%error, %topic, suppressed, "ingest publish failed");
                        }
                    }
                }
            }
            Delivery::Lost { count, .. } => {
                Stats::add(&stats.broker_messages_lost, count);
                tracing::error!(lost = count, "ingest fell behind and the broker dropped messages");
            }
        }
    }
    tracing::info!("ingest loop stopped");
}
