//! The publish gate: frames the packets a client without the publisher login sends, and
//! stops the stream at the first byte of a PUBLISH.
//!
//! It reads only each packet's fixed header (type and remaining length) and never copies or
//! changes bytes, so everything before the PUBLISH passes through as the client sent it.

/// Packet type of PUBLISH in the high four bits of the first byte.
const PUBLISH_TYPE: u8 = 3;

/// Position of the gate within the client's packet stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// The next byte starts a packet.
    PacketStart,
    /// Inside the remaining length, a variable byte integer of one to four bytes.
    Length { value: usize, bytes_read: u32 },
    /// Inside a packet's body, with this many bytes still to come.
    Body { bytes_left: usize },
}

/// Result of scanning a chunk of the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No PUBLISH starts in the chunk; all of it may pass.
    Clear,
    /// A PUBLISH starts at this offset; the bytes before it may pass, the rest may not.
    Publish { at: usize },
    /// A remaining length has more than four bytes, so the packet boundaries are lost.
    Malformed,
}

#[derive(Debug)]
pub struct PublishGate {
    position: Position,
}

impl PublishGate {
    /// Creates a gate for a stream that starts at a packet boundary, as after CONNECT.
    pub fn new() -> PublishGate {
        PublishGate {
            position: Position::PacketStart,
        }
    }

    /// Advances over `chunk`, the next bytes of the stream.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        let mut offset = 0;
        while offset < chunk.len() {
            match self.position {
                Position::Body { bytes_left } => {
                    let skipped = bytes_left.min(chunk.len() - offset);
                    offset += skipped;
                    self.position = match bytes_left - skipped {
                        0 => Position::PacketStart,
                        bytes_left => Position::Body { bytes_left },
                    };
                }
                Position::PacketStart => {
                    if chunk[offset] >> 4 == PUBLISH_TYPE {
                        return Scan::Publish { at: offset };
                    }
                    offset += 1;
                    self.position = Position::Length {
                        value: 0,
                        bytes_read: 0,
                    };
                }
                Position::Length { value, bytes_read } => {
                    let byte = chunk[offset];
                    offset += 1;
                    let value = value | (usize::from(byte & 0x7f) << (7 * bytes_read));
                    self.position = if byte & 0x80 == 0 {
                        match value {
                            0 => Position::PacketStart,
                            bytes_left => Position::Body { bytes_left },
                        }
                    } else if bytes_read == 3 {
                        return Scan::Malformed;
                    } else {
                        Position::Length {
                            value,
                            bytes_read: bytes_read + 1,
                        }
                    };
                }
            }
        }
        Scan::Clear
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SUBSCRIBE to "a/b" with packet id 1, QoS 0.
    const SUBSCRIBE: [u8; 10] = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x00];
    const PINGREQ: [u8; 2] = [0xc0, 0x00];
    /// PUBLISH QoS 0 to "a" with payload "x".
    const PUBLISH: [u8; 6] = [0x30, 0x04, 0x00, 0x01, b'a', b'x'];

    #[test]
    fn passes_subscribe_and_ping() {
        let mut gate = PublishGate::new();
        let stream = [&SUBSCRIBE[..], &PINGREQ[..], &SUBSCRIBE[..]].concat();
        assert_eq!(gate.scan(&stream), Scan::Clear);
    }

    #[test]
    fn stops_at_publish_after_other_packets() {
        let mut gate = PublishGate::new();
        let stream = [&PINGREQ[..], &SUBSCRIBE[..], &PUBLISH[..]].concat();
        assert_eq!(gate.scan(&stream), Scan::Publish { at: 12 });
    }

    #[test]
    fn publish_byte_in_payload_passes() {
        // A SUBSCRIBE whose topic filter is made of 0x30 bytes.
        let subscribe = [0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 0x30, 0x30, 0x00];
        let mut gate = PublishGate::new();
        assert_eq!(gate.scan(&subscribe), Scan::Clear);
        assert_eq!(gate.scan(&PUBLISH), Scan::Publish { at: 0 });
    }

    #[test]
    fn frames_packets_split_at_every_byte() {
        let stream = [&SUBSCRIBE[..], &PINGREQ[..], &PUBLISH[..]].concat();
        let mut gate = PublishGate::new();
        for (index, byte) in stream.iter().enumerate() {
            let scan = gate.scan(std::slice::from_ref(byte));
            if index == SUBSCRIBE.len() + PINGREQ.len() {
                assert_eq!(scan, Scan::Publish { at: 0 });
                return;
            }
            assert_eq!(scan, Scan::Clear, "byte {index}");
        }
        panic!("the PUBLISH was not found");
    }

    #[test]
    fn skips_bodies_with_multi_byte_lengths() {
        // An UNSUBSCRIBE with a remaining length of 200 (0xc8 0x01); its body is 0x30 bytes.
        let mut packet = vec![0xa2, 0xc8, 0x01];
        packet.extend(std::iter::repeat_n(0x30, 200));
        let mut gate = PublishGate::new();
        assert_eq!(gate.scan(&packet[..100]), Scan::Clear);
        assert_eq!(gate.scan(&packet[100..]), Scan::Clear);
        assert_eq!(gate.scan(&PUBLISH), Scan::Publish { at: 0 });
    }

    #[test]
    fn five_byte_length_is_malformed() {
        let mut gate = PublishGate::new();
        assert_eq!(gate.scan(&[0xc0, 0x80, 0x80, 0x80, 0x80, 0x01]), Scan::Malformed);
    }
}
