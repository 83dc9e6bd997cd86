//! Reading the dump file line by line: gzip detection by magic bytes, the line length cap
//! and blank-line handling.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::CollectorError;

/// Read buffer for the dump file, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Magic bytes that open every gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// One line of the dump file.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    /// Line bytes without the line ending.
    Payload(Vec<u8>),
    /// Empty or whitespace-only line.
    Blank,
}

/// Line reader over a plain or gzip-compressed file, with a cap on the line length.
pub(super) struct LineReader {
    path: PathBuf,
    reader: Box<dyn BufRead + Send>,
    pub(super) gzip: bool,
    /// Number of the last line read, counting from 1.
    line_number: u64,
    max_line_bytes: usize,
}

impl LineReader {
    /// Opens `path` and detects gzip by its magic bytes, so a compressed file is read
    /// whatever its name. Lines longer than `max_line_bytes` (without the line ending) fail.
    pub(super) fn open(path: &Path, max_line_bytes: usize) -> Result<Self, CollectorError> {
        let open_error = |source| CollectorError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(open_error)?;

        // Reading the first bytes apart, instead of peeking into a buffer, handles short
        // reads and works on pipes, which cannot seek back.
        let mut head = Vec::with_capacity(GZIP_MAGIC.len());
        (&mut file)
            .take(GZIP_MAGIC.len() as u64)
            .read_to_end(&mut head)
            .map_err(open_error)?;
        let gzip = head == GZIP_MAGIC;
        let buffered =
            BufReader::with_capacity(READ_BUFFER_BYTES, io::Cursor::new(head).chain(file));

        let reader: Box<dyn BufRead + Send> = if gzip {
            // `MultiGzDecoder` continues past the end of a member, as `gzip -d` does for
            // concatenated files.
            let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
            Box::new(BufReader::with_capacity(READ_BUFFER_BYTES, decoder))
        } else {
            Box::new(buffered)
        };

        Ok(LineReader {
            path: path.to_owned(),
            reader,
            gzip,
            line_number: 0,
            max_line_bytes,
        })
    }

    /// Reads the next line, or `None` at the end of the file. The last line may lack a `\n`.
    pub(super) fn next_line(&mut self) -> Result<Option<Line>, CollectorError> {
        // Reading at most the maximum payload plus "\r\n" keeps a file without newlines
        // from growing the buffer without bound.
        let limit = self.max_line_bytes + 2;
        let mut buffer = Vec::new();
        let read = (&mut self.reader)
            .take(limit as u64)
            .read_until(b'\n', &mut buffer)
            .map_err(|source| self.read_error(source))?;
        if read == 0 {
            return Ok(None);
        }
        self.line_number += 1;

        let too_long = CollectorError::LineTooLong {
            path: self.path.clone(),
            line: self.line_number,
            max_bytes: self.max_line_bytes,
        };
        if read == limit && !buffer.ends_with(b"\n") {
            return Err(too_long);
        }

        let content_len = strip_line_ending(&buffer).len();
        if content_len > self.max_line_bytes {
            return Err(too_long);
        }
        if is_blank(&buffer[..content_len]) {
            return Ok(Some(Line::Blank));
        }
        buffer.truncate(content_len);
        Ok(Some(Line::Payload(buffer)))
    }

    /// Sends every non-blank line into `lines` and returns the number of blank lines.
    /// Stops early without error when the receiver is gone, because the publisher then
    /// reports its own error.
    pub(super) fn send_lines(
        mut self,
        lines: mpsc::Sender<Vec<u8>>,
    ) -> Result<u64, CollectorError> {
        let mut skipped_blank = 0;
        while let Some(line) = self.next_line()? {
            match line {
                Line::Blank => skipped_blank += 1,
                Line::Payload(payload) => {
                    if lines.blocking_send(payload).is_err() {
                        break;
                    }
                }
            }
        }
        Ok(skipped_blank)
    }

    /// Classifies a read error. flate2 1.1 reports corrupt or truncated gzip data with
    /// these kinds.
    fn read_error(&self, source: io::Error) -> CollectorError {
        let path = self.path.clone();
        let corrupt = matches!(
            source.kind(),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
        );
        if self.gzip && corrupt {
            CollectorError::Gzip { path, source }
        } else {
            CollectorError::Read { path, source }
        }
    }
}

fn strip_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}
