//! [`RedisQueue`]: one queue over one or more shards, and the fan-out that
//! routes each call to them.
//!
//! A shard is a full queue layout (three priority streams, delayed set,
//! dead letters, idempotency and session keys) under its own hash tag
//! ([`shard_tag`]). With one shard (the default) every call goes straight to
//! it and the layout is the plain one. With `N > 1`:
//!
//! * **enqueue** picks the shard of a task by the FNV-1a hash of its session
//!   id (ordered sessions on), else of its idempotency key, else
//!   round-robin: a key always lands on the same shard, so idempotency and
//!   session order hold across shards. `enqueue_batch` sends one pipeline
//!   per shard, concurrently.
//! * **lease** starts at a rotating shard and runs the non-blocking lease
//!   script on each shard in turn until `max` tasks are read, so under load
//!   every shard is first equally often and none starves. Only when no shard
//!   had anything does it block, on one shard (rotating), for at most
//!   [`SHARD_BLOCK`]; tasks arriving on another shard are found on the next
//!   pass. A shard that fails is skipped while others have tasks; its error
//!   is returned only when nothing was found. Priority holds within a shard
//!   (each lease script reads high before normal before low), not across
//!   shards, so `capabilities().priority_levels` is 1.
//! * **receipts** are `<shard>:<prio>:<entry>`, dead-letter ids
//!   `<shard>:<entry>`: ack, nack, extend and replay go to the shard that
//!   issued them; a receipt naming a shard the queue does not have is
//!   [`Error::InvalidInput`].
//! * **depth** sums the shards (oldest ready age: the oldest of them),
//!   **dead_letters** merges them oldest first, **promote_due**,
//!   **destroy** and **purge_dead_letters** run on every shard.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::queue::{Capabilities, DeadLetter, Depth, Enqueued, Lease, Nack, TaskQueue};
use agentscale_core::{Error, ErrorKind, Result, Task};
use agentscale_redis::{key_slot, Redis};
use async_trait::async_trait;
use futures::future::join_all;

use super::admin::ReadyEntry;
use super::reply::{bad_reply, parse_receipt, Receipt};
use super::{config, RedisQueueConfig, RedisQueueKeys, Shard};

/// Redis Cluster hash slots.
const SLOTS: usize = 16384;

/// Longest blocking read on one shard of a sharded queue: a task enqueued
/// on another shard while a leaser blocks waits at most this long.
pub(super) const SHARD_BLOCK: Duration = Duration::from_millis(500);

/// The hash tag of shard `shard` of a queue spread over `shards`.
///
/// With `shards` ≤ 1 it is the queue name (the plain layout). Otherwise it is
/// `queue#shard` when that tag's Cluster slot lies in the middle half of the
/// shard's window (window `i` of `N`: slots `i·16384/N .. (i+1)·16384/N`),
/// else the first `queue#shard.k` (k = 1, 2, …) whose slot does. The windows
/// split the slot space evenly, as `redis-cli --cluster create` splits it
/// over masters (the middle half keeps clear of rounding at the edges), so
/// with as many shards as masters each master gets one shard, and with more
/// shards they spread evenly. The tag depends only on its arguments: every
/// process computes the same.
pub fn shard_tag(queue: &str, shard: usize, shards: usize) -> String {
    if shards <= 1 {
        return queue.to_string();
    }
    let window = ((4 * shard + 1) * SLOTS / (4 * shards))..((4 * shard + 3) * SLOTS / (4 * shards));
    let fits = |tag: &str| window.contains(&(key_slot(tag.as_bytes()) as usize));
    let plain = format!("{queue}#{shard}");
    if fits(&plain) {
        return plain;
    }
    // The middle half of a window holds at least 32 of 16384 slots: about
    // 512 tries on average; the bound only guards an empty window (shard >=
    // shards).
    (1..1_000_000u32)
        .map(|k| format!("{queue}#{shard}.{k}"))
        .find(|t| fits(t))
        .unwrap_or(plain)
}

/// FNV-1a: a hash that is the same in every process and release (the
/// shard of a key must not change when a worker is upgraded).
fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

struct Shards {
    shards: Vec<Shard>,
    /// Round-robin position of enqueues without a key.
    next_enqueue: AtomicUsize,
    /// The shard the next `lease` starts at.
    next_lease: AtomicUsize,
}

/// A task queue on Redis Streams, over one or more shards (see the [module
/// docs](super) for the key layout and guarantees, and
/// [`RedisQueueConfig::shards`]). Cheap to clone; clones share connections.
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
    inner: Arc<Shards>,
}

impl fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = &self.first().inner;
        f.debug_struct("RedisQueue")
            .field("queue", &first.config.queue)
            .field("shards", &self.inner.shards.len())
            .field("redis", &first.redis)
            .field("consumer", &first.consumer)
            .finish()
    }
}

impl RedisQueue {
    /// Connects, checks the server answers, and creates the consumer group on
    /// each priority stream of each shard (`XGROUP CREATE … 0 MKSTREAM`,
    /// idempotent).
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
        let opened = join_all(
            (0..config.shards).map(|i| Shard::open(redis.clone(), config.clone(), consumer.clone(), i)),
        )
        .await;
        let shards = opened.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(RedisQueue {
            inner: Arc::new(Shards {
                shards,
                next_enqueue: AtomicUsize::new(0),
                next_lease: AtomicUsize::new(0),
            }),
        })
    }

    fn first(&self) -> &Shard {
        // `validate` refuses 0 shards, so there is always one.
        &self.inner.shards[0]
    }

    /// The key names of this queue (of shard 0 when it has several; see
    /// [`shard_keys`](Self::shard_keys)), for KEDA, dashboards, `redis-cli`.
    pub fn keys(&self) -> &RedisQueueKeys {
        &self.first().inner.keys
    }

    /// The key names of every shard, in shard order.
    pub fn shard_keys(&self) -> Vec<&RedisQueueKeys> {
        self.inner.shards.iter().map(|s| &s.inner.keys).collect()
    }

    /// The number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// The consumer group workers join.
    pub fn consumer_group(&self) -> &str {
        &self.first().inner.config.consumer_group
    }

    /// This process's consumer name.
    pub fn consumer_name(&self) -> &str {
        &self.first().inner.consumer
    }

    /// The Redis handle this queue uses (clone it to share the connection).
    pub fn redis(&self) -> &Redis {
        &self.first().inner.redis
    }

    /// The configuration.
    pub fn config(&self) -> &RedisQueueConfig {
        &self.first().inner.config
    }

    /// Up to `max` (at most [`MAX_PEEK`](super::MAX_PEEK)) tasks that wait
    /// for their first delivery, high priority first and oldest first within
    /// a priority (across shards, by entry id time). Reads only: nothing is
    /// leased, and leased, delayed or dead tasks are not shown.
    pub async fn peek_ready(&self, max: usize) -> Result<Vec<ReadyEntry>> {
        let mut all = Vec::new();
        for shard in &self.inner.shards {
            all.extend(shard.peek_ready(max).await?);
        }
        if self.inner.shards.len() > 1 {
            all.sort_by_key(|e| (e.priority.index(), entry_time(&e.entry_id)));
            all.truncate(max.min(super::MAX_PEEK));
        }
        Ok(all)
    }

    /// Deletes every dead letter of this queue (per shard: `XLEN` and `DEL`
    /// in one `MULTI`) and returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<u64> {
        let mut n = 0;
        for shard in &self.inner.shards {
            n += shard.purge_dead_letters().await?;
        }
        Ok(n)
    }

    /// Deletes every key of this queue, on every shard (streams, delayed
    /// set, dead letters, idempotency keys, ordered-session keys). For tests,
    /// benchmarks and decommissioning.
    pub async fn destroy(&self) -> Result<()> {
        for shard in &self.inner.shards {
            shard.destroy().await?;
        }
        Ok(())
    }

    /// The shard `task` is stored on.
    fn shard_of(&self, task: &Task) -> usize {
        let n = self.inner.shards.len();
        if n == 1 {
            return 0;
        }
        let key = self
            .first()
            .ordered_session(task)
            .or(task.idempotency_key.as_deref());
        match key {
            Some(k) => (stable_hash(k.as_bytes()) % n as u64) as usize,
            None => self.inner.next_enqueue.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// The shard that issued `lease`, and its parsed receipt.
    fn route<'l>(&self, lease: &'l Lease) -> Result<(&Shard, Receipt<'l>)> {
        let r = parse_receipt(lease)?;
        let shard = self.inner.shards.get(r.shard).ok_or_else(|| {
            Error::InvalidInput(format!(
                "lease receipt {:?} names shard {}, but queue {} has {} shard(s)",
                lease.receipt(),
                r.shard,
                self.first().inner.config.queue,
                self.inner.shards.len()
            ))
        })?;
        Ok((shard, r))
    }

    /// `lease` on more than one shard (see the module docs).
    async fn lease_sharded(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let shards = &self.inner.shards;
        let n = shards.len();
        let deadline = tokio::time::Instant::now() + wait;
        let mut turn = self.inner.next_lease.fetch_add(1, Ordering::Relaxed);
        loop {
            let order = || (0..n).map(move |k| turn.wrapping_add(k) % n);
            // Entries already read into this consumer's pending lists first.
            let mut out = Vec::new();
            for s in order() {
                if out.len() >= max {
                    break;
                }
                out.extend(shards[s].take_stashed(max - out.len()).await?);
            }
            if !out.is_empty() {
                return Ok(out);
            }
            if shards.iter().any(|s| !s.inner.stash.lock().is_empty()) {
                continue; // a malformed entry to dead-letter first
            }
            // One non-blocking round per shard, in turn, until `max` are read.
            let (mut read, mut next_due, mut failed) = (0, None::<u64>, None);
            for s in order() {
                if read >= max {
                    break;
                }
                let want = max - read;
                let round = shards[s]
                    .fetch_into_stash(move |q| async move {
                        let (entries, due) = q.lease_round(want).await?;
                        let got = entries.len();
                        Ok((entries, (got, due)))
                    })
                    .await;
                match round {
                    Ok((got, due)) => {
                        read += got;
                        next_due = match (next_due, due) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                    }
                    Err(e) => {
                        tracing::debug!(queue = %shards[s].inner.config.queue, shard = s, error = %e, "lease round on a shard failed; trying the others");
                        failed.get_or_insert(e);
                    }
                }
            }
            if read > 0 {
                continue; // hand them out (same turn: the same shard first)
            }
            if let Some(e) = failed {
                return Err(e);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let shard = &shards[turn % n];
            let mut block = (deadline - now)
                .min(SHARD_BLOCK)
                .min(shard.inner.config.reclaim_every());
            if let Some(due) = next_due {
                let ms = due.saturating_sub(agentscale_core::task::now_ms());
                block = block.min(Duration::from_millis(ms));
            }
            turn = turn.wrapping_add(1);
            if block < Duration::from_millis(1) {
                continue;
            }
            shard
                .fetch_into_stash(move |q| async move { Ok((q.block_read(max, block).await?, ())) })
                .await?;
        }
    }
}

/// The time part of a stream entry id (`<ms>-<seq>`), for ordering across
/// shards; 0 for anything else.
fn entry_time(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[async_trait]
impl TaskQueue for RedisQueue {
    fn name(&self) -> &str {
        &self.first().inner.config.queue
    }

    fn capabilities(&self) -> Capabilities {
        let config = self.config();
        let mut c = Capabilities::default();
        c.lease_extension = true;
        c.delayed_retry = true;
        // Priority is strict within a shard; across shards, lease rotates.
        c.priority_levels = if self.inner.shards.len() > 1 { 1 } else { 3 };
        c.idempotent_enqueue = true;
        c.fencing = true;
        c.wire_format = true;
        c.dead_letter_replay = true;
        c.lease_timeout = config.lease_timeout;
        c.max_envelope_bytes = config.max_envelope_bytes;
        c.ordered_sessions = config.ordered_sessions;
        c
    }

    async fn enqueue(&self, task: Task) -> Result<Enqueued> {
        let s = self.shard_of(&task);
        self.inner.shards[s].enqueue(task).await
    }

    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let n = self.inner.shards.len();
        if n == 1 {
            return self.first().enqueue_batch(tasks).await;
        }
        let total = tasks.len();
        let mut groups: Vec<(Vec<usize>, Vec<Task>)> = vec![(Vec::new(), Vec::new()); n];
        for (i, t) in tasks.into_iter().enumerate() {
            let g = &mut groups[self.shard_of(&t)];
            g.0.push(i);
            g.1.push(t);
        }
        let runs = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.1.is_empty())
            .map(|(s, (idx, tasks))| async move { (idx, self.inner.shards[s].enqueue_batch(tasks).await) });
        let mut out: Vec<Option<Result<Enqueued>>> = (0..total).map(|_| None).collect();
        for (idx, results) in join_all(runs).await {
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(bad_reply("enqueue_batch"))))
            .collect()
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let max = max.min(10_000);
        let got = if self.inner.shards.len() == 1 {
            self.first().lease_inner(max, wait).await
        } else {
            self.lease_sharded(max, wait).await
        };
        if let Err(e) = &got {
            if e.kind() == ErrorKind::Unavailable {
                // Redis is down or restarting: pace the caller instead of
                // letting a worker loop spin on instant errors.
                tokio::time::sleep(wait.min(Duration::from_millis(500))).await;
            }
        }
        got
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let (shard, r) = self.route(lease)?;
        shard.ack(lease, r.prio, r.id).await
    }

    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        let n = self.inner.shards.len();
        if n == 1 {
            let refs: Vec<&Lease> = leases.iter().collect();
            return self.first().ack_batch(&refs).await;
        }
        let mut out: Vec<Option<Result<()>>> = (0..leases.len()).map(|_| None).collect();
        let mut groups: Vec<(Vec<usize>, Vec<&Lease>)> = vec![(Vec::new(), Vec::new()); n];
        for (i, l) in leases.iter().enumerate() {
            match self.route(l) {
                Ok((_, r)) => {
                    groups[r.shard].0.push(i);
                    groups[r.shard].1.push(l);
                }
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let runs = groups
            .into_iter()
            .enumerate()
            .filter(|(_, g)| !g.1.is_empty())
            .map(|(s, (idx, ls))| async move { (idx, self.inner.shards[s].ack_batch(&ls).await) });
        for (idx, results) in join_all(runs).await {
            for (i, r) in idx.into_iter().zip(results) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(bad_reply("ack_batch"))))
            .collect()
    }

    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()> {
        let (shard, r) = self.route(lease)?;
        shard.nack(lease, r.prio, r.id, nack).await
    }

    async fn extend(&self, lease: &Lease, by: Duration) -> Result<()> {
        let (shard, r) = self.route(lease)?;
        shard.extend(lease, r.prio, r.id, by).await
    }

    async fn depth(&self) -> Result<Depth> {
        let mut total = self.first().depth().await?;
        for shard in &self.inner.shards[1..] {
            let d = shard.depth().await?;
            total.ready += d.ready;
            total.in_flight += d.in_flight;
            total.delayed += d.delayed;
            total.due_delayed += d.due_delayed;
            total.dead += d.dead;
            total.oldest_ready_age = total.oldest_ready_age.max(d.oldest_ready_age);
        }
        Ok(total)
    }

    async fn promote_due(&self, max: usize) -> Result<u64> {
        let mut moved = 0u64;
        for shard in &self.inner.shards {
            let left = max.saturating_sub(moved as usize);
            if left == 0 {
                break;
            }
            moved += shard.promote_due(left).await?;
        }
        Ok(moved)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        if self.inner.shards.len() == 1 {
            return self.first().dead_letters(max).await;
        }
        let mut all = Vec::new();
        for (i, shard) in self.inner.shards.iter().enumerate() {
            for mut dl in shard.dead_letters(max).await? {
                dl.id = format!("{i}:{}", dl.id);
                all.push(dl);
            }
        }
        all.sort_by_key(|d| d.dead_at_ms);
        all.truncate(max);
        Ok(all)
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<()> {
        if self.inner.shards.len() == 1 {
            return self.first().replay_dead_letter(id).await;
        }
        let not_found = || {
            Error::NotFound(format!(
                "dead letter {id:?} in queue {} (ids of a sharded queue are <shard>:<entry>)",
                self.first().inner.config.queue
            ))
        };
        let (shard, entry) = id.split_once(':').ok_or_else(not_found)?;
        let shard: usize = shard.parse().map_err(|_| not_found())?;
        let shard = self.inner.shards.get(shard).ok_or_else(not_found)?;
        shard.replay_dead_letter(entry).await
    }
}
