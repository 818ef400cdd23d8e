//! Flow-control checks: deferral without charge, and ordered sessions
//! (run only on queues that declare `ordered_sessions`).

use super::support::*;

fn in_session(session: &str, i: usize) -> Task {
    Task::new("conformance", format!("{session}-{i}")).with_session(session)
}

/// Leases whatever is deliverable until nothing more comes within `quiet`.
async fn lease_available(q: &dyn TaskQueue, quiet: Duration) -> Vec<Lease> {
    let mut out = Vec::new();
    loop {
        let got = q.lease(64, quiet).await.expect("lease");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

fn payload(l: &Lease) -> String {
    String::from_utf8_lossy(&l.task().payload).into_owned()
}

/// `Nack::Defer(d)` hands the task back uncharged and delivers it again, not
/// before `d`.
pub(super) async fn defer_does_not_charge(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
    let t = task(1);
    enqueue_all(q, std::slice::from_ref(&t)).await;
    let first = lease_one(q, long_wait(&c)).await;
    let delay = Duration::from_millis(400);
    let deferred_at = Instant::now();
    q.nack(&first, Nack::Defer(delay)).await.expect("defer");
    let again = lease_one(q, long_wait(&c) + delay).await;
    let waited = deferred_at.elapsed();
    assert!(
        waited + TOLERANCE >= delay,
        "deferred task redelivered after {waited:?}, before its delay of {delay:?}"
    );
    assert_eq!(again.task().id, t.id);
    assert_eq!(again.attempt(), 1, "a deferral must not charge an attempt");
    q.ack(&again).await.expect("ack");
    assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
}

/// Three interleaved sessions and free tasks: only one task per session is
/// deliverable at a time, sessions complete in enqueue order, free tasks
/// are not held up, and `depth` counts the waiting tasks as ready.
pub(super) async fn ordered_sessions_in_order(fx: &QueueFixture) {
    let q = &*fx.queue;
    let sessions = ["alpha", "beta", "gamma"];
    let per = 4;
    let mut tasks = Vec::new();
    for i in 0..per {
        for s in sessions {
            tasks.push(in_session(s, i));
        }
        tasks.push(Task::new("conformance", format!("free-{i}")));
    }
    enqueue_all(q, &tasks).await;
    let d = q.depth().await.expect("depth");
    assert_eq!(
        d.ready + d.delayed,
        tasks.len() as u64,
        "depth counts every task: {d:?}"
    );
    let quiet = Duration::from_millis(300);
    let first = lease_available(q, quiet).await;
    let mut got: Vec<String> = first.iter().map(payload).collect();
    got.sort();
    let mut want: Vec<String> = (0..per).map(|i| format!("free-{i}")).collect();
    want.extend(sessions.iter().map(|s| format!("{s}-0")));
    want.sort();
    assert_eq!(
        got, want,
        "only each session's head and the free tasks are deliverable"
    );
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut held = first;
    while !held.is_empty() {
        for l in &held {
            if let Some(s) = &l.task().session_id {
                seen.entry(s.clone()).or_default().push(payload(l));
            }
        }
        // One lease per session at a time.
        let mut open = BTreeSet::new();
        for l in &held {
            if let Some(s) = &l.task().session_id {
                assert!(open.insert(s.clone()), "two tasks of session {s} leased at once");
            }
        }
        for l in &held {
            q.ack(l).await.expect("ack");
        }
        held = lease_available(q, quiet).await;
    }
    for s in sessions {
        let want: Vec<String> = (0..per).map(|i| format!("{s}-{i}")).collect();
        assert_eq!(seen.get(s), Some(&want), "session {s} ran out of enqueue order");
    }
    assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
}

/// A session whose head is held (slow handler) does not hold up another
/// session; a retry, a lease expiry and a deferral keep the head in place;
/// an ack moves on, and so does a dead letter; a replayed dead letter
/// queues behind the head.
pub(super) async fn ordered_session_head_keeps_its_place(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
    let slow: Vec<Task> = (0..3).map(|i| in_session("slow", i)).collect();
    let fast: Vec<Task> = (0..3).map(|i| in_session("fast", i)).collect();
    enqueue_all(q, &slow).await;
    enqueue_all(q, &fast).await;
    // A short quiet period: a wrongly delivered second task of a session
    // would be ready at once, and the slow head's lease (extended below)
    // must not expire while we wait.
    let head = lease_available(q, Duration::from_millis(100)).await;
    assert_eq!(
        head.len(),
        2,
        "one head per session: {:?}",
        head.iter().map(payload).collect::<Vec<_>>()
    );
    let (slow_head, fast_head): (Vec<Lease>, Vec<Lease>) = head
        .into_iter()
        .partition(|l| l.task().session_id.as_deref() == Some("slow"));
    let mut slow_head = slow_head.into_iter().next().expect("slow head");
    if c.lease_extension {
        q.extend(&slow_head, c.lease_timeout * 4)
            .await
            .expect("keep slow head");
    }
    // No head-of-line blocking: the fast session completes while slow's head is held.
    let mut fast_lease = fast_head.into_iter().next().expect("fast head");
    for i in 0..3 {
        assert_eq!(payload(&fast_lease), format!("fast-{i}"));
        q.ack(&fast_lease).await.expect("ack fast");
        if i < 2 {
            fast_lease = lease_one(q, long_wait(&c)).await;
        }
        if c.lease_extension {
            q.extend(&slow_head, c.lease_timeout * 4)
                .await
                .expect("keep slow head");
        }
    }
    // Retry: the same head comes back, the next task still waits.
    q.nack(&slow_head, Nack::Retry(Duration::ZERO))
        .await
        .expect("retry");
    slow_head = lease_one(q, long_wait(&c)).await;
    assert_eq!(payload(&slow_head), "slow-0", "a retried head keeps its place");
    assert_eq!(slow_head.attempt(), 2);
    // Lease expiry (the worker died): redelivered, still the head.
    let again = lease_one(q, long_wait(&c)).await;
    assert_eq!(
        payload(&again),
        "slow-0",
        "an expired head is redelivered before the next task"
    );
    assert_eq!(again.attempt(), 3);
    if c.fencing {
        assert_lease_lost(q.ack(&slow_head).await, "ack through the expired head lease");
    }
    // Deferral keeps the head too.
    q.nack(&again, Nack::Defer(Duration::ZERO)).await.expect("defer");
    let again = lease_one(q, long_wait(&c)).await;
    assert_eq!(payload(&again), "slow-0");
    assert_eq!(again.attempt(), 3, "a deferral does not charge");
    q.ack(&again).await.expect("ack head");
    let next = lease_one(q, long_wait(&c)).await;
    assert_eq!(payload(&next), "slow-1", "the ack moves the session on");
    q.nack(&next, Nack::DeadLetter("poison".into()))
        .await
        .expect("dead-letter");
    let last = lease_one(q, long_wait(&c)).await;
    assert_eq!(payload(&last), "slow-2", "a dead letter moves the session on");
    assert_nothing_for(q, Duration::from_millis(200), "session drained").await;
    if !(c.dead_letter_replay && c.lease_extension) {
        q.ack(&last).await.expect("ack");
        assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 1);
        return;
    }
    // A replayed dead letter queues behind the session's head (kept leased
    // meanwhile, so its own expiry does not show up as a delivery).
    q.extend(&last, c.lease_timeout * 4)
        .await
        .expect("extend the head");
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    q.replay_dead_letter(&dead[0].id).await.expect("replay");
    assert_nothing_for(q, Duration::from_millis(300), "replayed task while the head runs").await;
    q.ack(&last).await.expect("ack");
    let replayed = lease_one(q, long_wait(&c)).await;
    assert_eq!(
        payload(&replayed),
        "slow-1",
        "the replayed task runs after the head"
    );
    q.ack(&replayed).await.expect("ack");
    assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
}

/// A session id that is not an identifier is refused at enqueue.
pub(super) async fn ordered_session_id_validated(fx: &QueueFixture) {
    let q = &*fx.queue;
    for bad in ["", "has space", "brace{tag}", "é"] {
        let t = Task::new("conformance", "x").with_session(bad);
        assert_invalid_input(q.enqueue(t).await, &format!("session id {bad:?}"));
    }
    assert_depth(q.depth().await.expect("depth"), 0, 0, 0, 0);
}
