//! The MQTT front: the public `mqtt.port` listener, serving MQTT 3.1.1 and MQTT 5 on one port.
//!
//! rumqttd serves one protocol version per listener, so the front reads each client's
//! CONNECT packet, checks its login against the publisher login, and relays the connection
//! to rumqttd's 3.1.1 or 5 listener on loopback with the login replaced by one that only
//! exists only in this process. Invariant: no PUBLISH from a client without the publisher login
//! reaches the broker, and nothing reaches it before the CONNECT was checked.

mod connect;
mod credentials;
mod gate;
mod policy;
mod relay;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use credentials::Credentials;
pub use policy::AuthPolicy;

use connect::{ClientConnect, Version};
use gate::PublishGate;
use policy::Admission;
use relay::SubscriberEnd;
use crate::stats::{ConnectRejectReason, LogLimiter, Stats};

/// Largest CONNECT packet the front reads: room for a will message of the MQTT maximum of
/// 65,535 bytes with its topic, a login and properties.
const CONNECT_MAX_BYTES: usize = 256 * 1024;

/// Pause after a failed `accept`, which fails mostly when the process is out of file
/// descriptors and would fail again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One warning a second at most for each kind of repeated client failure.
static ACCEPT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static LIMIT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static LOGIN_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static SHARED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(10));
static PUBLISH_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static UPSTREAM_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static TOO_LARGE_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// Settings of the front.
#[derive(Debug)]
pub struct FrontSettings {
    /// rumqttd's MQTT 3.1.1 listener on loopback.
    pub upstream_v311: SocketAddr,
    /// rumqttd's MQTT 5 listener on loopback.
    pub upstream_v5: SocketAddr,
    /// The login the internal listeners require; clients never see it.
    pub internal_login: Credentials,
    pub policy: AuthPolicy,
    pub connect_timeout: Duration,
    /// Open client connections beyond this are closed at once.
    pub max_connections: usize,
    /// The largest remaining length of a packet after CONNECT; a client that sends a larger
    /// one is disconnected.
    pub max_packet_bytes: usize,
    pub stats: Arc<Stats>,
    /// Cancelled at shutdown: the front then accepts no client and closes every open one at
    /// once, so that the broker acknowledges no further publish.
    pub closing: CancellationToken,
    /// Tracks the client connections, so that shutdown can wait until all are closed.
    pub connections: TaskTracker,
}

/// Serves clients on `listener` until `settings.closing` is cancelled or the returned task
/// is aborted.
pub fn spawn(listener: TcpListener, settings: FrontSettings) -> JoinHandle<()> {
    let permits = Arc::new(Semaphore::new(settings.max_connections.min(Semaphore::MAX_PERMITS)));
    tokio::spawn(accept_loop(listener, Arc::new(settings), permits))
}

async fn accept_loop(listener: TcpListener, settings: Arc<FrontSettings>, permits: Arc<Semaphore>) {
    loop {
        let accepted = tokio::select! {
            _ = settings.closing.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(suppressed) = ACCEPT_LOG.check() {
                    tracing::warn!(%error, suppressed, "accepting an MQTT connection failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };

        let Ok(permit) = permits.clone().try_acquire_owned() else {
            settings.stats.reject_connect(ConnectRejectReason::ConnectionLimit);
            if let Some(suppressed) = LIMIT_LOG.check() {
                tracing::warn!(%peer, max = settings.max_connections, suppressed, "MQTT connection limit reached; closing new connections");
            }
            continue;
        };

        let span = tracing::debug_span!("mqtt_connection", %peer);
        let closing = settings.closing.clone();
        let connection = serve_connection(stream, settings.clone(), permit);
        // Dropping the connection closes both of its sockets, so nothing the broker sends
        // after this, a PUBACK included, reaches the client.
        settings
            .connections
            .spawn(async move { closing.run_until_cancelled(connection).await }.instrument(span));
    }
}

/// Handles one client from its first byte to its end. The permit is held for as long.
async fn serve_connection(mut client: TcpStream, settings: Arc<FrontSettings>, _permit: OwnedSemaphorePermit) {
    if let Err(error) = client.set_nodelay(true) {
        tracing::debug!(%error, "cannot turn off Nagle's algorithm for the client");
    }

    let connect = match read_connect(&mut client, &settings).await {
        Some(connect) => connect,
        None => return,
    };
    let version = connect.version;
    let client_id = connect.client_id().to_string();

    let may_publish = match settings.policy.admit(connect.login(), connect.has_will()) {
        Admission::Publisher => true,
        Admission::Subscriber => false,
        Admission::Rejected(reason) => {
            if reason == ConnectRejectReason::BadCredentials {
                if let Some(suppressed) = LOGIN_LOG.check() {
                    tracing::warn!(client_id, suppressed, "MQTT client rejected: wrong username or password");
                }
            }
            reject(&mut client, &settings.stats, Some(version), reason).await;
            return;
        }
    };

    let upstream = match connect_upstream(&settings, version).await {
        Some(upstream) => upstream,
        None => {
            reject(&mut client, &settings.stats, Some(version), ConnectRejectReason::BrokerUnavailable).await;
            return;
        }
    };
    let (connect_bytes, rest) = match connect.into_bytes_with_login(&settings.internal_login) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(%error, "cannot encode the CONNECT packet");
            reject(&mut client, &settings.stats, Some(version), ConnectRejectReason::Malformed).await;
            return;
        }
    };

    let counter = match version {
        Version::V311 => &settings.stats.mqtt_connections_v311,
        Version::V5 => &settings.stats.mqtt_connections_v5,
    };
    Stats::add(counter, 1);
    tracing::debug!(client_id, version = version.as_str(), may_publish, "MQTT client connected");

    let gate = PublishGate::new(may_publish, settings.max_packet_bytes);
    relay_client(client, upstream, version, connect_bytes, rest, &client_id, &settings.stats, gate).await;
}

/// Reads the CONNECT packet under the timeout. On failure it counts the rejection, sends a
/// CONNACK when the protocol allows one, and returns `None`.
async fn read_connect(client: &mut TcpStream, settings: &FrontSettings) -> Option<ClientConnect> {
    let read = connect::read_connect(client, CONNECT_MAX_BYTES);
    let error = match tokio::time::timeout(settings.connect_timeout, read).await {
        Ok(Ok(connect)) => return Some(connect),
        Ok(Err(error)) => error,
        Err(_) => {
            tracing::debug!(timeout_ms = settings.connect_timeout.as_millis(), "no CONNECT packet in time");
            settings.stats.reject_connect(ConnectRejectReason::Timeout);
            return None;
        }
    };

    tracing::debug!(%error, "invalid or missing CONNECT packet");
    reject(client, &settings.stats, None, error.reason()).await;
    None
}

/// Counts the rejection, sends the CONNACK that explains it if there is one, and closes.
async fn reject(client: &mut TcpStream, stats: &Stats, version: Option<Version>, reason: ConnectRejectReason) {
    stats.reject_connect(reason);
    tracing::debug!(reason = reason.as_str(), "MQTT client rejected");

    let Some(connack) = connect::encode_rejection(version, reason) else {
        return;
    };
    let sent = async {
        client.write_all(&connack).await?;
        client.shutdown().await
    };
    if let Err(error) = sent.await {
        tracing::debug!(%error, "cannot send the rejecting CONNACK");
    }
}

async fn connect_upstream(settings: &FrontSettings, version: Version) -> Option<TcpStream> {
    let address = match version {
        Version::V311 => settings.upstream_v311,
        Version::V5 => settings.upstream_v5,
    };
    let upstream = match TcpStream::connect(address).await {
        Ok(upstream) => upstream,
        Err(error) => {
            if let Some(suppressed) = UPSTREAM_LOG.check() {
                tracing::error!(%address, %error, suppressed, "cannot reach the internal MQTT listener");
            }
            return None;
        }
    };
    if let Err(error) = upstream.set_nodelay(true) {
        tracing::debug!(%error, "cannot turn off Nagle's algorithm toward the broker");
    }
    Some(upstream)
}

#[allow(clippy::too_many_arguments)]
async fn relay_client(
    client: TcpStream,
    upstream: TcpStream,
    version: Version,
    connect: bytes::BytesMut,
    rest: bytes::BytesMut,
    client_id: &str,
    stats: &Stats,
    gate: PublishGate,
) {
    match relay::relay_client_stream(client, upstream, version, connect, rest, stats, gate).await {
        Ok(SubscriberEnd::SharedSubscription) => {
            if let Some(suppressed) = SHARED_LOG.check() {
                tracing::warn!(client_id, suppressed, "MQTT client asked for a shared subscription, which the embedded broker does not serve; disconnected");
            }
        }
        Ok(SubscriberEnd::Publish) => {
            if let Some(suppressed) = PUBLISH_LOG.check() {
                tracing::warn!(client_id, suppressed, "MQTT client without the publisher login sent a PUBLISH; disconnected");
            }
        }
        Ok(SubscriberEnd::TooLarge) => {
            if let Some(suppressed) = TOO_LARGE_LOG.check() {
                tracing::warn!(client_id, suppressed, "MQTT client sent a packet over stream.batch.max_bytes; disconnected");
            }
        }
        Ok(end) => tracing::debug!(client_id, ?end, "MQTT client disconnected"),
        Err(error) => tracing::debug!(client_id, %error, "MQTT connection ended with an error"),
    }
}
