//! Configuration: every key, its default and its type, read once at start-up.
//!
//! Precedence, lowest first: built-in defaults, the properties file, `LOKSTREAM_*` environment
//! variables, `--set key=value`. An unknown key or an invalid value is an error naming the key.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::dump::DumpConfig;

/// The file read when `--config` is not given; it is optional.
pub const DEFAULT_CONFIG_PATH: &str = "conf/config.properties";

/// Prefix of environment variables that override keys.
pub const ENV_PREFIX: &str = "LOKSTREAM_";

/// Every key with its default. `conf/config.properties` documents the same keys; a test
/// keeps the two in step.
pub const KEYS: &[(&str, &str)] = &[
    ("bind.address", "0.0.0.0"),
    ("port.http", "9000"),
    ("http.tls.cert", ""),
    ("http.tls.key", ""),
    ("mqtt.embedded", "true"),
    ("mqtt.port", "1883"),
    ("mqtt.ws.port", "9001"),
    ("mqtt.connections.max", "10000"),
    ("mqtt.log.segment_bytes", "8388608"),
    ("mqtt.log.segments", "4"),
    ("stream.enabled", "true"),
    ("stream.mqtt.address", "tcp://127.0.0.1:1883"),
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
    /// Size of one in-memory log segment per subscribed filter; with `log_segments` it bounds
    /// how far a slow subscriber may fall behind before it loses messages.
    pub log_segment_bytes: usize,
    pub log_segments: usize,
    pub external_address: String,
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
    /// `None` when `http.tls.cert` and `http.tls.key` are empty: plain HTTP.
    pub http_tls: Option<TlsConfig>,
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

    /// Effective `key=value` lines, in key order.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (key, (value, origin)) in &self.values {
            out.push_str(&format!("{key}={value}    # {origin}\n"));
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
            http_tls: tls_config(s)?,
            mqtt: mqtt_config(s)?,
            stream: stream_config(s)?,
            dump: DumpConfig {
                write_enabled: s.boolean("dump.write_enabled")?,
                dir: PathBuf::from(non_empty(s, "dump.dir")?),
                rotate_bytes: s.at_least("dump.rotate.bytes", 1024)?,
            },
            log: LogConfig {
                format: match s.raw("log.format").0 {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(s.invalid("log.format", "expected text or json")),
                },
                level: non_empty(s, "log.level")?,
            },
            shutdown_grace_secs: s.at_least("shutdown.grace.secs", 1)?,
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

fn non_empty(s: &Settings, key: &'static str) -> Result<String, ConfigError> {
    let value = s.string(key);
    if value.is_empty() {
        return Err(s.invalid(key, "must not be empty"));
    }
    Ok(value)
}

fn mqtt_config(s: &Settings) -> Result<MqttConfig, ConfigError> {
    let embedded = s.boolean("mqtt.embedded")?;
    if !embedded {
        // NOTE: only the embedded broker exists so far; the broker interface in `broker` is
        // where a client of an external broker will plug in.
        return Err(s.invalid(
            "mqtt.embedded",
            "an external broker is not supported by this version; use true",
        ));
    }
    let ws_port = s.port("mqtt.ws.port")?;
    Ok(MqttConfig {
        embedded,
        port: s.port("mqtt.port")?,
        ws_port: (ws_port != 0).then_some(ws_port),
        max_connections: s.usize_at_least("mqtt.connections.max", 1)?,
        // rumqttd panics on segments under 1 KiB.
        log_segment_bytes: s.usize_at_least("mqtt.log.segment_bytes", 1024)?,
        log_segments: s.usize_at_least("mqtt.log.segments", 1)?,
        external_address: s.string("stream.mqtt.address"),
    })
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
        client_queue_events: s.usize_at_least("stream.client.queue_events", 1)?,
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
        assert_eq!(config.stream.cors_origins, CorsOrigins::Any);
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
