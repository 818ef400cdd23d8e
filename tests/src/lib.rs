//! Cross-crate test support: server launchers for fault tests. The
//! conformance suites every backend runs live in the publishable
//! `agentscale-testkit` crate; the targets `local_queue`, `redis_queue`,
//! `kafka_queue`, `local_state` and `redis_state` run them.
#![forbid(unsafe_code)]
#![allow(missing_docs)]

pub mod net_cut;
pub mod openai_server;
pub mod orchestration_suite;
pub mod pg_server;
pub mod pki;
pub mod redis_fixture;
pub mod redis_server;
pub mod semantic;
pub mod tansu_server;
pub mod triton_replica;

/// A server process one test owns (a redis-server with AOF, a tansu broker
/// with SQLite storage): started on its own port and storage, and killed
/// and restarted by fault tests.
pub trait OwnedServer {
    /// Starts the process (again, on the same port and storage) and waits
    /// until it serves.
    fn spawn(&mut self);

    /// Where the running process is kept.
    fn child_slot(&mut self) -> &mut Option<std::process::Child>;

    /// SIGKILL the process (by PID) and reap it.
    fn kill(&mut self) {
        if let Some(mut c) = self.child_slot().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL, wait `down_for`, then start again on the same port and storage.
    fn crash_and_restart(&mut self, down_for: std::time::Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
    }
}

/// The value of a service environment variable (exported by
/// `scripts/dev-services up`).
///
/// If it is unset: under `CI=true` this panics, so a test whose service is
/// missing fails loudly; elsewhere it prints why the test is skipped and
/// returns `None`.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false)
            {
                panic!("{var} is not set under CI=true: run `eval \"$(scripts/dev-services up)\"` first");
            }
            eprintln!("skipping: {var} is not set (run `eval \"$(scripts/dev-services up)\"`)");
            None
        }
    }
}

/// A fresh random name with `prefix`, safe as a queue name, key prefix or topic.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
