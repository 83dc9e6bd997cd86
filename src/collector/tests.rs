//! Tests of option validation, line reading and address parsing, and end-to-end runs
//! against the fake broker.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use tokio::net::TcpListener;

use super::fake_broker::{start_test_broker, BrokerBehavior};
use super::lines::Line;
use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip in memory");
    encoder.finish().expect("gzip in memory")
}

fn write_file(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}

fn read_all(path: &Path, max_line_bytes: usize) -> Result<Vec<Line>, CollectorError> {
    let mut reader = LineReader::open(path, max_line_bytes)?;
    let mut lines = Vec::new();
    while let Some(line) = reader.next_line()? {
        lines.push(line);
    }
    Ok(lines)
}

fn payload(text: &str) -> Line {
    Line::Payload(text.as_bytes().to_vec())
}

#[test]
fn address_parses_valid_forms() {
    let cases = [
        ("tcp://127.0.0.1:1883", "127.0.0.1", 1883),
        ("mqtt://broker.example:8883", "broker.example", 8883),
        ("tcp://localhost", "localhost", DEFAULT_MQTT_PORT),
        ("MQTT://localhost:1884/", "localhost", 1884),
        ("tcp://[::1]:1885", "[::1]", 1885),
        ("tcp://[::1]", "[::1]", DEFAULT_MQTT_PORT),
    ];
    for (input, host, port) in cases {
        let parsed = BrokerAddress::parse(input);
        assert!(parsed.is_ok(), "{input}: {parsed:?}");
        let parsed = parsed.expect("checked above");
        assert_eq!(parsed.host, host, "{input}");
        assert_eq!(parsed.port, port, "{input}");
    }
}

#[test]
fn address_rejects_invalid_forms() {
    let cases = [
        "127.0.0.1:1883",
        "ssl://127.0.0.1:8883",
        "ws://127.0.0.1:9001",
        "tcp://",
        "tcp://:1883",
        "tcp://host:0",
        "tcp://host:65536",
        "tcp://host:port",
        "tcp://host:",
        "tcp://::1:1883",
        "tcp://[::1",
        "tcp://[::1]1883",
        "tcp://[]:1883",
        "tcp://host:1883/topic",
        "tcp://user@host:1883",
    ];
    for input in cases {
        let parsed = BrokerAddress::parse(input);
        assert!(
            matches!(parsed, Err(CollectorError::InvalidAddress { .. })),
            "{input}: {parsed:?}"
        );
    }
}

#[test]
fn qos_accepts_only_0_and_1() {
    assert_eq!(parse_qos(0).ok(), Some(QoS::AtMostOnce));
    assert_eq!(parse_qos(1).ok(), Some(QoS::AtLeastOnce));
    let error = parse_qos(2).expect_err("QoS 2 is not supported");
    assert!(
        error.to_string().contains("QoS 2 is not supported"),
        "{error}"
    );
    assert!(matches!(parse_qos(3), Err(CollectorError::InvalidQos(3))));
}

#[test]
fn rate_period_accepts_fractions() {
    assert_eq!(rate_period(None).ok(), Some(None));
    assert_eq!(
        rate_period(Some(0.5)).ok(),
        Some(Some(Duration::from_secs(2)))
    );
    assert_eq!(
        rate_period(Some(100.0)).ok(),
        Some(Some(Duration::from_millis(10)))
    );
    assert_eq!(
        rate_period(Some(1e30)).ok(),
        Some(Some(Duration::from_nanos(1)))
    );
}

#[test]
fn rate_period_rejects_invalid() {
    for rate in [
        0.0,
        -1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-300,
    ] {
        assert!(
            matches!(rate_period(Some(rate)), Err(CollectorError::InvalidRate(_))),
            "rate {rate}"
        );
    }
}

#[test]
fn topic_rejects_wildcards_and_empty() {
    assert!(validate_topic("ingest/messages").is_ok());
    for topic in ["", "ingest/#", "ingest/+/x", "in\0gest"] {
        assert!(
            matches!(
                validate_topic(topic),
                Err(CollectorError::InvalidTopic { .. })
            ),
            "{topic:?}"
        );
    }
}

#[test]
fn plain_file_skips_blank_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = b"{\"a\":1}\n\n{\"b\":2}\r\n   \r\n\t\n{\"c\":3}";
    let path = write_file(&dir, "messages.txt", content);

    let lines = read_all(&path, 1024).expect("read plain file");

    let expected = vec![
        payload("{\"a\":1}"),
        Line::Blank,
        payload("{\"b\":2}"),
        Line::Blank,
        Line::Blank,
        payload("{\"c\":3}"),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn payload_keeps_bytes_as_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let content = b"  {\"a\": 1}  \n\xff\xfe not utf-8\n";
    let path = write_file(&dir, "messages.txt", content);

    let lines = read_all(&path, 1024).expect("read plain file");

    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], payload("  {\"a\": 1}  "));
    assert_eq!(lines[1], Line::Payload(b"\xff\xfe not utf-8".to_vec()));
}

#[test]
fn gzip_detected_by_content_not_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let compressed = write_file(&dir, "messages.txt", &gzip(b"{\"a\":1}\n\n{\"b\":2}\n"));
    let plain = write_file(&dir, "messages.txt.gz", b"{\"a\":1}\n");

    let reader = LineReader::open(&compressed, 1024).expect("open gzip file");
    assert!(reader.gzip);
    let lines = read_all(&compressed, 1024).expect("read gzip file");
    assert_eq!(
        lines,
        vec![payload("{\"a\":1}"), Line::Blank, payload("{\"b\":2}")]
    );

    let reader = LineReader::open(&plain, 1024).expect("open plain file");
    assert!(!reader.gzip);
    let lines = read_all(&plain, 1024).expect("read plain file");
    assert_eq!(lines, vec![payload("{\"a\":1}")]);
}

#[test]
fn gzip_reads_every_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The first member ends in the middle of a line, which the next member completes.
    let mut content = gzip(b"{\"a\":1}\n{\"b\"");
    content.extend(gzip(b":2}\n"));
    content.extend(gzip(b"\n{\"c\":3}\n"));
    let path = write_file(&dir, "messages.txt.gz", &content);

    let lines = read_all(&path, 1024).expect("read multi-member gzip");

    let expected = vec![
        payload("{\"a\":1}"),
        payload("{\"b\":2}"),
        Line::Blank,
        payload("{\"c\":3}"),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn gzip_truncated_is_gzip_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = "{\"text\":\"a message long enough to span the compressed stream\"}\n";
    let compressed = gzip(line.repeat(50).as_bytes());
    let path = write_file(&dir, "messages.txt.gz", &compressed[..compressed.len() / 2]);

    let result = read_all(&path, 1024);

    assert!(
        matches!(result, Err(CollectorError::Gzip { .. })),
        "{result:?}"
    );
}

#[test]
fn empty_file_has_no_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "empty.txt", b"");

    let lines = read_all(&path, 1024).expect("read empty file");

    assert!(lines.is_empty());
}

#[test]
fn line_over_max_payload_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fits = write_file(&dir, "fits.txt", b"12345678\r\n");
    let over = write_file(&dir, "over.txt", b"1234\n123456789\n");
    let no_newline = write_file(&dir, "no-newline.txt", &[b'x'; 100]);

    let lines = read_all(&fits, 8).expect("line of exactly the maximum");
    assert_eq!(lines, vec![payload("12345678")]);

    let result = read_all(&over, 8);
    assert!(
        matches!(
            result,
            Err(CollectorError::LineTooLong {
                line: 2,
                max_bytes: 8,
                ..
            })
        ),
        "{result:?}"
    );

    let result = read_all(&no_newline, 8);
    assert!(
        matches!(result, Err(CollectorError::LineTooLong { line: 1, .. })),
        "{result:?}"
    );
}

#[test]
fn missing_file_error_names_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.txt");

    let error = LineReader::open(&path, 1024).err().expect("file is absent");

    assert!(matches!(error, CollectorError::Open { .. }), "{error:?}");
    assert!(error.to_string().contains("absent.txt"), "{error}");
}

fn test_options(file: PathBuf, address: String, qos: u8) -> PublishOptions {
    PublishOptions {
        file,
        address,
        topic: "ingest/messages".to_owned(),
        qos,
        rate: None,
        client_id: Some("collector-test".to_owned()),
    }
}

const TEST_TIMEOUTS: Timeouts = Timeouts {
    stall: Duration::from_secs(2),
    close_grace: Duration::from_secs(1),
};

/// Lines `{"n":0}` to `{"n":count-1}`, with a blank line after every tenth.
fn numbered_lines(count: usize) -> (Vec<u8>, Vec<Vec<u8>>, u64) {
    let mut content = Vec::new();
    let mut payloads = Vec::new();
    let mut blank = 0;
    for n in 0..count {
        let line = format!("{{\"n\":{n}}}");
        content.extend_from_slice(line.as_bytes());
        content.push(b'\n');
        payloads.push(line.into_bytes());
        if n % 10 == 9 {
            content.extend_from_slice(b"\r\n");
            blank += 1;
        }
    }
    (content, payloads, blank)
}

#[tokio::test]
async fn qos1_waits_for_every_puback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (content, expected, blank) = numbered_lines(1000);
    let path = write_file(&dir, "messages.txt.gz", &gzip(&content));
    let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

    let summary = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS)
        .await
        .expect("publish at QoS 1");

    assert_eq!(summary.published, 1000);
    assert_eq!(summary.skipped_blank, blank);
    let log = broker.await.expect("test broker");
    assert!(log.disconnected);
    assert_eq!(log.payloads, expected);
}

#[tokio::test]
async fn qos0_sends_every_line_before_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (content, expected, blank) = numbered_lines(5000);
    let path = write_file(&dir, "messages.txt", &content);
    let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

    let summary = publish_file_with_timeouts(&test_options(path, address, 0), TEST_TIMEOUTS)
        .await
        .expect("publish at QoS 0");

    assert_eq!(summary.published, 5000);
    assert_eq!(summary.skipped_blank, blank);
    let log = broker.await.expect("test broker");
    assert!(log.disconnected);
    assert_eq!(log.payloads.len(), expected.len());
    assert_eq!(log.payloads, expected);
}

#[tokio::test]
async fn connection_refused_returns_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("tcp://{}", listener.local_addr().expect("local address"));
    drop(listener);

    let result = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

    assert!(
        matches!(result, Err(CollectorError::Connection { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn broker_rejection_returns_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n");
    let (address, _broker) =
        start_test_broker(BrokerBehavior::Reject(ConnectReturnCode::NotAuthorized)).await;

    let result = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

    assert!(
        matches!(
            result,
            Err(CollectorError::Rejected {
                code: ConnectReturnCode::NotAuthorized,
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn missing_puback_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "messages.txt", b"{\"a\":1}\n{\"b\":2}\n");
    let (address, _broker) = start_test_broker(BrokerBehavior::NeverAck).await;
    let timeouts = Timeouts {
        stall: Duration::from_millis(300),
        close_grace: Duration::from_millis(300),
    };

    let result = publish_file_with_timeouts(&test_options(path, address, 1), timeouts).await;

    assert!(
        matches!(result, Err(CollectorError::Timeout { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn broker_closing_mid_run_returns_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (content, _, _) = numbered_lines(1000);
    let path = write_file(&dir, "messages.txt", &content);
    let (address, _broker) = start_test_broker(BrokerBehavior::CloseAfter(10)).await;

    let result = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

    assert!(
        matches!(result, Err(CollectorError::Connection { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn read_error_still_delivers_earlier_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (content, expected, _) = numbered_lines(5000);
    let compressed = gzip(&content);
    let path = write_file(&dir, "messages.txt.gz", &compressed[..compressed.len() / 2]);
    let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;

    let result = publish_file_with_timeouts(&test_options(path, address, 1), TEST_TIMEOUTS).await;

    assert!(
        matches!(result, Err(CollectorError::Gzip { .. })),
        "{result:?}"
    );
    let log = broker.await.expect("test broker");
    assert!(log.disconnected);
    assert!(!log.payloads.is_empty());
    assert!(log.payloads.len() < expected.len());
    assert_eq!(log.payloads[..], expected[..log.payloads.len()]);
}

#[tokio::test]
async fn rate_spaces_publishes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(&dir, "messages.txt", b"1\n2\n3\n4\n5\n");
    let (address, broker) = start_test_broker(BrokerBehavior::AckAll).await;
    let mut options = test_options(path, address, 1);
    options.rate = Some(20.0);

    let summary = publish_file_with_timeouts(&options, TEST_TIMEOUTS)
        .await
        .expect("publish with rate");

    // The first tick of an interval is immediate, so five publishes span four periods.
    assert!(summary.elapsed >= Duration::from_millis(200), "{summary:?}");
    assert_eq!(broker.await.expect("test broker").payloads.len(), 5);
}
