//! The body of one SSE response: `retry:`, a `gap` notice when a resume is incomplete,
//! the replayed history, an `id:` block with the join position, then live events with
//! heartbeat comments in silence.
//!
//! The body ends on shutdown, on eviction, or when the hub stops, so no stream holds up a
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::{frame, StreamState};
use crate::hub::{Event, Membership};
use crate::stats::Stats;

/// Events concatenated into one write when a client has several queued.
const MAX_EVENTS_PER_WRITE: usize = 64;

/// The state of a stream between writes. Dropping it leaves the hub and frees the
/// connection slot.
struct Connection {
    membership: Membership,
    state: StreamState,
    /// Replayed history not yet written, in reverse order so that `pop` takes the oldest.
    replay: Vec<Arc<Event>>,
    /// The join position, written once the replay is out.
    position: Option<u64>,
    batch: Vec<Arc<Event>>,
    _open: OpenConnection,
}

/// Builds the response body of a stream.
pub(super) fn event_stream(
    mut membership: Membership,
    state: StreamState,
    permit: OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    // With nothing to replay, the join position rides in the `retry:` block.
    let mut replay = std::mem::take(&mut membership.replay);
    replay.reverse();
    let mut position = Some(membership.position);
    let mut first = BytesMut::new();
    first.put_slice(format!("retry: {}\n", state.config.retry_ms).as_bytes());
    if replay.is_empty() {
        first.put_slice(&frame::position_frame(membership.position));
        position = None;
    } else {
        first.put_u8(b'\n');
    }
    if membership.gap {
        first.put_slice(&frame::resume_gap_frame());
    }
    Stats::add(&state.stats.sse_connections_total, 1);
    let connection = Connection {
        _open: OpenConnection::new(state.stats.clone(), permit),
        membership,
        state,
        replay,
        position,
        batch: Vec::new(),
    };

    futures_util::stream::unfold((Some(first.freeze()), connection), |(first, mut connection)| async move {
        if let Some(first) = first {
            return Some((Ok(first), (None, connection)));
        }
        let chunk = connection.next_chunk().await?;
        Some((Ok(chunk), (None, connection)))
    })
}

impl Connection {
    /// Produces the next bytes to write, or `None` when the stream ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.state.shutdown.is_cancelled() || self.membership.evicted.is_cancelled() {
            return None;
        }
        if !self.replay.is_empty() {
            let count = self.replay.len().min(MAX_EVENTS_PER_WRITE);
            let start = self.replay.len() - count;
            let events: Vec<Arc<Event>> = self.replay.drain(start..).rev().collect();
            return Some(self.write(&events));
        }
        if let Some(position) = self.position.take() {
            return Some(frame::position_frame(position));
        }

        let heartbeat = Duration::from_secs(self.state.config.heartbeat_secs);
        tokio::select! {
            biased;
            _ = self.state.shutdown.cancelled() => None,
            _ = self.membership.evicted.cancelled() => None,
            _ = self.state.hub.stopped() => None,
            received = self.membership.events.recv_many(&mut self.batch, MAX_EVENTS_PER_WRITE) => {
                if received == 0 {
                    return None;
                }
                let events = std::mem::take(&mut self.batch);
                let chunk = self.write(&events);
                self.batch = events;
                self.batch.clear();
                Some(chunk)
            }
            _ = tokio::time::sleep(heartbeat) => Some(Bytes::from_static(b": heartbeat\n\n")),
        }
    }

    fn write(&self, events: &[Arc<Event>]) -> Bytes {
        if let [event] = events {
            Stats::add(&self.state.stats.sse_events_sent, 1);
            return event.frame.clone();
        }
        let mut chunk = BytesMut::with_capacity(events.iter().map(|event| event.frame.len()).sum());
        for event in events {
            chunk.put_slice(&event.frame);
        }
        Stats::add(&self.state.stats.sse_events_sent, events.len() as u64);
        chunk.freeze()
    }
}

/// Keeps the open-connections gauge right and owns the connection's slot, however the
/// stream ends.
struct OpenConnection {
    stats: Arc<Stats>,
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(stats: Arc<Stats>, permit: OwnedSemaphorePermit) -> Self {
        Stats::add(&stats.sse_connections_open, 1);
        OpenConnection { stats, _permit: permit }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.stats
            .sse_connections_open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
