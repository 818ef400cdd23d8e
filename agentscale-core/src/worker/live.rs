//! Live concurrency: the worker's handler slots, with a target that can be
//! raised or lowered while the worker runs ([`ConcurrencyHandle`]).
//!
//! Slots are semaphore permits. Raising adds permits at once. Lowering
//! forgets the free permits at once and records the rest as a *debt*: the
//! next slots freed by finishing tasks pay it off instead of returning to the
//! semaphore. No running task is cancelled; the worker simply leases less
//! until it is down to the new target.
//!
//! Invariant: `available + held = target + debt`, and free permits exist
//! only while the debt is zero. So the drain's `acquire_many(target)`
//! succeeds exactly when every slot is back (no task holds one).

use std::fmt;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{AcquireError, Semaphore, SemaphorePermit, TryAcquireError};

use super::{Handler, Worker};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

#[derive(Debug)]
struct SlotState {
    target: usize,
    debt: usize,
    running: bool,
    frozen: bool,
}

/// Handler slots with a live target (see the module docs).
pub(super) struct Slots {
    sem: Semaphore,
    state: Mutex<SlotState>,
}

/// Largest concurrency a worker accepts.
pub(super) fn max_concurrency() -> usize {
    (Semaphore::MAX_PERMITS / 2).min(u32::MAX as usize)
}

impl Slots {
    pub(super) fn new(n: usize) -> Self {
        Slots {
            sem: Semaphore::new(n),
            state: Mutex::new(SlotState {
                target: n,
                debt: 0,
                running: false,
                frozen: false,
            }),
        }
    }

    pub(super) fn available_permits(&self) -> usize {
        self.sem.available_permits()
    }

    pub(super) fn try_acquire_many(
        &self,
        n: u32,
    ) -> std::result::Result<SemaphorePermit<'_>, TryAcquireError> {
        self.sem.try_acquire_many(n)
    }

    pub(super) async fn acquire(&self) -> std::result::Result<SemaphorePermit<'_>, AcquireError> {
        self.sem.acquire().await
    }

    pub(super) async fn acquire_many(
        &self,
        n: u32,
    ) -> std::result::Result<SemaphorePermit<'_>, AcquireError> {
        self.sem.acquire_many(n).await
    }

    /// Gives `n` slots back: they pay off a pending reduction first.
    pub(super) fn add_permits(&self, n: usize) {
        let mut s = self.state.lock();
        let pay = s.debt.min(n);
        s.debt -= pay;
        if n > pay {
            self.sem.add_permits(n - pay);
        }
    }

    /// The worker started: returns the current target (for the metrics).
    pub(super) fn start(&self) -> usize {
        let mut s = self.state.lock();
        s.running = true;
        s.target
    }

    /// Draining: no more changes; returns the target every slot adds up to.
    pub(super) fn freeze(&self) -> usize {
        let mut s = self.state.lock();
        s.frozen = true;
        s.target
    }

    fn target(&self) -> usize {
        self.state.lock().target
    }

    fn debt(&self) -> usize {
        self.state.lock().debt
    }

    /// Sets the target; returns (previous target, whether the worker runs).
    fn set(&self, n: usize) -> Result<(usize, bool)> {
        if n == 0 {
            return Err(Error::InvalidConfig(
                "worker concurrency must be at least 1".into(),
            ));
        }
        if n > max_concurrency() {
            return Err(Error::InvalidConfig(format!(
                "worker concurrency {n} is too large"
            )));
        }
        let mut s = self.state.lock();
        if s.frozen {
            return Err(Error::Closed(
                "the worker is draining; its concurrency can no longer change".into(),
            ));
        }
        let old = s.target;
        if n > old {
            let diff = n - old;
            let pay = s.debt.min(diff);
            s.debt -= pay;
            if diff > pay {
                self.sem.add_permits(diff - pay);
            }
        } else if n < old {
            let diff = old - n;
            let forgotten = self.sem.forget_permits(diff);
            s.debt += diff - forgotten;
        }
        s.target = n;
        Ok((old, s.running))
    }
}

/// Changes a worker's concurrency while it runs, for example when a mounted
/// ConfigMap changes (see [`crate::config::reload`]). Cheap to clone; get
/// one with [`Worker::concurrency_handle`].
///
/// Raising takes effect at once. Lowering takes free slots at once and the
/// others as running tasks finish: no task is cancelled, and until then the
/// worker runs more tasks than the new target
/// ([`pending_reduction`](Self::pending_reduction) tells how many).
#[derive(Clone)]
pub struct ConcurrencyHandle {
    slots: Arc<Slots>,
    metrics: Option<Metrics>,
    name: Arc<str>,
}

impl fmt::Debug for ConcurrencyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyHandle")
            .field("worker", &self.name)
            .field("concurrency", &self.get())
            .field("pending_reduction", &self.pending_reduction())
            .finish()
    }
}

impl ConcurrencyHandle {
    /// The current target concurrency.
    pub fn get(&self) -> usize {
        self.slots.target()
    }

    /// Slots still to be taken back from running tasks after a lowering.
    pub fn pending_reduction(&self) -> usize {
        self.slots.debt()
    }

    /// Sets the concurrency to `n` and returns the previous value.
    /// [`Error::InvalidConfig`] for 0 or a value above the builder's limit;
    /// [`Error::Closed`] once the worker drains (shutdown).
    pub fn set(&self, n: usize) -> Result<usize> {
        let (old, running) = self.slots.set(n)?;
        if old != n {
            if let (Some(m), true) = (&self.metrics, running) {
                m.slots_resized(n as i64 - old as i64);
            }
            tracing::info!(worker = %self.name, from = old, to = n, "worker concurrency changed");
        }
        Ok(old)
    }
}

impl<H: Handler> Worker<H> {
    /// A handle that changes this worker's concurrency while it runs.
    pub fn concurrency_handle(&self) -> ConcurrencyHandle {
        ConcurrencyHandle {
            slots: self.shared.slots.clone(),
            metrics: self.shared.metrics.clone(),
            name: Arc::from(self.shared.name.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowering_takes_free_slots_then_running_ones() {
        let s = Slots::new(4);
        let held = s.try_acquire_many(3).expect("3 free");
        held.forget();
        assert_eq!(s.set(2).expect("set").0, 4);
        // One free slot forgotten, one owed by the running tasks.
        assert_eq!((s.available_permits(), s.debt()), (0, 1));
        s.add_permits(1);
        assert_eq!((s.available_permits(), s.debt()), (0, 0));
        s.add_permits(2);
        assert_eq!(s.available_permits(), 2);
    }

    #[test]
    fn raising_pays_the_debt_first() {
        let s = Slots::new(4);
        s.try_acquire_many(4).expect("all").forget();
        s.set(1).expect("set");
        assert_eq!(s.debt(), 3);
        s.set(3).expect("set");
        assert_eq!((s.available_permits(), s.debt()), (0, 1));
        s.set(6).expect("set");
        assert_eq!((s.available_permits(), s.debt()), (2, 0));
        s.add_permits(4);
        assert_eq!(s.available_permits(), 6);
    }

    #[test]
    fn invalid_and_frozen_targets_are_refused() {
        let s = Slots::new(2);
        assert!(s.set(0).is_err());
        assert!(s.set(max_concurrency() + 1).is_err());
        assert_eq!(s.freeze(), 2);
        assert_eq!(s.set(3).map_err(|e| e.kind()), Err(crate::ErrorKind::Closed));
        assert_eq!(s.available_permits(), 2);
    }
}
