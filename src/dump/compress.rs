//! Compression of rotated files on one worker thread, in the order they were rotated.
//! A `.txt.gz` appears only after it was written in full under a `.tmp` name, fsynced
//! and renamed, and the `.txt` is removed only after that, so a crash at any step leaves
//! at least one complete copy of every line.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::names;
use super::status::StatusCell;

/// gzip level 6, the zlib default. Level 9 spends more CPU for slightly smaller files (a
/// general zlib trade-off, not measured on dump files), and the worker must keep up with
/// rotation on a busy server.
const GZIP_LEVEL: u32 = 6;

/// Queue of rotated files and the thread that compresses them.
pub(super) struct Compressor {
    queue: Option<mpsc::Sender<PathBuf>>,
    worker: Option<JoinHandle<()>>,
}

impl Compressor {
    pub(super) fn start(status: Arc<StatusCell>) -> io::Result<Self> {
        let (queue, files) = mpsc::channel::<PathBuf>();
        let worker = std::thread::Builder::new()
            .name("dump-compress".into())
            .spawn(move || {
                for path in files {
                    compress_and_count(&path, &status);
                }
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

fn compress_and_count(txt: &Path, status: &StatusCell) {
    match compress_file(txt) {
        Ok(gz_bytes) => {
            status.update(|s| s.compressions += 1);
            tracing::info!(file = %txt.display(), gz_bytes, "dump file compressed");
        }
        Err(error) => {
            status.update(|s| s.compression_errors += 1);
            tracing::error!(file = %txt.display(), %error, "dump compression failed; the .txt file is kept");
        }
    }
}

/// Compresses `dir/NAME.txt` to `dir/NAME.txt.gz` and removes the `.txt`. Returns the size
/// of the `.gz`. On error the `.txt` stays and the temporary file is removed.
pub(super) fn compress_file(txt: &Path) -> io::Result<u64> {
    let (dir, plain_name) = split_path(txt)?;
    let gz = dir.join(names::compressed_name(plain_name));
    let temp = dir.join(names::temp_compressed_name(plain_name));

    let gz_bytes = match write_compressed(txt, &temp) {
        Ok(bytes) => bytes,
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

    // The `.txt.gz` is durable at this point, so a failed removal only leaves a duplicate.
    if let Err(error) = fs::remove_file(txt) {
        tracing::warn!(file = %txt.display(), %error, "compressed dump file, but the .txt could not be removed");
    }
    Ok(gz_bytes)
}

fn write_compressed(txt: &Path, temp: &Path) -> io::Result<u64> {
    let mut source = File::open(txt)?;
    let target = File::create(temp)?;

    let mut encoder = GzEncoder::new(BufWriter::new(target), Compression::new(GZIP_LEVEL));
    io::copy(&mut source, &mut encoder)?;

    // `finish` writes the gzip trailer; dropping the encoder instead would hide its error.
    let mut buffered = encoder.finish()?;
    buffered.flush()?;
    let target = buffered.into_inner().map_err(io::IntoInnerError::into_error)?;
    target.sync_all()?;

    Ok(target.metadata()?.len())
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
