//! The task-queue conformance suite: one behaviour suite that every
//! [`TaskQueue`] backend runs with one line and its own `setup`.
//!
//! # Running it for a backend
//!
//! ```text
//! // tests/tests/memory_queue.rs
//! use agentscale_queue::LocalQueue;
//! use agentscale_tests::queue_suite::{QueueFixture, QueueOptions};
//!
//! async fn setup(opts: QueueOptions) -> QueueFixture {
//!     let queue = LocalQueue::builder(opts.name)
//!         .lease_timeout(opts.lease_timeout)
//!         .max_envelope_bytes(opts.max_envelope_bytes)
//!         .build()
//!         .expect("valid config");
//!     QueueFixture::new(queue)
//! }
//!
//! agentscale_tests::queue_conformance!(setup);
//! ```
//!
//! A backend that needs a service returns `Option<QueueFixture>` and `None`
//! when the service is not configured (use [`crate::service_env`], which
//! panics under `CI=true`); a backend with a wire format adds a raw-entry
//! injector ([`QueueFixture::with_raw_injector`]) so the suite can plant
//! malformed entries, and a cleanup ([`QueueFixture::with_cleanup`]) that
//! deletes the keys/topics of its namespace.
//!
//! # What the suite guarantees
//!
//! Every check runs in its own fresh queue name (`opts.name`, random) with a
//! short lease timeout (500 ms by default, long enough for a network round
//! trip), and cleans up even when it fails. Counts are exact: a backend passes
//! only if it
//!
//! * delivers every enqueued task, with its envelope intact, and nothing extra
//!   (`delivery_at_least_once`);
//! * removes a task on `ack` and never delivers it again, while an un-acked
//!   task is delivered again after the lease timeout (`ack_removes`);
//! * redelivers `Nack::Retry(d)` not before `d`, with the attempt charged
//!   (`nack_retry_redelivers_after_delay`), and `Nack::Release` without
//!   charging (`release_does_not_charge`);
//! * redelivers an expired lease, not before the lease timeout, with attempt + 1
//!   and a new fence (`expired_lease_redelivered`);
//! * refuses `ack`/`nack`/`extend` through a lost lease with `LeaseLost` and
//!   changes nothing, and refuses a second ack (`stale_lease_refused`);
//! * keeps a lease alive past its timeout while it is extended
//!   (`extend_keeps_lease`);
//! * counts attempts across retries so a worker can dead-letter after
//!   `max_attempts` (`attempts_accumulate_to_dead_letter`), keeps the reason
//!   of a dead letter, lists it and counts it in `depth().dead`
//!   (`dead_letter_keeps_reason`), and replays it with attempts reset
//!   (`replay_dead_letter`);
//! * keeps `depth()` exact through the lifecycle: ready, in-flight, delayed,
//!   dead (`depth_accounting`);
//! * delays `not_before` tasks and wakes a waiting leaser when they are due
//!   (`not_before_delays_delivery`), and wakes a waiting leaser on enqueue
//!   (`lease_wakes_on_enqueue`);
//! * delivers High before Normal before Low (`priorities`);
//! * stores a task once per idempotency key (`idempotent_enqueue`);
//! * reports per-item results from `enqueue_batch` (`enqueue_batch_results`);
//! * refuses an oversize envelope (one byte over the limit; exactly at the
//!   limit is accepted) and an invalid task with `InvalidInput`
//!   (`oversize_envelope_refused`, `invalid_task_refused`);
//! * dead-letters malformed raw entries (garbage, bad magic, unknown version)
//!   with a reason and still delivers the valid tasks behind them
//!   (`malformed_entries_dead_lettered`);
//! * never returns more than `max` from `lease(max, _)` (`lease_respects_max`);
//! * never lets two concurrent leasers complete the same task: every task is
//!   acked successfully exactly once (`concurrent_leasers_exclusive`).
//!
//! Checks consult [`Capabilities`] and skip,
//! with a line on stderr, only what the backend declares it cannot do
//! (lease extension, delayed retry, priorities, idempotent enqueue, fencing,
//! wire format, dead-letter replay). No check asserts on speed; time-based
//! checks assert lower bounds (not before the delay) with 100 ms of clock
//! tolerance and wait generously for upper bounds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::{Capabilities, Depth, ErrorKind, Lease, Nack, Priority, Task, TaskId, TaskQueue};
use futures::future::BoxFuture;
use futures::FutureExt;

/// Plants raw bytes as an entry of the queue under test, bypassing
/// `enqueue` (for backends with a wire format).
pub type RawInjector = Box<dyn Fn(Vec<u8>) -> BoxFuture<'static, ()> + Send + Sync>;

/// Deletes what a check left behind (keys, streams, topics).
pub type Cleanup = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send + Sync>;

/// What the suite asks of `setup` for one check.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueOptions {
    /// A fresh random queue name (`asq-<check>-<uuid>`); use it as the queue
    /// name, key prefix or topic so checks never see each other's tasks.
    pub name: String,
    /// The lease timeout to configure (500 ms).
    pub lease_timeout: Duration,
    /// The envelope limit to configure (64 KiB).
    pub max_envelope_bytes: usize,
}

/// What `setup` returns: the queue under test and its optional hooks.
pub struct QueueFixture {
    /// The queue under test.
    pub queue: Arc<dyn TaskQueue>,
    /// Plants raw entries; required when `capabilities().wire_format`.
    pub inject_raw: Option<RawInjector>,
    /// Runs after the check, pass or fail.
    pub cleanup: Option<Cleanup>,
}

impl std::fmt::Debug for QueueFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueFixture")
            .field("queue", &self.queue)
            .field("inject_raw", &self.inject_raw.is_some())
            .field("cleanup", &self.cleanup.is_some())
            .finish()
    }
}

impl QueueFixture {
    /// A fixture for `queue`, without hooks.
    pub fn new(queue: impl TaskQueue + 'static) -> Self {
        QueueFixture::from_arc(Arc::new(queue))
    }

    /// A fixture for a shared queue.
    pub fn from_arc(queue: Arc<dyn TaskQueue>) -> Self {
        QueueFixture {
            queue,
            inject_raw: None,
            cleanup: None,
        }
    }

    /// Adds a raw-entry injector: `f(bytes)` must append `bytes` to the
    /// queue as one entry, exactly as a foreign producer would.
    pub fn with_raw_injector<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inject_raw = Some(Box::new(move |b| f(b).boxed()));
        self
    }

    /// Adds a cleanup that runs after the check, pass or fail.
    pub fn with_cleanup<F, Fut>(mut self, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || f().boxed()));
        self
    }
}

/// What a `setup` function may return: a fixture, or `Option<QueueFixture>`
/// where `None` skips the check (service not configured).
pub trait IntoQueueFixture {
    /// The fixture, or `None` to skip.
    fn into_fixture(self) -> Option<QueueFixture>;
}

impl IntoQueueFixture for QueueFixture {
    fn into_fixture(self) -> Option<QueueFixture> {
        Some(self)
    }
}

impl IntoQueueFixture for Option<QueueFixture> {
    fn into_fixture(self) -> Option<QueueFixture> {
        self
    }
}

/// Lease timeout the suite asks for.
pub const SUITE_LEASE_TIMEOUT: Duration = Duration::from_millis(500);
/// Envelope limit the suite asks for.
pub const SUITE_MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// A check that runs longer than this fails (a hang is a failure, not a stall).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(90);
/// Clock tolerance for "not before" assertions (backends may use a server clock).
const TOLERANCE: Duration = Duration::from_millis(100);

/// Runs one check against a fresh fixture from `setup`; used by
/// [`queue_conformance!`](crate::queue_conformance). Cleanup runs whether
/// the check passes, panics or times out.
pub async fn run<S, Fut, C>(check_name: &str, setup: S, check: C)
where
    S: FnOnce(QueueOptions) -> Fut,
    Fut: Future,
    Fut::Output: IntoQueueFixture,
    C: for<'a> FnOnce(&'a QueueFixture) -> BoxFuture<'a, ()>,
{
    let opts = QueueOptions {
        name: crate::unique_name(&format!("asq-{}", check_name.replace('_', "-"))),
        lease_timeout: SUITE_LEASE_TIMEOUT,
        max_envelope_bytes: SUITE_MAX_ENVELOPE_BYTES,
    };
    let Some(mut fx) = setup(opts).await.into_fixture() else {
        eprintln!("skipping {check_name}: backend not configured");
        return;
    };
    let outcome = tokio::time::timeout(
        CHECK_TIMEOUT,
        std::panic::AssertUnwindSafe(check(&fx)).catch_unwind(),
    )
    .await;
    if let Some(cleanup) = fx.cleanup.take() {
        cleanup().await;
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{check_name}: did not finish within {CHECK_TIMEOUT:?}"),
    }
}

/// Runs the whole queue conformance suite against a backend: one
/// `#[tokio::test(flavor = "multi_thread")]` per check, in a module named
/// `queue_conformance` (or the name given), so failures are named
/// `queue_conformance::ack_removes` and so on.
///
/// `setup` is an `async fn(QueueOptions) -> QueueFixture` (or
/// `-> Option<QueueFixture>`, `None` skipping when the service is not
/// configured) in scope where the macro is invoked.
///
/// ```text
/// use agentscale_tests::queue_suite::{QueueFixture, QueueOptions};
///
/// async fn setup(opts: QueueOptions) -> Option<QueueFixture> {
///     let url = agentscale_tests::service_env("AGENTSCALE_REDIS_URL")?;
///     let queue = my_backend::Queue::connect(&url, &opts.name, opts.lease_timeout).await.ok()?;
///     let raw = queue.clone();
///     let gone = queue.clone();
///     Some(
///         QueueFixture::new(queue)
///             .with_raw_injector(move |bytes| { let q = raw.clone(); async move { q.push_raw(bytes).await } })
///             .with_cleanup(move || async move { gone.destroy().await }),
///     )
/// }
///
/// agentscale_tests::queue_conformance!(setup);
/// // or, to run it twice in one file with different setups:
/// agentscale_tests::queue_conformance!(setup_cluster, cluster_conformance);
/// ```
///
/// See the [module docs](crate::queue_suite) for what the checks guarantee.
#[macro_export]
macro_rules! queue_conformance {
    ($setup:path) => {
        $crate::queue_conformance!($setup, queue_conformance);
    };
    ($setup:path, $module:ident) => {
        $crate::__queue_conformance_tests!(
            $setup,
            $module;
            delivery_at_least_once,
            ack_removes,
            nack_retry_redelivers_after_delay,
            release_does_not_charge,
            expired_lease_redelivered,
            stale_lease_refused,
            extend_keeps_lease,
            attempts_accumulate_to_dead_letter,
            dead_letter_keeps_reason,
            replay_dead_letter,
            depth_accounting,
            not_before_delays_delivery,
            lease_wakes_on_enqueue,
            priorities,
            idempotent_enqueue,
            enqueue_batch_results,
            oversize_envelope_refused,
            invalid_task_refused,
            malformed_entries_dead_lettered,
            lease_respects_max,
            concurrent_leasers_exclusive
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __queue_conformance_tests {
    ($setup:path, $module:ident; $($check:ident),+ $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    $crate::queue_suite::run(stringify!($check), $setup, |fx| {
                        ::std::boxed::Box::pin($crate::queue_suite::checks::$check(fx))
                    })
                    .await;
                }
            )+
        }
    };
}

// ---------------------------------------------------------------------------
// Helpers

fn caps(fx: &QueueFixture) -> Capabilities {
    fx.queue.capabilities()
}

/// A generous wait for something that must happen after a lease timeout.
fn long_wait(c: &Capabilities) -> Duration {
    c.lease_timeout * 6 + Duration::from_secs(5)
}

fn skip(check: &str, why: &str) {
    eprintln!("skipping {check}: backend declares {why}");
}

fn task(i: usize) -> Task {
    Task::new("conformance", format!("payload-{i}"))
}

async fn enqueue_all(q: &dyn TaskQueue, tasks: &[Task]) {
    for t in tasks {
        let e = q.enqueue(t.clone()).await.expect("enqueue");
        assert_eq!(e.id, t.id, "enqueue reported another id");
        assert!(!e.duplicate, "fresh task reported as duplicate");
    }
}

/// Leases until exactly `n` leases were received (in calls of at most `max`),
/// failing after `within`. Asserts every call returns at most `max`.
async fn lease_exactly(q: &dyn TaskQueue, n: usize, max: usize, within: Duration) -> Vec<Lease> {
    let give_up = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let now = Instant::now();
        assert!(
            now < give_up,
            "received {} of {n} tasks within {within:?}",
            out.len()
        );
        let ask = max.min(n - out.len());
        let got = q
            .lease(ask, (give_up - now).min(Duration::from_secs(1)))
            .await
            .expect("lease");
        assert!(got.len() <= ask, "lease({ask}) returned {}", got.len());
        out.extend(got);
    }
    out
}

async fn lease_one(q: &dyn TaskQueue, within: Duration) -> Lease {
    lease_exactly(q, 1, 1, within).await.remove(0)
}

/// Asserts that nothing is delivered for `d` (a lease that waits `d`).
async fn assert_nothing_for(q: &dyn TaskQueue, d: Duration, what: &str) {
    let got = q.lease(16, d).await.expect("lease");
    let ids: Vec<&TaskId> = got.iter().map(|l| &l.task().id).collect();
    assert!(
        got.is_empty(),
        "{what}: expected no delivery within {d:?}, got {ids:?}"
    );
}

#[track_caller]
fn assert_depth(d: Depth, ready: u64, in_flight: u64, delayed: u64, dead: u64) {
    let got = (d.ready, d.in_flight, d.delayed, d.dead);
    assert_eq!(
        got,
        (ready, in_flight, delayed, dead),
        "depth (ready, in_flight, delayed, dead): {d:?}"
    );
}

#[track_caller]
fn assert_lease_lost<T: std::fmt::Debug>(r: agentscale_core::Result<T>, what: &str) {
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::LeaseLost,
            "{what}: expected LeaseLost, got {e}"
        ),
        Ok(v) => panic!("{what}: expected LeaseLost, got Ok({v:?})"),
    }
}

#[track_caller]
fn assert_invalid_input<T: std::fmt::Debug>(r: agentscale_core::Result<T>, what: &str) {
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "{what}: expected InvalidInput, got {e}"
        ),
        Ok(v) => panic!("{what}: expected InvalidInput, got Ok({v:?})"),
    }
}

/// The checks, one per test. Each takes the fixture of a fresh queue.
pub mod checks {
    use super::*;

    /// Enqueue N, lease all: ids match exactly, envelopes intact, nothing
    /// extra, nothing redelivered after ack.
    pub async fn delivery_at_least_once(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        const N: usize = 25;
        let mut tasks: Vec<Task> = (0..N).map(task).collect();
        tasks[0] = Task::new("rich", &b"{\"q\":\"why\"}"[..])
            .with_tenant("acme")
            .with_session("session-1")
            .with_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .with_header("x-origin", "conformance")
            .with_deadline_in(Duration::from_secs(3600))
            .with_max_attempts(7);
        enqueue_all(q, &tasks).await;

        let leases = lease_exactly(q, N, 7, long_wait(&c)).await;
        let sent: BTreeSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
        let mut got: BTreeMap<&TaskId, usize> = BTreeMap::new();
        for l in &leases {
            *got.entry(&l.task().id).or_default() += 1;
            assert_eq!(
                l.attempt(),
                1,
                "first delivery of {} has attempt {}",
                l.task().id,
                l.attempt()
            );
            assert_eq!(l.task().attempt, 0);
        }
        assert!(
            got.values().all(|&n| n == 1),
            "a task was delivered twice before any timeout: {got:?}"
        );
        assert_eq!(
            got.keys().copied().collect::<BTreeSet<_>>(),
            sent,
            "delivered ids differ from enqueued ids"
        );

        let rich = leases
            .iter()
            .find(|l| l.task().id == tasks[0].id)
            .expect("rich task delivered")
            .task();
        let want = &tasks[0];
        assert_eq!(rich.kind, want.kind);
        assert_eq!(rich.payload, want.payload);
        assert_eq!(rich.tenant, want.tenant);
        assert_eq!(rich.session_id, want.session_id);
        assert_eq!(rich.traceparent, want.traceparent);
        assert_eq!(rich.headers, want.headers);
        assert_eq!(rich.deadline_ms, want.deadline_ms);
        assert_eq!(rich.max_attempts, want.max_attempts);
        assert_eq!(rich.enqueued_at_ms, want.enqueued_at_ms);
        assert_eq!(rich.priority, want.priority);

        for r in q.ack_batch(&leases).await {
            r.expect("ack");
        }
        assert_nothing_for(
            q,
            c.lease_timeout + Duration::from_millis(500),
            "after acking everything",
        )
        .await;
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// Acked tasks never come back; the one left un-acked does, after the
    /// lease timeout, with a new fence and attempt 2.
    pub async fn ack_removes(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let tasks: Vec<Task> = (0..3).map(task).collect();
        enqueue_all(q, &tasks).await;
        let leases = lease_exactly(q, 3, 3, long_wait(&c)).await;
        q.ack(&leases[0]).await.expect("ack 0");
        q.ack(&leases[1]).await.expect("ack 1");
        let kept = &leases[2];

        let again = lease_one(q, long_wait(&c)).await;
        assert_eq!(
            again.task().id,
            kept.task().id,
            "only the un-acked task may come back"
        );
        assert_eq!(again.attempt(), 2);
        if c.fencing {
            assert_ne!(again.fence(), kept.fence(), "redelivery must carry a new fence");
        }
        q.ack(&again).await.expect("ack redelivery");
        assert_nothing_for(
            q,
            c.lease_timeout + Duration::from_millis(500),
            "after acking everything",
        )
        .await;
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// `Nack::Retry(d)` charges an attempt and redelivers not before `d`.
    pub async fn nack_retry_redelivers_after_delay(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let first = lease_one(q, long_wait(&c)).await;
        let delay = Duration::from_millis(800);
        let nacked_at = Instant::now();
        q.nack(&first, Nack::Retry(delay)).await.expect("nack");
        if c.delayed_retry {
            assert_depth(q.depth().await.expect("depth"), 0, 0, 1, 0);
            assert_nothing_for(q, Duration::from_millis(300), "during the retry delay").await;
        } else {
            skip(
                "nack_retry_redelivers_after_delay (delay part)",
                "no delayed retry",
            );
        }
        let again = lease_one(q, long_wait(&c)).await;
        if c.delayed_retry {
            let waited = nacked_at.elapsed();
            assert!(
                waited + TOLERANCE >= delay,
                "retried after {waited:?}, before its delay of {delay:?}"
            );
        }
        assert_eq!(again.task().id, t.id);
        assert_eq!(again.attempt(), 2, "a retry charges one attempt");
        assert_eq!(again.task().attempt, 1);
        q.ack(&again).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// `Nack::Release` hands the task back without charging an attempt.
    pub async fn release_does_not_charge(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let first = lease_one(q, long_wait(&c)).await;
        q.nack(&first, Nack::Release).await.expect("release");
        let again = lease_one(q, long_wait(&c)).await;
        assert_eq!(again.task().id, t.id);
        assert_eq!(again.attempt(), 1, "release must not charge an attempt");
        assert_eq!(again.task().attempt, 0);
        if c.fencing {
            // The released lease must not be able to settle the new delivery
            // (the fence alone may repeat if the receipt differs).
            assert_lease_lost(q.ack(&first).await, "ack through the released lease");
            if c.lease_extension {
                assert_lease_lost(
                    q.extend(&first, c.lease_timeout).await,
                    "extend through the released lease",
                );
            }
        }
        q.ack(&again).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// A lease left alone expires: the task is delivered again, not before
    /// the lease timeout, with attempt + 1 and a different fence.
    pub async fn expired_lease_redelivered(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let asked_at = Instant::now();
        let first = lease_one(q, long_wait(&c)).await;
        assert_eq!(first.attempt(), 1);
        let again = lease_one(q, long_wait(&c)).await;
        let waited = asked_at.elapsed();
        assert!(
            waited + TOLERANCE >= c.lease_timeout,
            "redelivered after {waited:?}, before the lease timeout of {:?}",
            c.lease_timeout
        );
        assert_eq!(again.task().id, t.id);
        assert_eq!(again.attempt(), 2, "an expired lease counts as an attempt");
        if c.fencing {
            assert_ne!(again.fence(), first.fence(), "redelivery must carry a new fence");
        }
        q.ack(&again).await.expect("ack redelivery");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// After a lease was lost (expired and redelivered), everything through
    /// the old lease is refused with `LeaseLost` and changes nothing; a
    /// second ack of a completed lease is refused too.
    pub async fn stale_lease_refused(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.fencing {
            return skip("stale_lease_refused", "no fencing");
        }
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let old = lease_one(q, long_wait(&c)).await;
        let new = lease_one(q, long_wait(&c)).await;
        assert_eq!(new.task().id, t.id);
        assert_ne!(new.fence(), old.fence());

        assert_lease_lost(q.ack(&old).await, "stale ack");
        assert_lease_lost(
            q.nack(&old, Nack::Retry(Duration::ZERO)).await,
            "stale nack retry",
        );
        assert_lease_lost(q.nack(&old, Nack::Release).await, "stale nack release");
        assert_lease_lost(
            q.nack(&old, Nack::DeadLetter("stale".into())).await,
            "stale nack dead-letter",
        );
        if c.lease_extension {
            assert_lease_lost(q.extend(&old, Duration::from_secs(60)).await, "stale extend");
        }
        assert_depth(q.depth().await.expect("depth"), 0, 1, 0, 0);

        q.ack(&new).await.expect("ack through the live lease");
        assert_lease_lost(q.ack(&new).await, "second ack of a completed lease");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
        assert_nothing_for(
            q,
            c.lease_timeout + Duration::from_millis(300),
            "after the live ack",
        )
        .await;
    }

    /// Extending a lease keeps it past the original timeout.
    pub async fn extend_keeps_lease(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.lease_extension {
            return skip("extend_keeps_lease", "no lease extension");
        }
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let lease = lease_one(q, long_wait(&c)).await;
        let held_since = Instant::now();
        // Heartbeat every third of the timeout until well past the original.
        while held_since.elapsed() < c.lease_timeout * 2 {
            assert_nothing_for(q, c.lease_timeout / 3, "while the lease is extended").await;
            q.extend(&lease, c.lease_timeout).await.expect("extend");
        }
        assert_depth(q.depth().await.expect("depth"), 0, 1, 0, 0);
        q.ack(&lease)
            .await
            .expect("ack after extending past the original timeout");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// Attempts accumulate across retries; a worker that dead-letters at
    /// `max_attempts` sees attempts 1, 2, 3 and the dead letter records 3.
    pub async fn attempts_accumulate_to_dead_letter(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let t = task(1).with_max_attempts(3);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let mut seen = Vec::new();
        loop {
            let l = lease_one(q, long_wait(&c)).await;
            assert_eq!(l.task().id, t.id);
            assert_eq!(l.task().max_attempts, 3);
            seen.push(l.attempt());
            if l.attempt() >= l.task().max_attempts {
                q.nack(&l, Nack::DeadLetter("max attempts reached".into()))
                    .await
                    .expect("dead-letter");
                break;
            }
            q.nack(&l, Nack::Retry(Duration::from_millis(10)))
                .await
                .expect("retry");
        }
        assert_eq!(seen, vec![1, 2, 3]);
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 1);
        if c.dead_letter_replay {
            let dl = q.dead_letters(10).await.expect("dead letters");
            assert_eq!(dl.len(), 1);
            assert_eq!(dl[0].attempts, 3, "dead letter records the attempts made");
            assert_eq!(dl[0].reason, "max attempts reached");
        }
    }

    /// A dead letter keeps its reason, counts in `depth().dead`, is listed,
    /// and is not delivered again.
    pub async fn dead_letter_keeps_reason(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let t = task(1).with_tenant("acme");
        let other = task(2);
        enqueue_all(q, &[t.clone(), other.clone()]).await;
        let leases = lease_exactly(q, 2, 2, long_wait(&c)).await;
        let (dead, live) = if leases[0].task().id == t.id {
            (&leases[0], &leases[1])
        } else {
            (&leases[1], &leases[0])
        };
        let reason = "conformance: payload rejected (reason 42)";
        q.nack(dead, Nack::DeadLetter(reason.into()))
            .await
            .expect("dead-letter");
        assert_depth(q.depth().await.expect("depth"), 0, 1, 0, 1);
        q.ack(live).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 1);
        if c.dead_letter_replay {
            let dl = q.dead_letters(10).await.expect("dead letters");
            assert_eq!(dl.len(), 1, "{dl:?}");
            assert_eq!(dl[0].reason, reason);
            assert_eq!(dl[0].attempts, 1);
            let task = dl[0].task.as_ref().expect("dead letter keeps the task");
            assert_eq!(task.id, t.id);
            assert_eq!(task.tenant.as_deref(), Some("acme"));
            assert!(dl[0].dead_at_ms > 0);
            assert!(
                q.dead_letters(0).await.expect("dead letters").is_empty(),
                "max 0 lists nothing"
            );
        } else {
            skip("dead_letter_keeps_reason (listing)", "no dead-letter listing");
        }
        assert_nothing_for(
            q,
            c.lease_timeout + Duration::from_millis(300),
            "after dead-lettering",
        )
        .await;
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 1);
    }

    /// A replayed dead letter is delivered again with attempts reset; its id
    /// cannot be replayed twice.
    pub async fn replay_dead_letter(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.dead_letter_replay {
            return skip("replay_dead_letter", "no dead-letter replay");
        }
        let t = task(1);
        enqueue_all(q, std::slice::from_ref(&t)).await;
        let first = lease_one(q, long_wait(&c)).await;
        q.nack(&first, Nack::Retry(Duration::ZERO)).await.expect("retry");
        let second = lease_one(q, long_wait(&c)).await;
        assert_eq!(second.attempt(), 2);
        q.nack(&second, Nack::DeadLetter("gave up".into()))
            .await
            .expect("dead-letter");
        let dl = q.dead_letters(10).await.expect("dead letters");
        assert_eq!(dl.len(), 1);
        assert_eq!(dl[0].attempts, 2);

        q.replay_dead_letter(&dl[0].id).await.expect("replay");
        assert_depth(q.depth().await.expect("depth"), 1, 0, 0, 0);
        assert!(q.dead_letters(10).await.expect("dead letters").is_empty());
        let again = lease_one(q, long_wait(&c)).await;
        assert_eq!(again.task().id, t.id);
        assert_eq!(again.attempt(), 1, "replay resets attempts");
        assert_eq!(again.task().attempt, 0);
        q.ack(&again).await.expect("ack");

        let twice = q.replay_dead_letter(&dl[0].id).await;
        assert_eq!(
            twice.map_err(|e| e.kind()),
            Err(ErrorKind::NotFound),
            "a dead letter replays once"
        );
        assert!(q.replay_dead_letter("no-such-dead-letter").await.is_err());
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// `depth()` is exact in every state of the lifecycle.
    pub async fn depth_accounting(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
        let ready: Vec<Task> = (0..3).map(task).collect();
        enqueue_all(q, &ready).await;
        let delayed_task = task(9).with_delay(Duration::from_millis(1500));
        if c.delayed_retry {
            enqueue_all(q, std::slice::from_ref(&delayed_task)).await;
        }
        let delayed = u64::from(c.delayed_retry);
        let d = q.depth().await.expect("depth");
        assert_depth(d, 3, 0, delayed, 0);
        assert_eq!(d.backlog(), 3);
        if let Some(age) = d.oldest_ready_age {
            assert!(
                age < Duration::from_secs(3600),
                "oldest ready age {age:?} is implausible"
            );
        }

        let a = lease_exactly(q, 2, 2, long_wait(&c)).await;
        assert_depth(q.depth().await.expect("depth"), 1, 2, delayed, 0);
        q.ack(&a[0]).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 1, 1, delayed, 0);
        q.nack(&a[1], Nack::DeadLetter("depth check".into()))
            .await
            .expect("dead-letter");
        assert_depth(q.depth().await.expect("depth"), 1, 0, delayed, 1);
        let b = lease_one(q, long_wait(&c)).await;
        assert_ne!(
            b.task().id,
            delayed_task.id,
            "the delayed task was delivered early"
        );
        q.nack(&b, Nack::Release).await.expect("release");
        assert_depth(q.depth().await.expect("depth"), 1, 0, delayed, 1);
        let b = lease_one(q, long_wait(&c)).await;
        q.ack(&b).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, delayed, 1);

        if c.delayed_retry {
            let late = lease_one(q, long_wait(&c)).await;
            assert_eq!(late.task().id, delayed_task.id);
            assert_depth(q.depth().await.expect("depth"), 0, 1, 0, 1);
            q.nack(&late, Nack::Retry(Duration::from_secs(30)))
                .await
                .expect("retry later");
            assert_depth(q.depth().await.expect("depth"), 0, 0, 1, 1);
        }
    }

    /// A task with `not_before` is not delivered earlier, and a leaser that
    /// is already waiting receives it when it becomes due.
    pub async fn not_before_delays_delivery(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.delayed_retry {
            return skip("not_before_delays_delivery", "no delayed delivery");
        }
        let delay = Duration::from_millis(700);
        let t = task(1).with_delay(delay);
        let enqueued_at = Instant::now();
        enqueue_all(q, std::slice::from_ref(&t)).await;
        assert_depth(q.depth().await.expect("depth"), 0, 0, 1, 0);
        let l = lease_one(q, long_wait(&c)).await;
        let waited = enqueued_at.elapsed();
        assert!(
            waited + TOLERANCE >= delay,
            "delivered after {waited:?}, before not_before ({delay:?})"
        );
        assert_eq!(l.task().id, t.id);
        assert_eq!(l.attempt(), 1);
        q.ack(&l).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// A leaser waiting on an empty queue receives a task enqueued later.
    pub async fn lease_wakes_on_enqueue(fx: &QueueFixture) {
        let c = caps(fx);
        let q = fx.queue.clone();
        let wait = long_wait(&c);
        let waiter = tokio::spawn(async move { q.lease(4, wait).await });
        // Give the leaser a moment to start waiting (not needed for
        // correctness: the task is received either way).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = task(1);
        enqueue_all(&*fx.queue, std::slice::from_ref(&t)).await;
        let got = waiter.await.expect("leaser task").expect("lease");
        assert_eq!(got.len(), 1, "the waiting leaser must receive the enqueued task");
        assert_eq!(got[0].task().id, t.id);
        fx.queue.ack(&got[0]).await.expect("ack");
    }

    /// Every ready High task before any Normal one, Normal before Low.
    pub async fn priorities(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if c.priority_levels < 3 {
            return skip("priorities", "fewer than 3 priority levels");
        }
        let order = [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Low,
            Priority::High,
            Priority::Normal,
        ];
        let tasks: Vec<Task> = order
            .iter()
            .enumerate()
            .map(|(i, p)| task(i).with_priority(*p))
            .collect();
        enqueue_all(q, &tasks).await;
        let mut got = Vec::new();
        for _ in 0..tasks.len() {
            let l = lease_one(q, long_wait(&c)).await;
            got.push(l.task().priority);
            q.ack(&l).await.expect("ack");
        }
        use Priority::*;
        assert_eq!(got, vec![High, High, Normal, Normal, Low, Low]);
    }

    /// A second enqueue with the same idempotency key stores nothing and
    /// reports the first id.
    pub async fn idempotent_enqueue(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.idempotent_enqueue {
            return skip("idempotent_enqueue", "no idempotent enqueue");
        }
        let key = format!("order-{}", uuid::Uuid::new_v4().simple());
        let first = task(1).with_idempotency_key(&key);
        let dup = task(2).with_idempotency_key(&key);
        let other = task(3).with_idempotency_key(format!("{key}-other"));
        let e1 = q.enqueue(first.clone()).await.expect("enqueue");
        assert_eq!(
            e1,
            agentscale_core::Enqueued {
                id: first.id.clone(),
                duplicate: false
            }
        );
        let e2 = q.enqueue(dup).await.expect("enqueue duplicate");
        assert_eq!(
            e2,
            agentscale_core::Enqueued {
                id: first.id.clone(),
                duplicate: true
            }
        );
        let e3 = q.enqueue(other.clone()).await.expect("enqueue other key");
        assert!(!e3.duplicate);
        let batch = q.enqueue_batch(vec![task(4).with_idempotency_key(&key)]).await;
        assert_eq!(batch.len(), 1);
        let b = batch
            .into_iter()
            .next()
            .expect("one result")
            .expect("batch enqueue");
        assert_eq!(
            b,
            agentscale_core::Enqueued {
                id: first.id.clone(),
                duplicate: true
            }
        );

        assert_depth(q.depth().await.expect("depth"), 2, 0, 0, 0);
        let leases = lease_exactly(q, 2, 4, long_wait(&c)).await;
        let ids: BTreeSet<&TaskId> = leases.iter().map(|l| &l.task().id).collect();
        assert_eq!(ids, BTreeSet::from([&first.id, &other.id]));
        for r in q.ack_batch(&leases).await {
            r.expect("ack");
        }
        assert_nothing_for(q, Duration::from_millis(300), "after acking both").await;
    }

    /// `enqueue_batch` returns one result per task, in order; invalid items
    /// fail alone.
    pub async fn enqueue_batch_results(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let good1 = task(1);
        let bad = task(2).with_max_attempts(0);
        let good2 = task(3);
        let huge = Task::new("conformance", vec![0u8; c.max_envelope_bytes + 1]);
        let res = q
            .enqueue_batch(vec![good1.clone(), bad, good2.clone(), huge])
            .await;
        assert_eq!(res.len(), 4);
        let mut res = res.into_iter();
        assert_eq!(res.next().expect("r0").expect("good1").id, good1.id);
        assert_invalid_input(res.next().expect("r1"), "max_attempts 0 in a batch");
        assert_eq!(res.next().expect("r2").expect("good2").id, good2.id);
        assert_invalid_input(res.next().expect("r3"), "oversize in a batch");
        assert!(q.enqueue_batch(Vec::new()).await.is_empty());

        assert_depth(q.depth().await.expect("depth"), 2, 0, 0, 0);
        let leases = lease_exactly(q, 2, 8, long_wait(&c)).await;
        let ids: BTreeSet<&TaskId> = leases.iter().map(|l| &l.task().id).collect();
        assert_eq!(ids, BTreeSet::from([&good1.id, &good2.id]));
        let acks = q.ack_batch(&leases).await;
        assert_eq!(acks.len(), 2);
        for r in acks {
            r.expect("ack");
        }
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// An envelope exactly at the limit is accepted; one byte over is
    /// refused with `InvalidInput` at enqueue and nothing is stored.
    pub async fn oversize_envelope_refused(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let limit = c.max_envelope_bytes;
        let sized = |n: usize| Task::new("conformance", vec![b'x'; n]);
        let encoded = |t: &Task| t.encode().expect("encode").len();
        let over = sized(limit + 1);
        assert_invalid_input(q.enqueue(over).await, "payload over the envelope limit");

        if limit <= 8 << 20 {
            // Find the payload size whose envelope is exactly `limit` bytes.
            let probe = sized(limit / 2);
            let mut n = limit / 2 + (limit - encoded(&probe).min(limit));
            while encoded(&sized(n)) > limit {
                n -= 1;
            }
            let at_limit = sized(n);
            let just_over = sized(n + 1);
            if encoded(&at_limit) == limit && encoded(&just_over) == limit + 1 {
                let just_over = just_over.with_id(TaskId::generate());
                assert_invalid_input(q.enqueue(just_over).await, "envelope one byte over the limit");
                assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
                let e = q
                    .enqueue(at_limit.clone())
                    .await
                    .expect("an envelope exactly at the limit is accepted");
                assert_eq!(e.id, at_limit.id);
                let l = lease_one(q, long_wait(&c)).await;
                assert_eq!(l.task().payload.len(), n, "payload survives intact");
                assert_eq!(l.task().payload, at_limit.payload);
                q.ack(&l).await.expect("ack");
            } else {
                eprintln!(
                    "oversize_envelope_refused: no payload size hits the limit exactly; boundary skipped"
                );
            }
        }
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// Invalid tasks are refused with `InvalidInput` and nothing is stored.
    pub async fn invalid_task_refused(fx: &QueueFixture) {
        let q = &*fx.queue;
        assert_invalid_input(q.enqueue(task(1).with_max_attempts(0)).await, "max_attempts 0");
        assert_invalid_input(q.enqueue(Task::new("", "x")).await, "empty kind");
        assert_invalid_input(q.enqueue(task(2).with_id(TaskId::new(""))).await, "empty id");
        assert_invalid_input(
            q.enqueue(task(3).with_traceparent("not-a-traceparent")).await,
            "bad traceparent",
        );
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
        assert_nothing_for(q, Duration::from_millis(200), "after refusing invalid tasks").await;
    }

    /// Malformed raw entries are dead-lettered with a reason; valid tasks
    /// around them are still delivered.
    pub async fn malformed_entries_dead_lettered(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        if !c.wire_format {
            return skip(
                "malformed_entries_dead_lettered",
                "no wire format (no raw entries can exist)",
            );
        }
        let inject = fx
            .inject_raw
            .as_ref()
            .expect("backend declares wire_format, so its fixture must provide a raw injector");
        let garbage = b"\xff\x00 definitely not an envelope".to_vec();
        let mut bad_magic = task(0).encode().expect("encode");
        bad_magic[0] = b'X';
        let mut bad_version = task(0).encode().expect("encode");
        bad_version[2] = 99;
        let truncated = task(0).encode().expect("encode")[..6].to_vec();

        let before = task(1);
        enqueue_all(q, std::slice::from_ref(&before)).await;
        for raw in [&garbage, &bad_magic, &bad_version, &truncated] {
            inject(raw.clone()).await;
        }
        let after = task(2);
        enqueue_all(q, std::slice::from_ref(&after)).await;

        let leases = lease_exactly(q, 2, 4, long_wait(&c)).await;
        let ids: BTreeSet<&TaskId> = leases.iter().map(|l| &l.task().id).collect();
        assert_eq!(
            ids,
            BTreeSet::from([&before.id, &after.id]),
            "only the valid tasks are delivered"
        );
        for r in q.ack_batch(&leases).await {
            r.expect("ack");
        }
        assert_nothing_for(q, Duration::from_millis(300), "after the valid tasks").await;
        let d = q.depth().await.expect("depth");
        assert_depth(d, 0, 0, 0, 4);

        if c.dead_letter_replay {
            let dl = q.dead_letters(10).await.expect("dead letters");
            assert_eq!(dl.len(), 4, "{dl:?}");
            for entry in &dl {
                assert!(
                    !entry.reason.is_empty(),
                    "dead letter without a reason: {entry:?}"
                );
                assert!(entry.task.is_none(), "a malformed entry has no task");
            }
            let reason_of = |raw: &Vec<u8>| {
                dl.iter()
                    .find(|e| e.raw.as_ref() == Some(raw))
                    .map(|e| e.reason.to_lowercase())
                    .unwrap_or_else(|| panic!("raw entry {raw:?} not kept in the dead letters"))
            };
            assert!(
                reason_of(&bad_magic).contains("magic"),
                "{}",
                reason_of(&bad_magic)
            );
            assert!(
                reason_of(&bad_version).contains("version"),
                "{}",
                reason_of(&bad_version)
            );
            reason_of(&garbage);
            reason_of(&truncated);
        }
    }

    /// `lease(max, _)` never returns more than `max`.
    pub async fn lease_respects_max(fx: &QueueFixture) {
        let q = &*fx.queue;
        let c = caps(fx);
        let tasks: Vec<Task> = (0..10).map(task).collect();
        for r in q.enqueue_batch(tasks.clone()).await {
            r.expect("enqueue");
        }
        assert!(
            q.lease(0, Duration::from_millis(50))
                .await
                .expect("lease 0")
                .is_empty(),
            "lease(0) returns nothing"
        );
        let first = q.lease(3, long_wait(&c)).await.expect("lease");
        assert!(
            (1..=3).contains(&first.len()),
            "lease(3) returned {}",
            first.len()
        );
        let mut all = first;
        all.extend(lease_exactly(q, 10 - all.len(), 4, long_wait(&c)).await);
        let ids: BTreeSet<&TaskId> = all.iter().map(|l| &l.task().id).collect();
        assert_eq!(ids.len(), 10);
        assert_eq!(ids, tasks.iter().map(|t| &t.id).collect::<BTreeSet<_>>());
        for r in q.ack_batch(&all).await {
            r.expect("ack");
        }
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    /// Four concurrent leasers: every task is completed (acked successfully)
    /// exactly once; nobody ever completes a task another holds.
    pub async fn concurrent_leasers_exclusive(fx: &QueueFixture) {
        let c = caps(fx);
        const N: usize = 120;
        const LEASERS: usize = 4;
        let tasks: Vec<Task> = (0..N).map(task).collect();
        for r in fx.queue.enqueue_batch(tasks.clone()).await {
            r.expect("enqueue");
        }
        let acked = Arc::new(counts::Counts::default());
        let done = Arc::new(AtomicUsize::new(0));
        let give_up = Instant::now() + long_wait(&c) * 2;
        let mut handles = Vec::new();
        for _ in 0..LEASERS {
            let q = fx.queue.clone();
            let acked = acked.clone();
            let done = done.clone();
            handles.push(tokio::spawn(async move {
                while done.load(Ordering::SeqCst) < N && Instant::now() < give_up {
                    let leases = q.lease(5, Duration::from_millis(200)).await.expect("lease");
                    assert!(leases.len() <= 5);
                    for l in leases {
                        match q.ack(&l).await {
                            Ok(()) => {
                                acked.record(&l.task().id, true);
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) if e.kind() == ErrorKind::LeaseLost => acked.record(&l.task().id, false),
                            Err(e) => panic!("ack failed: {e}"),
                        }
                    }
                }
            }));
        }
        for h in handles {
            h.await.expect("leaser panicked");
        }
        let (ok, lost) = acked.snapshot();
        let twice: Vec<_> = ok.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "tasks completed by two holders: {twice:?}");
        let sent: BTreeSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
        let completed: BTreeSet<&TaskId> = ok.keys().collect();
        assert_eq!(completed.len(), N, "completed {} of {N}", completed.len());
        assert_eq!(completed, sent);
        if !lost.is_empty() {
            eprintln!(
                "concurrent_leasers_exclusive: {} deliveries lost their lease (slow machine)",
                lost.len()
            );
        }
        assert_depth(fx.queue.depth().await.expect("depth"), 0, 0, 0, 0);
    }

    mod counts {
        use super::*;

        /// Per-task successful and refused ack counts.
        #[derive(Default)]
        pub struct Counts(std::sync::Mutex<(HashMap<TaskId, usize>, HashMap<TaskId, usize>)>);

        impl Counts {
            pub fn record(&self, id: &TaskId, ok: bool) {
                let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
                let m = if ok { &mut g.0 } else { &mut g.1 };
                *m.entry(id.clone()).or_default() += 1;
            }

            pub fn snapshot(&self) -> (HashMap<TaskId, usize>, HashMap<TaskId, usize>) {
                self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        }
    }
}
