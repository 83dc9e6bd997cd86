//! Case 1, ingest: several MQTT publishers send the corpus as fast as the server takes it,
//! and the receivers count what arrives. On lokstream one SSE client and one MQTT
//! subscriber watch the channel `all`, and `/api/status.json` reports the dump writer's
//! lines. On a plain broker one subscriber watches the publish topic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use crate::corpus::{now_us, Corpus};
use crate::error::BenchError;
use crate::http::{self, EventStream};
use crate::mqtt::{self, Client};
use crate::receive::{self, Counters};
use crate::results::{per_sec, IngestRecord};

/// Interval between two reads of the receivers' counts and the dump writer's status.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Server name in the results.
    #[arg(long)]
    pub server: String,
    /// MQTT listener of the server.
    #[arg(long)]
    pub mqtt: SocketAddr,
    /// lokstream's HTTP listener. With it the SSE client and the dump counts are measured
    /// and publishes go to the ingest topic. Without it the server is a plain broker.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Whether lokstream writes dumps, recorded with the result.
    #[arg(long)]
    pub dumps: Option<bool>,
    /// Concurrent publishers, one MQTT connection each.
    #[arg(long, default_value_t = 4)]
    pub publishers: u32,
    /// QoS of every publish and of the subscription, 0 or 1.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Times each publisher sends the whole corpus, each time with new `id_str` values.
    #[arg(long, default_value_t = 2)]
    pub passes: u32,
    /// Seconds without a new message after which the receivers are considered done.
    #[arg(long, default_value_t = 3)]
    pub idle_secs: u64,
    /// Upper bound on the whole run, in seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
}

/// Topic the publishers use on lokstream; it matches the default ingest filter `ingest/#`.
const LOKSTREAM_TOPIC: &str = "ingest/bench";

/// Topic the publishers and the subscriber use on a plain broker.
const BROKER_TOPIC: &str = "bench/ingest";

pub async fn run(args: &IngestArgs, corpus: Arc<Corpus>) -> Result<IngestRecord, BenchError> {
    let qos = mqtt::qos(args.qos)?;
    let (publish_topic, subscribe_filter) = match args.http {
        Some(_) => (LOKSTREAM_TOPIC, "all"),
        None => (BROKER_TOPIC, BROKER_TOPIC),
    };

    let stop = CancellationToken::new();
    let sse_progress = Arc::new(Counters::default());
    let sse = match args.http {
        Some(address) => {
            let stream = EventStream::open(address, None, "/api/stream.json?channel=all").await?;
            Some(receive::spawn(stream, stop.clone(), sse_progress.clone()))
        }
        None => None,
    };
    let subscriber = Client::connect("bench-sub", args.mqtt, Some((subscribe_filter, qos))).await?;
    let dump_before = match args.http {
        Some(address) => Some(dump_lines(address).await?),
        None => None,
    };

    let run_id = format!("{:08x}", rand::random::<u32>());
    let started_us = now_us();
    let mut publishers = Vec::new();
    for index in 0..args.publishers {
        let client = Client::connect("bench-pub", args.mqtt, None).await?;
        let corpus = corpus.clone();
        let id_prefix = format!("{run_id}-{index}");
        let passes = args.passes;
        let timeout = Duration::from_secs(args.timeout_secs);
        publishers.push(tokio::spawn(async move {
            publish_corpus(client, &corpus, publish_topic, qos, passes, &id_prefix, timeout).await
        }));
    }
    let mut sent = 0;
    for publisher in publishers {
        sent += publisher
            .await
            .map_err(|error| BenchError::task("publisher", error))??;
    }
    tracing::info!(sent, server = args.server, "publishers finished");

    let primary = if sse.is_some() { sse_progress.clone() } else { subscriber.counters.clone() };
    let dump = wait_for_receivers(args, sent, &primary, &subscriber.counters, dump_before).await?;
    stop.cancel();
    if let Some(sse) = sse {
        sse.await.map_err(|error| BenchError::task("SSE receiver", error))?;
    }

    let received = primary.count();
    let received_per_sec = per_sec(received, primary.last_us().saturating_sub(started_us));
    let (mqtt_received, mqtt_per_sec) = match args.http {
        Some(_) => {
            let counters = &subscriber.counters;
            let rate = per_sec(counters.count(), counters.last_us().saturating_sub(started_us));
            (Some(counters.count()), Some(rate))
        }
        None => (None, None),
    };
    subscriber.abort();
    let broker_lost = match args.http {
        Some(address) => Some(status_number(address, &["broker", "messages_lost"]).await?),
        None => None,
    };

    Ok(IngestRecord {
        server: args.server.clone(),
        qos: args.qos,
        dumps: args.dumps,
        publishers: args.publishers,
        sent,
        received,
        received_per_sec,
        mqtt_received,
        mqtt_per_sec,
        dump_lines: dump.map(|(lines, _)| lines),
        dump_lines_per_sec: dump.map(|(lines, last_us)| per_sec(lines, last_us.saturating_sub(started_us))),
        broker_lost,
    })
}

/// Publishes the corpus `passes` times with ids `PREFIX-PASS-INDEX` and returns the count.
async fn publish_corpus(
    client: Client,
    corpus: &Corpus,
    topic: &str,
    qos: QoS,
    passes: u32,
    id_prefix: &str,
    timeout: Duration,
) -> Result<u64, BenchError> {
    let mut sent = 0;
    for pass in 0..passes {
        for index in 0..corpus.len() {
            let id = format!("{id_prefix}-{pass}-{index}");
            client.publish(topic, qos, corpus.payload(index, &id, None)).await?;
            sent += 1;
        }
    }
    let acks = if qos == QoS::AtLeastOnce { sent } else { 0 };
    client.finish(acks, timeout).await?;
    Ok(sent)
}

/// Waits until the receivers have `sent` messages each, or nothing moved for
/// `idle_secs`. Returns the dump lines written since `dump_before` and when the last of
/// them was seen, for lokstream.
async fn wait_for_receivers(
    args: &IngestArgs,
    sent: u64,
    primary: &Counters,
    subscriber: &Counters,
    dump_before: Option<u64>,
) -> Result<Option<(u64, u64)>, BenchError> {
    let deadline = now_us() + args.timeout_secs * 1_000_000;
    let idle_us = args.idle_secs * 1_000_000;
    let mut dump = dump_before.map(|_| (0, now_us()));
    let mut last_change_us = now_us();
    let mut last_seen = (0, 0, 0);

    loop {
        if let (Some(address), Some(before), Some(dump)) = (args.http, dump_before, dump.as_mut()) {
            let lines = dump_lines(address).await?.saturating_sub(before);
            if lines != dump.0 {
                *dump = (lines, now_us());
            }
        }
        let seen = (primary.count(), subscriber.count(), dump.map_or(0, |(lines, _)| lines));
        let dump_done = dump_before.is_none() || args.dumps == Some(false) || seen.2 >= seen.0;
        if seen.0 >= sent && seen.1 >= sent && dump_done {
            return Ok(dump);
        }

        let now = now_us();
        if seen != last_seen {
            last_seen = seen;
            last_change_us = now;
        } else if now - last_change_us > idle_us {
            tracing::warn!(sent, received = seen.0, subscriber = seen.1, dump_lines = seen.2, "receivers stopped short of every message");
            return Ok(dump);
        }
        if now > deadline {
            return Err(BenchError::timeout("the receivers of the ingest case", args.timeout_secs));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `dump.writer.lines_written` from lokstream's `/api/status.json`.
async fn dump_lines(address: SocketAddr) -> Result<u64, BenchError> {
    status_number(address, &["dump", "writer", "lines_written"]).await
}

/// Reads the number at `path` in lokstream's `/api/status.json`.
async fn status_number(address: SocketAddr, path: &[&str]) -> Result<u64, BenchError> {
    let status = http::get_json(address, "/api/status.json").await?;
    let value = path.iter().fold(&status, |value, key| &value[*key]);
    value.as_u64().ok_or_else(|| BenchError::Http {
        address,
        request: "GET /api/status.json".into(),
        reason: format!("no number at {} in the body", path.join(".")),
    })
}
