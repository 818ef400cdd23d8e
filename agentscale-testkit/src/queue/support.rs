//! Helpers shared by the queue checks.

pub(super) use std::collections::{BTreeMap, BTreeSet, HashMap};
pub(super) use std::sync::atomic::{AtomicUsize, Ordering};
pub(super) use std::sync::Arc;
pub(super) use std::time::{Duration, Instant};

pub(super) use agentscale_core::{
    Capabilities, Depth, ErrorKind, Lease, Nack, Priority, Task, TaskId, TaskQueue,
};

pub(super) use crate::setup::QueueFixture;

/// Clock tolerance for "not before" assertions (backends may use a server clock).
pub(super) const TOLERANCE: Duration = Duration::from_millis(100);

pub(super) fn caps(fx: &QueueFixture) -> Capabilities {
    fx.queue.capabilities()
}

/// A generous wait for something that must happen after a lease timeout.
pub(super) fn long_wait(c: &Capabilities) -> Duration {
    c.lease_timeout * 6 + Duration::from_secs(5)
}

pub(super) fn task(i: usize) -> Task {
    Task::new("conformance", format!("payload-{i}"))
}

pub(super) async fn enqueue_all(q: &dyn TaskQueue, tasks: &[Task]) {
    for t in tasks {
        let e = q.enqueue(t.clone()).await.expect("enqueue");
        assert_eq!(e.id, t.id, "enqueue reported another id");
        assert!(!e.duplicate, "fresh task reported as duplicate");
    }
}

/// Leases until exactly `n` leases were received (in calls of at most `max`),
/// failing after `within`. Asserts every call returns at most `max`.
pub(super) async fn lease_exactly(q: &dyn TaskQueue, n: usize, max: usize, within: Duration) -> Vec<Lease> {
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

pub(super) async fn lease_one(q: &dyn TaskQueue, within: Duration) -> Lease {
    lease_exactly(q, 1, 1, within).await.remove(0)
}

/// Asserts that nothing is delivered for `d` (a lease that waits `d`).
pub(super) async fn assert_nothing_for(q: &dyn TaskQueue, d: Duration, what: &str) {
    let got = q.lease(16, d).await.expect("lease");
    let ids: Vec<&TaskId> = got.iter().map(|l| &l.task().id).collect();
    assert!(
        got.is_empty(),
        "{what}: expected no delivery within {d:?}, got {ids:?}"
    );
}

#[track_caller]
pub(super) fn assert_depth(d: Depth, ready: u64, in_flight: u64, delayed: u64, dead: u64) {
    let got = (d.ready, d.in_flight, d.delayed, d.dead);
    assert_eq!(
        got,
        (ready, in_flight, delayed, dead),
        "depth (ready, in_flight, delayed, dead): {d:?}"
    );
}

#[track_caller]
pub(super) fn assert_lease_lost<T: std::fmt::Debug>(r: agentscale_core::Result<T>, what: &str) {
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
pub(super) fn assert_invalid_input<T: std::fmt::Debug>(r: agentscale_core::Result<T>, what: &str) {
    match r {
        Err(e) => assert_eq!(
            e.kind(),
            ErrorKind::InvalidInput,
            "{what}: expected InvalidInput, got {e}"
        ),
        Ok(v) => panic!("{what}: expected InvalidInput, got Ok({v:?})"),
    }
}
