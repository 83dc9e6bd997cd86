//! Dump file names: `messages_YYYYMMDD_NNNNNNNN.txt` and its compressed `.txt.gz`.
//! Only names that pass `is_dump_file_name` are listed or served, so temporary files
//! (`.txt.gz.tmp`) and anything else in the directory stay invisible over HTTP.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use rand::Rng;

/// Subdirectory of `dump.dir` for the files this server writes.
pub const OWN_DIR: &str = "own";
/// Drop folder for files to replay.
pub const IMPORT_DIR: &str = "import";
/// Subdirectory that receives files after they were replayed.
pub const IMPORTED_DIR: &str = "imported";
/// Subdirectory where start-up repair sets aside files it cannot place; never listed.
pub const DAMAGED_DIR: &str = "damaged";

const PREFIX: &str = "messages_";
const PLAIN_SUFFIX: &str = ".txt";
const COMPRESSED_SUFFIX: &str = ".txt.gz";
const TEMP_SUFFIX: &str = ".tmp";

/// Returns `dir/own`.
pub fn own_dir(dump_dir: &Path) -> PathBuf {
    dump_dir.join(OWN_DIR)
}

/// Builds a fresh plain file name for `date` with eight random digits, so that dumps
/// of many servers can be merged into one folder without renaming.
pub(super) fn random_file_name(date: NaiveDate) -> String {
    let number: u32 = rand::rng().random_range(0..100_000_000);
    format!("{PREFIX}{}_{number:08}{PLAIN_SUFFIX}", date.format("%Y%m%d"))
}

/// Returns the name of the compressed file that `plain_name` becomes.
pub(super) fn compressed_name(plain_name: &str) -> String {
    format!("{plain_name}.gz")
}

/// Returns the temporary name the compressed file is written under before the rename.
pub(super) fn temp_compressed_name(plain_name: &str) -> String {
    format!("{plain_name}.gz{TEMP_SUFFIX}")
}

/// Returns the plain name a temporary compressed file was made from, if `name` is one.
pub(super) fn plain_name_of_temp(name: &str) -> Option<&str> {
    let plain = name.strip_suffix(TEMP_SUFFIX)?.strip_suffix(".gz")?;
    (is_dump_file_name(plain) && !is_compressed_name(plain)).then_some(plain)
}

/// Checks that `name` is exactly `messages_` + 8 digits + `_` + 8 digits + `.txt` or
/// `.txt.gz`. Such a name contains no path separator, no `..` and no `.tmp`.
pub fn is_dump_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let bytes = rest.as_bytes();
    if bytes.len() < 17 {
        return false;
    }

    let (stem, suffix) = bytes.split_at(17);
    let digits_ok = stem[..8].iter().all(u8::is_ascii_digit)
        && stem[8] == b'_'
        && stem[9..].iter().all(u8::is_ascii_digit);

    digits_ok && (suffix == PLAIN_SUFFIX.as_bytes() || suffix == COMPRESSED_SUFFIX.as_bytes())
}

/// Tells whether a valid dump file name is the compressed form.
pub fn is_compressed_name(name: &str) -> bool {
    name.ends_with(COMPRESSED_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_name_matches_pattern() {
        let date = NaiveDate::from_ymd_opt(2024, 2, 29).expect("valid date");
        let name = random_file_name(date);

        assert!(name.starts_with("messages_20240229_"), "{name}");
        assert!(is_dump_file_name(&name), "{name}");
        assert!(is_dump_file_name(&compressed_name(&name)));
        assert!(!is_dump_file_name(&temp_compressed_name(&name)));
        assert_eq!(plain_name_of_temp(&temp_compressed_name(&name)), Some(name.as_str()));
        assert_eq!(plain_name_of_temp("other.txt.gz.tmp"), None);
    }

    #[test]
    fn name_check_rejects_near_misses() {
        let rejected = [
            "",
            "messages_",
            "messages_2024010_12345678.txt",
            "messages_20240101_1234567.txt",
            "messages_20240101_123456789.txt",
            "messages_20240101-12345678.txt",
            "messages_2024010a_12345678.txt",
            "messages_20240101_12345678.txt.gz.tmp",
            "messages_20240101_12345678.txt.tmp",
            "messages_20240101_12345678.gz",
            "messages_20240101_12345678.txt/",
            "../messages_20240101_12345678.txt",
            "Messages_20240101_12345678.txt",
            "messages_٢٠٢٤٠١٠١_12345678.txt",
        ];
        for name in rejected {
            assert!(!is_dump_file_name(name), "accepted {name:?}");
        }

        assert!(is_dump_file_name("messages_20240101_00000000.txt"));
        assert!(is_dump_file_name("messages_20240101_99999999.txt.gz"));
    }
}
