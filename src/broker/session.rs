//! The control side of a broker session: subscribe and unsubscribe by filter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::BrokerError;

/// Identifies one subscription within a session; never 0 (MQTT 5 forbids it) and never
/// reused, so a late delivery of a dropped subscription cannot be mistaken for a new one.
pub type SubscriptionId = usize;

/// A request to the task or thread that owns the broker connection.
#[derive(Debug)]
pub enum SessionCommand {
    Subscribe {
        filter: String,
        id: SubscriptionId,
        /// Completed when the broker acknowledged the subscription.
        done: oneshot::Sender<Result<(), BrokerError>>,
    },
    Unsubscribe {
        filter: String,
    },
}

/// Cheap to clone; every clone controls the same session.
#[derive(Debug, Clone)]
pub struct Session {
    commands: flume::Sender<SessionCommand>,
    next_id: Arc<AtomicUsize>,
}

impl Session {
    pub fn new(commands: flume::Sender<SessionCommand>) -> Self {
        Session {
            commands,
            next_id: Arc::new(AtomicUsize::new(1)),
        }
    }

    /// Reserves the id of a future subscription, so a caller can be ready for deliveries
    /// before it subscribes.
    pub fn allocate_id(&self) -> SubscriptionId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes to `filter` and returns once the broker acknowledged it, so that every
    /// message published after this returns is delivered.
    pub async fn subscribe(&self, filter: &str) -> Result<SubscriptionId, BrokerError> {
        let id = self.allocate_id();
        self.subscribe_with_id(filter, id).await?;
        Ok(id)
    }

    /// Subscribes to `filter` under an id from [`Session::allocate_id`].
    pub async fn subscribe_with_id(&self, filter: &str, id: SubscriptionId) -> Result<(), BrokerError> {
        let (done, acknowledged) = oneshot::channel();
        let command = SessionCommand::Subscribe {
            filter: filter.to_string(),
            id,
            done,
        };
        self.commands
            .send_async(command)
            .await
            .map_err(|_| BrokerError::Stopped)?;
        acknowledged.await.map_err(|_| BrokerError::Stopped)?
    }

    /// Drops the subscription to `filter`; deliveries still in flight may follow.
    pub fn unsubscribe(&self, filter: &str) -> Result<(), BrokerError> {
        self.commands
            .send(SessionCommand::Unsubscribe {
                filter: filter.to_string(),
            })
            .map_err(|_| BrokerError::Stopped)
    }
}
