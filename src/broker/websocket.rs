//! MQTT over WebSocket: each WebSocket connection is bridged to the broker's MQTT TCP
//! listener, binary frames one way and TCP bytes the other.
//!
//! rumqttd 0.20 runs the WebSocket handshake inside its accept loop with no time limit,
//! so one client that connects and sends nothing stops every later WebSocket client from
//! connecting. Here each connection does its handshake in a task of its own, under
//! `HANDSHAKE_TIMEOUT`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::BrokerError;

/// Time a new connection has to finish the WebSocket upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the broker per WebSocket frame at most.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// Subprotocol names MQTT clients offer: `mqtt` (MQTT 3.1.1 and 5) and `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Binds `address` and bridges every WebSocket connection to the MQTT listener at
/// `broker`; returns the bound address and the accept task.
pub async fn start(address: SocketAddr, broker: SocketAddr) -> Result<(SocketAddr, JoinHandle<()>), BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        name: "mqtt_ws",
        address,
        source,
    };
    let listener = TcpListener::bind(address).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let task = tokio::spawn(accept_loop(listener, broker));
    Ok((bound, task))
}

async fn accept_loop(listener: TcpListener, broker: SocketAddr) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause; it passes as
                // connections close, so back off instead of spinning.
                tracing::warn!(%error, "cannot accept an MQTT over WebSocket connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(error) = bridge(socket, broker).await {
                tracing::debug!(%peer, %error, "MQTT over WebSocket connection ended");
            }
        });
    }
}

#[derive(Debug, thiserror::Error)]
enum BridgeError {
    #[error("WebSocket handshake timed out")]
    HandshakeTimeout,
    #[error("WebSocket error: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("broker connection failed: {0}")]
    Broker(#[from] std::io::Error),
    #[error("text frame received; MQTT over WebSocket uses binary frames")]
    TextFrame,
}

/// Carries one client's MQTT bytes between its WebSocket and a TCP connection to the
/// broker until either side closes.
async fn bridge(socket: TcpStream, broker: SocketAddr) -> Result<(), BridgeError> {
    let handshake = tokio_tungstenite::accept_hdr_async(socket, choose_subprotocol);
    let websocket = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| BridgeError::HandshakeTimeout)??;
    let upstream = TcpStream::connect(broker).await?;
    upstream.set_nodelay(true)?;

    let (mut to_client, mut from_client) = websocket.split();
    let (mut from_broker, mut to_broker) = upstream.into_split();

    let client_to_broker = async {
        while let Some(message) = from_client.next().await {
            match message? {
                Message::Binary(bytes) => to_broker.write_all(&bytes).await?,
                Message::Text(_) => return Err(BridgeError::TextFrame),
                Message::Close(_) => break,
                // tungstenite replies to pings itself; pongs and raw frames carry no MQTT.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        to_broker.shutdown().await?;
        Ok(())
    };
    let broker_to_client = async {
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        loop {
            let read = from_broker.read(&mut buffer).await?;
            if read == 0 {
                to_client.send(Message::Close(None)).await?;
                return Ok(());
            }
            to_client.send(Message::Binary(buffer[..read].to_vec())).await?;
        }
    };

    // Whichever side ends first ends the bridge; dropping the other closes its socket.
    tokio::select! {
        result = client_to_broker => result,
        result = broker_to_client => result,
    }
}

/// Accepts the upgrade with the first MQTT subprotocol the client offers: `mqtt`, or
/// `mqttv3.1` from MQTT 3.1 clients. Browsers fail a WebSocket whose server picks a
/// subprotocol they did not offer, and a client that offers none gets no header.
fn choose_subprotocol(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|name| SUBPROTOCOLS.contains(name));
    if let Some(name) = offered {
        if let Ok(value) = HeaderValue::from_str(name) {
            response.headers_mut().insert("sec-websocket-protocol", value);
        }
    }
    Ok(response)
}
