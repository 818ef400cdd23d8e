//! Enqueue and depth: idempotency, batches, size limits, validation,
//! exact depth accounting.

use super::support::*;

/// A second enqueue with the same idempotency key stores nothing and
/// reports the first id.
pub(super) async fn idempotent_enqueue(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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
pub(super) async fn enqueue_batch_results(fx: &QueueFixture) {
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
pub(super) async fn oversize_envelope_refused(fx: &QueueFixture) {
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
        }
    }
    assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
}

/// Invalid tasks are refused with `InvalidInput` and nothing is stored.
pub(super) async fn invalid_task_refused(fx: &QueueFixture) {
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

/// `depth()` is exact in every state of the lifecycle.
pub(super) async fn depth_accounting(fx: &QueueFixture) {
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
