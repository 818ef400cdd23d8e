//! Configuration of a Redis connection.

use std::fmt;
use std::time::Duration;

use agentscale_core::config::{redact_url, Secret};
use agentscale_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::tls::RedisTlsConfig;

/// How to reach one Redis server: URL, ACL user and password, TLS,
/// timeouts and connection counts. Shared by every Redis backend (queue, session store, tool cache)
/// that uses the same [`Redis`](crate::Redis) handle.
///
/// Serde-loadable through
/// [`ConfigLoader`](agentscale_core::config::ConfigLoader) (durations as
/// milliseconds or strings such as `"5s"`), or built with
/// [`RedisConfig::builder`]. `Debug` hides the password and the client key.
///
/// A managed Redis with in-transit encryption and an ACL user: a
/// `rediss://` URL, the user, the password from a mounted secret
/// (`AGENTSCALE_REDIS__PASSWORD_FILE=/var/run/secrets/redis/password`
/// through the loader), and optionally a private CA and a client
/// certificate ([`RedisTlsConfig`]):
///
/// ```
/// use std::time::Duration;
/// use agentscale_redis::RedisConfig;
///
/// let cfg = RedisConfig::builder()
///     .url("rediss://redis.internal:6380/0")
///     .username("worker")
///     .password("s3cret")
///     .command_timeout(Duration::from_secs(2))
///     .build()?;
/// assert!(!format!("{cfg:?}").contains("s3cret"));
/// # Ok::<(), agentscale_core::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` or `unix://…`
    /// (default `redis://127.0.0.1:6379`).
    pub url: Secret,
    /// ACL user name; when set it replaces any user in `url`.
    pub username: Option<String>,
    /// Password; when set it replaces any password in `url` (so the URL can
    /// come from a ConfigMap and the password from a Secret).
    pub password: Option<Secret>,
    /// TLS settings, used with a `rediss://` URL (CA, client certificate).
    pub tls: RedisTlsConfig,
    /// Timeout for establishing a connection (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub connect_timeout: Duration,
    /// Timeout of one non-blocking command (default 5 s).
    #[serde(with = "agentscale_core::config::duration")]
    pub command_timeout: Duration,
    /// Reconnect attempts of the shared connection before a call fails with
    /// [`Error::Unavailable`] (default 1: fail fast, the caller's retry
    /// policy decides; the next call reconnects again).
    pub reconnect_retries: usize,
    /// Longest pause between reconnect attempts (default 500 ms).
    #[serde(with = "agentscale_core::config::duration")]
    pub reconnect_max_delay: Duration,
    /// Connections reserved for blocking commands such as `XREADGROUP BLOCK`
    /// (default 4); they never share a connection with other traffic.
    pub blocking_connections: u32,
    /// Seed nodes of a Redis Cluster (`redis://host:port` each; default
    /// empty). When set, the handle speaks to the cluster through the
    /// cluster client (see [`RedisConnection`](crate::RedisConnection)) and
    /// `url` is not used; `password` and the timeouts apply to every node.
    /// From the environment: a comma-separated list.
    pub cluster_nodes: Vec<Secret>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379"),
            username: None,
            password: None,
            tls: RedisTlsConfig::default(),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(5),
            reconnect_retries: 1,
            reconnect_max_delay: Duration::from_millis(500),
            blocking_connections: 4,
            cluster_nodes: Vec::new(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(self.url.expose()))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("blocking_connections", &self.blocking_connections)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|n| redact_url(n.expose()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RedisConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder {
            config: RedisConfig::default(),
        }
    }

    /// Checks every field; the first problem is [`Error::InvalidConfig`]
    /// naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        let url = self.url.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
            return bad(format!(
                "redis url {:?} must start with redis://, rediss:// or unix://",
                redact_url(url)
            ));
        }
        if url.contains('#') {
            // redis-rs reads `#insecure` as "skip certificate checks"; that
            // switch is not built in, and no other fragment means anything.
            return bad(format!(
                "redis url {:?} must not have a #fragment (certificate checks cannot be turned off)",
                redact_url(url)
            ));
        }
        if self.tls.is_set() && !url.starts_with("rediss://") {
            return bad(format!(
                "redis tls settings need a rediss:// url, not {:?}",
                redact_url(url)
            ));
        }
        self.tls.validate()?;
        for (name, d) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ] {
            if d.is_zero() || d > Duration::from_secs(3600) {
                return bad(format!("redis {name} {d:?} must be within 1ms..=1h"));
            }
        }
        if self.reconnect_retries > 100 {
            return bad(format!(
                "redis reconnect_retries {} must be at most 100",
                self.reconnect_retries
            ));
        }
        if self.reconnect_max_delay > Duration::from_secs(60) {
            return bad("redis reconnect_max_delay must be at most 60s".into());
        }
        if self.blocking_connections == 0 || self.blocking_connections > 1024 {
            return bad(format!(
                "redis blocking_connections {} must be within 1..=1024",
                self.blocking_connections
            ));
        }
        crate::cluster::validate_nodes(self)?;
        Ok(())
    }

    /// The client: the URL parsed, `username` and `password` applied, and
    /// for `rediss://` the TLS certificates attached.
    pub(crate) fn client(&self) -> Result<redis::Client> {
        let info = self.connection_info()?;
        let tls = matches!(info.addr, redis::ConnectionAddr::TcpTls { .. });
        let client = if tls && self.tls.is_set() {
            redis::Client::build_with_tls(info, self.tls.certificates())
        } else {
            redis::Client::open(info)
        };
        client.map_err(|e| {
            Error::InvalidConfig(format!(
                "redis url {} or tls settings are invalid: {:?}",
                redact_url(self.url.expose()),
                e.kind()
            ))
        })
    }

    /// The connection info: the URL parsed, with `username` and `password` applied.
    pub(crate) fn connection_info(&self) -> Result<redis::ConnectionInfo> {
        use redis::IntoConnectionInfo;
        let mut info = self.url.expose().into_connection_info().map_err(|e| {
            Error::InvalidConfig(format!(
                "redis url {} is invalid: {:?}",
                redact_url(self.url.expose()),
                e.kind()
            ))
        })?;
        if let Some(u) = &self.username {
            info.redis.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            info.redis.password = Some(p.expose().to_string());
        }
        Ok(info)
    }
}

/// Builder of [`RedisConfig`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct RedisConfigBuilder {
    config: RedisConfig,
}

impl RedisConfigBuilder {
    /// The server URL.
    pub fn url(mut self, url: impl Into<Secret>) -> Self {
        self.config.url = url.into();
        self
    }
    /// The ACL user name (replaces one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.config.username = Some(username.into());
        self
    }
    /// The password (replaces one in the URL).
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.config.password = Some(password.into());
        self
    }
    /// CA certificate(s), PEM, trusted for the server's certificate
    /// (instead of the system trust store).
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.config.tls.ca_pem = Some(pem.into());
        self
    }
    /// Client certificate chain and private key, PEM, for mutual TLS.
    pub fn client_identity(mut self, cert_pem: impl Into<String>, key_pem: impl Into<Secret>) -> Self {
        self.config.tls.client_cert_pem = Some(cert_pem.into());
        self.config.tls.client_key_pem = Some(key_pem.into());
        self
    }
    /// All TLS settings at once.
    pub fn tls(mut self, tls: RedisTlsConfig) -> Self {
        self.config.tls = tls;
        self
    }
    /// Timeout for establishing a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }
    /// Timeout of one non-blocking command.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.config.command_timeout = d;
        self
    }
    /// Reconnect attempts before a call fails.
    pub fn reconnect_retries(mut self, n: usize) -> Self {
        self.config.reconnect_retries = n;
        self
    }
    /// Longest pause between reconnect attempts.
    pub fn reconnect_max_delay(mut self, d: Duration) -> Self {
        self.config.reconnect_max_delay = d;
        self
    }
    /// Connections reserved for blocking commands.
    pub fn blocking_connections(mut self, n: u32) -> Self {
        self.config.blocking_connections = n;
        self
    }
    /// Seed nodes of a Redis Cluster (switches the handle to cluster mode).
    pub fn cluster_nodes<S: Into<Secret>>(mut self, nodes: impl IntoIterator<Item = S>) -> Self {
        self.config.cluster_nodes = nodes.into_iter().map(Into::into).collect();
        self
    }
    /// Validates and returns the configuration.
    pub fn build(self) -> Result<RedisConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentscale_core::config::ConfigLoader;

    #[test]
    fn loads_from_toml_and_env_through_the_loader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("redis.toml");
        std::fs::write(
            &path,
            "url = \"redis://cache:6379/2\"\ncommand_timeout = \"2s\"\nblocking_connections = 8\n",
        )
        .expect("write");
        let c: RedisConfig = ConfigLoader::new()
            .file(&path)
            .env_prefix("T")
            .env_vars([("T_PASSWORD", "hunter2"), ("T_CONNECT_TIMEOUT", "250ms")])
            .load()
            .expect("load");
        c.validate().expect("valid");
        assert_eq!(c.url.expose(), "redis://cache:6379/2");
        assert_eq!(c.command_timeout, Duration::from_secs(2));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.blocking_connections, 8);
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        let info = c.connection_info().expect("info");
        assert_eq!(info.redis.password.as_deref(), Some("hunter2"));
        assert_eq!(info.redis.db, 2);
    }

    #[test]
    fn bad_values_are_typed_errors_naming_the_field() {
        let e = ConfigLoader::new()
            .env_prefix("T")
            .env_vars([("T_COMMAND_TIMEOUT", "soon")])
            .load::<RedisConfig>()
            .map(|_| ())
            .expect_err("bad duration");
        assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
        assert!(e.to_string().contains("command_timeout"), "{e}");
        for (b, field) in [
            (RedisConfig::builder().url("http://h"), "url"),
            (
                RedisConfig::builder().command_timeout(Duration::ZERO),
                "command_timeout",
            ),
            (
                RedisConfig::builder().blocking_connections(0),
                "blocking_connections",
            ),
            (
                RedisConfig::builder().reconnect_retries(1000),
                "reconnect_retries",
            ),
        ] {
            let e = b.build().map(|_| ()).expect_err(field);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(field), "{e}");
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let c = RedisConfig::builder()
            .url("redis://u:inurl@h:1")
            .password("field")
            .build()
            .expect("config");
        let s = format!("{c:?}");
        assert!(!s.contains("inurl") && !s.contains("field"), "{s}");
    }
}
