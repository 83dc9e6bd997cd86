//! Collector that replays a JSON-lines dump file into a server over MQTT, one publish per line.
//!
//! The file (plain, or gzip with one or more members) is read line by line on a blocking
//! thread, so memory stays bounded whatever the file size. `publish_file` succeeds only when
//! every publish got a PUBACK (QoS 1) or was written to the socket ahead of a clean
//! DISCONNECT (QoS 0).

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    Outgoing, QoS,
};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{self, Instant, MissedTickBehavior};

/// Port used when the broker address has none (the IANA port for MQTT over TCP).
pub const DEFAULT_MQTT_PORT: u16 = 1883;

/// Broker address used by `lokstream publish` when none is given.
pub const DEFAULT_ADDRESS: &str = "tcp://127.0.0.1:1883";

/// Topic used by `lokstream publish` when none is given. It matches the default ingest
/// filter `ingest/#`.
pub const DEFAULT_TOPIC: &str = "ingest/messages";

/// Maximum MQTT packet size in bytes, for both directions. Dump lines can be longer than
/// the rumqttc default of 10 KiB.
const MAX_PACKET_BYTES: usize = 16 * 1024 * 1024;

/// Bytes a PUBLISH packet needs besides topic and payload: fixed header (1), remaining
/// length (up to 4), topic length (2) and packet id (2, QoS 1 only but counted always).
const PUBLISH_OVERHEAD_BYTES: usize = 9;

/// Maximum QoS 1 publishes awaiting PUBACK. It keeps the connection busy across round
/// trips without letting rumqttc hold more than 100 unacknowledged payloads in memory.
const MAX_INFLIGHT: u16 = 100;

/// MQTT keep-alive interval sent in CONNECT.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Capacity of the rumqttc request channel between `AsyncClient` and `EventLoop`.
const REQUEST_CHANNEL_CAPACITY: usize = 64;

/// Lines read ahead of the publisher. Together with the request channel and the inflight
/// window this bounds memory to about 230 lines (64 + 64 + 100).
const LINE_CHANNEL_CAPACITY: usize = 64;

/// Read buffer for the dump file, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Magic bytes that open every gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

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

/// Bounds on the waits of one run.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    /// Time without any progress (CONNACK, accepted request, written publish, PUBACK)
    /// after which the run fails.
    stall: Duration,
    /// Time given to the broker to close the connection after DISCONNECT.
    close_grace: Duration,
}

impl Timeouts {
    const DEFAULT: Timeouts = Timeouts {
        stall: Duration::from_secs(30),
        close_grace: Duration::from_secs(5),
    };
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

/// Largest line payload that fits in one PUBLISH on `topic`.
fn max_payload_bytes(topic: &str) -> usize {
    MAX_PACKET_BYTES - PUBLISH_OVERHEAD_BYTES - topic.len()
}

/// Host and port of an MQTT broker reached over plain TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrokerAddress {
    /// Host name or IP address. An IPv6 address keeps its brackets because rumqttc joins
    /// `host:port` for `tokio::net::lookup_host`.
    host: String,
    port: u16,
}

impl BrokerAddress {
    /// Parses `tcp://host[:port]` or `mqtt://host[:port]`. An IPv6 host must be in brackets.
    fn parse(address: &str) -> Result<Self, CollectorError> {
        let invalid = |reason: &str| CollectorError::InvalidAddress {
            address: address.to_owned(),
            reason: reason.to_owned(),
        };

        let Some((scheme, rest)) = address.split_once("://") else {
            return Err(invalid(
                "missing scheme, expected tcp://host:port or mqtt://host:port",
            ));
        };
        if !scheme.eq_ignore_ascii_case("tcp") && !scheme.eq_ignore_ascii_case("mqtt") {
            return Err(invalid("unsupported scheme, expected tcp:// or mqtt://"));
        }

        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(invalid("expected only host and port after the scheme"));
        }

        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let Some((inside, after)) = bracketed.split_once(']') else {
                return Err(invalid("missing ']' after the IPv6 address"));
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return Err(invalid("expected ':port' after the IPv6 address")),
                },
            };
            (&authority[..inside.len() + 2], port)
        } else {
            match authority.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(invalid("an IPv6 host must be enclosed in brackets"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };

        if host.is_empty() || host == "[]" {
            return Err(invalid("missing host"));
        }
        let port = match port {
            None => DEFAULT_MQTT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid("port must be a number from 1 to 65535")),
            },
        };

        Ok(BrokerAddress {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.host, self.port)
    }
}

/// One line of the dump file.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// Line bytes without the line ending.
    Payload(Vec<u8>),
    /// Empty or whitespace-only line.
    Blank,
}

/// Line reader over a plain or gzip-compressed file, with a cap on the line length.
struct LineReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    gzip: bool,
    /// Number of the last line read, counting from 1.
    line_number: u64,
    max_line_bytes: usize,
}

impl LineReader {
    /// Opens `path` and detects gzip by its magic bytes, so a compressed file is read
    /// whatever its name. Lines longer than `max_line_bytes` (without the line ending) fail.
    fn open(path: &Path, max_line_bytes: usize) -> Result<Self, CollectorError> {
        let open_error = |source| CollectorError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(open_error)?;

        // Reading the first bytes apart, instead of peeking into a buffer, handles short
        // reads and works on pipes, which cannot seek back.
        let mut head = Vec::with_capacity(GZIP_MAGIC.len());
        (&mut file)
            .take(GZIP_MAGIC.len() as u64)
            .read_to_end(&mut head)
            .map_err(open_error)?;
        let gzip = head == GZIP_MAGIC;
        let buffered =
            BufReader::with_capacity(READ_BUFFER_BYTES, io::Cursor::new(head).chain(file));

        let reader: Box<dyn BufRead + Send> = if gzip {
            // `MultiGzDecoder` continues past the end of a member, as `gzip -d` does for
            // concatenated files.
            let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
            Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
        } else {
            Box::new(buffered)
        };

        Ok(LineReader {
            path: path.to_owned(),
            reader,
            gzip,
            line_number: 0,
            max_line_bytes,
        })
    }

    /// Reads the next line, or `None` at the end of the file. The last line may lack a `\n`.
    fn next_line(&mut self) -> Result<Option<Line>, CollectorError> {
        // Reading at most the maximum payload plus "\r\n" keeps a file without newlines
        // from growing the buffer without bound.
        let limit = self.max_line_bytes + 2;
        let mut buffer = Vec::new();
        let read = (&mut self.reader)
            .take(limit as u64)
            .read_until(b'\n', &mut buffer)
            .map_err(|source| self.read_error(source))?;
        if read == 0 {
            return Ok(None);
        }
        self.line_number += 1;

        let too_long = CollectorError::LineTooLong {
            path: self.path.clone(),
            line: self.line_number,
            max_bytes: self.max_line_bytes,
        };
        if read == limit && !buffer.ends_with(b"\n") {
            return Err(too_long);
        }

        let content_len = strip_line_ending(&buffer).len();
        if content_len > self.max_line_bytes {
            return Err(too_long);
        }
        if is_blank(&buffer[..content_len]) {
            return Ok(Some(Line::Blank));
        }
        buffer.truncate(content_len);
        Ok(Some(Line::Payload(buffer)))
    }

    /// Sends every non-blank line into `lines` and returns the number of blank lines.
    /// Stops early without error when the receiver is gone, because the publisher then
    /// reports its own error.
    fn send_lines(mut self, lines: mpsc::Sender<Vec<u8>>) -> Result<u64, CollectorError> {
        let mut skipped_blank = 0;
        while let Some(line) = self.next_line()? {
            match line {
                Line::Blank => skipped_blank += 1,
                Line::Payload(payload) => {
                    if lines.blocking_send(payload).is_err() {
                        break;
                    }
                }
            }
        }
        Ok(skipped_blank)
    }

    /// Classifies a read error. flate2 1.1 reports corrupt or truncated gzip data with
    /// these kinds.
    fn read_error(&self, source: io::Error) -> CollectorError {
        let path = self.path.clone();
        let corrupt = matches!(
            source.kind(),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        );
        if self.gzip && corrupt {
            CollectorError::Gzip { path, source }
        } else {
            CollectorError::Read { path, source }
        }
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Counts of the events the event loop task has seen so far.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    connected: bool,
    publishes_written: u64,
    pubacks: u64,
}

type EventLoopOutcome = Result<(), CollectorError>;

/// MQTT connection driven by its own task, which stops at the first connection error
/// instead of reconnecting.
struct Session {
    client: AsyncClient,
    event_loop: JoinHandle<EventLoopOutcome>,
    progress: watch::Receiver<Progress>,
    address: String,
    timeouts: Timeouts,
}

impl Session {
    fn start(broker: &BrokerAddress, client_id: Option<&str>, timeouts: Timeouts) -> Self {
        // The generated id has 22 letters and digits, within the 1 to 23 that MQTT 3.1.1
        // requires every broker to accept.
        let client_id = match client_id {
            Some(client_id) => client_id.to_owned(),
            None => format!("lokpub{:016x}", rand::random::<u64>()),
        };

        let mut mqtt_options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        mqtt_options
            .set_clean_session(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);

        let (client, event_loop) = AsyncClient::new(mqtt_options, REQUEST_CHANNEL_CAPACITY);
        let (progress_tx, progress) = watch::channel(Progress::default());
        let address = broker.to_string();
        let event_loop = tokio::spawn(drive_event_loop(
            event_loop,
            progress_tx,
            address.clone(),
            timeouts.close_grace,
        ));

        Session {
            client,
            event_loop,
            progress,
            address,
            timeouts,
        }
    }

    /// Runs `future` unless the event loop ends first, which it only does on a connection
    /// error before `finish`.
    async fn race<T>(&mut self, future: impl Future<Output = T>) -> Result<T, CollectorError> {
        tokio::select! {
            biased;
            outcome = &mut self.event_loop => Err(unexpected_end(outcome, &self.address)),
            value = future => Ok(value),
        }
    }

    async fn wait_connected(&mut self) -> Result<(), CollectorError> {
        self.wait_for_progress("CONNACK from the MQTT broker", |progress| {
            progress.connected
        })
        .await?;
        tracing::debug!(broker = %self.address, "connected to MQTT broker");
        Ok(())
    }

    /// Hands one publish to the event loop. This waits while the inflight window and the
    /// request channel are full.
    async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: Vec<u8>,
    ) -> Result<(), CollectorError> {
        let stall = self.timeouts.stall;
        let client = self.client.clone();
        let sent = self
            .race(time::timeout(
                stall,
                client.publish(topic, qos, false, payload),
            ))
            .await?;
        match sent {
            Ok(Ok(())) => {
                tracing::trace!(topic, "queued publish");
                Ok(())
            }
            // The request channel closes only when the event loop task has ended.
            Ok(Err(_request)) => Err(self.event_loop_outcome().await),
            Err(_elapsed) => Err(CollectorError::Timeout {
                waiting_for: "the MQTT broker to accept more messages",
                idle: stall,
            }),
        }
    }

    /// Waits until every publish was acknowledged (QoS 1), then disconnects and waits until
    /// the event loop has written everything queued, DISCONNECT last.
    async fn finish(&mut self, qos: QoS, published: u64) -> Result<(), CollectorError> {
        if qos == QoS::AtLeastOnce {
            self.wait_for_progress("PUBACK for every message", |progress| {
                progress.pubacks >= published
            })
            .await?;
        }

        let stall = self.timeouts.stall;
        let client = self.client.clone();
        match self.race(time::timeout(stall, client.disconnect())).await? {
            Ok(Ok(())) => {}
            Ok(Err(_request)) => return Err(self.event_loop_outcome().await),
            Err(_elapsed) => {
                return Err(CollectorError::Timeout {
                    waiting_for: "the MQTT client to accept DISCONNECT",
                    idle: stall,
                })
            }
        }

        // The task returns once DISCONNECT is written, and requests are written in order,
        // so every publish went out before it. Any publish written resets the stall timer.
        loop {
            let changed = tokio::select! {
                biased;
                outcome = &mut self.event_loop => return flatten_outcome(outcome, &self.address),
                changed = time::timeout(stall, self.progress.changed()) => changed,
            };
            match changed {
                Ok(Ok(())) => continue,
                Ok(Err(_sender_dropped)) => {
                    let outcome = (&mut self.event_loop).await;
                    return flatten_outcome(outcome, &self.address);
                }
                Err(_elapsed) => {
                    return Err(CollectorError::Timeout {
                        waiting_for: "queued messages and DISCONNECT to be sent",
                        idle: stall,
                    })
                }
            }
        }
    }

    /// Waits until `done` holds, failing after the stall timeout passes without progress.
    async fn wait_for_progress(
        &mut self,
        waiting_for: &'static str,
        done: impl Fn(&Progress) -> bool,
    ) -> Result<(), CollectorError> {
        let stall = self.timeouts.stall;
        loop {
            if done(&self.progress.borrow_and_update()) {
                return Ok(());
            }

            let mut progress = self.progress.clone();
            match self.race(time::timeout(stall, progress.changed())).await? {
                Ok(Ok(())) => continue,
                Ok(Err(_sender_dropped)) => return Err(self.event_loop_outcome().await),
                Err(_elapsed) => {
                    return Err(CollectorError::Timeout {
                        waiting_for,
                        idle: stall,
                    })
                }
            }
        }
    }

    /// Error of an event loop task that dropped its progress sender or request receiver, so
    /// it is past its last await point and this join does not wait on the network.
    async fn event_loop_outcome(&mut self) -> CollectorError {
        let outcome = (&mut self.event_loop).await;
        unexpected_end(outcome, &self.address)
    }
}

impl Drop for Session {
    /// Stops the event loop task on an early return, which would otherwise keep the
    /// connection open with pings. Aborting a finished task does nothing.
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

fn flatten_outcome(
    outcome: Result<EventLoopOutcome, JoinError>,
    address: &str,
) -> EventLoopOutcome {
    match outcome {
        Ok(result) => result,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_cancelled) => Err(CollectorError::Closed {
            address: address.to_owned(),
        }),
    }
}

/// Error for an event loop task that ended while the run still needed it.
fn unexpected_end(outcome: Result<EventLoopOutcome, JoinError>, address: &str) -> CollectorError {
    match flatten_outcome(outcome, address) {
        Ok(()) => CollectorError::Closed {
            address: address.to_owned(),
        },
        Err(error) => error,
    }
}

/// Polls the rumqttc event loop, counting CONNACK, written publishes and PUBACKs into
/// `progress`. Returns after DISCONNECT is written, or with the first connection error,
/// because polling again would reconnect and could publish lines twice.
async fn drive_event_loop(
    mut event_loop: EventLoop,
    progress: watch::Sender<Progress>,
    address: String,
    close_grace: Duration,
) -> EventLoopOutcome {
    loop {
        let event = match event_loop.poll().await {
            Ok(event) => event,
            Err(ConnectionError::ConnectionRefused(code)) => {
                return Err(CollectorError::Rejected { address, code });
            }
            Err(source) => {
                return Err(CollectorError::Connection {
                    address,
                    source: Box::new(source),
                })
            }
        };

        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                progress.send_modify(|progress| progress.connected = true);
            }
            Event::Incoming(Incoming::PubAck(_)) => {
                progress.send_modify(|progress| progress.pubacks += 1);
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                progress.send_modify(|progress| progress.publishes_written += 1);
            }
            Event::Outgoing(Outgoing::Disconnect) => {
                wait_for_broker_close(&mut event_loop, &address, close_grace).await;
                return Ok(());
            }
            other => tracing::trace!(event = ?other, "MQTT event"),
        }
    }
}

/// Waits up to `close_grace` for the broker to close the connection after DISCONNECT, which
/// MQTT 3.1.1 says a server should do. Closing a socket that still has unread input sends
/// a TCP reset, which can discard data the broker has not read yet.
async fn wait_for_broker_close(event_loop: &mut EventLoop, address: &str, close_grace: Duration) {
    let closed = time::timeout(close_grace, async {
        loop {
            // The first error is the closed connection, and polling after it would reconnect.
            if let Err(error) = event_loop.poll().await {
                return error;
            }
        }
    })
    .await;

    match closed {
        Ok(error) => tracing::debug!(broker = address, %error, "MQTT broker closed the connection"),
        Err(_elapsed) => tracing::debug!(
            broker = address,
            grace_ms = close_grace.as_millis() as u64,
            "MQTT broker kept the connection open after DISCONNECT, closing it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    use bytes::BytesMut;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use rumqttc::mqttbytes::v4::{self as packets, Packet};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).expect("gzip in memory");
        encoder.finish().expect("gzip in memory")
    }

    fn write_file(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write test file");
        path
    }

    fn read_all(path: &Path, max_line_bytes: usize) -> Result<Vec<Line>, CollectorError> {
        let mut reader = LineReader::open(path, max_line_bytes)?;
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line()? {
            lines.push(line);
        }
        Ok(lines)
    }

    fn payload(text: &str) -> Line {
        Line::Payload(text.as_bytes().to_vec())
    }

    #[test]
    fn address_parses_valid_forms() {
        let cases = [
            ("tcp://127.0.0.1:1883", "127.0.0.1", 1883),
            ("mqtt://broker.example:8883", "broker.example", 8883),
            ("tcp://localhost", "localhost", DEFAULT_MQTT_PORT),
            ("MQTT://localhost:1884/", "localhost", 1884),
            ("tcp://[::1]:1885", "[::1]", 1885),
            ("tcp://[::1]", "[::1]", DEFAULT_MQTT_PORT),
        ];
        for (input, host, port) in cases {
            let parsed = BrokerAddress::parse(input);
            assert!(parsed.is_ok(), "{input}: {parsed:?}");
            let parsed = parsed.expect("checked above");
            assert_eq!(parsed.host, host, "{input}");
            assert_eq!(parsed.port, port, "{input}");
        }
    }

    #[test]
    fn address_rejects_invalid_forms() {
        let cases = [
            "127.0.0.1:1883",
            "ssl://127.0.0.1:8883",
            "ws://127.0.0.1:9001",
            "tcp://",
            "tcp://:1883",
            "tcp://host:0",
            "tcp://host:65536",
            "tcp://host:port",
            "tcp://host:",
            "tcp://::1:1883",
            "tcp://[::1",
            "tcp://[::1]1883",
            "tcp://[]:1883",
            "tcp://host:1883/topic",
            "tcp://user@host:1883",
        ];
        for input in cases {
            let parsed = BrokerAddress::parse(input);
            assert!(
                matches!(parsed, Err(CollectorError::InvalidAddress { .. })),
                "{input}: {parsed:?}"
            );
        }
    }

    #[test]
    fn qos_accepts_only_0_and_1() {
        assert_eq!(parse_qos(0).ok(), Some(QoS::AtMostOnce));
        assert_eq!(parse_qos(1).ok(), Some(QoS::AtLeastOnce));
        let error = parse_qos(2).expect_err("QoS 2 is not supported");
        assert!(
            error.to_string().contains("QoS 2 is not supported"),
            "{error}"
        );
        assert!(matches!(parse_qos(3), Err(CollectorError::InvalidQos(3))));
    }

    #[test]
    fn rate_period_accepts_fractions() {
        assert_eq!(rate_period(None).ok(), Some(None));
        assert_eq!(
            rate_period(Some(0.5)).ok(),
            Some(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            rate_period(Some(100.0)).ok(),
            Some(Some(Duration::from_millis(10)))
        );
        assert_eq!(
            rate_period(Some(1e30)).ok(),
            Some(Some(Duration::from_nanos(1)))
        );
    }

    #[test]
    fn rate_period_rejects_invalid() {
        for rate in [
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e-300,
        ] {
            assert!(
                matches!(rate_period(Some(rate)), Err(CollectorError::InvalidRate(_))),
                "rate {rate}"
            );
        }
    }

    #[test]
    fn topic_rejects_wildcards_and_empty() {
        assert!(validate_topic("ingest/messages").is_ok());
        for topic in ["", "ingest/#", "ingest/+/x", "in\0gest"] {
            assert!(
                matches!(
                    validate_topic(topic),
                    Err(CollectorError::InvalidTopic { .. })
                ),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn plain_file_skips_blank_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = b"{\"a\":1}\n\n{\"b\":2}\r\n   \r\n\t\n{\"c\":3}";
        let path = write_file(&dir, "messages.txt", content);

        let lines = read_all(&path, 1024).expect("read plain file");

        let expected = vec![
            payload("{\"a\":1}"),
            Line::Blank,
            payload("{\"b\":2}"),
            Line::Blank,
            Line::Blank,
            payload("{\"c\":3}"),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn payload_keeps_bytes_as_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let content = b"  {\"a\": 1}  \n\xff\xfe not utf-8\n";
        let path = write_file(&dir, "messages.txt", content);

        let lines = read_all(&path, 1024).expect("read plain file");

        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], payload("  {\"a\": 1}  "));
        assert_eq!(lines[1], Line::Payload(b"\xff\xfe not utf-8".to_vec()));
    }

    #[test]
    fn gzip_detected_by_content_not_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let compressed = write_file(&dir, "messages.txt", &gzip(b"{\"a\":1}\n\n{\"b\":2}\n"));
        let plain = write_file(&dir, "messages.txt.gz", b"{\"a\":1}\n");

        let reader = LineReader::open(&compressed, 1024).expect("open gzip file");
        assert!(reader.gzip);
        let lines = read_all(&compressed, 1024).expect("read gzip file");
        assert_eq!(
            lines,
            vec![payload("{\"a\":1}"), Line::Blank, payload("{\"b\":2}")]
        );

        let reader = LineReader::open(&plain, 1024).expect("open plain file");
        assert!(!reader.gzip);
        let lines = read_all(&plain, 1024).expect("read plain file");
        assert_eq!(lines, vec![payload("{\"a\":1}")]);
    }

    #[test]
    fn gzip_reads_every_member() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The first member ends in the middle of a line, which the next member completes.
        let mut content = gzip(b"{\"a\":1}\n{\"b\"");
        content.extend(gzip(b":2}\n"));
        content.extend(gzip(b"\n{\"c\":3}\n"));
        let path = write_file(&dir, "messages.txt.gz", &content);

        let lines = read_all(&path, 1024).expect("read multi-member gzip");

        let expected = vec![
            payload("{\"a\":1}"),
            payload("{\"b\":2}"),
            Line::Blank,
            payload("{\"c\":3}"),
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn gzip_truncated_is_gzip_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = "{\"text\":\"a message long enough to span the compressed stream\"}\n";
        let compressed = gzip(line.repeat(50).as_bytes());
        let path = write_file(&dir, "messages.txt.gz", &compressed[..compressed.len() / 2]);

        let result = read_all(&path, 1024);

        assert!(
            matches!(result, Err(CollectorError::Gzip { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn empty_file_has_no_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(&dir, "empty.txt", b"");

        let lines = read_all(&path, 1024).expect("read empty file");

        assert!(lines.is_empty());
    }

    #[test]
    fn line_over_max_payload_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fits = write_file(&dir, "fits.txt", b"12345678\r\n");
        let over = write_file(&dir, "over.txt", b"1234\n123456789\n");
        let no_newline = write_file(&dir, "no-newline.txt", &[b'x'; 100]);

        let lines = read_all(&fits, 8).expect("line of exactly the maximum");
        assert_eq!(lines, vec![payload("12345678")]);

        let result = read_all(&over, 8);
        assert!(
            matches!(
                result,
                Err(CollectorError::LineTooLong {
                    line: 2,
                    max_bytes: 8,
                    ..
                })
            ),
            "{result:?}"
        );

        let result = read_all(&no_newline, 8);
        assert!(
            matches!(result, Err(CollectorError::LineTooLong { line: 1, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn missing_file_error_names_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.txt");

        let error = LineReader::open(&path, 1024).err().expect("file is absent");

        assert!(matches!(error, CollectorError::Open { .. }), "{error:?}");
        assert!(error.to_string().contains("absent.txt"), "{error}");
    }

    /// Behavior of the test broker towards its client.
    #[derive(Debug, Clone, Copy)]
    enum BrokerBehavior {
        /// Accepts the connection and acknowledges every QoS 1 publish.
        AckAll,
        /// Rejects CONNECT with this CONNACK return code.
        Reject(ConnectReturnCode),
        /// Accepts the connection but never sends PUBACK.
        NeverAck,
        /// Closes the connection after receiving this many publishes.
        CloseAfter(usize),
    }

    /// Payloads the test broker received on its one connection.
    #[derive(Debug, Default)]
    struct BrokerLog {
        payloads: Vec<Vec<u8>>,
        /// Whether the client ended the connection with DISCONNECT.
        disconnected: bool,
    }

    /// Minimal MQTT 3.1.1 broker for one connection on 127.0.0.1, returning its log when
    /// the connection ends.
    async fn start_test_broker(behavior: BrokerBehavior) -> (String, JoinHandle<BrokerLog>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test broker");
        let address = format!("tcp://{}", listener.local_addr().expect("local address"));

        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut input = BytesMut::new();
            let mut log = BrokerLog::default();
            loop {
                let packet = match packets::read(&mut input, MAX_PACKET_BYTES) {
                    Ok(packet) => packet,
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                        if socket.read_buf(&mut input).await.unwrap_or(0) == 0 {
                            return log;
                        }
                        continue;
                    }
                    Err(error) => panic!("test broker read an invalid packet: {error:?}"),
                };

                let mut output = BytesMut::new();
                match packet {
                    Packet::Connect(_) => {
                        let code = match behavior {
                            BrokerBehavior::Reject(code) => code,
                            _ => ConnectReturnCode::Success,
                        };
                        packets::ConnAck::new(code, false)
                            .write(&mut output)
                            .expect("connack");
                    }
                    Packet::Publish(publish) => {
                        log.payloads.push(publish.payload.to_vec());
                        if let BrokerBehavior::CloseAfter(count) = behavior {
                            if log.payloads.len() >= count {
                                return log;
                            }
                        }
                        let ack = matches!(behavior, BrokerBehavior::AckAll);
                        if ack && publish.qos == QoS::AtLeastOnce {
                            packets::PubAck::new(publish.pkid)
                                .write(&mut output)
                                .expect("puback");
                        }
                    }
                    Packet::PingReq => {
                        packets::PingResp.write(&mut output).expect("pingresp");
                    }
                    Packet::Disconnect => {
                        log.disconnected = true;
                        return log;
                    }
                    other => panic!("test broker got an unexpected packet: {other:?}"),
                }
                if !output.is_empty() && socket.write_all(&output).await.is_err() {
                    return log;
                }
            }
        });
        (address, task)
    }

    fn test_options(file: PathBuf, address: String, qos: u8) -> PublishOptions {
        PublishOptions {
            file,
            address,
            topic: "ingest/messages".to_owned(),
            qos,
            rate: None,
            client_id: Some("collector-test".to_owned()),
        }
    }

    const TEST_TIMEOUTS: Timeouts = Timeouts {
        stall: Duration::from_secs(2),
        close_grace: Duration::from_secs(1),
    };

    /// Lines `{"n":0}` to `{"n":count-1}`, with a blank line after every tenth.
    fn numbered_lines(count: usize) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
        let mut content = Vec::new();
        let mut payloads = Vec::new();
        let mut blank = 0;
        for n in 0..count {
            let line = format!("{{\"n\":{n}}}");
            content.extend_from_slice(line.as_bytes());
            content.push(b'\n');
            payloads.push(line.into_bytes());
            if n % 10 == 9 {
                content.extend_from_slice(b"\r\n");
                blank += 1;
            }
        }
        (content, payloads, blank)
    }

    #[tokio::test]
    async fn qos1_waits_for_every_puback() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (content, expected, blank) = numbered_lines(1000);
        let path = write_file(&dir, "messages.txt.gz", &gzip(&content));
        let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

        let summary = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS)
            .await
            .expect("publish at QoS 1");

        assert_eq!(summary.published, 1000);
        assert_eq!(summary.skipped_blank, blank);
        let log = broker.await.expect("test broker");
        assert!(log.disconnected);
        assert_eq!(log.payloads, expected);
    }

    #[tokio::test]
    async fn qos0_sends_every_line_before_return() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (content, expected, blank) = numbered_lines(5000);
        let path = write_file(&dir, "messages.txt", &content);
        let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

        let summary = publish_file_with_timeouts(&test_options(path, address, 0), TEST_TIMEOUTS)
            .await
            .expect("publish at QoS 0");

        assert_eq!(summary.published, 5000);
        assert_eq!(summary.skipped_blank, blank);
        let log = broker.await.expect("test broker");
        assert!(log.disconnected);
        assert_eq!(log.payloads.len(), expected.len());
        assert_eq!(log.payloads, expected);
    }

    #[tokio::test]
    async fn connection_refused_returns_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("tcp://{}", listener.local_addr().expect("local address"));
        drop(listener);

        let result =
            publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

        assert!(
            matches!(result, Err(CollectorError::Connection { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn broker_rejection_returns_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n");
        let (address, _broker) =
            start_test_broker(BrokerBehavior::Reject(ConnectReturnCode::NotAuthorized)).await;

        let result =
            publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

        assert!(
            matches!(
                result,
                Err(CollectorError::Rejected {
                    code: ConnectReturnCode::NotAuthorized,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn missing_puback_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n{\"b\":2}\n");
        let (address, _broker) = start_test_broker(BrokerBehavior::NeverAck).await;
        let timeouts = Timeouts {
            stall: Duration::from_millis(300),
            close_grace: Duration::from_millis(300),
        };

        let result = publish_file_with_timeouts(&test_options(path, address, 1), timeouts).await;

        assert!(
            matches!(result, Err(CollectorError::Timeout { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn broker_closing_mid_run_returns_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (content, _, _) = numbered_lines(1000);
        let path = write_file(&dir, "messages.txt", &content);
        let (address, _broker) = start_test_broker(BrokerBehavior::CloseAfter(10)).await;

        let result =
            publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

        assert!(
            matches!(result, Err(CollectorError::Connection { .. })),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn read_error_still_delivers_earlier_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (content, expected, _) = numbered_lines(5000);
        let compressed = gzip(&content);
        let path = write_file(&dir, "messages.txt.gz", &compressed[..compressed.len() / 2]);
        let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

        let result =
            publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

        assert!(
            matches!(result, Err(CollectorError::Gzip { .. })),
            "{result:?}"
        );
        let log = broker.await.expect("test broker");
        assert!(log.disconnected);
        assert!(!log.payloads.is_empty());
        assert!(log.payloads.len() < expected.len());
        assert_eq!(log.payloads[..], expected[..log.payloads.len()]);
    }

    #[tokio::test]
    async fn rate_spaces_publishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_file(&dir, "messages.txt", b"1\n2\n3\n4\n5\n");
        let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;
        let mut options = test_options(path, address, 1);
        options.rate = Some(20.0);

        let summary = publish_file_with_timeouts(&options, TEST_TIMEOUTS)
            .await
            .expect("publish with rate");

        // The first tick of an interval is immediate, so five publishes span four periods.
        assert!(summary.elapsed >= Duration::from_millis(200), "{summary:?}");
        assert_eq!(broker.await.expect("test broker").payloads.len(), 5);
    }
}
