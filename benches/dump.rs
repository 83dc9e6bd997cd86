//! Dump writer benchmark on the real corpus: append throughput under both fsync policies,
//! and compression speed and ratio against `gzip -6` on the same file.
//!
//! Run with `cargo bench --bench dump`; it prints one line per measurement. The corpus is
//! read from `../shared/data/messages-real.jsonl` and repeated to make a larger input.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lokstream::config::Config;
use lokstream::dump::{self, DumpWriter, SystemClock};

/// Times the corpus is repeated for the append runs (about 196 MB of lines) and for the
/// compression runs (about 49 MB).
const APPEND_REPEAT: usize = 40;
const COMPRESS_REPEAT: usize = 10;

/// Appends queued before the oldest is awaited, as concurrent pushes would queue them.
const APPENDS_IN_FLIGHT: usize = 64;

fn corpus(repeat: usize) -> Vec<Bytes> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/messages-real.jsonl");
    let file = std::fs::File::open(&path).unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    let lines: Vec<Bytes> = BufReader::new(file)
        .lines()
        .map(|line| Bytes::from(line.expect("readable corpus")))
        .collect();
    let mut repeated = Vec::with_capacity(lines.len() * repeat);
    for _ in 0..repeat {
        repeated.extend(lines.iter().cloned());
    }
    repeated
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

async fn bench_append(lines: &[Bytes], fsync: &str, lines_per_append: usize) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
    let dump_dir = dir.path().to_str().expect("UTF-8 path");
    let config = Config::with_overrides(&[("dump.dir", dump_dir), ("dump.fsync", fsync), ("dump.rotate.bytes", "4294967296")])
        .expect("valid config")
        .dump;
    let writer = DumpWriter::open(&config, Arc::new(SystemClock)).expect("writer opens");
    let bytes: u64 = lines.iter().map(|line| line.len() as u64 + 1).sum();

    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for chunk in lines.chunks(lines_per_append) {
        if pending.len() == APPENDS_IN_FLIGHT {
            let written: dump::Written = pending.pop_front().expect("pending append");
            written.wait().await.expect("written");
        }
        pending.push_back(writer.append(chunk.to_vec()).await.expect("queued"));
    }
    for written in pending {
        written.wait().await.expect("written");
    }
    let elapsed = started.elapsed();
    writer.shutdown().await;

    println!(
        "append dump.fsync={fsync:<6} {:>9.0} lines/s {:>7.1} MB/s ({} lines, {:.1} MB, {:.2} s, {lines_per_append} lines an append, {APPENDS_IN_FLIGHT} in flight)",
        lines.len() as f64 / elapsed.as_secs_f64(),
        megabytes(bytes) / elapsed.as_secs_f64(),
        lines.len(),
        megabytes(bytes),
        elapsed.as_secs_f64(),
    );
}

fn write_plain(lines: &[Bytes], path: &Path) -> u64 {
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    std::fs::write(path, &text).expect("plain file written");
    text.len() as u64
}

fn report_compression(what: &str, input: u64, output: u64, elapsed: Duration) {
    println!(
        "compress {what:<24} {:>7.1} MB/s input, ratio {:.3} ({:.1} MB to {:.1} MB, {:.2} s)",
        megabytes(input) / elapsed.as_secs_f64(),
        output as f64 / input as f64,
        megabytes(input),
        megabytes(output),
        elapsed.as_secs_f64(),
    );
}

fn bench_compression(lines: &[Bytes]) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");

    let txt = dir.path().join("messages_20240101_00000001.txt");
    let input = write_plain(lines, &txt);
    let started = Instant::now();
    let gz_bytes = dump::compress_file(&txt).expect("compressed");
    report_compression("lokstream compress_file", input, gz_bytes, started.elapsed());

    let reference = dir.path().join("reference.txt");
    write_plain(lines, &reference);
    let started = Instant::now();
    let output = Command::new("gzip").args(["-6", "-c"]).arg(&reference).output();
    match output {
        Ok(output) if output.status.success() => {
            report_compression("gzip -6", input, output.stdout.len() as u64, started.elapsed());
        }
        Ok(output) => println!("gzip -6 failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(error) => println!("gzip -6 not run: {error}"),
    }
}

/// Folder for the benchmark's files: `LOKSTREAM_BENCH_DIR`, or the system temp folder.
fn bench_dir() -> PathBuf {
    std::env::var_os("LOKSTREAM_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn main() {
    let lines = corpus(APPEND_REPEAT);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for lines_per_append in [1, 10, 100] {
            for fsync in ["batch", "rotate"] {
                bench_append(&lines, fsync, lines_per_append).await;
            }
        }
    });
    drop(lines);
    bench_compression(&corpus(COMPRESS_REPEAT));
}
