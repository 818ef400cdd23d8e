//! A Triton server (pytriton, `scripts/triton/serve.py`) owned by one test,
//! on free loopback ports, optionally serving gRPC over TLS, killed with its
//! whole process group (serve.py, tritonserver, the model stubs).

use std::time::Duration;

use agentscale_infer::{TlsConfig, TritonClient};

/// PEM certificate and key the server presents (TLS on its gRPC port).
#[derive(Clone)]
pub struct ServerTls {
    /// Server certificate (PEM).
    pub cert_pem: String,
    /// Server private key (PEM).
    pub key_pem: String,
}

/// A test-owned Triton process group.
pub struct TritonReplica {
    pgid: u32,
    url: String,
    client: TritonClient,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// This process's process group id (field 5 of /proc/self/stat).
fn own_pgid() -> u32 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = stat.rsplit_once(')').expect("stat format").1;
    rest.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .expect("pgid")
}

/// SIGKILLs the whole process group `pgid` in one kill(2) call, as a crash
/// of the machine would: killing its processes one by one let tritonserver
/// outlive its model stub and answer `NotFound` for a while. Uses bash's
/// builtin `kill` (the procps-ng 4.0 `kill` binary misreads negative pids).
fn kill_group(pgid: u32) {
    assert_ne!(pgid, own_pgid(), "refusing to kill the test's own process group");
    assert!(pgid > 1);
    let _ = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("kill -KILL -- -{pgid}"))
        .status();
}

impl TritonReplica {
    /// Starts serve.py with the venv's `python` serving `models` (comma
    /// separated), over TLS when `tls` is given (the server's certificate
    /// and how clients verify it), and waits until the server and every
    /// model are ready (start-up takes 10–40 s here). Start-up sometimes
    /// fails under load (a model stub misses pytriton's handshake and the
    /// server exits), as scripts/services/triton.sh also sees: a failed
    /// start is retried on fresh ports, three attempts in all.
    pub async fn start(python: &str, models: &str, tls: Option<(&ServerTls, TlsConfig)>) -> TritonReplica {
        let mut why = String::new();
        for attempt in 1..=3 {
            match Self::try_start(python, models, tls.clone()).await {
                Ok(replica) => return replica,
                Err(e) => {
                    eprintln!("Triton replica start attempt {attempt} failed");
                    why = e;
                }
            }
        }
        panic!("Triton replica did not start in 3 attempts; last log: {why}");
    }

    async fn try_start(
        python: &str,
        models: &str,
        tls: Option<(&ServerTls, TlsConfig)>,
    ) -> Result<TritonReplica, String> {
        let (g, h, m) = (free_port(), free_port(), free_port());
        let dir = tempfile::tempdir().expect("tempdir");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/triton/serve.py");
        let log_path = dir.path().join("triton.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script).args([
            "--grpc-port",
            &g.to_string(),
            "--http-port",
            &h.to_string(),
            "--metrics-port",
            &m.to_string(),
            "--models",
            models,
        ]);
        let (url, builder) = match &tls {
            None => {
                let url = format!("http://127.0.0.1:{g}");
                (url.clone(), TritonClient::builder(url))
            }
            Some((server, client)) => {
                let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
                std::fs::write(&cert, &server.cert_pem).expect("write cert");
                std::fs::write(&key, &server.key_pem).expect("write key");
                cmd.arg("--tls-cert").arg(&cert).arg("--tls-key").arg(&key);
                let url = format!("https://localhost:{g}");
                (url.clone(), TritonClient::builder(url).tls(client.clone()))
            }
        };
        let child = cmd
            .process_group(0)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start serve.py");
        let pgid = child.id().expect("pid");
        let client = builder.build().expect("client");
        let models: Vec<&str> = models.split(',').filter(|m| !m.is_empty()).collect();
        let mut replica = TritonReplica {
            pgid,
            url,
            client,
            _dir: dir,
            _child: child,
        };
        for _ in 0..1800 {
            let mut ready = replica.client.server_ready().await.unwrap_or(false);
            for m in &models {
                ready = ready && replica.client.model_ready(m, "").await.unwrap_or(false);
            }
            if ready {
                return Ok(replica);
            }
            if let Ok(Some(status)) = replica._child.try_wait() {
                // Dropping the replica kills what is left of its group.
                return Err(format!(
                    "exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "not ready after 180 s: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        ))
    }

    /// The gRPC URL (`http://127.0.0.1:<port>`, or `https://localhost:<port>` with TLS).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A client of this replica (with the TLS settings it was started with).
    pub fn client(&self) -> &TritonClient {
        &self.client
    }

    /// SIGKILL the whole process group.
    pub fn kill(&self) {
        kill_group(self.pgid);
    }
}

impl Drop for TritonReplica {
    fn drop(&mut self) {
        kill_group(self.pgid);
    }
}
