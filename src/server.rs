//! Server lifecycle: bind every listener, wire the parts together, run, and drain on shutdown.
//!
//! `start` returns only when every listener is bound and the ingest and hub subscriptions
//! are confirmed, so a caller (a test on port 0, or `main`) can use the addresses at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::embedded::EmbeddedBroker;
use crate::broker::external::{ExternalBroker, ExternalSettings};
use crate::broker::{Broker, BrokerError, Listener};
use crate::channels::ChannelOptions;
use crate::config::Config;
use crate::dump::{Clock, DumpError, DumpWriter, SystemClock};
use crate::http::{self, AppState};
use crate::hub::{Hub, HubOptions};
use crate::ingest;
use crate::message::Limits;
use crate::publisher::Publisher;
use crate::sse::StreamState;
use crate::stats::Stats;
use crate::tls;

/// How long start-up waits for the ingest subscription before going on without it; only an
/// external broker that is down takes that long.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Ingest deliveries queued ahead of the publisher; beyond that the broker buffers them.
const INGEST_QUEUE: usize = 1024;

/// Hub deliveries queued ahead of the dispatcher; beyond that the broker buffers them.
const HUB_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind the HTTP listener to {address}: {source}")]
    BindHttp {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("cannot open the dump directory: {0}")]
    Dump(#[from] DumpError),
    #[error("cannot set up HTTPS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A started server; drop it or call [`RunningServer::shutdown`] to stop it.
pub struct RunningServer {
    pub http_address: SocketAddr,
    pub listeners: Vec<Listener>,
    shutdown: CancellationToken,
    grace: Duration,
    http: JoinHandle<std::io::Result<()>>,
    ingest: JoinHandle<()>,
    /// The `import/` watcher; `None` when dump writing is disabled.
    import: Option<JoinHandle<()>>,
    dump: DumpWriter,
}

impl RunningServer {
    /// Returns the address of the embedded broker's MQTT listener.
    pub fn mqtt_address(&self) -> Option<SocketAddr> {
        self.listener("mqtt")
    }

    /// Returns the address of the MQTT over WebSocket listener, unless it is turned off.
    pub fn mqtt_ws_address(&self) -> Option<SocketAddr> {
        self.listener("mqtt_ws")
    }

    fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.address)
    }

    /// Returns a token that stops the server when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the shutdown token fires, then drains.
    pub async fn run_until_stopped(self) {
        self.shutdown.cancelled().await;
        self.shutdown().await;
    }

    /// Stops taking messages, ends SSE streams, and flushes and fsyncs the dump file,
    /// giving HTTP connections at most the grace period to finish.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shutdown.cancel();

        match tokio::time::timeout(self.grace, self.http).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::error!(%error, "HTTP server failed"),
            Ok(Err(error)) => tracing::error!(%error, "HTTP server task failed"),
            Err(_) => tracing::warn!(grace_secs = self.grace.as_secs(), "HTTP connections still open after the grace period; closing them"),
        }
        if let Err(error) = self.ingest.await {
            tracing::error!(%error, "ingest task failed");
        }
        if let Some(import) = self.import {
            if let Err(error) = import.await {
                tracing::error!(%error, "import task failed");
            }
        }
        self.dump.shutdown().await;
        tracing::info!("stopped");
    }
}

/// Starts the embedded broker, or a client of the external one.
async fn start_broker(config: &Config, stats: &Arc<Stats>) -> Result<Arc<dyn Broker>, ServerError> {
    if config.mqtt.embedded {
        return Ok(Arc::new(EmbeddedBroker::start_with_stats(config, stats.clone()).await?));
    }
    let settings = ExternalSettings {
        address: config.mqtt.external_address.clone(),
        username: config.mqtt.username.clone(),
        password: config.mqtt.password.clone(),
        share_group: config.mqtt.share_group.clone(),
        client_prefix: client_prefix(),
        max_packet_bytes: config.stream.batch_max_bytes,
    };
    tracing::info!(broker = %settings.address, client = settings.client_prefix, "using the external broker");
    Ok(Arc::new(ExternalBroker::start(settings)))
}

/// `lokstream-HOST-RANDOM`: readable in the broker's logs, and unique even for two
/// replicas on one host.
fn client_prefix() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "host".to_string());
    format!("lokstream-{host}-{:08x}", rand::random::<u32>())
}

/// Starts the server with the system clock.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// Starts the server; `clock` dates dump files.
pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<RunningServer, ServerError> {
    let config = Arc::new(config);
    let started = Instant::now();

    let requested = SocketAddr::new(config.bind_address, config.port_http);
    let http_listener = TcpListener::bind(requested)
        .await
        .map_err(|source| ServerError::BindHttp { address: requested, source })?;
    let http_address = http_listener.local_addr()?;

    let stats = Arc::new(Stats::default());
    let broker = start_broker(&config, &stats).await?;
    let dump = DumpWriter::open(&config.dump, clock)?;
    let publisher = Arc::new(
        Publisher::new(
        Limits {
            message_max_bytes: config.stream.message_max_bytes,
            batch_max_bytes: config.stream.batch_max_bytes,
        },
        ChannelOptions {
            text_words: config.stream.channels_text,
            max_per_message: config.stream.channels_max_per_message,
        },
        config.stream.dedupe_entries,
        dump.clone(),
        broker.clone(),
        stats.clone(),
    )
        .excluding_channels(&config.stream.ingest_topic),
    );
    let shutdown = CancellationToken::new();

    let (ingest_session, ingest_deliveries) = broker.open_session("ingest", INGEST_QUEUE).await?;
    let ingest_filter = broker.ingest_filter(&config.stream.ingest_topic);
    match tokio::time::timeout(SUBSCRIBE_WAIT, ingest::subscribe(&ingest_session, &ingest_filter)).await {
        Ok(result) => result?,
        // The subscription stays registered and is made when the broker comes.
        Err(_) => tracing::warn!(filter = ingest_filter, "the broker is not reachable yet; MQTT ingest starts once it is"),
    }
    let drain = ingest::Drain {
        broker: broker.clone(),
        filter: ingest_filter.clone(),
        timeout: Duration::from_secs(config.shutdown_grace_secs),
    };
    let ingest = tokio::spawn(ingest::run(ingest_deliveries, publisher.clone(), stats.clone(), shutdown.clone(), drain));
    let import = dump.start_import(publisher.clone(), shutdown.clone());

    let (hub_session, hub_deliveries) = broker.open_session("hub", HUB_QUEUE).await?;
    let hub_options = HubOptions {
        queue_events: config.stream.client_queue_events,
        history_bytes: config.stream.history_bytes,
        linger: Duration::from_secs(config.stream.history_linger_secs),
    };
    let hub = Hub::start(hub_session, hub_deliveries, hub_options, stats.clone());

    let listeners = broker.listeners();
    let metrics = crate::metrics::registry(
        stats.clone(),
        broker.clone(),
        hub.clone(),
        dump.clone(),
        config.dump.clone(),
    );
    let state = AppState {
        metrics: Arc::new(metrics),
        stream: StreamState::new(hub.clone(), Arc::new(config.stream.clone()), stats.clone(), shutdown.clone()),
        config: config.clone(),
        publisher,
        broker,
        hub,
        dump: dump.clone(),
        stats,
        started,
        http_address,
    };
    let app = http::router(state);
    let options = crate::serve::ServeOptions {
        tls: config.http_tls.as_ref().map(tls::acceptor).transpose()?,
        header_timeout: Duration::from_secs(config.http_header_timeout_secs),
    };
    let http = tokio::spawn(crate::serve::serve(http_listener, options, app, shutdown.clone()));

    // The broker's loopback listeners behind the MQTT front are no address for clients.
    for listener in listeners.iter().filter(|listener| !listener.name.ends_with("_internal")) {
        tracing::info!(listener = listener.name, address = %listener.address, "listening");
    }
    tracing::info!(http = %http_address, ingest = config.stream.ingest_topic, dump_dir = %config.dump.dir.display(), "lokstream started");

    Ok(RunningServer {
        http_address,
        listeners,
        shutdown,
        grace: Duration::from_secs(config.shutdown_grace_secs),
        http,
        ingest,
        import,
        dump,
    })
}
