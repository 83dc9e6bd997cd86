//! `lokstream dump verify`: checks every `.txt` and `.txt.gz` file of a folder, as this
//! server wrote it or as a researcher downloaded it. A file is damaged when a gzip member
//! fails its CRC or length check or is cut short, or when a line is not a JSON object. It
//! is also damaged when the last line has no newline, when its SHA-256 differs from its
//! stored facts, or when it is named `.txt.gz` but does not start with the gzip magic bytes
//! (an empty file included).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::facts::{self, HashingReader};
use super::lines::{self, Line};

/// Damage of a `.txt.gz` that is not gzip.
pub(super) const NOT_GZIP: &str = "named .txt.gz but not gzip (no gzip magic bytes)";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the folder {path}: {source}")]
    ReadDir { path: PathBuf, source: io::Error },
}

/// The outcome of checking one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCheck {
    pub name: String,
    pub lines: u64,
    /// Lines that are not one JSON object (blank, invalid JSON, another JSON value, too long).
    pub bad_lines: u64,
    /// `None` when the file is intact; otherwise what is wrong.
    pub damage: Option<String>,
}

impl FileCheck {
    pub fn is_ok(&self) -> bool {
        self.damage.is_none()
    }
}

/// Checks every file named `*.txt` or `*.txt.gz` directly in `dir`, in name order.
pub fn verify_dir(dir: &Path) -> Result<Vec<FileCheck>, VerifyError> {
    let read_error = |source| VerifyError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dump = name.ends_with(".txt") || name.ends_with(".txt.gz");
        if is_dump && !name.starts_with('.') && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();

    Ok(names.into_iter().map(|name| verify_file(dir, name)).collect())
}

fn verify_file(dir: &Path, name: String) -> FileCheck {
    let mut check = FileCheck {
        name,
        lines: 0,
        bad_lines: 0,
        damage: None,
    };
    let path = dir.join(&check.name);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) => {
            check.damage = Some(format!("cannot open: {error}"));
            return check;
        }
    };

    let mut hashing = HashingReader::new(file);
    let ending = lines::for_each_line(&mut hashing, |line| {
        check.lines += 1;
        if !is_json_object(&line) {
            check.bad_lines += 1;
        }
        Ok(())
    });

    let gzip_expected = check.name.ends_with(".txt.gz");
    check.damage = match ending {
        Err(error) => Some(format!("unreadable after line {}: {error}", check.lines)),
        Ok(ending) if gzip_expected && !ending.gzip => Some(NOT_GZIP.to_owned()),
        Ok(ending) if ending.unterminated => Some("the last line has no newline (torn write)".to_owned()),
        Ok(_) if check.bad_lines > 0 => Some(format!("{} lines are not JSON objects", check.bad_lines)),
        Ok(_) => checksum_mismatch(dir, &check.name, hashing),
    };
    check
}

fn is_json_object(line: &Line<'_>) -> bool {
    match line {
        // Validating with `IgnoredAny` builds no map; the first byte distinguishes an object.
        Line::Whole(bytes) => {
            let opens_object = bytes.trim_ascii_start().first() == Some(&b'{');
            opens_object && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
        }
        Line::TooLong => false,
    }
}

/// Compares the file's SHA-256 with its stored facts, when it has a current sidecar.
fn checksum_mismatch(dir: &Path, name: &str, hashing: HashingReader<File>) -> Option<String> {
    let bytes = fs::metadata(dir.join(name)).ok()?.len();
    let stored = facts::load(dir, name, bytes)?;
    match hashing.finish() {
        Ok(actual) if actual == stored.sha256 => None,
        Ok(actual) => Some(format!("SHA-256 {actual} differs from the stored {}", stored.sha256)),
        Err(error) => Some(format!("unreadable: {error}")),
    }
}
