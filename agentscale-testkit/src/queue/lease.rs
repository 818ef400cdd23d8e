//! Leases: retries, releases, expiry, fencing of lost leases, extension,
//! delayed delivery.

use super::support::*;

/// `Nack::Retry(d)` charges an attempt and redelivers not before `d`.
pub(super) async fn nack_retry_redelivers_after_delay(fx: &QueueFixture) {
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
pub(super) async fn release_does_not_charge(fx: &QueueFixture) {
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
pub(super) async fn expired_lease_redelivered(fx: &QueueFixture) {
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
pub(super) async fn stale_lease_refused(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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
pub(super) async fn extend_keeps_lease(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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

/// A task with `not_before` is not delivered earlier, and a leaser that
/// is already waiting receives it when it becomes due.
pub(super) async fn not_before_delays_delivery(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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
