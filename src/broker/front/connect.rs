//! The CONNECT packet at the front: read it whole, tell MQTT 3.1.1 from MQTT 5, replace the
//! login, and encode the packets that reject a client.
//!
//! Decoding and encoding are rumqttd's own (`V4`, `V5`), so the broker behind the front reads
//! exactly the fields the front checked.

use bytes::BytesMut;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Login, Packet, Protocol,
};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::Credentials;
use crate::stats::ConnectRejectReason;

/// First byte of a CONNECT packet: type 1, flags 0.
const CONNECT_BYTE: u8 = 0x10;

/// The MQTT version a client speaks, from the protocol level of its CONNECT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Protocol level 4.
    V311,
    /// Protocol level 5.
    V5,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the connection closed before a complete CONNECT packet")]
    ClosedEarly,
    #[error("reading the CONNECT packet failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the first packet is not a CONNECT packet (first byte {0:#04x})")]
    NotConnect(u8),
    #[error("invalid CONNECT packet: {0}")]
    Invalid(rumqttd::protocol::Error),
    #[error("CONNECT packet of {bytes} bytes is over the limit of {max_bytes}")]
    TooLarge { bytes: usize, max_bytes: usize },
    #[error("unsupported protocol '{name}' level {level}; only MQTT 3.1.1 (4) and 5 are served")]
    UnsupportedProtocol { name: String, level: u8 },
}

impl ConnectError {
    pub fn reason(&self) -> ConnectRejectReason {
        match self {
            ConnectError::ClosedEarly | ConnectError::Io(_) => ConnectRejectReason::ClosedEarly,
            ConnectError::NotConnect(_) | ConnectError::Invalid(_) => ConnectRejectReason::Malformed,
            ConnectError::TooLarge { .. } => ConnectRejectReason::TooLarge,
            ConnectError::UnsupportedProtocol { .. } => ConnectRejectReason::UnsupportedProtocol,
        }
    }
}

/// A decoded CONNECT packet and whatever the client sent after it in the same reads.
#[derive(Debug)]
pub struct ClientConnect {
    pub version: Version,
    packet: Packet,
    /// Bytes after the CONNECT packet; they belong to the client's next packets.
    pub rest: BytesMut,
}

impl ClientConnect {
    pub fn client_id(&self) -> &str {
        match &self.packet {
            Packet::Connect(connect, ..) => &connect.client_id,
            _ => "",
        }
    }

    pub fn login(&self) -> Option<&Login> {
        match &self.packet {
            Packet::Connect(.., login) => login.as_ref(),
            _ => None,
        }
    }

    /// Whether the client set a will message, which the broker publishes on its behalf.
    pub fn has_will(&self) -> bool {
        matches!(&self.packet, Packet::Connect(_, _, Some(_), ..))
    }

    /// Encodes the CONNECT packet with `login` in place of the client's login, and returns
    /// it with the bytes that followed it.
    pub fn into_bytes_with_login(self, login: &Credentials) -> Result<(BytesMut, BytesMut), ConnectError> {
        let Packet::Connect(connect, properties, will, will_properties, _) = self.packet else {
            return Err(ConnectError::Invalid(rumqttd::protocol::Error::InvalidProtocol));
        };
        let login = Login {
            username: login.username.clone(),
            password: login.password.clone(),
        };
        let packet = Packet::Connect(connect, properties, will, will_properties, Some(login));

        let mut bytes = BytesMut::new();
        encode(self.version, packet, &mut bytes).map_err(ConnectError::Invalid)?;
        Ok((bytes, self.rest))
    }
}

/// Reads one CONNECT packet of at most `max_bytes`, rejecting anything else as soon as its
/// first bytes show it, so garbage never waits for the timeout.
pub async fn read_connect<R>(stream: &mut R, max_bytes: usize) -> Result<ClientConnect, ConnectError>
where
    R: AsyncRead + Unpin,
{
    let mut buffer = BytesMut::with_capacity(256);

    let (header_bytes, remaining_bytes) = loop {
        if let Some(header) = parse_fixed_header(&buffer)? {
            break header;
        }
        read_more(stream, &mut buffer, 1).await?;
    };

    let frame_bytes = header_bytes + remaining_bytes;
    if frame_bytes > max_bytes {
        return Err(ConnectError::TooLarge {
            bytes: frame_bytes,
            max_bytes,
        });
    }
    while buffer.len() < frame_bytes {
        let missing = frame_bytes - buffer.len();
        read_more(stream, &mut buffer, missing).await?;
    }

    let version = protocol_version(&buffer[header_bytes..frame_bytes])?;
    // `read_mut` splits the frame off the front of `buffer`, so what stays is the rest.
    let packet = match version {
        Version::V311 => V4.read_mut(&mut buffer, max_bytes),
        Version::V5 => V5.read_mut(&mut buffer, max_bytes),
    }
    .map_err(ConnectError::Invalid)?;

    Ok(ClientConnect {
        version,
        packet,
        rest: buffer,
    })
}

async fn read_more<R>(stream: &mut R, buffer: &mut BytesMut, wanted: usize) -> Result<(), ConnectError>
where
    R: AsyncRead + Unpin,
{
    buffer.reserve(wanted.max(256));
    if stream.read_buf(buffer).await? == 0 {
        return Err(ConnectError::ClosedEarly);
    }
    Ok(())
}

/// Returns the fixed header's length and the remaining length, or `None` while more bytes
/// are needed.
fn parse_fixed_header(buffer: &[u8]) -> Result<Option<(usize, usize)>, ConnectError> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    if first != CONNECT_BYTE {
        return Err(ConnectError::NotConnect(first));
    }

    // The remaining length is a variable byte integer of one to four bytes.
    let mut remaining = 0usize;
    for (index, byte) in buffer.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((index + 2, remaining)));
        }
    }
    if buffer.len() >= 5 {
        return Err(ConnectError::Invalid(rumqttd::protocol::Error::MalformedRemainingLength));
    }
    Ok(None)
}

/// Reads the protocol name and level at the start of the variable header.
fn protocol_version(variable_header: &[u8]) -> Result<Version, ConnectError> {
    let malformed = || ConnectError::Invalid(rumqttd::protocol::Error::MalformedPacket);
    let [high, low, rest @ ..] = variable_header else {
        return Err(malformed());
    };
    let name_bytes = usize::from(u16::from_be_bytes([*high, *low]));
    let name = rest.get(..name_bytes).ok_or_else(malformed)?;
    let level = *rest.get(name_bytes).ok_or_else(malformed)?;

    match (name, level) {
        (b"MQTT", 4) => Ok(Version::V311),
        (b"MQTT", 5) => Ok(Version::V5),
        // MQTT 3.1 names itself "MQIsdp"; rumqttd 0.20 decodes only "MQTT" at level 4 or 5.
        (b"MQTT" | b"MQIsdp", _) => Err(ConnectError::UnsupportedProtocol {
            name: String::from_utf8_lossy(name).into_owned(),
            level,
        }),
        _ => Err(ConnectError::Invalid(rumqttd::protocol::Error::InvalidProtocol)),
    }
}

/// Encodes the CONNACK that gives a client the reason it was rejected, or `None` when the reason
/// gets no CONNACK: a client whose first packet was no valid CONNECT is only disconnected.
///
/// `version` is `None` when the protocol level is unknown. An unsupported level is answered
/// with the MQTT 3.1.1 layout and return code 1, as MQTT 3.1.1 requires and MQTT 3.1 reads.
pub fn encode_rejection(version: Option<Version>, reason: ConnectRejectReason) -> Option<BytesMut> {
    let (layout, code) = rejection_code(version, reason)?;
    let packet = Packet::ConnAck(
        ConnAck {
            session_present: false,
            code,
        },
        None,
    );
    let mut bytes = BytesMut::new();
    encode(layout, packet, &mut bytes).ok()?;
    Some(bytes)
}

/// The layout and return code of a rejecting CONNACK. rumqttd panics when asked to encode
/// a return code that the version lacks, so each arm pairs a code with its version.
fn rejection_code(version: Option<Version>, reason: ConnectRejectReason) -> Option<(Version, ConnectReturnCode)> {
    use ConnectRejectReason as Reason;

    match (version, reason) {
        (_, Reason::UnsupportedProtocol) => Some((Version::V311, ConnectReturnCode::RefusedProtocolVersion)),
        (Some(version), Reason::BadCredentials) => Some((version, ConnectReturnCode::BadUserNamePassword)),
        (Some(version), Reason::NotAuthorized | Reason::WillNotAuthorized) => {
            Some((version, ConnectReturnCode::NotAuthorized))
        }
        (Some(Version::V311), Reason::BrokerUnavailable) => {
            Some((Version::V311, ConnectReturnCode::ServiceUnavailable))
        }
        (Some(Version::V5), Reason::BrokerUnavailable) => Some((Version::V5, ConnectReturnCode::ServerUnavailable)),
        _ => None,
    }
}

/// The MQTT 5 DISCONNECT with reason 0x87 (not authorized) and an empty property list.
///
/// It is written by hand because rumqttd 0.20 encodes this packet with a remaining length of
/// 1 followed by two bytes. The shorter valid form without the property length is not used
/// either, because the decoders of rumqttd 0.20 and rumqttc 0.24 reject it.
pub const NOT_AUTHORIZED_DISCONNECT: [u8; 4] = [0xe0, 0x02, 0x87, 0x00];

/// The MQTT 5 DISCONNECT with reason 0x95 (packet too large), in the form of
/// [`NOT_AUTHORIZED_DISCONNECT`].
pub const PACKET_TOO_LARGE_DISCONNECT: [u8; 4] = [0xe0, 0x02, 0x95, 0x00];

fn encode(version: Version, packet: Packet, bytes: &mut BytesMut) -> Result<usize, rumqttd::protocol::Error> {
    match version {
        Version::V311 => V4.write(packet, bytes),
        Version::V5 => V5.write(packet, bytes),
    }
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
