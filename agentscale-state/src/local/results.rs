//! In-process [`ResultStore`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::results::{DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_RESULT_TTL};
use agentscale_core::task::now_ms;
use agentscale_core::{Error, Recorded, Result, ResultStore, TaskId, TaskOutcome, TaskResult};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Default most results kept at once (the oldest go first beyond it).
pub const DEFAULT_MAX_RESULTS: usize = 100_000;

/// Task results in this process: first result wins, TTL, size limit, a cap on
/// entries, and waiters woken by a per-task notification (no polling).
#[derive(Debug)]
pub struct LocalResultStore {
    inner: Mutex<Inner>,
    ttl: Duration,
    max_output_bytes: usize,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Inner {
    results: HashMap<TaskId, (TaskResult, Instant)>,
    /// Insertion order = expiry order (one TTL for all).
    order: VecDeque<(Instant, TaskId)>,
    waiters: HashMap<TaskId, Arc<Notify>>,
}

impl Inner {
    fn purge(&mut self, now: Instant, max_entries: usize) {
        while let Some((at, id)) = self.order.front() {
            if *at > now && self.results.len() < max_entries {
                break;
            }
            let (at, id) = (*at, id.clone());
            self.order.pop_front();
            if self.results.get(&id).is_some_and(|(_, exp)| *exp == at) {
                self.results.remove(&id);
            }
        }
    }

    fn get(&self, id: &TaskId, now: Instant) -> Option<TaskResult> {
        self.results
            .get(id)
            .filter(|(_, exp)| *exp > now)
            .map(|(r, _)| r.clone())
    }
}

/// Builds a [`LocalResultStore`].
#[derive(Debug, Clone)]
pub struct LocalResultStoreBuilder {
    ttl: Duration,
    max_output_bytes: usize,
    max_entries: usize,
}

impl LocalResultStoreBuilder {
    /// How long a result is kept (default 24 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Largest output accepted (default 1 MiB).
    pub fn max_output_bytes(mut self, n: usize) -> Self {
        self.max_output_bytes = n;
        self
    }

    /// Most results kept; beyond it the oldest are dropped (default 100 000).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// [`Error::InvalidConfig`] for a zero TTL, size limit or capacity.
    pub fn build(self) -> Result<LocalResultStore> {
        if self.ttl.is_zero() || self.max_output_bytes == 0 || self.max_entries == 0 {
            return Err(Error::InvalidConfig(
                "result store ttl, max_output_bytes and max_entries must be greater than zero".into(),
            ));
        }
        Ok(LocalResultStore {
            inner: Mutex::new(Inner::default()),
            ttl: self.ttl,
            max_output_bytes: self.max_output_bytes,
            max_entries: self.max_entries,
        })
    }
}

impl LocalResultStore {
    /// Starts configuring a store.
    pub fn builder() -> LocalResultStoreBuilder {
        LocalResultStoreBuilder {
            ttl: DEFAULT_RESULT_TTL,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_entries: DEFAULT_MAX_RESULTS,
        }
    }
}

#[async_trait]
impl ResultStore for LocalResultStore {
    fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    async fn record(&self, id: &TaskId, outcome: TaskOutcome) -> Result<Recorded> {
        outcome.check_size(self.max_output_bytes)?;
        let now = Instant::now();
        let waiters = {
            let mut inner = self.inner.lock();
            inner.purge(now, self.max_entries);
            if let Some((r, exp)) = inner.results.get_mut(id) {
                if *exp > now {
                    r.duplicates += 1;
                    return Ok(Recorded::Duplicate);
                }
            }
            let exp = now + self.ttl;
            let result = TaskResult {
                id: id.clone(),
                outcome,
                recorded_at_ms: now_ms(),
                duplicates: 0,
            };
            inner.results.insert(id.clone(), (result, exp));
            inner.order.push_back((exp, id.clone()));
            inner.waiters.remove(id)
        };
        if let Some(w) = waiters {
            w.notify_waiters();
        }
        Ok(Recorded::First)
    }

    async fn get(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        Ok(self.inner.lock().get(id, Instant::now()))
    }

    async fn wait(&self, id: &TaskId, timeout: Duration) -> Result<Option<TaskResult>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notify = {
                let mut inner = self.inner.lock();
                if let Some(r) = inner.get(id, Instant::now()) {
                    return Ok(Some(r));
                }
                inner.waiters.entry(id.clone()).or_default().clone()
            };
            // A record between the check above and `enable` is caught by
            // the re-check below (results are stored before waiters are
            // notified), so no wake-up is lost.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.inner.lock().get(id, Instant::now()) {
                return Ok(Some(r));
            }
            let woke = tokio::time::timeout_at(deadline, notified).await.is_ok();
            if !woke {
                let mut inner = self.inner.lock();
                if Arc::strong_count(&notify) <= 2 {
                    inner.waiters.remove(id);
                }
                return Ok(inner.get(id, Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentscale_core::Output;

    #[tokio::test]
    async fn first_wins_and_waiters_wake() {
        let s = Arc::new(
            LocalResultStore::builder()
                .max_output_bytes(8)
                .build()
                .expect("build"),
        );
        let id = TaskId::new("t1");
        let w = {
            let (s, id) = (s.clone(), id.clone());
            tokio::spawn(async move { s.wait(&id, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        let first = TaskOutcome::Completed(Output::bytes("a"));
        assert_eq!(
            s.record(&id, first.clone()).await.expect("record"),
            Recorded::First
        );
        assert_eq!(
            s.record(&id, TaskOutcome::Completed(Output::bytes("b")))
                .await
                .expect("record"),
            Recorded::Duplicate
        );
        let got = w.await.expect("join").expect("wait").expect("some");
        assert_eq!(got.outcome, first);
        assert_eq!(s.get(&id).await.expect("get").expect("some").duplicates, 1);
        let too_big = s
            .record(
                &TaskId::new("t2"),
                TaskOutcome::Completed(Output::bytes("123456789")),
            )
            .await;
        assert_eq!(
            too_big.map_err(|e| e.kind()),
            Err(agentscale_core::ErrorKind::Codec)
        );
        assert_eq!(
            s.wait(&TaskId::new("t3"), Duration::from_millis(20))
                .await
                .expect("wait"),
            None
        );
    }
}
