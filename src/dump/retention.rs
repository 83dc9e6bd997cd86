//! Retention: deletes the oldest closed (`.txt.gz`) dump files once `own/` holds more than
//! `dump.retain.bytes`, and every closed file older than `dump.retain.days`. It never
//! deletes a `.txt`, so the file being written and files waiting for compression stay.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::facts;
use super::listing::{self, DumpFile};
use super::status::StatusCell;
use super::{own_dir, DumpConfig, DumpStatus};

const SECONDS_PER_DAY: u64 = 24 * 60 * 60;

/// The retention limits of one dump directory; cheap to clone.
#[derive(Clone)]
pub(super) struct Retention {
    own: PathBuf,
    /// 0 is off.
    max_bytes: u64,
    max_age: Option<Duration>,
    status: Arc<StatusCell<DumpStatus>>,
}

impl Retention {
    pub(super) fn new(config: &DumpConfig, status: Arc<StatusCell<DumpStatus>>) -> Self {
        let max_age = (config.retain_days > 0).then(|| max_age_of_days(config.retain_days));
        Self {
            own: own_dir(&config.dir),
            max_bytes: config.retain_bytes,
            max_age,
            status,
        }
    }

    /// Deletes what the limits require, logging each file. Errors are logged, because the
    /// next pass retries them.
    pub(super) fn apply(&self) {
        if self.max_bytes == 0 && self.max_age.is_none() {
            return;
        }
        let files = match listing::list_files(&self.own) {
            Ok(files) => files,
            Err(error) => {
                tracing::error!(dir = %self.own.display(), %error, "listing dump files for retention failed");
                return;
            }
        };

        for (file, reason) in select_for_deletion(files, self.max_bytes, self.max_age, SystemTime::now()) {
            self.delete(&file, reason);
        }
    }

    fn delete(&self, file: &DumpFile, reason: &'static str) {
        match fs::remove_file(self.own.join(&file.name)) {
            Ok(()) => {
                facts::remove(&self.own, &file.name);
                self.status.update(|s| s.files_deleted += 1);
                tracing::info!(file = %file.name, bytes = file.bytes, reason, "dump file deleted by retention");
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::error!(file = %file.name, %error, "deleting dump file failed"),
        }
    }
}

/// Converts `dump.retain.days` to a duration. Config validation caps the days, and the
/// saturation keeps a `DumpConfig` built elsewhere from wrapping to a short age.
fn max_age_of_days(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(SECONDS_PER_DAY))
}

/// Picks the closed files to delete, oldest first, with the limit that selected each.
/// `files` is the listing, newest first.
fn select_for_deletion(
    files: Vec<DumpFile>,
    max_bytes: u64,
    max_age: Option<Duration>,
    now: SystemTime,
) -> Vec<(DumpFile, &'static str)> {
    let mut total: u64 = files.iter().map(|file| file.bytes).sum();
    let cutoff = max_age.and_then(|age| now.checked_sub(age));

    let mut selected = Vec::new();
    for file in files.into_iter().rev().filter(|file| file.compressed) {
        let too_old = cutoff.is_some_and(|cutoff| SystemTime::from(file.modified) < cutoff);
        let too_much = max_bytes > 0 && total > max_bytes;
        let reason = match (too_old, too_much) {
            (true, _) => "dump.retain.days",
            (false, true) => "dump.retain.bytes",
            (false, false) => continue,
        };
        total -= file.bytes;
        selected.push((file, reason));
    }
    selected
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn file(name: &str, bytes: u64, age_days: u64, now: SystemTime) -> DumpFile {
        let modified = now - Duration::from_secs(age_days * SECONDS_PER_DAY);
        DumpFile {
            name: name.to_owned(),
            bytes,
            modified: DateTime::<Utc>::from(modified),
            compressed: name.ends_with(".gz"),
        }
    }

    fn names(selected: &[(DumpFile, &str)]) -> Vec<String> {
        selected.iter().map(|(file, _)| file.name.clone()).collect()
    }

    #[test]
    fn bytes_limit_deletes_oldest_closed_files() {
        let now = SystemTime::now();
        let files = vec![
            file("current.txt", 500, 0, now),
            file("c.txt.gz", 300, 1, now),
            file("b.txt.gz", 300, 2, now),
            file("a.txt.gz", 300, 3, now),
        ];

        let selected = select_for_deletion(files, 1000, None, now);

        assert_eq!(names(&selected), ["a.txt.gz", "b.txt.gz"]);
        assert!(selected.iter().all(|(_, reason)| *reason == "dump.retain.bytes"));
    }

    #[test]
    fn bytes_limit_never_deletes_txt() {
        let now = SystemTime::now();
        let files = vec![file("current.txt", 5000, 0, now), file("waiting.txt", 5000, 1, now)];

        assert!(select_for_deletion(files, 1000, None, now).is_empty());
    }

    #[test]
    fn huge_days_limit_deletes_nothing() {
        let now = SystemTime::now();
        let files = vec![file("old.txt.gz", 10, 8, now)];

        // Without saturation, these days times 86400 seconds wrap to 61184 seconds, under a day.
        let days = 213_503_982_334_602;
        let selected = select_for_deletion(files, 0, Some(max_age_of_days(days)), now);

        assert!(selected.is_empty(), "deleted {:?}", names(&selected));
    }

    #[test]
    fn days_limit_deletes_only_old_files() {
        let now = SystemTime::now();
        let files = vec![
            file("new.txt.gz", 10, 1, now),
            file("old.txt.gz", 10, 8, now),
            file("old.txt", 10, 9, now),
        ];

        let selected = select_for_deletion(files, 0, Some(Duration::from_secs(7 * SECONDS_PER_DAY)), now);

        assert_eq!(names(&selected), ["old.txt.gz"]);
        assert_eq!(selected[0].1, "dump.retain.days");
    }
}
