//! Tick arithmetic, validation, and two schedulers on one local store.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::queue::TaskQueue;

const MIN: u64 = 60_000;

/// Stores enqueued tasks, deduplicating idempotency keys; nothing else.
#[derive(Debug, Default)]
struct Sink {
    keys: parking_lot::Mutex<std::collections::HashSet<String>>,
}

#[async_trait::async_trait]
impl TaskQueue for Sink {
    fn name(&self) -> &str {
        "sink"
    }
    fn capabilities(&self) -> crate::Capabilities {
        crate::Capabilities::default()
    }
    async fn enqueue(&self, task: Task) -> crate::Result<crate::Enqueued> {
        let key = task.idempotency_key.clone().unwrap_or_default();
        let duplicate = !self.keys.lock().insert(key);
        Ok(crate::Enqueued {
            id: task.id,
            duplicate,
        })
    }
    async fn lease(&self, _: usize, _: Duration) -> crate::Result<Vec<crate::Lease>> {
        Ok(Vec::new())
    }
    async fn ack(&self, _: &crate::Lease) -> crate::Result<()> {
        Ok(())
    }
    async fn nack(&self, _: &crate::Lease, _: crate::Nack) -> crate::Result<()> {
        Ok(())
    }
    async fn extend(&self, _: &crate::Lease, _: Duration) -> crate::Result<()> {
        Ok(())
    }
    async fn depth(&self) -> crate::Result<crate::Depth> {
        Ok(crate::Depth {
            ready: self.keys.lock().len() as u64,
            ..crate::Depth::default()
        })
    }
}

fn queue_for_tests() -> Arc<dyn TaskQueue> {
    Arc::new(Sink::default())
}

fn template() -> Task {
    Task::new("consolidate", "{}")
}

#[test]
fn bad_definitions_are_typed_errors() {
    for r in [
        Schedule::cron("nightly", "not a cron", "UTC", template()),
        Schedule::cron("nightly", "61 * * * *", "UTC", template()),
        Schedule::cron("nightly", "0 3 * * *", "Mars/Olympus", template()),
        Schedule::cron("bad name", "0 3 * * *", "UTC", template()),
        Schedule::every("eval", Duration::from_millis(10), template()),
        Schedule::every("eval", Duration::from_secs(5), Task::new("", "x")),
    ] {
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(crate::ErrorKind::InvalidConfig)
        );
    }
    assert!(Schedule::cron("nightly", "0 3 * * *", "Europe/Paris", template()).is_ok());
    assert!(Schedule::cron("secs", "*/10 * * * * *", "UTC", template()).is_ok());
}

#[test]
fn interval_ticks_count_from_creation() {
    let s = Schedule::every("e", Duration::from_secs(10), template())
        .expect("schedule")
        .with_created_ms(1_000_000);
    assert_eq!(s.ticks_between(0, 1_000_000, 10).expect("t"), Vec::<u64>::new());
    assert_eq!(
        s.ticks_between(0, 1_035_000, 10).expect("t"),
        [1_010_000, 1_020_000, 1_030_000]
    );
    assert_eq!(
        s.ticks_between(1_010_000, 1_030_000, 10).expect("t"),
        [1_020_000, 1_030_000]
    );
    assert_eq!(
        s.ticks_between(0, 1_035_000, 2).expect("t"),
        [1_020_000, 1_030_000]
    );
    assert_eq!(s.latest_tick(1_029_999).expect("t"), Some(1_020_000));
}

#[test]
fn cron_ticks_follow_the_time_zone() {
    // 2026-03-29 is the spring-forward day in Paris (UTC+1 -> UTC+2).
    let created = 1_774_656_000_000; // 2026-03-28T00:00:00Z
    let s = Schedule::cron("n", "0 3 * * *", "Europe/Paris", template())
        .expect("schedule")
        .with_created_ms(created);
    let ticks = s.ticks_between(0, created + 3 * 24 * 60 * MIN, 10).expect("t");
    let utc_hours: Vec<u64> = ticks.iter().map(|t| (t / (60 * MIN)) % 24).collect();
    // 03:00 Paris = 02:00Z before the change, 01:00Z after it.
    assert_eq!(utc_hours, [2, 1, 1]);
    let utc = Schedule::cron("u", "*/15 * * * *", "UTC", template())
        .expect("schedule")
        .with_created_ms(created);
    assert_eq!(
        utc.ticks_between(created, created + 60 * MIN, 10)
            .expect("t")
            .len(),
        4
    );
}

#[tokio::test]
async fn two_schedulers_fire_each_tick_once() {
    let store: Arc<dyn ScheduleStore> = Arc::new(LocalScheduleStore::new());
    let queue = queue_for_tests();
    let created = 10_000_000;
    let s = Schedule::every("tick", Duration::from_secs(1), template())
        .expect("schedule")
        .with_created_ms(created);
    store.put(&s).await.expect("put");
    let build = |owner: &str| {
        Scheduler::builder(store.clone(), queue.clone())
            .owner(owner)
            .catch_up_window(Duration::from_secs(30))
            .build()
            .expect("scheduler")
    };
    let (a, b) = (build("a"), build("b"));
    let (mut ra, mut rb) = (SchedulerReport::default(), SchedulerReport::default());
    let mut fired = Vec::new();
    // Interleaved polls, every 300 ms of (explicit) time over 20 s.
    for step in 0..=67u64 {
        let now = created + step * 300;
        let (x, rx) = if step % 2 == 0 {
            (&a, &mut ra)
        } else {
            (&b, &mut rb)
        };
        fired.extend(x.poll_at(now, rx).await.expect("poll"));
    }
    let mut ticks: Vec<u64> = fired.iter().map(|(_, t)| *t).collect();
    ticks.sort();
    let want: Vec<u64> = (1..=20).map(|k| created + k * 1000).collect();
    assert_eq!(ticks, want, "every tick exactly once");
    assert!(ra.fired > 0 && rb.fired > 0);
    // Pause: nothing fires; remove: gone from the list.
    store.set_paused("tick", true).await.expect("pause");
    assert!(a
        .poll_at(created + 25_000, &mut ra)
        .await
        .expect("poll")
        .is_empty());
    let listed = store.list().await.expect("list");
    assert!(listed[0].paused);
    assert_eq!(listed[0].last_fired_ms, Some(created + 20_000));
    store.set_paused("tick", false).await.expect("resume");
    let resumed = a.poll_at(created + 25_000, &mut ra).await.expect("poll");
    assert_eq!(resumed.len(), 5, "ticks within the window fire after a resume");
    assert!(store.remove("tick").await.expect("remove"));
    assert!(store.list().await.expect("list").is_empty());
    assert_eq!(
        store.set_paused("tick", true).await.map_err(|e| e.kind()),
        Err(crate::ErrorKind::NotFound)
    );
    let d = queue.depth().await.expect("depth");
    assert_eq!(d.ready, 25);
}

#[tokio::test]
async fn downtime_fires_at_most_one_catch_up() {
    let store: Arc<dyn ScheduleStore> = Arc::new(LocalScheduleStore::new());
    let queue = queue_for_tests();
    let created = 50_000_000;
    let s = Schedule::every("m", Duration::from_secs(60), template())
        .expect("schedule")
        .with_created_ms(created);
    store.put(&s).await.expect("put");
    let sch = Scheduler::builder(store.clone(), queue.clone())
        .catch_up_window(Duration::from_secs(150))
        .build()
        .expect("scheduler");
    let mut r = SchedulerReport::default();
    assert_eq!(
        sch.poll_at(created + 61_000, &mut r).await.expect("poll").len(),
        1
    );
    // Down for an hour: the 3 ticks within the last 150 s fire, plus one
    // catch-up (the latest) for the 56 older missed ticks.
    let back = created + 61 * MIN + 1_000;
    let fired = sch.poll_at(back, &mut r).await.expect("poll");
    let ticks: Vec<u64> = fired.iter().map(|(_, t)| *t).collect();
    assert_eq!(
        ticks,
        [back - 181_000, back - 121_000, back - 61_000, back - 1_000],
        "{fired:?}"
    );
    assert!(sch.poll_at(back + 1_000, &mut r).await.expect("poll").is_empty());
}

/// A claim that is never marked fired (its scheduler died) expires, and
/// another scheduler fires the tick late rather than never.
#[tokio::test(start_paused = true)]
async fn dead_claimant_tick_fires_after_claim_ttl() {
    let store: Arc<dyn ScheduleStore> = Arc::new(LocalScheduleStore::new());
    let queue = queue_for_tests();
    let created = 90_000_000;
    let s = Schedule::every("t", Duration::from_secs(1), template())
        .expect("schedule")
        .with_created_ms(created);
    store.put(&s).await.expect("put");
    let claimed = store
        .claim("t", &[created + 1000], "dead", Duration::from_secs(5))
        .await
        .expect("claim");
    assert_eq!(claimed, [created + 1000]);
    let live = Scheduler::builder(store.clone(), queue.clone())
        .claim_ttl(Duration::from_secs(5))
        .catch_up_window(Duration::from_secs(60))
        .build()
        .expect("scheduler");
    let mut r = SchedulerReport::default();
    let first = live.poll_at(created + 2_000, &mut r).await.expect("poll");
    assert_eq!(first, [("t".to_string(), created + 2000)]);
    tokio::time::advance(Duration::from_secs(6)).await;
    let later = live.poll_at(created + 8_000, &mut r).await.expect("poll");
    assert!(later.contains(&("t".to_string(), created + 1000)), "{later:?}");
}
