//! The hub: one broker session shared by every SSE connection.
//!
//! It holds one broker subscription per distinct filter, however many connections asked for
//! it, and drops it when the last one leaves. Each delivery becomes one SSE frame, formatted
//! once and queued to every connection of that filter, and a connection whose filters
//! overlap takes each publish once. A connection whose bounded queue is full is
//! disconnected, never waited for, so one slow client cannot hold up the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{BrokerError, Delivery, Session, SubscriptionId};
use crate::ids::IdGenerator;
use crate::sse;
use crate::stats::{LogLimiter, Stats};
use crate::topic;

/// One event, formatted once and shared by every connection that receives it.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    pub frame: Bytes,
}

pub struct Hub {
    session: Session,
    queue_events: usize,
    ids: IdGenerator,
    stats: Arc<Stats>,
    /// Serialises subscribe and unsubscribe so that the broker sees them in the order the
    /// registry changed.
    control: tokio::sync::Mutex<()>,
    registry: Mutex<Registry>,
    /// Cancelled when the broker session ended; no event will come after that.
    stopped: CancellationToken,
}

#[derive(Default)]
struct Registry {
    filters: HashMap<String, FilterEntry>,
    by_subscription: HashMap<SubscriptionId, String>,
    next_client: u64,
}

struct FilterEntry {
    subscription: SubscriptionId,
    clients: Vec<Client>,
}

#[derive(Clone)]
struct Client {
    id: u64,
    queue: mpsc::Sender<Arc<Event>>,
    /// Cancelled when the client fell behind; its stream then ends.
    evicted: CancellationToken,
    /// Every filter of the client with its subscription id, to send a publish that matches
    /// several of them only once.
    filters: Arc<[(String, SubscriptionId)]>,
}

impl Client {
    /// The broker delivers a publish once for each subscription it matches, so a client
    /// takes it only through the lowest-numbered of its filters that match the topic.
    fn takes(&self, subscription: SubscriptionId, topic: &str) -> bool {
        if self.filters.len() < 2 {
            return true;
        }
        !self
            .filters
            .iter()
            .any(|(filter, other)| *other < subscription && topic::matches(topic, filter))
    }
}

/// A connection's membership in the hub; leaving happens when it is dropped.
pub struct Membership {
    pub events: mpsc::Receiver<Arc<Event>>,
    pub evicted: CancellationToken,
    hub: Arc<Hub>,
    client: u64,
    filters: Vec<String>,
}

/// Counts for `/api/status.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStatus {
    pub filters: usize,
    pub subscribers: usize,
    pub running: bool,
}

impl Hub {
    /// Creates the hub and starts the task that dispatches the session's deliveries.
    pub fn start(
        session: Session,
        deliveries: mpsc::Receiver<Delivery>,
        queue_events: usize,
        stats: Arc<Stats>,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            session,
            queue_events,
            ids: IdGenerator::new(),
            stats,
            control: tokio::sync::Mutex::new(()),
            registry: Mutex::new(Registry::default()),
            stopped: CancellationToken::new(),
        });
        tokio::spawn(dispatch(hub.clone(), deliveries));
        hub
    }

    /// Adds a connection for `filters` (valid and distinct) and returns once the broker
    /// confirmed every subscription, so nothing published afterwards is missed.
    pub async fn join(self: &Arc<Self>, filters: Vec<String>) -> Result<Membership, BrokerError> {
        let (queue, events) = mpsc::channel(self.queue_events);
        let evicted = CancellationToken::new();
        let _control = self.control.lock().await;

        let mut new_filters = Vec::new();
        let client = {
            let mut registry = self.lock();
            let mut subscribed = Vec::with_capacity(filters.len());
            for filter in &filters {
                let subscription = match registry.filters.get(filter) {
                    Some(entry) => entry.subscription,
                    None => {
                        let subscription = self.session.allocate_id();
                        let entry = FilterEntry {
                            subscription,
                            clients: Vec::new(),
                        };
                        registry.filters.insert(filter.clone(), entry);
                        registry.by_subscription.insert(subscription, filter.clone());
                        new_filters.push((filter.clone(), subscription));
                        subscription
                    }
                };
                subscribed.push((filter.clone(), subscription));
            }

            registry.next_client += 1;
            let client = Client {
                id: registry.next_client,
                queue,
                evicted: evicted.clone(),
                filters: subscribed.into(),
            };
            for filter in &filters {
                if let Some(entry) = registry.filters.get_mut(filter) {
                    entry.clients.push(client.clone());
                }
            }
            client.id
        };
        let membership = Membership {
            events,
            evicted,
            hub: self.clone(),
            client,
            filters,
        };

        for (filter, subscription) in new_filters {
            self.session.subscribe_with_id(&filter, subscription).await?;
            tracing::debug!(filter, subscription, "hub subscribed");
        }
        Ok(membership)
    }

    /// Removes a client; filters left without clients are unsubscribed.
    async fn leave(&self, client: u64, filters: Vec<String>) {
        let _control = self.control.lock().await;
        let mut emptied = Vec::new();
        {
            let mut registry = self.lock();
            for filter in filters {
                let Some(entry) = registry.filters.get_mut(&filter) else {
                    continue;
                };
                entry.clients.retain(|c| c.id != client);
                if entry.clients.is_empty() {
                    let subscription = entry.subscription;
                    registry.filters.remove(&filter);
                    registry.by_subscription.remove(&subscription);
                    emptied.push(filter);
                }
            }
        }
        for filter in emptied {
            if let Err(error) = self.session.unsubscribe(&filter) {
                tracing::warn!(filter, %error, "hub could not unsubscribe");
            }
            tracing::debug!(filter, "hub unsubscribed");
        }
    }

    pub fn status(&self) -> HubStatus {
        let registry = self.lock();
        HubStatus {
            filters: registry.filters.len(),
            subscribers: registry.filters.values().map(|entry| entry.clients.len()).sum(),
            running: !self.stopped.is_cancelled(),
        }
    }

    pub fn is_running(&self) -> bool {
        !self.stopped.is_cancelled()
    }

    /// Resolves when the hub stopped delivering events.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one delivery to every client of its filter; a `topic` of `None` (a loss
    /// report) goes to all of them.
    fn deliver(&self, subscription: SubscriptionId, topic: Option<&str>, frame: impl FnOnce(u64) -> Bytes) -> usize {
        let registry = self.lock();
        let Some(entry) = registry
            .by_subscription
            .get(&subscription)
            .and_then(|filter| registry.filters.get(filter))
        else {
            return 0;
        };

        let id = self.ids.next_id();
        let event = Arc::new(Event { id, frame: frame(id) });
        let mut evicted = 0;
        for client in &entry.clients {
            if topic.is_some_and(|topic| !client.takes(subscription, topic)) {
                continue;
            }
            match client.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !client.evicted.is_cancelled() {
                        client.evicted.cancel();
                        evicted += 1;
                    }
                }
                // The connection is closing; `leave` will remove it.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        evicted
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let hub = self.hub.clone();
        let client = self.client;
        let filters = std::mem::take(&mut self.filters);
        // Leaving needs the async control lock; the runtime is gone only at process exit.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { hub.leave(client, filters).await });
        }
    }
}

/// Turns deliveries into events until the session ends.
async fn dispatch(hub: Arc<Hub>, mut deliveries: mpsc::Receiver<Delivery>) {
    let slow_log = LogLimiter::new(Duration::from_secs(1));
    let lost_log = LogLimiter::new(Duration::from_secs(1));

    while let Some(delivery) = deliveries.recv().await {
        let evicted = match delivery {
            Delivery::Message {
                subscription,
                topic,
                payload,
            } => {
                let topic = String::from_utf8_lossy(&topic);
                hub.deliver(subscription, Some(&topic), |id| sse::message_frame(id, &payload))
            }
            Delivery::Lost { subscription, count } => {
                Stats::add(&hub.stats.broker_messages_lost, count);
                if let Some(suppressed) = lost_log.check() {
                    tracing::error!(lost = count, subscription, suppressed, "hub fell behind and the broker dropped messages");
                }
                hub.deliver(subscription, None, |id| sse::gap_frame(id, count))
            }
        };
        if evicted > 0 {
            Stats::add(&hub.stats.sse_slow_disconnects, evicted as u64);
            if let Some(suppressed) = slow_log.check() {
                tracing::info!(evicted, suppressed, "slow SSE clients disconnected");
            }
        }
    }
    tracing::error!("hub session ended; SSE streams get no more events");
    hub.stopped.cancel();
}
