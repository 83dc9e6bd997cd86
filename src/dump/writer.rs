//! The writer thread: takes append requests in stream-id order, writes each line plus `\n`
//! to the current file with blocking I/O and rotates between lines, so no file ends with a
//! partial line. Requests queued together share one flush (group commit), fsynced under
//! `dump.fsync = batch`, and complete only after it, or with the error that stopped them.
//! While writes fail, the thread probes the disk so it turns healthy again without traffic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use tokio::sync::{mpsc, oneshot, watch};

use super::compress::{self, Compressor};
use super::facts;
use super::names;
use super::status::StatusCell;
use super::{Clock, DumpError, DumpStatus, FsyncPolicy};

/// Maximum number of requests written under one flush, and the capacity of the queue.
/// Without the cap, producers that keep the queue full would grow one batch without end
/// and its first requests would never complete.
pub(super) const MAX_BATCH_REQUESTS: usize = 1024;

/// While writes fail, the disk is probed this often, so that `/readyz` recovers even when
/// no appends arrive (a load balancer that reads `/readyz` stops sending them).
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Hidden scratch file of the probe in `own/`; its name is never listed.
const PROBE_FILE_NAME: &str = ".write-probe";

/// Bytes the probe writes and fsyncs: one buffer's worth, as a batch would.
const PROBE_BYTES: usize = WRITE_BUFFER_BYTES;

/// Attempts at finding an unused random file name before opening fails. With 10^8 numbers
/// per day, even one collision is unlikely.
const MAX_NAME_ATTEMPTS: usize = 100;

/// A full `BufWriter` writes to the OS in the middle of a batch; 64 KiB keeps that rare.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// While writes keep failing, at most one error line per this interval is logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Lines of one `append`, and where to send the outcome.
pub(super) struct AppendRequest {
    pub(super) lines: Vec<Bytes>,
    pub(super) done: oneshot::Sender<Result<(), DumpError>>,
}

/// The writer's share of `DumpConfig`.
pub(super) struct Settings {
    pub(super) own_dir: PathBuf,
    pub(super) rotate_bytes: u64,
    pub(super) fsync: FsyncPolicy,
}

/// Starts the writer thread, which hands rotated files to `compressor`. The thread runs
/// until every sender of `requests` is dropped, then closes the current file, waits for
/// pending compressions, releases `dir_lock` and sets `stopped` to `true`.
pub(super) fn spawn(
    settings: Settings,
    clock: Arc<dyn Clock>,
    status: Arc<StatusCell<DumpStatus>>,
    compressor: Compressor,
    requests: mpsc::Receiver<AppendRequest>,
    stopped: watch::Sender<bool>,
    dir_lock: File,
) -> io::Result<()> {
    // The thread's own runtime only times the wait for requests while writes fail.
    let timer = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let writer = WriterThread {
        settings,
        clock,
        status,
        compressor,
        current: None,
        failing: false,
        error_log: ErrorLog::default(),
    };

    std::thread::Builder::new()
        .name("dump-writer".into())
        .spawn(move || {
            writer.run(&timer, requests);
            // Another server may take the directory once this one is done with it.
            drop(dir_lock);
            stopped.send_replace(true);
        })?;
    Ok(())
}

/// The file being written.
struct CurrentFile {
    name: String,
    path: PathBuf,
    /// UTC date in the file name; a line on another date goes to a new file.
    date: NaiveDate,
    out: BufWriter<File>,
    /// Bytes handed to `out`, flushed or not.
    bytes: u64,
    /// File length after the last successful commit. Everything before it belongs to
    /// completed requests, and a broken file is cut back to it.
    committed_bytes: u64,
    lines: u64,
    committed_lines: u64,
    /// Unix milliseconds of the first line's `stream_id`.
    first_ms: Option<u64>,
    last_line: Bytes,
}

impl CurrentFile {
    fn write_line(&mut self, line: &Bytes) -> io::Result<()> {
        debug_assert!(
            !line.iter().any(|&byte| byte == b'\n' || byte == b'\r'),
            "a dump line must not contain CR or LF"
        );
        self.out.write_all(line)?;
        self.out.write_all(b"\n")?;
        self.bytes += line.len() as u64 + 1;

        if self.lines == 0 {
            self.first_ms = facts::stream_millis(line);
        }
        self.lines += 1;
        self.last_line = line.clone();
        Ok(())
    }

    /// Hands buffered lines to the OS, and with `sync` waits until they are on disk.
    fn commit(&mut self, sync: bool) -> io::Result<()> {
        self.out.flush()?;
        if sync {
            self.out.get_ref().sync_all()?;
        }
        self.committed_bytes = self.bytes;
        self.committed_lines = self.lines;
        Ok(())
    }
}

/// A file closed in the middle of a request, kept open until the request is done.
struct RotatedFile {
    /// Length before the request's first line, which a failed request cuts back to.
    keep_bytes: u64,
    file: CurrentFile,
}

/// The writer thread's next step.
enum Next {
    Request(AppendRequest),
    Probe,
    Closed,
}

struct WriterThread {
    settings: Settings,
    clock: Arc<dyn Clock>,
    status: Arc<StatusCell<DumpStatus>>,
    compressor: Compressor,
    current: Option<CurrentFile>,
    /// The last write failed and no write or probe succeeded since.
    failing: bool,
    error_log: ErrorLog,
}

impl WriterThread {
    fn run(mut self, timer: &tokio::runtime::Runtime, mut requests: mpsc::Receiver<AppendRequest>) {
        loop {
            let first = match self.next(timer, &mut requests) {
                Next::Request(request) => request,
                Next::Probe => {
                    self.probe();
                    continue;
                }
                Next::Closed => break,
            };
            let mut batch = vec![first];

            // `try_recv` fails when the queue is empty or closed; a closed queue also ends
            // the outer loop after this batch.
            while batch.len() < MAX_BATCH_REQUESTS {
                let Ok(next) = requests.try_recv() else {
                    break;
                };
                batch.push(next);
            }

            self.write_batch(batch);
        }

        self.close_at_shutdown();
        self.compressor.finish();
    }

    /// Waits for the next request; while writes fail, at most `PROBE_INTERVAL`.
    fn next(&self, timer: &tokio::runtime::Runtime, requests: &mut mpsc::Receiver<AppendRequest>) -> Next {
        let received = if self.failing {
            // The timer must be created inside the runtime, so the future is built in it.
            match timer.block_on(async { tokio::time::timeout(PROBE_INTERVAL, requests.recv()).await }) {
                Ok(received) => received,
                Err(_elapsed) => return Next::Probe,
            }
        } else {
            requests.blocking_recv()
        };
        match received {
            Some(request) => Next::Request(request),
            None => Next::Closed,
        }
    }

    /// Writes and fsyncs a scratch file, and marks the writer healthy when that works. A
    /// full disk fails the write or the fsync, as it would fail a batch.
    fn probe(&mut self) {
        let path = self.settings.own_dir.join(PROBE_FILE_NAME);
        let written = File::create(&path).and_then(|mut file| {
            file.write_all(&[0; PROBE_BYTES])?;
            file.sync_all()
        });
        if let Err(error) = fs::remove_file(&path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(file = %path.display(), %error, "could not remove the dump write probe");
            }
        }

        match written {
            Ok(()) => {
                self.failing = false;
                self.status.update(|s| s.healthy = true);
                self.error_log.recovered();
            }
            Err(error) => tracing::debug!(%error, "dump write probe failed"),
        }
    }

    fn write_batch(&mut self, batch: Vec<AppendRequest>) {
        let mut failures: Vec<Option<io::Error>> = batch.iter().map(|_| None).collect();
        // Indexes of requests whose lines are written but not committed yet.
        let mut uncommitted: Vec<usize> = Vec::new();

        for (index, request) in batch.iter().enumerate() {
            if let Err(error) = self.write_request(&request.lines, &mut uncommitted) {
                self.record_error(&error);
                self.abandon_current();
                for earlier in uncommitted.drain(..) {
                    failures[earlier] = Some(copy_error(&error));
                }
                failures[index] = Some(error);
                continue;
            }
            uncommitted.push(index);
        }

        if let Err(error) = self.commit_current() {
            self.record_error(&error);
            self.abandon_current();
            for index in uncommitted.drain(..) {
                failures[index] = Some(copy_error(&error));
            }
        }

        self.complete(batch, failures);
    }

    /// Writes the lines of one request, rotating before any line that belongs in a new
    /// file. A successful rotation commits the requests in `uncommitted`, so it clears it.
    /// When the request fails, the files it rotated are cut back to their length before
    /// its first line, so a failed request leaves none of its lines in any file.
    fn write_request(&mut self, lines: &[Bytes], uncommitted: &mut Vec<usize>) -> io::Result<()> {
        let mut rotated = Vec::new();
        let written = self.write_lines(lines, uncommitted, &mut rotated);

        for file in rotated {
            if written.is_err() {
                self.cut_rotated(file);
            } else {
                self.compressor.submit(file.file.path);
            }
        }
        written
    }

    fn write_lines(&mut self, lines: &[Bytes], uncommitted: &mut Vec<usize>, rotated: &mut Vec<RotatedFile>) -> io::Result<()> {
        // Length of the current file before this request's first line; 0 in any file the
        // request opens.
        let mut keep_bytes = self.current.as_ref().map_or(0, |file| file.bytes);
        for line in lines {
            let now = self.clock.now();
            if self.rotation_due(now) {
                if let Some(file) = self.rotate()? {
                    rotated.push(RotatedFile { keep_bytes, file });
                }
                keep_bytes = 0;
                uncommitted.clear();
            }

            let file = match self.current.take() {
                Some(file) => file,
                None => self.open_file(now)?,
            };
            self.current.insert(file).write_line(line)?;
        }
        Ok(())
    }

    /// Removes the lines of a failed request from a file it rotated, through the open
    /// handle, then queues what is left for compression. A file with nothing left is removed.
    fn cut_rotated(&mut self, rotated: RotatedFile) {
        let RotatedFile { keep_bytes, file } = rotated;
        let (handle, _empty) = file.out.into_parts();
        if keep_bytes == 0 {
            drop(handle);
            if let Err(error) = fs::remove_file(&file.path) {
                tracing::warn!(file = %file.name, %error, "could not remove a dump file that contains only lines of a failed append");
            }
            return;
        }

        let cut = handle.set_len(keep_bytes).and_then(|()| handle.sync_all());
        if let Err(error) = cut {
            self.record_error(&error);
            // NOTE: the file keeps the lines of the failed append, so a retry stores them twice.
            tracing::error!(file = %file.name, %error, "could not cut the lines of a failed append from a rotated dump file");
        }
        self.compressor.submit(file.path);
    }

    fn rotation_due(&self, now: DateTime<Utc>) -> bool {
        let Some(file) = &self.current else {
            return false;
        };
        let date_changed = file.date != now.date_naive();
        let full = file.bytes > 0 && file.bytes >= self.settings.rotate_bytes;
        date_changed || full
    }

    /// Closes the current file with an fsync and returns it; the caller queues it for
    /// compression once the request that rotated it is done.
    fn rotate(&mut self) -> io::Result<Option<CurrentFile>> {
        let Some(mut file) = self.current.take() else {
            return Ok(None);
        };
        if let Err(error) = file.commit(true) {
            self.current = Some(file);
            return Err(error);
        }

        tracing::info!(file = %file.name, bytes = file.bytes, lines = file.lines, "dump file rotated");
        self.status.update(|s| {
            s.rotations += 1;
            clear_current(s);
        });
        Ok(Some(file))
    }

    /// Commits the lines written since the last commit. This is the one place where a group
    /// commit reaches the OS, and `dump.fsync` sets whether it also reaches the disk.
    fn commit_current(&mut self) -> io::Result<()> {
        let sync = self.settings.fsync == FsyncPolicy::Batch;
        let Some(file) = &mut self.current else {
            return Ok(());
        };
        if file.bytes == file.committed_bytes {
            return Ok(());
        }

        file.commit(sync)?;
        let (lines, first_ms) = (file.committed_lines, file.first_ms);
        let last_ms = facts::stream_millis(&file.last_line);
        self.status.update(|s| {
            s.current_lines = lines;
            s.current_first_ms = first_ms;
            s.current_last_ms = last_ms;
        });
        Ok(())
    }

    fn open_file(&self, now: DateTime<Utc>) -> io::Result<CurrentFile> {
        let date = now.date_naive();
        let own_dir = &self.settings.own_dir;

        for _ in 0..MAX_NAME_ATTEMPTS {
            let name = names::random_file_name(date);
            let path = own_dir.join(&name);
            if own_dir.join(names::compressed_name(&name)).try_exists()? {
                continue;
            }

            // `create_new` refuses an existing `.txt`, even one created a moment ago by
            // another process sharing the directory.
            let handle = match OpenOptions::new().append(true).create_new(true).open(&path) {
                Ok(handle) => handle,
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            };
            // A failed directory fsync only puts the new name at risk on power loss, and the
            // file itself works, so writing goes on.
            if let Err(error) = compress::sync_dir(own_dir) {
                tracing::warn!(file = %name, %error, "fsync of the dump directory failed after creating a file");
            }

            tracing::info!(file = %name, "dump file opened");
            self.status.update(|s| {
                clear_current(s);
                s.current_file = Some(name.clone());
            });
            return Ok(CurrentFile {
                name,
                path,
                date,
                out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, handle),
                bytes: 0,
                committed_bytes: 0,
                lines: 0,
                committed_lines: 0,
                first_ms: None,
                last_line: Bytes::new(),
            });
        }

        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "found no unused dump file name in {} after {MAX_NAME_ATTEMPTS} attempts",
                own_dir.display()
            ),
        ))
    }

    /// Drops a file after a failed write: buffered lines are discarded and the file is cut
    /// back to its committed length, so it keeps only lines of completed requests and ends
    /// with a whole line. An empty file is removed; any other is closed and compressed.
    fn abandon_current(&mut self) {
        let Some(file) = self.current.take() else {
            return;
        };
        self.status.update(clear_current);
        let (handle, _discarded) = file.out.into_parts();

        if file.committed_bytes == 0 {
            drop(handle);
            if let Err(error) = fs::remove_file(&file.path) {
                tracing::warn!(file = %file.name, %error, "could not remove empty broken dump file");
            }
            return;
        }

        let cut = handle
            .set_len(file.committed_bytes)
            .and_then(|()| handle.sync_all());
        match cut {
            Ok(()) => {
                tracing::warn!(file = %file.name, bytes = file.committed_bytes, "broken dump file closed; a new file is opened for the next lines");
                self.compressor.submit(file.path);
            }
            Err(error) => {
                // The file may end with a partial line; start-up repair cuts it and
                // compresses the file.
                tracing::error!(file = %file.name, %error, "could not cut failed lines from broken dump file; it stays until the next start");
            }
        }
    }

    /// Flushes and fsyncs the current file at shutdown. The file stays `.txt`, because it
    /// was not rotated.
    fn close_at_shutdown(&mut self) {
        let Some(file) = self.current.as_mut() else {
            return;
        };

        match file.commit(true) {
            Ok(()) => {
                tracing::info!(file = %file.name, bytes = file.bytes, lines = file.lines, "dump file closed at shutdown");
                self.current = None;
                self.status.update(clear_current);
            }
            Err(error) => {
                self.record_error(&error);
                self.abandon_current();
            }
        }
    }

    /// Updates the counters, then sends each request its outcome, so a caller whose
    /// `Written` resolved reads a status that includes its lines.
    fn complete(&mut self, batch: Vec<AppendRequest>, failures: Vec<Option<io::Error>>) {
        let mut lines_written = 0u64;
        let mut bytes_written = 0u64;
        let mut all_written = true;
        for (request, failure) in batch.iter().zip(&failures) {
            if failure.is_some() {
                all_written = false;
                continue;
            }
            lines_written += request.lines.len() as u64;
            bytes_written += request.lines.iter().map(|line| line.len() as u64 + 1).sum::<u64>();
        }

        self.status.update(|s| {
            s.lines_written += lines_written;
            s.bytes_written += bytes_written;
            if all_written {
                s.healthy = true;
            }
        });
        if all_written {
            self.failing = false;
            self.error_log.recovered();
        }

        for (request, failure) in batch.into_iter().zip(failures) {
            let outcome = match failure {
                Some(error) => Err(DumpError::Io(error)),
                None => Ok(()),
            };
            // A caller that dropped its `Written` does not wait for the outcome.
            let _ = request.done.send(outcome);
        }
    }

    fn record_error(&mut self, error: &io::Error) {
        self.failing = true;
        let file = self.current.as_ref().map(|file| file.name.clone());
        self.status.update(|s| {
            s.healthy = false;
            s.write_errors += 1;
            s.last_error = Some(error.to_string());
        });
        self.error_log.log(file.as_deref(), error);
    }
}

/// Resets the facts of the file being written when it is closed or replaced.
fn clear_current(status: &mut DumpStatus) {
    status.current_file = None;
    status.current_lines = 0;
    status.current_first_ms = None;
    status.current_last_ms = None;
}

/// Copies an error for each request that shares a failed write, because `io::Error` is
/// not `Clone`.
fn copy_error(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}

/// Rate limit for write errors, which repeat on every batch while a disk is full.
#[derive(Default)]
struct ErrorLog {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, file: Option<&str>, error: &io::Error) {
        let due = self
            .last_logged
            .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL);
        if !due {
            self.suppressed += 1;
            return;
        }

        tracing::error!(file, %error, suppressed = self.suppressed, "dump write failed; the next append retries");
        self.last_logged = Some(Instant::now());
        self.suppressed = 0;
    }

    fn recovered(&mut self) {
        if self.last_logged.take().is_some() {
            tracing::info!(suppressed = self.suppressed, "dump writes succeed again");
            self.suppressed = 0;
        }
    }
}
