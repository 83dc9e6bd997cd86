//! Bad input over HTTP push and MQTT ingest: every bad payload is rejected and counted
//! under its reason, never reaches the dump, and a good message sent after it still gets
//! through.

mod common;

use common::{read_dump_lines, MqttClient, SseClient, TestServer, PATIENCE};
use rumqttc::{Packet, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Limits small enough that oversized test input stays small: 1 KiB a message and 8 KiB a
/// payload.
const SMALL_LIMITS: [(&str, &str); 2] = [
    ("stream.message.max_bytes", "1024"),
    ("stream.batch.max_bytes", "8192"),
];

/// A payload the publisher must reject, with the reason it must give.
struct BadPayload {
    name: &'static str,
    payload: Vec<u8>,
    reason: &'static str,
    /// Index of the offending message when the payload is a batch.
    index: Option<u64>,
}

/// Payloads that are bad in the same way over HTTP and over MQTT.
fn bad_payloads() -> Vec<BadPayload> {
    let long_text = "x".repeat(2000);
    vec![
        BadPayload {
            name: "invalid JSON",
            payload: br#"{"id_str":"bad-json","text":"#.to_vec(),
            reason: "invalid_json",
            index: None,
        },
        BadPayload {
            name: "invalid UTF-8",
            payload: b"{\"id_str\":\"bad-utf8\",\"text\":\"caf\xe9\"}".to_vec(),
            reason: "invalid_utf8",
            index: None,
        },
        BadPayload {
            name: "number",
            payload: b"42".to_vec(),
            reason: "not_object",
            index: None,
        },
        BadPayload {
            name: "string",
            payload: br#""just a string""#.to_vec(),
            reason: "not_object",
            index: None,
        },
        BadPayload {
            name: "array holding a number",
            payload: br#"[{"id_str":"bad-batch-head"},7]"#.to_vec(),
            reason: "not_object",
            index: Some(1),
        },
        BadPayload {
            name: "empty",
            payload: Vec::new(),
            reason: "invalid_json",
            index: None,
        },
        BadPayload {
            name: "message over stream.message.max_bytes",
            payload: format!(r#"{{"id_str":"too-large","text":"{long_text}"}}"#).into_bytes(),
            reason: "message_too_large",
            index: None,
        },
        BadPayload {
            name: "batch with an oversized second message",
            payload: format!(r#"[{{"id_str":"batch-ok-part"}},{{"text":"{long_text}"}}]"#).into_bytes(),
            reason: "message_too_large",
            index: Some(1),
        },
        BadPayload {
            name: "text field of type number",
            payload: br#"{"id_str":"bad-field","text":5}"#.to_vec(),
            reason: "invalid_field",
            index: None,
        },
        BadPayload {
            name: "statuses wrapper with a bad third message",
            payload: br#"{"statuses":[{"id_str":"wrapped-1"},{"id_str":"wrapped-2"},{"text":["a"]}]}"#.to_vec(),
            reason: "invalid_field",
            index: Some(2),
        },
    ]
}

/// Generator of good messages with distinct ids, which records every id it hands out.
struct GoodMessages {
    prefix: &'static str,
    ids: Vec<String>,
}

impl GoodMessages {
    fn new(prefix: &'static str) -> Self {
        GoodMessages {
            prefix,
            ids: Vec::new(),
        }
    }

    fn next(&mut self) -> String {
        let id = format!("{}-{}", self.prefix, self.ids.len() + 1);
        let message = serde_json::json!({ "source_type": "test", "id_str": id, "text": "a good message" });
        self.ids.push(id);
        message.to_string()
    }

    fn last_id(&self) -> &str {
        self.ids.last().expect("a good message was sent")
    }
}

/// Pushes a good message and checks that it is accepted.
async fn push_good(server: &TestServer, good: &mut GoodMessages, after: &str) {
    let response = server.push(good.next()).await;
    assert_eq!(response.status(), 200, "good push after {after} was not accepted");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 1, "good push after {after}: {body}");
}

/// Checks that an error response is JSON with a non-empty `error` and returns the body.
async fn error_body(response: reqwest::Response, case: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(content_type.starts_with("application/json"), "{case}: error content-type is {content_type:?}");
    let body: Value = response.json().await.unwrap_or_else(|error| panic!("{case}: error body is not JSON: {error}"));
    let message = body["error"].as_str().unwrap_or("");
    assert!(!message.is_empty(), "{case}: error body has no 'error' message: {body}");
    body
}

/// Stops the server and checks that the dump contains exactly `good`, one JSON object a line.
async fn assert_dump_holds_only(server: &mut TestServer, good: &GoodMessages) {
    server.stop().await;
    let lines = read_dump_lines(server.dump_dir());
    let mut ids = Vec::new();
    for line in &lines {
        let message: Value = serde_json::from_str(line).unwrap_or_else(|error| panic!("dump line is not JSON ({error}): {line}"));
        assert!(message.is_object(), "dump line is not an object: {line}");
        ids.push(message["id_str"].as_str().unwrap_or("<no id_str>").to_string());
    }
    assert_eq!(ids, good.ids, "the dump must hold the good messages, in order, and nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_rejects_bad_payloads() {
    let mut server = TestServer::start_with(&SMALL_LIMITS).await;
    let mut good = GoodMessages::new("good-http");

    for case in bad_payloads() {
        let before = server.rejected(case.reason).await;
        let response = server.push(case.payload).await;
        assert_eq!(response.status(), 400, "{}: status", case.name);
        let body = error_body(response, case.name).await;
        assert_eq!(body["reason"], case.reason, "{}: reason in the error body {body}", case.name);
        let index = case.index.map_or(Value::Null, Value::from);
        assert_eq!(body["index"], index, "{}: index in the error body {body}", case.name);
        if let Some(index) = case.index {
            let prefix = format!("message {index}:");
            let message = body["error"].as_str().unwrap_or("");
            assert!(message.starts_with(&prefix), "{}: error should start with {prefix:?}: {message}", case.name);
        }
        assert_eq!(server.rejected(case.reason).await, before + 1, "{}: counter {}", case.name, case.reason);

        push_good(&server, &mut good, case.name).await;
    }

    assert_dump_holds_only(&mut server, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_body_over_batch_limit_gets_413() {
    let mut server = TestServer::start_with(&SMALL_LIMITS).await;
    let mut good = GoodMessages::new("good-413");
    let before = server.rejected("payload_too_large").await;

    let messages: Vec<String> = (0..200).map(|n| format!(r#"{{"id_str":"in-huge-batch-{n}","text":"padding"}}"#)).collect();
    let huge = format!("[{}]", messages.join(","));
    assert!(huge.len() > 8192, "the batch must exceed stream.batch.max_bytes");
    let response = server.push(huge).await;
    assert_eq!(response.status(), 413, "status of a body over stream.batch.max_bytes");
    error_body(response, "body over the batch limit").await;
    assert_eq!(server.rejected("payload_too_large").await, before + 1, "counter payload_too_large");

    push_good(&server, &mut good, "an oversized body").await;
    assert_dump_holds_only(&mut server, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_form_without_data_is_rejected() {
    let mut server = TestServer::start_with(&SMALL_LIMITS).await;
    let mut good = GoodMessages::new("good-form");
    let before = server.rejected("invalid_form").await;

    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .form(&[("message", r#"{"id_str":"form-wrong-field"}"#)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "status of a form without field 'data'");
    error_body(response, "form without field 'data'").await;
    assert_eq!(server.rejected("invalid_form").await, before + 1, "counter invalid_form");

    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .form(&[("data", good.next())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "good form push after a form without 'data'");

    assert_dump_holds_only(&mut server, &good).await;
}

/// The rejections decided in the push handler (body too large, form field missing) carry
/// the `reason` code of the status counters, as the publisher's rejections do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn http_error_bodies_name_reason_code() {
    let server = TestServer::start_with(&SMALL_LIMITS).await;

    let huge = format!(r#"[{}]"#, vec![r#"{"text":"padding padding"}"#; 500].join(","));
    let body = error_body(server.push(huge).await, "body over the batch limit").await;
    assert_eq!(body["reason"], "payload_too_large", "reason of a body over the batch limit: {body}");

    let response = reqwest::Client::new()
        .post(server.url("/api/push.json"))
        .form(&[("message", "{}")])
        .send()
        .await
        .unwrap();
    let body = error_body(response, "form without field 'data'").await;
    assert_eq!(body["reason"], "invalid_form", "reason of a form without field 'data': {body}");
}

/// Publishes with QoS 1 and waits for the broker's PUBACK.
async fn publish_acknowledged(client: &mut MqttClient, topic: &str, payload: Vec<u8>) {
    client.client.publish(topic, QoS::AtLeastOnce, false, payload).await.unwrap();
    client.wait_for(|packet| matches!(packet, Packet::PubAck(_))).await;
}

/// Reads the next SSE event and checks that it is the good message with `id`.
async fn expect_good_event(stream: &mut SseClient, id: &str, after: &str) {
    let event = stream.next_event().await.expect("the stream on 'all' stays open");
    let message: Value = serde_json::from_str(&event.data).expect("event data is a JSON message");
    assert_eq!(message["id_str"], id, "the event after {after} must be the good message sent after it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_ingest_rejects_bad_payloads() {
    let mut server = TestServer::start_with(&SMALL_LIMITS).await;
    let mut all = SseClient::connect(&server.stream_url(&["all"])).await;
    let mut collector = MqttClient::connect(server.mqtt, "bad-input-collector").await;
    let mut good = GoodMessages::new("good-mqtt");

    for case in bad_payloads() {
        let before = server.rejected(case.reason).await;
        publish_acknowledged(&mut collector, "ingest/bad", case.payload).await;
        publish_acknowledged(&mut collector, "ingest/bad", good.next().into_bytes()).await;

        // The ingest loop takes publishes in order, so once the good message is on 'all' the
        // bad payload before it was processed.
        expect_good_event(&mut all, good.last_id(), case.name).await;
        assert_eq!(server.rejected(case.reason).await, before + 1, "{}: counter {}", case.name, case.reason);
    }

    // A publish over stream.batch.max_bytes, which is also the broker's maximum packet size,
    // never reaches ingest because the broker closes the connection. Ingest goes on.
    let mut oversized = MqttClient::connect(server.mqtt, "oversized-collector").await;
    let huge = format!(r#"{{"id_str":"huge-mqtt","text":"{}"}}"#, "x".repeat(9000));
    oversized.client.publish("ingest/bad", QoS::AtLeastOnce, false, huge).await.unwrap();
    let closed = tokio::time::timeout(PATIENCE, async {
        while let Some(packet) = oversized.acks.recv().await {
            assert!(!matches!(packet, Packet::PubAck(_)), "the broker acknowledged a publish over the size limit");
        }
    })
    .await;
    assert!(closed.is_ok(), "the broker did not close the connection that sent an oversized publish");

    publish_acknowledged(&mut collector, "ingest/bad", good.next().into_bytes()).await;
    expect_good_event(&mut all, good.last_id(), "an oversized publish").await;

    assert_dump_holds_only(&mut server, &good).await;
}

/// Appends an MQTT variable byte integer: seven bits a byte, low bits first, the high bit
/// set on every byte but the last.
fn put_remaining_length(out: &mut Vec<u8>, mut length: usize) {
    assert!(length < 268_435_456, "MQTT remaining length is at most 268435455");
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            return;
        }
    }
}

/// Appends an MQTT string or binary field: a big-endian 16-bit length, then the bytes.
fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u16::try_from(bytes.len()).expect("an MQTT field is at most 65535 bytes");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first_byte];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(body);
    packet
}

/// Builds an MQTT 3.1.1 CONNECT with a clean session, a 60 s keep-alive and no credentials.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_field(&mut body, b"MQTT");
    body.push(4); // protocol level 4 is MQTT 3.1.1
    body.push(0x02); // connect flags: clean session
    body.extend_from_slice(&60u16.to_be_bytes());
    put_field(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// Builds a QoS 0 PUBLISH, which has no packet id.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    put_field(&mut body, topic.as_bytes());
    body.extend_from_slice(payload);
    packet(0x30, &body)
}

#[test]
fn remaining_length_encoding() {
    let cases: [(usize, &[u8]); 6] = [
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (321, &[0xc1, 0x02]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
    ];
    for (length, expected) in cases {
        let mut out = Vec::new();
        put_remaining_length(&mut out, length);
        assert_eq!(out, expected, "remaining length {length}");
    }
}

/// rumqttc rejects a topic with wildcards before sending it, so this client writes the MQTT
/// packets itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ingest_topics_are_rejected() {
    let mut server = TestServer::start().await;
    let mut all = SseClient::connect(&server.stream_url(&["all"])).await;
    let mut good = GoodMessages::new("good-raw");
    let before = server.rejected("invalid_topic").await;

    let mut socket = TcpStream::connect(server.mqtt).await.unwrap();
    socket.write_all(&connect_packet("raw-wildcard-publisher")).await.unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(PATIENCE, socket.read_exact(&mut connack))
        .await
        .expect("timed out waiting for CONNACK")
        .unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepting the connection");

    // A valid message of more than 127 bytes, so the remaining length takes two bytes and
    // only the topic can be the cause of a rejection.
    let topics = [("ingest/+", "wildcard-plus"), ("ingest/#", "wildcard-hash"), ("ingest/a\0b", "nul")];
    for (topic, id) in topics {
        let message = serde_json::json!({ "source_type": "test", "id_str": id, "text": "w".repeat(150) });
        let publish = publish_packet(topic, message.to_string().as_bytes());
        assert!(publish.len() > 130, "the PUBLISH should need a two-byte remaining length");
        socket.write_all(&publish).await.unwrap();
    }
    socket.write_all(&publish_packet("ingest/raw", good.next().as_bytes())).await.unwrap();

    expect_good_event(&mut all, good.last_id(), "publishes to invalid topics").await;
    assert_eq!(server.rejected("invalid_topic").await, before + 3, "counter invalid_topic");

    let mut collector = MqttClient::connect(server.mqtt, "after-wildcard-collector").await;
    publish_acknowledged(&mut collector, "ingest/after", good.next().into_bytes()).await;
    expect_good_event(&mut all, good.last_id(), "the raw connection").await;

    socket.write_all(&[0xe0, 0x00]).await.unwrap(); // DISCONNECT
    assert_dump_holds_only(&mut server, &good).await;
}
