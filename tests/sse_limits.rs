//! Limits of `/api/stream.json` over real sockets: the connection cap, over-long filters
//! and request lines answered at once, no compression, and a prompt shutdown with
//! thousands of open streams.

mod common;

use std::time::{Duration, Instant};

use common::{SseClient, TestServer, PATIENCE};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A rejection must not wait on the broker or anything else slow.
const FAST: Duration = Duration::from_secs(2);

/// Raises this process's soft limit of open files to at least `required`, within the hard
/// limit; returns the limit in force.
fn raise_open_files(required: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0, "getrlimit failed");
        if limit.rlim_cur < required {
            limit.rlim_cur = required.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "setrlimit failed");
        }
    }
    limit.rlim_cur
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_answers_503_with_retry_after() {
    let server = TestServer::start_with(&[("stream.connections.max", "2")]).await;
    let url = server.stream_url(&["all"]);
    let first = SseClient::connect(&url).await;
    let _second = SseClient::connect(&url).await;

    let started = Instant::now();
    let response = reqwest::get(&url).await.unwrap();
    assert!(started.elapsed() < FAST, "the 503 took {:?}", started.elapsed());
    assert_eq!(response.status(), 503, "third stream with stream.connections.max=2");
    let retry_after = response.headers().get("retry-after").and_then(|value| value.to_str().ok()).map(str::to_string);
    assert!(retry_after.as_deref().is_some_and(|value| value.parse::<u64>().is_ok()), "Retry-After is {retry_after:?}");
    assert!(response.headers().get("access-control-allow-origin").is_some(), "a 503 without CORS cannot be read by a page");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap_or("").contains("stream.connections.max"), "error body {body}");
    assert_eq!(server.status().await["sse"]["connections_rejected"], 1, "rejections counted");

    // A slot frees when a stream ends.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.status().await["sse"]["connections_open"] != 1 {
        assert!(Instant::now() < deadline, "the closed stream never freed its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200, "a stream after a slot freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_filter_and_request_line_rejected_fast() {
    let server = TestServer::start().await;

    let long_filter = format!("channel={}", "a".repeat(300));
    let started = Instant::now();
    let response = reqwest::get(server.url(&format!("/api/stream.json?{long_filter}"))).await.unwrap();
    assert!(started.elapsed() < FAST, "the 400 took {:?}", started.elapsed());
    assert_eq!(response.status(), 400, "filter over stream.filter.max_bytes");

    let deep_filter = format!("channel={}", vec!["a"; 40].join("/"));
    let response = reqwest::get(server.url(&format!("/api/stream.json?{deep_filter}"))).await.unwrap();
    assert_eq!(response.status(), 400, "filter over stream.filter.max_levels");

    // hyper rejects a request target of 64 KiB or more before any handler runs.
    let mut socket = TcpStream::connect(server.http).await.unwrap();
    let target = format!("/api/stream.json?channel={}", "a".repeat(70_000));
    let started = Instant::now();
    socket
        .write_all(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer)).await.expect("no answer to a long request line").ok();
    assert!(started.elapsed() < FAST, "the answer took {:?}", started.elapsed());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 414"), "answer to a 70 KB request line: {:?}", &answer[..answer.len().min(80)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_never_compressed() {
    let server = TestServer::start().await;
    let response = reqwest::Client::new()
        .get(server.stream_url(&["all"]))
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("content-encoding"), None, "the stream must not be compressed");
    assert_eq!(response.headers().get("content-length"), None, "the stream must not be buffered to a length");
}

/// Opens a stream on its own socket and reads up to the end of the `retry:` line.
async fn open_raw_stream(server: std::net::SocketAddr, path: &str) -> TcpStream {
    let mut socket = TcpStream::connect(server).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    while !received.windows(7).any(|window| window == b"retry: ") {
        let read = socket.read(&mut buffer).await.unwrap();
        assert!(read > 0, "stream closed before its first line");
        received.extend_from_slice(&buffer[..read]);
    }
    assert!(received.starts_with(b"HTTP/1.1 200"), "stream answer: {}", String::from_utf8_lossy(&received));
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_thousands_of_streams() {
    const STREAMS: usize = 3000;
    let limit = raise_open_files(4 * STREAMS as u64);
    assert!(limit >= 2 * STREAMS as u64 + 100, "the open-file limit {limit} is too low for {STREAMS} streams and their server ends");

    // A grace period far longer than the bound below, so that streams that do not end
    // would show as a slow shutdown.
    let mut server = TestServer::start_with(&[("shutdown.grace.secs", "60")]).await;
    let address = server.http;
    let paths: Vec<String> = (0..STREAMS)
        .map(|n| format!("/api/stream.json?channel=room/{}", n % 50))
        .collect();
    let sockets: Vec<TcpStream> = tokio::time::timeout(
        PATIENCE,
        futures_util::stream::iter(paths)
            .map(|path| async move { open_raw_stream(address, &path).await })
            .buffer_unordered(64)
            .collect(),
    )
    .await
    .expect("timed out opening streams");
    assert_eq!(server.status().await["sse"]["connections_open"], STREAMS, "open streams");

    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown with {STREAMS} open streams took {took:?}");

    // Every stream ended: each socket reads to its end.
    let ended = futures_util::stream::iter(sockets)
        .map(|mut socket| async move {
            let mut rest = Vec::new();
            tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest)).await.is_ok()
        })
        .buffer_unordered(256)
        .filter(|ended| std::future::ready(*ended))
        .count()
        .await;
    assert_eq!(ended, STREAMS, "streams that ended at shutdown");
}
