//! MQTT side of a run: broker address parsing, packet size limits, the rumqttc session
//! with the task that drives its event loop, and the timeouts that bound each wait.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
};
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle};
use tokio::time;

use super::{CollectorError, DEFAULT_MQTT_PORT};

/// Maximum MQTT packet size in bytes, for both directions. Dump lines can be longer than
/// the rumqttc default of 10 KiB.
pub(super) const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Bytes a PUBLISH packet needs besides topic and payload: fixed header (1), remaining
/// length (up to 4), topic length (2) and packet id (2, QoS 1 only but counted always).
const PUBLISH_OVERHEAD_BYTES: usize = 9;

/// Maximum QoS 1 publishes awaiting PUBACK. It keeps the connection busy across round
/// trips without letting rumqttc hold more than 100 unacknowledged payloads in memory.
const MAX_INFLIGHT: u16 = 100;

/// MQTT keep-alive interval sent in CONNECT.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Capacity of the rumqttc request channel between `AsyncClient` and `EventLoop`.
const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// Bounds on the waits of one run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    /// Time without any progress (CONNACK, accepted request, written publish, PUBACK)
    /// after which the run fails.
    pub(super) stall: Duration,
    /// Time given to the broker to close the connection after DISCONNECT.
    pub(super) close_grace: Duration,
}

impl Timeouts {
    pub(super) const DEFAULT: Timeouts = Timeouts {
        stall: Duration::from_secs(30),
        close_grace: Duration::from_secs(5),
    };
}

/// Largest line payload that fits in one PUBLISH on `topic`.
pub(super) fn max_payload_bytes(topic: &str) -> usize {
    MAX_PACKET_BYTES - PUBLISH_OVERHEAD_BYTES - topic.len()
}

/// Host and port of an MQTT broker reached over plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BrokerAddress {
    /// Host name or IP address. An IPv6 address keeps its brackets because rumqttc joins
    /// `host:port` for `tokio::net::lookup_host`.
    pub(super) host: String,
    pub(super) port: u16,
}

impl BrokerAddress {
    /// Parses `tcp://host[:port]` or `mqtt://host[:port]`. An IPv6 host must be in brackets.
    pub(super) fn parse(address: &str) -> Result<Self, CollectorError> {
        let invalid = |reason: &str| CollectorError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };

        let Some((scheme, rest)) = address.split_once("://") else {
            return Err(invalid(
                "missing scheme, expected tcp://host:port or mqtt://host:port",
            ));
        };
        if !scheme.eq_ignore_ascii_case("tcp") && !scheme.eq_ignore_ascii_case("mqtt") {
            return Err(invalid("unsupported scheme, expected tcp:// or mqtt://"));
        }

        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(invalid("expected only host and port after the scheme"));
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return Err(invalid("missing ']' after the IPv6 address"));
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(invalid("expected ':port' after the IPv6 address")),
                },
            };
            (&authority[..inside.len() + 2], port)
        } else {
            match authority.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(invalid("an IPv6 host must be enclosed in brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };

        if host.is_empty() || host == "[]" {
            return Err(invalid("missing host"));
        }
        let port = match port {
            None => DEFAULT_MQTT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid("port must be a number from 1 to 65535")),
            },
        };

        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.host, self.port)
    }
}

/// Counts of the events the event loop task has seen so far.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    connected: bool,
    publishes_written: u64,
    pubacks: u64,
}

type EventLoopOutcome = Result<(), CollectorError>;

/// MQTT connection driven by its own task, which stops at the first connection error
/// instead of reconnecting.
pub(super) struct Session {
    client: AsyncClient,
    event_loop: JoinHandle<EventLoopOutcome>,
    progress: watch::Receiver<Progress>,
    address: String,
    timeouts: Timeouts,
}

impl Session {
    pub(super) fn start(
        broker: &BrokerAddress,
        client_id: Option<&str>,
        timeouts: Timeouts,
    ) -> Self {
        // The generated id has 22 letters and digits, within the 1 to 23 that MQTT 3.1.1
        // requires every broker to accept.
        let client_id = match client_id {
            Some(client_id) => client_id.to_owned(),
            None => format!("lokpub{:016x}", rand::random::<u64>()),
        };

        let mut mqtt_options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        mqtt_options
            .set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);

        let (client, event_loop) = AsyncClient::new(mqtt_options, REQUEST_CHANNEL_CAPACITY);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let address = broker.to_string();
        let event_loop = tokio::spawn(drive_event_loop(
            event_loop,
            progress_tx,
            address.clone(),
            timeouts.close_grace,
        ));

        Session {
            client,
            event_loop,
            progress,
            address,
            timeouts,
        }
    }

    /// Runs `future` unless the event loop ends first, which it only does on a connection
    /// error before `finish`.
    pub(super) async fn race<T>(
        &mut self,
        future: impl Future<Output = T>,
    ) -> Result<T, CollectorError> {
        tokio::select! {
            biased;
            outcome = &mut self.event_loop => Err(unexpected_end(outcome, &self.address)),
            value = future => Ok(value),
        }
    }

    pub(super) async fn wait_connected(&mut self) -> Result<(), CollectorError> {
        self.wait_for_progress("CONNACK from the MQTT broker", |progress| {
            progress.connected
        })
        .await?;
        tracing::debug!(broker = %self.address, "connected to MQTT broker");
        Ok(())
    }

    /// Hands one publish to the event loop. This waits while the inflight window and the
    /// request channel are full.
    pub(super) async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<(), CollectorError> {
        let stall = self.timeouts.stall;
        let client = self.client.clone();
        let sent = self
            .race(time::timeout(
                stall,
                client.publish(topic, qos, false, payload),
            ))
            .await?;
        match sent {
            Ok(Ok(())) => {
                tracing::trace!(topic, "queued publish");
                Ok(())
            }
            // The request channel closes only when the event loop task has ended.
            Ok(Err(_request)) => Err(self.event_loop_outcome().await),
            Err(_elapsed) => Err(CollectorError::Timeout {
                waiting_for: "the MQTT broker to accept more messages",
                idle: stall,
            }),
        }
    }

    /// Waits until every publish was acknowledged (QoS 1), then disconnects and waits until
    /// the event loop has written everything queued, DISCONNECT last.
    pub(super) async fn finish(&mut self, qos: QoS, published: u64) -> Result<(), CollectorError> {
        if qos == QoS::AtLeastOnce {
            self.wait_for_progress("PUBACK for every message", |progress| {
                progress.pubacks >= published
            })
            .await?;
        }

        let stall = self.timeouts.stall;
        let client = self.client.clone();
        match self.race(time::timeout(stall, client.disconnect())).await? {
            Ok(Ok(())) => {}
            Ok(Err(_request)) => return Err(self.event_loop_outcome().await),
            Err(_elapsed) => {
                return Err(CollectorError::Timeout {
                    waiting_for: "the MQTT client to accept DISCONNECT",
                    idle: stall,
                })
            }
        }

        // The task returns once DISCONNECT is written, and requests are written in order,
        // so every publish went out before it. Any publish written resets the stall timer.
        loop {
            let changed = tokio::select! {
                biased;
                outcome = &mut self.event_loop => return flatten_outcome(outcome, &self.address),
                changed = time::timeout(stall, self.progress.changed()) => changed,
            };
            match changed {
                Ok(Ok(())) => continue,
                Ok(Err(_sender_dropped)) => {
                    let outcome = (&mut self.event_loop).await;
                    return flatten_outcome(outcome, &self.address);
                }
                Err(_elapsed) => {
                    return Err(CollectorError::Timeout {
                        waiting_for: "queued messages and DISCONNECT to be sent",
                        idle: stall,
                    })
                }
            }
        }
    }

    /// Waits until `done` holds, failing after the stall timeout passes without progress.
    async fn wait_for_progress(
        &mut self,
        waiting_for: &'static str,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<(), CollectorError> {
        let stall = self.timeouts.stall;
        loop {
            if done(&self.progress.borrow_and_update()) {
                return Ok(());
            }

            let mut progress = self.progress.clone();
            match self.race(time::timeout(stall, progress.changed())).await? {
                Ok(Ok(())) => continue,
                Ok(Err(_sender_dropped)) => return Err(self.event_loop_outcome().await),
                Err(_elapsed) => {
                    return Err(CollectorError::Timeout {
                        waiting_for,
                        idle: stall,
                    })
                }
            }
        }
    }

    /// Error of an event loop task that dropped its progress sender or request receiver, so
    /// it is past its last await point and this join does not wait on the network.
    async fn event_loop_outcome(&mut self) -> CollectorError {
        let outcome = (&mut self.event_loop).await;
        unexpected_end(outcome, &self.address)
    }
}

impl Drop for Session {
    /// Stops the event loop task on an early return, which would otherwise keep the
    /// connection open with pings. Aborting a finished task does nothing.
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn flatten_outcome(
    outcome: Result<EventLoopOutcome, JoinError>,
    address: &str,
) -> EventLoopOutcome {
    match outcome {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_cancelled) => Err(CollectorError::Closed {
            address: address.to_owned(),
        }),
    }
}

/// Error for an event loop task that ended while the run still needed it.
fn unexpected_end(outcome: Result<EventLoopOutcome, JoinError>, address: &str) -> CollectorError {
    match flatten_outcome(outcome, address) {
        Ok(()) => CollectorError::Closed {
            address: address.to_owned(),
        },
        Err(error) => error,
    }
}

/// Polls the rumqttc event loop, counting CONNACK, written publishes and PUBACKs into
/// `progress`. Returns after DISCONNECT is written, or with the first connection error,
/// because polling again would reconnect and could publish lines twice.
async fn drive_event_loop(
    mut event_loop: EventLoop,
    progress: watch::Sender<Progress>,
    address: String,
    close_grace: Duration,
) -> EventLoopOutcome {
    loop {
        let event = match event_loop.poll().await {
            Ok(event) => event,
            Err(ConnectionError::ConnectionRefused(code)) => {
                return Err(CollectorError::Rejected { address, code });
            }
            Err(source) => {
                return Err(CollectorError::Connection {
                    address,
                    source: Box::new(source),
                })
            }
        };

        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                progress.send_modify(|progress| progress.connected = true);
            }
            Event::Incoming(Incoming::PubAck(_)) => {
                progress.send_modify(|progress| progress.pubacks += 1);
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                progress.send_modify(|progress| progress.publishes_written += 1);
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                wait_for_broker_close(&mut event_loop, &address, close_grace).await;
                return Ok(());
            }
            other => tracing::trace!(event = ?other, "MQTT event"),
        }
    }
}

/// Waits up to `close_grace` for the broker to close the connection after DISCONNECT, which
/// MQTT 3.1.1 says a server should do. Closing a socket that still has unread input sends
/// a TCP reset, which can discard data the broker has not read yet.
async fn wait_for_broker_close(event_loop: &mut EventLoop, address: &str, close_grace: Duration) {
    let closed = time::timeout(close_grace, async {
        loop {
            // The first error is the closed connection, and polling after it would reconnect.
            if let Err(error) = event_loop.poll().await {
                return error;
            }
        }
    })
    .await;

    match closed {
        Ok(error) => tracing::debug!(broker = address, %error, "MQTT broker closed the connection"),
        Err(_elapsed) => tracing::debug!(
            broker = address,
            grace_ms = close_grace.as_millis() as u64,
            "MQTT broker kept the connection open after DISCONNECT, closing it"
        ),
    }
}
