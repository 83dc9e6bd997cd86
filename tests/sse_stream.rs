//! `/api/stream.json` over real sockets: headers and CORS, the wire format, channel
//! validation, shared hub subscriptions, MQTT wildcards on device topics, shutdown, and
//! slow clients.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{corpus_lines, identity, MqttClient, SseClient, SseEvent, TestServer, PATIENCE};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use rumqttc::QoS;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A stream read line by line, keeping the raw bytes, to check the wire format itself.
struct RawLines {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl RawLines {
    async fn connect(url: &str) -> RawLines {
        let response = reqwest::get(url).await.unwrap();
        assert_eq!(response.status(), 200, "stream request failed: {url}");
        RawLines {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// Returns the next line without its LF, or `None` when the stream ended.
    async fn next_line(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                    line.pop();
                    return Some(line);
                }
                match self.body.next().await {
                    Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => panic!("SSE stream failed: {error}"),
                    None => return None,
                }
            }
        })
        .await
        .expect("timed out waiting for an SSE line")
    }

    /// Reads the lines of the next event, up to the blank line that ends it.
    async fn next_event_lines(&mut self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        loop {
            let line = self.next_line().await.expect("stream ended inside an event");
            if line.is_empty() {
                if lines.is_empty() {
                    continue;
                }
                return lines;
            }
            lines.push(line);
        }
    }
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Parses each event's `id` and checks that the ids strictly increase.
fn assert_ids_increase(events: &[SseEvent], stream: &str) {
    let mut last = 0u64;
    for event in events {
        let id = event.id.as_deref().unwrap_or_else(|| panic!("{stream}: event without an id: {event:?}"));
        let id: u64 = id.parse().unwrap_or_else(|_| panic!("{stream}: event id {id:?} is not a number"));
        assert!(id > last, "{stream}: event id {id} follows {last}");
        last = id;
    }
}

/// Polls `/api/status.json` until `done` holds, for at most five seconds. It serves state
/// that changes asynchronously, with no event to wait for.
async fn poll_status(server: &TestServer, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = server.status().await;
        if done(&status) || Instant::now() >= deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_headers_default_cors() {
    let server = TestServer::start().await;
    let mut client = SseClient::connect(&server.stream_url(&["all"])).await;

    let content_type = header(&client.headers, "content-type").unwrap_or("");
    assert!(content_type.starts_with("text/event-stream"), "content-type is {content_type:?}");
    assert_eq!(header(&client.headers, "cache-control"), Some("no-cache"), "cache-control");
    assert_eq!(header(&client.headers, "x-accel-buffering"), Some("no"), "x-accel-buffering");
    assert_eq!(header(&client.headers, "access-control-allow-origin"), Some("*"), "default allow-origin");

    let response = server.push(r#"{"id_str":"h-1","text":"hello"}"#).await;
    assert_eq!(response.status(), 200, "push");
    let event = client.next_event().await.expect("an event");
    assert!(event.id.is_some(), "event without an id: {event:?}");
    assert_eq!(client.retry, Some(3000), "default retry: value from stream.retry.ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_list_echoes_matching_origin() {
    let server = TestServer::start_with(&[("stream.cors.origins", "https://a.example, https://b.example")]).await;
    let http = reqwest::Client::new();
    let url = server.stream_url(&["all"]);

    let allowed = http.get(&url).header("origin", "https://b.example").send().await.unwrap();
    assert_eq!(allowed.status(), 200, "stream with an allowed origin");
    let headers = allowed.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), Some("https://b.example"), "allowed origin echoed");
    assert_eq!(header(headers, "vary"), Some("Origin"), "vary on an allowed origin");
    drop(allowed);

    let denied = http.get(&url).header("origin", "https://evil.example").send().await.unwrap();
    let headers = denied.headers();
    assert_eq!(header(headers, "access-control-allow-origin"), None, "allow-origin for an unlisted origin");
    assert_eq!(header(headers, "vary"), Some("Origin"), "vary on an unlisted origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_allows_last_event_id() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.stream_url(&["all"]))
        .header("origin", "https://a.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .unwrap();

    assert!(response.status().is_success(), "preflight status {}", response.status());
    let headers = response.headers();
    let allowed: Vec<String> = header(headers, "access-control-allow-headers")
        .unwrap_or("")
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    assert!(allowed.iter().any(|name| name == "last-event-id"), "allow-headers {allowed:?} lacks Last-Event-ID");
    assert!(allowed.iter().any(|name| name == "cache-control"), "allow-headers {allowed:?} lacks Cache-Control");
    assert!(header(headers, "access-control-allow-origin").is_some(), "preflight without allow-origin");
    let methods = header(headers, "access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("GET"), "allow-methods {methods:?} lacks GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_starts_with_retry_then_heartbeat() {
    let server = TestServer::start_with(&[("stream.retry.ms", "1234"), ("stream.heartbeat.secs", "1")]).await;

    let mut raw = RawLines::connect(&server.stream_url(&["all"])).await;
    let first = raw.next_line().await.expect("a first line");
    assert_eq!(String::from_utf8_lossy(&first), "retry: 1234", "the first line of the stream");

    let mut client = SseClient::connect(&server.stream_url(&["all"])).await;
    client.wait_for_comment().await;
    assert!(client.comments >= 1, "no heartbeat comment during silence");
    assert_eq!(client.retry, Some(1234), "retry: value from stream.retry.ms");

    let response = server.push(r#"{"id_str":"hb-1","text":"after the heartbeat"}"#).await;
    assert_eq!(response.status(), 200, "push");
    let event = client.next_event().await.expect("an event after the heartbeat");
    assert!(event.id.is_some(), "event without an id: {event:?}");
    assert!(event.data.contains("hb-1"), "unexpected event {event:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_line_breaks_become_data_lines() {
    let server = TestServer::start().await;
    let url = server.stream_url(&["sensors/room1"]);
    let mut client = SseClient::connect(&url).await;
    let mut raw = RawLines::connect(&url).await;
    let device = MqttClient::connect(server.mqtt, "room1-device").await;

    // CR, LF and CRLF, an empty line with field names after it (an injection attempt), and
    // bytes that are not UTF-8.
    let payload = b"cr\rlf\ncrlf\r\n\nevent: evil\r\nid: 999\nbad \xff\xfe end".to_vec();
    device.client.publish("sensors/room1", QoS::AtLeastOnce, false, payload).await.unwrap();

    let event = client.next_event().await.expect("the device's event");
    assert_eq!(event.data, "cr\nlf\ncrlf\n\nevent: evil\nid: 999\nbad \u{fffd}\u{fffd} end", "event data");
    assert_eq!(event.event, None, "the payload must not set the event type");
    assert_ne!(event.id.as_deref(), Some("999"), "the payload must not set the event id");

    assert_eq!(raw.next_line().await.as_deref(), Some(&b"retry: 3000"[..]), "first raw line");
    let position = raw.next_line().await.expect("the join position");
    assert!(position.starts_with(b"id: "), "second raw line: {:?}", String::from_utf8_lossy(&position));
    assert_eq!(raw.next_line().await.as_deref(), Some(&b""[..]), "the blank line after the first block");
    let lines = raw.next_event_lines().await;
    for line in &lines {
        assert!(!line.contains(&b'\r'), "raw line holds a CR: {:?}", String::from_utf8_lossy(line));
        assert!(std::str::from_utf8(line).is_ok(), "raw line is not UTF-8: {line:?}");
    }
    let text: Vec<String> = lines.iter().map(|line| String::from_utf8_lossy(line).into_owned()).collect();
    assert!(text[0].starts_with("id: "), "an event starts with its id: {text:?}");
    let data = [
        "data: cr",
        "data: lf",
        "data: crlf",
        "data: ",
        "data: event: evil",
        "data: id: 999",
        "data: bad \u{fffd}\u{fffd} end",
    ];
    assert_eq!(&text[1..], data, "one data: line per payload line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_channels_get_400() {
    let server = TestServer::start_with(&[
        ("stream.filter.max_bytes", "32"),
        ("stream.filter.max_levels", "4"),
        ("stream.connection.max_filters", "3"),
    ])
    .await;
    let too_long = format!("channel={}", "a".repeat(33));
    let cases: Vec<(&str, String)> = vec![
        ("no channel parameter", "other=all".to_string()),
        ("no query", String::new()),
        ("empty channel", "channel=".to_string()),
        ("'#' before the last level", "channel=a/%23/b".to_string()),
        ("'+' inside a level", "channel=a%2B/b".to_string()),
        ("$SYS filter", "channel=%24SYS/%23".to_string()),
        ("filter over stream.filter.max_bytes", too_long),
        ("more levels than stream.filter.max_levels", "channel=a/b/c/d/e".to_string()),
        ("more channels than stream.connection.max_filters", "channel=a&channel=b&channel=c&channel=d".to_string()),
        ("NUL in a channel", "channel=a%00b".to_string()),
        ("valid channel next to an invalid one", "channel=all&channel=a/%23/b".to_string()),
    ];

    for (name, query) in cases {
        let before = server.rejected("invalid_filter").await;
        let url = if query.is_empty() {
            server.url("/api/stream.json")
        } else {
            server.url(&format!("/api/stream.json?{query}"))
        };
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 400, "{name}: status");
        let content_type = header(response.headers(), "content-type").unwrap_or("").to_string();
        assert!(content_type.starts_with("application/json"), "{name}: content-type {content_type:?}");
        let body: Value = response.json().await.unwrap_or_else(|error| panic!("{name}: body is not JSON: {error}"));
        let error = body["error"].as_str().unwrap_or("");
        assert!(!error.is_empty(), "{name}: body without an error message: {body}");
        assert_eq!(server.rejected("invalid_filter").await, before + 1, "{name}: counter invalid_filter");
    }

    let status = server.status().await;
    assert_eq!(status["hub"]["filters"], 0, "rejected requests left hub filters: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_channels_share_one_stream() {
    let server = TestServer::start().await;
    let client = SseClient::connect(&server.stream_url(&["alpha", "beta"])).await;
    let collector = tokio::spawn(async move {
        let mut client = client;
        let mut events = Vec::new();
        let mut ends = 0;
        while ends < 2 {
            let event = client.next_event().await.expect("stream ended early");
            if event.data.contains("\"end\"") {
                ends += 1;
            }
            events.push(event);
        }
        events
    });

    // Each channel keeps publish order but two channels may interleave in any order, so
    // each gets its own last message.
    // A message on no subscribed channel goes first, so that it would arrive early if at all.
    let mut messages = vec![r#"{"source_type":"gamma","id_str":"gamma-0"}"#.to_string()];
    messages.extend((0..20)
        .map(|n| {
            let source = if n % 2 == 0 { "alpha" } else { "beta" };
            format!(r#"{{"source_type":"{source}","id_str":"{source}-{n}"}}"#)
        }));
    messages.push(r#"{"source_type":"alpha","id_str":"alpha-end","text":"end"}"#.to_string());
    messages.push(r#"{"source_type":"beta","id_str":"beta-end","text":"end"}"#.to_string());
    let response = server.push(format!("[{}]", messages.join(","))).await;
    assert_eq!(response.status(), 200, "push");

    let events = tokio::time::timeout(PATIENCE, collector).await.expect("timed out").unwrap();
    assert_ids_increase(&events, "alpha and beta");
    let mut received: Vec<String> = events
        .iter()
        .map(|event| {
            let message: Value = serde_json::from_str(&event.data).expect("event data is JSON");
            message["id_str"].as_str().unwrap_or("").to_string()
        })
        .collect();
    received.sort();
    let mut expected: Vec<String> = messages
        .iter()
        .map(|message| serde_json::from_str::<Value>(message).unwrap()["id_str"].as_str().unwrap().to_string())
        .filter(|id| !id.starts_with("gamma"))
        .collect();
    expected.sort();
    assert_eq!(received, expected, "every alpha and beta message once, and no gamma message");
}

/// Publishes `payload` to `topic` as a device does, with QoS 1.
async fn device_publish(device: &MqttClient, topic: &str, payload: impl Into<Vec<u8>>) {
    device.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn covered_filter_delivers_once() {
    let server = TestServer::start().await;
    let mut client = SseClient::connect(&server.stream_url(&["twitter/#", "twitter/user/x"])).await;
    let status = server.status().await;
    assert_eq!(status["hub"]["filters"], 1, "twitter/user/x is covered by twitter/#, so one hub filter: {status}");

    let device = MqttClient::connect(server.mqtt, "covered-device").await;
    device_publish(&device, "twitter/user/x", "m1").await;
    device_publish(&device, "twitter/hashtag/y", "m2").await;
    device_publish(&device, "twitter/user/x", "m3").await;
    device_publish(&device, "twitter/user/x", "end").await;

    let events = client.collect_until(|event| event.data == "end").await;
    assert_ids_increase(&events, "covered filters");
    let data: Vec<&str> = events.iter().map(|event| event.data.as_str()).collect();
    assert_eq!(data, ["m1", "m2", "m3", "end"], "each publish once, in order");
}

/// Two filters that overlap without one covering the other both match `a/b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn overlapping_filters_deliver_once() {
    let server = TestServer::start().await;
    let client = SseClient::connect(&server.stream_url(&["a/+", "+/b"])).await;
    let collector = tokio::spawn(async move {
        let mut client = client;
        let mut events = Vec::new();
        let mut ends = 0;
        while ends < 2 {
            let event = client.next_event().await.expect("stream ended early");
            if event.data.starts_with("end") {
                ends += 1;
            }
            events.push(event);
        }
        events
    });

    let device = MqttClient::connect(server.mqtt, "overlap-device").await;
    device_publish(&device, "a/b", "both").await;
    device_publish(&device, "a/x", "end of a/+").await;
    device_publish(&device, "y/b", "end of +/b").await;

    // Each filter delivers in publish order, so once both ends arrived, every copy of "both"
    // has too.
    let events = tokio::time::timeout(PATIENCE, collector).await.expect("timed out").unwrap();
    let copies = events.iter().filter(|event| event.data == "both").count();
    assert_eq!(copies, 1, "copies of one publish to a/b on a stream of a/+ and +/b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_shares_and_drops_subscriptions() {
    // Without linger time, a filter is dropped as soon as its last client leaves.
    let server = TestServer::start_with(&[("stream.history.linger_secs", "0")]).await;
    let url = server.stream_url(&["shared/topic"]);
    let mut first = SseClient::connect(&url).await;
    let mut second = SseClient::connect(&url).await;

    let status = server.status().await;
    assert_eq!(status["hub"]["filters"], 1, "two clients of one filter share a hub filter: {status}");
    assert_eq!(status["hub"]["subscribers"], 2, "hub subscribers: {status}");

    let device = MqttClient::connect(server.mqtt, "shared-device").await;
    device_publish(&device, "shared/topic", "to both").await;
    assert_eq!(first.next_event().await.expect("an event").data, "to both", "first client");
    assert_eq!(second.next_event().await.expect("an event").data, "to both", "second client");

    drop(first);
    drop(second);
    let status = poll_status(&server, |status| status["hub"]["filters"] == 0).await;
    assert_eq!(status["hub"]["filters"], 0, "hub filters after both clients left: {status}");
    assert_eq!(status["hub"]["subscribers"], 0, "hub subscribers after both clients left: {status}");
    assert_eq!(status["sse"]["connections_open"], 0, "open SSE connections: {status}");
}

/// One publish of the IoT telemetry file.
struct DevicePublish {
    topic: String,
    payload: String,
}

/// Converts each record of `iot-telemetry.jsonl` into the publish a device would send. A
/// record with a `topic` goes there, with the `payload` string's content or the `payload`
/// object's JSON text. An rtl_433 line has no topic and goes whole to `rtl_433/<model>`.
fn iot_publishes() -> Vec<DevicePublish> {
    let path = common::data_dir().join("iot-telemetry.jsonl");
    let text = std::fs::read_to_string(&path).expect("the IoT telemetry is in ../shared/data");
    text.lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            match record["topic"].as_str() {
                Some(topic) => {
                    let payload = match &record["payload"] {
                        Value::String(content) => content.clone(),
                        object => object.to_string(),
                    };
                    DevicePublish {
                        topic: topic.to_string(),
                        payload,
                    }
                }
                None => DevicePublish {
                    topic: format!("rtl_433/{}", record["model"].as_str().expect("an rtl_433 line has a model")),
                    payload: line.to_string(),
                },
            }
        })
        .collect()
}

/// Counts `(topic, payload)` pairs.
fn count_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> BTreeMap<(&'a str, &'a str), usize> {
    let mut counts = BTreeMap::new();
    for pair in pairs {
        *counts.entry(pair).or_insert(0) += 1;
    }
    counts
}

fn count_topics<'a>(pairs: &BTreeMap<(&'a str, &'a str), usize>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for ((topic, _), n) in pairs {
        *counts.entry(*topic).or_insert(0) += n;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iot_wildcards_match_device_topics() {
    let server = TestServer::start().await;
    let mut publishes = iot_publishes();
    assert_eq!(publishes.len(), 559, "records in iot-telemetry.jsonl");
    let on_pub_env = publishes.iter().filter(|publish| publish.topic == "/pub/env").count();
    assert_eq!(on_pub_env, 424, "records on /pub/env, a topic whose first level is empty");
    let on_sonoff = publishes.iter().filter(|publish| publish.topic.starts_with("sonoff/")).count();
    assert_eq!(on_sonoff, 10, "records on sonoff/ topics");

    // One last publish per filter, matched by that filter. The one for '#' comes last of all.
    let ends = [
        ("sonoff/#", "sonoff/tele/end/STATE"),
        ("+/pub/env", "end/pub/env"),
        ("#", "end"),
    ];
    for (filter, topic) in ends {
        publishes.push(DevicePublish {
            topic: topic.to_string(),
            payload: format!(r#"{{"end of":"{filter}"}}"#),
        });
    }

    // An event carries only the payload, so the payload identifies the topic it came from.
    let mut topic_of: HashMap<&str, &str> = HashMap::new();
    for publish in &publishes {
        let previous = topic_of.insert(&publish.payload, &publish.topic);
        assert!(
            previous.is_none_or(|topic| topic == publish.topic),
            "one payload is published to two topics: {}",
            publish.payload
        );
    }

    let mut collectors = Vec::new();
    for (filter, _) in ends {
        let mut client = SseClient::connect(&server.stream_url(&[filter])).await;
        let end = format!(r#"{{"end of":"{filter}"}}"#);
        collectors.push((filter, tokio::spawn(async move { client.collect_until(|event| event.data == end).await })));
    }

    let device = MqttClient::connect(server.mqtt, "iot-device").await;
    for publish in &publishes {
        device_publish(&device, &publish.topic, publish.payload.as_bytes()).await;
    }

    for (filter, collector) in collectors {
        let events = tokio::time::timeout(PATIENCE, collector).await.expect("timed out").unwrap();
        assert_ids_increase(&events, filter);

        let expected = count_pairs(
            publishes
                .iter()
                .filter(|publish| lokstream::topic::matches(&publish.topic, filter))
                .map(|publish| (publish.topic.as_str(), publish.payload.as_str())),
        );
        let received = count_pairs(events.iter().map(|event| {
            let topic = topic_of
                .get(event.data.as_str())
                .unwrap_or_else(|| panic!("{filter}: event with a payload never published: {}", event.data));
            (*topic, event.data.as_str())
        }));
        assert_eq!(count_topics(&received), count_topics(&expected), "{filter}: events by topic");
        assert_eq!(received, expected, "{filter}: each matching publish exactly as often as it was sent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_stream_answers_404() {
    let server = TestServer::start_with(&[("stream.enabled", "false")]).await;
    let response = reqwest::get(server.stream_url(&["all"])).await.unwrap();
    assert_eq!(response.status(), 404, "stream request with stream.enabled=false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams() {
    let mut server = TestServer::start().await;
    let mut raw = RawLines::connect(&server.stream_url(&["all"])).await;
    assert_eq!(raw.next_line().await.as_deref(), Some(&b"retry: 3000"[..]), "first line");
    let position = raw.next_line().await.expect("the join position");
    assert!(position.starts_with(b"id: "), "second line: {:?}", String::from_utf8_lossy(&position));

    // The grace period is 10 s by default, so a stream left open would hold shutdown that long.
    let stopped = tokio::time::timeout(Duration::from_secs(5), server.stop()).await;
    assert!(stopped.is_ok(), "shutdown with an open stream took more than 5 s");

    let mut rest = Vec::new();
    while let Some(line) = raw.next_line().await {
        rest.push(line);
    }
    assert!(rest.iter().all(|line| line.is_empty()), "lines after shutdown: {rest:?}");
}

/// Opens a stream on a raw socket with a small receive buffer and reads only the response
/// head, so the server's writes soon block. With `after_other_request` the stream is the
/// second request of a kept-alive connection.
async fn open_stalled_stream(server: &TestServer, channel: &str, after_other_request: bool) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.http).await.unwrap();
    if after_other_request {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        while !String::from_utf8_lossy(&response).contains('}') {
            let mut chunk = [0u8; 512];
            let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await.expect("timed out reading /healthz").unwrap();
            assert!(read > 0, "connection closed after /healthz");
            response.extend_from_slice(&chunk[..read]);
        }
    }
    let request = format!(
        "GET /api/stream.json?channel={} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        common::urlencode(channel),
        server.http
    );
    stream.write_all(request.as_bytes()).await.unwrap();

    let mut head = Vec::new();
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut chunk))
            .await
            .expect("timed out reading the response head")
            .unwrap();
        assert!(read > 0, "connection closed before the response head");
        head.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200"), "stalled stream response: {head}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_disconnected() {
    let server = TestServer::start_with(&[("stream.client.queue_events", "16")]).await;
    // '#' matches every channel of a message, several per message, so the stalled socket
    // fills several times faster than a stream of 'all' would.
    let mut stalled = open_stalled_stream(&server, "#", false).await;
    let mut reader = SseClient::connect(&server.stream_url(&["all"])).await;

    // The reading client takes each batch before the next is pushed, so it never has more
    // than 10 events queued. A burst over its queue of 16 would disconnect it too.
    let lines: Vec<String> = corpus_lines().into_iter().take(5000).collect();
    let mut events = Vec::with_capacity(lines.len());
    for (index, batch) in lines.chunks(10).enumerate() {
        let response = server.push(format!("[{}]", batch.join(","))).await;
        assert_eq!(response.status(), 200, "push of batch {index}");
        for _ in batch {
            events.push(reader.next_event().await.expect("the reading client's stream ended"));
        }
    }
    let response = server.push(r#"{"source_type":"test","id_str":"slow-end"}"#).await;
    assert_eq!(response.status(), 200, "push of the last message");
    events.extend(reader.collect_until(|event| event.data.contains("\"slow-end\"")).await);

    assert_ids_increase(&events, "reading client");
    let received: Vec<(String, String)> = events
        .iter()
        .map(|event| identity(&serde_json::from_str(&event.data).expect("event data is JSON")))
        .collect();
    let mut expected: Vec<(String, String)> = lines.iter().map(|line| identity(&serde_json::from_str(line).unwrap())).collect();
    expected.push(("test".to_string(), "slow-end".to_string()));
    assert_eq!(received.len(), expected.len(), "events on the reading client");
    let first_difference = received.iter().zip(&expected).position(|(got, wanted)| got != wanted);
    assert_eq!(first_difference, None, "the reading client must get every message once, in push order");

    let status = poll_status(&server, |status| status["sse"]["slow_disconnects"].as_u64() >= Some(1)).await;
    assert!(status["sse"]["slow_disconnects"].as_u64() >= Some(1), "no slow client was disconnected: {}", status["sse"]);
    // The stalled stream is gone while its client still reads nothing.
    let status = poll_status(&server, |status| status["sse"]["connections_open"] == 1).await;
    assert_eq!(status["sse"]["connections_open"], 1, "the stalled stream is still open: {}", status["sse"]);

    // The server ended the stalled stream: what it had sent drains, then the socket closes.
    let drained = tokio::time::timeout(PATIENCE, async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            if stalled.read(&mut buffer).await.unwrap() == 0 {
                return;
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the server did not close the stream of the slow client");
}

/// Opens a stalled stream and pushes until its writes block and the hub disconnects it.
/// The stream must then close while its client still reads nothing.
async fn check_stalled_stream_closes(after_other_request: bool) {
    let server = TestServer::start().await;
    let _stalled = open_stalled_stream(&server, "#", after_other_request).await;
    let lines: Vec<String> = corpus_lines().into_iter().take(6000).collect();
    for batch in lines.chunks(100) {
        let response = server.push(format!("[{}]", batch.join(","))).await;
        assert_eq!(response.status(), 200);
    }
    let status = poll_status(&server, |status| status["sse"]["connections_open"] == 0).await;
    assert_eq!(status["sse"]["connections_open"], 0, "the stalled stream is still open: {}", status["sse"]);
    assert!(status["sse"]["slow_disconnects"].as_u64() >= Some(1), "{}", status["sse"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_closes_unread() {
    check_stalled_stream_closes(false).await;
}

/// hyper serves a stream on a connection that carried another request first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_kept_alive_stream_closes_unread() {
    check_stalled_stream_closes(true).await;
}
