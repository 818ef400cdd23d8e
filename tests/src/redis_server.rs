//! A `redis-server` owned by one test: AOF on with `appendfsync always`, on a
//! free loopback port, in a temporary directory, stopped by PID. Fault tests
//! kill and restart it; the machine's shared Redis is never touched.
//! [`TestRedis::start_tls`] starts one that speaks only TLS, demands client
//! certificates and knows one ACL user.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::pki::ServerFiles;
use crate::OwnedServer;

/// A test-owned redis-server process.
pub struct TestRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<TlsSetup>,
}

struct TlsSetup {
    files: ServerFiles,
    user: String,
    password: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl TestRedis {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> TestRedis {
        let mut r = TestRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            tls: None,
        };
        r.spawn();
        r
    }

    /// Starts a server with no plaintext port: TLS only on a free port
    /// (`--tls-auth-clients yes`, clients need a certificate signed by
    /// `files.ca`), the `default` user disabled and one ACL user `user`
    /// with `password` allowed everything. Waits until the port accepts.
    pub fn start_tls(files: ServerFiles, user: &str, password: &str) -> TestRedis {
        let mut r = TestRedis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            tls: Some(TlsSetup {
                files,
                user: user.into(),
                password: password.into(),
            }),
        };
        r.spawn();
        r
    }

    /// The port it listens on (TLS only for [`start_tls`](Self::start_tls)).
    pub fn port(&self) -> u16 {
        self.port
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
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"]);
            }
            Some(t) => {
                // 127.0.0.2 too: an address the certificate does not name.
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--bind", "127.0.0.1", "127.0.0.2"])
                    .arg("--tls-cert-file")
                    .arg(&t.files.cert)
                    .arg("--tls-key-file")
                    .arg(&t.files.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.files.ca)
                    .args(["--tls-auth-clients", "yes"])
                    .args(["--user", "default", "off"])
                    .args(["--user", &t.user, "on", &format!(">{}", t.password)])
                    .args(["~*", "&*", "+@all"]);
            }
        }
        let child = cmd
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/services/redis.sh installs it)");
        self.child = Some(child);
        if self.tls.is_some() {
            // Speaking TLS here would duplicate what the tests check; an
            // accepting port is enough (the server listens once loaded).
            for _ in 0..400 {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            panic!("redis-server (tls) on port {} did not come up", self.port);
        }
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
