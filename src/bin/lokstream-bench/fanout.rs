//! Case 2, fan-out: one publisher at fixed rates and at full speed, many SSE clients on one
//! channel. Each step opens fresh clients, so that clients a server dropped in one step do
//! not count against the next. Latency runs from just before the publish to the parse of
//! the event, both on this process's monotonic clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use rumqttc::QoS;
use tokio_util::sync::CancellationToken;

use crate::corpus::{now_us, Corpus};
use crate::error::BenchError;
use crate::http::{Connection, EventStream, StreamTarget};
use crate::mqtt::Client;
use crate::receive::{self, latency_histogram, Counters};
use crate::results::{per_sec, FanoutRecord};

/// Streams opened at once while clients connect.
const CONNECT_CONCURRENCY: usize = 100;

/// Topic lokstream's publisher sends to; it matches the default ingest filter `ingest/#`.
const LOKSTREAM_TOPIC: &str = "ingest/bench";

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: StreamTarget,
    /// lokstream's MQTT listener: the publisher sends QoS 1 publishes to `ingest/bench`.
    /// Without it the publisher POSTs each message to `--publish-path` (nchan).
    #[arg(long)]
    pub mqtt: Option<SocketAddr>,
    /// Path that takes an HTTP POST of one message, used without `--mqtt`.
    #[arg(long, default_value = "/pub/bench")]
    pub publish_path: String,
    /// Keep-alive connections the HTTP publisher spreads its requests over.
    #[arg(long, default_value_t = 4)]
    pub publish_connections: usize,
    /// SSE clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: u32,
    /// Offered rates in messages per second, comma-separated; `max` sends as fast as the
    /// server takes them.
    #[arg(long, default_value = "50,200,max", value_delimiter = ',')]
    pub rates: Vec<String>,
    /// Seconds each rate is offered for.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Upper bound on the messages of one step.
    #[arg(long, default_value_t = 200_000)]
    pub max_messages: u64,
    /// Seconds without a delivery after which a step's clients are considered done.
    #[arg(long, default_value_t = 3)]
    pub drain_secs: u64,
}

/// Runs one step per offered rate.
pub async fn run(args: &FanoutArgs, corpus: Arc<Corpus>) -> Result<Vec<FanoutRecord>, BenchError> {
    let mut records = Vec::new();
    for rate in &args.rates {
        let offered = match rate.trim() {
            "max" => None,
            text => match text.parse::<f64>() {
                Ok(rate) if rate.is_finite() && rate > 0.0 => Some(rate),
                _ => {
                    return Err(BenchError::InvalidOption(format!(
                        "rate {text:?}: expected messages per second greater than 0, or max"
                    )))
                }
            },
        };
        let record = run_step(args, corpus.clone(), offered).await?;
        tracing::info!(server = args.target.server, offered, deliveries_per_sec = record.deliveries_per_sec, p99_ms = record.p99_ms, "fan-out step finished");
        records.push(record);
        // Lets the server finish closing the last step's streams before the next opens more.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(records)
}

async fn run_step(
    args: &FanoutArgs,
    corpus: Arc<Corpus>,
    offered: Option<f64>,
) -> Result<FanoutRecord, BenchError> {
    let streams: Vec<EventStream> = futures_util::stream::iter(0..args.clients)
        .map(|_| EventStream::open(args.target.http, None, &args.target.stream_path))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;

    let stop = CancellationToken::new();
    let progress = Arc::new(Counters::default());
    let receivers: Vec<_> = streams
        .into_iter()
        .map(|stream| receive::spawn(stream, stop.clone(), progress.clone()))
        .collect();

    let started_us = now_us();
    let sent = match args.mqtt {
        Some(mqtt) => publish_mqtt(args, mqtt, &corpus, offered).await?,
        None => publish_http(args, corpus.clone(), offered).await?,
    };
    let publish_us = now_us() - started_us;
    let expected = sent * u64::from(args.clients);
    wait_for_deliveries(&progress, expected, args.drain_secs).await;
    stop.cancel();

    let mut latency = latency_histogram();
    let mut deliveries = 0;
    let mut clients_closed = 0;
    for receiver in receivers {
        let receipt = receiver
            .await
            .map_err(|error| BenchError::task("SSE receiver", error))?;
        deliveries += receipt.events;
        clients_closed += u32::from(receipt.closed);
        latency
            .add(&receipt.latency_us)
            .map_err(|error| BenchError::task("histogram merge", error))?;
    }

    let millis = |quantile: f64| latency.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(FanoutRecord {
        server: args.target.server.clone(),
        clients: args.clients,
        offered_per_sec: offered,
        sent,
        publish_per_sec: per_sec(sent, publish_us),
        deliveries,
        expected,
        deliveries_per_sec: per_sec(deliveries, progress.last_us().saturating_sub(started_us)),
        clients_closed,
        p50_ms: millis(0.5),
        p99_ms: millis(0.99),
        p999_ms: millis(0.999),
        max_ms: latency.max() as f64 / 1000.0,
    })
}

/// Sends message `index` at `started + index / rate`, or back to back without a rate,
/// until the step's duration or message bound is reached. A late message goes out at
/// once, so the offered rate is kept as long as the publisher keeps up.
struct Pacer {
    started: tokio::time::Instant,
    period: Option<Duration>,
    duration: Duration,
    max_messages: u64,
}

impl Pacer {
    fn new(args: &FanoutArgs, offered: Option<f64>) -> Self {
        Pacer {
            started: tokio::time::Instant::now(),
            period: offered.map(|rate| Duration::from_secs_f64(1.0 / rate)),
            duration: Duration::from_secs(args.duration_secs),
            max_messages: args.max_messages,
        }
    }

    /// Waits until message `index` is due; false once the step is over.
    async fn wait(&self, index: u64) -> bool {
        if index >= self.max_messages || self.started.elapsed() >= self.duration {
            return false;
        }
        if let Some(period) = self.period {
            let due = self.started + period.mul_f64(index as f64);
            tokio::time::sleep_until(due).await;
        }
        true
    }
}

async fn publish_mqtt(
    args: &FanoutArgs,
    mqtt: SocketAddr,
    corpus: &Corpus,
    offered: Option<f64>,
) -> Result<u64, BenchError> {
    let client = Client::connect("bench-fanout-pub", mqtt, None).await?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let pacer = Pacer::new(args, offered);
    let mut sent = 0;
    while pacer.wait(sent).await {
        let id = format!("{run_id}-{sent}");
        let payload = corpus.payload(sent as usize, &id, Some(now_us()));
        client.publish(LOKSTREAM_TOPIC, QoS::AtLeastOnce, payload).await?;
        sent += 1;
    }
    client.finish(sent, Duration::from_secs(60)).await?;
    Ok(sent)
}

/// Hands message indexes to `publish_connections` workers, each POSTing over its own
/// keep-alive connection; the worker stamps the send time just before its request.
async fn publish_http(
    args: &FanoutArgs,
    corpus: Arc<Corpus>,
    offered: Option<f64>,
) -> Result<u64, BenchError> {
    let (indexes, queue) = flume::bounded::<u64>(args.publish_connections);
    let mut workers = Vec::new();
    for _ in 0..args.publish_connections {
        let mut connection = Connection::open(args.target.http).await?;
        let queue = queue.clone();
        let corpus = corpus.clone();
        let path = args.publish_path.clone();
        workers.push(tokio::spawn(async move {
            while let Ok(index) = queue.recv_async().await {
                let id = format!("http-{index}");
                let payload = corpus.payload(index as usize, &id, Some(now_us()));
                let response = connection.request("POST", &path, &payload).await?;
                if !(200..300).contains(&response.status) {
                    return Err(BenchError::Http {
                        address: connection.address(),
                        request: format!("POST {path}"),
                        reason: format!("status {}", response.status),
                    });
                }
            }
            Ok(())
        }));
    }
    drop(queue);

    let pacer = Pacer::new(args, offered);
    let mut sent = 0;
    while pacer.wait(sent).await {
        // Fails only when every worker has ended, which they do only on an error.
        if indexes.send_async(sent).await.is_err() {
            break;
        }
        sent += 1;
    }
    drop(indexes);

    for worker in workers {
        worker
            .await
            .map_err(|error| BenchError::task("HTTP publisher", error))??;
    }
    Ok(sent)
}

/// Waits until `expected` deliveries arrived or none came for `drain_secs`.
async fn wait_for_deliveries(progress: &Counters, expected: u64, drain_secs: u64) {
    let mut last = progress.count();
    let mut last_change = tokio::time::Instant::now();
    while progress.count() < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let count = progress.count();
        if count != last {
            last = count;
            last_change = tokio::time::Instant::now();
        } else if last_change.elapsed() > Duration::from_secs(drain_secs) {
            tracing::warn!(expected, received = count, "clients stopped short of every delivery");
            return;
        }
    }
}
