//! A real Mosquitto broker for tests, started on a free loopback port.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub address: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts Mosquitto, or returns `None` (after printing why) when it is not installed.
    pub fn start() -> Option<Mosquitto> {
        if Command::new("mosquitto").arg("-h").output().is_err() {
            eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
            return None;
        }
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);

        let dir = tempfile::tempdir().unwrap();
        let mut broker = Mosquitto {
            address,
            child: None,
            dir,
        };
        broker.launch();
        Some(broker)
    }

    /// Starts the process again on the same port, after `stop`.
    pub fn restart(&mut self) {
        self.launch();
    }

    /// Kills the broker, as a crash or an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Mosquitto queues at most 1,000 messages per subscriber by default and drops the rest
    /// when a subscriber is slower than a publisher; a test publishing the whole corpus at
    /// once needs more.
    fn launch(&mut self) {
        let config = self.dir.path().join("mosquitto.conf");
        let text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nlog_dest stderr\nlog_type error\n",
            self.address.port()
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        wait_for_port(self.address, self.dir.path());
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until the port accepts connections: a process start has no event to await.
fn wait_for_port(address: SocketAddr, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen on {address} (config in {})", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}
