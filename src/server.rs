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
    dump: DumpWriter,
}

impl RunningServer {
    /// The address of the MQTT listener of the embedded broker.
    pub fn mqtt_address(&self) -> Option<SocketAddr> {
        self.listener("mqtt")
    }

    /// The address of the MQTT over WebSocket listener, unless it is turned off.
    pub fn mqtt_ws_address(&self) -> Option<SocketAddr> {
        self.listener("mqtt_ws")
    }

    fn listener(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|l| l.name == name).map(|l| l.address)
    }

    /// A token that stops the server when cancelled.
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
        self.dump.shutdown().await;
        tracing::info!("stopped");
    }
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

    let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::start(&config).await?);
    let dump = DumpWriter::open(&config.dump, clock)?;
    let stats = Arc::new(Stats::default());
    let publisher = Arc::new(Publisher::new(
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
    ));
    let shutdown = CancellationToken::new();

    let (ingest_session, ingest_deliveries) = broker.open_session("lokstream-ingest", INGEST_QUEUE).await?;
    ingest::subscribe(&ingest_session, &config.stream.ingest_topic).await?;
    let ingest = tokio::spawn(ingest::run(ingest_deliveries, publisher.clone(), stats.clone(), shutdown.clone()));

    let (hub_session, hub_deliveries) = broker.open_session("lokstream-hub", HUB_QUEUE).await?;
    let hub_options = HubOptions {
        queue_events: config.stream.client_queue_events,
        history_bytes: config.stream.history_bytes,
        linger: Duration::from_secs(config.stream.history_linger_secs),
    };
    let hub = Hub::start(hub_session, hub_deliveries, hub_options, stats.clone());

    let listeners = broker.listeners();
    let state = AppState {
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
    let stop = shutdown.clone();
    let http = match &config.http_tls {
        Some(tls_config) => tokio::spawn(tls::serve(http_listener, tls::acceptor(tls_config)?, app, stop)),
        // `into_make_service` clones the router per connection; serving the router itself
        // rebuilds its route table for each connection, about 6 KB per open stream.
        None => tokio::spawn(async move {
            axum::serve(http_listener, app.into_make_service())
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }),
    };

    for listener in &listeners {
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
        dump,
    })
}
