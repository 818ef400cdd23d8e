//! `--backend memory`: LocalQueue + Worker against a raw tokio mpsc channel.

use std::sync::Arc;

use agentscale_core::{Result, TaskQueue};
use agentscale_queue::LocalQueue;

use crate::common::{median, mpsc_baseline, noop_tasks, produce_and_drain, rate, result_line};
use crate::Args;

/// Runs the memory benchmark and prints its table and RESULT line.
pub async fn run(args: &Args) -> Result<()> {
    let n = args.tasks;
    println!(
        "# bench_queue --backend memory: {n} no-op tasks, worker concurrency {}",
        args.concurrency
    );
    println!(
        "| round | agentscale LocalQueue + Worker (tasks/s) | tokio mpsc + same handler (tasks/s) | ratio |"
    );
    println!("|---|---|---|---|");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        // Alternate the order so neither side always runs on a warmer process.
        let (o, b) = if round % 2 == 1 {
            let o = ours_once(args).await?;
            (o, rate(n as u64, mpsc_baseline(noop_tasks(n), 1024).await?))
        } else {
            let b = rate(n as u64, mpsc_baseline(noop_tasks(n), 1024).await?);
            (ours_once(args).await?, b)
        };
        println!("| {round} | {o:.0} | {b:.0} | {:.3} |", o / b);
        ours.push(o);
        base.push(b);
    }
    let (o, b) = (median(ours), median(base));
    println!("| median | {o:.0} | {b:.0} | {:.3} |", o / b);
    result_line("memory_queue_tasks_per_s", o, "tokio_mpsc", b);
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
