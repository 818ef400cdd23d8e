//! The task queue contract.
//!
//! # Guarantees every backend gives
//!
//! * **At least once.** A task leaves the queue only when a worker [`ack`]s it.
//!   A lease that is neither acked, nacked nor [`extend`]ed before it expires is
//!   taken back and the task is delivered again (to any worker).
//! * **Fencing.** Each delivery carries a fence token. Once a lease has expired
//!   and the task was delivered again, an `ack`, `nack` or `extend` through the
//!   old lease is refused with [`Error::LeaseLost`] and changes nothing.
//! * **Dead letters keep the reason.** A task nacked with
//!   [`Nack::DeadLetter`] (or a stream entry that is not an envelope) is moved to
//!   the dead-letter store with the reason and the attempt count.
//!
//! Ordering is best effort unless the queue declares
//! [`Capabilities::ordered_sessions`] (then it is strict per session): backends deliver higher [`Priority`] first and,
//! within a priority, roughly in enqueue order, but retries and redeliveries
//! reorder. Design handlers to be idempotent (use the task id or
//! `idempotency_key`): at-least-once means a task can run twice.
//!
//! [`ack`]: TaskQueue::ack
//! [`extend`]: TaskQueue::extend
//! [`Priority`]: crate::Priority

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::task::{Task, TaskId};

/// One delivery of a task to a worker: the task, its attempt number and the
/// receipt that fences ack/nack/extend to this delivery.
///
/// The task is held behind an [`Arc`], so a backend that keeps its own copy
/// while the lease is out (the in-memory queue) shares it instead of cloning
/// it, and a lease is small to move (under 64 bytes).
#[derive(Debug, Clone)]
pub struct Lease {
    task: Arc<Task>,
    attempt: u32,
    receipt: String,
    fence: u64,
}

impl Lease {
    /// Built by backends. `receipt` identifies the delivery inside the backend
    /// (a stream entry id, a partition/offset); `fence` is the token that a
    /// redelivery changes.
    pub fn new(task: Task, attempt: u32, receipt: impl Into<String>, fence: u64) -> Self {
        Self::shared(Arc::new(task), attempt, receipt, fence)
    }

    /// Like [`Lease::new`], for a task the backend shares with the lease.
    pub fn shared(task: Arc<Task>, attempt: u32, receipt: impl Into<String>, fence: u64) -> Self {
        Lease {
            task,
            attempt,
            receipt: receipt.into(),
            fence,
        }
    }

    /// The task.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The shared task (the same allocation the backend may still hold).
    pub fn shared_task(&self) -> &Arc<Task> {
        &self.task
    }

    /// The task, consumed (cloned when the backend still shares it).
    pub fn into_task(self) -> Task {
        Arc::try_unwrap(self.task).unwrap_or_else(|shared| (*shared).clone())
    }

    /// The attempt number of this delivery, 1 for the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The backend's receipt for this delivery.
    pub fn receipt(&self) -> &str {
        &self.receipt
    }

    /// The fence token of this delivery.
    pub fn fence(&self) -> u64 {
        self.fence
    }
}

/// What to do with a leased task that was not completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nack {
    /// The attempt failed: charge it and deliver the task again after the delay.
    Retry(Duration),
    /// Hand the task back without charging an attempt (graceful shutdown).
    Release,
    /// Hand the task back without charging an attempt and deliver it again
    /// after the delay (a rate limit or concurrency cap deferred it). A
    /// backend without delayed delivery redelivers it at once.
    Defer(Duration),
    /// Give up: move the task to the dead-letter store with this reason.
    DeadLetter(String),
}

/// The result of one enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The id of the stored task (for a duplicate: the id stored first).
    pub id: TaskId,
    /// True when an earlier enqueue with the same idempotency key was found and
    /// nothing new was stored.
    pub duplicate: bool,
}

/// How many tasks a queue holds, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    /// Deliverable now.
    pub ready: u64,
    /// Leased, not yet acked or nacked.
    pub in_flight: u64,
    /// Waiting for a retry delay or `not_before` (due or not).
    pub delayed: u64,
    /// The part of `delayed` whose due time has passed: runnable now, but not
    /// yet moved to the ready queue (a backend moves them when it is next
    /// leased from, or promoted by [`TaskQueue::promote_due`]). Backends that
    /// cannot tell count every delayed task as due (see [`Depth::due`]).
    pub due_delayed: u64,
    /// In the dead-letter store.
    pub dead: u64,
    /// Age of the oldest ready task, where the backend can tell.
    pub oldest_ready_age: Option<Duration>,
}

impl Depth {
    /// `ready + in_flight`: the backlog a worker fleet must get through, and
    /// the number to scale on (HPA External metric / KEDA).
    pub fn backlog(&self) -> u64 {
        self.ready + self.in_flight
    }

    /// `ready + in_flight + due_delayed`: every task that is runnable now or
    /// running — **the number to scale on** (exported as
    /// `agentscale_task_queue_due`).
    ///
    /// Unlike [`backlog`](Self::backlog) it sees a retry whose backoff ended
    /// while no worker was running to move it to the ready queue, so a fleet
    /// scaled to zero wakes up for it. Delayed tasks that are **not yet due**
    /// are not counted: they need no worker yet, and a fleet may scale to
    /// zero while they wait; it is woken when they fall due (as long as
    /// something exports this number — a worker or a
    /// [`QueueKeeper`](crate::keeper::QueueKeeper)).
    pub fn due(&self) -> u64 {
        self.backlog() + self.due_delayed
    }
}

/// What a queue backend can do. Checks in the conformance suite and choices in
/// the worker runtime follow these, so a backend states them honestly.
///
/// [`Capabilities::default`] claims nothing: every ability off, one priority
/// level, a zero lease timeout and a zero envelope limit. A backend starts
/// from it and sets, explicitly, each ability it has, so a field added later
/// is never claimed by accident.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `extend` renews a single lease (Kafka cannot).
    pub lease_extension: bool,
    /// `Nack::Retry(d)` delays redelivery by `d`.
    pub delayed_retry: bool,
    /// Number of priority levels honoured (1 = none).
    pub priority_levels: u8,
    /// Enqueue with an idempotency key stores a task once.
    pub idempotent_enqueue: bool,
    /// Stale acks after a redelivery are refused.
    pub fencing: bool,
    /// Tasks cross a wire as encoded envelopes, so malformed entries can exist.
    pub wire_format: bool,
    /// Dead letters can be listed and replayed.
    pub dead_letter_replay: bool,
    /// A lease not extended within this time expires (zero: not stated; the
    /// worker then refuses to run on a queue that cannot extend leases).
    pub lease_timeout: Duration,
    /// Largest encoded envelope accepted at enqueue (zero: not stated).
    pub max_envelope_bytes: usize,
    /// Ordered sessions are on: tasks with the same `session_id` are
    /// delivered one at a time, in enqueue order, across every consumer;
    /// the next one only after the previous was acked or dead-lettered
    /// (a retry, release or deferral keeps its place at the head). Tasks of
    /// other sessions, and tasks without a session, are not held up.
    pub ordered_sessions: bool,
    /// Producers and workers share this process and an enqueue wakes a
    /// waiting lease directly (the in-memory queue). The worker then runs
    /// its first driver on the task that awaits
    /// [`Worker::run_until`](crate::worker::Worker::run_until) instead of
    /// spawning it, so that a producer in the same runtime and the worker
    /// run on two threads (see the worker's module docs).
    pub in_process: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            lease_extension: false,
            delayed_retry: false,
            priority_levels: 1,
            idempotent_enqueue: false,
            fencing: false,
            wire_format: false,
            dead_letter_replay: false,
            lease_timeout: Duration::ZERO,
            max_envelope_bytes: 0,
            ordered_sessions: false,
            in_process: false,
        }
    }
}

/// A task in the dead-letter store.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Backend id of the dead-letter entry (what `replay_dead_letter` takes).
    pub id: String,
    /// The task, when the entry was a decodable envelope.
    pub task: Option<Task>,
    /// The raw bytes, when the entry was not a decodable envelope.
    pub raw: Option<Vec<u8>>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (ms since the epoch).
    pub dead_at_ms: u64,
}

/// A task queue backend. Object-safe: use it as `Arc<dyn TaskQueue>`.
#[async_trait]
pub trait TaskQueue: Send + Sync + Debug {
    /// The queue's name (its metric label).
    fn name(&self) -> &str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Stores one task. Refuses an invalid task or an oversize envelope with
    /// [`Error::InvalidInput`].
    async fn enqueue(&self, task: Task) -> Result<Enqueued>;

    /// Stores many tasks, pipelined where the backend can; one result per task,
    /// in order, so the caller sees which failed.
    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(self.enqueue(t).await);
        }
        out
    }

    /// Leases up to `max` tasks, waiting up to `wait` for the first one.
    /// Returns an empty vector when nothing arrived in time.
    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>>;

    /// Completes a task: it leaves the queue. [`Error::LeaseLost`] if the lease
    /// was lost (the task was or will be delivered again).
    async fn ack(&self, lease: &Lease) -> Result<()>;

    /// Acks many leases, batched where the backend can; one result per lease.
    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        let mut out = Vec::with_capacity(leases.len());
        for l in leases {
            out.push(self.ack(l).await);
        }
        out
    }

    /// Gives a leased task back: retry later, release uncharged, or dead-letter.
    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()>;

    /// Renews the lease for another `by` from now (heartbeat).
    async fn extend(&self, lease: &Lease, by: Duration) -> Result<()>;

    /// Counts by state.
    async fn depth(&self) -> Result<Depth>;

    /// Lists up to `max` dead letters, oldest first.
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        let _ = max;
        Err(Error::Unsupported(format!(
            "queue {} cannot list dead letters",
            self.name()
        )))
    }

    /// Moves up to `max` delayed tasks whose due time has passed to the ready
    /// queue and returns how many it moved. Backends do this themselves on
    /// every `lease`; this is for a process that runs while no worker does
    /// (a [`QueueKeeper`](crate::keeper::QueueKeeper)), so a fleet scaled to
    /// zero sees due retries as ready work. [`Error::Unsupported`] where the
    /// backend has no delayed set of its own to promote from.
    async fn promote_due(&self, max: usize) -> Result<u64> {
        let _ = max;
        Err(Error::Unsupported(format!(
            "queue {} cannot promote delayed tasks",
            self.name()
        )))
    }

    /// Moves one dead letter back to the ready queue with its attempts reset.
    async fn replay_dead_letter(&self, id: &str) -> Result<()> {
        let _ = id;
        Err(Error::Unsupported(format!(
            "queue {} cannot replay dead letters",
            self.name()
        )))
    }
}

/// Compile-time check that the trait stays object-safe.
#[allow(dead_code)]
fn _object_safe(_: Box<dyn TaskQueue>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_capabilities_claim_nothing() {
        let c = Capabilities::default();
        assert!(!c.lease_extension);
        assert!(!c.delayed_retry);
        assert_eq!(c.priority_levels, 1);
        assert!(!c.idempotent_enqueue);
        assert!(!c.fencing);
        assert!(!c.wire_format);
        assert!(!c.dead_letter_replay);
        assert_eq!(c.lease_timeout, Duration::ZERO);
        assert_eq!(c.max_envelope_bytes, 0);
        assert!(!c.ordered_sessions);
    }
}
