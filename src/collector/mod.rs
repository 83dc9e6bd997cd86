//! Collector that replays a JSON-lines dump file into a server over MQTT, one publish per line.
//!
//! The file (plain, or gzip with one or more members) is read line by line on a blocking
//! thread, so memory stays bounded whatever the file size. `publish_file` succeeds only when
//! every publish got a PUBACK (QoS 1) or was written to the socket ahead of a clean
//! DISCONNECT (QoS 0).

mod lines;
mod mqtt;

#[cfg(test)]
mod fake_broker;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, QoS};
use tokio::sync::mpsc;
use tokio::time::{self, Instant, MissedTickBehavior};

use lines::LineReader;
use mqtt::{max_payload_bytes, BrokerAddress, Session, Timeouts};

/// Port used when the broker address has none (the IANA port for MQTT over TCP).
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// Broker address used by `lokstream publish` when none is given.
pub const DEFAULT_ADDRESS: &str = "tcp://127.0.0.1:1883";

/// Topic used by `lokstream publish` when none is given. It matches the default ingest
/// filter `ingest/#`.
pub const DEFAULT_TOPIC: &str = "ingest/messages";

/// Lines read ahead of the publisher. Together with `mqtt::REQUEST_CHANNEL_CAPACITY` and
/// `mqtt::MAX_INFLIGHT` this bounds memory to about 230 lines (64 + 64 + 100).
const LINE_CHANNEL_CAPACITY: usize = 64;

/// Publishes between two progress lines in the log.
const PROGRESS_LOG_EVERY: u64 = 100_000;

/// Options of one `lokstream publish` run.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// JSON-lines file to replay, plain or gzip-compressed (detected by content, not name).
    pub file: PathBuf,
    /// `tcp://host:port` or `mqtt://host:port` (default port 1883 when omitted).
    pub address: String,
    /// Topic to publish each line to, e.g. `ingest/messages`.
    pub topic: String,
    /// 0 or 1.
    pub qos: u8,
    /// Maximum messages per second. `None` sends as fast as the broker takes them.
    pub rate: Option<f64>,
    /// MQTT client id, or `None` for a random one.
    pub client_id: Option<String>,
}

/// Command-line arguments of `lokstream publish`, convertible into [`PublishOptions`].
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// JSON-lines file to replay: `.txt`, or gzip such as `.txt.gz` (detected by content).
    pub file: PathBuf,
    /// MQTT broker address, `tcp://host[:port]` or `mqtt://host[:port]`.
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    pub address: String,
    /// Topic each line is published to.
    #[arg(long, default_value = DEFAULT_TOPIC)]
    pub topic: String,
    /// MQTT QoS, 0 or 1. With 1 the command returns only after every message was acknowledged.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Maximum messages per second, fractions allowed. Unlimited when omitted.
    #[arg(long)]
    pub rate: Option<f64>,
    /// MQTT client id. A random one when omitted.
    #[arg(long)]
    pub client_id: Option<String>,
}

impl From<PublishArgs> for PublishOptions {
    fn from(args: PublishArgs) -> Self {
        PublishOptions {
            file: args.file,
            address: args.address,
            topic: args.topic,
            qos: args.qos,
            rate: args.rate,
            client_id: args.client_id,
        }
    }
}

/// Counts of one finished run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    /// Lines published. At QoS 1 the broker acknowledged each of them.
    pub published: u64,
    /// Empty or whitespace-only lines, which were not published.
    pub skipped_blank: u64,
    /// Wall-clock time from start to the clean disconnect.
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("invalid broker address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("invalid qos {0}: expected 0 or 1 (QoS 2 is not supported)")]
    InvalidQos(u8),
    #[error("invalid rate {0}: expected a finite number of messages per second greater than 0")]
    InvalidRate(f64),
    #[error("invalid topic {topic:?}: {source}")]
    InvalidTopic {
        topic: String,
        source: crate::topic::TopicError,
    },
    #[error("failed to open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("failed to read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid gzip data in {}: {source}", path.display())]
    Gzip { path: PathBuf, source: io::Error },
    #[error(
        "line {line} of {} is longer than the maximum payload of {max_bytes} bytes",
        path.display()
    )]
    LineTooLong {
        path: PathBuf,
        line: u64,
        max_bytes: usize,
    },
    #[error("MQTT connection to {address} failed: {source}")]
    Connection {
        address: String,
        /// Boxed because rumqttc's error embeds a whole packet and would make every
        /// `Result` of this module large.
        source: Box<ConnectionError>,
    },
    #[error("MQTT broker at {address} rejected the connection: {code:?}")]
    Rejected {
        address: String,
        code: ConnectReturnCode,
    },
    #[error("MQTT connection to {address} ended before all messages were sent")]
    Closed { address: String },
    #[error("timed out waiting for {waiting_for}: no progress for {idle:?}")]
    Timeout {
        waiting_for: &'static str,
        idle: Duration,
    },
}

/// Publishes every non-blank line of `options.file` to `options.topic` and disconnects.
///
/// Returns an error instead of waiting forever when the broker cannot be reached, rejects
/// the connection, goes away mid-run or stops making progress for 30 seconds.
pub async fn publish_file(options: &PublishOptions) -> Result<PublishSummary, CollectorError> {
    publish_file_with_timeouts(options, Timeouts::DEFAULT).await
}

async fn publish_file_with_timeouts(
    options: &PublishOptions,
    timeouts: Timeouts,
) -> Result<PublishSummary, CollectorError> {
    let started = Instant::now();
    let qos = parse_qos(options.qos)?;
    let period = rate_period(options.rate)?;
    validate_topic(&options.topic)?;
    let broker = BrokerAddress::parse(&options.address)?;

    // Open the file before connecting, so a wrong path fails without touching the network.
    let reader = LineReader::open(&options.file, max_payload_bytes(&options.topic))?;
    tracing::info!(
        file = %options.file.display(),
        gzip = reader.gzip,
        broker = %broker,
        topic = %options.topic,
        qos = options.qos,
        rate = options.rate,
        "publishing file"
    );

    let mut session = Session::start(&broker, options.client_id.as_deref(), timeouts);
    session.wait_connected().await?;

    let (lines_tx, mut lines_rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
    let read_task = tokio::task::spawn_blocking(move || reader.send_lines(lines_tx));

    let published = publish_lines(&mut session, &mut lines_rx, &options.topic, qos, period).await?;

    // The line channel closes when the read task returns and drops its sender, so this
    // join does not wait on file I/O.
    let read_result = match read_task.await {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // A blocking task is cancelled only when the runtime shuts down before it starts.
        Err(cancelled) => Err(CollectorError::Read {
            path: options.file.clone(),
            source: io::Error::other(cancelled),
        }),
    };

    // Finish the session even after a read error, so that the lines published before it
    // still reach the broker.
    let finished = session.finish(qos, published).await;
    let skipped_blank = match (read_result, finished) {
        (Ok(skipped_blank), Ok(())) => skipped_blank,
        (Ok(_), Err(error)) => return Err(error),
        (Err(error), Ok(())) => return Err(error),
        (Err(read_error), Err(session_error)) => {
            tracing::warn!(error = %session_error, "MQTT session failed after a read error");
            return Err(read_error);
        }
    };

    let summary = PublishSummary {
        published,
        skipped_blank,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        published = summary.published,
        skipped_blank = summary.skipped_blank,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "published file"
    );
    Ok(summary)
}

/// Publishes each line received from `lines`, at most one per `period`, and returns the
/// number published.
async fn publish_lines(
    session: &mut Session,
    lines: &mut mpsc::Receiver<Vec<u8>>,
    topic: &str,
    qos: QoS,
    period: Option<Duration>,
) -> Result<u64, CollectorError> {
    // `--rate` is a ceiling on the load, so after a stall the pace resumes at the rate
    // instead of bursting to catch up.
    let mut ticker = period.map(|period| {
        let mut ticker = time::interval(period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker
    });

    let mut published = 0u64;
    while let Some(payload) = session.race(lines.recv()).await? {
        if let Some(ticker) = ticker.as_mut() {
            session.race(ticker.tick()).await?;
        }
        session.publish(topic, qos, payload).await?;
        published += 1;
        if published % PROGRESS_LOG_EVERY == 0 {
            tracing::info!(published, "publishing file in progress");
        }
    }
    Ok(published)
}

fn parse_qos(qos: u8) -> Result<QoS, CollectorError> {
    match qos {
        0 => Ok(QoS::AtMostOnce),
        1 => Ok(QoS::AtLeastOnce),
        other => Err(CollectorError::InvalidQos(other)),
    }
}

/// Converts messages per second into the interval between two publishes.
fn rate_period(rate: Option<f64>) -> Result<Option<Duration>, CollectorError> {
    let Some(rate) = rate else {
        return Ok(None);
    };
    if !rate.is_finite() || rate <= 0.0 {
        return Err(CollectorError::InvalidRate(rate));
    }

    // A tiny rate overflows `Duration`, and a huge one rounds to zero, which
    // `tokio::time::interval` rejects. One nanosecond is unpaced in practice.
    let period =
        Duration::try_from_secs_f64(1.0 / rate).map_err(|_| CollectorError::InvalidRate(rate))?;
    Ok(Some(period.max(Duration::from_nanos(1))))
}

/// Checks the topic up front, because rumqttc reports an invalid one only as a failed request.
fn validate_topic(topic: &str) -> Result<(), CollectorError> {
    crate::topic::validate_topic(topic).map_err(|source| CollectorError::InvalidTopic {
        topic: topic.to_owned(),
        source,
    })
}
