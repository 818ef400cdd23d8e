//! Task results: the terminal state of a task kept by id, and the
//! request/response path on top of any queue.
//!
//! A worker configured with a [`ResultStore`]
//! ([`WorkerBuilder::results`](crate::worker::WorkerBuilder::results))
//! records, for every task that reaches a terminal state, either the
//! handler's [`Output`] or why there is none (dead-lettered with the reason,
//! expired before it could run, cancelled by a decided join).
//!
//! # Guarantees every store gives
//!
//! * **First result wins.** Under at-least-once delivery a task can run
//!   twice; the first terminal state recorded is kept, later ones change
//!   nothing and are counted in [`TaskResult::duplicates`].
//! * **Bounded.** Every record lives for the store's TTL; outputs larger than
//!   [`ResultStore::max_output_bytes`] are refused with
//!   [`CodecError::TooLarge`] (the worker then
//!   dead-letters the task with that reason), never truncated.
//! * **Waiting is not polling.** [`ResultStore::wait`] sleeps until the
//!   result is recorded (in-process: a notification; Redis: a per-task
//!   pub/sub channel subscribed before the result is checked) or the
//!   timeout passes. A waiter that gives up does not affect the task.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{CodecError, Error, Result};
use crate::output::Output;
use crate::queue::TaskQueue;
use crate::task::{Task, TaskId};

/// Default TTL of a recorded result (24 h).
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default limit on a recorded output (1 MiB).
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;

/// How a task ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutcome {
    /// The handler succeeded with this output.
    Completed(Output),
    /// The task was dead-lettered; the reason.
    DeadLettered(String),
    /// The task's deadline passed before it could run; the reason.
    Expired(String),
    /// The task was cancelled (its join was decided without it); the reason.
    Cancelled(String),
}

impl TaskOutcome {
    /// The short stable name of the state (`completed`, `dead_lettered`,
    /// `expired`, `cancelled`).
    pub fn state(&self) -> &'static str {
        match self {
            TaskOutcome::Completed(_) => "completed",
            TaskOutcome::DeadLettered(_) => "dead_lettered",
            TaskOutcome::Expired(_) => "expired",
            TaskOutcome::Cancelled(_) => "cancelled",
        }
    }

    /// True for [`TaskOutcome::Completed`].
    pub fn is_completed(&self) -> bool {
        matches!(self, TaskOutcome::Completed(_))
    }

    /// Refuses an output over `limit` bytes with [`CodecError::TooLarge`].
    pub fn check_size(&self, limit: usize) -> Result<()> {
        if let TaskOutcome::Completed(o) = self {
            if o.len() > limit {
                return Err(Error::Codec(CodecError::TooLarge { size: o.len(), limit }));
            }
        }
        Ok(())
    }

    /// Encodes into (state, payload): the output bytes or the reason.
    pub fn to_parts(&self) -> (&'static str, Option<&[u8]>) {
        let payload = match self {
            TaskOutcome::Completed(o) => o.as_bytes().map(|b| &b[..]),
            TaskOutcome::DeadLettered(r) | TaskOutcome::Expired(r) | TaskOutcome::Cancelled(r) => {
                Some(r.as_bytes())
            }
        };
        (self.state(), payload)
    }

    /// Decodes what [`TaskOutcome::to_parts`] wrote; an unknown state is a
    /// [`CodecError::Malformed`].
    pub fn from_parts(state: &str, payload: Option<Vec<u8>>) -> Result<Self> {
        let reason = |p: Option<Vec<u8>>| String::from_utf8_lossy(&p.unwrap_or_default()).into_owned();
        Ok(match state {
            "completed" => TaskOutcome::Completed(payload.map(Output::from).unwrap_or_default()),
            "dead_lettered" => TaskOutcome::DeadLettered(reason(payload)),
            "expired" => TaskOutcome::Expired(reason(payload)),
            "cancelled" => TaskOutcome::Cancelled(reason(payload)),
            other => {
                return Err(Error::Codec(CodecError::Malformed(format!(
                    "unknown task outcome state {other:?}"
                ))))
            }
        })
    }
}

/// A recorded terminal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskResult {
    /// The task.
    pub id: TaskId,
    /// How it ended.
    pub outcome: TaskOutcome,
    /// When the first terminal state was recorded (ms since the epoch).
    pub recorded_at_ms: u64,
    /// Later records for the same task (at-least-once re-runs) that were
    /// ignored.
    pub duplicates: u64,
}

impl TaskResult {
    /// The output of a completed task; for any other state an error carrying
    /// the reason ([`Error::Handler`] for a dead letter, [`Error::Timeout`]
    /// for an expired task, [`Error::Closed`] for a cancelled one).
    pub fn into_output(self) -> Result<Output> {
        match self.outcome {
            TaskOutcome::Completed(o) => Ok(o),
            TaskOutcome::DeadLettered(r) => {
                Err(Error::Handler(format!("task {} dead-lettered: {r}", self.id)))
            }
            TaskOutcome::Expired(r) => Err(Error::Timeout(format!("task {} expired: {r}", self.id))),
            TaskOutcome::Cancelled(r) => Err(Error::Closed(format!("task {} cancelled: {r}", self.id))),
        }
    }
}

/// Whether a [`ResultStore::record`] call stored the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// This was the first terminal state for the task: stored.
    First,
    /// A terminal state was already stored: nothing changed, the duplicate
    /// was counted.
    Duplicate,
}

/// Where task results are kept. Object-safe: use it as `Arc<dyn ResultStore>`.
#[async_trait]
pub trait ResultStore: Send + Sync + Debug {
    /// Largest output [`record`](Self::record) accepts.
    fn max_output_bytes(&self) -> usize;

    /// Records `outcome` for `id` unless a terminal state is recorded already
    /// (then counts a duplicate). An output over the size limit is
    /// [`CodecError::TooLarge`] and nothing is stored.
    async fn record(&self, id: &TaskId, outcome: TaskOutcome) -> Result<Recorded>;

    /// The recorded result, if any (and not expired).
    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>>;

    /// Waits up to `timeout` for the result of `id`; `None` when none was
    /// recorded in time (the task itself is not affected).
    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>>;
}

/// Compile-time check that the trait stays object-safe.
#[allow(dead_code)]
fn _object_safe(_: Box<dyn ResultStore>) {}

/// The producer side of request/response: submit a task, then await its
/// result with a timeout or look it up later by id (the API-gateway path).
///
/// The task must be handled by a worker configured with the same result
/// store.
#[derive(Debug, Clone)]
pub struct Client {
    queue: Arc<dyn TaskQueue>,
    results: Arc<dyn ResultStore>,
}

impl Client {
    /// A client that enqueues on `queue` and reads results from `results`.
    pub fn new(queue: Arc<dyn TaskQueue>, results: Arc<dyn ResultStore>) -> Self {
        Client { queue, results }
    }

    /// Enqueues `task` and returns a handle on its result. For a duplicate
    /// enqueue (same idempotency key) the handle follows the task stored first.
    pub async fn submit(&self, task: Task) -> Result<Pending> {
        let enqueued = self.queue.enqueue(task).await?;
        Ok(Pending {
            id: enqueued.id,
            results: self.results.clone(),
        })
    }

    /// A handle on the result of a task submitted earlier (by any process).
    pub fn pending(&self, id: TaskId) -> Pending {
        Pending {
            id,
            results: self.results.clone(),
        }
    }

    /// The result of `id` now, if recorded.
    pub async fn result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.results.get(id).await
    }
}

/// A submitted task's future result.
#[derive(Debug, Clone)]
pub struct Pending {
    id: TaskId,
    results: Arc<dyn ResultStore>,
}

impl Pending {
    /// The task id (keep it to look the result up later).
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Waits up to `timeout` for the result. [`Error::Timeout`] if none was
    /// recorded in time; the task keeps running and its result can still be
    /// read later.
    pub async fn wait(&self, timeout: Duration) -> Result<TaskResult> {
        self.results
            .wait(&self.id, timeout)
            .await?
            .ok_or_else(|| Error::Timeout(format!("no result for task {} within {timeout:?}", self.id)))
    }

    /// Waits for the result and returns the output of a completed task
    /// (see [`TaskResult::into_output`]).
    pub async fn output(&self, timeout: Duration) -> Result<Output> {
        self.wait(timeout).await?.into_output()
    }
}
