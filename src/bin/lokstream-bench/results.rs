//! One JSON line per measurement, appended to the results file that `report` turns into
//! the tables of BENCHMARKS.md.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::BenchError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "case", rename_all = "snake_case")]
pub enum Record {
    Ingest(IngestRecord),
    Fanout(FanoutRecord),
    Idle(IdleRecord),
    Compress(CompressRecord),
}

/// MQTT publishers at full speed, counted at the receivers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestRecord {
    pub server: String,
    pub qos: u8,
    /// Whether lokstream wrote dump files; `None` for a peer.
    pub dumps: Option<bool>,
    pub publishers: u32,
    pub sent: u64,
    /// Messages at the SSE client on `all` (lokstream) or at the one subscriber (peer).
    pub received: u64,
    pub received_per_sec: f64,
    /// Messages at lokstream's MQTT subscriber on the channel `all`.
    pub mqtt_received: Option<u64>,
    pub mqtt_per_sec: Option<f64>,
    /// Lines the dump writer wrote during the run, from `/api/status.json`.
    pub dump_lines: Option<u64>,
    pub dump_lines_per_sec: Option<f64>,
    /// Messages lokstream's broker dropped because a subscriber fell behind its log
    /// (`broker.messages_lost` in `/api/status.json`).
    #[serde(default)]
    pub broker_lost: Option<u64>,
}

/// One publisher, many SSE clients on one channel, at one offered rate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutRecord {
    pub server: String,
    pub clients: u32,
    /// Messages per second the publisher aimed at; `None` for as fast as possible.
    pub offered_per_sec: Option<f64>,
    pub sent: u64,
    pub publish_per_sec: f64,
    pub deliveries: u64,
    /// `sent` times the clients that were connected at the start.
    pub expected: u64,
    pub deliveries_per_sec: f64,
    /// Clients whose stream the server ended during the run.
    pub clients_closed: u32,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Memory of the server processes before and after opening idle streams.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRecord {
    pub server: String,
    pub connections: u32,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    /// Proportional set size, which splits shared pages among the processes that map them.
    pub pss_before_kb: u64,
    pub pss_after_kb: u64,
}

/// Compression of one dump-like file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressRecord {
    pub compressor: String,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Fastest of the repetitions.
    pub secs: f64,
}

/// Appends `record` as one line to `path`, creating the file if needed.
pub fn append(path: &Path, record: &Record) -> Result<(), BenchError> {
    let write_error = |source| BenchError::Write {
        path: path.to_owned(),
        source,
    };
    let mut line = serde_json::to_vec(record).map_err(|error| write_error(error.into()))?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(write_error)?;
    file.write_all(&line).map_err(write_error)
}

/// Reads every record of a results file.
pub fn read(path: &Path) -> Result<Vec<Record>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|source| BenchError::Results {
                path: path.to_owned(),
                line: index + 1,
                source,
            })
        })
        .collect()
}

/// Per-second rate of `count` over `micros`, 0 for an empty interval.
pub fn per_sec(count: u64, micros: u64) -> f64 {
    if micros == 0 {
        return 0.0;
    }
    count as f64 * 1e6 / micros as f64
}
