//! One lease to its end: checks, the handler attempt, results, ack or nack.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::FutureExt;
use tracing::Instrument;

use super::shard::{panic_message, release_slot};
use super::{Handler, Heartbeat, Shared, TaskContext};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Outcome;
use crate::orchestrate::{finish_result, Orchestrator, DEADLINE_KIND, HEADER_JOIN};
use crate::output::Output;
use crate::queue::{Lease, Nack, TaskQueue};
use crate::results::TaskOutcome;
use crate::task::{now_ms, Task};

/// How one attempt ended.
pub(super) enum Attempt {
    Done(Output),
    Failed(Error),
    Panicked(String),
    TimedOut,
    LeaseLost(Error),
    Aborted,
}

/// Runs one lease to its end: returns it when it must be acked; nacks or
/// abandons it otherwise. `leased_at` is when the lease call returned (one
/// clock read per batch): the attempt's start when nothing waits between
/// the lease and the handler.
pub(super) async fn process<H: Handler>(
    shared: &Shared<H>,
    lease: Lease,
    leased_at: Instant,
) -> Option<Lease> {
    let task = lease.task();
    let span = tracing::info_span!(
        "agentscale.task",
        task.id = %task.id,
        task.kind = %task.kind,
        session.id = task.session_id.as_deref(),
        tenant = task.tenant.as_deref(),
        attempt = lease.attempt(),
        traceparent = task.traceparent.as_deref(),
    );
    if shared.limiters.is_empty() {
        process_in_span(shared, lease, Some(leased_at))
            .instrument(span)
            .await
    } else {
        super::limit::process_limited(shared, &shared.limiters, lease)
            .instrument(span)
            .await
    }
}

/// Runs one lease to its end inside its span. `leased_at`, when given, is
/// taken as the attempt's start unless the orchestrator's checks wait first.
pub(super) async fn process_in_span<H: Handler>(
    shared: &Shared<H>,
    lease: Lease,
    leased_at: Option<Instant>,
) -> Option<Lease> {
    let task = lease.task();
    let attempt = lease.attempt();
    if attempt > task.max_attempts {
        let reason = format!(
            "delivered {attempt} times, more than max_attempts {} (leases lost or workers crashed)",
            task.max_attempts
        );
        return Box::pin(dead_letter(shared, &lease, reason, false)).await;
    }
    if let Some(deadline) = task.deadline_ms {
        let now = now_ms();
        // At the deadline is already too late: the task must finish by then.
        if now >= deadline {
            let reason = format!(
                "deadline passed {} ms before attempt {attempt} could start",
                now - deadline
            );
            return Box::pin(dead_letter(shared, &lease, reason, true)).await;
        }
    }
    if let Some(orch) = &shared.orchestrator {
        if task.kind == DEADLINE_KIND {
            return Box::pin(run_deadline(shared, orch, lease)).await;
        }
        if task.headers.contains_key(HEADER_JOIN) {
            match orch.is_cancelled(task, attempt).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::debug!("join already decided; skipping the child");
                    let outcome = TaskOutcome::Cancelled("its join was decided before it ran".into());
                    return Box::pin(finish_then_ack(shared, lease, outcome, attempt)).await;
                }
                Err(e) => tracing::warn!(error = %e, "join state unavailable; running the child anyway"),
            }
        }
    }

    let started = match leased_at {
        Some(at) if shared.orchestrator.is_none() => at,
        _ => Instant::now(),
    };
    let cx = TaskContext {
        attempt,
        max_attempts: task.max_attempts,
        started,
        timeout: shared.task_timeout,
        flags: shared.flags.clone(),
        // Only a fan-out child can learn that its join was decided without it.
        cancelled: (shared.orchestrator.is_some() && task.headers.contains_key(HEADER_JOIN))
            .then(Arc::default),
        shadow: task.is_shadow(),
    };
    let outcome = run_attempt(shared, &lease, &cx).await;
    if let Some(m) = &shared.metrics {
        m.observe_duration(started.elapsed());
    }
    let error = match outcome {
        Attempt::Done(output) => {
            if output.is_deferred() || shared.results.is_none() {
                return Some(lease);
            }
            return Box::pin(finish_then_ack(
                shared,
                lease,
                TaskOutcome::Completed(output),
                attempt,
            ))
            .await;
        }
        Attempt::Aborted => {
            tracing::info!("cancelled at shutdown; releasing the task uncharged");
            return Box::pin(settle(shared, &lease, Nack::Release)).await;
        }
        Attempt::LeaseLost(e) => {
            tracing::warn!(error = %e, "heartbeat refused: lease lost; abandoning this attempt");
            count_lease_lost(shared);
            release_slot(shared);
            return None;
        }
        Attempt::Failed(e) => e,
        Attempt::Panicked(msg) => {
            shared.stats.add(&shared.stats.panicked, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(Outcome::Panicked);
            }
            Error::Handler(format!("handler panicked: {msg}"))
        }
        Attempt::TimedOut => {
            shared.stats.add(&shared.stats.timed_out, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(Outcome::TimedOut);
            }
            Error::Timeout(format!(
                "handler exceeded the task timeout of {:?}",
                shared.task_timeout
            ))
        }
    };
    let nack = if !error.is_retryable() {
        Nack::DeadLetter(format!("non-retryable failure on attempt {attempt}: {error}"))
    } else if attempt >= task.max_attempts {
        Nack::DeadLetter(format!(
            "failed {attempt} of {} attempts; last error: {error}",
            task.max_attempts
        ))
    } else {
        let delay = shared.backoff.delay(attempt, shared.rng.next_u64());
        // At warn: a failing handler is what an operator must see by default.
        tracing::warn!(
            task.id = %task.id,
            task.kind = %task.kind,
            attempt,
            max_attempts = task.max_attempts,
            error = %error,
            retry_in = ?delay,
            "task attempt failed; retrying later"
        );
        Nack::Retry(delay)
    };
    // Boxed: the failure path is cold, and this keeps the per-task future small.
    match nack {
        Nack::DeadLetter(reason) => Box::pin(dead_letter(shared, &lease, reason, false)).await,
        other => Box::pin(settle(shared, &lease, other)).await,
    }
}

/// Records a terminal state (and reports it to the task's join), then hands
/// the lease back for acking. An oversize output dead-letters the task with
/// that reason; any other recording failure is a failed attempt.
pub(super) async fn finish_then_ack<H>(
    shared: &Shared<H>,
    lease: Lease,
    outcome: TaskOutcome,
    attempt: u32,
) -> Option<Lease> {
    match finish(shared, lease.task(), outcome).await {
        Ok(()) => Some(lease),
        Err(Error::Codec(crate::error::CodecError::TooLarge { size, limit })) => {
            let reason = format!("output of {size} bytes exceeds the result limit of {limit} bytes");
            dead_letter(shared, &lease, reason, false).await
        }
        Err(e) => {
            let task = lease.task();
            let nack = if attempt >= task.max_attempts {
                Nack::DeadLetter(format!("could not record the result on the last attempt: {e}"))
            } else {
                tracing::warn!(error = %e, "recording the result failed; retrying the task");
                Nack::Retry(shared.backoff.delay(attempt, shared.rng.next_u64()))
            };
            match nack {
                Nack::DeadLetter(reason) => dead_letter(shared, &lease, reason, false).await,
                other => settle(shared, &lease, other).await,
            }
        }
    }
}

/// Records the terminal state through the orchestrator or the result store.
pub(super) async fn finish<H>(shared: &Shared<H>, task: &Task, outcome: TaskOutcome) -> Result<()> {
    match (&shared.orchestrator, &shared.results) {
        (Some(o), _) => o.finish(task, outcome).await,
        (None, Some(r)) => finish_result(&**r, task, &outcome).await,
        (None, None) => Ok(()),
    }
}

/// Dead-letters a task after recording its terminal state (dead-lettered, or
/// expired when `expired`). If the record fails the task is left leased: it
/// is redelivered after the lease expires and dead-lettered again then, so
/// its result and its join report are never lost.
pub(super) async fn dead_letter<H>(
    shared: &Shared<H>,
    lease: &Lease,
    reason: String,
    expired: bool,
) -> Option<Lease> {
    if shared.results.is_some() {
        let outcome = if expired {
            TaskOutcome::Expired(reason.clone())
        } else {
            TaskOutcome::DeadLettered(reason.clone())
        };
        if let Err(e) = finish(shared, lease.task(), outcome).await {
            shared.stats.add(&shared.stats.queue_errors, 1);
            tracing::warn!(error = %e, "recording a dead letter failed; leaving the task to be redelivered");
            release_slot(shared);
            return None;
        }
    }
    settle(shared, lease, Nack::DeadLetter(reason)).await
}

/// Handles a join's deadline task: decides the join if still open and
/// re-drives its continuation.
pub(super) async fn run_deadline<H>(shared: &Shared<H>, orch: &Orchestrator, lease: Lease) -> Option<Lease> {
    match orch.on_deadline(lease.task()).await {
        Ok(None) => Some(lease),
        Ok(Some(early)) => settle(shared, &lease, Nack::Retry(early)).await,
        Err(e) => {
            tracing::warn!(error = %e, "join deadline could not be applied; retrying");
            let delay = shared.backoff.delay(lease.attempt(), shared.rng.next_u64());
            settle(shared, &lease, Nack::Retry(delay)).await
        }
    }
}

/// Runs the handler with the timeout, panic catching, heartbeats and the
/// shutdown abort.
pub(super) async fn run_attempt<H: Handler>(shared: &Shared<H>, lease: &Lease, cx: &TaskContext) -> Attempt {
    if shared.flags.aborted.load(Ordering::Acquire) {
        return Attempt::Aborted;
    }
    let mut handler =
        std::pin::pin!(AssertUnwindSafe(shared.handler.handle(lease.task(), cx)).catch_unwind());
    // Fast path: a handler that finishes on its first poll needs no timer
    // and no abort listener.
    if let std::task::Poll::Ready(r) = futures::poll!(handler.as_mut()) {
        return match r {
            Ok(Ok(out)) => Attempt::Done(out),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(panic) => Attempt::Panicked(panic_message(&*panic)),
        };
    }
    // Created before the second flag check: an abort after the check
    // reaches it through `notify_waiters` even unpolled, one before it is
    // seen by the check.
    let abort = shared.flags.abort.notified();
    if shared.flags.aborted.load(Ordering::Acquire) {
        return Attempt::Aborted;
    }
    let run = tokio::time::timeout(shared.task_timeout, handler);
    let heartbeat = async {
        match shared.heartbeat {
            Some(hb) => heartbeat_until_lost(&*shared.queue, lease, hb).await,
            None => futures::future::pending().await,
        }
    };
    // A fan-out child learns when its join is decided without it.
    let cancel_watch = async {
        if let (Some(orch), Some(join)) = (&shared.orchestrator, lease.task().headers.get(HEADER_JOIN)) {
            let join = crate::join::JoinId::new(join.clone());
            if let Ok(true) = orch.joins().wait_decided(&join, shared.task_timeout).await {
                if let Some(c) = &cx.cancelled {
                    c.store(true, Ordering::Release);
                }
            }
        }
        futures::future::pending::<()>().await
    };
    // Biased: a handler that is ready at once never arms the heartbeat timer.
    tokio::select! {
        biased;
        r = run => match r {
            Ok(Ok(Ok(out))) => Attempt::Done(out),
            Ok(Ok(Err(e))) => Attempt::Failed(e),
            Ok(Err(panic)) => Attempt::Panicked(panic_message(&*panic)),
            Err(_) => Attempt::TimedOut,
        },
        e = heartbeat => Attempt::LeaseLost(e),
        _ = cancel_watch => Attempt::Aborted,
        _ = abort => Attempt::Aborted,
    }
}

/// Extends the lease every interval; returns only when the queue says the
/// lease is lost. Other extension errors are logged and retried next beat.
pub(super) async fn heartbeat_until_lost(queue: &dyn TaskQueue, lease: &Lease, hb: Heartbeat) -> Error {
    let mut next = tokio::time::Instant::now() + hb.interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += hb.interval;
        match queue.extend(lease, hb.extend_by).await {
            Ok(()) => tracing::trace!("lease extended"),
            Err(e) if e.kind() == ErrorKind::LeaseLost => return e,
            Err(e) => tracing::warn!(error = %e, "lease extension failed; retrying at the next heartbeat"),
        }
    }
}

pub(super) fn count_lease_lost<H>(shared: &Shared<H>) {
    shared.stats.add(&shared.stats.lease_lost, 1);
    if let Some(m) = &shared.metrics {
        m.record_outcome(Outcome::LeaseLost);
    }
}

pub(super) fn record_ack_error<H>(shared: &Shared<H>, lease: &Lease, e: &Error) {
    if e.kind() == ErrorKind::LeaseLost {
        count_lease_lost(shared);
        tracing::warn!(task.id = %lease.task().id, error = %e, "ack refused: lease lost; the task runs again elsewhere");
    } else {
        shared.stats.add(&shared.stats.queue_errors, 1);
        tracing::warn!(task.id = %lease.task().id, error = %e, "ack failed; the task is redelivered after its lease expires");
    }
}

/// Nacks one lease, counts the outcome, frees the slot.
pub(super) async fn settle<H>(shared: &Shared<H>, lease: &Lease, nack: Nack) -> Option<Lease> {
    let (counter, outcome) = match &nack {
        Nack::Retry(_) => (&shared.stats.retried, Outcome::Retried),
        Nack::Release => (&shared.stats.released, Outcome::Released),
        Nack::Defer(_) => (&shared.stats.deferred, Outcome::Deferred),
        Nack::DeadLetter(reason) => {
            let task = lease.task();
            tracing::warn!(
                task.id = %task.id,
                task.kind = %task.kind,
                attempt = lease.attempt(),
                reason = %reason,
                "dead-lettering task"
            );
            (&shared.stats.dead_lettered, Outcome::DeadLettered)
        }
    };
    match shared.queue.nack(lease, nack).await {
        Ok(()) => {
            shared.stats.add(counter, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(outcome);
            }
        }
        Err(e) if e.kind() == ErrorKind::LeaseLost => {
            tracing::warn!(error = %e, "nack refused: lease lost; the task runs again elsewhere");
            count_lease_lost(shared);
        }
        Err(e) => {
            shared.stats.add(&shared.stats.queue_errors, 1);
            tracing::warn!(error = %e, "nack failed; the task is redelivered after its lease expires");
        }
    }
    release_slot(shared);
    None
}
