//! Running the built `agentscale` binary, and finding the services.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use agentscale_testkit::{is_ci, service_env};

/// The service URL in `var`; `None` (skip) outside CI when it is unset, a
/// panic under `CI=true`.
pub fn service(var: &str) -> Option<String> {
    match service_env(var) {
        Ok(v) => Some(v),
        Err(e) if is_ci() => panic!("{e}"),
        Err(e) => {
            eprintln!("skipping: {e}");
            None
        }
    }
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// stdout as JSON (panics with the output when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }

    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }
}

/// Runs `agentscale args…` with `stdin` as its standard input and a clean
/// environment for the variables it reads.
pub fn agentscale(args: &[&str], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentscale"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in [
        "AGENTSCALE_BACKEND",
        "AGENTSCALE_QUEUE",
        "AGENTSCALE_KEY_PREFIX",
        "AGENTSCALE_KAFKA_GROUP",
        "AGENTSCALE_LOG",
    ] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().expect("spawn agentscale");
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait agentscale");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
