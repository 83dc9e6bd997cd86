//! Server-Sent Events: the `/api/stream.json` handler.
//!
//! A request is checked (channels, the connection limit) before it joins the hub, so a
//! rejected one costs no subscription. `Last-Event-ID` (or `lastEventId` in the query of a
//! first connect) picks where the stream resumes.

mod body;
mod frame;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::body::Body;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{CorsOrigins, StreamConfig};
use crate::hub::{Hub, Resume};
use crate::serve::ConnectionAbort;
use crate::stats::{RejectReason, Stats};
use crate::topic::{self, FilterLimits};

pub use frame::{gap_frame, message_frame};

/// How long a stream request waits for the broker to confirm its subscriptions.
const SUBSCRIBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Seconds a client is asked to wait when every SSE connection slot is taken.
const FULL_RETRY_AFTER_SECS: u64 = 5;

/// What the stream handler needs.
#[derive(Clone)]
pub struct StreamState {
    pub hub: Arc<Hub>,
    pub config: Arc<StreamConfig>,
    pub stats: Arc<Stats>,
    pub shutdown: CancellationToken,
    /// One permit per open stream, `stream.connections.max` in all.
    connections: Arc<Semaphore>,
}

impl StreamState {
    pub fn new(hub: Arc<Hub>, config: Arc<StreamConfig>, stats: Arc<Stats>, shutdown: CancellationToken) -> Self {
        let connections = Arc::new(Semaphore::new(config.connections_max));
        StreamState {
            hub,
            config,
            stats,
            shutdown,
            connections,
        }
    }
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
    #[error("too many open streams (stream.connections.max is {max}); retry later")]
    Full { max: usize },
}

impl IntoResponse for StreamError {
    fn into_response(self) -> Response {
        let status = match self {
            StreamError::Unavailable(_) | StreamError::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = crate::http::json_error(status, &self.to_string());
        if let StreamError::Full { .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(FULL_RETRY_AFTER_SECS));
        }
        response
    }
}

/// `GET /api/stream.json?channel=FILTER[&channel=FILTER...][&lastEventId=ID]`
pub async fn stream(
    State(state): State<StreamState>,
    abort: Option<axum::Extension<ConnectionAbort>>,
    headers: HeaderMap,
    query: axum::extract::RawQuery,
) -> Response {
    let query = query.0.unwrap_or_default();
    let filters = match parse_filters(&query, &state.config) {
        Ok(filters) => filters,
        Err(error) => {
            state.stats.reject(RejectReason::InvalidFilter);
            return with_cors(error.into_response(), &headers, &state.config);
        }
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        Stats::add(&state.stats.sse_connections_rejected, 1);
        let error = StreamError::Full {
            max: state.config.connections_max,
        };
        return with_cors(error.into_response(), &headers, &state.config);
    };

    let resume = parse_resume(&headers, &query);
    // Evicting the client closes its HTTP/1.x connection at once, even while a write to it
    // is blocked. An HTTP/2 stream ends only when its body is next polled.
    let evicted = abort.map(|axum::Extension(abort)| abort.0).unwrap_or_default();
    let membership = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, state.hub.join(filters, resume, evicted)).await {
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
    tracing::debug!(?resume, replayed = membership.replay.len(), gap = membership.gap, "stream opened");

    let body = Body::from_stream(body::event_stream(membership, state.clone(), permit));
    let mut response = Response::new(body);
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response_headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    with_cors(response, &headers, &state.config)
}

/// Reads the resume point: the `Last-Event-ID` header a reconnecting browser sends, else
/// `lastEventId` from the query, which a page sets on its first connect.
fn parse_resume(headers: &HeaderMap, query: &str) -> Resume {
    let value = match headers.get("last-event-id") {
        Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        None => form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "lastEventId")
            .map(|(_, value)| value.into_owned()),
    };
    match value.as_deref().map(str::trim) {
        None | Some("") => Resume::Live,
        Some(value) => value.parse().map_or(Resume::Unknown, Resume::After),
    }
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

/// Adds `Access-Control-Allow-Origin` as `stream.cors.origins` sets it.
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn resume_of(header: Option<&str>, query: &str) -> Resume {
        let mut headers = HeaderMap::new();
        if let Some(value) = header {
            headers.insert("last-event-id", HeaderValue::from_str(value).unwrap());
        }
        parse_resume(&headers, query)
    }

    #[test]
    fn resume_point_prefers_the_header() {
        assert_eq!(resume_of(None, "channel=all"), Resume::Live);
        assert_eq!(resume_of(None, "channel=all&lastEventId=42"), Resume::After(42));
        assert_eq!(resume_of(Some("43"), "channel=all&lastEventId=42"), Resume::After(43));
        assert_eq!(resume_of(Some(""), "channel=all"), Resume::Live);
        assert_eq!(resume_of(Some("not-a-number"), "channel=all"), Resume::Unknown);
        assert_eq!(resume_of(None, "lastEventId=-1"), Resume::Unknown);
    }
}
