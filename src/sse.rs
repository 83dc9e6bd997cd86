//! Server-Sent Events: the `/api/stream.json` handler and the wire format.
//!
//! Whatever bytes a payload holds, the wire carries valid UTF-8 and every payload line gets
//! its own `data:` field, so no payload can inject an SSE field or end an event early.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::Stream;
use tokio_util::sync::CancellationToken;

use crate::config::{CorsOrigins, StreamConfig};
use crate::hub::{Hub, Membership};
use crate::stats::{RejectReason, Stats};
use crate::topic::{self, FilterLimits};

/// How long a stream request waits for the broker to confirm its subscriptions.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Events concatenated into one write when a client has several queued.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// Formats a message event: `id:`, then one `data:` line per payload line.
pub fn message_frame(id: u64, payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload);
    let mut frame = BytesMut::with_capacity(text.len() + 32);
    put_id(&mut frame, id);
    put_data(&mut frame, &text);
    frame.put_u8(b'\n');
    frame.freeze()
}

/// Formats a `gap` event: the broker dropped `lost` messages this stream should have had.
pub fn gap_frame(id: u64, lost: u64) -> Bytes {
    let mut frame = BytesMut::with_capacity(64);
    put_id(&mut frame, id);
    frame.put_slice(b"event: gap\n");
    put_data(&mut frame, &format!("{{\"lost\":{lost}}}"));
    frame.put_u8(b'\n');
    frame.freeze()
}

fn put_id(frame: &mut BytesMut, id: u64) {
    frame.put_slice(b"id: ");
    frame.put_slice(id.to_string().as_bytes());
    frame.put_u8(b'\n');
}

/// Splits on CRLF, CR and LF, the three line ends an SSE parser recognises.
fn put_data(frame: &mut BytesMut, text: &str) {
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        frame.put_slice(b"data: ");
        frame.put_slice(rest[..end].as_bytes());
        frame.put_u8(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
}

/// What the stream handler needs.
#[derive(Clone)]
pub struct StreamState {
    pub hub: Arc<Hub>,
    pub config: Arc<StreamConfig>,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("missing channel parameter: use /api/stream.json?channel=FILTER, repeatable")]
    MissingChannel,
    #[error("too many channel parameters: {count}, the maximum is {max}")]
    TooManyChannels { count: usize, max: usize },
    #[error("invalid channel '{channel}': {reason}")]
    InvalidChannel { channel: String, reason: String },
    #[error("the stream is not available: {0}")]
    Unavailable(String),
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let status = match self {
            StreamError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        crate::http::json_error(status, &self.to_string())
    }
}

/// `GET /api/stream.json?channel=FILTER[&channel=FILTER...]`
pub async fn stream(
    State(state): State<StreamState>,
    headers: HeaderMap,
    query: axum::extract::RawQuery,
) -> Response {
    let filters = match parse_filters(query.0.as_deref().unwrap_or(""), &state.config) {
        Ok(filters) => filters,
        Err(error) => {
            state.stats.reject(RejectReason::InvalidFilter);
            return with_cors(error.into_response(), &headers, &state.config);
        }
    };

    let membership = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, state.hub.join(filters)).await {
        Ok(Ok(membership)) => membership,
        Ok(Err(error)) => {
            tracing::error!(%error, "stream subscription failed");
            let error = StreamError::Unavailable("the broker did not accept the subscription".into());
            return with_cors(error.into_response(), &headers, &state.config);
        }
        Err(_) => {
            tracing::warn!("stream subscription timed out; the broker is unavailable");
            let error = StreamError::Unavailable("the broker is unavailable; retry later".into());
            return with_cors(error.into_response(), &headers, &state.config);
        }
    };

    let body = Body::from_stream(event_stream(membership, state.clone()));
    let mut response = Response::new(body);
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(response, &headers, &state.config)
}

/// `OPTIONS /api/stream.json`: the CORS preflight.
pub async fn preflight(State(state): State<StreamState>, headers: HeaderMap) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, OPTIONS"));
    response_headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Last-Event-ID, Cache-Control"),
    );
    response_headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    with_cors(response, &headers, &state.config)
}

/// Adds `Access-Control-Allow-Origin` as `stream.cors.origins` says.
fn with_cors(mut response: Response, request: &HeaderMap, config: &StreamConfig) -> Response {
    let headers = response.headers_mut();
    match &config.cors_origins {
        CorsOrigins::Any => {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        }
        CorsOrigins::List(allowed) => {
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
            let origin = request.get(header::ORIGIN).and_then(|value| value.to_str().ok());
            if let Some(origin) = origin.filter(|origin| allowed.iter().any(|a| a == origin)) {
                if let Ok(value) = HeaderValue::from_str(origin) {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
                }
            }
        }
    }
    response
}

/// Reads the `channel` parameters, validates each, and drops duplicates and filters that
/// another filter of the same request covers, which saves broker subscriptions.
fn parse_filters(query: &str, config: &StreamConfig) -> Result<Vec<String>, StreamError> {
    let channels: Vec<String> = form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "channel")
        .map(|(_, value)| value.into_owned())
        .collect();
    if channels.is_empty() {
        return Err(StreamError::MissingChannel);
    }
    if channels.len() > config.connection_max_filters {
        return Err(StreamError::TooManyChannels {
            count: channels.len(),
            max: config.connection_max_filters,
        });
    }

    let limits = FilterLimits {
        max_bytes: config.filter_max_bytes,
        max_levels: config.filter_max_levels,
    };
    for channel in &channels {
        topic::validate_filter(channel, &limits).map_err(|error| StreamError::InvalidChannel {
            channel: channel.chars().take(100).collect(),
            reason: error.to_string(),
        })?;
    }

    let mut kept: Vec<String> = Vec::with_capacity(channels.len());
    for (index, channel) in channels.iter().enumerate() {
        let covered = channels.iter().enumerate().any(|(other, wide)| {
            other != index && topic::covers(wide, channel) && (wide != channel || other < index)
        });
        if !covered {
            kept.push(channel.clone());
        }
    }
    Ok(kept)
}

/// The response body: `retry:`, then events as they come, with heartbeat comments in
/// silence; it ends on shutdown, on eviction, or when the hub stops.
fn event_stream(membership: Membership, state: StreamState) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let retry = Bytes::from(format!("retry: {}\n\n", state.config.retry_ms));
    let heartbeat = Duration::from_secs(state.config.heartbeat_secs);
    let stats = state.stats.clone();
    Stats::add(&stats.sse_connections_total, 1);
    let open = OpenConnection::new(stats.clone());

    futures_util::stream::unfold(
        (Some(retry), membership, state, open, Vec::with_capacity(MAX_EVENTS_PER_WRITE)),
        move |(first, mut membership, state, open, mut batch)| async move {
            if let Some(first) = first {
                return Some((Ok(first), (None, membership, state, open, batch)));
            }
            let chunk = tokio::select! {
                biased;
                _ = state.shutdown.cancelled() => return None,
                _ = membership.evicted.cancelled() => return None,
                _ = state.hub.stopped() => return None,
                received = membership.events.recv_many(&mut batch, MAX_EVENTS_PER_WRITE) => {
                    if received == 0 {
                        return None;
                    }
                    let mut chunk = BytesMut::new();
                    for event in batch.drain(..) {
                        chunk.put_slice(&event.frame);
                    }
                    Stats::add(&state.stats.sse_events_sent, received as u64);
                    chunk.freeze()
                }
                _ = tokio::time::sleep(heartbeat) => Bytes::from_static(b": heartbeat\n\n"),
            };
            Some((Ok(chunk), (None, membership, state, open, batch)))
        },
    )
}

/// Keeps the open-connections gauge right however the stream ends.
struct OpenConnection(Arc<Stats>);

impl OpenConnection {
    fn new(stats: Arc<Stats>) -> Self {
        Stats::add(&stats.sse_connections_open, 1);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .sse_connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lines_become_data_fields() {
        let frame = message_frame(7, b"a\r\nb\rc\nd");
        assert_eq!(&frame[..], b"id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn trailing_line_break_gives_an_empty_data_line() {
        let frame = message_frame(1, b"a\n");
        assert_eq!(&frame[..], b"id: 1\ndata: a\ndata: \n\n");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let frame = message_frame(1, b"a\xffb");
        assert!(std::str::from_utf8(&frame).is_ok());
        assert_eq!(&frame[..], "id: 1\ndata: a\u{fffd}b\n\n".as_bytes());
    }

    #[test]
    fn gap_frame_names_its_event() {
        let frame = gap_frame(3, 5);
        assert_eq!(&frame[..], b"id: 3\nevent: gap\ndata: {\"lost\":5}\n\n");
    }

    fn config() -> StreamConfig {
        crate::config::Config::with_overrides(&[]).unwrap().stream
    }

    #[test]
    fn covered_and_repeated_filters_are_dropped() {
        let filters = parse_filters(
            "channel=twitter/%23&channel=twitter/hashtag/x&channel=all&channel=all",
            &config(),
        )
        .unwrap();
        assert_eq!(filters, ["twitter/#", "all"]);
    }

    #[test]
    fn missing_and_invalid_channels_are_rejected() {
        assert!(matches!(parse_filters("", &config()), Err(StreamError::MissingChannel)));
        assert!(matches!(
            parse_filters("channel=a/%23/b", &config()),
            Err(StreamError::InvalidChannel { .. })
        ));
        assert!(matches!(
            parse_filters("channel=", &config()),
            Err(StreamError::InvalidChannel { .. })
        ));
    }
}
