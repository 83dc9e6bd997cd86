//! SSE over HTTP/2: many streams on one connection, over cleartext with prior knowledge
//! (h2c) and over TLS with ALPN. Browsers open at most six HTTP/1.1 connections to a host,
//! so a page with more streams needs HTTP/2.

mod common;

use common::{SseClient, TestServer, PATIENCE};
use futures_util::StreamExt;
use http_body_util::{BodyDataStream, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// More streams than the six HTTP/1.1 connections a browser allows per host.
const STREAMS: usize = 10;

fn user_message(user: usize) -> String {
    format!(r#"{{"source_type":"h2","id_str":"h2-{user}","screen_name":"u{user}","text":"for u{user}"}}"#)
}

fn user_channel(user: usize) -> String {
    format!("h2/user/u{user}")
}

/// One message per user channel, as a push body.
fn user_messages() -> String {
    let messages: Vec<String> = (0..STREAMS).map(user_message).collect();
    format!("[{}]", messages.join(","))
}

/// Checks that each stream gets the message of its own user channel.
async fn assert_each_gets_its_message(streams: Vec<SseClient>) {
    for (user, mut stream) in streams.into_iter().enumerate() {
        let event = stream.next_event().await.unwrap_or_else(|| panic!("stream {user} ended"));
        assert!(event.data.contains(&format!("\"h2-{user}\"")), "stream {user} got {event:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_carries_many_streams_on_one_connection() {
    let server = TestServer::start().await;
    let socket = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(socket))
        .await
        .expect("the server speaks HTTP/2 with prior knowledge");
    tokio::spawn(connection);

    let mut streams = Vec::new();
    for user in 0..STREAMS {
        let uri = format!("http://{}/api/stream.json?channel={}", server.http, user_channel(user));
        let request = hyper::Request::get(uri).body(Empty::<bytes::Bytes>::new()).unwrap();
        let mut sender = sender.clone();
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request)).await.expect("timed out").unwrap();
        assert_eq!(response.status(), 200, "stream {user}");
        assert_eq!(response.version(), hyper::Version::HTTP_2, "stream {user}");
        let body = BodyDataStream::new(response.into_body()).map(|chunk| chunk.map_err(|error| error.to_string()));
        streams.push(SseClient::from_body(body.boxed(), reqwest::header::HeaderMap::new()));
    }
    let status = server.status().await;
    assert_eq!(status["sse"]["connections_open"], STREAMS, "streams open over one connection: {status}");

    let response = server.push(user_messages()).await;
    assert_eq!(response.status(), 200, "push");
    assert_each_gets_its_message(streams).await;
}

/// Writes a self-signed certificate for `localhost` as PEM files into `dir`.
fn write_certificate(dir: &std::path::Path) -> (String, String, reqwest::Certificate) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
    let trusted = reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
    (cert_path.display().to_string(), key_path.display().to_string(), trusted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_negotiates_h2_and_keeps_http1() {
    let certificates = tempfile::tempdir().unwrap();
    let (cert, key, trusted) = write_certificate(certificates.path());
    let server = TestServer::start_with(&[("http.tls.cert", &cert), ("http.tls.key", &key)]).await;
    let base = format!("https://localhost:{}", server.http.port());
    let client = |http1_only: bool| {
        let builder = reqwest::Client::builder()
            .add_root_certificate(trusted.clone())
            .resolve("localhost", server.http);
        let builder = if http1_only { builder.http1_only() } else { builder };
        builder.build().unwrap()
    };

    // ALPN picks HTTP/2 when the client offers it, and reqwest then multiplexes every
    // request over one connection.
    let h2 = client(false);
    let mut streams = Vec::new();
    for user in 0..STREAMS {
        let url = format!("{base}/api/stream.json?channel={}", user_channel(user));
        let response = h2.get(&url).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2, "stream {user} over TLS");
        assert_eq!(response.status(), 200, "stream {user} over TLS");
        let headers = response.headers().clone();
        let body = response.bytes_stream().map(|chunk| chunk.map_err(|error| error.to_string()));
        streams.push(SseClient::from_body(body.boxed(), headers));
    }

    let http1 = client(true);
    let status: serde_json::Value = http1.get(format!("{base}/api/status.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(status["sse"]["connections_open"], STREAMS, "open streams: {status}");
    let response = http1.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_11, "a client without h2 gets HTTP/1.1");

    let response = http1
        .post(format!("{base}/api/push.json"))
        .header("content-type", "application/json")
        .body(user_messages())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "push over HTTPS");
    assert_each_gets_its_message(streams).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_certificate_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let dump_dir = dir.path().display().to_string();
    let config = lokstream::config::Config::with_overrides(&[
        ("bind.address", "127.0.0.1"),
        ("port.http", "0"),
        ("mqtt.port", "0"),
        ("mqtt.ws.port", "0"),
        ("dump.dir", &dump_dir),
        ("http.tls.cert", &missing),
        ("http.tls.key", &missing),
    ])
    .unwrap();
    let Err(error) = lokstream::server::start(config).await else {
        panic!("the server started without its certificate");
    };
    let message = error.to_string();
    assert!(message.contains("http.tls.cert"), "the error names no key: {message}");
    assert!(message.contains("missing.pem"), "the error names no file: {message}");
}
