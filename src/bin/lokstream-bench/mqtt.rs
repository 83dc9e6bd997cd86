//! MQTT publishers and subscribers on rumqttc, with counters the cases read while they run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::BenchError;
use crate::receive::Counters;

/// Maximum packet size in both directions; corpus lines are far below it.
const MAX_PACKET_BYTES: usize = 1024 * 1024;

/// Maximum QoS 1 publishes awaiting PUBACK, as in `lokstream publish`.
const MAX_INFLIGHT: u16 = 100;

/// Capacity of rumqttc's request channel.
const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// Time allowed for CONNACK and SUBACK.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn qos(level: u8) -> Result<QoS, BenchError> {
    match level {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        other => Err(BenchError::InvalidOption(format!(
            "qos {other}: expected 0 or 1"
        ))),
    }
}

fn options(client_id: &str, broker: SocketAddr) -> MqttOptions {
    let mut options = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(MAX_INFLIGHT)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
    options
}

/// A connected client whose event loop runs on its own task.
pub struct Client {
    pub client: AsyncClient,
    pub counters: Arc<Counters>,
    name: String,
    driver: JoinHandle<Result<(), BenchError>>,
}

impl Client {
    /// Connects and, for a subscriber, subscribes to `subscribe` and waits for SUBACK.
    pub async fn connect(
        name: &str,
        broker: SocketAddr,
        subscribe: Option<(&str, QoS)>,
    ) -> Result<Self, BenchError> {
        let client_id = format!("{name}-{:08x}", rand::random::<u32>());
        let (client, event_loop) =
            AsyncClient::new(options(&client_id, broker), REQUEST_CHANNEL_CAPACITY);
        let counters = Arc::new(Counters::default());
        let (ready_tx, ready) = oneshot::channel();
        let driver = tokio::spawn(drive(
            event_loop,
            counters.clone(),
            client_id.clone(),
            subscribe.is_some(),
            ready_tx,
        ));

        if let Some((filter, qos)) = subscribe {
            client
                .subscribe(filter, qos)
                .await
                .map_err(|error| BenchError::mqtt(&client_id, error))?;
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, ready).await {
            Ok(Ok(())) => {}
            Ok(Err(_dropped)) => {
                let outcome = driver.await;
                return Err(match outcome {
                    Ok(Err(error)) => error,
                    _ => BenchError::mqtt(&client_id, "event loop ended before CONNACK"),
                });
            }
            Err(_elapsed) => {
                driver.abort();
                return Err(BenchError::timeout(
                    format!("CONNACK or SUBACK for {client_id} from {broker}"),
                    HANDSHAKE_TIMEOUT.as_secs(),
                ));
            }
        }

        Ok(Client {
            client,
            counters,
            name: client_id,
            driver,
        })
    }

    pub async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) -> Result<(), BenchError> {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|error| BenchError::mqtt(&self.name, error))
    }

    /// Waits for `acks` PUBACKs (none at QoS 0), then disconnects and waits until the
    /// DISCONNECT is written, so every publish before it left the socket.
    pub async fn finish(self, acks: u64, timeout: Duration) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.counters.count() < acks {
            if tokio::time::Instant::now() > deadline || self.driver.is_finished() {
                return Err(BenchError::timeout(
                    format!("{acks} PUBACKs for {} (got {})", self.name, self.counters.count()),
                    timeout.as_secs(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.client
            .disconnect()
            .await
            .map_err(|error| BenchError::mqtt(&self.name, error))?;
        match tokio::time::timeout_at(deadline, self.driver).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => Err(BenchError::mqtt(&self.name, join_error)),
            Err(_elapsed) => Err(BenchError::timeout(
                format!("DISCONNECT of {} to be written", self.name),
                timeout.as_secs(),
            )),
        }
    }

    /// Drops the connection without a clean DISCONNECT; for subscribers at the end of a run.
    pub fn abort(self) {
        self.driver.abort();
    }
}

/// Polls the event loop until DISCONNECT is written or the connection fails, counting
/// PUBACKs and received publishes.
async fn drive(
    mut event_loop: EventLoop,
    counters: Arc<Counters>,
    name: String,
    wait_for_suback: bool,
    ready: oneshot::Sender<()>,
) -> Result<(), BenchError> {
    let mut ready = Some(ready);
    loop {
        // Polling after an error would reconnect and publish lines twice.
        let event = event_loop
            .poll()
            .await
            .map_err(|error| BenchError::mqtt(&name, error))?;
        match event {
            Event::Incoming(Incoming::ConnAck(_)) if !wait_for_suback => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Event::Incoming(Incoming::SubAck(_)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Event::Incoming(Incoming::PubAck(_)) | Event::Incoming(Incoming::Publish(_)) => {
                counters.add(1);
            }
            Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
            _ => {}
        }
    }
}
