//! Tests of start-up repair, facts and retention through `DumpWriter::open` on real files.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::test_clock::TestClock;
use super::writer_tests::config;
use super::{facts, DumpConfig, DumpWriter};

const NAME: &str = "messages_20240501_00000001.txt";

fn own(dir: &Path) -> std::path::PathBuf {
    dir.join("own")
}

fn open(config: &DumpConfig) -> DumpWriter {
    let clock = Arc::new(TestClock::at(2024, 5, 2, 12, 0, 0));
    DumpWriter::open(config, clock).expect("writer opens")
}

fn line(stream_id: u64) -> String {
    format!("{{\"id_str\":\"{stream_id}\",\"stream_id\":\"{stream_id}\"}}\n")
}

/// Waits for a background thread's result to show up in the file system.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(fs::File::open(path).expect("gz opens")), &mut text)
        .expect("valid gzip");
    text
}

#[tokio::test]
async fn torn_line_is_cut_and_leftover_compressed() {
    let temp = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(own(temp.path())).expect("own/ created");
    let whole = format!("{}{}", line(1 << 16), line(2 << 16));
    fs::write(own(temp.path()).join(NAME), format!("{whole}{{\"id_str\":\"3\",\"te")).expect("torn file written");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    let gz = own(temp.path()).join(format!("{NAME}.gz"));
    assert!(!own(temp.path()).join(NAME).exists(), "the leftover .txt stayed");
    assert_eq!(gunzip(&gz), whole);
    let facts = facts::load(&own(temp.path()), &format!("{NAME}.gz"), fs::metadata(&gz).expect("gz").len())
        .expect("facts stored at compression");
    assert_eq!(facts.lines, 2);
    assert_eq!(facts.first_ms, Some(1));
    assert_eq!(facts.last_ms, Some(2));
}

#[tokio::test]
async fn txt_already_compressed_is_removed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    fs::write(own.join(NAME), line(1)).expect("txt written");
    fs::write(own.join("plain.txt"), "not a dump").expect("other file written");
    fs::write(own.join(NAME), line(1)).expect("txt written");
    super::compress::compress_file(&own.join(NAME)).expect("compressed");
    fs::write(own.join(NAME), line(1)).expect("txt written again, as after a crash before its removal");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    assert!(!own.join(NAME).exists(), "the duplicate .txt stayed");
    assert_eq!(gunzip(&own.join(format!("{NAME}.gz"))), line(1));
    assert!(own.join("plain.txt").exists(), "a file that is no dump was touched");
}

#[tokio::test]
async fn interrupted_compression_reruns() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    fs::write(own.join(NAME), line(1)).expect("txt written");
    fs::write(own.join(format!("{NAME}.gz.tmp")), b"\x1f\x8b partial").expect("tmp written");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    assert!(!own.join(format!("{NAME}.gz.tmp")).exists(), "the temporary file stayed");
    assert_eq!(gunzip(&own.join(format!("{NAME}.gz"))), line(1));
}

#[tokio::test]
async fn orphan_tmp_is_set_aside() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    let temp_name = format!("{NAME}.gz.tmp");
    fs::write(own.join(&temp_name), b"\x1f\x8b partial").expect("tmp written");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    assert!(!own.join(&temp_name).exists(), "the orphan temporary file stayed in own/");
    assert!(temp.path().join("damaged").join(&temp_name).is_file(), "the orphan was not set aside");
}

#[tokio::test]
async fn empty_leftover_and_orphan_facts_are_removed() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    fs::write(own.join(NAME), b"{\"id_str\":\"torn").expect("file with only a torn line");
    let orphan = facts::sidecar_path(&own, "messages_20240101_00000009.txt.gz");
    fs::write(&orphan, b"{}").expect("orphan facts written");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    assert!(!own.join(NAME).exists(), "the empty leftover stayed");
    assert!(!own.join(format!("{NAME}.gz")).exists(), "the empty leftover was compressed");
    assert!(!orphan.exists(), "facts of a missing file stayed");
}

#[tokio::test]
async fn missing_facts_are_rebuilt_at_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    fs::write(own.join(NAME), format!("{}{}{}", line(5 << 16), line(6 << 16), line(7 << 16))).expect("txt written");
    super::compress::compress_file(&own.join(NAME)).expect("compressed");
    let gz_name = format!("{NAME}.gz");
    let stored = fs::read(facts::sidecar_path(&own, &gz_name)).expect("facts stored");
    fs::remove_file(facts::sidecar_path(&own, &gz_name)).expect("facts removed");

    let writer = open(&config(temp.path(), 1 << 20));
    eventually("rebuilt facts", || facts::sidecar_path(&own, &gz_name).exists()).await;
    writer.shutdown().await;

    let rebuilt: facts::FileFacts = serde_json::from_slice(&fs::read(facts::sidecar_path(&own, &gz_name)).expect("facts"))
        .expect("facts parse");
    let original: facts::FileFacts = serde_json::from_slice(&stored).expect("facts parse");
    assert_eq!(rebuilt, original);
    assert_eq!(rebuilt.lines, 3);
    assert_eq!((rebuilt.first_ms, rebuilt.last_ms), (Some(5), Some(7)));
}

#[tokio::test]
async fn retention_deletes_oldest_closed_files_at_start() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    let mut names = Vec::new();
    for number in 1..=4 {
        let name = format!("messages_20240501_0000000{number}.txt");
        fs::write(own.join(&name), line(number).repeat(50)).expect("txt written");
        super::compress::compress_file(&own.join(&name)).expect("compressed");
        let gz = own.join(format!("{name}.gz"));
        let age = Duration::from_secs(3600 * (10 - number));
        fs::File::options().write(true).open(&gz).expect("gz").set_modified(std::time::SystemTime::now() - age).expect("mtime");
        names.push(format!("{name}.gz"));
    }
    let one_file = fs::metadata(own.join(&names[0])).expect("gz").len();
    let mut settings = config(temp.path(), 1 << 20);
    settings.retain_bytes = one_file * 2 + one_file / 2;

    let writer = open(&settings);
    eventually("retention", || !own.join(&names[1]).exists()).await;
    writer.shutdown().await;

    assert!(!own.join(&names[0]).exists(), "the oldest file stayed");
    assert!(!facts::sidecar_path(&own, &names[0]).exists(), "facts of a deleted file stayed");
    assert!(own.join(&names[2]).exists(), "a newer file was deleted");
    assert!(own.join(&names[3]).exists(), "the newest file was deleted");
    assert_eq!(writer.status().files_deleted, 2);
}

#[tokio::test]
async fn non_regular_entries_are_set_aside() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    let outside = temp.path().join("outside.txt");
    let outside_text = "{\"secret\":1}\n{\"torn\":";
    fs::write(&outside, outside_text).expect("outside file written");
    let link = "messages_20240501_00000002.txt";
    let dangling = "messages_20240501_00000003.txt";
    let directory = "messages_20240501_00000004.txt";
    let temp_link = "messages_20240501_00000005.txt.gz.tmp";
    std::os::unix::fs::symlink(&outside, own.join(link)).expect("symlink created");
    std::os::unix::fs::symlink(temp.path().join("missing"), own.join(dangling)).expect("dangling symlink created");
    fs::create_dir(own.join(directory)).expect("directory created");
    std::os::unix::fs::symlink(&outside, own.join(temp_link)).expect("temp symlink created");

    let writer = open(&config(temp.path(), 1 << 20));
    writer.shutdown().await;

    assert_eq!(fs::read_to_string(&outside).expect("outside file"), outside_text, "repair changed a file outside own/");
    let damaged = temp.path().join("damaged");
    for name in [link, dangling, directory, temp_link] {
        assert!(fs::symlink_metadata(own.join(name)).is_err(), "{name} stayed in own/");
        assert!(fs::symlink_metadata(damaged.join(name)).is_ok(), "{name} is not in damaged/");
        assert!(!own.join(format!("{name}.gz")).exists(), "{name} was compressed");
    }
}

#[tokio::test]
async fn gz_that_is_not_gzip_is_set_aside() {
    let temp = tempfile::tempdir().expect("temp dir");
    let own = own(temp.path());
    fs::create_dir_all(&own).expect("own/ created");
    let empty = "messages_20240501_00000006.txt.gz";
    let plain = "messages_20240501_00000007.txt.gz";
    fs::write(own.join(empty), b"").expect("empty file written");
    fs::write(own.join(plain), line(1)).expect("plain file written");

    let writer = open(&config(temp.path(), 1 << 20));
    let damaged = temp.path().join("damaged");
    eventually("damaged files set aside", || damaged.join(empty).exists() && damaged.join(plain).exists()).await;
    writer.shutdown().await;

    for name in [empty, plain] {
        assert!(!own.join(name).exists(), "{name} stayed in own/");
        assert!(!facts::sidecar_path(&own, name).exists(), "facts were built from {name}");
    }
}
