//! A full disk under a running server: the dump folder sits on a small tmpfs that the test
//! mounts and fills. Mounting needs root; without it the test prints the reason and passes
//! without running.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{corpus_lines, identity, read_dump_lines, SseClient, TestServer, PATIENCE};
use serde_json::Value;

/// Size of the tmpfs; small, so that filling it is quick.
const TMPFS_BYTES: usize = 2 * 1024 * 1024;

/// Unmounts the tmpfs when the test ends, also when an assertion failed.
struct Mount {
    path: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs at `path`, or returns the reason it cannot.
    fn tmpfs(path: &Path) -> Result<Mount, String> {
        std::fs::create_dir_all(path).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}")])
            .arg("tmpfs")
            .arg(path)
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Mount { path: path.to_owned() })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Lazy, so that a server still holding files open cannot keep the mount alive.
        let unmounted = Command::new("umount").arg("-l").arg(&self.path).status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            eprintln!("could not unmount the test tmpfs at {}", self.path.display());
        }
    }
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("filler created");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => return written,
            Ok(count) => written += count as u64,
            Err(error) if error.raw_os_error() == Some(28) => return written,
            Err(error) => panic!("filling the tmpfs failed: {error}"),
        }
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

async fn wait_until_ready(server: &TestServer) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = get_json(&server.url("/readyz")).await;
        if status == 200 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the server never became ready again: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_fails_pushes_then_recovers() {
    let base = tempfile::tempdir().expect("temp dir");
    let mount_point = base.path().join("tmpfs");
    let mount = match Mount::tmpfs(&mount_point) {
        Ok(mount) => mount,
        Err(reason) => {
            println!("SKIPPED full_disk_fails_pushes_then_recovers: cannot mount a tmpfs ({reason})");
            return;
        }
    };
    let dump_dir = mount.path.join("dump");
    let dump_dir_text = dump_dir.to_str().expect("UTF-8 path").to_owned();
    let mut server = TestServer::start_with(&[("dump.dir", &dump_dir_text)]).await;
    let mut stream = SseClient::connect(&server.stream_url(&["all"])).await;
    let lines = corpus_lines();

    let before = server.push(format!("[{}]", lines[..50].join(","))).await;
    assert_eq!(before.status(), 200);
    for _ in 0..50 {
        stream.next_event().await.expect("event before the disk filled");
    }

    let filler = mount.path.join("filler");
    fill(&filler);
    let during = format!("[{}]", lines[50..60].join(","));
    let rejected = server.push(during.clone()).await;
    assert_eq!(rejected.status(), 503, "a push was acknowledged on a full disk");
    let (ready, body) = get_json(&server.url("/readyz")).await;
    assert_eq!(ready, 503, "{body}");
    assert_eq!(body["checks"]["dump"], false, "{body}");
    let writer = &server.status().await["dump"]["writer"];
    assert_eq!(writer["healthy"], false, "{writer}");
    assert!(writer["write_errors"].as_u64().unwrap_or(0) >= 1, "{writer}");

    // The stream keeps delivering what the dump could not store.
    let event = stream.next_event().await.expect("event while the disk is full");
    let message: Value = serde_json::from_str(&event.data).expect("event is JSON");
    assert_eq!(message["id_str"], serde_json::from_str::<Value>(&lines[50]).expect("corpus")["id_str"]);

    std::fs::remove_file(&filler).expect("filler removed");
    wait_until_ready(&server).await;
    let retried = server.push(during).await;
    assert_eq!(retried.status(), 200, "the retry after recovery failed");
    let body: Value = retried.json().await.expect("JSON body");
    assert_eq!(body["accepted"], 10, "the retry was taken for duplicates: {body}");
    let after = server.push(format!("[{}]", lines[60..100].join(","))).await;
    assert_eq!(after.status(), 200);
    server.stop().await;

    let stored: Vec<Value> = read_dump_lines(&dump_dir)
        .iter()
        .map(|line| serde_json::from_str(line).expect("every dump line is JSON"))
        .collect();
    let counts = common::count_identities(&stored);
    assert_eq!(counts.len(), 100, "stored {} distinct messages", counts.len());
    assert!(counts.values().all(|count| *count == 1), "a message was stored twice");
    for line in &lines[..100] {
        let key = identity(&serde_json::from_str(line).expect("corpus line"));
        assert!(counts.contains_key(&key), "missing {key:?}");
    }
    let checks = lokstream::dump::verify_dir(&dump_dir.join("own")).expect("own/ readable");
    assert!(checks.iter().all(|check| check.is_ok()), "damaged files: {checks:?}");
    drop(mount);
}

/// MQTT ingest never waits for the write of what it publishes, so a failed write must not
/// leave the ids counted as seen: a later push of the same message is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_mqtt_write_retry_is_stored() {
    let base = tempfile::tempdir().expect("temp dir");
    let mount_point = base.path().join("tmpfs");
    let mount = match Mount::tmpfs(&mount_point) {
        Ok(mount) => mount,
        Err(reason) => {
            println!("SKIPPED failed_mqtt_write_retry_is_stored: cannot mount a tmpfs ({reason})");
            return;
        }
    };
    let dump_dir = mount.path.join("dump");
    let dump_dir_text = dump_dir.to_str().expect("UTF-8 path").to_owned();
    let mut server = TestServer::start_with(&[("dump.dir", &dump_dir_text)]).await;
    let line = corpus_lines()[0].clone();

    let filler = mount.path.join("filler");
    fill(&filler);
    let client = common::MqttClient::connect(server.mqtt, "full-disk-ingest").await;
    client
        .client
        .publish("ingest/full-disk", rumqttc::QoS::AtLeastOnce, false, line.clone().into_bytes())
        .await
        .expect("publish queued");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let writer = &server.status().await["dump"]["writer"];
        if writer["write_errors"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the write never failed: {writer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    std::fs::remove_file(&filler).expect("filler removed");
    wait_until_ready(&server).await;
    let retried = server.push(line.clone()).await;
    assert_eq!(retried.status(), 200);
    let body: Value = retried.json().await.expect("JSON body");
    assert_eq!(body["accepted"], 1, "the retry was taken for a duplicate of a lost message: {body}");
    server.stop().await;

    let stored = read_dump_lines(&dump_dir);
    let key = identity(&serde_json::from_str(&line).expect("corpus line"));
    let copies = stored
        .iter()
        .filter(|stored| identity(&serde_json::from_str(stored).expect("dump line is JSON")) == key)
        .count();
    assert_eq!(copies, 1, "stored {copies} copies of the retried message");
    drop(mount);
}
