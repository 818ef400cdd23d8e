//! Unit tests of the in-memory queue.

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
