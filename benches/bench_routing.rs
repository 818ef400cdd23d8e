//! Routing under agent workloads: every policy over the simulated scenarios
//! (a)–(e) of docs/load-balancing.md, plus tower's `p2c` balancer as the anchor on the
//! tower scenario (b).
//!
//! `cargo run --release --example bench_routing [-- --seed 1]`
//!
//! Two harnesses, both in virtual time:
//! * the deterministic discrete-event simulator
//!   (`agentscale_core::balance::sim`) runs every `Policy` on every scenario;
//! * a tokio runtime with a paused clock runs tower's
//!   `Balance<PeakEwmaDiscover>` / `Balance<PendingRequestsDiscover>` AND our
//!   `Router` (default policy) over the *same* tower `Service` endpoints
//!   (sleep-based, so they see virtual time), with the same per-request
//!   latency draws, the same closed loop of callers and the same decay and
//!   default RTT. That side-by-side run gives the headline
//!   `routing_p99_ms_tower_scenario` figure.
//!
//! Ends with `RESULT` lines (see docs/load-balancing.md).
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use agentscale_core::balance::sim::{self, Report, Scenario, ServiceModel};
use agentscale_core::balance::{
    LeastConnections, LeastLoadedOfD, PeakEwmaP2c, Policy, PowerOfTwoChoices, RandomPick, RoundRobin, Router,
    ShortestQueue, WeightedRoundRobin,
};
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover, PendingRequestsDiscover};
use tower::util::BoxService;
use tower::{Service, ServiceExt};

#[derive(Parser, Debug)]
struct Args {
    /// Seed of the arrival/work streams and of every policy's RNG.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn policies(seed: u64) -> Vec<Box<dyn Policy>> {
    vec![
        Box::new(RoundRobin::new()),
        Box::new(WeightedRoundRobin::new()),
        Box::new(RandomPick::with_seed(seed)),
        Box::new(ShortestQueue::with_seed(seed)),
        Box::new(LeastConnections::with_seed(seed)),
        Box::new(PowerOfTwoChoices::with_seed(seed)),
        Box::new(PeakEwmaP2c::with_seed(seed)),
        Box::new(LeastLoadedOfD::with_seed(seed)),
    ]
}

/// The number of choices of `LeastLoadedOfD`, swept (the default is 4).
const D_SWEEP: [usize; 6] = [2, 3, 4, 5, 6, 16];

/// p99 (ms) of `LeastLoadedOfD` with `d` choices on `sc`.
fn p99_with_d(sc: &Scenario, d: usize, seed: u64) -> f64 {
    ms(sim::run(sc, &mut LeastLoadedOfD::with_seed(seed).with_d(d)).p99)
}

fn table(sc: &Scenario, seed: u64) -> Vec<Report> {
    println!("\n### {}\n", sc.name);
    println!("| policy | p50 ms | p99 ms | p99.9 ms | mean ms | throughput/s |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut out = Vec::new();
    for mut p in policies(seed) {
        let r = sim::run(sc, p.as_mut());
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.policy,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            ms(r.mean),
            r.throughput_per_s
        );
        out.push(r);
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn p99_of<'a>(reports: &'a [Report], policy: &str) -> &'a Report {
    reports.iter().find(|r| r.policy == policy).unwrap_or(&reports[0])
}

/// tower's balancer takes its own RNG trait; feed it a seeded SmallRng.
struct SeededRng(SmallRng);

impl tower::util::rng::Rng for SeededRng {
    fn next_u64(&mut self) -> u64 {
        self.0.random()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Balancer {
    TowerPeakEwma,
    TowerPending,
    OursDefault,
    OursLeastConnections,
}

impl Balancer {
    fn name(self) -> &'static str {
        match self {
            Balancer::TowerPeakEwma => "tower_p2c_peak_ewma",
            Balancer::TowerPending => "tower_p2c_pending_requests",
            Balancer::OursDefault => "router_least_loaded_of_d (default)",
            Balancer::OursLeastConnections => "router_least_connections",
        }
    }
}

struct HarnessResult {
    p50: f64,
    p99: f64,
    p999: f64,
    throughput: f64,
    per_endpoint: Vec<u64>,
}

const DEFAULT_RTT: Duration = Duration::from_millis(30);
const DECAY: Duration = Duration::from_secs(10);

/// Scenario (b) in a paused-clock tokio runtime: `callers` closed-loop
/// callers, `requests` requests; request i sleeps `u[i] × bound` on the
/// endpoint it is sent to.
fn tokio_harness(
    kind: Balancer,
    bounds: &[Duration],
    callers: usize,
    requests: usize,
    seed: u64,
) -> HarnessResult {
    let mut draws = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let u: Vec<f64> = (0..requests).map(|_| draws.random::<f64>()).collect();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    rt.block_on(async move {
        let counts = std::sync::Arc::new(parking_lot::Mutex::new(vec![0u64; bounds.len()]));
        let endpoint = |i: usize, bound: Duration| {
            let counts = counts.clone();
            tower::service_fn(move |u: f64| {
                counts.lock()[i] += 1;
                let d = bound.mul_f64(u);
                async move {
                    tokio::time::sleep(d).await;
                    Ok::<(), Infallible>(())
                }
            })
        };
        let services: Vec<Svc> = bounds
            .iter()
            .enumerate()
            .map(|(i, b)| BoxService::new(endpoint(i, *b)))
            .collect();
        let mut lb = match kind {
            Balancer::TowerPeakEwma | Balancer::TowerPending => {
                let rng = SeededRng(SmallRng::seed_from_u64(seed));
                let list = ServiceList::new(services);
                let bal: Box<dyn TowerBal> = if kind == Balancer::TowerPeakEwma {
                    Box::new(Balance::from_rng(
                        PeakEwmaDiscover::new(list, DEFAULT_RTT, DECAY, CompleteOnResponse::default()),
                        rng,
                    ))
                } else {
                    Box::new(Balance::from_rng(
                        PendingRequestsDiscover::new(list, CompleteOnResponse::default()),
                        rng,
                    ))
                };
                Lb::Tower(bal)
            }
            Balancer::OursDefault | Balancer::OursLeastConnections => {
                let mut b = Router::builder().decay(DECAY);
                b = if kind == Balancer::OursDefault {
                    b.policy(LeastLoadedOfD::with_seed(seed).default_latency(DEFAULT_RTT))
                } else {
                    b.policy(LeastConnections::with_seed(seed))
                };
                for (i, svc) in services.into_iter().enumerate() {
                    b = b.endpoint(format!("e{i}"), parking_lot::Mutex::new(svc), 1);
                }
                match b.build() {
                    Ok(r) => Lb::Ours(r),
                    Err(e) => panic!("router: {e}"),
                }
            }
        };
        let start = tokio::time::Instant::now();
        let mut latencies: Vec<u64> = Vec::with_capacity(requests);
        let mut inflight: FuturesUnordered<Pin<Box<dyn Future<Output = u64>>>> = FuturesUnordered::new();
        let mut next = 0usize;
        while next < requests || !inflight.is_empty() {
            while inflight.len() < callers && next < requests {
                let fut: Pin<Box<dyn Future<Output = u64>>> = match &mut lb {
                    Lb::Tower(bal) => {
                        let f = bal.issue(u[next]).await;
                        let t0 = tokio::time::Instant::now();
                        Box::pin(async move {
                            let _ = f.await;
                            t0.elapsed().as_nanos() as u64
                        })
                    }
                    Lb::Ours(router) => {
                        let guard = match router.pick() {
                            Ok(g) => g,
                            Err(e) => panic!("pick: {e}"),
                        };
                        let f = guard.value().lock().call(u[next]);
                        let t0 = tokio::time::Instant::now();
                        Box::pin(async move {
                            let _ = f.await;
                            let lat = t0.elapsed();
                            guard.success(lat);
                            lat.as_nanos() as u64
                        })
                    }
                };
                inflight.push(fut);
                next += 1;
            }
            if let Some(lat) = inflight.next().await {
                latencies.push(lat);
            }
        }
        let span = start.elapsed().as_secs_f64();
        latencies.sort_unstable();
        let pct = |q: f64| {
            let idx = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[idx] as f64 / 1e6
        };
        let per_endpoint = counts.lock().clone();
        HarnessResult {
            p50: pct(0.5),
            p99: pct(0.99),
            p999: pct(0.999),
            throughput: latencies.len() as f64 / span,
            per_endpoint,
        }
    })
}

type Svc = BoxService<f64, (), Infallible>;
type BoxFut = Pin<Box<dyn Future<Output = Result<(), tower::BoxError>>>>;

enum Lb {
    Tower(Box<dyn TowerBal>),
    Ours(Router<parking_lot::Mutex<Svc>>),
}

/// Object-safe wrapper so both tower balancer types go through one loop.
trait TowerBal {
    fn issue(&mut self, u: f64) -> Pin<Box<dyn Future<Output = BoxFut> + '_>>;
}

impl<S> TowerBal for S
where
    S: Service<f64, Error = tower::BoxError> + 'static,
    S::Future: 'static,
{
    // Deliberately yields the response future: readiness is awaited now, the
    // response later, concurrently with other requests.
    #[allow(clippy::async_yields_async)]
    fn issue(&mut self, u: f64) -> Pin<Box<dyn Future<Output = BoxFut> + '_>> {
        Box::pin(async move {
            match self.ready().await {
                Ok(svc) => {
                    let f = svc.call(u);
                    Box::pin(async move { f.await.map(|_| ()) }) as BoxFut
                }
                Err(e) => Box::pin(async move { Err(e) }) as BoxFut,
            }
        })
    }
}

fn main() {
    let args = Args::parse();
    let seed = args.seed;
    let wall = std::time::Instant::now();
    println!("# bench_routing (seed {seed}; virtual time; deterministic)");

    // (a) agent mix at 50 / 80 / 95 % load.
    let mut a95 = Vec::new();
    for load in [0.5, 0.8, 0.95] {
        let r = table(&Scenario::agent_mix(load, seed), seed);
        if load == 0.95 {
            a95 = r;
        }
    }
    // (b) tower's scenario in the simulator.
    let tower_sc = Scenario::tower(seed);
    let b_sim = table(&tower_sc, seed);
    // (c) slow replica.
    let c = table(&Scenario::slow_replica(seed), seed);
    // (d) heterogeneous capacity.
    table(&Scenario::heterogeneous(seed), seed);
    // (e) stale load information.
    for refresh in [
        Duration::from_millis(100),
        Duration::from_secs(1),
        Duration::from_secs(10),
    ] {
        table(&Scenario::stale(refresh, seed), seed);
    }

    // (b) side by side with tower in a paused tokio runtime.
    let bounds: Vec<Duration> = tower_sc
        .replicas
        .iter()
        .map(|r| match r.service {
            ServiceModel::UniformUpTo { max } => max,
            ServiceModel::Scaled { .. } => Duration::from_millis(10),
        })
        .collect();
    println!("\n### tower scenario, tokio paused-clock harness (same endpoints, draws and caller loop)\n");
    println!("| balancer | p50 ms | p99 ms | p99.9 ms | throughput/s | requests per endpoint (1ms, 4×10ms, 4×100ms, 1000ms) |");
    println!("|---|---:|---:|---:|---:|---|");
    let mut harness = Vec::new();
    for kind in [
        Balancer::TowerPeakEwma,
        Balancer::TowerPending,
        Balancer::OursDefault,
        Balancer::OursLeastConnections,
    ] {
        let r = tokio_harness(kind, &bounds, 50, 50_000, seed);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} | {:?} |",
            kind.name(),
            r.p50,
            r.p99,
            r.p999,
            r.throughput,
            r.per_endpoint
        );
        harness.push((kind, r));
    }
    let get = |k: Balancer| {
        harness
            .iter()
            .find(|(kk, _)| *kk == k)
            .map(|(_, r)| r.p99)
            .unwrap_or(f64::NAN)
    };
    let ours_b = get(Balancer::OursDefault);
    let tower_b = get(Balancer::TowerPeakEwma);
    println!(
        "\n(simulator, for reference: default p99 {:.1} ms on the tower scenario)",
        ms(p99_of(&b_sim, "least_loaded_of_d").p99)
    );

    let ours_a = ms(p99_of(&a95, "least_loaded_of_d").p99);
    let rr_a = ms(p99_of(&a95, "round_robin").p99);
    let ours_c = ms(p99_of(&c, "least_loaded_of_d").p99);
    let rr_c = ms(p99_of(&c, "round_robin").p99);
    println!("\n### `LeastLoadedOfD` p99 (ms) by number of choices d (default 4; d = 16 is least connections here)\n");
    println!(
        "| d | agent_mix_95 | slow_replica | tower (sim) | heterogeneous | stale_1000ms | stale_10000ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let sweep = [
        Scenario::agent_mix(0.95, seed),
        Scenario::slow_replica(seed),
        Scenario::tower(seed),
        Scenario::heterogeneous(seed),
        Scenario::stale(Duration::from_secs(1), seed),
        Scenario::stale(Duration::from_secs(10), seed),
    ];
    for d in D_SWEEP {
        let cells: Vec<String> = sweep
            .iter()
            .map(|sc| format!("{:.1}", p99_with_d(sc, d, seed)))
            .collect();
        println!("| {d} | {} |", cells.join(" | "));
    }
    println!("\nwall time {:.1} s", wall.elapsed().as_secs_f64());
    println!("RESULT routing_p99_ms_tower_scenario ours={ours_b:.1} baseline=tower_p2c_peak_ewma:{tower_b:.1} ratio={:.3}", ours_b / tower_b);
    println!(
        "RESULT routing_p99_ms_agent_mix_95 ours={ours_a:.1} baseline=round_robin:{rr_a:.1} ratio={:.3}",
        ours_a / rr_a
    );
    println!(
        "RESULT routing_p99_ms_slow_replica ours={ours_c:.1} baseline=round_robin:{rr_c:.1} ratio={:.3}",
        ours_c / rr_c
    );
}
