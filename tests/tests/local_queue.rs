//! The queue conformance suite against the in-memory queue, plus checks
//! specific to it.

use std::time::Duration;

use agentscale_core::{ErrorKind, Task, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_testkit::{unique_name, QueueFixture, QueueOptions, SetupResult, Suites};

async fn setup(opts: QueueOptions) -> SetupResult<QueueFixture> {
    let queue = LocalQueue::builder(opts.name)
        .lease_timeout(opts.lease_timeout)
        .max_envelope_bytes(opts.max_envelope_bytes)
        .ordered_sessions(opts.ordered_sessions)
        .build()?;
    Ok(QueueFixture::new(queue))
}

async fn builder_refuses_invalid_config() {
    for r in [
        LocalQueue::builder("").build(),
        LocalQueue::builder("  ").build(),
        LocalQueue::builder("q").lease_timeout(Duration::ZERO).build(),
        LocalQueue::builder("q").max_envelope_bytes(0).build(),
        LocalQueue::builder("q")
            .idempotency_window(Duration::ZERO)
            .build(),
    ] {
        assert_eq!(r.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidConfig));
    }
}

async fn capabilities_are_honest() {
    let q = LocalQueue::builder("caps")
        .lease_timeout(Duration::from_secs(7))
        .max_envelope_bytes(4096)
        .build()
        .expect("build");
    let c = q.capabilities();
    assert!(
        c.lease_extension && c.delayed_retry && c.idempotent_enqueue && c.fencing && c.dead_letter_replay
    );
    assert!(!c.wire_format);
    assert!(c.in_process, "the worker runs its first driver inline over it");
    assert_eq!(c.priority_levels, 3);
    assert_eq!(c.lease_timeout, Duration::from_secs(7));
    assert_eq!(c.max_envelope_bytes, 4096);
}

/// A task whose worker dies on every attempt is delivered again and again
/// with a growing attempt count, so the worker can dead-letter it.
async fn repeated_expiry_keeps_charging_attempts() {
    let q = LocalQueue::builder(unique_name("poison"))
        .lease_timeout(Duration::from_millis(50))
        .build()
        .expect("build");
    q.enqueue(Task::new("poison", "x").with_max_attempts(2))
        .await
        .expect("enqueue");
    let mut attempts = Vec::new();
    for _ in 0..4 {
        let l = q.lease(1, Duration::from_secs(5)).await.expect("lease");
        assert_eq!(l.len(), 1);
        attempts.push(l[0].attempt());
    }
    assert_eq!(attempts, vec![1, 2, 3, 4]);
}

/// Clones share one queue.
async fn clones_share_state() {
    let a = LocalQueue::new(unique_name("clone"));
    let b = a.clone();
    a.enqueue(Task::new("k", "x")).await.expect("enqueue");
    assert_eq!(b.depth().await.expect("depth").ready, 1);
    let l = b.lease(1, Duration::ZERO).await.expect("lease");
    a.ack(&l[0]).await.expect("ack through the other handle");
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .queue("local", setup)
            .test("builder_refuses_invalid_config", builder_refuses_invalid_config)
            .test("capabilities_are_honest", capabilities_are_honest)
            .test(
                "repeated_expiry_keeps_charging_attempts",
                repeated_expiry_keeps_charging_attempts,
            )
            .test("clones_share_state", clones_share_state)
    })
}
