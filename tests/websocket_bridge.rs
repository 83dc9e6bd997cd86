//! The MQTT over WebSocket bridge: a silent socket must not hold up other clients, and the
//! handshake returns the MQTT subprotocol the client offered.

mod common;

use std::time::Duration;

use common::{TestServer, PATIENCE};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a WebSocket client may take to subscribe when nothing blocks it.
const PROMPT: Duration = Duration::from_secs(5);

async fn start_with_websocket() -> (TestServer, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let server = TestServer::start_with(&[("mqtt.ws.port", &port)]).await;
    let ws = server.server.as_ref().unwrap().mqtt_ws_address().expect("the WebSocket listener is on");
    (server, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_socket_does_not_block_websocket_clients() {
    let (server, ws) = start_with_websocket().await;
    // Connects and never sends the upgrade request, as a stalled or hostile client would.
    let _silent = TcpStream::connect(ws).await.unwrap();

    let mut options = MqttOptions::new("bridge-test", format!("ws://{ws}/mqtt"), ws.port());
    options.set_transport(Transport::Ws);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe("twitter/hashtag/bridge", QoS::AtMostOnce).await.unwrap();
    let subscribed = tokio::time::timeout(PROMPT, async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.expect("WebSocket connection works") {
                return;
            }
        }
    })
    .await;
    assert!(subscribed.is_ok(), "a silent socket held up the WebSocket client for more than {PROMPT:?}");

    let response = server.push(r#"{"source_type":"TWITTER","id_str":"b-1","text":"over the #bridge"}"#).await;
    assert_eq!(response.status(), 200, "push");
    let publish = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Event::Incoming(Packet::Publish(publish)) = eventloop.poll().await.expect("WebSocket connection works") {
                return publish;
            }
        }
    })
    .await
    .expect("timed out waiting for the publish");
    assert_eq!(publish.topic, "twitter/hashtag/bridge");
}

/// Sends a WebSocket upgrade offering `protocols` and returns the response head.
async fn upgrade_head(ws: std::net::SocketAddr, protocols: &str) -> String {
    let mut socket = TcpStream::connect(ws).await.unwrap();
    let request = format!(
        "GET /mqtt HTTP/1.1\r\nHost: {ws}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, socket.read_u8()).await.expect("timed out reading the head").unwrap();
        head.push(byte);
    }
    String::from_utf8(head).unwrap().to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_returns_offered_subprotocol() {
    let (_server, ws) = start_with_websocket().await;
    for (offered, chosen) in [("mqtt", "mqtt"), ("mqttv3.1", "mqttv3.1"), ("chat, mqtt", "mqtt")] {
        let head = upgrade_head(ws, offered).await;
        assert!(head.starts_with("http/1.1 101"), "offering {offered:?}: {head}");
        assert!(head.contains(&format!("sec-websocket-protocol: {chosen}\r\n")), "offering {offered:?}: {head}");
    }
}
