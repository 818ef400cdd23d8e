//! `Policy::pick` cost over 100 endpoints with varied loads, for every policy.
//!
//! `cargo run --release --example bench_policy [-- --endpoints 100 --picks 2000000]`
//!
//! Ends with one `RESULT policy_pick_ns_<policy> ours=<ns> baseline=target:200
//! ratio=<ours/200>` line per policy, `ours` being the **median** batch (the
//! target is the 200 ns budget per pick).
#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use agentscale_core::balance::{
    EndpointLoad, LeastConnections, LeastLoadedOfD, PeakEwmaP2c, Policy, PowerOfTwoChoices, RandomPick,
    RoundRobin, Router, ShortestQueue, WeightedRoundRobin,
};
use clap::Parser;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
struct Args {
    /// Endpoints per snapshot.
    #[arg(long, default_value_t = 100)]
    endpoints: usize,
    /// Picks measured per policy.
    #[arg(long, default_value_t = 2_000_000)]
    picks: usize,
    /// Fraction of endpoints marked unhealthy (ejected).
    #[arg(long, default_value_t = 0.05)]
    unhealthy: f64,
}

const TARGET_NS: f64 = 200.0;

fn snapshots(n: usize, unhealthy: f64, seed: u64) -> Vec<Vec<EndpointLoad>> {
    let mut rng = SmallRng::seed_from_u64(seed);
    // Several distinct snapshots so branch predictors cannot learn one.
    (0..16)
        .map(|_| {
            (0..n)
                .map(|_| EndpointLoad {
                    in_flight: rng.random_range(0..32),
                    queue_depth: rng.random_range(0..64),
                    ewma_latency: Duration::from_micros(rng.random_range(500..200_000)),
                    weight: if rng.random_bool(0.25) { 3 } else { 1 },
                    healthy: !rng.random_bool(unhealthy),
                })
                .collect()
        })
        .collect()
}

/// ns per pick over many short batches of `BATCH` picks: (median, best).
/// The median is the result; the best batch is printed beside it only to
/// show how much a shared, loaded machine adds.
fn measure(policy: &mut dyn Policy, snaps: &[Vec<EndpointLoad>], picks: usize) -> (f64, f64) {
    // Warm-up (and WeightedRoundRobin's one-time state allocation).
    for i in 0..picks / 10 {
        black_box(policy.pick(black_box(&snaps[i % snaps.len()])));
    }
    let mut per_batch = Vec::with_capacity(picks / BATCH + 1);
    let mut sum = 0usize;
    for _ in 0..(picks / BATCH).max(1) {
        let start = Instant::now();
        for i in 0..BATCH {
            sum = sum.wrapping_add(policy.pick(black_box(&snaps[i & 15])).unwrap_or(0));
        }
        per_batch.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    black_box(sum);
    per_batch.sort_by(f64::total_cmp);
    (per_batch[per_batch.len() / 2], per_batch[0])
}

const BATCH: usize = 1_000;

fn main() {
    let args = Args::parse();
    let snaps = snapshots(args.endpoints, args.unhealthy, 7);
    let mut policies: Vec<Box<dyn Policy>> = vec![
        Box::new(ShortestQueue::with_seed(1)),
        Box::new(RoundRobin::new()),
        Box::new(LeastConnections::with_seed(1)),
        Box::new(WeightedRoundRobin::new()),
        Box::new(RandomPick::with_seed(1)),
        Box::new(PowerOfTwoChoices::with_seed(1)),
        Box::new(PeakEwmaP2c::with_seed(1)),
        Box::new(LeastLoadedOfD::with_seed(1)),
    ];
    // The default policy's d swept up to sqrt(100) (labelled with its d).
    let extra: Vec<(&'static str, Box<dyn Policy>)> = vec![(
        "least_loaded_of_d_d10",
        Box::new(LeastLoadedOfD::with_seed(1).with_d(10)),
    )];
    let mut policies: Vec<(&'static str, Box<dyn Policy>)> =
        policies.drain(..).map(|p| (p.name(), p)).chain(extra).collect();
    println!(
        "Policy::pick over {} endpoints ({:.0}% unhealthy, varied in-flight/queue/latency/weights), {} picks each, batches of 1000: median batch (the result) / best batch",
        args.endpoints,
        args.unhealthy * 100.0,
        args.picks
    );
    println!(
        "{:<22} {:>10} {:>12} {:>8}",
        "policy", "median ns", "best ns", "target"
    );
    let mut results = Vec::new();
    for (name, p) in policies.iter_mut() {
        let (median, best) = measure(p.as_mut(), &snaps, args.picks);
        println!("{:<22} {:>10.1} {:>12.1} {:>8.0}", name, median, best, TARGET_NS);
        results.push((*name, median));
    }
    // The live router around the default policy: snapshot + pick + guard.
    let mut b = Router::builder().policy(LeastLoadedOfD::with_seed(1));
    for i in 0..args.endpoints {
        b = b.endpoint(format!("e{i}"), i, 1 + (i % 3) as u32);
    }
    match b.build() {
        Ok(router) => {
            for i in 0..args.endpoints {
                let _ = router.report_queue_depth(&format!("e{i}"), (i % 7) as u32);
            }
            let n = BATCH;
            let mut per_batch = Vec::new();
            for _ in 0..(args.picks / 4 / BATCH).max(1) {
                let start = Instant::now();
                for i in 0..n {
                    if let Ok(g) = router.pick() {
                        if i % 2 == 0 {
                            g.success(Duration::from_micros(100 + (i % 50) as u64));
                        }
                    }
                }
                per_batch.push(start.elapsed().as_nanos() as f64 / n as f64);
            }
            per_batch.sort_by(f64::total_cmp);
            let ns = per_batch[per_batch.len() / 2];
            println!(
                "{:<22} {:>10.1} {:>12}  (Router::pick + guard, median batch, informational)",
                "router_default", ns, "-"
            );
        }
        Err(e) => println!("router build failed: {e}"),
    }
    for (name, ns) in results {
        println!(
            "RESULT policy_pick_ns_{name} ours={ns:.1} baseline=target:{TARGET_NS:.0} ratio={:.3}",
            ns / TARGET_NS
        );
    }
}
