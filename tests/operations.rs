//! Operations: Prometheus metrics and the push token.

mod common;

use common::TestServer;

async fn metrics(server: &TestServer) -> String {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "content type {content_type}");
    response.text().await.unwrap()
}

/// The value of one sample line, such as `lokstream_messages_accepted_total 3`.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_and_rejected() {
    let server = TestServer::start().await;
    let before = metrics(&server).await;
    assert_eq!(sample(&before, "lokstream_messages_accepted_total"), Some(0.0), "{before}");
    assert_eq!(sample(&before, "lokstream_dump_writer_up"), Some(1.0), "{before}");
    assert_eq!(sample(&before, "lokstream_broker_up"), Some(1.0), "{before}");

    let http = reqwest::Client::new();
    let good = http
        .post(server.url("/api/push.json"))
        .body(r##"[{"id_str":"m1","text":"#metrics"},{"id_str":"m2"}]"##)
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    let bad = http.post(server.url("/api/push.json")).body("{nope").send().await.unwrap();
    assert_eq!(bad.status(), 400);

    let after = metrics(&server).await;
    assert_eq!(sample(&after, "lokstream_messages_accepted_total"), Some(2.0), "{after}");
    assert_eq!(
        sample(&after, "lokstream_messages_rejected_total{reason=\"invalid_json\"}"),
        Some(1.0),
        "{after}"
    );
    let publishes = sample(&after, "lokstream_channel_publishes_total").unwrap();
    assert!(publishes >= 5.0, "all, generic and a hashtag for m1, all and generic for m2: {publishes}");
    assert_eq!(sample(&after, "lokstream_dump_lines_written_total"), Some(2.0), "{after}");
    assert!(after.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_requires_the_configured_token() {
    let server = TestServer::start_with(&[("http.push.token", "s3cret-token")]).await;
    let http = reqwest::Client::new();
    let body = r#"{"id_str":"t1"}"#;

    let missing = http.post(server.url("/api/push.json")).body(body).send().await.unwrap();
    assert_eq!(missing.status(), 401, "push without a token");
    assert!(missing.headers().contains_key("www-authenticate"));

    let wrong = http
        .post(server.url("/api/push.json"))
        .bearer_auth("s3cret-tokem")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "push with a wrong token");

    let right = http
        .post(server.url("/api/push.json"))
        .bearer_auth("s3cret-token")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200, "push with the token");

    assert_eq!(server.rejected("unauthorized").await, 2);
    let stream = reqwest::get(server.stream_url(&["all"])).await.unwrap();
    assert_eq!(stream.status(), 200, "streaming stays open without a token");
}
