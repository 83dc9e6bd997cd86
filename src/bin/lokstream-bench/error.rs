//! Errors of a benchmark run. Each names the server, file or process involved, because a
//! run drives several of them at once.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("failed to read the corpus {}: {source}", path.display())]
    CorpusRead { path: PathBuf, source: io::Error },
    #[error("line {line} of the corpus {} is not a JSON object: {reason}", path.display())]
    CorpusLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("the corpus {} contains no messages", path.display())]
    CorpusEmpty { path: PathBuf },
    #[error("connection to {address} failed: {source}")]
    Connect { address: SocketAddr, source: io::Error },
    #[error("HTTP request {request} to {address} failed: {reason}")]
    Http {
        address: SocketAddr,
        request: String,
        reason: String,
    },
    #[error("MQTT client {client} failed: {reason}")]
    Mqtt { client: String, reason: String },
    #[error("timed out after {secs} s waiting for {waiting_for}")]
    Timeout { waiting_for: String, secs: u64 },
    #[error("failed to write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{command} failed: {reason}")]
    Command { command: String, reason: String },
    #[error("invalid memory figures for process {pid}: {reason}")]
    ProcessMemory { pid: u32, reason: String },
    #[error("invalid results line {line} in {}: {source}", path.display())]
    Results {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{task} task failed: {reason}")]
    Task { task: &'static str, reason: String },
    #[error("invalid option: {0}")]
    InvalidOption(String),
}

impl BenchError {
    pub fn mqtt(client: &str, reason: impl ToString) -> Self {
        BenchError::Mqtt {
            client: client.to_owned(),
            reason: reason.to_string(),
        }
    }

    pub fn task(task: &'static str, reason: impl ToString) -> Self {
        BenchError::Task {
            task,
            reason: reason.to_string(),
        }
    }

    pub fn timeout(waiting_for: impl Into<String>, secs: u64) -> Self {
        BenchError::Timeout {
            waiting_for: waiting_for.into(),
            secs,
        }
    }
}
