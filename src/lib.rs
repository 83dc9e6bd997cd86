//! lokstream: a realtime message streaming server.
//!
//! Collectors publish messages over MQTT or `POST /api/push.json`; the publisher validates,
//! deduplicates and stamps them, appends them to the dump and publishes one copy per
//! channel to the broker; the hub relays channels to SSE clients over one broker session.

pub mod activity;
pub mod broker;
pub mod channels;
pub mod collector;
pub mod config;
pub mod dedupe;
pub mod dump;
pub mod http;
pub mod hub;
pub mod ids;
pub mod ingest;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod publisher;
pub mod serve;
pub mod server;
pub mod sse;
pub mod stats;
pub mod tls;
pub mod topic;
pub mod viewer;
