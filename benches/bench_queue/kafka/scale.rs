//! `--backend kafka --partitions 1,4 --workers 1,4`: scaling out.
//!
//! For every (partitions P, workers W) pair, per round: a fresh topic of P
//! partitions; W worker instances, each its own `KafkaQueue` (its own
//! librdkafka consumer, one member of one consumer group) driven by its own
//! `Worker` runtime, all in this process; the group is left to settle
//! (every partition owned exactly once, by min(P, W) members, unchanged for
//! 1 s); a producer-only queue enqueues N no-op tasks (`enqueue_batch`, every
//! delivery report awaited; the consumers prefetch up to
//! `prefetch_per_partition` per partition meanwhile, then pause, as in the
//! plain Kafka benchmark); then all W workers start at once and the clock
//! runs until the group's acks reach N.
//!
//! RESULT `kafka_tasks_per_s_p<P>_w<W>` is that drain rate (tasks/s, the
//! consumer side, which is what more partitions and members change), median
//! over rounds, against the p1_w1 cell of the same run. The table also shows
//! the enqueue rate and end to end (enqueue + drain). The pairs run in turn
//! within each round, in reverse order every other round (the broker's speed
//! drifts during a run). `kafka_worker_share_p<P>_w<W>_<i>` is the median
//! number of tasks the `i`-th busiest worker of a round acked (0 = busiest),
//! against the even share N/W: which worker gets which partition changes from
//! round to round, so shares are ranked per round before the median.
//!
//! CPU: the bench process' own CPU time and the broker's (`/proc/<pid>/stat`;
//! the broker is `BENCH_BROKER_PID`, else the one process named `tansu`) are
//! read around each phase, so the table says how many cores each used while
//! draining: on a small machine the broker and the clients compete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::worker::Worker;
use agentscale_core::{Error, Result, TaskQueue};
use agentscale_queue::kafka::KafkaQueue;

use super::config_with;
use crate::common::{enqueue_all, median, noop_tasks, rate, result_line, NoopHandler};
use crate::Args;

/// Tasks per round and pair when `--tasks` is left at its default.
const DEFAULT_TASKS: usize = 20_000;
/// How long the group may take to settle, and the drain to finish.
const SETTLE_LIMIT: Duration = Duration::from_secs(90);
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

/// One round of one (partitions, workers) pair.
struct Sample {
    enqueue: f64,
    drain: f64,
    end_to_end: f64,
    /// Tasks acked by each worker instance, in join order.
    per_worker: Vec<u64>,
    /// Cores used while draining: (bench process, broker if known).
    drain_cores: (f64, Option<f64>),
    /// Cores used while enqueueing: (bench process, broker if known).
    enqueue_cores: (f64, Option<f64>),
}

/// Runs the scaling matrix and prints its tables and RESULT lines.
pub async fn run(brokers: &str, args: &Args) -> Result<()> {
    let partitions = if args.partitions.is_empty() {
        vec![1]
    } else {
        args.partitions.clone()
    };
    let workers = if args.workers.is_empty() {
        vec![1]
    } else {
        args.workers.clone()
    };
    if partitions.iter().any(|p| *p < 1) || workers.iter().any(|w| *w < 1) || args.rounds == 0 {
        return Err(Error::InvalidConfig(
            "--partitions, --workers and --rounds must be at least 1".into(),
        ));
    }
    let n = if args.tasks == 200_000 {
        DEFAULT_TASKS
    } else {
        args.tasks
    };
    let cells: Vec<(i32, usize)> = partitions
        .iter()
        .flat_map(|p| workers.iter().map(move |w| (*p, *w)))
        .collect();
    let broker = broker_pid();
    println!(
        "# bench_queue --backend kafka scaling: {n} no-op tasks per round and pair, pairs (partitions, workers) {cells:?}, \
         worker concurrency {} each, brokers {brokers}, broker pid {}",
        args.concurrency,
        broker.map_or("unknown (CPU not split)".to_string(), |p| p.to_string())
    );
    println!(
        "| round | partitions | workers | drain (tasks/s) | enqueue (tasks/s) | end to end (tasks/s) | \
         acked per worker | drain cores bench / broker | enqueue cores bench / broker |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut samples: BTreeMap<(i32, usize), Vec<Sample>> = BTreeMap::new();
    for round in 1..=args.rounds {
        let mut order = cells.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for (p, w) in order {
            let s = once(brokers, p, w, n, args, broker).await?;
            println!(
                "| {round} | {p} | {w} | {:.0} | {:.0} | {:.0} | {:?} | {} | {} |",
                s.drain,
                s.enqueue,
                s.end_to_end,
                s.per_worker,
                cores(s.drain_cores),
                cores(s.enqueue_cores)
            );
            samples.entry((p, w)).or_default().push(s);
        }
    }
    println!();
    println!(
        "| partitions | workers | drain median (tasks/s) | enqueue median | end to end median | \
         drain cores bench / broker (median) | vs p1_w1 (drain) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let drain_of = |cell: &(i32, usize)| median(samples[cell].iter().map(|s| s.drain).collect());
    let (base_cell, base_name) = if samples.contains_key(&(1, 1)) {
        ((1, 1), "p1_w1".to_string())
    } else {
        (cells[0], format!("p{}_w{}", cells[0].0, cells[0].1))
    };
    let base = drain_of(&base_cell);
    for (cell, ss) in &samples {
        let bench_cores = median(ss.iter().map(|s| s.drain_cores.0).collect());
        let broker_cores: Vec<f64> = ss.iter().filter_map(|s| s.drain_cores.1).collect();
        let broker_cores = (!broker_cores.is_empty()).then(|| median(broker_cores));
        let d = drain_of(cell);
        println!(
            "| {} | {} | {d:.0} | {:.0} | {:.0} | {} | {:.3} |",
            cell.0,
            cell.1,
            median(ss.iter().map(|s| s.enqueue).collect()),
            median(ss.iter().map(|s| s.end_to_end).collect()),
            cores((bench_cores, broker_cores)),
            d / base.max(1e-9)
        );
    }
    for cell in &cells {
        result_line(
            &format!("kafka_tasks_per_s_p{}_w{}", cell.0, cell.1),
            drain_of(cell),
            &base_name,
            base,
        );
    }
    for (p, w) in cells.iter().filter(|(_, w)| *w > 1) {
        let ss = &samples[&(*p, *w)];
        let mean = n as f64 / *w as f64;
        let ranked: Vec<Vec<u64>> = ss
            .iter()
            .map(|s| {
                let mut v = s.per_worker.clone();
                v.sort_unstable_by(|a, b| b.cmp(a));
                v
            })
            .collect();
        for i in 0..*w {
            let share = median(
                ranked
                    .iter()
                    .map(|v| v.get(i).copied().unwrap_or(0) as f64)
                    .collect(),
            );
            result_line(&format!("kafka_worker_share_p{p}_w{w}_{i}"), share, "mean", mean);
        }
    }
    Ok(())
}

/// "bench / broker" cores, the broker's as `?` when unknown.
fn cores((bench, broker): (f64, Option<f64>)) -> String {
    match broker {
        Some(b) => format!("{bench:.2} / {b:.2}"),
        None => format!("{bench:.2} / ?"),
    }
}

async fn once(
    brokers: &str,
    partitions: i32,
    workers: usize,
    n: usize,
    args: &Args,
    broker: Option<u32>,
) -> Result<Sample> {
    let topic = format!(
        "bench-scale-p{partitions}-w{workers}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    // The producer creates the topic before any member subscribes to it.
    let producer = KafkaQueue::connect(config_with(brokers, &topic, false, partitions)?).await?;
    let queues: Vec<Arc<KafkaQueue>> = futures::future::try_join_all((0..workers).map(|_| {
        let topic = topic.clone();
        async move {
            let c = config_with(brokers, &topic, true, partitions)?;
            KafkaQueue::connect(c).await.map(Arc::new)
        }
    }))
    .await?;
    settle(&queues, partitions).await?;

    let cpu0 = CpuMark::now(broker);
    let started = Instant::now();
    enqueue_all(&producer, noop_tasks(n), args.enqueue_batch).await?;
    let enqueued = started.elapsed();
    let cpu1 = CpuMark::now(broker);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stats = Vec::with_capacity(workers);
    let mut runs = Vec::with_capacity(workers);
    let drain_started = Instant::now();
    for q in &queues {
        let queue: Arc<dyn TaskQueue> = q.clone();
        let worker = Worker::builder(queue, NoopHandler)
            .concurrency(args.concurrency)
            .poll_wait(Duration::from_millis(100))
            .grace_period(Duration::from_secs(30))
            .build()?;
        stats.push(worker.stats());
        let mut stop = stop_rx.clone();
        runs.push(tokio::spawn(worker.run_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }
    // Checked every millisecond (see common::run_worker_until_drained for
    // why not a waiter): the clock stops at the group's N-th ack.
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        let acked: u64 = stats.iter().map(|s| s.snapshot().completed).sum();
        if acked >= n as u64 {
            break Ok(drain_started.elapsed());
        }
        if drain_started.elapsed() > DRAIN_LIMIT {
            break Err(Error::Timeout(format!(
                "p{partitions} w{workers}: {acked} of {n} tasks acked after {DRAIN_LIMIT:?}"
            )));
        }
        tick.tick().await;
    };
    let cpu2 = CpuMark::now(broker);
    let _ = stop_tx.send(true);
    let mut per_worker = Vec::with_capacity(workers);
    for r in runs {
        let report = r.await.map_err(|e| Error::backend("worker task failed", e))??;
        per_worker.push(report.completed);
    }
    futures::future::join_all(queues.iter().map(|q| q.close())).await;
    producer.close().await;
    let drained = outcome?;
    let acked: u64 = per_worker.iter().sum();
    if acked != n as u64 {
        // No member joins or leaves while draining, so there should be no
        // redelivery; say so if there was.
        println!("# p{partitions} w{workers}: {acked} acks for {n} tasks (redeliveries)");
    }
    Ok(Sample {
        enqueue: rate(n as u64, enqueued),
        drain: rate(n as u64, drained),
        end_to_end: rate(n as u64, enqueued + drained),
        per_worker,
        drain_cores: cpu1.cores_until(&cpu2),
        enqueue_cores: cpu0.cores_until(&cpu1),
    })
}

/// Waits until every partition is owned exactly once, by min(partitions,
/// members) members, and that stayed so for a second (tansu's coordinator
/// may run a further rebalance right after the first settled one).
async fn settle(queues: &[Arc<KafkaQueue>], partitions: i32) -> Result<()> {
    let give_up = Instant::now() + SETTLE_LIMIT;
    let owners = queues.len().min(partitions as usize);
    let want: Vec<i32> = (0..partitions).collect();
    let mut stable_since: Option<(Instant, Vec<Vec<i32>>)> = None;
    loop {
        let owned: Vec<Vec<i32>> = queues.iter().map(|q| q.assigned_partitions()).collect();
        let mut all: Vec<i32> = owned.iter().flatten().copied().collect();
        all.sort_unstable();
        let settled = all == want && owned.iter().filter(|p| !p.is_empty()).count() == owners;
        stable_since = match stable_since {
            Some((since, prev)) if settled && prev == owned => {
                if since.elapsed() >= Duration::from_secs(1) {
                    return Ok(());
                }
                Some((since, prev))
            }
            _ if settled => Some((Instant::now(), owned.clone())),
            _ => None,
        };
        if Instant::now() > give_up {
            return Err(Error::Timeout(format!(
                "the group did not settle in {SETTLE_LIMIT:?}: {owned:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds used so far by this process and by the broker.
struct CpuMark {
    at: Instant,
    bench: f64,
    broker: Option<f64>,
}

impl CpuMark {
    fn now(broker: Option<u32>) -> CpuMark {
        CpuMark {
            at: Instant::now(),
            bench: cpu_seconds("self").unwrap_or(0.0),
            broker: broker.and_then(|p| cpu_seconds(&p.to_string())),
        }
    }

    /// Cores used (CPU seconds per wall second) from `self` until `later`.
    fn cores_until(&self, later: &CpuMark) -> (f64, Option<f64>) {
        let wall = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let broker = match (self.broker, later.broker) {
            (Some(a), Some(b)) => Some((b - a) / wall),
            _ => None,
        };
        ((later.bench - self.bench) / wall, broker)
    }
}

/// User + system CPU seconds of a process, all threads.
fn cpu_seconds(pid: &str) -> Option<f64> {
    crate::proc_cpu::cpu_seconds(pid).map(|(u, s)| u + s)
}

/// The broker's pid: `BENCH_BROKER_PID`, else the only process named `tansu`.
fn broker_pid() -> Option<u32> {
    if let Some(pid) = std::env::var("BENCH_BROKER_PID")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(pid);
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == "tansu") {
            found.push(pid);
        }
    }
    if found.len() == 1 {
        found.pop()
    } else {
        None
    }
}
