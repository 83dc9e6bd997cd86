//! `/metrics`: the server's counters in the Prometheus text format.
//!
//! The values live where they are counted (`Stats`, the hub, the broker, the dump writer);
//! a collector reads them at scrape time, so nothing is counted twice.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::broker::Broker;
use crate::dump::{self, DumpConfig, DumpWriter};
use crate::hub::Hub;
use crate::stats::{RejectReason, Stats};

/// Builds the registry `/metrics` encodes on each scrape.
pub fn registry(
    stats: Arc<Stats>,
    broker: Arc<dyn Broker>,
    hub: Arc<Hub>,
    dump: DumpWriter,
    dump_config: DumpConfig,
) -> Registry {
    let mut registry = Registry::with_prefix("lokstream");
    registry.register_collector(Box::new(ServerCollector {
        stats,
        broker,
        hub,
        dump,
        dump_config,
    }));
    registry
}

/// Encodes the registry as Prometheus text.
pub fn encode(registry: &Registry) -> Result<String, fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

struct ServerCollector {
    stats: Arc<Stats>,
    broker: Arc<dyn Broker>,
    hub: Arc<Hub>,
    dump: DumpWriter,
    dump_config: DumpConfig,
}

impl fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCollector")
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let stats = &self.stats;
        let counters: [(&str, &str, u64); 8] = [
            ("messages_accepted", "Messages accepted and published.", Stats::get(&stats.messages_accepted)),
            ("messages_duplicate", "Messages dropped as duplicates of a recent (source_type, id_str).", Stats::get(&stats.messages_duplicate)),
            ("channel_publishes", "Channel copies handed to the broker.", Stats::get(&stats.channel_publishes)),
            ("channels_dropped", "Channels not published because a message had too many.", Stats::get(&stats.channels_dropped)),
            ("broker_messages_lost", "Messages the broker dropped because a session fell behind.", Stats::get(&stats.broker_messages_lost)),
            ("broker_publishes_dropped", "Channel publishes dropped while the broker was unavailable.", self.broker.publishes_dropped()),
            ("sse_events_sent", "Events written to SSE connections.", Stats::get(&stats.sse_events_sent)),
            ("sse_slow_disconnects", "SSE connections closed because their queue was full.", Stats::get(&stats.sse_slow_disconnects)),
        ];
        for (name, help, value) in counters {
            counter(&mut encoder, name, help, value)?;
        }
        counter(&mut encoder, "sse_connections", "SSE connections opened.", Stats::get(&stats.sse_connections_total))?;

        let rejected = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "messages_rejected",
            "Payloads, messages and requests rejected, by reason.",
            None,
            rejected.metric_type(),
        )?;
        for reason in RejectReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(stats.rejected(reason)).encode(family.encode_family(&labels)?)?;
        }

        counter(&mut encoder, "mqtt_connections_v311", "MQTT 3.1.1 connections the front handed to the broker.", Stats::get(&stats.mqtt_connections_v311))?;
        counter(&mut encoder, "mqtt_connections_v5", "MQTT 5 connections the front handed to the broker.", Stats::get(&stats.mqtt_connections_v5))?;
        counter(&mut encoder, "mqtt_unauthorized_publishes", "Clients without the publisher login disconnected for publishing.", Stats::get(&stats.mqtt_unauthorized_publishes))?;
        let refused = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "mqtt_connects_rejected",
            "MQTT CONNECTs the front rejected, by reason.",
            None,
            refused.metric_type(),
        )?;
        for reason in crate::stats::ConnectRejectReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(stats.connects_rejected(reason)).encode(family.encode_family(&labels)?)?;
        }

        let hub = self.hub.status();
        let dump = self.dump.status();
        let gauges: [(&str, &str, i64); 6] = [
            ("sse_connections_open", "SSE connections open now.", Stats::get(&stats.sse_connections_open) as i64),
            ("hub_filters", "Distinct filters the hub holds broker subscriptions for.", hub.filters as i64),
            ("broker_up", "1 when the broker and every link to it work.", i64::from(self.broker.is_healthy())),
            ("dump_writer_up", "1 when the dump writer works or is turned off, 0 after a write error.", i64::from(!dump.enabled || dump.healthy)),
            ("ingest_queue_messages", "Ingest payloads received and waiting for the publisher.", Stats::get(&stats.ingest_queue) as i64),
            ("dump_files", "Dump files listed in /dump/.", dump::count_files(&self.dump_config).unwrap_or(0) as i64),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }

        let dump_counters: [(&str, &str, u64); 5] = [
            ("dump_lines_written", "Lines written to dump files.", dump.lines_written),
            ("dump_bytes_written", "Bytes written to dump files.", dump.bytes_written),
            ("dump_rotations", "Dump files closed and rotated.", dump.rotations),
            ("dump_compressions", "Rotated dump files compressed.", dump.compressions),
            ("dump_write_errors", "Failed dump writes.", dump.write_errors),
        ];
        for (name, help, value) in dump_counters {
            counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}
