//! The in-memory [`TaskQueue`]: the embedded default, no service needed.
//!
//! Two mutexes guard the state; every per-task operation is O(1) or
//! O(log n):
//!
//! * new tasks: per [`Priority`](agentscale_core::Priority), a list of
//!   chunks, each one `enqueue_batch` as the producer handed it over, behind
//!   a lock of their own that a producer holds for one push per batch
//!   (`ready.rs`), so producer and workers rarely wait for each other;
//! * everything else under the state lock, starting with the tasks that
//!   are ready again (handed back, redelivered, promoted from a delay, a
//!   session's next task): one `VecDeque` per priority, leased before the
//!   new tasks of the same priority;
//! * delayed tasks (retry delay, `not_before`): a min-heap on the ready time;
//! * in-flight leases: a `HashMap` keyed by fence, plus a min-heap of lease
//!   deadlines with lazy deletion, one entry per lease call (its leases
//!   share the deadline and have consecutive fences) and one per extension
//!   (acked or extended leases leave stale entries that are skipped when
//!   popped, and the heap is rebuilt when stale entries outnumber live ones,
//!   so memory stays proportional to what is in flight);
//! * dead letters: a `BTreeMap` keyed by a sequence number, oldest first;
//! * up to 256 `Arc` allocations of acked small tasks, reused by the next
//!   leases once the worker dropped its lease, so that a lease allocates
//!   nothing in steady state (freed when a lease finds nothing ready);
//! * with ordered sessions, a `HashMap` from each open session to the tasks
//!   waiting behind its head (only the head is ever ready, delayed or leased;
//!   see `sessions.rs`). Waiting tasks count as `ready` in `depth`.
//!
//! No timer runs per task. Delays and lease expiries are applied lazily at the
//! start of every operation, and a waiting [`lease`](TaskQueue::lease) sleeps
//! exactly until the next delayed task is due or the next lease expires,
//! whichever comes first, or until an enqueue wakes it ([`tokio::sync::Notify`]).
//!
//! Every call takes part in Tokio's cooperative scheduling as a channel
//! operation does (one unit of the calling task's budget per task enqueued
//! and per lease call): a producer that enqueues in a loop yields now and
//! then, so a worker woken on its thread gets to run meanwhile (the enqueue
//! side is in `enqueue.rs`).
//!
//! Nothing is encoded on the hot path: the envelope size is only computed with
//! [`Task::encode`] when a cheap upper bound says the task might exceed
//! `max_envelope_bytes`.
//!
//! A lease is lost when its task is delivered again after expiry; an ack that
//! arrives after the deadline but before any other leaser took the task still
//! completes it, since nobody else can be running it.
//!
//! Tasks live in process memory: they are lost when the process exits. Use the
//! Redis or Kafka backend when producers and workers are separate processes or
//! tasks must survive a restart.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::queue::{Capabilities, DeadLetter, Depth, Enqueued, Lease, Nack, TaskQueue};
use agentscale_core::task::{now_ms, Task, TaskId};
use agentscale_core::{Error, Result};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

mod config;
mod enqueue;
mod ready;
mod sessions;

use enqueue::coop;

use ready::{Fresh, Queued, Ready};

pub use config::{LocalQueueBuilder, LocalQueueConfig, LocalQueueConfigBuilder};

/// Default lease timeout of a [`LocalQueue`].
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time an idempotency key is remembered after its enqueue.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// An in-memory, at-least-once task queue with leases, fencing, delays,
/// three priority levels, idempotent enqueue and a dead-letter store.
///
/// Cloning is cheap and shares the queue (it is an `Arc` inside).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> agentscale_core::Result<()> {
/// use std::time::Duration;
/// use agentscale_core::{Task, TaskQueue};
/// use agentscale_queue::LocalQueue;
///
/// let queue = LocalQueue::builder("agents").lease_timeout(Duration::from_secs(10)).build()?;
/// queue.enqueue(Task::new("summarise", "{}")).await?;
/// let leases = queue.lease(8, Duration::from_millis(100)).await?;
/// assert_eq!(leases.len(), 1);
/// queue.ack(&leases[0]).await?;
/// assert_eq!(queue.depth().await?.backlog(), 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct LocalQueue {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    lease_timeout: Duration,
    max_envelope_bytes: usize,
    idempotency_window: Duration,
    ordered_sessions: bool,
    state: Mutex<State>,
    /// New tasks, behind their own lock (`ready.rs`).
    fresh: Fresh,
    notify: Notify,
}

struct InFlight {
    task: Arc<Task>,
    deadline: Instant,
    ready_since: Instant,
}

struct Delayed {
    at: Instant,
    seq: u64,
    task: Arc<Task>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Hashes the sequential fence numbers with one multiplication (Fibonacci
/// hashing) instead of SipHash: fences are not attacker-controlled, and the
/// in-flight map is on the hot path of every lease and ack.
#[derive(Default)]
struct FenceHasher(u64);

impl Hasher for FenceHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FenceMap<V> = HashMap<u64, V, BuildHasherDefault<FenceHasher>>;

#[derive(Default)]
struct State {
    ready: [VecDeque<Ready>; 3],
    delayed: BinaryHeap<Reverse<Delayed>>,
    in_flight: FenceMap<InFlight>,
    /// (deadline, first fence, last fence): the leases of one lease call
    /// share one entry (they share the deadline and have consecutive
    /// fences); an extension adds an entry for its fence alone. A fence in
    /// the range that is gone or whose deadline no longer matches is stale
    /// and skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    dead: BTreeMap<u64, DeadLetter>,
    /// idempotency key -> (stored task id, forget after).
    idempotency: HashMap<String, (TaskId, Instant)>,
    idempotency_expiry: BinaryHeap<Reverse<(Instant, String)>>,
    next_fence: u64,
    next_seq: u64,
    /// Ordered sessions: tasks waiting behind their session's head.
    sessions: sessions::Sessions,
    /// The `Arc` allocations of acked tasks, for the next leases
    /// ([`State::recycle`]).
    spare: Vec<Arc<Task>>,
}

/// Most `Arc` allocations of acked tasks kept for reuse (one ack batch of a
/// worker).
const MAX_SPARE: usize = 256;

/// A task whose envelope may be larger is not kept for reuse: a kept
/// allocation holds its old task's data until it is reused or the queue
/// runs out of ready tasks, so this bounds what the spares hold (about
/// 1 MiB).
const MAX_SPARE_TASK_BYTES: usize = 4096;

impl State {
    fn ready_len(&self) -> usize {
        self.ready.iter().map(VecDeque::len).sum()
    }

    /// Moves due delayed tasks to ready and takes back expired leases.
    /// Returns how many tasks became ready.
    fn tick(&mut self, now: Instant) -> usize {
        let mut moved = 0;
        while let Some(Reverse(d)) = self.delayed.peek() {
            if d.at > now {
                break;
            }
            if let Some(Reverse(d)) = self.delayed.pop() {
                let idx = d.task.priority.index();
                self.ready[idx].push_back(Ready {
                    task: Queued::Shared(d.task),
                    since: d.at,
                });
                moved += 1;
            }
        }
        while let Some(&Reverse((deadline, first, last))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            for fence in first..=last {
                let live = matches!(self.in_flight.get(&fence), Some(f) if f.deadline == deadline);
                if !live {
                    continue;
                }
                let Some(f) = self.in_flight.remove(&fence) else {
                    continue;
                };
                // An expired lease counts as a failed attempt: a task that kills
                // its worker every time eventually exceeds max_attempts and the
                // worker dead-letters it.
                let mut task = f.task;
                // Copies the task only if its expired lease is still held.
                let t = Arc::make_mut(&mut task);
                t.attempt = t.attempt.saturating_add(1);
                tracing::debug!(task_id = %task.id, attempt = task.attempt, "lease expired; task redelivered");
                let idx = task.priority.index();
                self.ready[idx].push_front(Ready {
                    task: Queued::Shared(task),
                    since: f.ready_since,
                });
                moved += 1;
            }
        }
        moved
    }

    /// The next instant at which `tick` has work (a delayed task due or a
    /// lease deadline, possibly stale).
    fn next_event(&self) -> Option<Instant> {
        let d = self.delayed.peek().map(|Reverse(d)| d.at);
        let l = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        match (d, l) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Records that the leases with fences `first..=last` expire at
    /// `deadline`.
    fn push_deadline(&mut self, deadline: Instant, first: u64, last: u64) {
        self.deadlines.push(Reverse((deadline, first, last)));
        // Lazy deletion leaves stale entries behind; rebuild once they
        // dominate so the heap stays O(in flight). Amortised O(1).
        if self.deadlines.len() > 2 * self.in_flight.len() + 1024 {
            self.deadlines = self
                .in_flight
                .iter()
                .map(|(f, e)| Reverse((e.deadline, *f, *f)))
                .collect();
        }
    }

    fn forget_expired_keys(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.idempotency_expiry.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((at, key))) = self.idempotency_expiry.pop() {
                if matches!(self.idempotency.get(&key), Some((_, exp)) if *exp == at) {
                    self.idempotency.remove(&key);
                }
            }
        }
    }

    /// Keeps the `Arc` of an acked task for a later lease
    /// ([`State::shared`]), so that a lease allocates nothing and an ack
    /// frees only the task's own data. The worker usually still holds the
    /// lease; it is reusable once that is dropped.
    fn recycle(&mut self, task: Arc<Task>) {
        if self.spare.len() < MAX_SPARE && enqueue::envelope_upper_bound(&task) <= MAX_SPARE_TASK_BYTES {
            self.spare.push(task);
        }
    }

    /// `task` in an `Arc`: a kept allocation that nobody else holds any
    /// more (its old task is dropped), or a new one.
    fn shared(&mut self, task: Queued) -> Arc<Task> {
        let task = match task {
            Queued::Owned(task) => task,
            Queued::Shared(shared) => return shared,
        };
        while let Some(mut spare) = self.spare.pop() {
            // Unique: no lease or clone of one still points at it. One
            // that is still held is left to its holder.
            if let Some(slot) = Arc::get_mut(&mut spare) {
                *slot = task;
                return spare;
            }
        }
        Arc::new(task)
    }

    /// Leases one task: a new fence and the in-flight entry (the caller
    /// records the deadline, once for all the leases of its call).
    fn lease_one(&mut self, task: Queued, since: Instant, deadline: Instant, out: &mut Vec<Lease>) {
        let fence = self.next_fence;
        self.next_fence += 1;
        let task = self.shared(task);
        let attempt = task.attempt.saturating_add(1);
        // The lease shares the task with the in-flight entry: no copy.
        out.push(Lease::shared(task.clone(), attempt, String::new(), fence));
        self.in_flight.insert(
            fence,
            InFlight {
                task,
                deadline,
                ready_since: since,
            },
        );
    }

    /// Finds the live in-flight entry of `lease`, or `LeaseLost`.
    fn take_in_flight(&mut self, lease: &Lease) -> Result<InFlight> {
        // One lookup: fences are never reused, so an entry of another task
        // under this fence does not occur; it is put back if it did.
        match self.in_flight.remove(&lease.fence()) {
            Some(f) if same_task(&f.task, lease) => Ok(f),
            Some(f) => {
                self.in_flight.insert(lease.fence(), f);
                Err(lost(lease))
            }
            None => Err(lost(lease)),
        }
    }
}

/// True when `held` is the task of `lease` (the same allocation, or, for a
/// lease whose task was copied on redelivery, the same id).
fn same_task(held: &Arc<Task>, lease: &Lease) -> bool {
    Arc::ptr_eq(held, lease.shared_task()) || held.id == lease.task().id
}

fn lost(lease: &Lease) -> Error {
    Error::LeaseLost(format!(
        "task {} (fence {}) is no longer leased by this holder",
        lease.task().id,
        lease.fence()
    ))
}

impl LocalQueue {
    /// A queue from a validated config.
    pub fn from_config(config: LocalQueueConfig) -> Result<LocalQueue> {
        config.validate()?;
        Ok(Self::from_valid_config(config))
    }

    fn from_valid_config(c: LocalQueueConfig) -> LocalQueue {
        LocalQueue {
            shared: Arc::new(Shared {
                name: c.name,
                lease_timeout: c.lease_timeout,
                max_envelope_bytes: c.max_envelope_bytes,
                idempotency_window: c.idempotency_window,
                ordered_sessions: c.ordered_sessions,
                state: Mutex::new(State {
                    next_fence: 1,
                    next_seq: 1,
                    ..State::default()
                }),
                fresh: Fresh::default(),
                notify: Notify::new(),
            }),
        }
    }
}

impl LocalQueue {
    /// A queue with default settings (30 s lease timeout, 1 MiB envelopes).
    /// An empty name becomes `"default"`; use [`LocalQueue::builder`] to have
    /// it refused instead.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let name = if name.trim().is_empty() {
            "default".to_string()
        } else {
            name
        };
        Self::from_valid_config(LocalQueueConfig {
            name,
            ..LocalQueueConfig::default()
        })
    }

    /// A builder for a queue named `name`.
    pub fn builder(name: impl Into<String>) -> LocalQueueBuilder {
        LocalQueueBuilder::new(name.into())
    }

    /// `task` left the queue (acked or dead-lettered): with ordered
    /// sessions, the next task of its session becomes deliverable. True when
    /// one did (a leaser should be woken).
    fn finished(&self, st: &mut State, task: &Task) -> bool {
        if !self.shared.ordered_sessions {
            return false;
        }
        match st.sessions.finish(task) {
            Some(next) => {
                self.place(st, Queued::Shared(next), Instant::now());
                true
            }
            None => false,
        }
    }

    fn dead_letter(st: &mut State, task: Arc<Task>, attempts: u32, reason: String) {
        let seq = st.next_seq;
        st.next_seq += 1;
        let mut task = Arc::try_unwrap(task).unwrap_or_else(|shared| (*shared).clone());
        task.attempt = attempts;
        st.dead.insert(
            seq,
            DeadLetter {
                id: seq.to_string(),
                task: Some(task),
                raw: None,
                reason,
                attempts,
                dead_at_ms: now_ms(),
            },
        );
    }

    /// Applies due delays and expiries, then leases up to `max` ready tasks
    /// into `out`. `None` when it leased something; otherwise the time of the
    /// next delay or expiry (if any) to wake up for.
    fn try_take(&self, max: usize, now: Instant, out: &mut Vec<Lease>) -> Option<Option<Instant>> {
        let mut st = self.shared.state.lock();
        st.tick(now);
        self.take(&mut st, max, now, out);
        if out.is_empty() {
            // Nothing to reuse them for now: free what the spares hold.
            st.spare.clear();
            return Some(st.next_event());
        }
        if st.ready_len() > 0 || self.shared.fresh.len() > 0 {
            // Leftovers: pass the wake-up on to another waiting leaser.
            self.shared.notify.notify_one();
        }
        None
    }

    /// Takes up to `max` ready tasks, highest priority first; within a
    /// priority, tasks handed back or promoted (the state's ready list)
    /// before new ones.
    fn take(&self, st: &mut State, max: usize, now: Instant, out: &mut Vec<Lease>) {
        let deadline = later(now, self.shared.lease_timeout);
        let first = st.next_fence;
        out.reserve(max.saturating_sub(out.len()).min(1024));
        for idx in 0..3 {
            while out.len() < max {
                let Some(r) = st.ready[idx].pop_front() else { break };
                st.lease_one(r.task, r.since, deadline, out);
            }
            while out.len() < max {
                let Some(mut chunk) = self.shared.fresh.take_front(idx) else {
                    break;
                };
                while out.len() < max {
                    let Some(task) = chunk.tasks.pop_front() else {
                        break;
                    };
                    st.lease_one(Queued::Owned(task), chunk.since, deadline, out);
                }
                self.shared.fresh.put_front(idx, chunk);
            }
        }
        if st.next_fence > first {
            st.push_deadline(deadline, first, st.next_fence - 1);
        }
    }
}

/// Longest delay honoured (about 100 years); longer ones are capped so that
/// instant arithmetic on caller-supplied durations never overflows.
const MAX_DELAY: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + d`, capped at [`MAX_DELAY`].
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(MAX_DELAY)).unwrap_or(now)
}

impl fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalQueue")
            .field("name", &self.shared.name)
            .field("lease_timeout", &self.shared.lease_timeout)
            .field("max_envelope_bytes", &self.shared.max_envelope_bytes)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl TaskQueue for LocalQueue {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.lease_extension = true;
        caps.delayed_retry = true;
        caps.priority_levels = 3;
        caps.idempotent_enqueue = true;
        caps.fencing = true;
        caps.wire_format = false;
        caps.dead_letter_replay = true;
        caps.lease_timeout = self.shared.lease_timeout;
        caps.max_envelope_bytes = self.shared.max_envelope_bytes;
        caps.ordered_sessions = self.shared.ordered_sessions;
        caps.in_process = true;
        caps
    }

    async fn enqueue(&self, task: Task) -> Result<Enqueued> {
        coop(1).await;
        self.check(&task)?;
        let now = Instant::now();
        let res = {
            let mut st = self.shared.state.lock();
            if task.idempotency_key.is_some() {
                st.forget_expired_keys(now);
            }
            self.insert(&mut st, task, now)
        };
        if !res.duplicate {
            self.shared.notify.notify_one();
        }
        Ok(res)
    }

    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        // Before any task goes in: a call dropped while it yields has
        // enqueued nothing.
        coop(tasks.len()).await;
        if tasks.iter().all(|t| self.is_plain(t)) {
            self.enqueue_plain(tasks)
        } else {
            self.enqueue_each(tasks)
        }
    }

    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        coop(1).await;
        let mut out = Vec::new();
        // Fast path: tasks are ready; the Notify is not touched.
        let started = Instant::now();
        if self.try_take(max, started, &mut out).is_none() {
            return Ok(out);
        }
        // The wait is measured on Tokio's clock, so a paused test clock
        // (`tokio::time::pause`) advances through idle polls instead of
        // spinning until the wall clock catches up.
        let tokio_started = tokio::time::Instant::now();
        let give_up = tokio_started
            .checked_add(wait.min(MAX_DELAY))
            .unwrap_or(tokio_started);
        loop {
            if tokio::time::Instant::now() >= give_up {
                return Ok(out);
            }
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register interest before looking again, so an enqueue between
            // the look and the wait is not missed.
            notified.as_mut().enable();
            let now = Instant::now();
            let Some(next_event) = self.try_take(max, now, &mut out) else {
                return Ok(out);
            };
            let wake = next_event.map_or(give_up, |e| {
                let after = e.saturating_duration_since(now);
                tokio::time::Instant::now()
                    .checked_add(after)
                    .map_or(give_up, |w| w.min(give_up))
            });
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    // Acks do not apply expiries first: a lease whose deadline passed but
    // whose task nobody has leased again still completes it (no one else
    // holds it, so no duplicate is possible). Once the task was delivered
    // again, the old fence is gone and the ack is refused.
    async fn ack(&self, lease: &Lease) -> Result<()> {
        let next = {
            let mut st = self.shared.state.lock();
            let f = st.take_in_flight(lease)?;
            let next = self.finished(&mut st, &f.task);
            st.recycle(f.task);
            next
        };
        if next {
            self.shared.notify.notify_one();
        }
        Ok(())
    }

    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        let mut next = false;
        let out = {
            let mut st = self.shared.state.lock();
            leases
                .iter()
                .map(|l| {
                    let f = st.take_in_flight(l)?;
                    next |= self.finished(&mut st, &f.task);
                    st.recycle(f.task);
                    Ok(())
                })
                .collect()
        };
        if next {
            self.shared.notify.notify_one();
        }
        out
    }

    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()> {
        let now = Instant::now();
        {
            let mut st = self.shared.state.lock();
            st.tick(now);
            let f = st.take_in_flight(lease)?;
            let mut task = f.task;
            match nack {
                Nack::Retry(delay) => {
                    // Copies the task (the lease still shares it): a cold path.
                    let t = Arc::make_mut(&mut task);
                    t.attempt = t.attempt.saturating_add(1);
                    if delay.is_zero() {
                        let idx = task.priority.index();
                        st.ready[idx].push_back(Ready {
                            task: Queued::Shared(task),
                            since: now,
                        });
                    } else {
                        let seq = st.next_seq;
                        st.next_seq += 1;
                        st.delayed.push(Reverse(Delayed {
                            at: later(now, delay),
                            seq,
                            task,
                        }));
                    }
                }
                Nack::Release | Nack::Defer(Duration::ZERO) => {
                    let idx = task.priority.index();
                    st.ready[idx].push_front(Ready {
                        task: Queued::Shared(task),
                        since: f.ready_since,
                    });
                }
                Nack::Defer(delay) => {
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    st.delayed.push(Reverse(Delayed {
                        at: later(now, delay),
                        seq,
                        task,
                    }));
                }
                Nack::DeadLetter(reason) => {
                    let attempts = lease.attempt().max(task.attempt.saturating_add(1));
                    tracing::debug!(task_id = %task.id, attempts, %reason, "task dead-lettered");
                    let next = self.finished(&mut st, &task);
                    LocalQueue::dead_letter(&mut st, task, attempts, reason);
                    if !next {
                        return Ok(());
                    }
                }
            }
        }
        // Wake a leaser: either a task is ready now, or a delayed one changed
        // the next wake-up time.
        self.shared.notify.notify_one();
        Ok(())
    }

    async fn extend(&self, lease: &Lease, by: Duration) -> Result<()> {
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        st.tick(now);
        let deadline = later(now, by);
        match st.in_flight.get_mut(&lease.fence()) {
            Some(f) if same_task(&f.task, lease) => {
                f.deadline = deadline;
            }
            _ => return Err(lost(lease)),
        }
        st.push_deadline(deadline, lease.fence(), lease.fence());
        Ok(())
    }

    async fn depth(&self) -> Result<Depth> {
        let now = Instant::now();
        let mut st = self.shared.state.lock();
        st.tick(now);
        let oldest = st
            .ready
            .iter()
            .filter_map(|q| q.front().map(|r| r.since))
            .chain(self.shared.fresh.oldest())
            .min();
        Ok(Depth {
            ready: (st.ready_len() + self.shared.fresh.len() + st.sessions.waiting()) as u64,
            in_flight: st.in_flight.len() as u64,
            delayed: st.delayed.len() as u64,
            // The tick above moved every due delayed task to ready.
            due_delayed: 0,
            dead: st.dead.len() as u64,
            oldest_ready_age: oldest.map(|s| now.saturating_duration_since(s)),
        })
    }

    async fn promote_due(&self, max: usize) -> Result<u64> {
        // In process, promotion is the same tick every call runs (it moves
        // all due tasks and takes back expired leases); `max` bounds nothing
        // here because the tick holds the lock only for the moves.
        let _ = max;
        let moved = self.shared.state.lock().tick(Instant::now());
        if moved > 0 {
            self.shared.notify.notify_one();
        }
        Ok(moved as u64)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let st = self.shared.state.lock();
        Ok(st.dead.values().take(max).cloned().collect())
    }

    async fn replay_dead_letter(&self, id: &str) -> Result<()> {
        let not_found = || Error::NotFound(format!("dead letter {id:?} in queue {}", self.shared.name));
        let seq: u64 = id.parse().map_err(|_| not_found())?;
        {
            let mut st = self.shared.state.lock();
            let dl = st.dead.remove(&seq).ok_or_else(not_found)?;
            let Some(mut task) = dl.task else {
                // Raw entries never occur here (no wire format); keep the
                // entry rather than lose it.
                st.dead.insert(seq, dl);
                return Err(Error::InvalidInput(format!(
                    "dead letter {id} holds no decodable task"
                )));
            };
            task.attempt = 0;
            task.not_before_ms = None;
            // With ordered sessions the replayed task queues behind its
            // session like a new enqueue.
            let task = Arc::new(task);
            let task = if self.shared.ordered_sessions {
                st.sessions.admit(task)
            } else {
                Some(task)
            };
            if let Some(task) = task {
                let idx = task.priority.index();
                st.ready[idx].push_back(Ready {
                    task: Queued::Shared(task),
                    since: Instant::now(),
                });
            }
        }
        self.shared.notify.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
