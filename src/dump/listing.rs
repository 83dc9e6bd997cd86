//! The dump files in `own/` that may be listed and downloaded: regular files (not
//! symlinks) whose names pass `names::is_dump_file_name`, which leaves out `.tmp` files.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::names;

/// One listed file.
pub(super) struct DumpFile {
    pub(super) name: String,
    pub(super) bytes: u64,
    pub(super) modified: DateTime<Utc>,
    pub(super) compressed: bool,
}

/// Lists the dump files in `own`, newest first, leaving out a `.txt` whose `.txt.gz` exists. A missing `own` is an empty listing,
/// because a writer with writing disabled does not create it.
pub(super) fn list_files(own: &Path) -> io::Result<Vec<DumpFile>> {
    let entries = match fs::read_dir(own) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };

    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        // A name that is not UTF-8 cannot match the dump file pattern.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(metadata) = regular_file_metadata(own, &name)? else {
            continue;
        };

        files.push(DumpFile {
            compressed: names::is_compressed_name(&name),
            bytes: metadata.len(),
            modified: metadata.modified()?.into(),
            name,
        });
    }

    // Between the rename of its `.txt.gz` into place and its own removal, a `.txt` has
    // the same lines as its `.txt.gz`, so only the `.txt.gz` is listed.
    let compressed: HashSet<String> = files.iter().filter(|file| file.compressed).map(|file| file.name.clone()).collect();
    files.retain(|file| file.compressed || !compressed.contains(&names::compressed_name(&file.name)));

    files.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| b.name.cmp(&a.name)));
    Ok(files)
}

/// Returns the metadata of `own/name` if `name` is a dump file name and the entry is a
/// regular file, not a symlink. `None` also covers a file removed meanwhile, as happens
/// to a `.txt` right after its compression.
pub(super) fn regular_file_metadata(own: &Path, name: &str) -> io::Result<Option<Metadata>> {
    if !names::is_dump_file_name(name) {
        return Ok(None);
    }

    match fs::symlink_metadata(own.join(name)) {
        Ok(metadata) if metadata.file_type().is_file() => Ok(Some(metadata)),
        Ok(_) => Ok(None),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}
