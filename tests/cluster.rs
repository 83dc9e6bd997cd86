//! Cluster mode: replicas on a real Mosquitto broker divide ingest through a shared
//! subscription, and every replica streams every channel.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::{corpus_lines, identity, read_dump_lines, SseClient, SseEvent, TestServer};
use lokstream::collector::{self, PublishOptions};
use serde_json::Value;
use tokio::sync::watch;

/// Reads `count` events in a task of its own; returns early with what it has if they do
/// not all come within the test's patience, so a failure shows how many arrived.
/// The receiver tracks how many have arrived.
fn collect(mut client: SseClient, count: usize) -> (tokio::task::JoinHandle<Vec<SseEvent>>, watch::Receiver<usize>) {
    let (progress, arrived) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut events = Vec::with_capacity(count);
        let reading = async {
            while events.len() < count {
                events.push(client.next_event().await.expect("stream ended early"));
                progress.send_replace(events.len());
            }
        };
        let _ = tokio::time::timeout(common::PATIENCE, reading).await;
        events
    });
    (task, arrived)
}

/// Waits until `arrived` reaches `count`.
async fn wait_for_events(arrived: &mut watch::Receiver<usize>, count: usize) {
    let reached = tokio::time::timeout(common::PATIENCE, arrived.wait_for(|n| *n >= count))
        .await
        .is_ok_and(|waited| waited.is_ok());
    assert!(reached, "only {} of {count} events arrived", *arrived.borrow());
}

fn identities(lines: &[String]) -> HashSet<(String, String)> {
    lines.iter().map(|line| identity(&serde_json::from_str(line).unwrap())).collect()
}

/// Checks that `messages` hold each of `expected` exactly once.
fn assert_exactly_once<'a>(messages: impl Iterator<Item = &'a Value>, expected: &HashSet<(String, String)>, what: &str) {
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for message in messages {
        *counts.entry(identity(message)).or_default() += 1;
    }
    let repeated = counts.values().filter(|n| **n > 1).count();
    assert_eq!(repeated, 0, "{what}: messages seen more than once");
    let seen: HashSet<_> = counts.into_keys().collect();
    assert_eq!(seen.len(), expected.len(), "{what}: message count");
    assert!(seen == *expected, "{what}: other messages than published");
}

async fn publish(broker: std::net::SocketAddr, file: std::path::PathBuf) {
    collector::publish_file(&PublishOptions {
        file,
        address: format!("tcp://{broker}"),
        topic: "ingest/cluster".into(),
        qos: 1,
        rate: None,
        client_id: None,
    })
    .await
    .expect("publishing to mosquitto works");
}

/// Polls `/readyz` until it answers 200: reconnection has no event a client can await.
async fn wait_ready(server: &TestServer) {
    let deadline = Instant::now() + common::PATIENCE;
    loop {
        let response = reqwest::get(server.url("/readyz")).await.unwrap();
        if response.status() == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "replica not ready: {}", response.text().await.unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_divide_ingest_and_share_channels() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let mut first = TestServer::start_on_broker(broker.address, &[]).await;
    let mut second = TestServer::start_on_broker(broker.address, &[]).await;
    wait_ready(&first).await;
    wait_ready(&second).await;

    let lines = corpus_lines();
    let half = lines.len() / 2;
    let (events_on_first, mut arrived_first) = collect(SseClient::connect(&first.stream_url(&["all"])).await, lines.len());
    let (events_on_second, mut arrived_second) =
        collect(SseClient::connect(&second.stream_url(&["all"])).await, lines.len());

    let input = first.dump_dir().join("first-half.jsonl");
    std::fs::write(&input, lines[..half].join("\n")).unwrap();
    publish(broker.address, input).await;

    // An outage between the halves: both replicas must reconnect and go on. Mosquitto runs
    // without persistence, so the outage starts only once the first half went through it:
    // what it holds in memory when killed is lost, as with any broker without persistence.
    wait_for_events(&mut arrived_first, half).await;
    wait_for_events(&mut arrived_second, half).await;
    broker.stop();
    broker.restart();
    wait_ready(&first).await;
    wait_ready(&second).await;

    let input = first.dump_dir().join("second-half.jsonl");
    std::fs::write(&input, lines[half..].join("\n")).unwrap();
    publish(broker.address, input).await;

    let expected = identities(&lines);
    for (events, replica) in [(events_on_first, "first"), (events_on_second, "second")] {
        let events = events.await.unwrap();
        let messages: Vec<Value> = events.iter().map(|e| serde_json::from_str(&e.data).unwrap()).collect();
        assert_exactly_once(messages.iter(), &expected, &format!("SSE all on the {replica} replica"));
    }

    first.stop().await;
    second.stop().await;
    let first_lines = read_dump_lines(first.dump_dir());
    let second_lines = read_dump_lines(second.dump_dir());
    assert!(!first_lines.is_empty(), "the first replica dumped part of the ingest");
    assert!(!second_lines.is_empty(), "the second replica dumped part of the ingest");
    let dumped: Vec<Value> = first_lines
        .iter()
        .chain(&second_lines)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_exactly_once(dumped.iter(), &expected, "dumps of both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_starts_while_broker_is_down() {
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    broker.stop();
    let server = TestServer::start_on_broker(broker.address, &[]).await;

    let response = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(response.status(), 503, "not ready without a broker");
    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .body(r#"{"id_str":"while-down","text":"stored even without a broker"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "push is stored in the dump while the broker is down");

    broker.restart();
    wait_ready(&server).await;
    let mut stream = SseClient::connect(&server.stream_url(&["all"])).await;
    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .body(r#"{"id_str":"after-restart","text":"live again"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let event = stream.next_event().await.expect("stream open");
    assert!(event.data.contains("after-restart"), "live event after the broker came: {}", event.data);
}
