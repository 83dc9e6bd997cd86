//! Tests of the writer thread and compression against real files in a temporary directory.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{TimeZone, Utc};
use flate2::read::MultiGzDecoder;

use super::test_clock::TestClock;
use super::{compress, DumpConfig, DumpError, DumpWriter, Written};

/// Builds the default dump settings with `dir` and `rotate_bytes`.
pub(super) fn config(dir: &Path, rotate_bytes: u64) -> DumpConfig {
    let dir = dir.to_str().expect("UTF-8 temp path");
    let rotate = rotate_bytes.to_string();
    crate::config::Config::with_overrides(&[("dump.dir", dir), ("dump.rotate.bytes", &rotate)])
        .expect("valid dump settings")
        .dump
}

fn message(id: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"id_str":"{id}","source_type":"test","text":"message number {id} with padding"}}"#
    ))
}

fn messages(ids: std::ops::Range<usize>) -> Vec<Bytes> {
    ids.map(message).collect()
}

/// Names of the entries in `own/` without the hidden facts files, sorted.
fn own_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join("own"))
        .expect("own/ exists")
        .map(|entry| entry.expect("readable entry").file_name().into_string().expect("UTF-8 name"))
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Reads a `.txt` or `.txt.gz` file and returns its text.
fn read_text(path: &Path) -> String {
    let raw = fs::read(path).expect("readable dump file");
    if path.extension().is_some_and(|ext| ext == "gz") {
        let mut text = String::new();
        MultiGzDecoder::new(raw.as_slice())
            .read_to_string(&mut text)
            .expect("valid gzip with UTF-8 content");
        return text;
    }
    String::from_utf8(raw).expect("UTF-8 content")
}

/// Splits a file into lines, checking that it ends with a newline and that every line
/// is a JSON object, and returns the `id_str` of each line.
fn read_ids(path: &Path) -> Vec<usize> {
    let text = read_text(path);
    assert!(text.ends_with('\n'), "{} does not end with a newline", path.display());

    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("invalid JSON line {line:?} in {}: {error}", path.display()));
            value["id_str"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .unwrap_or_else(|| panic!("line without numeric id_str: {line}"))
        })
        .collect()
}

fn own_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("own").join(name)
}

async fn wait_all(pending: Vec<Written>) {
    for written in pending {
        written.wait().await.expect("lines written");
    }
}

#[tokio::test]
async fn lines_written_in_order_as_json_lines() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");

    for batch in [0..3, 3..4, 4..10] {
        writer.append(messages(batch)).await.expect("queued").wait().await.expect("written");
    }

    let names = own_names(temp.path());
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("messages_20240501_"), "{names:?}");
    assert!(names[0].ends_with(".txt"), "{names:?}");
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), (0..10).collect::<Vec<_>>());

    let status = writer.status();
    let expected_bytes: u64 = messages(0..10).iter().map(|line| line.len() as u64 + 1).sum();
    assert!(status.enabled);
    assert!(status.healthy);
    assert_eq!(status.current_file.as_deref(), Some(names[0].as_str()));
    assert_eq!(status.lines_written, 10);
    assert_eq!(status.bytes_written, expected_bytes);
    assert_eq!(status.rotations, 0);

    for sub in ["own", "import", "imported"] {
        assert!(temp.path().join(sub).is_dir(), "{sub}/ missing");
    }
    writer.shutdown().await;
}

#[tokio::test]
async fn rotates_at_utc_midnight() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 3, 9, 23, 59, 59));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), Arc::clone(&clock) as _).expect("writer opens");

    writer.append(messages(0..5)).await.expect("queued").wait().await.expect("written");
    clock.set(Utc.with_ymd_and_hms(2024, 3, 10, 0, 0, 1).single().expect("valid time"));
    writer.append(messages(5..10)).await.expect("queued").wait().await.expect("written");
    writer.shutdown().await;

    let names = own_names(temp.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("messages_20240309_"), "{names:?}");
    assert!(names[0].ends_with(".txt.gz"), "the closed file is not compressed: {names:?}");
    assert!(names[1].starts_with("messages_20240310_"), "{names:?}");
    assert!(names[1].ends_with(".txt"), "{names:?}");
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), (0..5).collect::<Vec<_>>());
    assert_eq!(read_ids(&own_path(temp.path(), &names[1])), (5..10).collect::<Vec<_>>());

    let status = writer.status();
    assert_eq!(status.rotations, 1);
    assert_eq!(status.compressions, 1);
    assert_eq!(status.lines_written, 10);
}

#[tokio::test]
async fn rotates_at_size_without_splitting_lines() {
    const ROTATE_BYTES: u64 = 1024;
    const LINES: usize = 600;

    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), ROTATE_BYTES), clock).expect("writer opens");

    // Appends of 1 to 7 lines, queued without waiting, so batches share flushes.
    let mut pending = Vec::new();
    let mut next = 0;
    let mut size = 1;
    while next < LINES {
        let end = (next + size).min(LINES);
        pending.push(writer.append(messages(next..end)).await.expect("queued"));
        next = end;
        size = size % 7 + 1;
    }
    wait_all(pending).await;
    writer.shutdown().await;

    let names = own_names(temp.path());
    let plain: Vec<&String> = names.iter().filter(|name| name.ends_with(".txt")).collect();
    let compressed: Vec<&String> = names.iter().filter(|name| name.ends_with(".txt.gz")).collect();
    assert_eq!(plain.len(), 1, "only the current file stays .txt: {names:?}");
    assert_eq!(compressed.len() + plain.len(), names.len(), "unexpected files: {names:?}");
    assert!(compressed.len() >= 20, "expected many rotations: {names:?}");

    let longest_line = messages(0..LINES).iter().map(|line| line.len() as u64 + 1).max().unwrap_or(0);
    let mut files: Vec<Vec<usize>> = Vec::new();
    for name in &names {
        let path = own_path(temp.path(), name);
        let ids = read_ids(&path);
        let text_bytes = read_text(&path).len() as u64;
        assert!(!ids.is_empty(), "{name} is empty");
        assert!(
            text_bytes < ROTATE_BYTES + longest_line,
            "{name} holds {text_bytes} bytes, past the rotation size"
        );
        files.push(ids);
    }

    // Each file contains a run of consecutive ids. In order of their first id, the files
    // contain every line exactly once.
    files.sort_by_key(|ids| ids[0]);
    let joined: Vec<usize> = files.concat();
    assert_eq!(joined, (0..LINES).collect::<Vec<_>>());

    let status = writer.status();
    assert_eq!(status.rotations, compressed.len() as u64);
    assert_eq!(status.compressions, compressed.len() as u64);
    assert_eq!(status.compression_errors, 0);
    assert_eq!(status.lines_written, LINES as u64);
}

#[tokio::test]
async fn shutdown_flushes_current_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");

    let mut pending = Vec::new();
    for start in (0..200).step_by(10) {
        pending.push(writer.append(messages(start..start + 10)).await.expect("queued"));
    }
    writer.shutdown().await;

    let names = own_names(temp.path());
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].ends_with(".txt"), "the current file is not rotated at shutdown: {names:?}");
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), (0..200).collect::<Vec<_>>());
    wait_all(pending).await;
    assert_eq!(writer.status().current_file, None);
}

#[tokio::test]
async fn append_after_shutdown_is_stopped() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");

    writer.append(messages(0..1)).await.expect("queued").wait().await.expect("written");
    writer.shutdown().await;
    writer.clone().shutdown().await;

    let result = writer.append(messages(1..2)).await;
    assert!(matches!(result, Err(DumpError::Stopped)), "append after shutdown was accepted");
    let names = own_names(temp.path());
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), vec![0]);
}

#[tokio::test]
async fn disabled_writer_writes_nothing() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let disabled = DumpConfig {
        write_enabled: false,
        ..config(temp.path(), 1024)
    };
    let writer = DumpWriter::open(&disabled, clock).expect("writer opens");

    writer.append(messages(0..10)).await.expect("accepted").wait().await.expect("completed");

    let status = writer.status();
    assert!(!status.enabled);
    assert_eq!(status.lines_written, 0);
    assert_eq!(status.current_file, None);
    let entries = fs::read_dir(temp.path()).expect("temp dir readable").count();
    assert_eq!(entries, 0, "a disabled writer created files");

    writer.shutdown().await;
    assert!(matches!(writer.append(messages(10..11)).await, Err(DumpError::Stopped)));
}

/// Puts a plain file in place of `own/`, which makes opening a dump file fail; returns
/// the path of `own/`.
fn break_own_dir(dir: &Path) -> PathBuf {
    let own = dir.join("own");
    fs::remove_dir(&own).expect("own/ removed");
    fs::write(&own, b"not a directory").expect("file in place of own/");
    own
}

fn restore_own_dir(own: &Path) {
    fs::remove_file(own).expect("file removed");
    fs::create_dir(own).expect("own/ restored");
}

#[tokio::test]
async fn write_error_fails_append_then_recovers() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");

    let own = break_own_dir(temp.path());

    let failed = writer.append(messages(0..3)).await.expect("queued").wait().await;
    assert!(matches!(failed, Err(DumpError::Io(_))), "append into a broken directory succeeded");
    let status = writer.status();
    assert!(!status.healthy);
    assert_eq!(status.write_errors, 1);
    assert!(status.last_error.is_some());
    assert_eq!(status.lines_written, 0);

    restore_own_dir(&own);
    writer.append(messages(3..5)).await.expect("queued").wait().await.expect("written after recovery");

    let status = writer.status();
    assert!(status.healthy);
    assert_eq!(status.write_errors, 1);
    assert_eq!(status.lines_written, 2);
    writer.shutdown().await;

    let names = own_names(temp.path());
    assert_eq!(names.len(), 1, "{names:?}");
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), vec![3, 4]);
}

#[test]
fn failed_compression_keeps_txt_and_removes_tmp() {
    let temp = tempfile::tempdir().expect("temp dir");
    let txt = temp.path().join("messages_20240501_12345678.txt");
    fs::write(&txt, b"{\"id_str\":\"1\"}\n").expect("txt written");
    // A directory at the target name makes the final rename fail.
    fs::create_dir(temp.path().join("messages_20240501_12345678.txt.gz")).expect("blocking directory");

    let result = compress::compress_file(&txt);

    assert!(result.is_err(), "compression over a directory succeeded");
    assert!(txt.is_file(), "the .txt was removed after a failed compression");
    assert!(
        !temp.path().join("messages_20240501_12345678.txt.gz.tmp").exists(),
        "the temporary file was left behind"
    );
}

#[test]
fn compression_replaces_txt_with_gz() {
    let temp = tempfile::tempdir().expect("temp dir");
    let txt = temp.path().join("messages_20240501_12345678.txt");
    let content = "{\"id_str\":\"1\"}\n{\"id_str\":\"2\"}\n";
    fs::write(&txt, content).expect("txt written");

    let gz_bytes = compress::compress_file(&txt).expect("compressed");

    let gz = temp.path().join("messages_20240501_12345678.txt.gz");
    assert!(!txt.exists(), "the .txt stayed after compression");
    assert_eq!(fs::metadata(&gz).expect("gz exists").len(), gz_bytes);
    assert_eq!(read_text(&gz), content);
    let names: Vec<_> = fs::read_dir(temp.path()).expect("readable").map(|entry| entry.expect("entry").file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(temp.path().join(".messages_20240501_12345678.txt.gz.meta.json").is_file(), "{names:?}");
}

fn stamped(id: usize) -> Bytes {
    let stream_id = ((1_714_564_800_000 + id as u64) << 16) + 3;
    Bytes::from(format!(r#"{{"id_str":"{id}","stream_id":"{stream_id}"}}"#))
}

#[tokio::test]
async fn status_reports_current_file_facts() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");

    writer.append(vec![stamped(0), stamped(1)]).await.expect("queued").wait().await.expect("written");
    writer.append(vec![stamped(7)]).await.expect("queued").wait().await.expect("written");

    let status = writer.status();
    assert_eq!(status.current_lines, 3);
    assert_eq!(status.current_first_ms, Some(1_714_564_800_000));
    assert_eq!(status.current_last_ms, Some(1_714_564_800_007));
    writer.shutdown().await;
    assert_eq!(writer.status().current_lines, 0);
}

#[tokio::test]
async fn rotation_stores_facts_with_checksum() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 23, 59, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), Arc::clone(&clock) as _).expect("writer opens");

    writer.append((0..5).map(stamped).collect()).await.expect("queued").wait().await.expect("written");
    clock.set(Utc.with_ymd_and_hms(2024, 5, 2, 0, 0, 0).single().expect("valid time"));
    writer.append(vec![stamped(9)]).await.expect("queued").wait().await.expect("written");
    writer.shutdown().await;

    let gz_name = own_names(temp.path()).into_iter().find(|name| name.ends_with(".gz")).expect("a closed file");
    let gz = own_path(temp.path(), &gz_name);
    let raw = fs::read(&gz).expect("gz readable");
    let facts = super::facts::load(&temp.path().join("own"), &gz_name, raw.len() as u64).expect("facts stored");
    assert_eq!(facts.lines, 5);
    assert_eq!(facts.first_ms, Some(1_714_564_800_000));
    assert_eq!(facts.last_ms, Some(1_714_564_800_004));
    use sha2::Digest;
    let expected: String = sha2::Sha256::digest(&raw).iter().map(|byte| format!("{byte:02x}")).collect();
    assert_eq!(facts.sha256, expected);
}

#[tokio::test]
async fn failing_writer_recovers_without_appends() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), 1 << 20), clock).expect("writer opens");
    let own = break_own_dir(temp.path());

    let failed = writer.append(messages(0..1)).await.expect("queued").wait().await;
    assert!(failed.is_err(), "append into a broken directory succeeded");
    assert!(!writer.status().healthy);

    restore_own_dir(&own);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !writer.status().healthy {
        assert!(tokio::time::Instant::now() < deadline, "the writer stayed unhealthy after the disk recovered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    assert_eq!(fs::read_dir(&own).expect("own/ readable").count(), 0, "the probe left a file behind");
    writer.shutdown().await;
}

#[tokio::test]
async fn rotate_policy_keeps_lines_at_shutdown() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let mut settings = config(temp.path(), 1 << 20);
    settings.fsync = super::FsyncPolicy::Rotate;
    let writer = DumpWriter::open(&settings, clock).expect("writer opens");

    let mut pending = Vec::new();
    for start in (0..100).step_by(10) {
        pending.push(writer.append(messages(start..start + 10)).await.expect("queued"));
    }
    writer.shutdown().await;
    wait_all(pending).await;

    let names = own_names(temp.path());
    assert_eq!(read_ids(&own_path(temp.path(), &names[0])), (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn failed_append_across_rotation_leaves_no_lines() {
    const ROTATE_BYTES: u64 = 1024;

    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path(), ROTATE_BYTES), clock).expect("writer opens");
    writer.append(messages(0..2)).await.expect("queued").wait().await.expect("first lines written");

    // The open file stays writable through its handle, but the file after the rotation
    // cannot be created, because a plain file is in place of `own/`.
    let own = temp.path().join("own");
    let moved = temp.path().join("own.moved");
    fs::rename(&own, &moved).expect("own/ moved");
    fs::write(&own, b"not a directory").expect("file in place of own/");

    let failed = writer.append(messages(2..100)).await.expect("queued").wait().await;
    assert!(matches!(failed, Err(DumpError::Io(_))), "append across a failed rotation succeeded");

    fs::remove_file(&own).expect("file removed");
    fs::rename(&moved, &own).expect("own/ restored");
    writer.shutdown().await;

    let names = own_names(temp.path());
    let mut stored = Vec::new();
    for name in &names {
        stored.extend(read_ids(&own_path(temp.path(), name)));
    }
    assert_eq!(stored, vec![0, 1], "files: {names:?}");
}

#[test]
fn failed_compression_is_retried() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dump_config = config(temp.path(), 1 << 20);
    let own = temp.path().join("own");
    fs::create_dir_all(&own).expect("own/ created");
    let txt = own.join("messages_20240501_12345678.txt");
    let gz = own.join("messages_20240501_12345678.txt.gz");
    fs::write(&txt, b"{\"id_str\":\"1\"}\n").expect("txt written");
    // A directory at the target name makes the final rename fail until it is removed.
    fs::create_dir(&gz).expect("blocking directory");

    let status = Arc::new(super::status::StatusCell::new(super::DumpStatus::default()));
    let retention = super::retention::Retention::new(&dump_config, Arc::clone(&status));
    let mut compressor = compress::Compressor::start(Arc::clone(&status), retention, Duration::from_millis(50)).expect("worker starts");
    compressor.submit(txt.clone());

    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while status.snapshot().compression_errors == 0 {
        assert!(std::time::Instant::now() < deadline, "the compression never failed");
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::remove_dir(&gz).expect("blocking directory removed");
    while !gz.is_file() || txt.exists() {
        assert!(std::time::Instant::now() < deadline, "the failed compression was not retried");
        std::thread::sleep(Duration::from_millis(10));
    }
    compressor.finish();

    assert_eq!(read_text(&gz), "{\"id_str\":\"1\"}\n");
    assert_eq!(status.snapshot().compressions, 1);
}
