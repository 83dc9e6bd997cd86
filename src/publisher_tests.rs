//! Tests of `Publisher::publish_batch` against a broker that records what it is handed.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{Origin, Publisher};
use crate::broker::{Broker, BrokerError, Delivery, Listener, Publication, Session};
use crate::channels::ChannelOptions;
use crate::dump::{DumpConfig, DumpWriter, FsyncPolicy, SystemClock};
use crate::message::Limits;
use crate::stats::{RejectReason, Stats};

#[derive(Default)]
struct RecordingBroker {
    published: Mutex<Vec<Publication>>,
}

impl Broker for RecordingBroker {
    fn publish(&self, batch: Vec<Publication>) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.published.lock().unwrap().extend(batch);
        async { Ok(()) }.boxed()
    }

    fn open_session(
        &self,
        _name: &str,
        _queue: usize,
    ) -> BoxFuture<'_, Result<(Session, mpsc::Receiver<Delivery>), BrokerError>> {
        async { Err(BrokerError::Stopped) }.boxed()
    }

    fn listeners(&self) -> Vec<Listener> {
        Vec::new()
    }

    fn is_healthy(&self) -> bool {
        true
    }
}

fn publisher(broker: Arc<RecordingBroker>, stats: Arc<Stats>) -> Publisher {
    let dump_config = DumpConfig {
        write_enabled: false,
        dir: "unused".into(),
        rotate_bytes: 1 << 20,
        fsync: FsyncPolicy::Batch,
        retain_bytes: 0,
        retain_days: 0,
        import_poll_secs: 10,
    };
    let dump = DumpWriter::open(&dump_config, Arc::new(SystemClock)).expect("a disabled writer opens");
    let limits = Limits {
        message_max_bytes: 65536,
        batch_max_bytes: 1 << 20,
    };
    let channels = ChannelOptions {
        text_words: false,
        max_per_message: 256,
    };
    Publisher::new(limits, channels, 1000, dump, broker, stats)
}

/// Returns the messages published to `all`, in publish order.
fn published_on_all(broker: &RecordingBroker) -> Vec<Value> {
    let published = broker.published.lock().unwrap();
    published
        .iter()
        .filter(|publication| publication.topic == "all")
        .map(|publication| serde_json::from_slice(&publication.payload).expect("a published line is JSON"))
        .collect()
}

#[tokio::test]
async fn batch_rejects_bad_payload_alone() {
    let broker = Arc::new(RecordingBroker::default());
    let stats = Arc::new(Stats::default());
    let publisher = publisher(broker.clone(), stats.clone());
    let origin = Origin::Mqtt { topic: "ingest/test" };
    let payloads: [&[u8]; 4] = [
        br#"{"source_type":"TWITTER","id_str":"1","text":"first"}"#,
        b"{not json",
        br#"[{"source_type":"TWITTER","id_str":"2","text":"second"},{"id_str":"3"}]"#,
        br#"{"source_type":"twitter","id_str":"1","text":"first again"}"#,
    ];
    let batch: Vec<(&[u8], Origin<'_>)> = payloads.iter().map(|payload| (*payload, origin)).collect();

    let outcome = publisher.publish_batch(&batch).await.expect("the batch publishes");

    assert_eq!(outcome.accepted, 3);
    assert_eq!(outcome.duplicates, 1, "the repeated id 1 is a duplicate");
    assert_eq!(stats.rejected(RejectReason::InvalidJson), 1);
    let messages = published_on_all(&broker);
    let ids: Vec<&str> = messages.iter().map(|message| message["id_str"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1", "2", "3"], "messages keep the order of their payloads");
    let stream_ids: Vec<u64> = messages
        .iter()
        .map(|message| message["stream_id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(stream_ids.windows(2).all(|pair| pair[0] < pair[1]), "stream ids must increase: {stream_ids:?}");
    outcome.wait_written().await.expect("a disabled dump completes at once");
}

#[tokio::test]
async fn batch_of_rejected_payloads_publishes_nothing() {
    let broker = Arc::new(RecordingBroker::default());
    let stats = Arc::new(Stats::default());
    let publisher = publisher(broker.clone(), stats.clone());
    let origin = Origin::Mqtt { topic: "ingest/test" };
    let batch: [(&[u8], Origin<'_>); 2] = [(b"[1, 2]", origin), (b"\xff", origin)];

    let outcome = publisher.publish_batch(&batch).await.expect("a batch of rejections is no error");

    assert_eq!(outcome.accepted, 0);
    assert_eq!(stats.rejected(RejectReason::NotObject), 1);
    assert_eq!(stats.rejected(RejectReason::InvalidUtf8), 1);
    assert!(broker.published.lock().unwrap().is_empty(), "rejected payloads were published");
}
