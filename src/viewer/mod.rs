//! The live viewer page at `/`, with its assets embedded in the binary, and
//! `/api/channels.json`, the busiest channels it suggests.
//!
//! The page renders untrusted message text through `textContent` only, and a
//! Content-Security-Policy that allows nothing but this server backs that up.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::activity;
use crate::stats::Stats;

const INDEX_HTML: &str = include_str!("index.html");
const VIEWER_JS: &str = include_str!("viewer.js");
const VIEWER_CSS: &str = include_str!("viewer.css");

/// Channels `/api/channels.json` returns when the request names no limit, and the most
/// it returns.
const DEFAULT_CHANNELS: usize = 20;
const MAX_CHANNELS: usize = 100;

const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'";

pub fn router(stats: Arc<Stats>) -> Router {
    Router::new()
        .route("/", get(|| async { asset(INDEX_HTML, "text/html; charset=utf-8") }))
        .route("/viewer/viewer.js", get(|| async { asset(VIEWER_JS, "text/javascript; charset=utf-8") }))
        .route("/viewer/viewer.css", get(|| async { asset(VIEWER_CSS, "text/css; charset=utf-8") }))
        .route("/api/channels.json", get(channels))
        // Browsers ask for an icon on every page load; there is none.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .with_state(stats)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change with the binary; revalidating costs little next to a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[derive(serde::Deserialize)]
struct ChannelsQuery {
    limit: Option<usize>,
}

/// `GET /api/channels.json?limit=N`: the busiest channels of the last one to two
/// activity windows, busiest first.
async fn channels(State(stats): State<Arc<Stats>>, Query(query): Query<ChannelsQuery>) -> Response {
    let limit = query.limit.unwrap_or(DEFAULT_CHANNELS).clamp(1, MAX_CHANNELS);
    let channels = stats.channel_activity.top(limit);
    Json(json!({
        "window_secs": activity::WINDOW.as_secs() * 2,
        "channels": channels,
    }))
    .into_response()
}
