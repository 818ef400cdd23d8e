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

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::queue::{Capabilities, DeadLetter, Depth, Enqueued, Lease, Nack, TaskQueue};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Priority, Result, Task, TaskId};
use agentscale_redis::{map_error as map_err, Redis};
use async_trait::async_trait;
use redis::{RedisError, Script, Value};

pub use admin::{ReadyEntry, MAX_PEEK};
pub use config::{RedisQueueConfig, RedisQueueConfigBuilder, MAX_IDEMPOTENCY_TTL};
pub use limit::RedisLimiter;
use reply::*;
#[cfg(feature = "schedule")]
#[cfg_attr(docsrs, doc(cfg(feature = "schedule")))]
pub use schedule::RedisScheduleStore;

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
    /// The key names for `queue` under `prefix`.
    pub fn new(prefix: &str, queue: &str) -> Self {
        let base = format!("{prefix}:{{{queue}}}");
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

/// A task queue on Redis Streams (see the [module docs](self) for the key
/// layout and guarantees). Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn demo() -> agentscale_core::Result<()> {
/// use agentscale_core::{Task, TaskQueue};
/// use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
///
/// let queue = RedisQueue::connect(RedisQueueConfig::new("redis://127.0.0.1:6379", "research")).await?;
/// queue.enqueue(Task::new("summarise", "{}")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisQueue")
            .field("queue", &self.inner.config.queue)
            .field("redis", &self.inner.redis)
            .field("consumer", &self.inner.consumer)
            .finish()
    }
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

impl RedisQueue {
    /// Connects, checks the server answers, and creates the consumer group on
    /// each priority stream (`XGROUP CREATE … 0 MKSTREAM`, idempotent).
    pub async fn connect(config: RedisQueueConfig) -> Result<Self> {
        config.validate()?;
        let redis = Redis::connect(config.connection()).await?;
        Self::new(redis, config).await
    }

    /// A queue on an existing [`Redis`] handle, sharing its connections
    /// with other backends (a session store, a tool cache, other queues).
    /// The connection settings of `config` (`url`, timeouts,
    /// `block_connections`) are not used: `redis` has its own. Checks the
    /// server answers and creates the consumer groups.
    pub async fn new(redis: Redis, config: RedisQueueConfig) -> Result<Self> {
        config.validate()?;
        let consumer = config
            .consumer_name
            .clone()
            .unwrap_or_else(config::default_consumer_name);
        let keys = RedisQueueKeys::new(&config.key_prefix, &config.queue);
        let q = RedisQueue {
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
                config,
            }),
        };
        q.ensure_groups().await?;
        Ok(q)
    }

    /// The key names of this queue (for KEDA, dashboards, `redis-cli`).
    pub fn keys(&self) -> &RedisQueueKeys {
        &self.inner.keys
    }

    /// The consumer group workers join.
    pub fn consumer_group(&self) -> &str {
        &self.inner.config.consumer_group
    }

    /// This process's consumer name.
    pub fn consumer_name(&self) -> &str {
        &self.inner.consumer
    }

    /// The Redis handle this queue uses (clone it to share the connection).
    pub fn redis(&self) -> &Redis {
        &self.inner.redis
    }

    /// The configuration.
    pub fn config(&self) -> &RedisQueueConfig {
        &self.inner.config
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

    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        prio: usize,
        id: &str,
        fence: u64,
        action: &str,
        target: &str,
        payload: &[u8],
        extra: [&str; 4],
    ) -> Result<bool> {
        let mut inv = self.inner.scripts.settle.key(&self.inner.keys.streams[prio]);
        inv.key(target);
        if action == "delay" {
            inv.key(&self.inner.keys.delayed_tasks);
        }
        inv.arg(&self.inner.config.consumer_group)
            .arg(&self.inner.consumer)
            .arg(id)
            .arg(fence)
            .arg(action)
            .arg(payload)
            .arg(&extra[..]);
        let done: i64 = self.eval(&inv, action).await?;
        Ok(done == 1)
    }

    fn lease_lost(lease: &Lease, op: &str) -> Error {
        Error::LeaseLost(format!(
            "{op} of task {} (delivery {}, receipt {}) refused: the lease expired and was reclaimed, or was already settled",
            lease.task().id,
            lease.fence(),
            lease.receipt()
        ))
    }
}

/// A delayed-set member: priority digit, task id and a random nonce, so the
/// same task delayed twice (enqueued twice, or two deliveries retried with
/// the same delay) stays two entries.
fn delayed_member(prio: usize, id: &TaskId) -> String {
    format!("{prio}{}:{:016x}", id.as_str(), rand::random::<u64>())
}

#[async_trait]
impl TaskQueue for RedisQueue {
    fn name(&self) -> &str {
        &self.inner.config.queue
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::default();
        c.lease_extension = true;
        c.delayed_retry = true;
        c.priority_levels = 3;
        c.idempotent_enqueue = true;
        c.fencing = true;
        c.wire_format = true;
        c.dead_letter_replay = true;
        c.lease_timeout = self.inner.config.lease_timeout;
        c.max_envelope_bytes = self.inner.config.max_envelope_bytes;
        c.ordered_sessions = self.inner.config.ordered_sessions;
        c
    }

    async fn enqueue(&self, task: Task) -> Result<Enqueued> {
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

    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
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

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(10_000);
        match self.lease_inner(max, wait).await {
            Ok(l) => Ok(l),
            Err(e) => {
                if e.kind() == agentscale_core::ErrorKind::Unavailable {
                    // Redis is down or restarting: pace the caller instead of
                    // letting a worker loop spin on instant errors.
                    tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
                }
                Err(e)
            }
        }
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let (prio, id) = parse_receipt(lease)?;
        let stream = self.inner.keys.streams[prio].clone();
        let done = match self.ordered_session(lease.task()) {
            Some(s) => {
                self.settle_session(lease, s, prio, id, "ack", &stream, b"", ["", "", "", ""])
                    .await?
            }
            None => {
                self.settle(prio, id, lease.fence(), "ack", &stream, b"", ["", "", "", ""])
                    .await?
            }
        };
        if done {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "ack"))
        }
    }

    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        if leases.iter().any(|l| self.ordered_session(l.task()).is_some()) {
            // Heads of ordered sessions advance their session in the same
            // script as the ack: one script per lease, pipelined.
            let mut out = Vec::with_capacity(leases.len());
            for chunk in leases.chunks(1000) {
                out.extend(self.ack_batch_ordered(chunk).await);
            }
            return out;
        }
        let mut out: Vec<Result<()>> = Vec::with_capacity(leases.len());
        for chunk in leases.chunks(1000) {
            let parsed: Vec<Result<(usize, &str)>> = chunk.iter().map(parse_receipt).collect();
            let mut inv = self.inner.scripts.ack_batch.key(&self.inner.keys.streams[..]);
            inv.arg(&self.inner.config.consumer_group)
                .arg(&self.inner.consumer);
            let mut n = 0;
            for (l, p) in chunk.iter().zip(&parsed) {
                if let Ok((p, id)) = p {
                    inv.arg(*p).arg(*id).arg(l.fence());
                    n += 1;
                }
            }
            let codes: Result<Vec<i64>> = if n > 0 {
                self.eval(&inv, "ack_batch").await
            } else {
                Ok(Vec::new())
            };
            let mut codes_it = codes.as_ref().ok().map(|c| c.iter());
            for (l, p) in chunk.iter().zip(parsed) {
                out.push(match (p, &codes) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(e)) => Err(Error::from_kind(e.kind(), e.to_string())),
                    (Ok(_), Ok(_)) => match codes_it.as_mut().and_then(|i| i.next()) {
                        Some(1) => Ok(()),
                        Some(_) => Err(Self::lease_lost(l, "ack")),
                        None => Err(bad_reply("ack_batch")),
                    },
                });
            }
        }
        out
    }

    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()> {
        let (prio, id) = parse_receipt(lease)?;
        let keys = &self.inner.keys;
        let mut task = lease.task().clone();
        let done = match nack {
            Nack::Retry(delay) => {
                task.attempt = lease.attempt();
                let env = task.encode()?;
                let target_prio = task.priority.index();
                if delay.is_zero() {
                    self.settle(
                        prio,
                        id,
                        lease.fence(),
                        "xadd",
                        &keys.streams[target_prio],
                        &env,
                        ["", "", "", ""],
                    )
                    .await?
                } else {
                    let due = (now_ms() + delay.as_millis() as u64).to_string();
                    let member = delayed_member(target_prio, &task.id);
                    self.settle(
                        prio,
                        id,
                        lease.fence(),
                        "delay",
                        &keys.delayed,
                        &env,
                        [&due, &member, "", ""],
                    )
                    .await?
                }
            }
            Nack::Release | Nack::Defer(Duration::ZERO) => {
                task.attempt = lease.attempt().saturating_sub(1);
                let env = task.encode()?;
                self.settle(
                    prio,
                    id,
                    lease.fence(),
                    "xadd",
                    &keys.streams[task.priority.index()],
                    &env,
                    ["", "", "", ""],
                )
                .await?
            }
            Nack::Defer(delay) => {
                task.attempt = lease.attempt().saturating_sub(1);
                let env = task.encode()?;
                let due = (now_ms() + delay.as_millis() as u64).to_string();
                let member = delayed_member(task.priority.index(), &task.id);
                self.settle(
                    prio,
                    id,
                    lease.fence(),
                    "delay",
                    &keys.delayed,
                    &env,
                    [&due, &member, "", ""],
                )
                .await?
            }
            Nack::DeadLetter(reason) => {
                task.attempt = lease.attempt();
                let env = task.encode()?;
                match self.ordered_session(lease.task()) {
                    Some(s) => {
                        let (attempts, at) = (lease.attempt().to_string(), now_ms().to_string());
                        self.settle_session(
                            lease,
                            s,
                            prio,
                            id,
                            "dead",
                            &keys.dead,
                            &env,
                            [&reason, &attempts, &at, "0"],
                        )
                        .await?
                    }
                    None => {
                        self.dead_letter_entry(prio, id, lease.fence(), &env, false, &reason, lease.attempt())
                            .await?
                    }
                }
            }
        };
        if done {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "nack"))
        }
    }

    async fn extend(&self, lease: &Lease, by: Duration) -> Result<()> {
        let (prio, id) = parse_receipt(lease)?;
        // The lease expires when the entry's idle time reaches lease_timeout;
        // setting idle = lease_timeout - by makes it expire `by` from now
        // (at most one full lease_timeout: Redis clamps idle at 0).
        let idle = self
            .inner
            .config
            .lease_timeout
            .saturating_sub(by)
            .as_millis()
            .to_string();
        let stream = self.inner.keys.streams[prio].clone();
        if self
            .settle(
                prio,
                id,
                lease.fence(),
                "extend",
                &stream,
                b"",
                [&idle, "", "", ""],
            )
            .await?
        {
            Ok(())
        } else {
            Err(Self::lease_lost(lease, "extend"))
        }
    }

    async fn depth(&self) -> Result<Depth> {
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

    async fn promote_due(&self, max: usize) -> Result<u64> {
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

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.read_dead("-", "+", max).await
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<()> {
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
