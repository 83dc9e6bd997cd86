//! SSE through a real nginx with its default `proxy_buffering on`: the stream's
//! `X-Accel-Buffering: no` header alone must make events pass at once. Skips when nginx
//! is not installed.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{SseClient, TestServer};
use tokio::process::{Child, Command};

/// How long an event may take through the proxy; far more than it needs when nothing
/// buffers it.
const PROMPT: Duration = Duration::from_secs(5);

fn nginx_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file())
}

/// An nginx of its own, in a temporary prefix, stopped when dropped.
struct Nginx {
    address: SocketAddr,
    _process: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port with two locations: `/` passes everything to
    /// `upstream`, and `/ignoring-accel/` does the same but ignores `X-Accel-Buffering`,
    /// as a control that buffering is really on.
    async fn start(binary: &Path, upstream: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let prefix = dir.path().display();
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
        }}
        location /ignoring-accel/ {{
            proxy_pass http://{upstream}/;
            proxy_ignore_headers X-Accel-Buffering;
        }}
    }}
}}
"
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).unwrap();
        let mut process = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");

        // nginx gives no sign when it listens, so poll its port for a bounded time.
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            if let Ok(Some(status)) = process.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx exited with {status}: {log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {address} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx {
            address,
            _process: process,
            _dir: dir,
        }
    }
}

fn push_body(id_str: &str) -> String {
    format!(r#"{{"source_type":"test","id_str":"{id_str}","text":"through nginx"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_passes_events_at_once() {
    let Some(binary) = nginx_binary() else {
        eprintln!("skipped nginx_passes_events_at_once: nginx is not installed (apt-get install nginx)");
        return;
    };
    let server = TestServer::start().await;
    let nginx = Nginx::start(&binary, server.http).await;
    let path = "/api/stream.json?channel=test";

    let mut client = SseClient::connect(&format!("http://{}{path}", nginx.address)).await;
    let response = server.push(push_body("proxied-1")).await;
    assert_eq!(response.status(), 200, "push");
    let event = tokio::time::timeout(PROMPT, client.next_event())
        .await
        .expect("the event did not pass nginx at once: the stream is buffered")
        .expect("the stream ended");
    assert!(event.data.contains("proxied-1"), "event through nginx: {event:?}");

    // The control: with the header ignored, nginx keeps even the response head in its
    // buffer, so neither the head nor the event arrives.
    let buffered_url = format!("http://{}/ignoring-accel{path}", nginx.address);
    let mut buffered = tokio::spawn(async move { SseClient::connect(&buffered_url).await.next_event().await });
    let deadline = Instant::now() + PROMPT;
    while server.status().await["sse"]["connections_open"] != 2 {
        assert!(Instant::now() < deadline, "the buffered stream never reached the server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = server.push(push_body("proxied-2")).await;
    assert_eq!(response.status(), 200, "push");
    let event = client.next_event().await.expect("the second event on the unbuffered stream");
    assert!(event.data.contains("proxied-2"), "second event through nginx: {event:?}");
    let held = tokio::time::timeout(Duration::from_secs(1), &mut buffered).await;
    assert!(held.is_err(), "with X-Accel-Buffering ignored the event still arrived, so this test proves nothing");
    buffered.abort();
}
