use super::*;

fn ep(in_flight: u32, queue_depth: u32) -> EndpointLoad {
    EndpointLoad {
        in_flight,
        queue_depth,
        ..EndpointLoad::default()
    }
}

fn all_policies(seed: u64) -> Vec<Box<dyn Policy>> {
    vec![
        Box::new(ShortestQueue::with_seed(seed)),
        Box::new(RoundRobin::new()),
        Box::new(LeastConnections::with_seed(seed)),
        Box::new(WeightedRoundRobin::new()),
        Box::new(RandomPick::with_seed(seed)),
        Box::new(PowerOfTwoChoices::with_seed(seed)),
        Box::new(PeakEwmaP2c::with_seed(seed)),
        Box::new(LeastLoadedOfD::with_seed(seed)),
        Box::new(LeastLoadedOfD::with_seed(seed).with_d(2)),
    ]
}

#[test]
fn none_on_empty_and_all_unhealthy() {
    let down = vec![
        EndpointLoad {
            healthy: false,
            ..EndpointLoad::default()
        };
        5
    ];
    for mut p in all_policies(1) {
        assert_eq!(p.pick(&[]), None, "{}", p.name());
        assert_eq!(p.pick(&down), None, "{}", p.name());
        assert_eq!(p.pick(&down[..1]), None, "{}", p.name());
    }
}

#[test]
fn unhealthy_never_picked() {
    let mut eps: Vec<EndpointLoad> = (0..10).map(|i| ep(i % 3, i % 4)).collect();
    for i in [0, 3, 4, 7, 9] {
        eps[i].healthy = false;
    }
    for mut p in all_policies(7) {
        for _ in 0..2_000 {
            let i = p.pick(&eps).expect("a healthy endpoint exists");
            assert!(eps[i].healthy, "{} picked unhealthy {i}", p.name());
        }
    }
    // A single healthy endpoint is always the answer.
    let mut one = vec![
        EndpointLoad {
            healthy: false,
            ..EndpointLoad::default()
        };
        6
    ];
    one[4].healthy = true;
    for mut p in all_policies(3) {
        for _ in 0..50 {
            assert_eq!(p.pick(&one), Some(4), "{}", p.name());
        }
    }
}

#[test]
fn weighted_round_robin_is_exact_and_smooth() {
    let eps = [
        EndpointLoad {
            weight: 3,
            ..EndpointLoad::default()
        },
        EndpointLoad {
            weight: 1,
            ..EndpointLoad::default()
        },
    ];
    let mut p = WeightedRoundRobin::new();
    let seq: Vec<usize> = (0..8).map(|_| p.pick(&eps).unwrap()).collect();
    assert_eq!(seq, vec![0, 0, 1, 0, 0, 0, 1, 0]);
    for _ in 0..25 {
        let mut counts = [0; 2];
        for _ in 0..4 {
            counts[p.pick(&eps).unwrap()] += 1;
        }
        assert_eq!(counts, [3, 1]);
    }
    // 5:2:1 over cycles of 8, with one endpoint going unhealthy.
    let mut eps = vec![
        EndpointLoad {
            weight: 5,
            ..EndpointLoad::default()
        },
        EndpointLoad {
            weight: 2,
            ..EndpointLoad::default()
        },
        EndpointLoad {
            weight: 1,
            ..EndpointLoad::default()
        },
    ];
    let mut p = WeightedRoundRobin::new();
    let mut counts = [0; 3];
    for _ in 0..80 {
        counts[p.pick(&eps).unwrap()] += 1;
    }
    assert_eq!(counts, [50, 20, 10]);
    eps[0].healthy = false;
    let mut p = WeightedRoundRobin::new();
    let mut counts = [0; 3];
    for _ in 0..30 {
        counts[p.pick(&eps).unwrap()] += 1;
    }
    assert_eq!(counts, [0, 20, 10]);
}

#[test]
fn round_robin_rotates_over_healthy() {
    let mut eps = vec![ep(0, 0); 4];
    eps[2].healthy = false;
    let mut p = RoundRobin::new();
    let seq: Vec<usize> = (0..6).map(|_| p.pick(&eps).unwrap()).collect();
    assert_eq!(seq, vec![0, 1, 3, 0, 1, 3]);
}

#[test]
fn least_loaded_policies_pick_the_minimum() {
    let eps = [ep(5, 0), ep(2, 9), ep(3, 0), ep(9, 9)];
    let mut lc = LeastConnections::with_seed(1);
    let mut sq = ShortestQueue::with_seed(1);
    for _ in 0..100 {
        assert_eq!(lc.pick(&eps), Some(1));
        assert_eq!(sq.pick(&eps), Some(2));
    }
    // Ties are broken at random: both tied endpoints get picked.
    let tied = [ep(1, 0), ep(4, 0), ep(1, 0)];
    let mut seen = [0; 3];
    for _ in 0..200 {
        seen[lc.pick(&tied).unwrap()] += 1;
    }
    assert_eq!(seen[1], 0);
    assert!(seen[0] > 0 && seen[2] > 0, "{seen:?}");
}

#[test]
fn p2c_never_picks_the_worst_of_many() {
    // With two distinct candidates, the single most loaded endpoint can
    // never win.
    let eps: Vec<EndpointLoad> = (0..10).map(|i| ep(if i == 6 { 100 } else { i }, 0)).collect();
    let mut p = PowerOfTwoChoices::with_seed(5);
    let slow: Vec<EndpointLoad> = (0..10)
        .map(|i| EndpointLoad {
            ewma_latency: Duration::from_millis(if i == 3 { 1_000 } else { 10 }),
            ..EndpointLoad::default()
        })
        .collect();
    let mut q = PeakEwmaP2c::with_seed(5);
    for _ in 0..1_000 {
        assert_ne!(p.pick(&eps), Some(6));
        assert_ne!(q.pick(&slow), Some(3));
    }
}

#[test]
fn peak_ewma_p2c_is_weight_scaled() {
    // Same latency and load; weight 3 endpoint has a third of the cost.
    let eps = [
        EndpointLoad {
            in_flight: 2,
            weight: 3,
            ewma_latency: Duration::from_millis(10),
            ..EndpointLoad::default()
        },
        EndpointLoad {
            in_flight: 0,
            weight: 1,
            ewma_latency: Duration::from_millis(10),
            ..EndpointLoad::default()
        },
    ];
    // cost a = 10*3/3 = 10, b = 10*1/1 = 10: tie → first drawn; make a clearly cheaper.
    let mut eps2 = eps;
    eps2[0].in_flight = 1;
    let mut p = PeakEwmaP2c::with_seed(9);
    for _ in 0..100 {
        assert_eq!(p.pick(&eps2), Some(0));
    }
}

#[test]
fn seeded_policies_are_deterministic() {
    let eps: Vec<EndpointLoad> = (0..37)
        .map(|i| EndpointLoad {
            in_flight: (i * 7 % 5) as u32,
            queue_depth: (i * 3 % 4) as u32,
            ewma_latency: Duration::from_micros(100 + (i * 13 % 17) as u64 * 50),
            weight: 1 + (i % 3) as u32,
            healthy: i % 11 != 0,
        })
        .collect();
    let run = |seed| {
        all_policies(seed)
            .into_iter()
            .map(|mut p| (0..500).map(|_| p.pick(&eps).unwrap()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}

#[test]
fn least_loaded_of_d_never_picks_the_d_minus_1_most_loaded() {
    // Distinct loads 0..10; with 4 distinct candidates the winner is
    // never one of the 3 most loaded. (A fresh policy per pick: one
    // policy fed the same snapshot again would count its own picks.)
    let eps: Vec<EndpointLoad> = (0..10).map(|i| ep(i, 0)).collect();
    assert_eq!(LeastLoadedOfD::with_seed(0).d(), LeastLoadedOfD::DEFAULT_D);
    let mut seen = [0u32; 10];
    for seed in 0..5_000 {
        let i = LeastLoadedOfD::with_seed(seed).pick(&eps).unwrap();
        assert!(i < 7, "picked {i}");
        seen[i] += 1;
    }
    // Not a full scan: endpoints other than the minimum win too.
    assert!(seen[0] > 0 && seen[1] > 0 && seen[2] > 0, "{seen:?}");
    // d ≥ n is an exact minimum.
    assert_eq!(LeastLoadedOfD::with_seed(0).with_d(64).d(), LeastLoadedOfD::MAX_D);
    let few: Vec<EndpointLoad> = [5, 3, 9, 4].iter().map(|&f| ep(f, 0)).collect();
    for seed in 0..200 {
        assert_eq!(LeastLoadedOfD::with_seed(seed).with_d(64).pick(&few), Some(1));
    }
}

#[test]
fn least_loaded_of_d_is_weight_scaled_and_breaks_ties_on_latency() {
    let mk = |in_flight, weight, ms| EndpointLoad {
        in_flight,
        weight,
        ewma_latency: Duration::from_millis(ms),
        ..EndpointLoad::default()
    };
    // A fresh policy per pick (see above).
    let pick = |eps: &[EndpointLoad], seed: u64| LeastLoadedOfD::with_seed(seed).with_d(2).pick(eps);
    // (5+1)/3 = (1+1)/1 → latency per weight decides: 10/3 ms < 50 ms.
    let eps = [mk(5, 3, 10), mk(1, 1, 50)];
    for seed in 0..100 {
        assert_eq!(pick(&eps, seed), Some(0));
    }
    // Weight makes a busier endpoint cheaper: (4+1)/3 < (2+1)/1.
    let eps = [mk(2, 1, 1), mk(4, 3, 1_000)];
    for seed in 0..100 {
        assert_eq!(pick(&eps, seed), Some(1));
    }
    // Same load and latency per weight: both get picked.
    let eps = [mk(0, 1, 10), mk(0, 1, 10)];
    let mut seen = [0; 2];
    for seed in 0..200 {
        seen[pick(&eps, seed).unwrap()] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    // An endpoint without an estimate is costed at the default latency.
    let eps = [mk(0, 1, 0), mk(0, 1, 5)];
    for seed in 0..100 {
        let mut q = LeastLoadedOfD::with_seed(seed)
            .with_d(2)
            .default_latency(Duration::from_millis(1));
        assert_eq!(q.pick(&eps), Some(0));
    }
}

#[test]
fn least_loaded_of_d_spreads_over_a_stale_snapshot() {
    // The same snapshot over and over (load refreshed rarely): picks
    // spread evenly instead of herding onto the first minimum.
    let stale: Vec<EndpointLoad> = [0, 0, 0, 0, 3, 3].iter().map(|&f| ep(f, 0)).collect();
    let mut p = LeastLoadedOfD::with_seed(8).with_d(6);
    let mut seen = [0u32; 6];
    for _ in 0..4 {
        seen[p.pick(&stale).unwrap()] += 1;
    }
    assert_eq!(seen, [1, 1, 1, 1, 0, 0]);
    for _ in 0..12 {
        seen[p.pick(&stale).unwrap()] += 1;
    }
    // 0,0,0,0,3,3 + 16 picks levels out at 4 + 1 each … within one.
    assert!(seen[..4].iter().all(|&c| (3..=4).contains(&c)), "{seen:?}");
    // A fresh snapshot (load changed) resets the correction: endpoint 0
    // now shows 1 in flight, the others 9 → 0 wins again.
    let mut fresh = stale.clone();
    for (i, e) in fresh.iter_mut().enumerate() {
        e.in_flight = if i == 0 { 1 } else { 9 };
    }
    assert_eq!(p.pick(&fresh), Some(0));
    // A live snapshot that shows each pick resets every time: pure
    // least-loaded on what it shows.
    let mut live: Vec<EndpointLoad> = (0..4).map(|i| ep(i, 0)).collect();
    let mut q = LeastLoadedOfD::with_seed(8).with_d(4);
    for _ in 0..20 {
        let i = q.pick(&live).unwrap();
        let min = live.iter().map(|e| e.in_flight).min().unwrap();
        assert_eq!(live[i].in_flight, min);
        live[i].in_flight += 1;
    }
}
