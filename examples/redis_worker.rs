//! A producer and a worker as separate processes, sharing a Redis Streams
//! queue. Copy this as the template of a worker service.
//!
//! ```text
//! # terminal 1: one or more workers (scale them out; any replica takes any task)
//! cargo run -p agentscale-examples --features redis --example redis_worker -- work --concurrency 32
//! # terminal 2: a producer
//! cargo run -p agentscale-examples --features redis --example redis_worker -- produce --count 1000
//! # queue depth (what the autoscaler sees)
//! cargo run -p agentscale-examples --features redis --example redis_worker -- depth
//! ```
//!
//! Configuration is loaded the way Kubernetes passes it (see
//! `deploy/base/`): the optional file `/etc/agentscale/config.toml` (a
//! mounted ConfigMap, or the file named by `AGENTSCALE_CONFIG`), overridden
//! by environment variables: `AGENTSCALE_REDIS_URL` (default
//! `redis://127.0.0.1:6379`; from a mounted Secret with
//! `AGENTSCALE_REDIS_URL_FILE=/path`), `AGENTSCALE_QUEUE` (default `agents`),
//! `AGENTSCALE_METRICS_ADDR` (default `0.0.0.0:9090`: `/metrics`, `/healthz`,
//! `/readyz`), `AGENTSCALE_GRACE_PERIOD_S` (default 20). The worker stops on
//! SIGTERM or Ctrl-C: it stops leasing, lets in-flight tasks finish within
//! the grace period and hands the rest back uncharged.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use agentscale::config::{ConfigLoader, Secret};
use agentscale::metrics::{Exporter, Metrics};
use agentscale::queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale::worker::{Backoff, Handler, TaskContext, Worker};
use agentscale::{Error, Priority, Task, TaskQueue};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(about = "agentscale Redis Streams producer / worker example")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Enqueue research questions.
    Produce {
        /// How many tasks.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Enqueue as high priority.
        #[arg(long)]
        high: bool,
    },
    /// Run a worker until SIGTERM / Ctrl-C.
    Work {
        /// Concurrent handler slots.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Simulated work per task, in ms.
        #[arg(long, default_value_t = 50)]
        work_ms: u64,
    },
    /// Print the queue depth.
    Depth,
    /// List dead letters.
    DeadLetters,
}

/// The payload producers send (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Question {
    session: String,
    text: String,
}

/// The agent: here it only pretends to think. A real one calls tools and an
/// LLM, keeping state in a session store, never in the process.
struct Agent {
    work: Duration,
}

#[agentscale::async_trait]
impl Handler for Agent {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<(), Error> {
        // A malformed payload is InvalidInput: dead-lettered at once, no retry.
        let q: Question = task.payload_json()?;
        tracing::info!(session = %q.session, attempt = cx.attempt(), "thinking about {:?}", q.text);
        tokio::time::sleep(self.work).await;
        Ok(())
    }
}

/// The worker's settings: `/etc/agentscale/config.toml`, then `AGENTSCALE_*`.
#[derive(Debug, Default, Deserialize)]
struct Settings {
    redis_url: Option<Secret>,
    queue: Option<String>,
    metrics_addr: Option<String>,
    grace_period_s: Option<u64>,
}

fn settings() -> Result<Settings, Error> {
    ConfigLoader::new()
        .optional_file("/etc/agentscale/config.toml")
        .file_from_env("AGENTSCALE_CONFIG")
        .env_prefix("AGENTSCALE")
        .load()
}

fn config(s: &Settings) -> RedisQueueConfig {
    let url = s
        .redis_url
        .as_ref()
        .map(|u| u.expose().to_string())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let queue = s.queue.clone().unwrap_or_else(|| "agents".into());
    RedisQueueConfig::new(url, queue).with_lease_timeout(Duration::from_secs(30))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let settings = settings()?;
    let queue = RedisQueue::connect(config(&settings)).await?;
    match cli.command {
        Cmd::Produce { count, high } => {
            let tasks: Vec<Task> = (0..count)
                .map(|i| {
                    let q = Question {
                        session: format!("s-{}", i % 10),
                        text: format!("question {i}"),
                    };
                    Task::json("research", &q).map(|t| {
                        t.with_session(q.session.clone())
                            .with_idempotency_key(format!("demo-{i}"))
                            .with_priority(if high { Priority::High } else { Priority::Normal })
                    })
                })
                .collect::<Result<_, _>>()?;
            let mut stored = 0;
            for chunk in tasks.chunks(500) {
                for r in queue.enqueue_batch(chunk.to_vec()).await {
                    if !r?.duplicate {
                        stored += 1;
                    }
                }
            }
            println!(
                "enqueued {stored} new tasks ({} duplicates skipped)",
                count - stored
            );
        }
        Cmd::Work { concurrency, work_ms } => {
            let metrics = Metrics::new();
            let addr = settings
                .metrics_addr
                .clone()
                .unwrap_or_else(|| "0.0.0.0:9090".into());
            let exporter = Exporter::bind(addr, metrics.clone()).await?;
            tracing::info!(addr = %exporter.local_addr(), consumer = queue.consumer_name(), "worker started");
            let queue: Arc<dyn TaskQueue> = Arc::new(queue);
            let report = Worker::builder(
                queue,
                Agent {
                    work: Duration::from_millis(work_ms),
                },
            )
            .concurrency(concurrency)
            .backoff(Backoff::exponential(
                Duration::from_millis(200),
                Duration::from_secs(30),
            ))
            .task_timeout(Duration::from_secs(300))
            .grace_period(Duration::from_secs(settings.grace_period_s.unwrap_or(20)))
            .metrics(metrics)
            .build()?
            .run_until(shutdown_signal())
            .await?;
            tracing::info!(?report, "worker stopped");
            exporter.shutdown().await;
        }
        Cmd::Depth => {
            let d = queue.depth().await?;
            println!(
                "ready {} in_flight {} delayed {} dead {} (backlog {})",
                d.ready,
                d.in_flight,
                d.delayed,
                d.dead,
                d.backlog()
            );
        }
        Cmd::DeadLetters => {
            for dl in queue.dead_letters(100).await? {
                println!("{} attempts={} reason={:?}", dl.id, dl.attempts, dl.reason);
            }
        }
    }
    Ok(())
}
