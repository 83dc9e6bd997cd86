//! Duplicate detection against the dump write: an id counts as seen only once its line is
//! written. The writer thread is frozen by a clock whose `now()` blocks while a gate is
//! closed, because the writer reads the clock before every line it writes.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{corpus_lines, identity, read_dump_lines, PATIENCE};
use lokstream::config::Config;
use lokstream::dump::Clock;
use serde_json::Value;

/// A system clock whose `now()` waits while the gate is closed.
#[derive(Default)]
struct GatedClock {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl GatedClock {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate lock") = closed;
        self.opened.notify_all();
    }
}

impl Clock for GatedClock {
    fn now(&self) -> DateTime<Utc> {
        let closed = self.closed.lock().expect("gate lock");
        let _open = self.opened.wait_while(closed, |closed| *closed).expect("gate lock");
        Utc::now()
    }
}

async fn push(http: std::net::SocketAddr, body: String, timeout: Duration) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .post(format!("http://{http}/api/push.json"))
        .header("content-type", "application/json")
        .timeout(timeout)
        .body(body)
        .send()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_waits_for_frozen_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dump_dir = dir.path().to_str().expect("UTF-8").to_owned();
    let config = Config::with_overrides(&[
        ("bind.address", "127.0.0.1"),
        ("port.http", "0"),
        ("mqtt.port", "0"),
        ("mqtt.ws.port", "0"),
        ("dump.dir", &dump_dir),
    ])
    .expect("valid config");
    let clock = Arc::new(GatedClock::default());
    let running = lokstream::server::start_with_clock(config, clock.clone()).await.expect("server starts");
    let http = running.http_address;
    let line = corpus_lines()[0].clone();

    clock.set_closed(true);
    let first = push(http, line.clone(), Duration::from_millis(500)).await;
    assert!(first.is_err(), "the push was answered while the writer was frozen: {first:?}");

    let retry = tokio::spawn(push(http, line.clone(), PATIENCE));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!retry.is_finished(), "the retry was answered before the original line was written");

    clock.set_closed(false);
    let retried = retry.await.expect("retry task").expect("retry answered");
    assert_eq!(retried.status(), 200);
    let body: Value = retried.json().await.expect("JSON body");
    assert_eq!(body["duplicates"], 1, "{body}");
    running.shutdown().await;

    let stored: Vec<Value> = read_dump_lines(dir.path())
        .iter()
        .map(|line| serde_json::from_str(line).expect("dump line is JSON"))
        .collect();
    let counts = common::count_identities(&stored);
    let key = identity(&serde_json::from_str(&line).expect("corpus line"));
    assert_eq!(counts.get(&key), Some(&1), "stored: {counts:?}");
}
