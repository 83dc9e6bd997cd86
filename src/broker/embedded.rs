//! The embedded broker: rumqttd's router and MQTT server, the WebSocket bridge in front of
//! it, and local links.
//!
//! rumqttd's `Broker::start` only logs a listener that fails to bind, so the router and the
//! servers are started here, and a bind failure stops start-up. Clients on `mqtt.port` reach
//! rumqttd's MQTT 3.1.1 and MQTT 5 listeners on loopback through the front (`front`), and
//! those listeners accept only the front's own login. Local links are in-process
//! connections to the router; their blocking sends run on threads of their own so that a
//! busy router never stalls the async runtime.

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdTcpListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    Filter, Packet, Protocol, Publish, QoS, RetainForwardRule, Subscribe, SubscribeProperties,
    SubscribeReasonCode, Unsubscribe,
};
use rumqttd::{
    ConnectionSettings, LinkType, Notification, Router, RouterConfig, SegmentConfig, Server, ServerSettings,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::front::{self, AuthPolicy, Credentials, FrontSettings};
use super::websocket;
use super::{Broker, BrokerError, Delivery, Listener, Publication, Session, SessionCommand, SubscriptionId};
use crate::config::Config;
use crate::stats::Stats;

/// How many times a listener asked to bind port 0 retries when the port it picked was taken
/// by another process before rumqttd bound it.
const EPHEMERAL_BIND_ATTEMPTS: usize = 16;

/// Publications queued for the router before `publish` waits, counted in batches.
const PUBLISH_QUEUE_BATCHES: usize = 256;

/// Unacknowledged QoS 1 publishes per MQTT connection.
const MAX_INFLIGHT: usize = 100;

/// Router connections kept beside `mqtt.connections.max` for the server's own links (the
/// publisher, ingest and hub sessions, with room for more), which the router counts too.
const LOCAL_LINK_ALLOWANCE: usize = 8;

/// QoS 0 publishes the router hands a subscriber per scheduling round; rumqttd's sample
/// configuration uses the same value.
const MAX_OUTGOING_PACKETS: u64 = 200;

type LinkFactory = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx), BrokerError> + Send + Sync>;

pub struct EmbeddedBroker {
    link_factory: LinkFactory,
    publisher: flume::Sender<Vec<Publication>>,
    listeners: Vec<Listener>,
    servers: Vec<JoinHandle<()>>,
    healthy: Arc<AtomicBool>,
    /// Cancelled by [`Broker::close_clients`]; closes the MQTT front's connections.
    closing: CancellationToken,
    /// The MQTT front's client connections.
    client_connections: TaskTracker,
}

impl EmbeddedBroker {
    /// Starts the broker with counters of its own; the server passes its shared counters to
    /// [`EmbeddedBroker::start_with_stats`] instead.
    pub async fn start(config: &Config) -> Result<Self, BrokerError> {
        Self::start_with_stats(config, Arc::new(Stats::default())).await
    }

    /// Starts the router, binds the MQTT front and the internal listeners behind it (and the
    /// WebSocket listener unless turned off), and opens the publisher's link. The front
    /// counts its connections in `stats`.
    pub async fn start_with_stats(config: &Config, stats: Arc<Stats>) -> Result<Self, BrokerError> {
        let router = Router::new(0, router_config(config));
        let router_tx = router.spawn();

        // The public port is bound first, so that a port in use stops start-up before any
        // internal listener exists.
        let requested = SocketAddr::new(config.bind_address, config.mqtt.port);
        let bind_error = |source| BrokerError::Bind {
            name: "mqtt",
            address: requested,
            source,
        };
        let front_listener = TcpListener::bind(requested).await.map_err(bind_error)?;
        let front_address = front_listener.local_addr().map_err(bind_error)?;

        let mut started = Started {
            listeners: vec![Listener {
                name: "mqtt",
                address: front_address,
            }],
            servers: Vec::new(),
        };

        let internal_login = Credentials::random();
        let internal = connection_settings(config, Some(&internal_login));
        let closing = CancellationToken::new();
        let client_connections = TaskTracker::new();
        let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
        let v4_tx = router_tx.clone();
        let make_v4 = move |settings| Server::new(settings, v4_tx.clone(), V4);
        let upstream_v311 = started
            .bind("mqtt_v311_internal", loopback, LinkType::Remote, &make_v4, &internal)
            .await?;
        let v5_tx = router_tx.clone();
        let make_v5 = move |settings| Server::new(settings, v5_tx.clone(), V5);
        let upstream_v5 = started
            .bind("mqtt_v5_internal", loopback, LinkType::Remote, &make_v5, &internal)
            .await?;

        started.servers.push(front::spawn(
            front_listener,
            FrontSettings {
                upstream_v311,
                upstream_v5,
                internal_login,
                policy: AuthPolicy {
                    publisher: config.mqtt.publisher_auth.clone(),
                    subscribe_requires_login: config.mqtt.auth_subscribe,
                },
                connect_timeout: Duration::from_millis(config.mqtt.connect_timeout_ms),
                max_connections: config.mqtt.max_connections,
                max_packet_bytes: config.stream.batch_max_bytes,
                stats,
                closing: closing.clone(),
                connections: client_connections.clone(),
            },
        ));

        if let Some(port) = config.mqtt.ws_port {
            // The bridge carries WebSocket clients to the MQTT front over loopback, so the
            // front's protocol detection and publisher login apply to them too.
            let mut front = front_address;
            if front.ip().is_unspecified() {
                front.set_ip(if front.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() });
            }
            let ws = SocketAddr::new(config.bind_address, port);
            let (address, task) = websocket::start(ws, front).await?;
            started.listeners.push(Listener {
                name: "mqtt_ws",
                address,
            });
            started.servers.push(task);
        }
        let Started { listeners, servers } = started;

        let link_factory: LinkFactory = Arc::new(move |client_id| {
            LinkBuilder::new(client_id, router_tx.clone())
                .build()
                .map(|(tx, rx, _ack)| (tx, rx))
                .map_err(|error| BrokerError::Link(error.to_string()))
        });

        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, _rx) = open_link(&link_factory, &internal_client_id("publisher")).await?;
        let (publisher, queue) = flume::bounded(PUBLISH_QUEUE_BATCHES);
        spawn_publisher_thread(tx, queue, healthy.clone())?;

        Ok(EmbeddedBroker {
            link_factory,
            publisher,
            listeners,
            servers,
            healthy,
            closing,
            client_connections,
        })
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        for server in &self.servers {
            server.abort();
        }
    }
}

impl Broker for EmbeddedBroker {
    fn publish(&self, batch: Vec<Publication>) -> BoxFuture<'_, Result<(), BrokerError>> {
        async move {
            self.publisher
                .send_async(batch)
                .await
                .map_err(|_| BrokerError::Stopped)
        }
        .boxed()
    }

    fn open_session(
        &self,
        name: &str,
        queue: usize,
    ) -> BoxFuture<'_, Result<(Session, mpsc::Receiver<Delivery>), BrokerError>> {
        let name = name.to_string();
        async move {
            let (tx, rx) = open_link(&self.link_factory, &internal_client_id(&name)).await?;
            let pending: PendingAcks = Arc::default();
            let (commands, command_queue) = flume::unbounded();
            let (deliveries, receiver) = mpsc::channel(queue);

            spawn_session_thread(&name, tx, command_queue, pending.clone(), self.healthy.clone())?;
            tokio::spawn(read_session(name, rx, deliveries, pending, self.healthy.clone()));
            Ok((Session::new(commands), receiver))
        }
        .boxed()
    }

    fn close_clients(&self, ingest_filter: &str) -> BoxFuture<'_, Option<String>> {
        self.closing.cancel();
        self.client_connections.close();
        // The router appends every acknowledged publish to the ingest filter's log before
        // its PUBACK, and appends a publish made after this one behind them. A fixed level
        // replaces each wildcard.
        let levels: Vec<&str> = ingest_filter
            .split('/')
            .map(|level| if level == "+" || level == "#" { "lokstream-drain" } else { level })
            .collect();
        let topic = levels.join("/");
        async move {
            // A connection still open could pass on a PUBACK for a publish that the router
            // appends after the marker.
            self.client_connections.wait().await;
            Some(topic)
        }
        .boxed()
    }

    fn listeners(&self) -> Vec<Listener> {
        self.listeners.clone()
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Reports the router alive while its local links work: they fail only when the router
    /// is gone, and it never comes back.
    fn is_alive(&self) -> bool {
        self.is_healthy()
    }
}

/// Returns a client id no MQTT client can guess. rumqttd disconnects the older of two
/// connections with one id, so a known id would let any client cut the server's own links.
fn internal_client_id(role: &str) -> String {
    format!("lokstream-{role}-{:016x}", rand::random::<u64>())
}

/// Listeners and their server tasks, collected while the broker starts.
struct Started {
    listeners: Vec<Listener>,
    servers: Vec<JoinHandle<()>>,
}

impl Started {
    /// Starts one rumqttd server with [`bind_server`], keeps its task, and returns its address.
    async fn bind<P>(
        &mut self,
        name: &'static str,
        requested: SocketAddr,
        link_type: LinkType,
        make_server: &impl Fn(ServerSettings) -> Server<P>,
        connections: &ConnectionSettings,
    ) -> Result<SocketAddr, BrokerError>
    where
        P: Protocol + Clone + Send + Sync + 'static,
    {
        let (address, task) = bind_server(name, requested, link_type, make_server, connections).await?;
        self.listeners.push(Listener { name, address });
        self.servers.push(task);
        Ok(address)
    }
}

/// Settings of a rumqttd listener that accepts only `login`, or any client when `None`.
fn connection_settings(config: &Config, login: Option<&Credentials>) -> ConnectionSettings {
    // The configured value is checked to fit when the configuration is read.
    let connection_timeout_ms = u16::try_from(config.mqtt.connect_timeout_ms).unwrap_or(u16::MAX);
    let auth = login.map(|login| HashMap::from([(login.username.clone(), login.password.clone())]));
    ConnectionSettings {
        connection_timeout_ms,
        max_payload_size: config.stream.batch_max_bytes,
        max_inflight_count: MAX_INFLIGHT,
        auth,
        external_auth: None,
        // A publish to a topic no one subscribed to must not create a log for that topic,
        // or memory would grow with every distinct hashtag.
        dynamic_filters: false,
    }
}

/// Builds the router's settings. The ingest filter gets a log of its own size, because the
/// router (rumqttd 0.20) never waits for a slow subscriber. That log is the only buffer for
/// a burst that the ingest loop is still working through.
fn router_config(config: &Config) -> RouterConfig {
    let ingest_log = SegmentConfig {
        max_segment_size: config.mqtt.log_segment_bytes,
        max_segment_count: config.mqtt.ingest_log_segments,
    };
    RouterConfig {
        max_connections: config.mqtt.max_connections + LOCAL_LINK_ALLOWANCE,
        max_outgoing_packet_count: MAX_OUTGOING_PACKETS,
        max_segment_size: config.mqtt.log_segment_bytes,
        max_segment_count: config.mqtt.log_segments,
        // rumqttd gives this log to each subscribed filter that matches the key when read as a
        // topic: the ingest filter itself and any narrower filter under it.
        custom_segment: Some(HashMap::from([(config.stream.ingest_topic.clone(), ingest_log)])),
        ..RouterConfig::default()
    }
}

/// Connecting a local link waits for the router's acknowledgement on a blocking channel.
async fn open_link(factory: &LinkFactory, client_id: &str) -> Result<(LinkTx, LinkRx), BrokerError> {
    let factory = factory.clone();
    let client_id = client_id.to_string();
    tokio::task::spawn_blocking(move || factory(&client_id))
        .await
        .map_err(|error| BrokerError::Link(format!("link set-up failed: {error}")))?
}

/// Starts one rumqttd server and returns the address it bound.
///
/// `Server::start` binds before its first await point and then waits in `accept`, so one
/// poll shows whether the bind worked. For port 0 a free port is picked first, since the
/// server cannot report the port it bound; a port taken in between is retried.
///
/// `make_server` captures the router's sender, whose item type rumqttd keeps private.
async fn bind_server<P>(
    name: &'static str,
    requested: SocketAddr,
    link_type: LinkType,
    make_server: &impl Fn(ServerSettings) -> Server<P>,
    connections: &ConnectionSettings,
) -> Result<(SocketAddr, JoinHandle<()>), BrokerError>
where
    P: Protocol + Clone + Send + Sync + 'static,
{
    let attempts = if requested.port() == 0 { EPHEMERAL_BIND_ATTEMPTS } else { 1 };
    let mut last_error = None;

    for _ in 0..attempts {
        let address = match requested.port() {
            0 => pick_free_port(requested).map_err(|source| BrokerError::Bind {
                name,
                address: requested,
                source,
            })?,
            _ => requested,
        };
        let settings = ServerSettings {
            name: name.to_string(),
            listen: address,
            tls: None,
            next_connection_delay_ms: 0,
            connections: connections.clone(),
        };
        let mut server = make_server(settings);
        let mut run: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            Box::pin(async move { server.start(link_type).await.map_err(|error| io_error(&error)) });

        match std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await {
            Poll::Pending => {
                let task = tokio::spawn(async move {
                    if let Err(error) = run.await {
                        tracing::error!(listener = name, %error, "MQTT listener stopped");
                    }
                });
                return Ok((address, task));
            }
            Poll::Ready(Err(error)) => {
                let retry = error.kind() == std::io::ErrorKind::AddrInUse;
                last_error = Some(error);
                if !retry {
                    break;
                }
            }
            Poll::Ready(Ok(())) => {
                last_error = Some(std::io::Error::other("listener returned at once"));
                break;
            }
        }
    }

    Err(BrokerError::Bind {
        name,
        address: requested,
        source: last_error.unwrap_or_else(|| std::io::Error::other("no bind attempt was made")),
    })
}

/// rumqttd's server error type is private; its I/O cause carries the kind callers need.
fn io_error(error: &(dyn std::error::Error + 'static)) -> std::io::Error {
    let kind = error
        .source()
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
    std::io::Error::new(kind, error.to_string())
}

fn pick_free_port(requested: SocketAddr) -> std::io::Result<SocketAddr> {
    let probe = StdTcpListener::bind(requested)?;
    probe.local_addr()
}

/// Sends publications to the router in order, one router wake-up per batch.
fn spawn_publisher_thread(
    mut tx: LinkTx,
    queue: flume::Receiver<Vec<Publication>>,
    healthy: Arc<AtomicBool>,
) -> Result<(), BrokerError> {
    let run = move || {
        while let Ok(mut batch) = queue.recv() {
            let Some(last) = batch.pop() else {
                continue;
            };
            tx.buffer().extend(batch.into_iter().map(publish_packet));
            if let Err(error) = tx.publish(last.topic, last.payload) {
                tracing::error!(%error, "broker publisher link failed; channels are no longer published");
                healthy.store(false, Ordering::Relaxed);
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("broker-publish".into())
        .spawn(run)
        .map(drop)
        .map_err(|error| BrokerError::Link(format!("cannot start the publisher thread: {error}")))
}

/// Converts a publication without copying: the topic's `String` becomes the `Bytes`.
fn publish_packet(publication: Publication) -> Packet {
    let topic = Bytes::from(publication.topic);
    Packet::Publish(Publish::new(topic, publication.payload, false), None)
}

/// Subscriptions waiting for their SUBACK, by packet id.
type PendingAcks = Arc<Mutex<HashMap<u16, (String, oneshot::Sender<Result<(), BrokerError>>)>>>;

/// Turns session commands into SUBSCRIBE and UNSUBSCRIBE packets on the link.
fn spawn_session_thread(
    name: &str,
    mut tx: LinkTx,
    commands: flume::Receiver<SessionCommand>,
    pending: PendingAcks,
    healthy: Arc<AtomicBool>,
) -> Result<(), BrokerError> {
    let runtime = tokio::runtime::Handle::current();
    let session = name.to_string();
    let run = move || {
        let mut next_pkid: u16 = 0;
        while let Ok(command) = commands.recv() {
            next_pkid = next_pkid.checked_add(1).unwrap_or(1);
            let packet = match command {
                SessionCommand::Subscribe { filter, id, done } => {
                    let packet = subscribe_packet(next_pkid, &filter, id);
                    lock(&pending).insert(next_pkid, (filter, done));
                    packet
                }
                SessionCommand::Unsubscribe { filter } => Packet::Unsubscribe(
                    Unsubscribe {
                        pkid: next_pkid,
                        filters: vec![filter],
                    },
                    None,
                ),
            };
            // `LinkTx::send` never awaits; it blocks on the router's channel when full,
            // which is why it runs on this thread.
            if let Err(error) = runtime.block_on(tx.send(packet)) {
                tracing::error!(session, %error, "broker session link failed");
                healthy.store(false, Ordering::Relaxed);
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name(format!("broker-{name}"))
        .spawn(run)
        .map(drop)
        .map_err(|error| BrokerError::Link(format!("cannot start the session thread: {error}")))
}

fn subscribe_packet(pkid: u16, filter: &str, id: SubscriptionId) -> Packet {
    let filter = Filter {
        path: filter.to_string(),
        qos: QoS::AtMostOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    };
    let properties = SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    };
    Packet::Subscribe(
        Subscribe {
            pkid,
            filters: vec![filter],
        },
        Some(properties),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Reads the link: forwards deliveries, completes subscriptions, handles `Unschedule`, and
/// reports messages the router skipped.
async fn read_session(
    name: String,
    mut rx: LinkRx,
    deliveries: mpsc::Sender<Delivery>,
    pending: PendingAcks,
    healthy: Arc<AtomicBool>,
) {
    // The log offset of the last delivery per subscription. Offsets of one filter's log are
    // consecutive, so a step of more than one means the router dropped messages.
    // NOTE: the router does not tell where a subscription starts, so messages dropped before
    // its first delivery are not counted here; rumqttd logs that case as a cursor jump.
    let mut offsets: HashMap<SubscriptionId, u64> = HashMap::new();

    loop {
        let notification = match rx.next().await {
            Ok(Some(notification)) => notification,
            Ok(None) => continue,
            Err(error) => {
                if !deliveries.is_closed() {
                    tracing::error!(session = name, %error, "broker session ended");
                    healthy.store(false, Ordering::Relaxed);
                }
                return;
            }
        };

        match notification {
            Notification::Forward(forward) => {
                let Some(subscription) = forward
                    .properties
                    .as_ref()
                    .and_then(|properties| properties.subscription_identifiers.first().copied())
                else {
                    tracing::warn!(session = name, "delivery without a subscription id dropped");
                    continue;
                };

                if let Some((_, offset)) = forward.cursor {
                    let lost = match offsets.insert(subscription, offset) {
                        Some(previous) if offset > previous + 1 => offset - previous - 1,
                        _ => 0,
                    };
                    if lost > 0 {
                        let report = Delivery::Lost {
                            subscription,
                            count: lost,
                        };
                        if deliveries.send(report).await.is_err() {
                            return;
                        }
                    }
                }

                let message = Delivery::Message {
                    subscription,
                    topic: forward.publish.topic,
                    payload: forward.publish.payload,
                };
                if deliveries.send(message).await.is_err() {
                    return;
                }
            }
            Notification::Unschedule => {
                // The router stops serving this link until the link reports it is ready again.
                if let Err(error) = rx.wake().await {
                    tracing::error!(session = name, %error, "cannot reschedule broker session");
                    healthy.store(false, Ordering::Relaxed);
                    return;
                }
            }
            Notification::DeviceAck(_) => complete_ack(&name, notification, &pending),
            Notification::Disconnect(..) => {
                tracing::error!(session = name, "the broker disconnected a session");
                healthy.store(false, Ordering::Relaxed);
                return;
            }
            _ => {}
        }
    }
}

fn complete_ack(session: &str, notification: Notification, pending: &PendingAcks) {
    // rumqttd keeps its `Ack` type private; its conversion to a packet is public.
    let packet: Option<Packet> = notification.into();
    let Some(Packet::SubAck(ack, _)) = packet else {
        return;
    };
    let Some((filter, done)) = lock(pending).remove(&ack.pkid) else {
        tracing::warn!(session, pkid = ack.pkid, "SUBACK for an unknown subscription");
        return;
    };
    let accepted = ack.return_codes.iter().all(|code| {
        matches!(
            code,
            SubscribeReasonCode::QoS0
                | SubscribeReasonCode::QoS1
                | SubscribeReasonCode::QoS2
                | SubscribeReasonCode::Success(_)
        )
    });
    let result = if accepted {
        Ok(())
    } else {
        Err(BrokerError::SubscriptionRejected(filter))
    };
    // The subscriber may have gone away meanwhile, and then no one waits for the result.
    let _ = done.send(result);
}
