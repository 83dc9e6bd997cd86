//! The MQTT front on `mqtt.port`: MQTT 3.1.1 and MQTT 5 clients on one port, clients that
//! send garbage or nothing, and the publisher login.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{TestServer, PATIENCE};
use lokstream::broker::embedded::EmbeddedBroker;
use lokstream::broker::{Broker, Delivery};
use lokstream::config::Config;
use lokstream::stats::{ConnectRejectReason, Stats};
use rumqttc::v5::mqttbytes::v5::Packet as PacketV5;
use rumqttc::v5::{ConnectionError as ErrorV5, Event as EventV5, StateError as StateErrorV5};
use rumqttc::{ConnectionError, Event, Packet, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const LOGIN: [(&str, &str); 2] = [("mqtt.auth.username", "collector"), ("mqtt.auth.password", "s3cret")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    V5,
}

/// What a test client saw, in one shape for both protocol versions.
#[derive(Debug)]
enum Seen {
    ConnAck,
    SubAck,
    Publish { topic: String, payload: Bytes },
    /// The server refused the CONNECT; the return code's name, such as `NotAuthorized`.
    Refused(String),
    /// The server sent an MQTT 5 DISCONNECT; the reason code's name.
    Disconnected(String),
    /// The connection ended otherwise; the error, shown when a test fails.
    Ended(#[allow(dead_code)] String),
}

enum Handle {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

struct Client {
    handle: Handle,
    seen: mpsc::UnboundedReceiver<Seen>,
}

struct Options<'a> {
    login: Option<(&'a str, &'a str)>,
    will: bool,
    websocket: bool,
}

const PLAIN: Options<'static> = Options {
    login: None,
    will: false,
    websocket: false,
};

fn with_login<'a>(login: (&'a str, &'a str)) -> Options<'a> {
    Options {
        login: Some(login),
        ..PLAIN
    }
}

impl Client {
    /// Starts a client; it does not wait for the CONNACK, see [`Client::connected`].
    fn start(version: Version, address: SocketAddr, id: &str, options: Options<'_>) -> Client {
        let (tx, seen) = mpsc::unbounded_channel();
        let host = if options.websocket {
            format!("ws://{address}/mqtt")
        } else {
            address.ip().to_string()
        };
        let handle = match version {
            Version::V311 => {
                let mut mqtt = rumqttc::MqttOptions::new(id, host, address.port());
                mqtt.set_keep_alive(Duration::from_secs(30));
                if options.websocket {
                    mqtt.set_transport(Transport::Ws);
                }
                if let Some((username, password)) = options.login {
                    mqtt.set_credentials(username, password);
                }
                if options.will {
                    mqtt.set_last_will(rumqttc::LastWill::new("ingest/will", "gone", rumqttc::QoS::AtLeastOnce, false));
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(mqtt, 100);
                tokio::spawn(drive_v311(eventloop, tx));
                Handle::V311(client)
            }
            Version::V5 => {
                let mut mqtt = rumqttc::v5::MqttOptions::new(id, host, address.port());
                mqtt.set_keep_alive(Duration::from_secs(30));
                if options.websocket {
                    mqtt.set_transport(Transport::Ws);
                }
                if let Some((username, password)) = options.login {
                    mqtt.set_credentials(username, password);
                }
                if options.will {
                    let will = rumqttc::v5::mqttbytes::v5::LastWill::new(
                        "ingest/will",
                        "gone",
                        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        None,
                    );
                    mqtt.set_last_will(will);
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(mqtt, 100);
                tokio::spawn(drive_v5(eventloop, tx));
                Handle::V5(client)
            }
        };
        Client { handle, seen }
    }

    /// Connects and waits for the CONNACK.
    async fn connect(version: Version, address: SocketAddr, id: &str, options: Options<'_>) -> Client {
        let mut client = Client::start(version, address, id, options);
        client.connected().await;
        client
    }

    async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("timed out waiting for the MQTT client")
            .unwrap_or_else(|| Seen::Ended("event loop stopped".into()))
    }

    async fn connected(&mut self) {
        match self.next().await {
            Seen::ConnAck => {}
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        match &self.handle {
            Handle::V311(client) => client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await.unwrap(),
            Handle::V5(client) => client
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .unwrap(),
        }
        match self.next().await {
            Seen::SubAck => {}
            other => panic!("expected SUBACK for {filter}, got {other:?}"),
        }
    }

    async fn publish(&self, topic: &str, payload: &str) {
        let payload = payload.as_bytes().to_vec();
        match &self.handle {
            Handle::V311(client) => client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap(),
            Handle::V5(client) => client
                .publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap(),
        }
    }

    /// Waits for the next message delivered to this client and parses it as JSON.
    async fn next_message(&mut self) -> (String, serde_json::Value) {
        match self.next().await {
            Seen::Publish { topic, payload } => (topic, serde_json::from_slice(&payload).unwrap()),
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }
}

async fn drive_v311(mut eventloop: rumqttc::EventLoop, seen: mpsc::UnboundedSender<Seen>) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Seen::ConnAck,
            Ok(Event::Incoming(Packet::SubAck(_))) => Seen::SubAck,
            Ok(Event::Incoming(Packet::Publish(publish))) => Seen::Publish {
                topic: publish.topic,
                payload: publish.payload,
            },
            Ok(_) => continue,
            Err(ConnectionError::ConnectionRefused(code)) => Seen::Refused(format!("{code:?}")),
            Err(error) => Seen::Ended(error.to_string()),
        };
        let ended = matches!(event, Seen::Refused(_) | Seen::Ended(_));
        // Polling again after an error would reconnect, so the loop stops there.
        if seen.send(event).is_err() || ended {
            return;
        }
    }
}

async fn drive_v5(mut eventloop: rumqttc::v5::EventLoop, seen: mpsc::UnboundedSender<Seen>) {
    loop {
        let event = match eventloop.poll().await {
            Ok(EventV5::Incoming(PacketV5::ConnAck(_))) => Seen::ConnAck,
            Ok(EventV5::Incoming(PacketV5::SubAck(_))) => Seen::SubAck,
            Ok(EventV5::Incoming(PacketV5::Publish(publish))) => Seen::Publish {
                topic: String::from_utf8(publish.topic.to_vec()).unwrap(),
                payload: publish.payload,
            },
            Ok(_) => continue,
            Err(ErrorV5::ConnectionRefused(code)) => Seen::Refused(format!("{code:?}")),
            Err(ErrorV5::MqttState(StateErrorV5::ServerDisconnect { reason_code, .. })) => {
                Seen::Disconnected(format!("{reason_code:?}"))
            }
            Err(error) => Seen::Ended(error.to_string()),
        };
        let ended = matches!(event, Seen::Refused(_) | Seen::Disconnected(_) | Seen::Ended(_));
        if seen.send(event).is_err() || ended {
            return;
        }
    }
}

/// Checks that every client's next message is the one with `id_str` equal to `id`.
async fn expect_message(clients: &mut [&mut Client], id: &str) {
    for client in clients.iter_mut() {
        let (_, received) = client.next_message().await;
        assert_eq!(received["id_str"], id);
    }
}

fn message(id: &str, text: &str) -> String {
    serde_json::json!({"source_type": "TWITTER", "id_str": id, "text": text}).to_string()
}

fn listener(server: &TestServer, name: &str) -> SocketAddr {
    let running = server.server.as_ref().expect("server runs");
    running
        .listeners
        .iter()
        .find(|listener| listener.name == name)
        .unwrap_or_else(|| panic!("no listener named {name}"))
        .address
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
        .await
        .expect("the server did not close the connection")
        .expect("reading until close failed");
    received
}

fn broker_config(overrides: &[(&str, &str)]) -> Config {
    let mut settings = vec![("bind.address", "127.0.0.1"), ("mqtt.port", "0"), ("mqtt.ws.port", "0")];
    settings.extend_from_slice(overrides);
    Config::with_overrides(&settings).unwrap()
}

fn mqtt_address(broker: &EmbeddedBroker) -> SocketAddr {
    broker.listeners().iter().find(|l| l.name == "mqtt").expect("mqtt listener").address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_and_v5_clients_share_one_port() {
    let mut server = TestServer::start().await;
    let mut old = Client::connect(Version::V311, server.mqtt, "front-v311", PLAIN).await;
    let mut new = Client::connect(Version::V5, server.mqtt, "front-v5", PLAIN).await;
    old.subscribe("twitter/hashtag/oneport").await;
    new.subscribe("twitter/hashtag/oneport").await;

    old.publish("ingest/messages", &message("from-v311", "sent over 3.1.1 #OnePort")).await;
    for client in [&mut old, &mut new] {
        let (topic, received) = client.next_message().await;
        assert_eq!(topic, "twitter/hashtag/oneport");
        assert_eq!(received["id_str"], "from-v311");
    }

    new.publish("ingest/messages", &message("from-v5", "sent over 5 #OnePort")).await;
    expect_message(&mut [&mut old, &mut new], "from-v5").await;

    let response = server.push(message("from-http", "pushed #OnePort")).await;
    assert_eq!(response.status(), 200);
    expect_message(&mut [&mut old, &mut new], "from-http").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_silence_are_closed_and_counted() {
    let stats = Arc::new(Stats::default());
    let config = broker_config(&[("mqtt.connect.timeout_ms", "300")]);
    let broker = EmbeddedBroker::start_with_stats(&config, stats.clone()).await.unwrap();
    let address = mqtt_address(&broker);

    let mut garbage = TcpStream::connect(address).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(read_to_close(&mut garbage).await.is_empty(), "garbage gets no answer");
    assert_eq!(stats.connects_rejected(ConnectRejectReason::Malformed), 1);

    let started = Instant::now();
    let mut silent = TcpStream::connect(address).await.unwrap();
    assert!(read_to_close(&mut silent).await.is_empty(), "silence gets no answer");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "closed after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(10), "closed only after {waited:?}");
    assert_eq!(stats.connects_rejected(ConnectRejectReason::Timeout), 1);

    // A CONNECT of MQTT 3.1 ("MQIsdp", level 3) gets return code 1, unacceptable version.
    let mut old = TcpStream::connect(address).await.unwrap();
    let mut connect = vec![0x10, 0x12, 0x00, 0x06];
    connect.extend_from_slice(b"MQIsdp");
    connect.extend_from_slice(&[0x03, 0x02, 0x00, 0x1e, 0x00, 0x04]);
    connect.extend_from_slice(b"old1");
    old.write_all(&connect).await.unwrap();
    assert_eq!(read_to_close(&mut old).await, [0x20, 0x02, 0x00, 0x01]);
    assert_eq!(stats.connects_rejected(ConnectRejectReason::UnsupportedProtocol), 1);

    // The port still serves real clients.
    let (session, mut deliveries) = broker.open_session("watcher", 16).await.unwrap();
    session.subscribe("after/#").await.unwrap();
    let client = Client::connect(Version::V5, address, "after-garbage", PLAIN).await;
    client.publish("after/garbage", "still serving").await;
    let delivery = tokio::time::timeout(PATIENCE, deliveries.recv()).await.unwrap();
    assert!(
        matches!(&delivery, Some(Delivery::Message { payload, .. }) if payload == "still serving"),
        "{delivery:?}"
    );
    assert_eq!(Stats::get(&stats.mqtt_connections_v5), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_publishers_reach_anonymous_subscribers() {
    let mut server = TestServer::start_with(&LOGIN).await;
    let mut watcher_v311 = Client::connect(Version::V311, server.mqtt, "watch-v311", PLAIN).await;
    let mut watcher_v5 = Client::connect(Version::V5, server.mqtt, "watch-v5", PLAIN).await;
    watcher_v311.subscribe("twitter/hashtag/signed").await;
    watcher_v5.subscribe("twitter/hashtag/signed").await;

    let publisher_v311 = Client::connect(Version::V311, server.mqtt, "pub-v311", with_login(("collector", "s3cret"))).await;
    let publisher_v5 = Client::connect(Version::V5, server.mqtt, "pub-v5", with_login(("collector", "s3cret"))).await;

    publisher_v311.publish("ingest/messages", &message("signed-v311", "#signed")).await;
    expect_message(&mut [&mut watcher_v311, &mut watcher_v5], "signed-v311").await;
    publisher_v5.publish("ingest/messages", &message("signed-v5", "#signed")).await;
    expect_message(&mut [&mut watcher_v311, &mut watcher_v5], "signed-v5").await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_publish_is_disconnected_and_not_ingested() {
    let mut server = TestServer::start_with(&LOGIN).await;
    let mut watcher = Client::connect(Version::V5, server.mqtt, "watcher", PLAIN).await;
    watcher.subscribe("twitter/hashtag/gate").await;

    let mut anonymous_v5 = Client::connect(Version::V5, server.mqtt, "anon-v5", PLAIN).await;
    anonymous_v5.subscribe("twitter/hashtag/gate").await;
    anonymous_v5.publish("ingest/messages", &message("anon-v5", "#gate")).await;
    match anonymous_v5.next().await {
        Seen::Disconnected(reason) => assert_eq!(reason, "NotAuthorized"),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }

    let mut anonymous_v311 = Client::connect(Version::V311, server.mqtt, "anon-v311", PLAIN).await;
    anonymous_v311.publish("ingest/messages", &message("anon-v311", "#gate")).await;
    match anonymous_v311.next().await {
        Seen::Ended(_) => {}
        other => panic!("expected the connection to close, got {other:?}"),
    }

    let publisher = Client::connect(Version::V311, server.mqtt, "signed", with_login(("collector", "s3cret"))).await;
    publisher.publish("ingest/messages", &message("signed-after", "#gate")).await;
    let (_, received) = watcher.next_message().await;
    assert_eq!(received["id_str"], "signed-after", "the anonymous messages never arrive");

    server.stop().await;
    let ids: Vec<String> = common::read_dump_lines(server.dump_dir())
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["id_str"].to_string())
        .collect();
    assert_eq!(ids, ["\"signed-after\""], "only the authenticated message is in the dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_publishes_are_counted() {
    let stats = Arc::new(Stats::default());
    let config = broker_config(&LOGIN);
    let broker = EmbeddedBroker::start_with_stats(&config, stats.clone()).await.unwrap();
    let address = mqtt_address(&broker);
    let (session, mut deliveries) = broker.open_session("ingest-watch", 16).await.unwrap();
    session.subscribe("ingest/#").await.unwrap();

    for version in [Version::V311, Version::V5] {
        let mut anonymous = Client::connect(version, address, "anon", PLAIN).await;
        anonymous.publish("ingest/raw", "anonymous").await;
        let end = anonymous.next().await;
        assert!(matches!(end, Seen::Disconnected(_) | Seen::Ended(_)), "{version:?}: {end:?}");
    }
    assert_eq!(Stats::get(&stats.mqtt_unauthorized_publishes), 2);

    let signed = Client::connect(Version::V5, address, "signed", with_login(("collector", "s3cret"))).await;
    signed.publish("ingest/raw", "signed").await;
    let delivery = tokio::time::timeout(PATIENCE, deliveries.recv()).await.unwrap();
    assert!(
        matches!(&delivery, Some(Delivery::Message { payload, .. }) if payload == "signed"),
        "the first delivery is the signed one: {delivery:?}"
    );
    assert_eq!(Stats::get(&stats.mqtt_connections_v311), 1);
    assert_eq!(Stats::get(&stats.mqtt_connections_v5), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_login_and_anonymous_will_are_rejected_at_connect() {
    let stats = Arc::new(Stats::default());
    let broker = EmbeddedBroker::start_with_stats(&broker_config(&LOGIN), stats.clone()).await.unwrap();
    let address = mqtt_address(&broker);

    for version in [Version::V311, Version::V5] {
        let mut wrong = Client::start(version, address, "wrong", with_login(("collector", "guess")));
        match wrong.next().await {
            Seen::Refused(code) => assert_eq!(code, "BadUserNamePassword", "{version:?}"),
            other => panic!("{version:?}: expected a refused CONNECT, got {other:?}"),
        }

        let will = Options { will: true, ..PLAIN };
        let mut anonymous_will = Client::start(version, address, "will", will);
        match anonymous_will.next().await {
            Seen::Refused(code) => assert_eq!(code, "NotAuthorized", "{version:?}"),
            other => panic!("{version:?}: expected a refused CONNECT, got {other:?}"),
        }
    }
    assert_eq!(stats.connects_rejected(ConnectRejectReason::BadCredentials), 2);
    assert_eq!(stats.connects_rejected(ConnectRejectReason::WillNotAuthorized), 2);

    let signed_will = Options {
        login: Some(("collector", "s3cret")),
        will: true,
        websocket: false,
    };
    Client::connect(Version::V5, address, "signed-will", signed_will).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_requires_login_when_configured() {
    let mut settings = LOGIN.to_vec();
    settings.push(("mqtt.auth.subscribe", "true"));
    let mut server = TestServer::start_with(&settings).await;

    for version in [Version::V311, Version::V5] {
        let mut anonymous = Client::start(version, server.mqtt, "anon", PLAIN);
        match anonymous.next().await {
            Seen::Refused(code) => assert_eq!(code, "NotAuthorized", "{version:?}"),
            other => panic!("{version:?}: expected a refused CONNECT, got {other:?}"),
        }
    }

    let mut signed = Client::connect(Version::V5, server.mqtt, "signed", with_login(("collector", "s3cret"))).await;
    signed.subscribe("twitter/hashtag/members").await;
    assert_eq!(server.push(message("members-1", "#members")).await.status(), 200);
    let (_, received) = signed.next_message().await;
    assert_eq!(received["id_str"], "members-1");
    server.stop().await;
}

/// CONNECT (MQTT 3.1.1, client id "sneak", no login) and a QoS 0 PUBLISH to
/// `ingest/messages`, encoded by hand as a client that knows the port would send them.
fn connect_and_publish_without_login(payload: &str) -> BytesMut {
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&[0x10, 0x11, 0x00, 0x04]);
    bytes.extend_from_slice(b"MQTT");
    bytes.extend_from_slice(&[0x04, 0x02, 0x00, 0x1e, 0x00, 0x05]);
    bytes.extend_from_slice(b"sneak");

    let topic = b"ingest/messages";
    let remaining = 2 + topic.len() + payload.len();
    assert!(remaining < 128, "one-byte remaining length");
    bytes.extend_from_slice(&[0x30, remaining as u8, 0x00, topic.len() as u8]);
    bytes.extend_from_slice(topic);
    bytes.extend_from_slice(payload.as_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listeners_need_the_internal_login() {
    let mut server = TestServer::start_with(&LOGIN).await;
    let mut watcher = Client::connect(Version::V311, server.mqtt, "watcher", PLAIN).await;
    watcher.subscribe("twitter/hashtag/inside").await;

    for name in ["mqtt_v311_internal", "mqtt_v5_internal"] {
        let internal = listener(&server, name);
        assert!(internal.ip().is_loopback(), "{name} listens on loopback only");

        let mut sneak = TcpStream::connect(internal).await.unwrap();
        sneak
            .write_all(&connect_and_publish_without_login(&message(name, "#inside")))
            .await
            .unwrap();
        assert!(read_to_close(&mut sneak).await.is_empty(), "{name} closes without a CONNACK");

        for version in [Version::V311, Version::V5] {
            let mut public_login = Client::start(version, internal, "public", with_login(("collector", "s3cret")));
            let end = public_login.next().await;
            assert!(matches!(end, Seen::Ended(_)), "{name} {version:?}: {end:?}");
        }
    }

    let publisher = Client::connect(Version::V5, server.mqtt, "signed", with_login(("collector", "s3cret"))).await;
    publisher.publish("ingest/messages", &message("signed-inside", "#inside")).await;
    let (_, received) = watcher.next_message().await;
    assert_eq!(received["id_str"], "signed-inside", "nothing sent to the internal ports arrives");
    server.stop().await;
}

/// A loopback port free at the time of the call; the server binds it right after.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_follow_the_publisher_login() {
    let port = free_port().to_string();
    let mut settings = LOGIN.to_vec();
    settings.push(("mqtt.ws.port", &port));
    let mut server = TestServer::start_with(&settings).await;
    let ws = listener(&server, "mqtt_ws");

    let websocket = || Options {
        websocket: true,
        ..PLAIN
    };
    let mut watcher = Client::connect(Version::V311, ws, "ws-watcher", websocket()).await;
    watcher.subscribe("twitter/hashtag/wsgate").await;

    let mut anonymous = Client::connect(Version::V311, ws, "ws-anon", websocket()).await;
    anonymous.publish("ingest/messages", &message("ws-anon", "#wsgate")).await;
    let end = anonymous.next().await;
    assert!(matches!(end, Seen::Ended(_)), "anonymous WebSocket publisher is closed: {end:?}");

    let signed = Options {
        login: Some(("collector", "s3cret")),
        will: false,
        websocket: true,
    };
    let signed = Client::connect(Version::V311, ws, "ws-signed", signed).await;
    signed.publish("ingest/messages", &message("ws-signed", "#wsgate")).await;
    let (_, received) = watcher.next_message().await;
    assert_eq!(received["id_str"], "ws-signed", "the anonymous subscriber gets the signed message, and the anonymous one never arrives");
    server.stop().await;
}

/// CONNECT (MQTT 5, client id "big", no login, empty properties) and the fixed header of a
/// PUBLISH whose remaining length is `remaining`, with the first bytes of its body.
fn connect_v5_and_publish_header(remaining: usize) -> BytesMut {
    let mut bytes = BytesMut::new();
    bytes.extend_from_slice(&[0x10, 0x10, 0x00, 0x04]);
    bytes.extend_from_slice(b"MQTT");
    bytes.extend_from_slice(&[0x05, 0x02, 0x00, 0x1e, 0x00, 0x00, 0x03]);
    bytes.extend_from_slice(b"big");

    bytes.extend_from_slice(&[0x30]);
    let mut length = remaining;
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        if length == 0 {
            bytes.extend_from_slice(&[byte]);
            break;
        }
        bytes.extend_from_slice(&[byte | 0x80]);
    }
    bytes.extend_from_slice(&[0x00, 0x01, b'i', 0x00]);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_disconnected_and_counted() {
    let server = TestServer::start_with(&[("stream.batch.max_bytes", "65536"), ("stream.message.max_bytes", "65536")]).await;
    let mut watcher = Client::connect(Version::V311, server.mqtt, "watcher", PLAIN).await;
    watcher.subscribe("twitter/hashtag/size").await;

    let mut big = TcpStream::connect(server.mqtt).await.unwrap();
    big.write_all(&connect_v5_and_publish_header(65_537)).await.unwrap();
    let received = read_to_close(&mut big).await;
    assert_eq!(received[0] >> 4, 2, "a CONNACK first: {received:02x?}");
    let connack_end = 2 + usize::from(received[1]);
    assert_eq!(&received[connack_end..], [0xe0, 0x02, 0x95, 0x00], "then DISCONNECT 0x95, packet too large");
    assert_eq!(server.rejected("payload_too_large").await, 1);

    let publisher = Client::connect(Version::V311, server.mqtt, "fits", PLAIN).await;
    publisher.publish("ingest/messages", &message("fits", "#size")).await;
    let (_, received) = watcher.next_message().await;
    assert_eq!(received["id_str"], "fits", "others publish on after the disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_counts_clients_only() {
    let server = TestServer::start_with(&[("mqtt.connections.max", "4")]).await;
    let mut clients = Vec::new();
    for n in 0..4 {
        let mut client = Client::connect(Version::V311, server.mqtt, &format!("client-{n}"), PLAIN).await;
        // A SUBACK shows the router serves the client, beyond the front's CONNACK.
        client.subscribe(&format!("limit/{n}")).await;
        clients.push(client);
    }

    // The front closes a connection past the limit before it reads anything.
    let mut fifth = TcpStream::connect(server.mqtt).await.unwrap();
    assert!(read_to_close(&mut fifth).await.is_empty(), "the fifth client is closed without a CONNACK");
    let status = server.status().await;
    assert_eq!(status["mqtt"]["connects_rejected"]["connection_limit"], 1, "{status}");
}
