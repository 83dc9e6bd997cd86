//! The dump side of a real server over real sockets: the index and its facts, downloads
//! with every Range and conditional case, paths outside `own/`, rotation at UTC midnight
//! and at a size limit, and the `import/` drop folder.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{corpus_lines, identity, read_dump_lines, TestServer, PATIENCE};
use lokstream::config::Config;
use lokstream::dump::Clock;
use serde_json::Value;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response read off the socket as sent.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends one HTTP/1.1 request with `target` exactly as given (no URL normalisation, unlike
/// an HTTP client library) and reads the response until the server closes the connection.
async fn raw_request(address: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connects");
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");

    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("response within the patience")
        .expect("response read");
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> RawResponse {
    let split = raw.windows(4).position(|window| window == b"\r\n\r\n").expect("complete header");
    let head_text = std::str::from_utf8(&raw[..split]).expect("ASCII header");
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let response = RawResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };

    if let (false, Some(length)) = (head, response.header("content-length")) {
        let length: usize = length.parse().expect("numeric Content-Length");
        assert_eq!(response.body.len(), length, "body length differs from Content-Length");
    }
    response
}

async fn get(address: SocketAddr, target: &str, headers: &[(&str, &str)]) -> RawResponse {
    raw_request(address, "GET", target, headers).await
}

async fn status_json(server: &TestServer) -> Value {
    server.status().await
}

/// Polls `/api/status.json` until `done` holds; the server reports no such events otherwise.
async fn wait_for_status(server: &TestServer, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = status_json(server).await;
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {status}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until every rotated file was compressed.
async fn wait_for_compressions(server: &TestServer) -> Value {
    wait_for_status(server, "compressions", |status| {
        let writer = &status["dump"]["writer"];
        writer["compressions"] == writer["rotations"]
    })
    .await
}

async fn push_lines(server: &TestServer, lines: &[String], batch: usize) {
    for chunk in lines.chunks(batch) {
        let response = server.push(format!("[{}]", chunk.join(","))).await;
        assert_eq!(response.status(), 200, "push failed");
    }
}

fn gunzip(raw: &[u8]) -> String {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(raw).read_to_string(&mut text).expect("valid gzip");
    text
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

fn stream_time(line: &str) -> String {
    let message: Value = serde_json::from_str(line).expect("dump line is JSON");
    let id: u64 = message["stream_id"].as_str().and_then(|id| id.parse().ok()).expect("stream_id");
    let millis = lokstream::ids::millis_of(id) as i64;
    let time = DateTime::<Utc>::from_timestamp_millis(millis).expect("valid time");
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

async fn index(server: &TestServer) -> Vec<Value> {
    let response = get(server.http, "/dump/index.json", &[]).await;
    assert_eq!(response.status, 200);
    let index: Value = serde_json::from_slice(&response.body).expect("JSON index");
    index["files"].as_array().expect("files array").clone()
}

/// Names of listed files, checked newest first.
fn assert_newest_first(files: &[Value]) {
    let times: Vec<&str> = files.iter().map(|file| file["modified"].as_str().expect("modified")).collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "the index is not newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_facts_match_downloaded_files() {
    const ROTATE_BYTES: u64 = 256 * 1024;
    let rotate = ROTATE_BYTES.to_string();
    let mut server = TestServer::start_with(&[("dump.rotate.bytes", &rotate)]).await;
    let lines = corpus_lines();
    push_lines(&server, &lines, 250).await;
    wait_for_compressions(&server).await;

    let files = index(&server).await;
    assert!(files.len() > 10, "expected many rotations: {}", files.len());
    assert_newest_first(&files);
    let mut total = 0;
    for file in &files {
        let name = file["name"].as_str().expect("name");
        let download = get(server.http, &format!("/dump/{name}"), &[]).await;
        assert_eq!(download.status, 200, "{name}");
        let compressed = file["compressed"] == true;
        let text = if compressed { gunzip(&download.body) } else { String::from_utf8(download.body.clone()).expect("UTF-8") };
        let file_lines: Vec<&str> = text.lines().collect();

        assert!((text.len() as u64) < ROTATE_BYTES + 65536, "{name} is past the rotation size");
        assert_eq!(file["messages"], file_lines.len(), "{name}");
        assert_eq!(file["first_message"], stream_time(file_lines[0]), "{name}");
        assert_eq!(file["last_message"], stream_time(file_lines[file_lines.len() - 1]), "{name}");
        if compressed {
            assert_eq!(file["sha256"], sha256_hex(&download.body), "{name}");
        } else {
            assert_eq!(file["sha256"], Value::Null, "{name} is open but has a checksum");
        }
        total += file_lines.len();
    }
    assert_eq!(total, lines.len());
    assert_eq!(files.iter().filter(|file| file["compressed"] == false).count(), 1);

    let page = get(server.http, "/dump/", &[]).await;
    let page = String::from_utf8(page.body).expect("UTF-8 page");
    assert!(page.contains("zcat messages_*.txt.gz | jq ."), "the listing does not tell how to read files");
    let positions: Vec<usize> = files
        .iter()
        .map(|file| page.find(file["name"].as_str().expect("name")).expect("file in the HTML listing"))
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "HTML and JSON order differ");
    server.stop().await;
}

/// Starts a server with one closed file for the Range cases; returns its name and bytes.
async fn server_with_closed_file() -> (TestServer, String, Vec<u8>) {
    let server = TestServer::start_with(&[("dump.rotate.bytes", "65536")]).await;
    push_lines(&server, &corpus_lines()[..300], 100).await;
    wait_for_compressions(&server).await;
    let files = index(&server).await;
    let name = files
        .iter()
        .find(|file| file["compressed"] == true)
        .and_then(|file| file["name"].as_str())
        .expect("a closed file")
        .to_owned();
    let whole = get(server.http, &format!("/dump/{name}"), &[]).await.body;
    (server, name, whole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_follow_rfc_9110() {
    let (mut server, name, whole) = server_with_closed_file().await;
    let size = whole.len();
    let target = format!("/dump/{name}");

    // (Range header, expected status, expected Content-Range, expected body bytes)
    let satisfiable = [
        ("bytes=0-9".to_owned(), format!("bytes 0-9/{size}"), 0..10),
        ("bytes=10-".to_owned(), format!("bytes 10-{}/{size}", size - 1), 10..size),
        ("bytes=-25".to_owned(), format!("bytes {}-{}/{size}", size - 25, size - 1), size - 25..size),
        (format!("bytes={}-{}", size - 5, size + 100), format!("bytes {}-{}/{size}", size - 5, size - 1), size - 5..size),
        (format!("bytes=-{}", size + 100), format!("bytes 0-{}/{size}", size - 1), 0..size),
        (format!("bytes={}-{}", size - 1, size - 1), format!("bytes {}-{}/{size}", size - 1, size - 1), size - 1..size),
    ];
    for (range, content_range, bytes) in satisfiable {
        let response = get(server.http, &target, &[("Range", &range)]).await;
        assert_eq!(response.status, 206, "{range}");
        assert_eq!(response.header("content-range"), Some(content_range.as_str()), "{range}");
        assert_eq!(response.body, &whole[bytes], "{range}");
        assert_eq!(response.header("content-type"), Some("application/gzip"), "{range}");
    }

    let unsatisfiable = [format!("bytes={size}-"), format!("bytes={}-{}", size + 10, size + 20)];
    let expected_range = format!("bytes */{size}");
    for range in unsatisfiable {
        let response = get(server.http, &target, &[("Range", &range)]).await;
        assert_eq!(response.status, 416, "{range}");
        assert_eq!(response.header("content-range"), Some(expected_range.as_str()), "{range}");
    }

    // Several ranges, or another unit: the whole file, as RFC 9110 allows.
    for range in ["bytes=0-1,5-6", "items=0-5"] {
        let response = get(server.http, &target, &[("Range", range)]).await;
        assert_eq!(response.status, 200, "{range}");
        assert_eq!(response.body, whole, "{range}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_and_head_requests() {
    let (mut server, name, whole) = server_with_closed_file().await;
    let target = format!("/dump/{name}");
    let full = get(server.http, &target, &[]).await;
    let etag = full.header("etag").expect("ETag").to_owned();
    let last_modified = full.header("last-modified").expect("Last-Modified").to_owned();
    let length = whole.len().to_string();
    assert_eq!(full.header("content-length"), Some(length.as_str()));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));

    let head = raw_request(server.http, "HEAD", &target, &[]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert!(head.body.is_empty(), "HEAD sent a body");

    let not_modified = get(server.http, &target, &[("If-None-Match", &etag)]).await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let since = get(server.http, &target, &[("If-Modified-Since", &last_modified)]).await;
    assert_eq!(since.status, 304);
    let other_tag = get(server.http, &target, &[("If-None-Match", "\"other\"")]).await;
    assert_eq!(other_tag.status, 200);
    // RFC 9110 section 13.1.3: If-Modified-Since is ignored when If-None-Match is present.
    let both = [("If-None-Match", "\"other\""), ("If-Modified-Since", last_modified.as_str())];
    let tag_miss_with_date = get(server.http, &target, &both).await;
    assert_eq!(tag_miss_with_date.status, 200);
    assert_eq!(tag_miss_with_date.body, whole);

    let current = get(server.http, &target, &[("Range", "bytes=0-3"), ("If-Range", &etag)]).await;
    assert_eq!(current.status, 206);
    let by_date = get(server.http, &target, &[("Range", "bytes=0-3"), ("If-Range", &last_modified)]).await;
    assert_eq!(by_date.status, 206);
    let stale = get(server.http, &target, &[("Range", "bytes=0-3"), ("If-Range", "\"stale\"")]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, whole);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txt_with_gz_is_not_listed() {
    let (mut server, name, _whole) = server_with_closed_file().await;
    // The state between the rename of the `.txt.gz` and the removal of its `.txt`.
    let plain = name.strip_suffix(".gz").expect("compressed name").to_owned();
    std::fs::write(server.dump_dir().join("own").join(&plain), b"{\"a\":1}\n").expect(".txt written");

    let listed: Vec<String> = index(&server).await.iter().map(|file| file["name"].as_str().expect("name").to_owned()).collect();
    assert!(listed.contains(&name), "{listed:?}");
    assert!(!listed.contains(&plain), "{listed:?}");
    let page = String::from_utf8(get(server.http, "/dump/", &[]).await.body).expect("UTF-8");
    assert!(!page.contains(&format!("\"{plain}\"")), "{page}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_file_downloads_and_rejects_ranges() {
    let mut server = TestServer::start().await;
    let name = "messages_20240101_00000000.txt";
    std::fs::write(server.dump_dir().join("own").join(name), b"").expect("empty file written");
    let target = format!("/dump/{name}");

    let whole = get(server.http, &target, &[]).await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), Some("0"));
    assert!(whole.body.is_empty());

    for range in ["bytes=0-", "bytes=0-0", "bytes=-5"] {
        let response = get(server.http, &target, &[("Range", range)]).await;
        assert_eq!(response.status, 416, "{range}");
        assert_eq!(response.header("content-range"), Some("bytes */0"), "{range}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_file_downloads_and_resumes() {
    let mut server = TestServer::start().await;
    let lines = corpus_lines();
    push_lines(&server, &lines[..100], 50).await;
    let files = index(&server).await;
    assert_eq!(files.len(), 1);
    let name = files[0]["name"].as_str().expect("name").to_owned();
    assert_eq!(files[0]["messages"], 100);
    let target = format!("/dump/{name}");

    let first = get(server.http, &target, &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(String::from_utf8_lossy(&first.body).lines().count(), 100);

    push_lines(&server, &lines[100..250], 50).await;
    let resume = format!("bytes={}-", first.body.len());
    let rest = get(server.http, &target, &[("Range", &resume)]).await;
    assert_eq!(rest.status, 206);
    let mut joined = first.body.clone();
    joined.extend_from_slice(&rest.body);
    let text = String::from_utf8(joined).expect("UTF-8");
    assert!(text.ends_with('\n'));
    assert_eq!(text.lines().count(), 250);
    assert_eq!(index(&server).await[0]["messages"], 250);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_own_are_not_found() {
    let mut server = TestServer::start().await;
    push_lines(&server, &corpus_lines()[..10], 10).await;
    let name = index(&server).await[0]["name"].as_str().expect("name").to_owned();
    let root = server.dump_dir().to_path_buf();
    std::fs::write(root.join("secret.txt"), "outside own/").expect("secret written");
    std::fs::write(root.join("own").join("messages_20240101_33333333.txt.gz.tmp"), "partial").expect("tmp written");
    let link = "messages_20240103_44444444.txt";
    std::os::unix::fs::symlink(root.join("secret.txt"), root.join("own").join(link)).expect("symlink created");
    let link_to_dir = "messages_20240103_55555555.txt";
    std::os::unix::fs::symlink("/etc", root.join("own").join(link_to_dir)).expect("symlink created");
    let absolute = root.join("secret.txt");

    let targets = [
        "/dump/../secret.txt".to_owned(),
        "/dump/%2e%2e/secret.txt".to_owned(),
        "/dump/%2e%2e%2fsecret.txt".to_owned(),
        "/dump/.%2e/secret.txt".to_owned(),
        "/dump/..%2f..%2f..%2fetc%2fpasswd".to_owned(),
        "/dump/%252e%252e%252fsecret.txt".to_owned(),
        "/dump/..%5csecret.txt".to_owned(),
        "/dump/..\\secret.txt".to_owned(),
        format!("/dump/%5c{name}"),
        "/dump//etc/passwd".to_owned(),
        "/dump/%2fetc%2fpasswd".to_owned(),
        format!("/dump/{}", absolute.display()),
        format!("/dump/own/{name}"),
        format!("/dump/./{name}"),
        format!("/dump/{name}/"),
        format!("/dump/{name}%00"),
        "/dump/messages_20240101_33333333.txt.gz.tmp".to_owned(),
        format!("/dump/{link}"),
        format!("/dump/{link_to_dir}/passwd"),
        format!("/dump/.{name}.meta.json"),
        "/dump/%FF%FE".to_owned(),
        "/dump/../own/../secret.txt".to_owned(),
    ];
    for target in &targets {
        let response = get(server.http, target, &[]).await;
        assert_eq!(response.status, 404, "{target}");
        assert!(!String::from_utf8_lossy(&response.body).contains("outside own/"), "{target} leaked the file");
        let error: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        assert!(error["error"].is_string(), "{target}: not a JSON error");
    }

    let listing = String::from_utf8(get(server.http, "/dump/", &[]).await.body).expect("UTF-8");
    for hidden in [link, link_to_dir, ".meta.json", ".tmp"] {
        assert!(!listing.contains(hidden), "{hidden} is listed");
    }
    server.stop().await;
}

/// A clock the test sets by hand.
struct ManualClock(Mutex<DateTime<Utc>>);

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_at_utc_midnight_on_real_server() {
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
    let before = Utc.with_ymd_and_hms(2024, 3, 9, 23, 59, 59).single().expect("valid time");
    let clock = Arc::new(ManualClock(Mutex::new(before)));
    let running = lokstream::server::start_with_clock(config, clock.clone()).await.expect("server starts");
    let http = running.http_address;
    let lines = corpus_lines();
    let push = |chunk: &[String]| {
        let body = format!("[{}]", chunk.join(","));
        async move {
            let response = reqwest::Client::new()
                .post(format!("http://{http}/api/push.json"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("push sent");
            assert_eq!(response.status(), 200);
        }
    };

    push(&lines[..20]).await;
    *clock.0.lock().expect("clock lock") = Utc.with_ymd_and_hms(2024, 3, 10, 0, 0, 0).single().expect("valid time");
    push(&lines[20..30]).await;
    running.shutdown().await;

    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("own"))
        .expect("own/")
        .map(|entry| entry.expect("entry").file_name().into_string().expect("UTF-8"))
        .filter(|name| !name.starts_with('.'))
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("messages_20240309_"), "{names:?}");
    assert!(names[0].ends_with(".txt.gz"), "the closed file is not compressed: {names:?}");
    assert!(names[1].starts_with("messages_20240310_"), "{names:?}");
    assert!(names[1].ends_with(".txt"), "{names:?}");
    let old = std::fs::read(dir.path().join("own").join(&names[0])).expect("gz");
    assert_eq!(gunzip(&old).lines().count(), 20);
    let new = std::fs::read_to_string(dir.path().join("own").join(&names[1])).expect("txt");
    assert_eq!(new.lines().count(), 10);
}

fn gzip_members(parts: &[&[String]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for line in *part {
            writeln!(encoder, "{line}").expect("gzip into memory");
        }
        out.extend(encoder.finish().expect("gzip finished"));
    }
    out
}

/// Drops `content` into `import/` under `name`, written under a hidden name and renamed,
/// as a careful copy would.
fn drop_for_import(dump_dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let import = dump_dir.join("import");
    let hidden = import.join(format!(".{name}.part"));
    std::fs::write(&hidden, content).expect("import file written");
    std::fs::rename(&hidden, import.join(name)).expect("import file renamed");
    import.join(name)
}

fn dump_identities(dump_dir: &Path) -> std::collections::HashMap<(String, String), usize> {
    let messages: Vec<Value> = read_dump_lines(dump_dir)
        .iter()
        .map(|line| serde_json::from_str(line).expect("dump line is JSON"))
        .collect();
    common::count_identities(&messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_replays_multi_member_gzip() {
    let mut server = TestServer::start_with(&[("dump.import.poll_secs", "1")]).await;
    let lines = corpus_lines();
    let part = &lines[..3000];
    push_lines(&server, &part[..500], 250).await;

    let gz = gzip_members(&[&part[..1000], &part[1000..2000], &part[2000..]]);
    let dropped = drop_for_import(server.dump_dir(), "batch.data.txt.gz", &gz);
    let status = wait_for_status(&server, "import", |status| status["dump"]["import"]["files_done"] == 1).await;
    let import = &status["dump"]["import"];

    assert_eq!(import["lines_imported"], 2500, "{import}");
    assert_eq!(import["duplicates"], 500, "{import}");
    assert_eq!(import["bad_lines"], 0, "{import}");
    assert_eq!(import["current_file"], Value::Null, "{import}");
    assert!(!dropped.exists(), "the file stayed in import/");
    assert!(server.dump_dir().join("imported").join("batch.data.txt.gz").is_file());
    server.stop().await;

    let counts = dump_identities(server.dump_dir());
    assert_eq!(counts.len(), 3000);
    assert!(counts.values().all(|count| *count == 1), "a message is in the dump twice");
    for line in part {
        let message: Value = serde_json::from_str(line).expect("corpus line");
        assert!(counts.contains_key(&identity(&message)), "missing {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_waits_for_final_newline() {
    let mut server = TestServer::start_with(&[("dump.import.poll_secs", "1")]).await;
    let lines = corpus_lines();
    let (last, torn) = lines[2].split_at(lines[2].len() / 2);
    let start = format!("{}\n{}\n{last}", lines[0], lines[1]);
    let dropped = drop_for_import(server.dump_dir(), "paused.txt", start.as_bytes());

    // Three poll intervals: two scans with the same size and time would take the file.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let import = &server.status().await["dump"]["import"];
    assert_eq!(import["lines_imported"], 0, "a file without its final newline was imported: {import}");
    assert!(dropped.exists(), "the file left import/ before its copy finished");

    let mut file = std::fs::OpenOptions::new().append(true).open(&dropped).expect("import file opens");
    file.write_all(format!("{torn}\n").as_bytes()).expect("rest of the file written");
    drop(file);
    let status = wait_for_status(&server, "the finished file imported", |status| status["dump"]["import"]["files_done"] == 1).await;
    assert_eq!(status["dump"]["import"]["lines_imported"], 3, "{status}");
    assert_eq!(status["dump"]["import"]["bad_lines"], 0, "{status}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_counts_broken_lines() {
    let mut server = TestServer::start_with(&[("dump.import.poll_secs", "1")]).await;
    let lines = corpus_lines();
    let mut content = Vec::new();
    for line in &lines[..5] {
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
    }
    content.extend_from_slice(b"{\"id_str\":\"broken\",\"text\":\n");
    content.extend_from_slice(b"[1,2,3]\n");
    content.extend_from_slice(b"42\n");
    content.extend_from_slice(b"\n");
    content.extend_from_slice(b"{\"id_str\":\"\xff\xfe\"}\n");
    content.extend_from_slice(lines[5].as_bytes());

    drop_for_import(server.dump_dir(), "broken.txt", &content);
    let status = wait_for_status(&server, "import", |status| status["dump"]["import"]["files_done"] == 1).await;
    let import = &status["dump"]["import"];

    assert_eq!(import["lines_imported"], 6, "{import}");
    assert_eq!(import["bad_lines"], 4, "{import}");
    assert_eq!(import["files_damaged"], 0, "{import}");
    server.stop().await;
    assert_eq!(dump_identities(server.dump_dir()).len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_own_dumps_publishes_nothing_twice() {
    let mut server = TestServer::start_with(&[("dump.import.poll_secs", "1"), ("dump.rotate.bytes", "65536")]).await;
    push_lines(&server, &corpus_lines()[..400], 100).await;
    wait_for_compressions(&server).await;

    let own = server.dump_dir().join("own");
    let mut copied = 0;
    for file in index(&server).await {
        let name = file["name"].as_str().expect("name");
        if file["compressed"] == true {
            let content = std::fs::read(own.join(name)).expect("own file");
            drop_for_import(server.dump_dir(), name, &content);
            copied += 1;
        }
    }
    assert!(copied >= 2, "expected several closed files");
    let status = wait_for_status(&server, "import", |status| status["dump"]["import"]["files_done"] == copied).await;

    assert_eq!(status["dump"]["import"]["lines_imported"], 0, "{status}");
    assert_eq!(status["messages"]["accepted"], 400, "{status}");
    server.stop().await;
    let counts = dump_identities(server.dump_dir());
    assert_eq!(counts.len(), 400);
    assert!(counts.values().all(|count| *count == 1));
}
