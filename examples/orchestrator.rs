//! Hierarchical orchestration template: a planner splits a request into
//! sub-tasks for specialist workers (research, code, critique), joins them
//! with a deadline, and a synthesiser writes the answer the caller awaits.
//!
//! ```text
//! cargo run --example orchestrator
//! cargo run --example orchestrator -- --critique-ms 5000   # the critique misses the deadline
//! ```
//!
//! Everything runs in this process on the local backends; swap in
//! `RedisQueue`/`KafkaQueue` and `RedisResultStore`/`RedisJoinStore` to run
//! planners, specialists and the API gateway as separate replicas.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use agentscale::join::{ChildStatus, JoinPolicy};
use agentscale::queue::LocalQueue;
use agentscale::state::local::{LocalJoinStore, LocalResultStore};
use agentscale::worker::{Handler, TaskContext, Worker};
use agentscale::{Client, Error, Orchestrator, Output, Task, TaskQueue};
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
struct Args {
    /// The user's request.
    #[arg(long, default_value = "add retries with backoff to our HTTP client")]
    request: String,
    /// How long the critique specialist takes (ms).
    #[arg(long, default_value_t = 300)]
    critique_ms: u64,
    /// The join deadline (ms).
    #[arg(long, default_value_t = 2000)]
    deadline_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    text: String,
    deadline_ms: u64,
}

/// The planner and the synthesiser: both run on the `planner` queue. The
/// planner holds the plan; it does not wait for the specialists (no worker
/// slot is held): the synthesiser is a continuation enqueued once the join
/// is decided.
struct Planner {
    orch: Arc<Orchestrator>,
}

#[agentscale::async_trait]
impl Handler for Planner {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        match task.kind.as_str() {
            "request" => {
                let req: Request = task.payload_json()?;
                let fanned = self
                    .orch
                    .fan_out(task, JoinPolicy::All)
                    .deadline(Duration::from_millis(req.deadline_ms))
                    .child("research", "specialists", Task::json("research", &req.text)?)
                    .child("code", "specialists", Task::json("code", &req.text)?)
                    .child("critique", "specialists", Task::json("critique", &req.text)?)
                    .then("planner", Task::json("synthesise", &req.text)?)
                    .submit()
                    .await?;
                Ok(fanned.into_output())
            }
            "synthesise" => {
                let question: String = task.payload_json()?;
                let join = self.orch.join_of(task).await?;
                let mut answer = format!("Answer to {question:?}:\n");
                for c in &join.children {
                    match &c.status {
                        ChildStatus::Ok(o) => {
                            let text: String = o.parse_json()?;
                            answer.push_str(&format!("  - {}: {text}\n", c.label));
                        }
                        other => answer.push_str(&format!("  - {}: (missing: {other:?})\n", c.label)),
                    }
                }
                let report: Vec<_> = join
                    .children
                    .iter()
                    .map(|c| {
                        let status = match &c.status {
                            ChildStatus::Ok(_) => "ok".to_string(),
                            ChildStatus::Failed(r) => format!("failed: {r}"),
                            ChildStatus::TimedOut => "timed out".to_string(),
                            ChildStatus::Pending => "pending".to_string(),
                        };
                        serde_json::json!({ "child": c.label, "status": status })
                    })
                    .collect();
                Output::json(&serde_json::json!({
                    "answer": answer,
                    "join": { "decision": join.decision.map(|d| d.as_str()), "children": report },
                }))
            }
            other => Err(Error::invalid_input(format!("planner queue got kind {other}"))),
        }
    }
}

/// Stateless specialist executors.
struct Specialists {
    critique: Duration,
}

#[agentscale::async_trait]
impl Handler for Specialists {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let topic: String = task.payload_json()?;
        let (work, text) = match task.kind.as_str() {
            "research" => (
                Duration::from_millis(150),
                format!("two prior designs found for {topic:?}"),
            ),
            "code" => (
                Duration::from_millis(250),
                "a 40-line patch with exponential backoff and jitter".into(),
            ),
            "critique" => (self.critique, "cap the retries and honour Retry-After".into()),
            other => return Err(Error::invalid_input(format!("no specialist for {other}"))),
        };
        // The work, abandoned early when the join no longer needs it.
        let until = tokio::time::Instant::now() + work;
        while tokio::time::Instant::now() < until {
            if cx.is_cancelled() {
                return Err(Error::handler("join decided without us"));
            }
            tokio::time::sleep(Duration::from_millis(25).min(until - tokio::time::Instant::now())).await;
        }
        Output::json(&text)
    }
}

#[tokio::main]
async fn main() -> agentscale::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let args = Args::parse();

    let planner_q: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new("planner"));
    let specialists_q: Arc<dyn TaskQueue> = Arc::new(LocalQueue::new("specialists"));
    let results = Arc::new(LocalResultStore::builder().build()?);
    let joins = Arc::new(LocalJoinStore::builder().build()?);
    let orch = Arc::new(
        Orchestrator::builder(results.clone(), joins)
            .queue(planner_q.clone())
            .queue(specialists_q.clone())
            .build()?,
    );

    let (stop, rx) = tokio::sync::watch::channel(false);
    let planner = Worker::builder(planner_q.clone(), Planner { orch: orch.clone() })
        .concurrency(4)
        .orchestrator(orch.clone())
        .build()?;
    let specialists = Worker::builder(
        specialists_q,
        Specialists {
            critique: Duration::from_millis(args.critique_ms),
        },
    )
    .concurrency(8)
    .orchestrator(orch.clone())
    .build()?;
    let workers = [
        tokio::spawn(planner.run_until(stopped(rx.clone()))),
        tokio::spawn(specialists.run_until(stopped(rx))),
    ];

    // The API-gateway path: submit, then await the answer with a timeout.
    let client = Client::new(planner_q, results);
    let request = Task::json(
        "request",
        &Request {
            text: args.request.clone(),
            deadline_ms: args.deadline_ms,
        },
    )?;
    let pending = client.submit(request).await?;
    let out: serde_json::Value = pending.output(Duration::from_secs(30)).await?.parse_json()?;
    println!("{}", out["answer"].as_str().unwrap_or_default());
    println!(
        "join report: {}",
        serde_json::to_string_pretty(&out["join"]).unwrap_or_default()
    );

    let _ = stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    Ok(())
}

async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
