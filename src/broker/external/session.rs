//! A session on the external broker: one MQTT 5 connection carrying many subscriptions,
//! each tagged with its subscription identifier and restored after every reconnect.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Publish, SubAck, SubscribeProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Incoming};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{self, Health, Link};
use super::ExternalSettings;
use crate::broker::{BrokerError, Delivery, Session, SessionCommand, SubscriptionId};
use crate::topic;

/// Starts the session's connection; subscriptions made before it connects are sent once
/// it does.
pub(super) fn spawn(
    settings: &ExternalSettings,
    name: &str,
    request_queue: usize,
    delivery_queue: usize,
    stop: CancellationToken,
) -> (Session, mpsc::Receiver<Delivery>, Arc<Health>) {
    let (client, eventloop) = AsyncClient::new(connection::options(settings, name), request_queue);
    let link = Link::new(settings, name);
    let health = link.health();
    let (commands, command_queue) = flume::unbounded();
    let (deliveries, receiver) = mpsc::channel(delivery_queue);

    let task = SessionTask {
        client,
        health: health.clone(),
        link,
        deliveries,
        filters: BTreeMap::new(),
        waiting: HashMap::new(),
        sent: VecDeque::new(),
        by_pkid: HashMap::new(),
        connected: false,
        restoring: 0,
    };
    tokio::spawn(task.run(eventloop, command_queue, stop));
    (Session::new(commands), receiver, health)
}

struct SessionTask {
    client: AsyncClient,
    link: Link,
    health: Arc<Health>,
    deliveries: mpsc::Sender<Delivery>,
    /// Active subscriptions, restored on every reconnect.
    filters: BTreeMap<SubscriptionId, String>,
    /// Callers waiting for the broker to acknowledge a subscription.
    waiting: HashMap<SubscriptionId, oneshot::Sender<Result<(), BrokerError>>>,
    /// SUBSCRIBE requests handed to rumqttc and not yet written, in order; rumqttc reports
    /// each one's packet id when it writes it.
    sent: VecDeque<SubscriptionId>,
    by_pkid: HashMap<u16, SubscriptionId>,
    connected: bool,
    /// Subscriptions sent after the last CONNACK and not yet acknowledged; the session is
    /// healthy only when none are left, since until then messages can pass it by.
    restoring: usize,
}

impl SessionTask {
    /// Runs until `stop` fires or no one reads the deliveries. A session whose every
    /// handle was dropped keeps its subscriptions, as the ingest session does.
    async fn run(
        mut self,
        mut eventloop: EventLoop,
        commands: flume::Receiver<SessionCommand>,
        stop: CancellationToken,
    ) {
        let mut commands = Some(commands);
        let mut retry_at: Option<Instant> = None;
        loop {
            if let Some(at) = retry_at {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    command = next_command(&mut commands) => self.handle_command(command),
                    _ = tokio::time::sleep_until(at) => retry_at = None,
                }
                continue;
            }

            tokio::select! {
                _ = stop.cancelled() => {
                    // Best effort: the process is stopping and the broker drops the session anyway.
                    let _ = self.client.try_disconnect();
                    return;
                }
                command = next_command(&mut commands) => self.handle_command(command),
                polled = eventloop.poll() => match self.handle_poll(polled).await {
                    Ok(()) => {}
                    Err(Stop::Retry(wait)) => retry_at = Some(Instant::now() + wait),
                    Err(Stop::Closed) => return,
                },
            }
        }
    }

    fn handle_command(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Subscribe { filter, id, done } => {
                self.filters.insert(id, filter);
                self.waiting.insert(id, done);
                if self.connected {
                    self.request_subscribe(id);
                }
            }
            SessionCommand::Unsubscribe { filter } => {
                self.filters.retain(|_, f| *f != filter);
                if self.connected {
                    if let Err(error) = self.client.try_unsubscribe(filter.clone()) {
                        tracing::warn!(filter, %error, "cannot unsubscribe on the external broker");
                    }
                }
            }
        }
    }

    fn request_subscribe(&mut self, id: SubscriptionId) {
        let Some(filter) = self.filters.get(&id) else {
            return;
        };
        let properties = SubscribeProperties {
            id: Some(id),
            user_properties: Vec::new(),
        };
        match self
            .client
            .try_subscribe_with_properties(filter.clone(), QoS::AtLeastOnce, properties)
        {
            Ok(()) => self.sent.push_back(id),
            Err(error) => {
                tracing::error!(filter, %error, "cannot subscribe on the external broker");
                if let Some(done) = self.waiting.remove(&id) {
                    let _ = done.send(Err(BrokerError::Link(error.to_string())));
                }
            }
        }
    }

    async fn handle_poll(&mut self, polled: Result<Event, ConnectionError>) -> Result<(), Stop> {
        let event = match polled {
            Ok(event) => event,
            Err(error) => {
                self.connected = false;
                self.restoring = 0;
                return Err(Stop::Retry(self.link.failed(&error)));
            }
        };

        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                self.link.connected();
                self.connected = true;
                self.sent.clear();
                self.by_pkid.clear();
                let ids: Vec<SubscriptionId> = self.filters.keys().copied().collect();
                for id in ids {
                    self.request_subscribe(id);
                }
                self.restoring = self.sent.len();
                self.health.set(self.restoring == 0);
            }
            Event::Outgoing(Outgoing::Subscribe(pkid)) => {
                if let Some(id) = self.sent.pop_front() {
                    self.by_pkid.insert(pkid, id);
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => self.complete(ack),
            Event::Incoming(Incoming::Publish(publish)) => {
                if let Some(delivery) = self.delivery(publish) {
                    if self.deliveries.send(delivery).await.is_err() {
                        return Err(Stop::Closed);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn complete(&mut self, ack: SubAck) {
        let Some(id) = self.by_pkid.remove(&ack.pkid) else {
            return;
        };
        if self.restoring > 0 {
            self.restoring -= 1;
            self.health.set(self.restoring == 0);
        }
        let accepted = ack
            .return_codes
            .iter()
            .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
        let filter = self.filters.get(&id).cloned().unwrap_or_default();
        if !accepted {
            tracing::error!(filter, codes = ?ack.return_codes, "the external broker rejected a subscription");
        }
        if let Some(done) = self.waiting.remove(&id) {
            let result = if accepted {
                Ok(())
            } else {
                Err(BrokerError::SubscriptionRejected(filter))
            };
            // The caller may have stopped waiting, and then no one needs the result.
            let _ = done.send(result);
        }
    }

    /// Names the subscription a publish belongs to: by its identifier, or, from a broker
    /// that sends none, by the lowest-numbered filter matching the topic.
    fn delivery(&self, publish: Publish) -> Option<Delivery> {
        let tagged = publish
            .properties
            .as_ref()
            .and_then(|properties| properties.subscription_identifiers.first().copied())
            .filter(|id| self.filters.contains_key(id));
        let subscription = tagged.or_else(|| {
            let topic = String::from_utf8_lossy(&publish.topic);
            self.filters
                .iter()
                .find(|(_, filter)| topic::matches(&topic, unshared(filter)))
                .map(|(id, _)| *id)
        })?;
        Some(Delivery::Message {
            subscription,
            topic: publish.topic,
            payload: publish.payload,
        })
    }
}

/// Returns the next command; pends forever once every handle is gone.
async fn next_command(commands: &mut Option<flume::Receiver<SessionCommand>>) -> SessionCommand {
    if let Some(receiver) = commands {
        if let Ok(command) = receiver.recv_async().await {
            return command;
        }
        *commands = None;
    }
    std::future::pending().await
}

/// The reason the session loop pauses or ends.
enum Stop {
    Retry(Duration),
    Closed,
}

/// Returns the filter inside a shared subscription `$share/GROUP/FILTER`.
fn unshared(filter: &str) -> &str {
    filter
        .strip_prefix("$share/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(filter, |(_, inner)| inner)
}

#[cfg(test)]
mod tests {
    use super::unshared;

    #[test]
    fn shared_subscription_prefix_is_removed() {
        assert_eq!(unshared("$share/lokstream/ingest/#"), "ingest/#");
        assert_eq!(unshared("ingest/#"), "ingest/#");
    }
}
