//! The driver loop: leasing for free slots, polling handlers, batched acks.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::watch;

use super::process::{process, record_ack_error};
use super::{Handler, Shared, WorkerStats};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Metrics, Outcome};
use crate::queue::{Lease, TaskQueue};

type LeaseCall = Pin<Box<dyn Future<Output = (usize, Result<Vec<Lease>>)> + Send>>;
type AckCall = Pin<Box<dyn Future<Output = (Vec<Lease>, Vec<Result<()>>)> + Send>>;

/// A reusable box for one task's future. A task's future is first polled in
/// its box right after the lease; one that finishes then (a handler that did
/// not have to wait) never enters the `FuturesUnordered`, and its box is
/// reused for the next task, so such a task costs no allocation and no
/// wake-up bookkeeping. One that must wait is moved, boxed, into the set.
type TaskBox<F> = Pin<Box<Option<F>>>;

/// A waiting task's boxed future in the `FuturesUnordered`; yields the
/// future's output and the emptied box (for reuse) when it finishes.
struct Running<F>(Option<TaskBox<F>>);

impl<F: Future> Future for Running<F> {
    type Output = (F::Output, Option<TaskBox<F>>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(slot) = this.0.as_mut() else {
            return Poll::Pending; // not reached: polled again after Ready
        };
        let Some(fut) = slot.as_mut().as_pin_mut() else {
            return Poll::Pending; // not reached: a Running box is never empty
        };
        let out = std::task::ready!(fut.poll(cx));
        slot.as_mut().set(None);
        Poll::Ready((out, this.0.take()))
    }
}

/// One driver: leases for free slots, polls its tasks' futures and acks their
/// completions in batches. Handlers of one driver share a thread (no spawn and
/// no cross-thread wake-up per task); a worker runs several drivers to use
/// several cores. Lease and ack calls run concurrently with the handlers.
pub(super) async fn run_shard<H: Handler>(
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
    poll_wait: Duration,
    ack_batch: usize,
) {
    let shared = &*shared;
    let mut running = FuturesUnordered::new();
    // Empty task boxes for reuse (at most one per slot this driver ran at once).
    let mut boxes = Vec::new();
    let mut lease_call: Option<LeaseCall> = None;
    let mut ack_call: Option<AckCall> = None;
    let mut to_ack: Vec<Lease> = Vec::with_capacity(ack_batch);
    let mut spare: Vec<Lease> = Vec::with_capacity(ack_batch);
    let mut pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut error_delay = Duration::from_millis(50);
    let mut held = 0usize;
    let mut stopping = *stop.borrow();
    loop {
        // Checked before any new lease: completions can free slots in the
        // same wake-up that carries the stop signal.
        if !stopping && *stop.borrow() {
            stopping = true;
        }
        if ack_call.is_none() && !to_ack.is_empty() {
            // At most `ack_batch` per call (tasks finished at their first
            // poll can add more than that at once).
            let batch = if to_ack.len() <= ack_batch {
                std::mem::replace(&mut to_ack, std::mem::take(&mut spare))
            } else {
                let mut batch = std::mem::take(&mut spare);
                batch.extend(to_ack.drain(..ack_batch));
                batch
            };
            let (queue, stats, budget) = (
                shared.queue.clone(),
                shared.stats.clone(),
                shared.ack_retry_budget,
            );
            ack_call = Some(Box::pin(async move {
                let results = ack_with_retry(&*queue, &batch, budget, &stats).await;
                (batch, results)
            }));
        }
        if !stopping && lease_call.is_none() && pause.is_none() {
            let free = shared.slots.available_permits();
            if free > 0 {
                if let Ok(p) = shared.slots.try_acquire_many(free as u32) {
                    p.forget();
                    held += free;
                }
            }
            if held > 0 {
                let (want, queue) = (held, shared.queue.clone());
                held = 0;
                // A lease call in progress is never cancelled (that could strand
                // deliveries until their lease expires); shutdown waits for it.
                lease_call = Some(Box::pin(
                    async move { (want, queue.lease(want, poll_wait).await) },
                ));
            }
        }
        if stopping && lease_call.is_none() && ack_call.is_none() && running.is_empty() && to_ack.is_empty() {
            if held > 0 {
                shared.slots.add_permits(held);
            }
            return;
        }
        let waiting_for_slot = !stopping && lease_call.is_none() && pause.is_none();
        tokio::select! {
            biased;
            Some((done, slot)) = running.next(), if !running.is_empty() => {
                to_ack.extend(done);
                boxes.extend(slot);
                // Collect every completion that is ready, so acks go in batches.
                while to_ack.len() < ack_batch {
                    match running.next().now_or_never() {
                        Some(Some((done, slot))) => {
                            to_ack.extend(done);
                            boxes.extend(slot);
                        }
                        _ => break,
                    }
                }
            }
            Some((mut batch, results)) = OptionFuture::from(ack_call.as_mut()), if ack_call.is_some() => {
                ack_call = None;
                settle_acks(shared, &batch, &results);
                batch.clear();
                spare = batch;
            }
            Some((want, leased)) = OptionFuture::from(lease_call.as_mut()), if lease_call.is_some() => {
                lease_call = None;
                match leased {
                    Ok(leases) => {
                        error_delay = Duration::from_millis(50);
                        let got = leases.len();
                        if got < want {
                            shared.slots.add_permits(want - got);
                        }
                        if got > 0 {
                            shared.stats.add(&shared.stats.leased, got as u64);
                            shared.stats.add(&shared.stats.in_flight, got as u64);
                            if let Some(m) = &shared.metrics {
                                m.add_busy(got as i64);
                            }
                            // One clock read per batch: the start of every
                            // attempt that begins at once.
                            let leased_at = Instant::now();
                            for lease in leases {
                                let mut slot = boxes.pop().unwrap_or_else(|| Box::pin(None));
                                slot.as_mut().set(Some(process(shared, lease, leased_at)));
                                // The first poll, with this driver's context: a
                                // future that waits is then moved into `running`,
                                // which polls it again with its own waker.
                                let first = std::future::poll_fn(|cx| {
                                    Poll::Ready(slot.as_mut().as_pin_mut().map(|f| f.poll(cx)))
                                })
                                .await;
                                match first {
                                    Some(Poll::Ready(done)) => {
                                        slot.as_mut().set(None);
                                        boxes.push(slot);
                                        to_ack.extend(done);
                                    }
                                    _ => running.push(Running(Some(slot))),
                                }
                            }
                        }
                    }
                    Err(e) => {
                        shared.slots.add_permits(want);
                        shared.stats.add(&shared.stats.queue_errors, 1);
                        tracing::warn!(worker = %shared.name, error = %e, retry_in = ?error_delay, "lease failed");
                        pause = Some(Box::pin(tokio::time::sleep(error_delay)));
                        error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Some(()) = OptionFuture::from(pause.as_mut()), if pause.is_some() => pause = None,
            p = shared.slots.acquire(), if waiting_for_slot => {
                if let Ok(p) = p {
                    p.forget();
                    held += 1;
                }
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}

/// Acks `batch`, retrying the acks that failed with a retryable error (not a
/// lost lease) with backoff for up to `budget`, so a transient queue fault
/// does not make finished tasks run again once their leases expire.
pub(super) async fn ack_with_retry(
    queue: &dyn TaskQueue,
    batch: &[Lease],
    budget: Duration,
    stats: &WorkerStats,
) -> Vec<Result<()>> {
    let mut results = queue.ack_batch(batch).await;
    results.truncate(batch.len());
    while results.len() < batch.len() {
        results.push(Err(Error::Backend {
            message: "ack_batch returned too few results".into(),
            source: None,
        }));
    }
    let give_up = Instant::now() + budget;
    let mut delay = Duration::from_millis(20);
    loop {
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.is_retryable() && e.kind() != ErrorKind::LeaseLost))
            .map(|(i, _)| i)
            .collect();
        if failed.is_empty() || Instant::now() + delay > give_up {
            return results;
        }
        tracing::debug!(failed = failed.len(), retry_in = ?delay, "ack failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        stats.add(&stats.ack_retries, 1);
        let retry: Vec<Lease> = failed.iter().map(|&i| batch[i].clone()).collect();
        let mut again = queue.ack_batch(&retry).await.into_iter();
        for &i in &failed {
            results[i] = again.next().unwrap_or_else(|| {
                Err(Error::Backend {
                    message: "ack_batch returned too few results".into(),
                    source: None,
                })
            });
        }
    }
}

/// Counts the results of one `ack_batch` call and frees the batch's slots.
pub(super) fn settle_acks<H>(shared: &Shared<H>, batch: &[Lease], results: &[Result<()>]) {
    let mut ok = 0u64;
    for (i, lease) in batch.iter().enumerate() {
        match results.get(i) {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => record_ack_error(shared, lease, e),
            None => record_ack_error(
                shared,
                lease,
                &Error::Backend {
                    message: "ack_batch returned too few results".into(),
                    source: None,
                },
            ),
        }
    }
    let n = batch.len();
    shared.stats.add(&shared.stats.completed, ok);
    shared.stats.in_flight.fetch_sub(n as u64, Ordering::AcqRel);
    if let Some(m) = &shared.metrics {
        m.record_outcomes(Outcome::Completed, ok);
        m.add_busy(-(n as i64));
    }
    shared.slots.add_permits(n);
    shared.stats.notify();
}

/// Frees the slot of a task whose nack (or abandonment) is done.
pub(super) fn release_slot<H>(shared: &Shared<H>) {
    shared.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    if let Some(m) = &shared.metrics {
        m.add_busy(-1);
    }
    shared.slots.add_permits(1);
    shared.stats.notify();
}

pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Polls the queue depth into the metrics every `interval`.
pub(super) async fn run_depth_sampler(queue: Arc<dyn TaskQueue>, metrics: Metrics, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match queue.depth().await {
            Ok(depth) => metrics.record_depth(queue.name(), &depth),
            Err(e) => {
                metrics.record_depth_error();
                tracing::warn!(queue = queue.name(), error = %e, "queue depth poll failed");
            }
        }
    }
}
