//! Configuration of the in-process queue.

use std::time::Duration;

use agentscale_core::task::DEFAULT_MAX_ENVELOPE_BYTES;
use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::{LocalQueue, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_LEASE_TIMEOUT};

/// Configuration of a [`LocalQueue`].
///
/// Serde-loadable through
/// [`ConfigLoader`](agentscale_core::config::ConfigLoader) (durations as
/// milliseconds or strings such as `"30s"`), or built with
/// [`LocalQueueConfig::builder`]; [`LocalQueue::from_config`] validates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalQueueConfig {
    /// The queue's name (its metric label; default `default`).
    pub name: String,
    /// How long a lease lives unless extended (default 30 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub lease_timeout: Duration,
    /// Largest encoded envelope accepted at enqueue (default 1 MiB), the same
    /// limit as the wire backends', so a task that fits here fits there.
    pub max_envelope_bytes: usize,
    /// How long an idempotency key is remembered after its enqueue (default
    /// 24 h); a later enqueue with the same key stores a new task.
    #[serde(with = "agentscale_core::config::duration")]
    pub idempotency_window: Duration,
    /// Ordered sessions (default off): tasks with the same `session_id` run
    /// one at a time in enqueue order; session ids must be identifiers
    /// (see [`agentscale_core::flow::validate_identifier`]).
    pub ordered_sessions: bool,
}

impl Default for LocalQueueConfig {
    fn default() -> Self {
        LocalQueueConfig {
            name: "default".into(),
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            max_envelope_bytes: DEFAULT_MAX_ENVELOPE_BYTES,
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            ordered_sessions: false,
        }
    }
}

impl LocalQueueConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> LocalQueueConfigBuilder {
        LocalQueueConfigBuilder {
            config: LocalQueueConfig::default(),
        }
    }

    /// Checks every field; [`Error::InvalidConfig`] names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.name.trim().is_empty() {
            return bad("local queue: name is empty".into());
        }
        if self.lease_timeout.is_zero() {
            return bad(format!("local queue {}: lease_timeout is zero", self.name));
        }
        if self.max_envelope_bytes == 0 {
            return bad(format!("local queue {}: max_envelope_bytes is zero", self.name));
        }
        if self.idempotency_window.is_zero() {
            return bad(format!("local queue {}: idempotency_window is zero", self.name));
        }
        Ok(())
    }
}

/// Builder of [`LocalQueueConfig`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct LocalQueueConfigBuilder {
    config: LocalQueueConfig,
}

impl LocalQueueConfigBuilder {
    /// The queue's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }
    /// How long a lease lives unless extended.
    pub fn lease_timeout(mut self, d: Duration) -> Self {
        self.config.lease_timeout = d;
        self
    }
    /// Largest encoded envelope accepted at enqueue.
    pub fn max_envelope_bytes(mut self, n: usize) -> Self {
        self.config.max_envelope_bytes = n;
        self
    }
    /// How long an idempotency key is remembered.
    pub fn idempotency_window(mut self, d: Duration) -> Self {
        self.config.idempotency_window = d;
        self
    }
    /// Turns ordered sessions on or off.
    pub fn ordered_sessions(mut self, on: bool) -> Self {
        self.config.ordered_sessions = on;
        self
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<LocalQueueConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Builds a [`LocalQueue`] directly; see [`LocalQueue::builder`]. The same
/// setters as [`LocalQueueConfigBuilder`], with `build` returning the queue.
#[derive(Debug, Clone)]
pub struct LocalQueueBuilder {
    config: LocalQueueConfig,
}

impl LocalQueueBuilder {
    pub(super) fn new(name: String) -> Self {
        LocalQueueBuilder {
            config: LocalQueueConfig {
                name,
                ..LocalQueueConfig::default()
            },
        }
    }

    /// How long a lease lives unless extended (default 30 s).
    pub fn lease_timeout(mut self, d: Duration) -> Self {
        self.config.lease_timeout = d;
        self
    }

    /// Largest encoded envelope accepted at enqueue (default 1 MiB). The limit
    /// is the same as the wire backends', so a task that fits here fits there.
    pub fn max_envelope_bytes(mut self, n: usize) -> Self {
        self.config.max_envelope_bytes = n;
        self
    }

    /// How long an idempotency key is remembered after its enqueue (default
    /// 24 h); a later enqueue with the same key stores a new task.
    pub fn idempotency_window(mut self, d: Duration) -> Self {
        self.config.idempotency_window = d;
        self
    }

    /// Ordered sessions (default off): tasks with the same `session_id` are
    /// delivered one at a time, in enqueue order; the next only after the
    /// previous was acked or dead-lettered. A session id that is not an
    /// identifier is refused at enqueue with `InvalidInput`.
    pub fn ordered_sessions(mut self, on: bool) -> Self {
        self.config.ordered_sessions = on;
        self
    }

    /// Validates and builds. [`Error::InvalidConfig`] on an empty name, a zero
    /// lease timeout, a zero envelope limit or a zero idempotency window.
    pub fn build(self) -> Result<LocalQueue> {
        LocalQueue::from_config(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentscale_core::config::ConfigLoader;

    #[test]
    fn loads_from_toml_and_env_through_the_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("local.toml");
        std::fs::write(&path, "name = \"jobs\"\nlease_timeout = \"2m\"\n").expect("write");
        let c: LocalQueueConfig = ConfigLoader::new()
            .file(&path)
            .env_prefix("L")
            .env_vars([("L_MAX_ENVELOPE_BYTES", "4096")])
            .load()
            .expect("load");
        let q = LocalQueue::from_config(c).expect("valid");
        use agentscale_core::TaskQueue;
        assert_eq!(q.name(), "jobs");
        assert_eq!(q.capabilities().lease_timeout, Duration::from_secs(120));
        assert_eq!(q.capabilities().max_envelope_bytes, 4096);
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_field() {
        let e = ConfigLoader::new()
            .env_prefix("L")
            .env_vars([("L_IDEMPOTENCY_WINDOW", "long")])
            .load::<LocalQueueConfig>()
            .map(|_| ())
            .expect_err("bad duration");
        assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("idempotency_window"), "{e}");
        for (b, field) in [
            (LocalQueueConfig::builder().name(" "), "name"),
            (
                LocalQueueConfig::builder().lease_timeout(Duration::ZERO),
                "lease_timeout",
            ),
            (
                LocalQueueConfig::builder().max_envelope_bytes(0),
                "max_envelope_bytes",
            ),
        ] {
            let e = b.build().map(|_| ()).expect_err(field);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }
}
