//! SSE streams over HTTP/1.x without hyper: the first request head of a plain connection is
//! read here, and when it opens a stream, the router's response is written straight to the
//! socket.
//!
//! An idle stream then costs its socket, one small task and the stream's own state, a few
//! KB in all, where hyper keeps read and write buffers of 8 KB and more for as long as the
//! connection lives. The response always ends the connection (`Connection: close`), so no
//! second request is read. Any other first request, and any head this module does not take
//! (too long, a body, an upgrade, HTTP/2), goes to hyper with the bytes read so far.

use std::future::Future;
use std::io;
use std::time::SystemTime;

use axum::body::{Body, HttpBody};
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, Version};
use axum::Router;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;


/// The path served here; every other path goes to hyper.
const STREAM_PATH: &str = "/api/stream.json";

/// Bytes read for a first request head before the connection goes to hyper anyway.
/// Stream heads are small, and hyper has its own limits for larger ones.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Headers parsed in a stream head; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;

/// Headers this module writes itself, so the router's values for them are left out.
const FRAMING_HEADERS: [HeaderName; 3] = [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::CONNECTION];

/// The first request head of a connection.
pub(super) enum Head {
    /// A stream request, for [`respond`] and [`write_body`].
    Stream(Request<Body>),
    /// Anything else, with every byte read so far, for hyper.
    Other(Bytes),
}

/// Reads the first request head from `socket` and decides who serves the connection.
pub(super) async fn read_head(socket: &TcpStream) -> io::Result<Head> {
    let mut read = Vec::with_capacity(1024);
    loop {
        if read.len() == read.capacity() {
            read.reserve(1024);
        }
        socket.readable().await?;
        match socket.try_read_buf(&mut read) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }

        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head = match parsed.parse(&read) {
            Ok(httparse::Status::Partial) if read.len() < MAX_HEAD_BYTES => continue,
            Ok(httparse::Status::Complete(_)) => stream_request(&parsed).map(Head::Stream),
            Ok(httparse::Status::Partial) | Err(_) => None,
        };
        return Ok(head.unwrap_or_else(|| Head::Other(read.into())));
    }
}

/// Builds the request when `parsed` opens a stream that this module can serve.
fn stream_request(parsed: &httparse::Request<'_, '_>) -> Option<Request<Body>> {
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if parsed.method? != "GET" || path != STREAM_PATH {
        return None;
    }
    let version = match parsed.version? {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return None,
    };

    let mut request = Request::builder().method(Method::GET).uri(target).version(version);
    let headers = request.headers_mut()?;
    for parsed_header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(parsed_header.name.as_bytes()).ok()?;
        // A body, an upgrade or an expectation needs hyper's handling.
        if [header::CONTENT_LENGTH, header::TRANSFER_ENCODING, header::UPGRADE, header::EXPECT].contains(&name) {
            return None;
        }
        headers.append(name, HeaderValue::from_bytes(parsed_header.value).ok()?);
    }
    request.body(Body::empty()).ok()
}

/// Signals that end a stream's writes early.
pub(super) struct Stops {
    pub(super) shutdown: CancellationToken,
    /// Cancelled when the hub disconnected the stream's client.
    pub(super) abort: CancellationToken,
}

impl Stops {
    /// Runs `future` unless it is still pending once the server stops or the connection is
    /// aborted; `None` then. A write that the socket takes at once still completes after
    /// shutdown, so a stream can end cleanly, while one blocked by a stalled client does not
    /// hold up the exit.
    async fn unless_stopped<T>(&self, future: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            output = future => Some(output),
            _ = self.shutdown.cancelled() => None,
            _ = self.abort.cancelled() => None,
        }
    }
}

/// Calls the router and writes the response head. Returns the body to write and whether
/// it goes in chunks, or `None` when the socket failed or the server is stopping.
pub(super) async fn respond(socket: &mut TcpStream, request: Request<Body>, app: Router, stops: &Stops) -> Option<(Body, bool)> {
    let version = request.version();
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    let chunked = length.is_none() && version == Version::HTTP_11;
    for name in &FRAMING_HEADERS {
        parts.headers.remove(name);
    }
    let head = response_head(&Response::from_parts(parts, ()), length, chunked);
    match stops.unless_stopped(socket.write_all(&head)).await {
        Some(Ok(())) => Some((body, chunked)),
        _ => None,
    }
}

/// Writes `body` until it ends, with the last chunk when `chunked`, and closes the socket.
/// The body is read only while the socket takes writes, as hyper does, so a client that
/// stops reading stops its stream, and the hub disconnects it once its queue is full.
pub(super) async fn write_body(mut socket: TcpStream, body: Body, chunked: bool, stops: Stops) {
    if pump(&mut socket, body, chunked, &stops).await.is_some() {
        let _ = socket.shutdown().await;
    }
}

/// Writes the body; `None` when the client went away, the body failed, or a write was
/// still blocked at shutdown.
async fn pump(socket: &mut TcpStream, mut body: Body, chunked: bool, stops: &Stops) -> Option<()> {
    let (mut reader, mut writer) = socket.split();
    let mut probe = [0u8; 32];
    loop {
        let frame = tokio::select! {
            // The client sends nothing more, so a read returns only when it went away.
            read = reader.read(&mut probe) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => continue,
            },
            frame = body.frame() => frame,
        };
        let mut data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
            Some(Err(error)) => {
                tracing::debug!(%error, "stream body failed");
                return None;
            }
        };
        if chunked {
            let size = ChunkSize::new(data.len());
            let mut chunk = Buf::chain(Buf::chain(size.as_bytes(), data), &b"\r\n"[..]);
            stops.unless_stopped(writer.write_all_buf(&mut chunk)).await?.ok()?;
        } else {
            stops.unless_stopped(writer.write_all_buf(&mut data)).await?.ok()?;
        }
    }
    if chunked {
        stops.unless_stopped(writer.write_all(b"0\r\n\r\n")).await?.ok()?;
    }
    Some(())
}

/// The size line of a chunk, `<hex>\r\n`, formatted on the stack: every event written to
/// every stream needs one.
struct ChunkSize {
    bytes: [u8; 18],
    start: usize,
}

impl ChunkSize {
    fn new(size: usize) -> ChunkSize {
        let mut bytes = [0u8; 18];
        bytes[16..].copy_from_slice(b"\r\n");
        let mut start = 16;
        let mut rest = size;
        loop {
            start -= 1;
            bytes[start] = b"0123456789ABCDEF"[rest % 16];
            rest /= 16;
            if rest == 0 {
                return ChunkSize { bytes, start };
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// Formats the status line and headers. The connection closes after the response, which is
/// how a body of unknown length ends over HTTP/1.0.
fn response_head(response: &Response<()>, length: Option<u64>, chunked: bool) -> Vec<u8> {
    let status = response.status();
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(format!("HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or("")).as_bytes());
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let Some(length) = length {
        head.extend_from_slice(format!("content-length: {length}\r\n").as_bytes());
    } else if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let date = httpdate::fmt_http_date(SystemTime::now());
    head.extend_from_slice(format!("date: {date}\r\nconnection: close\r\n\r\n").as_bytes());
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(head: &str) -> Option<Request<Body>> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        assert!(parsed.parse(head.as_bytes()).unwrap().is_complete());
        stream_request(&parsed)
    }

    #[test]
    fn stream_requests_are_taken() {
        let request = parse("GET /api/stream.json?channel=all HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n").unwrap();
        assert_eq!(request.uri(), "/api/stream.json?channel=all");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["last-event-id"], "7");
        let request = parse("GET /api/stream.json?channel=all HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(request.version(), Version::HTTP_10);
    }

    #[test]
    fn other_requests_go_to_hyper() {
        let cases = [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /api/stream.jsonx?channel=all HTTP/1.1\r\n\r\n",
            "HEAD /api/stream.json?channel=all HTTP/1.1\r\n\r\n",
            "OPTIONS /api/stream.json HTTP/1.1\r\n\r\n",
            "POST /api/stream.json?channel=all HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /api/stream.json?channel=all HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            "GET /api/stream.json?channel=all HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /api/stream.json?channel=all HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        ];
        for head in cases {
            assert!(parse(head).is_none(), "taken: {head:?}");
        }
    }

    #[test]
    fn chunk_size_is_hex_with_crlf() {
        for size in [0, 1, 15, 16, 255, 4096, 1 << 20, usize::MAX] {
            let expected = format!("{size:X}\r\n");
            assert_eq!(ChunkSize::new(size).as_bytes(), expected.as_bytes(), "{size}");
        }
    }

    #[test]
    fn head_frames_the_body() {
        let mut response = Response::new(());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        let head = String::from_utf8(response_head(&response, None, true)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"), "{head}");
        assert!(head.contains("\r\ntransfer-encoding: chunked\r\n"), "{head}");
        assert!(head.ends_with("\r\nconnection: close\r\n\r\n"), "{head}");
        let head = String::from_utf8(response_head(&response, Some(12), false)).unwrap();
        assert!(head.contains("\r\ncontent-length: 12\r\n"), "{head}");
        assert!(!head.contains("chunked"), "{head}");
    }
}
