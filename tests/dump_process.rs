//! The `lokstream` binary as a child process: SIGKILL at several points under concurrent
//! pushes, restarts on the same dump folder, and `lokstream dump verify` on the result.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::{corpus_lines, identity, read_dump_lines};
use serde_json::Value;

/// Concurrent HTTP clients per round.
const CLIENTS: usize = 4;

/// Messages per push.
const BATCH_LINES: usize = 10;

/// Corpus lines each round pushes at most. Rounds use disjoint lines, because a restarted
/// server no longer remembers earlier ids and would store a repeated message again.
const ROUND_LINES: usize = 1300;

/// Small enough that rotation and compression run all the time.
const ROTATE_BYTES: &str = "16384";

/// Upper bound for any wait on the child; reached only when something is broken.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `lokstream` child with its bound HTTP address.
struct Server {
    child: Child,
    http: SocketAddr,
}

impl Server {
    fn start(dump_dir: &Path, fsync: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lokstream"))
            .args(["--config", "/dev/null"])
            .args(["--set", "bind.address=127.0.0.1", "--set", "port.http=0"])
            .args(["--set", "mqtt.port=0", "--set", "mqtt.ws.port=0"])
            .args(["--set", &format!("dump.dir={}", dump_dir.display())])
            .args(["--set", &format!("dump.rotate.bytes={ROTATE_BYTES}")])
            .args(["--set", &format!("dump.fsync={fsync}")])
            .args(["--set", "log.level=info"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lokstream starts");

        let stderr = child.stderr.take().expect("stderr piped");
        let http = read_http_address(stderr);
        Server { child, http }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL sent");
        self.child.wait().expect("child reaped");
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM not sent");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("child status") {
                assert!(status.success(), "lokstream exited with {status} after SIGTERM");
                return;
            }
            assert!(Instant::now() < deadline, "lokstream did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Ends a child left running by a failed assertion; it was reaped if already gone.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads the child's log until `lokstream started http=ADDR`, then keeps draining it on a
/// thread so the child never blocks on a full pipe.
fn read_http_address(stderr: std::process::ChildStderr) -> SocketAddr {
    let (found, address) = mpsc::channel();
    std::thread::spawn(move || {
        let mut found = Some(found);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("child: {line}");
            }
            if !line.contains("lokstream started") {
                continue;
            }
            let address = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("http="))
                .and_then(|address| address.parse::<SocketAddr>().ok());
            if let (Some(sender), Some(address)) = (found.take(), address) {
                let _ = sender.send(address);
            }
        }
    });
    address.recv_timeout(PATIENCE).expect("lokstream logged its HTTP address")
}

/// Where a round kills the server.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// After this many pushes were acknowledged.
    AfterAcks(usize),
    /// While a `.txt.gz.tmp` exists, that is, in the middle of a compression, once this
    /// many pushes were acknowledged (0: the compression of leftovers at start-up).
    DuringCompression { after_acks: usize },
}

/// Pushes `lines` from `CLIENTS` concurrent clients until the lines run out or the server
/// goes away; returns the identities acknowledged with 200.
async fn push_concurrently(http: SocketAddr, lines: &[String], acked_pushes: Arc<AtomicUsize>) -> HashSet<(String, String)> {
    let acked = Arc::new(Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for share in lines.chunks(lines.len().div_ceil(CLIENTS)) {
        let share = share.to_vec();
        let acked = Arc::clone(&acked);
        let acked_pushes = Arc::clone(&acked_pushes);
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(PATIENCE).build().expect("client");
            for batch in share.chunks(BATCH_LINES) {
                let sent = client
                    .post(format!("http://{http}/api/push.json"))
                    .header("content-type", "application/json")
                    .body(format!("[{}]", batch.join(",")))
                    .send()
                    .await;
                // A refused or reset connection means the server was killed.
                let Ok(response) = sent else { return };
                if response.status() != 200 {
                    return;
                }
                let mut acked = acked.lock().expect("acked lock");
                for line in batch {
                    acked.insert(identity(&serde_json::from_str(line).expect("corpus line")));
                }
                drop(acked);
                acked_pushes.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for client in clients {
        client.await.expect("client task");
    }
    let acked = acked.lock().expect("acked lock");
    acked.clone()
}

/// Blocks until the kill point is reached or the deadline passes. In the second case it
/// prints a note, and the caller kills the server all the same.
fn wait_for_kill_point(point: KillPoint, own: &Path, acked_pushes: &AtomicUsize, done: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && !done.load(Ordering::SeqCst) {
        let reached = match point {
            KillPoint::AfterAcks(count) => acked_pushes.load(Ordering::SeqCst) >= count,
            KillPoint::DuringCompression { after_acks } => {
                acked_pushes.load(Ordering::SeqCst) >= after_acks && compression_in_progress(own)
            }
        };
        if reached {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!("kill point {point:?} not reached before the load ended; killing now");
}

fn compression_in_progress(own: &Path) -> bool {
    std::fs::read_dir(own)
        .map(|entries| entries.flatten().any(|entry| entry.file_name().to_string_lossy().ends_with(".gz.tmp")))
        .unwrap_or(false)
}

/// One round: start, push under load, SIGKILL at `point`; returns what was acknowledged.
async fn crash_round(dump_dir: &Path, fsync: &str, lines: &[String], point: KillPoint) -> HashSet<(String, String)> {
    let server = Server::start(dump_dir, fsync);
    let http = server.http;
    let acked_pushes = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let own = dump_dir.join("own");
    let killer = {
        let (acked_pushes, done) = (Arc::clone(&acked_pushes), Arc::clone(&done));
        std::thread::spawn(move || {
            wait_for_kill_point(point, &own, &acked_pushes, &done);
            server.kill();
        })
    };
    let acked = push_concurrently(http, lines, acked_pushes).await;
    done.store(true, Ordering::SeqCst);
    killer.join().expect("killer thread");
    acked
}

fn verify(dir: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lokstream"))
        .args(["dump", "verify"])
        .arg(dir)
        .output()
        .expect("lokstream dump verify runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Waits until `own/` contains no `.tmp` and one `.txt` at most, so start-up compression is done.
fn wait_for_compressed(own: &Path) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let names: Vec<String> = std::fs::read_dir(own)
            .expect("own/")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        let plain = names.iter().filter(|name| name.ends_with(".txt")).count();
        let temp = names.iter().filter(|name| name.ends_with(".tmp")).count();
        if plain <= 1 && temp == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "leftovers were not compressed: {names:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_pushes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = corpus_lines();
    let rounds = [
        ("batch", KillPoint::AfterAcks(40)),
        ("batch", KillPoint::DuringCompression { after_acks: 30 }),
        ("rotate", KillPoint::DuringCompression { after_acks: 60 }),
        ("batch", KillPoint::AfterAcks(1)),
        ("batch", KillPoint::DuringCompression { after_acks: 0 }),
    ];
    assert!(rounds.len() * ROUND_LINES <= corpus.len());

    let mut acked = HashSet::new();
    for (round, (fsync, point)) in rounds.iter().enumerate() {
        let lines = &corpus[round * ROUND_LINES..(round + 1) * ROUND_LINES];
        let acked_now = crash_round(dir.path(), fsync, lines, *point).await;
        eprintln!("round {round} ({fsync}, {point:?}): {} messages acknowledged", acked_now.len());
        acked.extend(acked_now);
    }

    let last = Server::start(dir.path(), "rotate");
    wait_for_compressed(&dir.path().join("own"));
    last.terminate();

    let lines = read_dump_lines(dir.path());
    let messages: Vec<Value> = lines.iter().map(|line| serde_json::from_str(line).expect("dump line is JSON")).collect();
    let counts = common::count_identities(&messages);
    let repeated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).take(5).collect();
    assert!(repeated.is_empty(), "messages stored more than once: {repeated:?}");
    let missing: Vec<_> = acked.iter().filter(|key| !counts.contains_key(*key)).take(5).collect();
    assert!(missing.is_empty(), "acknowledged messages lost: {missing:?} of {}", acked.len());
    assert!(acked.len() > 100, "too few acknowledged messages to mean anything: {}", acked.len());

    let (ok, report) = verify(&dir.path().join("own"));
    assert!(ok, "dump verify found damage:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_rotate_policy_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let corpus = corpus_lines();
    let server = Server::start(dir.path(), "rotate");
    let acked = push_concurrently(server.http, &corpus[..800], Arc::new(AtomicUsize::new(0))).await;
    server.terminate();

    assert_eq!(acked.len(), 800);
    let lines = read_dump_lines(dir.path());
    assert_eq!(lines.len(), 800);
    let (ok, report) = verify(&dir.path().join("own"));
    assert!(ok, "dump verify found damage:\n{report}");
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip into memory");
    encoder.finish().expect("gzip finished")
}

#[test]
fn verify_flags_each_kind_of_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = "{\"a\":1}\n{\"b\":2}\n";
    let mut members = gzip(good);
    members.extend(gzip("{\"c\":3}\n"));
    let mut bad_crc = gzip(good);
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let mut bad_length = gzip(good);
    let length_at = bad_length.len() - 4;
    bad_length[length_at] ^= 0x01;
    let truncated = gzip(good)[..20].to_vec();
    let files: [(&str, Vec<u8>); 7] = [
        ("a_members.txt.gz", members),
        ("b_plain.txt", good.as_bytes().to_vec()),
        ("c_crc.txt.gz", bad_crc),
        ("d_length.txt.gz", bad_length),
        ("e_truncated.txt.gz", truncated),
        ("f_torn.txt", b"{\"a\":1}\n{\"b\":".to_vec()),
        ("g_not_json.txt", b"{\"a\":1}\nnot json\n[1]\n".to_vec()),
    ];
    for (name, content) in &files {
        std::fs::write(dir.path().join(name), content).expect("file written");
    }

    let (ok, report) = verify(dir.path());

    assert!(!ok, "damaged files passed:\n{report}");
    let line_of = |name: &str| report.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{name} not reported:\n{report}")).to_owned();
    assert!(line_of("a_members.txt.gz").ends_with("ok"), "{report}");
    assert!(line_of("a_members.txt.gz").contains(" 3 "), "{report}");
    assert!(line_of("b_plain.txt").ends_with("ok"), "{report}");
    for damaged in ["c_crc.txt.gz", "d_length.txt.gz", "e_truncated.txt.gz", "f_torn.txt", "g_not_json.txt"] {
        assert!(!line_of(damaged).ends_with("ok"), "{damaged} passed:\n{report}");
    }
    assert!(line_of("g_not_json.txt").contains(" 2 "), "{report}");
    assert!(report.contains("7 files checked"), "{report}");

    for damaged in ["c_crc.txt.gz", "d_length.txt.gz", "e_truncated.txt.gz", "f_torn.txt", "g_not_json.txt"] {
        std::fs::remove_file(dir.path().join(damaged)).expect("removed");
    }
    let (ok, report) = verify(dir.path());
    assert!(ok, "intact files failed:\n{report}");
}

/// A second server on the same `dump.dir` must not start: its start-up repair would
/// compress and remove the first server's open file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_on_same_dir_exits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = Server::start(dir.path(), "batch");
    let line = corpus_lines()[0].clone();
    let pushed = reqwest::Client::new()
        .post(format!("http://{}/api/push.json", first.http))
        .header("content-type", "application/json")
        .body(line.clone())
        .send()
        .await
        .expect("push sent");
    assert_eq!(pushed.status(), 200);

    let mut second = Command::new(env!("CARGO_BIN_EXE_lokstream"))
        .args(["--config", "/dev/null"])
        .args(["--set", "bind.address=127.0.0.1", "--set", "port.http=0"])
        .args(["--set", "mqtt.port=0", "--set", "mqtt.ws.port=0"])
        .args(["--set", &format!("dump.dir={}", dir.path().display())])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("second lokstream runs");
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = second.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            second.kill().expect("SIGKILL sent");
            second.wait().expect("child reaped");
            panic!("the second server kept running on a directory in use");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr piped"), &mut stderr).expect("stderr read");
    assert!(!exit.success(), "the second server exited with success: {stderr}");
    assert!(stderr.contains("in use by another lokstream process"), "{stderr}");
    assert!(stderr.contains(&dir.path().display().to_string()), "the error does not name the directory: {stderr}");

    first.terminate();
    let stored = read_dump_lines(dir.path());
    assert_eq!(stored.len(), 1, "the first server's line was lost: {stored:?}");
}

#[test]
fn verify_rejects_gz_that_is_not_gzip() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a_empty.txt.gz"), b"").expect("file written");
    std::fs::write(dir.path().join("b_plain.txt.gz"), b"{\"a\":1}\n").expect("file written");

    let (ok, report) = verify(dir.path());

    assert!(!ok, "files that are not gzip passed:\n{report}");
    for name in ["a_empty.txt.gz", "b_plain.txt.gz"] {
        let line = report.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("{name} not reported:\n{report}"));
        assert!(line.contains("not gzip"), "{name}: {line}");
    }
}

#[test]
fn verify_of_empty_dir_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("own")).expect("own/ created");

    let output = Command::new(env!("CARGO_BIN_EXE_lokstream"))
        .args(["dump", "verify"])
        .arg(dir.path())
        .output()
        .expect("lokstream dump verify runs");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "verify of a folder without dump files succeeded: {stderr}");
    assert!(stderr.contains("nothing was checked"), "{stderr}");
    assert!(stderr.contains("own"), "the message does not point to own/: {stderr}");
}
