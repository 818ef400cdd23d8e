//! Live counters of a worker and the report it returns.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// What a worker did, returned by [`Worker::run_until`](super::Worker::run_until)
/// and readable live through [`WorkerStats::snapshot`].
///
/// Counters are per attempt: a task that failed twice and then succeeded
/// counts `retried = 2, completed = 1`. `panicked` and `timed_out` count
/// failed attempts by cause, each of which is also counted as `retried` or
/// `dead_lettered`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerReport {
    /// Leases received from the queue.
    pub leased: u64,
    /// Tasks whose handler succeeded and whose ack went through.
    pub completed: u64,
    /// Failed attempts nacked for a later retry.
    pub retried: u64,
    /// Tasks moved to the dead-letter store (failed for good, non-retryable,
    /// expired deadline, too many deliveries).
    pub dead_lettered: u64,
    /// Tasks handed back uncharged at shutdown.
    pub released: u64,
    /// Leases found lost (ack, nack or heartbeat refused); the queue delivers
    /// those tasks again.
    pub lease_lost: u64,
    /// Attempts whose handler panicked.
    pub panicked: u64,
    /// Attempts that hit the task timeout.
    pub timed_out: u64,
    /// Acks, nacks or lease calls that failed for another reason than a lost
    /// lease (the task stays leased and is redelivered after the lease expires).
    pub queue_errors: u64,
    /// Tasks in a handler slot right now (0 in the final report).
    pub in_flight: u64,
    /// `ack_batch` calls repeated after a retryable failure.
    pub ack_retries: u64,
    /// Tasks a rate limit or concurrency cap deferred (handed back
    /// uncharged, to run later).
    pub deferred: u64,
}

impl WorkerReport {
    /// Tasks that reached a final state here: completed plus dead-lettered.
    pub fn finished(&self) -> u64 {
        self.completed + self.dead_lettered
    }
}

/// Live, lock-free counters of one worker. Get a handle with
/// [`Worker::stats`](super::Worker::stats) before running the worker; read
/// it from anywhere (a progress bar, a test) while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub(crate) leased: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) queue_errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) ack_retries: AtomicU64,
    pub(crate) deferred: AtomicU64,
    changed: Notify,
}

impl WorkerStats {
    /// The counters now.
    pub fn snapshot(&self) -> WorkerReport {
        let r = |a: &AtomicU64| a.load(Ordering::Acquire);
        WorkerReport {
            leased: r(&self.leased),
            completed: r(&self.completed),
            retried: r(&self.retried),
            dead_lettered: r(&self.dead_lettered),
            released: r(&self.released),
            lease_lost: r(&self.lease_lost),
            panicked: r(&self.panicked),
            timed_out: r(&self.timed_out),
            queue_errors: r(&self.queue_errors),
            in_flight: r(&self.in_flight),
            ack_retries: r(&self.ack_retries),
            deferred: r(&self.deferred),
        }
    }

    /// Waits until `condition` holds for the counters (checked after every
    /// change), and returns the snapshot that satisfied it. Useful to stop a
    /// worker once a known number of tasks finished.
    pub async fn wait_until(&self, mut condition: impl FnMut(&WorkerReport) -> bool) -> WorkerReport {
        loop {
            // Created before the check, so a change between check and await
            // is not missed (`notify_waiters` reaches unpolled futures).
            let changed = self.changed.notified();
            let snap = self.snapshot();
            if condition(&snap) {
                return snap;
            }
            changed.await;
        }
    }

    pub(crate) fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }
}
