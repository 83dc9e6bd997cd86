//! Minimal MQTT 3.1.1 broker on 127.0.0.1 that the collector tests publish to.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{self as packets, Packet};
use rumqttc::{ConnectReturnCode, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::mqtt::MAX_PACKET_BYTES;

/// Behavior of the test broker towards its client.
#[derive(Debug, Clone, Copy)]
pub(super) enum BrokerBehavior {
    /// Accepts the connection and acknowledges every QoS 1 publish.
    AckAll,
    /// Rejects CONNECT with this CONNACK return code.
    Reject(ConnectReturnCode),
    /// Accepts the connection but never sends PUBACK.
    NeverAck,
    /// Closes the connection after receiving this many publishes.
    CloseAfter(usize),
}

/// Payloads the test broker received on its one connection.
#[derive(Debug, Default)]
pub(super) struct BrokerLog {
    pub(super) payloads: Vec<Vec<u8>>,
    /// Whether the client ended the connection with DISCONNECT.
    pub(super) disconnected: bool,
}

/// Minimal MQTT 3.1.1 broker for one connection on 127.0.0.1, returning its log when
/// the connection ends.
pub(super) async fn start_test_broker(behavior: BrokerBehavior) -> (String, JoinHandle<BrokerLog>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind test broker");
    let address = format!("tcp://{}", listener.local_addr().expect("local address"));

    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut input = BytesMut::new();
        let mut log = BrokerLog::default();
        loop {
            let packet = match packets::read(&mut input, MAX_PACKET_BYTES) {
                Ok(packet) => packet,
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    if socket.read_buf(&mut input).await.unwrap_or(0) == 0 {
                        return log;
                    }
                    continue;
                }
                Err(error) => panic!("test broker read an invalid packet: {error:?}"),
            };

            let mut output = BytesMut::new();
            match packet {
                Packet::Connect(_) => {
                    let code = match behavior {
                        BrokerBehavior::Reject(code) => code,
                        _ => ConnectReturnCode::Success,
                    };
                    packets::ConnAck::new(code, false)
                        .write(&mut output)
                        .expect("connack");
                }
                Packet::Publish(publish) => {
                    log.payloads.push(publish.payload.to_vec());
                    if let BrokerBehavior::CloseAfter(count) = behavior {
                        if log.payloads.len() >= count {
                            return log;
                        }
                    }
                    let ack = matches!(behavior, BrokerBehavior::AckAll);
                    if ack && publish.qos == QoS::AtLeastOnce {
                        packets::PubAck::new(publish.pkid)
                            .write(&mut output)
                            .expect("puback");
                    }
                }
                Packet::PingReq => {
                    packets::PingResp.write(&mut output).expect("pingresp");
                }
                Packet::Disconnect => {
                    log.disconnected = true;
                    return log;
                }
                other => panic!("test broker got an unexpected packet: {other:?}"),
            }
            if !output.is_empty() && socket.write_all(&output).await.is_err() {
                return log;
            }
        }
    });
    (address, task)
}
