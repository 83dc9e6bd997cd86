//! Start-up: ports that cannot be bound stop the server with an error naming the listener.

use lokstream::broker::BrokerError;
use lokstream::config::Config;
use lokstream::server::{self, ServerError};

fn config_with(overrides: &[(&str, &str)]) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().to_str().unwrap().to_string();
    let mut settings = vec![
        ("bind.address", "127.0.0.1"),
        ("port.http", "0"),
        ("mqtt.port", "0"),
        ("mqtt.ws.port", "0"),
        ("dump.dir", dump.as_str()),
    ];
    settings.extend_from_slice(overrides);
    (Config::with_overrides(&settings).unwrap(), dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_port_in_use_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (config, _dir) = config_with(&[("mqtt.port", &port)]);

    let error = server::start(config).await.err().expect("start-up must fail");
    assert!(
        matches!(error, ServerError::Broker(BrokerError::Bind { name: "mqtt", .. })),
        "unexpected error: {error}"
    );
    assert!(error.to_string().contains(&port), "the message names the address: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_in_use_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (config, _dir) = config_with(&[("mqtt.ws.port", &port)]);

    let error = server::start(config).await.err().expect("start-up must fail");
    assert!(
        matches!(error, ServerError::Broker(BrokerError::Bind { name: "mqtt_ws", .. })),
        "unexpected error: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_port_in_use_fails_start_up() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (config, _dir) = config_with(&[("port.http", &port)]);

    let error = server::start(config).await.err().expect("start-up must fail");
    assert!(matches!(error, ServerError::BindHttp { .. }), "unexpected error: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_ports_are_reported() {
    let (config, _dir) = config_with(&[]);
    let server = server::start(config).await.unwrap();
    assert_ne!(server.http_address.port(), 0);
    assert_ne!(server.mqtt_address().unwrap().port(), 0);
    assert_eq!(server.mqtt_ws_address(), None, "mqtt.ws.port = 0 turns WebSocket off");

    let status: serde_json::Value = reqwest::get(format!("http://{}/api/status.json", server.http_address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["addresses"]["mqtt"], server.mqtt_address().unwrap().to_string());
    server.shutdown().await;
}
