//! The message corpus as payload templates. Each line keeps every field but `id_str`, which
//! every publish gets afresh, because lokstream drops a repeated `(source_type, id_str)`.
//! A payload can carry its send time in `bench_sent_us`, read back by the receivers.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

use crate::error::BenchError;

/// Field holding the send time: microseconds on this process's monotonic clock.
pub const SENT_FIELD: &str = "bench_sent_us";

/// Key that precedes the send time in an event. The payload puts it in front of the real
/// fields, so a receiver finds it within the first few dozen bytes.
const SENT_MARKER: &[u8] = b"\"bench_sent_us\":";

pub struct Corpus {
    /// Members of each object without the braces and without `id_str`, e.g. `"text":"hi"`.
    members: Vec<String>,
}

impl Corpus {
    /// Reads a JSON-lines file; blank lines are skipped and any other line must be an object.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let text = std::fs::read_to_string(path).map_err(|source| BenchError::CorpusRead {
            path: path.to_owned(),
            source,
        })?;

        let mut members = Vec::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let invalid = |reason: String| BenchError::CorpusLine {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).map_err(|error| invalid(error.to_string()))?;
            object.remove("id_str");
            object.remove(SENT_FIELD);

            let serialized = serde_json::Value::Object(object).to_string();
            // A serialized object always starts with `{` and ends with `}`.
            members.push(serialized[1..serialized.len() - 1].to_owned());
        }

        if members.is_empty() {
            return Err(BenchError::CorpusEmpty {
                path: path.to_owned(),
            });
        }
        Ok(Corpus { members })
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Builds message `index` (modulo the corpus size) with `id_str` set to `id` and, when
    /// given, the send time.
    pub fn payload(&self, index: usize, id: &str, sent_us: Option<u64>) -> Vec<u8> {
        let members = &self.members[index % self.members.len()];
        let mut payload = Vec::with_capacity(members.len() + id.len() + 48);
        payload.extend_from_slice(b"{\"id_str\":\"");
        payload.extend_from_slice(id.as_bytes());
        payload.push(b'"');
        if let Some(sent_us) = sent_us {
            payload.push(b',');
            payload.extend_from_slice(SENT_MARKER);
            payload.extend_from_slice(sent_us.to_string().as_bytes());
        }
        if !members.is_empty() {
            payload.push(b',');
            payload.extend_from_slice(members.as_bytes());
        }
        payload.push(b'}');
        payload
    }
}

/// Microseconds since the first call, on a monotonic clock shared by every task of this
/// process, so that a sender and a receiver in it can be compared.
pub fn now_us() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Reads the send time from an event or payload, if it carries one.
pub fn sent_us(event: &[u8]) -> Option<u64> {
    let start = find(event, SENT_MARKER)? + SENT_MARKER.len();
    let digits = event[start..]
        .iter()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[start..start + digits])
        .ok()?
        .parse()
        .ok()
}

/// Position of the first `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_id_and_send_time() {
        let corpus = Corpus {
            members: vec!["\"text\":\"hi\"".into()],
        };
        let payload = corpus.payload(3, "run-1", Some(42));
        assert_eq!(
            payload,
            b"{\"id_str\":\"run-1\",\"bench_sent_us\":42,\"text\":\"hi\"}"
        );
        assert_eq!(sent_us(&payload), Some(42));
    }

    #[test]
    fn payload_without_send_time_is_valid_json() {
        let corpus = Corpus {
            members: vec![String::new()],
        };
        let payload = corpus.payload(0, "x", None);
        let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(value["id_str"], "x");
        assert_eq!(sent_us(&payload), None);
    }
}
