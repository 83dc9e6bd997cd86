//! A SUBSCRIBE that would kill rumqttd 0.20's router is refused at the MQTT front, and the
//! broker keeps serving everyone else.

mod common;

use common::{MqttClient, TestServer};
use rumqttc::{QoS, SubscribeFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_is_refused_and_broker_survives() {
    let server = TestServer::start().await;

    // rumqttd 0.20's router panics on one SUBSCRIBE whose filters resolve to the same one,
    // which takes a shared subscription; the front disconnects such a client instead.
    let mut attacker = MqttClient::connect(server.mqtt, "router-killer").await;
    let filters = vec![
        SubscribeFilter::new("all".into(), QoS::AtMostOnce),
        SubscribeFilter::new("$share/g/all".into(), QoS::AtMostOnce),
    ];
    attacker.client.subscribe_many(filters).await.unwrap();
    let closed = tokio::time::timeout(common::PATIENCE, attacker.acks.recv()).await.expect("timed out");
    assert!(closed.is_none(), "the client is disconnected without a SUBACK: {closed:?}");

    let healthy = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200, "the broker is alive");

    let mut subscriber = MqttClient::connect(server.mqtt, "after-attack").await;
    subscriber.subscribe("twitter/hashtag/alive").await;
    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .header("content-type", "application/json")
        .body(r##"{"source_type":"TWITTER","id_str":"alive-1","text":"still #alive"}"##)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let publish = subscriber.next_publish().await;
    assert_eq!(publish.topic, "twitter/hashtag/alive", "channels still flow after the refused SUBSCRIBE");
}
