//! Benchmark: does shadow traffic slow the primary path?
//!
//! ```text
//! cargo run --release -p agentscale-benches --example bench_rollout
//! ```
//!
//! A primary fleet (in-memory queue and result store, one worker with
//! `--concurrency` slots, a handler that waits `--work-ms`) serves
//! `--clients` closed-loop callers, each doing `submit` + `wait` for
//! `--requests` requests. Per request latency (submit → result) goes into a
//! histogram.
//!
//! * baseline `no_shadow`: the callers use the primary's `Client`.
//! * ours: the callers use `Shadow::submit` with every task mirrored
//!   (`fraction = 1`) to a candidate that is 10× slower (same slots,
//!   handler waits 10 × `--work-ms`), or down (a registered worker that
//!   never runs): the mirror loop's buffer fills and drops are counted.
//!
//! The candidate fleet's worker runs on its own runtime (its own OS
//! thread), as a candidate version runs in its own deployment: the primary
//! path pays for mirroring (the copy, the bounded buffer, the comparison),
//! not for executing the candidate's tasks on the primary's executor. On a
//! 2-core machine the two still share the CPU.
//!
//! Each mode runs `--runs` times, interleaved; the median p99 and
//! throughput are reported.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::worker::{Handler, TaskContext, Worker};
use agentscale_core::{Client, Error, Output, ResultStore, Task, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_rollout::canary::Fleet;
use agentscale_rollout::shadow::{Shadow, ShadowConfig};
use agentscale_state::local::LocalResultStore;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::watch;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Concurrent closed-loop callers.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Requests per caller per run.
    #[arg(long, default_value_t = 250)]
    requests: usize,
    /// Primary handler time in ms (the candidate takes 10×).
    #[arg(long, default_value_t = 2)]
    work_ms: u64,
    /// Worker slots per fleet.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Runs per mode (the median is reported).
    #[arg(long, default_value_t = 9)]
    runs: usize,
}

#[derive(Debug)]
struct Sleepy(Duration);

#[async_trait::async_trait]
impl Handler for Sleepy {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        tokio::time::sleep(self.0).await;
        Ok(Output::bytes(task.payload.clone()))
    }
}

/// Where a fleet's worker runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Run {
    /// Not at all (a candidate that is down).
    Never,
    /// On the caller's runtime (the primary).
    Here,
    /// On a runtime of its own, on its own thread (the candidate).
    OwnRuntime,
    /// Like `OwnRuntime`, and kept busy by closed-loop callers of its own on
    /// that thread (a neighbour as busy as a shadowed candidate, with no
    /// mirroring): the control that separates the cost of mirroring from
    /// the cost of a busy candidate sharing this machine's two cores.
    OwnRuntimeBusy,
}

/// Closed-loop callers that keep a busy neighbour busy (as many as the
/// shadow's mirror buffer holds).
const NEIGHBOUR_CALLERS: usize = 256;

struct RunningFleet {
    fleet: Fleet,
    stop: watch::Sender<bool>,
    worker: Option<std::thread::JoinHandle<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn fleet(name: &str, work: Duration, slots: usize, run: Run) -> agentscale_core::Result<RunningFleet> {
    let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new(name));
    let results: Arc<dyn ResultStore> = Arc::new(LocalResultStore::builder().build()?);
    let worker = Worker::builder(queue.clone(), Sleepy(work))
        .concurrency(slots)
        .results(results.clone())
        .build()?;
    let fleet = Fleet::new(name, queue, results).worker(worker.stats());
    let (stop, mut rx) = watch::channel(false);
    let (busy, client) = (run == Run::OwnRuntimeBusy, fleet.client().clone());
    let serve = async move {
        if busy {
            for c in 0..NEIGHBOUR_CALLERS {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let Ok(pending) = client.submit(Task::new("ask", format!("n{c}-{i}"))).await else {
                            break;
                        };
                        if pending.wait(Duration::from_secs(30)).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        let _ = worker
            .run_until(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
    };
    let (worker, task) = match run {
        Run::Never => (None, tokio::spawn(async {})),
        Run::Here => (None, tokio::spawn(serve)),
        Run::OwnRuntime | Run::OwnRuntimeBusy => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::handler(e.to_string()))?;
            let thread = std::thread::Builder::new()
                .name(format!("{name}-worker"))
                .spawn(move || rt.block_on(serve))
                .map_err(|e| Error::handler(e.to_string()))?;
            (Some(thread), tokio::spawn(async {}))
        }
    };
    Ok(RunningFleet {
        fleet,
        stop,
        worker,
        task,
    })
}

async fn stop(f: RunningFleet) {
    let _ = f.stop.send(true);
    let _ = f.task.await;
    if let Some(thread) = f.worker {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    NoShadow,
    /// No shadow; the candidate busy with load of its own (control).
    NoShadowBusyNeighbour,
    ShadowSlow,
    ShadowDown,
}

struct RunResult {
    p99_ms: f64,
    per_s: f64,
    dropped: u64,
    mirrored: u64,
}

enum Path {
    Direct(Client),
    Shadowed(Arc<Shadow>),
}

async fn one_run(args: &Args, mode: Mode, run: usize) -> agentscale_core::Result<RunResult> {
    let work = Duration::from_millis(args.work_ms);
    let primary = fleet(
        &format!("primary-{run}-{mode:?}"),
        work,
        args.concurrency,
        Run::Here,
    )?;
    let candidate_run = match mode {
        Mode::ShadowSlow => Run::OwnRuntime,
        Mode::NoShadowBusyNeighbour => Run::OwnRuntimeBusy,
        _ => Run::Never,
    };
    let candidate = fleet(
        &format!("candidate-{run}-{mode:?}"),
        work * 10,
        args.concurrency,
        candidate_run,
    )?;
    let path = match mode {
        Mode::NoShadow | Mode::NoShadowBusyNeighbour => Path::Direct(primary.fleet.client().clone()),
        _ => {
            let config = ShadowConfig::builder()
                .fraction(1.0)
                .buffer(256)
                .max_comparing(256)
                .compare_timeout(Duration::from_secs(2))
                .build()?;
            Path::Shadowed(Arc::new(Shadow::start(
                primary.fleet.clone(),
                candidate.fleet.clone(),
                config,
                None,
            )?))
        }
    };
    let path = Arc::new(path);
    let started = Instant::now();
    let callers: Vec<_> = (0..args.clients)
        .map(|c| {
            let path = path.clone();
            let n = args.requests;
            tokio::spawn(async move {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                    .map_err(|e| Error::handler(e.to_string()))?;
                for i in 0..n {
                    let task = Task::new("ask", format!("{c}-{i}"));
                    let t0 = Instant::now();
                    let pending = match &*path {
                        Path::Direct(client) => client.submit(task).await?,
                        Path::Shadowed(shadow) => shadow.submit(task).await?,
                    };
                    pending.wait(Duration::from_secs(30)).await?;
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                }
                Ok::<_, Error>(h)
            })
        })
        .collect();
    let mut all =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| Error::handler(e.to_string()))?;
    for c in callers {
        let h = c.await.map_err(|e| Error::handler(e.to_string()))??;
        let _ = all.add(h);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (dropped, mirrored) = match Arc::try_unwrap(path) {
        Ok(Path::Shadowed(s)) => match Arc::try_unwrap(s) {
            Ok(s) => {
                let r = s.close().await;
                (r.dropped, r.mirrored)
            }
            Err(s) => (s.report().dropped, s.report().mirrored),
        },
        _ => (0, 0),
    };
    stop(primary).await;
    stop(candidate).await;
    Ok(RunResult {
        p99_ms: all.value_at_quantile(0.99) as f64 / 1e3,
        per_s: (args.clients * args.requests) as f64 / elapsed,
        dropped,
        mirrored,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> agentscale_core::Result<()> {
    let args = Args::parse();
    let modes = [
        Mode::NoShadow,
        Mode::ShadowSlow,
        Mode::ShadowDown,
        Mode::NoShadowBusyNeighbour,
    ];
    let mut p99 = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut rate = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut drops = [0u64; 4];
    let mut mirrored = [0u64; 4];
    // Warm-up run (allocators, timers), not counted.
    one_run(&args, Mode::NoShadow, 0).await?;
    for run in 1..=args.runs {
        for (i, mode) in modes.iter().enumerate() {
            let r = one_run(&args, *mode, run).await?;
            println!(
                "run {run} {mode:?}: p99 {:.2} ms, {:.0} req/s, mirrored {}, dropped {}",
                r.p99_ms, r.per_s, r.mirrored, r.dropped
            );
            p99[i].push(r.p99_ms);
            rate[i].push(r.per_s);
            drops[i] += r.dropped;
            mirrored[i] += r.mirrored;
        }
    }
    let [base_p99, slow_p99, down_p99, busy_p99] = p99.map(median);
    let [base_rate, slow_rate, down_rate, busy_rate] = rate.map(median);
    let line = |name: &str, ours: f64, base_name: &str, base: f64, digits: usize| {
        println!(
            "RESULT {name} ours={ours:.digits$} baseline={base_name}:{base:.digits$} ratio={:.3}",
            ours / base
        );
    };
    line("shadow_primary_p99_ms", slow_p99, "no_shadow", base_p99, 2);
    line(
        "shadow_primary_p99_ms_candidate_down",
        down_p99,
        "no_shadow",
        base_p99,
        2,
    );
    line("shadow_primary_throughput", slow_rate, "no_shadow", base_rate, 0);
    line(
        "shadow_primary_throughput_candidate_down",
        down_rate,
        "no_shadow",
        base_rate,
        0,
    );
    // The control: what a candidate as busy as the shadowed one costs the
    // primary on this machine without any mirroring; the mirroring's own
    // cost is the shadowed run against it.
    line(
        "busy_neighbour_primary_p99_ms",
        busy_p99,
        "no_shadow",
        base_p99,
        2,
    );
    line(
        "busy_neighbour_primary_throughput",
        busy_rate,
        "no_shadow",
        base_rate,
        0,
    );
    line(
        "shadow_primary_p99_ms_vs_busy_neighbour",
        slow_p99,
        "no_shadow_busy_neighbour",
        busy_p99,
        2,
    );
    println!(
        "shadow copies over all runs: candidate 10x slower mirrored {} dropped {}; candidate down mirrored {} dropped {}",
        mirrored[1], drops[1], mirrored[2], drops[2]
    );
    Ok(())
}
