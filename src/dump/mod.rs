//! Dump files: every accepted message as one JSON line in `own/messages_YYYYMMDD_NNNNNNNN.txt`,
//! rotated on the UTC date and on size, and compressed to `.txt.gz` off the ingest path.
//! Invariant: a line is in a `.txt.gz` only after that file was fsynced and renamed into place.
//!
//! `writer` runs the thread that writes and rotates, `compress` the worker that gzips rotated
//! files, `repair` the start-up checks after a crash, `facts` the per-file index facts,
//! `retention` the deletion of old files, `import` the drop folder, `verify` the file check
//! and `http` the `/dump/` routes.

mod compress;
mod facts;
mod http;
mod import;
mod lines;
mod listing;
mod names;
mod repair;
mod retention;
mod status;
mod verify;
mod writer;

#[cfg(test)]
mod test_clock;
#[cfg(test)]
mod http_tests;
#[cfg(test)]
mod writer_tests;
#[cfg(test)]
mod repair_tests;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use compress::compress_file;
pub use import::ImportStatus;
pub use names::{is_dump_file_name, own_dir, DAMAGED_DIR, IMPORTED_DIR, IMPORT_DIR, OWN_DIR};
pub use verify::{verify_dir, FileCheck, VerifyError};

use compress::Compressor;
use retention::Retention;
use status::StatusCell;
use writer::AppendRequest;

/// Settings from the `dump.*` keys.
#[derive(Debug, Clone)]
pub struct DumpConfig {
    pub write_enabled: bool,
    pub dir: PathBuf,
    pub rotate_bytes: u64,
    pub fsync: FsyncPolicy,
    /// Maximum bytes of dump files in `own/` before the oldest closed ones are deleted; 0 is off.
    pub retain_bytes: u64,
    /// Age in days past which closed dump files are deleted; 0 is off.
    pub retain_days: u64,
    pub import_poll_secs: u64,
}

/// When the writer fsyncs the dump file (`dump.fsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Once per group commit, before its appends complete: an acknowledged line survives a
    /// power loss.
    Batch,
    /// Only at rotation and shutdown: an acknowledged line survives a crash of the process
    /// (it is in the OS page cache) but not a power loss or kernel crash.
    Rotate,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("dump writer stopped")]
    Stopped,
    #[error(
        "dump directory {} is in use by another lokstream process (it holds the lock on {}); \
         stop that process or set another dump.dir",
        dir.display(),
        lock.display()
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("dump write failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Source of the current UTC time; tests replace it to cross midnight.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }
}

/// A snapshot of the writer's state for `/api/status.json` and `/readyz`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DumpStatus {
    pub enabled: bool,
    /// False after a failed write, true again after a batch is written without error.
    pub healthy: bool,
    /// Name of the file being written, if one is open.
    pub current_file: Option<String>,
    pub lines_written: u64,
    /// Bytes written including the newline after each line.
    pub bytes_written: u64,
    pub rotations: u64,
    pub compressions: u64,
    /// Failed writes, flushes, fsyncs and file opens.
    pub write_errors: u64,
    /// Message of the latest write error; it stays after the writer recovers.
    pub last_error: Option<String>,
    /// Failed compression attempts. The file stays `.txt` and is compressed again later.
    pub compression_errors: u64,
    /// Committed lines in the file being written.
    pub current_lines: u64,
    /// Unix milliseconds of the `stream_id` of the first and last committed line of the
    /// file being written.
    pub current_first_ms: Option<u64>,
    pub current_last_ms: Option<u64>,
    /// Closed files deleted by `dump.retain.bytes` or `dump.retain.days`.
    pub files_deleted: u64,
}

/// Handle to the dump writer thread; cheap to clone.
#[derive(Clone)]
pub struct DumpWriter {
    inner: Arc<Inner>,
}

struct Inner {
    config: DumpConfig,
    state: Mutex<WriterState>,
    status: Arc<StatusCell<DumpStatus>>,
    import: Arc<StatusCell<ImportStatus>>,
    /// Becomes `true` when the writer thread has finished; `None` when writing is disabled.
    stopped: Option<watch::Receiver<bool>>,
}

enum WriterState {
    /// `dump.write_enabled = false`: appends are accepted and dropped.
    Disabled,
    Running(mpsc::Sender<AppendRequest>),
    /// `shutdown` was called; dropping the sender let the thread drain and exit.
    Stopped,
}

/// Resolves once the lines of one `append` are written to the OS.
#[must_use = "the lines may not be written yet; call `wait` to learn the outcome"]
pub struct Written {
    /// `None` when nothing was queued (empty append, or writing disabled).
    outcome: Option<oneshot::Receiver<Result<(), DumpError>>>,
}

impl Written {
    /// Waits until the writer thread wrote and flushed the lines, or failed to.
    pub async fn wait(self) -> Result<(), DumpError> {
        let Some(outcome) = self.outcome else {
            return Ok(());
        };
        match outcome.await {
            Ok(result) => result,
            // The writer thread drops a request without sending its outcome only when it panics.
            Err(_closed) => Err(DumpError::Stopped),
        }
    }

    fn completed() -> Self {
        Self { outcome: None }
    }
}

impl DumpWriter {
    /// Creates `own/`, `import/` and `imported/` under `config.dir`, repairs what a crash
    /// left in `own/` and starts the writer thread. With writing disabled it creates
    /// nothing and starts nothing.
    pub fn open(config: &DumpConfig, clock: std::sync::Arc<dyn Clock>) -> Result<Self, DumpError> {
        if !config.write_enabled {
            tracing::info!("dump writing disabled; accepted messages are not stored");
            let status = DumpStatus {
                enabled: false,
                healthy: true,
                ..DumpStatus::default()
            };
            return Ok(Self::with_state(config, WriterState::Disabled, status, None));
        }

        for sub in [OWN_DIR, IMPORT_DIR, IMPORTED_DIR] {
            std::fs::create_dir_all(config.dir.join(sub))?;
        }
        let lock = lock_dump_dir(&config.dir)?;
        let leftovers = repair::repair_own_dir(&config.dir)?;

        let status = DumpStatus {
            enabled: true,
            healthy: true,
            ..DumpStatus::default()
        };
        let (requests, queue) = mpsc::channel(writer::MAX_BATCH_REQUESTS);
        let (stopped_sender, stopped) = watch::channel(false);
        let writer = Self::with_state(config, WriterState::Running(requests), status, Some(stopped));
        let status = Arc::clone(&writer.inner.status);

        let retention = Retention::new(config, Arc::clone(&status));
        let compressor = Compressor::start(Arc::clone(&status), retention.clone(), compress::RETRY_DELAY)?;
        for leftover in leftovers {
            compressor.submit(leftover);
        }
        facts::rebuild_in_background(own_dir(&config.dir), retention)?;

        let settings = writer::Settings {
            own_dir: own_dir(&config.dir),
            rotate_bytes: config.rotate_bytes,
            fsync: config.fsync,
        };
        writer::spawn(settings, clock, status, compressor, queue, stopped_sender, lock)?;

        tracing::info!(
            dir = %config.dir.display(),
            rotate_bytes = config.rotate_bytes,
            fsync = ?config.fsync,
            "dump writer started"
        );
        Ok(writer)
    }

    /// Queues `lines` (JSON objects without CR or LF) behind earlier appends. It waits while
    /// the queue is full, which slows ingest down to the disk's pace.
    pub async fn append(&self, lines: Vec<Bytes>) -> Result<Written, DumpError> {
        let requests = match &*self.lock_state() {
            WriterState::Disabled => return Ok(Written::completed()),
            WriterState::Stopped => return Err(DumpError::Stopped),
            WriterState::Running(requests) => requests.clone(),
        };
        if lines.is_empty() {
            return Ok(Written::completed());
        }

        let (done, outcome) = oneshot::channel();
        // The writer thread keeps the receiver until every sender is dropped, and `requests`
        // is one, so sending fails only after a panic on that thread.
        if requests.send(AppendRequest { lines, done }).await.is_err() {
            return Err(DumpError::Stopped);
        }
        Ok(Written {
            outcome: Some(outcome),
        })
    }

    pub fn status(&self) -> DumpStatus {
        self.inner.status.snapshot()
    }

    /// Progress of the `import/` drop folder, for `/api/status.json`.
    pub fn import_status(&self) -> ImportStatus {
        self.inner.import.snapshot()
    }

    /// Starts replaying files dropped into `import/` through `publisher`, until `shutdown`
    /// fires. Returns `None` when writing is disabled, because then no `import/` exists.
    pub fn start_import(
        &self,
        publisher: Arc<crate::publisher::Publisher>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        if !self.inner.config.write_enabled {
            return None;
        }
        let folder = import::ImportFolder::new(&self.inner.config, Arc::clone(&self.inner.import));
        Some(tokio::spawn(folder.run(publisher, shutdown)))
    }

    /// Routes for `/dump/`, `/dump/index.json` and `/dump/NAME`, with the facts of the
    /// file being written taken from this writer.
    pub fn router(&self) -> axum::Router {
        http::router(&own_dir(&self.inner.config.dir), Some(Arc::clone(&self.inner.status)))
    }

    /// Stops taking appends, writes everything already queued, fsyncs the current file
    /// and waits for pending compressions. Every call waits for the same end.
    pub async fn shutdown(&self) {
        let previous = std::mem::replace(&mut *self.lock_state(), WriterState::Stopped);
        let first_call = matches!(previous, WriterState::Running(_));
        // Dropping the last sender ends the thread's queue after the appends in flight.
        drop(previous);

        let Some(stopped) = &self.inner.stopped else {
            return;
        };
        let mut stopped = stopped.clone();
        if stopped.wait_for(|done| *done).await.is_err() {
            tracing::error!("dump writer thread ended without closing its file; it panicked");
            return;
        }

        if !first_call {
            return;
        }
        let status = self.status();
        tracing::info!(
            lines_written = status.lines_written,
            rotations = status.rotations,
            compressions = status.compressions,
            "dump writer stopped"
        );
    }

    fn with_state(
        config: &DumpConfig,
        state: WriterState,
        status: DumpStatus,
        stopped: Option<watch::Receiver<bool>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                state: Mutex::new(state),
                status: Arc::new(StatusCell::new(status)),
                import: Arc::new(StatusCell::new(ImportStatus::default())),
                stopped,
            }),
        }
    }

    // The state is replaced in one assignment, so a poisoned lock still holds a valid value.
    fn lock_state(&self) -> MutexGuard<'_, WriterState> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Name of the lock file in `dump.dir`.
const LOCK_FILE_NAME: &str = ".lock";

/// Takes an exclusive `flock` on `dump_dir/.lock`. The lock ends when the returned file is
/// closed, also when the process dies, so a crash never leaves a stale lock. Without it, a
/// second server's start-up repair would compress and remove the first one's open file.
fn lock_dump_dir(dump_dir: &std::path::Path) -> Result<std::fs::File, DumpError> {
    let path = dump_dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(DumpError::Locked {
            dir: dump_dir.to_path_buf(),
            lock: path,
        }),
        Err(std::fs::TryLockError::Error(error)) => Err(error.into()),
    }
}

/// Counts the dump files in `own/` that `/dump/` lists, for `/api/status.json`.
pub fn count_files(config: &DumpConfig) -> std::io::Result<usize> {
    listing::list_files(&own_dir(&config.dir)).map(|files| files.len())
}

/// Routes for `/dump/`, `/dump/index.json` and `/dump/NAME` without a writer: the index
/// has no facts about a file being written.
pub fn router(config: &DumpConfig) -> axum::Router {
    http::router(&own_dir(&config.dir), None)
}
