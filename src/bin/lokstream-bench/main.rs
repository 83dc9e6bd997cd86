//! `lokstream-bench`: the load generator behind `scripts/bench.sh`. Each subcommand runs
//! one case against servers that are already running on loopback and appends its
//! measurements to a results file. `report` turns that file into Markdown tables.
//!
//! Every load loop is bounded in messages and seconds, and the tool connects only to the
//! addresses it is given.

mod compress;
mod corpus;
mod error;
mod fanout;
mod http;
mod idle;
mod ingest;
mod mqtt;
mod receive;
mod report;
mod results;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use corpus::Corpus;
use error::BenchError;
use results::Record;

#[derive(Parser)]
#[command(
    name = "lokstream-bench",
    about = "Measure lokstream against Mosquitto and nginx+nchan on this machine"
)]
struct Cli {
    /// JSON-lines corpus whose messages are published.
    #[arg(long, global = true, default_value = "../shared/data/messages-real.jsonl")]
    corpus: PathBuf,

    /// File each measurement is appended to, one JSON object a line.
    #[arg(long, global = true, default_value = "bench-results.jsonl")]
    results: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// MQTT publishers at full speed; messages/s at the receivers and into the dump.
    Ingest(ingest::IngestArgs),
    /// One publisher, many SSE clients; deliveries/s and publish-to-receive latency.
    Fanout(fanout::FanoutArgs),
    /// Many open, idle SSE streams; server memory per stream.
    Idle(idle::IdleArgs),
    /// Dump compression against `gzip -6`.
    Compress(compress::CompressArgs),
    /// Print the results file as Markdown tables.
    Report,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lokstream::logging::init(&lokstream::config::LogConfig {
        format: lokstream::config::LogFormat::Text,
        level: "info".into(),
    });

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lokstream-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("lokstream-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), BenchError> {
    let records: Vec<Record> = match &cli.command {
        Command::Report => {
            print!("{}", report::render(&results::read(&cli.results)?));
            return Ok(());
        }
        Command::Ingest(args) => {
            let corpus = Arc::new(Corpus::load(&cli.corpus)?);
            vec![Record::Ingest(ingest::run(args, corpus).await?)]
        }
        Command::Fanout(args) => {
            let corpus = Arc::new(Corpus::load(&cli.corpus)?);
            fanout::run(args, corpus)
                .await?
                .into_iter()
                .map(Record::Fanout)
                .collect()
        }
        Command::Idle(args) => vec![Record::Idle(idle::run(args).await?)],
        Command::Compress(args) => {
            let corpus = Corpus::load(&cli.corpus)?;
            compress::run(args, &corpus)?
                .into_iter()
                .map(Record::Compress)
                .collect()
        }
    };

    for record in &records {
        results::append(&cli.results, record)?;
        // One line per measurement on stdout, so that a run shows its numbers as it goes.
        let line = serde_json::to_string(record).map_err(|error| BenchError::task("output", error))?;
        println!("{line}");
    }
    Ok(())
}
