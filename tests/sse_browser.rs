//! Real browsers: the viewer page and MQTT.js over WebSocket in headless Chromium, driven
//! by the Node scripts in `tests/browser`. Skips when node, Chromium or the scripts' npm
//! packages are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{TestServer, PATIENCE};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Why the browser tests cannot run here, if they cannot.
fn missing_tool() -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|dir| dir.join("node").is_file()) {
        return Some("node is not installed".into());
    }
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).is_file() {
        return Some(format!("{chromium} is missing (apt-get install chromium)"));
    }
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        return Some("tests/browser has no node_modules (run npm ci there)".into());
    }
    None
}

/// A Node script with its stdout read line by line as JSON steps.
struct Script {
    child: Child,
    steps: Lines<BufReader<ChildStdout>>,
}

impl Script {
    fn start(name: &str, args: &[&str]) -> Script {
        let mut child = Command::new("node")
            .arg(browser_dir().join(name))
            .args(args)
            .current_dir(browser_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts");
        let steps = BufReader::new(child.stdout.take().unwrap()).lines();
        Script { child, steps }
    }

    /// Returns the next step the script reports. A failure report fails the test with its
    /// error.
    async fn next_step(&mut self) -> Value {
        let line = tokio::time::timeout(PATIENCE, self.steps.next_line())
            .await
            .expect("timed out waiting for the browser script")
            .unwrap()
            .expect("the browser script ended without a report");
        let step: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("browser script printed {line:?}"));
        assert_ne!(step["step"], "failed", "browser script failed: {}", step["error"].as_str().unwrap_or(""));
        step
    }

    async fn expect_step(&mut self, name: &str) -> Value {
        let step = self.next_step().await;
        assert_eq!(step["step"], name, "browser script step: {step}");
        step
    }

    async fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    }

    async fn finish(mut self) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("browser script did not exit").unwrap();
        assert!(status.success(), "browser script exited with {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_resumes_without_loss_in_chromium() {
    if let Some(reason) = missing_tool() {
        eprintln!("skipped viewer_resumes_without_loss_in_chromium: {reason}");
        return;
    }
    // A queue of one event makes a burst overflow it, so the server drops the page's
    // stream; a short retry brings the page back quickly.
    let settings = [("stream.client.queue_events", "1"), ("stream.retry.ms", "300")];
    let mut server = TestServer::start_with(&settings).await;
    let port = server.http.port().to_string();
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();

    let base = format!("http://127.0.0.1:{port}");
    let corpus = common::corpus_path().display().to_string();
    let mut script = Script::start("viewer.mjs", &[&base, &corpus, &screenshots.display().to_string()]);
    script.expect_step("loaded").await;
    let resumed = script.expect_step("resumed").await;
    assert!(resumed["opens"].as_u64() >= Some(2), "the page never reconnected: {resumed}");
    let status = server.status().await;
    assert!(status["sse"]["slow_disconnects"].as_u64() >= Some(1), "the server dropped no stream: {}", status["sse"]);

    script.expect_step("restart").await;
    server.stop().await;
    let mut restarted = settings.to_vec();
    restarted.push(("port.http", &port));
    let _server = TestServer::start_with(&restarted).await;
    script.send("restarted").await;

    script.expect_step("done").await;
    script.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_subscribes_over_websocket_in_chromium() {
    if let Some(reason) = missing_tool() {
        eprintln!("skipped mqtt_js_subscribes_over_websocket_in_chromium: {reason}");
        return;
    }
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let server = TestServer::start_with(&[("mqtt.ws.port", &ws_port)]).await;
    let ws = server.server.as_ref().unwrap().mqtt_ws_address().expect("the WebSocket listener is on");

    let base = format!("http://{}", server.http);
    let ws_url = format!("ws://{ws}/mqtt");
    let corpus = common::corpus_path().display().to_string();
    let mut script = Script::start("mqtt_ws.mjs", &[&base, &ws_url, &corpus]);
    script.expect_step("subscribed").await;
    let done = script.expect_step("done").await;
    assert_eq!(done["received"], 5, "messages MQTT.js received: {done}");
    script.finish().await;
}
