//! Delivery: everything enqueued is delivered, once per lease, in
//! priority order, to leasers that wait or compete.

use super::support::*;

/// Enqueue N, lease all: ids match exactly, envelopes intact, nothing
/// extra, nothing redelivered after ack.
pub(super) async fn delivery_at_least_once(fx: &QueueFixture) {
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
pub(super) async fn ack_removes(fx: &QueueFixture) {
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

/// A leaser waiting on an empty queue receives a task enqueued later.
pub(super) async fn lease_wakes_on_enqueue(fx: &QueueFixture) {
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
pub(super) async fn priorities(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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

/// `lease(max, _)` never returns more than `max`.
pub(super) async fn lease_respects_max(fx: &QueueFixture) {
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
pub(super) async fn concurrent_leasers_exclusive(fx: &QueueFixture) {
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
    let (ok, _lost) = acked.snapshot();
    let twice: Vec<_> = ok.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks completed by two holders: {twice:?}");
    let sent: BTreeSet<&TaskId> = tasks.iter().map(|t| &t.id).collect();
    let completed: BTreeSet<&TaskId> = ok.keys().collect();
    assert_eq!(completed.len(), N, "completed {} of {N}", completed.len());
    assert_eq!(completed, sent);
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
