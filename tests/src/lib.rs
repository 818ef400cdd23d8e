//! Cross-crate test support and the conformance suites every agentscale
//! backend runs.
//!
//! Backends call a suite macro in one line with their own `setup`; each test
//! runs in a fresh random namespace (queue name, key prefix, topic) that it
//! cleans up.
#![forbid(unsafe_code)]
#![allow(missing_docs)]

pub mod queue_suite;
pub mod redis_server;
pub mod state_suite;
pub mod tansu_server;
pub mod triton_replica;

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
