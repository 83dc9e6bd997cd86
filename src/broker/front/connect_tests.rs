use bytes::Bytes;
use rumqttd::protocol::{Connect, LastWill, QoS};
use tokio::io::AsyncWriteExt;

use super::*;

fn connect_bytes(version: Version, login: Option<(&str, &str)>, will: bool) -> BytesMut {
    let connect = Connect {
        keep_alive: 30,
        client_id: "device-1".into(),
        clean_session: true,
    };
    let will = will.then(|| LastWill {
        topic: Bytes::from_static(b"devices/device-1/status"),
        message: Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
    });
    let login = login.map(|(username, password)| Login {
        username: username.into(),
        password: password.into(),
    });
    let mut bytes = BytesMut::new();
    encode(version, Packet::Connect(connect, None, will, None, login), &mut bytes).unwrap();
    bytes
}

async fn read(bytes: &[u8]) -> Result<ClientConnect, ConnectError> {
    let mut stream = bytes;
    read_connect(&mut stream, 4096).await
}

#[tokio::test]
async fn reads_both_versions_and_keeps_the_rest() {
    for version in [Version::V311, Version::V5] {
        let mut bytes = connect_bytes(version, Some(("alice", "pw")), false);
        bytes.extend_from_slice(&[0xc0, 0x00]);

        let connect = read(&bytes).await.unwrap();
        assert_eq!(connect.version, version);
        assert_eq!(connect.client_id(), "device-1");
        assert_eq!(connect.login().map(|login| login.username.as_str()), Some("alice"));
        assert!(!connect.has_will());
        assert_eq!(&connect.rest[..], &[0xc0, 0x00], "the PINGREQ after CONNECT is kept");
    }
}

#[tokio::test]
async fn reads_connect_that_arrives_byte_by_byte() {
    let bytes = connect_bytes(Version::V5, None, true);
    let (mut client, mut server) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for byte in bytes {
            client.write_all(&[byte]).await.unwrap();
        }
        client
    });

    let connect = read_connect(&mut server, 4096).await.unwrap();
    assert_eq!(connect.version, Version::V5);
    assert!(connect.has_will());
    assert!(connect.login().is_none());
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn rejects_garbage_at_the_first_byte() {
    let error = read(b"GET / HTTP/1.1\r\n\r\n").await.unwrap_err();
    assert!(matches!(error, ConnectError::NotConnect(b'G')), "{error}");
    assert_eq!(error.reason(), ConnectRejectReason::Malformed);
}

#[tokio::test]
async fn rejects_mqtt_3_1_as_unsupported() {
    // CONNECT of MQTT 3.1: protocol name "MQIsdp", level 3, clean session, keep-alive 30.
    let mut bytes = vec![0x10, 0x12, 0x00, 0x06];
    bytes.extend_from_slice(b"MQIsdp");
    bytes.extend_from_slice(&[0x03, 0x02, 0x00, 0x1e, 0x00, 0x04]);
    bytes.extend_from_slice(b"old1");

    let error = read(&bytes).await.unwrap_err();
    assert!(
        matches!(&error, ConnectError::UnsupportedProtocol { name, level: 3 } if name == "MQIsdp"),
        "{error}"
    );
    assert_eq!(error.reason(), ConnectRejectReason::UnsupportedProtocol);
}

#[tokio::test]
async fn rejects_oversized_connect_before_reading_it() {
    // Remaining length 16,384 (0x80 0x80 0x01), and no body at all.
    let error = read(&[0x10, 0x80, 0x80, 0x01]).await.unwrap_err();
    assert!(matches!(error, ConnectError::TooLarge { bytes: 16_388, max_bytes: 4096 }), "{error}");
}

#[tokio::test]
async fn rejects_remaining_length_of_five_bytes() {
    let error = read(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).await.unwrap_err();
    assert_eq!(error.reason(), ConnectRejectReason::Malformed, "{error}");
}

#[tokio::test]
async fn reports_truncated_connect_as_closed_early() {
    let bytes = connect_bytes(Version::V311, None, false);
    let error = read(&bytes[..bytes.len() - 3]).await.unwrap_err();
    assert!(matches!(error, ConnectError::ClosedEarly), "{error}");
}

#[tokio::test]
async fn login_is_replaced_and_will_kept() {
    let internal = Credentials {
        username: "internal".into(),
        password: "hidden".into(),
    };
    for version in [Version::V311, Version::V5] {
        let mut bytes = connect_bytes(version, Some(("alice", "pw")), true);
        bytes.extend_from_slice(&[0xc0, 0x00]);
        let connect = read(&bytes).await.unwrap();

        let (rewritten, rest) = connect.into_bytes_with_login(&internal).unwrap();
        assert_eq!(&rest[..], &[0xc0, 0x00]);
        let decoded = read(&rewritten).await.unwrap();
        assert_eq!(decoded.version, version);
        assert_eq!(decoded.client_id(), "device-1");
        assert!(decoded.has_will(), "the will survives the rewrite");
        let login = decoded.login().expect("a login is set");
        assert_eq!(login.username, "internal");
        assert_eq!(login.password, "hidden");
    }
}

#[test]
fn every_rejection_encodes_without_panicking() {
    for version in [None, Some(Version::V311), Some(Version::V5)] {
        for reason in ConnectRejectReason::ALL {
            let _ = encode_rejection(version, reason);
        }
    }
}

#[test]
fn rejections_carry_the_code_of_the_version() {
    let v311 = encode_rejection(Some(Version::V311), ConnectRejectReason::BadCredentials).unwrap();
    assert_eq!(&v311[..], &[0x20, 0x02, 0x00, 0x04]);
    let v311 = encode_rejection(Some(Version::V311), ConnectRejectReason::NotAuthorized).unwrap();
    assert_eq!(&v311[..], &[0x20, 0x02, 0x00, 0x05]);
    let unknown = encode_rejection(None, ConnectRejectReason::UnsupportedProtocol).unwrap();
    assert_eq!(&unknown[..], &[0x20, 0x02, 0x00, 0x01]);

    // MQTT 5: flags, reason code, and an empty property list.
    let v5 = encode_rejection(Some(Version::V5), ConnectRejectReason::NotAuthorized).unwrap();
    assert_eq!(&v5[..], &[0x20, 0x03, 0x00, 0x87, 0x00]);
    let v5 = encode_rejection(Some(Version::V5), ConnectRejectReason::BadCredentials).unwrap();
    assert_eq!(&v5[..], &[0x20, 0x03, 0x00, 0x86, 0x00]);

    assert!(encode_rejection(Some(Version::V5), ConnectRejectReason::Malformed).is_none());
    assert!(encode_rejection(None, ConnectRejectReason::Timeout).is_none());
}

#[test]
fn not_authorized_disconnect_decodes_as_one_packet() {
    let mut bytes = BytesMut::from(&NOT_AUTHORIZED_DISCONNECT[..]);
    let packet = V5.read_mut(&mut bytes, 16).unwrap();
    assert!(
        matches!(&packet, Packet::Disconnect(disconnect, _) if disconnect.reason_code == rumqttd::protocol::DisconnectReasonCode::NotAuthorized),
        "{packet:?}"
    );
    assert!(bytes.is_empty(), "no bytes after the packet: {bytes:?}");
}
