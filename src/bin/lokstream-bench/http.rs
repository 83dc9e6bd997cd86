//! A minimal HTTP/1.1 client over a raw socket: one request at a time on a keep-alive
//! connection, and long-lived event streams. It keeps the tool's own CPU and memory per
//! stream small, because 1,000 to 20,000 streams share the machine with the server measured.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::error::BenchError;

/// Maximum size of a response head.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Bytes read from the socket at once.
const READ_BYTES: usize = 16 * 1024;

/// Opens a TCP connection, from `source` when given, so that many connections to one
/// server port can spread over several loopback addresses and their ephemeral ports.
pub async fn connect(address: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, BenchError> {
    let connect_error = |source| BenchError::Connect { address, source };
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(connect_error)?;
    if let Some(source) = source {
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(connect_error)?;
    }
    let stream = socket.connect(address).await.map_err(connect_error)?;
    stream.set_nodelay(true).map_err(connect_error)?;
    Ok(stream)
}

/// Status and framing of a response.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<usize>,
}

/// Reads a response head; bytes read past it are left in `buffer`.
async fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Head, String> {
    loop {
        if let Some(end) = crate::corpus::find(buffer, b"\r\n\r\n") {
            let head = parse_head(&buffer[..end])?;
            buffer.drain(..end + 4);
            return Ok(head);
        }
        if buffer.len() > MAX_HEAD_BYTES {
            return Err(format!("response head longer than {MAX_HEAD_BYTES} bytes"));
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await.map_err(|error| error.to_string())?;
        if read == 0 {
            return Err("connection closed before the response head".into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn parse_head(head: &[u8]) -> Result<Head, String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_string())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("invalid status line {status_line:?}"))?;

    let mut parsed = Head {
        status,
        chunked: false,
        content_length: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = value.parse().ok();
        }
    }
    Ok(parsed)
}

/// Decoder of a chunked body (RFC 9112, section 7.1), fed as bytes arrive. Chunk
/// extensions and trailers are skipped.
#[derive(Debug, Default)]
struct Chunked {
    state: ChunkState,
    size_line: Vec<u8>,
}

#[derive(Debug, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Done,
}

impl Chunked {
    /// Appends the body bytes in `input` to `output`; returns whether the last chunk ended.
    fn decode(&mut self, mut input: &[u8], output: &mut Vec<u8>) -> Result<bool, String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = input.iter().position(|&byte| byte == b'\n') else {
                        self.size_line.extend_from_slice(input);
                        return Ok(false);
                    };
                    self.size_line.extend_from_slice(&input[..end]);
                    input = &input[end + 1..];
                    let size = parse_chunk_size(&self.size_line)?;
                    self.size_line.clear();
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(remaining) => {
                    let taken = remaining.min(input.len());
                    output.extend_from_slice(&input[..taken]);
                    input = &input[taken..];
                    self.state = match remaining - taken {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::DataEnd => {
                    if input[0] == b'\n' {
                        self.state = ChunkState::Size;
                    }
                    input = &input[1..];
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(matches!(self.state, ChunkState::Done))
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, String> {
    let text = String::from_utf8_lossy(line);
    let digits = text.split(';').next().unwrap_or_default().trim();
    usize::from_str_radix(digits, 16).map_err(|_| format!("invalid chunk size line {text:?}"))
}

/// An open `text/event-stream` response.
pub struct EventStream {
    stream: TcpStream,
    chunked: Option<Chunked>,
    /// Decoded body bytes that do not yet end an event.
    pending: Vec<u8>,
    /// Bytes read from the socket before decoding.
    raw: Vec<u8>,
}

impl EventStream {
    /// Sends `GET path` and waits for a 200 response head.
    pub async fn open(
        address: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
    ) -> Result<Self, BenchError> {
        let mut stream = connect(address, source).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
        );
        let failed = |reason: String| BenchError::Http {
            address,
            request: format!("GET {path}"),
            reason,
        };
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| failed(error.to_string()))?;

        let mut leftover = Vec::new();
        let head = read_head(&mut stream, &mut leftover).await.map_err(failed)?;
        if head.status != 200 {
            return Err(failed(format!("status {}", head.status)));
        }

        let mut events = EventStream {
            stream,
            chunked: head.chunked.then(Chunked::default),
            pending: Vec::new(),
            raw: Vec::new(),
        };
        events.feed(&leftover, &mut |_| {}).map_err(failed)?;
        Ok(events)
    }

    /// Reads what the socket has and calls `on_event` with each complete event that has a
    /// `data:` field. Returns false once the server closed the stream. Cancel-safe: bytes
    /// are consumed only after a read completes.
    pub async fn read_events(&mut self, on_event: &mut impl FnMut(&[u8])) -> Result<bool, String> {
        if self.raw.len() < READ_BYTES {
            self.raw.resize(READ_BYTES, 0);
        }
        let read = self
            .stream
            .read(&mut self.raw)
            .await
            .map_err(|error| error.to_string())?;
        if read == 0 {
            return Ok(false);
        }
        let raw = std::mem::take(&mut self.raw);
        let outcome = self.feed(&raw[..read], on_event);
        self.raw = raw;
        outcome.map(|ended| !ended)
    }

    /// Decodes `input` and hands out complete events; returns whether the body ended.
    fn feed(&mut self, input: &[u8], on_event: &mut impl FnMut(&[u8])) -> Result<bool, String> {
        let ended = match &mut self.chunked {
            Some(chunked) => chunked.decode(input, &mut self.pending)?,
            None => {
                self.pending.extend_from_slice(input);
                false
            }
        };

        // Both servers end events with a blank line of a lone `\n`.
        let mut start = 0;
        while let Some(end) = crate::corpus::find(&self.pending[start..], b"\n\n") {
            let event = &self.pending[start..start + end];
            if event.starts_with(b"data:") || crate::corpus::find(event, b"\ndata:").is_some() {
                on_event(event);
            }
            start += end + 2;
        }
        self.pending.drain(..start);
        Ok(ended)
    }
}

/// A keep-alive connection sending one request at a time.
pub struct Connection {
    address: SocketAddr,
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// Status and body of a response.
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Connection {
    pub async fn open(address: SocketAddr) -> Result<Self, BenchError> {
        Ok(Connection {
            address,
            stream: connect(address, None).await?,
            buffer: Vec::new(),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Sends one request and reads the whole response, which must carry `Content-Length`
    /// or be chunked.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Response, BenchError> {
        let address = self.address;
        let failed = |reason: String| BenchError::Http {
            address,
            request: format!("{method} {path}"),
            reason,
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.address,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.stream
            .write_all(&request)
            .await
            .map_err(|error| failed(error.to_string()))?;

        let head = read_head(&mut self.stream, &mut self.buffer)
            .await
            .map_err(failed)?;
        let body = self.read_body(&head).await.map_err(failed)?;
        Ok(Response {
            status: head.status,
            body,
        })
    }

    async fn read_body(&mut self, head: &Head) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let mut chunked = head.chunked.then(Chunked::default);
        let length = head.content_length.unwrap_or(0);
        loop {
            let input = std::mem::take(&mut self.buffer);
            match &mut chunked {
                Some(decoder) => {
                    // A connection carries one response at a time, so no bytes of a next
                    // response can follow the last chunk.
                    if decoder.decode(&input, &mut body)? {
                        return Ok(body);
                    }
                }
                None => {
                    let remaining = length - body.len();
                    let taken = remaining.min(input.len());
                    body.extend_from_slice(&input[..taken]);
                    self.buffer.extend_from_slice(&input[taken..]);
                    if body.len() == length {
                        return Ok(body);
                    }
                }
            }

            let mut chunk = [0u8; 4096];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|error| error.to_string())?;
            if read == 0 {
                return Err("connection closed in the middle of the response body".into());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Fetches `path` and parses the body as JSON.
pub async fn get_json(address: SocketAddr, path: &str) -> Result<serde_json::Value, BenchError> {
    let mut connection = Connection::open(address).await?;
    let response = connection.request("GET", path, b"").await?;
    let failed = |reason: String| BenchError::Http {
        address,
        request: format!("GET {path}"),
        reason,
    };
    if response.status != 200 {
        return Err(failed(format!("status {}", response.status)));
    }
    serde_json::from_slice(&response.body).map_err(|error| failed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_body_split_anywhere_decodes() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut decoder = Chunked::default();
            let mut body = Vec::new();
            let first = decoder.decode(&wire[..split], &mut body).unwrap();
            let second = decoder.decode(&wire[split..], &mut body).unwrap();
            assert!(first || second, "split at {split}");
            assert_eq!(body, b"hello, world", "split at {split}");
        }
    }

    #[test]
    fn head_reports_status_and_framing() {
        let head = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: y").unwrap();
        assert_eq!(head.status, 200);
        assert!(head.chunked);
        assert_eq!(head.content_length, None);
    }
}

/// The server a streaming case measures, and the event stream its clients open.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamTarget {
    /// Server name in the results.
    #[arg(long)]
    pub server: String,
    /// HTTP listener the streams connect to.
    #[arg(long)]
    pub http: SocketAddr,
    /// Path and query of the event stream.
    #[arg(long, default_value = "/api/stream.json?channel=all")]
    pub stream_path: String,
}

