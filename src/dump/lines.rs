//! Reading dump and import files line by line: plain or gzip (one or more members, detected
//! by the magic bytes, not the name), with a cap on the line length so that a file without
//! newlines cannot grow memory without bound.

use std::io::{self, BufRead, BufReader, Read};

use flate2::bufread::MultiGzDecoder;

/// Magic bytes that open every gzip member (RFC 1952).
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Read buffer, in bytes.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// Longest line passed on whole. The default `stream.batch.max_bytes` is 16 MiB, so no
/// line the server accepts is longer.
pub(super) const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// One line, without its `\n` (and without a `\r` before it).
pub(super) enum Line<'a> {
    Whole(&'a [u8]),
    /// A line longer than the maximum line length; its bytes were skipped, not buffered.
    TooLong,
}

/// How a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ending {
    pub(super) gzip: bool,
    /// The last line had no `\n`, as a line torn by a crash has.
    pub(super) unterminated: bool,
}

/// Calls `each` with every line of `source` in order, stopping at the first error `each`
/// returns. A gzip source fails with `InvalidData` or `UnexpectedEof` on a bad CRC, a bad
/// length or a truncated member.
pub(super) fn for_each_line(source: impl Read, each: impl FnMut(Line<'_>) -> io::Result<()>) -> io::Result<Ending> {
    for_each_line_up_to(source, MAX_LINE_BYTES, each)
}

/// Works as `for_each_line`, with lines longer than `max_line_bytes` passed on as
/// `Line::TooLong`. At most `max_line_bytes` + 2 bytes of a line are buffered.
pub(super) fn for_each_line_up_to(
    source: impl Read,
    max_line_bytes: usize,
    mut each: impl FnMut(Line<'_>) -> io::Result<()>,
) -> io::Result<Ending> {
    let mut buffered = BufReader::with_capacity(READ_BUFFER_BYTES, source);
    let gzip = buffered.fill_buf()?.starts_with(&GZIP_MAGIC);

    let unterminated = if gzip {
        let decoder = MultiGzDecoder::new(buffered);
        read_lines(BufReader::with_capacity(READ_BUFFER_BYTES, decoder), max_line_bytes, &mut each)?
    } else {
        read_lines(buffered, max_line_bytes, &mut each)?
    };
    Ok(Ending { gzip, unterminated })
}

/// Returns whether the last line lacked its `\n`.
fn read_lines(
    mut reader: impl BufRead,
    max_line_bytes: usize,
    each: &mut impl FnMut(Line<'_>) -> io::Result<()>,
) -> io::Result<bool> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader).take(max_line_bytes as u64 + 2).read_until(b'\n', &mut line)?;
        if read == 0 {
            return Ok(false);
        }

        let terminated = line.last() == Some(&b'\n');
        if !terminated && line.len() > max_line_bytes {
            skip_rest_of_line(&mut reader)?;
            each(Line::TooLong)?;
            continue;
        }

        let mut end = line.len() - usize::from(terminated);
        if terminated && end > 0 && line[end - 1] == b'\r' {
            end -= 1;
        }
        each(Line::Whole(&line[..end]))?;
        if !terminated {
            return Ok(true);
        }
    }
}

fn skip_rest_of_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        match buffer.iter().position(|&byte| byte == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let length = buffer.len();
                reader.consume(length);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn collect(source: &[u8]) -> (Vec<String>, Ending) {
        let mut lines = Vec::new();
        let ending = for_each_line(source, |line| {
            lines.push(match line {
                Line::Whole(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::TooLong => "<too long>".to_owned(),
            });
            Ok(())
        })
        .expect("readable");
        (lines, ending)
    }

    #[test]
    fn line_over_given_max_is_skipped() {
        let long = "x".repeat(1000);
        let source = format!("{{}}\n{long}\n{{\"a\":1}}\n");
        let mut lines = Vec::new();

        for_each_line_up_to(source.as_bytes(), 100, |line| {
            lines.push(match line {
                Line::Whole(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Line::TooLong => "<too long>".to_owned(),
            });
            Ok(())
        })
        .expect("readable");

        assert_eq!(lines, ["{}", "<too long>", "{\"a\":1}"]);
    }

    fn gzip_member(text: &str) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).expect("gzip into memory");
        encoder.finish().expect("gzip finished")
    }

    #[test]
    fn plain_lines_and_crlf() {
        let (lines, ending) = collect(b"a\r\nb\n\nc");

        assert_eq!(lines, ["a", "b", "", "c"]);
        assert!(!ending.gzip);
        assert!(ending.unterminated);
    }

    #[test]
    fn gzip_members_are_read_in_order() {
        let mut raw = gzip_member("1\n2\n");
        raw.extend(gzip_member("3\n"));

        let (lines, ending) = collect(&raw);

        assert_eq!(lines, ["1", "2", "3"]);
        assert!(ending.gzip);
        assert!(!ending.unterminated);
    }

    #[test]
    fn truncated_gzip_fails() {
        let raw = gzip_member("1\n2\n");
        let result = for_each_line(&raw[..raw.len() - 4], |_| Ok(()));

        assert!(result.is_err(), "a gzip file without its trailer was read as complete");
    }

    #[test]
    fn empty_source_has_no_lines() {
        let (lines, ending) = collect(b"");

        assert!(lines.is_empty());
        assert!(!ending.unterminated);
    }
}
