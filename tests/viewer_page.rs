//! The viewer's HTTP side without a browser: the embedded page and assets, and the busiest
//! channels it suggests.

mod common;

use common::{corpus_lines, TestServer};
use serde_json::Value;

fn header(response: &reqwest::Response, name: &str) -> String {
    response.headers().get(name).and_then(|value| value.to_str().ok()).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_assets_are_embedded_with_csp() {
    let server = TestServer::start().await;
    for (path, content_type, needle) in [
        ("/", "text/html", "/viewer/viewer.js"),
        ("/viewer/viewer.js", "text/javascript", "new EventSource"),
        ("/viewer/viewer.css", "text/css", "#messages"),
    ] {
        let response = reqwest::get(server.url(path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(header(&response, "content-type").starts_with(content_type), "{path}: content-type");
        let policy = header(&response, "content-security-policy");
        assert!(policy.contains("script-src 'self'"), "{path}: CSP {policy:?}");
        assert!(policy.contains("connect-src 'self'"), "{path}: CSP {policy:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    let script = reqwest::get(server.url("/viewer/viewer.js")).await.unwrap().text().await.unwrap();
    assert!(!script.contains("innerHTML"), "the viewer must not render through innerHTML");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_endpoint_lists_busiest_first() {
    let server = TestServer::start().await;
    let lines: Vec<String> = corpus_lines().into_iter().take(500).collect();
    let response = server.push(format!("[{}]", lines.join(","))).await;
    assert_eq!(response.status(), 200, "push");

    let body: Value = reqwest::get(server.url("/api/channels.json?limit=5")).await.unwrap().json().await.unwrap();
    let channels = body["channels"].as_array().expect("a channels array");
    assert_eq!(channels.len(), 5, "limit=5: {body}");
    assert_eq!(channels[0]["channel"], "all", "the busiest channel: {body}");
    assert_eq!(channels[0]["messages"], 500, "messages on all: {body}");
    let counts: Vec<u64> = channels.iter().map(|channel| channel["messages"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|pair| pair[0] >= pair[1]), "counts not in descending order: {counts:?}");
}
