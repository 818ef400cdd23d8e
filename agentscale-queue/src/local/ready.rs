//! Ready tasks: how the state's ready lists hold them ([`Queued`]), and the
//! new tasks behind their own lock ([`Fresh`]), each as the producer handed
//! it over until a worker leases it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use agentscale_core::task::Task;
use parking_lot::Mutex;

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

/// New tasks, per priority, in the order they were enqueued: each batch of
/// `enqueue_batch` as one chunk (the caller's `Vec`, not copied), behind a
/// lock of their own.
///
/// The producer takes only this lock, and holds it to push one chunk; a
/// leaser holds it to take one chunk out and to put back what it did not
/// lease. So a producer and a worker running at once on two threads rarely
/// wait for each other, and neither waits behind the other's per-task work
/// (before, one lock guarded everything and a producer copying a batch in
/// and a worker recording its leases took turns).
///
/// Lock order: the queue's state lock, then this one; never the other way.
#[derive(Default)]
pub(super) struct Fresh {
    lists: Mutex<FreshLists>,
}

#[derive(Default)]
struct FreshLists {
    chunks: [VecDeque<Chunk>; 3],
    /// Tasks in `chunks` (not counting a chunk a leaser has taken out).
    len: usize,
}

/// Tasks that became ready at the same instant, oldest first.
pub(super) struct Chunk {
    pub(super) tasks: VecDeque<Task>,
    pub(super) since: Instant,
}

impl Fresh {
    /// Appends a chunk (a no-op when it is empty).
    pub(super) fn push(&self, idx: usize, chunk: Chunk) {
        self.insert(idx, chunk, false);
    }

    fn insert(&self, idx: usize, chunk: Chunk, front: bool) {
        if chunk.tasks.is_empty() {
            return;
        }
        let mut l = self.lists.lock();
        l.len += chunk.tasks.len();
        if front {
            l.chunks[idx].push_front(chunk);
        } else {
            l.chunks[idx].push_back(chunk);
        }
    }

    /// Appends one task that became ready at `since`: to the last chunk
    /// when that one became ready at the same instant, else as a new chunk.
    pub(super) fn push_one(&self, idx: usize, task: Task, since: Instant) {
        let mut l = self.lists.lock();
        l.len += 1;
        match l.chunks[idx].back_mut() {
            Some(last) if last.since == since => last.tasks.push_back(task),
            _ => {
                let mut tasks = VecDeque::with_capacity(1);
                tasks.push_back(task);
                l.chunks[idx].push_back(Chunk { tasks, since });
            }
        }
    }

    /// Takes the oldest chunk of priority `idx` out.
    pub(super) fn take_front(&self, idx: usize) -> Option<Chunk> {
        let mut l = self.lists.lock();
        let chunk = l.chunks[idx].pop_front()?;
        l.len -= chunk.tasks.len();
        Some(chunk)
    }

    /// Puts back what is left of a chunk taken with [`Fresh::take_front`],
    /// in front, so its tasks keep their place.
    pub(super) fn put_front(&self, idx: usize, chunk: Chunk) {
        self.insert(idx, chunk, true);
    }

    /// Tasks waiting here.
    pub(super) fn len(&self) -> usize {
        self.lists.lock().len
    }

    /// When the oldest task waiting here became ready.
    pub(super) fn oldest(&self) -> Option<Instant> {
        let l = self.lists.lock();
        l.chunks.iter().filter_map(|c| c.front().map(|c| c.since)).min()
    }
}
