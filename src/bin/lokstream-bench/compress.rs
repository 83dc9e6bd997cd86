//! Case 4, dump compression: flate2's gzip encoder at level 5, the level and call sequence
//! of lokstream's dump compressor (`src/dump/compress.rs`, which the library does not
//! export), against `gzip -6` on the same file. The file is the corpus repeated, each
//! copy with new ids, to a size of some tens of MB, like a rotated dump file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::corpus::Corpus;
use crate::error::BenchError;
use crate::results::CompressRecord;

/// The gzip level of lokstream's dump compressor.
const GZIP_LEVEL: u32 = 5;

/// The level of the `gzip` peer: its default, which most users run.
const PEER_LEVEL: u32 = 6;

#[derive(Debug, Clone, clap::Args)]
pub struct CompressArgs {
    /// Directory for the input and output files; it must exist.
    #[arg(long)]
    pub dir: PathBuf,
    /// Size of the input file in MB (10^6 bytes).
    #[arg(long, default_value_t = 32)]
    pub megabytes: u64,
    /// Runs of each compressor; the fastest counts.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
}

pub fn run(args: &CompressArgs, corpus: &Corpus) -> Result<Vec<CompressRecord>, BenchError> {
    let input = args.dir.join("dump.txt");
    let input_bytes = write_dump(&input, corpus, args.megabytes * 1_000_000)?;
    let repeat = args.repeat.max(1);

    let flate2_out = args.dir.join("dump.flate2.txt.gz");
    let mut flate2 = best_of(repeat, || flate2_compress(&input, &flate2_out))?;
    flate2.input_bytes = input_bytes;

    let gzip_out = args.dir.join("dump.gzip.txt.gz");
    let mut gzip = best_of(repeat, || gzip_compress(&input, &gzip_out))?;
    gzip.input_bytes = input_bytes;

    for path in [&input, &flate2_out, &gzip_out] {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(file = %path.display(), %error, "could not remove a benchmark file");
        }
    }
    Ok(vec![flate2, gzip])
}

/// Writes corpus lines with ids `PASS-INDEX` until the file has at least `bytes`.
fn write_dump(path: &Path, corpus: &Corpus, bytes: u64) -> Result<u64, BenchError> {
    let write_error = |source| BenchError::Write {
        path: path.to_owned(),
        source,
    };
    let mut file = BufWriter::new(File::create(path).map_err(write_error)?);
    let mut written = 0;
    let mut pass = 0;
    while written < bytes {
        for index in 0..corpus.len() {
            let mut line = corpus.payload(index, &format!("{pass}-{index}"), None);
            line.push(b'\n');
            file.write_all(&line).map_err(write_error)?;
            written += line.len() as u64;
        }
        pass += 1;
    }
    file.flush().map_err(write_error)?;
    Ok(written)
}

fn best_of(
    repeat: u32,
    mut compress: impl FnMut() -> Result<CompressRecord, BenchError>,
) -> Result<CompressRecord, BenchError> {
    let mut best = compress()?;
    for _ in 1..repeat {
        let run = compress()?;
        if run.secs < best.secs {
            best = run;
        }
    }
    Ok(best)
}

/// Streams the file through `GzEncoder` into a buffered file, as the dump compressor does.
fn flate2_compress(input: &Path, output: &Path) -> Result<CompressRecord, BenchError> {
    let failed = |source: io::Error| BenchError::Write {
        path: output.to_owned(),
        source,
    };
    let started = Instant::now();
    let mut source = File::open(input).map_err(|source| BenchError::Read {
        path: input.to_owned(),
        source,
    })?;
    let target = File::create(output).map_err(failed)?;
    let mut encoder = GzEncoder::new(BufWriter::new(target), Compression::new(GZIP_LEVEL));
    io::copy(&mut source, &mut encoder).map_err(failed)?;
    let mut buffered = encoder.finish().map_err(failed)?;
    buffered.flush().map_err(failed)?;
    let secs = started.elapsed().as_secs_f64();

    Ok(CompressRecord {
        compressor: format!("lokstream (flate2 {GZIP_LEVEL})"),
        input_bytes: 0,
        output_bytes: file_size(output)?,
        secs,
    })
}

fn gzip_compress(input: &Path, output: &Path) -> Result<CompressRecord, BenchError> {
    let command = format!("gzip -{PEER_LEVEL} -c {} > {}", input.display(), output.display());
    let failed = |reason: String| BenchError::Command {
        command: command.clone(),
        reason,
    };
    let stdin = File::open(input).map_err(|error| failed(error.to_string()))?;
    let stdout = File::create(output).map_err(|error| failed(error.to_string()))?;

    let started = Instant::now();
    let status = Command::new("gzip")
        .arg(format!("-{PEER_LEVEL}"))
        .arg("-c")
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .status()
        .map_err(|error| failed(error.to_string()))?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(failed(status.to_string()));
    }

    Ok(CompressRecord {
        compressor: format!("gzip -{PEER_LEVEL}"),
        input_bytes: 0,
        output_bytes: file_size(output)?,
        secs,
    })
}

fn file_size(path: &Path) -> Result<u64, BenchError> {
    std::fs::metadata(path)
        .map(|metadata| metadata.len())
        .map_err(|source| BenchError::Read {
            path: path.to_owned(),
            source,
        })
}
