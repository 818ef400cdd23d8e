//! A tansu broker owned by one test, on its persistent SQLite storage engine
//! (`sqlite://`, a database file in a temporary directory), on a free
//! loopback port, stopped by PID. The broker-restart fault test kills it
//! with SIGKILL and starts it again on the same port and database; the
//! shared broker of `scripts/dev-services up` is never touched.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::OwnedServer;

/// A test-owned tansu broker process.
pub struct TestTansu {
    bin: String,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestTansu {
    /// Starts a broker from the binary at `bin` (`AGENTSCALE_TANSU_BIN`) and
    /// waits until it accepts connections.
    pub fn start(bin: &str) -> TestTansu {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut t = TestTansu {
            bin: bin.to_string(),
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        t.spawn();
        t
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl OwnedServer for TestTansu {
    /// Starts the process (again) on the same port and database file and
    /// waits until the port accepts connections.
    fn spawn(&mut self) {
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .expect("tansu log file");
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &listener])
            // Relative to the working directory: <tempdir>/tansu.db.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("start tansu at {}: {e}", self.bin));
        self.child = Some(child);
        let give_up = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("tansu exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < give_up,
                "tansu on port {} did not come up; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn child_slot(&mut self) -> &mut Option<Child> {
        &mut self.child
    }
}

impl Drop for TestTansu {
    fn drop(&mut self) {
        self.kill();
    }
}
