//! Redis [`JoinStore`]: one slot per child, the decision by one Lua script.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::join::{
    ChildReport, ChildStatus, Decision, JoinPolicy, JoinSpec, JoinState, Reported, Slot, DEFAULT_JOIN_TTL,
};
use agentscale_core::task::now_ms;
use agentscale_core::{CodecError, Error, JoinId, JoinStore, Result, Task, TaskId};
use agentscale_redis::RedisConnection;
use async_trait::async_trait;
use redis::Script;

use super::config::{millis, RedisStateConfig};
use super::wakeups::{wait_for, Wakeups};
use super::{connect, redis_error};

/// `KEYS`: meta, slots, kids. `ARGV`: ttl ms, policy, k, n, deadline ms
/// (0 = none), continuation queue, continuation envelope, children JSON,
/// then the child ids. Returns 1 when created, 0 when it existed.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'p', ARGV[2], 'k', ARGV[3], 'n', ARGV[4], 'dl', ARGV[5],
  'cq', ARGV[6], 'ct', ARGV[7], 'c', ARGV[8], 'ok', 0, 'fl', 0, 'dn', 0, 'enq', 0, 'dup', 0, 'late', 0)
for i = 9, #ARGV do redis.call('HSET', KEYS[3], ARGV[i], 1) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return 1
";

/// Shared tail of REPORT and EXPIRE: the decision and, when decided and not
/// yet enqueued, the continuation.
const TAIL: &str = r"
local m = redis.call('HMGET', KEYS[1], 'dec', 'enq')
if m[1] and m[2] == '0' then
  local c = redis.call('HMGET', KEYS[1], 'cq', 'ct')
  return {slot, now, m[1], c[1], c[2]}
end
return {slot, now, m[1] or '', '', ''}
";

/// `KEYS`: meta, slots, kids. `ARGV`: child, slot value, '1' ok / '0'
/// failed, channel.
const REPORT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then return {'stranger'} end
local slot = 'filled'
local now = '0'
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'dup', 1)
  slot = 'dup'
elseif redis.call('HEXISTS', KEYS[1], 'dec') == 1 then
  redis.call('HINCRBY', KEYS[1], 'late', 1)
  slot = 'late'
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
  local ok, fl
  if ARGV[3] == '1' then
    ok = redis.call('HINCRBY', KEYS[1], 'ok', 1)
    fl = tonumber(redis.call('HGET', KEYS[1], 'fl'))
  else
    fl = redis.call('HINCRBY', KEYS[1], 'fl', 1)
    ok = tonumber(redis.call('HGET', KEYS[1], 'ok'))
  end
  local p = redis.call('HMGET', KEYS[1], 'p', 'n', 'k')
  local n, k = tonumber(p[2]), tonumber(p[3])
  local d = false
  if p[1] == 'all' then
    if ok + fl >= n then d = 'settled' end
  elseif ok >= k then d = 'met'
  elseif fl > n - k then d = 'unmet' end
  if d then
    redis.call('HSET', KEYS[1], 'dec', d)
    redis.call('HINCRBY', KEYS[1], 'dn', 1)
    redis.call('PUBLISH', ARGV[4], d)
    now = '1'
  end
end
";

/// `KEYS`: meta. `ARGV`: now ms, channel.
const EXPIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local slot = 'none'
local now = '0'
if redis.call('HEXISTS', KEYS[1], 'dec') == 0 then
  local dl = tonumber(redis.call('HGET', KEYS[1], 'dl')) or 0
  if dl > 0 and tonumber(ARGV[1]) >= dl then
    redis.call('HSET', KEYS[1], 'dec', 'deadline')
    redis.call('HINCRBY', KEYS[1], 'dn', 1)
    redis.call('PUBLISH', ARGV[2], 'deadline')
    now = '1'
  end
end
";

/// `KEYS`: meta. Returns 1, 0 when not decided, -1 when unknown.
const MARK: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], 'dec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'enq', 1)
return 1
";

/// Joins in Redis, shared by every worker and coordinator replica.
///
/// Per join three keys sharing the hash tag `{join:<id>}`:
/// `{prefix}:{join:<id>}:m` (policy, counters, decision, continuation),
/// `…:s` (one field per reported child: its slot) and `…:k` (the child ids).
/// A report is one Lua script: it fills the child's slot only if empty
/// (`HEXISTS`, so a redelivered child never counts twice), updates the
/// counters, evaluates the policy and sets the decision if none is set yet
/// (compare-and-set), then publishes on `{prefix}:join-done:<id>`. All keys
/// expire with the join's TTL.
#[derive(Clone)]
pub struct RedisJoinStore {
    conn: RedisConnection,
    prefix: String,
    ttl_ms: u64,
    create: Script,
    report: Script,
    expire: Script,
    mark: Script,
    wakeups: Arc<Wakeups>,
}

impl fmt::Debug for RedisJoinStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisJoinStore")
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

/// Builds a [`RedisJoinStore`].
#[derive(Debug, Clone)]
pub struct RedisJoinStoreBuilder {
    config: RedisStateConfig,
    ttl: Duration,
}

impl RedisJoinStoreBuilder {
    /// How long a join is kept after creation (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Validates, connects and loads the scripts.
    pub async fn connect(self) -> Result<RedisJoinStore> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::InvalidConfig(
                "join store ttl must be greater than zero".into(),
            ));
        }
        let conn = connect(&self.config).await?.connection();
        let client = redis::Client::open(self.config.url.expose())
            .map_err(|e| Error::InvalidConfig(format!("redis url is invalid: {:?}", e.kind())))?;
        Ok(RedisJoinStore {
            conn,
            prefix: self.config.key_prefix.clone(),
            ttl_ms: millis(self.ttl),
            create: Script::new(CREATE),
            report: Script::new(&format!("{REPORT}{TAIL}")),
            expire: Script::new(&format!("{EXPIRE}{TAIL}")),
            mark: Script::new(MARK),
            wakeups: Arc::new(Wakeups::new(client, self.config.connect_timeout)),
        })
    }
}

impl RedisJoinStore {
    /// Starts configuring a store on the Redis of `config`.
    pub fn builder(config: RedisStateConfig) -> RedisJoinStoreBuilder {
        RedisJoinStoreBuilder {
            config,
            ttl: DEFAULT_JOIN_TTL,
        }
    }

    fn keys(&self, join: &JoinId) -> [String; 3] {
        let base = format!("{}:{{join:{}}}", self.prefix, join);
        [format!("{base}:m"), format!("{base}:s"), format!("{base}:k")]
    }

    fn channel(&self, join: &JoinId) -> String {
        format!("{}:join-done:{}", self.prefix, join)
    }

    async fn is_decided(&self, join: &JoinId) -> Result<Option<bool>> {
        let mut conn = self.conn.clone();
        let [m, _, _] = self.keys(join);
        let (exists, decided): (bool, bool) = redis::pipe()
            .exists(&m)
            .hexists(&m, "dec")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("join decided", e))?;
        if !exists {
            return Err(Error::NotFound(format!("join {join} is unknown or expired")));
        }
        Ok(decided.then_some(true))
    }
}

fn malformed(m: impl Into<String>) -> Error {
    Error::Codec(CodecError::Malformed(m.into()))
}

fn parse_reported(join: &JoinId, reply: Vec<Vec<u8>>) -> Result<Reported> {
    let text = |i: usize| {
        reply
            .get(i)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    match text(0).as_str() {
        "unknown" => return Err(Error::NotFound(format!("join {join} is unknown or expired"))),
        "stranger" => return Err(Error::NotFound(format!("task is not a child of join {join}"))),
        _ => {}
    }
    let slot = match text(0).as_str() {
        "filled" => Slot::Filled,
        "dup" => Slot::Duplicate,
        "late" => Slot::Late,
        "none" => Slot::None,
        other => return Err(malformed(format!("join script answered {other:?}"))),
    };
    let decision = match text(2).as_str() {
        "" => None,
        d => Some(Decision::parse(d)?),
    };
    let continuation = match reply.get(4) {
        Some(ct) if !ct.is_empty() => Some((text(3), Task::decode(ct)?)),
        _ => None,
    };
    Ok(Reported {
        slot,
        decision,
        decided_now: text(1) == "1",
        continuation,
    })
}

#[async_trait]
impl JoinStore for RedisJoinStore {
    async fn create(&self, spec: &JoinSpec) -> Result<bool> {
        spec.validate()?;
        let (policy, k) = match spec.policy {
            JoinPolicy::All => ("all", spec.children.len() as u32),
            JoinPolicy::Quorum(k) => ("quorum", k),
            JoinPolicy::FirstSuccess => ("first", 1),
        };
        let children = serde_json::to_vec(
            &spec
                .children
                .iter()
                .map(|(id, label)| (id.as_str(), label.as_str()))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| malformed(format!("children: {e}")))?;
        let envelope = spec.continuation.encode()?;
        let [m, s, kk] = self.keys(&spec.id);
        let mut inv = self.create.key(m);
        inv.key(s)
            .key(kk)
            .arg(self.ttl_ms)
            .arg(policy)
            .arg(k)
            .arg(spec.children.len())
            .arg(spec.deadline_ms.unwrap_or(0))
            .arg(&spec.continuation_queue)
            .arg(envelope)
            .arg(children);
        for (id, _) in &spec.children {
            inv.arg(id.as_str());
        }
        let mut conn = self.conn.clone();
        let created: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("create join", e))?;
        Ok(created == 1)
    }

    async fn report(&self, join: &JoinId, child: &TaskId, status: ChildStatus) -> Result<Reported> {
        let ok = match &status {
            ChildStatus::Ok(_) => "1",
            ChildStatus::Failed(_) => "0",
            other => return Err(Error::InvalidInput(format!("a child cannot report {other:?}"))),
        };
        let slot = status.encode_slot()?;
        let [m, s, k] = self.keys(join);
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self
            .report
            .key(m)
            .key(s)
            .key(k)
            .arg(child.as_str())
            .arg(slot)
            .arg(ok)
            .arg(self.channel(join))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("report to join", e))?;
        parse_reported(join, reply).map_err(|e| match e {
            Error::NotFound(m) if m.starts_with("task is not") => {
                Error::NotFound(format!("task {child} is not a child of join {join}"))
            }
            other => other,
        })
    }

    async fn expire(&self, join: &JoinId) -> Result<Reported> {
        let [m, _, _] = self.keys(join);
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self
            .expire
            .key(m)
            .arg(now_ms())
            .arg(self.channel(join))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("expire join", e))?;
        parse_reported(join, reply)
    }

    async fn mark_enqueued(&self, join: &JoinId) -> Result<()> {
        let [m, _, _] = self.keys(join);
        let mut conn = self.conn.clone();
        let r: i64 = self
            .mark
            .key(m)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error("mark join continuation", e))?;
        match r {
            1 => Ok(()),
            0 => Err(Error::Conflict(format!("join {join} is not decided"))),
            _ => Err(Error::NotFound(format!("join {join} is unknown or expired"))),
        }
    }

    async fn state(&self, join: &JoinId) -> Result<Option<JoinState>> {
        let [m, s, _] = self.keys(join);
        let mut conn = self.conn.clone();
        let (meta, slots): (HashMap<String, Vec<u8>>, HashMap<String, Vec<u8>>) = redis::pipe()
            .hgetall(&m)
            .hgetall(&s)
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("read join", e))?;
        if meta.is_empty() {
            return Ok(None);
        }
        let text = |f: &str| {
            meta.get(f)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let num = |f: &str| text(f).parse::<u64>().unwrap_or(0);
        let policy = match text("p").as_str() {
            "all" => JoinPolicy::All,
            "quorum" => JoinPolicy::Quorum(num("k") as u32),
            "first" => JoinPolicy::FirstSuccess,
            other => return Err(malformed(format!("join policy {other:?}"))),
        };
        let decision = match text("dec").as_str() {
            "" => None,
            d => Some(Decision::parse(d)?),
        };
        let kids: Vec<(String, String)> =
            serde_json::from_slice(meta.get("c").map(Vec::as_slice).unwrap_or(b"[]"))
                .map_err(|e| malformed(format!("join children: {e}")))?;
        let mut children = Vec::with_capacity(kids.len());
        for (id, label) in kids {
            let status = match slots.get(&id) {
                Some(v) => ChildStatus::decode_slot(v)?,
                None if decision.is_some() => ChildStatus::TimedOut,
                None => ChildStatus::Pending,
            };
            children.push(ChildReport {
                id: TaskId::new(id),
                label,
                status,
            });
        }
        let dl = num("dl");
        Ok(Some(JoinState {
            id: join.clone(),
            policy,
            deadline_ms: (dl > 0).then_some(dl),
            decision,
            continuation_enqueued: text("enq") == "1",
            children,
            duplicates: num("dup"),
            late: num("late"),
            decisions: num("dn"),
        }))
    }

    async fn wait_decided(&self, join: &JoinId, timeout: Duration) -> Result<bool> {
        if timeout.is_zero() {
            return Ok(self.is_decided(join).await?.is_some());
        }
        let got = wait_for(
            &self.wakeups,
            self.channel(join),
            timeout,
            Duration::from_secs(5),
            || self.is_decided(join),
        )
        .await?;
        Ok(got.is_some())
    }
}
