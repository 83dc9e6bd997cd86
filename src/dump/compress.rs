//! Compression of rotated files on one worker thread, in the order they were rotated.
//! A `.txt.gz` appears only after it was written in full under a `.tmp` name, fsynced
//! and renamed, and the `.txt` is removed only after that, so a crash at any step leaves
//! at least one complete copy of every line. The same pass computes the file's facts for
//! the index, and retention runs after each file and once an hour. A failed compression
//! is retried after `RETRY_DELAY`, until it succeeds, the `.txt` is gone or shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use flate2::Compression;

use super::facts::{self, FileFacts, HashingWriter, LineTally};
use super::names;
use super::retention::Retention;
use super::status::StatusCell;
use super::DumpStatus;

/// Interval of the retention pass while no file is rotated, so that `dump.retain.days`
/// also deletes files on a server that receives nothing.
const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// Wait before a failed compression runs again. A full disk or a broken directory is
/// rarely fixed within seconds, and each attempt reads the whole `.txt`.
pub(super) const RETRY_DELAY: Duration = Duration::from_secs(60);

/// Read buffer for the `.txt`, in bytes.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// gzip level 5, because the worker must keep up with rotation on a busy server. On a 34 MB
/// file of corpus lines zlib-rs took 0.20 s at level 5 and 0.28 s at level 6 (the zlib
/// default), for an output 0.5% larger. `gzip -6` took 0.49 s on the same file.
const GZIP_LEVEL: u32 = 5;

/// Queue of rotated files and the thread that compresses them.
pub(super) struct Compressor {
    queue: Option<mpsc::Sender<PathBuf>>,
    worker: Option<JoinHandle<()>>,
}

impl Compressor {
    pub(super) fn start(
        status: Arc<StatusCell<DumpStatus>>,
        retention: Retention,
        retry_delay: Duration,
    ) -> io::Result<Self> {
        let (queue, files) = mpsc::channel::<PathBuf>();
        let worker = std::thread::Builder::new()
            .name("dump-compress".into())
            .spawn(move || {
                let mut worker = Worker {
                    status,
                    retention,
                    retry_delay,
                    retries: Vec::new(),
                };
                worker.run(&files);
            })?;

        Ok(Self {
            queue: Some(queue),
            worker: Some(worker),
        })
    }

    /// Queues a closed, fsynced `.txt` file for compression.
    pub(super) fn submit(&self, path: PathBuf) {
        let Some(queue) = &self.queue else {
            tracing::error!(file = %path.display(), "dump compression already finished; file stays uncompressed");
            return;
        };
        if let Err(mpsc::SendError(path)) = queue.send(path) {
            // Only a panic on the worker closes the queue early. The `.txt` stays complete.
            tracing::error!(file = %path.display(), "dump compression worker is gone; file stays uncompressed");
        }
    }

    /// Closes the queue and waits until every queued file is compressed.
    pub(super) fn finish(&mut self) {
        drop(self.queue.take());

        let Some(worker) = self.worker.take() else {
            return;
        };
        if worker.join().is_err() {
            tracing::error!("dump compression worker panicked; some rotated files stay uncompressed");
        }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The state of the compression thread.
struct Worker {
    status: Arc<StatusCell<DumpStatus>>,
    retention: Retention,
    retry_delay: Duration,
    /// Files whose compression failed, with the time of the next attempt, oldest first.
    retries: Vec<(PathBuf, Instant)>,
}

impl Worker {
    /// Compresses queued files and due retries until the queue closes. Files still waiting
    /// for a retry then stay `.txt`; start-up repair compresses them at the next start.
    fn run(&mut self, files: &mpsc::Receiver<PathBuf>) {
        loop {
            match files.recv_timeout(self.next_wait()) {
                Ok(path) => {
                    self.compress_and_count(path);
                    self.retention.apply();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.retry_due();
                    self.retention.apply();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn next_wait(&self) -> Duration {
        let until_retry = self.retries.first().map(|(_, due)| due.saturating_duration_since(Instant::now()));
        until_retry.map_or(RETENTION_INTERVAL, |wait| wait.min(RETENTION_INTERVAL))
    }

    fn retry_due(&mut self) {
        let now = Instant::now();
        let due_count = self.retries.iter().take_while(|(_, due)| *due <= now).count();
        let due: Vec<(PathBuf, Instant)> = self.retries.drain(..due_count).collect();
        for (path, _) in due {
            if !path.exists() {
                tracing::info!(file = %path.display(), "dump file waiting for a compression retry is gone");
                continue;
            }
            tracing::info!(file = %path.display(), "retrying dump compression");
            self.compress_and_count(path);
        }
    }

    fn compress_and_count(&mut self, txt: PathBuf) {
        match compress_file(&txt) {
            Ok(gz_bytes) => {
                self.status.update(|s| s.compressions += 1);
                tracing::info!(file = %txt.display(), gz_bytes, "dump file compressed");
            }
            Err(error) => {
                self.status.update(|s| s.compression_errors += 1);
                tracing::error!(
                    file = %txt.display(),
                    %error,
                    retry_secs = self.retry_delay.as_secs(),
                    "dump compression failed; the .txt file is kept and compressed again later"
                );
                self.retries.push((txt, Instant::now() + self.retry_delay));
            }
        }
    }
}

/// Compresses `dir/NAME.txt` to `dir/NAME.txt.gz`, stores its facts in the sidecar and
/// removes the `.txt`. Returns the size of the `.gz`. On error the `.txt` stays and the
/// temporary file is removed.
pub fn compress_file(txt: &Path) -> io::Result<u64> {
    let (dir, plain_name) = split_path(txt)?;
    let gz_name = names::compressed_name(plain_name);
    let gz = dir.join(&gz_name);
    let temp = dir.join(names::temp_compressed_name(plain_name));

    let facts = match write_compressed(txt, &temp) {
        Ok(facts) => facts,
        Err(error) => {
            remove_temp(&temp);
            return Err(error);
        }
    };

    if let Err(error) = fs::rename(&temp, &gz) {
        remove_temp(&temp);
        return Err(error);
    }
    sync_dir(dir)?;

    // The index rebuilds missing facts at the next start, so a failed store costs only time.
    if let Err(error) = facts::store(dir, &gz_name, &facts) {
        tracing::warn!(file = %gz.display(), %error, "could not store dump file facts");
    }

    // The `.txt.gz` is durable at this point, so a failed removal only leaves a duplicate.
    if let Err(error) = fs::remove_file(txt) {
        tracing::warn!(file = %txt.display(), %error, "compressed dump file, but the .txt could not be removed");
    }
    Ok(facts.bytes)
}

/// Writes the gzip of `txt` to `temp` and fsyncs it, counting lines on the way in and
/// hashing the compressed bytes on the way out. Neither file is opened through a symlink,
/// so a link planted in `own/` cannot make it read or overwrite a file elsewhere.
fn write_compressed(txt: &Path, temp: &Path) -> io::Result<FileFacts> {
    let source = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(txt)?;
    let mut source = BufReader::with_capacity(READ_BUFFER_BYTES, source);
    let target = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(temp)?;
    let target = HashingWriter::new(BufWriter::new(target));
    let mut encoder = GzEncoder::new(target, Compression::new(GZIP_LEVEL));

    let mut tally = LineTally::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        if source.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        encoder.write_all(&line)?;
        tally.add(line.strip_suffix(b"\n").unwrap_or(&line));
    }

    // `finish` writes the gzip trailer; dropping the encoder instead would hide its error.
    let (mut buffered, sha256) = encoder.finish()?.finish();
    buffered.flush()?;
    let target = buffered.into_inner().map_err(io::IntoInnerError::into_error)?;
    target.sync_all()?;

    Ok(tally.into_facts(target.metadata()?.len(), sha256))
}

fn remove_temp(temp: &Path) {
    match fs::remove_file(temp) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(file = %temp.display(), %error, "could not remove temporary dump file");
        }
    }
}

fn split_path(txt: &Path) -> io::Result<(&Path, &str)> {
    let dir = txt.parent();
    let name = txt.file_name().and_then(|name| name.to_str());
    match (dir, name) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a dump file path: {}", txt.display()),
        )),
    }
}

/// Fsyncs a directory so that a rename inside it survives a power loss.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    // Windows cannot open a directory as a file; renames there are not made durable.
    if cfg!(unix) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
