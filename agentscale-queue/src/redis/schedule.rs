//! [`RedisScheduleStore`]: schedules shared by every scheduler of a fleet.
//!
//! # Key layout
//!
//! All keys carry the hash tag `{schedules}` (one Cluster slot), under
//! prefix `P`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{schedules}:defs` | hash | name → schedule (JSON) |
//! | `P:{schedules}:paused` | set | paused names |
//! | `P:{schedules}:last` | hash | name → last fired tick (ms) |
//! | `P:{schedules}:tick:<name>:<tick>` | string | `c:<owner>` while claimed (expires after the claim TTL), `f` once fired (kept past the catch-up window) |
//!
//! A claim is `SET NX PX` on the tick's key, for each due tick in one
//! script: of two schedulers, exactly one gets each tick.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use agentscale_core::flow::schedule::{Schedule, ScheduleState, ScheduleStore};
use agentscale_core::{Error, Result};
use agentscale_redis::{map_error as map_err, Redis};
use async_trait::async_trait;
use redis::Script;

/// KEYS: tick keys. ARGV: claim value, ttl ms. Returns the indexes (1-based)
/// of the keys claimed.
const CLAIM: &str = r#"
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then out[#out + 1] = i end
end
return out
"#;

/// KEYS: tick key, last hash. ARGV: name, tick, retain ms.
const MARK: &str = r#"
redis.call('SET', KEYS[1], 'f', 'PX', ARGV[3])
local l = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > l then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
return 1
"#;

/// Schedules in Redis, for [`Scheduler`](agentscale_core::flow::schedule::Scheduler)s
/// on many replicas.
#[derive(Clone)]
pub struct RedisScheduleStore {
    redis: Redis,
    base: String,
    claim: Script,
    mark: Script,
}

impl fmt::Debug for RedisScheduleStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisScheduleStore")
            .field("redis", &self.redis)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl RedisScheduleStore {
    /// A store on `redis` under key prefix `prefix` (an identifier).
    pub fn new(redis: Redis, prefix: &str) -> Result<Self> {
        agentscale_core::flow::validate_identifier("schedule key prefix", prefix)
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        Ok(RedisScheduleStore {
            redis,
            base: format!("{prefix}:{{schedules}}"),
            claim: Script::new(CLAIM),
            mark: Script::new(MARK),
        })
    }

    fn k(&self, what: &str) -> String {
        format!("{}:{what}", self.base)
    }

    fn tick_key(&self, name: &str, tick: u64) -> String {
        format!("{}:tick:{name}:{tick}", self.base)
    }

    /// Deletes every schedule (tick keys expire on their own).
    pub async fn destroy(&self) -> Result<()> {
        let mut conn = self.redis.connection();
        redis::cmd("DEL")
            .arg(&[self.k("defs"), self.k("paused"), self.k("last")])
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| map_err("DEL", e))
    }
}

#[async_trait]
impl ScheduleStore for RedisScheduleStore {
    async fn put(&self, schedule: &Schedule) -> Result<()> {
        schedule.validate()?;
        let json = serde_json::to_string(schedule)
            .map_err(|e| Error::InvalidInput(format!("schedule {}: {e}", schedule.name)))?;
        let mut conn = self.redis.connection();
        redis::cmd("HSET")
            .arg(self.k("defs"))
            .arg(&schedule.name)
            .arg(json)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| map_err("HSET", e))
    }

    async fn remove(&self, name: &str) -> Result<bool> {
        let mut conn = self.redis.connection();
        let (n, _, _): (i64, i64, i64) = redis::pipe()
            .atomic()
            .hdel(self.k("defs"), name)
            .srem(self.k("paused"), name)
            .hdel(self.k("last"), name)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("remove schedule", e))?;
        Ok(n == 1)
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<()> {
        let mut conn = self.redis.connection();
        let exists: bool = redis::cmd("HEXISTS")
            .arg(self.k("defs"))
            .arg(name)
            .query_async(&mut conn)
            .await
            .map_err(|e| map_err("HEXISTS", e))?;
        if !exists {
            return Err(Error::NotFound(format!("schedule {name:?}")));
        }
        let cmd = if paused { "SADD" } else { "SREM" };
        redis::cmd(cmd)
            .arg(self.k("paused"))
            .arg(name)
            .query_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| map_err(cmd, e))
    }

    async fn list(&self) -> Result<Vec<ScheduleState>> {
        let mut conn = self.redis.connection();
        let (defs, paused, last): (HashMap<String, String>, HashSet<String>, HashMap<String, u64>) =
            redis::pipe()
                .hgetall(self.k("defs"))
                .smembers(self.k("paused"))
                .hgetall(self.k("last"))
                .query_async(&mut conn)
                .await
                .map_err(|e| map_err("list schedules", e))?;
        let mut out = Vec::with_capacity(defs.len());
        for (name, json) in defs {
            match serde_json::from_str::<Schedule>(&json) {
                Ok(schedule) => out.push(ScheduleState::new(
                    schedule,
                    paused.contains(&name),
                    last.get(&name).copied(),
                )),
                Err(e) => {
                    tracing::warn!(schedule = %name, error = %e, "stored schedule is not readable; skipped")
                }
            }
        }
        out.sort_by(|a, b| a.schedule.name.cmp(&b.schedule.name));
        Ok(out)
    }

    async fn claim(&self, name: &str, ticks: &[u64], owner: &str, ttl: Duration) -> Result<Vec<u64>> {
        if ticks.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.claim.prepare_invoke();
        for t in ticks {
            inv.key(self.tick_key(name, *t));
        }
        inv.arg(format!("c:{owner}")).arg(ttl.as_millis().max(1) as u64);
        let mut conn = self.redis.connection();
        let idx: Vec<usize> = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| map_err("claim ticks", e))?;
        Ok(idx
            .into_iter()
            .filter_map(|i| ticks.get(i.wrapping_sub(1)).copied())
            .collect())
    }

    async fn mark_fired(&self, name: &str, tick: u64, retain: Duration) -> Result<()> {
        let mut inv = self.mark.key(self.tick_key(name, tick));
        inv.key(self.k("last"))
            .arg(name)
            .arg(tick)
            .arg(retain.as_millis().max(1) as u64);
        let mut conn = self.redis.connection();
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| map_err("mark tick fired", e))
    }
}
