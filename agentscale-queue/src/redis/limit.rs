//! [`RedisLimiter`]: rate limits and concurrency caps shared by a fleet.
//!
//! # Key layout
//!
//! With prefix `P` and limit key `K`, every key of one limit carries the hash
//! tag `{K}`, so one decision is one script on one Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:limit:{K}` | hash | the limit: `rate`, `burst`, `max` |
//! | `P:limit:{K}:bucket` | hash | `tokens`, `ts` (ms, Redis clock); expires once full again |
//! | `P:limit:{K}:held` | sorted set | in-flight permits, score = counted until (ms) |
//! | `P:limits` | set | every limited key (for listing) |
//!
//! The script reads the limit, refills the bucket from the Redis server's
//! clock (`TIME`, so workers' clock skew does not matter), drops in-flight
//! permits whose hold ran out, and grants or defers atomically: two workers
//! can never take the same token or the last slot.

use std::fmt;
use std::time::Duration;

use agentscale_core::flow::limit::{
    check_definition, Admission, Exceeded, KeyCounters, KeyStats, Limit, Limiter, Permit, IN_FLIGHT_RETRY,
};
use agentscale_core::Result;
use agentscale_redis::{map_error as map_err, Redis};
use async_trait::async_trait;
use redis::Script;

/// KEYS: limit hash, bucket hash, held zset. ARGV: permit id, hold ms,
/// retry ms for a full in-flight cap.
/// Returns `{1}` granted without a slot, `{2}` granted with slot `id`,
/// `{0, retry_ms, 1 (in flight) | 2 (rate)}` deferred.
const ACQUIRE: &str = r#"
local cfg = redis.call('HMGET', KEYS[1], 'rate', 'burst', 'max')
local rate, burst, max = tonumber(cfg[1]), tonumber(cfg[2]), tonumber(cfg[3])
if not rate and not max then return {1} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
if max then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max then return {0, tonumber(ARGV[3]), 1} end
end
if rate then
  burst = burst or math.max(1, math.ceil(rate))
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  if tokens + 1e-9 < 1 then
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'ts', tostring(now))
    return {0, math.max(1, math.ceil((1 - tokens) * 1000 / rate)), 2}
  end
  redis.call('HSET', KEYS[2], 'tokens', tostring(math.max(0, tokens - 1)), 'ts', tostring(now))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
if max then
  local hold = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[3], now + hold, ARGV[1])
  if redis.call('PTTL', KEYS[3]) < hold + 1000 then redis.call('PEXPIRE', KEYS[3], hold + 1000) end
  return {2}
end
return {1}
"#;

/// Rate limits and in-flight caps by key, shared through Redis by every
/// process that uses the same prefix. Limits set here apply fleet-wide at
/// the next decision.
///
/// ```no_run
/// # async fn demo() -> agentscale_core::Result<()> {
/// use agentscale_core::flow::limit::{Limit, Limiter};
/// use agentscale_queue::redis::RedisLimiter;
/// use agentscale_redis::{Redis, RedisConfig};
///
/// let redis = Redis::connect(RedisConfig::builder().url("redis://127.0.0.1:6379").build()?).await?;
/// let limiter = RedisLimiter::new(redis, "agentscale")?;
/// limiter.set_limit("model:gpt", Limit::builder().rate_per_second(100.0).max_in_flight(20).build()?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisLimiter {
    redis: Redis,
    prefix: String,
    acquire: Script,
    counters: std::sync::Arc<KeyCounters>,
}

impl fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("redis", &self.redis)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    /// A limiter on `redis` under key prefix `prefix` (an identifier).
    pub fn new(redis: Redis, prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        agentscale_core::flow::validate_identifier("limiter key prefix", &prefix)
            .map_err(|e| agentscale_core::Error::InvalidConfig(e.to_string()))?;
        Ok(RedisLimiter {
            redis,
            prefix,
            acquire: Script::new(ACQUIRE),
            counters: Default::default(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}:limit:{{{key}}}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:limits", self.prefix)
    }

    /// Deletes every limit and its state (for tests and decommissioning).
    pub async fn destroy(&self) -> Result<()> {
        for (key, _) in self.limits().await? {
            self.remove_limit(&key).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Limiter for RedisLimiter {
    async fn set_limit(&self, key: &str, limit: Limit) -> Result<()> {
        check_definition(key, &limit)?;
        let k = self.key(key);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&k).ignore();
        if let Some(r) = limit.rate_per_second {
            pipe.hset(&k, "rate", r.to_string()).ignore();
            pipe.hset(&k, "burst", limit.effective_burst().to_string())
                .ignore();
        }
        if let Some(m) = limit.max_in_flight {
            pipe.hset(&k, "max", m).ignore();
        }
        pipe.sadd(self.index(), key).ignore();
        let mut conn = self.redis.connection();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_err("set_limit", e))
    }

    async fn remove_limit(&self, key: &str) -> Result<()> {
        let k = self.key(key);
        let mut conn = self.redis.connection();
        redis::pipe()
            .del(&[k.clone(), format!("{k}:bucket"), format!("{k}:held")])
            .ignore()
            .srem(self.index(), key)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| map_err("remove_limit", e))
    }

    async fn limits(&self) -> Result<Vec<(String, Limit)>> {
        let mut conn = self.redis.connection();
        let mut keys: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.index())
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("SMEMBERS", e))?;
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let (rate, burst, max): (Option<f64>, Option<f64>, Option<u32>) = redis::cmd("HMGET")
                .arg(self.key(&key))
                .arg(&["rate", "burst", "max"])
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err("HMGET", e))?;
            if rate.is_none() && max.is_none() {
                continue;
            }
            let mut b = Limit::builder();
            if let Some(r) = rate {
                b = b.rate_per_second(r);
                if let Some(burst) = burst {
                    b = b.burst(burst as u32);
                }
            }
            if let Some(m) = max {
                b = b.max_in_flight(m);
            }
            out.push((key, b.build()?));
        }
        Ok(out)
    }

    async fn acquire(&self, key: &str, hold: Duration) -> Result<Admission> {
        let k = self.key(key);
        let id = uuid_like();
        let mut inv = self.acquire.key(&k);
        inv.key(format!("{k}:bucket"))
            .key(format!("{k}:held"))
            .arg(&id)
            .arg(hold.as_millis().min(u64::MAX as u128) as u64)
            .arg(IN_FLIGHT_RETRY.as_millis() as u64);
        let mut conn = self.redis.connection();
        let reply: Vec<i64> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err("limit acquire", e))?;
        let admission = match reply[..] {
            [1] => Admission::Granted(Permit::new(key, None)),
            [2] => Admission::Granted(Permit::new(key, Some(id))),
            [0, ms, code] => Admission::Deferred {
                retry_in: Duration::from_millis(ms.max(1) as u64),
                exceeded: if code == 1 {
                    Exceeded::InFlight
                } else {
                    Exceeded::Rate
                },
            },
            _ => {
                return Err(agentscale_core::Error::backend(
                    "limit acquire",
                    format!("unexpected reply {reply:?}"),
                ))
            }
        };
        self.counters.record(key, &admission);
        Ok(admission)
    }

    async fn release(&self, permit: &Permit) -> Result<()> {
        let Some(id) = permit.id() else { return Ok(()) };
        let mut conn = self.redis.connection();
        redis::cmd("ZREM")
            .arg(format!("{}:held", self.key(permit.key())))
            .arg(id)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| map_err("limit release", e))
    }

    fn stats(&self) -> Vec<KeyStats> {
        self.counters.snapshot()
    }
}

/// A random permit id.
fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}
