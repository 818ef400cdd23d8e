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
//! Both use a multiplexed, auto-reconnecting connection (redis-rs
//! `ConnectionManager`); neither issues blocking commands. Connection
//! failures and timeouts are [`Error::Unavailable`] (retryable), other Redis
//! errors [`Error::Backend`].
//!
//! Keys (see `docs/state.md`) carry a Redis Cluster hash tag, so all keys of
//! one session (or one tool entry) share a slot and the Lua scripts are
//! cluster-safe. This client connects to a single Redis endpoint (or a proxy).
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

pub use config::RedisStateConfig;
pub use joins::{RedisJoinStore, RedisJoinStoreBuilder};
pub use results::{RedisResultStore, RedisResultStoreBuilder};
pub use session::RedisSessionStore;
pub use tool_cache::RedisToolCache;

use agentscale_core::config::redact_url;
use agentscale_core::{Error, Result};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Converts a Redis error at the boundary: connection trouble and timeouts
/// are retryable [`Error::Unavailable`], the rest [`Error::Backend`].
pub(crate) fn redis_error(context: &str, e: redis::RedisError) -> Error {
    use redis::ErrorKind as K;
    let transient = e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_io_error()
        || matches!(
            e.kind(),
            K::BusyLoadingError | K::TryAgain | K::ClusterDown | K::MasterDown | K::ReadOnly | K::IoError
        );
    if transient {
        Error::unavailable(format!("redis {context}: {e}"), e)
    } else {
        Error::backend(format!("redis {context}: {e}"), e)
    }
}

/// Opens a multiplexed, auto-reconnecting connection for `config`.
pub(crate) async fn connect(config: &RedisStateConfig) -> Result<ConnectionManager> {
    config.validate()?;
    let shown = redact_url(config.url.expose());
    let client = redis::Client::open(config.url.expose())
        .map_err(|e| Error::InvalidConfig(format!("redis url {shown} is invalid: {:?}", e.kind())))?;
    // One quick reconnect attempt smooths over a dropped connection; during a
    // real outage calls then fail fast with `Unavailable` (the caller's retry
    // policy decides what next) instead of blocking for seconds. The next call
    // after a failure starts a fresh reconnect, so recovery is automatic.
    let mc = ConnectionManagerConfig::new()
        .set_connection_timeout(config.connect_timeout)
        .set_response_timeout(config.command_timeout)
        .set_number_of_retries(1)
        .set_max_delay(500);
    ConnectionManager::new_with_config(client, mc)
        .await
        .map_err(|e| redis_error(&format!("connect to {shown}"), e))
}
