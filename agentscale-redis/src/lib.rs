//! # agentscale-redis
//!
//! The Redis connection every agentscale Redis backend shares: one
//! [`RedisConfig`], one [`Redis`] handle, one mapping of Redis errors to
//! [`agentscale_core::Error`].
//!
//! A [`Redis`] holds a multiplexed, auto-reconnecting connection (redis-rs
//! `ConnectionManager`) for ordinary commands and a small pool (bb8) of
//! dedicated connections for blocking commands. It is cheap to clone; clones
//! share the connections, so one handle can serve a task queue, a session
//! store and a tool cache together:
//!
//! ```no_run
//! # async fn demo() -> agentscale_core::Result<()> {
//! use agentscale_redis::{Redis, RedisConfig};
//!
//! let redis = Redis::connect(RedisConfig::builder().url("redis://127.0.0.1:6379").build()?).await?;
//! // agentscale_queue::redis::RedisQueue::new(redis.clone(), queue_config).await?;
//! // agentscale_state::redis::RedisSessionStore::new(redis.clone(), state_config).await?;
//! # let _ = redis; Ok(()) }
//! ```
//!
//! # TLS and authentication
//!
//! `rediss://` URLs speak TLS (rustls): [`RedisTlsConfig`] adds a private CA
//! and a client certificate for mutual TLS; `username` and `password` log
//! in as an ACL user. The server's certificate and host name are always
//! verified. A TLS or login failure at [`Redis::connect`] is
//! [`Error::InvalidConfig`] saying what to check (see `docs/security.md`).
//!
//! # Errors
//!
//! [`map_error`] is the one conversion: connection trouble, timeouts and
//! server states that pass by themselves (`LOADING`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, which a replica answers
//! after a failover demoted the node we were talking to, and on a cluster a
//! `MOVED`/`ASK` redirect still unresolved after the client's retries) are
//! [`Error::Unavailable`] (retry later); everything else is
//! [`Error::Backend`].
//!
//! # Redis Cluster
//!
//! Set [`RedisConfig::cluster_nodes`] to seed nodes and the same handle
//! speaks to a Redis Cluster (redis-rs's async cluster client: commands go
//! to the master owning the key's slot, `MOVED`/`ASK` redirects and
//! failovers are followed below the caller); see [`RedisConnection`].
//!
//! ```no_run
//! # async fn demo() -> agentscale_core::Result<()> {
//! use agentscale_redis::{Redis, RedisConfig};
//!
//! let cfg = RedisConfig::builder()
//!     .cluster_nodes(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
//!     .build()?;
//! let redis = Redis::connect(cfg).await?;
//! assert!(redis.is_cluster());
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cluster;
mod config;
mod tls;

use std::fmt;

use agentscale_core::config::redact_url;
use agentscale_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use cluster::{key_slot, BlockingManager, RedisConnection};
pub use config::{RedisConfig, RedisConfigBuilder};
pub use tls::RedisTlsConfig;

/// A connection pool entry for blocking commands (derefs to a
/// [`RedisConnection`]).
pub type BlockingConnection<'a> = bb8::PooledConnection<'a, BlockingManager>;

/// A handle on one Redis server or one Redis Cluster: a shared multiplexed
/// connection plus a pool of dedicated connections for blocking commands.
/// Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    config: RedisConfig,
    conn: RedisConnection,
    blocking: bb8::Pool<BlockingManager>,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Redis");
        if self.config.cluster_nodes.is_empty() {
            d.field("url", &redact_url(self.config.url.expose()));
        } else {
            let nodes: Vec<String> = self
                .config
                .cluster_nodes
                .iter()
                .map(|n| redact_url(n.expose()))
                .collect();
            d.field("cluster_nodes", &nodes);
        }
        d.finish_non_exhaustive()
    }
}

impl Redis {
    /// Validates `config` and connects ([`Error::Unavailable`] when the
    /// server does not answer within `connect_timeout`). The blocking pool
    /// connects lazily, on first use.
    pub async fn connect(config: RedisConfig) -> Result<Redis> {
        config.validate()?;
        if !config.cluster_nodes.is_empty() {
            let (conn, manager) = cluster::connect(&config).await?;
            let blocking = Self::pool(&config, manager);
            return Ok(Redis {
                config,
                conn,
                blocking,
            });
        }
        let shown = redact_url(config.url.expose());
        let client = config.client()?;
        let info = client.get_connection_info().clone();
        if matches!(info.addr, redis::ConnectionAddr::TcpTls { .. }) {
            tls::ensure_crypto_provider();
        }
        let mc = ConnectionManagerConfig::new()
            .set_connection_timeout(config.connect_timeout)
            .set_response_timeout(config.command_timeout)
            .set_number_of_retries(config.reconnect_retries)
            .set_max_delay(config.reconnect_max_delay.as_millis().min(u64::MAX as u128) as u64);
        let conn = ConnectionManager::new_with_config(client, mc)
            .await
            .map_err(|e| map_connect_error(&shown, e))?;
        let manager = redis::Client::open(info)
            .map_err(|e| Error::InvalidConfig(format!("redis url {shown} is invalid: {:?}", e.kind())))?;
        let blocking = Self::pool(&config, BlockingManager::single(manager));
        Ok(Redis {
            config,
            conn: RedisConnection::managed(conn),
            blocking,
        })
    }

    /// The pool of dedicated connections (connects lazily).
    fn pool(config: &RedisConfig, manager: BlockingManager) -> bb8::Pool<BlockingManager> {
        bb8::Pool::builder()
            .max_size(config.blocking_connections)
            .connection_timeout(config.connect_timeout)
            .test_on_check_out(false)
            .build_unchecked(manager)
    }

    /// Whether this handle speaks to a Redis Cluster
    /// ([`RedisConfig::cluster_nodes`] set).
    pub fn is_cluster(&self) -> bool {
        self.conn.is_cluster()
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// The shared multiplexed connection (a redis-rs `ConnectionLike`: an
    /// escape hatch for backends and for commands agentscale does not wrap).
    /// Clone it per use; clones share one socket per node. Never send
    /// blocking commands on it.
    pub fn connection(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// A dedicated connection for one blocking command (a
    /// [`RedisConnection`] like [`connection`](Self::connection)). Waits up to `connect_timeout`
    /// for a free one.
    pub async fn blocking_connection(&self) -> Result<BlockingConnection<'_>> {
        self.blocking.get().await.map_err(|e| match e {
            bb8::RunError::User(e) => map_error("blocking connection", e),
            bb8::RunError::TimedOut => Error::Unavailable {
                message: format!(
                    "redis blocking connection: none free within {:?}",
                    self.config.connect_timeout
                ),
                source: None,
            },
        })
    }
}

/// A failed first connection: TLS and authentication failures are
/// configuration problems ([`Error::InvalidConfig`], not retried); a
/// connection a `redis://` URL saw dropped during the handshake hints at a
/// TLS port; the rest as [`map_error`].
fn map_connect_error(shown: &str, e: redis::RedisError) -> Error {
    if let Some(why) = tls::tls_failure(&e) {
        return Error::InvalidConfig(format!("redis connect to {shown}: {why}"));
    }
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Error::InvalidConfig(format!(
            "redis connect to {shown}: authentication failed (check username and password): {e}"
        ));
    }
    if shown.starts_with("redis://") && (e.is_connection_dropped() || e.is_unrecoverable_error()) {
        return Error::unavailable(
            format!("redis connect to {shown}: {e} (if the server only speaks TLS, use rediss://)"),
            e,
        );
    }
    if shown.starts_with("rediss://") && e.is_timeout() {
        return Error::unavailable(
            format!("redis connect to {shown}: {e} (check that the server speaks TLS on this port)"),
            e,
        );
    }
    map_error(&format!("connect to {shown}"), e)
}

/// Converts a Redis error at the boundary (see the [crate docs](crate)):
/// transient trouble is [`Error::Unavailable`], the rest [`Error::Backend`].
pub fn map_error(context: &str, e: redis::RedisError) -> Error {
    if is_transient(&e) {
        Error::unavailable(format!("redis {context}: {e}"), e)
    } else {
        Error::backend(format!("redis {context}: {e}"), e)
    }
}

/// Whether `e` is worth retrying later (connection trouble, timeouts,
/// loading, failover in progress, a read-only replica after failover, a
/// cluster redirect the client could not resolve).
pub fn is_transient(e: &redis::RedisError) -> bool {
    use redis::ErrorKind as K;
    e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || matches!(
            e.kind(),
            K::BusyLoadingError
                | K::TryAgain
                | K::ClusterDown
                | K::MasterDown
                | K::ReadOnly
                | K::IoError
                // A redirect that outlived the cluster client's retries:
                // the slot map is in flux (a failover or a migration).
                | K::Moved
                | K::Ask
                | K::ClusterConnectionNotFound
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentscale_core::ErrorKind;

    fn server_error(code: &str) -> redis::RedisError {
        // Parse a real error reply, the way the client sees one.
        let reply = format!("-{code} something happened\r\n");
        match redis::parse_redis_value(reply.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn read_only_after_failover_is_transient() {
        for code in [
            "READONLY",
            "LOADING",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
            "MOVED 2739 127.0.0.1:7000",
            "ASK 2739 127.0.0.1:7001",
        ] {
            let e = map_error("SET", server_error(code));
            assert_eq!(e.kind(), ErrorKind::Unavailable, "{code}: {e}");
        }
        for code in ["ERR", "WRONGTYPE", "NOSCRIPT"] {
            let e = map_error("SET", server_error(code));
            assert_eq!(e.kind(), ErrorKind::Backend, "{code}: {e}");
        }
        let io = redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(map_error("GET", io).kind(), ErrorKind::Unavailable);
    }

    #[tokio::test]
    async fn unreachable_server_is_unavailable() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let cfg = RedisConfig::builder()
            .url(format!("redis://127.0.0.1:{port}"))
            .connect_timeout(std::time::Duration::from_millis(500))
            .reconnect_retries(0)
            .build()
            .expect("config");
        let e = Redis::connect(cfg)
            .await
            .map(|_| ())
            .expect_err("nothing listens");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    }
}
