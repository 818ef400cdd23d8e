//! Redis [`ResultStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::results::{DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_RESULT_TTL};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Recorded, Result, ResultStore, TaskId, TaskOutcome, TaskResult};
use agentscale_redis::RedisConnection;
use async_trait::async_trait;
use redis::Script;

use super::config::{millis, RedisStateConfig};
use super::wakeups::{wait_for, Wakeups};
use super::{connect, redis_error};

/// `KEYS`: result hash. `ARGV`: state, payload, now ms, ttl ms, channel.
/// Returns 1 when stored, 0 when a result existed (duplicate counted).
const RECORD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'd', 1)
  return 0
end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'p', ARGV[2], 't', ARGV[3], 'd', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], '1')
return 1
";

/// Task results in Redis, shared by every replica and every API gateway.
///
/// One hash per task, `{prefix}:{res:<task id>}` (`s` state, `p` output or
/// reason, `t` recorded at, `d` duplicates), written by one Lua script: the
/// first record wins, later ones only count a duplicate, the TTL is set with
/// the write, and a `PUBLISH` on `{prefix}:res-done:<task id>` wakes waiters.
/// Waiters share one pub/sub connection per store and subscribe before they
/// check, so no completion is missed.
#[derive(Clone)]
pub struct RedisResultStore {
    conn: RedisConnection,
    prefix: String,
    ttl_ms: u64,
    max_output_bytes: usize,
    record: Script,
    wakeups: Arc<Wakeups>,
}

impl fmt::Debug for RedisResultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisResultStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("max_output_bytes", &self.max_output_bytes)
            .finish()
    }
}

/// Builds a [`RedisResultStore`].
#[derive(Debug, Clone)]
pub struct RedisResultStoreBuilder {
    config: RedisStateConfig,
    ttl: Duration,
    max_output_bytes: usize,
}

impl RedisResultStoreBuilder {
    /// How long a result is kept (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Largest output accepted (default 1 MiB).
    pub fn max_output_bytes(mut self, n: usize) -> Self {
        self.max_output_bytes = n;
        self
    }

    /// Validates, connects and loads the script.
    pub async fn connect(self) -> Result<RedisResultStore> {
        if self.ttl < Duration::from_millis(1) || self.max_output_bytes == 0 {
            return Err(Error::InvalidConfig(
                "result store ttl and max_output_bytes must be greater than zero".into(),
            ));
        }
        if self.max_output_bytes > 512 << 20 {
            return Err(Error::InvalidConfig(
                "result store max_output_bytes is over Redis' 512 MiB".into(),
            ));
        }
        let conn = connect(&self.config).await?.connection();
        let client = redis::Client::open(self.config.url.expose())
            .map_err(|e| Error::InvalidConfig(format!("redis url is invalid: {:?}", e.kind())))?;
        Ok(RedisResultStore {
            conn,
            prefix: self.config.key_prefix.clone(),
            ttl_ms: millis(self.ttl),
            max_output_bytes: self.max_output_bytes,
            record: Script::new(RECORD),
            wakeups: Arc::new(Wakeups::new(client, self.config.connect_timeout)),
        })
    }
}

impl RedisResultStore {
    /// Starts configuring a store on the Redis of `config` (its URL, key
    /// prefix and timeouts).
    pub fn builder(config: RedisStateConfig) -> RedisResultStoreBuilder {
        RedisResultStoreBuilder {
            config,
            ttl: DEFAULT_RESULT_TTL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    fn key(&self, id: &TaskId) -> String {
        format!("{}:{{res:{}}}", self.prefix, id)
    }

    fn channel(&self, id: &TaskId) -> String {
        format!("{}:res-done:{}", self.prefix, id)
    }
}

type Row = (Option<String>, Option<Vec<u8>>, Option<u64>, Option<u64>);

fn parse(id: &TaskId, row: Row) -> Result<Option<TaskResult>> {
    let (Some(state), payload, at, dups) = row else {
        return Ok(None);
    };
    Ok(Some(TaskResult {
        id: id.clone(),
        outcome: TaskOutcome::from_parts(&state, payload)?,
        recorded_at_ms: at.unwrap_or(0),
        duplicates: dups.unwrap_or(0),
    }))
}

#[async_trait]
impl ResultStore for RedisResultStore {
    fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    async fn record(&self, id: &TaskId, outcome: TaskOutcome) -> Result<Recorded> {
        outcome.check_size(self.max_output_bytes)?;
        let (state, payload) = outcome.to_parts();
        let mut conn = self.conn.clone();
        let stored: i64 = self
            .record
            .key(self.key(id))
            .arg(state)
            .arg(payload.unwrap_or_default())
            .arg(now_ms())
            .arg(self.ttl_ms)
            .arg(self.channel(id))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("record result", e))?;
        Ok(if stored == 1 {
            Recorded::First
        } else {
            Recorded::Duplicate
        })
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        let mut conn = self.conn.clone();
        let row: Row = redis::cmd("HMGET")
            .arg(self.key(id))
            .arg(&["s", "p", "t", "d"])
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("get result", e))?;
        parse(id, row)
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>> {
        wait_for(
            &self.wakeups,
            self.channel(id),
            timeout,
            Duration::from_secs(5),
            || self.get(id),
        )
        .await
    }
}
