//! HTTP connections on raw sockets: the framing of streams opened by a connection's first
//! request, streams opened later on a kept-alive connection, and the time limit for
//! request heads.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads from `socket` until `done` holds for what was read, or the peer closed.
async fn read_until(socket: &mut TcpStream, received: &mut Vec<u8>, done: impl Fn(&[u8]) -> bool) {
    let mut buffer = [0u8; 4096];
    while !done(received) {
        let count = tokio::time::timeout(PATIENCE, socket.read(&mut buffer))
            .await
            .expect("timed out reading the response")
            .unwrap();
        if count == 0 {
            return;
        }
        received.extend_from_slice(&buffer[..count]);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn has(bytes: &[u8], needle: &str) -> bool {
    text(bytes).contains(needle)
}

/// Sends `request` on a new connection and returns the socket.
async fn send(server: &TestServer, request: &str) -> TcpStream {
    let mut socket = TcpStream::connect(server.http).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_stream_is_chunked() {
    let server = TestServer::start().await;
    let mut socket = send(&server, "GET /api/stream.json?channel=all HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut received = Vec::new();
    read_until(&mut socket, &mut received, |read| has(read, "retry: ")).await;
    let response = text(&received);
    let head = response.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();

    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-type: text/event-stream"), "{head}");
    assert!(head.contains("\r\ntransfer-encoding: chunked"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let body = &response[head.len() + 4..];
    let (size, rest) = body.split_once("\r\n").expect("a chunk size line");
    let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size {size:?}"));
    assert!(rest.starts_with("retry: "), "first chunk: {rest:?}");
    assert!(size <= rest.len(), "chunk of {size} bytes, {} read", rest.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_request_error_has_length() {
    let server = TestServer::start().await;
    let mut socket = send(&server, "GET /api/stream.json HTTP/1.1\r\nHost: test\r\nOrigin: https://example.org\r\n\r\n").await;
    let mut received = Vec::new();
    read_until(&mut socket, &mut received, |_| false).await;
    let response = text(&received);
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let head = head.to_ascii_lowercase();

    assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
    assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head} with body {body:?}");
    assert!(head.contains("\r\naccess-control-allow-origin: *"), "{head}");
    assert!(body.contains("missing channel"), "{body}");
}

/// A stream opened after another request on the same connection is served too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_after_other_request_works() {
    let server = TestServer::start().await;
    let mut socket = send(&server, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let mut received = Vec::new();
    read_until(&mut socket, &mut received, |read| read.windows(4).any(|w| w == b"\r\n\r\n")).await;
    assert!(has(&received, "200 OK"), "{}", text(&received));
    // The health body is short and follows the head at once.
    read_until(&mut socket, &mut received, |read| has(read, "}")).await;

    socket
        .write_all(b"GET /api/stream.json?channel=all HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut stream = Vec::new();
    read_until(&mut socket, &mut stream, |read| has(read, "retry: ")).await;
    assert!(has(&stream, "text/event-stream"), "{}", text(&stream));
    assert!(has(&stream, "retry: "), "{}", text(&stream));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_head_is_cut_off() {
    let server = TestServer::start_with(&[("http.header_timeout_secs", "1")]).await;
    let started = Instant::now();
    let mut partial = send(&server, "GET /api/stream.json?channel=all HTTP/1.1\r\nHost: te").await;
    let mut silent = TcpStream::connect(server.http).await.unwrap();

    for (name, socket) in [("partial head", &mut partial), ("no request", &mut silent)] {
        let mut received = Vec::new();
        read_until(socket, &mut received, |_| false).await;
        assert!(received.is_empty(), "{name}: response {:?}", text(&received));
    }
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "closed after {elapsed:?}, before the limit");
    assert!(elapsed < Duration::from_secs(20), "closed only after {elapsed:?}");

    // A kept-alive connection gets the same limit for its next head.
    let mut kept_alive = send(&server, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\nGET /heal").await;
    let mut received = Vec::new();
    read_until(&mut kept_alive, &mut received, |_| false).await;
    assert!(has(&received, "200 OK"), "{}", text(&received));
    assert_eq!(text(&received).matches("HTTP/1.1").count(), 1, "{}", text(&received));
}
