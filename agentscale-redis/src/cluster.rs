//! Redis Cluster support: the connection type behind a [`Redis`](crate::Redis)
//! handle (one server or a cluster) and the pool manager of its dedicated
//! blocking connections.
//!
//! With [`RedisConfig::cluster_nodes`] set, the handle speaks to a Redis
//! Cluster through redis-rs's async cluster client: it learns the slot map
//! from the seed nodes, sends every command to the master owning its key's
//! slot, follows `MOVED` (a slot moved: refresh the map, resend) and `ASK`
//! (a slot is migrating: `ASKING` + resend to the target) redirects, and
//! after a failover reconnects to the promoted replica. A pipeline goes to
//! the node of its first keyed command, so all keys of one pipeline or Lua
//! script must share a slot; agentscale's backends hash-tag every key of a
//! queue (`{queue}`) and of a tenant/session, so they do.

use std::time::Duration;

use agentscale_core::config::redact_url;
use agentscale_core::{Error, Result};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use crate::RedisConfig;

/// Most seed nodes a config may list.
pub(crate) const MAX_CLUSTER_NODES: usize = 1000;

/// Extra attempts the cluster client makes for one command on top of
/// `reconnect_retries`: redirects (`MOVED`, `ASK`), `TRYAGAIN` during a
/// slot migration and reconnects after a failover each take one.
const CLUSTER_EXTRA_RETRIES: u32 = 5;

/// A connection to Redis: one server (multiplexed, auto-reconnecting) or a
/// Redis Cluster (routing by key slot, following redirects). Cheap to
/// clone; clones share sockets. Use it like any redis-rs async connection
/// (`cmd.query_async(&mut conn)`, `pipe.query_async(&mut conn)`,
/// `script.invoke_async(&mut conn)`).
#[derive(Clone)]
pub struct RedisConnection(Conn);

#[derive(Clone)]
enum Conn {
    Managed(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConnection {
    pub(crate) fn managed(c: ConnectionManager) -> Self {
        RedisConnection(Conn::Managed(c))
    }

    pub(crate) fn cluster(c: ClusterConnection) -> Self {
        RedisConnection(Conn::Cluster(c))
    }

    /// Whether this connection speaks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.0, Conn::Cluster(_))
    }

    /// Runs a command that names no key (such as `SCAN`) on the node that
    /// owns `key`'s slot: on a cluster, the master of [`key_slot`]`(key)`;
    /// on one server, that server. `SCAN MATCH '<prefix>{tag}*'` thereby
    /// sees every key of one hash tag.
    pub async fn query_at_key<T: redis::FromRedisValue>(
        &mut self,
        cmd: &Cmd,
        key: &str,
    ) -> redis::RedisResult<T> {
        match &mut self.0 {
            Conn::Cluster(c) => {
                let route = Route::new(key_slot(key.as_bytes()), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_owned_redis_value(v)
            }
            _ => cmd.query_async(self).await,
        }
    }
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the
/// part between the first `{` and the next `}`, when not empty) or of the
/// whole key, modulo 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|b| *b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|b| *b == b'}')
            .filter(|close| *close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % 16384
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Conn::Managed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Conn::Managed(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The bb8 manager of a [`Redis`](crate::Redis) handle's dedicated
/// connections for blocking commands: one multiplexed connection per pool
/// entry, or one cluster connection (to every master) per pool entry.
pub struct BlockingManager(Source);

enum Source {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl BlockingManager {
    pub(crate) fn single(client: redis::Client) -> Self {
        BlockingManager(Source::Single(client))
    }
}

impl bb8::ManageConnection for BlockingManager {
    type Connection = RedisConnection;
    type Error = RedisError;

    async fn connect(&self) -> std::result::Result<RedisConnection, RedisError> {
        Ok(match &self.0 {
            Source::Single(c) => {
                RedisConnection(Conn::Multiplexed(c.get_multiplexed_async_connection().await?))
            }
            Source::Cluster(c) => RedisConnection(Conn::Cluster(c.get_async_connection().await?)),
        })
    }

    async fn is_valid(&self, conn: &mut RedisConnection) -> std::result::Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(conn).await
    }

    fn has_broken(&self, _: &mut RedisConnection) -> bool {
        false
    }
}

/// Checks `cluster_nodes` (called from [`RedisConfig::validate`]).
pub(crate) fn validate_nodes(config: &RedisConfig) -> Result<()> {
    if config.cluster_nodes.len() > MAX_CLUSTER_NODES {
        return Err(Error::InvalidConfig(format!(
            "redis cluster_nodes lists {} nodes, at most {MAX_CLUSTER_NODES}",
            config.cluster_nodes.len()
        )));
    }
    for node in &config.cluster_nodes {
        let url = node.expose();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::InvalidConfig(format!(
                "redis cluster_nodes entry {:?} must start with redis:// or rediss://",
                redact_url(url)
            )));
        }
        node_info(config, node.expose())?;
    }
    Ok(())
}

/// One seed node's connection info, with the config's password (and any
/// other connection settings) applied the same way as for `url`.
fn node_info(config: &RedisConfig, url: &str) -> Result<redis::ConnectionInfo> {
    let mut one = config.clone();
    one.url = url.into();
    one.cluster_nodes = Vec::new();
    let info = one.connection_info()?;
    if info.redis.db != 0 {
        return Err(Error::InvalidConfig(format!(
            "redis cluster_nodes entry {:?} selects database {}; Redis Cluster has only database 0",
            redact_url(url),
            info.redis.db
        )));
    }
    Ok(info)
}

/// A cluster client on the seed nodes; `response_timeout` bounds one
/// command (the blocking pool passes a long one: its callers bound their
/// waits themselves).
fn client(config: &RedisConfig, response_timeout: Duration) -> Result<ClusterClient> {
    let nodes = config
        .cluster_nodes
        .iter()
        .map(|n| node_info(config, n.expose()))
        .collect::<Result<Vec<_>>>()?;
    let max_wait = config.reconnect_max_delay.as_millis().clamp(1, u64::MAX as u128) as u64;
    ClusterClientBuilder::new(nodes)
        .connection_timeout(config.connect_timeout)
        .response_timeout(response_timeout)
        .retries(config.reconnect_retries as u32 + CLUSTER_EXTRA_RETRIES)
        .min_retry_wait(max_wait.min(10))
        .max_retry_wait(max_wait)
        .build()
        .map_err(|e| Error::InvalidConfig(format!("redis cluster_nodes are invalid: {e}")))
}

/// Connects to the cluster: the shared connection and the blocking pool's
/// manager. [`Error::Unavailable`] when no seed node answers.
pub(crate) async fn connect(config: &RedisConfig) -> Result<(RedisConnection, BlockingManager)> {
    let shared = client(config, config.command_timeout)?;
    let conn = tokio_timeout(config.connect_timeout, shared.get_async_connection())
        .await
        .map_err(|e| crate::map_error("connect to the cluster", e))?;
    let blocking = client(config, Duration::from_secs(3600))?;
    Ok((
        RedisConnection::cluster(conn),
        BlockingManager(Source::Cluster(blocking)),
    ))
}

/// Bounds the cluster client's first connect (its slot-map fetch retries
/// every seed node) by the connect timeout.
async fn tokio_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no seed node answered within {limit:?}"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"agentscale:{q}:stream:high"), key_slot(b"q"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
    }

    #[test]
    fn cluster_nodes_are_validated() {
        for (nodes, needle) in [
            (vec!["http://h:1"], "cluster_nodes"),
            (vec!["redis://h:1/3"], "database"),
        ] {
            let e = RedisConfig::builder()
                .cluster_nodes(nodes)
                .build()
                .map(|_| ())
                .expect_err(needle);
            assert_eq!(e.kind(), agentscale_core::ErrorKind::InvalidConfig);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let c = RedisConfig::builder()
            .cluster_nodes(["redis://u:pw@h:1", "redis://h:2"])
            .build()
            .expect("config");
        assert!(!format!("{c:?}").contains("pw"), "{c:?}");
    }
}
