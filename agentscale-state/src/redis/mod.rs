//! Redis backends: a session store, a two-level tool cache, task results and
//! fan-out joins.
//!
//! * [`RedisSessionStore`]: versioned compare-and-set in one Lua script, TTL
//!   set atomically with every write on all of a session's keys, capped
//!   append-only history, tombstoned deletes.
//! * [`RedisToolCache`]: in-process first level (moka) over Redis, with
//!   single-flight across every replica sharing the Redis (a leased lock key).
//! * [`RedisResultStore`]: task results, first record wins (Lua), waiters
//!   woken through pub/sub.
//! * [`RedisJoinStore`]: fan-out joins, one slot per child, decided once by
//!   one Lua script.
//!
//! Both use the multiplexed, auto-reconnecting connection of an
//! [`agentscale_redis::Redis`] handle (a multiplexed connection, or the cluster client), which
//! they can share with each other and with a `RedisQueue`; neither issues
//! blocking commands. Connection failures, timeouts and transient server
//! states (including `READONLY` after a failover) are
//! [`Error::Unavailable`](agentscale_core::Error::Unavailable) (retryable),
//! other Redis errors [`Error::Backend`](agentscale_core::Error::Backend).
//!
//! Keys (see `docs/state.md`) carry a Redis Cluster hash tag, so all keys of
//! one session (or one tool entry) share a slot and the Lua scripts are
//! cluster-safe. The session store and tool cache run on a Redis Cluster
//! through a cluster handle (`RedisConfig::cluster_nodes`, then `new`); the
//! result and join stores still open their own single-node connection.
//!
//! ```no_run
//! # async fn run() -> agentscale_core::Result<()> {
//! use agentscale_core::{SessionKey, SessionStore};
//! use agentscale_state::redis::{RedisSessionStore, RedisStateConfig};
//!
//! let store = RedisSessionStore::connect(RedisStateConfig::new("redis://127.0.0.1:6379")).await?;
//! let key = SessionKey::new("acme", "chat-1")?;
//! let v = store.put(&key, 0, "{}".into()).await?;
//! # Ok(()) }
//! ```

mod config;
mod joins;
mod results;
mod session;
mod tool_cache;
mod wakeups;

pub use config::{RedisStateConfig, RedisStateConfigBuilder};
pub use joins::{RedisJoinStore, RedisJoinStoreBuilder};
pub use results::{RedisResultStore, RedisResultStoreBuilder};
pub use session::RedisSessionStore;
pub use tool_cache::RedisToolCache;

use agentscale_core::Result;
use agentscale_redis::Redis;

/// Converts a Redis error at the boundary (one mapping for every Redis
/// backend, see [`agentscale_redis::map_error`]).
pub(crate) fn redis_error(context: &str, e: redis::RedisError) -> agentscale_core::Error {
    agentscale_redis::map_error(context, e)
}

/// Opens the shared connection for `config`.
pub(crate) async fn connect(config: &RedisStateConfig) -> Result<Redis> {
    config.validate()?;
    Redis::connect(config.connection()).await
}
