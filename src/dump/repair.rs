//! Start-up repair of `own/` after a crash, run before the writer opens its new file.
//!
//! Every `.txt` there is from an earlier run, because the writer always opens a new file:
//! a torn last line is cut off, and the file is handed to the compressor. A `.txt` whose
//! `.txt.gz` exists was compressed and renamed before the crash, so it is removed. A
//! `.tmp` left by an interrupted compression is removed when its `.txt` exists, because
//! the compression reruns. Otherwise it is set aside in `damaged/`, which is never served.
//! An entry named like a dump file that is not a regular file (a symlink or a directory)
//! is set aside in `damaged/` too and never opened, so repair writes only inside `own/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::compress::sync_dir;
use super::facts;
use super::names::{self, DAMAGED_DIR};

/// Bytes read per step while searching backwards for the last newline.
const SCAN_BLOCK_BYTES: u64 = 64 * 1024;

/// Repairs `dump_dir/own` and returns the `.txt` files to compress, oldest name first.
pub(super) fn repair_own_dir(dump_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let own = names::own_dir(dump_dir);
    let mut entries: Vec<String> = Vec::new();
    for entry in fs::read_dir(&own)? {
        // A name that is not UTF-8 is no file of this server; it is never listed either.
        if let Ok(name) = entry?.file_name().into_string() {
            entries.push(name);
        }
    }
    entries.sort();

    let mut regular = Vec::with_capacity(entries.len());
    for name in entries {
        let is_ours = names::is_dump_file_name(&name) || names::plain_name_of_temp(&name).is_some();
        if is_ours && !is_regular_file(&own, &name)? {
            set_aside_non_regular(dump_dir, &own, &name);
            continue;
        }
        regular.push(name);
    }
    let entries = regular;

    for name in &entries {
        if let Some(plain) = names::plain_name_of_temp(name) {
            repair_temp(dump_dir, &own, name, plain)?;
        }
    }

    let mut leftovers = Vec::new();
    for name in &entries {
        if names::is_dump_file_name(name) && !names::is_compressed_name(name) {
            if let Some(path) = repair_plain(&own, name)? {
                leftovers.push(path);
            }
        }
        if facts::is_orphan_sidecar(&own, name) {
            fs::remove_file(own.join(name))?;
            tracing::info!(file = %name, "removed facts of a dump file that no longer exists");
        }
    }
    sync_dir(&own)?;
    Ok(leftovers)
}

/// Tells whether `own/name` is a regular file, without following a symlink. An entry
/// removed meanwhile counts as regular, because the repair steps handle a missing file.
fn is_regular_file(own: &Path, name: &str) -> io::Result<bool> {
    match fs::symlink_metadata(own.join(name)) {
        Ok(metadata) => Ok(metadata.file_type().is_file()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(error) => Err(error),
    }
}

/// Moves an entry that is not a regular file into `damaged/`. A failure is logged and
/// does not stop start-up, because the entry is never opened, listed or served.
fn set_aside_non_regular(dump_dir: &Path, own: &Path, name: &str) {
    let damaged = dump_dir.join(DAMAGED_DIR);
    let moved = fs::create_dir_all(&damaged).and_then(|()| {
        let target = unused_path(&damaged, name);
        fs::rename(own.join(name), &target).map(|()| target)
    });
    match moved {
        Ok(target) => tracing::warn!(
            file = %name,
            moved_to = %target.display(),
            "set aside an entry named like a dump file that is not a regular file"
        ),
        Err(error) => tracing::error!(
            file = %name,
            %error,
            "could not set aside an entry named like a dump file that is not a regular file; it is skipped"
        ),
    }
}

/// Returns `dir/name`, or `dir/name.N` with the first N that is not taken.
fn unused_path(dir: &Path, name: &str) -> PathBuf {
    let mut path = dir.join(name);
    let mut number = 1u32;
    while fs::symlink_metadata(&path).is_ok() {
        path = dir.join(format!("{name}.{number}"));
        number += 1;
    }
    path
}

fn repair_temp(dump_dir: &Path, own: &Path, name: &str, plain: &str) -> io::Result<()> {
    let path = own.join(name);
    if own.join(plain).exists() {
        fs::remove_file(&path)?;
        tracing::info!(file = %name, "removed an interrupted compression; it reruns");
        return Ok(());
    }

    let damaged = dump_dir.join(DAMAGED_DIR);
    fs::create_dir_all(&damaged)?;
    fs::rename(&path, damaged.join(name))?;
    tracing::warn!(
        file = %name,
        moved_to = %damaged.display(),
        "set aside a temporary compressed file whose source is gone"
    );
    Ok(())
}

/// Repairs one `.txt` of an earlier run; returns it when it should be compressed.
fn repair_plain(own: &Path, name: &str) -> io::Result<Option<PathBuf>> {
    let path = own.join(name);
    if own.join(names::compressed_name(name)).exists() {
        fs::remove_file(&path)?;
        tracing::warn!(file = %name, "removed a dump file that was already compressed before a crash");
        return Ok(None);
    }

    let (kept_bytes, cut_bytes) = cut_torn_line(&path)?;
    if cut_bytes > 0 {
        tracing::warn!(file = %name, cut_bytes, kept_bytes, "cut a torn last line from a dump file");
    }
    if kept_bytes == 0 {
        fs::remove_file(&path)?;
        tracing::info!(file = %name, "removed an empty dump file of an earlier run");
        return Ok(None);
    }

    tracing::info!(file = %name, bytes = kept_bytes, "dump file of an earlier run queued for compression");
    Ok(Some(path))
}

/// Cuts the file after its last `\n` and fsyncs it when anything was cut. Returns the
/// bytes kept and the bytes cut. A symlink fails to open, so nothing outside `own/` is cut.
pub(super) fn cut_torn_line(path: &Path) -> io::Result<(u64, u64)> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let length = file.metadata()?.len();
    let kept = length_through_last_newline(&mut file, length)?;
    if kept == length {
        return Ok((length, 0));
    }

    file.set_len(kept)?;
    file.sync_all()?;
    Ok((kept, length - kept))
}

/// Returns the offset just past the last `\n` in the first `length` bytes, or 0.
fn length_through_last_newline(file: &mut File, length: u64) -> io::Result<u64> {
    let mut end = length;
    let mut block = Vec::new();
    while end > 0 {
        let start = end.saturating_sub(SCAN_BLOCK_BYTES);
        block.resize((end - start) as usize, 0);
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;

        if let Some(at) = block.iter().rposition(|&byte| byte == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
