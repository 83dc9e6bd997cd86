//! Receiving side of the cases: shared progress counters and the task that reads one
//! event stream, counting events and recording publish-to-receive latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::corpus::{now_us, sent_us};
use crate::http::EventStream;

/// Highest latency the histograms track, in microseconds; larger values are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

/// Counts that a receiving task updates and the case polls while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    count: AtomicU64,
    /// `now_us` of the latest increment.
    last_us: AtomicU64,
}

impl Counters {
    pub fn add(&self, count: u64) {
        self.count.fetch_add(count, Ordering::Relaxed);
        self.last_us.fetch_max(now_us(), Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn last_us(&self) -> u64 {
        self.last_us.load(Ordering::Relaxed)
    }
}

/// Latency histogram in microseconds, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one stream received until it was stopped or closed.
pub struct Receipt {
    pub events: u64,
    pub latency_us: Histogram<u64>,
    /// The server ended the stream, or the connection failed, before the stop.
    pub closed: bool,
}

/// Reads `stream` until `stop` fires, adding to `progress` after each read.
pub fn spawn(
    mut stream: EventStream,
    stop: CancellationToken,
    progress: Arc<Counters>,
) -> JoinHandle<Receipt> {
    tokio::spawn(async move {
        let mut receipt = Receipt {
            events: 0,
            latency_us: latency_histogram(),
            closed: false,
        };
        loop {
            let mut events = 0;
            let mut on_event = |event: &[u8]| {
                events += 1;
                if let Some(sent) = sent_us(event) {
                    let latency = now_us().saturating_sub(sent).clamp(1, MAX_LATENCY_US);
                    receipt.latency_us.saturating_record(latency);
                }
            };
            let open = tokio::select! {
                _ = stop.cancelled() => break,
                read = stream.read_events(&mut on_event) => read,
            };
            if events > 0 {
                receipt.events += events;
                progress.add(events);
            }
            match open {
                Ok(true) => {}
                Ok(false) => {
                    receipt.closed = true;
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, "event stream failed");
                    receipt.closed = true;
                    break;
                }
            }
        }
        receipt
    })
}
