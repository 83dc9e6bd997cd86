//! An external MQTT 5 broker or cluster (EMQX, VerneMQ, HiveMQ, Mosquitto) reached with
//! rumqttc, in place of the embedded broker.
//!
//! Every connection reconnects by itself with backoff; an outage is logged once when it
//! starts and once when it ends. While a connection is down the broker reports itself
//! unhealthy, channel publishes that do not fit the client's queue are dropped and counted
//! (the dump still has every accepted message), and subscriptions are restored on
//! reconnect. Ingest uses a shared subscription, so each message reaches one replica.

mod address;
mod connection;
mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use address::{BrokerAddress, InvalidAddress};
use connection::Health;

use super::{Broker, BrokerError, Delivery, Listener, Publication, Session};
use crate::stats::LogLimiter;

/// Requests rumqttc may queue per connection; beyond that publishes are dropped rather
/// than stalling ingest behind a broker that does not keep up.
const REQUEST_QUEUE: usize = 10_000;

/// How long one channel publish may wait for room in the queue of a connected client.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// How the server reaches the external broker, from `stream.mqtt.*` and `mqtt.*` keys.
#[derive(Debug, Clone)]
pub struct ExternalSettings {
    pub address: BrokerAddress,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Group of the MQTT 5 shared subscription that spreads ingest over replicas.
    pub share_group: String,
    /// Prefix of this replica's client ids; each connection appends its role.
    pub client_prefix: String,
    pub max_packet_bytes: usize,
}

pub struct ExternalBroker {
    settings: ExternalSettings,
    publisher: AsyncClient,
    publisher_health: Arc<Health>,
    sessions: std::sync::Mutex<Vec<Arc<Health>>>,
    dropped: Arc<AtomicU64>,
    drop_log: LogLimiter,
    stop: CancellationToken,
}

impl ExternalBroker {
    /// Starts connecting; returns at once, since a broker that is down at start-up is
    /// waited for in the background.
    pub fn start(settings: ExternalSettings) -> Self {
        let stop = CancellationToken::new();
        let (publisher, publisher_health) = connection::spawn_publisher(&settings, REQUEST_QUEUE, stop.clone());
        ExternalBroker {
            settings,
            publisher,
            publisher_health,
            sessions: std::sync::Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicU64::new(0)),
            drop_log: LogLimiter::new(Duration::from_secs(10)),
            stop,
        }
    }

}

impl Drop for ExternalBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Broker for ExternalBroker {
    /// Waits for room in the client's queue while connected, so a busy broker slows ingest
    /// down; while disconnected, or stuck for `PUBLISH_WAIT`, it drops and counts instead,
    /// so an outage never stalls ingest and the dump.
    fn publish(&self, batch: Vec<Publication>) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            let mut dropped = 0;
            for publication in batch {
                let queued = if self.publisher_health.is_connected() {
                    let publish = self
                        .publisher
                        .publish(publication.topic, QoS::AtMostOnce, false, publication.payload);
                    matches!(tokio::time::timeout(PUBLISH_WAIT, publish).await, Ok(Ok(())))
                } else {
                    self.publisher
                        .try_publish(publication.topic, QoS::AtMostOnce, false, publication.payload)
                        .is_ok()
                };
                if !queued {
                    dropped += 1;
                }
            }
            if dropped > 0 {
                let total = self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped;
                if let Some(suppressed) = self.drop_log.check() {
                    tracing::warn!(dropped, total, suppressed, "channel publishes dropped: the external broker is unavailable or behind");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn open_session(
        &self,
        name: &str,
        queue: usize,
    ) -> BoxFuture<'_, Result<(Session, mpsc::Receiver<Delivery>), BrokerError>> {
        let (session, deliveries, health) =
            session::spawn(&self.settings, name, REQUEST_QUEUE, queue, self.stop.clone());
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.push(health);
        }
        async move { Ok((session, deliveries)) }.boxed()
    }

    fn ingest_filter(&self, filter: &str) -> String {
        format!("$share/{}/{}", self.settings.share_group, filter)
    }

    fn listeners(&self) -> Vec<Listener> {
        Vec::new()
    }

    fn publishes_dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn is_healthy(&self) -> bool {
        let sessions_up = self
            .sessions
            .lock()
            .map(|sessions| sessions.iter().all(|health| health.is_connected()))
            .unwrap_or(false);
        self.publisher_health.is_connected() && sessions_up
    }
}
