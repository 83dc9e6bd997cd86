//! Shared test harness: a real server in-process on port 0, and real SSE and MQTT clients.

#![allow(dead_code)]

pub mod mosquitto;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use lokstream::config::Config;
use lokstream::server::{self, RunningServer};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tempfile::TempDir;

/// Upper bound for any single wait in a test; reached only when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub fn corpus_path() -> PathBuf {
    data_dir().join("messages-real.jsonl")
}

pub fn corpus_lines() -> Vec<String> {
    let text = std::fs::read_to_string(corpus_path()).expect("the real corpus is in ../shared/data");
    text.lines().map(str::to_string).collect()
}

/// `(source_type, id_str)` of a message, its identity for deduplication.
pub fn identity(message: &serde_json::Value) -> (String, String) {
    let source = message["source_type"].as_str().unwrap_or("").to_lowercase();
    let id = message["id_str"].as_str().unwrap_or("").to_string();
    (source, id)
}

pub struct TestServer {
    pub server: Option<RunningServer>,
    pub dir: TempDir,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(&[]).await
    }

    /// Starts a server on loopback port 0 with a fresh dump directory and `overrides`.
    pub async fn start_with(overrides: &[(&str, &str)]) -> TestServer {
        TestServer::start_configured(overrides, None).await
    }

    /// Starts a replica on an external broker; `mqtt` is then that broker's address.
    pub async fn start_on_broker(broker: SocketAddr, overrides: &[(&str, &str)]) -> TestServer {
        let address = format!("tcp://{broker}");
        let mut settings = vec![("mqtt.embedded", "false"), ("stream.mqtt.address", address.as_str())];
        settings.extend_from_slice(overrides);
        TestServer::start_configured(&settings, Some(broker)).await
    }

    async fn start_configured(overrides: &[(&str, &str)], external: Option<SocketAddr>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let dump_dir = dir.path().to_str().unwrap().to_string();
        let mut settings: Vec<(&str, &str)> = vec![
            ("bind.address", "127.0.0.1"),
            ("port.http", "0"),
            ("mqtt.port", "0"),
            ("mqtt.ws.port", "0"),
            ("dump.dir", &dump_dir),
        ];
        settings.extend_from_slice(overrides);
        let config = Config::with_overrides(&settings).unwrap();
        lokstream::logging::init(&config.log);

        let server = server::start(config).await.expect("server starts");
        let http = server.http_address;
        let mqtt = external.or(server.mqtt_address()).expect("embedded broker listens");
        TestServer {
            server: Some(server),
            dir,
            http,
            mqtt,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    pub fn dump_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts the server down and waits for the dump to be flushed.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(self.url("/api/status.json"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn stream_url(&self, channels: &[&str]) -> String {
        let query: Vec<String> = channels
            .iter()
            .map(|c| format!("channel={}", urlencode(c)))
            .collect();
        self.url(&format!("/api/stream.json?{}", query.join("&")))
    }
}

pub fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// One parsed SSE event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// An SSE client over a real socket, parsing the stream as a browser would.
/// A response body as a stream of chunks, with errors as text whatever the HTTP client.
pub type BodyStream = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, String>>;

pub struct SseClient {
    body: BodyStream,
    buffer: Vec<u8>,
    pub comments: usize,
    pub retry: Option<u64>,
    pub headers: reqwest::header::HeaderMap,
}

impl SseClient {
    /// Connects; the server answers only once its subscriptions are live.
    pub async fn connect(url: &str) -> SseClient {
        SseClient::send(reqwest::Client::new().get(url)).await
    }

    /// Sends a prepared stream request, for example one with a `Last-Event-ID` header.
    pub async fn send(request: reqwest::RequestBuilder) -> SseClient {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "stream request failed: {}", response.url());
        let headers = response.headers().clone();
        let body = response.bytes_stream().map(|chunk| chunk.map_err(|error| error.to_string()));
        SseClient::from_body(body.boxed(), headers)
    }

    /// Parses SSE from any byte stream, such as bytes read from a raw socket.
    pub fn from_body(body: BodyStream, headers: reqwest::header::HeaderMap) -> SseClient {
        SseClient {
            body,
            buffer: Vec::new(),
            comments: 0,
            retry: None,
            headers,
        }
    }

    /// The next event, or `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.read_event(false))
            .await
            .expect("timed out waiting for an SSE event")
    }

    /// The next event, or `None` when the stream ended or the server cut its connection, as
    /// it does to a client it disconnects. Like a browser, it drops an event cut in two.
    pub async fn next_event_until_cut(&mut self) -> Option<SseEvent> {
        tokio::time::timeout(PATIENCE, self.read_event(true))
            .await
            .expect("timed out waiting for an SSE event")
    }

    async fn read_event(&mut self, cut_ends: bool) -> Option<SseEvent> {
        let mut event = SseEvent::default();
        let mut has_data = false;
        loop {
            while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = std::str::from_utf8(&line[..line.len() - 1]).expect("SSE stream is UTF-8");
                if line.is_empty() {
                    if has_data {
                        return Some(event);
                    }
                    event = SseEvent::default();
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (line, ""),
                };
                match field {
                    "id" => event.id = Some(value.to_string()),
                    "event" => event.event = Some(value.to_string()),
                    "retry" => self.retry = value.parse().ok(),
                    "data" => {
                        if has_data {
                            event.data.push('\n');
                        }
                        event.data.push_str(value);
                        has_data = true;
                    }
                    other => panic!("unexpected SSE field {other:?}"),
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(_)) if cut_ends => return None,
                Some(Err(error)) => panic!("SSE stream failed: {error}"),
                None => return None,
            }
        }
    }

    /// Reads events until one satisfies `done`; returns every event read, that one included.
    pub async fn collect_until(&mut self, mut done: impl FnMut(&SseEvent) -> bool) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            let event = self.next_event().await.expect("stream ended early");
            let finished = done(&event);
            events.push(event);
            if finished {
                return events;
            }
        }
    }
}

/// An MQTT client whose event loop runs in a task; incoming publishes go to a channel.
pub struct MqttClient {
    pub client: AsyncClient,
    pub publishes: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish>,
    pub acks: tokio::sync::mpsc::UnboundedReceiver<Packet>,
}

impl MqttClient {
    pub async fn connect(address: SocketAddr, client_id: &str) -> MqttClient {
        let mut options = MqttOptions::new(client_id, address.ip().to_string(), address.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(16 << 20, 16 << 20);
        let (client, eventloop) = AsyncClient::new(options, 1000);
        let (publish_tx, publishes) = tokio::sync::mpsc::unbounded_channel();
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(drive(eventloop, publish_tx, ack_tx));
        let mut client = MqttClient {
            client,
            publishes,
            acks,
        };
        client.wait_for(|packet| matches!(packet, Packet::ConnAck(_))).await;
        client
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        self.wait_for(|packet| matches!(packet, Packet::SubAck(_))).await;
    }

    pub async fn wait_for(&mut self, wanted: impl Fn(&Packet) -> bool) -> Packet {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let packet = self.acks.recv().await.expect("MQTT connection closed");
                if wanted(&packet) {
                    return packet;
                }
            }
        })
        .await
        .expect("timed out waiting for an MQTT packet")
    }

    pub async fn next_publish(&mut self) -> rumqttc::Publish {
        tokio::time::timeout(PATIENCE, self.publishes.recv())
            .await
            .expect("timed out waiting for an MQTT publish")
            .expect("MQTT connection closed")
    }
}

async fn drive(
    mut eventloop: EventLoop,
    publishes: tokio::sync::mpsc::UnboundedSender<rumqttc::Publish>,
    acks: tokio::sync::mpsc::UnboundedSender<Packet>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if publishes.send(publish).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(packet)) => {
                if acks.send(packet).is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(_)) => {}
            Err(_) => return,
        }
    }
}

/// Every line of every dump file under `dir/own`, `.txt` and `.txt.gz` alike; hidden files
/// are skipped.
pub fn read_dump_lines(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("own"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    names.sort();
    for path in names {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let mut text = String::new();
        if name.starts_with('.') {
            // Hidden files hold facts about the dump files, not messages.
            continue;
        } else if name.ends_with(".txt.gz") {
            flate2::read::MultiGzDecoder::new(std::fs::File::open(&path).unwrap())
                .read_to_string(&mut text)
                .unwrap();
        } else if name.ends_with(".txt") {
            text = std::fs::read_to_string(&path).unwrap();
        } else {
            panic!("unexpected file in the dump directory: {name}");
        }
        assert!(text.is_empty() || text.ends_with('\n'), "{name} ends with a partial line");
        lines.extend(text.lines().map(str::to_string));
    }
    lines
}

/// Counts how often each identity occurs in parsed JSON lines.
pub fn count_identities<'a>(messages: impl IntoIterator<Item = &'a serde_json::Value>) -> HashMap<(String, String), usize> {
    let mut counts = HashMap::new();
    for message in messages {
        *counts.entry(identity(message)).or_insert(0) += 1;
    }
    counts
}

impl TestServer {
    /// Sends `body` to `POST /api/push.json` as `application/json`.
    pub async fn push(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/api/push.json"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Returns the `messages.rejected.<reason>` counter of `/api/status.json`.
    pub async fn rejected(&self, reason: &str) -> u64 {
        let status = self.status().await;
        status["messages"]["rejected"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("status has no counter messages.rejected.{reason}: {status}"))
    }
}

impl SseClient {
    /// Reads until the next comment line (a heartbeat) and counts it in `comments`.
    ///
    /// Call it only while no event can arrive: an event line read here is a test failure,
    /// because this method would otherwise drop it.
    pub async fn wait_for_comment(&mut self) {
        tokio::time::timeout(PATIENCE, async {
            let comments = self.comments;
            loop {
                while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    let line = std::str::from_utf8(&line[..line.len() - 1]).expect("SSE stream is UTF-8");
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(value) = line.strip_prefix("retry:") {
                        self.retry = value.trim_start().parse().ok();
                    } else if line.starts_with("id:") {
                        // An id with no data moves the last event id and fires no event.
                    } else {
                        assert!(line.is_empty(), "expected a comment, got the event line {line:?}");
                    }
                }
                if self.comments > comments {
                    return;
                }
                match self.body.next().await {
                    Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                    Some(Err(error)) => panic!("SSE stream failed: {error}"),
                    None => panic!("SSE stream ended while waiting for a comment"),
                }
            }
        })
        .await
        .expect("timed out waiting for an SSE comment")
    }
}
