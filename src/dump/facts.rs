//! Facts about each closed dump file for `/dump/index.json`: message count, time of the first
//! and last message and the SHA-256 of the `.txt.gz`. They are computed once, when the file
//! is compressed, and kept in a hidden sidecar `own/.NAME.meta.json` that `/dump/` never
//! lists or serves. Missing or stale sidecars are rebuilt at start-up on a background thread.

use std::borrow::Cow;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::lines::{self, Line};
use super::listing;
use super::names;
use super::retention::Retention;

const SIDECAR_SUFFIX: &str = ".meta.json";

/// What the index reports about one compressed file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct FileFacts {
    /// Size of the `.txt.gz` described; a sidecar for another size is stale.
    pub(super) bytes: u64,
    pub(super) lines: u64,
    /// Unix milliseconds of the `stream_id` of the first and last line.
    pub(super) first_ms: Option<u64>,
    pub(super) last_ms: Option<u64>,
    /// Lower-case hex SHA-256 of the `.txt.gz`.
    pub(super) sha256: String,
}

/// Returns the Unix milliseconds encoded in the `stream_id` of a dump line, if it has one.
pub(super) fn stream_millis(line: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct StreamId<'a> {
        #[serde(borrow)]
        stream_id: Option<Cow<'a, str>>,
    }
    let parsed: StreamId<'_> = serde_json::from_slice(line).ok()?;
    let id: u64 = parsed.stream_id?.parse().ok()?;
    Some(crate::ids::millis_of(id))
}

/// Counts lines and keeps the stream time of the first and last one.
#[derive(Default)]
pub(super) struct LineTally {
    pub(super) lines: u64,
    first_ms: Option<u64>,
    last_line: Vec<u8>,
}

impl LineTally {
    pub(super) fn add(&mut self, line: &[u8]) {
        if self.lines == 0 {
            self.first_ms = stream_millis(line);
        }
        self.lines += 1;
        self.last_line.clear();
        self.last_line.extend_from_slice(line);
    }

    pub(super) fn into_facts(self, bytes: u64, sha256: String) -> FileFacts {
        let last_ms = if self.lines == 0 { None } else { stream_millis(&self.last_line) };
        FileFacts {
            bytes,
            lines: self.lines,
            first_ms: self.first_ms,
            last_ms,
            sha256,
        }
    }
}

/// A writer that hashes everything written through it.
pub(super) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub(super) fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes everything read through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left, so that the hash covers the whole source, and returns the hash.
    pub(super) fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(hex(&self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.hasher.update(&buffer[..read]);
        Ok(read)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Returns `own/.NAME.meta.json`.
pub(super) fn sidecar_path(own: &Path, name: &str) -> PathBuf {
    own.join(format!(".{name}{SIDECAR_SUFFIX}"))
}

/// Returns the dump file name a sidecar belongs to, if `name` is a sidecar name.
pub(super) fn described_name(name: &str) -> Option<&str> {
    name.strip_prefix('.')?.strip_suffix(SIDECAR_SUFFIX)
}

/// Loads the facts of `own/name` if its sidecar exists and matches the file size.
pub(super) fn load(own: &Path, name: &str, bytes: u64) -> Option<FileFacts> {
    let raw = fs::read(sidecar_path(own, name)).ok()?;
    let facts: FileFacts = serde_json::from_slice(&raw).ok()?;
    (facts.bytes == bytes).then_some(facts)
}

/// Writes the sidecar of `own/name` through a temporary name, so a reader never sees half
/// of it. It is not fsynced: a sidecar lost in a crash is rebuilt at the next start.
pub(super) fn store(own: &Path, name: &str, facts: &FileFacts) -> io::Result<()> {
    let path = sidecar_path(own, name);
    let temp = path.with_extension("json.tmp");
    fs::write(&temp, serde_json::to_vec(facts)?)?;
    fs::rename(&temp, &path)
}

/// Removes the sidecar of `own/name`; a missing one is fine.
pub(super) fn remove(own: &Path, name: &str) {
    match fs::remove_file(sidecar_path(own, name)) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(file = name, %error, "could not remove dump file facts"),
    }
}

/// Reads a compressed dump file whole and computes its facts. A file that is not gzip, or
/// whose gzip is damaged, fails with `InvalidData`, `InvalidInput` or `UnexpectedEof`.
pub(super) fn scan_compressed(path: &Path) -> io::Result<FileFacts> {
    let bytes = fs::metadata(path)?.len();
    let mut hashing = HashingReader::new(File::open(path)?);
    let mut tally = LineTally::default();
    let ending = lines::for_each_line(&mut hashing, |line| {
        match line {
            Line::Whole(bytes) => tally.add(bytes),
            Line::TooLong => tally.lines += 1,
        }
        Ok(())
    })?;
    if !ending.gzip {
        return Err(io::Error::new(io::ErrorKind::InvalidData, super::verify::NOT_GZIP));
    }
    let sha256 = hashing.finish()?;
    Ok(tally.into_facts(bytes, sha256))
}

/// Starts a thread that writes the facts of every `.txt.gz` in `own` that has none, then
/// applies retention once.
pub(super) fn rebuild_in_background(own: PathBuf, retention: Retention) -> io::Result<()> {
    std::thread::Builder::new()
        .name("dump-facts".into())
        .spawn(move || {
            rebuild_missing(&own);
            retention.apply();
        })?;
    Ok(())
}

fn rebuild_missing(own: &Path) {
    let files = match listing::list_files(own) {
        Ok(files) => files,
        Err(error) => {
            tracing::error!(dir = %own.display(), %error, "listing dump files for their facts failed");
            return;
        }
    };

    let mut rebuilt = 0u64;
    for file in files.iter().filter(|file| file.compressed) {
        if load(own, &file.name, file.bytes).is_some() {
            continue;
        }
        match rebuild_one(own, &file.name) {
            Ok(()) => rebuilt += 1,
            Err(error) if is_damage(&error) => set_aside_damaged(own, &file.name, &error),
            Err(error) => {
                tracing::error!(file = %file.name, %error, "computing dump file facts failed; `lokstream dump verify` checks the file");
            }
        }
    }
    if rebuilt > 0 {
        tracing::info!(files = rebuilt, "dump file facts rebuilt");
    }
}

/// Tells whether a scan failed on the content of the file rather than on reading it.
fn is_damage(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof
    )
}

/// Moves a damaged `.txt.gz` to `damaged/` next to `own/`, so it is neither listed nor
/// served with facts that describe the damage. When the move fails, it stays listed
/// without facts.
fn set_aside_damaged(own: &Path, name: &str, damage: &io::Error) {
    let Some(dump_dir) = own.parent() else {
        return;
    };
    let damaged = dump_dir.join(names::DAMAGED_DIR);
    let moved = fs::create_dir_all(&damaged).and_then(|()| fs::rename(own.join(name), damaged.join(name)));
    match moved {
        Ok(()) => tracing::error!(file = name, %damage, moved_to = %damaged.display(), "set aside a damaged dump file; its facts are not rebuilt"),
        Err(error) => tracing::error!(file = name, %damage, %error, "could not set aside a damaged dump file; it stays listed without facts"),
    }
}

fn rebuild_one(own: &Path, name: &str) -> io::Result<()> {
    let facts = scan_compressed(&own.join(name))?;
    store(own, name, &facts)?;
    tracing::info!(file = name, lines = facts.lines, "dump file facts rebuilt");
    Ok(())
}

/// Tells whether `name` in `own/` is a sidecar whose dump file is gone.
pub(super) fn is_orphan_sidecar(own: &Path, name: &str) -> bool {
    match described_name(name) {
        Some(described) if names::is_dump_file_name(described) => !own.join(described).exists(),
        _ => false,
    }
}
