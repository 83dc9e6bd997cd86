//! Tests of the `/dump` routes through `oneshot` against real files in a temporary directory.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{to_bytes, Body};
use axum::http::{header, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tower::ServiceExt;

use super::test_clock::TestClock;
use super::{router, DumpConfig, DumpWriter};

const OLD_GZ: &str = "messages_20240101_11111111.txt.gz";
const NEW_TXT: &str = "messages_20240102_22222222.txt";
const TEMP_GZ: &str = "messages_20240101_33333333.txt.gz.tmp";
const SYMLINK: &str = "messages_20240103_44444444.txt";
const DIRECTORY: &str = "messages_20240104_55555555.txt";
const OLD_LINES: &str = "{\"id_str\":\"1\"}\n{\"id_str\":\"2\"}\n{\"id_str\":\"3\"}\n";
const NEW_LINES: &str = "{\"id_str\":\"4\"}\n{\"id_str\":\"5\"}\n";

fn config(dir: &Path) -> DumpConfig {
    super::writer_tests::config(dir, 1024)
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip into memory");
    encoder.finish().expect("gzip finished")
}

fn gunzip(raw: &[u8]) -> String {
    let mut text = String::new();
    MultiGzDecoder::new(raw).read_to_string(&mut text).expect("valid gzip");
    text
}

fn set_modified(path: &Path, seconds_ago: u64) {
    let time = SystemTime::now() - Duration::from_secs(seconds_ago);
    File::options()
        .write(true)
        .open(path)
        .expect("file opens")
        .set_modified(time)
        .expect("mtime set");
}

/// Fills `dir/own` with two dump files, and next to them a temporary file, a file with
/// another name, a directory with a dump name and a symlink to a file outside `own/`.
fn populate(dir: &Path) {
    let own = dir.join("own");
    fs::create_dir_all(&own).expect("own/ created");

    fs::write(own.join(OLD_GZ), gzip(OLD_LINES)).expect("gz written");
    set_modified(&own.join(OLD_GZ), 3600);
    fs::write(own.join(NEW_TXT), NEW_LINES).expect("txt written");
    set_modified(&own.join(NEW_TXT), 60);

    fs::write(own.join(TEMP_GZ), gzip("partial")).expect("tmp written");
    fs::write(own.join("notes.txt"), "not a dump").expect("notes written");
    fs::create_dir(own.join(DIRECTORY)).expect("directory created");

    let secret = dir.join("secret.txt");
    fs::write(&secret, "outside own/").expect("secret written");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, own.join(SYMLINK)).expect("symlink created");
}

async fn get(app: &Router, uri: &str, headers: &[(header::HeaderName, &str)]) -> Response {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    let request = request.body(Body::empty()).expect("valid request");
    app.clone().oneshot(request).await.expect("router is infallible")
}

async fn body(response: Response) -> Vec<u8> {
    to_bytes(response.into_body(), usize::MAX).await.expect("body read").to_vec()
}

fn header_text(response: &Response, name: header::HeaderName) -> Option<&str> {
    response.headers().get(name).and_then(|value| value.to_str().ok())
}

#[tokio::test]
async fn listing_shows_files_newest_first() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));

    let response = get(&app, "/dump/", &[]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert!(header_text(&response, header::CONTENT_TYPE).is_some_and(|value| value.starts_with("text/html")));
    let page = String::from_utf8(body(response).await).expect("UTF-8 page");
    let new_at = page.find(NEW_TXT).expect("new file listed");
    let old_at = page.find(OLD_GZ).expect("old file listed");
    assert!(new_at < old_at, "newest file is not first");
    assert!(page.contains(&format!("<a href=\"{OLD_GZ}\">")));
    assert!(page.contains("zcat messages_*.txt.gz | jq ."));
    for hidden in [TEMP_GZ, "notes.txt", SYMLINK, DIRECTORY] {
        assert!(!page.contains(hidden), "{hidden} is listed");
    }
}

#[tokio::test]
async fn index_json_lists_files() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));

    let response = get(&app, "/dump/index.json", &[]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let index: serde_json::Value = serde_json::from_slice(&body(response).await).expect("JSON index");
    let files = index["files"].as_array().expect("files array");
    assert_eq!(files.len(), 2, "{index}");

    assert_eq!(files[0]["name"], NEW_TXT);
    assert_eq!(files[0]["bytes"], NEW_LINES.len());
    assert_eq!(files[0]["compressed"], false);
    assert_eq!(files[1]["name"], OLD_GZ);
    assert_eq!(files[1]["bytes"], gzip(OLD_LINES).len());
    assert_eq!(files[1]["compressed"], true);

    for file in files {
        let modified = file["modified"].as_str().expect("modified is a string");
        assert!(modified.ends_with('Z'), "{modified} is not UTC");
        chrono::DateTime::parse_from_rfc3339(modified).expect("RFC 3339 time");
    }
}

#[tokio::test]
async fn index_json_without_own_dir_is_empty() {
    let temp = tempfile::tempdir().expect("temp dir");
    let app = router(&config(temp.path()));

    let response = get(&app, "/dump/index.json", &[]).await;

    assert_eq!(response.status(), StatusCode::OK);
    let index: serde_json::Value = serde_json::from_slice(&body(response).await).expect("JSON index");
    assert_eq!(index, serde_json::json!({ "files": [] }));
}

#[tokio::test]
async fn download_gz_is_served_as_gzip() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));
    let expected = fs::read(temp.path().join("own").join(OLD_GZ)).expect("gz readable");

    let response = get(&app, &format!("/dump/{OLD_GZ}"), &[(header::ACCEPT_ENCODING, "gzip")]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_text(&response, header::CONTENT_TYPE), Some("application/gzip"));
    assert_eq!(header_text(&response, header::CONTENT_ENCODING), None);
    let length = expected.len().to_string();
    assert_eq!(header_text(&response, header::CONTENT_LENGTH), Some(length.as_str()));
    assert!(header_text(&response, header::LAST_MODIFIED).is_some());
    assert!(header_text(&response, header::ETAG).is_some());
    assert_eq!(header_text(&response, header::ACCEPT_RANGES), Some("bytes"));
    let downloaded = body(response).await;
    assert_eq!(downloaded, expected);
    assert_eq!(gunzip(&downloaded), OLD_LINES);
}

#[tokio::test]
async fn download_txt_is_plain_text() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));

    let response = get(&app, &format!("/dump/{NEW_TXT}"), &[]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header_text(&response, header::CONTENT_TYPE), Some("text/plain; charset=utf-8"));
    assert_eq!(body(response).await, NEW_LINES.as_bytes());
}

#[tokio::test]
async fn range_request_returns_partial_content() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));
    let whole = fs::read(temp.path().join("own").join(OLD_GZ)).expect("gz readable");

    let response = get(&app, &format!("/dump/{OLD_GZ}"), &[(header::RANGE, "bytes=5-14")]).await;

    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let content_range = format!("bytes 5-14/{}", whole.len());
    assert_eq!(header_text(&response, header::CONTENT_RANGE), Some(content_range.as_str()));
    assert_eq!(header_text(&response, header::CONTENT_TYPE), Some("application/gzip"));
    assert_eq!(body(response).await, &whole[5..15]);
}

#[tokio::test]
async fn range_with_stale_if_range_returns_whole_file() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));
    let uri = format!("/dump/{NEW_TXT}");
    let etag = get(&app, &uri, &[]).await.headers()[header::ETAG].to_str().expect("ASCII ETag").to_owned();

    let current = get(&app, &uri, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, &etag)]).await;
    let stale = get(&app, &uri, &[(header::RANGE, "bytes=0-3"), (header::IF_RANGE, "\"0-0\"")]).await;

    assert_eq!(current.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body(current).await, &NEW_LINES.as_bytes()[0..4]);
    assert_eq!(stale.status(), StatusCode::OK);
    assert_eq!(body(stale).await, NEW_LINES.as_bytes());
}

#[tokio::test]
async fn matching_if_none_match_returns_not_modified() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));
    let uri = format!("/dump/{OLD_GZ}");
    let etag = get(&app, &uri, &[]).await.headers()[header::ETAG].to_str().expect("ASCII ETag").to_owned();

    let response = get(&app, &uri, &[(header::IF_NONE_MATCH, &etag)]).await;

    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header_text(&response, header::ETAG), Some(etag.as_str()));
    assert!(body(response).await.is_empty());
}

#[tokio::test]
async fn head_returns_length_without_body() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));
    let request = Request::head(format!("/dump/{NEW_TXT}")).body(Body::empty()).expect("valid request");

    let response = app.oneshot(request).await.expect("router is infallible");

    assert_eq!(response.status(), StatusCode::OK);
    let length = NEW_LINES.len().to_string();
    assert_eq!(header_text(&response, header::CONTENT_LENGTH), Some(length.as_str()));
    assert!(body(response).await.is_empty());
}

#[tokio::test]
async fn path_tricks_return_json_404() {
    let temp = tempfile::tempdir().expect("temp dir");
    populate(temp.path());
    let app = router(&config(temp.path()));

    let tricks = [
        "/dump/../x".to_owned(),
        "/dump/../secret.txt".to_owned(),
        "/dump/%2e%2e%2fetc%2fpasswd".to_owned(),
        "/dump/%2e%2e%2fsecret.txt".to_owned(),
        "/dump/..%2f".to_owned(),
        format!("/dump/..%2fown%2f{OLD_GZ}"),
        "/dump/..%5Csecret.txt".to_owned(),
        "/dump/..\\secret.txt".to_owned(),
        format!("/dump/%5C{OLD_GZ}"),
        "/dump//etc/passwd".to_owned(),
        "/dump/%2Fetc%2Fpasswd".to_owned(),
        format!("/dump/own/{OLD_GZ}"),
        format!("/dump/./{OLD_GZ}"),
        format!("/dump/{TEMP_GZ}"),
        format!("/dump/{SYMLINK}"),
        format!("/dump/{DIRECTORY}"),
        "/dump/notes.txt".to_owned(),
        "/dump/messages_20240105_66666666.txt".to_owned(),
        "/dump/messages_2024_1.txt".to_owned(),
        "/dump/%FF%FE".to_owned(),
    ];

    for uri in &tricks {
        let response = get(&app, uri, &[]).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        let error: serde_json::Value = serde_json::from_slice(&body(response).await).expect("JSON error body");
        assert!(error["error"].is_string(), "{uri}: {error}");
    }
}

#[tokio::test]
async fn dump_without_slash_redirects() {
    let temp = tempfile::tempdir().expect("temp dir");
    let app = router(&config(temp.path()));

    let response = get(&app, "/dump", &[]).await;

    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header_text(&response, header::LOCATION), Some("dump/"));
}

#[tokio::test]
async fn written_files_download_complete() {
    let temp = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(TestClock::at(2024, 5, 1, 12, 0, 0));
    let writer = DumpWriter::open(&config(temp.path()), clock).expect("writer opens");
    let lines: Vec<String> = (0..100).map(|id| format!("{{\"id_str\":\"{id}\",\"text\":\"line {id}\"}}")).collect();
    for chunk in lines.chunks(9) {
        let batch = chunk.iter().map(|line| bytes::Bytes::from(line.clone())).collect();
        writer.append(batch).await.expect("queued").wait().await.expect("written");
    }
    writer.shutdown().await;
    let app = router(&config(temp.path()));

    let index = get(&app, "/dump/index.json", &[]).await;
    let index: serde_json::Value = serde_json::from_slice(&body(index).await).expect("JSON index");

    let mut downloaded = Vec::new();
    for file in index["files"].as_array().expect("files array") {
        let name = file["name"].as_str().expect("name");
        let response = get(&app, &format!("/dump/{name}"), &[]).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let raw = body(response).await;
        let text = if file["compressed"] == true {
            gunzip(&raw)
        } else {
            String::from_utf8(raw).expect("UTF-8 text")
        };
        downloaded.extend(text.lines().map(str::to_owned));
    }
    assert!(index["files"].as_array().is_some_and(|files| files.len() > 1), "{index}");
    downloaded.sort();
    let mut expected = lines.clone();
    expected.sort();
    assert_eq!(downloaded, expected);
}

#[tokio::test]
async fn body_limit_cuts_growing_file() {
    let limited = super::http::limit_body(Body::from("0123456789"), 4);

    assert_eq!(to_bytes(limited, usize::MAX).await.expect("body read").as_ref(), b"0123");
}

#[test]
fn open_rejects_entry_swapped_for_symlink() {
    use std::os::unix::fs::MetadataExt;

    let temp = tempfile::tempdir().expect("temp dir");
    let path = temp.path().join(NEW_TXT);
    fs::write(&path, NEW_LINES).expect("dump file written");
    let checked = fs::symlink_metadata(&path).expect("metadata");
    let identity = (checked.dev(), checked.ino());
    assert!(super::http::open_same_file(&path, identity).expect("open").is_some());

    // The same inode behind a symlink, and another file under the checked name.
    let moved = temp.path().join("moved.txt");
    fs::rename(&path, &moved).expect("file moved");
    std::os::unix::fs::symlink(&moved, &path).expect("symlink created");
    assert!(super::http::open_same_file(&path, identity).expect("open").is_none(), "served through a symlink");

    fs::remove_file(&path).expect("symlink removed");
    fs::write(&path, OLD_LINES).expect("other file written");
    assert!(super::http::open_same_file(&path, identity).expect("open").is_none(), "served another file");
}
