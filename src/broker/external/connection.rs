//! Parts shared by every connection to the external broker: options, health, backoff and
//! outage logging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions};
use rumqttc::Transport;
use tokio_util::sync::CancellationToken;

use super::ExternalSettings;

/// Reconnection delays double from the first to the last.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Keep-alive of every connection; the broker drops a silent client after 1.5 times this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Whether a connection is up; read by `/readyz`.
#[derive(Debug, Default)]
pub(super) struct Health {
    connected: AtomicBool,
}

impl Health {
    pub(super) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }
}

/// MQTT 5 options for the connection `role` of this replica.
pub(super) fn options(settings: &ExternalSettings, role: &str) -> MqttOptions {
    let client_id = format!("{}-{role}", settings.client_prefix);
    let mut options = MqttOptions::new(client_id, settings.address.host.clone(), settings.address.port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_clean_start(true);
    options.set_max_packet_size(Some(u32::try_from(settings.max_packet_bytes).unwrap_or(u32::MAX)));
    if let (Some(username), Some(password)) = (&settings.username, &settings.password) {
        options.set_credentials(username.clone(), password.clone());
    }
    if settings.address.tls {
        options.set_transport(Transport::tls_with_default_config());
    }
    options
}

/// Tracks one connection's state across polls: backoff, health and outage logs.
pub(super) struct Link {
    role: String,
    address: String,
    health: Arc<Health>,
    retry: Duration,
    down_since: Option<Instant>,
}

impl Link {
    pub(super) fn new(settings: &ExternalSettings, role: &str) -> Self {
        Link {
            role: role.to_string(),
            address: settings.address.to_string(),
            health: Arc::new(Health::default()),
            retry: FIRST_RETRY,
            // Counted as down from the start, so the first connection is logged too.
            down_since: Some(Instant::now()),
        }
    }

    pub(super) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Records a CONNACK; a session reports itself healthy only once its subscriptions
    /// are restored, through [`Health::set`].
    pub(super) fn connected(&mut self) {
        self.retry = FIRST_RETRY;
        if let Some(since) = self.down_since.take() {
            tracing::info!(role = self.role, broker = self.address, down_ms = since.elapsed().as_millis() as u64, "connected to the external broker");
        }
    }

    /// Records a failed poll and returns how long to wait before the next attempt.
    pub(super) fn failed(&mut self, error: &ConnectionError) -> Duration {
        self.health.set(false);
        if self.down_since.is_none() {
            self.down_since = Some(Instant::now());
            tracing::error!(role = self.role, broker = self.address, %error, "lost the external broker; reconnecting");
        } else {
            tracing::debug!(role = self.role, broker = self.address, %error, "reconnect failed");
        }
        let wait = self.retry;
        self.retry = (self.retry * 2).min(LAST_RETRY);
        wait
    }
}

/// Starts the connection that publishes channels; it needs no events besides CONNACK.
pub(super) fn spawn_publisher(
    settings: &ExternalSettings,
    queue: usize,
    stop: CancellationToken,
) -> (AsyncClient, Arc<Health>) {
    let (client, eventloop) = AsyncClient::new(options(settings, "publisher"), queue);
    let link = Link::new(settings, "publisher");
    let health = link.health();
    tokio::spawn(drive_publisher(eventloop, link, stop));
    (client, health)
}

async fn drive_publisher(mut eventloop: EventLoop, mut link: Link, stop: CancellationToken) {
    loop {
        let polled = tokio::select! {
            _ = stop.cancelled() => return,
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                link.connected();
                link.health().set(true);
            }
            Ok(_) => {}
            Err(error) => {
                let wait = link.failed(&error);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
