//! Case 3, idle connections: the memory a server spends on each open SSE stream that
//! receives nothing. It sums the resident set (`VmRSS` in `/proc/PID/status`) and the
//! proportional set (`Pss` in `/proc/PID/smaps_rollup`) of the given processes, before the
//! streams open and after they settle. PSS splits the shared memory that all of nginx's
//! workers map, which RSS counts once per worker.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};

use crate::error::BenchError;
use crate::http::{EventStream, StreamTarget};
use crate::results::IdleRecord;

/// Streams opened at once.
const CONNECT_CONCURRENCY: usize = 256;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: StreamTarget,
    /// Streams to open.
    #[arg(long, default_value_t = 20_000)]
    pub connections: u32,
    /// Loopback source addresses to spread the streams over: 127.0.0.1 up to 127.0.0.N,
    /// each with its own range of ephemeral ports.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Server process ids whose memory is summed; repeat for nginx's master and workers.
    #[arg(long = "pid", required = true)]
    pub pids: Vec<u32>,
    /// Seconds to wait after the last stream opened before reading memory again.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
}

pub async fn run(args: &IdleArgs) -> Result<IdleRecord, BenchError> {
    if args.sources == 0 || args.sources == 255 {
        return Err(BenchError::InvalidOption(format!(
            "sources {}: expected 1 to 254",
            args.sources
        )));
    }
    let (rss_before_kb, pss_before_kb) = memory_kb(&args.pids)?;

    let streams: Vec<EventStream> = futures_util::stream::iter(0..args.connections)
        .map(|index| {
            let last_octet = (index % u32::from(args.sources)) as u8 + 1;
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet));
            EventStream::open(args.target.http, Some(source), &args.target.stream_path)
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    tracing::info!(server = args.target.server, connections = streams.len(), "idle streams open");

    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let (rss_after_kb, pss_after_kb) = memory_kb(&args.pids)?;
    drop(streams);

    Ok(IdleRecord {
        server: args.target.server.clone(),
        connections: args.connections,
        rss_before_kb,
        rss_after_kb,
        pss_before_kb,
        pss_after_kb,
    })
}

/// Sums `VmRSS` and `Pss` over `pids`, in kB.
fn memory_kb(pids: &[u32]) -> Result<(u64, u64), BenchError> {
    let mut rss = 0;
    let mut pss = 0;
    for &pid in pids {
        rss += proc_field_kb(pid, "status", "VmRSS:")?;
        pss += proc_field_kb(pid, "smaps_rollup", "Pss:")?;
    }
    Ok((rss, pss))
}

/// Reads a `NAME:   123 kB` line of `/proc/PID/FILE`.
fn proc_field_kb(pid: u32, file: &str, name: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).map_err(|source| BenchError::Read {
        path: path.clone().into(),
        source,
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::ProcessMemory {
            pid,
            reason: format!("no {name} line in {path}"),
        })
}
