//! The `lokstream` command: run the server (the default), replay a dump into a server,
//! check dump files, or print the effective configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lokstream::collector::{self, PublishArgs, PublishOptions};
use lokstream::config::Config;
use lokstream::{dump, logging, server};

#[derive(Parser)]
#[command(name = "lokstream", version, about = "Realtime message streaming server")]
struct Cli {
    /// Properties file to read instead of conf/config.properties.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Override one configuration key; repeatable.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Run,
    /// Replay a JSON-lines file (.txt or .txt.gz) into a server over MQTT.
    Publish(PublishArgs),
    /// Print the effective configuration with the origin of each value.
    Config,
    /// Work with dump files.
    #[command(subcommand)]
    Dump(DumpCommand),
}

#[derive(Subcommand)]
enum DumpCommand {
    /// Check every .txt and .txt.gz file of a folder: the CRC and length of every gzip
    /// member, and one JSON object a line. Exits non-zero when a file is damaged.
    Verify {
        /// Folder to check; defaults to the own/ folder under dump.dir.
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lokstream: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };

    match cli.command.unwrap_or(Command::Run) {
        Command::Run => runtime.block_on(run(cli.config, cli.sets)),
        Command::Publish(args) => runtime.block_on(publish(args.into())),
        Command::Config => print_config(cli.config, cli.sets),
        Command::Dump(DumpCommand::Verify { dir }) => verify_dumps(dir, cli.config, cli.sets),
    }
}

async fn run(config_path: Option<PathBuf>, sets: Vec<String>) -> ExitCode {
    let config = match Config::load(config_path.as_deref(), std::env::vars(), &sets) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("lokstream: {error}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(&config.log);

    let server = match server::start(config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, "start-up failed");
            return ExitCode::FAILURE;
        }
    };

    let stop = server.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    server.run_until_stopped().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_signal() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "stop requested"),
    }
}

async fn publish(options: PublishOptions) -> ExitCode {
    logging::init(&lokstream::config::LogConfig {
        format: lokstream::config::LogFormat::Text,
        level: "warn".into(),
    });
    match collector::publish_file(&options).await {
        Ok(summary) => {
            println!(
                "published {} messages from {} in {:.1} s ({} blank lines skipped)",
                summary.published,
                options.file.display(),
                summary.elapsed.as_secs_f64(),
                summary.skipped_blank
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lokstream publish: {error}");
            ExitCode::FAILURE
        }
    }
}

fn verify_dumps(dir: Option<PathBuf>, config_path: Option<PathBuf>, sets: Vec<String>) -> ExitCode {
    let dir = match dir {
        Some(dir) => dir,
        None => match Config::load(config_path.as_deref(), std::env::vars(), &sets) {
            Ok(config) => dump::own_dir(&config.dump.dir),
            Err(error) => {
                eprintln!("lokstream: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
    let checks = match dump::verify_dir(&dir) {
        Ok(checks) => checks,
        Err(error) => {
            eprintln!("lokstream dump verify: {error}");
            return ExitCode::FAILURE;
        }
    };

    if checks.is_empty() {
        eprintln!(
            "lokstream dump verify: no dump files (*.txt, *.txt.gz) in {}, so nothing was checked; \
             the server writes them to the own/ folder of dump.dir, for example {}",
            dir.display(),
            dump::own_dir(&dir).display()
        );
        return ExitCode::FAILURE;
    }

    println!("{:<40} {:>10} {:>9}  status", "file", "lines", "bad");
    for check in &checks {
        let status = check.damage.as_deref().unwrap_or("ok");
        println!("{:<40} {:>10} {:>9}  {status}", check.name, check.lines, check.bad_lines);
    }
    let damaged = checks.iter().filter(|check| !check.is_ok()).count();
    println!("{} files checked in {}, {damaged} damaged", checks.len(), dir.display());
    if damaged > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_config(config_path: Option<PathBuf>, sets: Vec<String>) -> ExitCode {
    let settings = Config::settings(config_path.as_deref(), std::env::vars(), &sets);
    match settings.and_then(|settings| Config::from_settings(&settings).map(|_| settings)) {
        Ok(settings) => {
            print!("{}", settings.render());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("lokstream: {error}");
            ExitCode::FAILURE
        }
    }
}
