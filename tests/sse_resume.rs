//! Resuming SSE streams with `Last-Event-ID`: what a reconnecting client gets from the
//! history, the seam between history and live events, `gap` notices when the history
//! cannot prove it is complete, and a slow client that comes back after eviction.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{corpus_lines, MqttClient, SseClient, SseEvent, TestServer, PATIENCE};
use lokstream::channels::{self, ChannelOptions};
use lokstream::message::{self, Limits};
use rumqttc::QoS;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn id_of(event: &SseEvent) -> u64 {
    let id = event.id.as_deref().unwrap_or_else(|| panic!("event without an id: {event:?}"));
    id.parse().unwrap_or_else(|_| panic!("event id {id:?} is not a number"))
}

/// Returns the `id_str` of the message an event carries.
fn id_str_of(event: &SseEvent) -> String {
    let message: Value = serde_json::from_str(&event.data).unwrap_or_else(|_| panic!("event data is not JSON: {event:?}"));
    message["id_str"].as_str().unwrap_or("").to_string()
}

fn is_gap(event: &SseEvent) -> bool {
    event.event.as_deref() == Some("gap")
}

fn assert_ids_increase(events: &[SseEvent], what: &str) {
    let mut last = 0;
    for event in events {
        let id = id_of(event);
        assert!(id > last, "{what}: event id {id} follows {last}");
        last = id;
    }
}

/// Opens a stream that resumes after `last_event_id` the way a browser reconnects: with
/// the `Last-Event-ID` header.
async fn resume(url: &str, last_event_id: &str) -> SseClient {
    SseClient::send(reqwest::Client::new().get(url).header("last-event-id", last_event_id)).await
}

fn test_message(id_str: &str) -> String {
    format!(r#"{{"source_type":"test","id_str":"{id_str}","text":"message {id_str}"}}"#)
}

async fn push_all(server: &TestServer, messages: &[String]) {
    let response = server.push(format!("[{}]", messages.join(","))).await;
    assert_eq!(response.status(), 200, "push of {} messages", messages.len());
}

/// Reads `client` until the message `id_str` arrives. A push returns before the hub has
/// dispatched its events, so a test waits on such a witness stream before it resumes.
async fn wait_for_message(client: &mut SseClient, id_str: &str) {
    client.collect_until(|event| !is_gap(event) && id_str_of(event) == id_str).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_header_gets_missed_events() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["test"]);
    let mut client = SseClient::connect(&url).await;
    let mut witness = SseClient::connect(&server.stream_url(&["all"])).await;

    let before: Vec<String> = (0..5).map(|n| test_message(&format!("before-{n}"))).collect();
    push_all(&server, &before).await;
    let mut seen = Vec::new();
    for _ in &before {
        seen.push(client.next_event().await.expect("an event before the disconnect"));
    }
    drop(client);

    // The only client left, so the filter waits out the linger time with no client.
    let missed: Vec<String> = (0..7).map(|n| test_message(&format!("missed-{n}"))).collect();
    push_all(&server, &missed).await;
    wait_for_message(&mut witness, "missed-6").await;
    let status = server.status().await;
    assert_eq!(status["hub"]["idle_filters"], 1, "the filter stays subscribed while it lingers: {status}");

    let last = seen.last().unwrap().id.clone().unwrap();
    let mut client = resume(&url, &last).await;
    push_all(&server, &[test_message("live")]).await;
    let after = client.collect_until(|event| event.data.contains("\"live\"")).await;

    assert!(after.iter().all(|event| !is_gap(event)), "a resume within the history got a gap: {after:?}");
    seen.extend(after);
    assert_ids_increase(&seen, "before and after the reconnect");
    let received: Vec<String> = seen.iter().map(id_str_of).collect();
    let mut expected: Vec<String> = (0..5).map(|n| format!("before-{n}")).collect();
    expected.extend((0..7).map(|n| format!("missed-{n}")));
    expected.push("live".to_string());
    assert_eq!(received, expected, "every message once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_connect_resumes_from_query() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["test"]);
    let mut client = SseClient::connect(&url).await;
    push_all(&server, &[test_message("first"), test_message("second")]).await;
    let first = client.next_event().await.expect("the first event");
    drop(client);

    let url = format!("{url}&lastEventId={}", first.id.clone().unwrap());
    let mut client = SseClient::connect(&url).await;
    let event = client.next_event().await.expect("a replayed event");
    assert_eq!(id_str_of(&event), "second", "the event after lastEventId");
    assert!(id_of(&event) > id_of(&first), "replayed id {event:?} after {first:?}");
}

/// A publisher pushes the real corpus without pause while a client disconnects and
/// resumes over and over. The client must see every message once, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_resumes_lose_and_repeat_nothing() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["all"]);
    let lines: Vec<String> = corpus_lines().into_iter().take(3000).collect();
    let mut client = SseClient::connect(&url).await;

    let http = reqwest::Client::new();
    let push_url = server.url("/api/push.json");
    let batches: Vec<String> = lines.chunks(20).map(|batch| format!("[{}]", batch.join(","))).collect();
    let pusher = tokio::spawn(async move {
        for (index, batch) in batches.into_iter().enumerate() {
            let response = http.post(&push_url).header("content-type", "application/json").body(batch).send().await.unwrap();
            assert_eq!(response.status(), 200, "push of batch {index}");
        }
    });

    let expected: Vec<String> = lines.iter().map(|line| serde_json::from_str::<Value>(line).unwrap()["id_str"].as_str().unwrap().to_string()).collect();
    let last_expected = expected.last().unwrap().clone();
    let mut events: Vec<SseEvent> = Vec::new();
    let mut reconnects = 0;
    'outer: loop {
        // Read a varying number of events, then hang up and resume at once.
        let quota = 50 + (reconnects * 37) % 200;
        for _ in 0..quota {
            let event = client.next_event().await.expect("stream ended early");
            assert!(!is_gap(&event), "gap after {} events: {event:?}", events.len());
            let done = id_str_of(&event) == last_expected;
            events.push(event);
            if done {
                break 'outer;
            }
        }
        drop(client);
        reconnects += 1;
        let last = events.last().unwrap().id.clone().unwrap();
        client = resume(&url, &last).await;
    }
    tokio::time::timeout(PATIENCE, pusher).await.expect("pusher timed out").unwrap();

    assert!(reconnects >= 10, "only {reconnects} reconnects; the test needs many seams");
    assert_ids_increase(&events, "resumed stream");
    let received: Vec<String> = events.iter().map(id_str_of).collect();
    let first_difference = received.iter().zip(&expected).position(|(got, wanted)| got != wanted);
    assert_eq!(first_difference, None, "messages out of order or repeated");
    assert_eq!(received.len(), expected.len(), "events received");
}

/// Publishes `payload` to `topic` as a device does, with QoS 1.
async fn device_publish(device: &MqttClient, topic: &str, payload: String) {
    device.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
}

/// Reads until both end markers arrived; each filter keeps publish order, so then every
/// earlier publish has arrived too.
async fn read_until_both_ends(client: &mut SseClient, events: &mut Vec<SseEvent>) {
    while !(events.iter().any(|event| event.data == "end a") && events.iter().any(|event| event.data == "end b")) {
        events.push(client.next_event().await.expect("stream ended early"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_overlapping_filters_match_live_stream() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["a/+", "+/b"]);
    let mut live = SseClient::connect(&url).await;
    let mut resumed = SseClient::connect(&url).await;

    let device = MqttClient::connect(server.mqtt, "overlap-resume-device").await;
    let topics = ["a/b", "a/x", "y/b", "z/z"];
    for n in 0..300 {
        device_publish(&device, topics[n % topics.len()], format!("m{n}")).await;
    }
    device_publish(&device, "a/x", "end a".to_string()).await;
    device_publish(&device, "y/b", "end b".to_string()).await;

    let mut resumed_events = Vec::new();
    for _ in 0..60 {
        resumed_events.push(resumed.next_event().await.expect("an event before the disconnect"));
    }
    drop(resumed);
    let last = resumed_events.last().unwrap().id.clone().unwrap();
    let mut resumed = resume(&url, &last).await;
    read_until_both_ends(&mut resumed, &mut resumed_events).await;

    let mut live_events = Vec::new();
    read_until_both_ends(&mut live, &mut live_events).await;

    let pairs = |events: &[SseEvent]| events.iter().map(|event| (id_of(event), event.data.clone())).collect::<Vec<_>>();
    let live_pairs = pairs(&live_events);
    assert_eq!(live_pairs.len(), 227, "m0..m299 without z/z, and the two end markers");
    assert_eq!(pairs(&resumed_events), live_pairs, "the resumed stream must equal the live one, ids included");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_last_event_id_gets_gap_first() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["test"]);
    for (index, unknown) in ["not-an-id", "99999999999999999999", "18446744073709551615"].into_iter().enumerate() {
        let mut client = resume(&url, unknown).await;
        let gap = client.next_event().await.expect("a gap event");
        assert!(is_gap(&gap), "Last-Event-ID {unknown:?}: first event {gap:?}");
        assert_eq!(gap.id, None, "a gap must not move the browser's last event id");
        let data: Value = serde_json::from_str(&gap.data).expect("gap data is JSON");
        assert_eq!(data["reason"], "history_incomplete", "gap data {data}");

        push_all(&server, &[test_message(&format!("after-{index}"))]).await;
        let event = client.next_event().await.expect("a live event after the gap");
        assert!(!is_gap(&event), "Last-Event-ID {unknown:?}: second event {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_from_before_restart_gets_gap() {
    let mut first = TestServer::start().await;
    let mut client = SseClient::connect(&first.stream_url(&["test"])).await;
    push_all(&first, &[test_message("old")]).await;
    let old = client.next_event().await.expect("an event of the first server");
    drop(client);
    first.stop().await;

    let second = TestServer::start().await;
    let mut client = resume(&second.stream_url(&["test"]), old.id.as_deref().unwrap()).await;
    let gap = client.next_event().await.expect("a gap event");
    assert!(is_gap(&gap), "first event after a restart: {gap:?}");
    push_all(&second, &[test_message("new")]).await;
    let event = client.next_event().await.expect("a live event");
    assert_eq!(id_str_of(&event), "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflowed_history_gets_gap_then_its_tail() {
    let server = TestServer::start_with(&[("stream.history.bytes", "16384")]).await;
    let url = server.stream_url(&["all"]);
    let lines: Vec<String> = corpus_lines().into_iter().take(60).collect();
    let mut client = SseClient::connect(&url).await;
    let mut witness = SseClient::connect(&server.stream_url(&["all"])).await;
    push_all(&server, &lines[..1]).await;
    let first = client.next_event().await.expect("the first event");
    drop(client);

    push_all(&server, &lines[1..]).await;
    let last_id_str = serde_json::from_str::<Value>(lines.last().unwrap()).unwrap()["id_str"].as_str().unwrap().to_string();
    wait_for_message(&mut witness, &last_id_str).await;
    let mut client = resume(&url, first.id.as_deref().unwrap()).await;
    let events = client.collect_until(|event| !is_gap(event) && id_str_of(event) == last_id_str).await;

    assert!(is_gap(&events[0]), "first event after an overflowed history: {:?}", events[0]);
    let tail = &events[1..];
    assert!(tail.len() > 1, "the history kept only {} of the 59 missed messages", tail.len());
    assert!(tail.len() < 59, "the 16 KiB history kept all 59 missed messages, so nothing was evicted");
    assert_ids_increase(tail, "history tail");
    let expected: Vec<String> = lines[60 - tail.len()..]
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id_str"].as_str().unwrap().to_string())
        .collect();
    let received: Vec<String> = tail.iter().map(id_str_of).collect();
    assert_eq!(received, expected, "the held events are the newest ones, in order");
}

/// Counts the events a stream of `#` gets for each corpus line: one per channel.
fn channel_counts(lines: &[String]) -> HashMap<String, usize> {
    let limits = Limits {
        message_max_bytes: 65536,
        batch_max_bytes: 16 << 20,
    };
    let options = ChannelOptions {
        text_words: false,
        max_per_message: 256,
    };
    let mut counts = HashMap::new();
    for line in lines {
        for message in message::parse_payload(line.as_bytes(), &limits).unwrap() {
            let topics = channels::derive(&message.channel_input(), &options).topics.len();
            *counts.entry(message.id_str.as_deref().unwrap_or("").to_string()).or_insert(0) += topics;
        }
    }
    counts
}

/// Opens a stream as HTTP/1.0 on a socket with a small receive buffer and reads only the
/// response head. The body then comes without chunked encoding and soon stalls.
async fn open_stalled_stream(server: &TestServer, channel: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.http).await.unwrap();
    let request = format!("GET /api/stream.json?channel={} HTTP/1.0\r\n\r\n", common::urlencode(channel));
    stream.write_all(request.as_bytes()).await.unwrap();

    // One byte at a time, so that nothing past the head is consumed.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(PATIENCE, stream.read_u8()).await.expect("timed out reading the head").unwrap();
        head.push(byte);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "stalled stream response: {head}");
    assert!(!head.to_ascii_lowercase().contains("chunked"), "HTTP/1.0 response is chunked: {head}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_slow_client_resumes_from_history() {
    // A queue deeper than the events of one batch, so that only the stalled socket, not
    // the burst of a batch, fills it.
    let server = TestServer::start_with(&[("stream.client.queue_events", "256")]).await;
    let mut stalled = open_stalled_stream(&server, "#").await;

    let mut lines: Vec<String> = corpus_lines().into_iter().take(5000).collect();
    for batch in lines.chunks(10) {
        push_all(&server, batch).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.status().await["sse"]["slow_disconnects"] == 0 {
        assert!(Instant::now() < deadline, "the stalled client was never disconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = test_message("slow-end");
    push_all(&server, std::slice::from_ref(&end)).await;
    lines.push(end);

    // What the server wrote before it ended the stream drains, then the socket closes.
    let mut written = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut written)).await.expect("the server never closed the stalled stream").unwrap();
    let body = futures_util::stream::iter([Ok(Bytes::from(written))]);

    let mut drained = SseClient::from_body(Box::pin(body), reqwest::header::HeaderMap::new());
    let mut events = Vec::new();
    while let Some(event) = drained.next_event().await {
        events.push(event);
    }
    assert!(!events.is_empty(), "the stalled client received no event before eviction");
    let received_before = events.len();

    // The end message goes to two channels, 'all' and 'test', so '#' gets it twice. The
    // hub may still be dispatching the backlog while the replay is read, which can evict
    // the resumed stream too, cutting its connection. Then it resumes again, as a browser
    // would.
    let mut ends = 0;
    let mut resumes = 0;
    while ends < 2 {
        assert!(resumes < 20, "{resumes} resumes and still not at the end");
        resumes += 1;
        let last = events.last().unwrap().id.clone().unwrap();
        let mut client = resume(&server.stream_url(&["#"]), &last).await;
        while ends < 2 {
            let Some(event) = client.next_event_until_cut().await else {
                break;
            };
            assert!(!is_gap(&event), "gap after {} events: {event:?}", events.len());
            if id_str_of(&event) == "slow-end" {
                ends += 1;
            }
            events.push(event);
        }
    }

    assert!(events.len() > received_before, "the resume replayed nothing");
    assert_ids_increase(&events, "stalled then resumed");
    let mut received: HashMap<String, usize> = HashMap::new();
    for event in &events {
        *received.entry(id_str_of(event)).or_insert(0) += 1;
    }
    let expected = channel_counts(&lines);
    let wrong: Vec<_> = expected.iter().filter(|(id, n)| received.get(*id) != Some(n)).take(5).collect();
    assert!(wrong.is_empty(), "messages not received once per channel, e.g. {wrong:?}");
    assert_eq!(received.len(), expected.len(), "distinct messages received");
}
