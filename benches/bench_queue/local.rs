//! `--backend memory`: LocalQueue + Worker against a raw tokio mpsc channel.

use std::sync::Arc;

use agentscale_core::{Result, TaskQueue};
use agentscale_queue::LocalQueue;

use crate::common::{median, mpsc_baseline, noop_tasks, produce_and_drain, rate, result_line, MpscShape};
use crate::Args;

/// The baseline shapes measured each round: the RESULT baseline first, then
/// the others (informational).
const SHAPES: [(&str, MpscShape); 4] = [
    ("mpsc unbounded + recv_many(100) (baseline)", MpscShape::FAIR),
    (
        "mpsc unbounded + recv",
        MpscShape {
            unbounded: true,
            recv_many: false,
        },
    ),
    (
        "mpsc(1024) + recv_many(100)",
        MpscShape {
            unbounded: false,
            recv_many: true,
        },
    ),
    (
        "mpsc(1024) + recv (the baseline before 2026-12-01)",
        MpscShape {
            unbounded: false,
            recv_many: false,
        },
    ),
];

/// Runs the memory benchmark and prints its table and RESULT line.
pub async fn run(args: &Args) -> Result<()> {
    let n = args.tasks;
    println!(
        "# bench_queue --backend memory: {n} no-op tasks, worker concurrency {}; tokio mpsc + the same handler, tasks/s",
        args.concurrency
    );
    let names: Vec<&str> = SHAPES.iter().map(|(name, _)| *name).collect();
    println!(
        "| round | agentscale LocalQueue + Worker (tasks/s) | {} | ratio |",
        names.join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(SHAPES.len()));
    let mut ours = Vec::new();
    let mut base: Vec<Vec<f64>> = vec![Vec::new(); SHAPES.len()];
    for round in 1..=args.rounds {
        // Alternate the order so neither side always runs on a warmer process.
        let mut row = vec![0.0; SHAPES.len()];
        let o = if round % 2 == 1 {
            let o = ours_once(args).await?;
            baselines_once(n, &mut row).await?;
            o
        } else {
            baselines_once(n, &mut row).await?;
            ours_once(args).await?
        };
        let cells: Vec<String> = row.iter().map(|b| format!("{b:.0}")).collect();
        println!("| {round} | {o:.0} | {} | {:.3} |", cells.join(" | "), o / row[0]);
        ours.push(o);
        for (all, b) in base.iter_mut().zip(row) {
            all.push(b);
        }
    }
    let o = median(ours);
    let meds: Vec<f64> = base.into_iter().map(median).collect();
    let cells: Vec<String> = meds.iter().map(|b| format!("{b:.0}")).collect();
    println!("| median | {o:.0} | {} | {:.3} |", cells.join(" | "), o / meds[0]);
    for ((name, _), b) in SHAPES.iter().zip(&meds).skip(1) {
        println!("# informational: ours / {name} = {:.3}", o / b);
    }
    result_line(
        "memory_queue_tasks_per_s",
        o,
        "tokio_mpsc_unbounded_recv_many",
        meds[0],
    );
    Ok(())
}

/// One measurement of every baseline shape, in order, into `row`.
async fn baselines_once(n: usize, row: &mut [f64]) -> Result<()> {
    for (slot, (_, shape)) in row.iter_mut().zip(SHAPES) {
        *slot = rate(n as u64, mpsc_baseline(noop_tasks(n), shape).await?);
    }
    Ok(())
}

async fn ours_once(args: &Args) -> Result<f64> {
    let n = args.tasks;
    let queue: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new(agentscale_name()));
    let tasks = noop_tasks(n);
    let (elapsed, report) =
        produce_and_drain(queue.clone(), tasks, args.enqueue_batch, args.concurrency).await?;
    let depth = queue.depth().await?;
    if report.completed != n as u64 || depth.backlog() != 0 {
        return Err(agentscale_core::Error::Handler(format!(
            "memory run incomplete: report {report:?}, depth {depth:?}"
        )));
    }
    Ok(rate(n as u64, elapsed))
}

fn agentscale_name() -> String {
    format!("bench-{}", std::process::id())
}
