//! The `import/` drop folder: each `.txt` or `.txt.gz` file (plain or gzip, detected by
//! content) is replayed line by line through the publisher, in name order and line order,
//! then moved to `imported/`. Deduplication applies as for any other ingest.
//!
//! A file is taken only once its size and modification time stayed the same across two
//! scans, so a file still being copied in waits. A plain file whose last line has no
//! newline waits longer, for `INCOMPLETE_QUIET_POLLS` poll intervals without a change,
//! because a paused copy leaves exactly that. Progress is kept in a hidden marker
//! `import/.NAME.progress` after each batch is in the dump, so an import cut short by a
//! shutdown or a write error resumes after the lines already stored.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lines::{self, Ending, Line};
use super::status::StatusCell;
use super::{DumpConfig, DumpError, IMPORTED_DIR, IMPORT_DIR};
use crate::publisher::{Origin, PublishError, Publisher};

/// Lines read ahead and published between two progress markers.
const BATCH_LINES: usize = 256;

/// Poll intervals a plain file without a final newline must stay unmodified before it is
/// imported anyway, with its last line taken as torn.
const INCOMPLETE_QUIET_POLLS: u32 = 10;

/// Bad lines logged one by one per file; the rest are counted in the file's summary line.
const BAD_LINES_LOGGED: u64 = 10;

/// Progress of the drop folder since start-up, for `/api/status.json`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportStatus {
    /// Files replayed and moved to `imported/`.
    pub files_done: u64,
    /// Files that stopped on a gzip or read error after their readable lines; they were
    /// moved to `imported/` too.
    pub files_damaged: u64,
    /// Attempts stopped by a dump or broker error; the file stays and is retried.
    pub attempts_failed: u64,
    /// Lines accepted and published.
    pub lines_imported: u64,
    pub duplicates: u64,
    /// Lines that are not a valid message (invalid JSON, not an object, too long).
    pub bad_lines: u64,
    /// File being imported, and how many of its lines are done.
    pub current_file: Option<String>,
    pub current_lines: u64,
    pub last_error: Option<String>,
}

/// Lines of one batch; `None` stands for a line too long to read.
type Batch = Vec<Option<Vec<u8>>>;

/// Line counts of one file.
#[derive(Default)]
struct Tally {
    lines: u64,
    imported: u64,
    duplicates: u64,
    bad: u64,
}

/// Reason an import stopped before the end of its file.
#[derive(Debug, thiserror::Error)]
enum ImportError {
    #[error("the dump write failed: {0}")]
    Dump(#[from] DumpError),
    #[error("publishing failed: {0}")]
    Publish(PublishError),
    #[error("shutdown")]
    Shutdown,
}

/// Watches `import/`; `run` consumes it.
pub(super) struct ImportFolder {
    import_dir: PathBuf,
    imported_dir: PathBuf,
    poll: Duration,
    status: Arc<StatusCell<ImportStatus>>,
}

impl ImportFolder {
    pub(super) fn new(config: &DumpConfig, status: Arc<StatusCell<ImportStatus>>) -> Self {
        Self {
            import_dir: config.dir.join(IMPORT_DIR),
            imported_dir: config.dir.join(IMPORTED_DIR),
            poll: Duration::from_secs(config.import_poll_secs),
            status,
        }
    }

    /// Scans the folder every poll interval until `shutdown` fires.
    pub(super) async fn run(self, publisher: Arc<Publisher>, shutdown: CancellationToken) {
        tracing::info!(dir = %self.import_dir.display(), poll_secs = self.poll.as_secs(), "watching the import folder");
        let mut interval = tokio::time::interval(self.poll);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous = HashMap::new();

        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = interval.tick() => {}
            }
            let ready = match self.scan(&mut previous).await {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::error!(dir = %self.import_dir.display(), %error, "scanning the import folder failed");
                    continue;
                }
            };
            for name in ready {
                if shutdown.is_cancelled() {
                    break;
                }
                self.import_file(&name, &publisher, &shutdown).await;
            }
        }
        tracing::info!("import folder watcher stopped");
    }

    /// Returns the files whose size and modification time match the previous scan, in
    /// name order, and records this scan in `previous`.
    async fn scan(&self, previous: &mut HashMap<String, (u64, SystemTime)>) -> io::Result<Vec<String>> {
        let dir = self.import_dir.clone();
        let incomplete_quiet = self.poll * INCOMPLETE_QUIET_POLLS;
        let current = tokio::task::spawn_blocking(move || list_candidates(&dir, incomplete_quiet))
            .await
            .map_err(io::Error::other)??;

        let mut ready: Vec<String> = current
            .iter()
            .filter(|(name, stamp)| previous.get(*name) == Some(*stamp))
            .map(|(name, _)| name.clone())
            .collect();
        ready.sort();
        *previous = current;
        Ok(ready)
    }

    async fn import_file(&self, name: &str, publisher: &Publisher, shutdown: &CancellationToken) {
        let path = self.import_dir.join(name);
        let done_before = read_progress(&self.import_dir, name);
        self.status.update(|s| {
            s.current_file = Some(name.to_owned());
            s.current_lines = done_before;
        });
        tracing::info!(file = name, resume_after_lines = done_before, "importing dump file");

        let (batches, mut receiver) = mpsc::channel::<Batch>(2);
        let reader_path = path.clone();
        let max_line_bytes = publisher.message_max_bytes();
        let reader = tokio::task::spawn_blocking(move || read_batches(&reader_path, done_before, max_line_bytes, batches));

        let mut tally = Tally {
            lines: done_before,
            ..Tally::default()
        };
        let mut stopped = None;
        while let Some(batch) = receiver.recv().await {
            if let Err(error) = self.publish_batch(name, batch, publisher, &mut tally).await {
                stopped = Some(error);
                break;
            }
            if let Err(error) = write_progress(&self.import_dir, name, tally.lines) {
                tracing::warn!(file = name, %error, "could not store import progress");
            }
            if shutdown.is_cancelled() {
                stopped = Some(ImportError::Shutdown);
                break;
            }
        }
        // Dropping the receiver stops the reader at its next batch.
        drop(receiver);
        let read = reader.await.map_err(io::Error::other).and_then(|read| read);

        self.status.update(|s| s.current_file = None);
        match (stopped, read) {
            (Some(error), _) => self.record_stop(name, &tally, &error),
            (None, Ok(_ending)) => self.finish(name, &tally, None),
            (None, Err(error)) if error.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(file = name, "import file disappeared before it was read");
            }
            (None, Err(error)) => self.finish(name, &tally, Some(error)),
        }
    }

    /// Publishes each line as one payload and waits until the batch is in the dump.
    async fn publish_batch(
        &self,
        name: &str,
        batch: Batch,
        publisher: &Publisher,
        tally: &mut Tally,
    ) -> Result<(), ImportError> {
        let before = (tally.imported, tally.duplicates, tally.bad);
        let mut outcomes = Vec::with_capacity(batch.len());

        for line in batch {
            tally.lines += 1;
            let Some(line) = line else {
                self.bad_line(name, tally, "the line is longer than stream.message.max_bytes");
                continue;
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            match publisher.publish(&line, Origin::Import { file: name }).await {
                Ok(outcome) => {
                    tally.imported += outcome.accepted as u64;
                    tally.duplicates += outcome.duplicates as u64;
                    outcomes.push(outcome);
                }
                Err(PublishError::Rejected(rejection)) => self.bad_line(name, tally, &rejection.detail),
                Err(error) => return Err(ImportError::Publish(error)),
            }
        }
        for outcome in outcomes {
            outcome.wait_written().await?;
        }

        self.status.update(|s| {
            s.lines_imported += tally.imported - before.0;
            s.duplicates += tally.duplicates - before.1;
            s.bad_lines += tally.bad - before.2;
            s.current_lines = tally.lines;
        });
        Ok(())
    }

    fn bad_line(&self, name: &str, tally: &mut Tally, reason: &str) {
        tally.bad += 1;
        if tally.bad <= BAD_LINES_LOGGED {
            tracing::warn!(file = name, line = tally.lines, reason, "skipped a bad line in an import file");
        }
    }

    fn record_stop(&self, name: &str, tally: &Tally, error: &ImportError) {
        if matches!(error, ImportError::Shutdown) {
            tracing::info!(file = name, lines_done = tally.lines, "import paused by shutdown; it resumes at the next start");
            return;
        }
        self.status.update(|s| {
            s.attempts_failed += 1;
            s.last_error = Some(error.to_string());
        });
        tracing::error!(file = name, lines_done = tally.lines, %error, "import stopped; the file stays and is retried");
    }

    /// Moves a file that was read to its end, or to a read error, to `imported/`.
    fn finish(&self, name: &str, tally: &Tally, damage: Option<io::Error>) {
        let moved = move_to_imported(&self.import_dir, &self.imported_dir, name);
        remove_progress(&self.import_dir, name);
        self.status.update(|s| {
            s.files_done += 1;
            if let Some(error) = &damage {
                s.files_damaged += 1;
                s.last_error = Some(format!("{name}: {error}"));
            }
        });

        if let Some(error) = damage {
            tracing::error!(file = name, lines = tally.lines, %error, "import file is damaged; the lines before the damage were imported");
        }
        match moved {
            Ok(target) => tracing::info!(
                file = name,
                moved_to = %target.display(),
                lines = tally.lines,
                imported = tally.imported,
                duplicates = tally.duplicates,
                bad_lines = tally.bad,
                "import file done"
            ),
            Err(error) => tracing::error!(file = name, %error, "could not move the imported file; it would be imported again"),
        }
    }
}

/// Lists the regular files of `dir` named `*.txt` or `*.txt.gz` (hidden ones left out)
/// with their size and modification time.
/// Lists the importable files with their size and modification time, leaving out a plain
/// file without a final newline that changed less than `incomplete_quiet` ago.
fn list_candidates(dir: &Path, incomplete_quiet: Duration) -> io::Result<HashMap<String, (u64, SystemTime)>> {
    let mut found = HashMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let importable = (name.ends_with(".txt") || name.ends_with(".txt.gz")) && !name.starts_with('.');
        let metadata = entry.metadata()?;
        if !importable || !metadata.is_file() {
            continue;
        }

        let modified = metadata.modified()?;
        let quiet_for = SystemTime::now().duration_since(modified).unwrap_or(Duration::ZERO);
        if quiet_for < incomplete_quiet && !looks_complete(&entry.path())? {
            tracing::debug!(file = %name, "import file has no final newline yet; waiting");
            continue;
        }
        found.insert(name, (metadata.len(), modified));
    }
    Ok(found)
}

/// Tells whether a plain file is empty or ends with `\n`. A gzip file counts as complete,
/// because its decoder reports a member cut short.
fn looks_complete(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};

    let mut file = File::open(path)?;
    let mut head = Vec::with_capacity(2);
    (&mut file).take(2).read_to_end(&mut head)?;
    if head == lines::GZIP_MAGIC {
        return Ok(true);
    }
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(true);
    }

    let mut last = [0u8; 1];
    file.seek(SeekFrom::End(-1))?;
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Reads `path` on a blocking thread and sends its lines in batches, after skipping the
/// first `skip` lines. A line longer than `max_line_bytes` is sent as `None` without being
/// buffered whole. Ends early, without error, when the receiver is gone.
fn read_batches(path: &Path, skip: u64, max_line_bytes: usize, batches: mpsc::Sender<Batch>) -> io::Result<Ending> {
    let mut seen = 0u64;
    let mut batch: Batch = Vec::with_capacity(BATCH_LINES);
    let receiver_gone = || io::Error::new(io::ErrorKind::Interrupted, "import stopped");

    let result = lines::for_each_line_up_to(File::open(path)?, max_line_bytes, |line| {
        seen += 1;
        if seen <= skip {
            return Ok(());
        }
        batch.push(match line {
            Line::Whole(bytes) => Some(bytes.to_vec()),
            Line::TooLong => None,
        });
        if batch.len() == BATCH_LINES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_LINES));
            batches.blocking_send(full).map_err(|_| receiver_gone())?;
        }
        Ok(())
    });

    // The lines before a read error are sent too, so a damaged file imports what it can.
    if !batch.is_empty() && batches.blocking_send(batch).is_err() {
        return Err(receiver_gone());
    }
    result
}

fn progress_path(import_dir: &Path, name: &str) -> PathBuf {
    import_dir.join(format!(".{name}.progress"))
}

fn read_progress(import_dir: &Path, name: &str) -> u64 {
    fs::read_to_string(progress_path(import_dir, name))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

fn write_progress(import_dir: &Path, name: &str, lines: u64) -> io::Result<()> {
    fs::write(progress_path(import_dir, name), format!("{lines}\n"))
}

fn remove_progress(import_dir: &Path, name: &str) {
    match fs::remove_file(progress_path(import_dir, name)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(file = name, %error, "could not remove import progress"),
    }
}

/// Moves `import/name` to `imported/name`, or to `imported/STEM.N.EXT` when that is taken.
fn move_to_imported(import_dir: &Path, imported_dir: &Path, name: &str) -> io::Result<PathBuf> {
    fs::create_dir_all(imported_dir)?;
    let (stem, extension) = match name.strip_suffix(".txt.gz") {
        Some(stem) => (stem, ".txt.gz"),
        None => (name.strip_suffix(".txt").unwrap_or(name), ".txt"),
    };

    let mut target = imported_dir.join(name);
    let mut number = 1;
    while target.try_exists()? {
        target = imported_dir.join(format!("{stem}.{number}{extension}"));
        number += 1;
    }
    fs::rename(import_dir.join(name), &target)?;
    Ok(target)
}
