//! The HTTP API: push, stream, dumps, health and status, built in one router.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::broker::{Broker, Listener};
use crate::config::Config;
use crate::hub::Hub;
use crate::publisher::{Origin, PublishError, Publisher};
use crate::sse::{self, StreamState};
use crate::stats::{RejectReason, Stats};
use crate::dump::DumpWriter;

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub publisher: Arc<Publisher>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub dump: DumpWriter,
    pub stats: Arc<Stats>,
    pub started: Instant,
    pub http_address: std::net::SocketAddr,
    pub stream: StreamState,
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

/// Builds a JSON error response: `{"error": message}`.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Builds a rejected push's response, `{"error": message, "reason": code}`, and counts it
/// under `reason`.
fn rejection(stats: &Stats, status: StatusCode, reason: RejectReason, message: &str) -> Response {
    stats.reject(reason);
    (status, Json(json!({ "error": message, "reason": reason }))).into_response()
}

pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/api/push.json", post(push))
        .route("/api/status.json", get(status))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone());

    if state.config.stream.enabled {
        let stream = Router::new()
            .route("/api/stream.json", get(sse::stream).options(sse::preflight))
            .with_state(state.stream.clone());
        app = app.merge(stream);
    }

    app.merge(crate::viewer::router(state.stats.clone()))
        .merge(state.dump.router())
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "not found") })
}

/// `POST /api/push.json`: a JSON body, or a form with the JSON in field `data`.
///
/// 200 means every message was accepted (or was a duplicate) and written to the dump file.
async fn push(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Some(token) = &state.config.push_token {
        if !has_bearer_token(&headers, token) {
            state.stats.reject(RejectReason::Unauthorized);
            let body = json!({ "error": "missing or invalid bearer token", "reason": RejectReason::Unauthorized });
            let challenge = [(header::WWW_AUTHENTICATE, "Bearer realm=\"lokstream\"")];
            return (StatusCode::UNAUTHORIZED, challenge, Json(body)).into_response();
        }
    }

    let max = state.config.stream.batch_max_bytes;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/x-www-form-urlencoded"));
    // Percent-encoding can triple the size of a form field.
    let limit = if is_form { max.saturating_mul(3) } else { max };

    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(error) if is_length_limit(&error) => {
            let message = format!("request body is larger than {limit} bytes (stream.batch.max_bytes)");
            return rejection(&state.stats, StatusCode::PAYLOAD_TOO_LARGE, RejectReason::PayloadTooLarge, &message);
        }
        // The client went away or sent a broken body; no one may be left to read a response.
        Err(_) => return json_error(StatusCode::BAD_REQUEST, "cannot read the request body"),
    };

    let payload = if is_form {
        let data = form_urlencoded::parse(&body).find(|(key, _)| key == "data");
        match data {
            Some((_, value)) => Bytes::from(value.into_owned()),
            None => {
                let message = "form has no field 'data'; send the JSON in field 'data'";
                return rejection(&state.stats, StatusCode::BAD_REQUEST, RejectReason::InvalidForm, message);
            }
        }
    } else {
        body
    };

    let outcome = match state.publisher.publish(&payload, Origin::Http).await {
        Ok(outcome) => outcome,
        Err(PublishError::Rejected(rejection)) => {
            let body = json!({ "error": rejection.detail, "reason": rejection.reason, "index": rejection.index });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
        Err(error) => {
            tracing::error!(%error, "push failed");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "the server cannot store messages right now; retry later");
        }
    };

    let (accepted, duplicates) = (outcome.accepted, outcome.duplicates);
    if let Err(error) = outcome.wait_written().await {
        tracing::error!(%error, "push not written to the dump");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the dump write failed; retry later");
    }
    Json(json!({ "accepted": accepted, "duplicates": duplicates })).into_response()
}

/// Compares in constant time, so response timing does not reveal how much of a guess was
/// right; only a length mismatch returns early.
fn has_bearer_token(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;

    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            // The scheme name is case-insensitive (RFC 9110 section 11.1).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .unwrap_or("");
    presented.as_bytes().ct_eq(token.as_bytes()).into()
}

fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

async fn metrics(State(state): State<AppState>) -> Response {
    match crate::metrics::encode(&state.metrics) {
        Ok(text) => {
            let content_type = [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")];
            (content_type, text).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics")
        }
    }
}

/// 200 while the process can serve; 503 when only a restart helps, so a supervisor's
/// liveness probe restarts it.
async fn healthz(State(state): State<AppState>) -> Response {
    if !state.broker.is_alive() {
        let body = json!({ "status": "failed", "reason": "the embedded broker stopped; restart the process" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when the broker links, the hub and the dump writer all work.
async fn readyz(State(state): State<AppState>) -> Response {
    let dump = state.dump.status();
    let checks = json!({
        "broker": state.broker.is_healthy(),
        "hub": state.hub.is_running(),
        "dump": !dump.enabled || dump.healthy,
    });
    let ready = checks.as_object().is_some_and(|checks| checks.values().all(|ok| ok == true));
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({ "ready": ready, "checks": checks }))).into_response()
}

/// Connections through the MQTT front and what it turned away.
fn mqtt_status(stats: &Stats) -> serde_json::Value {
    let rejected: serde_json::Map<String, serde_json::Value> = crate::stats::ConnectRejectReason::ALL
        .iter()
        .map(|reason| (reason.as_str().to_string(), stats.connects_rejected(*reason).into()))
        .collect();
    json!({
        "connections_v311": Stats::get(&stats.mqtt_connections_v311),
        "connections_v5": Stats::get(&stats.mqtt_connections_v5),
        "connects_rejected": rejected,
        "unauthorized_publishes": Stats::get(&stats.mqtt_unauthorized_publishes),
    })
}

async fn status(State(state): State<AppState>) -> Response {
    let stats = &state.stats;
    let rejected: serde_json::Map<String, serde_json::Value> = RejectReason::ALL
        .iter()
        .map(|reason| (reason.as_str().to_string(), stats.rejected(*reason).into()))
        .collect();
    let files = match crate::dump::count_files(&state.config.dump) {
        Ok(files) => json!(files),
        Err(error) => {
            tracing::warn!(%error, "cannot list the dump directory");
            serde_json::Value::Null
        }
    };
    let mut addresses = json!({ "http": state.http_address });
    for Listener { name, address } in state.broker.listeners() {
        if !name.ends_with("_internal") {
            addresses[name] = json!(address);
        }
    }

    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": state.started.elapsed().as_secs(),
        "addresses": addresses,
        "messages": {
            "accepted": Stats::get(&stats.messages_accepted),
            "duplicates": Stats::get(&stats.messages_duplicate),
            "rejected": rejected,
        },
        "channels": {
            "publishes": Stats::get(&stats.channel_publishes),
            "dropped": Stats::get(&stats.channels_dropped),
        },
        "broker": {
            "healthy": state.broker.is_healthy(),
            "messages_lost": Stats::get(&stats.broker_messages_lost),
            "publishes_dropped": state.broker.publishes_dropped(),
        },
        "mqtt": mqtt_status(stats),
        "hub": state.hub.status(),
        "sse": {
            "connections_open": Stats::get(&stats.sse_connections_open),
            "connections_total": Stats::get(&stats.sse_connections_total),
            "events_sent": Stats::get(&stats.sse_events_sent),
            "slow_disconnects": Stats::get(&stats.sse_slow_disconnects),
            "connections_rejected": Stats::get(&stats.sse_connections_rejected),
        },
        "dump": { "files": files, "writer": state.dump.status(), "import": state.dump.import_status() },
    }))
    .into_response()
}
