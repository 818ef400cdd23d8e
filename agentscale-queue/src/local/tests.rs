//! Unit tests of the in-memory queue.

use super::enqueue::envelope_upper_bound;
use super::*;

#[test]
fn builder_validates() {
    assert!(LocalQueue::builder("").build().is_err());
    assert!(LocalQueue::builder("q")
        .lease_timeout(Duration::ZERO)
        .build()
        .is_err());
    assert!(LocalQueue::builder("q").max_envelope_bytes(0).build().is_err());
    assert!(LocalQueue::builder("q").build().is_ok());
    assert_eq!(LocalQueue::new("").name(), "default");
}

#[test]
fn upper_bound_is_an_upper_bound() {
    let t = Task::new("kind", vec![7u8; 70_000])
        .with_tenant("acme")
        .with_session("s")
        .with_idempotency_key("k")
        .with_header("a", "b");
    assert!(t.encode().expect("encode").len() <= envelope_upper_bound(&t));
    let small = Task::new("k", "x");
    assert!(small.encode().expect("encode").len() <= envelope_upper_bound(&small));
}

#[tokio::test]
async fn late_ack_completes_until_redelivery() {
    let q = LocalQueue::builder("late")
        .lease_timeout(Duration::from_millis(20))
        .build()
        .expect("build");
    q.enqueue(Task::new("k", "a")).await.expect("enqueue");
    let l = q.lease(1, Duration::ZERO).await.expect("lease");
    tokio::time::sleep(Duration::from_millis(40)).await;
    q.ack(&l[0])
        .await
        .expect("nobody else holds it: the late ack completes the task");
    assert_eq!(q.depth().await.expect("depth"), Depth::default());

    q.enqueue(Task::new("k", "b")).await.expect("enqueue");
    let old = q.lease(1, Duration::ZERO).await.expect("lease");
    let new = q.lease(1, Duration::from_secs(5)).await.expect("redelivery");
    assert_eq!(new[0].task().id, old[0].task().id);
    assert_eq!(
        q.ack(&old[0]).await.map_err(|e| e.kind()),
        Err(agentscale_core::ErrorKind::LeaseLost)
    );
    q.ack(&new[0]).await.expect("ack");
}

#[tokio::test]
async fn huge_durations_do_not_overflow() {
    let q = LocalQueue::builder("huge")
        .lease_timeout(Duration::MAX)
        .idempotency_window(Duration::MAX)
        .build()
        .expect("build");
    let mut far = Task::new("k", "x").with_idempotency_key("far");
    far.not_before_ms = Some(u64::MAX);
    q.enqueue(far).await.expect("enqueue");
    q.enqueue(Task::new("k", "y")).await.expect("enqueue");
    let l = q.lease(4, Duration::MAX).await.expect("lease");
    assert_eq!(l.len(), 1);
    q.extend(&l[0], Duration::MAX).await.expect("extend");
    q.nack(&l[0], Nack::Retry(Duration::MAX)).await.expect("nack");
    assert_eq!(q.depth().await.expect("depth").delayed, 2);
}

#[tokio::test]
async fn deadline_heap_is_compacted() {
    let q = LocalQueue::new("compact");
    for _ in 0..5 {
        let tasks: Vec<Task> = (0..1000).map(|i| Task::new("k", format!("{i}"))).collect();
        q.enqueue_batch(tasks).await;
        let leases = q.lease(1000, Duration::ZERO).await.expect("lease");
        assert_eq!(leases.len(), 1000);
        assert!(q.ack_batch(&leases).await.iter().all(Result::is_ok));
    }
    let st = q.shared.state.lock();
    assert!(
        st.deadlines.len() <= 2 * st.in_flight.len() + 1025,
        "{}",
        st.deadlines.len()
    );
}

/// Both `enqueue_batch` paths (plain tasks built outside the lock; a batch
/// with an idempotency key inserted one by one under it) keep priority
/// first, then batch order, and refuse a bad task in its place.
#[tokio::test]
async fn batch_paths_keep_priority_and_order() {
    use agentscale_core::Priority;
    for keyed in [false, true] {
        let q = LocalQueue::new("batch-order");
        let mut tasks: Vec<Task> = (0..6)
            .map(|i| {
                let p = [Priority::Low, Priority::Normal, Priority::High][i % 3];
                Task::new("k", format!("t{i}")).with_priority(p)
            })
            .collect();
        tasks.insert(3, Task::new("", "no kind"));
        if keyed {
            tasks[0] = tasks[0].clone().with_idempotency_key("once");
        }
        let out = q.enqueue_batch(tasks.clone()).await;
        assert_eq!(out.len(), 7);
        assert!(out[3].is_err(), "the task without a kind is refused in its place");
        assert_eq!(out.iter().filter(|r| r.is_ok()).count(), 6);
        let leased = q.lease(10, Duration::ZERO).await.expect("lease");
        let payloads: Vec<&[u8]> = leased.iter().map(|l| &l.task().payload[..]).collect();
        let want: Vec<&[u8]> = vec![b"t2", b"t5", b"t1", b"t4", b"t0", b"t3"];
        assert_eq!(payloads, want, "keyed batch: {keyed}");
        for l in &leased {
            assert_eq!(l.attempt(), 1);
            q.ack(l).await.expect("ack");
        }
        assert_eq!(q.depth().await.expect("depth").backlog(), 0);
    }
}

/// The queue takes part in Tokio's cooperative scheduling: a producer that
/// enqueues in a loop (and awaits nothing else) yields now and then, so a
/// worker on the same thread leases while the loop still runs. Without it
/// the worker ran only once the producer's loop ended.
#[tokio::test(flavor = "current_thread")]
async fn a_producer_loop_lets_a_worker_on_its_thread_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for batched in [false, true] {
        let q = LocalQueue::new("coop");
        let leased = Arc::new(AtomicUsize::new(0));
        let consumer = {
            let (q, leased) = (q.clone(), leased.clone());
            tokio::spawn(async move {
                loop {
                    let got = q.lease(100, Duration::from_secs(5)).await.expect("lease");
                    leased.fetch_add(got.len(), Ordering::SeqCst);
                    for l in &got {
                        q.ack(l).await.expect("ack");
                    }
                }
            })
        };
        // The consumer starts and waits in `lease`.
        tokio::task::yield_now().await;
        const N: usize = 2_000;
        let mut while_producing = 0;
        for _ in 0..N / 10 {
            if batched {
                let batch = (0..10).map(|_| Task::new("k", "x")).collect();
                for r in q.enqueue_batch(batch).await {
                    r.expect("enqueue");
                }
            } else {
                for _ in 0..10 {
                    q.enqueue(Task::new("k", "x")).await.expect("enqueue");
                }
            }
            while_producing = leased.load(Ordering::SeqCst);
        }
        assert!(
            while_producing > 0,
            "the worker never ran while the producer looped (batched: {batched})"
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while leased.load(Ordering::SeqCst) < N {
            assert!(tokio::time::Instant::now() < deadline, "not all tasks leased");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        consumer.abort();
        assert_eq!(q.depth().await.expect("depth").backlog(), 0);
    }
}

/// Leases one ready task at once.
async fn lease_one(q: &LocalQueue) -> Lease {
    let mut leases = q.lease(1, Duration::ZERO).await.expect("lease");
    assert_eq!(leases.len(), 1, "one task was ready");
    leases.remove(0)
}

#[tokio::test]
async fn an_acked_tasks_allocation_is_reused_only_once_nobody_holds_it() {
    let q = LocalQueue::new("recycle");
    q.enqueue(Task::new("a", "1")).await.expect("enqueue");
    let first = lease_one(&q).await;
    q.ack(&first).await.expect("ack");
    // Kept for reuse: the queue holds the allocation besides the lease.
    assert_eq!(Arc::strong_count(first.shared_task()), 2);

    // `first` still holds it: the next lease gets another allocation and
    // the task behind `first` is untouched.
    q.enqueue(Task::new("b", "2")).await.expect("enqueue");
    let second = lease_one(&q).await;
    assert!(!Arc::ptr_eq(first.shared_task(), second.shared_task()));
    assert_eq!(
        (first.task().kind.as_str(), &first.task().payload[..]),
        ("a", &b"1"[..])
    );
    assert_eq!(
        (second.task().kind.as_str(), &second.task().payload[..]),
        ("b", &b"2"[..])
    );
    assert_eq!(
        Arc::strong_count(first.shared_task()),
        1,
        "the queue let go of it"
    );

    // Once nobody holds it, the next lease reuses it for the new task.
    q.ack(&second).await.expect("ack");
    let kept = Arc::as_ptr(second.shared_task());
    drop(second);
    q.enqueue(Task::new("c", "3")).await.expect("enqueue");
    let third = lease_one(&q).await;
    assert_eq!(Arc::as_ptr(third.shared_task()), kept);
    assert_eq!(
        (third.task().kind.as_str(), &third.task().payload[..]),
        ("c", &b"3"[..])
    );
    assert_eq!(third.attempt(), 1);
    q.ack(&third).await.expect("ack");
}

#[tokio::test]
async fn large_tasks_are_not_kept_and_an_idle_queue_keeps_nothing() {
    let q = LocalQueue::new("recycle-bounds");
    q.enqueue(Task::new("big", vec![0u8; 2 * MAX_SPARE_TASK_BYTES]))
        .await
        .expect("enqueue");
    let big = lease_one(&q).await;
    q.ack(&big).await.expect("ack");
    assert_eq!(
        Arc::strong_count(big.shared_task()),
        1,
        "a large task is not kept"
    );

    q.enqueue(Task::new("small", "x")).await.expect("enqueue");
    let small = lease_one(&q).await;
    q.ack(&small).await.expect("ack");
    assert_eq!(Arc::strong_count(small.shared_task()), 2, "a small one is kept");
    // A lease that finds nothing ready frees what is kept.
    assert!(q.lease(1, Duration::ZERO).await.expect("lease").is_empty());
    assert_eq!(Arc::strong_count(small.shared_task()), 1);
}

/// New tasks keep their enqueue order across single and batch enqueues and
/// across a lease that takes only part of a batch; a higher priority goes
/// first even inside a mixed batch; depth counts what waits.
#[tokio::test]
async fn enqueue_order_survives_batches_singles_and_partial_leases() {
    use agentscale_core::Priority;
    let q = LocalQueue::new("order");
    let t = |p: &str| Task::new("k", p.to_string());
    q.enqueue_batch(vec![t("a"), t("b"), t("c")]).await;
    q.enqueue(t("d")).await.expect("enqueue");
    let keyed = t("k").with_idempotency_key("key-1");
    q.enqueue_batch(vec![t("e").with_priority(Priority::High), t("f"), keyed])
        .await;
    let depth = q.depth().await.expect("depth");
    assert_eq!(depth.ready, 7);
    assert!(depth.oldest_ready_age.is_some());

    let payloads = |ls: &[Lease]| -> Vec<String> {
        ls.iter()
            .map(|l| String::from_utf8_lossy(&l.task().payload).into_owned())
            .collect()
    };
    let first = q.lease(2, Duration::ZERO).await.expect("lease");
    assert_eq!(payloads(&first), ["e", "a"]);
    assert_eq!(
        q.depth().await.expect("depth").ready,
        5,
        "the rest of a batch stays ready"
    );
    let second = q.lease(3, Duration::ZERO).await.expect("lease");
    assert_eq!(payloads(&second), ["b", "c", "d"]);
    let third = q.lease(10, Duration::ZERO).await.expect("lease");
    assert_eq!(payloads(&third), ["f", "k"]);
    for l in first.iter().chain(&second).chain(&third) {
        q.ack(l).await.expect("ack");
    }
    assert_eq!(q.depth().await.expect("depth"), Depth::default());
}

/// The leases of one call share a deadline entry; at expiry only those
/// still held at that deadline are taken back: an acked one is gone, an
/// extended one waits for its own deadline.
#[tokio::test]
async fn one_deadline_entry_per_lease_call_expires_only_the_leases_still_due() {
    let q = LocalQueue::builder("expiry")
        .lease_timeout(Duration::from_millis(30))
        .build()
        .expect("build");
    q.enqueue_batch(vec![
        Task::new("k", "a"),
        Task::new("k", "b"),
        Task::new("k", "c"),
    ])
    .await;
    let held = q.lease(3, Duration::ZERO).await.expect("lease");
    assert_eq!(held.len(), 3);
    assert_eq!(q.shared.state.lock().deadlines.len(), 1, "one entry for the call");
    q.ack(&held[0]).await.expect("ack");
    q.extend(&held[1], Duration::from_secs(60)).await.expect("extend");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let again = q.lease(3, Duration::ZERO).await.expect("lease");
    assert_eq!(again.len(), 1, "only the lease still due was taken back");
    assert_eq!(again[0].task().id, held[2].task().id);
    assert_eq!(again[0].attempt(), 2);
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.in_flight), (0, 2));
    q.ack(&held[1]).await.expect("the extended lease is still live");
    q.ack(&again[0]).await.expect("ack");
    assert_eq!(q.depth().await.expect("depth"), Depth::default());
}
