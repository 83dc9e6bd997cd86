//! Copying a client's connection to the internal broker listener once its CONNECT passed.
//!
//! Every client's bytes toward the broker pass the gate, which frames packets and stops a
//! PUBLISH from a client without the publisher login, any shared subscription and any
//! packet over the size limit. The broker's bytes toward a client are never parsed.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::connect::{self, Version};
use super::gate::{PublishGate, Scan};
use crate::stats::{RejectReason, Stats};

/// Bytes read from a subscriber per step; tokio's own copy uses the same size.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// How long the broker may take to close its side after the client's side ended, so that
/// packets it already sent (a SUBACK, a delivery) reach the client before the front closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// End of a subscriber's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriberEnd {
    ClientClosed,
    BrokerClosed,
    /// The client sent a PUBLISH; it never reached the broker.
    Publish,
    /// The client's packet stream lost its framing; the rest never reached the broker.
    Malformed,
    /// The client sent a SUBSCRIBE to a shared subscription; it never reached the broker.
    SharedSubscription,
    /// The client sent a packet over the size limit; it never reached the broker.
    TooLarge,
}

/// Sends the CONNECT packet, then relays the client through `gate`.
///
/// At a packet the gate stops, the front stops forwarding and closes the broker side. It
/// lets what the broker already sent reach the client and then closes the client, after an
/// MQTT 5 DISCONNECT (reason 0x87, not authorized, for a PUBLISH, or 0x95, packet too large)
/// when the client speaks MQTT 5. Either packet is counted in `stats` before the client is
/// closed.
pub async fn relay_client_stream(
    client: TcpStream,
    upstream: TcpStream,
    version: Version,
    connect: BytesMut,
    rest: BytesMut,
    stats: &Stats,
    gate: PublishGate,
) -> std::io::Result<SubscriberEnd> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    upstream_write.write_all(&connect).await?;

    let (end, drained) = {
        let downstream = tokio::io::copy(&mut upstream_read, &mut client_write);
        tokio::pin!(downstream);
        let gated = forward_gated(&mut client_read, &mut upstream_write, rest, gate);

        let end = tokio::select! {
            result = &mut downstream => {
                result?;
                return Ok(SubscriberEnd::BrokerClosed);
            }
            end = gated => end?,
        };

        match end {
            SubscriberEnd::Publish => Stats::add(&stats.mqtt_unauthorized_publishes, 1),
            SubscriberEnd::TooLarge => stats.reject(RejectReason::PayloadTooLarge),
            _ => {}
        }

        // The broker reads end-of-stream, ends the session and then closes its side.
        upstream_write.shutdown().await?;
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, &mut downstream).await;
        (end, matches!(drained, Ok(Ok(_))))
    };

    let disconnect = match end {
        SubscriberEnd::Publish => Some(&connect::NOT_AUTHORIZED_DISCONNECT),
        SubscriberEnd::TooLarge => Some(&connect::PACKET_TOO_LARGE_DISCONNECT),
        _ => None,
    };
    if let (Some(disconnect), Version::V5, true) = (disconnect, version, drained) {
        // Only after a complete drain does the DISCONNECT start at a packet boundary.
        client_write.write_all(disconnect).await?;
    }
    client_write.shutdown().await?;

    // Closing a socket that still contains unread bytes sends a reset, and a reset makes the
    // client's kernel drop the DISCONNECT before the client reads it. So the rest of what
    // the client sends is read and discarded until it closes.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, discard_until_closed(&mut client_read)).await;
    Ok(end)
}

async fn discard_until_closed(client: &mut OwnedReadHalf) -> std::io::Result<()> {
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    while client.read(&mut buffer).await? > 0 {}
    Ok(())
}

/// Forwards the client's bytes through the gate until the client closes, sends a packet
/// the gate stops, or breaks the framing.
async fn forward_gated(
    client: &mut OwnedReadHalf,
    upstream: &mut OwnedWriteHalf,
    rest: BytesMut,
    mut gate: PublishGate,
) -> std::io::Result<SubscriberEnd> {
    if let Some(end) = pass_through_gate(&mut gate, &rest, upstream).await? {
        return Ok(end);
    }

    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    loop {
        let read = client.read(&mut buffer).await?;
        if read == 0 {
            return Ok(SubscriberEnd::ClientClosed);
        }
        if let Some(end) = pass_through_gate(&mut gate, &buffer[..read], upstream).await? {
            return Ok(end);
        }
    }
}

async fn pass_through_gate(
    gate: &mut PublishGate,
    chunk: &[u8],
    upstream: &mut OwnedWriteHalf,
) -> std::io::Result<Option<SubscriberEnd>> {
    match gate.scan(chunk) {
        Scan::Clear => {
            upstream.write_all(chunk).await?;
            Ok(None)
        }
        Scan::Publish { at } => {
            upstream.write_all(&chunk[..at]).await?;
            Ok(Some(SubscriberEnd::Publish))
        }
        Scan::SharedSubscription { pass } => {
            upstream.write_all(&chunk[..pass]).await?;
            Ok(Some(SubscriberEnd::SharedSubscription))
        }
        Scan::TooLarge { pass } => {
            upstream.write_all(&chunk[..pass]).await?;
            Ok(Some(SubscriberEnd::TooLarge))
        }
        Scan::Malformed => Ok(Some(SubscriberEnd::Malformed)),
    }
}
