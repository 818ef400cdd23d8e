//! Hierarchical orchestration: a coordinator fans out sub-tasks to specialist
//! workers and registers a continuation that is enqueued **exactly once**
//! when the join is decided.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use std::time::Duration;
//! # use agentscale_core::{Error, Output, Task};
//! # use agentscale_core::join::JoinPolicy;
//! # use agentscale_core::orchestrate::Orchestrator;
//! # async fn coordinator(orch: &Orchestrator, task: &Task) -> Result<Output, Error> {
//! // Inside the coordinator's handler:
//! let fanned = orch
//!     .fan_out(task, JoinPolicy::All)
//!     .deadline(Duration::from_secs(30))
//!     .child("research", "specialists", Task::json("research", &"topic")?)
//!     .child("code", "specialists", Task::json("code", &"topic")?)
//!     .then("planner", Task::json("synthesise", &"topic")?)
//!     .submit()
//!     .await?;
//! // The coordinator returns at once: it holds no worker slot while waiting.
//! Ok(fanned.into_output())
//! # }
//! ```
//!
//! The continuation's handler reads the join with
//! [`Orchestrator::join_of`]; its output becomes the coordinator task's
//! result (what a [`Client`](crate::results::Client) awaiting the
//! coordinator's id receives).
//!
//! # How it works
//!
//! * Ids are derived, not random: join `<coordinator id>.join`, child
//!   `<join>.<label>`, continuation `<join>.then`, deadline task
//!   `<join>.deadline`. A coordinator that runs twice (at-least-once) creates
//!   nothing new: [`JoinStore::create`] is idempotent and every enqueue
//!   carries its id as idempotency key.
//! * Workers configured with the orchestrator
//!   ([`WorkerBuilder::orchestrator`](crate::worker::WorkerBuilder::orchestrator))
//!   report every finished child (ok, or failed with the reason when it is
//!   dead-lettered or expires) into its join slot **before** acking it. The
//!   report that decides the join returns the continuation; the worker
//!   enqueues it and marks it enqueued. A crash in between leaves the child
//!   unacked: it is redelivered, its report is a duplicate, and the store
//!   hands the not-yet-marked continuation out again (re-drive). The same
//!   re-drive happens on any later report, and on the deadline task.
//! * Deadlines are enforced by a delayed task (kind [`DEADLINE_KIND`],
//!   `not_before` = the deadline) on the continuation's queue; a worker with
//!   the orchestrator handles it itself. Children carry the deadline as their
//!   task deadline, so a nested fan-out inherits it: a deadline on the parent
//!   bounds the whole tree.
//! * Once decided, the remaining children are cancelled, best effort: a
//!   child not yet started is skipped (reported as cancelled) when its
//!   worker process already saw the decision, or, on a redelivery, after
//!   asking the join store; a running one sees
//!   [`TaskContext::is_cancelled`](crate::worker::TaskContext::is_cancelled).
//!   Late reports are ignored and counted.
//! * A child's output (or failure reason) lives in its join slot, which is
//!   what the continuation reads; it is not recorded again in the result
//!   store. The coordinator's result (written by the continuation) is.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::join::{ChildStatus, JoinId, JoinPolicy, JoinSpec, JoinState, JoinStore, Reported};
use crate::output::Output;
use crate::queue::TaskQueue;
use crate::results::{ResultStore, TaskOutcome};
use crate::task::{now_ms, Task, TaskId};

/// Header: the join a task reports into.
pub const HEADER_JOIN: &str = "agentscale-join";
/// Header: the child id a task reports as (when not its own id: the
/// continuation of a nested fan-out reports as the child that fanned out).
pub const HEADER_JOIN_CHILD: &str = "agentscale-join-child";
/// Header: the task id under which this task's result is recorded (when not
/// its own id: a continuation records the coordinator's result).
pub const HEADER_RESULT_OF: &str = "agentscale-result-of";
/// Header: on a continuation, the join it continues.
pub const HEADER_CONTINUES: &str = "agentscale-continues";
/// Task kind of the delayed task that enforces a join's deadline.
pub const DEADLINE_KIND: &str = "agentscale.join-deadline";

/// Attempts of a deadline task (it is retried while the state backend is down).
const DEADLINE_ATTEMPTS: u32 = 50;

/// Fan-out and fan-in over a [`JoinStore`], a [`ResultStore`] and the queues
/// children and continuations go to (by name). Share it as
/// `Arc<Orchestrator>` between the coordinator's handler and the workers.
pub struct Orchestrator {
    results: Arc<dyn ResultStore>,
    joins: Arc<dyn JoinStore>,
    queues: BTreeMap<String, Arc<dyn TaskQueue>>,
    /// Joins this process saw decided (bounded), so their children not yet
    /// started are skipped without a round trip.
    decided: parking_lot::Mutex<DecidedCache>,
}

/// Most decided join ids remembered in process.
const DECIDED_CACHE: usize = 4096;

#[derive(Debug, Default)]
struct DecidedCache {
    set: std::collections::HashSet<JoinId>,
    order: std::collections::VecDeque<JoinId>,
}

impl DecidedCache {
    fn insert(&mut self, id: &JoinId) {
        if self.set.insert(id.clone()) {
            self.order.push_back(id.clone());
            while self.order.len() > DECIDED_CACHE {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field("results", &self.results)
            .field("joins", &self.joins)
            .field("queues", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds an [`Orchestrator`].
#[derive(Debug)]
pub struct OrchestratorBuilder {
    results: Arc<dyn ResultStore>,
    joins: Arc<dyn JoinStore>,
    queues: Vec<Arc<dyn TaskQueue>>,
}

impl OrchestratorBuilder {
    /// Registers a queue children or continuations can be sent to, under
    /// its [`TaskQueue::name`].
    pub fn queue(mut self, queue: Arc<dyn TaskQueue>) -> Self {
        self.queues.push(queue);
        self
    }

    /// [`Error::InvalidConfig`] when no queue is registered or two share a name.
    pub fn build(self) -> Result<Orchestrator> {
        if self.queues.is_empty() {
            return Err(Error::InvalidConfig(
                "orchestrator: register at least one queue".into(),
            ));
        }
        let mut queues = BTreeMap::new();
        for q in self.queues {
            let name = q.name().to_owned();
            if queues.insert(name.clone(), q).is_some() {
                return Err(Error::InvalidConfig(format!(
                    "orchestrator: two queues named {name:?}"
                )));
            }
        }
        Ok(Orchestrator {
            results: self.results,
            joins: self.joins,
            queues,
            decided: parking_lot::Mutex::default(),
        })
    }
}

impl Orchestrator {
    /// Starts building an orchestrator over these stores.
    pub fn builder(results: Arc<dyn ResultStore>, joins: Arc<dyn JoinStore>) -> OrchestratorBuilder {
        OrchestratorBuilder {
            results,
            joins,
            queues: Vec::new(),
        }
    }

    /// The result store.
    pub fn results(&self) -> &Arc<dyn ResultStore> {
        &self.results
    }

    /// The join store.
    pub fn joins(&self) -> &Arc<dyn JoinStore> {
        &self.joins
    }

    /// A registered queue; [`Error::NotFound`] for an unknown name.
    pub fn queue(&self, name: &str) -> Result<&Arc<dyn TaskQueue>> {
        self.queues
            .get(name)
            .ok_or_else(|| Error::NotFound(format!("orchestrator: no queue named {name:?}")))
    }

    /// Starts a fan-out from inside the handler of `coordinator`.
    pub fn fan_out<'a>(&'a self, coordinator: &'a Task, policy: JoinPolicy) -> FanOut<'a> {
        FanOut {
            orch: self,
            coordinator,
            policy,
            deadline: None,
            children: Vec::new(),
            then: None,
        }
    }

    /// The join a continuation task continues, with every child's status.
    /// [`Error::InvalidInput`] if `continuation` is not a continuation;
    /// [`Error::NotFound`] if the join is unknown or expired (the worker
    /// dead-letters such a continuation with that reason).
    pub async fn join_of(&self, continuation: &Task) -> Result<JoinState> {
        let join = continuation
            .headers
            .get(HEADER_CONTINUES)
            .ok_or_else(|| Error::InvalidInput(format!("task {} is not a continuation", continuation.id)))?;
        let join = JoinId::new(join.clone());
        self.joins
            .state(&join)
            .await?
            .ok_or_else(|| Error::NotFound(format!("join {join} is unknown or expired")))
    }

    /// Enqueues the continuation handed out by a decided join and marks it
    /// enqueued (the re-drive step; safe to repeat).
    pub async fn redrive(&self, join: &JoinId, reported: &Reported) -> Result<()> {
        if reported.decision.is_some() {
            self.decided.lock().insert(join);
        }
        if let Some((queue, task)) = &reported.continuation {
            let q = self.queue(queue)?;
            let e = q.enqueue(task.clone()).await?;
            tracing::debug!(join = %join, continuation = %e.id, duplicate = e.duplicate, "continuation enqueued");
            self.joins.mark_enqueued(join).await?;
        }
        Ok(())
    }

    /// Records the terminal state of `task` (under its result id) and
    /// reports it to its join, re-driving the continuation when the join is
    /// decided. Used by the worker; an unknown join (expired) is logged and
    /// ignored, other errors are returned so the task is retried.
    pub(crate) async fn finish(&self, task: &Task, outcome: TaskOutcome) -> Result<()> {
        let Some(join) = task.headers.get(HEADER_JOIN) else {
            return finish_result(&*self.results, task, &outcome).await;
        };
        // A child's output lives in its join slot (what the continuation
        // reads); it is not recorded a second time in the result store.
        outcome.check_size(self.results.max_output_bytes())?;
        let join = JoinId::new(join.clone());
        let child = task
            .headers
            .get(HEADER_JOIN_CHILD)
            .map(|c| TaskId::new(c.clone()))
            .unwrap_or_else(|| task.id.clone());
        // A child that expired once its join's own deadline had passed timed
        // out by that deadline: decide the join by it (the child shows as
        // timed out) instead of letting the failure settle it first. Any
        // other expiry is a failure, so a join without a deadline never hangs.
        if matches!(outcome, TaskOutcome::Expired(_)) {
            match self.joins.expire(&join).await {
                Ok(rep) if rep.decision.is_some() => return self.redrive(&join, &rep).await,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::warn!(join = %join, child = %child, error = %e, "expiry of a child of an unknown or expired join ignored");
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let status = match outcome {
            TaskOutcome::Completed(o) => ChildStatus::Ok(o),
            TaskOutcome::DeadLettered(r) => ChildStatus::Failed(format!("dead-lettered: {r}")),
            TaskOutcome::Expired(r) => ChildStatus::Failed(format!("expired: {r}")),
            TaskOutcome::Cancelled(r) => ChildStatus::Failed(format!("cancelled: {r}")),
        };
        match self.joins.report(&join, &child, status).await {
            Ok(rep) => self.redrive(&join, &rep).await,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!(join = %join, child = %child, error = %e, "report to an unknown or expired join ignored");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Handles a deadline task: decides its join if still open, re-drives
    /// the continuation. `Ok(Some(d))` when the deadline is `d` away (the
    /// task came early: retry after `d`).
    pub(crate) async fn on_deadline(&self, task: &Task) -> Result<Option<Duration>> {
        let join = JoinId::new(String::from_utf8_lossy(&task.payload).into_owned());
        let rep = match self.joins.expire(&join).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                tracing::warn!(join = %join, "deadline of an unknown or expired join ignored");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if rep.decision.is_none() {
            let due = task.not_before_ms.unwrap_or(0);
            let now = now_ms();
            return Ok(Some(Duration::from_millis(due.saturating_sub(now).max(10))));
        }
        self.redrive(&join, &rep).await?;
        Ok(None)
    }

    /// True when `task` is a child whose join is already decided (it need
    /// not run): known in process when this process saw the decision; asked
    /// of the store on a redelivery (`attempt > 1`).
    pub(crate) async fn is_cancelled(&self, task: &Task, attempt: u32) -> Result<bool> {
        let Some(join) = task.headers.get(HEADER_JOIN) else {
            return Ok(false);
        };
        let join = JoinId::new(join.clone());
        if self.decided.lock().set.contains(&join) {
            return Ok(true);
        }
        if attempt > 1 {
            return self.joins.wait_decided(&join, Duration::ZERO).await;
        }
        Ok(false)
    }
}

/// Records `outcome` for `task` under its result id (the
/// [`HEADER_RESULT_OF`] header or its own id). An oversize output is
/// [`CodecError::TooLarge`](crate::CodecError::TooLarge).
pub(crate) async fn finish_result(
    results: &dyn ResultStore,
    task: &Task,
    outcome: &TaskOutcome,
) -> Result<()> {
    let id = task
        .headers
        .get(HEADER_RESULT_OF)
        .map(|r| TaskId::new(r.clone()))
        .unwrap_or_else(|| task.id.clone());
    outcome.check_size(results.max_output_bytes())?;
    results.record(&id, outcome.clone()).await?;
    Ok(())
}

/// A fan-out being built; see [`Orchestrator::fan_out`].
#[derive(Debug)]
pub struct FanOut<'a> {
    orch: &'a Orchestrator,
    coordinator: &'a Task,
    policy: JoinPolicy,
    deadline: Option<Duration>,
    children: Vec<(String, String, Task)>,
    then: Option<(String, Task)>,
}

impl FanOut<'_> {
    /// Decides the join with what it has `d` from now (children not reported
    /// by then count as timed out). Capped by the coordinator's own task
    /// deadline, so nested fan-outs stay within their parent's.
    pub fn deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// Adds a child: `task` goes to the queue named `queue`, reported under
    /// `label` (unique in this fan-out: the child's id is derived from it).
    pub fn child(mut self, label: impl Into<String>, queue: impl Into<String>, task: Task) -> Self {
        self.children.push((label.into(), queue.into(), task));
        self
    }

    /// The continuation: `task` is enqueued on `queue` once the join is decided.
    pub fn then(mut self, queue: impl Into<String>, task: Task) -> Self {
        self.then = Some((queue.into(), task));
        self
    }

    /// Creates the join, schedules the deadline and enqueues the children.
    /// Safe to repeat (a coordinator that runs again): nothing is created
    /// twice. [`Error::InvalidInput`] for no children, duplicate labels, a
    /// missing continuation or an impossible quorum; [`Error::NotFound`] for
    /// an unknown queue name.
    pub async fn submit(self) -> Result<FannedOut> {
        let FanOut {
            orch,
            coordinator,
            policy,
            deadline,
            children,
            then,
        } = self;
        let (then_queue, mut then_task) =
            then.ok_or_else(|| Error::InvalidInput("fan-out without a continuation (call .then)".into()))?;
        orch.queue(&then_queue)?;
        let join = JoinId::new(format!("{}.join", coordinator.id));
        let deadline_ms = match (
            deadline.map(|d| now_ms() + d.as_millis() as u64),
            coordinator.deadline_ms,
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };

        let mut spec_children = Vec::with_capacity(children.len());
        let mut by_queue: BTreeMap<String, Vec<Task>> = BTreeMap::new();
        for (label, queue, mut task) in children {
            orch.queue(&queue)?;
            task.id = TaskId::new(format!("{join}.{label}"));
            task.idempotency_key = Some(task.id.to_string());
            task.deadline_ms = match (task.deadline_ms, deadline_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            task.headers.insert(HEADER_JOIN.into(), join.to_string());
            task.headers.remove(HEADER_JOIN_CHILD);
            task.headers.remove(HEADER_RESULT_OF);
            task.headers.remove(HEADER_CONTINUES);
            spec_children.push((task.id.clone(), label));
            by_queue.entry(queue).or_default().push(task);
        }

        then_task.id = TaskId::new(format!("{join}.then"));
        then_task.idempotency_key = Some(then_task.id.to_string());
        then_task.deadline_ms = coordinator.deadline_ms;
        then_task.not_before_ms = None;
        then_task
            .headers
            .insert(HEADER_CONTINUES.into(), join.to_string());
        let result_of = coordinator
            .headers
            .get(HEADER_RESULT_OF)
            .cloned()
            .unwrap_or_else(|| coordinator.id.to_string());
        then_task.headers.insert(HEADER_RESULT_OF.into(), result_of);
        // A nested fan-out: the continuation reports to the parent join in
        // the coordinator's place.
        match coordinator.headers.get(HEADER_JOIN) {
            Some(parent) => {
                let child = coordinator
                    .headers
                    .get(HEADER_JOIN_CHILD)
                    .cloned()
                    .unwrap_or_else(|| coordinator.id.to_string());
                then_task.headers.insert(HEADER_JOIN.into(), parent.clone());
                then_task.headers.insert(HEADER_JOIN_CHILD.into(), child);
            }
            None => {
                then_task.headers.remove(HEADER_JOIN);
                then_task.headers.remove(HEADER_JOIN_CHILD);
            }
        }

        let spec = JoinSpec {
            id: join.clone(),
            policy,
            children: spec_children,
            deadline_ms,
            continuation: then_task,
            continuation_queue: then_queue.clone(),
        };
        spec.validate()?;
        let created = orch.joins.create(&spec).await?;
        if !created {
            // A coordinator that ran before. If its join is decided, only the
            // continuation may still need a push; otherwise re-enqueue (the
            // idempotency keys suppress duplicates where the queue can).
            let rep = orch.joins.expire(&join).await?;
            if rep.decision.is_some() {
                orch.redrive(&join, &rep).await?;
                return Ok(FannedOut { join });
            }
        }
        if let Some(due) = deadline_ms {
            let mut t = Task::new(DEADLINE_KIND, join.to_string())
                .with_id(TaskId::new(format!("{join}.deadline")))
                .with_max_attempts(DEADLINE_ATTEMPTS);
            t.idempotency_key = Some(t.id.to_string());
            t.not_before_ms = Some(due);
            t.priority = crate::task::Priority::High;
            orch.queue(&then_queue)?.enqueue(t).await?;
        }
        for (queue, tasks) in by_queue {
            let q = orch.queue(&queue)?;
            for r in q.enqueue_batch(tasks).await {
                r?;
            }
        }
        Ok(FannedOut { join })
    }
}

/// A submitted fan-out.
#[derive(Debug, Clone)]
pub struct FannedOut {
    join: JoinId,
}

impl FannedOut {
    /// The join id.
    pub fn join(&self) -> &JoinId {
        &self.join
    }

    /// What the coordinator's handler returns: its result is recorded by the
    /// continuation, not now.
    pub fn into_output(self) -> Output {
        Output::deferred()
    }
}
