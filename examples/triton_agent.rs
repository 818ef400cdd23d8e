//! An agent worker whose handler calls Triton through a replica pool.
//!
//! ```text
//! eval "$(scripts/dev-services up)"
//! cargo run -p agentscale-examples --features triton --example triton_agent
//! ```
//! `AGENTSCALE_TRITON_URL` may list several replicas, comma-separated
//! (`http://gpu-0:8001,http://cpu-0:8001`); weights via `url=weight`.
//! Each task carries `{"prompt": ..., "max_tokens": ...}`; the handler
//! generates text with the TensorRT-LLM-style model `llm_stream` and stores
//! nothing (print only). Invalid prompts are dead-lettered, transient Triton
//! failures retried by the worker.
#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale::async_trait;
use agentscale::infer::{LlmClient, TritonPool};
use agentscale::queue::LocalQueue;
use agentscale::queue::TaskQueue;
use agentscale::task::Task;
use agentscale::worker::{Backoff, Handler, TaskContext, Worker};
use agentscale::{Error, Output, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    prompt: String,
    max_tokens: i32,
}

struct LlmHandler {
    pool: TritonPool,
    done: Arc<AtomicU64>,
    finished: Arc<tokio::sync::Notify>,
    total: u64,
}

#[async_trait]
impl Handler for LlmHandler {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output> {
        let job: Job = task.payload_json()?;
        if job.prompt.trim().is_empty() {
            return Err(Error::invalid_input("empty prompt"));
        }
        // The task's remaining time becomes the Triton deadline.
        let llm = LlmClient::new(self.pool.clone(), "llm_stream")
            .max_tokens(job.max_tokens)
            .deadline(cx.remaining());
        let text = llm.generate(&job.prompt).await?;
        println!("attempt {} → {text:?}", cx.attempt());
        if self.done.fetch_add(1, Ordering::Relaxed) + 1 == self.total {
            self.finished.notify_one();
        }
        Ok(Output::bytes(text))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let urls = std::env::var("AGENTSCALE_TRITON_URL")
        .map_err(|_| Error::InvalidConfig("set AGENTSCALE_TRITON_URL (scripts/dev-services up)".into()))?;
    let mut pool = TritonPool::builder();
    for entry in urls.split(',').filter(|s| !s.is_empty()) {
        let (url, weight) = match entry.split_once('=') {
            Some((u, w)) => (
                u,
                w.parse()
                    .map_err(|_| Error::InvalidConfig(format!("bad weight in {entry}")))?,
            ),
            None => (entry, 1),
        };
        pool = pool.endpoint(url, weight);
    }
    let pool = pool.build()?;

    let queue = Arc::new(LocalQueue::new("triton-agent"));
    let total = 20u64;
    for i in 0..total {
        let job = Job {
            prompt: format!("agent {i} says hello"),
            max_tokens: 4,
        };
        queue.enqueue(Task::json("generate", &job)?).await?;
    }
    let finished = Arc::new(tokio::sync::Notify::new());
    let handler = LlmHandler {
        pool: pool.clone(),
        done: Arc::new(AtomicU64::new(0)),
        finished: finished.clone(),
        total,
    };
    let worker = Worker::builder(queue.clone(), handler)
        .concurrency(8)
        .backoff(Backoff::exponential(
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
        .task_timeout(Duration::from_secs(30))
        .build()?;
    let report = worker.run_until(async move { finished.notified().await }).await?;
    println!("worker report: {report:?}");
    println!("pool stats: {:?}", pool.stats());
    Ok(())
}
