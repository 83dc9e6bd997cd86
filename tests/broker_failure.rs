//! A failure the embedded broker cannot recover from is reported on `/healthz`, so a
//! supervisor restarts the process.

mod common;

use std::time::{Duration, Instant};

use common::{MqttClient, TestServer};
use rumqttc::{QoS, SubscribeFilter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_broker_fails_liveness() {
    let server = TestServer::start().await;
    let healthy = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200);

    // rumqttd 0.20's router panics on one SUBSCRIBE whose filters resolve to the same one.
    let client = MqttClient::connect(server.mqtt, "router-killer").await;
    let filters = vec![
        SubscribeFilter::new("all".into(), QoS::AtMostOnce),
        SubscribeFilter::new("$share/g/all".into(), QoS::AtMostOnce),
    ];
    client.client.subscribe_many(filters).await.unwrap();

    // The failure surfaces on the server's links without an event a client can await.
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let response = reqwest::get(server.url("/healthz")).await.unwrap();
        if response.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz still answers {}", response.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready with a dead broker");
}
