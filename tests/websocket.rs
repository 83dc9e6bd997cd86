//! MQTT over WebSocket on the embedded broker: a client subscribes to a channel and gets
//! the messages pushed over HTTP.

mod common;

use std::time::Duration;

use common::TestServer;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

/// A loopback port free at the time of the call; the server binds it right after.
fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_subscriber_receives_channel() {
    let port = free_port().to_string();
    let mut server = TestServer::start_with(&[("mqtt.ws.port", &port)]).await;
    let ws = server.server.as_ref().unwrap().mqtt_ws_address().expect("WebSocket listener is on");

    let url = format!("ws://{ws}/mqtt");
    let mut options = MqttOptions::new("test-ws", url, ws.port());
    options.set_transport(Transport::Ws);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe("twitter/hashtag/websocket", QoS::AtMostOnce).await.unwrap();

    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let received = tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match eventloop.poll().await.expect("WebSocket connection works") {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(tx) = subscribed_tx.take() {
                        tx.send(()).unwrap();
                    }
                }
                Event::Incoming(Packet::Publish(publish)) => return publish,
                _ => {}
            }
        }
    });
    tokio::time::timeout(common::PATIENCE, subscribed).await.unwrap().unwrap();

    let body = r#"{"source_type":"TWITTER","id_str":"ws-1","text":"over #WebSocket"}"#;
    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let publish = tokio::time::timeout(common::PATIENCE, received).await.unwrap().unwrap();

    assert_eq!(publish.topic, "twitter/hashtag/websocket");
    let message: serde_json::Value = serde_json::from_slice(&publish.payload).unwrap();
    assert_eq!(message["text"], "over #WebSocket");
    server.stop().await;
}
