//! Configuration: every key, its default and its type, read once at start-up.
//!
//! Precedence, lowest first: built-in defaults, the properties file, `LOKSTREAM_*` environment
//! variables, `--set key=value`. An unknown key or an invalid value is an error naming the key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::broker::external::BrokerAddress;
use crate::broker::front::Credentials;
use crate::dump::{DumpConfig, FsyncPolicy};

/// The file read when `--config` is not given; it is optional.
pub const DEFAULT_CONFIG_PATH: &str = "conf/config.properties";

/// Prefix of environment variables that override keys.
pub const ENV_PREFIX: &str = "LOKSTREAM_";

/// Maximum number of segments in one broker log. rumqttd reserves a slot for each segment
/// when it creates a log, so a larger count only risks an allocation failure.
const MAX_LOG_SEGMENTS: u64 = 65_536;

/// Every key with its default. `conf/config.properties` documents the same keys; a test
/// keeps the two in step.
pub const KEYS: &[(&str, &str)] = &[
    ("bind.address", "0.0.0.0"),
    ("port.http", "9000"),
    ("http.push.token", ""),
    ("http.tls.cert", ""),
    ("http.tls.key", ""),
    ("http.header_timeout_secs", "30"),
    ("mqtt.embedded", "true"),
    ("mqtt.port", "1883"),
    ("mqtt.ws.port", "9001"),
    ("mqtt.connections.max", "10000"),
    ("mqtt.connect.timeout_ms", "10000"),
    ("mqtt.auth.username", ""),
    ("mqtt.auth.password", ""),
    ("mqtt.auth.subscribe", "false"),
    ("mqtt.username", ""),
    ("mqtt.password", ""),
    ("mqtt.log.segment_bytes", "8388608"),
    ("mqtt.log.segments", "4"),
    ("mqtt.ingest.log.segments", "16"),
    ("stream.enabled", "true"),
    ("stream.mqtt.address", "tcp://127.0.0.1:1883"),
    ("stream.mqtt.share_group", "lokstream"),
    ("stream.ingest.topic", "ingest/#"),
    ("stream.message.max_bytes", "65536"),
    ("stream.batch.max_bytes", "16777216"),
    ("stream.dedupe.entries", "1000000"),
    ("stream.channels.text", "false"),
    ("stream.channels.max_per_message", "256"),
    ("stream.cors.origins", "*"),
    ("stream.heartbeat.secs", "15"),
    ("stream.retry.ms", "3000"),
    ("stream.client.queue_events", "1024"),
    ("stream.connections.max", "10000"),
    ("stream.history.bytes", "67108864"),
    ("stream.history.linger_secs", "60"),
    ("stream.connection.max_filters", "32"),
    ("stream.filter.max_bytes", "256"),
    ("stream.filter.max_levels", "16"),
    ("dump.write_enabled", "true"),
    ("dump.dir", "data/dump"),
    ("dump.rotate.bytes", "268435456"),
    ("dump.fsync", "batch"),
    ("dump.retain.bytes", "0"),
    ("dump.retain.days", "0"),
    ("dump.import.poll_secs", "10"),
    ("log.format", "text"),
    ("log.level", "info"),
    ("shutdown.grace.secs", "10"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key '{key}' (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("invalid value '{value}' for '{key}' (from {origin}): {reason}")]
    InvalidValue {
        key: String,
        value: String,
        origin: String,
        reason: String,
    },
    #[error("invalid --set argument '{0}': expected key=value")]
    InvalidSet(String),
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: java_properties::PropertiesError,
    },
}

/// Which origins may read the stream from a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of the MQTT broker, embedded or external.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub embedded: bool,
    pub port: u16,
    /// `None` when `mqtt.ws.port` is 0: no WebSocket listener.
    pub ws_port: Option<u16>,
    pub max_connections: usize,
    /// How long a new connection to the embedded broker may take to send its CONNECT packet.
    pub connect_timeout_ms: u64,
    /// The login that lets clients of the embedded broker publish; `None` when anyone may.
    pub publisher_auth: Option<Credentials>,
    /// Whether clients without the publisher login are rejected, so subscribing needs it too.
    pub auth_subscribe: bool,
    /// Size of one in-memory log segment per subscribed filter; with `log_segments` it bounds
    /// how far a slow subscriber may fall behind before it loses messages.
    pub log_segment_bytes: usize,
    pub log_segments: usize,
    /// Segments of `log_segment_bytes` kept for the ingest filter: the backlog of published
    /// messages that the ingest loop may fall behind by before the broker drops some.
    pub ingest_log_segments: usize,
    /// The external broker, used when `embedded` is false.
    pub external_address: BrokerAddress,
    /// Credentials for the external broker; `None` when empty.
    pub username: Option<String>,
    pub password: Option<String>,
    pub share_group: String,
}

/// Settings of ingest and of the SSE stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub enabled: bool,
    pub ingest_topic: String,
    pub message_max_bytes: usize,
    pub batch_max_bytes: usize,
    pub dedupe_entries: usize,
    pub channels_text: bool,
    pub channels_max_per_message: usize,
    pub cors_origins: CorsOrigins,
    pub heartbeat_secs: u64,
    pub retry_ms: u64,
    pub client_queue_events: usize,
    /// Open SSE connections beyond which a stream request gets 503.
    pub connections_max: usize,
    /// Bytes of recent events kept for streams that resume with `Last-Event-ID`.
    pub history_bytes: usize,
    /// Seconds a filter stays subscribed after its last stream left, so that a stream that
    /// reconnects within that time finds what it missed in the history.
    pub history_linger_secs: u64,
    pub connection_max_filters: usize,
    pub filter_max_bytes: usize,
    pub filter_max_levels: usize,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// PEM files of the HTTP listener's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The typed configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind_address: IpAddr,
    pub port_http: u16,
    /// Bearer token `/api/push.json` requires; `None` leaves push open.
    pub push_token: Option<String>,
    /// `None` when `http.tls.cert` and `http.tls.key` are empty: plain HTTP.
    pub http_tls: Option<TlsConfig>,
    /// Seconds a client has to send a request head, and to finish the TLS handshake.
    pub http_header_timeout_secs: u64,
    pub mqtt: MqttConfig,
    pub stream: StreamConfig,
    pub dump: DumpConfig,
    pub log: LogConfig,
    pub shutdown_grace_secs: u64,
}

/// Raw key/value settings with the origin of each value, for error messages.
#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<&'static str, (String, String)>,
}

impl Default for Settings {
    fn default() -> Self {
        let values = KEYS
            .iter()
            .map(|(key, default)| (*key, (default.to_string(), "default".to_string())))
            .collect();
        Settings { values }
    }
}

impl Settings {
    /// Sets `key`, which must be one of [`KEYS`]; `origin` names where the value came from.
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let Some((known, _)) = KEYS.iter().find(|(k, _)| *k == key) else {
            return Err(ConfigError::UnknownKey {
                key: key.to_string(),
                origin: origin.to_string(),
            });
        };
        self.values
            .insert(known, (value.trim().to_string(), origin.to_string()));
        Ok(())
    }

    /// Applies every key of a properties file.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let file = std::fs::File::open(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let pairs = java_properties::read(std::io::BufReader::new(file)).map_err(|source| {
            ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let origin = path.display().to_string();
        let mut keys: Vec<_> = pairs.into_iter().collect();
        keys.sort();
        for (key, value) in keys {
            self.set(&key, &value, &origin)?;
        }
        Ok(())
    }

    /// Applies `LOKSTREAM_*` variables: the key upper-cased with dots as underscores.
    pub fn apply_env<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        for (name, value) in vars {
            let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = KEYS
                .iter()
                .map(|(key, _)| *key)
                .find(|key| env_suffix(key) == suffix);
            match key {
                Some(key) => self.set(key, &value, &format!("environment {name}"))?,
                None if is_service_link(suffix) => {
                    tracing::debug!(variable = name, "ignored a Kubernetes service variable");
                }
                None => {
                    return Err(ConfigError::UnknownKey {
                        key: name,
                        origin: "environment".to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    /// Applies `--set key=value` arguments.
    pub fn apply_sets(&mut self, sets: &[String]) -> Result<(), ConfigError> {
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                return Err(ConfigError::InvalidSet(set.clone()));
            };
            self.set(key.trim(), value, "--set")?;
        }
        Ok(())
    }

    /// Effective `key=value` lines, in key order, with secrets masked.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, (value, origin)) in &self.values {
            let shown = if is_secret(key) && !value.is_empty() { "********" } else { value };
            out.push_str(&format!("{key}={shown}    # {origin}\n"));
        }
        out
    }

    fn raw(&self, key: &'static str) -> (&str, &str) {
        // Every key in KEYS is present from `default()`, and callers pass only keys of KEYS.
        let (value, origin) = &self.values[key];
        (value, origin)
    }

    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ConfigError {
        let (value, origin) = self.raw(key);
        ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            origin: origin.to_string(),
            reason: reason.into(),
        }
    }

    fn parse<T: FromStr>(&self, key: &'static str, expected: &str) -> Result<T, ConfigError> {
        self.raw(key)
            .0
            .parse()
            .map_err(|_| self.invalid(key, format!("expected {expected}")))
    }

    fn boolean(&self, key: &'static str) -> Result<bool, ConfigError> {
        match self.raw(key).0 {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(self.invalid(key, "expected true or false")),
        }
    }

    /// A count or size that must be at least `min`.
    fn at_least(&self, key: &'static str, min: u64) -> Result<u64, ConfigError> {
        let value: u64 = self.parse(key, "a whole number")?;
        if value < min {
            return Err(self.invalid(key, format!("must be at least {min}")));
        }
        Ok(value)
    }

    fn in_range(&self, key: &'static str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let value = self.at_least(key, min)?;
        if value > max {
            return Err(self.invalid(key, format!("must be at most {max}")));
        }
        Ok(value)
    }

    fn usize_at_least(&self, key: &'static str, min: u64) -> Result<usize, ConfigError> {
        let value = self.at_least(key, min)?;
        usize::try_from(value).map_err(|_| self.invalid(key, "too large for this platform"))
    }

    fn port(&self, key: &'static str) -> Result<u16, ConfigError> {
        self.parse(key, "a port number from 0 to 65535")
    }

    fn string(&self, key: &'static str) -> String {
        self.raw(key).0.to_string()
    }
}

/// Kubernetes and Docker links add `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT` and
/// `<SERVICE>_PORT_<N>_TCP...` variables for every service, so a service named
/// `lokstream-http` yields `LOKSTREAM_HTTP_SERVICE_HOST`. They are not configuration.
fn is_service_link(suffix: &str) -> bool {
    if suffix.ends_with("_SERVICE_HOST") || suffix.contains("_SERVICE_PORT") || suffix.ends_with("_PORT") {
        return true;
    }
    let Some((_, port)) = suffix.split_once("_PORT_") else {
        return false;
    };
    let mut parts = port.split('_');
    let number = parts.next().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let protocol = parts.next().is_some_and(|p| matches!(p, "TCP" | "UDP" | "SCTP"));
    number && protocol
}

/// Keys whose values are never printed.
fn is_secret(key: &str) -> bool {
    key.ends_with("password") || key.ends_with("token")
}

/// `dump.rotate.bytes` becomes `DUMP_ROTATE_BYTES`.
fn env_suffix(key: &str) -> String {
    key.to_ascii_uppercase().replace('.', "_")
}

impl Config {
    /// Reads the file (`--config`, or the default file when it exists), then the environment,
    /// then `--set` arguments.
    pub fn load<I>(config_path: Option<&Path>, env: I, sets: &[String]) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let settings = Self::settings(config_path, env, sets)?;
        Config::from_settings(&settings)
    }

    /// The raw settings `load` would type; `lokstream config` prints them.
    pub fn settings<I>(config_path: Option<&Path>, env: I, sets: &[String]) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut settings = Settings::default();
        match config_path {
            Some(path) => settings.apply_file(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => {
                settings.apply_file(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => {}
        }
        settings.apply_env(env)?;
        settings.apply_sets(sets)?;
        Ok(settings)
    }

    /// Defaults with `key=value` overrides; the way tests build a configuration.
    pub fn with_overrides(overrides: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut settings = Settings::default();
        for (key, value) in overrides {
            settings.set(key, value, "override")?;
        }
        Config::from_settings(&settings)
    }

    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let config = Config {
            bind_address: s.parse("bind.address", "an IPv4 or IPv6 address")?,
            port_http: s.port("port.http")?,
            push_token: Some(s.string("http.push.token")).filter(|token| !token.is_empty()),
            http_tls: tls_config(s)?,
            mqtt: mqtt_config(s)?,
            stream: stream_config(s)?,
            dump: dump_config(s)?,
            log: LogConfig {
                format: match s.raw("log.format").0 {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(s.invalid("log.format", "expected text or json")),
                },
                level: log_level(s)?,
            },
            shutdown_grace_secs: s.at_least("shutdown.grace.secs", 1)?,
            http_header_timeout_secs: s.at_least("http.header_timeout_secs", 1)?,
        };

        if config.stream.message_max_bytes > config.stream.batch_max_bytes {
            return Err(s.invalid(
                "stream.message.max_bytes",
                "must not exceed stream.batch.max_bytes",
            ));
        }
        Ok(config)
    }
}

/// A count that must lie in `min..=max`.
fn at_most(s: &Settings, key: &'static str, min: u64, max: u64) -> Result<usize, ConfigError> {
    let value = s.usize_at_least(key, min)?;
    if value as u64 > max {
        return Err(s.invalid(key, format!("must be at most {max}")));
    }
    Ok(value)
}

/// `log.level` is a level or a list of `target=level` directives; a bare word that is no
/// level would silently filter out every line.
fn log_level(s: &Settings) -> Result<String, ConfigError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    let value = non_empty(s, "log.level")?;
    let valid = value.split(',').all(|directive| {
        let level = directive.rsplit_once('=').map_or(directive, |(_, level)| level);
        LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
    });
    if !valid {
        return Err(s.invalid("log.level", "expected trace, debug, info, warn, error or off, or target=level directives"));
    }
    Ok(value)
}

fn non_empty(s: &Settings, key: &'static str) -> Result<String, ConfigError> {
    let value = s.string(key);
    if value.is_empty() {
        return Err(s.invalid(key, "must not be empty"));
    }
    Ok(value)
}

/// Upper limit of `dump.retain.days`: 100 years. A larger value is a typing error, and
/// its age in seconds would overflow on the way to a `SystemTime`.
const MAX_RETAIN_DAYS: u64 = 36_500;

fn dump_config(s: &Settings) -> Result<DumpConfig, ConfigError> {
    let fsync = match s.raw("dump.fsync").0 {
        "batch" => FsyncPolicy::Batch,
        "rotate" => FsyncPolicy::Rotate,
        _ => return Err(s.invalid("dump.fsync", "expected batch or rotate")),
    };
    Ok(DumpConfig {
        write_enabled: s.boolean("dump.write_enabled")?,
        dir: PathBuf::from(non_empty(s, "dump.dir")?),
        rotate_bytes: s.at_least("dump.rotate.bytes", 1024)?,
        fsync,
        retain_bytes: s.at_least("dump.retain.bytes", 0)?,
        retain_days: s.in_range("dump.retain.days", 0, MAX_RETAIN_DAYS)?,
        import_poll_secs: s.at_least("dump.import.poll_secs", 1)?,
    })
}

fn mqtt_config(s: &Settings) -> Result<MqttConfig, ConfigError> {
    let embedded = s.boolean("mqtt.embedded")?;
    let ws_port = s.port("mqtt.ws.port")?;
    // The value is not echoed: a user may have written a password into it.
    let external_address =
        BrokerAddress::parse(s.raw("stream.mqtt.address").0).map_err(|error| ConfigError::InvalidValue {
            key: "stream.mqtt.address".to_string(),
            value: "(not shown)".to_string(),
            origin: s.raw("stream.mqtt.address").1.to_string(),
            reason: error.reason,
        })?;
    let share_group = non_empty(s, "stream.mqtt.share_group")?;
    if share_group.contains(['/', '+', '#']) {
        return Err(s.invalid("stream.mqtt.share_group", "must not contain '/', '+' or '#'"));
    }
    let optional = |key| Some(s.string(key)).filter(|value| !value.is_empty());
    Ok(MqttConfig {
        embedded,
        port: s.port("mqtt.port")?,
        ws_port: (ws_port != 0).then_some(ws_port),
        max_connections: s.usize_at_least("mqtt.connections.max", 1)?,
        connect_timeout_ms: connect_timeout_ms(s)?,
        publisher_auth: publisher_auth(s)?,
        auth_subscribe: auth_subscribe(s)?,
        // rumqttd panics on segments under 1 KiB.
        log_segment_bytes: s.usize_at_least("mqtt.log.segment_bytes", 1024)?,
        // rumqttd reserves room for every segment of a log when it creates the log, so a
        // huge count fails at the first subscription instead of at start-up.
        log_segments: s.in_range("mqtt.log.segments", 1, MAX_LOG_SEGMENTS)? as usize,
        ingest_log_segments: s.in_range("mqtt.ingest.log.segments", 1, MAX_LOG_SEGMENTS)? as usize,
        external_address,
        username: optional("mqtt.username"),
        password: optional("mqtt.password"),
        share_group,
    })
}

/// rumqttd takes the WebSocket listener's timeout as 16-bit milliseconds.
fn connect_timeout_ms(s: &Settings) -> Result<u64, ConfigError> {
    let value = s.at_least("mqtt.connect.timeout_ms", 100)?;
    if value > u64::from(u16::MAX) {
        return Err(s.invalid("mqtt.connect.timeout_ms", format!("must be at most {}", u16::MAX)));
    }
    Ok(value)
}

fn publisher_auth(s: &Settings) -> Result<Option<Credentials>, ConfigError> {
    let username = s.string("mqtt.auth.username");
    let password = s.string("mqtt.auth.password");
    match (username.is_empty(), password.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(Credentials { username, password })),
        (true, false) => Err(s.invalid("mqtt.auth.username", "must be set when mqtt.auth.password is")),
        (false, true) => Err(s.invalid("mqtt.auth.password", "must be set when mqtt.auth.username is")),
    }
}

fn auth_subscribe(s: &Settings) -> Result<bool, ConfigError> {
    let required = s.boolean("mqtt.auth.subscribe")?;
    if required && s.string("mqtt.auth.username").is_empty() {
        return Err(s.invalid("mqtt.auth.subscribe", "needs mqtt.auth.username and mqtt.auth.password"));
    }
    Ok(required)
}

fn stream_config(s: &Settings) -> Result<StreamConfig, ConfigError> {
    let ingest_topic = non_empty(s, "stream.ingest.topic")?;
    let limits = crate::topic::FilterLimits {
        max_bytes: 65535,
        max_levels: usize::MAX,
    };
    if let Err(error) = crate::topic::validate_filter(&ingest_topic, &limits) {
        return Err(s.invalid("stream.ingest.topic", error.to_string()));
    }
    // Channels under the ingest filter are never published, or they would be ingested again.
    if crate::topic::matches("all", &ingest_topic) {
        return Err(s.invalid(
            "stream.ingest.topic",
            "must not match the channel 'all'; use a prefix of its own such as ingest/#",
        ));
    }

    Ok(StreamConfig {
        enabled: s.boolean("stream.enabled")?,
        ingest_topic,
        message_max_bytes: s.usize_at_least("stream.message.max_bytes", 64)?,
        batch_max_bytes: s.usize_at_least("stream.batch.max_bytes", 64)?,
        dedupe_entries: s.usize_at_least("stream.dedupe.entries", 0)?,
        channels_text: s.boolean("stream.channels.text")?,
        channels_max_per_message: s.usize_at_least("stream.channels.max_per_message", 2)?,
        cors_origins: cors_origins(s)?,
        heartbeat_secs: s.at_least("stream.heartbeat.secs", 1)?,
        retry_ms: s.at_least("stream.retry.ms", 0)?,
        client_queue_events: at_most(s, "stream.client.queue_events", 1, 1 << 20)?,
        connections_max: s.usize_at_least("stream.connections.max", 1)?,
        history_bytes: s.usize_at_least("stream.history.bytes", 0)?,
        history_linger_secs: s.at_least("stream.history.linger_secs", 0)?,
        connection_max_filters: s.usize_at_least("stream.connection.max_filters", 1)?,
        filter_max_bytes: s.usize_at_least("stream.filter.max_bytes", 1)?,
        filter_max_levels: s.usize_at_least("stream.filter.max_levels", 1)?,
    })
}

fn tls_config(s: &Settings) -> Result<Option<TlsConfig>, ConfigError> {
    let cert = s.string("http.tls.cert");
    let key = s.string("http.tls.key");
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, false) => Ok(Some(TlsConfig {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
        })),
        (true, false) => Err(s.invalid("http.tls.cert", "must be set when http.tls.key is set")),
        (false, true) => Err(s.invalid("http.tls.key", "must be set when http.tls.cert is set")),
    }
}

fn cors_origins(s: &Settings) -> Result<CorsOrigins, ConfigError> {
    let raw = s.raw("stream.cors.origins").0;
    if raw == "*" {
        return Ok(CorsOrigins::Any);
    }
    let origins: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(str::to_string)
        .collect();
    if origins.is_empty() {
        return Err(s.invalid("stream.cors.origins", "expected * or a comma-separated list of origins"));
    }
    if let Some(bad) = origins
        .iter()
        .find(|origin| !(origin.starts_with("http://") || origin.starts_with("https://")))
    {
        return Err(s.invalid(
            "stream.cors.origins",
            format!("origin '{bad}' must start with http:// or https://"),
        ));
    }
    Ok(CorsOrigins::List(origins))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::with_overrides(&[]).expect("defaults must load");
        assert_eq!(config.port_http, 9000);
        assert_eq!(config.mqtt.port, 1883);
        assert_eq!(config.mqtt.ws_port, Some(9001));
        assert_eq!(config.stream.ingest_topic, "ingest/#");
        assert_eq!(config.dump.rotate_bytes, 268_435_456);
        assert_eq!(config.dump.fsync, FsyncPolicy::Batch);
        assert_eq!(config.stream.cors_origins, CorsOrigins::Any);
    }

    #[test]
    fn retain_days_over_100_years_is_invalid() {
        let error = Config::with_overrides(&[("dump.retain.days", "36501")]).unwrap_err();
        assert!(error.to_string().contains("dump.retain.days"), "{error}");
        let error = Config::with_overrides(&[("dump.retain.days", "18446744073709551615")]).unwrap_err();
        assert!(error.to_string().contains("dump.retain.days"), "{error}");

        let config = Config::with_overrides(&[("dump.retain.days", "36500")]).expect("100 years is valid");
        assert_eq!(config.dump.retain_days, 36_500);
    }

    #[test]
    fn huge_log_segment_counts_are_invalid() {
        for key in ["mqtt.log.segments", "mqtt.ingest.log.segments"] {
            for value in ["1000000000", "18446744073709551615"] {
                let error = Config::with_overrides(&[(key, value)]).unwrap_err().to_string();
                assert!(error.contains(key), "{key}={value}: {error}");
                assert!(error.contains("at most 65536"), "{key}={value}: {error}");
            }
            assert!(Config::with_overrides(&[(key, "65536")]).is_ok(), "{key}=65536");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let error = Config::with_overrides(&[("port.htp", "1")]).unwrap_err();
        assert!(error.to_string().contains("port.htp"), "{error}");
    }

    #[test]
    fn invalid_value_is_named() {
        let error = Config::with_overrides(&[("port.http", "ninety")]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("port.http"), "{text}");
        assert!(text.contains("ninety"), "{text}");
    }

    #[test]
    fn environment_overrides_file_and_set_overrides_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.properties");
        std::fs::write(&path, "# comment\nport.http = 8000\nmqtt.port: 1884\n").unwrap();

        let env = vec![
            ("LOKSTREAM_PORT_HTTP".to_string(), "8001".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let sets = vec!["mqtt.port=1885".to_string()];
        let config = Config::load(Some(&path), env, &sets).unwrap();
        assert_eq!(config.port_http, 8001);
        assert_eq!(config.mqtt.port, 1885);
    }

    #[test]
    fn environment_key_with_underscore_maps_back() {
        let env = vec![("LOKSTREAM_DUMP_WRITE_ENABLED".to_string(), "false".to_string())];
        let config = Config::load(Some(Path::new("/dev/null")), env, &[]).unwrap();
        assert!(!config.dump.write_enabled);
    }

    #[test]
    fn unknown_environment_variable_is_named() {
        let env = vec![("LOKSTREAM_PORT_HTTPS".to_string(), "1".to_string())];
        let error = Config::load(Some(Path::new("/dev/null")), env, &[]).unwrap_err();
        assert!(error.to_string().contains("LOKSTREAM_PORT_HTTPS"), "{error}");
    }

    #[test]
    fn kubernetes_service_variables_are_ignored() {
        let env = vec![
            ("LOKSTREAM_HTTP_SERVICE_HOST".to_string(), "10.0.0.1".to_string()),
            ("LOKSTREAM_HTTP_SERVICE_PORT_HTTP".to_string(), "9000".to_string()),
            ("LOKSTREAM_HTTP_PORT".to_string(), "tcp://10.0.0.1:9000".to_string()),
            ("LOKSTREAM_HTTP_PORT_9000_TCP_ADDR".to_string(), "10.0.0.1".to_string()),
            ("LOKSTREAM_PORT_HTTP".to_string(), "8080".to_string()),
        ];
        let config = Config::load(Some(Path::new("/dev/null")), env, &[]).unwrap();
        assert_eq!(config.port_http, 8080, "a real key next to service variables still applies");

        let env = vec![("LOKSTREAM_PORT_HTTPS".to_string(), "1".to_string())];
        assert!(Config::load(Some(Path::new("/dev/null")), env, &[]).is_err(), "other unknown names still fail");
    }

    #[test]
    fn set_without_equals_is_rejected() {
        let error = Config::load(Some(Path::new("/dev/null")), vec![], &["port.http".into()]).unwrap_err();
        assert!(matches!(error, ConfigError::InvalidSet(_)), "{error}");
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let error = Config::load(Some(Path::new("/nonexistent/lokstream.properties")), vec![], &[]).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }), "{error}");
    }

    #[test]
    fn external_broker_settings_are_checked() {
        let config = Config::with_overrides(&[
            ("mqtt.embedded", "false"),
            ("stream.mqtt.address", "mqtts://broker.example:8884"),
            ("mqtt.username", "collector"),
        ])
        .unwrap();
        assert!(!config.mqtt.embedded);
        assert_eq!(config.mqtt.external_address.port, 8884);
        assert_eq!(config.mqtt.username.as_deref(), Some("collector"));
        assert_eq!(config.mqtt.password, None);

        let error = Config::with_overrides(&[("stream.mqtt.address", "broker:1883")]).unwrap_err();
        assert!(error.to_string().contains("stream.mqtt.address"), "{error}");
        let error = Config::with_overrides(&[("stream.mqtt.share_group", "a/b")]).unwrap_err();
        assert!(error.to_string().contains("stream.mqtt.share_group"), "{error}");
    }

    #[test]
    fn rendered_settings_mask_passwords() {
        let mut settings = Settings::default();
        settings.set("mqtt.password", "hunter2", "test").unwrap();
        let rendered = settings.render();
        assert!(!rendered.contains("hunter2"), "{rendered}");
        assert!(rendered.contains("mqtt.password=********"), "{rendered}");
    }

    #[test]
    fn publisher_auth_needs_both_values() {
        let config = Config::with_overrides(&[("mqtt.auth.username", "collector"), ("mqtt.auth.password", "s3cret")])
            .unwrap();
        let auth = config.mqtt.publisher_auth.expect("auth is on");
        assert!(auth.matches("collector", "s3cret"));
        assert!(!config.mqtt.auth_subscribe);

        let error = Config::with_overrides(&[("mqtt.auth.username", "collector")]).unwrap_err();
        assert!(error.to_string().contains("mqtt.auth.password"), "{error}");
        let error = Config::with_overrides(&[("mqtt.auth.password", "s3cret")]).unwrap_err();
        assert!(error.to_string().contains("mqtt.auth.username"), "{error}");
        let error = Config::with_overrides(&[("mqtt.auth.subscribe", "true")]).unwrap_err();
        assert!(error.to_string().contains("mqtt.auth.subscribe"), "{error}");
    }

    #[test]
    fn publisher_password_is_masked_and_not_in_debug_output() {
        let mut settings = Settings::default();
        settings.set("mqtt.auth.username", "collector", "test").unwrap();
        settings.set("mqtt.auth.password", "hunter2", "test").unwrap();
        let rendered = settings.render();
        assert!(rendered.contains("mqtt.auth.password=********"), "{rendered}");
        assert!(!rendered.contains("hunter2"), "{rendered}");

        let config = Config::from_settings(&settings).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn ws_port_zero_turns_websocket_off() {
        let config = Config::with_overrides(&[("mqtt.ws.port", "0")]).unwrap();
        assert_eq!(config.mqtt.ws_port, None);
    }

    #[test]
    fn cors_list_is_parsed_and_checked() {
        let config =
            Config::with_overrides(&[("stream.cors.origins", "https://a.example, http://b.example")]).unwrap();
        assert_eq!(
            config.stream.cors_origins,
            CorsOrigins::List(vec!["https://a.example".into(), "http://b.example".into()])
        );
        assert!(Config::with_overrides(&[("stream.cors.origins", "a.example")]).is_err());
    }

    #[test]
    fn ingest_topic_must_not_cover_channels() {
        for filter in ["#", "+", "all"] {
            let error = Config::with_overrides(&[("stream.ingest.topic", filter)]).unwrap_err();
            assert!(error.to_string().contains("stream.ingest.topic"), "{filter}: {error}");
        }
    }

    #[test]
    fn misspelt_log_level_is_rejected() {
        assert!(Config::with_overrides(&[("log.level", "debg")]).is_err());
        assert!(Config::with_overrides(&[("log.level", "info,rumqttd=warn")]).is_ok());
    }

    #[test]
    fn tls_needs_both_cert_and_key() {
        assert!(Config::with_overrides(&[]).unwrap().http_tls.is_none());
        let error = Config::with_overrides(&[("http.tls.cert", "cert.pem")]).unwrap_err();
        assert!(error.to_string().contains("http.tls.key"), "{error}");
        let config = Config::with_overrides(&[("http.tls.cert", "cert.pem"), ("http.tls.key", "key.pem")]).unwrap();
        assert!(config.http_tls.is_some());
    }

    #[test]
    fn ingest_topic_must_be_a_valid_filter() {
        let error = Config::with_overrides(&[("stream.ingest.topic", "ingest/#/x")]).unwrap_err();
        assert!(error.to_string().contains("stream.ingest.topic"), "{error}");
    }

    #[test]
    fn dump_fsync_accepts_only_known_policies() {
        let config = Config::with_overrides(&[("dump.fsync", "rotate")]).unwrap();
        assert_eq!(config.dump.fsync, FsyncPolicy::Rotate);
        let error = Config::with_overrides(&[("dump.fsync", "always")]).unwrap_err();
        assert!(error.to_string().contains("dump.fsync"), "{error}");
    }

    #[test]
    fn shipped_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG_PATH);
        let file = std::fs::File::open(&path).unwrap();
        let pairs = java_properties::read(std::io::BufReader::new(file)).unwrap();
        for (key, default) in KEYS {
            assert_eq!(pairs.get(*key).map(String::as_str), Some(*default), "key {key}");
        }
        assert_eq!(pairs.len(), KEYS.len(), "the file has keys the code does not know");
    }
}
