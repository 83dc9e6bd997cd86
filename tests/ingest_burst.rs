//! A burst of MQTT publishes at QoS 0 with the real corpus, sent faster than the server
//! processes them. The ingest filter's log in the embedded broker keeps the backlog, so no
//! message is lost and each one is stored and published once.

mod common;

use std::collections::HashSet;

use common::{corpus_lines, count_identities, identity, read_dump_lines, SseClient, SseEvent, TestServer};
use lokstream::collector::{self, PublishOptions};
use serde_json::Value;

/// The channel the SSE client watches: the most frequent hashtag of the corpus, so that
/// the client reads a small share of the burst.
const TAG_CHANNEL: &str = "twitter/hashtag/macselena";

/// Published after the corpus on the same connection, so it arrives last.
const SENTINEL: &str = r#"{"source_type":"TWITTER","id_str":"burst-sentinel","text":"end of burst #macselena"}"#;

fn is_sentinel(event: &SseEvent) -> bool {
    event.data.contains("\"burst-sentinel\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_burst_loses_nothing() {
    // Channel logs of 4 x 64 KiB are far smaller than the corpus (about 4.9 MB); the ingest
    // log of 128 x 64 KiB = 8 MiB has room for all of it.
    let mut server = TestServer::start_with(&[
        ("mqtt.log.segment_bytes", "65536"),
        ("mqtt.log.segments", "4"),
        ("mqtt.ingest.log.segments", "128"),
    ])
    .await;
    let lines = corpus_lines();
    let mut tagged = SseClient::connect(&server.stream_url(&[TAG_CHANNEL])).await;
    let tagged = tokio::spawn(async move { tagged.collect_until(is_sentinel).await });

    let file = server.dump_dir().join("burst-input.jsonl");
    std::fs::write(&file, format!("{}\n{SENTINEL}\n", lines.join("\n"))).unwrap();
    let summary = collector::publish_file(&PublishOptions {
        file,
        address: format!("mqtt://{}", server.mqtt),
        topic: "ingest/burst".into(),
        qos: 0,
        rate: None,
        client_id: Some("burst-collector".into()),
    })
    .await
    .expect("the corpus publishes");
    assert_eq!(summary.published as usize, lines.len() + 1);

    let events = tagged.await.unwrap();
    let status = server.status().await;
    assert_eq!(status["broker"]["messages_lost"], 0, "the broker dropped messages: {status}");

    let mut last_id = 0u64;
    for event in &events {
        let id: u64 = event.id.as_deref().expect("every event has an id").parse().unwrap();
        assert!(id > last_id, "SSE event ids must increase: {id} after {last_id}");
        last_id = id;
    }
    assert!(events.len() > 100, "the tag channel carried only {} events", events.len());

    server.stop().await;
    let stored: Vec<Value> = read_dump_lines(server.dump_dir())
        .iter()
        .map(|line| serde_json::from_str(line).expect("a dump line is JSON"))
        .collect();
    let counts = count_identities(&stored);
    let repeated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(repeated.is_empty(), "dump lines stored more than once: {repeated:?}");

    let mut expected: HashSet<(String, String)> = lines
        .iter()
        .map(|line| identity(&serde_json::from_str(line).unwrap()))
        .collect();
    expected.insert(("twitter".to_string(), "burst-sentinel".to_string()));
    let stored: HashSet<_> = counts.into_keys().collect();
    let missing: Vec<_> = expected.difference(&stored).take(5).collect();
    assert!(missing.is_empty(), "{} messages missing from the dump, e.g. {missing:?}", expected.difference(&stored).count());
}
