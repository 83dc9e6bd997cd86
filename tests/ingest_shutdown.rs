//! Shutdown during a QoS 1 burst: every message the broker acknowledged with a PUBACK must
//! be in the dump afterwards, even those still in the broker's log when shutdown began.

mod common;

use std::collections::{HashMap, HashSet};

use common::{corpus_lines, identity, read_dump_lines, TestServer, PATIENCE};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use tokio::sync::watch;

/// Publishes `lines` at QoS 1 and returns the indexes of those acknowledged with a PUBACK,
/// until every one was or the connection ended. `acked` counts them as they come.
async fn publish_tracking_acks(address: std::net::SocketAddr, lines: Vec<String>, acked: watch::Sender<usize>) -> Vec<usize> {
    let mut options = MqttOptions::new("shutdown-publisher", address.ip().to_string(), address.port());
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    let total = lines.len();
    tokio::spawn(async move {
        for line in lines {
            if client.publish("ingest/shutdown", QoS::AtLeastOnce, false, line).await.is_err() {
                return;
            }
        }
    });

    // Packet ids are reused, so each one maps to the message it was last sent with.
    let mut sent_with: HashMap<u16, usize> = HashMap::new();
    let mut next_index = 0;
    let mut acknowledged = Vec::new();
    while acknowledged.len() < total {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                sent_with.insert(pkid, next_index);
                next_index += 1;
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                acknowledged.push(sent_with[&ack.pkid]);
                acked.send_replace(acknowledged.len());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_shutdown() {
    check_acknowledged_are_stored(&[]).await;
}

/// With an ingest filter without wildcards, the drain marker shares its topic with real
/// messages, and only its payload distinguishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_ingest_topic_drains_too() {
    check_acknowledged_are_stored(&[("stream.ingest.topic", "ingest/shutdown")]).await;
}

async fn check_acknowledged_are_stored(overrides: &[(&str, &str)]) {
    let mut server = TestServer::start_with(overrides).await;
    let lines: Vec<String> = corpus_lines().into_iter().take(4000).collect();
    let (acked_tx, mut acked_rx) = watch::channel(0);
    let publisher = tokio::spawn(publish_tracking_acks(server.mqtt, lines.clone(), acked_tx));

    // Shut down in the middle of the burst.
    tokio::time::timeout(PATIENCE, acked_rx.wait_for(|count| *count >= 500)).await.expect("no PUBACKs").unwrap();
    server.stop().await;
    let acknowledged = tokio::time::timeout(PATIENCE, publisher).await.expect("the publisher never ended").unwrap();

    let stored: HashSet<(String, String)> = read_dump_lines(server.dump_dir())
        .iter()
        .map(|line| identity(&serde_json::from_str::<Value>(line).unwrap()))
        .collect();
    let missing: Vec<(String, String)> = acknowledged
        .iter()
        .map(|index| identity(&serde_json::from_str::<Value>(&lines[*index]).unwrap()))
        .filter(|id| !stored.contains(id))
        .collect();
    assert!(missing.is_empty(), "{} of {} acknowledged messages are not in the dump, first {:?}", missing.len(), acknowledged.len(), missing.first());
    assert!(acknowledged.len() < lines.len(), "every message was acknowledged; shutdown came too late to test anything");
}
