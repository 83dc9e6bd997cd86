//! HTTP routes for researchers: `/dump/` (HTML listing), `/dump/index.json` and
//! `/dump/NAME` downloads with Range, Last-Modified and ETag. Only regular files in `own/`
//! with a dump file name are reachable; every other path under `/dump/` is a JSON 404.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::facts::{self, FileFacts};
use super::listing::{self, DumpFile};
use super::names;
use super::status::StatusCell;
use super::DumpStatus;

const GZIP_CONTENT_TYPE: &str = "application/gzip";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

#[derive(Clone)]
struct DumpFiles {
    own: Arc<PathBuf>,
    /// The writer's status, for the facts of the file being written.
    writer: Option<Arc<StatusCell<DumpStatus>>>,
}

/// Builds the `/dump` routes serving the files in `own`.
pub(super) fn router(own: &FsPath, writer: Option<Arc<StatusCell<DumpStatus>>>) -> Router {
    let files = DumpFiles {
        own: Arc::new(own.to_path_buf()),
        writer,
    };
    Router::new()
        .route("/dump", get(redirect_to_listing))
        .route("/dump/", get(listing_html))
        .route("/dump/index.json", get(listing_json))
        .route("/dump/{*name}", get(download))
        .with_state(files)
}

#[derive(Debug, thiserror::Error)]
enum DumpHttpError {
    #[error("no dump file at {0}; /dump/index.json lists the files")]
    NotFound(String),
    /// The cause is logged where it happens and not sent to the client.
    #[error("reading the dump directory failed; the server log has the cause")]
    Internal,
}

impl IntoResponse for DumpHttpError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}

// Relative, so the redirect also works behind a proxy that mounts the server under a prefix.
async fn redirect_to_listing() -> Redirect {
    Redirect::permanent("dump/")
}

async fn listing_html(State(files): State<DumpFiles>) -> Result<Response, DumpHttpError> {
    let listed = load_listing(&files.own).await?;
    let page = render_html(&listed);
    Ok(([(header::CACHE_CONTROL, "no-cache")], Html(page)).into_response())
}

#[derive(serde::Serialize)]
struct Index {
    files: Vec<IndexEntry>,
}

#[derive(serde::Serialize)]
struct IndexEntry {
    name: String,
    bytes: u64,
    /// RFC 3339 in UTC, for example `2024-05-01T12:00:00Z`.
    modified: String,
    compressed: bool,
    /// Lines in the file; `null` while not known (a `.txt` waiting for compression, or a
    /// `.txt.gz` whose facts are being rebuilt).
    messages: Option<u64>,
    /// Times of the first and last message, from their `stream_id`, RFC 3339 in UTC with
    /// milliseconds.
    first_message: Option<String>,
    last_message: Option<String>,
    /// SHA-256 of a closed (`.txt.gz`) file, lower-case hex.
    sha256: Option<String>,
}

impl IndexEntry {
    fn new(file: &DumpFile) -> Self {
        Self {
            name: file.name.clone(),
            bytes: file.bytes,
            modified: file.modified.to_rfc3339_opts(SecondsFormat::Secs, true),
            compressed: file.compressed,
            messages: None,
            first_message: None,
            last_message: None,
            sha256: None,
        }
    }

    fn with_facts(mut self, facts: FileFacts) -> Self {
        self.messages = Some(facts.lines);
        self.first_message = facts.first_ms.and_then(format_millis);
        self.last_message = facts.last_ms.and_then(format_millis);
        self.sha256 = Some(facts.sha256);
        self
    }

    fn with_writer_status(mut self, status: &DumpStatus) -> Self {
        self.messages = Some(status.current_lines);
        self.first_message = status.current_first_ms.and_then(format_millis);
        self.last_message = status.current_last_ms.and_then(format_millis);
        self
    }
}

fn format_millis(millis: u64) -> Option<String> {
    let millis = i64::try_from(millis).ok()?;
    let time = DateTime::<Utc>::from_timestamp_millis(millis)?;
    Some(time.to_rfc3339_opts(SecondsFormat::Millis, true))
}

async fn listing_json(State(files): State<DumpFiles>) -> Result<Response, DumpHttpError> {
    let listed = load_listing(&files.own).await?;
    let writer = files.writer.as_ref().map(|status| status.snapshot());

    let own = Arc::clone(&files.own);
    let entries = tokio::task::spawn_blocking(move || index_entries(&own, &listed, writer.as_ref())).await;
    let Ok(entries) = entries else {
        tracing::error!(dir = %files.own.display(), "reading dump file facts panicked");
        return Err(DumpHttpError::Internal);
    };
    Ok(([(header::CACHE_CONTROL, "no-cache")], Json(Index { files: entries })).into_response())
}

/// Joins the listing with the stored facts of closed files and the writer's facts of the
/// file being written.
fn index_entries(own: &FsPath, listed: &[DumpFile], writer: Option<&DumpStatus>) -> Vec<IndexEntry> {
    let current = writer.and_then(|status| status.current_file.as_deref());
    listed
        .iter()
        .map(|file| {
            let entry = IndexEntry::new(file);
            if file.compressed {
                return match facts::load(own, &file.name, file.bytes) {
                    Some(facts) => entry.with_facts(facts),
                    None => entry,
                };
            }
            match writer {
                Some(status) if current == Some(file.name.as_str()) => entry.with_writer_status(status),
                _ => entry,
            }
        })
        .collect()
}

async fn load_listing(own: &Arc<PathBuf>) -> Result<Vec<DumpFile>, DumpHttpError> {
    let dir = Arc::clone(own);
    let listed = tokio::task::spawn_blocking(move || listing::list_files(&dir)).await;

    match listed {
        Ok(Ok(files)) => Ok(files),
        Ok(Err(error)) => {
            tracing::error!(dir = %own.display(), %error, "listing dump files failed");
            Err(DumpHttpError::Internal)
        }
        Err(error) => {
            tracing::error!(dir = %own.display(), %error, "listing dump files panicked");
            Err(DumpHttpError::Internal)
        }
    }
}

fn render_html(files: &[DumpFile]) -> String {
    let mut page = String::from(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
        "<title>lokstream dump files</title>\n</head>\n<body>\n<h1>Dump files</h1>\n",
        "<p>Each file holds one JSON object per line, newest file first. Read compressed files with ",
        "<code>zcat messages_*.txt.gz | jq .</code>; a <code>.txt</code> file may still be growing. ",
        "Scripts can read <a href=\"index.json\">index.json</a>.</p>\n",
        "<table>\n<thead><tr><th>name</th><th>bytes</th><th>modified (UTC)</th></tr></thead>\n<tbody>\n",
    ));

    for file in files {
        let name = escape_html(&file.name);
        let modified = file.modified.format("%Y-%m-%d %H:%M:%S");
        page.push_str(&format!(
            "<tr><td><a href=\"{name}\">{name}</a></td><td>{}</td><td>{modified}</td></tr>\n",
            file.bytes
        ));
    }

    page.push_str("</tbody>\n</table>\n</body>\n</html>\n");
    page
}

fn escape_html(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

async fn download(
    State(files): State<DumpFiles>,
    name: Result<Path<String>, PathRejection>,
    mut request: Request,
) -> Result<Response, DumpHttpError> {
    // A rejected path (for example percent-encoded bytes that are not UTF-8) names no file.
    let Ok(Path(name)) = name else {
        return Err(DumpHttpError::NotFound(request.uri().path().to_owned()));
    };
    let Some(metadata) = file_metadata(&files.own, &name).await? else {
        return Err(DumpHttpError::NotFound(request.uri().path().to_owned()));
    };
    let path = files.own.join(&name);

    let entity_tag = entity_tag(&metadata);
    if let Some(tag) = &entity_tag {
        if if_none_match_hits(request.headers(), tag) {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag.clone())]).into_response());
        }
        // RFC 9110 section 13.1.3: with `If-None-Match` present, `If-Modified-Since` is
        // ignored, but `ServeFile` evaluates it, so it is removed after a miss.
        if request.headers().contains_key(header::IF_NONE_MATCH) {
            request.headers_mut().remove(header::IF_MODIFIED_SINCE);
        }
        if if_range_fails(request.headers(), tag, &metadata) {
            request.headers_mut().remove(header::RANGE);
        }
    }
    if let Some(unsatisfiable) = prepare_range(request.headers_mut(), metadata.len()) {
        return Ok(set_file_headers(unsatisfiable, &name, entity_tag));
    }

    // `ServeFile` opens by path, so it is handed the file this handler opened and checked.
    let Some(opened) = open_checked(&path, &metadata).await? else {
        return Err(DumpHttpError::NotFound(format!("/dump/{name}")));
    };
    let served = match ServeFile::new(opened.proc_path()).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    drop(opened);
    // The file was removed after the check, as a `.txt` is right after its compression.
    if served.status() == StatusCode::NOT_FOUND {
        return Err(DumpHttpError::NotFound(format!("/dump/{name}")));
    }

    let response = set_file_headers(served, &name, entity_tag);
    Ok(cap_body_at_content_length(response))
}

/// A dump file opened without following symlinks.
struct OpenedFile(std::fs::File);

impl OpenedFile {
    /// Returns `/proc/self/fd/N`. Opening it reopens this very file, whatever the name in
    /// `own/` points to by then (Linux `proc(5)`).
    /// NOTE: without a mounted `/proc`, `ServeFile` finds no file and every download is a 404.
    fn proc_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

/// Opens `path` with `O_NOFOLLOW` and returns it only when it is still the regular file
/// that `checked` describes (same device and inode). An entry swapped for a symlink or
/// another file between the check and the open is therefore not served.
async fn open_checked(path: &FsPath, checked: &Metadata) -> Result<Option<OpenedFile>, DumpHttpError> {
    let path = path.to_path_buf();
    let identity = (checked.dev(), checked.ino());
    let opened = tokio::task::spawn_blocking(move || open_same_file(&path, identity)).await;

    match opened {
        Ok(Ok(file)) => Ok(file.map(OpenedFile)),
        Ok(Err(error)) => {
            tracing::error!(%error, "opening a dump file failed");
            Err(DumpHttpError::Internal)
        }
        Err(error) => {
            tracing::error!(%error, "opening a dump file panicked");
            Err(DumpHttpError::Internal)
        }
    }
}

/// Opens `path` without following a symlink; `None` when it is gone, a symlink, not a
/// regular file, or not the file with `identity` (device, inode).
pub(super) fn open_same_file(path: &FsPath, identity: (u64, u64)) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;

    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // `O_NOFOLLOW` fails with ELOOP on a symlink.
        Err(error) if error.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(error) => return Err(error),
    };

    let metadata = file.metadata()?;
    let same = metadata.file_type().is_file() && (metadata.dev(), metadata.ino()) == identity;
    Ok(same.then_some(file))
}

async fn file_metadata(own: &Arc<PathBuf>, name: &str) -> Result<Option<Metadata>, DumpHttpError> {
    let dir = Arc::clone(own);
    let owned_name = name.to_owned();
    let checked = tokio::task::spawn_blocking(move || listing::regular_file_metadata(&dir, &owned_name)).await;

    match checked {
        Ok(Ok(metadata)) => Ok(metadata),
        Ok(Err(error)) => {
            tracing::error!(file = name, %error, "reading dump file metadata failed");
            Err(DumpHttpError::Internal)
        }
        Err(error) => {
            tracing::error!(file = name, %error, "reading dump file metadata panicked");
            Err(DumpHttpError::Internal)
        }
    }
}

/// Sets the content type by name instead of guessing, so a `.txt.gz` downloads as the gzip
/// file itself: with `Content-Encoding: gzip` clients would unpack it on the fly.
fn set_file_headers(mut response: Response, name: &str, entity_tag: Option<HeaderValue>) -> Response {
    let headers = response.headers_mut();
    if let Some(tag) = entity_tag {
        headers.insert(header::ETAG, tag);
    }
    if !response.status().is_success() {
        return response;
    }

    let content_type = if names::is_compressed_name(name) {
        GZIP_CONTENT_TYPE
    } else {
        TEXT_CONTENT_TYPE
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.remove(header::CONTENT_ENCODING);
    response
}

/// Cuts the body of a full (200) response at its `Content-Length`. `ServeFile` takes the
/// length when it opens the file but reads until the end of the file, and the `.txt` being
/// written can grow in between. A body longer than its `Content-Length` breaks the response.
fn cap_body_at_content_length(response: Response) -> Response {
    if response.status() != StatusCode::OK {
        return response;
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(length) = length else {
        return response;
    };

    response.map(|body| limit_body(body, length))
}

/// Returns a body with the first `limit` bytes of `body`.
pub(super) fn limit_body(body: Body, limit: u64) -> Body {
    let chunks = body.into_data_stream().scan(limit, |remaining, chunk| {
        if *remaining == 0 {
            return std::future::ready(None);
        }
        let chunk = chunk.map(|mut bytes| {
            let keep = usize::try_from(*remaining).unwrap_or(usize::MAX).min(bytes.len());
            bytes.truncate(keep);
            *remaining -= keep as u64;
            bytes
        });
        std::future::ready(Some(chunk))
    });
    Body::from_stream(chunks)
}

/// Rewrites `Range` where `ServeFile` (tower-http 0.6) departs from RFC 9110, or returns
/// the response itself:
/// - a unit other than `bytes` must be ignored, and several ranges may be, so both are
///   dropped and the whole file is sent (`ServeFile` responds 416 to both);
/// - a suffix range longer than the file selects the whole file (`ServeFile` responds 416);
/// - every range of an empty file is unsatisfiable (`ServeFile` responds 206).
fn prepare_range(headers: &mut HeaderMap, size: u64) -> Option<Response> {
    let range = headers.get(header::RANGE)?;
    let Some(ranges) = range.to_str().ok().and_then(|range| range.trim().strip_prefix("bytes=")) else {
        headers.remove(header::RANGE);
        return None;
    };
    if ranges.contains(',') {
        headers.remove(header::RANGE);
        return None;
    }

    if size == 0 {
        let unsatisfiable = [(header::CONTENT_RANGE, "bytes */0".to_owned())];
        return Some((StatusCode::RANGE_NOT_SATISFIABLE, unsatisfiable).into_response());
    }
    let suffix = ranges.trim().strip_prefix('-').and_then(|length| length.parse::<u64>().ok());
    if suffix.is_some_and(|length| length > size) {
        headers.insert(header::RANGE, HeaderValue::from_static("bytes=0-"));
    }
    None
}

/// Builds a strong ETag from length and modification time in nanoseconds, which together
/// change with every write to a dump file.
fn entity_tag(metadata: &Metadata) -> Option<HeaderValue> {
    let modified = metadata.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    let tag = format!("\"{:x}-{:x}\"", metadata.len(), modified.as_nanos());
    HeaderValue::from_str(&tag).ok()
}

/// Tells whether `If-None-Match` lists `tag` or `*`, with the weak comparison RFC 9110
/// prescribes for this header.
fn if_none_match_hits(headers: &HeaderMap, tag: &HeaderValue) -> bool {
    let Some(tag) = tag.to_str().ok() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

/// Tells whether `If-Range` names another version of the file, in which case the range is
/// dropped and the whole file is sent (RFC 9110). `ServeFile` ignores `If-Range`.
fn if_range_fails(headers: &HeaderMap, tag: &HeaderValue, metadata: &Metadata) -> bool {
    let Some(condition) = headers.get(header::IF_RANGE) else {
        return false;
    };
    if condition == tag {
        return false;
    }

    let Ok(modified) = metadata.modified() else {
        return true;
    };
    let last_modified = DateTime::<Utc>::from(modified).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    condition.as_bytes() != last_modified.as_bytes()
}
