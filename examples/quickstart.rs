//! agentscale quickstart: a complete, scaled agent service in one process on
//! the embedded backends (no service needed).
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --fail-rate 0.1 --panic-rate 0.05
//! cargo run --release --example quickstart -- --metrics-addr 127.0.0.1:9090
//! ```
//!
//! * Producers push agent tasks onto one queue: 80 % short (2 steps), 20 %
//!   long (20 steps), spread over a few hundred sessions of a few tenants.
//! * Several stateless [`Worker`]s share the queue and the stores. Every step
//!   calls a cached tool (`get_or_compute`), searches and updates long-term
//!   memory, and waits a few ms of simulated model latency; a finished task
//!   adds its steps to its session with `apply_once` (compare-and-set, and
//!   applied at most once even when a retry runs the handler again).
//! * Long tasks outlive the queue's lease timeout; worker heartbeats keep them.
//! * `--fail-rate` / `--panic-rate` make handlers fail or panic that fraction
//!   of attempts; the runtime retries them with backoff.
//!
//! The summary accounts for every task id: `lost` = enqueued minus completed
//! or dead-lettered, and must be 0; `session_mismatches` counts sessions whose
//! step total differs from the steps of their completed tasks, and must be 0
//! too (the process exits non-zero otherwise).
//! Swap `LocalQueue` for `RedisQueue` / `KafkaQueue` and the in-memory stores
//! for the Redis / pgvector ones to run the same service across machines: the
//! agent code only sees the core traits.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale::metrics::{Exporter, Metrics};
use agentscale::queue::LocalQueue;
use agentscale::state::local::{HashEmbedder, LocalMemoryStore, LocalSessionStore, LocalToolCache};
use agentscale::worker::{Backoff, Handler, TaskContext, Worker, WorkerReport};
use agentscale::Bytes;
use agentscale::{
    Embedder, Error, Filter, MemoryRecord, MemoryStore, Metric, Namespace, Output, SessionKey, SessionStore,
    SessionStoreExt, Task, TaskId, TaskQueue, ToolCache, ToolKey,
};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(about = "agentscale quickstart: a scaled agent service on embedded backends")]
struct Args {
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 3000)]
    tasks: usize,
    /// Worker instances (each is what one pod would run).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Handler slots per worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Fraction of attempts whose handler returns an error.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Fraction of attempts whose handler panics.
    #[arg(long, default_value_t = 0.0)]
    panic_rate: f64,
    /// Serve /metrics, /healthz, /readyz on this address (e.g. 127.0.0.1:9090).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Simulated model latency per step, in ms (± 50 % jitter).
    #[arg(long, default_value_t = 40)]
    step_ms: u64,
    /// Producer tasks pushing in parallel.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Give up waiting for the queue to drain after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// What a producer asks an agent to do.
#[derive(Debug, Serialize, Deserialize)]
struct AgentJob {
    steps: u32,
    question: String,
}

/// What the agent keeps per session (read-modify-write with CAS).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SessionNotes {
    steps_done: u64,
    last_task: String,
}

/// The app's own exact ledger: when each task was enqueued, and every time a
/// handler finished it.
#[derive(Default)]
struct Ledger {
    enqueued: Mutex<HashMap<TaskId, Instant>>,
    /// Each task's session and steps: what its effect on the session is.
    effects: Mutex<HashMap<TaskId, (SessionKey, u64)>>,
    completions: Mutex<HashMap<TaskId, (u32, Duration)>>,
}

struct Agent {
    sessions: Arc<dyn SessionStore>,
    tools: Arc<dyn ToolCache>,
    memory: Arc<dyn MemoryStore>,
    embedder: Arc<dyn Embedder>,
    ledger: Arc<Ledger>,
    fail_rate: f64,
    panic_rate: f64,
    step: Duration,
    cas_conflicts: std::sync::atomic::AtomicU64,
}

const CITIES: [&str; 8] = [
    "paris", "tokyo", "lagos", "lima", "oslo", "pune", "quito", "perth",
];

#[agentscale::async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let job: AgentJob = task.payload_json()?; // malformed → dead-lettered, not retried
        let tenant = task.tenant.as_deref().unwrap_or("default");
        let session = task.session_id.as_deref().unwrap_or("anonymous");
        let key = SessionKey::new(tenant, session)?;
        let ns = Namespace::new(tenant, "notes")?;
        // Failure injection happens at a random step, so retries redo partial work.
        let (fail_at, fail_kind) = {
            let mut rng = rand::rng();
            let roll: f64 = rng.random();
            let kind = if roll < self.panic_rate {
                Some(true)
            } else if roll < self.panic_rate + self.fail_rate {
                Some(false)
            } else {
                None
            };
            (rng.random_range(0..job.steps), kind)
        };
        for step in 0..job.steps {
            if step == fail_at {
                match fail_kind {
                    Some(true) => panic!("injected panic (task {}, attempt {})", task.id, cx.attempt()),
                    Some(false) => {
                        return Err(Error::handler(format!("injected failure at step {step}")));
                    }
                    None => {}
                }
            }
            let city = CITIES[(step as usize + job.question.len()) % CITIES.len()];
            let tool_key = ToolKey::new(tenant, "weather", "v1", &serde_json::json!({ "city": city }))?;
            let forecast = self
                .tools
                .get_or_compute(
                    &tool_key,
                    Duration::from_secs(60),
                    Box::pin(async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(Bytes::from(format!("sunny in {city}")))
                    }),
                )
                .await?;
            let text = format!(
                "{} step {step}: {}",
                job.question,
                String::from_utf8_lossy(&forecast)
            );
            let vector = self
                .embedder
                .embed(std::slice::from_ref(&text))
                .await?
                .pop()
                .unwrap_or_default();
            let _recalled = self.memory.search(&ns, &vector, 3, &Filter::all()).await?;
            let record = MemoryRecord {
                id: format!("{}-{step}", task.id),
                vector,
                text: Some(text),
                ..Default::default()
            };
            self.memory.upsert(&ns, vec![record]).await?;
            // The model call.
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(self.step.mul_f64(jitter)).await;
        }
        // The task's effect on its session, applied at most once even when a
        // retry or redelivery runs this handler again.
        let steps = job.steps;
        let last_task = task.id.to_string();
        let updated = self
            .sessions
            .apply_once(&key, &task.id, |notes: Option<SessionNotes>| {
                let mut notes = notes.unwrap_or_default();
                notes.steps_done += u64::from(steps);
                notes.last_task = last_task.clone();
                Ok(notes)
            })
            .await?;
        self.cas_conflicts
            .fetch_add(u64::from(updated.conflicts), Ordering::Relaxed);
        let latency = self
            .ledger
            .enqueued
            .lock()
            .get(&task.id)
            .map(|t| t.elapsed())
            .unwrap_or_default();
        let mut done = self.ledger.completions.lock();
        let entry = done.entry(task.id.clone()).or_insert((0, latency));
        entry.0 += 1;
        Ok(Output::none())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    match run(args).await {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

async fn run(args: Args) -> Result<u64, Error> {
    if !(0.0..=1.0).contains(&(args.fail_rate + args.panic_rate))
        || args.fail_rate < 0.0
        || args.panic_rate < 0.0
    {
        return Err(Error::InvalidConfig(
            "fail-rate and panic-rate must be ≥ 0 and sum to ≤ 1".into(),
        ));
    }
    // Injected panics are expected: keep them out of the terminal.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !msg.starts_with("injected panic") {
            default_hook(info);
        }
    }));

    // --- Embedded backends (swap for Redis / Kafka / pgvector in production).
    // A short lease so the 20-step tasks rely on heartbeats.
    let queue: Arc<dyn TaskQueue> = Arc::new(
        LocalQueue::builder("agent-tasks")
            .lease_timeout(Duration::from_millis(500))
            .build()?,
    );
    let embedder = Arc::new(HashEmbedder::new(64)?);
    let agent = Arc::new(Agent {
        sessions: Arc::new(LocalSessionStore::builder().build()?),
        tools: Arc::new(LocalToolCache::builder().build()?),
        memory: Arc::new(LocalMemoryStore::new(embedder.dimensions(), Metric::Cosine)?),
        embedder,
        ledger: Arc::new(Ledger::default()),
        fail_rate: args.fail_rate,
        panic_rate: args.panic_rate,
        step: Duration::from_millis(args.step_ms),
        cas_conflicts: Default::default(),
    });
    let ledger = agent.ledger.clone();

    let metrics = Metrics::new();
    let exporter = match &args.metrics_addr {
        Some(addr) => {
            let handle = Exporter::bind(addr.as_str(), metrics.clone()).await?;
            eprintln!(
                "metrics: http://{}/metrics (also /healthz, /readyz)",
                handle.local_addr()
            );
            Some(handle)
        }
        None => None,
    };

    // --- Stateless workers sharing the queue and the stores.
    let stop = Arc::new(tokio::sync::Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let mut stats = Vec::new();
    let mut runs = Vec::new();
    for i in 0..args.workers {
        let worker = Worker::builder(queue.clone(), agent.clone())
            .name(format!("worker-{i}"))
            .concurrency(args.concurrency)
            .backoff(Backoff::exponential(
                Duration::from_millis(20),
                Duration::from_secs(1),
            ))
            .task_timeout(Duration::from_secs(60))
            .grace_period(Duration::from_secs(10))
            .poll_wait(Duration::from_millis(200))
            .depth_poll_interval(Duration::from_secs(1))
            .metrics(metrics.clone())
            .build()?;
        stats.push(worker.stats());
        let (stop, stopping) = (stop.clone(), stopping.clone());
        runs.push(tokio::spawn(worker.run_until(async move {
            let notified = stop.notified();
            if !stopping.load(Ordering::Acquire) {
                notified.await;
            }
        })));
    }

    // --- Producers.
    let started = Instant::now();
    let total = args.tasks;
    let n_sessions = (total / 10).max(1);
    let mut producers = Vec::new();
    for p in 0..args.producers.max(1) {
        let (queue, ledger) = (queue.clone(), ledger.clone());
        let mine: Vec<usize> = (0..total).filter(|i| i % args.producers.max(1) == p).collect();
        producers.push(tokio::spawn(async move {
            for chunk in mine.chunks(10) {
                let mut batch = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let long = i % 5 == 0;
                    let job = AgentJob {
                        steps: if long { 20 } else { 2 },
                        question: format!("question {i}: plan a trip"),
                    };
                    let task = Task::json(if long { "research" } else { "chat" }, &job)?
                        .with_tenant(format!("tenant{}", i % 3))
                        .with_session(format!("s{}", i % n_sessions));
                    batch.push(task);
                }
                {
                    let now = Instant::now();
                    let mut enq = ledger.enqueued.lock();
                    let mut effects = ledger.effects.lock();
                    for t in &batch {
                        enq.insert(t.id.clone(), now);
                        let steps = if t.kind == "research" { 20 } else { 2 };
                        let key = SessionKey::new(
                            t.tenant.as_deref().unwrap_or("default"),
                            t.session_id.as_deref().unwrap_or("anonymous"),
                        )?;
                        effects.insert(t.id.clone(), (key, steps));
                    }
                }
                for r in queue.enqueue_batch(batch).await {
                    r?;
                }
                // Producers trickle work in, as live traffic does.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<(), Error>(())
        }));
    }

    // --- Progress until the queue is drained.
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut producers_done = false;
    let deadline = started + Duration::from_secs(args.timeout_s);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let reports: Vec<WorkerReport> = stats.iter().map(|s| s.snapshot()).collect();
        let dead: u64 = reports.iter().map(|r| r.dead_lettered).sum();
        let retried: u64 = reports.iter().map(|r| r.retried).sum();
        let busy: u64 = reports.iter().map(|r| r.in_flight).sum();
        let done = ledger.completions.lock().len() as u64;
        bar.set_position((done + dead).min(total as u64));
        bar.set_message(format!("busy={busy} retried={retried} dead={dead}"));
        if !producers_done && producers.iter().all(|p| p.is_finished()) {
            producers_done = true;
            for p in producers.drain(..) {
                p.await.map_err(|e| Error::backend("producer failed", e))??;
            }
        }
        if producers_done {
            let depth = queue.depth().await?;
            if depth.backlog() + depth.delayed == 0 {
                break;
            }
        }
        if Instant::now() > deadline {
            bar.println("timed out waiting for the queue to drain");
            break;
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    // --- Shut the workers down gracefully and collect their reports.
    stopping.store(true, Ordering::Release);
    stop.notify_waiters();
    let mut reports = Vec::new();
    for r in runs {
        reports.push(r.await.map_err(|e| Error::backend("worker task failed", e))??);
    }
    if let Some(e) = exporter {
        e.shutdown().await;
    }

    // --- Account for every task id.
    let dead_letters = queue.dead_letters(total + 1).await?;
    let dead_ids: std::collections::HashSet<TaskId> = dead_letters
        .iter()
        .filter_map(|d| d.task.as_ref().map(|t| t.id.clone()))
        .collect();
    let enqueued = ledger.enqueued.lock().clone();
    let completions = ledger.completions.lock().clone();
    let lost = enqueued
        .keys()
        .filter(|id| !completions.contains_key(*id) && !dead_ids.contains(*id))
        .count() as u64;
    let duplicates: u64 = completions
        .values()
        .map(|(n, _)| u64::from(n.saturating_sub(1)))
        .sum();
    // Every completed task's steps counted exactly once in its session, and
    // nothing counted for a task that did not complete.
    let mut expected: HashMap<SessionKey, u64> = HashMap::new();
    {
        let effects = ledger.effects.lock();
        for id in completions.keys() {
            if let Some((key, steps)) = effects.get(id) {
                *expected.entry(key.clone()).or_default() += steps;
            }
        }
    }
    let mut session_mismatches = 0u64;
    for (key, want) in &expected {
        let got = agent
            .sessions
            .get_applied::<SessionNotes>(key)
            .await?
            .map_or(0, |(n, _)| n.steps_done);
        if got != *want {
            session_mismatches += 1;
        }
    }
    let mut latencies: Vec<Duration> = completions.values().map(|(_, l)| *l).collect();
    latencies.sort();
    let completed = completions.len() as u64;
    let sum = |f: fn(&WorkerReport) -> u64| reports.iter().map(f).sum::<u64>();
    let (retried, panicked, lease_lost) = (sum(|r| r.retried), sum(|r| r.panicked), sum(|r| r.lease_lost));
    let throughput = completed as f64 / elapsed.as_secs_f64().max(1e-9);
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));

    println!(
        "agentscale quickstart: {total} tasks, {} workers × {} slots",
        args.workers, args.concurrency
    );
    println!("| worker | completed | retried | dead-lettered | panicked | lease lost |");
    println!("|---|---|---|---|---|---|");
    for (i, r) in reports.iter().enumerate() {
        println!(
            "| worker-{i} | {} | {} | {} | {} | {} |",
            r.completed, r.retried, r.dead_lettered, r.panicked, r.lease_lost
        );
    }
    for d in dead_letters.iter().take(3) {
        println!(
            "dead letter: {} ({} attempts): {}",
            d.task.as_ref().map(|t| t.id.to_string()).unwrap_or_default(),
            d.attempts,
            d.reason
        );
    }
    println!(
        "session CAS conflicts retried: {}; wall time {:.1} s",
        agent.cas_conflicts.load(Ordering::Relaxed),
        elapsed.as_secs_f64()
    );
    let per_worker: Vec<String> = reports.iter().map(|r| r.completed.to_string()).collect();
    println!(
        "summary: completed={completed} lost={lost} retried={retried} dead_lettered={} duplicates={duplicates} \
         panicked={panicked} lease_lost={lease_lost} session_mismatches={session_mismatches} \
         throughput={throughput:.1}/s p50_ms={} p99_ms={} per_worker={}",
        dead_ids.len(),
        p50.as_millis(),
        p99.as_millis(),
        per_worker.join(",")
    );
    Ok(lost + session_mismatches)
}
