//! The enqueue side of the in-memory queue: validation outside the lock,
//! plain batches built outside it and moved in by groups, inserts of tasks
//! with keys, delays or ordered sessions, and the cooperative-scheduling
//! budget every call takes.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::queue::Enqueued;
use agentscale_core::task::{now_ms, Task};
use agentscale_core::{Error, Result};

use super::ready::{Chunk, Queued, Ready};
use super::{later, Delayed, LocalQueue, State};

/// Takes part in Tokio's cooperative scheduling as a channel does: uses
/// `units` of the calling task's budget (one per task enqueued, one per
/// lease call), before the work, and yields to the scheduler whenever the
/// budget runs out.
///
/// Without it a producer that enqueues in a loop never yields (no call
/// here waits), so a worker woken on the producer's thread cannot run
/// until the producer's loop ends, and on a current-thread runtime the
/// queue only grows.
pub(super) async fn coop(units: usize) {
    for _ in 0..units {
        std::future::poll_fn(|cx| tokio::task::coop::poll_proceed(cx).map(|r| r.made_progress())).await;
    }
}

impl LocalQueue {
    /// Validation done outside the lock: task shape and envelope size.
    pub(super) fn check(&self, task: &Task) -> Result<()> {
        task.validate()?;
        if self.shared.ordered_sessions {
            agentscale_core::flow::validate_session(task)?;
        }
        let limit = self.shared.max_envelope_bytes;
        if task.payload.len() > limit {
            return Err(Error::InvalidInput(format!(
                "task {}: payload of {} bytes exceeds the envelope limit of {limit}",
                task.id,
                task.payload.len()
            )));
        }
        // Encoding costs; do it only when a generous upper bound on the
        // encoded size could exceed the limit.
        if envelope_upper_bound(task) > limit {
            task.encode_limited(limit)?;
        }
        Ok(())
    }

    /// True when `task` goes straight to the back of its priority's ready
    /// list: no idempotency key to look up, no `not_before`, no ordered
    /// session to queue behind.
    pub(super) fn is_plain(&self, task: &Task) -> bool {
        task.idempotency_key.is_none()
            && task.not_before_ms.is_none()
            && !(self.shared.ordered_sessions && task.session_id.is_some())
    }

    /// `enqueue_batch` of plain tasks only ([`Self::is_plain`]): validated
    /// outside the lock, then handed to the fresh lists as they are (the
    /// caller's `Vec` becomes a chunk: no task is copied, and the lock is
    /// held for one push per priority in the batch).
    pub(super) fn enqueue_plain(&self, mut tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let now = Instant::now();
        let mut out = Vec::with_capacity(tasks.len());
        // In order; a refused task leaves the batch (no move when none is).
        tasks.retain(|task| match self.check(task) {
            Ok(()) => {
                out.push(Ok(Enqueued {
                    id: task.id.clone(),
                    duplicate: false,
                }));
                true
            }
            Err(e) => {
                out.push(Err(e));
                false
            }
        });
        let Some(first) = tasks.first() else {
            return out;
        };
        let idx = first.priority.index();
        if tasks.iter().all(|t| t.priority.index() == idx) {
            let chunk = Chunk {
                tasks: VecDeque::from(tasks),
                since: now,
            };
            self.shared.fresh.push(idx, chunk);
        } else {
            // Mixed priorities (rare): one chunk per priority.
            let mut split: [VecDeque<Task>; 3] = Default::default();
            for task in tasks {
                split[task.priority.index()].push_back(task);
            }
            for (idx, tasks) in split.into_iter().enumerate() {
                self.shared.fresh.push(idx, Chunk { tasks, since: now });
            }
        }
        // Wake one leaser; it wakes the next if tasks are left over.
        self.shared.notify.notify_one();
        out
    }

    /// `enqueue_batch` with keys, delays or ordered sessions: each task is
    /// inserted under the lock in turn.
    pub(super) fn enqueue_each(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        let checked: Vec<Result<Task>> = tasks.into_iter().map(|t| self.check(&t).map(|()| t)).collect();
        let now = Instant::now();
        let mut stored = 0usize;
        let out: Vec<Result<Enqueued>> = {
            let mut st = self.shared.state.lock();
            st.forget_expired_keys(now);
            checked
                .into_iter()
                .map(|r| {
                    r.map(|t| {
                        let e = self.insert(&mut st, t, now);
                        stored += usize::from(!e.duplicate);
                        e
                    })
                })
                .collect()
        };
        if stored > 0 {
            // Wake one leaser; it wakes the next if tasks are left over.
            self.shared.notify.notify_one();
        }
        out
    }

    /// Inserts a validated task; caller holds the lock.
    pub(super) fn insert(&self, st: &mut State, task: Task, now: Instant) -> Enqueued {
        if let Some(key) = &task.idempotency_key {
            if let Some((id, _)) = st.idempotency.get(key) {
                return Enqueued {
                    id: id.clone(),
                    duplicate: true,
                };
            }
            let until = later(now, self.shared.idempotency_window);
            st.idempotency.insert(key.clone(), (task.id.clone(), until));
            st.idempotency_expiry.push(Reverse((until, key.clone())));
        }
        let id = task.id.clone();
        if self.shared.ordered_sessions && task.session_id.is_some() {
            if let Some(task) = st.sessions.admit(Arc::new(task)) {
                self.place(st, Queued::Shared(task), now);
            }
        } else {
            self.place(st, Queued::Owned(task), now);
        }
        Enqueued { id, duplicate: false }
    }

    /// Puts a task that may be delivered (no session, or its session's
    /// head) into the ready queue or the delayed heap: a new task to the
    /// back of the fresh list, behind the tasks enqueued before it; a
    /// shared one (a session's next task) to the state's ready list.
    pub(super) fn place(&self, st: &mut State, task: Queued, now: Instant) {
        match task.task().not_before_ms.map(|nb| nb.saturating_sub(now_ms())) {
            Some(wait) if wait > 0 => {
                let seq = st.next_seq;
                st.next_seq += 1;
                st.delayed.push(Reverse(Delayed {
                    at: later(now, Duration::from_millis(wait)),
                    seq,
                    task: task.into_shared(),
                }));
            }
            _ => {
                let idx = task.task().priority.index();
                match task {
                    Queued::Owned(task) => self.shared.fresh.push_one(idx, task, now),
                    task => st.ready[idx].push_back(Ready { task, since: now }),
                }
            }
        }
    }
}

/// An upper bound on the encoded envelope size, computed without encoding.
pub(super) fn envelope_upper_bound(task: &Task) -> usize {
    // Field names and fixed-size fields of the MessagePack map stay under 256
    // bytes; each string or binary adds at most 5 bytes of length prefix.
    let opt = |s: &Option<String>| s.as_ref().map_or(0, |s| s.len() + 5);
    256 + task.id.as_str().len()
        + 5
        + task.kind.len()
        + 5
        + task.payload.len()
        + 5
        + opt(&task.tenant)
        + opt(&task.session_id)
        + opt(&task.idempotency_key)
        + opt(&task.traceparent)
        + task
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>()
}
