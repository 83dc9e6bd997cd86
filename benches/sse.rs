//! SSE benchmark: server memory per idle stream, and the time from a publish to its
//! arrival at many streams.
//!
//! The server runs as its own process (the release `lokstream` binary), so its resident
//! memory is measured apart from the clients in this process. Everything stays on
//! loopback, and every loop is bounded in count and time.
//!
//! Idle streams are measured twice: one HTTP/1.1 connection per stream, as many as the
//! open-file limit allows both ends, and HTTP/2 with `H2_STREAMS_PER_CONNECTION` streams
//! per connection.
//!
//! Run with `cargo bench --bench sse`; `SSE_BENCH_IDLE` and `SSE_BENCH_CLIENTS` change the
//! stream counts (20,000 and 1,000), `SSE_BENCH_PUBLISHES` the publishes (300).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound of any wait; the benchmark fails rather than hang.
const PATIENCE: Duration = Duration::from_secs(120);
/// Streams opened at once.
const OPEN_CONCURRENCY: usize = 256;
/// Pause between publishes in the latency run.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(10);
/// Channels the idle streams spread over.
const IDLE_CHANNELS: usize = 20;
/// Streams on one HTTP/2 connection, below hyper's default of 200 concurrent streams.
const H2_STREAMS_PER_CONNECTION: usize = 100;
/// File descriptors the server and this process need beside the streams.
const SPARE_FILES: u64 = 300;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// Raises the open-file limit (the hard one too, which needs root) so that both ends of
/// every stream fit; returns the soft limit in force.
fn raise_open_files(required: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised = libc::rlimit {
            rlim_cur: required,
            rlim_max: required.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

/// The server process, killed when dropped.
struct Server {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    async fn start(max_streams: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let sets = [
            "bind.address=127.0.0.1".to_string(),
            format!("port.http={port}"),
            "mqtt.port=0".to_string(),
            "mqtt.ws.port=0".to_string(),
            format!("dump.dir={}", dir.path().display()),
            format!("stream.connections.max={max_streams}"),
            "log.level=warn".to_string(),
        ];
        let mut command = Command::new(env!("CARGO_BIN_EXE_lokstream"));
        command.arg("--config").arg("/dev/null");
        for set in &sets {
            command.arg("--set").arg(set);
        }
        let child = command.stdin(Stdio::null()).spawn().expect("the lokstream binary starts");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(address).await.is_err() {
            assert!(Instant::now() < deadline, "the server did not listen within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Server {
            child,
            address,
            _dir: dir,
        }
    }

    /// Resident memory of the server process, from /proc.
    fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    async fn status(&self) -> serde_json::Value {
        let mut socket = TcpStream::connect(self.address).await.unwrap();
        socket.write_all(b"GET /api/status.json HTTP/1.0\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        let start = answer.windows(4).position(|window| window == b"\r\n\r\n").unwrap() + 4;
        serde_json::from_slice(&answer[start..]).unwrap()
    }

    async fn wait_for_open_streams(&self, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.status().await["sse"]["connections_open"] != count {
            assert!(Instant::now() < deadline, "the server never had {count} open streams");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn publish(&self, sequence: usize) {
        let body = format!(r#"{{"source_type":"bench","id_str":"lat-{sequence}","text":"x"}}"#);
        let request = format!(
            "POST /api/push.json HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut socket = TcpStream::connect(self.address).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        socket.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200"), "push failed");
    }
}

/// Loopback source addresses to spread connections over: one address has about 28,000
/// ephemeral ports, and closed connections keep theirs in TIME_WAIT for a minute.
const SOURCE_ADDRESSES: usize = 16;

/// Connects from 127.0.0.(2 + source % SOURCE_ADDRESSES), all of which are loopback.
async fn connect_from(address: SocketAddr, source: usize) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    let octet = 2 + (source % SOURCE_ADDRESSES) as u8;
    socket.bind(SocketAddr::from(([127, 0, 0, octet], 0))).unwrap();
    socket.connect(address).await.unwrap()
}

/// Opens a stream as HTTP/1.0, so the body comes without chunked framing, and reads up to
/// the end of the response head.
async fn open_stream(address: SocketAddr, channel: &str, source: usize) -> TcpStream {
    let mut socket = connect_from(address, source).await;
    let request = format!("GET /api/stream.json?channel={channel} HTTP/1.0\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = socket.read_u8().await.expect("stream closed in its head");
        head.push(byte);
    }
    assert!(head.starts_with(b"HTTP/1.0 200") || head.starts_with(b"HTTP/1.1 200"), "stream answer: {}", String::from_utf8_lossy(&head));
    socket
}

async fn open_streams(address: SocketAddr, count: usize, channel: impl Fn(usize) -> String) -> Vec<TcpStream> {
    let channels: Vec<String> = (0..count).map(channel).collect();
    tokio::time::timeout(
        PATIENCE,
        futures_util::stream::iter(channels.into_iter().enumerate())
            .map(|(n, channel)| async move { open_stream(address, &channel, n).await })
            .buffer_unordered(OPEN_CONCURRENCY)
            .collect(),
    )
    .await
    .expect("timed out opening streams")
}

/// Measures the server's resident memory before and after `open` opens `idle` streams.
async fn idle_memory<F, Fut, T>(label: &str, idle: usize, open: F)
where
    F: Fn(SocketAddr, usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let server = Server::start(idle + 100).await;
    // Warm the server up with a few streams, so that lazy set-up is not counted.
    let warm = open(server.address, 100).await;
    server.wait_for_open_streams(100).await;
    drop(warm);
    server.wait_for_open_streams(0).await;
    let before = server.rss_bytes();

    let started = Instant::now();
    let streams = open(server.address, idle).await;
    server.wait_for_open_streams(idle).await;
    let opened = started.elapsed();
    let after = server.rss_bytes();

    let per_stream = (after.saturating_sub(before)) as f64 / idle as f64;
    println!("{label}: {idle} idle streams over {IDLE_CHANNELS} channels, opened in {:.1} s", opened.as_secs_f64());
    println!("  server RSS before {:.1} MiB, with streams {:.1} MiB", before as f64 / 1048576.0, after as f64 / 1048576.0);
    println!("  RSS per idle stream: {per_stream:.0} bytes");
    drop(streams);
}

fn idle_channel(n: usize) -> String {
    format!("room/{}", n % IDLE_CHANNELS)
}

async fn open_http1_streams(address: SocketAddr, count: usize) -> Vec<TcpStream> {
    open_streams(address, count, idle_channel).await
}

/// Opens `count` streams over HTTP/2 connections with prior knowledge; returns the
/// response bodies, unread, and the connections' tasks.
async fn open_h2_streams(address: SocketAddr, count: usize) -> (Vec<hyper::body::Incoming>, Vec<tokio::task::JoinHandle<()>>) {
    let mut bodies = Vec::with_capacity(count);
    let mut connections = Vec::new();
    for first in (0..count).step_by(H2_STREAMS_PER_CONNECTION) {
        let socket = TcpStream::connect(address).await.unwrap();
        let (sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(socket))
                .await
                .expect("HTTP/2 handshake");
        connections.push(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let last = (first + H2_STREAMS_PER_CONNECTION).min(count);
        let responses = futures_util::stream::iter(first..last)
            .map(|n| {
                let mut sender = sender.clone();
                async move {
                    let uri = format!("http://{address}/api/stream.json?channel={}", idle_channel(n));
                    let request = hyper::Request::get(uri).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
                    let response = sender.send_request(request).await.expect("HTTP/2 stream request");
                    assert_eq!(response.status(), 200, "HTTP/2 stream answer");
                    response.into_body()
                }
            })
            .buffer_unordered(H2_STREAMS_PER_CONNECTION)
            .collect::<Vec<_>>()
            .await;
        bodies.extend(responses);
    }
    (bodies, connections)
}

/// Reads one stream and records, for each bench message, the time since its publish.
async fn record_arrivals(mut socket: TcpStream, sent: Arc<Vec<std::sync::OnceLock<Instant>>>, last: usize) -> Vec<u64> {
    const MARKER: &[u8] = b"\"id_str\":\"lat-";
    let mut latencies = Vec::with_capacity(sent.len());
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = socket.read(&mut buffer).await.unwrap();
        assert!(read > 0, "a stream closed during the latency run");
        let now = Instant::now();
        pending.extend_from_slice(&buffer[..read]);

        let mut consumed = 0;
        while let Some(offset) = pending[consumed..].windows(MARKER.len()).position(|window| window == MARKER) {
            let digits_start = consumed + offset + MARKER.len();
            let Some(length) = pending[digits_start..].iter().position(|byte| *byte == b'"') else {
                break;
            };
            let sequence: usize = std::str::from_utf8(&pending[digits_start..digits_start + length]).unwrap().parse().unwrap();
            let published = sent[sequence].get().expect("a message arrived before its publish started");
            latencies.push(now.duration_since(*published).as_micros() as u64);
            consumed = digits_start + length;
            if sequence == last {
                return latencies;
            }
        }
        // Keep a tail that may hold the start of a split marker.
        let keep_from = consumed.max(pending.len().saturating_sub(MARKER.len() + 24));
        pending.drain(..keep_from);
    }
}

async fn fan_out_latency(clients: usize, publishes: usize) {
    let server = Server::start(clients + 100).await;
    let streams = open_streams(server.address, clients, |_| "bench".to_string()).await;
    server.wait_for_open_streams(clients).await;

    let sent: Arc<Vec<std::sync::OnceLock<Instant>>> = Arc::new((0..publishes).map(|_| std::sync::OnceLock::new()).collect());
    let readers: Vec<_> = streams
        .into_iter()
        .map(|socket| tokio::spawn(record_arrivals(socket, sent.clone(), publishes - 1)))
        .collect();

    for (sequence, slot) in sent.iter().enumerate() {
        slot.set(Instant::now()).expect("each publish is timed once");
        server.publish(sequence).await;
        tokio::time::sleep(PUBLISH_INTERVAL).await;
    }

    let mut histogram = Histogram::<u64>::new(3).unwrap();
    for reader in readers {
        let latencies = tokio::time::timeout(PATIENCE, reader).await.expect("a stream never got the last message").unwrap();
        assert_eq!(latencies.len(), publishes, "a stream missed messages");
        for latency in latencies {
            histogram.record(latency).unwrap();
        }
    }
    let millis = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    println!("fan-out:                 {publishes} publishes, {PUBLISH_INTERVAL:?} apart, to {clients} streams ({} arrivals)", histogram.len());
    println!("publish to arrival:      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms", millis(0.5), millis(0.9), millis(0.99), histogram.max() as f64 / 1000.0);
}

fn main() {
    let idle = env_count("SSE_BENCH_IDLE", 20_000);
    let clients = env_count("SSE_BENCH_CLIENTS", 1_000);
    let publishes = env_count("SSE_BENCH_PUBLISHES", 300);
    // The server process and this one each need a descriptor per HTTP/1.1 stream.
    let limit = raise_open_files(idle as u64 + SPARE_FILES);
    let http1_idle = idle.min(limit.saturating_sub(SPARE_FILES) as usize);
    println!("open-file limit {limit}");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        idle_memory("HTTP/1.1", http1_idle, open_http1_streams).await;
        idle_memory("HTTP/2", idle, open_h2_streams).await;
        fan_out_latency(clients, publishes).await;
    });
}
