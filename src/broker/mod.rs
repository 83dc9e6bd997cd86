//! The MQTT broker as the rest of the server sees it: publish in order, and open sessions
//! that carry many subscriptions over one broker connection.
//!
//! Every delivery names the subscription it belongs to, so one session can serve any number
//! of overlapping filters. The ingest loop, the publisher and the hub use only this module's
//! types; which broker sits behind them is decided once, in `server`.

pub mod embedded;
pub mod external;
pub mod front;
mod session;
mod websocket;

use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

pub use session::{Session, SessionCommand, SubscriptionId};

/// One message for one topic.
#[derive(Debug, Clone)]
pub struct Publication {
    pub topic: String,
    pub payload: Bytes,
}

/// What a session receives.
#[derive(Debug)]
pub enum Delivery {
    Message {
        subscription: SubscriptionId,
        topic: Bytes,
        payload: Bytes,
    },
    /// The broker dropped `count` messages of this subscription because the session fell
    /// too far behind.
    Lost {
        subscription: SubscriptionId,
        count: u64,
    },
}

/// A listening socket of the broker, for logs and `/api/status.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listener {
    pub name: &'static str,
    pub address: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot bind the {name} listener to {address}: {source}")]
    Bind {
        name: &'static str,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the broker stopped")]
    Stopped,
    #[error("broker link failed: {0}")]
    Link(String),
    #[error("the broker rejected the subscription to '{0}'")]
    SubscriptionRejected(String),
}

/// The broker behind the publisher, the ingest loop and the hub.
pub trait Broker: Send + Sync + 'static {
    /// Hands publications to the broker in order; waits while the broker is behind.
    fn publish(&self, batch: Vec<Publication>) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Opens a session named `name` (the MQTT client id), and returns its control handle and
    /// its deliveries, queued up to `queue` deep.
    fn open_session(
        &self,
        name: &str,
        queue: usize,
    ) -> BoxFuture<'_, Result<(Session, mpsc::Receiver<Delivery>), BrokerError>>;

    /// Returns the filter the ingest session subscribes to for the configured ingest
    /// filter; an external broker shares it among replicas.
    fn ingest_filter(&self, filter: &str) -> String {
        filter.to_string()
    }

    /// Sockets the broker listens on; empty for an external broker.
    fn listeners(&self) -> Vec<Listener>;

    /// Closes every MQTT client connection, waits until all are closed, and accepts no new
    /// one, so that no further PUBACK reaches a client. Returns a topic that `ingest_filter` matches, whose
    /// publish, made after this call, reaches the ingest session after every publish the
    /// broker acknowledged before. `None` when the broker cannot promise that, as an
    /// external broker shared by replicas cannot.
    fn close_clients(&self, _ingest_filter: &str) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }

    /// Channel publishes the broker could not take and that were dropped.
    fn publishes_dropped(&self) -> u64 {
        0
    }

    /// Reports whether the broker and every link to it are working.
    fn is_healthy(&self) -> bool;

    /// Reports whether the broker can still recover by itself; `false` means only a restart of the
    /// process helps, as after the embedded broker's router died. An external broker's
    /// outage is waited out, so it stays alive.
    fn is_alive(&self) -> bool {
        true
    }
}
