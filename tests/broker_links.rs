//! The embedded broker's local links: sessions that stall lose messages only when the
//! router's log overflows, and then report exactly how many.

use std::time::Duration;

use bytes::Bytes;
use lokstream::broker::embedded::EmbeddedBroker;
use lokstream::broker::{Broker, Delivery, Publication};
use lokstream::config::Config;

fn config(overrides: &[(&str, &str)]) -> Config {
    let mut settings = vec![("bind.address", "127.0.0.1"), ("mqtt.port", "0"), ("mqtt.ws.port", "0")];
    settings.extend_from_slice(overrides);
    Config::with_overrides(&settings).unwrap()
}

async fn next(deliveries: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Option<Delivery> {
    tokio::time::timeout(Duration::from_secs(60), deliveries.recv())
        .await
        .expect("timed out waiting for a delivery")
}

fn batch(range: std::ops::Range<usize>, payload_bytes: usize) -> Vec<Publication> {
    range
        .map(|n| Publication {
            topic: "load/test".into(),
            payload: Bytes::from(format!("{n:0width$}", width = payload_bytes)),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_gets_every_message_in_order() {
    let broker = EmbeddedBroker::start(&config(&[])).await.unwrap();
    let (session, mut deliveries) = broker.open_session("test-session", 64).await.unwrap();
    let subscription = session.subscribe("load/#").await.unwrap();

    broker.publish(batch(0..5_000, 8)).await.unwrap();
    for expected in 0..5_000 {
        match next(&mut deliveries).await {
            Some(Delivery::Message { subscription: id, topic, payload }) => {
                assert_eq!(id, subscription, "delivery carries its subscription id");
                assert_eq!(&topic[..], b"load/test");
                assert_eq!(payload, Bytes::from(format!("{expected:08}")), "messages arrive in order");
            }
            other => panic!("expected message {expected}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_session_reports_what_it_lost() {
    // Tiny logs: one 1 KiB segment per filter, so a stalled reader loses old messages.
    let broker = EmbeddedBroker::start(&config(&[("mqtt.log.segment_bytes", "1024"), ("mqtt.log.segments", "1")]))
        .await
        .unwrap();
    let (session, mut deliveries) = broker.open_session("test-stalled", 1).await.unwrap();
    session.subscribe("load/#").await.unwrap();

    // The first delivery gives the session its position in the filter's log.
    broker.publish(batch(0..1, 100)).await.unwrap();
    assert!(matches!(next(&mut deliveries).await, Some(Delivery::Message { .. })));

    // Nothing reads the deliveries while 2,000 messages of 100 bytes are published: far
    // more than the link buffers and two KiB of log hold.
    const PUBLISHED: usize = 2_000;
    broker.publish(batch(1..PUBLISHED + 1, 100)).await.unwrap();

    // A second subscription on a fresh filter acts as a marker: once its message arrives,
    // the router has served everything published before it to this session. Its SUBACK
    // comes through the stalled link, so it is made while the loop below reads.
    let (marker_tx, marker_rx) = tokio::sync::oneshot::channel();
    let marking = {
        let session = session.clone();
        async move {
            let marker = session.subscribe("marker").await.unwrap();
            marker_tx.send(marker).unwrap();
            broker
                .publish(vec![Publication { topic: "marker".into(), payload: Bytes::from_static(b"end") }])
                .await
                .unwrap();
            broker
        }
    };
    let marking = tokio::spawn(marking);
    let mut marker_rx = Some(marker_rx);
    let mut marker = None;

    let mut received = 0usize;
    let mut lost = 0u64;
    let mut last: Option<usize> = None;
    loop {
        let delivery = next(&mut deliveries).await.expect("session ended early");
        if marker.is_none() {
            marker = marker_rx.as_mut().and_then(|rx| rx.try_recv().ok());
        }
        match delivery {
            Delivery::Message { subscription, payload, .. } if Some(subscription) == marker || &payload[..] == b"end" => {
                assert_eq!(&payload[..], b"end");
                break;
            }
            Delivery::Message { payload, .. } => {
                let n: usize = std::str::from_utf8(&payload).unwrap().parse().unwrap();
                assert!(last.is_none_or(|last| n > last), "order kept: {n} after {last:?}");
                last = Some(n);
                received += 1;
            }
            Delivery::Lost { count, .. } => lost += count,
        }
    }

    let _broker = marking.await.unwrap();
    assert!(lost > 0, "a stalled session must lose messages with logs this small");
    assert_eq!(received as u64 + lost, PUBLISHED as u64, "every message is either delivered or reported lost");
}
