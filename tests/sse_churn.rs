//! Streams under churn: while messages flow, hundreds of connections open and hang up,
//! some before their subscriptions are confirmed. Long-lived streams must see every
//! message once, resumes within the history must get no `gap`, and a filter that every
//! connection left must work again for the next one.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{corpus_lines, urlencode, SseClient, SseEvent, TestServer, PATIENCE};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Filter sets the churning connections ask for; the multi-filter ones make a join
/// subscribe several filters in a row.
const CHURN_QUERIES: [&[&str]; 4] = [&["all"], &["all", "twitter/#"], &["twitter/hashtag/#", "twitter/user/#"], &["test/user/churner"]];

const CHURNERS: usize = 6;
const CYCLES: usize = 40;

fn id_str_of(event: &SseEvent) -> String {
    let message: Value = serde_json::from_str(&event.data).unwrap_or_else(|_| panic!("event data is not JSON: {event:?}"));
    message["id_str"].as_str().unwrap_or("").to_string()
}

fn query(channels: &[&str]) -> String {
    let parts: Vec<String> = channels.iter().map(|channel| format!("channel={}", urlencode(channel))).collect();
    parts.join("&")
}

/// When a churning connection hangs up.
#[derive(Clone, Copy)]
enum Hangup {
    /// Right after the request, often before the join finished.
    AtOnce,
    AfterFirstByte,
    /// After the first SSE block, which carries `retry:` and the join position.
    AfterFirstBlock,
    /// After this many bytes of the response; only for filters that carry traffic.
    AfterBytes(usize),
}

/// Opens a stream on a raw socket, reads until the `hangup` point, and closes it.
async fn churn_once(server: SocketAddr, channels: &[&str], last_event_id: Option<&str>, hangup: Hangup) -> Vec<u8> {
    let mut socket = tokio::net::TcpStream::connect(server).await.unwrap();
    let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
    let request = format!("GET /api/stream.json?{} HTTP/1.1\r\nHost: churn\r\n{resume}\r\n", query(channels));
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let done = match hangup {
            Hangup::AtOnce => true,
            Hangup::AfterFirstByte => !received.is_empty(),
            Hangup::AfterFirstBlock => body_of(&received).is_some_and(|body| contains(body, b"\n\n")),
            Hangup::AfterBytes(bytes) => received.len() >= bytes,
        };
        if done {
            return received;
        }
        match tokio::time::timeout(PATIENCE, socket.read(&mut buffer)).await.expect("churning stream stalled") {
            Ok(0) | Err(_) => return received,
            Ok(count) => received.extend_from_slice(&buffer[..count]),
        }
    }
}

fn body_of(response: &[u8]) -> Option<&[u8]> {
    let end = response.windows(4).position(|window| window == b"\r\n\r\n")?;
    Some(&response[end + 4..])
}

/// Pushes `lines` in batches of five.
async fn push_corpus(push_url: String, lines: Vec<String>) {
    let http = reqwest::Client::new();
    for batch in lines.chunks(5) {
        let body = format!("[{}]", batch.join(","));
        let response = http.post(&push_url).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_survive_churn_on_their_filters() {
    // Without linger every departure drops the filter, so churn subscribes and
    // unsubscribes constantly.
    let server = TestServer::start_with(&[("stream.history.linger_secs", "0")]).await;
    let long_all = SseClient::connect(&server.stream_url(&["all"])).await;
    // `all` and `+` both match the topic `all`, and the stream must take it once. `+` also
    // matches the source channel, so this stream gets each message exactly twice.
    let long_both = SseClient::connect(&server.stream_url(&["all", "+"])).await;
    let lines: Vec<String> = corpus_lines().into_iter().take(1500).collect();
    let expected: Vec<String> = lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap()["id_str"].as_str().unwrap().to_string())
        .collect();

    let pusher = tokio::spawn(push_corpus(server.url("/api/push.json"), lines));
    let last = expected.last().unwrap().clone();
    // The stream on `all` also hands out ids for churning connections to resume from.
    let (last_id_tx, last_id_rx) = tokio::sync::watch::channel(None::<String>);
    let witness = tokio::spawn(read_until(long_all, last.clone(), 1, Some(last_id_tx)));
    let both = tokio::spawn(read_until(long_both, last.clone(), 2, None));

    let mut churners = Vec::new();
    for churner in 0..CHURNERS {
        let address = server.http;
        let last_id = last_id_rx.clone();
        churners.push(tokio::spawn(async move {
            let mut gaps = Vec::new();
            for cycle in 0..CYCLES {
                let channels = CHURN_QUERIES[(churner + cycle) % CHURN_QUERIES.len()];
                let resume_id = (cycle % 2 == 0 && channels == ["all"]).then(|| last_id.borrow().clone()).flatten();
                let quiet = channels == ["test/user/churner"];
                let hangup = match cycle % 4 {
                    0 => Hangup::AtOnce,
                    1 => Hangup::AfterFirstByte,
                    2 => Hangup::AfterFirstBlock,
                    _ if quiet => Hangup::AfterFirstBlock,
                    _ => Hangup::AfterBytes(4000),
                };
                let received = churn_once(address, channels, resume_id.as_deref(), hangup).await;
                if resume_id.is_some() && contains(&received, b"event: gap") {
                    gaps.push(String::from_utf8_lossy(&received).into_owned());
                }
            }
            gaps
        }));
    }
    for churner in churners {
        let gaps = tokio::time::timeout(PATIENCE, churner).await.expect("churn timed out").unwrap();
        assert!(gaps.is_empty(), "a resume on `all` within the history got a gap: {:?}", gaps.first());
    }
    tokio::time::timeout(PATIENCE, pusher).await.expect("pusher timed out").unwrap();

    let from_all = tokio::time::timeout(PATIENCE, witness).await.expect("`all` stream stalled").unwrap();
    let from_both = tokio::time::timeout(PATIENCE, both).await.expect("`all` + `+` stream stalled").unwrap();
    for (name, events) in [("all", &from_all), ("all + '+'", &from_both)] {
        assert!(events.iter().all(|event| event.event.is_none()), "{name}: a stream under churn got a gap");
        let ids: Vec<u64> = events.iter().map(|event| event.id.as_deref().unwrap().parse().unwrap()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{name}: event ids do not increase");
    }
    let received: Vec<String> = from_all.iter().map(id_str_of).collect();
    assert_eq!(received, expected, "`all`: every message once, in order");
    let mut counts: HashMap<String, usize> = HashMap::new();
    for event in &from_both {
        *counts.entry(id_str_of(event)).or_default() += 1;
    }
    let wrong: Vec<_> = expected.iter().filter(|id| counts.get(*id) != Some(&2)).take(5).collect();
    assert!(wrong.is_empty(), "`all` + `+`: messages not received exactly twice: {wrong:?}");

    // Every churned filter now has no connection; each must subscribe again and deliver.
    for channels in CHURN_QUERIES {
        let mut client = SseClient::connect(&server.stream_url(channels)).await;
        let marker = format!("after-churn-{}", channels.join("-")).replace(['/', '#'], "_");
        let source = if channels == ["test/user/churner"] { "test" } else { "twitter" };
        let message = format!(r##"{{"source_type":"{source}","id_str":"{marker}","text":"a marker","screen_name":"churner"}}"##);
        assert_eq!(server.push(message).await.status(), 200);
        let event = tokio::time::timeout(Duration::from_secs(10), client.collect_until(|event| id_str_of(event) == marker))
            .await
            .unwrap_or_else(|_| panic!("{channels:?} delivers nothing after the churn"));
        assert!(!event.is_empty());
    }
}

/// Reads `client` until the message `last` arrived `copies` times, and publishes each
/// event id to `ids`.
async fn read_until(mut client: SseClient, last: String, copies: usize, ids: Option<tokio::sync::watch::Sender<Option<String>>>) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut seen = 0;
    loop {
        let event = client.next_event().await.expect("a long-lived stream ended early");
        seen += usize::from(event.event.is_none() && id_str_of(&event) == last);
        let done = seen == copies;
        if let Some(ids) = &ids {
            ids.send_replace(event.id.clone());
        }
        events.push(event);
        if done {
            return events;
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

/// A connection that goes away while its join waits for the broker must not leave a later
/// filter of that join registered but never subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_dropped_halfway_leaves_no_dead_filter() {
    use futures_util::FutureExt;
    use lokstream::broker::embedded::EmbeddedBroker;
    use lokstream::broker::{Broker, Publication};
    use lokstream::hub::{Hub, HubOptions, Resume};

    let settings = [("bind.address", "127.0.0.1"), ("mqtt.port", "0"), ("mqtt.ws.port", "0")];
    let config = lokstream::config::Config::with_overrides(&settings).unwrap();
    let broker = EmbeddedBroker::start(&config).await.unwrap();
    let (session, deliveries) = broker.open_session("hub-test", 64).await.unwrap();
    let options = HubOptions {
        queue_events: 16,
        history_bytes: 1 << 20,
        linger: Duration::from_secs(60),
    };
    let hub = Hub::start(session, deliveries, options, Default::default());

    // One poll starts the join, which then waits for the first SUBACK; the request goes
    // away before the second filter is subscribed.
    let mut join = Box::pin(hub.join(vec!["first".into(), "second".into()], Resume::Live, Default::default()));
    let _ = join.as_mut().now_or_never();
    drop(join);

    let mut membership = tokio::time::timeout(PATIENCE, hub.join(vec!["second".into()], Resume::Live, Default::default()))
        .await
        .expect("join timed out")
        .expect("join failed");
    let publication = Publication {
        topic: "second".into(),
        payload: bytes::Bytes::from_static(b"{}"),
    };
    broker.publish(vec![publication]).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), membership.events.recv()).await;
    assert!(matches!(event, Ok(Some(_))), "the filter of the dropped join delivers nothing");
}

/// Polls the status until `ready` holds for the hub's counts.
async fn wait_for_hub(server: &TestServer, what: &str, ready: impl Fn(&Value) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let status = server.status().await;
        if ready(&status["hub"]) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream that joins a filter while it lingers keeps it when the linger time runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_during_linger_keeps_filter() {
    let server = TestServer::start_with(&[("stream.history.linger_secs", "1")]).await;
    drop(SseClient::connect(&server.stream_url(&["test"])).await);
    wait_for_hub(&server, "`test` to linger", |hub| hub["idle_filters"] == 1).await;
    let mut joined = SseClient::connect(&server.stream_url(&["test"])).await;

    // `other` starts lingering later than `test`, so once it is gone, the linger time of
    // `test` has run out too.
    drop(SseClient::connect(&server.stream_url(&["other"])).await);
    wait_for_hub(&server, "`other` to linger", |hub| hub["filters"] == 2 && hub["idle_filters"] == 1).await;
    wait_for_hub(&server, "`other` to be dropped", |hub| hub["filters"] == 1).await;

    let message = r#"{"source_type":"test","id_str":"after-linger","text":"still here"}"#;
    assert_eq!(server.push(message).await.status(), 200);
    let event = joined.next_event().await.expect("the stream that joined during the linger ended");
    assert_eq!(id_str_of(&event), "after-linger");
    let status = server.status().await;
    assert_eq!(status["hub"]["subscribers"], 1, "{status}");
}
