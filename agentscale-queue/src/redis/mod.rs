//! Redis Streams task queue.
//!
//! # Key layout
//!
//! With prefix `P` (config `key_prefix`, default `agentscale`) and queue `Q`,
//! every key carries the Redis Cluster hash tag `{Q}`, so one queue lives in
//! one slot and its Lua scripts run on Cluster unchanged:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:{Q}:stream:high`, `…:normal`, `…:low` | stream | ready and leased tasks, field `task` = envelope |
//! | `P:{Q}:delayed` | sorted set | retries and `not_before` tasks, score = due ms, member = priority digit + task id + `:` + a random nonce (two copies of one task never merge) |
//! | `P:{Q}:delayed:tasks` | hash | member of `…:delayed` → envelope |
//! | `P:{Q}:dead` | stream | dead letters: `task`, `reason`, `attempts`, `dead_at`, `raw` |
//! | `P:{Q}:idem:<key>` | string | idempotency key → first task id, with a TTL |
//! | `P:{Q}:session:<id>`, `…:waiting`, `P:{Q}:sessions:waiting` | string, list, counter | ordered sessions only: the head, the tasks behind it, their count (see `sessions.rs`) |
//!
//! Workers join the consumer group `consumer_group` (default `workers`) on
//! each priority stream, with a consumer name unique per process.
//!
//! # Shards
//!
//! With [`RedisQueueConfig::shards`] = `N > 1` the queue is `N` copies of
//! this layout, shard `i` under the hash tag [`shard_tag`]`(Q, i, N)`
//! (`Q#i`, or `Q#i.k` so that the shards fall in even slot windows and
//! spread over a Cluster's masters). How calls are routed over the shards,
//! and what it costs (priority holds within a shard only), is described in
//! [`RedisQueue`]'s module, `shards.rs`.
//!
//! # Guarantees
//!
//! * **Lease = pending entry.** `lease` reads with `XREADGROUP`; the entry
//!   stays in the group's pending list (PEL) until settled. `extend` resets its
//!   idle time (`XCLAIM … JUSTID`, which does not count a delivery).
//! * **Reclaim.** Every `lease` call, at most once per `reclaim_interval`, runs
//!   `XAUTOCLAIM` with min-idle = `lease_timeout`, so any live worker takes over
//!   the tasks of a dead one.
//! * **Fencing.** The fence of a lease is the entry's delivery count. `ack`,
//!   `nack` and `extend` run a Lua script that checks the pending entry is still
//!   owned by this consumer with that delivery count; a reclaim bumps the count
//!   (and usually the owner), so a late ack gets [`Error::LeaseLost`].
//! * **Attempts.** A delivery's attempt = charged attempts in the envelope +
//!   the entry's delivery count: a lease that expired (crashed worker) counts
//!   as an attempt, so a task that kills its worker every time is eventually
//!   dead-lettered by the worker runtime (attempt > `max_attempts`). `Nack::Retry` charges; `Nack::Release` does not.
//! * **Bounded streams.** Settled entries are `XACK`ed *and* `XDEL`eted in the
//!   same script, so a stream holds only undelivered and in-flight tasks; no
//!   `MAXLEN` trimming ever drops unprocessed work. Hence
//!   `ready = XLEN − pending`, which equals the group's `lag` that KEDA's
//!   `redis-streams` scaler reads.
//!
//! [`Error::LeaseLost`]: agentscale_core::Error::LeaseLost

mod admin;
mod config;
mod lease;
mod limit;
mod reply;
#[cfg(feature = "schedule")]
mod schedule;
mod scripts;
mod sessions;
mod settle;
mod shards;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::queue::{DeadLetter, Depth, Enqueued};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Priority, Result, Task, TaskId};
use agentscale_redis::{map_error as map_err, Redis};
use redis::{RedisError, Script, Value};

pub use admin::{ReadyEntry, MAX_PEEK};
pub use config::{RedisQueueConfig, RedisQueueConfigBuilder, MAX_IDEMPOTENCY_TTL, MAX_SHARDS};
pub use limit::RedisLimiter;
use reply::*;
#[cfg(feature = "schedule")]
#[cfg_attr(docsrs, doc(cfg(feature = "schedule")))]
pub use schedule::RedisScheduleStore;
pub use shards::{shard_tag, RedisQueue};

/// The Redis key names of one queue (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisQueueKeys {
    /// Ready/leased streams, indexed by [`Priority::index`] (high, normal, low).
    pub streams: [String; 3],
    /// Sorted set of delayed tasks (members: priority digit, task id, nonce).
    pub delayed: String,
    /// Hash from a delayed member to its envelope.
    pub delayed_tasks: String,
    /// Dead-letter stream.
    pub dead: String,
    /// Prefix of idempotency keys (`<prefix><idempotency key>`).
    pub idempotency_prefix: String,
    /// Prefix of ordered-session keys (`<prefix><session id>` holds the
    /// head's task id, `…:waiting` the tasks behind it).
    pub session_prefix: String,
    /// Counter of tasks waiting behind session heads.
    pub sessions_waiting: String,
}

impl RedisQueueKeys {
    /// The key names for `queue` under `prefix` (the plain layout, one
    /// shard: hash tag `{queue}`).
    pub fn new(prefix: &str, queue: &str) -> Self {
        Self::with_tag(prefix, queue)
    }

    /// The key names of shard `shard` of a queue spread over `shards`
    /// (hash tag [`shard_tag`]; with `shards` ≤ 1 the plain layout).
    pub fn for_shard(prefix: &str, queue: &str, shard: usize, shards: usize) -> Self {
        Self::with_tag(prefix, &shard_tag(queue, shard, shards))
    }

    fn with_tag(prefix: &str, tag: &str) -> Self {
        let base = format!("{prefix}:{{{tag}}}");
        RedisQueueKeys {
            streams: [
                format!("{base}:stream:high"),
                format!("{base}:stream:normal"),
                format!("{base}:stream:low"),
            ],
            delayed: format!("{base}:delayed"),
            delayed_tasks: format!("{base}:delayed:tasks"),
            dead: format!("{base}:dead"),
            idempotency_prefix: format!("{base}:idem:"),
            session_prefix: format!("{base}:session:"),
            sessions_waiting: format!("{base}:sessions:waiting"),
        }
    }

    /// The stream of priority `p`.
    pub fn stream(&self, p: Priority) -> &str {
        &self.streams[p.index()]
    }
}

struct Scripts {
    lease: Script,
    settle: Script,
    ack_batch: Script,
    enqueue_idempotent: Script,
    delay: Script,
    depth: Script,
    replay: Script,
    promote: Script,
    session_enqueue: Script,
    session_settle: Script,
}

struct Inner {
    config: RedisQueueConfig,
    /// This shard's index, and whether receipts and dead-letter ids name it
    /// (only when the queue has more than one shard).
    index: usize,
    sharded: bool,
    consumer: String,
    keys: RedisQueueKeys,
    redis: Redis,
    scripts: Scripts,
    last_reclaim_ms: AtomicU64,
    cursors: parking_lot::Mutex<[String; 3]>,
    /// Entries read into this consumer's pending list and not handed out
    /// yet (a read's surplus, or the read of a dropped `lease` call).
    stash: parking_lot::Mutex<std::collections::VecDeque<lease::Stashed>>,
}

/// One shard of a [`RedisQueue`]: the streams, delayed set and dead
/// letters under one hash tag. Cheap to clone.
#[derive(Clone)]
pub(super) struct Shard {
    inner: Arc<Inner>,
}

struct Prepared {
    id: TaskId,
    envelope: Vec<u8>,
    prio: usize,
    delayed_until: Option<u64>,
    idempotency_key: Option<String>,
    /// The session, when this queue orders sessions.
    session: Option<String>,
}

impl Shard {
    /// Shard `index` of the queue `config` describes, on `redis`: creates
    /// its consumer groups.
    async fn open(redis: Redis, config: RedisQueueConfig, consumer: String, index: usize) -> Result<Self> {
        let keys = RedisQueueKeys::for_shard(&config.key_prefix, &config.queue, index, config.shards);
        let shard = Shard {
            inner: Arc::new(Inner {
                consumer,
                keys,
                redis,
                scripts: Scripts {
                    lease: Script::new(scripts::LEASE),
                    settle: Script::new(scripts::SETTLE),
                    ack_batch: Script::new(scripts::ACK_BATCH),
                    enqueue_idempotent: Script::new(scripts::ENQUEUE_IDEMPOTENT),
                    delay: Script::new(scripts::DELAY),
                    depth: Script::new(scripts::DEPTH),
                    replay: Script::new(scripts::REPLAY),
                    promote: Script::new(scripts::PROMOTE),
                    session_enqueue: Script::new(sessions::SESSION_ENQUEUE),
                    session_settle: sessions::session_settle_script(),
                },
                last_reclaim_ms: AtomicU64::new(0),
                cursors: parking_lot::Mutex::new(["0-0".into(), "0-0".into(), "0-0".into()]),
                stash: parking_lot::Mutex::new(std::collections::VecDeque::new()),
                index,
                sharded: config.shards > 1,
                config,
            }),
        };
        shard.ensure_groups().await?;
        Ok(shard)
    }

    async fn ensure_groups(&self) -> Result<()> {
        let mut conn = self.inner.redis.connection();
        for key in &self.inner.keys.streams {
            let r: std::result::Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(key)
                .arg(&self.inner.config.consumer_group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match r {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(map_err("XGROUP CREATE", e)),
            }
        }
        Ok(())
    }

    fn prepare(&self, task: &Task) -> Result<Prepared> {
        task.validate()?;
        if self.inner.config.ordered_sessions {
            agentscale_core::flow::validate_session(task)?;
        }
        let envelope = task.encode_limited(self.inner.config.max_envelope_bytes)?;
        let delayed_until = task.not_before_ms.filter(|t| *t > now_ms());
        Ok(Prepared {
            id: task.id.clone(),
            envelope,
            prio: task.priority.index(),
            delayed_until,
            idempotency_key: task.idempotency_key.clone(),
            session: self.ordered_session(task).map(str::to_string),
        })
    }

    /// Adds the commands storing `p` to `pipe`.
    fn push_enqueue(&self, pipe: &mut redis::Pipeline, p: &Prepared) {
        let keys = &self.inner.keys;
        let target = if p.delayed_until.is_some() {
            &keys.delayed
        } else {
            &keys.streams[p.prio]
        };
        let member = delayed_member(p.prio, &p.id);
        if let Some(session) = &p.session {
            self.push_session_enqueue(
                pipe,
                session,
                p.id.as_str(),
                p.prio,
                p.idempotency_key.as_deref(),
                p.delayed_until,
                &member,
                &p.envelope,
            );
            return;
        }
        match &p.idempotency_key {
            Some(k) => {
                let mut inv = self
                    .inner
                    .scripts
                    .enqueue_idempotent
                    .key(format!("{}{k}", keys.idempotency_prefix));
                inv.key(target)
                    .key(&keys.delayed_tasks)
                    .arg(p.id.as_str())
                    .arg(self.inner.config.idempotency_ttl.as_millis() as u64)
                    .arg(if p.delayed_until.is_some() { "z" } else { "x" })
                    .arg(&p.envelope[..])
                    .arg(p.delayed_until.unwrap_or(0))
                    .arg(&member);
                pipe.invoke_script(&inv);
            }
            None => match p.delayed_until {
                Some(score) => {
                    let mut inv = self.inner.scripts.delay.key(target);
                    inv.key(&keys.delayed_tasks)
                        .arg(&member)
                        .arg(score)
                        .arg(&p.envelope[..]);
                    pipe.invoke_script(&inv);
                }
                None => {
                    pipe.cmd("XADD")
                        .arg(target)
                        .arg("*")
                        .arg("task")
                        .arg(&p.envelope[..]);
                }
            },
        }
    }

    fn enqueued_from(p: &Prepared, v: Value) -> Enqueued {
        match (&p.idempotency_key, value_string(v)) {
            (Some(_), Some(first)) => Enqueued {
                id: TaskId::new(first),
                duplicate: true,
            },
            _ => Enqueued {
                id: p.id.clone(),
                duplicate: false,
            },
        }
    }

    async fn run_pipeline(&self, pipe: &redis::Pipeline, what: &str) -> Result<Vec<Value>> {
        let mut conn = self.inner.redis.connection();
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => Err(map_err(what, e)),
        }
    }

    /// Runs one of our scripts (EVALSHA, loading it on NOSCRIPT).
    async fn eval<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        what: &str,
    ) -> Result<T> {
        let mut conn = self.inner.redis.connection();
        inv.invoke_async(&mut conn).await.map_err(|e| map_err(what, e))
    }
}

/// A delayed-set member: priority digit, task id and a random nonce, so the
/// same task delayed twice (enqueued twice, or two deliveries retried with
/// the same delay) stays two entries.
fn delayed_member(prio: usize, id: &TaskId) -> String {
    format!("{prio}{}:{:016x}", id.as_str(), rand::random::<u64>())
}

impl Shard {
    pub(super) async fn enqueue(&self, task: Task) -> Result<Enqueued> {
        let p = self.prepare(&task)?;
        let mut pipe = redis::pipe();
        self.push_enqueue(&mut pipe, &p);
        let mut conn = self.inner.redis.connection();
        let mut reply: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.inner.scripts.enqueue_idempotent).ignore();
                pipe.load_script(&self.inner.scripts.delay).ignore();
                pipe.load_script(&self.inner.scripts.session_enqueue).ignore();
                self.push_enqueue(&mut pipe, &p);
                self.run_pipeline(&pipe, "enqueue").await?
            }
            Err(e) => return Err(map_err("enqueue", e)),
        };
        let v = reply.pop().ok_or_else(|| bad_reply("enqueue"))?;
        Ok(Self::enqueued_from(&p, v))
    }

    pub(super) async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let prepared: Vec<Result<Prepared>> = tasks.iter().map(|t| self.prepare(t)).collect();
        let ok: Vec<&Prepared> = prepared.iter().filter_map(|p| p.as_ref().ok()).collect();
        if ok.is_empty() {
            return prepared
                .into_iter()
                .map(|p| p.and(Err(bad_reply("enqueue_batch"))))
                .collect();
        }
        let mut pipe = redis::pipe();
        if ok.iter().any(|p| p.idempotency_key.is_some()) {
            pipe.load_script(&self.inner.scripts.enqueue_idempotent).ignore();
        }
        if ok.iter().any(|p| p.delayed_until.is_some()) {
            pipe.load_script(&self.inner.scripts.delay).ignore();
        }
        if ok.iter().any(|p| p.session.is_some()) {
            pipe.load_script(&self.inner.scripts.session_enqueue).ignore();
        }
        for p in &ok {
            self.push_enqueue(&mut pipe, p);
        }
        let replies = self.run_pipeline(&pipe, "enqueue_batch").await;
        match replies {
            Ok(values) if values.len() == ok.len() => {
                let mut values = values.into_iter();
                prepared
                    .into_iter()
                    .map(|p| {
                        let p = p?;
                        let v = values.next().unwrap_or(Value::Nil);
                        Ok(Self::enqueued_from(&p, v))
                    })
                    .collect()
            }
            Ok(_) => prepared
                .into_iter()
                .map(|p| p.and(Err(bad_reply("enqueue_batch"))))
                .collect(),
            Err(e) => {
                let kind = e.kind();
                let msg = e.to_string();
                prepared
                    .into_iter()
                    .map(|p| p.and(Err(Error::from_kind(kind, msg.clone()))))
                    .collect()
            }
        }
    }

    pub(super) async fn depth(&self) -> Result<Depth> {
        let keys = &self.inner.keys;
        let mut inv = self.inner.scripts.depth.key(&keys.streams[..]);
        inv.key(&keys.delayed)
            .key(&keys.dead)
            .arg(&self.inner.config.consumer_group)
            .arg(now_ms());
        let v: Vec<i64> = self.eval(&inv, "depth").await?;
        let [ready, in_flight, delayed, dead, oldest, due_delayed] = v[..] else {
            return Err(bad_reply("depth"));
        };
        let oldest_ready_age = u64::try_from(oldest)
            .ok()
            .map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)));
        let waiting = self.session_waiting().await?;
        Ok(Depth {
            ready: ready.max(0) as u64 + waiting,
            in_flight: in_flight.max(0) as u64,
            delayed: delayed.max(0) as u64,
            due_delayed: due_delayed.max(0) as u64,
            dead: dead.max(0) as u64,
            oldest_ready_age,
        })
    }

    pub(super) async fn promote_due(&self, max: usize) -> Result<u64> {
        if max == 0 {
            return Ok(0);
        }
        let keys = &self.inner.keys;
        let mut inv = self.inner.scripts.promote.key(&keys.streams[..]);
        inv.key(&keys.delayed)
            .key(&keys.delayed_tasks)
            .arg(now_ms())
            .arg(max);
        let moved: i64 = self.eval(&inv, "promote").await?;
        Ok(moved.max(0) as u64)
    }

    pub(super) async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_dead("-", "+", max).await
    }

    pub(super) async fn replay_dead_letter(&self, id: &str) -> Result<()> {
        let not_found =
            || Error::NotFound(format!("dead letter {id:?} in queue {}", self.inner.config.queue));
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(not_found());
        }
        let found = self.read_dead(id, id, 1).await?;
        let Some(dl) = found.into_iter().next() else {
            return Err(not_found());
        };
        let Some(mut task) = dl.task else {
            return Err(Error::InvalidInput(format!(
                "dead letter {id} is not a task envelope ({}); it cannot be replayed",
                dl.reason
            )));
        };
        task.attempt = 0;
        task.not_before_ms = None;
        let env = task.encode()?;
        let moved: i64 = if let Some(session) = self.ordered_session(&task) {
            self.replay_in_session(id, session, &task, &env).await?
        } else {
            let mut inv = self.inner.scripts.replay.key(&self.inner.keys.dead);
            inv.key(self.inner.keys.stream(task.priority)).arg(id).arg(env);
            self.eval(&inv, "replay").await?
        };
        if moved == 1 {
            Ok(())
        } else {
            Err(not_found())
        }
    }
}

#[cfg(test)]
mod tests;
