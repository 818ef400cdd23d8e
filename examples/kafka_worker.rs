//! A worker fleet member on Kafka: leases tasks from a topic through a
//! consumer group and runs a handler with the agentscale worker runtime.
//!
//! ```text
//! eval "$(scripts/dev-services up)"   # starts tansu, exports AGENTSCALE_KAFKA_BROKERS
//! cargo run -p agentscale-examples --features kafka --example kafka_worker -- --enqueue 100
//! ```
//!
//! Scale it on consumer-group lag with KEDA: `deploy/keda-kafka/scaledobject.yaml`
//! (topic `agent-tasks`, group `agent-workers`, the defaults below).

use std::sync::Arc;
use std::time::Duration;

use agentscale::async_trait;
use agentscale::queue::kafka::{KafkaQueue, KafkaQueueConfig};
use agentscale::worker::{Handler, TaskContext, Worker};
use agentscale::{Error, Output, Task, TaskQueue};
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Bootstrap servers (default: $AGENTSCALE_KAFKA_BROKERS or 127.0.0.1:9092).
    #[arg(long)]
    brokers: Option<String>,
    /// Task topic.
    #[arg(long, default_value = "agent-tasks")]
    topic: String,
    /// Consumer group (KEDA's `consumerGroup`).
    #[arg(long, default_value = "agent-workers")]
    group: String,
    /// Enqueue this many demo tasks before working.
    #[arg(long, default_value_t = 0)]
    enqueue: usize,
    /// Handler slots.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

struct Research;

#[async_trait]
impl Handler for Research {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let question: serde_json::Value = task.payload_json()?;
        tracing::info!(task = %task.id, attempt = cx.attempt(), %question, "handling");
        tokio::time::sleep(Duration::from_millis(20)).await; // the agent's work
        Ok(Output::none())
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let brokers = args
        .brokers
        .or_else(|| std::env::var("AGENTSCALE_KAFKA_BROKERS").ok())
        .unwrap_or_else(|| "127.0.0.1:9092".into());
    let config = KafkaQueueConfig::builder()
        .brokers(&brokers)
        .topic(&args.topic)
        .group_id(&args.group)
        .partitions(6)
        // Long agent tasks: keep the lease budget above the longest task
        // (Kafka cannot extend a single lease).
        .lease_timeout(Duration::from_secs(600))
        // tansu (the dev broker) lacks the idempotent-producer handshake;
        // leave this on against Apache Kafka / Redpanda.
        .idempotence(
            std::env::var("AGENTSCALE_KAFKA_IDEMPOTENCE")
                .map(|v| v != "0")
                .unwrap_or(false),
        )
        .build()?;
    let queue = Arc::new(KafkaQueue::connect(config).await?);
    if args.enqueue > 0 {
        let tasks: Vec<Task> = (0..args.enqueue)
            .map(|i| {
                Task::json("research", &serde_json::json!({ "q": i }))
                    .map(|t| t.with_session(format!("s{}", i % 8)))
            })
            .collect::<Result<_, _>>()?;
        let failed = queue
            .enqueue_batch(tasks)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        tracing::info!(enqueued = args.enqueue - failed, failed, "enqueued demo tasks");
    }
    let shared: Arc<dyn TaskQueue> = queue.clone();
    let worker = Worker::builder(shared, Research)
        .concurrency(args.concurrency)
        .task_timeout(Duration::from_secs(540))
        .build()?;
    let report = worker
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    tracing::info!(?report, "worker stopped");
    queue.close().await;
    Ok(())
}
