//! Configuration of the Redis Streams queue.

use std::fmt;
use std::time::Duration;

use agentscale_core::config::{redact_url, Secret};
use agentscale_core::{Error, Result};
use agentscale_redis::RedisConfig;
use serde::{Deserialize, Serialize};

/// The longest [`RedisQueueConfig::idempotency_ttl`] accepted (30 days).
pub const MAX_IDEMPOTENCY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The most [`RedisQueueConfig::shards`] accepted.
pub const MAX_SHARDS: usize = 256;

/// Configuration of a [`RedisQueue`](super::RedisQueue).
///
/// Serde-loadable (durations as milliseconds or strings such as `"30s"`,
/// `"500ms"`, `"2m"`) through
/// [`ConfigLoader`](agentscale_core::config::ConfigLoader), or built with
/// [`RedisQueueConfig::builder`] (`RedisQueueConfig::builder().url(..).queue(..).build()?`);
/// [`RedisQueue::connect`](super::RedisQueue::connect) calls
/// [`validate`](Self::validate). `Debug` shows the URL with its password
/// replaced by `***`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisQueueConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`).
    pub url: Secret,
    /// The queue's name; it becomes the Redis Cluster hash tag `{queue}`.
    pub queue: String,
    /// Prefix of every key (default `agentscale`).
    pub key_prefix: String,
    /// Consumer group every worker of this queue joins (default `workers`).
    pub consumer_group: String,
    /// This process's consumer name. Default: `hostname-pid-random`, unique
    /// per process; two processes must never share one.
    pub consumer_name: Option<String>,
    /// A lease (pending entry) idle for this long is reclaimed by another
    /// worker (default 30 s). `extend` renews it.
    #[serde(with = "agentscale_core::config::duration")]
    pub lease_timeout: Duration,
    /// How often a `lease` call also scans for expired leases with
    /// `XAUTOCLAIM` (default: lease_timeout / 5, at most 5 s).
    #[serde(with = "agentscale_core::config::duration::option")]
    pub reclaim_interval: Option<Duration>,
    /// Largest encoded envelope accepted at enqueue (default 1 MiB).
    pub max_envelope_bytes: usize,
    /// Connections reserved for blocking `XREADGROUP` (default 4). Blocking
    /// reads never share a connection with other traffic.
    pub block_connections: u32,
    /// How long an idempotency key is remembered (default 24 h, between 1 s
    /// and 30 days): an enqueue with a key seen within this time stores
    /// nothing and returns the first task's id. Each key is one small Redis
    /// string with this TTL; [`RedisQueue::destroy`](super::RedisQueue::destroy)
    /// removes them all.
    #[serde(with = "agentscale_core::config::duration")]
    pub idempotency_ttl: Duration,
    /// Timeout of one non-blocking command (default 10 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub command_timeout: Duration,
    /// Timeout for establishing a connection (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Due delayed tasks moved to the ready streams per `lease` call (default 1000).
    pub promote_batch: usize,
    /// Ordered sessions (default off): tasks with the same `session_id` are
    /// delivered one at a time, in enqueue order, across all consumers. A
    /// session id that is not an identifier is refused at enqueue.
    pub ordered_sessions: bool,
    /// Streams this queue is spread over (default 1, within 1..=256). With
    /// 1 the key layout is the plain one (hash tag `{queue}`); with `N > 1`
    /// shard `i` has its own hash tag (see
    /// [`shard_tag`](super::shard_tag)), so on Redis Cluster the shards, and
    /// the CPU they cost, spread over the masters. Enqueue picks a shard by
    /// session id, else idempotency key, else round-robin; `lease` takes from
    /// the shards in rotation. Priority is then honoured within a shard, not
    /// across shards (see the module docs). Changing it changes the key
    /// layout: drain the queue first. The queue name must not contain `#`.
    pub shards: usize,
}

impl Default for RedisQueueConfig {
    fn default() -> Self {
        RedisQueueConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            queue: "default".into(),
            key_prefix: "agentscale".into(),
            consumer_group: "workers".into(),
            consumer_name: None,
            lease_timeout: Duration::from_secs(30),
            reclaim_interval: None,
            max_envelope_bytes: agentscale_core::task::DEFAULT_MAX_ENVELOPE_BYTES,
            block_connections: 4,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            promote_batch: 1000,
            ordered_sessions: false,
            shards: 1,
        }
    }
}

impl fmt::Debug for RedisQueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueueConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("queue", &self.queue)
            .field("key_prefix", &self.key_prefix)
            .field("consumer_group", &self.consumer_group)
            .field("consumer_name", &self.consumer_name)
            .field("lease_timeout", &self.lease_timeout)
            .field("reclaim_interval", &self.reclaim_interval)
            .field("max_envelope_bytes", &self.max_envelope_bytes)
            .field("block_connections", &self.block_connections)
            .field("idempotency_ttl", &self.idempotency_ttl)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("promote_batch", &self.promote_batch)
            .field("ordered_sessions", &self.ordered_sessions)
            .field("shards", &self.shards)
            .finish()
    }
}

impl RedisQueueConfig {
    /// A config for `queue` at `url`, other fields at their defaults.
    pub fn new(url: impl Into<Secret>, queue: impl Into<String>) -> Self {
        RedisQueueConfig {
            url: url.into(),
            queue: queue.into(),
            ..Default::default()
        }
    }

    /// Sets the key prefix (shorthand for the builder's setter, without
    /// validation until `connect`).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the consumer group.
    pub fn with_consumer_group(mut self, group: impl Into<String>) -> Self {
        self.consumer_group = group.into();
        self
    }

    /// Sets this process's consumer name.
    pub fn with_consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Sets the lease timeout.
    pub fn with_lease_timeout(mut self, d: Duration) -> Self {
        self.lease_timeout = d;
        self
    }

    /// Sets the reclaim interval.
    pub fn with_reclaim_interval(mut self, d: Duration) -> Self {
        self.reclaim_interval = Some(d);
        self
    }

    /// Sets the envelope size limit.
    pub fn with_max_envelope_bytes(mut self, n: usize) -> Self {
        self.max_envelope_bytes = n;
        self
    }

    /// Sets the number of blocking-read connections.
    pub fn with_block_connections(mut self, n: u32) -> Self {
        self.block_connections = n;
        self
    }

    /// Sets how long idempotency keys are remembered.
    pub fn with_idempotency_ttl(mut self, d: Duration) -> Self {
        self.idempotency_ttl = d;
        self
    }

    /// Turns ordered sessions on or off.
    pub fn with_ordered_sessions(mut self, on: bool) -> Self {
        self.ordered_sessions = on;
        self
    }

    /// Sets the number of shards (streams the queue is spread over).
    pub fn with_shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Checks every field; errors are [`Error::InvalidConfig`].
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let url = self.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
            return bad(format!(
                "redis queue url {:?} must start with redis://, rediss:// or unix://",
                redact_url(url)
            ));
        }
        check_name("queue", &self.queue)?;
        if self.queue.contains('#') {
            return bad(format!(
                "queue {:?} contains '#', which is reserved for the hash tags of shards",
                self.queue
            ));
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return bad(format!("shards {} must be within 1..={MAX_SHARDS}", self.shards));
        }
        check_name("key_prefix", &self.key_prefix)?;
        check_name("consumer_group", &self.consumer_group)?;
        if let Some(c) = &self.consumer_name {
            check_name("consumer_name", c)?;
        }
        if self.lease_timeout < Duration::from_millis(100) {
            return bad(format!(
                "lease_timeout {:?} is below the minimum of 100ms",
                self.lease_timeout
            ));
        }
        if let Some(r) = self.reclaim_interval {
            if r.is_zero() || r > self.lease_timeout {
                return bad(format!("reclaim_interval {r:?} must be > 0 and <= lease_timeout"));
            }
        }
        if self.max_envelope_bytes < 64 || self.max_envelope_bytes > 512 << 20 {
            return bad(format!(
                "max_envelope_bytes {} must be within 64..=512MiB",
                self.max_envelope_bytes
            ));
        }
        if self.block_connections == 0 {
            return bad("block_connections must be at least 1".into());
        }
        if self.idempotency_ttl < Duration::from_secs(1) || self.idempotency_ttl > MAX_IDEMPOTENCY_TTL {
            return bad(format!(
                "idempotency_ttl {:?} must be within 1s..=30d",
                self.idempotency_ttl
            ));
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("command_timeout and connect_timeout must be > 0".into());
        }
        if self.promote_batch == 0 || self.promote_batch > 10_000 {
            return bad(format!(
                "promote_batch {} must be within 1..=10000",
                self.promote_batch
            ));
        }
        Ok(())
    }

    /// The connection settings of this config as a [`RedisConfig`] (what
    /// [`RedisQueue::connect`](super::RedisQueue::connect) connects with).
    pub fn connection(&self) -> RedisConfig {
        let mut c = RedisConfig::default();
        c.url = self.url.clone();
        c.connect_timeout = self.connect_timeout;
        c.command_timeout = self.command_timeout;
        c.blocking_connections = self.block_connections;
        // A worker's lease loop rides out short outages itself (it paces on
        // `Unavailable`); a few quick reconnects keep acks from failing on a
        // single dropped connection.
        c.reconnect_retries = 4;
        c.reconnect_max_delay = Duration::from_secs(1);
        c
    }

    /// The effective reclaim interval.
    pub(crate) fn reclaim_every(&self) -> Duration {
        self.reclaim_interval.unwrap_or_else(|| {
            (self.lease_timeout / 5).clamp(Duration::from_millis(20), Duration::from_secs(5))
        })
    }
}

/// Builder of [`RedisQueueConfig`] with one setter per field; validates at
/// [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct RedisQueueConfigBuilder {
    config: RedisQueueConfig,
}

impl RedisQueueConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RedisQueueConfigBuilder {
        RedisQueueConfigBuilder {
            config: RedisQueueConfig::default(),
        }
    }
}

impl RedisQueueConfigBuilder {
    /// The server URL.
    pub fn url(mut self, v: impl Into<Secret>) -> Self {
        self.config.url = v.into();
        self
    }
    /// The queue name.
    pub fn queue(mut self, v: impl Into<String>) -> Self {
        self.config.queue = v.into();
        self
    }
    /// Prefix of every key.
    pub fn key_prefix(mut self, v: impl Into<String>) -> Self {
        self.config.key_prefix = v.into();
        self
    }
    /// The consumer group.
    pub fn consumer_group(mut self, v: impl Into<String>) -> Self {
        self.config.consumer_group = v.into();
        self
    }
    /// This process's consumer name.
    pub fn consumer_name(mut self, v: impl Into<String>) -> Self {
        self.config.consumer_name = Some(v.into());
        self
    }
    /// The lease timeout.
    pub fn lease_timeout(mut self, v: Duration) -> Self {
        self.config.lease_timeout = v;
        self
    }
    /// How often expired leases are reclaimed.
    pub fn reclaim_interval(mut self, v: Duration) -> Self {
        self.config.reclaim_interval = Some(v);
        self
    }
    /// Largest encoded envelope accepted.
    pub fn max_envelope_bytes(mut self, v: usize) -> Self {
        self.config.max_envelope_bytes = v;
        self
    }
    /// Connections reserved for blocking reads.
    pub fn block_connections(mut self, v: u32) -> Self {
        self.config.block_connections = v;
        self
    }
    /// How long an idempotency key is remembered.
    pub fn idempotency_ttl(mut self, v: Duration) -> Self {
        self.config.idempotency_ttl = v;
        self
    }
    /// Ordered sessions on or off.
    pub fn ordered_sessions(mut self, on: bool) -> Self {
        self.config.ordered_sessions = on;
        self
    }
    /// Timeout of one non-blocking command.
    pub fn command_timeout(mut self, v: Duration) -> Self {
        self.config.command_timeout = v;
        self
    }
    /// Timeout for establishing a connection.
    pub fn connect_timeout(mut self, v: Duration) -> Self {
        self.config.connect_timeout = v;
        self
    }
    /// Streams the queue is spread over (1..=256).
    pub fn shards(mut self, v: usize) -> Self {
        self.config.shards = v;
        self
    }
    /// Due delayed tasks moved per lease call.
    pub fn promote_batch(mut self, v: usize) -> Self {
        self.config.promote_batch = v;
        self
    }
    /// Validates and returns the configuration ([`Error::InvalidConfig`]
    /// names the field).
    pub fn build(self) -> Result<RedisQueueConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// Names become parts of Redis keys: printable ASCII without braces (which
/// would break the Cluster hash tag), whitespace or `:` separators in the
/// queue name.
fn check_name(what: &str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 200 {
        return Err(Error::InvalidConfig(format!(
            "{what} must be 1..=200 characters, got {} ",
            v.len()
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !c.is_ascii_graphic() || *c == '{' || *c == '}')
    {
        return Err(Error::InvalidConfig(format!(
            "{what} {v:?} contains the invalid character {c:?}"
        )));
    }
    Ok(())
}

/// A consumer name unique per process: `hostname-pid-random`.
pub(crate) fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_graphic() && *c != '{' && *c != '}')
                .collect()
        })
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let c = RedisQueueConfig::new("redis://u:hunter2@h:6379/0", "q");
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("redis://u:***@h:6379/0"), "{s}");
    }

    #[test]
    fn validates() {
        assert!(RedisQueueConfig::new("redis://h", "q").validate().is_ok());
        for c in [
            RedisQueueConfig::new("http://h", "q"),
            RedisQueueConfig::new("redis://h", ""),
            RedisQueueConfig::new("redis://h", "a{b}"),
            RedisQueueConfig::new("redis://h", "a b"),
            RedisQueueConfig::new("redis://h", "a#1"),
            RedisQueueConfig::new("redis://h", "q").with_shards(0),
            RedisQueueConfig::new("redis://h", "q").with_shards(257),
            RedisQueueConfig::new("redis://h", "q").with_lease_timeout(Duration::from_millis(1)),
            RedisQueueConfig::new("redis://h", "q").with_block_connections(0),
            RedisQueueConfig::new("redis://h", "q").with_max_envelope_bytes(1),
            RedisQueueConfig::new("redis://h", "q").with_reclaim_interval(Duration::from_secs(3600)),
        ] {
            let e = c.validate().expect_err("invalid");
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig, "{c:?}");
        }
    }

    #[test]
    fn loads_from_toml_and_env_through_the_loader() {
        use agentscale_core::config::ConfigLoader;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.toml");
        std::fs::write(
            &path,
            "url = \"redis://r:6379/1\"\nqueue = \"jobs\"\nlease_timeout = \"45s\"\n",
        )
        .expect("write");
        let c: RedisQueueConfig = ConfigLoader::new()
            .file(&path)
            .env_prefix("Q")
            .env_vars([("Q_URL", "redis://:pw@r:6379/1"), ("Q_PROMOTE_BATCH", "50")])
            .load()
            .expect("load");
        c.validate().expect("valid");
        assert_eq!(c.queue, "jobs");
        assert_eq!(c.lease_timeout, Duration::from_secs(45));
        assert_eq!(c.promote_batch, 50);
        assert!(!format!("{c:?}").contains("pw@"));
        let b = RedisQueueConfig::builder()
            .url("redis://r:6379/1")
            .queue("jobs")
            .lease_timeout(Duration::from_secs(45))
            .promote_batch(50)
            .build()
            .expect("builder");
        assert_eq!(
            (b.queue, b.lease_timeout, b.promote_batch),
            (c.queue, c.lease_timeout, 50)
        );
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_field() {
        use agentscale_core::config::ConfigLoader;
        let e = ConfigLoader::new()
            .env_prefix("Q")
            .env_vars([("Q_LEASE_TIMEOUT", "a while")])
            .load::<RedisQueueConfig>()
            .map(|_| ())
            .expect_err("bad duration");
        assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("lease_timeout"), "{e}");
        for (b, field) in [
            (RedisQueueConfig::builder().queue("a b"), "queue"),
            (
                RedisQueueConfig::builder().lease_timeout(Duration::ZERO),
                "lease_timeout",
            ),
            (
                RedisQueueConfig::builder().block_connections(0),
                "block_connections",
            ),
            (RedisQueueConfig::builder().promote_batch(0), "promote_batch"),
            (RedisQueueConfig::builder().shards(0), "shards"),
            (RedisQueueConfig::builder().shards(300), "shards"),
        ] {
            let e = b.build().map(|_| ()).expect_err(field);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn deserialises_durations() {
        let c: RedisQueueConfig = serde_json::from_str(
            r#"{"url":"redis://h","queue":"q","lease_timeout":"2s","reclaim_interval":250,"idempotency_ttl":"1h"}"#,
        )
        .expect("json");
        assert_eq!(c.lease_timeout, Duration::from_secs(2));
        assert_eq!(c.reclaim_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(3600));
        assert_eq!(c.shards, 1, "default: one stream per priority, the plain layout");
        let c: RedisQueueConfig =
            serde_json::from_str(r#"{"url":"redis://h","queue":"q","shards":3}"#).expect("json");
        assert_eq!(c.shards, 3);
        c.validate().expect("3 shards are valid");
        assert_eq!(
            RedisQueueConfig::builder()
                .shards(256)
                .build()
                .expect("256")
                .shards,
            256
        );
        assert!(agentscale_core::config::parse_duration("3x").is_err());
        assert!(default_consumer_name().contains(&std::process::id().to_string()));
    }
}
