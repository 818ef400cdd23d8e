use super::*;
use crate::balance::{LeastConnections, RoundRobin, WeightedRoundRobin};
use crate::ErrorKind;

fn router(eject_after: u32) -> Router<u32> {
    Router::builder()
        .policy(LeastConnections::with_seed(1))
        .endpoint("a", 1, 1)
        .endpoint("b", 2, 1)
        .eject_after(eject_after, Duration::from_secs(10))
        .slow_start(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn status(r: &Router<u32>, id: &str) -> EndpointStatus {
    r.endpoints().into_iter().find(|e| e.id == id).unwrap()
}

#[test]
fn typed_errors_on_bad_config() {
    let e = Router::<u32>::builder().build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = Router::builder().endpoint("a", 1, 0).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = Router::builder()
        .endpoint("a", 1, MAX_WEIGHT + 1)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = Router::builder()
        .endpoint("a", 1, 1)
        .endpoint("a", 2, 1)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = Router::builder().endpoint("", 1, 1).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    let e = Router::builder()
        .endpoint("a", 1, 1)
        .decay(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);

    let r = Router::<u32>::builder().allow_empty().build().unwrap();
    assert_eq!(r.pick().unwrap_err().kind(), ErrorKind::Unavailable);
    r.add_endpoint("x", 7, 2).unwrap();
    assert_eq!(*r.pick().unwrap().value(), 7);
    assert_eq!(r.add_endpoint("x", 8, 1).unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        r.add_endpoint("y", 8, 0).unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
    assert_eq!(r.set_weight("x", 0).unwrap_err().kind(), ErrorKind::InvalidConfig);
    assert_eq!(r.set_weight("nope", 1).unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(
        r.report_queue_depth("nope", 1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(r.remove_endpoint("nope").unwrap_err().kind(), ErrorKind::NotFound);
    r.remove_endpoint("x").unwrap();
    assert!(r.is_empty());
    assert_eq!(r.pick().unwrap_err().kind(), ErrorKind::Unavailable);
}

#[test]
fn guards_track_in_flight() {
    let r = router(5);
    let g1 = r.pick().unwrap();
    let g2 = r.pick().unwrap();
    // Least connections spreads two picks over both endpoints.
    assert_ne!(g1.id(), g2.id());
    assert_eq!(r.endpoints().iter().map(|e| e.in_flight).sum::<u32>(), 2);
    let id1 = g1.id().to_string();
    g1.success(Duration::from_millis(20));
    assert_eq!(status(&r, &id1).in_flight, 0);
    assert_eq!(status(&r, &id1).ewma_latency, Duration::from_millis(20));
    let id2 = g2.id().to_string();
    drop(g2); // cancelled: nothing recorded
    let s2 = status(&r, &id2);
    assert_eq!(
        (s2.in_flight, s2.ewma_latency, s2.consecutive_failures),
        (0, Duration::ZERO, 0)
    );
    // A guard outlives the router handle and a removal.
    let g = r.pick().unwrap();
    let id = g.id().to_string();
    r.remove_endpoint(&id).unwrap();
    assert!(g.value() == &1 || g.value() == &2);
    g.failure();
}

#[test]
fn failures_are_penalised() {
    let r = router(0);
    let g = r.pick().unwrap();
    let id = g.id().to_string();
    g.success(Duration::from_millis(5));
    let g = loop {
        let g = r.pick().unwrap();
        if g.id() == id {
            break g;
        }
    };
    g.failure();
    let s = status(&r, &id);
    assert!(s.ewma_latency >= PeakEwma::DEFAULT_FAILURE_PENALTY, "{s:?}");
    assert!(!s.ejected, "ejection disabled");
}

#[test]
fn queue_depth_is_reported() {
    let r = Router::builder()
        .policy(crate::balance::ShortestQueue::with_seed(3))
        .endpoint("a", 'a', 1)
        .endpoint("b", 'b', 1)
        .build()
        .unwrap();
    r.report_queue_depth("a", 10).unwrap();
    for _ in 0..20 {
        assert_eq!(*r.pick().unwrap().value(), 'b');
    }
    assert_eq!(status_c(&r, "a").queue_depth, 10);
}

fn status_c(r: &Router<char>, id: &str) -> EndpointStatus {
    r.endpoints().into_iter().find(|e| e.id == id).unwrap()
}

#[tokio::test(start_paused = true)]
async fn ejection_and_slow_start_readmission() {
    let r = Router::builder()
        .policy(WeightedRoundRobin::new())
        .endpoint("a", 'a', 1)
        .endpoint("b", 'b', 1)
        .eject_after(3, Duration::from_secs(10))
        .slow_start(Duration::from_secs(20))
        .build()
        .unwrap();
    // Fail "a" three times in a row (a success in between resets the count).
    let mut fails = 0;
    let mut reset_once = false;
    while fails < 3 {
        let g = r.pick().unwrap();
        if g.id() == "a" {
            if fails == 2 && !reset_once {
                reset_once = true;
                g.success(Duration::from_millis(1));
                fails = 0;
                continue;
            }
            g.failure();
            fails += 1;
        } else {
            g.success(Duration::from_millis(1));
        }
    }
    assert!(status_c(&r, "a").ejected);
    for _ in 0..50 {
        assert_eq!(r.pick().unwrap().id(), "b", "ejected endpoint never picked");
    }
    // All ejected → Unavailable, not a hang.
    for _ in 0..3 {
        r.pick().unwrap().failure();
    }
    assert_eq!(r.pick().unwrap_err().kind(), ErrorKind::Unavailable);

    // After the cool-down both are back, with no latency estimate.
    tokio::time::advance(Duration::from_secs(10)).await;
    let s = status_c(&r, "a");
    assert!(!s.ejected && s.ewma_latency == Duration::ZERO, "{s:?}");
    assert!(r.pick().is_ok());
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_weight() {
    let r = Router::builder()
        .policy(WeightedRoundRobin::new())
        .endpoint("a", 'a', 1)
        .endpoint("b", 'b', 1)
        .eject_after(1, Duration::from_secs(10))
        .slow_start(Duration::from_secs(100))
        .build()
        .unwrap();
    let g = loop {
        let g = r.pick().unwrap();
        if g.id() == "a" {
            break g;
        }
    };
    g.failure();
    assert!(status_c(&r, "a").ejected);
    tokio::time::advance(Duration::from_secs(10)).await;
    // Re-admitted at 10 % of its weight: 1 pick of "a" per 11.
    let count = |r: &Router<char>, n: usize| (0..n).filter(|_| r.pick().unwrap().id() == "a").count();
    let n = count(&r, 110);
    assert!((9..=11).contains(&n), "{n}");
    // Half-way through slow start: 50 %.
    tokio::time::advance(Duration::from_secs(50)).await;
    let n = count(&r, 150);
    assert!((49..=51).contains(&n), "{n}");
    // Done: equal weights.
    tokio::time::advance(Duration::from_secs(50)).await;
    let n = count(&r, 100);
    assert!((49..=51).contains(&n), "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_router() {
    let r = Router::builder()
        .endpoint("a", 'a', 3)
        .endpoint("b", 'b', 1)
        .endpoint("c", 'c', 1)
        .build()
        .unwrap();
    assert_eq!(r.policy_name(), "least_loaded_of_d");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            tokio::spawn(async move {
                for i in 0..300 {
                    let g = r.pick().unwrap();
                    tokio::task::yield_now().await;
                    match (i + t) % 3 {
                        0 => g.success_elapsed(),
                        1 => g.success(Duration::from_millis(2)),
                        _ => drop(g),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(r.endpoints().iter().all(|e| e.in_flight == 0 && !e.ejected));
}

#[test]
fn router_is_send_sync_and_concurrent() {
    fn assert_send_sync<X: Send + Sync>() {}
    assert_send_sync::<Router<String>>();
    assert_send_sync::<PickGuard<String>>();
    let r = Router::builder()
        .policy(RoundRobin::new())
        .endpoint("a", 0u8, 1)
        .endpoint("b", 1u8, 1)
        .endpoint("c", 2u8, 1)
        .build()
        .unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let r = r.clone();
            s.spawn(move || {
                for i in 0..2_000 {
                    let g = r.pick().unwrap();
                    if i % 2 == 0 {
                        g.success(Duration::from_micros(50));
                    }
                }
            });
        }
    });
    let st = r.endpoints();
    assert!(st.iter().all(|e| e.in_flight == 0), "{st:?}");
}
