//! The SSE wire format of lokstream's events.
//!
//! Whatever bytes a payload holds, the wire carries valid UTF-8 and every payload line gets
//! its own `data:` field, so no payload can inject an SSE field or end an event early.

use bytes::{BufMut, Bytes, BytesMut};

/// Formats a message event: `id:`, then one `data:` line per payload line.
pub fn message_frame(id: u64, payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload);
    let mut frame = BytesMut::with_capacity(text.len() + 32);
    put_id(&mut frame, id);
    put_data(&mut frame, &text);
    frame.put_u8(b'\n');
    frame.freeze()
}

/// Formats a `gap` event: the broker dropped `lost` messages this stream should have had.
pub fn gap_frame(id: u64, lost: u64) -> Bytes {
    let mut frame = BytesMut::with_capacity(80);
    put_id(&mut frame, id);
    frame.put_slice(b"event: gap\n");
    put_data(&mut frame, &format!("{{\"reason\":\"broker_dropped\",\"lost\":{lost}}}"));
    frame.put_u8(b'\n');
    frame.freeze()
}

/// Formats the `gap` event that opens a resumed stream whose missed events the history
/// no longer contains in full. It has no `id:` field: an id would tell the browser that it
/// has everything up to that point, and it has not.
pub fn resume_gap_frame() -> Bytes {
    Bytes::from_static(b"event: gap\ndata: {\"reason\":\"history_incomplete\",\"lost\":null}\n\n")
}

/// Formats a block with only an `id:` field. A browser sets its last event id from it
/// without firing an event, so a stream dropped before its first event still resumes
/// from where it started.
pub fn position_frame(id: u64) -> Bytes {
    let mut frame = BytesMut::with_capacity(32);
    put_id(&mut frame, id);
    frame.put_u8(b'\n');
    frame.freeze()
}

fn put_id(frame: &mut BytesMut, id: u64) {
    frame.put_slice(b"id: ");
    frame.put_slice(id.to_string().as_bytes());
    frame.put_u8(b'\n');
}

/// Splits on CRLF, CR and LF, the three line ends an SSE parser recognises.
fn put_data(frame: &mut BytesMut, text: &str) {
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        frame.put_slice(b"data: ");
        frame.put_slice(rest[..end].as_bytes());
        frame.put_u8(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[end + skip..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lines_become_data_fields() {
        let frame = message_frame(7, b"a\r\nb\rc\nd");
        assert_eq!(&frame[..], b"id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    }

    #[test]
    fn trailing_line_break_gives_an_empty_data_line() {
        let frame = message_frame(1, b"a\n");
        assert_eq!(&frame[..], b"id: 1\ndata: a\ndata: \n\n");
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let frame = message_frame(1, b"a\xffb");
        assert!(std::str::from_utf8(&frame).is_ok());
        assert_eq!(&frame[..], "id: 1\ndata: a\u{fffd}b\n\n".as_bytes());
    }

    #[test]
    fn gap_frame_names_its_event() {
        let frame = gap_frame(3, 5);
        assert_eq!(&frame[..], b"id: 3\nevent: gap\ndata: {\"reason\":\"broker_dropped\",\"lost\":5}\n\n");
    }
}
