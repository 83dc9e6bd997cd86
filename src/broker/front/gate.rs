//! The gate: frames the packets a client sends toward the broker. It stops the stream at
//! the first byte of a PUBLISH from a client without the publisher login, at a SUBSCRIBE
//! to a shared subscription from any client, and at any packet over the size limit.
//!
//! It reads each packet's fixed header (type and remaining length), and the body of
//! SUBSCRIBE packets only to look for `$share/`; it never copies or changes bytes, so
//! everything before the stop passes through as the client sent it. rumqttd 0.20's router
//! panics on one SUBSCRIBE whose filters resolve to the same filter, which needs `$share/`,
//! and shared subscriptions serve no client of the embedded broker.

/// Packet type of PUBLISH in the high four bits of the first byte.
const PUBLISH_TYPE: u8 = 3;

/// Packet type of SUBSCRIBE.
const SUBSCRIBE_TYPE: u8 = 8;

/// The prefix of a shared subscription's filter.
const SHARED_PREFIX: &[u8] = b"$share/";

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

/// Where the current packet started: in this chunk at an offset, or in an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PacketStart {
    At(usize),
    Earlier,
}

/// Result of scanning a chunk of the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No PUBLISH starts in the chunk; all of it may pass.
    Clear,
    /// A PUBLISH starts at this offset; the bytes before it may pass, the rest may not.
    Publish { at: usize },
    /// A SUBSCRIBE to a shared subscription; the first `pass` bytes may pass, the rest may
    /// not. A part of it already passed in an earlier chunk never completes a packet.
    SharedSubscription { pass: usize },
    /// A packet whose remaining length is over the limit; the first `pass` bytes may pass,
    /// the rest may not.
    TooLarge { pass: usize },
    /// A remaining length has more than four bytes, so the packet boundaries are lost.
    Malformed,
}

#[derive(Debug)]
pub struct PublishGate {
    position: Position,
    allow_publish: bool,
    /// The largest remaining length a packet may have.
    max_packet_bytes: usize,
    /// Whether the current packet is a SUBSCRIBE, whose body is searched.
    in_subscribe: bool,
    /// Bytes of `SHARED_PREFIX` matched so far in the current SUBSCRIBE body.
    matched: usize,
    packet_start: PacketStart,
}

impl PublishGate {
    /// Creates a gate for a stream that starts at a packet boundary, as after CONNECT;
    /// `allow_publish` is true for a client with the publisher login or when none is set.
    pub fn new(allow_publish: bool, max_packet_bytes: usize) -> PublishGate {
        PublishGate {
            position: Position::PacketStart,
            allow_publish,
            max_packet_bytes,
            in_subscribe: false,
            matched: 0,
            packet_start: PacketStart::Earlier,
        }
    }

    /// Searches `body` of a SUBSCRIBE for `$share/`, across chunk boundaries.
    fn finds_shared_prefix(&mut self, body: &[u8]) -> bool {
        for &byte in body {
            if byte == SHARED_PREFIX[self.matched] {
                self.matched += 1;
                if self.matched == SHARED_PREFIX.len() {
                    return true;
                }
            } else {
                // No proper prefix of "$share/" is also a suffix of it, so a mismatch
                // restarts the match, at this byte if it is the first of the prefix.
                self.matched = usize::from(byte == SHARED_PREFIX[0]);
            }
        }
        false
    }

    /// Bytes of the chunk before the current packet, which may pass when the gate stops
    /// the packet. A part of it already passed in an earlier chunk never completes a packet.
    fn before_packet(&self) -> usize {
        match self.packet_start {
            PacketStart::At(offset) => offset,
            PacketStart::Earlier => 0,
        }
    }

    /// Advances over `chunk`, the next bytes of the stream.
    pub fn scan(&mut self, chunk: &[u8]) -> Scan {
        self.packet_start = PacketStart::Earlier;
        let mut offset = 0;
        while offset < chunk.len() {
            match self.position {
                Position::Body { bytes_left } => {
                    let skipped = bytes_left.min(chunk.len() - offset);
                    if self.in_subscribe && self.finds_shared_prefix(&chunk[offset..offset + skipped]) {
                        return Scan::SharedSubscription { pass: self.before_packet() };
                    }
                    offset += skipped;
                    self.position = match bytes_left - skipped {
                        0 => Position::PacketStart,
                        bytes_left => Position::Body { bytes_left },
                    };
                }
                Position::PacketStart => {
                    let packet_type = chunk[offset] >> 4;
                    if packet_type == PUBLISH_TYPE && !self.allow_publish {
                        return Scan::Publish { at: offset };
                    }
                    self.in_subscribe = packet_type == SUBSCRIBE_TYPE;
                    self.matched = 0;
                    self.packet_start = PacketStart::At(offset);
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
                            too_large if too_large > self.max_packet_bytes => {
                                return Scan::TooLarge { pass: self.before_packet() };
                            }
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

    /// A limit that no packet of these tests but the large one reaches.
    const LIMIT: usize = 1024;

    /// SUBSCRIBE to "a/b" with packet id 1, QoS 0.
    const SUBSCRIBE: [u8; 10] = [0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x00];
    const PINGREQ: [u8; 2] = [0xc0, 0x00];
    /// PUBLISH QoS 0 to "a" with payload "x".
    const PUBLISH: [u8; 6] = [0x30, 0x04, 0x00, 0x01, b'a', b'x'];

    #[test]
    fn passes_subscribe_and_ping() {
        let mut gate = PublishGate::new(false, LIMIT);
        let stream = [&SUBSCRIBE[..], &PINGREQ[..], &SUBSCRIBE[..]].concat();
        assert_eq!(gate.scan(&stream), Scan::Clear);
    }

    #[test]
    fn stops_at_publish_after_other_packets() {
        let mut gate = PublishGate::new(false, LIMIT);
        let stream = [&PINGREQ[..], &SUBSCRIBE[..], &PUBLISH[..]].concat();
        assert_eq!(gate.scan(&stream), Scan::Publish { at: 12 });
    }

    #[test]
    fn publish_byte_in_payload_passes() {
        // A SUBSCRIBE whose topic filter is made of 0x30 bytes.
        let subscribe = [0x82, 0x07, 0x00, 0x01, 0x00, 0x02, 0x30, 0x30, 0x00];
        let mut gate = PublishGate::new(false, LIMIT);
        assert_eq!(gate.scan(&subscribe), Scan::Clear);
        assert_eq!(gate.scan(&PUBLISH), Scan::Publish { at: 0 });
    }

    #[test]
    fn frames_packets_split_at_every_byte() {
        let stream = [&SUBSCRIBE[..], &PINGREQ[..], &PUBLISH[..]].concat();
        let mut gate = PublishGate::new(false, LIMIT);
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
        let mut gate = PublishGate::new(false, LIMIT);
        assert_eq!(gate.scan(&packet[..100]), Scan::Clear);
        assert_eq!(gate.scan(&packet[100..]), Scan::Clear);
        assert_eq!(gate.scan(&PUBLISH), Scan::Publish { at: 0 });
    }

    #[test]
    fn publisher_passes_publish() {
        let mut gate = PublishGate::new(true, LIMIT);
        assert_eq!(gate.scan(&[&PUBLISH[..], &SUBSCRIBE[..]].concat()), Scan::Clear);
    }

    #[test]
    fn shared_subscription_is_stopped_at_its_start() {
        // SUBSCRIBE to "$share/g/a" after a PINGREQ.
        let mut subscribe = vec![0x82, 0x0f, 0x00, 0x01, 0x00, 0x0a];
        subscribe.extend_from_slice(b"$share/g/a");
        subscribe.push(0x00);
        let stream = [&PINGREQ[..], &subscribe[..]].concat();
        assert_eq!(PublishGate::new(true, LIMIT).scan(&stream), Scan::SharedSubscription { pass: 2 });

        let mut gate = PublishGate::new(true, LIMIT);
        let split = PINGREQ.len() + 9;
        assert_eq!(gate.scan(&stream[..split]), Scan::Clear);
        assert_eq!(gate.scan(&stream[split..]), Scan::SharedSubscription { pass: 0 });
    }

    #[test]
    fn share_word_in_publish_payload_passes() {
        let mut publish = vec![0x30, 0x0a, 0x00, 0x01, b'a'];
        publish.extend_from_slice(b"$share/");
        assert_eq!(PublishGate::new(true, LIMIT).scan(&publish), Scan::Clear);
    }

    #[test]
    fn oversized_packet_stops_at_start() {
        // A PUBLISH with a remaining length of 1025 (0x81 0x08), after a PINGREQ.
        let stream = [&PINGREQ[..], &[0x30, 0x81, 0x08, 0x00, 0x01, b'a'][..]].concat();
        assert_eq!(PublishGate::new(true, LIMIT).scan(&stream), Scan::TooLarge { pass: 2 });

        let mut gate = PublishGate::new(true, LIMIT);
        assert_eq!(gate.scan(&stream[..4]), Scan::Clear);
        assert_eq!(gate.scan(&stream[4..]), Scan::TooLarge { pass: 0 });

        let at_limit = [0x30, 0x80, 0x08];
        assert_eq!(PublishGate::new(true, LIMIT).scan(&at_limit), Scan::Clear);
    }

    #[test]
    fn five_byte_length_is_malformed() {
        let mut gate = PublishGate::new(false, LIMIT);
        assert_eq!(gate.scan(&[0xc0, 0x80, 0x80, 0x80, 0x80, 0x01]), Scan::Malformed);
    }
}
