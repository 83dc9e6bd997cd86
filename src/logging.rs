//! Logging set-up: `tracing` to stderr, as text or JSON lines.

use tracing_subscriber::EnvFilter;

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second call, as in tests that start several servers, keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
