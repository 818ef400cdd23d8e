//! Limiters applied before a handler runs: a task over a limit is deferred
//! (handed back uncharged with [`Nack::Defer`]), not failed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::process::{process_in_span, settle};
use super::{Handler, Shared};
use crate::flow::limit::{Admission, Exceeded, Limiter, Permit};
use crate::metrics::LimitDecision;
use crate::queue::{Lease, Nack};
use crate::task::Task;

/// Which limit keys a task counts against (e.g. `tenant:acme`, `model:gpt`).
pub type LimitKeys = Arc<dyn Fn(&Task) -> Vec<String> + Send + Sync>;

/// One limiter and the keys a task counts against.
#[derive(Clone)]
pub(super) struct WorkerLimiter {
    pub(super) limiter: Arc<dyn Limiter>,
    pub(super) keys: LimitKeys,
}

impl fmt::Debug for WorkerLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerLimiter")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

/// How long a task is deferred when the limiter itself failed (a shared
/// limiter's service is down): the task is not run unlimited.
const LIMITER_DOWN_RETRY: Duration = Duration::from_secs(1);

/// Takes a permit for every key of every limiter, runs the lease, gives the
/// permits back. Over a limit: defers the task (with up to 20 % jitter, so
/// deferred tasks do not come back in one burst) and gives back the permits
/// already taken. A token already spent on an earlier key stays spent: a
/// limit is never exceeded, at worst under-used.
pub(super) async fn process_limited<H: Handler>(
    shared: &Shared<H>,
    limiters: &[WorkerLimiter],
    lease: Lease,
) -> Option<Lease> {
    let hold = shared.task_timeout + Duration::from_secs(30);
    let mut permits: Vec<(&Arc<dyn Limiter>, Permit)> = Vec::new();
    let mut defer = None;
    'outer: for l in limiters {
        for key in (l.keys)(lease.task()) {
            let admission = l.limiter.acquire(&key, hold).await;
            if let (Some(m), Ok(a)) = (&shared.metrics, &admission) {
                m.record_limit(&key, decision_of(a));
            }
            match admission {
                Ok(Admission::Granted(p)) => permits.push((&l.limiter, p)),
                Ok(Admission::Deferred { retry_in, exceeded }) => {
                    tracing::debug!(%key, ?exceeded, ?retry_in, "over its limit; deferring the task");
                    defer = Some(retry_in);
                    break 'outer;
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "limiter unavailable; deferring the task");
                    defer = Some(LIMITER_DOWN_RETRY);
                    break 'outer;
                }
            }
        }
    }
    let out = match defer {
        Some(d) => {
            let jitter = d.mul_f64((shared.rng.next_u64() % 1000) as f64 / 5000.0);
            release_all(permits).await;
            return settle(shared, &lease, Nack::Defer(d + jitter)).await;
        }
        None => process_in_span(shared, lease, None).await,
    };
    release_all(permits).await;
    out
}

fn decision_of(a: &Admission) -> LimitDecision {
    match a {
        Admission::Granted(_) => LimitDecision::Granted,
        Admission::Deferred {
            exceeded: Exceeded::Rate,
            ..
        } => LimitDecision::DeferredRate,
        Admission::Deferred {
            exceeded: Exceeded::InFlight,
            ..
        } => LimitDecision::DeferredInFlight,
    }
}

async fn release_all(permits: Vec<(&Arc<dyn Limiter>, Permit)>) {
    for (l, p) in permits {
        if p.id().is_some() {
            if let Err(e) = l.release(&p).await {
                tracing::warn!(key = %p.key(), error = %e, "could not release an in-flight slot; it frees when its hold ends");
            }
        }
    }
}
