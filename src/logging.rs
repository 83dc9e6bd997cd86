//! Logging set-up: `tracing` to stderr, as text or JSON lines.

use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// rumqttd logs every connection and subscription at info, and every MQTT client's
/// disconnect, clean or not, at error from `rumqttd::server::broker`; only its other
/// warnings and errors concern the server itself.
const DEPENDENCY_LEVELS: &str = "rumqttd=warn,rumqttd::server::broker=off";

/// Installs the global subscriber; `RUST_LOG`, when set, replaces `log.level`.
pub fn init(config: &LogConfig) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(format!("{},{DEPENDENCY_LEVELS}", config.level)),
    };
    // rumqttd opens an error-level `publish` span for every publish it routes, and recording
    // its topic field cost about a sixth of the server's CPU under ingest load. Only that
    // span is dropped: rumqttd's events still pass, framed by its client and connection
    // spans, though without the topic and packet id.
    let no_publish_spans = filter_fn(|metadata| {
        !(metadata.is_span() && metadata.name() == "publish" && metadata.target().starts_with("rumqttd"))
    });
    let filter = filter.and(no_publish_spans);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second call, as in tests that start several servers, keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => tracing_subscriber::registry().with(layer.with_filter(filter)).try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json().flatten_event(true).with_filter(filter))
            .try_init(),
    };
}
