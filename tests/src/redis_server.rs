//! A `redis-server` owned by one test: AOF on with `appendfsync always`, on a
//! free loopback port, in a temporary directory, stopped by PID. Fault tests
//! kill and restart it; the machine's shared Redis is never touched.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::OwnedServer;

/// A test-owned redis-server process.
pub struct TestRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> TestRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut r = TestRedis {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl OwnedServer for TestRedis {
    /// Starts the process (again) on the same port and AOF directory and waits
    /// until it answers `PING` (after a restart it loads the AOF first).
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services/redis.sh installs it)");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        for _ in 0..400 {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} did not come up", self.port);
    }

    fn child_slot(&mut self) -> &mut Option<Child> {
        &mut self.child
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
