//! What the ready lists hold: each task as the producer handed it over
//! until a worker leases it.

use std::sync::Arc;
use std::time::Instant;

use agentscale_core::task::Task;

/// A ready task and when it became ready (for `oldest_ready_age`).
pub(super) struct Ready {
    pub(super) task: Queued,
    pub(super) since: Instant,
}

/// A ready task as the queue holds it: owned, as the producer handed it over,
/// or shared with an earlier lease (a redelivery or a promoted delay).
///
/// A new task stays owned until it is leased, so an enqueue allocates
/// nothing per task: the `Arc` is made at lease time, on the worker's thread
/// (in steady state an acked task's allocation is reused, see
/// `State::recycle`). (An `Arc` made by the producer and freed
/// by the worker crosses threads, which the allocator pays for: it was a
/// quarter of the worker threads' CPU in `bench_queue --backend memory`.)
#[allow(
    clippy::large_enum_variant,
    reason = "the owned task is kept inline on purpose: boxing it is the allocation per enqueue this avoids"
)]
pub(super) enum Queued {
    Owned(Task),
    Shared(Arc<Task>),
}

impl Queued {
    pub(super) fn task(&self) -> &Task {
        match self {
            Queued::Owned(t) => t,
            Queued::Shared(t) => t,
        }
    }

    pub(super) fn into_shared(self) -> Arc<Task> {
        match self {
            Queued::Owned(t) => Arc::new(t),
            Queued::Shared(t) => t,
        }
    }
}
