//! The real corpus end to end: MQTT and HTTP ingest to SSE clients, an MQTT subscriber and
//! the dump files, each message exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;

use common::{corpus_lines, identity, read_dump_lines, MqttClient, SseClient, SseEvent, TestServer};
use lokstream::channels::{self, ChannelInput, ChannelOptions};
use lokstream::collector::{self, PublishOptions};
use serde_json::Value;

/// The hashtag channel checked alongside `all`: the most frequent tag of the corpus.
const TAG_CHANNEL: &str = "twitter/hashtag/macselena";

/// A message published after the corpus; once it arrives, everything before it has too,
/// because each channel keeps publish order.
fn sentinel() -> String {
    r#"{"source_type":"TWITTER","id_str":"sentinel-1","text":"end of run #macselena"}"#.to_string()
}

/// Identities of corpus messages that the channel derivation sends to `channel`.
fn expected_on(lines: &[String], channel: &str) -> HashSet<(String, String)> {
    let options = ChannelOptions {
        text_words: false,
        max_per_message: 256,
    };
    lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|message| {
            let input = ChannelInput {
                source_type: message["source_type"].as_str(),
                screen_name: message["screen_name"].as_str(),
                text: message["text"].as_str(),
                country_code: message["place_country_code"].as_str(),
                ..ChannelInput::default()
            };
            channels::derive(&input, &options).topics.iter().any(|t| t == channel)
        })
        .map(|message| identity(&message))
        .collect()
}

fn is_sentinel(event: &SseEvent) -> bool {
    event.data.contains("\"sentinel-1\"")
}

/// Reads events in a task of their own, as a browser does, until the sentinel arrives.
fn collect_in_background(mut client: SseClient) -> tokio::task::JoinHandle<Vec<SseEvent>> {
    tokio::spawn(async move { client.collect_until(is_sentinel).await })
}

/// Checks that SSE events carry strictly increasing ids and returns their messages.
fn parse_events(events: &[SseEvent]) -> Vec<Value> {
    let mut last_id = 0u64;
    events
        .iter()
        .map(|event| {
            let id: u64 = event.id.as_deref().expect("every event has an id").parse().unwrap();
            assert!(id > last_id, "event ids must strictly increase: {id} after {last_id}");
            last_id = id;
            serde_json::from_str(&event.data).expect("event data is the JSON message")
        })
        .collect()
}

fn assert_exactly_once(messages: &[Value], expected: &HashSet<(String, String)>, what: &str) {
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for message in messages {
        *counts.entry(identity(message)).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(repeated.is_empty(), "{what}: messages received more than once: {repeated:?}");
    let received: HashSet<_> = counts.into_keys().collect();
    let missing: Vec<_> = expected.difference(&received).take(5).collect();
    assert!(missing.is_empty(), "{what}: {} messages missing, e.g. {missing:?}", expected.len() - received.len().min(expected.len()));
    let extra: Vec<_> = received.difference(expected).take(5).collect();
    assert!(extra.is_empty(), "{what}: unexpected messages {extra:?}");
}

/// Checks the dump: one JSON object a line, each expected message once, with a stream id.
fn assert_dump_holds(dir: &std::path::Path, expected: &HashSet<(String, String)>) {
    let lines = read_dump_lines(dir);
    let messages: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).expect("each dump line is JSON"))
        .collect();
    for message in &messages {
        assert!(message.is_object(), "dump line is not an object: {message}");
        assert!(message["stream_id"].is_string(), "dump line without stream_id: {message}");
    }
    assert_exactly_once(&messages, expected, "dump");
}

fn corpus_identities(lines: &[String]) -> HashSet<(String, String)> {
    lines
        .iter()
        .map(|line| identity(&serde_json::from_str(line).unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_over_mqtt_reaches_every_consumer_once() {
    let mut server = TestServer::start().await;
    let lines = corpus_lines();
    let all = collect_in_background(SseClient::connect(&server.stream_url(&["all"])).await);
    let tagged = collect_in_background(SseClient::connect(&server.stream_url(&[TAG_CHANNEL])).await);
    let mut subscriber = MqttClient::connect(server.mqtt, "test-subscriber").await;
    subscriber.subscribe(TAG_CHANNEL).await;

    let file = server.dump_dir().join("corpus-input.jsonl");
    let mut input = lines.join("\n");
    input.push('\n');
    input.push_str(&sentinel());
    std::fs::write(&file, input).unwrap();
    let summary = collector::publish_file(&PublishOptions {
        file,
        address: format!("mqtt://{}", server.mqtt),
        topic: "ingest/corpus".into(),
        qos: 1,
        rate: None,
        client_id: Some("test-collector".into()),
    })
    .await
    .expect("the corpus publishes");
    assert_eq!(summary.published as usize, lines.len() + 1);

    let mut expected_all = corpus_identities(&lines);
    let mut expected_tag = expected_on(&lines, TAG_CHANNEL);
    assert!(expected_tag.len() > 100, "the tag channel should carry many messages");
    let sentinel_identity = ("twitter".to_string(), "sentinel-1".to_string());
    expected_all.insert(sentinel_identity.clone());
    expected_tag.insert(sentinel_identity);

    let all_events = all.await.unwrap();
    assert_exactly_once(&parse_events(&all_events), &expected_all, "SSE all");

    let tag_events = tagged.await.unwrap();
    assert_exactly_once(&parse_events(&tag_events), &expected_tag, "SSE tag channel");

    let mut mqtt_messages = Vec::new();
    loop {
        let publish = subscriber.next_publish().await;
        assert_eq!(publish.topic, TAG_CHANNEL);
        let message: Value = serde_json::from_slice(&publish.payload).unwrap();
        let done = message["id_str"] == "sentinel-1";
        mqtt_messages.push(message);
        if done {
            break;
        }
    }
    assert_exactly_once(&mqtt_messages, &expected_tag, "MQTT subscriber");

    server.stop().await;
    assert_dump_holds(server.dump_dir(), &expected_all);
}

/// Publishes the corpus through `POST /api/push.json` in batches of three shapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_over_http_push_reaches_sse_and_dump() {
    let mut server = TestServer::start().await;
    let lines = corpus_lines();
    let all = collect_in_background(SseClient::connect(&server.stream_url(&["all"])).await);
    let http = reqwest::Client::new();

    let mut accepted = 0;
    for (index, batch) in lines.chunks(500).enumerate() {
        let array = format!("[{}]", batch.join(","));
        let request = match index % 3 {
            0 => http.post(server.url("/api/push.json")).header("content-type", "application/json").body(array),
            1 => http
                .post(server.url("/api/push.json"))
                .header("content-type", "application/json")
                .body(format!("{{\"statuses\":{array}}}")),
            _ => http.post(server.url("/api/push.json")).form(&[("data", array)]),
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "batch {index}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["duplicates"], 0, "batch {index}");
        accepted += body["accepted"].as_u64().unwrap();
    }
    assert_eq!(accepted as usize, lines.len());

    // The same batch again is all duplicates.
    let again = format!("[{}]", lines[..100].join(","));
    let response = http
        .post(server.url("/api/push.json"))
        .header("content-type", "application/json")
        .body(again)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["duplicates"], 100);

    let response = http.post(server.url("/api/push.json")).body(sentinel()).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let mut expected = corpus_identities(&lines);
    expected.insert(("twitter".to_string(), "sentinel-1".to_string()));
    let events = all.await.unwrap();
    assert_exactly_once(&parse_events(&events), &expected, "SSE all");

    server.stop().await;
    assert_dump_holds(server.dump_dir(), &expected);
}

/// `lokstream publish` replays a gzip dump made of several members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_dump_replays_into_a_server() {
    let mut server = TestServer::start().await;
    let lines = corpus_lines();
    let half = lines.len() / 2;

    let file = server.dump_dir().join("replay.txt.gz");
    let mut out = std::fs::File::create(&file).unwrap();
    for part in [&lines[..half], &lines[half..]] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in part {
            writeln!(encoder, "{line}").unwrap();
        }
        out.write_all(&encoder.finish().unwrap()).unwrap();
    }
    drop(out);

    let all = collect_in_background(SseClient::connect(&server.stream_url(&["all"])).await);
    let replay = |file| PublishOptions {
        file,
        address: format!("tcp://{}", server.mqtt),
        topic: "ingest/replay".into(),
        qos: 1,
        rate: None,
        client_id: None,
    };
    let summary = collector::publish_file(&replay(file)).await.unwrap();
    assert_eq!(summary.published as usize, lines.len());

    // The ingest filter keeps publish order, so the sentinel arrives after the replay.
    let sentinel_file = server.dump_dir().join("sentinel.txt");
    std::fs::write(&sentinel_file, sentinel()).unwrap();
    collector::publish_file(&replay(sentinel_file)).await.unwrap();
    let events = all.await.unwrap();
    assert_eq!(events.len(), lines.len() + 1);

    server.stop().await;
    let mut expected = corpus_identities(&lines);
    expected.insert(("twitter".to_string(), "sentinel-1".to_string()));
    assert_dump_holds(server.dump_dir(), &expected);
}
