//! [`Scheduler`]: fires due ticks of the schedules in a store into a queue.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{ScheduleStore, HEADER_TICK};
use crate::error::{Error, Result};
use crate::queue::TaskQueue;
use crate::task::now_ms;

/// Most ticks of one schedule fired in one poll.
const MAX_TICKS_PER_POLL: usize = 64;

/// What a scheduler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchedulerReport {
    /// Polls of the store.
    pub polls: u64,
    /// Ticks this scheduler fired (enqueued and marked).
    pub fired: u64,
    /// Enqueues that reported a duplicate (the tick had been enqueued by a
    /// scheduler that died before marking it).
    pub duplicates: u64,
    /// Store or queue errors (the tick is tried again after its claim expires).
    pub errors: u64,
}

/// Polls a [`ScheduleStore`] and enqueues each due tick once. Run one per
/// replica; they share the work through the store's claims.
pub struct Scheduler {
    store: Arc<dyn ScheduleStore>,
    queue: Arc<dyn TaskQueue>,
    owner: String,
    poll_interval: Duration,
    claim_ttl: Duration,
    catch_up_window: Duration,
}

impl fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scheduler")
            .field("store", &self.store)
            .field("queue", &self.queue.name())
            .field("owner", &self.owner)
            .field("poll_interval", &self.poll_interval)
            .field("claim_ttl", &self.claim_ttl)
            .field("catch_up_window", &self.catch_up_window)
            .finish()
    }
}

/// Builds a [`Scheduler`]; validates at [`build`](Self::build).
#[derive(Debug)]
pub struct SchedulerBuilder {
    store: Arc<dyn ScheduleStore>,
    queue: Arc<dyn TaskQueue>,
    owner: Option<String>,
    poll_interval: Duration,
    claim_ttl: Duration,
    catch_up_window: Duration,
}

impl SchedulerBuilder {
    /// This scheduler's name in claims (default: random).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
    /// How often the store is polled (default 1 s): a tick fires at most
    /// this late while schedulers are up.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// How long a claim keeps other schedulers off a tick (default 10 s):
    /// the delay before a dead scheduler's tick is fired by another.
    pub fn claim_ttl(mut self, d: Duration) -> Self {
        self.claim_ttl = d;
        self
    }
    /// How far back missed ticks are still fired one by one (default 5 min);
    /// older missed ticks collapse into one catch-up.
    pub fn catch_up_window(mut self, d: Duration) -> Self {
        self.catch_up_window = d;
        self
    }
    /// Validates: non-zero intervals, and a catch-up window longer than
    /// `claim_ttl + poll_interval` (or a dead scheduler's tick could fall out
    /// of it before its claim expires). [`Error::InvalidConfig`].
    pub fn build(self) -> Result<Scheduler> {
        let bad = |m: &str| Err(Error::InvalidConfig(format!("scheduler: {m}")));
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be above zero");
        }
        if self.claim_ttl.is_zero() {
            return bad("claim_ttl must be above zero");
        }
        if self.catch_up_window <= self.claim_ttl + self.poll_interval {
            return bad("catch_up_window must exceed claim_ttl + poll_interval");
        }
        Ok(Scheduler {
            store: self.store,
            queue: self.queue,
            owner: self
                .owner
                .unwrap_or_else(|| format!("scheduler-{:016x}", rand::random::<u64>())),
            poll_interval: self.poll_interval,
            claim_ttl: self.claim_ttl,
            catch_up_window: self.catch_up_window,
        })
    }
}

impl Scheduler {
    /// A builder over `store`, enqueueing into `queue`.
    pub fn builder(store: Arc<dyn ScheduleStore>, queue: Arc<dyn TaskQueue>) -> SchedulerBuilder {
        SchedulerBuilder {
            store,
            queue,
            owner: None,
            poll_interval: Duration::from_secs(1),
            claim_ttl: Duration::from_secs(10),
            catch_up_window: Duration::from_secs(300),
        }
    }

    /// Fires every due tick once, as of `now_ms`; returns the (schedule,
    /// tick) pairs this scheduler fired. Errors of one schedule are logged
    /// and counted; the others still fire.
    pub async fn poll_at(&self, now_ms: u64, report: &mut SchedulerReport) -> Result<Vec<(String, u64)>> {
        report.polls += 1;
        let window_ms = self.catch_up_window.as_millis() as u64;
        let retain = self.catch_up_window + self.claim_ttl + Duration::from_secs(60);
        let mut fired = Vec::new();
        for st in self.store.list().await? {
            if st.paused {
                continue;
            }
            let s = &st.schedule;
            let since = now_ms.saturating_sub(window_ms);
            let mut due = s.ticks_between(since, now_ms, MAX_TICKS_PER_POLL)?;
            // Downtime: of the ticks before the window, the latest fires
            // once, if nothing at or after it has fired.
            if let Some(older) = s.latest_tick(since)? {
                if st.last_fired_ms.is_none_or(|l| older > l) {
                    due.insert(0, older);
                }
            }
            if due.is_empty() {
                continue;
            }
            let claimed = match self.store.claim(&s.name, &due, &self.owner, self.claim_ttl).await {
                Ok(c) => c,
                Err(e) => {
                    report.errors += 1;
                    tracing::warn!(schedule = %s.name, error = %e, "could not claim ticks");
                    continue;
                }
            };
            for tick in claimed {
                let task = s.task_for(tick);
                match self.queue.enqueue(task).await {
                    Ok(e) => {
                        if e.duplicate {
                            report.duplicates += 1;
                        }
                        if let Err(err) = self.store.mark_fired(&s.name, tick, retain).await {
                            report.errors += 1;
                            tracing::warn!(schedule = %s.name, tick, error = %err, "could not mark a tick fired; its claim expires and the idempotency key stops a second copy");
                        }
                        report.fired += 1;
                        tracing::debug!(schedule = %s.name, tick, task.id = %e.id, "schedule fired");
                        fired.push((s.name.clone(), tick));
                    }
                    Err(err) => {
                        report.errors += 1;
                        tracing::warn!(schedule = %s.name, tick, error = %err, "enqueue failed; the tick is retried after its claim expires");
                    }
                }
            }
        }
        Ok(fired)
    }

    /// Polls every `poll_interval` until `shutdown` resolves.
    pub async fn run_until<F>(self, shutdown: F) -> SchedulerReport
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let mut report = SchedulerReport::default();
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.poll_at(now_ms(), &mut report).await {
                report.errors += 1;
                tracing::warn!(error = %e, "schedule store unavailable; polling again");
            }
            tokio::select! {
                _ = &mut shutdown => return report,
                _ = tokio::time::sleep(self.poll_interval) => {}
            }
        }
    }
}

/// The tick of a task a scheduler enqueued, from its header.
pub fn tick_of(task: &crate::Task) -> Option<u64> {
    task.headers.get(HEADER_TICK).and_then(|t| t.parse().ok())
}
