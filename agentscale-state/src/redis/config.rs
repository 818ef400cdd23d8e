//! Configuration of the Redis state backends.

use std::fmt;
use std::time::Duration;

use agentscale_core::config::{redact_url, Secret};
use agentscale_core::{Error, Result};
use agentscale_redis::RedisConfig;
use serde::{Deserialize, Serialize};

/// Configuration of [`RedisSessionStore`](super::RedisSessionStore) and
/// [`RedisToolCache`](super::RedisToolCache).
///
/// Serde-loadable (durations as milliseconds or strings such as `"30s"`,
/// `"500ms"`, `"2m"`, `"24h"`) through
/// [`ConfigLoader`](agentscale_core::config::ConfigLoader), or built with
/// [`RedisStateConfig::builder`]; `connect` calls [`validate`](Self::validate).
/// `Debug` shows the URL with its password replaced by `***`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisStateConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`).
    pub url: Secret,
    /// Prefix of every key (default `agentscale`): 1–128 characters from
    /// `[A-Za-z0-9_.:-]` (no braces, so it never disturbs the hash tag).
    pub key_prefix: String,
    /// Sessions: TTL set on all of a session's keys by every write, and the
    /// lifetime of a delete's tombstone (default 24 h).
    #[serde(with = "agentscale_core::config::duration")]
    pub ttl: Duration,
    /// Sessions: most history entries kept (default 1000).
    pub history_cap: usize,
    /// Sessions: whether `get` and `history` also restart the TTL (default false).
    pub refresh_on_read: bool,
    /// Timeout of one command (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub command_timeout: Duration,
    /// Timeout for establishing a connection (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Tool cache: TTL of the in-process first level (default 1 s). An
    /// `invalidate` on another replica is seen here after at most this long.
    #[serde(with = "agentscale_core::config::duration")]
    pub tool_local_ttl: Duration,
    /// Tool cache: bytes held by the in-process first level (default 64 MiB).
    pub tool_local_capacity_bytes: u64,
    /// Tool cache: how long a non-retryable failure stays cached (default 30 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub tool_negative_ttl: Duration,
    /// Tool cache: largest value accepted (default 1 MiB).
    pub tool_max_value_bytes: usize,
    /// Tool cache: lease of the fleet-wide computation lock (default 30 s).
    /// The computing replica renews it while it computes; if it dies, another
    /// replica takes over after at most this long.
    #[serde(with = "agentscale_core::config::duration")]
    pub tool_lock_lease: Duration,
    /// Tool cache: longest a caller waits for another replica's computation
    /// before giving up with a timeout (default 120 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub tool_wait_timeout: Duration,
}

impl Default for RedisStateConfig {
    fn default() -> Self {
        RedisStateConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            key_prefix: "agentscale".into(),
            ttl: Duration::from_secs(24 * 3600),
            history_cap: 1000,
            refresh_on_read: false,
            command_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            tool_local_ttl: Duration::from_secs(1),
            tool_local_capacity_bytes: 64 << 20,
            tool_negative_ttl: Duration::from_secs(30),
            tool_max_value_bytes: 1 << 20,
            tool_lock_lease: Duration::from_secs(30),
            tool_wait_timeout: Duration::from_secs(120),
        }
    }
}

impl fmt::Debug for RedisStateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStateConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("history_cap", &self.history_cap)
            .field("refresh_on_read", &self.refresh_on_read)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tool_local_ttl", &self.tool_local_ttl)
            .field("tool_local_capacity_bytes", &self.tool_local_capacity_bytes)
            .field("tool_negative_ttl", &self.tool_negative_ttl)
            .field("tool_max_value_bytes", &self.tool_max_value_bytes)
            .field("tool_lock_lease", &self.tool_lock_lease)
            .field("tool_wait_timeout", &self.tool_wait_timeout)
            .finish()
    }
}

impl RedisStateConfig {
    /// A config for the Redis at `url`, other fields at their defaults.
    pub fn new(url: impl Into<Secret>) -> Self {
        RedisStateConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Sets the key prefix.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the session TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the history cap.
    pub fn with_history_cap(mut self, cap: usize) -> Self {
        self.history_cap = cap;
        self
    }

    /// Sets whether reads refresh the session TTL.
    pub fn with_refresh_on_read(mut self, refresh: bool) -> Self {
        self.refresh_on_read = refresh;
        self
    }

    /// Checks every field; the first problem is [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.url.is_empty() {
            return bad("redis url is empty".into());
        }
        let p = &self.key_prefix;
        if p.is_empty()
            || p.len() > 128
            || !p
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            return bad(format!(
                "key_prefix {p:?} must be 1-128 characters from A-Z a-z 0-9 _ - . :"
            ));
        }
        for (name, d) in [
            ("ttl", self.ttl),
            ("command_timeout", self.command_timeout),
            ("connect_timeout", self.connect_timeout),
            ("tool_local_ttl", self.tool_local_ttl),
            ("tool_negative_ttl", self.tool_negative_ttl),
            ("tool_lock_lease", self.tool_lock_lease),
            ("tool_wait_timeout", self.tool_wait_timeout),
        ] {
            if d.as_millis() == 0 {
                return bad(format!("{name} must be at least 1 ms"));
            }
        }
        if self.history_cap == 0 || self.history_cap > i64::MAX as usize {
            return bad("history_cap must be greater than zero".into());
        }
        crate::local::validate_tool_cache(
            self.tool_negative_ttl,
            self.tool_max_value_bytes,
            self.tool_local_capacity_bytes,
        )
    }
}

/// Builder of [`RedisStateConfig`] with one setter per field; validates at
/// [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct RedisStateConfigBuilder {
    config: RedisStateConfig,
}

impl RedisStateConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RedisStateConfigBuilder {
        RedisStateConfigBuilder {
            config: RedisStateConfig::default(),
        }
    }
}

impl RedisStateConfigBuilder {
    /// The server URL.
    pub fn url(mut self, v: impl Into<Secret>) -> Self {
        self.config.url = v.into();
        self
    }
    /// Prefix of every key.
    pub fn key_prefix(mut self, v: impl Into<String>) -> Self {
        self.config.key_prefix = v.into();
        self
    }
    /// Session TTL.
    pub fn ttl(mut self, v: Duration) -> Self {
        self.config.ttl = v;
        self
    }
    /// Most history entries kept.
    pub fn history_cap(mut self, v: usize) -> Self {
        self.config.history_cap = v;
        self
    }
    /// Whether reads restart the session TTL.
    pub fn refresh_on_read(mut self, v: bool) -> Self {
        self.config.refresh_on_read = v;
        self
    }
    /// Timeout of one command.
    pub fn command_timeout(mut self, v: Duration) -> Self {
        self.config.command_timeout = v;
        self
    }
    /// Timeout for establishing a connection.
    pub fn connect_timeout(mut self, v: Duration) -> Self {
        self.config.connect_timeout = v;
        self
    }
    /// TTL of the in-process tool cache level.
    pub fn tool_local_ttl(mut self, v: Duration) -> Self {
        self.config.tool_local_ttl = v;
        self
    }
    /// Bytes held by the in-process tool cache level.
    pub fn tool_local_capacity_bytes(mut self, v: u64) -> Self {
        self.config.tool_local_capacity_bytes = v;
        self
    }
    /// How long a non-retryable tool failure stays cached.
    pub fn tool_negative_ttl(mut self, v: Duration) -> Self {
        self.config.tool_negative_ttl = v;
        self
    }
    /// Largest tool value accepted.
    pub fn tool_max_value_bytes(mut self, v: usize) -> Self {
        self.config.tool_max_value_bytes = v;
        self
    }
    /// Lease of the fleet-wide computation lock.
    pub fn tool_lock_lease(mut self, v: Duration) -> Self {
        self.config.tool_lock_lease = v;
        self
    }
    /// Longest wait for another replica's computation.
    pub fn tool_wait_timeout(mut self, v: Duration) -> Self {
        self.config.tool_wait_timeout = v;
        self
    }
    /// Validates and returns the configuration ([`Error::InvalidConfig`]
    /// names the field).
    pub fn build(self) -> Result<RedisStateConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

impl RedisStateConfig {
    /// The connection settings of this config as a [`RedisConfig`] (what
    /// `connect` connects with).
    pub fn connection(&self) -> RedisConfig {
        let mut c = RedisConfig::default();
        c.url = self.url.clone();
        c.connect_timeout = self.connect_timeout;
        c.command_timeout = self.command_timeout;
        // Fail fast during an outage: one quick reconnect attempt, then
        // `Unavailable`; the next call reconnects again.
        c.reconnect_retries = 1;
        c.reconnect_max_delay = Duration::from_millis(500);
        c
    }
}

/// Whole milliseconds, at least 1 (Redis `PX` takes milliseconds).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = RedisStateConfig::new("redis://app:hunter2@db:6379/0");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://app:***@db:6379/0"), "{s}");
    }

    #[test]
    fn loads_from_json_with_duration_strings() {
        let c: RedisStateConfig = serde_json::from_str(
            r#"{"url":"redis://h:1","key_prefix":"svc:a","ttl":"2h","history_cap":5,"tool_local_ttl":250}"#,
        )
        .unwrap();
        assert_eq!(c.ttl, Duration::from_secs(7200));
        assert_eq!(c.tool_local_ttl, Duration::from_millis(250));
        assert_eq!(c.history_cap, 5);
        c.validate().unwrap();
        assert!(serde_json::from_str::<RedisStateConfig>(r#"{"ttl":"5 parsecs"}"#).is_err());
        assert!(serde_json::from_str::<RedisStateConfig>(r#"{"unknown":1}"#).is_err());
    }

    #[test]
    fn loads_from_toml_and_env_through_the_loader() {
        use agentscale_core::config::ConfigLoader;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.toml");
        std::fs::write(&path, "url = \"redis://s:6379\"\nttl = \"1h\"\n").unwrap();
        let c: RedisStateConfig = ConfigLoader::new()
            .file(&path)
            .env_prefix("S")
            .env_vars([("S_HISTORY_CAP", "7"), ("S_KEY_PREFIX", "svc")])
            .load()
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!((c.history_cap, c.key_prefix.as_str()), (7, "svc"));
        let b = RedisStateConfig::builder()
            .url("redis://s:6379")
            .ttl(Duration::from_secs(3600))
            .history_cap(7)
            .build()
            .unwrap();
        assert_eq!((b.ttl, b.history_cap), (c.ttl, 7));
        let e = ConfigLoader::new()
            .env_prefix("S")
            .env_vars([("S_TOOL_LOCK_LEASE", "eventually")])
            .load::<RedisStateConfig>()
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)));
        assert!(e.to_string().contains("tool_lock_lease"), "{e}");
        let e = RedisStateConfig::builder().history_cap(0).build().unwrap_err();
        assert!(e.to_string().contains("history_cap"), "{e}");
    }

    #[test]
    fn validation_refuses_bad_values() {
        let ok = RedisStateConfig::new("redis://h:1");
        ok.validate().unwrap();
        for c in [
            ok.clone().with_ttl(Duration::ZERO),
            ok.clone().with_history_cap(0),
            ok.clone().with_key_prefix(""),
            ok.clone().with_key_prefix("a{b}"),
            ok.clone().with_key_prefix("a b"),
            RedisStateConfig {
                tool_max_value_bytes: 0,
                ..ok.clone()
            },
            RedisStateConfig {
                tool_lock_lease: Duration::ZERO,
                ..ok.clone()
            },
            RedisStateConfig {
                url: Secret::new(""),
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(c.validate(), Err(Error::InvalidConfig(_))),
                "{c:?} accepted"
            );
        }
    }
}
