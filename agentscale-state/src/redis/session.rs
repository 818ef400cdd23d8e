//! Redis [`SessionStore`].

use std::fmt;

use agentscale_core::{Error, Result, SessionKey, SessionState, SessionStore};
use agentscale_redis::RedisConnection;
use async_trait::async_trait;
use bytes::Bytes;
use redis::Script;

use super::config::{millis, RedisStateConfig};
use super::{connect, redis_error};
use agentscale_redis::Redis;

/// `KEYS`: state hash, history list. `ARGV`: expected version, data, ttl ms.
/// Returns the new version, -1 for a tombstone, or -2 - current version.
const PUT: &str = r"
local s = redis.call('HMGET', KEYS[1], 'v', 'x')
if s[2] then return -1 end
local cur = tonumber(s[1]) or 0
if cur ~= tonumber(ARGV[1]) then return -2 - cur end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('HSET', KEYS[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return v
";

/// `KEYS`: state, history. `ARGV`: entry, cap, ttl ms. Returns the history
/// length, or -1 for a tombstone.
const APPEND: &str = r"
if redis.call('HEXISTS', KEYS[1], 'x') == 1 then return -1 end
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
local cap = tonumber(ARGV[2])
if n > cap then
  redis.call('LTRIM', KEYS[2], -cap, -1)
  n = cap
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return n
";

/// `KEYS`: state, history. `ARGV`: ttl ms. Returns 1 if the session existed.
/// Leaves a tombstone hash `{x = 1}` that lives for the TTL.
const DELETE: &str = r"
local s = redis.call('HMGET', KEYS[1], 'd', 'x')
if s[2] then return 0 end
local existed = 0
if s[1] or redis.call('EXISTS', KEYS[2]) == 1 then existed = 1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'x', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return existed
";

/// `KEYS`: state, history. `ARGV`: ttl ms. `get` with refresh on read.
const GET_REFRESH: &str = r"
local s = redis.call('HMGET', KEYS[1], 'v', 'd')
if s[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return s
";

/// `KEYS`: state, history. `ARGV`: ttl ms, limit. `history` with refresh on read.
const HISTORY_REFRESH: &str = r"
local h = redis.call('LRANGE', KEYS[2], -tonumber(ARGV[2]), -1)
if #h > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return h
";

/// Session state in Redis, shared by every replica.
///
/// Per session two keys, sharing a Redis Cluster hash tag:
/// `{prefix}:{<tenant>:sess:<session>}:state` (hash: `v` version, `d` data,
/// `x` tombstone marker) and `…:hist` (list). Writes run as one Lua script
/// each (via `EVALSHA`): the version check, the write, the history trim and
/// the TTL on both keys happen atomically. A plain `get` is one `HMGET`.
///
/// If a write's reply is lost (connection dropped, timeout) the caller gets
/// [`Error::Unavailable`] without knowing whether the write happened; re-read
/// the session before retrying (a blind retry with the same expected version
/// gets [`Error::Conflict`] if the first attempt did apply).
#[derive(Clone)]
pub struct RedisSessionStore {
    conn: RedisConnection,
    prefix: String,
    ttl_ms: u64,
    history_cap: usize,
    refresh_on_read: bool,
    put: Script,
    append: Script,
    delete: Script,
    get_refresh: Script,
    history_refresh: Script,
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("history_cap", &self.history_cap)
            .field("refresh_on_read", &self.refresh_on_read)
            .finish()
    }
}

impl RedisSessionStore {
    /// Validates `config`, connects and loads the scripts.
    pub async fn connect(config: RedisStateConfig) -> Result<Self> {
        let redis = connect(&config).await?;
        Self::new(redis, config).await
    }

    /// The same on an existing [`Redis`] handle, sharing its connection with
    /// other backends; the connection settings of `config` (`url`,
    /// timeouts) are not used.
    pub async fn new(redis: Redis, config: RedisStateConfig) -> Result<Self> {
        config.validate()?;
        let conn = redis.connection();
        let store = RedisSessionStore {
            conn,
            prefix: config.key_prefix.clone(),
            ttl_ms: millis(config.ttl),
            history_cap: config.history_cap,
            refresh_on_read: config.refresh_on_read,
            put: Script::new(PUT),
            append: Script::new(APPEND),
            delete: Script::new(DELETE),
            get_refresh: Script::new(GET_REFRESH),
            history_refresh: Script::new(HISTORY_REFRESH),
        };
        let mut conn = store.conn.clone();
        for s in [
            &store.put,
            &store.append,
            &store.delete,
            &store.get_refresh,
            &store.history_refresh,
        ] {
            s.prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| redis_error("SCRIPT LOAD", e))?;
        }
        Ok(store)
    }

    /// The state and history keys of `key`.
    fn keys(&self, key: &SessionKey) -> (String, String) {
        let base = format!("{}:{{{}:sess:{}}}", self.prefix, key.tenant(), key.session());
        (format!("{base}:state"), format!("{base}:hist"))
    }
}

fn tombstoned(key: &SessionKey) -> Error {
    Error::Conflict(format!(
        "{key:?} was deleted; a deleted session cannot be written"
    ))
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<SessionState>> {
        let (state, hist) = self.keys(key);
        let mut conn = self.conn.clone();
        let (version, data): (Option<u64>, Option<Vec<u8>>) = if self.refresh_on_read {
            self.get_refresh
                .key(&state)
                .key(&hist)
                .arg(self.ttl_ms)
                .invoke_async(&mut conn)
                .await
        } else {
            redis::cmd("HMGET")
                .arg(&state)
                .arg("v")
                .arg("d")
                .query_async(&mut conn)
                .await
        }
        .map_err(|e| redis_error("session get", e))?;
        Ok(match (version, data) {
            (Some(version), Some(data)) => Some(SessionState {
                version,
                data: Bytes::from(data),
            }),
            _ => None,
        })
    }

    async fn put(&self, key: &SessionKey, expected_version: u64, data: Bytes) -> Result<u64> {
        let (state, hist) = self.keys(key);
        let mut conn = self.conn.clone();
        let r: i64 = self
            .put
            .key(&state)
            .key(&hist)
            .arg(expected_version)
            .arg(data.as_ref())
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("session put", e))?;
        match r {
            v if v > 0 => Ok(v as u64),
            -1 => Err(tombstoned(key)),
            other => Err(Error::Conflict(format!(
                "{key:?} is at version {}, the writer expected {expected_version}",
                -2 - other
            ))),
        }
    }

    async fn append(&self, key: &SessionKey, entry: Bytes) -> Result<u64> {
        let (state, hist) = self.keys(key);
        let mut conn = self.conn.clone();
        let r: i64 = self
            .append
            .key(&state)
            .key(&hist)
            .arg(entry.as_ref())
            .arg(self.history_cap)
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("session append", e))?;
        if r < 0 {
            return Err(tombstoned(key));
        }
        Ok(r as u64)
    }

    async fn history(&self, key: &SessionKey, limit: usize) -> Result<Vec<Bytes>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(self.history_cap);
        let (state, hist) = self.keys(key);
        let mut conn = self.conn.clone();
        let entries: Vec<Vec<u8>> = if self.refresh_on_read {
            self.history_refresh
                .key(&state)
                .key(&hist)
                .arg(self.ttl_ms)
                .arg(limit)
                .invoke_async(&mut conn)
                .await
        } else {
            redis::cmd("LRANGE")
                .arg(&hist)
                .arg(-(limit as i64))
                .arg(-1)
                .query_async(&mut conn)
                .await
        }
        .map_err(|e| redis_error("session history", e))?;
        Ok(entries.into_iter().map(Bytes::from).collect())
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let (state, hist) = self.keys(key);
        let mut conn = self.conn.clone();
        let r: i64 = self
            .delete
            .key(&state)
            .key(&hist)
            .arg(self.ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("session delete", e))?;
        Ok(r == 1)
    }
}
