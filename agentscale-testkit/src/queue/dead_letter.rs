//! Dead letters: attempts, reasons, listing, replay, malformed entries.

use super::support::*;

/// Attempts accumulate across retries; a worker that dead-letters at
/// `max_attempts` sees attempts 1, 2, 3 and the dead letter records 3.
pub(super) async fn attempts_accumulate_to_dead_letter(fx: &QueueFixture) {
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
pub(super) async fn dead_letter_keeps_reason(fx: &QueueFixture) {
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
pub(super) async fn replay_dead_letter(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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

/// Malformed raw entries are dead-lettered with a reason; valid tasks
/// around them are still delivered.
pub(super) async fn malformed_entries_dead_lettered(fx: &QueueFixture) {
    let q = &*fx.queue;
    let c = caps(fx);
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
