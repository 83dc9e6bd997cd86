//! The hub: one broker session shared by every SSE connection.
//!
//! It holds one broker subscription per distinct filter, however many connections asked for
//! it, and drops it once the last one left and the linger time passed. Each delivery gets an
//! id, becomes one SSE frame, is kept in the history and is queued to every connection of
//! its filter; a connection whose filters overlap takes each publish once. Joining and
//! dispatching take the same lock, so a connection that resumes gets each event exactly
//! once, from the history or from its queue. A connection whose bounded queue is full is
//! disconnected, never waited for, so one slow client cannot hold up the others.

mod history;

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
use history::History;

/// One event, formatted once and shared by every connection that receives it.
#[derive(Debug)]
pub struct Event {
    pub id: u64,
    /// The subscription that delivered it.
    pub subscription: SubscriptionId,
    /// The topic it was published to; `None` for a report of messages the broker dropped.
    pub topic: Option<Box<str>>,
    pub frame: Bytes,
}

/// The starting point of a connection, from the `Last-Event-ID` it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// No `Last-Event-ID`: live events only.
    Live,
    /// Events after this id.
    After(u64),
    /// A `Last-Event-ID` that is not one of this server's ids.
    Unknown,
}

/// Settings of the hub, from the `stream.*` keys.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub queue_events: usize,
    pub history_bytes: usize,
    pub linger: Duration,
}

pub struct Hub {
    session: Session,
    options: HubOptions,
    stats: Arc<Stats>,
    /// Serialises subscribe and unsubscribe so that the broker sees them in the order the
    /// registry changed.
    control: tokio::sync::Mutex<()>,
    registry: Mutex<Registry>,
    /// Cancelled when the broker session ended; no event will come after that.
    stopped: CancellationToken,
}

struct Registry {
    filters: HashMap<String, FilterEntry>,
    by_subscription: HashMap<SubscriptionId, String>,
    next_client: u64,
    ids: IdGenerator,
    /// The greatest id issued so far; a resume from a greater one comes from elsewhere.
    latest_id: u64,
    history: History,
}

struct FilterEntry {
    subscription: SubscriptionId,
    clients: Vec<Client>,
    /// Every event of this filter with a greater id is in the history: the filter has been
    /// subscribed since then and none of its later events was evicted.
    complete_after: u64,
    /// Counts the times the filter lost its last client; a linger timer started for an
    /// older count leaves the filter alone.
    idle_count: u64,
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

    /// Checks whether a live connection of this client would have received `event`.
    fn receives(&self, event: &Event) -> bool {
        let subscribed = self.filters.iter().any(|(_, id)| *id == event.subscription);
        subscribed
            && event
                .topic
                .as_deref()
                .is_none_or(|topic| self.takes(event.subscription, topic))
    }
}

/// A connection's membership in the hub; leaving happens when it is dropped.
pub struct Membership {
    /// Events from the history that the connection missed, oldest first; send them
    /// before anything from `events`.
    pub replay: Vec<Arc<Event>>,
    /// The history cannot prove that `replay` contains everything the connection missed.
    pub gap: bool,
    /// The greatest id issued when the connection joined: every later event of its filters
    /// reaches `events`, so a reconnect may resume from here even before any event came.
    pub position: u64,
    pub events: mpsc::Receiver<Arc<Event>>,
    pub evicted: CancellationToken,
    hub: Arc<Hub>,
    client: u64,
    filters: Arc<[(String, SubscriptionId)]>,
}

/// Counts for `/api/status.json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HubStatus {
    /// Subscribed filters, lingering ones included.
    pub filters: usize,
    /// Subscribed filters without a connection, waiting out the linger time.
    pub idle_filters: usize,
    pub subscribers: usize,
    pub history_events: usize,
    pub history_bytes: usize,
    pub running: bool,
}

impl Hub {
    /// Creates the hub and starts the task that dispatches the session's deliveries.
    pub fn start(
        session: Session,
        deliveries: mpsc::Receiver<Delivery>,
        options: HubOptions,
        stats: Arc<Stats>,
    ) -> Arc<Hub> {
        let registry = Registry {
            filters: HashMap::new(),
            by_subscription: HashMap::new(),
            next_client: 0,
            ids: IdGenerator::new(),
            latest_id: 0,
            history: History::new(options.history_bytes),
        };
        let hub = Arc::new(Hub {
            session,
            options,
            stats,
            control: tokio::sync::Mutex::new(()),
            registry: Mutex::new(registry),
            stopped: CancellationToken::new(),
        });
        tokio::spawn(dispatch(hub.clone(), deliveries));
        hub
    }

    /// Adds a connection for `filters` (valid and distinct) and returns once the broker
    /// confirmed every subscription, so nothing published afterwards is missed. With a
    /// `resume` point the membership carries the events missed since then. The hub cancels
    /// `evicted` when the connection falls behind.
    pub async fn join(self: &Arc<Self>, filters: Vec<String>, resume: Resume, evicted: CancellationToken) -> Result<Membership, BrokerError> {
        // A request dropped halfway through would leave later filters registered but never
        // subscribed, so the join runs to its end in a task of its own.
        let hub = self.clone();
        tokio::spawn(async move { hub.join_to_end(filters, resume, evicted).await })
            .await
            .map_err(|error| BrokerError::Link(format!("the hub join task failed: {error}")))?
    }

    async fn join_to_end(self: Arc<Self>, filters: Vec<String>, resume: Resume, evicted: CancellationToken) -> Result<Membership, BrokerError> {
        let (queue, events) = mpsc::channel(self.options.queue_events);
        let _control = self.control.lock().await;

        let (client, new_filters, replay, gap, position) = {
            let mut registry = self.lock();
            let (subscribed, new_filters) = registry.add_filters(&filters, &self.session);
            let client = registry.add_client(subscribed, queue, evicted.clone());
            let (replay, gap) = registry.replay(&client, resume);
            (client, new_filters, replay, gap, registry.latest_id)
        };
        let membership = Membership {
            replay,
            gap,
            position,
            events,
            evicted,
            hub: self.clone(),
            client: client.id,
            filters: client.filters,
        };

        for (index, (filter, subscription)) in new_filters.iter().enumerate() {
            if let Err(error) = self.session.subscribe_with_id(filter, *subscription).await {
                self.forget_filters(&new_filters[index..]);
                return Err(error);
            }
            tracing::debug!(filter, subscription, "hub subscribed");
        }
        Ok(membership)
    }

    /// Removes filters the broker did not subscribe, so that no later connection joins one
    /// and waits for events that never come. The caller holds the control lock.
    fn forget_filters(&self, filters: &[(String, SubscriptionId)]) {
        let mut registry = self.lock();
        for (filter, subscription) in filters {
            registry.filters.remove(filter);
            registry.by_subscription.remove(subscription);
        }
    }

    /// Removes a client; a filter left without clients is unsubscribed after the linger
    /// time unless a client joined it meanwhile.
    async fn leave(self: Arc<Self>, client: u64, filters: Arc<[(String, SubscriptionId)]>) {
        let control = self.control.lock().await;
        let mut emptied = Vec::new();
        {
            let mut registry = self.lock();
            for (filter, _) in filters.iter() {
                let Some(entry) = registry.filters.get_mut(filter) else {
                    continue;
                };
                entry.clients.retain(|c| c.id != client);
                if entry.clients.is_empty() {
                    entry.idle_count += 1;
                    emptied.push((filter.clone(), entry.idle_count));
                }
            }
        }
        if emptied.is_empty() {
            return;
        }

        if self.options.linger.is_zero() {
            self.drop_idle_filters(&control, emptied);
            return;
        }
        drop(control);
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(hub.options.linger).await;
            let control = hub.control.lock().await;
            hub.drop_idle_filters(&control, emptied);
        });
    }

    /// Unsubscribes each filter that still has no client since it became idle; the caller
    /// holds the control lock.
    fn drop_idle_filters(&self, _control: &tokio::sync::MutexGuard<'_, ()>, idle: Vec<(String, u64)>) {
        let mut dropped = Vec::new();
        {
            let mut registry = self.lock();
            for (filter, idle_count) in idle {
                let still_idle = registry
                    .filters
                    .get(&filter)
                    .is_some_and(|entry| entry.clients.is_empty() && entry.idle_count == idle_count);
                if !still_idle {
                    continue;
                }
                if let Some(entry) = registry.filters.remove(&filter) {
                    registry.by_subscription.remove(&entry.subscription);
                    dropped.push(filter);
                }
            }
        }
        for filter in dropped {
            if let Err(error) = self.session.unsubscribe(&filter) {
                tracing::warn!(filter, %error, "hub could not unsubscribe");
            }
            tracing::debug!(filter, "hub unsubscribed");
        }
    }

    pub fn status(&self) -> HubStatus {
        let registry = self.lock();
        let idle_filters = registry.filters.values().filter(|entry| entry.clients.is_empty()).count();
        HubStatus {
            filters: registry.filters.len(),
            idle_filters,
            subscribers: registry.filters.values().map(|entry| entry.clients.len()).sum(),
            history_events: registry.history.len(),
            history_bytes: registry.history.bytes(),
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

    /// Queues one delivery to every client of its filter and keeps it in the history. A
    /// `topic` of `None` (a loss report) goes to all of them. Returns how many clients
    /// were evicted.
    fn deliver(&self, subscription: SubscriptionId, topic: Option<Box<str>>, frame: impl FnOnce(u64) -> Bytes) -> usize {
        let mut guard = self.lock();
        let registry = &mut *guard;
        let Some(entry) = registry
            .by_subscription
            .get(&subscription)
            .and_then(|filter| registry.filters.get(filter))
        else {
            return 0;
        };

        let id = registry.ids.next_id();
        registry.latest_id = id;
        let event = Arc::new(Event {
            id,
            subscription,
            frame: frame(id),
            topic,
        });
        let mut evicted = 0;
        for client in &entry.clients {
            if let Some(topic) = event.topic.as_deref() {
                if !client.takes(subscription, topic) {
                    continue;
                }
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

        let (filters, by_subscription) = (&mut registry.filters, &registry.by_subscription);
        registry.history.push(event, |old| {
            let entry = by_subscription.get(&old.subscription).and_then(|filter| filters.get_mut(filter));
            if let Some(entry) = entry {
                entry.complete_after = entry.complete_after.max(old.id);
            }
        });
        evicted
    }
}

impl Registry {
    /// Looks up or creates the entry of each filter; returns every filter with its
    /// subscription id, and the new ones, which the caller must subscribe.
    fn add_filters(&mut self, filters: &[String], session: &Session) -> (Vec<(String, SubscriptionId)>, Vec<(String, SubscriptionId)>) {
        let mut subscribed = Vec::with_capacity(filters.len());
        let mut new_filters = Vec::new();
        for filter in filters {
            let subscription = match self.filters.get(filter) {
                Some(entry) => entry.subscription,
                None => {
                    let subscription = session.allocate_id();
                    // No event of the new subscription can have an id below this one.
                    let complete_after = self.ids.next_id();
                    self.latest_id = complete_after;
                    let entry = FilterEntry {
                        subscription,
                        clients: Vec::new(),
                        complete_after,
                        idle_count: 0,
                    };
                    self.filters.insert(filter.clone(), entry);
                    self.by_subscription.insert(subscription, filter.clone());
                    new_filters.push((filter.clone(), subscription));
                    subscription
                }
            };
            subscribed.push((filter.clone(), subscription));
        }
        (subscribed, new_filters)
    }

    fn add_client(&mut self, filters: Vec<(String, SubscriptionId)>, queue: mpsc::Sender<Arc<Event>>, evicted: CancellationToken) -> Client {
        self.next_client += 1;
        let client = Client {
            id: self.next_client,
            queue,
            evicted,
            filters: filters.into(),
        };
        for (filter, _) in client.filters.iter() {
            if let Some(entry) = self.filters.get_mut(filter) {
                entry.clients.push(client.clone());
            }
        }
        client
    }

    /// Collects the events `client` missed since `resume`. The flag is set when some may
    /// be missing, because the history does not reach back that far for one of its filters.
    fn replay(&self, client: &Client, resume: Resume) -> (Vec<Arc<Event>>, bool) {
        let after = match resume {
            Resume::Live => return (Vec::new(), false),
            Resume::Unknown => return (Vec::new(), true),
            Resume::After(after) => after,
        };
        let complete = after <= self.latest_id
            && client.filters.iter().all(|(filter, _)| {
                self.filters
                    .get(filter)
                    .is_some_and(|entry| entry.complete_after <= after)
            });
        let events = self
            .history
            .after(after)
            .filter(|event| client.receives(event))
            .cloned()
            .collect();
        (events, !complete)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let hub = self.hub.clone();
        let client = self.client;
        let filters = self.filters.clone();
        // Leaving needs the async control lock; the runtime is gone only at process exit.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(hub.leave(client, filters));
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
                let topic = String::from_utf8_lossy(&topic).into();
                hub.deliver(subscription, Some(topic), |id| sse::message_frame(id, &payload))
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
